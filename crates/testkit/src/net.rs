//! Ports the OS hands out.

use std::collections::HashSet;
use std::net::{TcpListener, UdpSocket};
use std::sync::{Mutex, PoisonError};

/// Ports already handed out by this process. The kernel picks a random free port for each
/// `bind(0)`, and a port is free again as soon as the probe socket closes: two calls in a
/// row (a test's SIP port, then the harness's admin port) can get the same number, and the
/// node then fails to bind its second listener (seen once in CI in a fresh namespace).
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A port free on 127.0.0.1 for both UDP and TCP at the moment of the call, never one this
/// process was given before.
pub fn free_port() -> u16 {
    free_port_on("127.0.0.1")
}

/// A port free on `ip` (an address of this host, IPv6 without brackets) for both UDP and
/// TCP at the moment of the call, never one this process was given before.
pub fn free_port_on(ip: &str) -> u16 {
    let mut handed = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    let handed = handed.get_or_insert_with(HashSet::new);
    for _ in 0..1000 {
        let t = TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("bind {ip}: {e}"));
        let p = t.local_addr().unwrap().port();
        if !handed.contains(&p) && UdpSocket::bind((ip, p)).is_ok() {
            handed.insert(p);
            return p;
        }
    }
    panic!("no free port on {ip}");
}
