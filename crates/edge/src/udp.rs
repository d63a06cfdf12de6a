//! UDP: one socket per listener, one receive task each; sends go out from the core task
//! without awaiting (a full socket buffer drops the datagram, as UDP would).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use stg_sip_core::net::{Flow, ListenerId, Side, Transport};
use stg_sip_core::proxy::Inbound;
use tokio::net::UdpSocket;

use crate::conn::{CoreInput, Shared};

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

/// Receives datagrams for the life of the process and hands each to the core.
pub(crate) async fn recv_loop(
    sock: Arc<UdpSocket>,
    id: ListenerId,
    side: Side,
    shared: Arc<Shared>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        // No shutdown branch: while the node drains, responses still have to come in to
        // finish live transactions; the process exit ends this task.
        let r = sock.recv_from(&mut buf).await;
        // An error here is ICMP port unreachable from an earlier send (Linux): skip it.
        let Ok((n, remote)) = r else { continue };
        let data = &buf[..n];
        // RFC 5626 §3.5.1 CRLF keep-alives over UDP carry no message.
        if data
            .iter()
            .all(|b| matches!(b, b'\r' | b'\n' | b' ' | b'\t' | 0))
        {
            continue;
        }
        let inbound = Inbound {
            flow: Flow {
                listener: id,
                transport: Transport::Udp,
                remote,
                conn: None,
            },
            side: shared.side_of(side, remote.ip()),
        };
        let bytes = Bytes::copy_from_slice(data);
        if shared
            .core_tx
            .send(CoreInput::Message { inbound, bytes })
            .await
            .is_err()
        {
            return;
        }
    }
}
