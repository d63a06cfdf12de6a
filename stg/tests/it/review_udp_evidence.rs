//! The review of "Evidence over UDP" (363c2e6), end to end: the attacks of the review report
//! against the real binary in front of the sipvicious test's Kamailio PBX, on 127.0.0.0/8.
//! A "spoofed" datagram is one sent from a socket bound to the victim's loopback address;
//! the test never reads what is sent back to it, as a spoofer could not. Each test states
//! what should hold and is ignored while it does not, with the finding's number.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use md5::Digest as _;

use crate::harness::StgNode;
use crate::kamailio::Kamailio;
use crate::sipvicious::{leaky_pbx, SECRET};
use stg_testkit::{free_port, temp_dir};

/// Not `friendly-scanner` (dropped unanswered), and long enough that stg's own answers are
/// never larger than the request.
const AGENT: &str = "Mozilla/5.0 (X11; Linux x86_64) Softphone/2.1 (a long enough User-Agent)";

/// The leaky PBX behind a node with one outside UDP listener; the guard on, no firewall.
fn setup(name: &str) -> (Kamailio, StgNode, SocketAddr) {
    let dir = temp_dir(name);
    let pbx_port = free_port();
    let pbx = Kamailio::start_with_config(&dir, pbx_port, &leaky_pbx(pbx_port));
    let port = free_port();
    let cfg = format!(
        "[sip]\nupstream = \"sip:127.0.0.1:{pbx_port};transport=udp\"\n\n\
         [[sip.listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:{port}\"\n\
         [[sip.listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:{}\"\nside = \"inside\"\n",
        free_port()
    );
    let stg = StgNode::start(name, &cfg);
    (pbx, stg, SocketAddr::from(([127, 0, 0, 1], port)))
}

fn hex_md5(s: &str) -> String {
    md5::Md5::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Credentials of extension 1000 for `nonce` with `password`, `cnonce` first (the PBX
/// hashes whatever cnonce the client chose, so a cracker may hide text in it).
fn credentials(nonce: &str, password: &str, cnonce: &str) -> String {
    let ha1 = hex_md5(&format!("1000:example.com:{password}"));
    let ha2 = hex_md5("REGISTER:sip:example.com");
    let response = hex_md5(&format!("{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}"));
    format!(
        "Digest cnonce=\"{cnonce}\", username=\"1000\", realm=\"example.com\", \
         nonce=\"{nonce}\", uri=\"sip:example.com\", response=\"{response}\", qop=auth, \
         nc=00000001, algorithm=MD5"
    )
}

/// A UDP client at one loopback address.
struct Client {
    sock: UdpSocket,
    target: SocketAddr,
    sent: u32,
}

impl Client {
    fn at(ip: &str, target: SocketAddr) -> Self {
        let sock = UdpSocket::bind((ip, 0)).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Self {
            sock,
            target,
            sent: 0,
        }
    }

    /// Sends `method` for extension `user` (REGISTER: to the domain), with `auth`; its
    /// Call-ID.
    fn send(&mut self, method: &str, user: &str, auth: Option<&str>) -> String {
        self.sent += 1;
        let local = self.sock.local_addr().unwrap();
        let cid = format!("review-{}-{}-{}", local, self.sent, nanos());
        let ruri = if method == "REGISTER" {
            "sip:example.com".to_owned()
        } else {
            format!("sip:{user}@example.com")
        };
        let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
        let m = format!(
            "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-{cid};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{user}@example.com>;tag=t{n}\r\n\
             To: <sip:{user}@example.com>\r\nCall-ID: {cid}\r\nCSeq: 1 {method}\r\n\
             Contact: <sip:{user}@{local}>\r\nExpires: 60\r\nUser-Agent: {AGENT}\r\n{auth}\
             Content-Length: 0\r\n\r\n",
            n = self.sent
        );
        self.sock.send_to(m.as_bytes(), self.target).unwrap();
        cid
    }

    /// The final answer to the request `cid`, within two seconds.
    fn answer(&self, cid: &str) -> Option<String> {
        let end = Instant::now() + Duration::from_secs(2);
        let mut buf = vec![0u8; 65_536];
        while Instant::now() < end {
            let Ok((n, _)) = self.sock.recv_from(&mut buf) else {
                continue;
            };
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            if m.contains(cid) && !m.starts_with("SIP/2.0 1") {
                return Some(m);
            }
        }
        None
    }

    fn ask(&mut self, method: &str, user: &str, auth: Option<&str>) -> Option<String> {
        let cid = self.send(method, user, auth);
        self.answer(&cid)
    }
}

fn nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn status(m: &Option<String>) -> u16 {
    m.as_deref()
        .and_then(|m| m.get(8..11))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn nonce(m: &Option<String>) -> String {
    let m = m.as_deref().expect("a challenge");
    let at = m.find("nonce=\"").expect("a nonce") + 7;
    m[at..].split('"').next().unwrap().to_owned()
}

/// Whether the log says `line` within `wait`.
fn logged(stg: &StgNode, line: &str, wait: Duration) -> bool {
    let end = Instant::now() + wait;
    while Instant::now() < end {
        if stg.log().contains(line) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Finding 1. Kamailio gives every challenge of one second the same nonce. The attacker
/// asks for one at its own address while, in the same second, a REGISTER goes out under a
/// user's address: the nonce now "went to" the user, and eleven blind guesses with it under
/// the user's address are proven failures. The user, who registered a second before, is
/// banned in the `sip` jail (never withheld) and locked out.
#[test]
fn a_blind_spoofer_cannot_ban_a_user() {
    let (_pbx, stg, target) = setup("review-spoofer");
    let mut user = Client::at("127.0.0.51", target);
    let n = nonce(&user.ask("REGISTER", "1000", None));
    let ok = user.ask("REGISTER", "1000", Some(&credentials(&n, SECRET, "u1")));
    assert_eq!(status(&ok), 200, "the user registers: {ok:?}");

    let mut attacker = Client::at("127.0.0.9", target);
    let mut spoofed = Client::at("127.0.0.51", target);
    // At the start of a second, so both challenges fall within it.
    let into = nanos() % 1_000_000_000;
    std::thread::sleep(Duration::from_nanos(
        1_000_000_000 - into as u64 + 10_000_000,
    ));
    let cid = attacker.send("REGISTER", "1000", None);
    spoofed.send("REGISTER", "1000", None);
    let n = nonce(&attacker.answer(&cid));
    for i in 0..11 {
        spoofed.send(
            "REGISTER",
            "1000",
            Some(&credentials(&n, &format!("wrong{i}"), &format!("s{i}"))),
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !logged(&stg, "Ban 127.0.0.51/32", Duration::from_secs(3)),
        "a spoofer banned the user:\n{}",
        stg.log()
    );
    assert!(
        user.ask("REGISTER", "1000", None).is_some(),
        "the user is locked out"
    );
}

/// Finding 4. A stranger with no account: junk credentials (a real nonce, fetched at its
/// own address) on an OPTIONS, which the PBX answers 200 without checking them, make its
/// address "a user's". Its UDP scan of 30 extensions is then never banned.
#[test]
fn junk_credentials_do_not_shield_a_scanner() {
    let (_pbx, stg, target) = setup("review-known-good");
    let mut scanner = Client::at("127.0.0.60", target);
    let n = nonce(&scanner.ask("REGISTER", "1000", None));
    let junk = format!(
        "Digest username=\"nobody\", realm=\"example.com\", nonce=\"{n}\", uri=\"sip:x\", \
         response=\"00\""
    );
    let ok = scanner.ask("OPTIONS", "1000", Some(&junk));
    assert_eq!(status(&ok), 200, "{ok:?}");
    let mut learnt = 0;
    for ext in 300..330 {
        learnt += usize::from(status(&scanner.ask("REGISTER", &ext.to_string(), None)) == 404);
    }
    assert!(
        logged(&stg, "Ban 127.0.0.60/32", Duration::from_secs(3)),
        "the scan got {learnt} answers and no ban:\n{}",
        stg.log()
    );
}

/// Finding 3. A `nonce=` inside the cracker's own `cnonce` is what stg reads; the PBX reads
/// the real one and checks every guess. Twelve wrong passwords: no failure counted.
#[test]
fn a_decoy_nonce_does_not_hide_a_crackers_guesses() {
    let (_pbx, stg, target) = setup("review-decoy");
    let mut cracker = Client::at("127.0.0.70", target);
    // The PBX takes credentials with such a cnonce: the right password passes.
    let n = nonce(&cracker.ask("REGISTER", "1000", None));
    let ok = cracker.ask(
        "REGISTER",
        "1000",
        Some(&credentials(&n, SECRET, "x nonce=decoy")),
    );
    assert_eq!(status(&ok), 200, "{ok:?}");
    for i in 0..12 {
        let ch = cracker.ask("REGISTER", "1000", None);
        if ch.is_none() {
            break;
        }
        let n = nonce(&ch);
        let creds = credentials(&n, &format!("wrong{i}"), &format!("c{i} nonce=decoy"));
        cracker.ask("REGISTER", "1000", Some(&creds));
    }
    assert!(
        logged(&stg, "Ban 127.0.0.70/32", Duration::from_secs(3)),
        "twelve wrong passwords and no ban:\n{}",
        stg.log()
    );
}
