//! The front the proxy's shell calls: [`Pusher::send`] picks the client for the device's
//! provider, holds a per-provider in-flight cap, retries with backoff, renews credentials
//! once when they are refused, and counts everything.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use stg_config::{PushConfig, PushMode};
use tokio::sync::Semaphore;

use crate::client::{Apns, Fcm, Webhook};
use crate::jwt::TokenPolicy;
use crate::request::{apns_target, fcm_target, Abbrev, Provider, PushRequest};
use crate::verdict::{retry_delay, Verdict};
use crate::PushError;

/// Where wall-clock time comes from (unix milliseconds): the system clock, or a test's.
/// Token issue times and expirations read it; durations (latency, timeouts) use tokio's
/// clock.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> u64 + Send + Sync>);

impl Clock {
    pub fn system() -> Self {
        Self(Arc::new(crate::unix_ms))
    }

    /// A clock that reads `f`.
    pub fn from_fn(f: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    pub fn unix_ms(&self) -> u64 {
        (self.0)()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Clock")
    }
}

/// Settings the configuration file does not expose: timeouts, the retry schedule, the token
/// rules and the clock. [`Tuning::from_config`] gives the defaults.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// TCP connect plus TLS handshake. Default 5 s.
    pub connect_timeout: Duration,
    /// One attempt, connecting included. Default 10 s.
    pub request_timeout: Duration,
    /// Retries after the first attempt, for busy or failing providers. Default 3.
    pub max_retries: u32,
    /// First backoff wait, doubled at each retry. Default 200 ms.
    pub backoff_base: Duration,
    /// Longest backoff wait, and longest `Retry-After` honoured (a longer one fails the
    /// push: the call it is for will be over). Default 5 s.
    pub backoff_cap: Duration,
    pub token_policy: TokenPolicy,
    /// Expiry of call and test pushes (`push.ttl`).
    pub ttl: Duration,
    /// Expiry of message pushes (`push.message_delivery_timeout`).
    pub message_ttl: Duration,
    pub clock: Clock,
}

impl Tuning {
    pub fn from_config(config: &PushConfig) -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            max_retries: 3,
            backoff_base: Duration::from_millis(200),
            backoff_cap: Duration::from_secs(5),
            token_policy: TokenPolicy::default(),
            ttl: config.ttl,
            message_ttl: config.message_delivery_timeout,
            clock: Clock::system(),
        }
    }
}

/// How a push ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Accepted by the provider (`id`: `apns-id`, the FCM message name; empty for the webhook
    /// and `log` in log mode).
    Sent { id: String },
    /// The provider says the token is dead: remove the binding.
    RemoveBinding { reason: String },
    /// Not delivered. `status` is the provider's HTTP status, if it answered.
    Failed { status: Option<u16>, reason: String },
    /// Not attempted: `max_in_flight` pushes to this provider were already in flight.
    Refused,
}

impl Outcome {
    /// The `result` label of `stg_push_sent_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Sent { .. } => "sent",
            Self::RemoveBinding { .. } => "remove_binding",
            Self::Failed { .. } => "failed",
            Self::Refused => "refused",
        }
    }
}

/// What [`Pusher::send`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushResult {
    /// Which route took it: `apns`, `apns.dev`, `fcm`, `webhook` or `log`.
    pub provider: &'static str,
    pub outcome: Outcome,
    /// From the call to the outcome, retries included.
    pub latency: Duration,
    /// Requests made (0 when refused or logged).
    pub attempts: u32,
}

/// Counters of one [`Pusher`], for tests and diagnostics (the metrics carry the same).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    pub sent: u64,
    pub removed: u64,
    pub failed: u64,
    pub refused: u64,
    pub retries: u64,
    pub apns_token_refreshes: u64,
    pub fcm_token_refreshes: u64,
    /// HTTP/2 connections opened to APNs and FCM.
    pub connections_opened: u64,
}

/// The routes a push can take, each with its own in-flight cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Apns,
    ApnsSandbox,
    Fcm,
    Webhook,
    Log,
}

impl Route {
    const ALL: [Self; 5] = [
        Self::Apns,
        Self::ApnsSandbox,
        Self::Fcm,
        Self::Webhook,
        Self::Log,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Apns => "apns",
            Self::ApnsSandbox => "apns.dev",
            Self::Fcm => "fcm",
            Self::Webhook => "webhook",
            Self::Log => "log",
        }
    }
}

/// Sends pushes. Cheap to clone; clones share connections, tokens, caps and counters.
#[derive(Clone)]
pub struct Pusher {
    inner: Arc<Inner>,
}

struct Inner {
    mode: PushMode,
    apns: Option<Apns>,
    fcm: Option<Fcm>,
    webhook: Option<Webhook>,
    caps: [Semaphore; 5],
    tuning: Tuning,
    sent: AtomicU64,
    removed: AtomicU64,
    failed: AtomicU64,
    refused: AtomicU64,
    retries: AtomicU64,
}

impl fmt::Debug for Pusher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pusher")
            .field("mode", &self.inner.mode)
            .field("apns", &self.inner.apns.is_some())
            .field("fcm", &self.inner.fcm.is_some())
            .field("webhook", &self.inner.webhook.is_some())
            .finish()
    }
}

impl Pusher {
    /// Reads the credentials `config` names (key files, service account) and prepares the
    /// clients; connects to nothing yet. Call within a tokio runtime's context only to send.
    pub fn new(config: &PushConfig) -> Result<Self, PushError> {
        Self::with_tuning(config, Tuning::from_config(config))
    }

    pub fn with_tuning(config: &PushConfig, tuning: Tuning) -> Result<Self, PushError> {
        let live = config.mode == PushMode::Live;
        let (apns, fcm, webhook) = if live {
            (
                Apns::new(&config.apns, &tuning)?,
                Fcm::new(&config.fcm, &tuning)?,
                Webhook::new(&config.webhook)?,
            )
        } else {
            (None, None, None)
        };
        let cap = config.max_in_flight.min(Semaphore::MAX_PERMITS);
        Ok(Self {
            inner: Arc::new(Inner {
                mode: config.mode,
                apns,
                fcm,
                webhook,
                caps: Route::ALL.map(|_| Semaphore::new(cap)),
                tuning,
                sent: AtomicU64::new(0),
                removed: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                retries: AtomicU64::new(0),
            }),
        })
    }

    pub fn stats(&self) -> Stats {
        let i = &self.inner;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            sent: load(&i.sent),
            removed: load(&i.removed),
            failed: load(&i.failed),
            refused: load(&i.refused),
            retries: load(&i.retries),
            apns_token_refreshes: i.apns.as_ref().map_or(0, |a| load(&a.refreshes)),
            fcm_token_refreshes: i.fcm.as_ref().map_or(0, |f| load(&f.refreshes)),
            connections_opened: i.apns.as_ref().map_or(0, Apns::connections_opened)
                + i.fcm.as_ref().map_or(0, Fcm::connections_opened),
        }
    }

    fn route(&self, provider: Provider) -> Option<Route> {
        let i = &self.inner;
        if i.mode == PushMode::Log {
            return Some(Route::Log);
        }
        let native = match provider {
            Provider::Apns if i.apns.is_some() => Some(Route::Apns),
            Provider::ApnsSandbox if i.apns.is_some() => Some(Route::ApnsSandbox),
            Provider::Fcm if i.fcm.is_some() => Some(Route::Fcm),
            _ => None,
        };
        native.or_else(|| i.webhook.as_ref().map(|_| Route::Webhook))
    }

    /// Sends one push and reports how it ended; never fails otherwise.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future abandons the push (a request already written may still be
    /// delivered); the in-flight slot is released and connections stay usable.
    pub async fn send(&self, req: &PushRequest) -> PushResult {
        let start = tokio::time::Instant::now();
        let provider = Provider::from_pn(&req.push.provider);
        let Some(route) = self.route(provider) else {
            let outcome = Outcome::Failed {
                status: None,
                reason: format!(
                    "no client for pn-provider {:?} (configure it, or push.webhook.url)",
                    req.push.provider.chars().take(40).collect::<String>()
                ),
            };
            return self.finish(provider.label(), outcome, start, 0);
        };
        let Ok(_permit) = self.inner.caps[route as usize].try_acquire() else {
            return self.finish(route.label(), Outcome::Refused, start, 0);
        };
        let (outcome, attempts) = match route {
            Route::Log => {
                tracing::info!(
                    provider = %req.push.provider,
                    token = %Abbrev(&req.push.prid),
                    kind = req.kind.as_str(),
                    call_id = %req.call_id,
                    from = %req.from_uri,
                    uuid = %req.uuid,
                    "push (log only, push.mode = \"log\")"
                );
                (Outcome::Sent { id: "log".into() }, 0)
            }
            Route::Apns | Route::ApnsSandbox => {
                self.send_apns(req, route == Route::ApnsSandbox).await
            }
            Route::Fcm => self.send_fcm(req).await,
            Route::Webhook => {
                self.retrying(route, |_| async {
                    self.webhook().attempt(req, &self.inner.tuning).await
                })
                .await
            }
        };
        self.finish(route.label(), outcome, start, attempts)
    }

    fn webhook(&self) -> &Webhook {
        // `route` gives Webhook only when the webhook exists.
        self.inner
            .webhook
            .as_ref()
            .expect("routed to the webhook, so it is configured")
    }

    async fn send_apns(&self, req: &PushRequest, sandbox: bool) -> (Outcome, u32) {
        let target = match apns_target(&req.push, req.kind) {
            Ok(t) => t,
            Err(e) => return (refuse_target(&e), 0),
        };
        // `route` gives Apns only when APNs is configured.
        let apns = self
            .inner
            .apns
            .as_ref()
            .expect("routed to APNs, so it is configured");
        let tuning = &self.inner.tuning;
        let route = if sandbox {
            Route::ApnsSandbox
        } else {
            Route::Apns
        };
        self.retrying(route, |renew| {
            let target = &target;
            async move { apns.attempt(req, target, sandbox, renew, tuning).await }
        })
        .await
    }

    async fn send_fcm(&self, req: &PushRequest) -> (Outcome, u32) {
        let target = match fcm_target(&req.push) {
            Ok(t) => t,
            Err(e) => return (refuse_target(&e), 0),
        };
        // `route` gives Fcm only when FCM is configured.
        let fcm = self
            .inner
            .fcm
            .as_ref()
            .expect("routed to FCM, so it is configured");
        let tuning = &self.inner.tuning;
        let refused = std::sync::Mutex::new(None::<String>);
        let used = std::sync::Mutex::new(None::<String>);
        self.retrying(Route::Fcm, |renew| {
            let target = &target;
            let refused = &refused;
            let used = &used;
            async move {
                if renew {
                    let last = used.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    *refused.lock().unwrap_or_else(|p| p.into_inner()) = last;
                }
                let stale = refused.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let (verdict, token) = fcm.attempt(req, target, stale.as_deref(), tuning).await;
                *used.lock().unwrap_or_else(|p| p.into_inner()) = token;
                verdict
            }
        })
        .await
    }

    /// Runs attempts until one is final: a refused credential is renewed once (the attempt
    /// is told `renew = true`), busy providers are retried on the backoff schedule.
    async fn retrying<F, Fut>(&self, route: Route, mut attempt: F) -> (Outcome, u32)
    where
        F: FnMut(bool) -> Fut,
        Fut: std::future::Future<Output = Verdict>,
    {
        let tuning = &self.inner.tuning;
        let mut renew = false;
        let mut renewed = false;
        let mut retries = 0;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let verdict = attempt(renew).await;
            renew = false;
            match verdict {
                Verdict::Sent { id } => return (Outcome::Sent { id }, attempts),
                Verdict::RemoveBinding { reason } => {
                    return (Outcome::RemoveBinding { reason }, attempts)
                }
                Verdict::RenewAuth { status, reason } => {
                    if renewed {
                        return (
                            Outcome::Failed {
                                status: Some(status),
                                reason,
                            },
                            attempts,
                        );
                    }
                    renewed = true;
                    renew = true;
                }
                Verdict::Retry {
                    status,
                    reason,
                    after,
                } => {
                    let Some(wait) = retry_delay(
                        retries,
                        tuning.max_retries,
                        tuning.backoff_base,
                        tuning.backoff_cap,
                        after,
                    ) else {
                        return (Outcome::Failed { status, reason }, attempts);
                    };
                    retries += 1;
                    self.inner.retries.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("stg_push_retries_total", "provider" => route.label())
                        .increment(1);
                    tokio::time::sleep(wait).await;
                }
                Verdict::Fail { status, reason } => {
                    return (Outcome::Failed { status, reason }, attempts)
                }
            }
        }
    }

    fn finish(
        &self,
        provider: &'static str,
        outcome: Outcome,
        start: tokio::time::Instant,
        attempts: u32,
    ) -> PushResult {
        let latency = start.elapsed();
        let i = &self.inner;
        let counter = match &outcome {
            Outcome::Sent { .. } => &i.sent,
            Outcome::RemoveBinding { .. } => &i.removed,
            Outcome::Failed { .. } => &i.failed,
            Outcome::Refused => &i.refused,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("stg_push_sent_total", "provider" => provider, "result" => outcome.label())
            .increment(1);
        match &outcome {
            Outcome::Refused => {
                metrics::counter!("stg_push_refused_total", "provider" => provider).increment(1);
                tracing::warn!(provider, "push refused: push.max_in_flight reached");
            }
            Outcome::Failed { status, reason } => {
                tracing::warn!(provider, ?status, %reason, attempts, "push failed");
            }
            Outcome::RemoveBinding { reason } => {
                tracing::info!(provider, %reason, "push token is dead; binding to be removed");
            }
            Outcome::Sent { .. } => {}
        }
        if attempts > 0 {
            metrics::histogram!("stg_push_latency_seconds", "provider" => provider)
                .record(latency.as_secs_f64());
        }
        PushResult {
            provider,
            outcome,
            latency,
            attempts,
        }
    }
}

fn refuse_target(e: &crate::request::TargetError) -> Outcome {
    Outcome::Failed {
        status: None,
        reason: e.to_string(),
    }
}
