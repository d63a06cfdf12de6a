//! The guard in a running node: the seed's "more than ten wrong passwords" row. A client on
//! 127.0.0.9 sends digest REGISTERs with a wrong password over TCP: ten are answered (401),
//! the eleventh bans it: its connection is closed, a new one is refused before anything is
//! read, while 127.0.0.10 is still served and an ignored address is never banned. Over UDP
//! the banned source's datagrams are dropped unread.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::harness::{free_port, read_sip, try_connect_from, StgNode};
use crate::registrar_e2e::{make_users, DOMAIN, PASSWORD};

fn register(cseq: u32, src: &str, auth: Option<&str>) -> Vec<u8> {
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    format!(
        "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TCP {src}:5060;branch=z9hG4bK-g{cseq};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:erin@{DOMAIN}>;tag=g1\r\nTo: <sip:erin@{DOMAIN}>\r\n\
         Call-ID: guard-{src}\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:erin@{src}:5060;transport=tcp>\r\n\
         Expires: 600\r\n{auth}Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

fn nonce(resp: &[u8]) -> String {
    let text = String::from_utf8_lossy(resp);
    let i = text.find("nonce=\"").expect("a challenge") + 7;
    text[i..].split('"').next().unwrap().to_owned()
}

/// How long an answer may take: a banned source is refused at once (its connection closed),
/// so this only bounds a node slowed down by the other tests running beside it.
const ANSWER_WAIT: Duration = Duration::from_secs(8);

/// One REGISTER with a wrong digest answer on `s`; the answer's status.
fn wrong_password(s: &mut TcpStream, src: &str, cseq: u32, nonce: &str) -> Option<Vec<u8>> {
    let auth = format!(
        "Digest username=\"erin\", realm=\"{DOMAIN}\", nonce=\"{nonce}\", uri=\"sip:{DOMAIN}\", \
         response=\"0123456789abcdef0123456789abcdef\", algorithm=MD5"
    );
    s.write_all(&register(cseq, src, Some(&auth))).ok()?;
    read_sip(s, ANSWER_WAIT).ok().flatten()
}

/// Opens a connection from `src` and gets a first challenge; `None` when refused.
fn challenge(stg: SocketAddr, src: &str) -> Option<(TcpStream, String)> {
    let mut s = try_connect_from(src, stg).ok()?;
    s.write_all(&register(1, src, None)).ok()?;
    let r = read_sip(&mut s, ANSWER_WAIT).ok().flatten()?;
    assert!(
        r.starts_with(b"SIP/2.0 401"),
        "{}",
        String::from_utf8_lossy(&r)
    );
    Some((s, nonce(&r)))
}

/// A local registrar for erin on TCP and UDP `port`, and `guard` keys.
fn config(port: u16, users_url: &str, guard: &str) -> String {
    format!(
        "[sip]\nupstream = \"sip:127.0.0.1:{}\"\n\n[registrar]\ndomains = [{{ name = \"{DOMAIN}\", mode = \"local\" }}]\n\
         digest_algorithms = [\"MD5\"]\n\n[store]\nusers_url = \"{users_url}\"\n\n[guard]\n{guard}\n\n\
         [[sip.listen]]\ntransport = \"tcp\"\naddress = \"127.0.0.1:{port}\"\n\
         [[sip.listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:{port}\"\n",
        free_port()
    )
}

/// Eleven wrong passwords from `src` (on one connection, each with the last nonce).
fn eleven_wrong(stg: SocketAddr, src: &str) {
    let (mut s, mut n) = challenge(stg, src).expect("served");
    for i in 0..11 {
        match wrong_password(&mut s, src, 2 + i, &n) {
            Some(r) => n = nonce(&r),
            None => break,
        }
    }
}

#[test]
fn the_eleventh_wrong_password_bans_the_source_everywhere_but_the_ignored() {
    let port = free_port();
    let stg_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let dir = crate::harness::temp_dir("guard-e2e");
    let users_url = make_users(&dir, DOMAIN, &[("erin".into(), PASSWORD.into())]);
    let cfg = config(port, &users_url, "ignore = [\"127.0.0.11/32\"]");
    let stg = StgNode::start("guard-e2e", &cfg);

    // Ten wrong passwords: each answered, nothing banned.
    let (mut s, mut n) = challenge(stg_addr, "127.0.0.9").expect("served");
    for i in 0..10 {
        let r = wrong_password(&mut s, "127.0.0.9", 2 + i, &n).expect("answered");
        assert!(
            r.starts_with(b"SIP/2.0 401"),
            "{}",
            String::from_utf8_lossy(&r)
        );
        n = nonce(&r);
    }
    assert!(
        challenge(stg_addr, "127.0.0.9").is_some(),
        "the 10th alone does not ban"
    );
    assert!(!stg.log().contains("TRUCO_KO [127.0.0.9]"));
    // The eleventh: banned. Its connection is closed, and nothing new gets in.
    let _ = wrong_password(&mut s, "127.0.0.9", 20, &n);
    let log =
        crate::harness::wait_log(&stg, "TRUCO_KO [127.0.0.9] stg sip", Duration::from_secs(5));
    assert!(log.contains("[sip] Ban 127.0.0.9/32"), "{log}");
    // fail2ban's own per-failure line, as the seed's acceptance table reads it.
    assert_eq!(
        log.matches("[sip] Found 127.0.0.9 - ").count(),
        11,
        "one Found line per failure: {log}"
    );
    assert!(
        read_sip(&mut s, Duration::from_secs(2)).is_err(),
        "the banned source's open connection is closed"
    );
    let refused = try_connect_from("127.0.0.9", stg_addr).map(|mut c| {
        let _ = c.write_all(&register(1, "127.0.0.9", None));
        read_sip(&mut c, Duration::from_secs(2))
    });
    assert!(
        !matches!(refused, Ok(Ok(Some(_)))),
        "a new connection from the banned source got an answer"
    );
    assert!(
        challenge(stg_addr, "127.0.0.10").is_some(),
        "others are served"
    );
    // UDP from the banned source: dropped unread.
    let udp = std::net::UdpSocket::bind("127.0.0.9:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    udp.send_to(&register(1, "127.0.0.9", None), stg_addr)
        .unwrap();
    let mut buf = [0u8; 4096];
    assert!(
        udp.recv_from(&mut buf).is_err(),
        "a banned source got a UDP answer"
    );
    assert!(
        stg.counter("stg_guard_refused_total{transport=\"udp\"}") >= 1.0,
        "{}",
        stg.metrics()
    );
    assert!(
        stg.counter("stg_connections_refused_total{reason=\"banned\"}") >= 1.0,
        "{}",
        stg.metrics()
    );

    // An ignored address is never banned, whatever it sends.
    let (mut s, mut n) = challenge(stg_addr, "127.0.0.11").expect("served");
    for i in 0..15 {
        let r = wrong_password(&mut s, "127.0.0.11", 2 + i, &n).expect("answered");
        n = nonce(&r);
    }
    assert!(
        challenge(stg_addr, "127.0.0.11").is_some(),
        "the ignored address is served"
    );
}

/// With `guard.firewall`, inside a network namespace of the test's own: the ban is an
/// element of stg's nftables set (the kernel drops the source's packets), and it holds
/// while stg restarts: the new process finds it in the kernel and enforces it too, until the
/// ban's own end (a 10 s ban here), not before and not much after.
#[test]
fn bans_reach_nftables_and_hold_across_a_restart() {
    if !stg_testkit::Netns::new().run_test_inside() {
        return;
    }
    let port = free_port();
    let stg_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let dir = crate::harness::temp_dir("guard-nft");
    let users_url = make_users(&dir, DOMAIN, &[("erin".into(), PASSWORD.into())]);
    // A short ban, so that its end (after the restart) is seen too.
    let bantime = Duration::from_secs(10);
    let cfg = config(
        port,
        &users_url,
        "firewall = true\nfirewall_table = \"stgtest\"\nbantime = \"10s\"",
    );
    let stg = StgNode::start("guard-nft", &cfg);
    eleven_wrong(stg_addr, "127.0.0.9");
    crate::harness::wait_log(&stg, "TRUCO_KO [127.0.0.9] stg sip", Duration::from_secs(5));
    let banned_at = std::time::Instant::now();
    let set = || {
        let out = std::process::Command::new("nft")
            .args(["list", "set", "inet", "stgtest", "banned4"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !set().contains("127.0.0.9") {
        assert!(
            std::time::Instant::now() < deadline,
            "not in the set:\n{}",
            set()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        try_connect_from("127.0.0.9", stg_addr).is_err(),
        "the kernel lets the banned source connect"
    );
    drop(stg);
    // Restarted: the set was not emptied, and the node enforces it again.
    let stg = StgNode::start("guard-nft-again", &cfg);
    let log = crate::harness::wait_log(&stg, "bans restored", Duration::from_secs(5));
    assert!(log.contains("bans=1"), "{log}");
    assert!(set().contains("127.0.0.9"), "{}", set());
    assert!(try_connect_from("127.0.0.9", stg_addr).is_err());
    assert!(
        challenge(stg_addr, "127.0.0.10").is_some(),
        "others are served"
    );
    // And it still ends on time: the kernel's element and the new process's ban alike.
    let deadline = banned_at + bantime + Duration::from_secs(3);
    while set().contains("127.0.0.9") || challenge(stg_addr, "127.0.0.9").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the ban outlived its {bantime:?}:\n{}",
            set()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ended = banned_at.elapsed();
    assert!(
        ended + Duration::from_millis(500) >= bantime,
        "the ban ended early, after {ended:?}"
    );
}

/// The operator's commands against the running node: list, lift and add bans.
#[test]
fn stg_ban_list_rm_add_on_the_running_node() {
    let port = free_port();
    let stg_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let dir = crate::harness::temp_dir("guard-cli");
    let users_url = make_users(&dir, DOMAIN, &[("erin".into(), PASSWORD.into())]);
    // The thresholds are the configuration's (here: the defaults written out).
    let stg = StgNode::start(
        "guard-cli",
        &config(
            port,
            &users_url,
            "sip_maxretry = 11\nfindtime = \"10m\"\nbantime = \"1h\"",
        ),
    );
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_stg"))
            .args([
                "--config",
                stg.dir.join("stg.toml").to_str().unwrap(),
                "ban",
            ])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    eleven_wrong(stg_addr, "127.0.0.9");
    crate::harness::wait_log(&stg, "TRUCO_KO [127.0.0.9] stg sip", Duration::from_secs(5));
    let (ok, out) = cli(&["list"]);
    assert!(ok && out.contains("127.0.0.9/32\t"), "{out}");
    assert!(challenge(stg_addr, "127.0.0.9").is_none());
    let (ok, out) = cli(&["rm", "127.0.0.9"]);
    assert!(ok, "{out}");
    assert!(challenge(stg_addr, "127.0.0.9").is_some(), "unbanned");
    let (ok, _) = cli(&["rm", "127.0.0.9"]);
    assert!(!ok, "not banned any more");
    let (ok, out) = cli(&["add", "127.0.0.12", "--for", "10m"]);
    assert!(ok && out.contains("600s"), "{out}");
    assert!(
        challenge(stg_addr, "127.0.0.12").is_none(),
        "banned by hand"
    );
    assert!(stg.log().contains("TRUCO_KO [127.0.0.12] stg manual"));
    let (ok, out) = cli(&["list", "--json"]);
    assert!(ok && out.contains("\"127.0.0.12/32\""), "{out}");
}

/// Two nodes (A, B) with the same users on one Redis, and their SIP addresses.
fn two_nodes(
    name: &str,
) -> (
    crate::harness::Redis,
    StgNode,
    StgNode,
    SocketAddr,
    SocketAddr,
) {
    let redis = crate::harness::Redis::start();
    let dir = crate::harness::temp_dir(name);
    let users_url = make_users(&dir, DOMAIN, &[("erin".into(), PASSWORD.into())]);
    let (pa, pb) = (free_port(), free_port());
    let with_redis = |port| {
        config(port, &users_url, "").replace(
            "[store]\n",
            &format!("[store]\nurl = \"redis://127.0.0.1:{}\"\n", redis.port),
        )
    };
    let a = StgNode::start(&format!("{name}-a"), &with_redis(pa));
    let b = StgNode::start(&format!("{name}-b"), &with_redis(pb));
    let addr = |p: u16| format!("127.0.0.1:{p}").parse().unwrap();
    (redis, a, b, addr(pa), addr(pb))
}

/// Two nodes on one Redis: a ban decided on one is enforced by the other (the cluster's
/// channel), a lift too; and how long a ban takes to reach the other node, over 1,000 bans
/// (printed; the figure goes in the notes).
#[test]
fn a_ban_on_one_node_holds_on_the_other() {
    let (redis, a, b, a_addr, b_addr) = two_nodes("guard-2nodes");
    assert!(challenge(b_addr, "127.0.0.9").is_some());
    eleven_wrong(a_addr, "127.0.0.9");
    crate::harness::wait_log(&a, "TRUCO_KO [127.0.0.9] stg sip", Duration::from_secs(5));
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while challenge(b_addr, "127.0.0.9").is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "node B does not enforce A's ban"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(redis
        .cli(&["zscore", "stg:bans", "127.0.0.9/32"])
        .trim()
        .parse::<u64>()
        .is_ok());

    // 1,000 bans on A, each timed until B lists it.
    let get =
        |addr: SocketAddr, path: &str| crate::harness::http_get(addr, path).unwrap_or_default();
    let put = |addr: SocketAddr, path: &str| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(format!("PUT {path} HTTP/1.1\r\n\r\n").as_bytes())
            .unwrap();
        let mut out = String::new();
        std::io::Read::read_to_string(&mut s, &mut out).unwrap();
        out
    };
    let mut lat = Vec::with_capacity(1000);
    for i in 0..1000u32 {
        let scope = format!("198.51.{}.{}", i / 250, i % 250 + 1);
        let t0 = std::time::Instant::now();
        let r = put(a.admin, &format!("/guard/bans/{scope}?for=600"));
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        let needle = format!("\"{scope}/32\"");
        while !get(b.admin, "/guard/bans").contains(&needle) {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "{scope} never reached B"
            );
        }
        lat.push(t0.elapsed());
    }
    lat.sort();
    eprintln!(
        "ban on A -> listed on B, 1000 bans: p50 {:?}, p99 {:?}, max {:?}",
        lat[500], lat[990], lat[999]
    );
    // A lift on A is a lift on B.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stg"))
        .args(["--config", a.dir.join("stg.toml").to_str().unwrap()])
        .args(["ban", "rm", "127.0.0.9"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while challenge(b_addr, "127.0.0.9").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "node B keeps a lifted ban"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One attacker spread over two nodes (as HAProxy spreads connections) is counted once:
/// six failures on A and four on B ban nobody, the fifth on B bans it everywhere.
#[test]
fn failures_spread_over_nodes_are_counted_together() {
    let (_redis, a, b, a_addr, b_addr) = two_nodes("guard-spread");
    let wrong = |to: SocketAddr, n: u32| {
        // A node slowed down by the tests beside it may drop a connection that is still
        // waiting to be served: a second try tells that from a ban (which refuses all).
        let (mut s, mut nonce_) = challenge(to, "127.0.0.9")
            .or_else(|| challenge(to, "127.0.0.9"))
            .unwrap_or_else(|| {
                panic!(
                    "127.0.0.9 not served by {to}\n--- A:\n{}\n--- B:\n{}",
                    a.log(),
                    b.log()
                )
            });
        for i in 0..n {
            let r = wrong_password(&mut s, "127.0.0.9", 2 + i, &nonce_).unwrap_or_else(|| {
                panic!(
                    "wrong password {} of {n} to {to} not answered\n--- A:\n{}\n--- B:\n{}",
                    i + 1,
                    a.log(),
                    b.log()
                )
            });
            nonce_ = nonce(&r);
        }
    };
    wrong(a_addr, 6);
    wrong(b_addr, 4);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        challenge(a_addr, "127.0.0.9").is_some(),
        "10 failures in all: no ban"
    );
    wrong(b_addr, 1);
    crate::harness::wait_log(&b, "TRUCO_KO [127.0.0.9] stg sip", Duration::from_secs(5));
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while challenge(a_addr, "127.0.0.9").is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "A does not enforce B's ban"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !a.log().contains("TRUCO_KO [127.0.0.9]"),
        "B decided, A followed"
    );
}

/// A user scan over TCP (what `svwar` does, one extension after another): the PBX answers
/// 404 to each; the 20th such answer bans the scanner.
#[test]
fn a_user_scan_over_tcp_is_banned_at_the_twentieth_unknown_user() {
    // The PBX: 404 to every INVITE (and 200 to its ACKs' absence: nothing).
    let pbx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let pbx_addr = pbx.local_addr().unwrap();
    pbx.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let responder = std::thread::spawn(move || {
        let mut buf = [0u8; 65535];
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            let Ok((n, from)) = pbx.recv_from(&mut buf) else {
                continue;
            };
            let req = String::from_utf8_lossy(&buf[..n]).into_owned();
            if !req.starts_with("INVITE ") {
                continue;
            }
            let mut out = String::from("SIP/2.0 404 Not Found\r\n");
            for l in req.lines() {
                let lower = l.to_ascii_lowercase();
                if ["via:", "from:", "call-id:", "cseq:"]
                    .iter()
                    .any(|h| lower.starts_with(h))
                {
                    out.push_str(l);
                    out.push_str("\r\n");
                } else if lower.starts_with("to:") {
                    out.push_str(l);
                    out.push_str(";tag=pbx\r\n");
                }
            }
            out.push_str("Content-Length: 0\r\n\r\n");
            let _ = pbx.send_to(out.as_bytes(), from);
        }
    });
    let port = free_port();
    let stg_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let cfg = format!(
        "[sip]\nupstream = \"sip:{pbx_addr};transport=udp\"\n\n\
         [[sip.listen]]\ntransport = \"tcp\"\naddress = \"127.0.0.1:{port}\"\n\
         [[sip.listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:{}\"\nside = \"inside\"\n",
        free_port()
    );
    let stg = StgNode::start("guard-scan", &cfg);
    let mut s = try_connect_from("127.0.0.9", stg_addr).unwrap();
    let scan = |s: &mut TcpStream, ext: u32| {
        let m = format!(
            "INVITE sip:{ext}@example.com SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.9:5060;branch=z9hG4bK-scan{ext}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:scan@example.com>;tag=s{ext}\r\nTo: <sip:{ext}@example.com>\r\n\
             Call-ID: scan-{ext}\r\nCSeq: 1 INVITE\r\nContact: <sip:scan@127.0.0.9:5060;transport=tcp>\r\n\
             Content-Length: 0\r\n\r\n"
        );
        s.write_all(m.as_bytes()).ok()?;
        // 100 Trying, then the final (often in one read): the bytes up to the final.
        let (mut buf, mut chunk) = (Vec::new(), [0u8; 4096]);
        s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        loop {
            let text = String::from_utf8_lossy(&buf).into_owned();
            if let Some(i) = text.find("SIP/2.0 4").or_else(|| text.find("SIP/2.0 5")) {
                return Some(text.as_bytes()[i..].to_vec());
            }
            let n = std::io::Read::read(s, &mut chunk).ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    for ext in 100..119 {
        let r = scan(&mut s, ext).expect("answered");
        assert!(
            r.starts_with(b"SIP/2.0 404"),
            "{}",
            String::from_utf8_lossy(&r)
        );
    }
    assert!(
        !stg.log().contains("TRUCO_KO [127.0.0.9]"),
        "19 unknown users: no ban"
    );
    let _ = scan(&mut s, 119);
    crate::harness::wait_log(
        &stg,
        "TRUCO_KO [127.0.0.9] stg sipprobe",
        Duration::from_secs(5),
    );
    assert!(try_connect_from("127.0.0.9", stg_addr)
        .map(|mut c| scan(&mut c, 120))
        .ok()
        .flatten()
        .is_none());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    responder.join().unwrap();
}
