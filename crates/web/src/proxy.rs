//! The reverse proxy: a request under a `[[web.proxy]]` prefix goes to its internal
//! application over HTTP/1.1, bodies streamed both ways, WebSocket upgrades joined, with
//! `X-Forwarded-For`/`-Proto`/`-Host` set by the front (never taken from the client), and a
//! clear 502 (application down) or 504 (too slow) page when it fails.
//!
//! Each upstream has its own connection pool, its health in `stg_web_upstream_up` (from
//! every request's outcome and a connect probe every [`HEALTH_INTERVAL`]), and its requests
//! in `stg_web_upstream_requests_total` and `stg_web_upstream_duration_seconds`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Uri};
use http::{Request, Response, StatusCode, Version};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use stg_config::WebProxy;

use crate::conn::{Peer, Permit};
use crate::{page, WebError};

/// How often an upstream is probed (a TCP connect) for `stg_web_upstream_up`.
pub(crate) const HEALTH_INTERVAL: Duration = Duration::from_secs(10);

/// Headers of one hop only (RFC 9110 §7.6.1), never forwarded.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Set by the front alone: a client's own values are removed.
const FORWARDED: [&str; 6] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-user",
    "x-real-ip",
];

/// One internal application.
pub(crate) struct Upstream {
    pub(crate) config: WebProxy,
    authority: Authority,
    /// The path the application's URLs start with (`/base` of the URL), without a final `/`.
    base: String,
    client: Client<HttpConnector, Body>,
}

impl Upstream {
    pub(crate) fn new(config: &WebProxy) -> Result<Self, WebError> {
        let bad = |why: &str| WebError::Config(format!("web.proxy {}: {why}", config.name));
        let uri: Uri = config.upstream.parse().map_err(|_| bad("not a URL"))?;
        let authority = uri.authority().cloned().ok_or_else(|| bad("no host"))?;
        let base = uri.path().trim_end_matches('/').to_owned();
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .build(connector);
        metrics::gauge!("stg_web_upstream_up", "upstream" => config.name.clone()).set(1.0);
        Ok(Self {
            config: config.clone(),
            authority,
            base,
            client,
        })
    }

    fn set_up(&self, up: bool) {
        metrics::gauge!("stg_web_upstream_up", "upstream" => self.config.name.clone()).set(if up {
            1.0
        } else {
            0.0
        });
    }

    /// Probes the application every [`HEALTH_INTERVAL`] until the process ends.
    pub(crate) async fn watch_health(self: Arc<Self>) {
        let mut tick = tokio::time::interval(HEALTH_INTERVAL);
        loop {
            tick.tick().await;
            let connect = tokio::net::TcpStream::connect(self.authority.as_str());
            let up = matches!(
                tokio::time::timeout(self.config.connect_timeout, connect).await,
                Ok(Ok(_))
            );
            self.set_up(up);
        }
    }

    /// Forwards a request (its body already limited by the caller; `client_upgrade` when it
    /// asks for a WebSocket) and returns the answer.
    pub(crate) async fn forward(
        &self,
        peer: Peer,
        permit: Arc<Permit>,
        parts: http::request::Parts,
        body: Body,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
        user: Option<&str>,
    ) -> Response<Body> {
        let started = Instant::now();
        let Some(path) = self.upstream_path(&parts.uri) else {
            return page(StatusCode::BAD_REQUEST);
        };
        let upgrade = client_upgrade.is_some();
        let original_host = parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers, upgrade);
        for name in FORWARDED {
            headers.remove(name);
        }
        let ip = peer.client.ip().to_string();
        if let Ok(v) = HeaderValue::from_str(&ip) {
            headers.insert(HeaderName::from_static("x-forwarded-for"), v.clone());
            headers.insert(HeaderName::from_static("x-real-ip"), v);
        }
        headers.insert(
            HeaderName::from_static("x-forwarded-proto"),
            HeaderValue::from_static("https"),
        );
        if let Some(h) = &original_host {
            headers.insert(HeaderName::from_static("x-forwarded-host"), h.clone());
        }
        if let Some(u) = user.and_then(|u| HeaderValue::from_str(u).ok()) {
            headers.insert(HeaderName::from_static("x-forwarded-user"), u);
        }
        let host = match (&original_host, self.config.preserve_host) {
            (Some(h), true) => h.clone(),
            _ => HeaderValue::from_str(self.authority.as_str())
                .unwrap_or_else(|_| HeaderValue::from_static("localhost")),
        };
        headers.insert(header::HOST, host);
        let uri = Uri::builder()
            .scheme("http")
            .authority(self.authority.clone())
            .path_and_query(path)
            .build();
        let Ok(uri) = uri else {
            return page(StatusCode::BAD_REQUEST);
        };
        let mut out = Request::new(body);
        *out.method_mut() = parts.method;
        *out.uri_mut() = uri;
        *out.version_mut() = Version::HTTP_11;
        *out.headers_mut() = headers;
        let sent = tokio::time::timeout(self.config.timeout, self.client.request(out)).await;
        let mut resp = match sent {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                let connect = e.is_connect();
                if connect {
                    self.set_up(false);
                }
                tracing::info!(upstream = %self.config.name, error = %e, connect, "web: upstream failed");
                return self.done(started, page(StatusCode::BAD_GATEWAY));
            }
            Err(_) => {
                tracing::info!(upstream = %self.config.name, "web: upstream timed out");
                return self.done(started, page(StatusCode::GATEWAY_TIMEOUT));
            }
        };
        self.set_up(true);
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_upgrade) = client_upgrade else {
                // An upgrade nobody asked for cannot be relayed.
                return self.done(started, page(StatusCode::BAD_GATEWAY));
            };
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            let name = self.config.name.clone();
            tokio::spawn(async move {
                // The connection stays counted while the tunnel lives.
                let _permit = permit;
                let (Ok(client), Ok(upstream)) = tokio::join!(client_upgrade, upstream_upgrade)
                else {
                    return;
                };
                let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
                metrics::gauge!("stg_web_tunnels", "upstream" => name.clone()).increment(1.0);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                metrics::gauge!("stg_web_tunnels", "upstream" => name).decrement(1.0);
            });
            let (mut parts, _) = resp.into_parts();
            parts.headers.remove(header::SERVER);
            return self.done(started, Response::from_parts(parts, Body::empty()));
        }
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, false);
        // Scanners learn nothing of the application behind.
        parts.headers.remove(header::SERVER);
        parts.headers.remove("x-powered-by");
        self.done(started, Response::from_parts(parts, Body::new(body)))
    }

    fn done(&self, started: Instant, resp: Response<Body>) -> Response<Body> {
        let name = self.config.name.clone();
        metrics::counter!("stg_web_upstream_requests_total", "upstream" => name.clone(), "status" => resp.status().as_str().to_owned()).increment(1);
        metrics::histogram!("stg_web_upstream_duration_seconds", "upstream" => name)
            .record(started.elapsed().as_secs_f64());
        resp
    }

    /// The path and query sent upstream: `base`, then the request's path (less the prefix
    /// with `strip_prefix`), then its query. `None` when the prefix to strip was written
    /// encoded (no client does that).
    fn upstream_path(&self, uri: &Uri) -> Option<PathAndQuery> {
        let path = uri.path();
        let rest = if self.config.strip_prefix {
            path.strip_prefix(self.config.prefix.trim_end_matches('/'))?
        } else {
            path
        };
        let mut out = self.base.clone();
        if !rest.starts_with('/') {
            out.push('/');
        }
        out.push_str(rest);
        if let Some(q) = uri.query() {
            out.push('?');
            out.push_str(q);
        }
        out.parse().ok()
    }
}

/// An HTTP/1.1 `Connection: upgrade` with an `Upgrade` header (a WebSocket).
pub(crate) fn wants_upgrade(headers: &HeaderMap, version: Version) -> bool {
    version == Version::HTTP_11
        && headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes the hop-by-hop headers and those `Connection` names; an upgrade keeps
/// `Connection: upgrade` and `Upgrade`.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !(upgrade && n == header::UPGRADE))
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in &HOP_BY_HOP {
        headers.remove(n);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(url: &str, prefix: &str, strip: bool) -> Upstream {
        Upstream::new(&WebProxy {
            prefix: prefix.to_owned(),
            host: None,
            upstream: url.to_owned(),
            strip_prefix: strip,
            preserve_host: true,
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            token: false,
            name: "t".to_owned(),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn paths_sent_upstream() {
        let u = upstream("http://127.0.0.1:8080/app/", "/fonbo/", true);
        let p = |s: &str| u.upstream_path(&s.parse().unwrap()).map(|p| p.to_string());
        assert_eq!(p("/fonbo/x?y=1").as_deref(), Some("/app/x?y=1"));
        assert_eq!(p("/fonbo").as_deref(), Some("/app/"));
        assert_eq!(p("/fonb%6F/x"), None);
        let keep = upstream("http://127.0.0.1:8080", "/fonbo/", false);
        let p = |s: &str| {
            keep.upstream_path(&s.parse().unwrap())
                .map(|p| p.to_string())
        };
        assert_eq!(p("/fonbo/x").as_deref(), Some("/fonbo/x"));
    }

    #[test]
    fn hop_by_hop_headers_go_and_upgrades_stay() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret, Upgrade"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        assert!(wants_upgrade(&h, Version::HTTP_11));
        assert!(!wants_upgrade(&h, Version::HTTP_2));
        let mut up = h.clone();
        strip_hop_by_hop(&mut up, true);
        assert_eq!(up.get(header::CONNECTION).unwrap(), "upgrade");
        assert_eq!(up.get(header::UPGRADE).unwrap(), "websocket");
        assert!(up.get("x-secret").is_none() && up.get(header::TE).is_none());
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
    }
}
