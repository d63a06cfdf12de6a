use std::collections::HashSet;
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use http_body_util::BodyExt as _;
use stg_auth::{PasswordParams, Session};
use stg_guard::{Hook, Kind};
use stg_portal::{ClientIp, Portal, Settings, LOGIN_FAILED};
use stg_store::Users;
use tower::ServiceExt as _;

const T0: u64 = 1_800_000_000;
const REALM: &str = "example.org";
/// Cheap hashes: debug-build tests stay fast; the cost is a parameter like any other.
const CHEAP: PasswordParams = PasswordParams {
    m_kib: 256,
    t: 1,
    p: 1,
};

/// A guard that records what it is told and bans at the 11th portal failure (the seed's
/// "more than ten"), as the node's guard does with its `portal` jail.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<(IpAddr, Kind, Option<String>)>>,
    banned: Mutex<HashSet<IpAddr>>,
}

impl Recorder {
    fn events(&self) -> Vec<(IpAddr, Kind, Option<String>)> {
        self.events.lock().unwrap().clone()
    }
}

impl Hook for Recorder {
    fn banned(&self, ip: IpAddr) -> bool {
        self.banned.lock().unwrap().contains(&ip)
    }
    fn failure(&self, ip: IpAddr, kind: Kind, user: Option<&str>) {
        let mut ev = self.events.lock().unwrap();
        ev.push((ip, kind.clone(), user.map(str::to_owned)));
        if ev.iter().filter(|e| e.0 == ip && e.1 == kind).count() >= 11 {
            self.banned.lock().unwrap().insert(ip);
        }
    }
}

struct Fixture {
    portal: Portal,
    app: Router,
    guard: Arc<Recorder>,
    clock: Arc<AtomicU64>,
    log: Log,
}

/// What the `stg::auth` and `stg::portal` targets wrote, for this test's thread.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Log {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn fixture(
    max_hashing: usize,
    max_waiting: usize,
) -> (Fixture, tracing::subscriber::DefaultGuard) {
    let log = Log::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let log_guard = tracing::subscriber::set_default(subscriber);

    let dir = stg_testkit::temp_dir("portal");
    let users = Users::open(
        &format!("sqlite://{}?mode=rwc", dir.join("users.sqlite").display()),
        &dir,
    )
    .await
    .unwrap();
    let phc = stg_auth::hash_password("s3cret-pw", &[5; 16], CHEAP).unwrap();
    let ha1 = stg_auth::ha1(stg_auth::Algorithm::Md5, "alice", REALM, "s3cret-pw");
    users
        .set_with_password("alice", REALM, &[("MD5", ha1)], Some(&phc))
        .await
        .unwrap();
    // A SIP-only user (created before portal passwords existed): no portal login.
    users
        .set("carol", REALM, &[("MD5", "0".repeat(32))])
        .await
        .unwrap();
    let clock = Arc::new(AtomicU64::new(T0));
    let c2 = clock.clone();
    let settings = Settings {
        realm: Some(REALM.into()),
        landing_page: "/app/".into(),
        token_lifetime: Duration::from_secs(3600),
        cookie_name: "stg_session".into(),
        params: CHEAP,
        max_hashing,
        max_waiting,
        clock: Arc::new(move || c2.load(Ordering::SeqCst)),
    };
    let guard = Arc::new(Recorder::default());
    let portal = Portal::new(settings, users, guard.clone(), &[9; 32])
        .await
        .unwrap();
    // The front's view: the portal under /sercen, a protected app beside it.
    let protected = Router::new()
        .route(
            "/app/",
            get(|Extension(s): Extension<Session>| async move { format!("welcome {}", s.user) }),
        )
        .layer(axum::middleware::from_fn_with_state(
            portal.clone(),
            stg_portal::require_session,
        ));
    let app = Router::new()
        .nest("/sercen", portal.router())
        .merge(protected);
    (
        Fixture {
            portal,
            app,
            guard,
            clock,
            log,
        },
        log_guard,
    )
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn request(method: &str, uri: &str, from: &str) -> axum::http::request::Builder {
    Request::builder()
        .method(method)
        .uri(uri)
        .extension(ClientIp(ip(from)))
}

fn form_login(user: &str, password: &str, from: &str) -> Request<Body> {
    let body = serde_urlencoded::to_string([("user", user), ("password", password)]).unwrap();
    request("POST", "/sercen/login", from)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(body))
        .unwrap()
}

fn json_login(user: &str, password: &str, from: &str) -> Request<Body> {
    let body = serde_json::json!({ "user": user, "password": password }).to_string();
    request("POST", "/sercen/login", from)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap()
}

async fn send(app: &Router, req: Request<Body>) -> Response {
    app.clone().oneshot(req).await.unwrap()
}

async fn body_text(r: Response) -> String {
    let b = r.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&b).into_owned()
}

fn header_of(r: &Response, name: header::HeaderName) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// The token in a `Set-Cookie: stg_session=<token>; ...`.
fn cookie_token(r: &Response) -> String {
    let c = header_of(r, header::SET_COOKIE);
    c.strip_prefix("stg_session=")
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_default()
        .to_owned()
}

fn with_cookie(req: axum::http::request::Builder, token: &str) -> Request<Body> {
    req.header(header::COOKIE, format!("theme=dark; stg_session={token}"))
        .body(Body::empty())
        .unwrap()
}

fn with_bearer(req: axum::http::request::Builder, token: &str) -> Request<Body> {
    req.header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap()
}

// === the seed's rows ===

#[tokio::test]
async fn wrong_password_once_answers_the_message_logs_truco_ko_and_tells_the_guard() {
    let (f, _log) = fixture(1, 8).await;
    let r = send(&f.app, form_login("alice", "wrong", "192.0.2.7")).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(header_of(&r, header::CACHE_CONTROL), "no-store");
    assert!(header_of(&r, header::SET_COOKIE).is_empty());
    let page = body_text(r).await;
    assert!(page.contains(LOGIN_FAILED), "{page}");
    assert!(
        page.contains("value=\"alice\""),
        "the user is kept in the form"
    );
    assert!(
        f.log
            .text()
            .contains("TRUCO_KO 192.0.2.7 portal wrong_password alice"),
        "{}",
        f.log.text()
    );
    assert_eq!(
        f.guard.events(),
        [(ip("192.0.2.7"), Kind::PortalLogin, Some("alice".into()))]
    );

    // An unknown user, and a SIP-only user without a portal password: the same answer,
    // only the log tells them apart.
    for user in ["bob", "carol"] {
        let r = send(&f.app, json_login(user, "wrong", "192.0.2.8")).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let body: serde_json::Value = serde_json::from_str(&body_text(r).await).unwrap();
        assert_eq!(body, serde_json::json!({ "error": LOGIN_FAILED }));
        let line = format!("TRUCO_KO 192.0.2.8 portal unknown_user {user}");
        assert!(f.log.text().contains(&line), "{}", f.log.text());
    }
    assert_eq!(f.guard.events().len(), 3);
}

#[tokio::test]
async fn more_than_ten_wrong_passwords_are_eleven_guard_events_then_the_ban_holds() {
    let (f, _log) = fixture(1, 8).await;
    for n in 1..=11 {
        let r = send(
            &f.app,
            json_login("alice", &format!("guess{n}"), "198.51.100.4"),
        )
        .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "attempt {n}");
    }
    let ev = f.guard.events();
    assert_eq!(ev.len(), 11);
    assert!(ev
        .iter()
        .all(|e| *e == (ip("198.51.100.4"), Kind::PortalLogin, Some("alice".into()))));
    assert_eq!(
        f.log.text().matches("TRUCO_KO 198.51.100.4 portal").count(),
        11
    );
    // Banned now: even the right password is refused, without a hash.
    let r = send(&f.app, json_login("alice", "s3cret-pw", "198.51.100.4")).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Another source is not.
    let r = send(&f.app, json_login("alice", "s3cret-pw", "198.51.100.5")).await;
    assert_eq!(r.status(), StatusCode::OK);
}

// === sessions ===

#[tokio::test]
async fn a_browser_logs_in_reaches_the_app_checks_and_logs_out() {
    let (f, _log) = fixture(1, 8).await;
    let page = send(
        &f.app,
        request("GET", "/sercen/login", "203.0.113.9")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(page.status(), StatusCode::OK);
    let html = body_text(page).await;
    for text in [
        "<form method=\"post\" action=\"login\"",
        "User",
        "Password",
        "Log in",
    ] {
        assert!(html.contains(text), "{text}: {html}");
    }

    let r = send(&f.app, form_login("alice", "s3cret-pw", "203.0.113.9")).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(header_of(&r, header::LOCATION), "/app/");
    let cookie = header_of(&r, header::SET_COOKIE);
    for attr in [
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Path=/",
        "Max-Age=3600",
    ] {
        assert!(cookie.contains(attr), "{attr}: {cookie}");
    }
    let token = cookie_token(&r);
    assert!(token.starts_with("v1."), "{cookie}");

    let r = send(
        &f.app,
        with_cookie(request("GET", "/app/", "203.0.113.9"), &token),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body_text(r).await, "welcome alice");

    let r = send(
        &f.app,
        with_cookie(request("GET", "/sercen/auth/check", "10.0.0.2"), &token),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header_of(&r, "x-auth-user".parse().unwrap()), "alice");
    let body: serde_json::Value = serde_json::from_str(&body_text(r).await).unwrap();
    assert_eq!(
        body,
        serde_json::json!({ "user": "alice", "expires": T0 + 3600 })
    );

    let r = send(
        &f.app,
        with_cookie(request("POST", "/sercen/logout", "203.0.113.9"), &token),
    )
    .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(header_of(&r, header::LOCATION), "login");
    assert!(header_of(&r, header::SET_COOKIE).starts_with("stg_session=; Path=/; Max-Age=0"));
    assert_eq!(f.portal.revoked_count(), 1);

    // The logged-out token, replayed: refused everywhere, not counted.
    let r = send(
        &f.app,
        with_cookie(request("GET", "/sercen/auth/check", "10.0.0.2"), &token),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = send(
        &f.app,
        with_cookie(request("GET", "/app/", "203.0.113.9"), &token),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // No cookie at all.
    let r = send(
        &f.app,
        request("GET", "/app/", "203.0.113.9")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(header_of(&r, header::WWW_AUTHENTICATE), "Bearer");
    assert!(f.guard.events().is_empty());
    assert!(!f.log.text().contains("TRUCO_KO"), "{}", f.log.text());
}

#[tokio::test]
async fn an_app_logs_in_with_json_and_uses_a_bearer_token_until_it_expires() {
    let (f, _log) = fixture(1, 8).await;
    let r = send(&f.app, json_login("alice", "s3cret-pw", "203.0.113.10")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        header_of(&r, header::SET_COOKIE).is_empty(),
        "apps get no cookie"
    );
    let body: serde_json::Value = serde_json::from_str(&body_text(r).await).unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["user"], "alice");
    assert_eq!(body["expires"], T0 + 3600);
    let token = body["token"].as_str().unwrap().to_owned();

    let r = send(
        &f.app,
        with_bearer(request("GET", "/app/", "203.0.113.10"), &token),
    )
    .await;
    assert_eq!(body_text(r).await, "welcome alice");
    let r = send(
        &f.app,
        with_bearer(request("GET", "/sercen/auth/check", "10.0.0.2"), &token),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);

    // Past its expiry: refused, not counted (it is ours, just old).
    f.clock.store(T0 + 3600, Ordering::SeqCst);
    let r = send(
        &f.app,
        with_bearer(request("GET", "/app/", "203.0.113.10"), &token),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = send(
        &f.app,
        with_bearer(request("GET", "/sercen/auth/check", "10.0.0.2"), &token),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(f.guard.events().is_empty());

    // A fresh one, logged out with the bearer: 204, then refused.
    f.clock.store(T0 + 4000, Ordering::SeqCst);
    let r = send(&f.app, json_login("alice", "s3cret-pw", "203.0.113.10")).await;
    let body: serde_json::Value = serde_json::from_str(&body_text(r).await).unwrap();
    let token = body["token"].as_str().unwrap().to_owned();
    let r = send(
        &f.app,
        with_bearer(request("POST", "/sercen/logout", "203.0.113.10"), &token),
    )
    .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = send(
        &f.app,
        with_bearer(request("GET", "/app/", "203.0.113.10"), &token),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(f.guard.events().is_empty());
}

#[tokio::test]
async fn a_forged_token_on_a_protected_route_is_truco_ko_token_invalido_and_counted() {
    let (f, _log) = fixture(1, 8).await;
    let r = send(&f.app, json_login("alice", "s3cret-pw", "203.0.113.11")).await;
    let body: serde_json::Value = serde_json::from_str(&body_text(r).await).unwrap();
    let token = body["token"].as_str().unwrap().to_owned();
    // Tampered: one character of the MAC changed.
    let mut forged = token.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    for (req, n) in [
        (
            with_cookie(request("GET", "/app/", "192.0.2.66"), &forged),
            1,
        ),
        (
            with_bearer(request("GET", "/app/", "192.0.2.66"), "garbage"),
            2,
        ),
    ] {
        let r = send(&f.app, req).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(f.guard.events().len(), n);
    }
    // The forged cookie is cleared.
    let r = send(
        &f.app,
        with_cookie(request("GET", "/app/", "192.0.2.66"), &forged),
    )
    .await;
    assert!(header_of(&r, header::SET_COOKIE).contains("Max-Age=0"));
    assert_eq!(
        f.guard.events()[0],
        (ip("192.0.2.66"), Kind::InvalidToken, None)
    );
    assert!(
        f.log
            .text()
            .contains("TRUCO_KO 192.0.2.66 token invalido -"),
        "{}",
        f.log.text()
    );
    // At the internal token check a forgery is refused but not counted against the caller.
    let before = f.guard.events().len();
    let r = send(
        &f.app,
        with_bearer(request("GET", "/sercen/auth/check", "10.0.0.2"), &forged),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(f.guard.events().len(), before);
    // A valid token next to a forged cookie still passes.
    let r = send(
        &f.app,
        request("GET", "/app/", "203.0.113.11")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::COOKIE, format!("stg_session={forged}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
}

// === bad requests and limits ===

#[tokio::test]
async fn bad_login_requests_are_refused_without_counting() {
    let (f, _log) = fixture(1, 8).await;
    let r = send(
        &f.app,
        request("POST", "/sercen/login", "192.0.2.1")
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Body::from("alice s3cret-pw"))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let r = send(
        &f.app,
        request("POST", "/sercen/login", "192.0.2.1")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{\"user\": \"alice\"}"))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let big = format!("user=alice&password={}", "x".repeat(stg_portal::MAX_BODY));
    let r = send(
        &f.app,
        request("POST", "/sercen/login", "192.0.2.1")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(big))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(f.guard.events().is_empty());
    // A name no user can have (control characters, too long) is a failure like any other.
    for user in ["a\nb", &"u".repeat(300)] {
        let r = send(&f.app, json_login(user, "x", "192.0.2.1")).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(f.guard.events().len(), 2);
    assert!(f
        .log
        .text()
        .contains("TRUCO_KO 192.0.2.1 portal unknown_user a?b"));
    // Without the front's ClientIp (nor ConnectInfo) the portal refuses to guess.
    let r = send(
        &f.app,
        Request::post("/sercen/login")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                "{\"user\":\"alice\",\"password\":\"s3cret-pw\"}",
            ))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn logins_beyond_the_hashing_cap_and_queue_get_503_at_once() {
    // One hash at a time and nobody waiting: while a login is in progress, the next is 503.
    let (f, _log) = fixture(1, 0).await;
    let (a, b) = tokio::join!(
        send(&f.app, json_login("alice", "s3cret-pw", "192.0.2.20")),
        send(&f.app, json_login("alice", "s3cret-pw", "192.0.2.21")),
    );
    assert_eq!(a.status(), StatusCode::OK);
    assert_eq!(b.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header_of(&b, header::RETRY_AFTER), "1");
    // Once the first is answered, the slot is free again.
    let r = send(&f.app, json_login("alice", "s3cret-pw", "192.0.2.21")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(f.guard.events().is_empty());
}

/// Login requests per second with the default argon2 cost and the default cap (one hash at
/// a time), in release: `cargo test --release -p stg-portal --test it -- --ignored
/// --nocapture login_rate`. A figure for the notes, not an assertion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run in release"]
async fn login_rate() {
    for max_hashing in [1, 2] {
        let dir = stg_testkit::temp_dir("portal-rate");
        let users = Users::open("", &dir).await.unwrap();
        let params = PasswordParams::default();
        let phc = stg_auth::hash_password("s3cret-pw", &[5; 16], params).unwrap();
        users
            .set_with_password("alice", REALM, &[("MD5", "0".repeat(32))], Some(&phc))
            .await
            .unwrap();
        let settings = Settings {
            realm: Some(REALM.into()),
            landing_page: "/".into(),
            token_lifetime: Duration::from_secs(3600),
            cookie_name: "stg_session".into(),
            params,
            max_hashing,
            max_waiting: 64,
            clock: stg_portal::system_clock(),
        };
        let portal = Portal::new(settings, users, Arc::new(stg_guard::NoGuard), &[9; 32])
            .await
            .unwrap();
        let app = Router::new().nest("/sercen", portal.router());
        let n = 60;
        let started = std::time::Instant::now();
        let mut tasks = Vec::new();
        for i in 0..n {
            let app = app.clone();
            let pw = if i % 2 == 0 { "s3cret-pw" } else { "wrong" };
            tasks.push(tokio::spawn(async move {
                send(&app, json_login("alice", pw, "192.0.2.1"))
                    .await
                    .status()
            }));
        }
        for t in tasks {
            let s = t.await.unwrap();
            assert!(s == StatusCode::OK || s == StatusCode::UNAUTHORIZED, "{s}");
        }
        let secs = started.elapsed().as_secs_f64();
        let _ = writeln!(
            std::io::stderr(),
            "login_rate: max_hashing={max_hashing}: {n} logins in {secs:.2} s = {:.1}/s \
             (argon2id m={} KiB t={} p={})",
            f64::from(n) / secs,
            params.m_kib,
            params.t,
            params.p
        );
    }
}
