//! The node as an operator sees it: drain on SIGTERM, per-source connection limit, idle
//! timeout, RFC 5626 keep-alive pong, metrics on the admin listener.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use bytes::Bytes;
use stg_sip_msg::{Message, StatusCode};

use crate::harness::{free_port, poll_until, wait_log, StgNode};

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
    wait_log(
        &stg,
        "draining: new requests refused",
        Duration::from_secs(5),
    );
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
    // ...and new TCP connections are no longer accepted: the listener closes once the accept
    // loop sees the drain, a moment after the line above.
    let refused_tcp = poll_until(Duration::from_secs(5), || {
        matches!(
            TcpStream::connect_timeout(&addr, Duration::from_millis(500)),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused
        )
    });
    assert!(
        refused_tcp,
        "new TCP connections must be refused while draining\n{}",
        stg.log()
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
    let served = |s: &mut TcpStream| {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(options.as_bytes()).unwrap();
        let mut buf = [0u8; 2048];
        let n = s.read(&mut buf).unwrap();
        assert!(
            buf[..n].starts_with(b"SIP/2.0 200"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
    };
    // Two connections, each answered: both hold a slot of the source's two.
    let mut a = TcpStream::connect(addr).unwrap();
    let mut b = TcpStream::connect(addr).unwrap();
    served(&mut a);
    served(&mut b);
    let mut c = TcpStream::connect(addr).unwrap();
    let _ = c.write_all(options.as_bytes());
    assert!(
        closed_by_peer(&mut c, Duration::from_secs(2)).is_some(),
        "third connection from one source must be closed"
    );
    // The first two are still served.
    served(&mut a);
    served(&mut b);
    // RFC 5626 keep-alive: a double-CRLF ping gets a CRLF pong (and counts as activity).
    let pinged = Instant::now();
    a.write_all(b"\r\n\r\n").unwrap();
    let mut pong = [0u8; 2];
    a.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"\r\n");
    // Idle from then on: stg closes it, no sooner than idle_timeout after the ping it read.
    let closed = closed_by_peer(&mut a, Duration::from_secs(5)).expect("idle connection closed");
    let idle = closed.duration_since(pinged);
    assert!(
        idle >= Duration::from_secs(1) && idle < Duration::from_secs(3),
        "closed {idle:?} after the last activity, idle_timeout 1s"
    );
    // b went idle earlier and is closed too.
    assert!(closed_by_peer(&mut b, Duration::from_secs(2)).is_some());
    assert_eq!(
        stg.wait_counter(
            "stg_connections_idle_closed_total",
            2.0,
            Duration::from_secs(5)
        ),
        2.0
    );
    // Slots freed (before the close reached the peer): a new connection is admitted again.
    let mut d = TcpStream::connect(addr).unwrap();
    served(&mut d);
}

/// Reads from `s` until the peer closes it (EOF or a reset) or `wait` passes; the instant
/// the close was seen. Bytes before the close are a failure: nothing more was owed.
fn closed_by_peer(s: &mut TcpStream, wait: Duration) -> Option<Instant> {
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 256];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return Some(Instant::now()),
            Ok(n) => panic!(
                "unexpected bytes before the close: {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(Instant::now()),
        }
    }
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
    let mut m = String::new();
    let ok = poll_until(Duration::from_secs(5), || {
        m = stg.metrics();
        m.contains("stg_sip_messages_in_total{kind=\"request\",method=\"OPTIONS\"} 1")
            && m.contains("stg_sip_parse_failures_total{reason=\"request_uri\"} 1")
            && m.contains("stg_sip_transactions{role=\"server\"}")
            && m.contains("stg_sip_messages_out_total{kind=\"response\",status=\"2xx\"} 1")
    });
    assert!(ok, "metrics missing:\n{m}");
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
    let mut status = None;
    poll_until(Duration::from_secs(10), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    let status = status.expect("SIGTERM with a closed stderr did not stop the node");
    assert!(status.success(), "exit status {status}");
}
