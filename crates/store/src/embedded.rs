//! The embedded backend: one redb file, one table, key = AOR, value = the encoded hash and
//! its expiry. For a single node: nothing external, survives restarts.
//!
//! Updates take an async mutex around read → `f` → write, so `f` runs once and on the async
//! side (it need not be `'static`), while redb's own work runs on the blocking pool. redb's
//! write transaction makes each write atomic and durable; the mutex makes the
//! read-modify-write atomic (only this process can open the file: redb locks it).
//!
//! Measured (bench/registrar.sh): ~300 µs of CPU per REGISTER with 100k AORs, and one
//! update at a time. An fsync per commit is not what costs (`Durability::Eventual` measured
//! no better); the per-commit B-tree copy-on-write and the global serialization do. The way
//! out is an in-memory index as the primary copy with batched commits behind it.

// redb's error is large (160 bytes); it only travels back from the blocking pool once, on
// failure, so boxing it at every `?` would buy nothing.
#![allow(clippy::result_large_err)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use redb::{Database, ReadableTable, TableDefinition};

use crate::{glob, unix_now, Change, Health, Record, StoreError};

const TABLE: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("bindings");

/// Messages kept for devices: key (device, sequence number), value = expiry (unix seconds,
/// 8 bytes big-endian) then the request.
const MESSAGES: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("messages");

/// Format version byte at the start of each value.
const FORMAT: u8 = 1;

/// Seconds between two sweeps of expired records (done by an update that finds it due).
const SWEEP_EVERY: u64 = 300;

#[derive(Clone)]
pub(crate) struct Embedded {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    path: PathBuf,
    write_lock: tokio::sync::Mutex<()>,
    last_sweep: AtomicU64,
    health: Health,
}

impl Embedded {
    pub(crate) async fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let path = data_dir.join("bindings.redb");
        let p = path.clone();
        let db = tokio::task::spawn_blocking(move || -> Result<Database, String> {
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
            }
            let db = Database::create(&p).map_err(|e| e.to_string())?;
            // Created up front so that readers never meet a missing table.
            let tx = db.begin_write().map_err(|e| e.to_string())?;
            tx.open_table(TABLE).map_err(|e| e.to_string())?;
            tx.open_table(MESSAGES).map_err(|e| e.to_string())?;
            tx.commit().map_err(|e| e.to_string())?;
            Ok(db)
        })
        .await
        .map_err(|e| StoreError::Config(format!("{}: {e}", path.display())))?
        .map_err(|e| StoreError::Config(format!("cannot open {}: {e}", path.display())))?;
        Ok(Self {
            inner: Arc::new(Inner {
                db: Arc::new(db),
                path,
                write_lock: tokio::sync::Mutex::new(()),
                last_sweep: AtomicU64::new(0),
                health: Health::default(),
            }),
        })
    }

    pub(crate) async fn update<T, E>(
        &self,
        aor: &str,
        mut f: impl FnMut(&Record) -> Result<(Change, T), E> + Send,
    ) -> Result<Result<T, E>, StoreError> {
        let _serial = self.inner.write_lock.lock().await;
        let now = unix_now();
        let (record, expire) = self.read(aor, now).await?;
        let (change, out) = match f(&record) {
            Ok(x) => x,
            Err(e) => return Ok(Err(e)),
        };
        if change.is_empty() {
            return Ok(Ok(out));
        }
        let (record, expire) = apply(record, expire, &change);
        let value = (!record.fields.is_empty() && expire.is_none_or(|t| t > now))
            .then(|| encode(&record, expire));
        let sweep = self.sweep_due(now);
        let key = aor.to_string();
        self.blocking(move |db| {
            let tx = db.begin_write()?;
            {
                let mut table = tx.open_table(TABLE)?;
                match &value {
                    Some(v) => {
                        table.insert(key.as_str(), v.as_slice())?;
                    }
                    None => {
                        table.remove(key.as_str())?;
                    }
                }
                if sweep {
                    let mut expired = Vec::new();
                    for item in table.iter()? {
                        let (k, v) = item?;
                        if expire_of(v.value()).is_some_and(|t| t <= now) {
                            expired.push(k.value().to_string());
                        }
                    }
                    for k in expired {
                        table.remove(k.as_str())?;
                    }
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await?;
        Ok(Ok(out))
    }

    pub(crate) async fn get(&self, aor: &str) -> Result<Record, StoreError> {
        Ok(self.read(aor, unix_now()).await?.0)
    }

    pub(crate) async fn scan(
        &self,
        pattern: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let pattern = pattern.to_string();
        let now = unix_now();
        self.blocking(move |db| {
            let tx = db.begin_read()?;
            let table = tx.open_table(TABLE)?;
            let mut out = Vec::new();
            for item in table.iter()? {
                if out.len() >= limit {
                    break;
                }
                let (k, v) = item?;
                let live = expire_of(v.value()).is_none_or(|t| t > now);
                if live && glob::matches(&pattern, k.value()) {
                    out.push(k.value().to_string());
                }
            }
            Ok(out)
        })
        .await
    }

    pub(crate) async fn remove(&self, aor: &str, field: Option<&str>) -> Result<bool, StoreError> {
        let _serial = self.inner.write_lock.lock().await;
        let now = unix_now();
        let (mut record, expire) = self.read(aor, now).await?;
        let removed = match field {
            None => !record.fields.is_empty(),
            Some(f) => record.fields.remove(f).is_some(),
        };
        if !removed {
            return Ok(false);
        }
        let value = (field.is_some() && !record.fields.is_empty()).then(|| encode(&record, expire));
        let key = aor.to_string();
        self.blocking(move |db| {
            let tx = db.begin_write()?;
            {
                let mut table = tx.open_table(TABLE)?;
                match &value {
                    Some(v) => table.insert(key.as_str(), v.as_slice()).map(drop)?,
                    None => table.remove(key.as_str()).map(drop)?,
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await?;
        Ok(true)
    }

    /// Keeps `request` for `device` until `expires_at`, after the device's other messages;
    /// false when the device has `max` already.
    pub(crate) async fn keep_message(
        &self,
        device: &str,
        expires_at: u64,
        request: &[u8],
        max: usize,
    ) -> Result<bool, StoreError> {
        let _serial = self.inner.write_lock.lock().await;
        let device = device.to_string();
        let mut value = Vec::with_capacity(8 + request.len());
        value.extend_from_slice(&expires_at.to_be_bytes());
        value.extend_from_slice(request);
        let now = unix_now();
        self.blocking(move |db| {
            let tx = db.begin_write()?;
            let kept = {
                let mut table = tx.open_table(MESSAGES)?;
                let range = (device.as_str(), 0)..=(device.as_str(), u64::MAX);
                let mut live = 0usize;
                let mut expired = Vec::new();
                let mut last = 0u64;
                for item in table.range(range)? {
                    let (k, v) = item?;
                    let seq = k.value().1;
                    last = seq;
                    if message_expiry(v.value()).is_none_or(|t| t <= now) {
                        expired.push(seq);
                    } else {
                        live += 1;
                    }
                }
                for seq in expired {
                    table.remove((device.as_str(), seq))?;
                }
                if live >= max {
                    false
                } else {
                    table.insert((device.as_str(), last + 1), value.as_slice())?;
                    true
                }
            };
            tx.commit()?;
            Ok(kept)
        })
        .await
    }

    /// The messages kept for `device` that have not expired, oldest first.
    pub(crate) async fn kept_messages(
        &self,
        device: &str,
        now: u64,
    ) -> Result<Vec<crate::Kept>, StoreError> {
        let device = device.to_string();
        self.blocking(move |db| {
            let tx = db.begin_read()?;
            let table = tx.open_table(MESSAGES)?;
            let range = (device.as_str(), 0)..=(device.as_str(), u64::MAX);
            let mut out = Vec::new();
            for item in table.range(range)? {
                let (k, v) = item?;
                let v = v.value();
                match message_expiry(v) {
                    Some(t) if t > now => out.push(crate::Kept {
                        handle: k.value().1.to_be_bytes().to_vec(),
                        expires_at: t,
                        request: v[8..].to_vec(),
                    }),
                    _ => {}
                }
            }
            Ok(out)
        })
        .await
    }

    /// Forgets one kept message; true if it was there.
    pub(crate) async fn forget_message(
        &self,
        device: &str,
        kept: &crate::Kept,
    ) -> Result<bool, StoreError> {
        let Ok(seq) = <[u8; 8]>::try_from(kept.handle.as_slice()) else {
            return Ok(false);
        };
        let seq = u64::from_be_bytes(seq);
        let _serial = self.inner.write_lock.lock().await;
        let device = device.to_string();
        self.blocking(move |db| {
            let tx = db.begin_write()?;
            let removed = {
                let mut table = tx.open_table(MESSAGES)?;
                let removed = table.remove((device.as_str(), seq))?.is_some();
                removed
            };
            tx.commit()?;
            Ok(removed)
        })
        .await
    }

    /// The stored hash and expiry of `aor`; an expired record reads as absent.
    async fn read(&self, aor: &str, now: u64) -> Result<(Record, Option<u64>), StoreError> {
        let key = aor.to_string();
        let raw = self
            .blocking(move |db| {
                let tx = db.begin_read()?;
                let table = tx.open_table(TABLE)?;
                let v = table.get(key.as_str())?.map(|g| g.value().to_vec());
                Ok(v)
            })
            .await?;
        let Some(raw) = raw else {
            return Ok((Record::default(), None));
        };
        let (record, expire) = decode(&raw).ok_or_else(|| {
            StoreError::Corrupt(format!("record of {aor} in {}", self.inner.path.display()))
        })?;
        if expire.is_some_and(|t| t <= now) {
            return Ok((Record::default(), None));
        }
        Ok((record, expire))
    }

    fn sweep_due(&self, now: u64) -> bool {
        let last = self.inner.last_sweep.load(Ordering::Relaxed);
        now.saturating_sub(last) >= SWEEP_EVERY
            && self
                .inner
                .last_sweep
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Runs redb work on the blocking pool; its errors are the environment's (disk full,
    /// I/O): `Unavailable`, logged once per outage.
    async fn blocking<R: Send + 'static>(
        &self,
        work: impl FnOnce(&Database) -> Result<R, redb::Error> + Send + 'static,
    ) -> Result<R, StoreError> {
        let db = Arc::clone(&self.inner.db);
        let r = match tokio::task::spawn_blocking(move || work(&db)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match r {
            Ok(r) => {
                self.inner.health.ok("embedded");
                Ok(r)
            }
            Err(e) => {
                let e = format!("{}: {e}", self.inner.path.display());
                self.inner.health.failed("embedded", &e);
                Err(StoreError::Unavailable(e))
            }
        }
    }
}

/// The expiry of a kept message's value; `None` if it is too short to hold one.
fn message_expiry(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.get(..8)?.try_into().ok()?))
}

/// The hash and expiry after `change`, with Redis' semantics (see [`Change`]).
fn apply(mut record: Record, mut expire: Option<u64>, change: &Change) -> (Record, Option<u64>) {
    if change.delete_all {
        record.fields.clear();
        expire = None;
    }
    for (k, v) in &change.set {
        record.fields.insert(k.clone(), v.clone());
    }
    for k in &change.del {
        record.fields.remove(k);
    }
    if change.expire_at.is_some() {
        expire = change.expire_at;
    }
    if record.fields.is_empty() {
        expire = None;
    }
    (record, expire)
}

// Value layout: FORMAT, expiry (u64 LE, 0 = none), field count (u32 LE), then per field
// key length (u32 LE), key bytes, value length (u32 LE), value bytes.

fn encode(record: &Record, expire: Option<u64>) -> Vec<u8> {
    let size: usize = record
        .fields
        .iter()
        .map(|(k, v)| 8 + k.len() + v.len())
        .sum();
    let mut out = Vec::with_capacity(13 + size);
    out.push(FORMAT);
    out.extend_from_slice(&expire.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&len32(record.fields.len()).to_le_bytes());
    for (k, v) in &record.fields {
        for s in [k, v] {
            out.extend_from_slice(&len32(s.len()).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
    out
}

/// Field counts and string lengths fit in u32: a SIP message, and so any field, is far
/// smaller than 4 GiB; saturating keeps this panic-free regardless (decode then fails).
fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn expire_of(raw: &[u8]) -> Option<u64> {
    let b: [u8; 8] = raw.get(1..9)?.try_into().ok()?;
    let t = u64::from_le_bytes(b);
    (t != 0).then_some(t)
}

fn decode(raw: &[u8]) -> Option<(Record, Option<u64>)> {
    let mut r = Reader(raw);
    if r.take(1)? != [FORMAT] {
        return None;
    }
    let expire = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
    let n = r.u32()?;
    let mut record = Record::default();
    for _ in 0..n {
        let k = r.string()?;
        let v = r.string()?;
        record.fields.insert(k, v);
    }
    if !r.0.is_empty() {
        return None;
    }
    Some((record, (expire != 0).then_some(expire)))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn string(&mut self) -> Option<String> {
        let n = usize::try_from(self.u32()?).ok()?;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(pairs: &[(&str, &str)]) -> Record {
        Record {
            fields: pairs
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
        }
    }

    #[test]
    fn encoding_round_trips_and_rejects_garbage() {
        let r = rec(&[("<urn:uuid:1>", "\"A\" <sip:a@b>;expires=60"), ("", "")]);
        for exp in [None, Some(1_700_000_000)] {
            let raw = encode(&r, exp);
            assert_eq!(decode(&raw), Some((r.clone(), exp)));
            assert_eq!(expire_of(&raw), exp);
            for cut in 0..raw.len() {
                assert_eq!(decode(&raw[..cut]), None, "truncated at {cut}");
            }
        }
        assert_eq!(decode(&[2, 0, 0]), None);
    }

    #[test]
    fn apply_follows_redis_semantics() {
        let base = rec(&[("a", "1"), ("b", "2")]);
        let c = Change {
            set: vec![("c".into(), "3".into())],
            del: vec!["a".into()],
            ..Change::default()
        };
        assert_eq!(
            apply(base.clone(), Some(9), &c),
            (rec(&[("b", "2"), ("c", "3")]), Some(9))
        );
        let c = Change {
            delete_all: true,
            set: vec![("z".into(), "1".into())],
            ..Change::default()
        };
        assert_eq!(apply(base.clone(), Some(9), &c), (rec(&[("z", "1")]), None));
        let c = Change {
            del: vec!["a".into(), "b".into()],
            expire_at: Some(5),
            ..Change::default()
        };
        assert_eq!(apply(base, Some(9), &c), (Record::default(), None));
    }
}
