//! stg's storage adapters: where registrations ("bindings") and SIP digest credentials live.
//!
//! - [`Bindings`] keeps one hash (field → value strings) per address of record (`user@host`),
//!   in Flexisip 2.3's Redis layout: key `fs:<user>@<host>`, so a Flexisip node and stg can
//!   read each other's registrations. What the fields and values mean is decided by the
//!   registrar (`stg-registrar`); this crate only stores hashes, atomically. Two backends:
//!   an embedded redb file (the default, one node, nothing external) and Redis (plain or
//!   behind Sentinel, shared by several nodes).
//! - Messages kept for sleeping devices ([`Bindings::keep_message`]) live beside the
//!   bindings, in the same backend: a Redis list per device (`stg:msg:<aor>:<key>`) or a
//!   table of the redb file, in arrival order, capped per device, expiring.
//! - [`Users`] holds the HA1 digests per (user, realm, algorithm) in SQL through sqlx:
//!   SQLite by default, MariaDB or PostgreSQL by URL; the schema is in `migrations/`.
//!
//! Invariants: every update of one AOR is an atomic read-modify-write on both backends (two
//! nodes binding one AOR at the same moment lose nothing); a backend that is down makes
//! calls fail fast with [`StoreError::Unavailable`] (the caller answers 503), the outage is
//! logged once and counted, and the next call reconnects by itself.
//!
//! Metrics: `stg_store_errors_total{backend,op}` (counter) and `stg_store_op_seconds{backend,
//! op}` (histogram).

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod embedded;
mod glob;
mod redis_backend;
mod users;
mod watch;

pub use users::Users;
pub use watch::{Bound, Watcher, MAX_WATCHED};

/// The pub/sub channel (and sorted set) of the cluster's bans.
pub const BANS_CHANNEL: &str = redis_backend::BANS;

/// One AOR's hash, as stored: field → value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub fields: BTreeMap<String, String>,
}

/// A message kept for a device ([`Bindings::keep_message`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kept {
    /// Names this message in the store (for [`Bindings::forget_message`]).
    pub handle: Vec<u8>,
    /// Unix seconds after which it is dropped.
    pub expires_at: u64,
    /// The request as it arrived from its sender.
    pub request: Vec<u8>,
}

/// What one update writes. Applied in this order: `delete_all` (the whole key, including
/// its expiry), then `set`, then `del`, then `expire_at`; then `publish` once the write has
/// succeeded. A key whose last field is removed disappears (as a Redis hash does).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// Fields to add or overwrite (`HMSET`).
    pub set: Vec<(String, String)>,
    /// Fields to remove (`HDEL`).
    pub del: Vec<String>,
    /// Remove the whole key first (`DEL`, for `Contact: *`).
    pub delete_all: bool,
    /// Unix seconds at which the whole key expires (`EXPIREAT`); `None` keeps the current
    /// expiry (none after `delete_all`).
    pub expire_at: Option<u64>,
    /// (channel, message) to `PUBLISH` after the write; the embedded store drops it (one
    /// node, nobody to tell).
    pub publish: Option<(String, String)>,
}

impl Change {
    /// Writes nothing at all (publishing aside).
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.del.is_empty() && !self.delete_all && self.expire_at.is_none()
    }
}

/// What can go wrong, by blame.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend is down, timed out or refused the operation: the caller answers 503
    /// with Retry-After. Transient: the next call reconnects by itself.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// An update kept conflicting with concurrent writers of the same AOR past the retry
    /// bound. Transient, answered as `Unavailable`.
    #[error("store contention: {0}")]
    Contended(String),
    /// Stored data this crate cannot read (a key of the wrong type, an undecodable record).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A bad URL or a file/database that cannot be opened (the message names it).
    #[error("store configuration: {0}")]
    Config(String),
}

impl StoreError {
    /// Worth a 503 + Retry-After and a later retry (the environment, not the data).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Contended(_))
    }
}

/// The registrations of every AOR. Cheap to clone (an `Arc` inside); usable from many tokio
/// tasks at once.
#[derive(Clone)]
pub struct Bindings {
    inner: Backend,
}

#[derive(Clone)]
enum Backend {
    Embedded(embedded::Embedded),
    Redis(redis_backend::RedisStore),
}

impl Bindings {
    /// Opens the store named by `url`:
    /// - `""` or `"embedded"`: the redb file `<data_dir>/bindings.redb` (created, with its
    ///   directory);
    /// - `redis://[:pass@]host:port[/db]`;
    /// - `redis+sentinel://[:pass@]host:port[,host:port...]/<master>[/db]` (the password is
    ///   the master's).
    ///
    /// Redis is not contacted here: a Redis that is down at startup makes the first calls
    /// fail with `Unavailable`, and the node starts anyway.
    pub async fn open(url: &str, data_dir: &Path) -> Result<Self, StoreError> {
        let inner = match url {
            "" | "embedded" => Backend::Embedded(embedded::Embedded::open(data_dir).await?),
            u if u.starts_with("redis://") || u.starts_with("redis+sentinel://") => {
                Backend::Redis(redis_backend::RedisStore::open(u)?)
            }
            u => {
                return Err(StoreError::Config(format!(
                    "unknown bindings store URL {u:?} (expected \"embedded\", redis:// or \
                     redis+sentinel://)"
                )))
            }
        };
        Ok(Self { inner })
    }

    /// Atomic read-modify-write of one AOR (`aor` = "user@host"; the `fs:` prefix is added
    /// here). `f` sees the current hash (an expired key reads as empty) and returns the change
    /// and a value to hand back; it may be called more than once (optimistic retries on
    /// Redis), so it must be pure. An empty change writes nothing. `publish` is sent after
    /// the write succeeds; a failed PUBLISH is logged and counted, not returned (the
    /// registration is stored).
    ///
    /// # Cancel safety
    /// Dropping the future may leave the write done or not done, never half done.
    pub async fn update<T, E>(
        &self,
        aor: &str,
        f: impl FnMut(&Record) -> Result<(Change, T), E> + Send,
    ) -> Result<Result<T, E>, StoreError> {
        let started = Instant::now();
        let r = match &self.inner {
            Backend::Embedded(s) => s.update(aor, f).await,
            Backend::Redis(s) => s.update(aor, f).await,
        };
        self.observe("update", started, r)
    }

    /// The current hash of `aor` (empty if absent or expired).
    pub async fn get(&self, aor: &str) -> Result<Record, StoreError> {
        let started = Instant::now();
        let r = match &self.inner {
            Backend::Embedded(s) => s.get(aor).await,
            Backend::Redis(s) => s.get(aor).await,
        };
        self.observe("get", started, r)
    }

    /// AORs matching a Redis glob over `user@host` (`SCAN MATCH fs:<pattern>`, never `KEYS`),
    /// at most `limit`, in no particular order. Escape literal parts with [`escape_glob`]:
    /// user parts contain `*`.
    pub async fn scan(&self, pattern: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        let started = Instant::now();
        let r = match &self.inner {
            Backend::Embedded(s) => s.scan(pattern, limit).await,
            Backend::Redis(s) => s.scan(pattern, limit).await,
        };
        self.observe("scan", started, r)
    }

    /// Removes one field, or the whole AOR with `field: None`; true if something was removed.
    pub async fn remove(&self, aor: &str, field: Option<&str>) -> Result<bool, StoreError> {
        let started = Instant::now();
        let r = match &self.inner {
            Backend::Embedded(s) => s.remove(aor, field).await,
            Backend::Redis(s) => s.remove(aor, field).await,
        };
        self.observe("remove", started, r)
    }

    /// Follows bind notifications of other nodes (Redis pub/sub): every bind published on a
    /// watched AOR is sent to `out`. `None` for the embedded store (one node: its own binds
    /// are all it needs). Needs a tokio runtime.
    pub fn watcher(&self, out: tokio::sync::mpsc::Sender<Bound>) -> Option<Watcher> {
        match &self.inner {
            Backend::Embedded(_) => None,
            Backend::Redis(s) => Some(watch::start(s.clone(), out)),
        }
    }

    /// Shares a ban (`until_ms` unix ms; 0 lifts it) with every node on the same Redis
    /// (`stg:ban:<scope>`, the sorted set and channel `stg:bans`). A no-op on the embedded
    /// store (one node).
    pub async fn share_ban(
        &self,
        scope: &str,
        until_ms: u64,
        what: &str,
    ) -> Result<(), StoreError> {
        match &self.inner {
            Backend::Embedded(_) => Ok(()),
            Backend::Redis(s) => s.ban(scope, until_ms, what).await,
        }
    }

    /// Counts a failure cluster-wide: `stg:fail:<jail>:<scope>` holds the failure times
    /// (unix ms) of the window; the count within it, this one included. `None` on the
    /// embedded store (each node counts alone).
    pub async fn count_failure(
        &self,
        jail: &str,
        scope: &str,
        now_ms: u64,
        window_ms: u64,
        keep: usize,
    ) -> Result<Option<u32>, StoreError> {
        match &self.inner {
            Backend::Embedded(_) => Ok(None),
            Backend::Redis(s) => s
                .count_failure(&format!("stg:fail:{jail}:{scope}"), now_ms, window_ms, keep)
                .await
                .map(Some),
        }
    }

    /// Records that `ip` authenticated (a user's address) for `for_secs`, cluster-wide:
    /// `stg:good:<ip>`. A no-op on the embedded store (the node's own table is enough).
    pub async fn mark_authenticated(&self, ip: &str, for_secs: u64) -> Result<(), StoreError> {
        match &self.inner {
            Backend::Embedded(_) => Ok(()),
            Backend::Redis(s) => s.mark(&format!("stg:good:{ip}"), for_secs).await,
        }
    }

    /// Whether any node saw `ip` authenticate within its `mark_authenticated` time.
    /// `false` on the embedded store.
    pub async fn authenticated(&self, ip: &str) -> Result<bool, StoreError> {
        match &self.inner {
            Backend::Embedded(_) => Ok(false),
            Backend::Redis(s) => s.exists(&format!("stg:good:{ip}")).await,
        }
    }

    /// Forgets a cluster-wide failure window (after its ban).
    pub async fn clear_failures(&self, jail: &str, scope: &str) -> Result<(), StoreError> {
        match &self.inner {
            Backend::Embedded(_) => Ok(()),
            Backend::Redis(s) => s.clear_failures(&format!("stg:fail:{jail}:{scope}")).await,
        }
    }

    /// The cluster's bans in force (scope, until unix ms): the resync of a node that starts
    /// or reconnects. Empty on the embedded store.
    pub async fn shared_bans(&self, now_ms: u64) -> Result<Vec<(String, u64)>, StoreError> {
        match &self.inner {
            Backend::Embedded(_) => Ok(Vec::new()),
            Backend::Redis(s) => s.bans(now_ms).await,
        }
    }

    /// Keeps a message for a device (`device` = `<aor>:<binding key>`) until `expires_at`
    /// (unix seconds), after its other messages; `Ok(false)` when the device has `max`
    /// already (the message is not kept). Redis: the list `stg:msg:<device>`; embedded: the
    /// redb file. Either way it survives a restart.
    pub async fn keep_message(
        &self,
        device: &str,
        expires_at: u64,
        request: &[u8],
        max: usize,
    ) -> Result<bool, StoreError> {
        let started = Instant::now();
        let r = match &self.inner {
            Backend::Embedded(s) => s.keep_message(device, expires_at, request, max).await,
            Backend::Redis(s) => s.keep_message(device, expires_at, request, max).await,
        };
        self.observe("keep_message", started, r)
    }

    /// The messages kept for `device` that have not expired at `now` (unix seconds), oldest
    /// first.
    pub async fn kept_messages(&self, device: &str, now: u64) -> Result<Vec<Kept>, StoreError> {
        let started = Instant::now();
        let r = match &self.inner {
            Backend::Embedded(s) => s.kept_messages(device, now).await,
            Backend::Redis(s) => s.kept_messages(device, now).await,
        };
        self.observe("kept_messages", started, r)
    }

    /// Forgets one kept message (delivered, or refused by the device); true if it was there.
    pub async fn forget_message(&self, device: &str, kept: &Kept) -> Result<bool, StoreError> {
        let started = Instant::now();
        let r = match &self.inner {
            Backend::Embedded(s) => s.forget_message(device, kept).await,
            Backend::Redis(s) => s.forget_message(device, kept).await,
        };
        self.observe("forget_message", started, r)
    }

    /// "embedded" / "redis" / "redis+sentinel", for metrics labels and logs.
    pub fn kind(&self) -> &'static str {
        match &self.inner {
            Backend::Embedded(_) => "embedded",
            Backend::Redis(s) => s.kind(),
        }
    }

    fn observe<T>(
        &self,
        op: &'static str,
        started: Instant,
        r: Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        record_op(self.kind(), op, started, r.as_ref().err());
        r
    }
}

impl std::fmt::Debug for Bindings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bindings")
            .field("kind", &self.kind())
            .finish()
    }
}

/// `s` with Redis glob metacharacters (`* ? [ ] \`) escaped, to be matched literally inside
/// a [`Bindings::scan`] pattern.
pub fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The Redis key of an AOR.
fn key_of(aor: &str) -> String {
    format!("fs:{aor}")
}

/// Wall-clock unix seconds (expiry is wall-clock, as Redis' EXPIREAT).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn record_op(backend: &'static str, op: &'static str, started: Instant, err: Option<&StoreError>) {
    metrics::histogram!("stg_store_op_seconds", "backend" => backend, "op" => op)
        .record(started.elapsed().as_secs_f64());
    if err.is_some() {
        metrics::counter!("stg_store_errors_total", "backend" => backend, "op" => op).increment(1);
    }
}

/// Remembers whether a backend is in an outage, so that it is logged once when it starts
/// and once when it ends, not per request.
#[derive(Debug, Default)]
struct Health {
    down: AtomicBool,
}

impl Health {
    fn failed(&self, what: &str, err: &dyn std::fmt::Display) {
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(backend = what, error = %err, "store unavailable; requests needing it get errors until it recovers");
        }
    }

    fn ok(&self, what: &str) {
        if self.down.load(Ordering::Relaxed) && self.down.swap(false, Ordering::Relaxed) {
            tracing::info!(backend = what, "store recovered");
        }
    }
}

/// How long one connection attempt or one command may take before the call fails.
const IO_TIMEOUT: Duration = Duration::from_secs(1);

/// Optimistic update attempts before giving up with `Contended`.
const MAX_ATTEMPTS: u32 = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_glob_escapes_each_metacharacter() {
        assert_eq!(escape_glob("40004*01@a.b"), "40004\\*01@a.b");
        assert_eq!(escape_glob("a?[]\\"), "a\\?\\[\\]\\\\");
        assert!(glob::matches(&escape_glob("x*[y]?\\z"), "x*[y]?\\z"));
        assert!(!glob::matches(&escape_glob("x*"), "xyz"));
    }

    #[test]
    fn empty_change_is_empty() {
        assert!(Change::default().is_empty());
        let c = Change {
            publish: Some(("a".into(), "b".into())),
            ..Change::default()
        };
        assert!(c.is_empty());
        let c = Change {
            delete_all: true,
            ..Change::default()
        };
        assert!(!c.is_empty());
    }
}
