//! Sans-IO SIP transaction layer: RFC 3261 §17 as amended by RFC 6026.
//!
//! [`Transactions`] owns every client and server transaction of one core (quinn's `Endpoint`
//! shape). It never reads the clock, never touches a socket and never parses SIP: the caller
//! (the transport shell and the transaction user, "TU") extracts the few facts the state
//! machines need (the matching [`TxKey`], the [`RequestKind`], the status code) and passes each
//! message as opaque [`Bytes`]. Retransmissions are those same bytes sent again.
//!
//! # Inputs
//!
//! Every input carries `now`, the caller's monotonic time:
//! - from the network: [`Transactions::handle_request`], [`Transactions::handle_response`];
//! - from the TU: [`Transactions::start_client`], [`Transactions::send_response`],
//!   [`Transactions::set_ack`];
//! - from the transport: [`Transactions::transport_error`],
//!   [`Transactions::server_transport_error`];
//! - from the clock: [`Transactions::handle_timeout`], once [`Transactions::poll_timeout`] is
//!   reached.
//!
//! # Outputs and the drain invariant
//!
//! Network inputs return how the message matched ([`ServerMatch`], [`ClientMatch`]). Everything
//! else is queued, in the order it happened, as [`Output`]: [`Output::Transmit`] (send these
//! bytes to that destination; first sends and retransmissions alike) and [`Output::Event`].
//!
//! **After every `&mut self` call, drain [`Transactions::poll_output`] until it returns `None`,
//! then (re)arm the shell's single timer at [`Transactions::poll_timeout`].** Nothing is lost
//! if the drain is late, but messages go out late and the timer may be stale.
//!
//! # What the TU must do
//!
//! - Send the 100 (Trying) for an INVITE itself, through [`Transactions::send_response`]
//!   (RFC 3261 §17.2.1 asks for it within 200 ms; no timer here does it).
//! - Answer every server transaction. Trying and Proceeding have no timer: a server
//!   transaction the TU never answers lives forever. A proxy's answer comes from its client
//!   transactions (timer B/F give a [`TxEvent::ClientTimeout`], from which it makes a 408) and
//!   its own timer C.
//! - After [`ClientMatch::Pass`] with `needs_ack: true`, build the ACK (RFC 3261 §17.1.1.3)
//!   and call [`Transactions::set_ack`] before the next [`Transactions::handle_timeout`]: on a
//!   reliable transport timer D is zero, so the transaction ends at the next timeout.
//! - Every transaction ends with exactly one `ClientTerminated` / `ServerTerminated` event,
//!   always its last output; [`TxEvent::ClientTimeout`], [`TxEvent::ClientTransportError`],
//!   [`TxEvent::ServerTimeout`] and [`TxEvent::ServerTransportError`] come just before it
//!   when they are the cause. After it the id is unknown everywhere.
//!
//! # Reliability
//!
//! `reliable` (TCP, TLS, WS, WSS) is given per transaction. On a reliable transport timers A,
//! E and G are never set and timers D, I, J and K are zero: the transaction ends at once
//! instead of lingering to absorb retransmissions that cannot come (RFC 3261 §17.1.1.2,
//! §17.1.2.2, §17.2.1, §17.2.2).

mod client;
mod server;
mod timer;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;

use crate::FastMap;
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;

pub use client::ClientState;
pub use server::ServerState;

use client::ClientTx;
use server::ServerTx;
use timer::{Timer, TimerQueue, TxRef};

/// Smallest T1/T2 accepted: a zero retransmission interval would re-arm a timer at the instant
/// it fired, and [`Transactions::handle_timeout`] would never return.
const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// Largest T1/T2/T4 accepted, so `now + 64*T1` cannot overflow for any `now` a clock returns.
const MAX_TIMER: Duration = Duration::from_secs(3600);

/// Timer D on unreliable transports is "at least 32 seconds" (RFC 3261 §17.1.1.2, Table 4):
/// long enough to absorb the far server's final response retransmissions, which run for 64 of
/// its T1, not ours.
const TIMER_D_MIN: Duration = Duration::from_secs(32);

/// The RFC 3261 §17 timer base values.
///
/// Every other timer is derived from these (RFC 3261 Table 4, RFC 6026): B, F, H, L
/// and M and J (unreliable) are 64*T1; I and K (unreliable) are T4; D (unreliable) is the
/// larger of 32 s and 64*T1; A, E and G start at T1.
///
/// [`Transactions::new`] clamps T1 and T2 to 1 ms ..= 1 h and T4 to at most 1 h, so a
/// misconfiguration can neither spin [`Transactions::handle_timeout`] nor overflow an
/// [`Instant`]; the config crate is where a bad value should be reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransactionConfig {
    /// RTT estimate: the first retransmission interval. Default 500 ms.
    pub t1: Duration,
    /// Cap on the retransmission interval of non-INVITE requests and INVITE final responses.
    /// Default 4 s.
    pub t2: Duration,
    /// Maximum time a message stays in the network. Default 5 s.
    pub t4: Duration,
}

impl Default for TransactionConfig {
    /// The RFC 3261 §17.1.1.1 recommended values: T1 = 500 ms, T2 = 4 s, T4 = 5 s.
    fn default() -> Self {
        Self {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

/// The key a message is matched to its transaction with (RFC 3261 §17.1.3, §17.2.3).
///
/// The caller builds it from the top Via (the branch parameter and the sent-by host:port,
/// normalised by the caller, e.g. lower-cased host and the default port made explicit) and the
/// CSeq method. Two exceptions are the caller's to apply:
/// - a server-side ACK is matched with `method = INVITE`, because it belongs to the INVITE
///   transaction it acknowledges ([`TxKey::with_method`]);
/// - CANCEL keeps `method = CANCEL`: it is its own non-INVITE transaction. The INVITE it
///   cancels is found with [`Transactions::find_server`] on the same key with `INVITE`.
///
/// Requests without the RFC 3261 branch magic cookie (`z9hG4bK`) need RFC 2543 matching,
/// which is out of scope: the caller can still synthesise a stable branch for them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TxKey {
    /// The Via `branch` parameter.
    pub branch: Bytes,
    /// The Via sent-by (host and port), normalised by the caller.
    pub sent_by: Bytes,
    /// The CSeq method, case-sensitive as on the wire (RFC 3261 §7.1).
    pub method: Bytes,
}

impl TxKey {
    /// A key from its three parts.
    pub fn new(branch: Bytes, sent_by: Bytes, method: Bytes) -> Self {
        Self {
            branch,
            sent_by,
            method,
        }
    }

    /// The same branch and sent-by with another method: the INVITE key for a CANCEL or for a
    /// server-side ACK (e.g. `key.with_method(Bytes::from_static(b"INVITE"))`).
    pub fn with_method(&self, method: Bytes) -> Self {
        Self {
            branch: self.branch.clone(),
            sent_by: self.sent_by.clone(),
            method,
        }
    }
}

/// What kind of request a message is, as far as the transaction layer cares.
///
/// Complete by construction: every other method is [`RequestKind::Other`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// INVITE: the INVITE state machines (RFC 3261 §17.1.1, §17.2.1).
    Invite,
    /// ACK: never a transaction of its own; matched to the INVITE server transaction.
    Ack,
    /// CANCEL: a non-INVITE transaction (RFC 3261 §9).
    Cancel,
    /// Any other method: a non-INVITE transaction.
    Other,
}

/// Identifies a client transaction. Opaque and never reused, so a stale id is simply unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientTxId(u64);

/// Identifies a server transaction. Opaque and never reused, so a stale id is simply unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerTxId(u64);

/// How an incoming request matched (RFC 3261 §17.2.3), returned by
/// [`Transactions::handle_request`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerMatch {
    /// A new server transaction: the TU processes the request and answers through
    /// [`Transactions::send_response`].
    New(ServerTxId),
    /// A retransmission, absorbed. Where the state calls for it (the last provisional in
    /// Proceeding, the final in Completed) the last response was queued again as a
    /// [`Output::Transmit`]; in Trying, Confirmed and Accepted nothing is sent.
    Retransmission,
    /// An ACK the transaction consumed: the ACK for a non-2xx final (Completed → Confirmed), a
    /// retransmitted one (Confirmed), or one that arrived before any final response, which
    /// acknowledges nothing and is dropped. The TU does nothing.
    AckAbsorbed,
    /// An ACK the TU must handle: `Some` when it matched an INVITE transaction in Accepted
    /// (an ACK for a 2xx, RFC 6026 §7.1), `None` when it matched no INVITE transaction (the
    /// usual ACK for a 2xx, whose branch is new). A proxy forwards it.
    PassToTu(Option<ServerTxId>),
}

/// How an incoming response matched (RFC 3261 §17.1.3), returned by
/// [`Transactions::handle_response`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientMatch {
    /// The TU handles this response for transaction `id`.
    Pass {
        /// The transaction it belongs to.
        id: ClientTxId,
        /// True for the first non-2xx final of an INVITE: build the ACK and hand it over with
        /// [`Transactions::set_ack`].
        needs_ack: bool,
    },
    /// A retransmission or a response the state ignores, absorbed. A retransmitted non-2xx
    /// final of an INVITE re-sent the ACK as a [`Output::Transmit`].
    Absorbed,
    /// No transaction: a stray response (unknown key, terminated transaction, a status outside
    /// 100..=699, or a 2xx after a non-2xx final). The TU decides; a proxy forwards a stray
    /// 2xx statelessly (RFC 3261 §16.7).
    NoMatch,
}

/// One queued output, drained with [`Transactions::poll_output`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Output<D> {
    /// Send `bytes` to `dest`: a request, response or ACK, first copy or retransmission.
    Transmit {
        /// The destination the caller gave for this transaction.
        dest: D,
        /// The message, exactly as the TU handed it over.
        bytes: Bytes,
    },
    /// Something the TU must know.
    Event(TxEvent),
}

/// A transaction event for the TU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TxEvent {
    /// Timer B (INVITE) or F (non-INVITE) fired with no final response: the TU acts as if a
    /// 408 (Request Timeout) had arrived (RFC 3261 §8.1.3.1, §16.8). `ClientTerminated`
    /// follows.
    ClientTimeout(ClientTxId),
    /// [`Transactions::transport_error`] was reported (RFC 3261 §17.1.4): the TU treats it as
    /// a 503 (Service Unavailable) (RFC 3261 §8.1.3.1). `ClientTerminated` follows.
    ClientTransportError(ClientTxId),
    /// The client transaction ended and is gone; always its last output.
    ClientTerminated(ClientTxId),
    /// Timer H fired: no ACK came for a non-2xx final (RFC 3261 §17.2.1).
    /// `ServerTerminated` follows.
    ServerTimeout(ServerTxId),
    /// [`Transactions::server_transport_error`] was reported (RFC 3261 §17.2.4).
    /// `ServerTerminated` follows.
    ServerTransportError(ServerTxId),
    /// The server transaction ended and is gone; always its last output.
    ServerTerminated(ServerTxId),
}

/// A misuse of the API by the TU.
///
/// Every variant is a bug in the caller, never the peer's doing: peer input never fails, it
/// yields a [`ServerMatch`] or [`ClientMatch`]. The crate-level error can wrap this as its
/// API-misuse case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TxError {
    /// [`Transactions::start_client`] with [`RequestKind::Ack`]: an ACK is never a client
    /// transaction (RFC 3261 §17.1.1.3, §13.2.2.4); send it as a plain message.
    #[error("ACK never starts a client transaction")]
    AckTransaction,
    /// [`Transactions::start_client`] with a key a live client transaction already has: the TU
    /// must use a fresh branch per transaction (RFC 3261 §8.1.1.7).
    #[error("a live client transaction already has this key")]
    DuplicateKey,
    /// A status code outside 100..=699.
    #[error("status code {0} is outside 100..=699")]
    InvalidStatus(u16),
    /// No live transaction has this id: it never existed or has terminated.
    #[error("unknown or terminated transaction")]
    UnknownTransaction,
    /// The call is not allowed in the client transaction's state, e.g. an ACK for a
    /// transaction that does not await one.
    #[error("not allowed in client transaction state {0:?}")]
    WrongClientState(ClientState),
    /// The response is not allowed in the server transaction's state, e.g. a second final,
    /// or a non-2xx after a 2xx.
    #[error("not allowed in server transaction state {0:?}")]
    WrongServerState(ServerState),
}

/// Owner of all client and server transactions of one core.
///
/// `D` is the caller's opaque destination (transport, address, connection id): it is handed
/// back in every [`Output::Transmit`] for the transaction it was given with. See the
/// [module docs](self) for the call protocol.
pub struct Transactions<D> {
    timings: Timings,
    clients: FastMap<ClientTxId, ClientTx<D>>,
    /// RFC 3261 §17.1.3 matching index. Invariant: holds exactly the keys of `clients`.
    client_keys: FastMap<TxKey, ClientTxId>,
    servers: FastMap<ServerTxId, ServerTx<D>>,
    /// RFC 3261 §17.2.3 matching index. Invariant: holds exactly the keys of `servers`.
    server_keys: FastMap<TxKey, ServerTxId>,
    timers: TimerQueue,
    output: VecDeque<Output<D>>,
    next_client: u64,
    next_server: u64,
}

// === impl Transactions ===

impl<D: Clone + fmt::Debug> Transactions<D> {
    /// An empty transaction layer. Out-of-range timer values are clamped (see
    /// [`TransactionConfig`]).
    pub fn new(config: TransactionConfig) -> Self {
        Self {
            timings: Timings::new(config),
            clients: FastMap::default(),
            client_keys: FastMap::default(),
            servers: FastMap::default(),
            server_keys: FastMap::default(),
            timers: TimerQueue::default(),
            output: VecDeque::new(),
            next_client: 0,
            next_server: 0,
        }
    }

    /// The configuration in force, after clamping.
    pub fn config(&self) -> TransactionConfig {
        TransactionConfig {
            t1: self.timings.t1,
            t2: self.timings.t2,
            t4: self.timings.t4,
        }
    }

    /// Fires every timer due at `now`: retransmissions and timeouts, queued as outputs.
    ///
    /// A late call fires each due timer once, not once per missed interval: a retransmission
    /// timer is re-armed from `now`, and one whose transaction's lifetime timer is also due
    /// is skipped.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(due) = self.timers.pop_due(now) {
            match due.tx {
                TxRef::Client(id) => self.fire_client(id, due.timer, due.at, now),
                TxRef::Server(id) => self.fire_server(id, due.timer, due.at, now),
            }
        }
        self.tidy();
    }

    /// The earliest pending timer deadline, exact, in O(1); `None` when no timer runs.
    ///
    /// Call [`Self::handle_timeout`] once it is reached. It may be in the past, e.g. a zero
    /// timer D waiting for [`Self::set_ack`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// The next queued output; drain until `None` after every mutating call.
    pub fn poll_output(&mut self) -> Option<Output<D>> {
        self.output.pop_front()
    }

    /// Live transactions: `(client, server)`.
    pub fn alive(&self) -> (usize, usize) {
        (self.clients.len(), self.servers.len())
    }

    /// Restores the timer queue invariant after a mutation: the top entry is live, so
    /// [`Self::poll_timeout`] is exact.
    fn tidy(&mut self) {
        let Self {
            clients,
            servers,
            timers,
            ..
        } = self;
        timers.drop_stale(clients.len() + servers.len(), |d| match d.tx {
            TxRef::Client(id) => clients
                .get(&id)
                .is_some_and(|tx| tx.deadline(d.timer) == Some(d.at)),
            TxRef::Server(id) => servers
                .get(&id)
                .is_some_and(|tx| tx.deadline(d.timer) == Some(d.at)),
        });
    }

    /// The earliest deadline found by scanning every transaction, to check the queue against.
    #[cfg(test)]
    fn earliest_deadline_by_scan(&self) -> Option<Instant> {
        let clients = self
            .clients
            .values()
            .flat_map(|tx| Timer::ALL.iter().filter_map(|t| tx.deadline(*t)));
        let servers = self
            .servers
            .values()
            .flat_map(|tx| Timer::ALL.iter().filter_map(|t| tx.deadline(*t)));
        clients.chain(servers).min()
    }
}

impl<D> fmt::Debug for Transactions<D> {
    /// Counts only: message bytes stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transactions")
            .field("config", &self.timings)
            .field("clients", &self.clients.len())
            .field("servers", &self.servers.len())
            .field("next_timeout", &self.timers.next())
            .field("queued_outputs", &self.output.len())
            .finish()
    }
}

// === shared state-machine plumbing ===

/// Timer durations derived once from the clamped config (RFC 3261 Table 4, RFC 6026).
#[derive(Clone, Copy, Debug)]
struct Timings {
    t1: Duration,
    t2: Duration,
    t4: Duration,
    /// 64*T1: timers B, F, H, L, M, and J on unreliable transports.
    t1x64: Duration,
    /// Timer D on unreliable transports.
    d: Duration,
}

impl Timings {
    fn new(config: TransactionConfig) -> Self {
        let t1 = config.t1.clamp(MIN_INTERVAL, MAX_TIMER);
        let t2 = config.t2.clamp(MIN_INTERVAL, MAX_TIMER);
        let t4 = config.t4.min(MAX_TIMER);
        let t1x64 = t1 * 64;
        Self {
            t1,
            t2,
            t4,
            t1x64,
            d: t1x64.max(TIMER_D_MIN),
        }
    }

    /// How long a state that only absorbs retransmissions lasts (timers D, I, J, K): `None`
    /// means zero, i.e. terminate now, which is the case on reliable transports.
    fn linger(reliable: bool, unreliable: Duration) -> Option<Duration> {
        (!reliable && !unreliable.is_zero()).then_some(unreliable)
    }
}

/// Response status class, as the state machines see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// 1xx.
    Provisional,
    /// 2xx.
    Success,
    /// 3xx–6xx: a non-2xx final.
    Failure,
}

impl Class {
    /// `None` for codes outside 100..=699, which no state machine accepts.
    fn of(status: u16) -> Option<Self> {
        match status {
            100..=199 => Some(Self::Provisional),
            200..=299 => Some(Self::Success),
            300..=699 => Some(Self::Failure),
            _ => None,
        }
    }
}

/// What a state machine asks of the owner after one input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
enum Step {
    /// The transaction lives on.
    Stay,
    /// Terminated normally: emit only the `*Terminated` event.
    Terminate,
    /// Terminated by a failure: emit this event, then the `*Terminated` event.
    Fail(TxEvent),
}

/// The owner's shared parts, lent to one transaction's state machine for one input.
struct Ctx<'a, D> {
    now: Instant,
    timings: &'a Timings,
    timers: &'a mut TimerQueue,
    output: &'a mut VecDeque<Output<D>>,
}

impl<D: Clone> Ctx<'_, D> {
    fn transmit(&mut self, dest: &D, bytes: Bytes) {
        self.output.push_back(Output::Transmit {
            dest: dest.clone(),
            bytes,
        });
    }

    /// Arms `timer` of `tx` to fire `after` from now and returns its deadline, which the
    /// caller stores in the transaction's new state.
    fn arm(&mut self, timer: Timer, tx: TxRef, after: Duration) -> Instant {
        // Cannot overflow: `after` is at most 64 h (clamped config), far below the range of
        // any `Instant` a clock hands out.
        let at = self.now + after;
        self.timers.schedule(at, timer, tx);
        at
    }

    /// Arms a retransmission timer at its first interval, T1.
    fn arm_retransmit(&mut self, timer: Timer, tx: TxRef) -> timer::Retransmit {
        let r = timer::Retransmit::start(self.now, self.timings.t1);
        self.timers.schedule(r.at, timer, tx);
        r
    }

    /// Re-arms a retransmission timer that just fired with its next `interval`.
    fn rearm_retransmit(
        &mut self,
        r: &mut timer::Retransmit,
        timer: Timer,
        tx: TxRef,
        interval: Duration,
    ) {
        r.interval = interval;
        r.at = self.arm(timer, tx, interval);
    }
}
