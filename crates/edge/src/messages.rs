//! Messages kept for sleeping devices: the shell side of the core's [`Output::Store`] and
//! [`Proxy::deliver`](stg_sip_core::proxy::Proxy::deliver).
//!
//! The core decides that a device's copy of a MESSAGE must be kept (its sender got 202, the
//! device could not take it); this task writes it into the binding store (Redis or the
//! embedded file, so it survives a restart), one list per device in arrival order, at most
//! `push.max_stored_messages` per device, each until `push.message_delivery_timeout`.
//!
//! When a device binds on a new connection of this node, its kept messages are handed to
//! the core one at a time, oldest first; the next goes when the device has answered the
//! previous one, so they arrive in order. A 2xx (or a refusal the device means: 4xx, 6xx)
//! forgets the message; a device that cannot be reached (408, 480, 5xx) keeps it for its
//! next binding. Delivery is at least once: a device whose 200 is lost gets it again.
//!
//! One task does it all in order, so a message kept before its device binds is found by
//! that bind. Writes and reads wait for the store (a few ms on Redis); nothing here blocks
//! the core, which hands commands over with `try_send` and counts what does not fit.
//!
//! Metrics: `stg_messages_total{result}` (kept, refused_full, dropped_queue, store_error,
//! delivered, refused_by_device, deferred, expired_on_load).
//!
//! [`Output::Store`]: stg_sip_core::proxy::Output::Store

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use stg_sip_core::proxy::{DeliveryId, Located, StoredMessage};
use stg_sip_msg::StatusCode;
use stg_store::{Bindings, Kept};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::conn::{CoreInput, Shared};

/// Keeps and binds waiting for the task; beyond it a message to keep is dropped (counted
/// and logged: its sender had 202).
const QUEUE: usize = 4096;

/// Devices being delivered to at once; a device beyond it gets its messages at its next
/// binding.
const MAX_ACTIVE: usize = 10_000;

/// Longest wait for the core's answer to one delivery (the non-INVITE transaction ends at
/// timer F, 32 s, well before).
const DELIVERY_WAIT: Duration = Duration::from_secs(40);

enum Cmd {
    Keep(Box<StoredMessage>),
    Bound { aor: String, binding: Located },
}

/// The handle the core and the registrar use.
pub(crate) struct Messages {
    cmds: mpsc::Sender<Cmd>,
    delivered: mpsc::UnboundedSender<(DeliveryId, StatusCode)>,
    stop: CancellationToken,
}

impl Messages {
    /// Starts the task on `store`.
    pub(crate) fn start(store: Bindings, shared: &Arc<Shared>) -> Self {
        let (cmds, cmd_rx) = mpsc::channel(QUEUE);
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
        };
        shared
            .tasks
            .spawn(task.run(cmd_rx, delivered_rx, stop.clone()));
        Self {
            cmds,
            delivered,
            stop,
        }
    }

    /// Keeps a message the core handed over (from the core task: never waits).
    pub(crate) fn keep(&self, m: Box<StoredMessage>) {
        if let Err(e) = self.cmds.try_send(Cmd::Keep(m)) {
            let (mpsc::error::TrySendError::Full(Cmd::Keep(m))
            | mpsc::error::TrySendError::Closed(Cmd::Keep(m))) = e
            else {
                return;
            };
            count("dropped_queue");
            tracing::warn!(aor = %m.aor, call_id = %String::from_utf8_lossy(m.request.call_id()), "message not kept: queue full");
        }
    }

    /// A device bound on a new connection of this node: its kept messages go to it.
    pub(crate) fn bound(&self, aor: String, binding: Located) {
        if self.cmds.try_send(Cmd::Bound { aor, binding }).is_err() {
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
    current: Option<(DeliveryId, Kept, tokio::time::Instant)>,
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
}

impl Task {
    async fn run(
        mut self,
        mut cmds: mpsc::Receiver<Cmd>,
        mut delivered: mpsc::UnboundedReceiver<(DeliveryId, StatusCode)>,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                Some((id, status)) = delivered.recv() => self.on_delivered(id, status).await,
                Some(cmd) = cmds.recv() => self.on_cmd(cmd).await,
                _ = tick.tick() => self.expire_waits().await,
            }
        }
        // What the core handed over before it stopped is written; deliveries end here.
        while let Ok(cmd) = cmds.try_recv() {
            if let Cmd::Keep(m) = cmd {
                self.keep(&m).await;
            }
        }
    }

    async fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Keep(m) => self.keep(&m).await,
            Cmd::Bound { aor, binding } => self.on_bound(aor, binding).await,
        }
    }

    async fn keep(&self, m: &StoredMessage) {
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

    async fn on_bound(&mut self, aor: String, binding: Located) {
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
            return;
        };
        let id = DeliveryId(self.next_id);
        self.next_id += 1;
        let input = CoreInput::Deliver {
            id,
            request: Bytes::from(kept.request.clone()),
            binding: a.binding.clone(),
        };
        a.current = Some((id, kept, tokio::time::Instant::now() + DELIVERY_WAIT));
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
        let Some((_, kept, _)) = self
            .active
            .get_mut(&device)
            .and_then(|a| a.current.take())
            .filter(|(cur, _, _)| *cur == id)
        else {
            return;
        };
        // Not reached now (gone again, timed out, not connected here): kept for next time.
        let unreachable = matches!(status.0, 408 | 480) || status.class() == 5;
        if unreachable {
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
            .filter(|(_, a)| a.current.as_ref().is_some_and(|(_, _, t)| *t <= now))
            .map(|(d, _)| d.clone())
            .collect();
        for d in stale {
            if let Some((id, _, _)) = self.active.remove(&d).and_then(|a| a.current) {
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
