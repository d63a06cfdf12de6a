//! The authentication service of stg (the Sercen role): portal login against the users
//! table (argon2id), signed session tokens (a cookie for browsers, a bearer token for apps),
//! logout, the token check internal services call (the seed's `getautenticacionapache`), and
//! the middleware that protects the web front's routes.
//!
//! # How it fits
//! [`Portal::router`] is an axum `Router` with no listener of its own: the web front nests
//! it (e.g. under `/sercen`) and serves it over its TLS listener, after its own admission
//! check and access rules (`/auth/check` is for internal networks only: the front's rules
//! say so). The front tells the portal who the client is by inserting a [`ClientIp`] in each
//! request's extensions (the address after PROXY protocol from a trusted balancer); without
//! it the portal falls back to axum's `ConnectInfo<SocketAddr>`, and without either it
//! answers 500 rather than guess. Routes the front protects go through
//! [`require_session`] (`axum::middleware::from_fn_with_state(portal, require_session)`),
//! which hands the handler the [`Session`] as an extension.
//!
//! | route | answer |
//! |---|---|
//! | `GET /login` | the login page |
//! | `POST /login` | form → 303 to `portal.landing_page` with the session cookie; JSON → `{"token", "token_type": "Bearer", "user", "expires"}`; wrong → 401 "user or password incorrect" |
//! | `POST /logout` | revokes the token here, clears the cookie: form → 303 to the login page, JSON/bearer → 204 |
//! | `GET /auth/check` | 200 `{"user", "expires"}` and `X-Auth-User` for a valid cookie or bearer, else 401 |
//!
//! # Invariants
//! - A wrong password and an unknown user get the same answer after the same work (one
//!   argon2 hash, against a dummy hash for the unknown user); only the `TRUCO_KO` line tells
//!   them apart. Each is one [`AuthFailure`] (the line) and one `Hook::failure(ip,
//!   Kind::PortalLogin, user)` (the guard's count).
//! - A token we never issued, on a protected route, is one `TRUCO_KO <ip> token invalido`
//!   line and one `Hook::failure(ip, Kind::InvalidToken, None)`. An expired or logged-out
//!   token of ours is refused but not counted (a browser that kept it too long is not an
//!   attacker), nor is anything at `/auth/check` (its callers are internal services).
//! - Argon2 runs on blocking threads, at most `portal.max_hashing` at once, with at most
//!   `portal.max_waiting` logins queued; beyond, 503 at once. Bodies are capped at
//!   [`MAX_BODY`], `TRUCO_KO` lines at [`MAX_LOG_LINES_PER_SECOND`], revoked tokens at
//!   [`MAX_REVOKED`].
#![forbid(unsafe_code)]

mod hashing;
mod key;
mod page;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Request, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use stg_auth::token::MAX_TOKEN_USER;
use stg_auth::{
    AuthFailure, FailReason, PasswordCheck, PasswordError, PasswordParams, Passwords, Session,
    TokenError, TokenKey,
};
use stg_guard::{Hook, Kind};
use stg_store::{StoreError, Users};

pub use key::load_or_create_key;

use crate::hashing::Hashing;

/// What a failed login answers, whatever the reason.
pub const LOGIN_FAILED: &str = "user or password incorrect";

/// Largest request body the portal reads (a login form is well under 1 KiB).
pub const MAX_BODY: usize = 8 * 1024;

/// Most `TRUCO_KO` lines the portal writes per second; the rest are counted in
/// `stg_log_suppressed_total` (the guard still counts every failure).
pub const MAX_LOG_LINES_PER_SECOND: u32 = 20;

/// Most logged-out tokens remembered until they expire; when full, the one expiring first
/// is forgotten (it was about to stop working anyway).
pub const MAX_REVOKED: usize = 100_000;

/// Most session cookies of our name looked at in one request (a browser sends one; more is
/// cookie tossing from a sibling domain).
const MAX_COOKIES: usize = 4;

/// The client's address as the web front established it (after PROXY protocol from a
/// trusted balancer). The front inserts it into every request's extensions; the portal's
/// handlers and [`require_session`] read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if let Some(ip) = parts.extensions.get::<Self>() {
            return Ok(*ip);
        }
        if let Some(ConnectInfo(addr)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() {
            return Ok(Self(addr.ip()));
        }
        // A wiring bug in the front: refusing is safer than blaming some default address.
        tracing::error!("portal: request without ClientIp nor ConnectInfo (front wiring bug)");
        Err((
            StatusCode::INTERNAL_SERVER_ERROR,
            "client address unknown\n",
        )
            .into_response())
    }
}

/// Wall-clock time in unix seconds (tokens cross nodes: a monotonic clock would not do).
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    })
}

/// What the portal needs from the configuration, and its clock.
#[derive(Clone)]
pub struct Settings {
    /// The realm of portal users; `None`: whichever realm the user has a password in.
    pub realm: Option<String>,
    /// Where a browser goes after logging in.
    pub landing_page: String,
    /// How long a token is accepted.
    pub token_lifetime: Duration,
    /// The session cookie's name.
    pub cookie_name: String,
    /// The cost of the dummy hash (and so of a login for an unknown user).
    pub params: PasswordParams,
    /// Hashes at once.
    pub max_hashing: usize,
    /// Logins waiting for a hashing slot.
    pub max_waiting: usize,
    /// Unix seconds now.
    pub clock: Clock,
}

impl Settings {
    /// From `[portal]` (and the registrar's realm), with the system clock.
    pub fn from_config(config: &stg_config::Config) -> Self {
        let p = &config.portal;
        Self {
            realm: config.portal_realm(),
            landing_page: p.landing_page.clone(),
            token_lifetime: p.token_lifetime,
            cookie_name: p.cookie_name.clone(),
            params: PasswordParams {
                m_kib: p.argon2_memory_kib,
                t: p.argon2_iterations,
                p: p.argon2_parallelism,
            },
            max_hashing: p.max_hashing,
            max_waiting: p.max_waiting,
            clock: system_clock(),
        }
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("realm", &self.realm)
            .field("landing_page", &self.landing_page)
            .field("token_lifetime", &self.token_lifetime)
            .field("cookie_name", &self.cookie_name)
            .field("params", &self.params)
            .field("max_hashing", &self.max_hashing)
            .field("max_waiting", &self.max_waiting)
            .finish_non_exhaustive()
    }
}

/// Why the portal could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PortalError {
    /// The token key file cannot be read or created, or is too short.
    #[error("portal key: {0}")]
    Key(String),
    /// The argon2 parameters are refused.
    #[error(transparent)]
    Password(#[from] PasswordError),
    /// The users database cannot be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The authentication service. Cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct Portal {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    users: Users,
    passwords: Arc<Passwords>,
    tokens: TokenKey,
    hashing: Hashing,
    guard: Arc<dyn Hook>,
    revoked: Mutex<Revoked>,
    /// (second, lines written in it).
    log_budget: Mutex<(u64, u32)>,
}

impl Portal {
    /// The portal of a node: users from `[store] users_url`, the key from
    /// `portal.key_file` (created when missing), settings from `[portal]`.
    pub async fn open(
        config: &stg_config::Config,
        guard: Arc<dyn Hook>,
    ) -> Result<Self, PortalError> {
        let secret = load_or_create_key(&config.portal_key_file())?;
        let users = Users::open(&config.store.users_url, &config.node.data_dir).await?;
        Self::new(Settings::from_config(config), users, guard, &secret).await
    }

    /// A portal over `users`, signing tokens with a key derived from `secret` (at least 32
    /// bytes). Computes the dummy hash (one argon2 hash, on a blocking thread).
    pub async fn new(
        settings: Settings,
        users: Users,
        guard: Arc<dyn Hook>,
        secret: &[u8],
    ) -> Result<Self, PortalError> {
        let tokens = TokenKey::new(secret).map_err(PortalError::Key)?;
        let mut salt = [0u8; 16];
        let mut dummy = [0u8; 16];
        getrandom::fill(&mut salt)
            .and_then(|()| getrandom::fill(&mut dummy))
            .map_err(|e| PortalError::Key(format!("no randomness: {e}")))?;
        let params = settings.params;
        let passwords = tokio::task::spawn_blocking(move || Passwords::new(params, &salt, &dummy))
            .await
            .map_err(|e| PortalError::Key(format!("dummy hash: {e}")))??;
        let hashing = Hashing::new(settings.max_hashing, settings.max_waiting);
        Ok(Self {
            inner: Arc::new(Inner {
                settings,
                users,
                passwords: Arc::new(passwords),
                tokens,
                hashing,
                guard,
                revoked: Mutex::new(Revoked::new(MAX_REVOKED)),
                log_budget: Mutex::new((0, 0)),
            }),
        })
    }

    /// The portal's routes, for the web front to nest. Every answer carries
    /// `Cache-Control: no-store` (tokens and login pages must not be cached).
    pub fn router(&self) -> Router {
        Router::new()
            .route("/login", get(login_page).post(login))
            .route("/logout", post(logout))
            .route("/auth/check", get(auth_check))
            .layer(axum::middleware::map_response(no_store))
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .with_state(self.clone())
    }

    /// The session of a request to a protected route: the bearer token, else the session
    /// cookie. A token we never issued is logged (`TRUCO_KO <ip> token invalido -`) and
    /// counted (`Kind::InvalidToken`); the answer to a refused request is the [`Denied`].
    pub fn check(&self, headers: &HeaderMap, ip: IpAddr) -> Result<Session, Denied> {
        let r = self.session(headers);
        if let Err(Rejection::Invalid(e)) = &r {
            if e.is_forged() {
                self.token_failed(ip);
            }
        }
        r.map_err(|reason| Denied {
            reason,
            clear_cookie: has_cookie(headers, &self.inner.settings.cookie_name)
                .then(|| self.clear_cookie()),
        })
    }

    /// The session a request carries, checked without logging or counting anything.
    pub fn session(&self, headers: &HeaderMap) -> Result<Session, Rejection> {
        let i = &self.inner;
        let now = (i.settings.clock)();
        let mut worst = Rejection::Missing;
        for token in tokens(headers, &i.settings.cookie_name) {
            let r = match i.tokens.verify(token, now) {
                Ok(s) if self.is_revoked(&s) => Rejection::Revoked,
                Ok(s) => {
                    metrics::counter!("stg_portal_token_checks_total", "result" => "ok")
                        .increment(1);
                    return Ok(s);
                }
                Err(e) => Rejection::Invalid(e),
            };
            // A forgery beside a merely old token still gets counted.
            if worst.rank() < r.rank() {
                worst = r;
            }
        }
        metrics::counter!("stg_portal_token_checks_total", "result" => worst.label()).increment(1);
        Err(worst)
    }

    /// Logged-out tokens remembered now.
    pub fn revoked_count(&self) -> usize {
        self.lock_revoked().len()
    }

    fn lock_revoked(&self) -> std::sync::MutexGuard<'_, Revoked> {
        self.inner
            .revoked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn is_revoked(&self, s: &Session) -> bool {
        self.lock_revoked().contains(s)
    }

    fn revoke(&self, s: &Session) {
        let now = (self.inner.settings.clock)();
        let mut r = self.lock_revoked();
        r.insert(s, now);
        metrics::gauge!("stg_portal_revoked_tokens").set(r.len() as f64);
    }

    fn may_log(&self) -> bool {
        let now = (self.inner.settings.clock)();
        let mut b = self
            .inner
            .log_budget
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if b.0 != now {
            *b = (now, 0);
        }
        if b.1 >= MAX_LOG_LINES_PER_SECOND {
            metrics::counter!("stg_log_suppressed_total").increment(1);
            return false;
        }
        b.1 += 1;
        true
    }

    fn report(&self, failure: &AuthFailure, kind: Kind, user: Option<&str>) {
        metrics::counter!("stg_auth_failures_total", "service" => failure.service, "reason" => failure.reason)
            .increment(1);
        self.inner.guard.failure(failure.ip, kind, user);
        if self.may_log() {
            tracing::warn!(target: "stg::auth", "{failure}");
        }
    }

    fn login_failed(&self, ip: IpAddr, reason: FailReason, user: &str) {
        let f = AuthFailure::portal(ip, reason, user);
        self.report(&f, Kind::PortalLogin, Some(&f.user));
    }

    fn token_failed(&self, ip: IpAddr) {
        self.report(&AuthFailure::invalid_token(ip), Kind::InvalidToken, None);
    }

    fn cookie(&self, token: &str) -> String {
        let s = &self.inner.settings;
        format!(
            "{}={token}; Path=/; Max-Age={}; HttpOnly; Secure; SameSite=Strict",
            s.cookie_name,
            s.token_lifetime.as_secs()
        )
    }

    fn clear_cookie(&self) -> String {
        format!(
            "{}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Strict",
            self.inner.settings.cookie_name
        )
    }
}

impl std::fmt::Debug for Portal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Portal")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

/// Logged-out tokens, until they expire: tokens are stateless, so logging out of one node
/// revokes the token on that node only (the cookie is gone from the browser everywhere).
#[derive(Debug)]
struct Revoked {
    /// Token id → its expiry.
    by_id: HashMap<[u8; 8], u64>,
    cap: usize,
}

impl Revoked {
    fn new(cap: usize) -> Self {
        Self {
            by_id: HashMap::new(),
            cap: cap.max(1),
        }
    }

    fn len(&self) -> usize {
        self.by_id.len()
    }

    fn contains(&self, s: &Session) -> bool {
        self.by_id.get(&s.id).is_some_and(|&exp| exp == s.expires)
    }

    fn insert(&mut self, s: &Session, now: u64) {
        if self.by_id.len() >= self.cap && !self.by_id.contains_key(&s.id) {
            self.by_id.retain(|_, &mut exp| exp > now);
            if self.by_id.len() >= self.cap {
                // The one that stops working first anyway.
                let first = self
                    .by_id
                    .iter()
                    .min_by_key(|(_, &exp)| exp)
                    .map(|(k, _)| *k);
                if let Some(k) = first {
                    self.by_id.remove(&k);
                    metrics::counter!("stg_portal_revoked_evicted_total").increment(1);
                }
            }
        }
        self.by_id.insert(s.id, s.expires);
    }
}

/// Why a request carries no valid session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// No token at all.
    Missing,
    /// A token that does not verify (forged, tampered, expired...).
    Invalid(TokenError),
    /// A token of ours that was logged out.
    Revoked,
}

impl Rejection {
    fn rank(self) -> u8 {
        match self {
            Self::Missing => 0,
            Self::Revoked => 1,
            Self::Invalid(e) if !e.is_forged() => 2,
            Self::Invalid(_) => 3,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Revoked => "revoked",
            Self::Invalid(e) if e.is_forged() => "forged",
            Self::Invalid(_) => "expired",
        }
    }
}

/// A refused request to a protected route: 401 with `WWW-Authenticate: Bearer`, and the
/// session cookie cleared when one came.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denied {
    /// Why.
    pub reason: Rejection,
    clear_cookie: Option<String>,
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        let mut r = (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "authentication required\n",
        )
            .into_response();
        if let Some(c) = self
            .clear_cookie
            .and_then(|c| HeaderValue::from_str(&c).ok())
        {
            r.headers_mut().insert(header::SET_COOKIE, c);
        }
        r
    }
}

/// Middleware for the web front's protected routes: passes the request on with its
/// [`Session`] as an extension, or answers the [`Denied`].
pub async fn require_session(
    State(portal): State<Portal>,
    ClientIp(ip): ClientIp,
    mut req: Request,
    next: Next,
) -> Response {
    match portal.check(req.headers(), ip) {
        Ok(session) => {
            req.extensions_mut().insert(session);
            next.run(req).await
        }
        Err(denied) => denied.into_response(),
    }
}

// === handlers ===

async fn no_store(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn login_page() -> Html<String> {
    Html(page::login_page(None, ""))
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(alias = "username")]
    user: String,
    password: String,
}

async fn login(
    State(portal): State<Portal>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json = match content_type(&headers) {
        Some(Body::Json) => true,
        Some(Body::Form) => false,
        None => {
            return (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send application/x-www-form-urlencoded or application/json\n",
            )
                .into_response()
        }
    };
    let form: Result<LoginForm, String> = if json {
        serde_json::from_slice(&body).map_err(|e| e.to_string())
    } else {
        serde_urlencoded::from_bytes(&body).map_err(|e| e.to_string())
    };
    let form = match form {
        Ok(f) => f,
        Err(e) => {
            metrics::counter!("stg_portal_logins_total", "result" => "malformed").increment(1);
            return answer(
                json,
                StatusCode::BAD_REQUEST,
                &format!("bad login request: {e}"),
            );
        }
    };
    let i = &portal.inner;
    // The front refuses banned sources before TLS; a ban decided a moment ago may not have
    // reached it yet, and a banned source is not worth a hash.
    if i.guard.banned(ip) {
        metrics::counter!("stg_portal_logins_total", "result" => "banned").increment(1);
        return answer(json, StatusCode::FORBIDDEN, "forbidden");
    }
    let Some(admitted) = i.hashing.admit() else {
        metrics::counter!("stg_portal_logins_total", "result" => "busy").increment(1);
        let mut r = answer(
            json,
            StatusCode::SERVICE_UNAVAILABLE,
            "too many logins at once, try again",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    };
    let user_ok = !form.user.is_empty()
        && form.user.len() <= MAX_TOKEN_USER
        && !form.user.chars().any(char::is_control);
    // A name that cannot be a user still costs a hash (against the dummy), as a missing one.
    let stored = if user_ok {
        match i
            .users
            .password_hash(&form.user, i.settings.realm.as_deref())
            .await
        {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(target: "stg::portal", error = %e, "portal login: users database");
                metrics::counter!("stg_portal_logins_total", "result" => "error").increment(1);
                return answer(
                    json,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "authentication service unavailable",
                );
            }
        }
    } else {
        None
    };
    let passwords = i.passwords.clone();
    let password = form.password;
    let check = i
        .hashing
        .run(&admitted, move || {
            passwords.verify(stored.as_deref(), &password)
        })
        .await;
    drop(admitted);
    let reason = match check {
        Some(PasswordCheck::Ok) => return portal.logged_in(json, ip, &form.user),
        Some(PasswordCheck::Wrong) => FailReason::WrongPassword,
        Some(PasswordCheck::UnknownUser) => FailReason::UnknownUser,
        Some(PasswordCheck::BadHash(e)) => {
            // The operator's data, not the user's guess: not counted against the source.
            tracing::error!(target: "stg::portal", user = %form.user, error = %e, "portal login: unusable stored hash (stg user passwd fixes it)");
            metrics::counter!("stg_portal_logins_total", "result" => "error").increment(1);
            return portal.login_refused(json, &form.user);
        }
        None => {
            metrics::counter!("stg_portal_logins_total", "result" => "error").increment(1);
            return answer(json, StatusCode::INTERNAL_SERVER_ERROR, "internal error");
        }
    };
    metrics::counter!("stg_portal_logins_total", "result" => "failed").increment(1);
    portal.login_failed(ip, reason, &form.user);
    portal.login_refused(json, &form.user)
}

impl Portal {
    fn logged_in(&self, json: bool, ip: IpAddr, user: &str) -> Response {
        let s = &self.inner.settings;
        let now = (s.clock)();
        let mut id = [0u8; 8];
        let token = getrandom::fill(&mut id).ok().and_then(|()| {
            self.inner
                .tokens
                .issue(user, now, s.token_lifetime.as_secs(), id)
        });
        let Some(token) = token else {
            metrics::counter!("stg_portal_logins_total", "result" => "error").increment(1);
            return answer(json, StatusCode::INTERNAL_SERVER_ERROR, "internal error");
        };
        metrics::counter!("stg_portal_logins_total", "result" => "ok").increment(1);
        tracing::info!(target: "stg::portal", %ip, user, "portal login");
        self.inner.guard.authenticated(ip);
        let expires = now.saturating_add(s.token_lifetime.as_secs());
        if json {
            let body = serde_json::json!({
                "token": token,
                "token_type": "Bearer",
                "user": user,
                "expires": expires,
            });
            return (StatusCode::OK, axum::Json(body)).into_response();
        }
        let mut r = (
            StatusCode::SEE_OTHER,
            [(header::LOCATION, s.landing_page.clone())],
        )
            .into_response();
        if let Ok(c) = HeaderValue::from_str(&self.cookie(&token)) {
            r.headers_mut().insert(header::SET_COOKIE, c);
        }
        r
    }

    fn login_refused(&self, json: bool, user: &str) -> Response {
        if json {
            return answer(true, StatusCode::UNAUTHORIZED, LOGIN_FAILED);
        }
        (
            StatusCode::UNAUTHORIZED,
            Html(page::login_page(Some(LOGIN_FAILED), user)),
        )
            .into_response()
    }
}

async fn logout(State(portal): State<Portal>, headers: HeaderMap) -> Response {
    if let Ok(s) = portal.session(&headers) {
        portal.revoke(&s);
        tracing::info!(target: "stg::portal", user = %s.user, "portal logout");
    }
    let browser = !bearer_in(&headers)
        && !matches!(content_type(&headers), Some(Body::Json))
        && !accepts_json(&headers);
    let mut r = if browser {
        // Relative: the login page of wherever the front mounted the portal.
        (StatusCode::SEE_OTHER, [(header::LOCATION, "login")]).into_response()
    } else {
        StatusCode::NO_CONTENT.into_response()
    };
    if let Ok(c) = HeaderValue::from_str(&portal.clear_cookie()) {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    r
}

async fn auth_check(State(portal): State<Portal>, headers: HeaderMap) -> Response {
    match portal.session(&headers) {
        Ok(s) => {
            let mut r = (
                StatusCode::OK,
                axum::Json(serde_json::json!({ "user": s.user, "expires": s.expires })),
            )
                .into_response();
            if let Ok(u) = HeaderValue::from_str(&s.user) {
                r.headers_mut().insert("x-auth-user", u);
            }
            r
        }
        Err(_) => answer(true, StatusCode::UNAUTHORIZED, "unauthenticated"),
    }
}

// === helpers ===

enum Body {
    Form,
    Json,
}

fn content_type(headers: &HeaderMap) -> Option<Body> {
    let ct = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let mime = ct.split(';').next()?.trim();
    if mime.eq_ignore_ascii_case("application/json") {
        Some(Body::Json)
    } else if mime.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        Some(Body::Form)
    } else {
        None
    }
}

fn accepts_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/json"))
}

fn bearer_in(headers: &HeaderMap) -> bool {
    bearer(headers).is_some()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn cookies<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
        .take(MAX_COOKIES)
}

fn has_cookie(headers: &HeaderMap, name: &str) -> bool {
    cookies(headers, name).next().is_some()
}

/// The tokens a request carries: the bearer token first, then the session cookies.
fn tokens<'a>(headers: &'a HeaderMap, cookie: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    bearer(headers).into_iter().chain(cookies(headers, cookie))
}

/// A short answer: JSON `{"error": text}` or plain text.
fn answer(json: bool, status: StatusCode, text: &str) -> Response {
    if json {
        (status, axum::Json(serde_json::json!({ "error": text }))).into_response()
    } else {
        (status, format!("{text}\n")).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: u8, expires: u64) -> Session {
        Session {
            user: "u".into(),
            issued: 0,
            expires,
            id: [id; 8],
        }
    }

    #[test]
    fn revoked_tokens_are_capped_expired_first_then_soonest_expiring() {
        let mut r = Revoked::new(3);
        r.insert(&session(1, 100), 0);
        r.insert(&session(2, 300), 0);
        r.insert(&session(3, 200), 0);
        assert!(r.contains(&session(1, 100)));
        // Same id, other expiry: another token.
        assert!(!r.contains(&session(1, 101)));
        // Full: at 150 the first has expired and makes room.
        r.insert(&session(4, 400), 150);
        assert_eq!(r.len(), 3);
        assert!(!r.contains(&session(1, 100)));
        // Full of live ones: the one expiring first (3, at 200) goes.
        r.insert(&session(5, 500), 150);
        assert_eq!(r.len(), 3);
        assert!(!r.contains(&session(3, 200)));
        for (id, exp) in [(2, 300), (4, 400), (5, 500)] {
            assert!(r.contains(&session(id, exp)));
        }
        // Revoking one already there takes no room.
        r.insert(&session(5, 500), 150);
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn tokens_come_from_bearer_then_cookies() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; sid=c1; b=2; sid=c2"),
        );
        assert_eq!(tokens(&h, "sid").collect::<Vec<_>>(), ["c1", "c2"]);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer  t0 "),
        );
        assert_eq!(tokens(&h, "sid").collect::<Vec<_>>(), ["t0", "c1", "c2"]);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic eA=="),
        );
        assert_eq!(tokens(&h, "sid").collect::<Vec<_>>(), ["c1", "c2"]);
        let many = vec!["sid=x"; 50].join("; ");
        h.insert(header::COOKIE, HeaderValue::from_str(&many).unwrap());
        assert_eq!(tokens(&h, "sid").count(), MAX_COOKIES);
    }
}
