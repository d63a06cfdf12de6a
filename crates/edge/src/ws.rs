//! SIP over WebSocket (RFC 7118) for the `ws` listeners and, after [`crate::tls::accept`],
//! the `wss` ones.
//!
//! The HTTP upgrade (RFC 6455 §4.2) must offer the `sip` subprotocol, and the answer names it
//! (RFC 7118 §4.1); anything else gets 400. After that every Text or Binary message carries
//! exactly one SIP message (RFC 7118 §5), so no stream framer is needed: each goes to the core
//! as is. A message (or a fragment of one) over `sip.max_message_size` is counted
//! (`stg_sip_framing_errors_total{reason="too_large"}`) and ends the connection: nothing
//! larger is ever buffered, partial messages included. Outgoing messages go as
//! Text when they are valid UTF-8 and as Binary otherwise (RFC 7118 §5.1). WebSocket pings
//! are answered; so is a `CRLFCRLF` message, the RFC 5626 §3.5.1 keep-alive some SIP stacks
//! send over WebSocket too. A connection silent for `sip.idle_timeout` is closed, and so is
//! one whose writes take longer than `sip.write_timeout`.
//!
//! A browser names the page that opens a WebSocket in `Origin` (RFC 6455 §4.1, §10.2): an
//! upgrade with an `Origin` not in `sip.ws_allowed_origins` gets 403
//! (`stg_connections_refused_total{reason="ws_origin"}`), so no other web page can drive its
//! visitors' browsers as SIP clients. Native clients send no `Origin` and pass.
//!
//! A WebSocket peer can only be reached over the connection it opened (stream.rs never dials
//! one), so this module only serves accepted connections.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::header::{ORIGIN, SEC_WEBSOCKET_PROTOCOL};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use crate::conn::{ConnMeta, Shared};

/// The subprotocol RFC 7118 §4.1 registers for SIP.
const SUBPROTOCOL: &str = "sip";

/// How long sending our Close frame may take before the connection is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Read buffer per connection. tungstenite allocates it up front and keeps it (128 KiB by
/// default): with thousands of idle phones connected, even 16 KiB each would cost more than
/// everything else a connection holds. Larger messages are read in several steps.
const READ_BUFFER: usize = 4 * 1024;

/// Serves one WebSocket connection from the HTTP upgrade to the close.
///
/// The connection was admitted (`Shared::admit`) by the caller: it is registered once the
/// upgrade succeeds and unregistered at the end, or released if the upgrade fails.
///
/// # Cancel safety
/// Not cancel safe: dropping the future drops the connection without unregistering it.
pub(crate) async fn serve_ws<S>(io: S, meta: ConnMeta, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let max = shared.framer_limits.max_message_size;
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        // Each message is flushed as it is sent: no point in buffering up to 128 KiB.
        .write_buffer_size(0)
        // A partial message is buffered up to the limit and no further.
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    // The upgrade gets the same bound as a TLS handshake: both are what a client must finish
    // before it may send SIP, and a slow one holds a connection slot meanwhile.
    let bad_origin = AtomicBool::new(false);
    #[expect(
        clippy::result_large_err,
        reason = "the signature is tungstenite's Callback; it runs once per connection"
    )]
    let callback = |request: &Request, response: Response| {
        negotiate(&shared.config.sip, &bad_origin, request, response)
    };
    let upgrade = tokio_tungstenite::accept_hdr_async_with_config(io, callback, Some(ws_config));
    let upgraded = timeout(shared.config.sip.tls_handshake_timeout, upgrade).await;
    let reason = if bad_origin.load(Ordering::Relaxed) {
        "ws_origin"
    } else {
        "ws_handshake"
    };
    let mut ws = match upgraded {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => return refused(&shared, &meta, reason, &e.to_string()),
        Err(_) => return refused(&shared, &meta, reason, "timed out"),
    };
    let write_timeout = shared.write_timeout();
    let (outbox, _) = shared.register(meta);
    tracing::debug!(conn = meta.id.0, remote = %meta.remote, "WebSocket connection open");
    let idle = shared.idle_timeout();
    let mut deadline = Instant::now() + idle;
    loop {
        tokio::select! {
            inbound = ws.next() => {
                let message = match inbound {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        if let WsError::Capacity(_) = e {
                            metrics::counter!("stg_sip_framing_errors_total", "reason" => "too_large")
                                .increment(1);
                            if shared.may_log("framing errors", "too_large", meta.remote.ip()) {
                                tracing::info!(conn = meta.id.0, remote = %meta.remote, error = %e, limit = max, "WebSocket message too large, connection closed");
                            }
                        }
                        tracing::debug!(conn = meta.id.0, remote = %meta.remote, error = %e, "WebSocket error");
                        break;
                    }
                    None => break,
                };
                // Only data keeps a connection alive: pings around a half-sent fragmented
                // message must not hold it (and its buffer) for ever.
                if matches!(message, Message::Text(_) | Message::Binary(_)) {
                    deadline = Instant::now() + idle;
                }
                let bytes = match message {
                    Message::Text(t) => Bytes::from(t),
                    Message::Binary(b) => b,
                    Message::Ping(_) => {
                        // tungstenite queued the Pong (RFC 6455 §5.5.3); send it now rather
                        // than with the next read.
                        if !bounded(write_timeout, ws.flush()).await {
                            break;
                        }
                        continue;
                    }
                    // A Close is answered by tungstenite, and the stream then ends.
                    Message::Pong(_) | Message::Close(_) | Message::Frame(_) => continue,
                };
                match classify(&bytes, max) {
                    Inbound::Sip => shared.deliver(&meta, bytes).await,
                    Inbound::KeepAlive => {
                        // RFC 5626 §3.5.1: a double CRLF is answered with a single CRLF.
                        let pong = Message::Text(Utf8Bytes::from_static("\r\n"));
                        if !bounded(write_timeout, ws.send(pong)).await {
                            break;
                        }
                    }
                    Inbound::Pong => {}
                    Inbound::TooLarge => {
                        metrics::counter!("stg_sip_framing_errors_total", "reason" => "too_large")
                            .increment(1);
                        if shared.may_log("framing errors", "too_large", meta.remote.ip()) {
                            tracing::info!(conn = meta.id.0, remote = %meta.remote, size = bytes.len(), limit = max, "WebSocket message too large, dropped");
                        }
                    }
                }
            }
            out = outbox.recv() => {
                let Some(bytes) = out else { break };
                if !bounded(write_timeout, ws.send(outbound(bytes))).await {
                    break;
                }
            }
            _ = sleep_until(deadline) => {
                tracing::debug!(conn = meta.id.0, remote = %meta.remote, "idle timeout");
                metrics::counter!("stg_connections_idle_closed_total").increment(1);
                break;
            }
        }
    }
    // Best effort, and bounded: the peer may be gone, or no longer reading.
    let _ = timeout(CLOSE_TIMEOUT, ws.close(None)).await;
    shared.unregister(&meta);
    tracing::debug!(conn = meta.id.0, remote = %meta.remote, "WebSocket connection closed");
}

/// Runs one write within `limit`; false when it failed or timed out (counted: the
/// connection is then closed). Reading waits meanwhile, for `limit` at most.
async fn bounded<F>(limit: Duration, write: F) -> bool
where
    F: std::future::Future<Output = Result<(), WsError>>,
{
    match timeout(limit, write).await {
        Ok(r) => r.is_ok(),
        Err(_) => {
            metrics::counter!("stg_connections_closed_total", "reason" => "write_timeout")
                .increment(1);
            false
        }
    }
}

/// A failed upgrade: the connection was admitted but never registered.
fn refused(shared: &Shared, meta: &ConnMeta, reason: &'static str, error: &str) {
    shared.release(meta.remote.ip());
    tracing::debug!(conn = meta.id.0, remote = %meta.remote, error, "WebSocket upgrade failed");
    metrics::counter!("stg_connections_refused_total", "reason" => reason).increment(1);
}

/// The upgrade callback: refuses a browser from an origin not allowed (403, and notes it in
/// `bad_origin`), then accepts only a request offering `sip`, and answers with it
/// (RFC 7118 §4.1, RFC 6455 §4.2.2 item 5.4).
#[expect(
    clippy::result_large_err,
    reason = "the signature is tungstenite's Callback; it runs once per connection"
)]
fn negotiate(
    sip: &stg_config::SipConfig,
    bad_origin: &AtomicBool,
    request: &Request,
    mut response: Response,
) -> Result<Response, ErrorResponse> {
    // Several Origin fields are as suspect as a wrong one: each must be allowed.
    let mut origins = request.headers().get_all(ORIGIN).iter().peekable();
    let allowed = origins.peek().is_none()
        || origins.all(|o| o.to_str().is_ok_and(|o| sip.is_allowed_origin(o)));
    if !allowed {
        bad_origin.store(true, Ordering::Relaxed);
        let mut refusal = ErrorResponse::new(Some("origin not allowed".to_owned()));
        *refusal.status_mut() = StatusCode::FORBIDDEN;
        return Err(refusal);
    }
    if !offers_sip(request) {
        let mut refusal = ErrorResponse::new(Some(
            "SIP over WebSocket requires the \"sip\" subprotocol (RFC 7118)".to_owned(),
        ));
        *refusal.status_mut() = StatusCode::BAD_REQUEST;
        return Err(refusal);
    }
    response.headers_mut().insert(
        SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(SUBPROTOCOL),
    );
    Ok(response)
}

/// Whether any `Sec-WebSocket-Protocol` field of the request lists `sip`. Tokens compare
/// exactly: a browser fails the connection if the answer is not one of its offers verbatim.
fn offers_sip(request: &Request) -> bool {
    request
        .headers()
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim() == SUBPROTOCOL)
}

/// What an inbound WebSocket message is.
#[derive(Debug, PartialEq, Eq)]
enum Inbound {
    /// A SIP message for the core.
    Sip,
    /// A `CRLFCRLF` keep-alive ping (RFC 5626 §3.5.1).
    KeepAlive,
    /// A lone `CRLF`: a keep-alive pong, nothing to do.
    Pong,
    /// Over `sip.max_message_size`.
    TooLarge,
}

fn classify(message: &[u8], max: usize) -> Inbound {
    match message {
        b"\r\n\r\n" => Inbound::KeepAlive,
        b"\r\n" => Inbound::Pong,
        m if m.len() > max => Inbound::TooLarge,
        _ => Inbound::Sip,
    }
}

/// The WebSocket message for outgoing SIP bytes: Text when they are UTF-8, Binary otherwise
/// (RFC 7118 §5.1). Neither copies the bytes.
fn outbound(bytes: Bytes) -> Message {
    match Utf8Bytes::try_from(bytes.clone()) {
        Ok(text) => Message::Text(text),
        Err(_) => Message::Binary(bytes),
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use stg_sip_core::net::{ConnId, Flow, ListenerId, Side, Transport};
    use tokio::sync::mpsc;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::WebSocketStream;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::conn::CoreInput;

    fn request(protocols: &[&str]) -> Request {
        let mut builder = Request::builder().uri("/");
        for p in protocols {
            builder = builder.header(SEC_WEBSOCKET_PROTOCOL, *p);
        }
        builder.body(()).unwrap()
    }

    #[expect(clippy::result_large_err, reason = "tungstenite's Callback result")]
    fn negotiate_default(request: &Request) -> Result<Response, ErrorResponse> {
        let flag = AtomicBool::new(false);
        let r = negotiate(
            &stg_config::SipConfig::default(),
            &flag,
            request,
            Response::new(()),
        );
        assert!(!flag.load(Ordering::Relaxed));
        r
    }

    #[test]
    fn only_an_offer_of_sip_is_accepted_and_answered_with_sip() {
        for offers in [&["sip"][..], &["foo, sip"], &["foo", "bar ,sip , baz"]] {
            let answer = negotiate_default(&request(offers)).unwrap();
            assert_eq!(
                answer
                    .headers()
                    .get_all(SEC_WEBSOCKET_PROTOCOL)
                    .iter()
                    .collect::<Vec<_>>(),
                ["sip"]
            );
        }
        for offers in [&[][..], &["sips"], &["SIP"], &["xsip, sip2"], &[""]] {
            let refusal = negotiate_default(&request(offers)).unwrap_err();
            assert_eq!(refusal.status(), StatusCode::BAD_REQUEST, "{offers:?}");
        }
    }

    #[test]
    fn only_listed_origins_may_open_a_websocket() {
        let sip = stg_config::SipConfig {
            ws_allowed_origins: vec!["https://webcall.example.com".to_owned()],
            ..Default::default()
        };
        let with_origins = |origins: &[&str]| {
            let mut builder = Request::builder()
                .uri("/")
                .header(SEC_WEBSOCKET_PROTOCOL, "sip");
            for o in origins {
                builder = builder.header(ORIGIN, *o);
            }
            let flag = AtomicBool::new(false);
            let r = negotiate(&sip, &flag, &builder.body(()).unwrap(), Response::new(()));
            (
                r.map(|_| ()).map_err(|e| e.status()),
                flag.load(Ordering::Relaxed),
            )
        };
        // Native clients send no Origin.
        assert_eq!(with_origins(&[]), (Ok(()), false));
        assert_eq!(
            with_origins(&["https://webcall.example.com"]),
            (Ok(()), false)
        );
        assert_eq!(
            with_origins(&["https://WebCall.example.com"]),
            (Ok(()), false)
        );
        for bad in [
            &["https://evil.example"][..],
            &["null"],
            &["https://webcall.example.com.evil.example"],
            &["http://webcall.example.com"],
            &["https://webcall.example.com", "https://evil.example"],
        ] {
            assert_eq!(
                with_origins(bad),
                (Err(StatusCode::FORBIDDEN), true),
                "{bad:?}"
            );
        }
        // The default allows no page at all.
        let flag = AtomicBool::new(false);
        let req = Request::builder()
            .uri("/")
            .header(SEC_WEBSOCKET_PROTOCOL, "sip")
            .header(ORIGIN, "https://webcall.example.com")
            .body(())
            .unwrap();
        let refusal = negotiate(
            &stg_config::SipConfig::default(),
            &flag,
            &req,
            Response::new(()),
        )
        .unwrap_err();
        assert_eq!(refusal.status(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn keep_alives_and_oversized_messages_are_recognised() {
        assert_eq!(classify(b"\r\n\r\n", 10), Inbound::KeepAlive);
        assert_eq!(classify(b"\r\n", 10), Inbound::Pong);
        assert_eq!(
            classify(b"OPTIONS sip:x SIP/2.0\r\n", 10),
            Inbound::TooLarge
        );
        assert_eq!(classify(b"0123456789", 10), Inbound::Sip);
    }

    #[test]
    fn utf8_goes_as_text_anything_else_as_binary() {
        let text = Bytes::from_static(b"SIP/2.0 200 OK\r\n\r\n");
        assert!(
            matches!(outbound(text), Message::Text(t) if t.as_str() == "SIP/2.0 200 OK\r\n\r\n")
        );
        let body = Bytes::from_static(b"MESSAGE sip:a SIP/2.0\r\n\r\n\xff\xfe");
        assert!(matches!(outbound(body.clone()), Message::Binary(b) if b == body));
    }

    /// A node-less harness: `serve_ws` on one end of an in-memory pipe, a tungstenite client on
    /// the other, the core queue in hand.
    struct Harness {
        shared: Arc<Shared>,
        core: mpsc::Receiver<CoreInput>,
        meta: ConnMeta,
        task: tokio::task::JoinHandle<()>,
    }

    fn harness(max_message_size: usize) -> (Harness, tokio::io::DuplexStream) {
        harness_with(|c| c.sip.max_message_size = max_message_size)
    }

    fn harness_with(
        configure: impl FnOnce(&mut stg_config::Config),
    ) -> (Harness, tokio::io::DuplexStream) {
        let (core_tx, core) = mpsc::channel(16);
        let mut config = stg_config::Config::default();
        config.sip.tls_handshake_timeout = Duration::from_secs(5);
        configure(&mut config);
        let shared = Arc::new(Shared::new(
            core_tx,
            Arc::new(config),
            CancellationToken::new(),
            None,
        ));
        let meta = ConnMeta {
            id: ConnId(7),
            listener: ListenerId(3),
            transport: Transport::Ws,
            remote: SocketAddr::from(([192, 0, 2, 1], 40000)),
            side: Side::Outside,
            outbound: false,
        };
        shared.admit(meta.remote.ip()).unwrap();
        let (server, client) = tokio::io::duplex(256 * 1024);
        let task = tokio::spawn(serve_ws(server, meta, shared.clone()));
        (
            Harness {
                shared,
                core,
                meta,
                task,
            },
            client,
        )
    }

    async fn open(
        io: tokio::io::DuplexStream,
        protocol: Option<&str>,
    ) -> Result<WebSocketStream<tokio::io::DuplexStream>, WsError> {
        open_from(io, protocol, None).await
    }

    async fn open_from(
        io: tokio::io::DuplexStream,
        protocol: Option<&str>,
        origin: Option<&str>,
    ) -> Result<WebSocketStream<tokio::io::DuplexStream>, WsError> {
        let mut req = "ws://192.0.2.10/".into_client_request().unwrap();
        if let Some(p) = protocol {
            req.headers_mut()
                .insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_str(p).unwrap());
        }
        if let Some(o) = origin {
            req.headers_mut()
                .insert(ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        tokio_tungstenite::client_async(req, io)
            .await
            .map(|(ws, _)| ws)
    }

    async fn next_core(h: &mut Harness) -> Bytes {
        match timeout(Duration::from_secs(5), h.core.recv())
            .await
            .unwrap()
            .unwrap()
        {
            CoreInput::Message { inbound, bytes } => {
                assert_eq!(inbound.flow, h.meta.flow());
                bytes
            }
            other => panic!("unexpected core input {other:?}"),
        }
    }

    async fn next_ws(ws: &mut WebSocketStream<tokio::io::DuplexStream>) -> Message {
        timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn sip_messages_both_ways() {
        let (mut h, io) = harness(1024);
        let mut ws = open(io, Some("sip")).await.unwrap();

        let register = "REGISTER sip:example.com SIP/2.0\r\nContent-Length: 0\r\n\r\n";
        ws.send(Message::text(register)).await.unwrap();
        assert_eq!(next_core(&mut h).await, register.as_bytes());
        ws.send(Message::binary(&b"MESSAGE sip:a SIP/2.0\r\n\r\n\xff"[..]))
            .await
            .unwrap();
        assert_eq!(
            next_core(&mut h).await,
            &b"MESSAGE sip:a SIP/2.0\r\n\r\n\xff"[..]
        );

        // Exactly the limit passes.
        let largest = format!("OPTIONS sip:a SIP/2.0\r\n\r\n{}", "x".repeat(1024 - 25));
        ws.send(Message::text(largest.clone())).await.unwrap();
        assert_eq!(next_core(&mut h).await, largest.as_bytes());

        // What the core sends to the connection's flow.
        let flow = Flow {
            conn: Some(h.meta.id),
            ..h.meta.flow()
        };
        h.shared
            .send_stream(&flow, Bytes::from_static(b"SIP/2.0 200 OK\r\n\r\n"))
            .unwrap();
        assert_eq!(
            next_ws(&mut ws).await,
            Message::text("SIP/2.0 200 OK\r\n\r\n")
        );
        h.shared
            .send_stream(&flow, Bytes::from_static(b"SIP/2.0 200 OK\r\n\r\n\xff"))
            .unwrap();
        assert_eq!(
            next_ws(&mut ws).await,
            Message::binary(&b"SIP/2.0 200 OK\r\n\r\n\xff"[..])
        );

        // Pings of both kinds.
        ws.send(Message::Ping(Bytes::from_static(b"p")))
            .await
            .unwrap();
        assert_eq!(
            next_ws(&mut ws).await,
            Message::Pong(Bytes::from_static(b"p"))
        );
        ws.send(Message::text("\r\n\r\n")).await.unwrap();
        assert_eq!(next_ws(&mut ws).await, Message::text("\r\n"));

        // Close: unregistered (the per-source count with it).
        ws.close(None).await.unwrap();
        timeout(Duration::from_secs(5), &mut h.task)
            .await
            .unwrap()
            .unwrap();
        assert!(!h.shared.is_registered(h.meta.id));
        assert_eq!(h.shared.connection_count(), 0);
        assert!(h
            .shared
            .send_stream(&flow, Bytes::from_static(b"late"))
            .is_err());
    }

    #[tokio::test]
    async fn an_upgrade_without_sip_is_refused_and_released() {
        let (h, io) = harness(1024);
        let err = open(io, Some("chat")).await.unwrap_err();
        assert!(
            matches!(&err, WsError::Http(r) if r.status() == StatusCode::BAD_REQUEST),
            "{err:?}"
        );
        timeout(Duration::from_secs(5), h.task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(h.shared.connection_count(), 0);
        // The admission was released: the source can be admitted up to its limit again.
        for _ in 0..h.shared.config.sip.max_connections_per_source {
            h.shared.admit(h.meta.remote.ip()).unwrap();
        }
    }

    /// Waits for the connection task to end and checks it let everything go.
    async fn ended(h: Harness) {
        timeout(Duration::from_secs(5), h.task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(h.shared.connection_count(), 0);
        assert_eq!(h.shared.admitted(), 0);
    }

    #[tokio::test]
    async fn an_oversized_message_closes_the_connection() {
        let (h, io) = harness(1024);
        let mut ws = open(io, Some("sip")).await.unwrap();
        let _ = ws.send(Message::text("x".repeat(1025))).await;
        // The server closes: the client sees the end of the stream.
        let end = timeout(Duration::from_secs(5), async {
            while let Some(Ok(_)) = ws.next().await {}
        });
        end.await.unwrap();
        ended(h).await;
    }

    #[tokio::test]
    async fn a_partial_message_is_not_buffered_beyond_the_limit() {
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        use tokio_tungstenite::tungstenite::protocol::frame::Frame;
        let (h, io) = harness(1024);
        let mut ws = open(io, Some("sip")).await.unwrap();
        // Fragments of one message, never finished: the second one passes the limit.
        for _ in 0..2 {
            let fragment = Frame::message(vec![b'x'; 600], OpCode::Data(Data::Text), false);
            let _ = ws.send(Message::Frame(fragment)).await;
        }
        let end = timeout(Duration::from_secs(5), async {
            while let Some(Ok(_)) = ws.next().await {}
        });
        end.await.unwrap();
        ended(h).await;
    }

    /// a fragmented message left unfinished (60 KB, under the limit), kept alive
    /// by a WebSocket Ping before each idle deadline: pings reset the idle timer, and
    /// nothing bounds how long a message may take, so the partial message is pinned.
    #[tokio::test(start_paused = true)]
    async fn an_unfinished_message_kept_alive_by_pings_is_not_held_for_ever() {
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        use tokio_tungstenite::tungstenite::protocol::frame::Frame;
        let (h, io) = harness_with(|c| c.sip.idle_timeout = Duration::from_secs(600));
        let mut ws = open(io, Some("sip")).await.unwrap();
        let fragment = Frame::message(vec![b'x'; 60_000], OpCode::Data(Data::Text), false);
        ws.send(Message::Frame(fragment)).await.unwrap();
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(590)).await;
            if ws.send(Message::Ping(Bytes::new())).await.is_err() {
                break;
            }
            // Read the pong so that the server's write never blocks.
            let _ = timeout(Duration::from_secs(1), ws.next()).await;
        }
        assert!(h.task.is_finished(), "the partial message is still held");
    }

    #[tokio::test]
    async fn an_unlisted_origin_gets_403_no_origin_passes() {
        let allow = |c: &mut stg_config::Config| {
            c.sip.ws_allowed_origins = vec!["https://webcall.example.com".to_owned()];
        };
        let (h, io) = harness_with(allow);
        let err = open_from(io, Some("sip"), Some("https://evil.example"))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, WsError::Http(r) if r.status() == StatusCode::FORBIDDEN),
            "{err:?}"
        );
        ended(h).await;

        let (h, io) = harness_with(allow);
        let ws = open_from(io, Some("sip"), Some("https://webcall.example.com")).await;
        drop(ws.unwrap());
        ended(h).await;

        // No Origin (a native client): 101 even with the default, empty list.
        let (h, io) = harness_with(|_| {});
        let ws = open_from(io, Some("sip"), None).await;
        drop(ws.unwrap());
        ended(h).await;
    }
}
