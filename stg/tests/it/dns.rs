//! RFC 3263 at the node level: the upstream is a name, resolved through SRV and A records
//! that a dnsmasq started by the test serves, and the failover of §4.3 when the first target
//! refuses or swallows connections. (The NAPTR step is tested against dnsmasq in
//! `crates/edge/src/resolver.rs`.)

use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use stg_sip_msg::{Message, StatusCode};

use crate::harness::{free_port, sh, temp_dir, Netns, Peer, StgNode};
use crate::uas::Uas;

#[test]
fn upstream_name_resolved_by_srv_and_a() {
    let dir = temp_dir("dns");
    let uas = Uas::start("127.0.0.1");
    let dns_port = free_port();
    let _dns = dnsmasq(
        &dir,
        dns_port,
        &[
            // Priority 10 (the live PBX) wins over priority 20 (a dead port); the port comes
            // from SRV only, as the upstream URI has none.
            &format!(
                "--srv-host=_sip._udp.pbx.example.test,pbx1.example.test,{},10,0",
                uas.addr.port()
            ),
            "--srv-host=_sip._udp.pbx.example.test,pbx2.example.test,9,20,0",
            "--host-record=pbx2.example.test,127.0.0.1",
            "--host-record=pbx1.example.test,127.0.0.1",
        ],
    );
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
    assert!(!seen.tcp, "SRV named UDP only");
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = vec![0u8; 65535];
    let (n, _) = c.recv_from(&mut buf).unwrap();
    let resp = Message::parse(Bytes::copy_from_slice(&buf[..n])).unwrap();
    assert_eq!(resp.status(), Some(StatusCode::OK));
}

/// A dnsmasq on 127.0.0.1:`port` serving `records` for `example.test`, killed on drop.
fn dnsmasq(dir: &std::path::Path, port: u16, records: &[&str]) -> Peer {
    let mut cmd = Command::new("dnsmasq");
    cmd.args([
        &format!("--port={port}"),
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        "--no-daemon",
        "--no-resolv",
        "--no-hosts",
        "--conf-file=/dev/null",
        "--pid-file=",
        "--local=/example.test/",
    ]);
    cmd.args(records);
    let peer = Peer::spawn("dnsmasq", "dnsmasq-base", cmd, &dir.join("dnsmasq.log"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while UdpSocket::bind(("127.0.0.1", port)).is_ok() {
        assert!(Instant::now() < deadline, "dnsmasq did not bind");
        std::thread::sleep(Duration::from_millis(50));
    }
    peer
}

/// RFC 3263 §4.3: the upstream's SRV records name three TCP targets by priority: the first
/// refuses connections (nothing listens), the second swallows them (an nftables rule drops
/// its SYNs, inside this test's own network namespace), the third is the PBX. Each transport
/// failure moves the request on to the next target, within timer B, and the caller gets the
/// PBX's answer.
#[test]
fn upstream_failover_past_refusing_and_silent_targets() {
    if !Netns::new().run_test_inside() {
        return;
    }
    let dir = temp_dir("dns-failover");
    let uas = Uas::start("127.0.0.1");
    let (refusing, silent) = (free_port(), free_port());
    sh(&format!(
        "nft add table inet t && nft add chain inet t in '{{ type filter hook input priority 0; }}' && nft add rule inet t in tcp dport {silent} drop"
    ));
    let dns_port = free_port();
    let _dns = dnsmasq(
        &dir,
        dns_port,
        &[
            &format!("--srv-host=_sip._tcp.pbx.example.test,a.example.test,{refusing},10,0"),
            &format!("--srv-host=_sip._tcp.pbx.example.test,b.example.test,{silent},20,0"),
            &format!(
                "--srv-host=_sip._tcp.pbx.example.test,c.example.test,{},30,0",
                uas.addr.port()
            ),
            "--host-record=a.example.test,127.0.0.1",
            "--host-record=b.example.test,127.0.0.1",
            "--host-record=c.example.test,127.0.0.1",
        ],
    );
    let port = free_port();
    let stg = StgNode::start(
        "dns-failover",
        &format!(
            "[dns]\nnameservers = [\"127.0.0.1:{dns_port}\"]\n\n[sip]\nupstream = \"sip:pbx.example.test;transport=tcp\"\ntcp_connect_timeout = \"1s\"\n\n[[sip.listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:{port}\"\n\n[[sip.listen]]\ntransport = \"tcp\"\naddress = \"127.0.0.1:{port}\"\nside = \"inside\"\n"
        ),
    );
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    let cport = c.local_addr().unwrap().port();
    let options = format!(
        "OPTIONS sip:carol@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{cport};branch=z9hG4bK-fo1;rport\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=a\r\nTo: <sip:carol@example.com>\r\nCall-ID: failover-1\r\nCSeq: 1 OPTIONS\r\nContact: <sip:alice@127.0.0.1:{cport}>\r\nUser-Agent: it-client/1.0\r\nContent-Length: 0\r\n\r\n"
    );
    let started = Instant::now();
    c.send_to(options.as_bytes(), ("127.0.0.1", port)).unwrap();
    let seen = uas
        .wait_request(b"failover-1", Duration::from_secs(8))
        .unwrap_or_else(|| panic!("never reached the third target:\n{}", stg.log()));
    assert!(seen.tcp, "transport=tcp");
    let took = started.elapsed();
    // The refused connect fails at once, the swallowed one after tcp_connect_timeout (1 s).
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "failover took {took:?}"
    );
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = vec![0u8; 65535];
    let mut status = None;
    while let Ok((n, _)) = c.recv_from(&mut buf) {
        let m = Message::parse(Bytes::copy_from_slice(&buf[..n])).unwrap();
        if m.status().is_some_and(|s| s.0 >= 200) {
            status = m.status();
            break;
        }
    }
    assert_eq!(status, Some(StatusCode::OK), "the PBX's answer came back");
}
