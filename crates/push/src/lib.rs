//! Push wake-ups for sleeping devices (RFC 8599): Apple's APNs, Google's FCM HTTP v1, an
//! operator's webhook, or a log line.
//!
//! A mobile app that sleeps keeps no SIP connection. When a call or a message arrives for
//! it, the proxy core emits a "push this device" event; the shell builds a [`PushRequest`]
//! from the binding's [`Push`](stg_registrar::Push) parameters and hands it to
//! [`Pusher::send`], which reports a [`PushResult`]: sent, the binding's token is dead
//! ([`Outcome::RemoveBinding`]), failed, or refused at the in-flight cap. The device then
//! re-registers and the core sends it the waiting request; none of that is here.
//!
//! Split as the rest of stg: the pure part takes time as an argument and does no I/O
//! ([`request`]: the model, target resolution incl. Linphone's combined iOS parameters and
//! the JSON payloads; [`jwt`]: ES256/RS256 tokens and their renewal rules; [`verdict`]:
//! provider answers → decisions, and the backoff schedule). The tokio part is thin: one
//! long-lived HTTP/2 connection per provider host (hyper over tokio-rustls, ALPN `h2`,
//! aws-lc-rs), one-shot requests for token fetches and the webhook, and the [`Pusher`]
//! front with caps, retries and metrics:
//!
//! - `stg_push_sent_total{provider,result}`: result `sent`, `remove_binding`, `failed`,
//!   `refused`;
//! - `stg_push_latency_seconds{provider}` (histogram): call to outcome, retries included;
//! - `stg_push_token_refresh_total{provider}`: APNs JWTs signed, FCM access tokens fetched;
//! - `stg_push_refused_total{provider}`: pushes refused at `push.max_in_flight`;
//! - `stg_push_retries_total{provider}`: attempts repeated after a busy answer or a
//!   transport error.
//!
//! Invariants: no table grows with input (one connection per configured host, one token
//! per provider, in-flight pushes capped per provider); provider answers are read up to
//! 64 KiB; a device token never reaches a log line whole.

#![forbid(unsafe_code)]

mod client;
mod http;
pub mod jwt;
mod pusher;
pub mod request;
pub mod verdict;

pub use pusher::{Clock, Outcome, PushResult, Pusher, Stats, Tuning};
pub use request::{random_uuid, Abbrev, PushKind, PushRequest};

/// Why a pusher could not be built, or an attempt could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    /// A credential file, URL or CA file cannot be used (the operator's to fix).
    #[error("push configuration: {0}")]
    Config(String),
    /// The provider could not be reached.
    #[error("connect: {0}")]
    Connect(String),
    #[error("TLS: {0}")]
    Tls(String),
    /// The HTTP exchange failed (connection reset, GOAWAY, protocol error).
    #[error("HTTP: {0}")]
    Http(String),
    /// Connecting or answering took longer than allowed.
    #[error("{0} timed out")]
    Timeout(&'static str),
}

/// The system clock in unix milliseconds (0 before 1970).
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
