//! The node as an operator sees it: drain on SIGTERM, per-source connection limit, idle
//! timeout, RFC 5626 keep-alive pong, metrics on the admin listener.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use bytes::Bytes;
use stg_sip_msg::{Message, StatusCode};

use crate::harness::{free_port, StgNode};

fn udp_tcp_node(name: &str, upstream: SocketAddr, extra_sip: &str) -> (StgNode, SocketAddr) {
    let port = free_port();
    let node = StgNode::start(
        name,
        &format!(
            "[sip]\nupstream = \"sip:{upstream}\"\n{extra_sip}\n\n[[sip.listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:{port}\"\n\n[[sip.listen]]\ntransport = \"tcp\"\naddress = \"127.0.0.1:{port}\"\n"
        ),
    );
    (node, format!("127.0.0.1:{port}").parse().unwrap())
}

fn request(method: &str, ruri: &str, call_id: &str, via_port: u16) -> String {
    format!(
        "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{via_port};branch=z9hG4bK-{call_id};rport\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=a\r\nTo: <sip:bob@example.com>\r\nCall-ID: {call_id}\r\nCSeq: 1 {method}\r\nContact: <sip:alice@127.0.0.1:{via_port}>\r\nUser-Agent: it-client/1.0\r\nContent-Length: 0\r\n\r\n"
    )
}

fn recv(sock: &UdpSocket, wait: Duration) -> Option<Message> {
    sock.set_read_timeout(Some(wait)).unwrap();
    let mut buf = vec![0u8; 65535];
    let (n, _) = sock.recv_from(&mut buf).ok()?;
    Message::parse(Bytes::copy_from_slice(&buf[..n])).ok()
}

/// Receives until a final response (skipping 1xx).
fn recv_final(sock: &UdpSocket, wait: Duration) -> Option<Message> {
    let deadline = Instant::now() + wait;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let m = recv(sock, left)?;
        if m.status().is_some_and(|s| s.0 >= 200) {
            return Some(m);
        }
    }
    None
}

#[test]
fn sigterm_drains_live_transactions_and_refuses_new_work() {
    // An upstream that holds its answer until told: a transaction is alive at SIGTERM.
    let pbx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (mut stg, addr) = udp_tcp_node(
        "drain",
        pbx.local_addr().unwrap(),
        "drain_timeout = \"10s\"",
    );
    let caller = UdpSocket::bind("127.0.0.1:0").unwrap();
    let cport = caller.local_addr().unwrap().port();
    caller
        .send_to(
            request("INVITE", "sip:bob@example.com", "drain-1", cport).as_bytes(),
            addr,
        )
        .unwrap();
    let invite = recv(&pbx, Duration::from_secs(3)).expect("INVITE forwarded");
    let (_, pbx_peer) = {
        // Where stg sent it from: answer there.
        let via = invite.top_via().unwrap();
        (
            via.branch().map(<[u8]>::to_vec),
            format!("{}", String::from_utf8_lossy(via.sent_by())),
        )
    };
    assert_eq!(
        recv(&caller, Duration::from_secs(2)).and_then(|m| m.status()),
        Some(StatusCode::TRYING)
    );

    stg.signal("TERM");
    std::thread::sleep(Duration::from_millis(300));
    assert!(stg.alive(), "stg must wait for the live INVITE transaction");
    // New work is refused with 503 + Retry-After...
    caller
        .send_to(
            request("OPTIONS", "sip:carol@example.com", "drain-2", cport).as_bytes(),
            addr,
        )
        .unwrap();
    let refused =
        recv_final(&caller, Duration::from_secs(2)).expect("answer to new request while draining");
    assert_eq!(refused.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert!(refused
        .header_values_by_name(b"Retry-After")
        .next()
        .is_some());
    // ...and new TCP connections are no longer accepted.
    std::thread::sleep(Duration::from_millis(100));
    let refused_tcp = match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
        Err(_) => true,
        Ok(mut s) => {
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let _ = s
                .write_all(request("OPTIONS", &format!("sip:{addr}"), "drain-3", cport).as_bytes());
            matches!(s.read(&mut [0u8; 64]), Ok(0) | Err(_))
        }
    };
    assert!(
        refused_tcp,
        "new TCP connections must be refused while draining"
    );
    // The live transaction finishes...
    let resp = invite.response(StatusCode(486), None, Some(b"pbx"), None, &[]);
    pbx.send_to(&resp, pbx_peer.parse::<SocketAddr>().unwrap())
        .unwrap();
    let fin = recv_final(&caller, Duration::from_secs(3)).expect("486 relayed during drain");
    assert_eq!(fin.status(), Some(StatusCode(486)));
    // ...and then the node exits by itself, cleanly.
    let status = stg
        .wait_exit(Duration::from_secs(8))
        .expect("stg did not exit after draining");
    assert!(status.success(), "exit status {status}\n{}", stg.log());
    assert!(stg.log().contains("drained"), "{}", stg.log());
}

#[test]
fn per_source_connection_limit_and_idle_timeout() {
    let uas = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (stg, addr) = udp_tcp_node(
        "limits",
        uas.local_addr().unwrap(),
        "max_connections_per_source = 2\nidle_timeout = \"1s\"",
    );
    let options = request("OPTIONS", &format!("sip:{addr}"), "lim", 5060);
    let mut a = TcpStream::connect(addr).unwrap();
    let mut b = TcpStream::connect(addr).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let _ = c.write_all(options.as_bytes());
    assert!(
        matches!(c.read(&mut [0u8; 64]), Ok(0) | Err(_)),
        "third connection from one source must be closed"
    );
    for s in [&mut a, &mut b] {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(options.as_bytes()).unwrap();
        let mut buf = [0u8; 2048];
        let n = s.read(&mut buf).unwrap();
        assert!(
            buf[..n].starts_with(b"SIP/2.0 200"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
    // RFC 5626 keep-alive: a double-CRLF ping gets a CRLF pong (and counts as activity).
    a.write_all(b"\r\n\r\n").unwrap();
    let mut pong = [0u8; 2];
    a.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"\r\n");
    // Idle for longer than idle_timeout: closed by stg.
    std::thread::sleep(Duration::from_millis(1600));
    a.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert!(
        matches!(a.read(&mut [0u8; 16]), Ok(0) | Err(_)),
        "idle connection must be closed"
    );
    // Slots freed: a new connection is admitted again.
    let mut d = TcpStream::connect(addr).unwrap();
    d.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    d.write_all(options.as_bytes()).unwrap();
    let mut buf = [0u8; 2048];
    let n = d.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"SIP/2.0 200"));
    assert!(
        stg.log().contains("idle timeout")
            || stg.metrics().contains("stg_connections_idle_closed_total")
    );
}

#[test]
fn metrics_are_scraped_from_the_admin_listener() {
    let uas = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (stg, addr) = udp_tcp_node("metrics", uas.local_addr().unwrap(), "");
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = c.local_addr().unwrap().port();
    c.send_to(
        request("OPTIONS", &format!("sip:{addr}"), "m1", port).as_bytes(),
        addr,
    )
    .unwrap();
    assert_eq!(
        recv(&c, Duration::from_secs(2)).and_then(|m| m.status()),
        Some(StatusCode::OK)
    );
    c.send_to(
        // Malformed (a bracketed Request-URI), with the headers a real client sends: an
        // answer larger than the request would not be sent to an unverified UDP source.
        b"INVITE <sip:x@example.com> SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK1\r\nFrom: <sip:a@example.com>;tag=1\r\nTo: <sip:x@example.com>\r\nCall-ID: m2\r\nCSeq: 1 INVITE\r\nUser-Agent: it-client/1.0\r\nContact: <sip:a@127.0.0.1:5999>\r\nContent-Length: 0\r\n\r\n",
        addr,
    )
    .unwrap();
    assert_eq!(recv_status(&c), Some(400));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = stg.metrics();
        let ok = m.contains("stg_sip_messages_in_total{kind=\"request\",method=\"OPTIONS\"} 1")
            && m.contains("stg_sip_parse_failures_total{reason=\"request_uri\"} 1")
            && m.contains("stg_sip_transactions{role=\"server\"}")
            && m.contains("stg_sip_messages_out_total{kind=\"response\",status=\"2xx\"} 1");
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "metrics missing:\n{m}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn recv_status(sock: &UdpSocket) -> Option<u16> {
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = vec![0u8; 65535];
    let (n, _) = sock.recv_from(&mut buf).ok()?;
    std::str::from_utf8(&buf[..n])
        .ok()?
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

/// A node whose stderr reader went away (a closed pipe, journald restarting) keeps running
/// and still drains on SIGTERM: a failed log write must never take it down.
#[test]
fn closed_stderr_does_not_stop_the_node() {
    use std::process::{Command, Stdio};
    let dir = crate::harness::temp_dir("stderr");
    let (port, admin) = (free_port(), free_port());
    let cfg = dir.join("stg.toml");
    std::fs::write(
        &cfg,
        format!(
            "[node]\ndata_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n[log]\nlevel = \"debug\"\n[[sip.listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:{port}\"\n",
            dir.display()
        ),
    )
    .unwrap();
    // Killed by its PID even if an assertion below fails first.
    let mut guard = crate::harness::KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_stg"))
            .args(["run", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let child = &mut guard.0;
    drop(child.stderr.take());
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    let cport = c.local_addr().unwrap().port();
    let mut answered = false;
    for i in 0..50 {
        let _ = c.send_to(
            request("OPTIONS", &format!("sip:{addr}"), &format!("se{i}"), cport).as_bytes(),
            addr,
        );
        if recv(&c, Duration::from_millis(200)).is_some() {
            answered = true;
            break;
        }
    }
    assert!(answered, "node must serve with its stderr closed");
    assert!(Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("SIGTERM with a closed stderr did not stop the node");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
