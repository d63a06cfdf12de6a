//! Helpers: probes that tell whether a UDP datagram from a given source gets through, and
//! readers of the chain's drop counters.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use stg_firewall::{Change, Firewall, FirewallConfig, IpNet};

/// A listener on `addr` (port 0) that reports which probes reached it.
pub(crate) struct Listener {
    sock: UdpSocket,
    seq: u32,
}

impl Listener {
    pub(crate) fn bind(addr: &str) -> Self {
        let ip: IpAddr = addr.parse().unwrap();
        let sock = UdpSocket::bind(SocketAddr::new(ip, 0)).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        Self { sock, seq: 0 }
    }

    /// Sends one datagram from `src` (port 0) and says whether it arrived within 300 ms.
    pub(crate) fn reaches(&mut self, src: &str) -> bool {
        self.seq += 1;
        let payload = format!("probe {} from {src}", self.seq);
        let ip: IpAddr = src.parse().unwrap();
        let tx = UdpSocket::bind(SocketAddr::new(ip, 0)).unwrap();
        tx.send_to(payload.as_bytes(), self.sock.local_addr().unwrap())
            .unwrap();
        let mut buf = [0u8; 256];
        // Earlier probes that did arrive late are skipped, not taken for this one.
        while let Ok(n) = self.sock.recv(&mut buf) {
            if &buf[..n] == payload.as_bytes() {
                return true;
            }
        }
        false
    }
}

pub(crate) fn net(s: &str) -> IpNet {
    match s.parse::<IpNet>() {
        Ok(n) => n,
        Err(_) => IpNet::from(s.parse::<IpAddr>().unwrap()),
    }
}

pub(crate) fn ban(s: &str, secs: u64) -> Change {
    Change::Ban {
        net: net(s),
        timeout: Duration::from_secs(secs),
    }
}

/// A table name per test, so a failing test's leftovers cannot confuse another (each runs
/// in its own namespace anyway).
pub(crate) fn config(table: &str) -> FirewallConfig {
    FirewallConfig {
        table: table.to_string(),
        ..FirewallConfig::default()
    }
}

/// The packets counted by the chain's rules: banned4, banned6, banned4_nets, banned6_nets.
pub(crate) fn drop_counters(fw: &Firewall) -> Vec<u64> {
    let out = Command::new("nft")
        .args(["list", "chain", "inet", &fw.config().table, "drop_banned"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let counts: Vec<u64> = text
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find("counter packets ")? + "counter packets ".len()..];
            rest.split_whitespace().next()?.parse().ok()
        })
        .collect();
    assert_eq!(counts.len(), 4, "chain as listed:\n{text}");
    counts
}

/// `nft list set` as text, for assertions about what the operator sees.
pub(crate) fn list_set(fw: &Firewall, set: &str) -> String {
    let out = Command::new("nft")
        .args(["list", "set", "inet", &fw.config().table, set])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
