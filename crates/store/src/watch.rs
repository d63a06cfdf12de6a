//! Bind notifications from other nodes: Redis pub/sub on `<user>@<host>`.
//!
//! After every bind, a node (stg or Flexisip) publishes the binding's unique id on the AOR's
//! channel. A node that holds a call for a sleeping device subscribes to that AOR while it
//! waits, so the device may wake on any node of the cluster: the message says "look again",
//! and the watcher's owner reads the record and routes the call along the new binding's Path.
//!
//! One pub/sub connection per node, subscriptions counted per AOR (two calls to one AOR are
//! one subscription), at most [`MAX_WATCHED`] AORs. A lost connection is re-opened (after a
//! Sentinel failover, on the new master) and every subscription re-sent; a notification
//! published while it was down is lost, which costs the call a wait until the device's
//! next REGISTER or the fork timeout (as on Flexisip).

use std::collections::HashMap;
use std::future::poll_fn;
use std::time::Duration;

use futures_util::Stream;
use tokio::sync::mpsc;

use crate::redis_backend::RedisStore;

/// Most AORs watched at once; beyond it a watch is refused (counted), and the call relies on
/// devices that bind on this node.
pub const MAX_WATCHED: usize = 100_000;

/// A bind published on another node (or this one): the AOR and the binding's unique id as
/// published (`+sip.instance`, `pn-tok`, or empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bound {
    pub aor: String,
    pub uid: String,
}

enum Cmd {
    Watch(String),
    Unwatch(String),
}

/// Handle to the watcher task; cheap to clone. Dropping every handle ends the task.
#[derive(Clone, Debug)]
pub struct Watcher {
    tx: mpsc::Sender<Cmd>,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Watch(a) => write!(f, "watch {a}"),
            Self::Unwatch(a) => write!(f, "unwatch {a}"),
        }
    }
}

impl Watcher {
    /// Starts watching `aor` (counted: as many [`Self::unwatch`] end it).
    pub fn watch(&self, aor: &str) {
        if self.tx.try_send(Cmd::Watch(aor.to_owned())).is_err() {
            metrics::counter!("stg_store_watch_refused_total").increment(1);
        }
    }

    /// Stops one watch of `aor`.
    pub fn unwatch(&self, aor: &str) {
        // Never dropped for a full queue: a lost unwatch would leak the subscription.
        let tx = self.tx.clone();
        let cmd = Cmd::Unwatch(aor.to_owned());
        if let Err(mpsc::error::TrySendError::Full(cmd)) = tx.try_send(cmd) {
            tokio::spawn(async move {
                let _ = tx.send(cmd).await;
            });
        }
    }
}

pub(crate) fn start(store: RedisStore, out: mpsc::Sender<Bound>) -> Watcher {
    let (tx, rx) = mpsc::channel(4096);
    tokio::spawn(run(store, rx, out));
    Watcher { tx }
}

async fn run(store: RedisStore, mut rx: mpsc::Receiver<Cmd>, out: mpsc::Sender<Bound>) {
    let mut watched: HashMap<String, usize> = HashMap::new();
    let mut backoff = Duration::from_millis(100);
    loop {
        let pubsub = match store.client().await {
            Ok(client) => {
                match tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub()).await
                {
                    Ok(Ok(p)) => Some(p),
                    _ => None,
                }
            }
            Err(_) => None,
        };
        let Some(pubsub) = pubsub else {
            // Keep counting watches while Redis is away.
            let sleep = tokio::time::sleep(backoff);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    () = &mut sleep => break,
                    cmd = rx.recv() => match cmd {
                        Some(c) => apply(&mut watched, c),
                        None => return,
                    },
                }
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        };
        backoff = Duration::from_millis(100);
        let (mut sink, mut stream) = pubsub.split();
        let mut ok = true;
        let channels: Vec<&String> = watched.keys().collect();
        if !channels.is_empty() && sink.subscribe(&channels).await.is_err() {
            ok = false;
        }
        while ok {
            tokio::select! {
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { return };
                    let r = match &cmd {
                        Cmd::Watch(aor) if !watched.contains_key(aor) => {
                            if watched.len() >= MAX_WATCHED {
                                metrics::counter!("stg_store_watch_refused_total").increment(1);
                                continue;
                            }
                            sink.subscribe(aor).await
                        }
                        Cmd::Unwatch(aor) if watched.get(aor) == Some(&1) => sink.unsubscribe(aor).await,
                        _ => Ok(()),
                    };
                    apply(&mut watched, cmd);
                    ok = r.is_ok();
                }
                msg = poll_fn(|cx| Pin::new(&mut stream).poll_next(cx)) => {
                    let Some(msg) = msg else { break };
                    let aor = msg.get_channel_name().to_owned();
                    let uid = String::from_utf8_lossy(msg.get_payload_bytes()).into_owned();
                    if out.try_send(Bound { aor, uid }).is_err() {
                        metrics::counter!("stg_store_watch_dropped_total").increment(1);
                    }
                }
            }
        }
        metrics::counter!("stg_store_errors_total", "backend" => "redis", "op" => "subscribe")
            .increment(1);
    }
}

fn apply(watched: &mut HashMap<String, usize>, cmd: Cmd) {
    match cmd {
        Cmd::Watch(aor) => {
            if watched.len() < MAX_WATCHED || watched.contains_key(&aor) {
                *watched.entry(aor).or_default() += 1;
            }
        }
        Cmd::Unwatch(aor) => {
            if let Some(n) = watched.get_mut(&aor) {
                *n -= 1;
                if *n == 0 {
                    watched.remove(&aor);
                }
            }
        }
    }
    metrics::gauge!("stg_store_watched_aors").set(watched.len() as f64);
}
