//! Issue 11, "Edge hardening": the ten attacks, each driven against the real node the way an
//! outsider would, with real victims (a `redis-server` on loopback, an inside host, another
//! device's TLS session, a port that swallows SYNs, `RLIMIT_NOFILE` 1024), asserting the
//! hardened behaviour: nothing reaches a victim, memory and descriptors stay within the
//! caps, a legitimate device on another address is served throughout, and the metrics count
//! what was refused.
//!
//! The attack traffic names outside hosts (192.0.2.x, 10.0.0.x), so every test re-runs
//! itself in a network namespace with only loopback (plus the addresses it puts on `lo`).
//! Every flood is bounded in count and in time.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stg_testkit::sip::{header_values, status_code, via, SipMessage};

use crate::harness::{
    addr, connect_from, free_port, listeners, read_sip, recv_all, recv_until, request, rss_sampler,
    sh, tcp_device_served, try_connect_from, udp_device_served, udp_socket_drops,
    udp_socket_with_big_buffer, KillOnDrop, Netns, Redis, StgNode, StgOpts, Victim,
};
use crate::uas::Uas;

const PYTHON: &str = "/usr/bin/python3";

// === helpers ===

/// A response that matches no transaction: stg's own listener on top (so it is not simply
/// discarded), then the Via naming where an attacker wants it to go.
fn stray_response(stg: SocketAddr, next_via: &str, call_id: &str) -> SipMessage {
    SipMessage::response(200, "OK", "INVITE", call_id)
        .via(&via(
            "UDP",
            &stg.to_string(),
            &format!("z9hG4bK-stray-{call_id}"),
        ))
        .via(next_via)
}

// === 1. stray responses ===

/// A 200 OK from outside whose next Via is a Redis on loopback, with a folded header line
/// that Redis would take as `SET pwned x`: nothing reaches Redis, the response is dropped
/// and counted.
#[test]
fn case01a_stray_response_cannot_reach_redis_on_loopback() {
    if !Netns::new().run_test_inside() {
        return;
    }
    let redis = Redis::start();
    let port = free_port();
    let stg_addr = addr("127.0.0.1", port);
    let stg = StgNode::start(
        "stray-redis",
        &format!(
            "[sip]\nupstream = \"sip:10.0.0.5:5060\"\n{}",
            listeners(&[("udp", stg_addr), ("tcp", stg_addr)])
        ),
    );
    let before = redis.foreign_connections();
    let attacker = UdpSocket::bind("127.0.0.9:0").unwrap();
    let m = stray_response(
        stg_addr,
        &format!("SIP/2.0/TCP 127.0.0.1:{};branch=z9hG4bK-r", redis.port),
        "stray-redis",
    )
    .header("Subject", "hello\r\n SET pwned x");
    let raw = m.build();
    attacker.send_to(&raw, stg_addr).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        redis.get("pwned"),
        "",
        "the stray response wrote into Redis"
    );
    assert_eq!(
        redis.foreign_connections(),
        before,
        "stg connected to the Redis named by a stray response's Via"
    );
    assert!(
        recv_all(&attacker, Duration::from_millis(100)).is_empty(),
        "nothing goes back for a stray response"
    );
    assert!(udp_device_served(stg_addr, "127.0.0.2", "redis"));
    assert_eq!(
        stg.wait_counter(
            "stg_sip_dropped_total{reason=\"stray_response\"}",
            1.0,
            Duration::from_secs(3)
        ),
        1.0,
        "the stray response is counted"
    );
}

/// Stray responses whose next Via is an inside host written as an IPv4-mapped IPv6 address
/// (`[::ffff:10.0.0.6]`, which today passes the inside-network check): nothing arrives at
/// the inside host, over UDP or TCP.
#[test]
fn case01b_stray_response_cannot_reach_an_inside_host() {
    if !Netns::new()
        .addrs(&["10.0.0.5", "10.0.0.6"])
        .run_test_inside()
    {
        return;
    }
    let inside = Victim::start("10.0.0.6");
    let port = free_port();
    let stg_addr = addr("127.0.0.1", port);
    let stg = StgNode::start(
        "stray-inside",
        &format!(
            "[sip]\nupstream = \"sip:10.0.0.5:5060\"\ntrusted_networks = [\"10.0.0.0/8\"]\n{}",
            listeners(&[("udp", stg_addr), ("tcp", stg_addr)])
        ),
    );
    let attacker = UdpSocket::bind("127.0.0.9:0").unwrap();
    let vport = inside.addr.port();
    let nexts = [
        format!("SIP/2.0/UDP [::ffff:10.0.0.6]:{vport};branch=z9hG4bK-m1"),
        format!("SIP/2.0/TCP [::ffff:10.0.0.6]:{vport};branch=z9hG4bK-m2"),
        format!("SIP/2.0/UDP 10.0.0.6:{vport};branch=z9hG4bK-m3"),
        format!("SIP/2.0/TCP 10.0.0.6:{vport};branch=z9hG4bK-m4"),
    ];
    for (i, next) in nexts.iter().enumerate() {
        let m = stray_response(stg_addr, next, &format!("stray-inside-{i}"));
        attacker.send_to(&m.build(), stg_addr).unwrap();
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        inside.hits().is_empty(),
        "stray responses reached the inside host: {:?}",
        inside.hits()
    );
    assert!(udp_device_served(stg_addr, "127.0.0.2", "inside"));
    assert_eq!(
        stg.wait_counter(
            "stg_sip_dropped_total{reason=\"stray_response\"}",
            4.0,
            Duration::from_secs(3)
        ),
        4.0,
        "each stray response is counted"
    );
}

/// The Python device: connects over TLS from 127.0.0.4, asks OPTIONS, prints `port N` and
/// `status S`, then on each line of stdin listens for a second and prints `got N bytes:
/// ...` or `nothing`.
const TLS_DEVICE: &str = r#"
import socket, ssl, sys
host, port, options = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
raw = socket.create_connection((host, port), timeout=5, source_address=("127.0.0.4", 0))
s = ctx.wrap_socket(raw)
local = s.getsockname()
print("port", local[1], flush=True)
line = sys.stdin.readline()
s.sendall(line.strip().replace("\\r\\n", "\r\n").replace("LOCAL", "%s:%d" % local).encode())
data = s.recv(65536)
print("status", data.split(b" ")[1].decode(), flush=True)
for _ in sys.stdin:
    s.settimeout(1.0)
    try:
        data = s.recv(65536)
        print("got", len(data), "bytes:", data[:60], flush=True)
    except socket.timeout:
        print("nothing", flush=True)
"#;

/// A stray UDP 200 from another address whose next Via names a second device's TLS address
/// must not be written into that device's live TLS session.
#[test]
fn case01c_stray_response_cannot_enter_another_devices_tls_session() {
    use std::io::{BufRead, BufReader};
    if !Netns::new().run_test_inside() {
        return;
    }
    let (port, tls) = (free_port(), free_port());
    let stg_addr = addr("127.0.0.1", port);
    let tls_addr = addr("127.0.0.1", tls);
    let stg = StgNode::start(
        "stray-tls",
        &format!(
            "[sip]\nupstream = \"sip:10.0.0.5:5060\"\n{}",
            listeners(&[("udp", stg_addr), ("tls", tls_addr)])
        ),
    );
    let mut device = KillOnDrop(
        Command::new(PYTHON)
            .args(["-c", TLS_DEVICE, "127.0.0.1", &tls.to_string(), ""])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 (Debian package python3) is needed"),
    );
    let device = &mut device.0;
    let (tx, rx) = std::sync::mpsc::channel();
    let out = device.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let next = || {
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the TLS device said nothing")
    };
    let dport: u16 = next()
        .strip_prefix("port ")
        .expect("port line")
        .parse()
        .unwrap();
    let options = SipMessage::request("OPTIONS", &format!("sip:{tls_addr}"), "tls-device")
        .via("SIP/2.0/TLS LOCAL;branch=z9hG4bK-tlsdev;rport")
        .build();
    let mut stdin = device.stdin.take().unwrap();
    let line = String::from_utf8(options)
        .unwrap()
        .replace("\r\n", "\\r\\n");
    writeln!(stdin, "{line}").unwrap();
    assert_eq!(next(), "status 200", "the device's session is live");

    let attacker = UdpSocket::bind("127.0.0.9:0").unwrap();
    let m = stray_response(
        stg_addr,
        &format!("SIP/2.0/TLS 127.0.0.4:{dport};branch=z9hG4bK-tls"),
        "stray-tls",
    );
    attacker.send_to(&m.build(), stg_addr).unwrap();
    writeln!(stdin, "listen").unwrap();
    let heard = next();
    assert_eq!(
        heard, "nothing",
        "a forged response from 127.0.0.9 was written into the device's TLS session"
    );
    assert!(udp_device_served(stg_addr, "127.0.0.2", "tls"));
    assert_eq!(
        stg.wait_counter(
            "stg_sip_dropped_total{reason=\"stray_response\"}",
            1.0,
            Duration::from_secs(3)
        ),
        1.0
    );
}

// === 2. a response that loops through stg ===

/// One ~62 KB response with 2,800 Vias all naming stg's own listener (port 5060, so each
/// Via is 22 bytes): parsed once and dropped, 20 times over, for well under a second of CPU.
#[test]
fn case02_looping_response_is_parsed_once_and_dropped() {
    if !Netns::new().run_test_inside() {
        return;
    }
    let stg_addr = addr("127.0.0.1", 5060);
    let stg = StgNode::start_with(
        "loop",
        &format!(
            "[sip]\nupstream = \"sip:10.0.0.5:5060\"\n{}",
            listeners(&[("udp", stg_addr)])
        ),
        StgOpts {
            log_level: "info",
            ..StgOpts::default()
        },
    );
    let mut m = SipMessage::response(200, "OK", "OPTIONS", "loop");
    for _ in 0..28 {
        m = m.via(&vec!["SIP/2.0/UDP 127.0.0.1"; 100].join(","));
    }
    let raw = m.build();
    assert!(raw.len() > 60_000 && raw.len() < 65_000, "{}", raw.len());
    let attacker = UdpSocket::bind("127.0.0.9:0").unwrap();
    let cpu_before = stg.cpu_seconds();
    for _ in 0..20 {
        attacker.send_to(&raw, stg_addr).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    let dropped = stg.wait_counter(
        "stg_sip_dropped_total{reason=\"stray_response\"}",
        20.0,
        Duration::from_secs(5),
    );
    let cpu = stg.cpu_seconds() - cpu_before;
    println!("20 looping responses: {cpu:.2} s of CPU, {dropped} counted as stray");
    assert!(
        cpu < 0.5,
        "20 looping responses cost {cpu:.2} s of CPU (one parse each should be milliseconds)"
    );
    assert_eq!(dropped, 20.0, "each looping response is one stray drop");
    assert!(udp_device_served(stg_addr, "127.0.0.2", "loop"));
}

// === 3. outbound connects ===

/// Under `RLIMIT_NOFILE` 1024, 1,200 stray responses whose next Via is a TCP port that
/// swallows SYNs: stg opens no connection towards it, its descriptors stay low, and a TCP
/// device from another address is served throughout.
#[test]
fn case03_stray_responses_open_no_outbound_connections() {
    if !Netns::new().run_test_inside() {
        return;
    }
    let swallow = free_port();
    sh(&format!(
        "nft add table inet t && nft add chain inet t in '{{ type filter hook input priority 0; }}' && nft add rule inet t in tcp dport {swallow} drop"
    ));
    let port = free_port();
    let stg_addr = addr("127.0.0.1", port);
    let stg = StgNode::start_with(
        "connects",
        &format!(
            "[sip]\nupstream = \"sip:10.0.0.5:5060\"\n{}",
            listeners(&[("udp", stg_addr), ("tcp", stg_addr)])
        ),
        StgOpts {
            log_level: "info",
            wrapper: &["prlimit", "--nofile=1024:1024", "--"],
        },
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", stg.pid())).unwrap();
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max open files") && l.contains("1024")),
        "prlimit did not apply:\n{limits}"
    );
    let syn_sent = || {
        sh(&format!("ss -Htn state syn-sent '( dport = :{swallow} )'"))
            .lines()
            .count()
    };
    let attacker = UdpSocket::bind("127.0.0.9:0").unwrap();
    let udp_drops_before = udp_socket_drops(stg_addr);
    let (mut max_syn, mut max_fds, mut refused_devices) = (0, 0, Vec::new());
    let started = Instant::now();
    let mut sent = 0u32;
    while sent < 1200 && started.elapsed() < Duration::from_secs(10) {
        let m = stray_response(
            stg_addr,
            &format!("SIP/2.0/TCP 127.0.0.1:{swallow};branch=z9hG4bK-c{sent}"),
            &format!("connect-{sent}"),
        );
        attacker.send_to(&m.build(), stg_addr).unwrap();
        sent += 1;
        if sent.is_multiple_of(25) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if sent.is_multiple_of(200) {
            max_syn = max_syn.max(syn_sent());
            max_fds = max_fds.max(stg.fd_count());
            if !tcp_device_served(stg_addr, "127.0.0.2", &format!("c{sent}")) {
                refused_devices.push(sent);
            }
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    max_syn = max_syn.max(syn_sent());
    max_fds = max_fds.max(stg.fd_count());
    println!(
        "{sent} strays in {:?}: at most {max_syn} SYN-SENT, {max_fds} descriptors",
        started.elapsed()
    );
    assert_eq!(
        max_syn, 0,
        "stg connected towards the port named by stray responses"
    );
    assert!(max_fds < 200, "stg held {max_fds} descriptors");
    assert!(
        refused_devices.is_empty() && tcp_device_served(stg_addr, "127.0.0.2", "after"),
        "the TCP device was not served after {refused_devices:?} strays"
    );
    let dropped = stg.wait_counter(
        "stg_sip_dropped_total{reason=\"stray_response\"}",
        f64::from(sent),
        Duration::from_secs(5),
    );
    let lost = udp_socket_drops(stg_addr) - udp_drops_before;
    assert!(
        dropped + lost as f64 >= f64::from(sent),
        "{dropped} strays counted of {sent} sent ({lost} lost in the kernel)"
    );
}

// === 4. reflection ===

/// stg's own rejections of requests from an unverified UDP source: one answer per request
/// at most (no Timer G retransmissions, here with T1 = 50 ms), never more bytes back than
/// came in (an answer larger than its request is dropped and counted), and a normal-sized
/// request still gets its 483 once.
#[test]
fn case04_own_rejections_are_sent_once_and_never_amplify() {
    if !Netns::new().run_test_inside() {
        return;
    }
    let pbx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = free_port();
    let stg_addr = addr("127.0.0.1", port);
    let stg = StgNode::start(
        "reflect",
        &format!(
            "[sip]\nupstream = \"sip:{}\"\n\n[sip.timers]\nt1 = \"50ms\"\n{}",
            pbx.local_addr().unwrap(),
            listeners(&[("udp", stg_addr)])
        ),
    );
    let minimal = |uri: &str, cid: &str, extra: &str| {
        format!(
            "INVITE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.66;branch=z9hG4bK-{cid}\r\nMax-Forwards: {}\r\nFrom: <sip:a@192.0.2.66>;tag=1\r\nTo: <sip:b@192.0.2.10>\r\nCall-ID: {cid}\r\nCSeq: 1 INVITE\r\n{extra}\r\n",
            if cid == "mf0" { 0 } else { 70 }
        )
        .into_bytes()
    };
    // 482: a request stg itself forwarded, sent back to it from outside.
    let setup = UdpSocket::bind("127.0.0.1:0").unwrap();
    let first = request(
        "INVITE",
        "sip:bob@192.0.2.10",
        "looped",
        "UDP",
        setup.local_addr().unwrap(),
    )
    .build();
    setup.send_to(&first, stg_addr).unwrap();
    let looped = recv_until(&pbx, Duration::from_secs(3), |r| r.starts_with(b"INVITE"))
        .expect("the INVITE to loop was not forwarded");
    let normal = SipMessage::request("INVITE", "sip:bob@192.0.2.10", "mf0-normal")
        .via("SIP/2.0/UDP 192.0.2.66:5060;branch=z9hG4bK-mf0-normal;rport")
        .set("Max-Forwards", "0")
        .header("Contact", "<sip:alice@192.0.2.66:5060>")
        .header(
            "Allow",
            "INVITE, ACK, CANCEL, BYE, OPTIONS, MESSAGE, NOTIFY",
        )
        .header("Supported", "replaces, timer")
        .header("User-Agent", "softphone/1.0")
        .padded_to(450)
        .build();
    let cases: Vec<(&str, u16, Vec<u8>)> = vec![
        ("mf0", 483, minimal("sip:b@192.0.2.10", "mf0", "")),
        ("scheme", 416, minimal("foo:b@192.0.2.10", "scheme", "")),
        (
            "preq",
            420,
            minimal("sip:b@192.0.2.10", "preq", "Proxy-Require: foo\r\n"),
        ),
        ("looped", 482, looped),
        ("mf0-normal", 483, normal),
    ];
    let attacker = UdpSocket::bind("127.0.0.9:0").unwrap();
    let mut bytes_out = 0;
    for (_, _, raw) in &cases {
        attacker.send_to(raw, stg_addr).unwrap();
        bytes_out += raw.len();
    }
    let got = recv_all(&attacker, Duration::from_millis(2200));
    let bytes_in: usize = got.iter().map(|(r, _)| r.len()).sum();
    let answers_to = |cid: &str| -> Vec<Vec<u8>> {
        got.iter()
            .map(|(r, _)| r.clone())
            .filter(|r| header_values(r, "Call-ID").first().map(String::as_str) == Some(cid))
            .collect()
    };
    for (cid, _, raw) in &cases {
        let sizes: Vec<usize> = answers_to(cid).iter().map(Vec::len).collect();
        println!("{cid}: {} bytes in, answers of {sizes:?} bytes", raw.len());
    }
    let mut answered = 0;
    for (cid, want, raw) in &cases {
        let answers = answers_to(cid);
        assert!(
            answers.len() <= 1,
            "{cid} ({} bytes): answered {} times ({:?} bytes)",
            raw.len(),
            answers.len(),
            answers.iter().map(Vec::len).collect::<Vec<_>>()
        );
        if let Some(a) = answers.first() {
            assert_eq!(status_code(a), Some(*want), "{cid}");
            answered += 1;
        }
    }
    let normal_answers = got
        .iter()
        .filter(|(r, _)| {
            header_values(r, "Call-ID").first().map(String::as_str) == Some("mf0-normal")
        })
        .count();
    assert_eq!(
        normal_answers, 1,
        "a normal-sized request gets its 483 once"
    );
    assert!(
        bytes_in <= bytes_out,
        "{bytes_in} bytes reflected for {bytes_out} sent"
    );
    let amplification = stg.wait_counter(
        "stg_sip_dropped_total{reason=\"amplification\"}",
        (cases.len() - answered) as f64,
        Duration::from_secs(3),
    );
    assert_eq!(
        answered + amplification as usize,
        cases.len(),
        "each unanswered rejection is counted as amplification"
    );
}

// === 5. transactions ===

/// Sends `count` 4 KB MESSAGEs from `sock` within `limit`, paced; returns how many went.
fn message_flood(sock: &UdpSocket, stg: SocketAddr, tag: &str, count: u32, limit: Duration) -> u32 {
    let local = sock.local_addr().unwrap();
    let started = Instant::now();
    let mut sent = 0;
    while sent < count && started.elapsed() < limit {
        let m = request(
            "MESSAGE",
            "sip:bob@192.0.2.10",
            &format!("{tag}-{sent}"),
            "UDP",
            local,
        )
        .padded_to(4096)
        .build();
        let _ = sock.send_to(&m, stg);
        sent += 1;
        if sent % 40 == 0 {
            std::thread::sleep(Duration::from_millis(8));
        }
    }
    sent
}

/// Counts what comes back to a flooding socket: (503s with Retry-After, 503s without,
/// other answers).
fn count_answers(
    sock: UdpSocket,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(u64, u64, u64)> {
    std::thread::spawn(move || {
        let (mut with, mut without, mut other) = (0, 0, 0);
        let mut buf = vec![0u8; 65535];
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                match status_code(&buf[..n]) {
                    Some(503) if !header_values(&buf[..n], "Retry-After").is_empty() => with += 1,
                    Some(503) => without += 1,
                    _ => other += 1,
                }
            }
        }
        (with, without, other)
    })
}

/// 30,000 × 4 KB MESSAGEs from one outside source to a silent upstream, with the default
/// caps: RSS stays under 64 MB, requests beyond `sip.max_transactions_per_source` (200) get
/// 503 + Retry-After and are counted, and a device at another address is served.
#[test]
fn case05a_transactions_are_capped_per_source() {
    if !Netns::new().run_test_inside() {
        return;
    }
    let pbx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = free_port();
    let stg_addr = addr("127.0.0.1", port);
    let stg = StgNode::start_with(
        "tx-cap",
        &format!(
            "[sip]\nupstream = \"sip:{}\"\n{}",
            pbx.local_addr().unwrap(),
            listeners(&[("udp", stg_addr)])
        ),
        StgOpts {
            log_level: "info",
            ..StgOpts::default()
        },
    );
    let rss_start = stg.rss_kib();
    let attacker = udp_socket_with_big_buffer("127.0.0.9");
    let stop = Arc::new(AtomicBool::new(false));
    let answers = count_answers(attacker.try_clone().unwrap(), stop.clone());
    let rss = rss_sampler(stg.pid(), stop.clone());
    let served = Arc::new(AtomicU64::new(0));
    let unserved = Arc::new(AtomicU64::new(0));
    let device = {
        let (stop, served, unserved) = (stop.clone(), served.clone(), unserved.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && i < 30 {
                let ok = udp_device_served(stg_addr, "127.0.0.2", &format!("tx{i}"));
                let counter = if ok { &served } else { &unserved };
                counter.fetch_add(1, Ordering::Relaxed);
                i += 1;
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    let drops_before = udp_socket_drops(stg_addr);
    let started = Instant::now();
    let sent = message_flood(
        &attacker,
        stg_addr,
        "flood",
        30_000,
        Duration::from_secs(15),
    );
    let took = started.elapsed();
    let lost = udp_socket_drops(stg_addr) - drops_before;
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let (with_ra, without_ra, other) = answers.join().unwrap();
    let max_rss = rss.join().unwrap();
    device.join().unwrap();
    println!(
        "{sent} MESSAGEs in {took:?} ({lost} lost at stg's socket): RSS {rss_start} -> max \
         {max_rss} KiB; 503 with Retry-After {with_ra}, without {without_ra}, other answers \
         {other}"
    );
    assert!(
        max_rss < 64 * 1024,
        "RSS reached {} MB under the flood",
        max_rss / 1024
    );
    assert!(
        with_ra > 0 && without_ra == 0,
        "requests beyond the per-source cap get 503 with Retry-After ({with_ra} with, {without_ra} without)"
    );
    let refused = stg.counter("stg_sip_refused_total{reason=\"transactions_per_source\"}");
    assert!(
        refused >= with_ra as f64,
        "{refused} refusals counted, {with_ra} 503s received"
    );
    // When stg's socket overflowed, any datagram may have been lost in the kernel, the
    // device's too: then one check in four may go unanswered.
    let (served, unserved) = (
        served.load(Ordering::Relaxed),
        unserved.load(Ordering::Relaxed),
    );
    assert!(
        if lost == 0 {
            unserved == 0
        } else {
            served >= 3 * unserved && served > 0
        },
        "the device at 127.0.0.2 went unserved {unserved} times (served {served}; {lost} \
         datagrams lost at stg's socket)"
    );
}

/// Several sources together past `sip.max_transactions` (500 here; each source stays within
/// its own cap of 200... at 300 each, 100 over): the global cap refuses with 503 +
/// Retry-After, counted under `transactions`, and a device at another address is answered.
#[test]
fn case05b_transactions_are_capped_globally() {
    if !Netns::new().run_test_inside() {
        return;
    }
    let pbx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = free_port();
    let stg_addr = addr("127.0.0.1", port);
    let stg = StgNode::start_with(
        "tx-global",
        &format!(
            "[sip]\nupstream = \"sip:{}\"\nmax_transactions = 500\n{}",
            pbx.local_addr().unwrap(),
            listeners(&[("udp", stg_addr)])
        ),
        StgOpts {
            log_level: "info",
            ..StgOpts::default()
        },
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mut counters = Vec::new();
    let mut socks = Vec::new();
    for i in 11..16 {
        let s = udp_socket_with_big_buffer(&format!("127.0.0.{i}"));
        counters.push(count_answers(s.try_clone().unwrap(), stop.clone()));
        socks.push(s);
    }
    let rss = rss_sampler(stg.pid(), stop.clone());
    for (i, s) in socks.iter().enumerate() {
        message_flood(s, stg_addr, &format!("g{i}"), 300, Duration::from_secs(5));
    }
    std::thread::sleep(Duration::from_millis(500));
    // Answered: a 200, or a 503 with Retry-After when the node itself has no room.
    let device = UdpSocket::bind("127.0.0.2:0").unwrap();
    let local = device.local_addr().unwrap();
    let m = request(
        "OPTIONS",
        &format!("sip:{stg_addr}"),
        "g-legit",
        "UDP",
        local,
    )
    .build();
    device.send_to(&m, stg_addr).unwrap();
    let answer = recv_until(&device, Duration::from_secs(3), |r| {
        status_code(r).is_some_and(|s| s >= 200)
    });
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let max_rss = rss.join().unwrap();
    let mut with_ra = 0;
    for c in counters {
        with_ra += c.join().unwrap().0;
    }
    let global = stg.counter("stg_sip_refused_total{reason=\"transactions\"}");
    println!("1,500 MESSAGEs from 5 sources: {with_ra} 503s, {global} global refusals, RSS {max_rss} KiB");
    assert!(global >= 1.0, "the global cap refused nothing");
    assert!(with_ra >= 1, "no 503 with Retry-After came back");
    assert!(
        answer
            .as_deref()
            .is_some_and(|r| matches!(status_code(r), Some(200))
                || (status_code(r) == Some(503) && !header_values(r, "Retry-After").is_empty())),
        "the device at 127.0.0.2 was not answered: {:?}",
        answer.map(|r| String::from_utf8_lossy(&r).into_owned())
    );
    assert!(max_rss < 64 * 1024, "RSS reached {} MB", max_rss / 1024);
}

// === 6. connections ===

/// A TCP peer that sends requests producing large responses and never reads: with
/// `sip.write_timeout = "2s"` stg closes it within a few seconds and counts it, while a
/// device at another address is served.
#[test]
fn case06a_non_reading_peer_is_closed_by_the_write_timeout() {
    if !Netns::new().run_test_inside() {
        return;
    }
    let port = free_port();
    let stg_addr = addr("127.0.0.1", port);
    let stg = StgNode::start_with(
        "write-timeout",
        &format!(
            "[sip]\nupstream = \"sip:10.0.0.5:5060\"\nwrite_timeout = \"2s\"\n{}",
            listeners(&[("tcp", stg_addr)])
        ),
        StgOpts {
            log_level: "info",
            ..StgOpts::default()
        },
    );
    let mut peer = connect_from("127.0.0.9", stg_addr);
    let local = peer.local_addr().unwrap();
    peer.set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    // Each response copies the 30 KB Via: the peer's receive buffer and stg's send buffer
    // (about 10 MB together) are full after a few hundred. No more than 500 (15 MB): the
    // point is a peer that stops reading, not how fast one connection can keep the core
    // busy.
    let big_via = format!(
        "SIP/2.0/TCP {local};branch=z9hG4bK-nr;x={}",
        "p".repeat(30_000)
    );
    // Whole messages only (a partial one would be a framing error, closed for that).
    let started = Instant::now();
    let (mut sent, mut blocked_since) = (0, None::<Instant>);
    let mut pending: Vec<u8> = Vec::new();
    let mut off = 0;
    while started.elapsed() < Duration::from_secs(5) {
        if off == pending.len() {
            if sent == 500 {
                break;
            }
            pending =
                SipMessage::request("OPTIONS", &format!("sip:{stg_addr}"), &format!("nr-{sent}"))
                    .via(&big_via)
                    .build();
            off = 0;
            sent += 1;
        }
        match peer.write(&pending[off..]) {
            Ok(n) => {
                off += n;
                blocked_since = None;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if blocked_since.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(1)
                {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    println!(
        "non-reading peer: {sent} requests written in {:?}",
        started.elapsed()
    );
    // Within a few seconds: a debug build may still be working through what the peer sent.
    let t = Instant::now();
    let mut served = false;
    for i in 0..3 {
        if tcp_device_served(stg_addr, "127.0.0.2", &format!("nr{i}")) {
            served = true;
            break;
        }
    }
    assert!(
        served,
        "a device at another address is not served while the peer blocks ({:?})",
        t.elapsed()
    );
    let closed_metric = stg.wait_counter(
        "stg_connections_closed_total{reason=\"write_timeout\"}",
        1.0,
        Duration::from_secs(8),
    );
    // Whatever stg had written before it gave up is still readable; then EOF or reset.
    peer.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let drain_until = Instant::now() + Duration::from_secs(10);
    let closed = loop {
        match peer.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) if Instant::now() < drain_until => {}
            Ok(_) => break false,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break false
            }
            Err(_) => break true,
        }
    };
    assert!(closed, "stg kept the non-reading connection open");
    assert!(closed_metric >= 1.0, "the write timeout is not counted");
}

/// A TCP connection from `src` asks the node for OPTIONS: `(Some(conn), true)` when a 200
/// comes back (admitted), `(None, false)` when the connection is refused or closed at once.
fn admitted(src: &str, to: SocketAddr, tag: String) -> (Option<TcpStream>, bool) {
    let Ok(mut s) = try_connect_from(src, to) else {
        return (None, false);
    };
    let local = s.local_addr().unwrap();
    let m = request("OPTIONS", &format!("sip:{to}"), &tag, "TCP", local).build();
    let _ = s.write_all(&m);
    match read_sip(&mut s, Duration::from_secs(2)) {
        Ok(Some(r)) if status_code(&r) == Some(200) => (Some(s), true),
        Err(()) => (None, false),
        Ok(other) => panic!(
            "{src}: neither served nor refused: {:?}",
            other.map(|r| String::from_utf8_lossy(&r).into_owned())
        ),
    }
}

/// The 65th connection from one source is refused at once and counted; two IPv6 addresses
/// of one /64 share that budget.
#[test]
fn case06b_connections_are_capped_per_source_and_per_v6_prefix() {
    if !Netns::new()
        .addrs(&["fd00::1/64", "fd00::2", "fd00::3"])
        .run_test_inside()
    {
        return;
    }
    let port = free_port();
    let stg4 = addr("127.0.0.1", port);
    let stg6: SocketAddr = format!("[fd00::1]:{port}").parse().unwrap();
    let stg = StgNode::start_with(
        "conn-cap",
        &format!(
            "[sip]\nupstream = \"sip:10.0.0.5:5060\"\nmax_connections_per_source = 64\n{}",
            listeners(&[("tcp", stg4), ("tcp", stg6)])
        ),
        StgOpts {
            log_level: "info",
            ..StgOpts::default()
        },
    );
    let mut held = Vec::new();
    for i in 0..64 {
        let (s, ok) = admitted("127.0.0.9", stg4, format!("v4-{i}"));
        assert!(ok, "connection {} from 127.0.0.9 refused", i + 1);
        held.push(s);
    }
    let t = Instant::now();
    let (_, ok) = admitted("127.0.0.9", stg4, "v4-65".into());
    assert!(!ok, "the 65th connection from 127.0.0.9 was admitted");
    assert!(t.elapsed() < Duration::from_secs(1), "not refused at once");
    assert!(tcp_device_served(stg4, "127.0.0.2", "v4"));

    for i in 0..64 {
        let src = if i % 2 == 0 { "fd00::2" } else { "fd00::3" };
        let (s, ok) = admitted(src, stg6, format!("v6-{i}"));
        assert!(ok, "connection {} from {src} refused", i + 1);
        held.push(s);
    }
    let (_, ok) = admitted("fd00::2", stg6, "v6-65".into());
    assert!(
        !ok,
        "fd00::2 and fd00::3 (one /64) got more than 64 connections together"
    );
    let refused = stg.wait_counter(
        "stg_connections_refused_total{reason=\"per_source_limit\"}",
        2.0,
        Duration::from_secs(3),
    );
    assert_eq!(refused, 2.0);
}

/// Past `sip.max_connections` (20 here) newcomers from any address are refused at once and
/// counted, while the admin endpoint still answers; a freed slot admits again. (The
/// `max_connections` reason label is the edge branch's name; the brief names none.)
#[test]
fn case06c_connections_are_capped_globally() {
    if !Netns::new().run_test_inside() {
        return;
    }
    let port = free_port();
    let stg_addr = addr("127.0.0.1", port);
    let stg = StgNode::start_with(
        "conn-global",
        &format!(
            "[sip]\nupstream = \"sip:10.0.0.5:5060\"\nmax_connections = 20\n{}",
            listeners(&[("tcp", stg_addr)])
        ),
        StgOpts {
            log_level: "info",
            ..StgOpts::default()
        },
    );
    let mut held = Vec::new();
    for i in 0..20 {
        let src = format!("127.0.0.{}", 30 + i / 2);
        let (s, ok) = admitted(&src, stg_addr, format!("g-{i}"));
        assert!(
            ok,
            "connection {} (from {src}) refused below the cap",
            i + 1
        );
        held.push(s);
    }
    let t = Instant::now();
    let (_, ok) = admitted("127.0.0.50", stg_addr, "g-21".into());
    assert!(
        !ok,
        "the 21st connection was admitted past sip.max_connections"
    );
    assert!(t.elapsed() < Duration::from_secs(1), "not refused at once");
    assert!(
        stg.metrics().contains("stg_"),
        "the admin endpoint must answer with the connections full"
    );
    assert_eq!(
        stg.wait_counter(
            "stg_connections_refused_total{reason=\"max_connections\"}",
            1.0,
            Duration::from_secs(3)
        ),
        1.0
    );
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(3);
    while !admitted("127.0.0.50", stg_addr, "g-22".into()).1 {
        assert!(
            Instant::now() < deadline,
            "a freed slot does not admit again"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

// === 7. WebSocket Origin ===

/// Upgrades with `Origin` from outside the allowlist get 403 (counted); listed origins and
/// native clients (no `Origin`) get 101.
#[test]
fn case07_websocket_origin_allowlist() {
    if !Netns::new().run_test_inside() {
        return;
    }
    let ws = free_port();
    let ws_addr = addr("127.0.0.1", ws);
    let stg = StgNode::start(
        "ws-origin",
        &format!(
            "[sip]\nupstream = \"sip:10.0.0.5:5060\"\nws_allowed_origins = [\"https://good.example\"]\n{}",
            listeners(&[("ws", ws_addr)])
        ),
    );
    let upgrade = |origin: Option<&str>| -> u16 {
        let mut s = TcpStream::connect(ws_addr).unwrap();
        let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
        write!(
            s,
            "GET / HTTP/1.1\r\nHost: 127.0.0.1:{ws}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\n{origin}\r\n"
        )
        .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).unwrap_or(0);
        let text = String::from_utf8_lossy(&buf[..n]);
        text.split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP status: {text:?}"))
    };
    assert_eq!(
        upgrade(Some("https://evil.example")),
        403,
        "a page from evil.example may not drive a browser as a SIP client"
    );
    assert_eq!(upgrade(Some("https://good.example")), 101);
    assert_eq!(upgrade(None), 101, "native clients send no Origin");
    assert_eq!(
        stg.wait_counter(
            "stg_connections_refused_total{reason=\"ws_origin\"}",
            1.0,
            Duration::from_secs(3)
        ),
        1.0
    );
}

// === 8. fingerprints ===

/// Whether two identifiers (To-tags, or branches without `z9hG4bK`) carry a counter: split
/// into alphanumeric runs, a pair of runs at the same place whose trailing hex digits (at
/// least 6 of them, so random runs almost never collide) are different numbers less than
/// 1,000 apart. Counters also hide behind a fixed prefix (`stg1f3a9c`, `stg1f3a9d`).
fn looks_sequential(a: &str, b: &str) -> bool {
    let runs = |s: &str| -> Vec<String> {
        s.split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|r| !r.is_empty())
            .map(str::to_string)
            .collect()
    };
    let trailing_hex = |r: &str| -> Option<u64> {
        let start = r
            .char_indices()
            .rev()
            .take_while(|(_, c)| c.is_ascii_hexdigit())
            .last()?
            .0;
        let tail = &r[start..];
        let tail = &tail[tail.len().saturating_sub(16)..];
        (tail.len() >= 6).then(|| u64::from_str_radix(tail, 16).ok())?
    };
    runs(a).iter().zip(runs(b).iter()).any(|(x, y)| {
        matches!(
            (trailing_hex(x), trailing_hex(y)),
            (Some(p), Some(q)) if p != q && p.abs_diff(q) < 1_000
        )
    })
}

#[test]
fn sequential_identifiers_are_recognised() {
    assert!(looks_sequential(
        "stg30f5c12463265028",
        "stg30f5c12463265029"
    ));
    assert!(looks_sequential(
        "-f5134c54dffdc28b-c0b50ee137c7f04a",
        "-4f03d24c92b1bf64-c0b50ee137c7f04c"
    ));
    assert!(!looks_sequential("9f2c41d07be5", "03aa7e51c9d4"));
    assert!(!looks_sequential(
        "-f5134c54dffdc28b-v1",
        "-4f03d24c92b1bf64-v1"
    ));
}

fn common_prefix(a: &str, b: &str) -> usize {
    a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count()
}

/// Nothing on the wire names stg or counts its traffic: random To-tags and branches, no
/// product name in any header of its own responses or of what it adds to forwarded
/// requests, and a self-signed certificate that does not name the host.
#[test]
fn case08_nothing_on_the_wire_fingerprints_stg() {
    const HOST: &str = "edgehost-fp7";
    if !Netns::new().hostname(HOST).run_test_inside() {
        return;
    }
    let uas = Uas::start("127.0.0.1");
    let (port, tls) = (free_port(), free_port());
    let stg_addr = addr("127.0.0.1", port);
    let _stg = StgNode::start(
        "fingerprint",
        &format!(
            "[sip]\nupstream = \"sip:{}\"\n{}",
            uas.addr,
            listeners(&[("udp", stg_addr), ("tls", addr("127.0.0.1", tls))])
        ),
    );
    let device = UdpSocket::bind("127.0.0.9:0").unwrap();
    let local = device.local_addr().unwrap();
    let ask = |m: Vec<u8>, cid: &str| -> Vec<u8> {
        device.send_to(&m, stg_addr).unwrap();
        recv_until(&device, Duration::from_secs(3), |r| {
            header_values(r, "Call-ID").first().map(String::as_str) == Some(cid)
                && status_code(r).is_some_and(|s| s >= 200)
        })
        .unwrap_or_else(|| panic!("{cid}: no final answer"))
    };
    let mut own = Vec::new();
    for i in 0..3 {
        let cid = format!("fp-opt-{i}");
        own.push(ask(
            request("OPTIONS", &format!("sip:{stg_addr}"), &cid, "UDP", local).build(),
            &cid,
        ));
    }
    own.push(ask(
        request("OPTIONS", "sip:bob@192.0.2.10", "fp-mf0", "UDP", local)
            .set("Max-Forwards", "0")
            .build(),
        "fp-mf0",
    ));
    let tags: Vec<String> = own[..3]
        .iter()
        .map(|r| {
            let to = header_values(r, "To").remove(0);
            to.split(";tag=")
                .nth(1)
                .expect("a To-tag")
                .split(';')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    println!("To-tags: {tags:?}");
    for t in &tags {
        assert!(
            !t.to_ascii_lowercase().contains("stg"),
            "To-tag {t} names stg"
        );
    }
    for w in tags.windows(2) {
        assert!(
            common_prefix(&w[0], &w[1]) <= 3 && !looks_sequential(&w[0], &w[1]),
            "To-tags {} and {} are not random",
            w[0],
            w[1]
        );
    }
    for r in &own {
        let head = String::from_utf8_lossy(r)
            .split("\r\n\r\n")
            .next()
            .unwrap_or_default()
            .to_string();
        for line in head.lines().skip(1) {
            assert!(
                !line.to_ascii_lowercase().contains("stg"),
                "stg's own response names it: {line}"
            );
        }
    }
    // What stg adds to requests it forwards (its Via, Record-Route).
    let mut branches = Vec::new();
    for i in 0..2 {
        let cid = format!("fp-fwd-{i}");
        let m = request("MESSAGE", "sip:bob@192.0.2.10", &cid, "UDP", local).build();
        device.send_to(&m, stg_addr).unwrap();
        let seen = uas
            .wait_request(cid.as_bytes(), Duration::from_secs(3))
            .expect("MESSAGE not forwarded");
        let text = String::from_utf8_lossy(&seen.raw).into_owned();
        let top_via = header_values(&seen.raw, "Via").remove(0);
        for line in text.lines().filter(|l| {
            (l.starts_with("Via:") && l.contains(&stg_addr.to_string()))
                || l.starts_with("Record-Route:")
        }) {
            assert!(
                !line.to_ascii_lowercase().contains("stg"),
                "a forwarded request names stg: {line}"
            );
        }
        let branch = top_via
            .split(";branch=")
            .nth(1)
            .expect("a branch")
            .split(';')
            .next()
            .unwrap()
            .to_string();
        branches.push(branch);
    }
    println!("branches: {branches:?}");
    let strip = |b: &str| b.trim_start_matches("z9hG4bK").to_string();
    assert!(
        !looks_sequential(&strip(&branches[0]), &strip(&branches[1])),
        "branches {} and {} carry a counter",
        branches[0],
        branches[1]
    );
    // The self-signed certificate, as a TLS client sees it.
    let cert = sh(&format!(
        "openssl s_client -connect 127.0.0.1:{tls} </dev/null 2>/dev/null | openssl x509 -noout -subject -ext subjectAltName"
    ));
    println!("certificate: {cert}");
    assert!(
        !cert.to_ascii_lowercase().contains(HOST),
        "the self-signed certificate names the host {HOST}:\n{cert}"
    );
}

// === 9. log flooding ===

/// 10,000 malformed datagrams from one source in about two seconds: a few dozen log lines
/// at most, and the parse-failure counter counts every one that reached the socket.
#[test]
fn case09_malformed_flood_is_logged_with_a_cap_and_counted_exactly() {
    if !Netns::new().run_test_inside() {
        return;
    }
    let port = free_port();
    let stg_addr = addr("127.0.0.1", port);
    let mut stg = StgNode::start_with(
        "log-flood",
        &format!(
            "[sip]\nupstream = \"sip:10.0.0.5:5060\"\n{}",
            listeners(&[("udp", stg_addr)])
        ),
        StgOpts {
            log_level: "info",
            ..StgOpts::default()
        },
    );
    let lines_before = stg.log().lines().count();
    let failures_before = stg.counter_sum("stg_sip_parse_failures_total");
    let kernel_before = udp_socket_drops(stg_addr);
    let attacker = UdpSocket::bind("127.0.0.7:0").unwrap();
    let started = Instant::now();
    for i in 0..10_000u32 {
        let m = format!(
            "INVITE <sip:x@example.com> SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7;branch=z9hG4bK{i}\r\nCall-ID: junk{i}\r\n\r\n"
        );
        attacker.send_to(m.as_bytes(), stg_addr).unwrap();
        if i % 50 == 49 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    println!("10,000 malformed datagrams sent in {:?}", started.elapsed());
    let lost = udp_socket_drops(stg_addr) - kernel_before;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut counted;
    loop {
        counted = stg.counter_sum("stg_sip_parse_failures_total") - failures_before;
        if counted + lost as f64 >= 10_000.0 || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = stg.log();
    let about: Vec<&str> = log
        .lines()
        .skip(lines_before)
        .filter(|l| l.contains("127.0.0.7") || l.to_ascii_lowercase().contains("malformed"))
        .collect();
    println!(
        "{} log lines about the flood; {counted} parse failures counted, {lost} lost in the kernel",
        about.len()
    );
    assert!(
        about.len() <= 40,
        "{} log lines for 10,000 malformed datagrams; the first: {:?}",
        about.len(),
        about.first()
    );
    assert_eq!(
        counted + lost as f64,
        10_000.0,
        "parse failures counted ({counted}) + lost in the kernel ({lost})"
    );
    // The summary comes at the end of a 60 s window; on SIGTERM it may be flushed.
    stg.signal("TERM");
    let _ = stg.wait_exit(Duration::from_secs(5));
    let summary = stg
        .log()
        .lines()
        .any(|l| l.contains("more") && l.contains("127.0.0.7"));
    println!("summary line flushed at exit: {summary}");
}

// === 10. inside routing ===

/// A request from the inside whose Request-URI points at loopback (a Redis) or at stg
/// itself is refused with 403 and counted, and nothing reaches Redis; with
/// `sip.allowed_destinations = ["127.0.0.0/8"]` the same kind of request reaches a UAS
/// on loopback.
#[test]
fn case10a_inside_requests_cannot_reach_loopback() {
    if !Netns::new().addr("10.0.0.5").run_test_inside() {
        return;
    }
    let redis = Redis::start();
    let port = free_port();
    let stg_addr = addr("127.0.0.1", port);
    let base = format!(
        "upstream = \"sip:10.0.0.5:5060\"\ntrusted_networks = [\"10.0.0.0/8\"]\n{}",
        listeners(&[("udp", stg_addr), ("tcp", stg_addr)])
    );
    let pbx = UdpSocket::bind("10.0.0.5:0").unwrap();
    let local = pbx.local_addr().unwrap();
    let final_of = |cid: &str| {
        recv_until(&pbx, Duration::from_secs(3), |r| {
            header_values(r, "Call-ID").first().map(String::as_str) == Some(cid)
                && status_code(r).is_some_and(|s| s >= 200)
        })
        .and_then(|r| status_code(&r))
    };
    {
        // No registrar: a request for the node's own address is then routed like any, and
        // it is the destination filter that must refuse it.
        let stg = StgNode::start(
            "dest-filter",
            &format!("[sip]\n{base}\n[registrar]\ndomains = []\n"),
        );
        let before = redis.foreign_connections();
        let to_redis = request(
            "MESSAGE",
            &format!("sip:x@127.0.0.1:{};transport=tcp", redis.port),
            "to-redis",
            "UDP",
            local,
        )
        .header("Subject", "hi\r\n SET pwned2 x")
        .build();
        pbx.send_to(&to_redis, stg_addr).unwrap();
        let status = final_of("to-redis");
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            redis.get("pwned2"),
            "",
            "an inside request wrote into Redis"
        );
        assert_eq!(
            redis.foreign_connections(),
            before,
            "stg connected to loopback for an inside request"
        );
        assert_eq!(status, Some(403), "the inside source is told 403");
        let to_self = request(
            "MESSAGE",
            &format!("sip:x@{stg_addr}"),
            "to-self",
            "UDP",
            local,
        )
        .build();
        pbx.send_to(&to_self, stg_addr).unwrap();
        assert_eq!(final_of("to-self"), Some(403), "a request to stg itself");
        assert_eq!(
            stg.wait_counter(
                "stg_sip_refused_total{reason=\"destination\"}",
                2.0,
                Duration::from_secs(3)
            ),
            2.0
        );
    }
    // A UAS on loopback, but not on the node's own address.
    let uas = Uas::start("127.0.0.20");
    let _stg = StgNode::start(
        "dest-allowed",
        &format!("[sip]\nallowed_destinations = [\"127.0.0.0/8\"]\n{base}"),
    );
    let allowed = request(
        "MESSAGE",
        &format!("sip:x@{}", uas.addr),
        "to-uas",
        "UDP",
        local,
    )
    .build();
    pbx.send_to(&allowed, stg_addr).unwrap();
    assert!(
        uas.wait_request(b"to-uas", Duration::from_secs(3))
            .is_some(),
        "an allowed destination is reached"
    );
    assert_eq!(final_of("to-uas"), Some(200));
}

/// While a DNS-named upstream cannot be resolved (its nameserver swallows queries), a
/// burst of 50 outside requests starts at most one lookup at a time for the name: far
/// fewer queries than 50 requests × 6.
#[test]
fn case10b_unresolvable_upstream_is_looked_up_once_at_a_time() {
    if !Netns::new().run_test_inside() {
        return;
    }
    let dns = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dns_addr = dns.local_addr().unwrap();
    let queries = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let counter = {
        let (q, s) = (queries.clone(), stop.clone());
        std::thread::spawn(move || {
            dns.set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            let mut buf = [0u8; 1500];
            while !s.load(Ordering::Relaxed) {
                if dns.recv_from(&mut buf).is_ok() {
                    q.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let port = free_port();
    let stg_addr = addr("127.0.0.1", port);
    let _stg = StgNode::start_with(
        "dns-flight",
        &format!(
            "[dns]\nnameservers = [\"{dns_addr}\"]\n\n[sip]\nupstream = \"sip:pbx.example.test\"\n{}",
            listeners(&[("udp", stg_addr)])
        ),
        StgOpts {
            log_level: "info",
            ..StgOpts::default()
        },
    );
    let attacker = UdpSocket::bind("127.0.0.9:0").unwrap();
    let local = attacker.local_addr().unwrap();
    for i in 0..50 {
        let m = request(
            "MESSAGE",
            "sip:bob@192.0.2.10",
            &format!("dns-{i}"),
            "UDP",
            local,
        )
        .build();
        attacker.send_to(&m, stg_addr).unwrap();
    }
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::Relaxed);
    counter.join().unwrap();
    let n = queries.load(Ordering::Relaxed);
    println!("50 requests to an unresolvable upstream: {n} DNS queries in 4 s");
    // One lookup is a handful of queries (NAPTR, SRV, A, AAAA, each retried at most once).
    assert!(
        n <= 12,
        "{n} DNS queries for one name in 4 s: lookups are not merged"
    );
}
