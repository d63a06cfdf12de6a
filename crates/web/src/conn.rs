//! Connections: accept, caps, PROXY protocol, the guard's admission check, the TLS
//! handshake, then hyper (HTTP/1.1 or HTTP/2) until the connection ends or the node drains.
//!
//! The order is the point: a banned source, a connection over the caps or a bad PROXY header
//! costs one `accept` and a reset, never a TLS handshake.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use stg_net::tls::TlsStore;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Ctx;

/// A balancer's PROXY header must arrive within this.
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Most HTTP/2 streams at once on one connection.
const MAX_STREAMS: u32 = 128;

/// The connection caps: in all, and per client address.
#[derive(Debug)]
pub(crate) struct Caps {
    total: usize,
    per_source: usize,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// One admitted connection, counted until dropped (an upgraded WebSocket keeps it).
#[derive(Debug)]
pub(crate) struct Permit {
    caps: Arc<Caps>,
    source: Option<IpAddr>,
}

impl Caps {
    pub(crate) fn new(total: usize, per_source: usize) -> Arc<Self> {
        Arc::new(Self {
            total,
            per_source,
            open: Mutex::new(Open::default()),
        })
    }

    fn open(&self) -> MutexGuard<'_, Open> {
        // Only counters inside: a panic elsewhere leaves them consistent.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a new connection in all; `None` at the cap.
    pub(crate) fn enter(self: &Arc<Self>) -> Option<Permit> {
        let mut open = self.open();
        if open.total >= self.total {
            return None;
        }
        open.total += 1;
        metrics::gauge!("stg_web_connections").set(open.total as f64);
        Some(Permit {
            caps: self.clone(),
            source: None,
        })
    }

    /// Counts the connection for its client; false at the per-source cap.
    pub(crate) fn enter_source(&self, permit: &mut Permit, ip: IpAddr) -> bool {
        let mut open = self.open();
        let n = open.by_source.entry(ip).or_insert(0);
        if *n >= self.per_source {
            if *n == 0 {
                open.by_source.remove(&ip);
            }
            return false;
        }
        *n += 1;
        permit.source = Some(ip);
        true
    }

    #[cfg(test)]
    fn sources(&self) -> usize {
        self.open().by_source.len()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = self.caps.open();
        open.total = open.total.saturating_sub(1);
        if let Some(ip) = self.source {
            if let Some(n) = open.by_source.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    open.by_source.remove(&ip);
                }
            }
        }
        metrics::gauge!("stg_web_connections").set(open.total as f64);
    }
}

/// Who is on the other end of a connection, as the handlers see it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer {
    /// The client (after PROXY protocol).
    pub(crate) client: SocketAddr,
    /// Whether the connection is https (else the redirecting http listener).
    pub(crate) secure: bool,
}

/// Accepts on `listener` until `stop`; every connection runs on `tasks`.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    secure: bool,
    ctx: Arc<Ctx>,
    tls: Arc<TlsStore>,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let (sock, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors, most likely: let some close.
                tracing::debug!(error = %e, "web: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let peer = stg_net::canonical(peer);
        let Some(permit) = ctx.caps.enter() else {
            refuse(&sock, "max_connections");
            continue;
        };
        let (ctx, tls, stop) = (ctx.clone(), tls.clone(), stop.clone());
        tasks.spawn(async move {
            connection(sock, peer, secure, permit, ctx, tls, stop).await;
        });
    }
}

/// Closes at once with a reset (no TIME_WAIT kept for a flood), and counts it.
fn refuse(sock: &TcpStream, reason: &'static str) {
    let _ = socket2::SockRef::from(sock).set_linger(Some(Duration::ZERO));
    metrics::counter!("stg_web_connections_refused_total", "reason" => reason).increment(1);
}

async fn connection(
    mut sock: TcpStream,
    peer: SocketAddr,
    secure: bool,
    mut permit: Permit,
    ctx: Arc<Ctx>,
    tls: Arc<TlsStore>,
    stop: CancellationToken,
) {
    let config = ctx.rules.config();
    let client = if config.is_load_balancer(peer.ip()) {
        match tokio::time::timeout(PROXY_HEADER_TIMEOUT, stg_net::read_proxy_header(&mut sock))
            .await
        {
            Ok(Ok(Some(real))) => stg_net::canonical(real),
            Ok(Ok(None)) => peer,
            Ok(Err(reason)) => return refuse(&sock, reason),
            Err(_) => return refuse(&sock, "proxy_protocol_timeout"),
        }
    } else {
        peer
    };
    if ctx.guard.banned(client.ip()) {
        return refuse(&sock, "banned");
    }
    if !ctx.caps.enter_source(&mut permit, client.ip()) {
        return refuse(&sock, "max_connections_per_source");
    }
    let _ = sock.set_nodelay(true);
    let peer = Peer { client, secure };
    let permit = Arc::new(permit);
    let first = config.header_timeout;
    if secure {
        match stg_net::tls::accept_http(&tls, sock, config.tls_handshake_timeout).await {
            Ok(tls) => serve(FirstRead::new(tls, first), peer, permit, &ctx, &stop).await,
            Err(e) => {
                metrics::counter!("stg_web_tls_handshake_failures_total").increment(1);
                tracing::debug!(client = %client, error = %e, "web: TLS handshake failed");
            }
        }
    } else {
        serve(FirstRead::new(sock, first), peer, permit, &ctx, &stop).await;
    }
}

/// A connection whose first bytes must arrive within a deadline: hyper reads the first
/// bytes to tell HTTP/1.1 from HTTP/2 without a timer of its own (its `header_read_timeout`
/// starts only after), so a client that completes TLS and stays silent would hold the
/// connection for ever.
struct FirstRead<IO> {
    io: IO,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<IO> FirstRead<IO> {
    fn new(io: IO, within: Duration) -> Self {
        Self {
            io,
            deadline: Some(Box::pin(tokio::time::sleep(within))),
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for FirstRead<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let expired = this
                    .deadline
                    .as_mut()
                    .is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if !expired {
                    return Poll::Pending;
                }
                metrics::counter!("stg_web_connections_refused_total", "reason" => "silent")
                    .increment(1);
                Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no request in time",
                )))
            }
            other => other,
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for FirstRead<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Runs HTTP on an admitted connection until it ends, or until `stop`, then lets the
/// requests in flight finish (HTTP/1.1: `Connection: close` on the last answer; HTTP/2:
/// GOAWAY).
async fn serve<IO>(
    io: IO,
    peer: Peer,
    permit: Arc<Permit>,
    ctx: &Arc<Ctx>,
    stop: &CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handler = ctx.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (ctx, permit) = (handler.clone(), permit.clone());
        async move { crate::handle(ctx, peer, permit, req).await }
    });
    let conn = ctx
        .http
        .serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(ctx.rules.config().drain_timeout, conn).await;
        }
    }
}

/// The HTTP server settings of every connection.
pub(crate) fn http_builder(
    config: &stg_config::WebConfig,
) -> auto::Builder<hyper_util::rt::TokioExecutor> {
    let mut b = auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .max_buf_size(config.max_header_bytes)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_closed_and_a_talking_one_kept() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, server) = tokio::io::duplex(64);
        let mut silent = FirstRead::new(server, Duration::from_secs(10));
        let mut buf = [0u8; 8];
        let err = silent.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        drop(client);
        let (mut client, server) = tokio::io::duplex(64);
        let mut talking = FirstRead::new(server, Duration::from_secs(10));
        client.write_all(b"G").await.unwrap();
        assert_eq!(talking.read(&mut buf).await.unwrap(), 1);
        tokio::time::sleep(Duration::from_secs(60)).await;
        client.write_all(b"ET").await.unwrap();
        assert_eq!(
            talking.read(&mut buf).await.unwrap(),
            2,
            "no deadline after the first bytes"
        );
    }

    #[test]
    fn caps_in_all_and_per_source_are_given_back() {
        let caps = Caps::new(3, 2);
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        let mut a = caps.enter().unwrap();
        let mut b = caps.enter().unwrap();
        let mut c = caps.enter().unwrap();
        assert!(caps.enter().is_none(), "over the total");
        assert!(caps.enter_source(&mut a, ip));
        assert!(caps.enter_source(&mut b, ip));
        assert!(!caps.enter_source(&mut c, ip), "over the per-source cap");
        drop(c);
        assert!(caps.enter().is_some());
        drop((a, b));
        assert_eq!(caps.sources(), 0, "no entry kept for a source gone");
    }
}
