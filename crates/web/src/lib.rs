//! The web front of stg: HTTPS (HTTP/1.1 and HTTP/2 by ALPN) on the node's certificate, a
//! plain HTTP listener that only redirects, access rules, a reverse proxy to the internal
//! applications, static files, and the authentication service mounted beside them.
//!
//! # How it fits
//! `stg run` binds it with the SIP node ([`WebFront::bind`], so a taken port fails the
//! start) and runs it with the node's TLS store ([`stg_net::tls::TlsStore`], reloaded on
//! SIGHUP) and the node's guard ([`stg_guard::Hook`], or [`stg_guard::NoGuard`]). The
//! authentication service (the portal) plugs in as an axum [`Router`] ([`WebFront::mount`])
//! and as the [`TokenCheck`] of routes that need a session ([`WebFront::token_check`]).
//!
//! Every request goes through the same steps, in this order:
//! 1. admission, per connection and before TLS: the caps, the balancer's PROXY header (the
//!    real client address), the guard's ban list; a banned source is reset unanswered;
//! 2. the `Host` must be one of `web.hosts` (else no answer at all, counted as a probe);
//! 3. the access rules ([`rules`], sans-IO): internal paths from outside and pages never
//!    served directly are 403, redirects are 302, a path nothing serves is 404 and counts
//!    for the guard's `probe` jail (the 101st bans);
//! 4. the route: reverse proxy, static directory or the mounted application;
//! 5. every https answer carries HSTS and the security headers; one access-log line in the
//!    combined format, with the real client address (target `access`).
//!
//! # Invariants
//! - Connections are capped in all and per client; request heads, bodies and the time to
//!   send them are limited (`web.max_header_bytes`, `max_body_bytes`, `header_timeout`,
//!   `body_timeout`), and so is the TLS handshake.
//! - A client never sets `X-Forwarded-*`: the front replaces them.
//! - Paths are compared decoded and normalised; an ambiguous one is refused, never guessed.
#![forbid(unsafe_code)]

mod conn;
mod log;
mod proxy;
mod rules;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::Router;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use stg_guard::{Hook, Kind};
use stg_net::tls::TlsStore;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tower_http::services::ServeDir;

use crate::conn::{Caps, Peer, Permit};
use crate::rules::{Decision, Rules};

/// Why the web front could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebError {
    /// A listener could not be bound.
    #[error("{what}: cannot bind: {source}")]
    Bind {
        /// Which listener.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A route cannot be used as configured.
    #[error("{0}")]
    Config(String),
}

/// What the session check says of a request (a cookie for browsers, a bearer for apps).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenVerdict {
    /// A valid session of this user: the request goes on, with `X-Forwarded-User`.
    Valid {
        /// The user name.
        user: String,
    },
    /// No token: 401 (or the portal's login page), not counted.
    Missing,
    /// A token that is forged, expired or revoked: 401, logged `TRUCO_KO` and counted in the
    /// guard's `token` jail.
    Invalid {
        /// Why, for the log line.
        reason: String,
    },
}

/// The session check of routes with `token = true`; the authentication service implements
/// it. Without one such routes answer 503 (closed, never open).
pub trait TokenCheck: Send + Sync + 'static {
    /// Checks the session token `head` carries.
    fn check<'a>(
        &'a self,
        head: &'a http::request::Parts,
    ) -> Pin<Box<dyn Future<Output = TokenVerdict> + Send + 'a>>;
}

/// The web front with its sockets bound, ready to [`run`](Self::run).
pub struct WebFront {
    config: stg_config::WebConfig,
    https: Option<TcpListener>,
    http: Option<TcpListener>,
    app: Option<Router>,
    token: Option<Arc<dyn TokenCheck>>,
    upstreams: Vec<Arc<proxy::Upstream>>,
}

/// What every request handler reads.
pub(crate) struct Ctx {
    pub(crate) rules: Rules,
    pub(crate) guard: Arc<dyn Hook>,
    pub(crate) caps: Arc<Caps>,
    pub(crate) http: hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    upstreams: Vec<Arc<proxy::Upstream>>,
    statics: Vec<ServeDir>,
    app: Option<Router>,
    token: Option<Arc<dyn TokenCheck>>,
    hsts: Option<HeaderValue>,
    https_port: u16,
}

impl WebFront {
    /// Binds `web.listen` and `web.listen_http`; `None` when neither is set (the front is
    /// off). Errors name the listener.
    pub async fn bind(config: &stg_config::Config) -> Result<Option<Self>, WebError> {
        let web = &config.web;
        if web.listen.is_none() && web.listen_http.is_none() {
            return Ok(None);
        }
        let bind = |what: &'static str, addr: Option<SocketAddr>| async move {
            match addr {
                None => Ok(None),
                Some(a) => TcpListener::bind(a)
                    .await
                    .map(Some)
                    .map_err(|source| WebError::Bind {
                        what: format!("{what} ({a})"),
                        source,
                    }),
            }
        };
        let upstreams = web
            .proxy
            .iter()
            .map(|p| proxy::Upstream::new(p).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Self {
            config: web.clone(),
            https: bind("web.listen", web.listen).await?,
            http: bind("web.listen_http", web.listen_http).await?,
            app: None,
            token: None,
            upstreams,
        }))
    }

    /// The https and http addresses as bound.
    pub fn local_addrs(&self) -> (Option<SocketAddr>, Option<SocketAddr>) {
        let addr = |l: &Option<TcpListener>| l.as_ref().and_then(|l| l.local_addr().ok());
        (addr(&self.https), addr(&self.http))
    }

    /// Mounts an application (the authentication service): it answers the paths that no
    /// proxy or static route serves, after the access rules; its 404s count as probes.
    pub fn mount(mut self, app: Router) -> Self {
        self.app = Some(match self.app.take() {
            Some(a) => a.merge(app),
            None => app,
        });
        self
    }

    /// The session check of `token = true` routes.
    pub fn token_check(mut self, check: Arc<dyn TokenCheck>) -> Self {
        self.token = Some(check);
        self
    }

    /// Serves until `drain` is cancelled, then lets requests in flight finish (at most
    /// `web.drain_timeout`).
    pub async fn run(
        self,
        tls: Arc<TlsStore>,
        guard: Arc<dyn Hook>,
        drain: CancellationToken,
    ) -> Result<(), WebError> {
        if self.token.is_none() && self.config.proxy.iter().any(|p| p.token) {
            tracing::warn!("web: routes with token = true answer 503: no authentication service");
        }
        let hsts = (!self.config.hsts_max_age.is_zero()).then(|| {
            let v = format!(
                "max-age={}; includeSubDomains",
                self.config.hsts_max_age.as_secs()
            );
            // Digits and ASCII only.
            HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static("max-age=0"))
        });
        let https_port = self
            .config
            .https_port
            .or_else(|| self.https.as_ref()?.local_addr().ok().map(|a| a.port()))
            .unwrap_or(443);
        let ctx = Arc::new(Ctx {
            caps: Caps::new(
                self.config.max_connections,
                self.config.max_connections_per_source,
            ),
            http: conn::http_builder(&self.config),
            statics: self
                .config
                .static_dirs
                .iter()
                .map(|s| ServeDir::new(&s.dir).append_index_html_on_directories(true))
                .collect(),
            rules: Rules::new(self.config, self.app.is_some()),
            guard,
            upstreams: self.upstreams,
            app: self.app,
            token: self.token,
            hsts,
            https_port,
        });
        for u in &ctx.upstreams {
            // For the node's life, like the admin endpoint.
            tokio::spawn(u.clone().watch_health());
        }
        let tasks = TaskTracker::new();
        for (listener, secure) in [(self.https, true), (self.http, false)] {
            if let Some(l) = listener {
                tasks.spawn(conn::accept_loop(
                    l,
                    secure,
                    ctx.clone(),
                    tls.clone(),
                    drain.clone(),
                    tasks.clone(),
                ));
            }
        }
        drain.cancelled().await;
        tasks.close();
        let grace = ctx.rules.config().drain_timeout + Duration::from_secs(1);
        if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
            tracing::info!(left = tasks.len(), "web: connections still open at exit");
        }
        Ok(())
    }
}

/// A handler's refusal to answer: hyper closes the connection (HTTP/1.1) or resets the
/// stream (HTTP/2) without a response.
#[derive(Debug)]
pub(crate) struct NoAnswer;

impl std::fmt::Display for NoAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("closed without an answer")
    }
}

impl std::error::Error for NoAnswer {}

/// One request, through the steps of the crate docs.
pub(crate) async fn handle(
    ctx: Arc<Ctx>,
    peer: Peer,
    permit: Arc<Permit>,
    req: Request<Incoming>,
) -> Result<Response<Body>, NoAnswer> {
    let started = Instant::now();
    let ip = peer.client.ip();
    if ctx.guard.banned(ip) {
        // Banned while the connection was open.
        metrics::counter!("stg_web_requests_refused_total", "reason" => "banned").increment(1);
        return Err(NoAnswer);
    }
    let host_header = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()));
    let host = host_header
        .as_deref()
        .map(rules::host_of)
        .unwrap_or_default();
    let head = Head::of(&req);
    let mut user = None;
    // A 404 of the front, a static directory or the application counts as a probe; an
    // application behind the proxy judges its own.
    let mut proxied = false;
    let resp = if !ctx.rules.host_allowed(&host) {
        None
    } else if !peer.secure {
        Some(to_https(&ctx, &host, &req))
    } else {
        match ctx.rules.decide(&host, req.uri().path(), ip) {
            Decision::DropHost => None,
            Decision::BadPath => {
                probe(&ctx, ip);
                Some(page(StatusCode::BAD_REQUEST))
            }
            Decision::NotFound => Some(page(StatusCode::NOT_FOUND)),
            Decision::Forbidden => Some(page(StatusCode::FORBIDDEN)),
            Decision::Redirect(to) => Some(redirect(StatusCode::FOUND, &to)),
            Decision::Proxy(i) => {
                proxied = true;
                Some(proxy(&ctx, i, peer, permit, req, &mut user).await)
            }
            Decision::Static(i) => Some(serve_static(&ctx, i, req).await),
            Decision::App => {
                // The application (the authentication service) learns who the client is as
                // the front established it (after PROXY v2), as axum's connection info.
                let mut req = req;
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer.client));
                Some(app(&ctx, req).await)
            }
        }
    };
    let Some(mut resp) = resp else {
        // The seed's "swapped host": no answer, no error page; the attempt is counted.
        probe(&ctx, ip);
        head.log(ip, None, 444, None);
        metrics::counter!("stg_web_requests_refused_total", "reason" => "host").increment(1);
        return Err(NoAnswer);
    };
    if peer.secure {
        secure_headers(resp.headers_mut(), ctx.hsts.as_ref());
    }
    if resp.status() == StatusCode::NOT_FOUND && !proxied {
        probe(&ctx, ip);
    }
    let bytes = resp.body().size_hint().exact();
    head.log(ip, user.as_deref(), resp.status().as_u16(), bytes);
    metrics::counter!("stg_web_requests_total", "status" => resp.status().as_str().to_owned())
        .increment(1);
    metrics::histogram!("stg_web_request_duration_seconds").record(started.elapsed().as_secs_f64());
    Ok(resp)
}

/// What the access log needs of a request, taken before the request is consumed.
struct Head {
    method: String,
    target: String,
    version: &'static str,
    referer: Option<String>,
    user_agent: Option<String>,
}

impl Head {
    fn of(req: &Request<Incoming>) -> Self {
        let h = |name: header::HeaderName| {
            req.headers()
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        Self {
            method: req.method().as_str().to_owned(),
            target: req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned(),
            version: match req.version() {
                http::Version::HTTP_2 => "HTTP/2.0",
                http::Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            referer: h(header::REFERER),
            user_agent: h(header::USER_AGENT),
        }
    }

    fn log(&self, client: IpAddr, user: Option<&str>, status: u16, bytes: Option<u64>) {
        log::write(&log::Entry {
            client,
            user,
            method: &self.method,
            target: &self.target,
            version: self.version,
            status,
            bytes,
            referer: self.referer.as_deref(),
            user_agent: self.user_agent.as_deref(),
        });
    }
}

/// One failure for the guard's `probe` jail.
fn probe(ctx: &Ctx, ip: IpAddr) {
    metrics::counter!("stg_web_probes_total").increment(1);
    ctx.guard.failure(ip, Kind::Probe, None);
}

/// The http listener's only answer: 301 to the same path on https.
fn to_https(ctx: &Ctx, host: &str, req: &Request<Incoming>) -> Response<Body> {
    let valid = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
    if !valid {
        return page(StatusCode::BAD_REQUEST);
    }
    let port = match ctx.https_port {
        443 => String::new(),
        p => format!(":{p}"),
    };
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    redirect(
        StatusCode::MOVED_PERMANENTLY,
        &format!("https://{host}{port}{pq}"),
    )
}

fn redirect(status: StatusCode, to: &str) -> Response<Body> {
    let mut r = page(status);
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// The front's own answers: a short page that names the status and nothing else.
pub(crate) fn page(status: StatusCode) -> Response<Body> {
    let what = match status {
        StatusCode::BAD_GATEWAY => "The application behind this address is not answering.",
        StatusCode::GATEWAY_TIMEOUT => "The application behind this address is too slow to answer.",
        StatusCode::SERVICE_UNAVAILABLE => "This service is not available.",
        StatusCode::UNAUTHORIZED => "Please sign in.",
        _ => "",
    };
    let reason = status.canonical_reason().unwrap_or("");
    let body = format!(
        "<!doctype html><html><head><title>{code} {reason}</title></head><body><h1>{code} {reason}</h1><p>{what}</p></body></html>\n",
        code = status.as_u16()
    );
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// HSTS (RFC 6797) on every https answer; the other headers unless the application set its
/// own.
fn secure_headers(h: &mut HeaderMap, hsts: Option<&HeaderValue>) {
    if let Some(v) = hsts {
        h.insert(header::STRICT_TRANSPORT_SECURITY, v.clone());
    }
    let defaults = [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "SAMEORIGIN"),
        (header::REFERRER_POLICY, "strict-origin-when-cross-origin"),
        (header::CONTENT_SECURITY_POLICY, "frame-ancestors 'self'"),
    ];
    for (name, value) in defaults {
        h.entry(name).or_insert(HeaderValue::from_static(value));
    }
}

/// The body as handlers and upstreams get it: within `max_body_bytes` (413 when the
/// declared length is over) and `body_timeout`.
fn limited_body(ctx: &Ctx, body: Incoming) -> Result<Body, Box<Response<Body>>> {
    let c = ctx.rules.config();
    if body.size_hint().lower() > c.max_body_bytes {
        return Err(Box::new(page(StatusCode::PAYLOAD_TOO_LARGE)));
    }
    if body.is_end_stream() {
        return Ok(Body::empty());
    }
    let timed = Timed {
        inner: body,
        deadline: Box::pin(tokio::time::sleep(c.body_timeout)),
    };
    let limit = usize::try_from(c.max_body_bytes).unwrap_or(usize::MAX);
    Ok(Body::new(http_body_util::Limited::new(timed, limit)))
}

async fn proxy(
    ctx: &Ctx,
    i: usize,
    peer: Peer,
    permit: Arc<Permit>,
    req: Request<Incoming>,
    user: &mut Option<String>,
) -> Response<Body> {
    let Some(up) = ctx.upstreams.get(i) else {
        return page(StatusCode::NOT_FOUND);
    };
    if up.config.token {
        let Some(check) = &ctx.token else {
            return page(StatusCode::SERVICE_UNAVAILABLE);
        };
        let (parts, body) = req.into_parts();
        match check.check(&parts).await {
            TokenVerdict::Valid { user: u } => *user = Some(u),
            TokenVerdict::Invalid { reason } => {
                let ip = peer.client.ip();
                // The seed's line for an invalid token (its fail2ban filters read it).
                tracing::warn!(target: "stg::web", "TRUCO_KO {ip} web {} token invalido ({reason})", up.config.name);
                ctx.guard.failure(ip, Kind::InvalidToken, None);
                return page(StatusCode::UNAUTHORIZED);
            }
            _ => return page(StatusCode::UNAUTHORIZED),
        }
        return forward(
            ctx,
            up,
            peer,
            permit,
            Request::from_parts(parts, body),
            user.as_deref(),
        )
        .await;
    }
    forward(ctx, up, peer, permit, req, None).await
}

async fn forward(
    ctx: &Ctx,
    up: &proxy::Upstream,
    peer: Peer,
    permit: Arc<Permit>,
    mut req: Request<Incoming>,
    user: Option<&str>,
) -> Response<Body> {
    let upgrade =
        proxy::wants_upgrade(req.headers(), req.version()).then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let body = match limited_body(ctx, body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    up.forward(peer, permit, parts, body, upgrade, user).await
}

async fn serve_static(ctx: &Ctx, i: usize, req: Request<Incoming>) -> Response<Body> {
    let (Some(dir), Some(cfg)) = (ctx.statics.get(i), ctx.rules.config().static_dirs.get(i)) else {
        return page(StatusCode::NOT_FOUND);
    };
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return page(StatusCode::METHOD_NOT_ALLOWED);
    }
    let (mut parts, _) = req.into_parts();
    let path = parts.uri.path();
    let rest = path
        .strip_prefix(cfg.prefix.trim_end_matches('/'))
        .unwrap_or(path);
    let rest = if rest.starts_with('/') {
        rest.to_owned()
    } else {
        format!("/{rest}")
    };
    let Ok(uri) = rest.parse() else {
        return page(StatusCode::BAD_REQUEST);
    };
    parts.uri = uri;
    let req = Request::from_parts(parts, Body::empty());
    match dir.clone().oneshot(req).await {
        Ok(r) if r.status() == StatusCode::NOT_FOUND => page(StatusCode::NOT_FOUND),
        Ok(r) => r.map(Body::new),
        Err(never) => match never {},
    }
}

async fn app(ctx: &Ctx, req: Request<Incoming>) -> Response<Body> {
    let Some(app) = &ctx.app else {
        return page(StatusCode::NOT_FOUND);
    };
    let (parts, body) = req.into_parts();
    let body = match limited_body(ctx, body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    match app.clone().oneshot(Request::from_parts(parts, body)).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

/// A body that must be complete by a deadline (a client sending it a byte at a time
/// cannot hold a request open).
struct Timed<B> {
    inner: B,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<B> http_body::Body for Timed<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            metrics::counter!("stg_web_requests_refused_total", "reason" => "body_timeout")
                .increment(1);
            return Poll::Ready(Some(Err("request body not received in time".into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
