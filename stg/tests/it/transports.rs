//! TLS, WebSocket and PROXY protocol v2 with real clients: TLS 1.2 as the Linphone SDK
//! speaks it, a SIGHUP certificate swap under live connections, WS and WSS calls (RFC 7118),
//! and HAProxy in front with `send-proxy-v2`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::harness::{
    connect_from, free_port, poll_until, shared_dir, temp_dir, wait_log, Peer, StgNode,
};
use crate::sipp::{is_bound, Sipp, Transport};
use crate::uas::Uas;

const PYTHON: &str = "/usr/bin/python3";

fn uac_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/peers/sip_uac.py")
}

/// Runs the Python UAC to completion; returns its stdout lines.
fn uac(mode: &str, url: &str, target: &str) -> Vec<String> {
    let out = Command::new(PYTHON)
        .arg(uac_script())
        .args([mode, url, target])
        .output()
        .expect("python3 with python3-websockets is needed (Debian packages python3, python3-websockets)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "sip_uac.py {mode} {url} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().map(str::to_string).collect()
}

/// A SIPp UAS for one call on TCP at 127.0.0.1:`port`, returned once it listens:
/// `scenario` is the shared bench's `uas_call.xml` (INVITE/180/200, ACK, BYE/200, copying
/// Record-Route) or our `uas_cancel.xml` (rings until CANCEL, 487).
fn sipp_uas(dir: &Path, label: &str, port: u16, scenario: &Path) -> Sipp {
    let local = SocketAddr::from(([127, 0, 0, 1], port));
    Sipp::uas(dir, label, scenario, Transport::Tcp, local, &[])
}

fn openssl_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
        ])
        .args([
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "subjectAltName=DNS:127.0.0.1,IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl (Debian package openssl) is needed to make test certificates")
        .success();
    assert!(ok, "openssl req failed");
    (cert, key)
}

fn fingerprint(lines: &[String]) -> String {
    lines
        .iter()
        .find_map(|l| l.strip_prefix("cert "))
        .map(|s| s.split(' ').next().unwrap_or_default().to_string())
        .expect("no certificate printed")
}

#[test]
fn tls12_outside_tcp_inside_call_and_cancel() {
    let dir = temp_dir("tls-call");
    let (tls, tcp, up) = (free_port(), free_port(), free_port());
    let stg = StgNode::start(
        "tls-call",
        &format!(
            "[sip]\nupstream = \"sip:127.0.0.1:{up};transport=tcp\"\n\n[[sip.listen]]\ntransport = \"tls\"\naddress = \"127.0.0.1:{tls}\"\n\n[[sip.listen]]\ntransport = \"tcp\"\naddress = \"127.0.0.1:{tcp}\"\nside = \"inside\"\n"
        ),
    );
    let url = format!("tls://127.0.0.1:{tls}");
    let target = format!("sip:bob@127.0.0.1:{tls}");
    // OPTIONS to the node itself over TLS 1.2.
    let lines = uac("options", &url, &format!("sip:127.0.0.1:{tls}"));
    assert!(lines.iter().any(|l| l.contains("TLSv1.2")), "{lines:?}");
    assert!(lines.iter().any(|l| l == "status 200"), "{lines:?}");
    // A whole call: device on TLS outside, SIPp UAS on TCP inside.
    let uas_call = shared_dir().join("bench/scenarios/uas_call.xml");
    let mut sipp = sipp_uas(&dir, "uas-call", up, &uas_call);
    let lines = uac("call", &url, &target);
    assert!(
        lines.iter().any(|l| l == "call ok"),
        "{lines:?}\n{}",
        stg.log()
    );
    sipp.expect_success(Duration::from_secs(10));
    // A cancelled call on the same path: the callee rings until the CANCEL reaches it.
    let mut sipp = sipp_uas(
        &dir,
        "uas-cancel",
        up,
        &crate::sipp::scenario("uas_cancel.xml"),
    );
    let lines = uac("cancel", &url, &target);
    assert!(
        lines.iter().any(|l| l == "cancel ok"),
        "{lines:?}\n{}",
        stg.log()
    );
    assert!(
        lines.iter().any(|l| l.starts_with("status 487")),
        "{lines:?}"
    );
    sipp.expect_success(Duration::from_secs(10));
}

#[test]
fn sighup_swaps_the_certificate_without_dropping_connections() {
    let dir = temp_dir("sighup");
    let (a_cert, a_key) = openssl_cert(&dir, "a");
    let (b_cert, b_key) = openssl_cert(&dir, "b");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::copy(&a_cert, &cert).unwrap();
    std::fs::copy(&a_key, &key).unwrap();
    let tls = free_port();
    let stg = StgNode::start(
        "sighup",
        &format!(
            "[tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\n\n[sip]\nupstream = \"sip:127.0.0.1:9\"\n\n[[sip.listen]]\ntransport = \"tls\"\naddress = \"127.0.0.1:{tls}\"\n",
            cert.display(),
            key.display()
        ),
    );
    let url = format!("tls://127.0.0.1:{tls}");
    let node_uri = format!("sip:127.0.0.1:{tls}");
    // A connection that stays open across the reload.
    let mut held = Command::new(PYTHON)
        .arg(uac_script())
        .args(["hold", &url, &node_uri])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = held.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let next = |rx: &mpsc::Receiver<String>| {
        rx.recv_timeout(Duration::from_secs(10))
            .expect("held client output")
    };
    let first_cert = next(&rx);
    assert_eq!(next(&rx), "status 200");
    let fp_a = fingerprint(&[first_cert]);

    std::fs::copy(&b_cert, &cert).unwrap();
    std::fs::copy(&b_key, &key).unwrap();
    stg.signal("HUP");
    wait_log(&stg, "TLS certificate reloaded", Duration::from_secs(5));
    let fp_b = fingerprint(&uac("options", &url, &node_uri));
    assert_ne!(fp_a, fp_b, "a new handshake must see the new certificate");
    // The connection made before the reload still works.
    held.stdin.as_mut().unwrap().write_all(b"again\n").unwrap();
    assert_eq!(next(&rx), "status 200");
    drop(held.stdin.take());
    let _ = held.wait();
}

fn ws_call(secure: bool) {
    let dir = temp_dir(if secure { "wss" } else { "ws" });
    let (ws, tcp, up) = (free_port(), free_port(), free_port());
    let kind = if secure { "wss" } else { "ws" };
    let stg = StgNode::start(
        kind,
        &format!(
            "[sip]\nupstream = \"sip:127.0.0.1:{up};transport=tcp\"\n\n[[sip.listen]]\ntransport = \"{kind}\"\naddress = \"127.0.0.1:{ws}\"\n\n[[sip.listen]]\ntransport = \"tcp\"\naddress = \"127.0.0.1:{tcp}\"\nside = \"inside\"\n"
        ),
    );
    let uas_call = shared_dir().join("bench/scenarios/uas_call.xml");
    let mut sipp = sipp_uas(&dir, "uas-call", up, &uas_call);
    let lines = uac(
        "call",
        &format!("{kind}://127.0.0.1:{ws}"),
        &format!("sip:bob@127.0.0.1:{ws}"),
    );
    assert!(
        lines.iter().any(|l| l == "call ok"),
        "{lines:?}\n{}",
        stg.log()
    );
    sipp.expect_success(Duration::from_secs(10));
}

#[test]
fn ws_carries_a_call() {
    ws_call(false);
}

#[test]
fn wss_carries_a_call() {
    ws_call(true);
}

fn haproxy(dir: &Path, front: u16, backend: SocketAddr, source: &str) -> Peer {
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\nfrontend sip\n  bind 127.0.0.1:{front}\n  default_backend stg\nbackend stg\n  server stg {backend} send-proxy-v2 source {source}\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new("haproxy");
    cmd.arg("-f").arg(&cfg).arg("-db");
    let mut p = Peer::spawn("haproxy", "haproxy", cmd, &dir.join("haproxy.log"));
    // Read from /proc: a probe connection would reach stg through it as a client.
    let front = SocketAddr::from(([127, 0, 0, 1], front));
    let listening = poll_until(Duration::from_secs(5), || {
        p.try_wait().is_none() && is_bound(Transport::Tcp, front)
    });
    assert!(listening, "haproxy did not start:\n{}", p.output());
    p
}

#[test]
fn proxy_protocol_v2_from_haproxy() {
    let dir = temp_dir("haproxy");
    let uas = Uas::start("127.0.0.1");
    let sip = free_port();
    let stg_addr: SocketAddr = format!("127.0.0.1:{sip}").parse().unwrap();
    let stg = StgNode::start(
        "haproxy",
        &format!(
            "[sip]\nupstream = \"sip:{};transport=tcp\"\nload_balancers = [\"127.0.0.5\"]\n\n[[sip.listen]]\ntransport = \"tcp\"\naddress = \"{stg_addr}\"\nproxy_protocol = true\n",
            uas.addr
        ),
    );
    let front = free_port();
    let _haproxy = haproxy(&dir, front, stg_addr, "127.0.0.5");
    // A client at 127.0.0.3 reaches stg through HAProxy: stg sees 127.0.0.3, not HAProxy.
    let mut c = connect_from("127.0.0.3", format!("127.0.0.1:{front}").parse().unwrap());
    let cport = c.local_addr().unwrap().port();
    let options = format!(
        "OPTIONS sip:carol@example.com SIP/2.0\r\nVia: SIP/2.0/TCP 10.1.1.1:{cport};branch=z9hG4bK-pp2\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=a\r\nTo: <sip:carol@example.com>\r\nCall-ID: pp2-call\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    c.write_all(options.as_bytes()).unwrap();
    let seen = uas
        .wait_request(b"pp2-call", Duration::from_secs(5))
        .unwrap_or_else(|| panic!("not forwarded through HAProxy:\n{}", stg.log()));
    let m = seen.msg().unwrap();
    let client_via = m.vias().nth(1).unwrap();
    assert_eq!(
        client_via.received(),
        Some("127.0.0.3".parse().unwrap()),
        "Via received must be the real client"
    );
    assert!(
        stg.log().contains("remote=127.0.0.3"),
        "log must show the real client:\n{}",
        stg.log()
    );
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = [0u8; 4096];
    let n = c.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"SIP/2.0 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );

    // A PROXY header from an address that is not a listed balancer is refused.
    let mut forged = connect_from("127.0.0.1", stg_addr);
    let mut header = vec![
        0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, 0x11, 0x00,
        0x0c,
    ];
    header.extend_from_slice(&[192, 0, 2, 66, 127, 0, 0, 1, 0x30, 0x39, 0x13, 0xc4]);
    let _ = forged.write_all(&header);
    let _ = forged.write_all(options.replace("pp2-call", "pp2-forged").as_bytes());
    forged
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    assert!(
        matches!(forged.read(&mut buf), Ok(0) | Err(_)),
        "forged PROXY header must be refused"
    );
    assert!(uas
        .wait_request(b"pp2-forged", Duration::from_millis(500))
        .is_none());
    assert!(
        stg.log().contains("not in sip.load_balancers"),
        "{}",
        stg.log()
    );
}
