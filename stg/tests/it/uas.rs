//! A small SIP UAS for tests that need to see exactly what stg forwarded: it records every
//! message it receives (UDP and TCP) and answers requests (486 to INVITE, 200 otherwise) so
//! stg's transactions complete.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use stg_sip_msg::framer::{Frame, Framer};
use stg_sip_msg::{Message, StatusCode};

/// What the UAS saw.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) raw: Bytes,
    pub(crate) tcp: bool,
}

impl Seen {
    pub(crate) fn msg(&self) -> Option<Message> {
        Message::parse(self.raw.clone()).ok()
    }
}

pub(crate) struct Uas {
    pub(crate) addr: SocketAddr,
    pub(crate) rx: mpsc::Receiver<Seen>,
    stop: Arc<AtomicBool>,
}

fn answer(raw: &Bytes) -> Option<Bytes> {
    let m = Message::parse(raw.clone()).ok()?;
    let method = m.method()?;
    if method == stg_sip_msg::Method::Ack {
        return None;
    }
    let status = if method == stg_sip_msg::Method::Invite {
        StatusCode(486)
    } else {
        StatusCode::OK
    };
    Some(m.response(status, None, Some(b"uas"), None, &[]))
}

impl Uas {
    pub(crate) fn start(ip: &str) -> Self {
        let port = crate::harness::free_port_on(ip);
        let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let udp = UdpSocket::bind(addr).unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let (t, s) = (tx.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65535];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, from)) = udp.recv_from(&mut buf) else {
                    continue;
                };
                let raw = Bytes::copy_from_slice(&buf[..n]);
                if let Some(resp) = answer(&raw) {
                    let _ = udp.send_to(&resp, from);
                }
                let _ = t.send(Seen { raw, tcp: false });
            }
        });
        let tcp = TcpListener::bind(addr).unwrap();
        tcp.set_nonblocking(true).unwrap();
        let s = stop.clone();
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok((mut conn, _)) = tcp.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let (t, s) = (tx.clone(), s.clone());
                std::thread::spawn(move || {
                    conn.set_nonblocking(false).unwrap();
                    conn.set_read_timeout(Some(Duration::from_millis(100)))
                        .unwrap();
                    let mut framer = Framer::default();
                    let mut buf = BytesMut::new();
                    let mut chunk = [0u8; 8192];
                    while !s.load(Ordering::Relaxed) {
                        match conn.read(&mut chunk) {
                            Ok(0) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            Err(_) => continue,
                        }
                        while let Ok(Some(f)) = framer.decode(&mut buf) {
                            if let Frame::Message(raw) = f {
                                if let Some(resp) = answer(&raw) {
                                    use std::io::Write;
                                    let _ = conn.write_all(&resp);
                                }
                                let _ = t.send(Seen { raw, tcp: true });
                            }
                        }
                    }
                });
            }
        });
        Self { addr, rx, stop }
    }

    /// Every message received within `wait`.
    pub(crate) fn collect(&self, wait: Duration) -> Vec<Seen> {
        let deadline = std::time::Instant::now() + wait;
        let mut out = Vec::new();
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.rx.recv_timeout(left) {
                Ok(s) => out.push(s),
                Err(_) => break,
            }
        }
        out
    }

    /// The first request with this Call-ID within `wait` (others received meanwhile are kept
    /// out of the way).
    pub(crate) fn wait_request(&self, call_id: &[u8], wait: Duration) -> Option<Seen> {
        let deadline = std::time::Instant::now() + wait;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            let s = self.rx.recv_timeout(left).ok()?;
            if let Some(m) = s.msg() {
                if m.is_request()
                    && m.call_id() == call_id
                    && m.method() != Some(stg_sip_msg::Method::Ack)
                {
                    return Some(s);
                }
            }
        }
        None
    }
}

impl Drop for Uas {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
