//! Local look-alikes of APNs, FCM HTTP v1 and a push webhook that speak the real wire
//! protocols: HTTP/2 over TLS with ALPN `h2` (the webhook: plain HTTP/1.1), on 127.0.0.1 on a
//! free port, each in a background thread with its own tokio runtime, so blocking tests and
//! async tests alike can use them.
//!
//! They check what the real services check (APNs: the ES256 provider token or the client
//! certificate, a hex device token, `apns-topic`, `apns-push-type`, a JSON payload; FCM: the
//! RS256 JWT-bearer assertion at the token endpoint, the bearer token, the project, the
//! message shape), record every request, and answer as the real services do, including
//! errors scripted per device token. Credentials are generated per server and written in a
//! temp dir: the `.p8` key, the client certificate, the service-account JSON, the CA.
//!
//! Behind the `push-servers` feature (tokio, hyper, rustls, rcgen).

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{
    UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use serde_json::{json, Value};

use crate::dirs::temp_dir;

/// Largest request body a fake reads.
const MAX_BODY: usize = 1 << 20;

/// One request as a fake received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Lower-case names, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// When the request head arrived.
    pub at: Instant,
    /// Which accepted connection carried it (from 1).
    pub connection: u64,
    /// The status the fake answered.
    pub status: u16,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// An answer: status, headers, body.
type Reply = (u16, Vec<(String, String)>, Vec<u8>);

fn reply_json(status: u16, body: &Value) -> Reply {
    (
        status,
        vec![("content-type".into(), "application/json".into())],
        body.to_string().into_bytes(),
    )
}

/// What a handler sees of the connection.
#[derive(Debug, Clone, Copy)]
struct ConnInfo {
    id: u64,
    client_certificate: bool,
}

type Handler = dyn Fn(&Recorded, ConnInfo) -> Reply + Send + Sync;

/// The recording shared by a server's thread and the test.
#[derive(Default)]
struct Log {
    requests: Mutex<Vec<Recorded>>,
    arrived: Condvar,
    connections: AtomicU64,
}

impl Log {
    fn push(&self, r: Recorded) {
        self.requests.lock().unwrap().push(r);
        self.arrived.notify_all();
    }

    fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        let deadline = Instant::now() + timeout;
        let mut requests = self.requests.lock().unwrap();
        while requests.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "waited {timeout:?} for {n} requests, got {}",
                requests.len()
            );
            requests = self.arrived.wait_timeout(requests, left).unwrap().0;
        }
        requests.clone()
    }
}

/// A server thread; stopped (and joined) on drop.
struct Server {
    port: u16,
    log: Arc<Log>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    close: tokio::sync::watch::Sender<u64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Server {
    /// Serves `handler` on 127.0.0.1, over TLS when `tls` is given (HTTP/2 or HTTP/1.1 as
    /// ALPN says), else plain HTTP/1.1. Each answer waits `delay` first.
    fn start(tls: Option<Arc<ServerConfig>>, handler: Arc<Handler>, delay: Duration) -> Self {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let port = std_listener.local_addr().unwrap().port();
        let log = Arc::new(Log::default());
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let (close, closing) = tokio::sync::watch::channel(0u64);
        let thread_log = log.clone();
        let thread = std::thread::Builder::new()
            .name(format!("fake-push-{port}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(accept_loop(
                    std_listener,
                    tls,
                    handler,
                    delay,
                    thread_log,
                    stopped,
                    closing,
                ));
            })
            .unwrap();
        Self {
            port,
            log,
            stop: Some(stop),
            close,
            thread: Some(thread),
        }
    }
}

async fn accept_loop(
    std_listener: std::net::TcpListener,
    tls: Option<Arc<ServerConfig>>,
    handler: Arc<Handler>,
    delay: Duration,
    log: Arc<Log>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
    closing: tokio::sync::watch::Receiver<u64>,
) {
    let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
    loop {
        let (tcp, _) = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let _ = tcp.set_nodelay(true);
        let id = log.connections.fetch_add(1, Ordering::Relaxed) + 1;
        let (tls, handler, log) = (tls.clone(), handler.clone(), log.clone());
        let mut closing = closing.clone();
        // Only closings ordered from now on concern this connection.
        closing.borrow_and_update();
        tokio::spawn(async move {
            match tls {
                None => {
                    let info = ConnInfo {
                        id,
                        client_certificate: false,
                    };
                    serve_conn(tcp, false, info, handler, delay, log, closing).await;
                }
                Some(tls) => {
                    let Ok(stream) = tokio_rustls::TlsAcceptor::from(tls).accept(tcp).await else {
                        return;
                    };
                    let (_, session) = stream.get_ref();
                    let h2 = session.alpn_protocol() == Some(b"h2");
                    let info = ConnInfo {
                        id,
                        client_certificate: session
                            .peer_certificates()
                            .is_some_and(|c| !c.is_empty()),
                    };
                    serve_conn(stream, h2, info, handler, delay, log, closing).await;
                }
            }
        });
    }
}

async fn serve_conn<T>(
    io: T,
    h2: bool,
    info: ConnInfo,
    handler: Arc<Handler>,
    delay: Duration,
    log: Arc<Log>,
    mut closing: tokio::sync::watch::Receiver<u64>,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: hyper::Request<Incoming>| {
        let handler = handler.clone();
        let log = log.clone();
        async move {
            let at = Instant::now();
            let (parts, body) = req.into_parts();
            let body = Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map(|c| c.to_bytes().to_vec())
                .unwrap_or_default();
            let mut rec = Recorded {
                method: parts.method.to_string(),
                path: parts
                    .uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_owned(),
                headers: parts
                    .headers
                    .iter()
                    .map(|(n, v)| {
                        (
                            n.as_str().to_owned(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect(),
                body,
                at,
                connection: info.id,
                status: 0,
            };
            let (status, headers, body) = handler(&rec, info);
            rec.status = status;
            log.push(rec);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let mut resp = hyper::Response::builder().status(status);
            for (n, v) in headers {
                resp = resp.header(n, v);
            }
            Ok::<_, Infallible>(resp.body(Full::new(Bytes::from(body))).unwrap())
        }
    });
    let io = TokioIo::new(io);
    if h2 {
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, service);
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => {}
            _ = closing.changed() => {
                // GOAWAY, then let the streams in progress finish.
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    } else {
        let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => {}
            _ = closing.changed() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    }
}

/// A test CA with a server certificate for `localhost` and 127.0.0.1, and a client
/// certificate (for APNs certificate authentication), all written as PEM files.
struct TestPki {
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivateKeyDer<'static>,
    ca_der: CertificateDer<'static>,
}

impl TestPki {
    fn new(dir: &Path) -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "stg test push CA");
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();

        let server_key = KeyPair::generate().unwrap();
        let mut server_params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        server_params.is_ca = IsCa::NoCa;
        let server = server_params.signed_by(&server_key, &ca).unwrap();

        let client_key = KeyPair::generate().unwrap();
        let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        client_params.distinguished_name.push(
            rcgen::DnType::CommonName,
            "Apple Push Services: org.stg.test",
        );
        client_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let client = client_params.signed_by(&client_key, &ca).unwrap();

        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("client.pem"), client.pem()).unwrap();
        std::fs::write(dir.join("client.key"), client_key.serialize_pem()).unwrap();
        Self {
            server_chain: vec![server.der().clone()],
            server_key: PrivatePkcs8KeyDer::from(server_key.serialize_der()).into(),
            ca_der: ca.der().clone(),
        }
    }

    fn server_config(&self, alpn: &[&[u8]], client_auth: bool) -> Arc<ServerConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if client_auth {
            let mut roots = RootCertStore::empty();
            roots.add(self.ca_der.clone()).unwrap();
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                // Checked per request instead, to answer as APNs does (403).
                .allow_unauthenticated()
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder
            .with_single_cert(self.server_chain.clone(), self.server_key.clone_key())
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Splits a compact JWS and checks its signature with `verify`; returns header and claims.
fn check_jws(jwt: &str, verify: impl Fn(&[u8], &[u8]) -> bool) -> Option<(Value, Value)> {
    let mut parts = jwt.split('.');
    let (h, c, s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let sig = URL_SAFE_NO_PAD.decode(s).ok()?;
    if !verify(format!("{h}.{c}").as_bytes(), &sig) {
        return None;
    }
    let header = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).ok()?).ok()?;
    let claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(c).ok()?).ok()?;
    Some((header, claims))
}

// === APNs ===

/// How the fake APNs authenticates providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApnsAuthMode {
    /// ES256 provider tokens signed with the fake's `.p8` key.
    Token,
    /// A client certificate signed by the fake's CA.
    Certificate,
}

#[derive(Debug, Clone)]
pub struct ApnsOptions {
    pub auth: ApnsAuthMode,
    pub team_id: String,
    pub key_id: String,
    /// The app's bundle id: `apns-topic` must be it, or it plus `.voip` for VoIP pushes.
    pub bundle: String,
    /// Every answer waits this long (to hold pushes in flight).
    pub delay: Duration,
}

impl Default for ApnsOptions {
    fn default() -> Self {
        Self {
            auth: ApnsAuthMode::Token,
            team_id: "TEAM123456".into(),
            key_id: "KEY1234567".into(),
            bundle: "org.stg.test".into(),
            delay: Duration::ZERO,
        }
    }
}

/// A scripted APNs answer for one device token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApnsReply {
    Ok,
    /// 410 `Unregistered`.
    Unregistered,
    /// 400 `BadDeviceToken`.
    BadDeviceToken,
    /// 403 `ExpiredProviderToken`.
    ExpiredProviderToken,
    /// 429 `TooManyRequests`.
    TooManyRequests,
    /// 503 `ServiceUnavailable`.
    ServiceUnavailable,
}

struct ApnsState {
    opts: ApnsOptions,
    public_key: Vec<u8>,
    script: Mutex<HashMap<String, VecDeque<ApnsReply>>>,
    ids: AtomicU64,
}

/// A local APNs.
pub struct FakeApns {
    server: Server,
    state: Arc<ApnsState>,
    dir: PathBuf,
}

impl FakeApns {
    pub fn start(opts: ApnsOptions) -> Self {
        let dir = temp_dir("fake-apns");
        let pki = TestPki::new(&dir);
        let key = KeyPair::generate().unwrap();
        std::fs::write(dir.join("AuthKey.p8"), key.serialize_pem()).unwrap();
        let client_auth = opts.auth == ApnsAuthMode::Certificate;
        let state = Arc::new(ApnsState {
            public_key: key.public_key_raw().to_vec(),
            opts,
            script: Mutex::new(HashMap::new()),
            ids: AtomicU64::new(0),
        });
        let handler_state = state.clone();
        let delay = state.opts.delay;
        let server = Server::start(
            Some(pki.server_config(&[b"h2"], client_auth)),
            Arc::new(move |req: &Recorded, conn: ConnInfo| handler_state.answer(req, conn)),
            delay,
        );
        Self { server, state, dir }
    }

    /// `https://127.0.0.1:<port>`, for `push.apns.url` and `sandbox_url`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.server.port)
    }

    /// The CA that signed the server and client certificates (`push.apns.ca_file`).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The token-auth key (`push.apns.key_file`).
    pub fn key_file(&self) -> PathBuf {
        self.dir.join("AuthKey.p8")
    }

    /// The client certificate and its key (`push.apns.certificate`, `private_key`).
    pub fn client_certificate(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("client.pem"), self.dir.join("client.key"))
    }

    pub fn team_id(&self) -> &str {
        &self.state.opts.team_id
    }

    pub fn key_id(&self) -> &str {
        &self.state.opts.key_id
    }

    /// The next answers to pushes for `token`, in order; then 200 again.
    pub fn script(&self, token: &str, replies: impl IntoIterator<Item = ApnsReply>) {
        self.state
            .script
            .lock()
            .unwrap()
            .entry(token.to_ascii_lowercase())
            .or_default()
            .extend(replies);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.server.log.requests.lock().unwrap().clone()
    }

    /// Blocks until `n` requests arrived (panics after `timeout`); returns them all.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        self.server.log.wait_for(n, timeout)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.server.log.connections.load(Ordering::Relaxed)
    }

    /// Sends GOAWAY on every open connection (as APNs does when it rotates servers).
    pub fn close_connections(&self) {
        self.server.close.send_modify(|g| *g += 1);
    }
}

impl ApnsState {
    fn answer(&self, req: &Recorded, conn: ConnInfo) -> Reply {
        let reason = |status: u16, reason: &str| {
            let mut body = json!({ "reason": reason });
            if status == 410 {
                body["timestamp"] = json!(unix_now() * 1000);
            }
            reply_json(status, &body)
        };
        if req.method != "POST" {
            return reason(405, "MethodNotAllowed");
        }
        let Some(token) = req.path.strip_prefix("/3/device/") else {
            return reason(404, "BadPath");
        };
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return reason(400, "BadDeviceToken");
        }
        match self.opts.auth {
            ApnsAuthMode::Certificate => {
                if !conn.client_certificate {
                    return reason(403, "MissingProviderToken");
                }
            }
            ApnsAuthMode::Token => {
                let Some(jwt) = req
                    .header("authorization")
                    .and_then(|a| a.strip_prefix("bearer "))
                else {
                    return reason(403, "MissingProviderToken");
                };
                if let Err(why) = self.check_jwt(jwt) {
                    return reason(403, why);
                }
            }
        }
        let push_type = req.header("apns-push-type").unwrap_or_default();
        if !["alert", "background", "voip"].contains(&push_type) {
            return reason(400, "InvalidPushType");
        }
        let Some(topic) = req.header("apns-topic") else {
            return reason(400, "MissingTopic");
        };
        let want = if push_type == "voip" {
            format!("{}.voip", self.opts.bundle)
        } else {
            self.opts.bundle.clone()
        };
        if topic != want {
            return reason(400, "DeviceTokenNotForTopic");
        }
        if req.body.is_empty() {
            return reason(400, "PayloadEmpty");
        }
        if !req.json().is_object() || req.json().get("aps").is_none() {
            return reason(400, "BadPayload");
        }
        let scripted = self
            .script
            .lock()
            .unwrap()
            .get_mut(&token.to_ascii_lowercase())
            .and_then(VecDeque::pop_front);
        match scripted.unwrap_or(ApnsReply::Ok) {
            ApnsReply::Ok => {
                // APNs echoes the provider's apns-id, or makes one.
                let n = self.ids.fetch_add(1, Ordering::Relaxed);
                let id = req.header("apns-id").map_or_else(
                    || format!("00000000-0000-4000-8000-{n:012x}"),
                    str::to_owned,
                );
                (200, vec![("apns-id".into(), id)], Vec::new())
            }
            ApnsReply::Unregistered => reason(410, "Unregistered"),
            ApnsReply::BadDeviceToken => reason(400, "BadDeviceToken"),
            ApnsReply::ExpiredProviderToken => reason(403, "ExpiredProviderToken"),
            ApnsReply::TooManyRequests => reason(429, "TooManyRequests"),
            ApnsReply::ServiceUnavailable => reason(503, "ServiceUnavailable"),
        }
    }

    fn check_jwt(&self, jwt: &str) -> Result<(), &'static str> {
        let key = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.public_key);
        let (header, claims) = check_jws(jwt, |msg, sig| key.verify(msg, sig).is_ok())
            .ok_or("InvalidProviderToken")?;
        if header["alg"] != "ES256" || header["kid"] != self.opts.key_id.as_str() {
            return Err("InvalidProviderToken");
        }
        if claims["iss"] != self.opts.team_id.as_str() {
            return Err("InvalidProviderToken");
        }
        let iat = claims["iat"].as_u64().ok_or("InvalidProviderToken")?;
        // Tests may run the pusher's clock ahead; an hour either way is accepted.
        if iat + 3600 < unix_now() || iat > unix_now() + 3600 {
            return Err("ExpiredProviderToken");
        }
        Ok(())
    }
}

// === FCM ===

#[derive(Debug, Clone)]
pub struct FcmOptions {
    pub project_id: String,
    /// `expires_in` of the access tokens issued.
    pub expires_in: u64,
    pub delay: Duration,
}

impl Default for FcmOptions {
    fn default() -> Self {
        Self {
            project_id: "stg-test".into(),
            expires_in: 3600,
            delay: Duration::ZERO,
        }
    }
}

/// A scripted FCM answer for one registration token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FcmReply {
    Ok,
    /// 404 NOT_FOUND, FcmError `UNREGISTERED`.
    Unregistered,
    /// 400 INVALID_ARGUMENT about the registration token.
    InvalidArgument,
    /// 401 UNAUTHENTICATED; the bearer token used is revoked.
    Unauthorized,
    /// 429 RESOURCE_EXHAUSTED with `Retry-After: <secs>`.
    TooManyRequests {
        retry_after: u64,
    },
    /// 503 UNAVAILABLE.
    Unavailable,
}

struct FcmState {
    opts: FcmOptions,
    client_email: String,
    token_uri: String,
    public_key: Vec<u8>,
    valid: Mutex<HashSet<String>>,
    issued: AtomicU64,
    script: Mutex<HashMap<String, VecDeque<FcmReply>>>,
    ids: AtomicU64,
}

/// A local FCM HTTP v1 with its OAuth2 token endpoint (`/token`).
pub struct FakeFcm {
    server: Server,
    state: Arc<FcmState>,
    dir: PathBuf,
}

impl FakeFcm {
    pub fn start(opts: FcmOptions) -> Self {
        let dir = temp_dir("fake-fcm");
        let pki = TestPki::new(&dir);
        let key =
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).unwrap();
        // The port is known only once bound, and the account names it: bind first, with a
        // handler that reads the state set just after.
        let slot: Arc<Mutex<Option<Arc<FcmState>>>> = Arc::new(Mutex::new(None));
        let handler_slot = slot.clone();
        let server = Server::start(
            Some(pki.server_config(&[b"h2", b"http/1.1"], false)),
            Arc::new(move |req: &Recorded, _conn: ConnInfo| {
                let state = handler_slot.lock().unwrap().clone();
                match state {
                    Some(s) => s.answer(req),
                    None => (503, Vec::new(), Vec::new()),
                }
            }),
            opts.delay,
        );
        let token_uri = format!("https://127.0.0.1:{}/token", server.port);
        let client_email = format!("stg-push@{}.iam.gserviceaccount.com", opts.project_id);
        let account = json!({
            "type": "service_account",
            "project_id": opts.project_id,
            "private_key_id": "0123456789abcdef",
            "private_key": key.serialize_pem(),
            "client_email": client_email,
            "client_id": "1",
            "token_uri": token_uri,
        });
        std::fs::write(dir.join("service-account.json"), account.to_string()).unwrap();
        let state = Arc::new(FcmState {
            opts,
            client_email,
            token_uri,
            public_key: key.public_key_raw().to_vec(),
            valid: Mutex::new(HashSet::new()),
            issued: AtomicU64::new(0),
            script: Mutex::new(HashMap::new()),
            ids: AtomicU64::new(0),
        });
        *slot.lock().unwrap() = Some(state.clone());
        Self { server, state, dir }
    }

    /// `https://127.0.0.1:<port>`, for `push.fcm.url`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.server.port)
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The service account JSON (`push.fcm.service_account`), its `token_uri` this server.
    pub fn service_account_file(&self) -> PathBuf {
        self.dir.join("service-account.json")
    }

    pub fn project_id(&self) -> &str {
        &self.state.opts.project_id
    }

    /// Access tokens issued so far.
    pub fn tokens_issued(&self) -> u64 {
        self.state.issued.load(Ordering::Relaxed)
    }

    pub fn script(&self, token: &str, replies: impl IntoIterator<Item = FcmReply>) {
        self.state
            .script
            .lock()
            .unwrap()
            .entry(token.to_owned())
            .or_default()
            .extend(replies);
    }

    /// Every request, token fetches (`/token`) included.
    pub fn requests(&self) -> Vec<Recorded> {
        self.server.log.requests.lock().unwrap().clone()
    }

    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        self.server.log.wait_for(n, timeout)
    }

    pub fn connections(&self) -> u64 {
        self.server.log.connections.load(Ordering::Relaxed)
    }
}

fn google_error(status: u16, api_status: &str, message: &str, fcm_code: Option<&str>) -> Reply {
    let mut error = json!({ "code": status, "message": message, "status": api_status });
    if let Some(code) = fcm_code {
        error["details"] = json!([{
            "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
            "errorCode": code,
        }]);
    }
    reply_json(status, &json!({ "error": error }))
}

impl FcmState {
    fn answer(&self, req: &Recorded) -> Reply {
        if req.method != "POST" {
            return google_error(405, "INVALID_ARGUMENT", "method", None);
        }
        if req.path == "/token" {
            return self.token(req);
        }
        let Some(project) = req
            .path
            .strip_prefix("/v1/projects/")
            .and_then(|p| p.strip_suffix("/messages:send"))
        else {
            return google_error(404, "NOT_FOUND", "no such method", None);
        };
        let bearer = req
            .header("authorization")
            .and_then(|a| a.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !self.valid.lock().unwrap().contains(bearer) {
            return google_error(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials.",
                None,
            );
        }
        if project != self.opts.project_id {
            return google_error(
                403,
                "PERMISSION_DENIED",
                "SenderId mismatch",
                Some("SENDER_ID_MISMATCH"),
            );
        }
        let body = req.json();
        let message = &body["message"];
        let Some(token) = message["token"].as_str() else {
            return google_error(
                400,
                "INVALID_ARGUMENT",
                "message.token missing",
                Some("INVALID_ARGUMENT"),
            );
        };
        let data_ok = message["data"]
            .as_object()
            .is_some_and(|d| d.values().all(Value::is_string));
        if message["android"]["priority"] != "high" || !data_ok {
            return google_error(
                400,
                "INVALID_ARGUMENT",
                "Invalid JSON payload received.",
                Some("INVALID_ARGUMENT"),
            );
        }
        let scripted = self
            .script
            .lock()
            .unwrap()
            .get_mut(token)
            .and_then(VecDeque::pop_front);
        match scripted.unwrap_or(FcmReply::Ok) {
            FcmReply::Ok => {
                let n = self.ids.fetch_add(1, Ordering::Relaxed);
                reply_json(
                    200,
                    &json!({ "name": format!("projects/{project}/messages/{n}") }),
                )
            }
            FcmReply::Unregistered => google_error(
                404,
                "NOT_FOUND",
                "Requested entity was not found.",
                Some("UNREGISTERED"),
            ),
            FcmReply::InvalidArgument => google_error(
                400,
                "INVALID_ARGUMENT",
                "The registration token is not a valid FCM registration token",
                Some("INVALID_ARGUMENT"),
            ),
            FcmReply::Unauthorized => {
                self.valid.lock().unwrap().remove(bearer);
                google_error(
                    401,
                    "UNAUTHENTICATED",
                    "Request had invalid authentication credentials.",
                    None,
                )
            }
            FcmReply::TooManyRequests { retry_after } => {
                let (s, mut h, b) = google_error(
                    429,
                    "RESOURCE_EXHAUSTED",
                    "Quota exceeded.",
                    Some("QUOTA_EXCEEDED"),
                );
                h.push(("retry-after".into(), retry_after.to_string()));
                (s, h, b)
            }
            FcmReply::Unavailable => google_error(
                503,
                "UNAVAILABLE",
                "The service is unavailable.",
                Some("UNAVAILABLE"),
            ),
        }
    }

    /// The OAuth2 token endpoint: RFC 7523 JWT-bearer grant.
    fn token(&self, req: &Recorded) -> Reply {
        let oauth_error = |why: &str| {
            reply_json(
                400,
                &json!({ "error": "invalid_grant", "error_description": why }),
            )
        };
        let form = String::from_utf8_lossy(&req.body).into_owned();
        let field = |name: &str| {
            form.split('&')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .map(str::to_owned)
        };
        if field("grant_type").as_deref()
            != Some("urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer")
        {
            return reply_json(400, &json!({ "error": "unsupported_grant_type" }));
        }
        let Some(assertion) = field("assertion") else {
            return oauth_error("no assertion");
        };
        let key = UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &self.public_key);
        let Some((header, claims)) = check_jws(&assertion, |msg, sig| key.verify(msg, sig).is_ok())
        else {
            return oauth_error("Invalid JWT Signature.");
        };
        let now = unix_now();
        let iat = claims["iat"].as_u64().unwrap_or(0);
        let exp = claims["exp"].as_u64().unwrap_or(0);
        if header["alg"] != "RS256"
            || claims["iss"] != self.client_email.as_str()
            || claims["aud"] != self.token_uri.as_str()
            || claims["scope"] != "https://www.googleapis.com/auth/firebase.messaging"
            || exp <= iat
            || exp - iat > 3600
            || exp + 3600 < now
        {
            return oauth_error("Invalid JWT: claims");
        }
        let n = self.issued.fetch_add(1, Ordering::Relaxed) + 1;
        let token = format!("ya29.fake-{n}");
        self.valid.lock().unwrap().insert(token.clone());
        reply_json(
            200,
            &json!({
                "access_token": token,
                "expires_in": self.opts.expires_in,
                "token_type": "Bearer",
            }),
        )
    }
}

// === webhook ===

/// A plain HTTP/1.1 endpoint answering every POST with a fixed status.
pub struct FakeWebhook {
    server: Server,
}

impl FakeWebhook {
    pub fn start(status: u16) -> Self {
        let server = Server::start(
            None,
            Arc::new(move |_req: &Recorded, _conn: ConnInfo| (status, Vec::new(), Vec::new())),
            Duration::ZERO,
        );
        Self { server }
    }

    /// `http://127.0.0.1:<port>/push`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/push", self.server.port)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.server.log.requests.lock().unwrap().clone()
    }

    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        self.server.log.wait_for(n, timeout)
    }
}
