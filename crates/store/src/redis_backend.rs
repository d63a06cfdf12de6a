//! The Redis backend, plain or behind Sentinel, in Flexisip 2.3's layout (`fs:<aor>` hashes).
//!
//! Updates are optimistic transactions with Flexisip's own commands: `WATCH` + `HGETALL`,
//! then `MULTI` / `DEL` / `HMSET` / `HDEL` / `EXPIREAT` / `EXEC`, retried when `EXEC` answers
//! nil (another writer touched the key). A Flexisip node writing the same key without
//! `WATCH` still aborts our transaction, so we never overwrite its write with stale data.
//!
//! `WATCH` state belongs to a connection, so each operation leases a connection of its own
//! from a small pool (at most [`POOL_SIZE`], made on demand, returned after success,
//! dropped after an error): never one multiplexed connection shared by concurrent tasks.
//! With Sentinel, every new connection asks a sentinel for the current master, so after a
//! failover (Sentinel kills the clients of the demoted master) the next connection goes to
//! the new one.

use std::collections::{BTreeMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{AsyncConnectionConfig, ConnectionAddr, ErrorKind, RedisError, Value};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::{key_of, Change, Health, Record, StoreError, IO_TIMEOUT, MAX_ATTEMPTS};

/// Runs `$body` (an expression of type `Result<_, RedisError>` that uses `$conn: &mut
/// MultiplexedConnection`) on a leased connection, with [`RedisStore::after_error`]'s one
/// retry; evaluates to `Result<_, StoreError>`. A macro rather than a method taking an async
/// closure: the body stays inline, so the caller's future stays `Send` (an `AsyncFnMut`
/// bound loses that across its higher-ranked borrow).
macro_rules! with_conn {
    ($store:expr, $conn:ident, $body:block) => {{
        let store = $store;
        let mut tries = 0u32;
        loop {
            tries += 1;
            let mut lease = match store.lease().await {
                Ok(l) => l,
                Err(e) => break Err(store.failed(e)),
            };
            let r: Result<_, RedisError> = {
                let $conn = &mut lease.conn;
                async { $body }.await
            };
            match r {
                Ok(v) => {
                    lease.release();
                    store.inner.health.ok(store.kind());
                    break Ok(v);
                }
                Err(e) => {
                    if let Some(e) = store.after_error(lease, e, tries) {
                        break Err(e);
                    }
                }
            }
        }
    }};
}

/// Most connections open at once (and so operations in flight) per store.
const POOL_SIZE: usize = 8;

/// How often the sentinels are asked which node is the master.
const MASTER_CHECK: Duration = Duration::from_secs(1);

/// The sorted set of bans and the channel that carries them.
pub(crate) const BANS: &str = "stg:bans";

/// Keys asked per `SCAN` step.
const SCAN_COUNT: usize = 500;

#[derive(Clone)]
pub(crate) struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    target: Target,
    /// Idle connections, with the master generation they were made for.
    idle: Mutex<Vec<(u64, MultiplexedConnection)>>,
    /// Bumped when the sentinels name another master: older connections are dropped.
    generation: AtomicU64,
    /// Set after a stale-connection error: ask the sentinels again before the next call.
    recheck: AtomicBool,
    permits: Semaphore,
    health: Health,
    config: AsyncConnectionConfig,
}

enum Target {
    Plain(redis::Client),
    /// Behind a mutex: `SentinelClient` needs `&mut` to ask for the master.
    Sentinel(Box<tokio::sync::Mutex<Master>>),
}

/// What the sentinels last said about the master.
struct Master {
    sentinel: SentinelClient,
    /// A client for the current master and its address, as a string to compare.
    current: Option<(redis::Client, String)>,
    /// When the sentinels were last asked; `None`: ask before the next connection.
    checked: Option<Instant>,
}

/// One attempt of an update.
enum Attempt<T, E> {
    Done(Result<T, E>),
    Conflict,
}

/// A connection held by one operation; back to the pool only through [`Lease::release`].
struct Lease<'a> {
    conn: MultiplexedConnection,
    generation: u64,
    reused: bool,
    store: &'a Inner,
    _permit: SemaphorePermit<'a>,
}

impl Lease<'_> {
    fn release(self) {
        if self.generation != self.store.generation.load(Ordering::Relaxed) {
            return;
        }
        if let Ok(mut idle) = self.store.idle.lock() {
            idle.push((self.generation, self.conn));
        }
    }
}

impl RedisStore {
    pub(crate) fn open(url: &str) -> Result<Self, StoreError> {
        let target = if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            Target::Sentinel(Box::new(tokio::sync::Mutex::new(Master {
                sentinel: sentinel_client(rest)?,
                current: None,
                checked: None,
            })))
        } else {
            let client = redis::Client::open(url)
                .map_err(|e| StoreError::Config(format!("bad Redis URL: {e}")))?;
            Target::Plain(client)
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(IO_TIMEOUT))
            .set_response_timeout(Some(IO_TIMEOUT));
        Ok(Self {
            inner: Arc::new(Inner {
                target,
                idle: Mutex::new(Vec::new()),
                generation: AtomicU64::new(0),
                recheck: AtomicBool::new(false),
                permits: Semaphore::new(POOL_SIZE),
                health: Health::default(),
                config,
            }),
        })
    }

    pub(crate) fn kind(&self) -> &'static str {
        match self.inner.target {
            Target::Plain(_) => "redis",
            Target::Sentinel(_) => "redis+sentinel",
        }
    }

    pub(crate) async fn update<T, E>(
        &self,
        aor: &str,
        mut f: impl FnMut(&Record) -> Result<(Change, T), E> + Send,
    ) -> Result<Result<T, E>, StoreError> {
        let key = key_of(aor);
        for attempt in 0..MAX_ATTEMPTS {
            let r = with_conn!(self, conn, {
                // One round trip for WATCH + HGETALL, one for MULTI…EXEC (PUBLISH inside it):
                // every round trip is two wake-ups and four syscalls per REGISTER.
                let (_, fields): (Value, BTreeMap<String, String>) = redis::pipe()
                    .cmd("WATCH")
                    .arg(&key)
                    .cmd("HGETALL")
                    .arg(&key)
                    .query_async(conn)
                    .await?;
                let (change, out) = match f(&Record { fields }) {
                    Ok(x) => x,
                    Err(e) => {
                        redis::cmd("UNWATCH").exec_async(conn).await?;
                        return Ok(Attempt::Done(Err(e)));
                    }
                };
                if change.is_empty() {
                    redis::cmd("UNWATCH").exec_async(conn).await?;
                    if let Some((channel, message)) = &change.publish {
                        publish(conn, channel, message).await;
                    }
                } else {
                    let done: Option<Vec<Value>> =
                        transaction(&key, &change).query_async(conn).await?;
                    let Some(mut replies) = done else {
                        return Ok(Attempt::Conflict);
                    };
                    // The PUBLISH ran last, after the write: its failure is only counted.
                    if change.publish.is_some() {
                        if let Some(e) = replies.pop().and_then(server_error) {
                            metrics::counter!("stg_store_errors_total", "backend" => "redis", "op" => "publish")
                                .increment(1);
                            tracing::warn!(error = %e, "PUBLISH after a stored registration failed");
                        }
                    }
                    if let Some(e) = replies.into_iter().find_map(server_error) {
                        return Err(e);
                    }
                }
                Ok(Attempt::Done(Ok(out)))
            })?;
            match r {
                Attempt::Done(r) => return Ok(r),
                Attempt::Conflict if attempt >= 2 => {
                    // Past the first retries, spread the contenders apart a little.
                    let ms = 1 + jitter() % u64::from(attempt.min(20));
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                Attempt::Conflict => {}
            }
        }
        Err(StoreError::Contended(format!(
            "{key}: {MAX_ATTEMPTS} attempts lost to concurrent writers"
        )))
    }

    /// Records a ban for the cluster: `stg:ban:<scope>` (expiring with it), the sorted set
    /// `stg:bans` (scope by expiry, unix ms), and a PUBLISH on `stg:bans` (`<scope> <ms>`,
    /// `ms` 0 for a lift), in one MULTI/EXEC.
    pub(crate) async fn ban(
        &self,
        scope: &str,
        until_ms: u64,
        what: &str,
    ) -> Result<(), StoreError> {
        with_conn!(self, conn, {
            let mut p = redis::pipe();
            p.atomic();
            if until_ms == 0 {
                p.cmd("DEL").arg(format!("stg:ban:{scope}")).ignore();
                p.cmd("ZREM").arg(BANS).arg(scope).ignore();
            } else {
                // SET + PEXPIREAT rather than SET PXAT: Redis before 6.2 runs it too.
                let key = format!("stg:ban:{scope}");
                p.cmd("SET").arg(&key).arg(what).ignore();
                p.cmd("PEXPIREAT").arg(&key).arg(until_ms).ignore();
                p.cmd("ZADD").arg(BANS).arg(until_ms).arg(scope).ignore();
            }
            p.cmd("PUBLISH")
                .arg(BANS)
                .arg(format!("{scope} {until_ms}"))
                .ignore();
            p.query_async::<()>(conn).await?;
            Ok(())
        })
    }

    /// Adds a failure to `key`'s window (a sorted set of failure times, its latest `keep`)
    /// and returns how many fall within `window_ms` before `now_ms`: one MULTI/EXEC.
    pub(crate) async fn count_failure(
        &self,
        key: &str,
        now_ms: u64,
        window_ms: u64,
        keep: usize,
    ) -> Result<u32, StoreError> {
        let member = format!("{now_ms}-{}", jitter());
        with_conn!(self, conn, {
            let (count,): (u32,) = redis::pipe()
                .atomic()
                .cmd("ZADD")
                .arg(key)
                .arg(now_ms)
                .arg(&member)
                .ignore()
                .cmd("ZREMRANGEBYSCORE")
                .arg(key)
                .arg("-inf")
                .arg(now_ms.saturating_sub(window_ms))
                .ignore()
                .cmd("ZREMRANGEBYRANK")
                .arg(key)
                .arg(0)
                .arg(-(keep.max(1) as i64) - 1)
                .ignore()
                .cmd("ZCARD")
                .arg(key)
                .cmd("PEXPIRE")
                .arg(key)
                .arg(window_ms.max(1))
                .ignore()
                .query_async(conn)
                .await?;
            Ok(count)
        })
    }

    /// `SET key 1 EX secs`.
    pub(crate) async fn mark(&self, key: &str, secs: u64) -> Result<(), StoreError> {
        with_conn!(self, conn, {
            redis::cmd("SET")
                .arg(key)
                .arg(1)
                .arg("EX")
                .arg(secs.max(1))
                .exec_async(conn)
                .await?;
            Ok(())
        })
    }

    /// `EXISTS key`.
    pub(crate) async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        with_conn!(self, conn, {
            let n: u32 = redis::cmd("EXISTS").arg(key).query_async(conn).await?;
            Ok(n > 0)
        })
    }

    /// Forgets a failure window.
    pub(crate) async fn clear_failures(&self, key: &str) -> Result<(), StoreError> {
        with_conn!(self, conn, {
            redis::cmd("DEL").arg(key).exec_async(conn).await?;
            Ok(())
        })
    }

    /// Appends a kept message to the device's list (`stg:msg:<device>`) unless it holds
    /// `max` already; the list expires with its newest message. One script, so the cap
    /// holds with several nodes writing.
    pub(crate) async fn keep_message(
        &self,
        device: &str,
        expires_at: u64,
        request: &[u8],
        max: usize,
    ) -> Result<bool, StoreError> {
        const KEEP: &str = "if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end \
            redis.call('RPUSH', KEYS[1], ARGV[1]) \
            redis.call('EXPIREAT', KEYS[1], ARGV[3]) return 1";
        let mut element = format!("{expires_at} {:016x}\n", jitter()).into_bytes();
        element.extend_from_slice(request);
        let key = format!("stg:msg:{device}");
        with_conn!(self, conn, {
            let kept: i64 = redis::cmd("EVAL")
                .arg(KEEP)
                .arg(1)
                .arg(&key)
                .arg(&element)
                .arg(max)
                .arg(expires_at)
                .query_async(conn)
                .await?;
            Ok(kept == 1)
        })
    }

    /// The device's kept messages, oldest first; expired ones are removed on the way.
    pub(crate) async fn kept_messages(
        &self,
        device: &str,
        now: u64,
    ) -> Result<Vec<crate::Kept>, StoreError> {
        let key = format!("stg:msg:{device}");
        let raw: Vec<Vec<u8>> = with_conn!(self, conn, {
            redis::cmd("LRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query_async(conn)
                .await
        })?;
        let mut out = Vec::new();
        let mut expired = Vec::new();
        for element in raw {
            match parse_kept(&element) {
                Some((t, request)) if t > now => out.push(crate::Kept {
                    expires_at: t,
                    request: request.to_vec(),
                    handle: element,
                }),
                _ => expired.push(element),
            }
        }
        for element in expired {
            self.forget_element(&key, &element).await?;
        }
        Ok(out)
    }

    /// Forgets one kept message; true if it was there.
    pub(crate) async fn forget_message(
        &self,
        device: &str,
        kept: &crate::Kept,
    ) -> Result<bool, StoreError> {
        self.forget_element(&format!("stg:msg:{device}"), &kept.handle)
            .await
    }

    async fn forget_element(&self, key: &str, element: &[u8]) -> Result<bool, StoreError> {
        with_conn!(self, conn, {
            let n: i64 = redis::cmd("LREM")
                .arg(key)
                .arg(1)
                .arg(element)
                .query_async(conn)
                .await?;
            Ok(n > 0)
        })
    }

    /// The bans in force at `now_ms` (expired ones are dropped from the set on the way).
    pub(crate) async fn bans(&self, now_ms: u64) -> Result<Vec<(String, u64)>, StoreError> {
        with_conn!(self, conn, {
            let (_, live): ((), Vec<(String, u64)>) = redis::pipe()
                .cmd("ZREMRANGEBYSCORE")
                .arg(BANS)
                .arg("-inf")
                .arg(now_ms)
                .ignore()
                .cmd("ZRANGEBYSCORE")
                .arg(BANS)
                .arg(format!("({now_ms}"))
                .arg("+inf")
                .arg("WITHSCORES")
                .query_async(conn)
                .await?;
            Ok(live)
        })
    }

    pub(crate) async fn get(&self, aor: &str) -> Result<Record, StoreError> {
        let key = key_of(aor);
        with_conn!(self, conn, {
            let fields = redis::cmd("HGETALL").arg(&key).query_async(conn).await?;
            Ok(Record { fields })
        })
    }

    pub(crate) async fn scan(
        &self,
        pattern: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let pattern = format!("fs:{pattern}");
        with_conn!(self, conn, {
            let mut seen = HashSet::new();
            let mut out = Vec::new();
            let mut cursor = 0u64;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(SCAN_COUNT)
                    .query_async(conn)
                    .await?;
                for k in keys {
                    if out.len() >= limit {
                        return Ok(out);
                    }
                    // SCAN may return a key twice; our keys all start with `fs:` (MATCH).
                    if let Some(aor) = k.strip_prefix("fs:") {
                        if seen.insert(aor.to_string()) {
                            out.push(aor.to_string());
                        }
                    }
                }
                if next == 0 || out.len() >= limit {
                    return Ok(out);
                }
                cursor = next;
            }
        })
    }

    pub(crate) async fn remove(&self, aor: &str, field: Option<&str>) -> Result<bool, StoreError> {
        let key = key_of(aor);
        with_conn!(self, conn, {
            let n: i64 = match field {
                Some(f) => {
                    redis::cmd("HDEL")
                        .arg(&key)
                        .arg(f)
                        .query_async(conn)
                        .await?
                }
                None => redis::cmd("DEL").arg(&key).query_async(conn).await?,
            };
            Ok(n > 0)
        })
    }

    /// After `body` failed on `lease`: the error to return, or `None` to try once more on a
    /// fresh connection. A failure that says the connection is stale (the server restarted,
    /// or was demoted by a failover) empties the pool, and if the connection came from the
    /// pool the call is retried, so a recovered Redis serves the very next call.
    fn after_error(&self, lease: Lease<'_>, e: RedisError, tries: u32) -> Option<StoreError> {
        let reused = lease.reused;
        drop(lease);
        let stale = is_stale(&e);
        if stale {
            if let Ok(mut idle) = self.inner.idle.lock() {
                idle.clear();
            }
            self.inner.recheck.store(true, Ordering::Relaxed);
        }
        if stale && reused && tries < 2 {
            return None;
        }
        Some(self.failed(map_err(e)))
    }

    /// Notes an outage (logged once) and hands the error back.
    fn failed(&self, e: StoreError) -> StoreError {
        if let StoreError::Unavailable(msg) = &e {
            self.inner.health.failed(self.kind(), msg);
        }
        e
    }

    /// A client for the master (the one configured, or the one the sentinels name now).
    pub(crate) async fn client(&self) -> Result<redis::Client, StoreError> {
        match &self.inner.target {
            Target::Plain(c) => Ok(c.clone()),
            Target::Sentinel(m) => self.master(m).await,
        }
    }

    async fn lease(&self) -> Result<Lease<'_>, StoreError> {
        let inner = &*self.inner;
        let permit = tokio::time::timeout(IO_TIMEOUT, inner.permits.acquire())
            .await
            .map_err(|_| StoreError::Unavailable("all Redis connections busy".into()))?
            .map_err(|_| StoreError::Unavailable("Redis pool closed".into()))?;
        let client = match &inner.target {
            Target::Plain(c) => c.clone(),
            Target::Sentinel(m) => self.master(m).await?,
        };
        let generation = inner.generation.load(Ordering::Relaxed);
        let idle = inner.idle.lock().ok().and_then(|mut v| v.pop());
        if let Some((g, conn)) = idle {
            if g == generation {
                return Ok(Lease {
                    conn,
                    generation,
                    reused: true,
                    store: inner,
                    _permit: permit,
                });
            }
        }
        let conn = tokio::time::timeout(
            IO_TIMEOUT,
            client.get_multiplexed_async_connection_with_config(&inner.config),
        )
        .await
        .map_err(|_| StoreError::Unavailable("Redis connect timed out".into()))?
        .map_err(map_err)?;
        Ok(Lease {
            conn,
            generation,
            reused: false,
            store: inner,
            _permit: permit,
        })
    }

    /// A client for the current master. The sentinels are asked at most every
    /// [`MASTER_CHECK`] (and after a stale-connection error): when they name another master
    /// (a failover), pooled connections to the old one are dropped, since the old master
    /// may go on accepting writes until the sentinels demote it, and such writes are lost.
    async fn master(&self, m: &tokio::sync::Mutex<Master>) -> Result<redis::Client, StoreError> {
        let inner = &*self.inner;
        let mut m = m.lock().await;
        let forced = inner.recheck.swap(false, Ordering::Relaxed);
        let due = forced || m.checked.is_none_or(|t| t.elapsed() >= MASTER_CHECK);
        if !due {
            if let Some((c, _)) = &m.current {
                return Ok(c.clone());
            }
        }
        // Asks a sentinel, then the master itself (ROLE): a few round trips.
        let client = tokio::time::timeout(IO_TIMEOUT * 2, m.sentinel.async_get_client())
            .await
            .map_err(|_| StoreError::Unavailable("Redis Sentinel timed out".into()))?
            .map_err(|e| {
                inner.recheck.store(true, Ordering::Relaxed);
                map_err(e)
            })?;
        let addr = client.get_connection_info().addr().to_string();
        let moved = m.current.as_ref().is_some_and(|(_, a)| *a != addr);
        if moved {
            tracing::info!(master = %addr, "Redis Sentinel names a new master; reconnecting");
            inner.generation.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut idle) = inner.idle.lock() {
                idle.clear();
            }
        }
        m.current = Some((client.clone(), addr));
        m.checked = Some(Instant::now());
        Ok(client)
    }
}

/// The MULTI/EXEC block of one change, in Flexisip's commands.
fn transaction(key: &str, change: &Change) -> redis::Pipeline {
    let mut p = redis::pipe();
    p.atomic();
    if change.delete_all {
        p.cmd("DEL").arg(key);
    }
    if !change.set.is_empty() {
        p.cmd("HMSET").arg(key);
        for (k, v) in &change.set {
            p.arg(k).arg(v);
        }
    }
    if !change.del.is_empty() {
        p.cmd("HDEL").arg(key).arg(&change.del);
    }
    if let Some(t) = change.expire_at {
        p.cmd("EXPIREAT").arg(key).arg(t);
    }
    if let Some((channel, message)) = &change.publish {
        p.cmd("PUBLISH").arg(channel).arg(message);
    }
    p
}

/// PUBLISH after a stored write: a failure is logged and counted, not returned, because the
/// registration itself is stored (the subscribers miss one wake-up, as with a lost packet).
async fn publish(conn: &mut MultiplexedConnection, channel: &str, message: &str) {
    let r: Result<i64, RedisError> = redis::cmd("PUBLISH")
        .arg(channel)
        .arg(message)
        .query_async(conn)
        .await;
    if let Err(e) = r {
        metrics::counter!("stg_store_errors_total", "backend" => "redis", "op" => "publish")
            .increment(1);
        tracing::warn!(channel, error = %e, "PUBLISH after a stored registration failed");
    }
}

fn server_error(v: Value) -> Option<RedisError> {
    match v {
        Value::ServerError(e) => Some(e.into()),
        _ => None,
    }
}

/// The connection is of no more use: the server went away or is no longer the master.
fn is_stale(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(
            e.code(),
            Some("READONLY" | "EXECABORT" | "MASTERDOWN" | "LOADING")
        )
}

fn map_err(e: RedisError) -> StoreError {
    let corrupt = e.code() == Some("WRONGTYPE")
        || matches!(e.kind(), ErrorKind::UnexpectedReturnType | ErrorKind::Parse);
    if corrupt {
        StoreError::Corrupt(e.to_string())
    } else {
        StoreError::Unavailable(e.to_string())
    }
}

/// `[:pass@]host:port[,host:port...]/<master>[/db]` (after `redis+sentinel://`).
fn sentinel_client(rest: &str) -> Result<SentinelClient, StoreError> {
    let bad = |why: &str| {
        StoreError::Config(format!(
            "bad Redis Sentinel URL (redis+sentinel://[:pass@]host:port[,host:port...]/master[/db]): {why}"
        ))
    };
    let (auth, rest) = match rest.rsplit_once('@') {
        Some((a, r)) => (Some(a), r),
        None => (None, rest),
    };
    let (hosts, path) = rest.split_once('/').ok_or_else(|| bad("no master name"))?;
    let mut path = path.split('/');
    let master = path
        .next()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| bad("no master name"))?;
    let db = match path.next() {
        None | Some("") => None,
        Some(d) => Some(d.parse::<i64>().map_err(|_| bad("db is not a number"))?),
    };
    if path.next().is_some() {
        return Err(bad("extra path segments"));
    }
    let mut addrs = Vec::new();
    for h in hosts.split(',') {
        let (host, port) = h
            .rsplit_once(':')
            .ok_or_else(|| bad("sentinel without :port"))?;
        let port = port.parse::<u16>().map_err(|_| bad("bad sentinel port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("empty sentinel host"));
        }
        addrs.push(ConnectionAddr::Tcp(host.to_string(), port));
    }
    let mut b = SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)
        .map_err(|e| bad(&e.to_string()))?;
    if let Some(auth) = auth {
        let (user, pass) = auth.split_once(':').unwrap_or(("", auth));
        if !user.is_empty() {
            b = b.set_client_to_redis_username(user);
        }
        b = b.set_client_to_redis_password(pass);
    }
    if let Some(db) = db {
        b = b.set_client_to_redis_db(db);
    }
    b.build().map_err(|e| bad(&e.to_string()))
}

/// A kept message's list element: `<expiry> <nonce>\n<request>`.
fn parse_kept(element: &[u8]) -> Option<(u64, &[u8])> {
    let nl = element.iter().position(|&b| b == b'\n')?;
    let head = std::str::from_utf8(&element[..nl]).ok()?;
    let expiry = head.split(' ').next()?.parse().ok()?;
    Some((expiry, &element[nl + 1..]))
}

/// A little randomness for retry spacing (no RNG dependency: std's hasher keys are random).
fn jitter() -> u64 {
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_parse() {
        assert!(sentinel_client("127.0.0.1:26379/mymaster").is_ok());
        assert!(sentinel_client(":secret@a:1,b:2/mymaster/3").is_ok());
        assert!(sentinel_client("[::1]:26379/m").is_ok());
        for bad in [
            "a:1",
            "a:1/",
            "a/m",
            "a:x/m",
            "a:1/m/x",
            "a:1/m/1/2",
            ":1/m",
        ] {
            assert!(
                matches!(sentinel_client(bad), Err(StoreError::Config(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn transaction_uses_flexisips_commands() {
        let c = Change {
            set: vec![("<urn:uuid:1>".into(), "c1".into())],
            del: vec!["<urn:uuid:2>".into()],
            delete_all: true,
            expire_at: Some(1_800_000_000),
            publish: None,
        };
        let packed =
            String::from_utf8_lossy(&transaction("fs:a@b", &c).get_packed_pipeline()).into_owned();
        let names: Vec<&str> = ["MULTI", "DEL", "HMSET", "HDEL", "EXPIREAT", "EXEC"]
            .into_iter()
            .filter(|n| packed.contains(&format!("\r\n{n}\r\n")))
            .collect();
        let positions: Vec<usize> = names
            .iter()
            .map(|n| packed.find(&format!("\r\n{n}\r\n")).unwrap_or(0))
            .collect();
        let sorted = {
            let mut s = positions.clone();
            s.sort();
            s
        };
        assert_eq!(positions, sorted, "{packed}");
        assert_eq!(names, ["MULTI", "DEL", "HMSET", "HDEL", "EXPIREAT", "EXEC"]);
    }
}
