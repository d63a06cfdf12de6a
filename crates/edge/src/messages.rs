//! Messages kept for sleeping devices: the shell side of the core's [`Output::Store`] and
//! [`Proxy::deliver`](stg_sip_core::proxy::Proxy::deliver).
//!
//! The core decides that a device's copy of a MESSAGE must be kept (its sender got 202, the
//! device could not take it); this task writes it into the binding store (Redis or the
//! embedded file, so it survives a restart), one list per device in arrival order, at most
//! `push.max_stored_messages` per device, each until `push.message_delivery_timeout`.
//!
//! When a device that can be pushed binds on a new connection of this node (or refreshes its
//! binding while this process holds messages for it), its kept messages are handed to the
//! core one at a time, oldest first; the next goes when the device has answered the
//! previous one, so they arrive in order. A message kept just after its device bound again
//! (the bind raced the keep) goes at once, over that binding. Any answer from the device
//! forgets the message (2xx: taken; a refusal it means, 4xx/5xx/6xx: it cannot take it, and
//! it must not hold back the ones after it); 408, 480 or 503 (not reached, stg draining)
//! keeps it for the device's next binding, or sends it again at once when the device bound
//! again meanwhile. Delivery is at least once: a device whose 200 is lost gets it again.
//!
//! One task does it all; keeps have a queue of their own so that a reconnect storm cannot
//! crowd them out. Writes and reads wait for the store (a few ms on Redis); nothing here
//! blocks the core, which hands commands over with `try_send` and counts what does not fit.
//!
//! Metrics: `stg_messages_total{result}` (kept, refused_full, dropped_queue, store_error,
//! delivered, refused_by_device, deferred, bound_dropped).
//!
//! [`Output::Store`]: stg_sip_core::proxy::Output::Store

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use stg_sip_core::proxy::{DeliveryId, Located, StoredMessage};
use stg_sip_msg::StatusCode;
use stg_store::{Bindings, Kept};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::conn::{CoreInput, Shared};

/// Messages to keep waiting for the task; beyond it one is dropped (counted and logged: its
/// sender had 202). Large: keeps come from the PBX's traffic, never from outsiders alone.
const KEEP_QUEUE: usize = 65_536;

/// Binds waiting for the task; beyond it a bind is dropped (counted: the device's kept
/// messages wait for its next binding).
const BIND_QUEUE: usize = 4096;

/// Devices whose last binding is remembered, so that a message kept just after its device
/// bound again goes to it at once.
const MAX_RECENT: usize = 50_000;

/// How long a binding counts as recent.
const RECENT: Duration = Duration::from_secs(600);

/// Devices being delivered to at once; a device beyond it gets its messages at its next
/// binding.
const MAX_ACTIVE: usize = 10_000;

/// Longest wait for the core's answer to one delivery (the non-INVITE transaction ends at
/// timer F, 32 s, well before).
const DELIVERY_WAIT: Duration = Duration::from_secs(40);

struct Bind {
    aor: String,
    binding: Located,
    /// On a new connection (else a refresh on the same one).
    fresh: bool,
}

/// The handle the core and the registrar use.
pub(crate) struct Messages {
    keeps: mpsc::Sender<Box<StoredMessage>>,
    binds: mpsc::Sender<Bind>,
    delivered: mpsc::UnboundedSender<(DeliveryId, StatusCode)>,
    stop: CancellationToken,
}

impl Messages {
    /// Starts the task on `store`.
    pub(crate) fn start(store: Bindings, shared: &Arc<Shared>) -> Self {
        let (keeps, keep_rx) = mpsc::channel(KEEP_QUEUE);
        let (binds, bind_rx) = mpsc::channel(BIND_QUEUE);
        let (delivered, delivered_rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let push = &shared.config.push;
        let task = Task {
            store,
            keep_for: push.message_delivery_timeout,
            max: push.max_stored_messages,
            core_tx: shared.core_tx.clone(),
            active: HashMap::new(),
            by_id: HashMap::new(),
            next_id: 1,
            pending: HashSet::new(),
            recent: HashMap::new(),
        };
        shared
            .tasks
            .spawn(task.run(keep_rx, bind_rx, delivered_rx, stop.clone()));
        Self {
            keeps,
            binds,
            delivered,
            stop,
        }
    }

    /// Keeps a message the core handed over (from the core task: never waits).
    pub(crate) fn keep(&self, m: Box<StoredMessage>) {
        if let Err(e) = self.keeps.try_send(m) {
            let (why, m) = match e {
                mpsc::error::TrySendError::Full(m) => ("queue full", m),
                mpsc::error::TrySendError::Closed(m) => ("stopping", m),
            };
            count("dropped_queue");
            tracing::warn!(aor = %m.aor, call_id = %String::from_utf8_lossy(m.request.call_id()), why, "message not kept");
        }
    }

    /// A device that can be pushed bound on this node (`fresh`: on a new connection): the
    /// messages kept for it go to it.
    pub(crate) fn bound(&self, aor: String, binding: Located, fresh: bool) {
        let bind = Bind {
            aor,
            binding,
            fresh,
        };
        if self.binds.try_send(bind).is_err() {
            count("bound_dropped");
        }
    }

    /// The core's [`Output::Delivered`](stg_sip_core::proxy::Output::Delivered).
    pub(crate) fn delivered(&self, id: DeliveryId, status: StatusCode) {
        let _ = self.delivered.send((id, status));
    }

    /// The node stops: messages handed over already are written, then the task ends.
    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }
}

fn count(result: &'static str) {
    metrics::counter!("stg_messages_total", "result" => result).increment(1);
}

/// The store's name of a device's list.
fn device_of(aor: &str, key: &[u8]) -> String {
    format!("{aor}:{}", String::from_utf8_lossy(key))
}

struct Active {
    binding: Located,
    queue: VecDeque<Kept>,
    /// The message out, the binding's connection it went on, and when to give up on it.
    current: Option<(DeliveryId, Kept, Option<String>, tokio::time::Instant)>,
}

struct Task {
    store: Bindings,
    keep_for: Duration,
    max: usize,
    core_tx: mpsc::Sender<CoreInput>,
    /// Devices being delivered to.
    active: HashMap<String, Active>,
    by_id: HashMap<DeliveryId, String>,
    next_id: u64,
    /// Devices this process kept messages for that were not delivered yet: a refresh on
    /// the same connection (not fresh) checks the store only for them.
    pending: HashSet<String>,
    /// Each device's latest binding on this node.
    recent: HashMap<String, (String, Located, tokio::time::Instant)>,
}

impl Task {
    async fn run(
        mut self,
        mut keeps: mpsc::Receiver<Box<StoredMessage>>,
        mut binds: mpsc::Receiver<Bind>,
        mut delivered: mpsc::UnboundedReceiver<(DeliveryId, StatusCode)>,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                Some((id, status)) = delivered.recv() => self.on_delivered(id, status).await,
                Some(m) = keeps.recv() => self.keep(&m).await,
                Some(b) = binds.recv() => self.on_bound(b).await,
                _ = tick.tick() => self.expire_waits().await,
            }
        }
        // What the core handed over before it stopped is written; deliveries end here.
        while let Ok(m) = keeps.try_recv() {
            self.keep(&m).await;
        }
    }

    async fn keep(&mut self, m: &StoredMessage) {
        let device = device_of(&m.aor, &m.key);
        let expires_at = unix_now() + self.keep_for.as_secs();
        let call_id = String::from_utf8_lossy(m.request.call_id()).into_owned();
        match self
            .store
            .keep_message(&device, expires_at, m.request.raw(), self.max)
            .await
        {
            Ok(true) => {
                count("kept");
                tracing::info!(aor = %m.aor, %call_id, "message kept for a sleeping device");
                if self.pending.len() < MAX_RECENT {
                    self.pending.insert(device.clone());
                }
                // The device may have bound again while its copy was on the way here.
                let back = self
                    .recent
                    .get(&device)
                    .filter(|(_, _, at)| at.elapsed() < RECENT)
                    .map(|(aor, b, _)| (aor.clone(), b.clone()));
                if let Some((aor, binding)) = back {
                    self.deliver_to(aor, binding).await;
                }
            }
            Ok(false) => {
                count("refused_full");
                tracing::warn!(aor = %m.aor, %call_id, max = self.max, "message not kept: the device has too many waiting");
            }
            Err(e) => {
                count("store_error");
                tracing::warn!(aor = %m.aor, %call_id, error = %e, "message not kept");
            }
        }
    }

    async fn on_bound(&mut self, b: Bind) {
        let device = device_of(&b.aor, &b.binding.key);
        self.remember(&device, &b);
        if !b.fresh && !self.pending.contains(&device) {
            return;
        }
        self.deliver_to(b.aor, b.binding).await;
    }

    fn remember(&mut self, device: &str, b: &Bind) {
        if self.recent.len() >= MAX_RECENT && !self.recent.contains_key(device) {
            self.recent.retain(|_, (_, _, at)| at.elapsed() < RECENT);
            if self.recent.len() >= MAX_RECENT {
                return;
            }
        }
        self.recent.insert(
            device.to_owned(),
            (
                b.aor.clone(),
                b.binding.clone(),
                tokio::time::Instant::now(),
            ),
        );
    }

    /// Starts delivering the device's kept messages over `binding`.
    async fn deliver_to(&mut self, aor: String, binding: Located) {
        let device = device_of(&aor, &binding.key);
        if let Some(a) = self.active.get_mut(&device) {
            // Already delivering: the rest goes over the newest connection.
            a.binding = binding;
            return;
        }
        if self.active.len() >= MAX_ACTIVE {
            count("deferred");
            return;
        }
        let queue: VecDeque<Kept> = match self.store.kept_messages(&device, unix_now()).await {
            Ok(q) => q.into(),
            Err(e) => {
                tracing::warn!(%aor, error = %e, "kept messages not read");
                return;
            }
        };
        if queue.is_empty() {
            self.pending.remove(&device);
            return;
        }
        tracing::info!(%aor, waiting = queue.len(), "delivering kept messages");
        self.active.insert(
            device.clone(),
            Active {
                binding,
                queue,
                current: None,
            },
        );
        self.next(&device).await;
    }

    /// Hands the device's next message to the core, or ends its delivery.
    async fn next(&mut self, device: &str) {
        let Some(a) = self.active.get_mut(device) else {
            return;
        };
        let Some(kept) = a.queue.pop_front() else {
            self.active.remove(device);
            self.pending.remove(device);
            return;
        };
        let id = DeliveryId(self.next_id);
        self.next_id += 1;
        let input = CoreInput::Deliver {
            id,
            request: Bytes::from(kept.request.clone()),
            binding: a.binding.clone(),
        };
        a.current = Some((
            id,
            kept,
            a.binding.conn.clone(),
            tokio::time::Instant::now() + DELIVERY_WAIT,
        ));
        self.by_id.insert(id, device.to_owned());
        if self.core_tx.send(input).await.is_err() {
            // The core is gone: the node stops; the message stays kept.
            self.by_id.remove(&id);
            self.active.remove(device);
        }
    }

    async fn on_delivered(&mut self, id: DeliveryId, status: StatusCode) {
        let Some(device) = self.by_id.remove(&id) else {
            return;
        };
        let Some(a) = self.active.get_mut(&device) else {
            return;
        };
        let Some((_, kept, sent_on, _)) = a.current.take().filter(|(cur, ..)| *cur == id) else {
            return;
        };
        // Not reached now (gone again, timed out, not connected here, stg draining): kept for
        // next time, unless the device bound again meanwhile: then it goes there. Any other
        // answer is the device's own (a refusal it means): a message it cannot take must not
        // hold back the ones after it.
        if matches!(status.0, 408 | 480 | 503) {
            if a.binding.conn != sent_on {
                a.queue.push_front(kept);
                self.next(&device).await;
                return;
            }
            count("deferred");
            self.active.remove(&device);
            return;
        }
        count(if status.is_success() {
            "delivered"
        } else {
            "refused_by_device"
        });
        if let Err(e) = self.store.forget_message(&device, &kept).await {
            tracing::warn!(%device, error = %e, "delivered message not forgotten: it may come again");
        }
        self.next(&device).await;
    }

    /// Deliveries the core never answered (it stopped, or a bug): given up, kept.
    async fn expire_waits(&mut self) {
        let now = tokio::time::Instant::now();
        let stale: Vec<String> = self
            .active
            .iter()
            .filter(|(_, a)| a.current.as_ref().is_some_and(|(.., t)| *t <= now))
            .map(|(d, _)| d.clone())
            .collect();
        for d in stale {
            if let Some((id, ..)) = self.active.remove(&d).and_then(|a| a.current) {
                self.by_id.remove(&id);
            }
            count("deferred");
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
