//! The internal admin endpoint: an axum router on the process's metrics registry with
//! `GET /metrics` (Prometheus text) and `GET /health` (`ok`), which each role extends with
//! its own JSON routes (the SIP edge adds `/registrar/...` and `/guard/bans...` for `stg reg`
//! and `stg ban`), and the server that runs it.
//!
//! It serves the inside network (scrapes, operators): HTTP/1.1, one request per connection
//! (closed after the answer, so a client may read to EOF), no authentication, so
//! `admin.listen` must stay on a trusted address. Still bounded: a request head of at most
//! [`MAX_HEAD`] bytes (431 beyond), read within [`HEAD_TIMEOUT`], and at most
//! [`MAX_CONNECTIONS`] connections at once (more are closed at accept).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Longest request head read; a longer one is answered 431 (hyper's smallest buffer).
pub const MAX_HEAD: usize = 8192;

/// A request head must be complete within this.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// Most admin connections at once.
pub const MAX_CONNECTIONS: usize = 128;

/// Work done before each `/metrics` render (e.g. a gauge counted on demand).
pub type ScrapeHook = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// `GET /metrics` and `GET /health`. Merge the role's routes into it, then set the fallback
/// ([`not_found`]) once.
pub fn router(handle: PrometheusHandle, before_scrape: Option<ScrapeHook>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let handle = handle.clone();
                let hook = before_scrape.clone();
                async move {
                    if let Some(hook) = hook {
                        hook().await;
                    }
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        handle.render(),
                    )
                }
            }),
        )
        .route("/health", get(|| async { text(StatusCode::OK, "ok\n") }))
}

/// The admin endpoint's 404: `not found`, plain text.
pub async fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "not found\n")
}

/// A plain-text answer.
pub fn text(status: StatusCode, body: &'static str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain")], body).into_response()
}

/// Serves `router` on `listener` until the process ends.
///
/// # Cancel safety
/// Cancel safe: dropping it stops accepting; connections already accepted finish.
pub async fn serve(listener: TcpListener, router: Router) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            // Out of descriptors, most likely: let some close.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::counter!("stg_admin_connections_refused_total").increment(1);
            continue;
        };
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let _permit = permit;
            // One request per connection, as the CLI and scripts expect (they read to EOF).
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .serve_connection(TokioIo::new(sock), service);
            let _ = conn.await;
        });
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    async fn ask(addr: std::net::SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn metrics_health_and_the_limits() {
        let handle = crate::metrics::handle().expect("the only recorder of this test binary");
        metrics::counter!("stg_test_admin_total").increment(3);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = router(handle, None).fallback(not_found);
        tokio::spawn(serve(listener, router));
        let close = "Host: x\r\n\r\n";
        let health = ask(addr, &format!("GET /health HTTP/1.1\r\n{close}")).await;
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        assert!(health.ends_with("\r\n\r\nok\n"), "{health}");
        let m = ask(addr, &format!("GET /metrics HTTP/1.1\r\n{close}")).await;
        assert!(m.contains("stg_test_admin_total 3"), "{m}");
        let nf = ask(addr, &format!("GET /nothing HTTP/1.1\r\n{close}")).await;
        assert!(nf.starts_with("HTTP/1.1 404"), "{nf}");
        let big = format!(
            "GET /health HTTP/1.1\r\nX: {}\r\n{close}",
            "a".repeat(10_000)
        );
        let big = ask(addr, &big).await;
        assert!(big.starts_with("HTTP/1.1 431"), "{big}");
    }
}
