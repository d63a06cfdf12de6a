//! stg-push against local APNs, FCM and webhook servers speaking the real protocols
//! (`stg_testkit::push_servers`): HTTP/2 over TLS on 127.0.0.1.

mod apns;
mod fcm;
mod front;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use stg_config::{PushConfig, PushMode};
use stg_push::{Clock, PushKind, PushRequest, Tuning};
use stg_registrar::Push;

/// Live mode, nothing configured yet.
fn live() -> PushConfig {
    PushConfig {
        mode: PushMode::Live,
        ..PushConfig::default()
    }
}

/// Fast retries, a renewal policy that allows renewing at once, and a movable clock.
fn tuning(config: &PushConfig) -> (Tuning, TestClock) {
    let clock = TestClock::new();
    let mut t = Tuning::from_config(config);
    t.backoff_base = Duration::from_millis(20);
    t.backoff_cap = Duration::from_millis(500);
    t.request_timeout = Duration::from_secs(5);
    t.token_policy.min_interval = Duration::ZERO;
    t.clock = clock.clock();
    (t, clock)
}

/// Wall-clock time that starts at the real time and moves only when told.
#[derive(Clone)]
struct TestClock(Arc<AtomicU64>);

impl TestClock {
    fn new() -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        Self(Arc::new(AtomicU64::new(now)))
    }

    fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_millis() as u64, Ordering::Relaxed);
    }

    fn clock(&self) -> Clock {
        let t = self.0.clone();
        Clock::from_fn(move || t.load(Ordering::Relaxed))
    }
}

fn request(kind: PushKind, provider: &str, prid: &str, param: Option<&str>) -> PushRequest {
    PushRequest::new(
        kind,
        Push {
            provider: provider.into(),
            prid: prid.into(),
            param: param.map(Into::into),
        },
        "call-1@stg",
        "sip:alice@example.com",
        "Alice",
    )
}

const WAIT: Duration = Duration::from_secs(10);
