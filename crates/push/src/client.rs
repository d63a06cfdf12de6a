//! One attempt at one push, per provider: build the request, send it, classify the answer.
//! Retries, caps and metrics are the [`Pusher`](crate::Pusher)'s; credentials (JWTs, access
//! tokens) are kept here, since only the client knows when they were refused.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::Full;
use stg_config::{ApnsAuth, ApnsConfig, FcmConfig, WebhookConfig};

use crate::http::{one_shot, tls_config, Answer, Endpoint, H2Conn};
use crate::jwt::{AccessToken, ApnsKey, ServiceAccount};
use crate::request::{apns_body, fcm_body, ApnsTarget, FcmTarget, PushKind, PushRequest};
use crate::verdict::{classify_apns, classify_fcm, Verdict};
use crate::{PushError, Tuning};

/// A request that got no answer: worth retrying when the network failed, not when our TLS
/// configuration or the provider's certificate is wrong.
fn transport_failure(e: &PushError) -> Verdict {
    match e {
        PushError::Config(_) | PushError::Tls(_) => fail(e),
        _ => Verdict::Retry {
            status: None,
            reason: e.to_string(),
            after: None,
        },
    }
}

fn header_str<'a>(a: &'a Answer, name: &str) -> Option<&'a str> {
    a.headers.get(name).and_then(|v| v.to_str().ok())
}

fn read_file(path: &std::path::Path) -> Result<Vec<u8>, PushError> {
    std::fs::read(path).map_err(|e| PushError::Config(format!("{}: {e}", path.display())))
}

// === impl Apns ===

/// The provider token in use and when it was issued (unix seconds).
type Jwt = Option<(String, u64)>;

pub(crate) struct Apns {
    production: H2Conn,
    sandbox: H2Conn,
    key: Option<ApnsKey>,
    jwt: Mutex<Jwt>,
    pub(crate) refreshes: AtomicU64,
}

impl Apns {
    pub(crate) fn new(config: &ApnsConfig, tuning: &Tuning) -> Result<Option<Self>, PushError> {
        let Some(auth) = &config.auth else {
            return Ok(None);
        };
        let (key, client) = match auth {
            ApnsAuth::Token {
                team_id,
                key_id,
                key_file,
            } => {
                let pem = read_file(key_file)?;
                let key = ApnsKey::from_pem(&pem, key_id, team_id)
                    .map_err(|e| PushError::Config(format!("{}: {e}", key_file.display())))?;
                (Some(key), None)
            }
            ApnsAuth::Certificate {
                certificate,
                private_key,
            } => (None, Some((certificate.as_path(), private_key.as_path()))),
        };
        let tls = tls_config(config.ca_file.as_deref(), client, &[b"h2"])?;
        let conn = |url: &str| -> Result<H2Conn, PushError> {
            Ok(H2Conn::new(
                Endpoint::parse(url)?,
                tls.clone(),
                tuning.connect_timeout,
            ))
        };
        Ok(Some(Self {
            production: conn(&config.url)?,
            sandbox: conn(&config.sandbox_url)?,
            key,
            jwt: Mutex::new(None),
            refreshes: AtomicU64::new(0),
        }))
    }

    pub(crate) fn connections_opened(&self) -> u64 {
        self.production.opened() + self.sandbox.opened()
    }

    /// The provider token for a push at `now`: the current one, or a new one when it is due,
    /// or when `renew` (Apple called it expired) and the policy allows.
    fn jwt(
        &self,
        key: &ApnsKey,
        now: u64,
        renew: bool,
        tuning: &Tuning,
    ) -> Result<String, PushError> {
        // Poisoning needs a panic while signing; the token is then simply re-made.
        let mut jwt = self.jwt.lock().unwrap_or_else(|p| p.into_inner());
        let issued = jwt.as_ref().map(|(_, iat)| *iat);
        let policy = tuning.token_policy;
        if policy.token_due(now, issued) || (renew && policy.may_renew(now, issued)) {
            let token = key
                .token(now)
                .map_err(|e| PushError::Config(format!("APNs key: {e}")))?;
            *jwt = Some((token, now));
            self.refreshes.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("stg_push_token_refresh_total", "provider" => "apns").increment(1);
        }
        // Set just above, or kept from before.
        Ok(jwt.as_ref().map(|(t, _)| t.clone()).unwrap_or_default())
    }

    pub(crate) async fn attempt(
        &self,
        req: &PushRequest,
        target: &ApnsTarget,
        sandbox: bool,
        renew: bool,
        tuning: &Tuning,
    ) -> Verdict {
        let conn = if sandbox {
            &self.sandbox
        } else {
            &self.production
        };
        let now = tuning.clock.unix_ms() / 1000;
        let ttl = match req.kind {
            PushKind::Message => tuning.message_ttl,
            PushKind::Call | PushKind::Test => tuning.ttl,
        };
        let uri = match conn.endpoint().uri(&format!("/3/device/{}", target.token)) {
            Ok(uri) => uri,
            Err(e) => return fail(&e),
        };
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header("apns-push-type", target.push_type.as_str())
            .header("apns-topic", target.topic.as_str())
            .header("apns-priority", target.push_type.priority().to_string())
            .header("apns-expiration", (now + ttl.as_secs()).to_string())
            .header(header::CONTENT_TYPE, "application/json");
        if is_uuid(&req.uuid) {
            // APNs echoes it in its answer, so logs on both sides name the same push.
            builder = builder.header("apns-id", req.uuid.as_str());
        }
        if let Some(id) = req
            .collapse_id
            .as_deref()
            .filter(|id| id.len() <= crate::request::MAX_COLLAPSE_ID)
        {
            builder = builder.header("apns-collapse-id", id);
        }
        if let Some(key) = &self.key {
            match self.jwt(key, now, renew, tuning) {
                Ok(jwt) => builder = builder.header(header::AUTHORIZATION, format!("bearer {jwt}")),
                Err(e) => return fail(&e),
            }
        }
        let body = Full::new(Bytes::from(apns_body(req, target.push_type)));
        let request = match builder.body(body) {
            Ok(r) => r,
            // A header value with a control character: the topic or collapse id.
            Err(e) => return fail(&PushError::Config(e.to_string())),
        };
        match conn.send(request, tuning.request_timeout).await {
            Ok(a) => classify_apns(a.status.as_u16(), header_str(&a, "apns-id"), &a.body),
            Err(e) => transport_failure(&e),
        }
    }
}

/// The canonical lower-case 8-4-4-4-12 form APNs accepts as `apns-id`.
fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        })
}

fn fail(e: &PushError) -> Verdict {
    Verdict::Fail {
        status: None,
        reason: e.to_string(),
    }
}

// === impl Fcm ===

pub(crate) struct Fcm {
    send: H2Conn,
    account: ServiceAccount,
    token_endpoint: Endpoint,
    tls: Arc<rustls::ClientConfig>,
    token: tokio::sync::Mutex<Option<AccessToken>>,
    pub(crate) refreshes: AtomicU64,
}

impl Fcm {
    pub(crate) fn new(config: &FcmConfig, tuning: &Tuning) -> Result<Option<Self>, PushError> {
        let Some(path) = &config.service_account else {
            return Ok(None);
        };
        let account = ServiceAccount::from_json(&read_file(path)?)
            .map_err(|e| PushError::Config(format!("{}: {e}", path.display())))?;
        let token_endpoint = Endpoint::parse(&account.token_uri)?;
        let h2 = tls_config(config.ca_file.as_deref(), None, &[b"h2"])?;
        let either = tls_config(config.ca_file.as_deref(), None, &[b"h2", b"http/1.1"])?;
        Ok(Some(Self {
            send: H2Conn::new(Endpoint::parse(&config.url)?, h2, tuning.connect_timeout),
            account,
            token_endpoint,
            tls: either,
            token: tokio::sync::Mutex::new(None),
            refreshes: AtomicU64::new(0),
        }))
    }

    pub(crate) fn connections_opened(&self) -> u64 {
        self.send.opened()
    }

    /// A usable access token: the cached one unless it is due or is `refused` (the one a 401
    /// just came back for), else a fresh one from the token endpoint.
    async fn access_token(
        &self,
        refused: Option<&str>,
        tuning: &Tuning,
    ) -> Result<String, Verdict> {
        // Held across the fetch: concurrent pushes wait for one token.
        let mut cached = self.token.lock().await;
        let now = tuning.clock.unix_ms() / 1000;
        if let Some(t) = cached.as_ref() {
            if !t.is_due(now) && Some(t.token.as_str()) != refused {
                return Ok(t.token.clone());
            }
        }
        let form = self
            .account
            .token_request_body(now)
            .map_err(|e| fail(&PushError::Config(format!("service account key: {e}"))))?;
        let uri = self
            .token_endpoint
            .uri(&self.token_endpoint.path)
            .map_err(|e| fail(&e))?;
        let request = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| fail(&PushError::Config(e.to_string())))?;
        let answer = one_shot(
            &self.token_endpoint,
            Some(&self.tls),
            request,
            tuning.connect_timeout,
            tuning.request_timeout,
        )
        .await
        .map_err(|e| transport_failure(&e))?;
        let status = answer.status.as_u16();
        if !answer.status.is_success() {
            let reason = format!(
                "token endpoint: {}",
                String::from_utf8_lossy(&answer.body[..answer.body.len().min(200)])
            );
            return Err(if status == 429 || status >= 500 {
                Verdict::Retry {
                    status: Some(status),
                    reason,
                    after: None,
                }
            } else {
                Verdict::Fail {
                    status: Some(status),
                    reason,
                }
            });
        }
        let token = AccessToken::from_response(&answer.body, now).ok_or_else(|| Verdict::Fail {
            status: Some(status),
            reason: "token endpoint: no access_token in its answer".into(),
        })?;
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("stg_push_token_refresh_total", "provider" => "fcm").increment(1);
        let value = token.token.clone();
        *cached = Some(token);
        Ok(value)
    }

    /// One attempt; also returns the access token it used, so a 401 can refuse exactly it.
    pub(crate) async fn attempt(
        &self,
        req: &PushRequest,
        target: &FcmTarget,
        refused: Option<&str>,
        tuning: &Tuning,
    ) -> (Verdict, Option<String>) {
        let token = match self.access_token(refused, tuning).await {
            Ok(t) => t,
            Err(v) => return (v, None),
        };
        let project = target
            .project
            .as_deref()
            .unwrap_or(&self.account.project_id);
        let ttl = match req.kind {
            PushKind::Message => tuning.message_ttl,
            PushKind::Call | PushKind::Test => tuning.ttl,
        };
        let uri = match self
            .send
            .endpoint()
            .uri(&format!("/v1/projects/{project}/messages:send"))
        {
            Ok(u) => u,
            Err(e) => return (fail(&e), Some(token)),
        };
        let request = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(fcm_body(
                req,
                &target.token,
                ttl.as_secs(),
            ))));
        let request = match request {
            Ok(r) => r,
            Err(e) => return (fail(&PushError::Config(e.to_string())), Some(token)),
        };
        let verdict = match self.send.send(request, tuning.request_timeout).await {
            Ok(a) => classify_fcm(a.status.as_u16(), header_str(&a, "retry-after"), &a.body),
            Err(e) => transport_failure(&e),
        };
        (verdict, Some(token))
    }
}

// === impl Webhook ===

pub(crate) struct Webhook {
    endpoint: Endpoint,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Webhook {
    pub(crate) fn new(config: &WebhookConfig) -> Result<Option<Self>, PushError> {
        let Some(url) = &config.url else {
            return Ok(None);
        };
        let endpoint = Endpoint::parse(url)?;
        let tls = if endpoint.https {
            Some(tls_config(
                config.ca_file.as_deref(),
                None,
                &[b"h2", b"http/1.1"],
            )?)
        } else {
            None
        };
        Ok(Some(Self { endpoint, tls }))
    }

    /// POSTs the payload; any 2xx is success. A request that never got an answer may be
    /// retried; an answer other than 2xx is final (the operator's endpoint said no).
    pub(crate) async fn attempt(&self, req: &PushRequest, tuning: &Tuning) -> Verdict {
        let uri = match self.endpoint.uri(&self.endpoint.path) {
            Ok(u) => u,
            Err(e) => return fail(&e),
        };
        let request = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(req.webhook_body())));
        let request = match request {
            Ok(r) => r,
            Err(e) => return fail(&PushError::Config(e.to_string())),
        };
        match one_shot(
            &self.endpoint,
            self.tls.as_ref(),
            request,
            tuning.connect_timeout,
            tuning.request_timeout,
        )
        .await
        {
            Ok(a) if a.status.is_success() => Verdict::Sent { id: String::new() },
            Ok(a) => Verdict::Fail {
                status: Some(a.status.as_u16()),
                reason: String::from_utf8_lossy(&a.body[..a.body.len().min(200)]).into_owned(),
            },
            Err(e) => transport_failure(&e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apns_id_must_be_a_canonical_uuid() {
        assert!(is_uuid(&crate::random_uuid()));
        assert!(!is_uuid("ABCDEF00-0000-4000-8000-000000000000"));
        assert!(!is_uuid("x"));
        assert!(!is_uuid("0000000000000-4000-8000-0000000000000"));
    }
}
