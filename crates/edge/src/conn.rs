//! What every transport task shares: the way into the proxy core and the connection table.
//!
//! The table gives each stream connection a [`ConnId`] (never reused in a process) and the
//! sender of its write queue, indexed both by id (flow tokens name a connection) and by
//! `(transport, remote address)` (responses and requests to an address reuse a live
//! connection, RFC 3261 §18). It also enforces the connection caps (in all, and per source:
//! an IPv4 address or an IPv6 prefix), keeps the outbound connections being opened (sends to
//! one destination wait for one connection), and holds the log throttle.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use stg_sip_core::net::{ConnId, Flow, ListenerId, Side, Transport};
use stg_sip_core::proxy::{Inbound, SendRef};
use stg_sip_msg::framer::FramerLimits;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::throttle::{LogThrottle, Verdict, What};

/// How many messages may wait in one connection's write queue before sends to it fail:
/// a peer that stops reading must not make the node buffer without bound.
pub(crate) const WRITE_QUEUE: usize = 512;

/// Most bytes waiting in one connection's write queue (four of the largest messages).
pub(crate) const WRITE_QUEUE_BYTES: usize = 256 * 1024;

/// Descriptors kept free of accepted connections, for the admin endpoint, DNS, log files and
/// the connections the node opens itself (which may use half of it).
pub(crate) const FD_RESERVE: usize = 64;

/// How many sends to one destination may wait for the connection being opened to it.
pub(crate) const PENDING_PER_DESTINATION: usize = 32;

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
    /// The registrar's answer to a registration.
    Registered {
        id: stg_sip_core::proxy::OpId,
        answer: stg_sip_core::proxy::RegisterAnswer,
    },
    /// The digest check of a device's request.
    Authorized {
        id: stg_sip_core::proxy::OpId,
        answer: stg_sip_core::proxy::Authorization,
    },
    /// The location service's answer (`Err`: the store failed).
    Located {
        id: stg_sip_core::proxy::OpId,
        result: Result<Vec<stg_sip_core::proxy::Located>, ()>,
    },
    /// A device's connection closed: calls waiting on it push the device now.
    FlowClosed(Flow),
    /// A device bound (on this node, or on another sharing the store): calls waiting for it
    /// go out over its new connection.
    Bound {
        aor: String,
        binding: stg_sip_core::proxy::Located,
    },
    /// How a push the core asked for went.
    Pushed {
        id: stg_sip_core::proxy::PushId,
        outcome: stg_sip_core::proxy::PushOutcome,
    },
    /// A kept message for a device that just bound here.
    Deliver {
        id: stg_sip_core::proxy::DeliveryId,
        request: Bytes,
        binding: stg_sip_core::proxy::Located,
    },
}

/// What the per-source limits count as one source: an IPv4 address, or an IPv6 address cut
/// to its first `source_prefix_v6` bits. IPv4-mapped IPv6 (`::ffff:a.b.c.d`) is IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum SourceKey {
    V4(std::net::Ipv4Addr),
    V6 { network: Ipv6Addr, prefix: u8 },
}

impl SourceKey {
    pub(crate) fn new(ip: IpAddr, prefix_v6: u8) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self::V4(v4),
            IpAddr::V6(v6) => {
                let prefix = prefix_v6.clamp(1, 128);
                let mask = u128::MAX << (128 - u32::from(prefix));
                Self::V6 {
                    network: Ipv6Addr::from(u128::from(v6) & mask),
                    prefix,
                }
            }
        }
    }
}

impl fmt::Display for SourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::V4(ip) => write!(f, "{ip}"),
            Self::V6 {
                network,
                prefix: 128,
            } => write!(f, "{network}"),
            Self::V6 { network, prefix } => write!(f, "{network}/{prefix}"),
        }
    }
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
    /// Opened by the node (counts in all, not against the destination as a source).
    pub(crate) outbound: bool,
}

/// Why [`Shared::send_stream`] queued nothing.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No live connection (or it is closing): the bytes, for a new connection.
    NoConnection(Bytes),
    /// The connection's queue is full: the peer is not keeping up. Another connection to it
    /// would only reorder messages and pile up more.
    Full,
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

/// A connection's write queue: at most [`WRITE_QUEUE`] messages and [`WRITE_QUEUE_BYTES`]
/// bytes (a peer that reads just fast enough to beat the write timeout must not make the
/// node hold 512 large answers for it). Unlike a channel it holds no memory while empty and
/// never used (a tokio channel allocates a block of slots at once, about 1 KiB per idle
/// connection).
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    queue: Mutex<(VecDeque<Bytes>, usize)>,
    ready: Notify,
    closed: AtomicBool,
}

impl Outbox {
    fn queue(&self) -> MutexGuard<'_, (VecDeque<Bytes>, usize)> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `bytes`; gives them back when the connection is closing.
    fn push(&self, bytes: Bytes) -> Result<(), SendError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(SendError::NoConnection(bytes));
        }
        let mut q = self.queue();
        let (queue, queued_bytes) = &mut *q;
        if queue.len() >= WRITE_QUEUE || *queued_bytes + bytes.len() > WRITE_QUEUE_BYTES {
            return Err(SendError::Full);
        }
        *queued_bytes += bytes.len();
        queue.push_back(bytes);
        drop(q);
        self.ready.notify_one();
        Ok(())
    }

    /// The next message to write; None once the connection is to close.
    ///
    /// # Cancel safety
    /// Cancel safe: a message leaves the queue only in the poll that returns it.
    pub(crate) async fn recv(&self) -> Option<Bytes> {
        loop {
            if self.closed.load(Ordering::Relaxed) {
                return None;
            }
            let next = {
                let mut q = self.queue();
                let (queue, queued_bytes) = &mut *q;
                let next = queue.pop_front();
                if let Some(b) = &next {
                    *queued_bytes -= b.len();
                }
                if queue.is_empty() && queue.capacity() > 8 {
                    // A burst grew it; an idle connection keeps nothing of it.
                    *queue = VecDeque::new();
                }
                next
            };
            if let Some(bytes) = next {
                return Some(bytes);
            }
            // A push between the pop above and this wait leaves a permit: not lost.
            self.ready.notified().await;
        }
    }

    /// Makes [`recv`](Self::recv) return None: the connection closes.
    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.ready.notify_one();
    }
}

struct Entry {
    outbox: Arc<Outbox>,
    /// The peer, and whether the node opened the connection (never closed for a ban).
    remote: IpAddr,
    outbound: bool,
}

/// Where an outbound connection goes.
pub(crate) type Destination = (Transport, SocketAddr);

/// A send waiting for the connection being opened to its destination.
pub(crate) type Queued = (Bytes, Option<SendRef>);

#[derive(Default)]
struct Table {
    by_id: HashMap<ConnId, Entry>,
    by_addr: HashMap<Destination, ConnId>,
    per_source: HashMap<SourceKey, usize>,
    /// Admitted connections, accepted and outbound, registered or still in their handshake.
    total: usize,
    /// Outbound connections being opened, with the sends waiting for each.
    connecting: HashMap<Destination, Vec<Queued>>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    Banned,
    MaxConnections,
    PerSourceLimit,
}

impl Refused {
    /// The `reason` label of `stg_connections_refused_total`.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Self::Banned => "banned",
            Self::MaxConnections => "max_connections",
            Self::PerSourceLimit => "per_source_limit",
        }
    }
}

/// What became of a send that needs a new connection.
#[derive(Debug)]
pub(crate) enum Connect {
    /// Open one: the caller spawns the connect with this permit, for these bytes.
    Start(OwnedSemaphorePermit, Bytes),
    /// Queued behind the connection already being opened to the destination.
    Merged,
    /// Refused; the reason is the label of `stg_connects_refused_total`.
    Refused(&'static str),
}

/// The connection caps in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Caps {
    /// Accepted connections are refused at this total.
    pub(crate) accepted: usize,
    /// Outbound ones at this total: a little above, so the upstream stays reachable.
    pub(crate) outbound: usize,
    pub(crate) per_source: usize,
}

impl Caps {
    /// `sip.max_connections`, bounded by the open-file limit `fd_limit` less [`FD_RESERVE`].
    pub(crate) fn new(config: &stg_config::SipConfig, fd_limit: Option<u64>) -> Self {
        let by_fds = fd_limit.map_or(usize::MAX, |n| {
            usize::try_from(n)
                .unwrap_or(usize::MAX)
                .saturating_sub(FD_RESERVE)
                .max(1)
        });
        let accepted = config.max_connections.min(by_fds);
        Self {
            accepted,
            outbound: accepted + FD_RESERVE / 2,
            per_source: config.max_connections_per_source,
        }
    }
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
    /// Every connection and helper task, to wait for them at the end.
    pub(crate) tasks: TaskTracker,
    pub(crate) caps: Caps,
    /// Permits for outbound connection attempts (`sip.max_pending_connects`).
    connects: Arc<Semaphore>,
    table: Mutex<Table>,
    log: Mutex<LogThrottle>,
    next_conn: AtomicU64,
    /// The guard's bans, checked before anything else on every datagram and connection; the
    /// node's other roles (the web front) check and feed them too.
    pub(crate) bans: Arc<crate::guard::Bans>,
    /// Messages kept for sleeping devices (set when the node has a registrar).
    pub(crate) messages: std::sync::OnceLock<crate::messages::Messages>,
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
        let caps = Caps::new(&config.sip, crate::limits::nofile_soft());
        Self {
            core_tx,
            connects: Arc::new(Semaphore::new(config.sip.max_pending_connects)),
            config,
            framer_limits,
            shutdown,
            tls,
            tasks: TaskTracker::new(),
            caps,
            table: Mutex::new(Table::default()),
            log: Mutex::new(LogThrottle::default()),
            next_conn: AtomicU64::new(1),
            bans: Arc::default(),
            messages: std::sync::OnceLock::new(),
        }
    }

    /// The same, sharing `bans` (made before the node runs, so other roles can hold them).
    pub(crate) fn with_bans(mut self, bans: Arc<crate::guard::Bans>) -> Self {
        self.bans = bans;
        self
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

    pub(crate) fn write_timeout(&self) -> Duration {
        self.config.sip.write_timeout
    }

    /// The side of a peer: the listener's, or Inside for a trusted source.
    pub(crate) fn side_of(&self, listener_side: Side, remote: IpAddr) -> Side {
        if listener_side == Side::Inside || self.config.sip.is_trusted(remote) {
            Side::Inside
        } else {
            Side::Outside
        }
    }

    /// What the per-source limits count `ip` as.
    pub(crate) fn source_key(&self, ip: IpAddr) -> SourceKey {
        SourceKey::new(ip, self.config.sip.source_prefix_v6)
    }

    /// A fresh connection id.
    pub(crate) fn next_conn_id(&self) -> ConnId {
        ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed))
    }

    /// Admits an accepted connection from `remote` before anything else is done with it.
    pub(crate) fn admit(&self, remote: IpAddr) -> Result<(), Refused> {
        if self.bans.banned(remote) {
            return Err(Refused::Banned);
        }
        let key = self.source_key(remote);
        let mut t = self.table();
        if t.total >= self.caps.accepted {
            return Err(Refused::MaxConnections);
        }
        let n = t.per_source.entry(key).or_default();
        if *n >= self.caps.per_source {
            return Err(Refused::PerSourceLimit);
        }
        *n += 1;
        t.total += 1;
        Ok(())
    }

    /// Undoes [`Self::admit`] for a connection that never registered or has ended.
    pub(crate) fn release(&self, remote: IpAddr) {
        let key = self.source_key(remote);
        let mut t = self.table();
        t.total = t.total.saturating_sub(1);
        if let Some(n) = t.per_source.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                t.per_source.remove(&key);
            }
        }
    }

    /// A send to `dest` that found no live connection: merged into the connection being
    /// opened to it, or a permit (and a slot in the connection count) to open one.
    pub(crate) fn begin_connect(
        &self,
        dest: Destination,
        bytes: Bytes,
        on_fail: Option<SendRef>,
    ) -> Connect {
        let mut t = self.table();
        if let Some(queue) = t.connecting.get_mut(&dest) {
            if queue.len() >= PENDING_PER_DESTINATION {
                return Connect::Refused("queue_full");
            }
            queue.push((bytes, on_fail));
            return Connect::Merged;
        }
        if t.total >= self.caps.outbound {
            return Connect::Refused("max_connections");
        }
        let Ok(permit) = self.connects.clone().try_acquire_owned() else {
            return Connect::Refused("max_pending");
        };
        t.total += 1;
        t.connecting.insert(dest, Vec::new());
        Connect::Start(permit, bytes)
    }

    /// The connect to `dest` failed: its slot is freed, and the sends that waited for it
    /// are returned to be failed.
    pub(crate) fn fail_connect(&self, dest: Destination) -> Vec<Queued> {
        let mut t = self.table();
        t.total = t.total.saturating_sub(1);
        t.connecting.remove(&dest).unwrap_or_default()
    }

    /// Registers a connection; returns the receiver of the bytes to write to it and, for an
    /// outbound one, the sends that waited for it.
    pub(crate) fn register(&self, meta: ConnMeta) -> (Arc<Outbox>, Vec<Queued>) {
        let outbox = Arc::new(Outbox::default());
        let mut t = self.table();
        let dest = (meta.transport, meta.remote);
        // Only connections the node opened are found by address: a destination a message
        // chose (`sip:x@<device ip:port>;transport=tls`) must never be written into a
        // device's own connection; devices are reached by the flow (connection id) only.
        if meta.outbound {
            t.by_addr.insert(dest, meta.id);
        }
        t.by_id.insert(
            meta.id,
            Entry {
                outbox: outbox.clone(),
                remote: meta.remote.ip(),
                outbound: meta.outbound,
            },
        );
        let queued = if meta.outbound {
            t.connecting.remove(&dest).unwrap_or_default()
        } else {
            Vec::new()
        };
        metrics::gauge!("stg_connections", "transport" => meta.transport.param()).increment(1.0);
        (outbox, queued)
    }

    /// Asks every connection to close (the node is stopping): each finishes the write in
    /// progress, within `sip.write_timeout`, and closes.
    /// Closes the accepted connections whose peer `banned` says is banned.
    pub(crate) fn close_from(&self, banned: impl Fn(IpAddr) -> bool) {
        for entry in self.table().by_id.values() {
            if !entry.outbound && banned(entry.remote) {
                entry.outbox.close();
            }
        }
    }

    pub(crate) fn close_all(&self) {
        for entry in self.table().by_id.values() {
            entry.outbox.close();
        }
    }

    /// Removes a connection (its task ended) and frees its slot.
    pub(crate) fn unregister(&self, meta: &ConnMeta) {
        let mut t = self.table();
        if t.by_id.remove(&meta.id).is_some() {
            metrics::gauge!("stg_connections", "transport" => meta.transport.param())
                .decrement(1.0);
        }
        if t.by_addr.get(&(meta.transport, meta.remote)) == Some(&meta.id) {
            t.by_addr.remove(&(meta.transport, meta.remote));
        }
        if meta.outbound {
            t.total = t.total.saturating_sub(1);
            return;
        }
        drop(t);
        self.release(meta.remote.ip());
        // A full queue only delays the push until the INVITE's timer B (the core then finds
        // the device unreachable anyway).
        if self
            .core_tx
            .try_send(CoreInput::FlowClosed(meta.flow()))
            .is_err()
        {
            metrics::counter!("stg_core_inputs_dropped_total", "input" => "flow_closed")
                .increment(1);
        }
    }

    /// Queues bytes on a connection: the one named, or one the node opened to the address.
    pub(crate) fn send_stream(&self, flow: &Flow, bytes: Bytes) -> Result<(), SendError> {
        let t = self.table();
        let id = match flow.conn {
            Some(id) => Some(id),
            None => t.by_addr.get(&(flow.transport, flow.remote)).copied(),
        };
        let Some(entry) = id.and_then(|id| t.by_id.get(&id)) else {
            return Err(SendError::NoConnection(bytes));
        };
        entry.outbox.push(bytes)
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

    /// Whether a line about `what` (`reason`) from `source`, which an outsider can cause,
    /// may be logged now; counts `stg_log_suppressed_total` when not.
    pub(crate) fn may_log(&self, what: What, reason: &'static str, source: IpAddr) -> bool {
        self.may_log_about(what, reason, Some(self.source_key(source)))
    }

    /// As [`may_log`](Self::may_log) for a line about no source in particular.
    pub(crate) fn may_log_about(
        &self,
        what: What,
        reason: &'static str,
        key: Option<SourceKey>,
    ) -> bool {
        let now = crate::now();
        let verdict = self
            .log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .check(what, reason, key, now);
        if verdict == Verdict::Suppress {
            metrics::counter!("stg_log_suppressed_total").increment(1);
            return false;
        }
        true
    }

    /// Writes the summary lines of the throttling windows that have ended.
    pub(crate) fn log_summaries(&self) {
        self.write_summaries(crate::now());
    }

    /// At exit: every window ends now, so no suppressed line goes unmentioned.
    pub(crate) fn log_final_summaries(&self) {
        self.write_summaries(crate::now() + crate::throttle::WINDOW);
    }

    fn write_summaries(&self, at: std::time::Instant) {
        let summaries = self
            .log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .expire(at);
        for s in summaries {
            tracing::info!(what = s.what, reason = s.reason, count = s.count, "{s}");
        }
    }

    /// Whether a connection is still in the table.
    #[cfg(test)]
    pub(crate) fn is_registered(&self, id: ConnId) -> bool {
        self.table().by_id.contains_key(&id)
    }

    /// Connections admitted and not yet released.
    #[cfg(test)]
    pub(crate) fn admitted(&self) -> usize {
        self.table().total
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn shared_with(configure: impl FnOnce(&mut stg_config::Config)) -> Arc<Shared> {
        let (core_tx, core_rx) = mpsc::channel(64);
        // The receiver is leaked on purpose: sends to the core never fail in these tests.
        std::mem::forget(core_rx);
        let mut config = stg_config::Config::default();
        configure(&mut config);
        Arc::new(Shared::new(
            core_tx,
            Arc::new(config),
            CancellationToken::new(),
            None,
        ))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A send with no connection named reaches only a connection the node opened: a device's
    /// own connection is reached by its id (a flow token), never by an address a message chose.
    #[test]
    fn devices_connections_are_not_found_by_address() {
        let shared = shared_with(|_| {});
        let remote: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        let meta = |id, outbound| ConnMeta {
            id: ConnId(id),
            listener: ListenerId(0),
            transport: Transport::Tls,
            remote,
            side: Side::Outside,
            outbound,
        };
        let flow = |conn| Flow {
            listener: ListenerId(0),
            transport: Transport::Tls,
            remote,
            conn,
        };
        let _device = shared.register(meta(1, false));
        let msg = || Bytes::from_static(b"OPTIONS");
        assert!(shared.send_stream(&flow(None), msg()).is_err());
        assert!(shared.send_stream(&flow(Some(ConnId(1))), msg()).is_ok());
        let _ours = shared.register(meta(2, true));
        assert!(shared.send_stream(&flow(None), msg()).is_ok());
    }

    #[test]
    fn sources_are_ipv4_addresses_or_ipv6_prefixes() {
        let k = |s: &str, p| SourceKey::new(ip(s), p);
        // IPv4-mapped IPv6 is IPv4.
        assert_eq!(k("::ffff:192.0.2.1", 64), k("192.0.2.1", 64));
        assert_eq!(k("::ffff:192.0.2.1", 64).to_string(), "192.0.2.1");
        assert_ne!(k("192.0.2.1", 64), k("192.0.2.2", 64));
        // One /64 is one source; the next /64 another.
        assert_eq!(
            k("2001:db8:1:2::1", 64),
            k("2001:db8:1:2:ffff:ffff:ffff:ffff", 64)
        );
        assert_ne!(k("2001:db8:1:2::1", 64), k("2001:db8:1:3::1", 64));
        assert_eq!(k("2001:db8:1:2::1", 64).to_string(), "2001:db8:1:2::/64");
        assert_eq!(k("2001:db8:1:2::1", 48), k("2001:db8:1:ff::1", 48));
        assert_eq!(k("2001:db8::1", 128).to_string(), "2001:db8::1");
        assert_ne!(k("2001:db8::1", 128), k("2001:db8::2", 128));
        assert_eq!(k("2001:db8::1", 1), k("7fff::", 1));
    }

    #[test]
    fn caps_stay_below_the_open_file_limit() {
        let mut sip = stg_config::SipConfig::default();
        let caps = Caps::new(&sip, None);
        assert_eq!(caps.accepted, 100_000);
        assert_eq!(caps.outbound, 100_000 + FD_RESERVE / 2);
        assert_eq!(Caps::new(&sip, Some(1024)).accepted, 1024 - FD_RESERVE);
        assert_eq!(Caps::new(&sip, Some(10)).accepted, 1);
        assert_eq!(Caps::new(&sip, Some(1 << 20)).accepted, 100_000);
        sip.max_connections = 500;
        assert_eq!(Caps::new(&sip, Some(1024)).accepted, 500);
    }

    #[test]
    fn per_source_and_global_caps() {
        let shared = shared_with(|c| {
            c.sip.max_connections = 200;
            c.sip.max_connections_per_source = 64;
        });
        for _ in 0..64 {
            shared.admit(ip("192.0.2.1")).unwrap();
        }
        // The 65th from one source, also when it comes IPv4-mapped.
        assert_eq!(shared.admit(ip("192.0.2.1")), Err(Refused::PerSourceLimit));
        assert_eq!(
            shared.admit(ip("::ffff:192.0.2.1")),
            Err(Refused::PerSourceLimit)
        );
        shared.admit(ip("192.0.2.2")).unwrap();
        // Addresses of one /64 share a budget.
        for i in 0..64 {
            shared.admit(ip(&format!("2001:db8::{i:x}"))).unwrap();
        }
        assert_eq!(
            shared.admit(ip("2001:db8::ffff")),
            Err(Refused::PerSourceLimit)
        );
        shared.admit(ip("2001:db8:0:1::1")).unwrap();
        // A slot freed is a slot again.
        shared.release(ip("192.0.2.1"));
        shared.admit(ip("::ffff:192.0.2.1")).unwrap();
        assert_eq!(shared.admitted(), 64 + 1 + 64 + 1);
        // The global cap.
        for i in 0..(200 - 130) {
            shared.admit(IpAddr::from([198, 51, 100, i as u8])).unwrap();
        }
        assert_eq!(
            shared.admit(ip("203.0.113.1")),
            Err(Refused::MaxConnections)
        );
    }

    #[tokio::test]
    async fn outbound_connects_are_merged_and_bounded() {
        let shared = shared_with(|c| {
            c.sip.max_pending_connects = 2;
            c.sip.max_connections_per_source = 1;
        });
        let a: Destination = (Transport::Tcp, "192.0.2.9:5060".parse().unwrap());
        let b: Destination = (Transport::Tls, "192.0.2.9:5061".parse().unwrap());
        let c: Destination = (Transport::Tcp, "192.0.2.10:5060".parse().unwrap());
        let msg = |s: &'static str| Bytes::from_static(s.as_bytes());
        let Connect::Start(permit_a, first) = shared.begin_connect(a, msg("1"), None) else {
            panic!("the first send to a destination opens a connection");
        };
        assert_eq!(first, "1");
        for i in 0..PENDING_PER_DESTINATION {
            assert!(
                matches!(shared.begin_connect(a, msg("n"), None), Connect::Merged),
                "{i}"
            );
        }
        assert!(matches!(
            shared.begin_connect(a, msg("x"), None),
            Connect::Refused("queue_full")
        ));
        let Connect::Start(_permit_b, _) = shared.begin_connect(b, msg("b"), None) else {
            panic!("another destination");
        };
        // Two in flight: a third destination is refused at once.
        assert!(matches!(
            shared.begin_connect(c, msg("c"), None),
            Connect::Refused("max_pending")
        ));
        assert_eq!(shared.admitted(), 2);
        // b fails: its slot is free, nothing waited for it.
        assert!(shared.fail_connect(b).is_empty());
        assert_eq!(shared.admitted(), 1);
        // a connects: the waiting sends come with the registration. Outbound connections
        // do not count against their destination as a source.
        drop(permit_a);
        let meta = ConnMeta {
            id: shared.next_conn_id(),
            listener: ListenerId(0),
            transport: a.0,
            remote: a.1,
            side: Side::Inside,
            outbound: true,
        };
        let (_rx, queued) = shared.register(meta);
        assert_eq!(queued.len(), PENDING_PER_DESTINATION);
        shared.admit(a.1.ip()).unwrap();
        shared.release(a.1.ip());
        // A new send to a finds the connection, not a new connect.
        let flow = Flow {
            listener: ListenerId(0),
            transport: a.0,
            remote: a.1,
            conn: None,
        };
        shared.send_stream(&flow, msg("2")).unwrap();
        shared.unregister(&meta);
        assert_eq!(shared.admitted(), 0);
        assert_eq!(shared.connection_count(), 0);
    }
}
