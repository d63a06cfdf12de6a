//! Stream transports (TCP, and TLS through [`crate::tls`]): accept, PROXY protocol v2,
//! admission, framing, keep-alives, idle timeout, and outbound connections to the inside.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use stg_sip_core::net::{Flow, ListenerId, Side, Transport};
use stg_sip_core::proxy::SendRef;
use stg_sip_msg::framer::{Frame, Framer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep_until, timeout, Instant};

use crate::conn::{ConnMeta, CoreInput, Shared};
use crate::proxy_protocol::{self, Parsed};

/// How long a balancer may take to send its PROXY header.
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// A stream listener as its accept loop needs it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StreamListener {
    pub(crate) id: ListenerId,
    pub(crate) transport: Transport,
    pub(crate) side: Side,
    pub(crate) proxy_protocol: bool,
}

/// Accepts connections until shutdown; each gets its own task.
pub(crate) async fn accept_loop(listener: TcpListener, l: StreamListener, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        let (sock, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(reason) = handle_accepted(sock, peer, l, shared).await {
                tracing::debug!(%peer, reason, "connection refused");
                metrics::counter!("stg_connections_refused_total", "reason" => reason).increment(1);
            }
        });
    }
}

async fn handle_accepted(
    mut sock: TcpStream,
    peer: SocketAddr,
    l: StreamListener,
    shared: Arc<Shared>,
) -> Result<(), &'static str> {
    let remote = if l.proxy_protocol {
        // Only the configured balancers may speak for someone else (checked before a single
        // byte is read), and on such a listener they must.
        if !shared.config.sip.is_load_balancer(peer.ip()) {
            tracing::warn!(%peer, "PROXY protocol listener: connection from an address not in sip.load_balancers refused");
            return Err("proxy_protocol_unlisted_source");
        }
        match timeout(PROXY_HEADER_TIMEOUT, read_proxy_header(&mut sock)).await {
            Ok(Ok(Some(real))) => real,
            Ok(Ok(None)) => peer,
            Ok(Err(reason)) => return Err(reason),
            Err(_) => return Err("proxy_protocol_timeout"),
        }
    } else {
        peer
    };
    shared.admit(remote.ip()).map_err(|_| "per_source_limit")?;
    let meta = ConnMeta {
        id: shared.next_conn_id(),
        listener: l.id,
        transport: l.transport,
        remote,
        side: shared.side_of(l.side, remote.ip()),
    };
    tracing::debug!(conn = meta.id.0, %remote, transport = %l.transport, "connection accepted");
    match l.transport {
        Transport::Tcp => serve_stream(sock, meta, shared, BytesMut::new(), None).await,
        Transport::Tls => match crate::tls::accept(&shared, sock).await {
            Ok(tls) => serve_stream(tls, meta, shared, BytesMut::new(), None).await,
            Err(e) => {
                shared.release(remote.ip());
                tracing::debug!(%remote, error = %e, "TLS handshake failed");
                return Err("tls_handshake");
            }
        },
        Transport::Ws => crate::ws::serve_ws(sock, meta, shared).await,
        Transport::Wss => match crate::tls::accept(&shared, sock).await {
            Ok(tls) => crate::ws::serve_ws(tls, meta, shared).await,
            Err(e) => {
                shared.release(remote.ip());
                tracing::debug!(%remote, error = %e, "TLS handshake failed");
                return Err("tls_handshake");
            }
        },
        Transport::Udp => shared.release(remote.ip()),
    }
    Ok(())
}

/// Reads exactly one PROXY v2 header; `Ok(None)` for LOCAL (a balancer health check).
async fn read_proxy_header(sock: &mut TcpStream) -> Result<Option<SocketAddr>, &'static str> {
    let mut buf = vec![0u8; proxy_protocol::FIXED_LEN];
    let mut have = 0;
    loop {
        match proxy_protocol::parse(&buf[..have]) {
            Ok(Parsed::Done { header, .. }) => return Ok(header.addresses.source()),
            Ok(Parsed::Incomplete { needed }) => {
                buf.resize(have + needed, 0);
                sock.read_exact(&mut buf[have..have + needed])
                    .await
                    .map_err(|_| "proxy_protocol_eof")?;
                have += needed;
            }
            Err(e) => {
                tracing::warn!(error = %e, "bad PROXY protocol header");
                return Err(e.reason());
            }
        }
    }
}

/// Runs one stream connection: frames inbound bytes into messages for the core and writes
/// what the core queues for it, until EOF, a fatal framing error, or the idle timeout.
///
/// `first` is written before anything else (the request an outbound connection was opened
/// for).
pub(crate) async fn serve_stream<S>(
    io: S,
    meta: ConnMeta,
    shared: Arc<Shared>,
    initial: BytesMut,
    first: Option<Bytes>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut rx = shared.register(meta);
    let (mut rd, mut wr) = tokio::io::split(io);
    if let Some(first) = first {
        if wr.write_all(&first).await.is_err() {
            shared.unregister(&meta);
            return;
        }
    }
    let mut framer = Framer::new(shared.framer_limits);
    let mut buf = initial;
    let idle = shared.idle_timeout();
    let mut deadline = Instant::now() + idle;
    'conn: loop {
        loop {
            match framer.decode(&mut buf) {
                Ok(Some(Frame::Message(m))) => shared.deliver(&meta, m).await,
                Ok(Some(Frame::Ping)) => {
                    // RFC 5626 §3.5.1: answer a double-CRLF ping with a single CRLF pong.
                    if wr.write_all(b"\r\n").await.is_err() {
                        break 'conn;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    metrics::counter!("stg_sip_framing_errors_total", "reason" => e.reason())
                        .increment(1);
                    tracing::info!(conn = meta.id.0, remote = %meta.remote, error = %e, "framing error");
                    if e.is_fatal() {
                        break 'conn;
                    }
                }
            }
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        tokio::select! {
            r = rd.read_buf(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(_) => deadline = Instant::now() + idle,
            },
            out = rx.recv() => match out {
                Some(bytes) => {
                    if wr.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
            _ = sleep_until(deadline) => {
                tracing::debug!(conn = meta.id.0, remote = %meta.remote, "idle timeout");
                metrics::counter!("stg_connections_idle_closed_total").increment(1);
                break;
            }
        }
    }
    let _ = wr.shutdown().await;
    shared.unregister(&meta);
    tracing::debug!(conn = meta.id.0, remote = %meta.remote, "connection closed");
}

/// Opens a connection for a send the core asked for (to the PBX, or a peer with no live
/// connection), then serves it like an accepted one.
pub(crate) async fn connect_and_send(
    flow: Flow,
    bytes: Bytes,
    on_fail: Option<SendRef>,
    shared: Arc<Shared>,
    side: Side,
) {
    let fail = |shared: &Shared| {
        if let Some(r) = on_fail {
            let _ = shared.core_tx.try_send(CoreInput::SendFailed(r));
        }
    };
    if !matches!(flow.transport, Transport::Tcp | Transport::Tls) {
        // WebSocket peers are only reachable over the connection they opened.
        fail(&shared);
        return;
    }
    let connect = timeout(
        shared.config.sip.tcp_connect_timeout,
        TcpStream::connect(flow.remote),
    )
    .await;
    let sock = match connect {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::info!(remote = %flow.remote, error = %e, "connect failed");
            fail(&shared);
            return;
        }
        Err(_) => {
            tracing::info!(remote = %flow.remote, "connect timed out");
            fail(&shared);
            return;
        }
    };
    let _ = sock.set_nodelay(true);
    if shared.admit(flow.remote.ip()).is_err() {
        fail(&shared);
        return;
    }
    let meta = ConnMeta {
        id: shared.next_conn_id(),
        listener: flow.listener,
        transport: flow.transport,
        remote: flow.remote,
        side: shared.side_of(side, flow.remote.ip()),
    };
    match flow.transport {
        Transport::Tls => match crate::tls::connect(&shared, sock, flow.remote).await {
            Ok(tls) => serve_stream(tls, meta, shared, BytesMut::new(), Some(bytes)).await,
            Err(e) => {
                tracing::info!(remote = %flow.remote, error = %e, "TLS connect failed");
                shared.release(flow.remote.ip());
                fail(&shared);
            }
        },
        _ => serve_stream(sock, meta, shared, BytesMut::new(), Some(bytes)).await,
    }
}
