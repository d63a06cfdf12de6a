//! Ports the OS hands out.

use std::net::{TcpListener, UdpSocket};

/// A port free on 127.0.0.1 for both UDP and TCP at the moment of the call.
pub fn free_port() -> u16 {
    free_port_on("127.0.0.1")
}

/// A port free on `ip` (an address of this host, IPv6 without brackets) for both UDP and
/// TCP at the moment of the call.
pub fn free_port_on(ip: &str) -> u16 {
    for _ in 0..100 {
        let t = TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("bind {ip}: {e}"));
        let p = t.local_addr().unwrap().port();
        if UdpSocket::bind((ip, p)).is_ok() {
            return p;
        }
    }
    panic!("no free port on {ip}");
}
