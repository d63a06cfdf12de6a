//! RFC 3263 at the node level: the upstream is a name, resolved through SRV and A records
//! that a dnsmasq started by the test serves. (With no `transport=` the upstream takes the
//! inbound transport, so this is the SRV step; the NAPTR step is tested against dnsmasq in
//! `crates/edge/src/resolver.rs`.)

use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use stg_sip_msg::{Message, StatusCode};

use crate::harness::{free_port, temp_dir, Peer, StgNode};
use crate::uas::Uas;

#[test]
fn upstream_name_resolved_by_srv_and_a() {
    let dir = temp_dir("dns");
    let uas = Uas::start("127.0.0.1");
    let dns_port = free_port();
    let mut cmd = Command::new("dnsmasq");
    cmd.args([
        &format!("--port={dns_port}"),
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        "--no-daemon",
        "--no-resolv",
        "--no-hosts",
        "--conf-file=/dev/null",
        "--pid-file=",
        "--local=/example.test/",
        // Priority 10 (the live PBX) wins over priority 20 (a dead port); the port comes
        // from SRV only, as the upstream URI has none.
        &format!(
            "--srv-host=_sip._udp.pbx.example.test,pbx1.example.test,{},10,0",
            uas.addr.port()
        ),
        "--srv-host=_sip._udp.pbx.example.test,pbx2.example.test,9,20,0",
        "--host-record=pbx2.example.test,127.0.0.1",
        "--host-record=pbx1.example.test,127.0.0.1",
    ]);
    let _dns = Peer::spawn("dnsmasq", "dnsmasq-base", cmd, &dir.join("dnsmasq.log"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while UdpSocket::bind(("127.0.0.1", dns_port)).is_ok() {
        assert!(Instant::now() < deadline, "dnsmasq did not bind");
        std::thread::sleep(Duration::from_millis(50));
    }
    let port = free_port();
    let stg = StgNode::start(
        "dns",
        &format!(
            "[dns]\nnameservers = [\"127.0.0.1:{dns_port}\"]\n\n[sip]\nupstream = \"sip:pbx.example.test\"\n\n[[sip.listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:{port}\"\n\n[[sip.listen]]\ntransport = \"tcp\"\naddress = \"127.0.0.1:{port}\"\n"
        ),
    );
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    let cport = c.local_addr().unwrap().port();
    let options = format!(
        "OPTIONS sip:carol@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{cport};branch=z9hG4bK-dns1;rport\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=a\r\nTo: <sip:carol@example.com>\r\nCall-ID: dns-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    c.send_to(options.as_bytes(), ("127.0.0.1", port)).unwrap();
    let seen = uas
        .wait_request(b"dns-1", Duration::from_secs(5))
        .unwrap_or_else(|| {
            panic!(
                "not forwarded to the resolved upstream:\n{}\n{}",
                stg.metrics(),
                stg.log()
            )
        });
    assert!(!seen.tcp, "the inbound transport (UDP) is kept");
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = vec![0u8; 65535];
    let (n, _) = c.recv_from(&mut buf).unwrap();
    let resp = Message::parse(Bytes::copy_from_slice(&buf[..n])).unwrap();
    assert_eq!(resp.status(), Some(StatusCode::OK));
}
