//! UDP: one socket per listener, read and written by the core task itself.
//!
//! There is no receive task per socket: handing each datagram to the core through a
//! channel cost a cross-thread wake-up per message, the largest cost on the hot path. The
//! core polls every UDP socket in its own `select!` and drains what is queued in the kernel
//! before going back to sleep. Sends use `try_send_to` (a full socket buffer drops the
//! datagram, as UDP would) so the core never waits on the network.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use stg_sip_core::net::{Flow, ListenerId, Side, Transport};
use stg_sip_core::proxy::Inbound;
use tokio::io::ReadBuf;
use tokio::net::UdpSocket;

use crate::conn::Shared;

/// Largest datagram we read (the IPv4 maximum; SIP over UDP should stay far below).
const MAX_DATAGRAM: usize = 65_535;

/// Binds a UDP socket with large kernel buffers: a core preempted for a few ms must not
/// overflow the receive queue (the bench harness's note on Kamailio's `maxbuffer`).
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        let _ = sock.set_only_v6(true);
    }
    let _ = sock.set_recv_buffer_size(8 << 20);
    let _ = sock.set_send_buffer_size(4 << 20);
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    UdpSocket::from_std(sock.into())
}

/// The node's UDP listeners, as the core task reads them.
pub(crate) struct UdpListeners {
    socks: Vec<(ListenerId, Side, Arc<UdpSocket>)>,
    buf: Vec<u8>,
    /// Where the next poll starts, so one busy socket cannot starve the others.
    next: usize,
}

impl UdpListeners {
    pub(crate) fn new(socks: Vec<(ListenerId, Side, Arc<UdpSocket>)>) -> Self {
        Self {
            socks,
            buf: vec![0u8; MAX_DATAGRAM],
            next: 0,
        }
    }

    /// The next datagram from any socket, as a core input; keep-alives are skipped.
    ///
    /// # Cancel safety
    /// Cancel safe: a datagram is taken from the kernel only in the poll that returns it.
    pub(crate) async fn recv(&mut self, shared: &Shared) -> (Inbound, Bytes) {
        if self.socks.is_empty() {
            return std::future::pending().await;
        }
        loop {
            let n_socks = self.socks.len();
            let (i, n, remote) = poll_fn(|cx| {
                for k in 0..n_socks {
                    let i = (self.next + k) % n_socks;
                    // An error is ICMP port unreachable from an earlier send (Linux): poll the
                    // same socket again, so it ends Pending with its waker registered.
                    loop {
                        let mut rb = ReadBuf::new(&mut self.buf);
                        match self.socks[i].2.poll_recv_from(cx, &mut rb) {
                            Poll::Ready(Ok(remote)) => {
                                return Poll::Ready((i, rb.filled().len(), remote))
                            }
                            Poll::Ready(Err(_)) => continue,
                            Poll::Pending => break,
                        }
                    }
                }
                Poll::Pending
            })
            .await;
            self.next = (i + 1) % n_socks;
            if let Some(input) = self.datagram(i, n, remote, shared) {
                return input;
            }
        }
    }

    /// A datagram already queued in the kernel, without waiting.
    pub(crate) fn try_recv(&mut self, shared: &Shared) -> Option<(Inbound, Bytes)> {
        for k in 0..self.socks.len() {
            let i = (self.next + k) % self.socks.len();
            loop {
                match self.socks[i].2.try_recv_from(&mut self.buf) {
                    Ok((n, remote)) => {
                        if let Some(input) = self.datagram(i, n, remote, shared) {
                            return Some(input);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => continue,
                }
            }
        }
        None
    }

    fn datagram(
        &self,
        i: usize,
        n: usize,
        remote: SocketAddr,
        shared: &Shared,
    ) -> Option<(Inbound, Bytes)> {
        if shared.bans.banned(remote.ip()) {
            metrics::counter!("stg_guard_refused_total", "transport" => "udp").increment(1);
            return None;
        }
        let data = &self.buf[..n];
        // RFC 5626 §3.5.1 CRLF keep-alives over UDP carry no message.
        if data
            .iter()
            .all(|b| matches!(b, b'\r' | b'\n' | b' ' | b'\t' | 0))
        {
            return None;
        }
        let (id, side, _) = self.socks[i];
        let inbound = Inbound {
            flow: Flow {
                listener: id,
                transport: Transport::Udp,
                remote,
                conn: None,
            },
            side: shared.side_of(side, remote.ip()),
        };
        Some((inbound, Bytes::copy_from_slice(data)))
    }
}
