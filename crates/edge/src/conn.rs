//! What every transport task shares: the way into the proxy core and the connection table.
//!
//! The table gives each stream connection a [`ConnId`] (never reused in a process) and the
//! sender of its write queue, indexed both by id (flow tokens name a connection) and by
//! `(transport, remote address)` (responses and requests to an address reuse a live
//! connection, RFC 3261 §18). It also enforces the per-source connection limit.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use stg_sip_core::net::{ConnId, Flow, ListenerId, Side, Transport};
use stg_sip_core::proxy::{Inbound, SendRef};
use stg_sip_msg::framer::FramerLimits;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How many messages may wait in one connection's write queue before sends to it fail:
/// a peer that stops reading must not make the node buffer without bound.
pub(crate) const WRITE_QUEUE: usize = 512;

/// Input for the core task.
#[derive(Debug)]
pub(crate) enum CoreInput {
    /// One SIP message (datagram or frame).
    Message { inbound: Inbound, bytes: Bytes },
    /// A send the core asked for could not be done.
    SendFailed(SendRef),
    /// An RFC 3263 answer.
    Resolved {
        id: stg_sip_core::proxy::ResolveId,
        result: Vec<(Transport, SocketAddr)>,
    },
}

/// A connection as its task knows it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnMeta {
    pub(crate) id: ConnId,
    pub(crate) listener: ListenerId,
    pub(crate) transport: Transport,
    /// The peer: the real client after PROXY protocol.
    pub(crate) remote: SocketAddr,
    pub(crate) side: Side,
}

impl ConnMeta {
    pub(crate) fn flow(&self) -> Flow {
        Flow {
            listener: self.listener,
            transport: self.transport,
            remote: self.remote,
            conn: Some(self.id),
        }
    }
}

struct Entry {
    tx: mpsc::Sender<Bytes>,
}

#[derive(Default)]
struct Table {
    by_id: HashMap<ConnId, Entry>,
    by_addr: HashMap<(Transport, SocketAddr), ConnId>,
    per_source: HashMap<IpAddr, usize>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    PerSourceLimit,
}

/// State shared by the transport tasks and the core task.
pub(crate) struct Shared {
    pub(crate) core_tx: mpsc::Sender<CoreInput>,
    pub(crate) config: Arc<stg_config::Config>,
    pub(crate) framer_limits: FramerLimits,
    /// Cancelled when the node drains: accept loops stop, connections finish what they have.
    pub(crate) shutdown: CancellationToken,
    /// The certificate store, when the node has TLS or WSS listeners.
    pub(crate) tls: Option<Arc<crate::tls::TlsStore>>,
    table: Mutex<Table>,
    next_conn: AtomicU64,
}

impl Shared {
    pub(crate) fn new(
        core_tx: mpsc::Sender<CoreInput>,
        config: Arc<stg_config::Config>,
        shutdown: CancellationToken,
        tls: Option<Arc<crate::tls::TlsStore>>,
    ) -> Self {
        let framer_limits = FramerLimits {
            max_message_size: config.sip.max_message_size,
            max_headers: config.sip.max_headers,
            max_body_size: config.sip.max_body_size,
        };
        Self {
            core_tx,
            config,
            framer_limits,
            shutdown,
            tls,
            table: Mutex::new(Table::default()),
            next_conn: AtomicU64::new(1),
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // A panic while holding this lock is a bug elsewhere; the table itself stays
        // consistent (every mutation is a few map operations), so keep serving.
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn idle_timeout(&self) -> Duration {
        self.config.sip.idle_timeout
    }

    /// The side of a peer: the listener's, or Inside for a trusted source.
    pub(crate) fn side_of(&self, listener_side: Side, remote: IpAddr) -> Side {
        if listener_side == Side::Inside || self.config.sip.is_trusted(remote) {
            Side::Inside
        } else {
            Side::Outside
        }
    }

    /// A fresh connection id.
    pub(crate) fn next_conn_id(&self) -> ConnId {
        ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed))
    }

    /// Admits a connection from `remote` before anything else is done with it.
    pub(crate) fn admit(&self, remote: IpAddr) -> Result<(), Refused> {
        let limit = self.config.sip.max_connections_per_source;
        let mut t = self.table();
        let n = t.per_source.entry(remote).or_default();
        if *n >= limit {
            return Err(Refused::PerSourceLimit);
        }
        *n += 1;
        Ok(())
    }

    /// Undoes [`Self::admit`] for a connection that never registered or has ended.
    pub(crate) fn release(&self, remote: IpAddr) {
        let mut t = self.table();
        if let Some(n) = t.per_source.get_mut(&remote) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                t.per_source.remove(&remote);
            }
        }
    }

    /// Registers a connection; returns the receiver of the bytes to write to it.
    pub(crate) fn register(&self, meta: ConnMeta) -> mpsc::Receiver<Bytes> {
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let mut t = self.table();
        t.by_addr.insert((meta.transport, meta.remote), meta.id);
        t.by_id.insert(meta.id, Entry { tx });
        metrics::gauge!("stg_connections", "transport" => meta.transport.param()).increment(1.0);
        rx
    }

    /// Removes a connection (its task ended).
    pub(crate) fn unregister(&self, meta: &ConnMeta) {
        let mut t = self.table();
        if t.by_id.remove(&meta.id).is_some() {
            metrics::gauge!("stg_connections", "transport" => meta.transport.param())
                .decrement(1.0);
        }
        if t.by_addr.get(&(meta.transport, meta.remote)) == Some(&meta.id) {
            t.by_addr.remove(&(meta.transport, meta.remote));
        }
        drop(t);
        self.release(meta.remote.ip());
    }

    /// Queues bytes on a connection: the one named, or any live one to the address.
    /// `Err` when there is none or its queue is full.
    pub(crate) fn send_stream(&self, flow: &Flow, bytes: Bytes) -> Result<(), Bytes> {
        let t = self.table();
        let id = match flow.conn {
            Some(id) => Some(id),
            None => t.by_addr.get(&(flow.transport, flow.remote)).copied(),
        };
        let Some(entry) = id.and_then(|id| t.by_id.get(&id)) else {
            return Err(bytes);
        };
        entry.tx.try_send(bytes).map_err(|e| match e {
            mpsc::error::TrySendError::Full(b) | mpsc::error::TrySendError::Closed(b) => b,
        })
    }

    /// Number of live connections.
    pub(crate) fn connection_count(&self) -> usize {
        self.table().by_id.len()
    }

    /// Hands one inbound SIP message to the core. Waits when the core is busy (backpressure
    /// on that one connection or socket, not a drop).
    pub(crate) async fn deliver(&self, meta: &ConnMeta, bytes: Bytes) {
        let inbound = Inbound {
            flow: meta.flow(),
            side: meta.side,
        };
        let _ = self
            .core_tx
            .send(CoreInput::Message { inbound, bytes })
            .await;
    }

    /// Whether a connection is still in the table.
    #[cfg(test)]
    pub(crate) fn is_registered(&self, id: ConnId) -> bool {
        self.table().by_id.contains_key(&id)
    }
}
