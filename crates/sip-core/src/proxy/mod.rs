//! The stateful edge proxy (RFC 3261 §16), sans-IO.
//!
//! [`Proxy`] takes bytes from the network and time as inputs and returns what to send,
//! what to resolve, and what happened. It owns a [`Transactions`] layer; each request it
//! forwards gets a *response context* (one server transaction, one or more branches, each
//! a client transaction), so forking plugs in later as more branches.
//!
//! # The edge policy
//! - **Outside** (the internet) never chooses a destination: every request from outside goes
//!   to the configured upstream (the PBX), whatever its Request-URI or Route say; stg's own
//!   Route entries are removed, foreign ones are passed on for the PBX. stg is never an open
//!   relay into the inside network.
//! - **Inside** (the PBX side) routes by Route and Request-URI (loose routing, strict-router
//!   compatibility); a Route entry stg recorded carries a *flow token* naming the device's
//!   connection, so in-dialog requests reach a device only over the flow it opened.
//! - Record-Route is added to dialog-creating requests, doubled when the two sides are
//!   different listeners (devices on TLS outside, the PBX on TCP/UDP inside).
//! - **Nothing is relayed that no transaction asked for.** A response that matches no client
//!   transaction is dropped after one parse, whatever its Vias say; the one exception is a
//!   2xx whose branch this process minted (RFC 6026), and it goes back only on the flow the
//!   request came from, which the branch carries under a MAC.
//! - **Bounded work per outsider.** Live server transactions are capped globally and per
//!   source (an IPv4 address, an IPv6 /64); the proxy's own rejections are sent once per
//!   received request, statelessly, and never larger than the request over UDP from outside
//!   (no reflection amplification). Tags and branches come from a keyed PRF: nothing on the
//!   wire counts stg's traffic or names it.
//! - **Inside routing has a destination filter** ([`ProxyConfig::allowed_destinations`]):
//!   loopback, link-local and the node's own addresses are never reached by a request whose
//!   destination a message chose, unless the configuration names them.
//!
//! # Inputs and outputs
//! [`Proxy::handle_input`] (one datagram or framed message), [`Proxy::handle_resolved`]
//! (an RFC 3263 answer the shell looked up), [`Proxy::handle_send_failed`] (the shell could
//! not send), [`Proxy::handle_timeout`]. After each, drain [`Proxy::poll_output`] until
//! `None` and re-arm the shell's timer at [`Proxy::poll_timeout`] (the str0m/quinn rule).
//!
//! # Where later parts plug in
//! The target of a request is chosen in one place ([`Proxy`]'s `route_request`); the
//! registrar and push issues replace it with a target set from a location service, each
//! target one more branch of the same response context. Branch outcomes (timeout,
//! transport failure, response) are already inputs of that context.

mod flow_token;
mod late;
mod nonces;
mod routing;
mod stored;
#[cfg(test)]
mod tests;

pub use flow_token::peek_flow_token;
pub use late::{pn_timeout, PushId, PushOutcome, PushPolicy, PushRequest, Wake};
use routing::{unreachable_status, Route, Target};
pub use routing::{
    Authorization, Located, OpId, RegisterAnswer, RegistrarDomain, RegistrarMode, Registration,
};
pub use stored::{DeliveryId, StoredMessage};

use std::collections::{BTreeSet, VecDeque};

use crate::{FastMap, FastSet};
use std::hash::Hasher;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use siphasher::sip::SipHasher24;
use stg_sip_msg::{
    error_response_for_unparsed, put_decimal, HeaderName, Message, Method, RequestEdit, SipUri,
    StatusCode, Uri, Via,
};

use crate::net::{
    canonical, ConnId, Flow, IpNetwork, Listener, ListenerId, Side, SourceKey, Transport,
};
use crate::transaction::{
    ClientMatch, ClientTxId, Output as TxOutput, RequestKind, ServerMatch, ServerState, ServerTxId,
    TransactionConfig, Transactions, TxEvent, TxKey,
};
use flow_token::{push_hex_u64, FlowTokens, Minted, BRANCH_PREFIX};

/// Everything the proxy core needs; built once by the shell from the configuration.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// The node's listeners, indexed by [`ListenerId`].
    pub listeners: Vec<Listener>,
    /// Where requests from outside go (the PBX): its host is resolved per RFC 3263 like any
    /// target; with no transport, the inbound one is used (WS→TCP, WSS→TLS).
    pub upstream: ResolveTarget,
    /// The inside networks (`sip.trusted_networks`): nothing from outside is ever relayed
    /// to them except through the upstream rule.
    pub inside_networks: Vec<IpNetwork>,
    /// Other names of this node (a Request-URI with one of them targets the node itself).
    pub aliases: Vec<String>,
    /// Answer to the source port even without `rport` (RFC 3581 for NATed devices).
    pub force_rport: bool,
    /// Timer C (RFC 3261 §16.6 step 11): how long an INVITE branch may stay proceeding.
    pub timer_c: Duration,
    /// T1, T2, T4.
    pub transactions: TransactionConfig,
    /// Key of the flow-token MAC: random per process (the shell draws it).
    pub flow_key: [u8; 16],
    /// Seed that makes branches and tags unique across restarts (the shell draws it).
    pub seed: u64,
    /// Caps on what outsiders can make the core hold.
    pub limits: ProxyLimits,
    /// Networks a request routed by its own Route/Request-URI (from the inside) may reach.
    /// Empty: any address but loopback, link-local, unspecified, broadcast/multicast and the
    /// node's own listener addresses and aliases. The configured upstream is always allowed.
    pub allowed_destinations: Vec<IpNetwork>,
    /// Domains whose REGISTERs the node takes (and whose AORs it locates); empty: REGISTER
    /// is forwarded like any request.
    pub registrar: Vec<RegistrarDomain>,
    /// This node's id (`node.id`, an RFC 3261 token), written as `stg-node` in its Path so a
    /// stored binding names the node that holds the device's connection; empty: omitted.
    pub node_id: String,
    /// Push wake-up and late forking for devices with push parameters.
    pub push: PushPolicy,
    /// Responses going out to the internet lose the headers that name a product (`Server`,
    /// `User-Agent`, `Warning`): a scanner learns nothing about the PBX behind stg.
    pub hide_products: bool,
    /// Requests from outside whose `User-Agent` is a known scanner's (SIPVicious'
    /// `friendly-scanner`, `sipcli`, …) are dropped unanswered.
    pub drop_scanners: bool,
}

/// What the budgets of [`ProxyLimits`] hold at a moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    /// Calls waiting for pushed devices to come back (fork late).
    pub late_forks: usize,
    /// Requests from the outside waiting for their final answer.
    pub awaiting: usize,
    /// Their bytes.
    pub awaiting_bytes: usize,
    /// Server transactions lingering after their final answer (not answered INVITEs).
    pub lingering: usize,
    /// Digest nonces remembered as relayed to UDP sources (their proof; capped at 65,536).
    pub nonce_proofs: usize,
}

/// Caps on the state the core keeps for others (`sip.max_transactions*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyLimits {
    /// Live server transactions, all sources together. Default 20,000.
    pub max_transactions: usize,
    /// Live server transactions per outside source. Default 200.
    pub max_transactions_per_source: usize,
    /// IPv6 sources are budgeted per prefix of this length. Default 64.
    pub source_prefix_v6: u8,
    /// Bytes of the requests counted by `max_transactions`, together. Default 64 MiB.
    pub max_transaction_bytes: usize,
}

impl Default for ProxyLimits {
    fn default() -> Self {
        Self {
            max_transactions: 20_000,
            max_transactions_per_source: 200,
            source_prefix_v6: 64,
            max_transaction_bytes: 64 << 20,
        }
    }
}

/// A request for the shell to resolve a SIP URI's host (RFC 3263).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ResolveTarget {
    /// Host name.
    pub host: String,
    /// Port, if the URI had one (then no SRV lookup, RFC 3263 §4.2).
    pub port: Option<u16>,
    /// Transport, if the URI had one (then no NAPTR lookup).
    pub transport: Option<Transport>,
    /// `sips:` URI: TLS only.
    pub sips: bool,
}

/// Id of a pending resolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ResolveId(u64);

/// Handed back by the shell when a [`Output::Transmit`] could not be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SendRef {
    ctx: u64,
    branch: u32,
}

/// What the shell must do.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Output {
    /// Send `bytes` on `flow` (for streams with `conn: None`: any connection to the remote,
    /// opened if needed). On failure, call [`Proxy::handle_send_failed`] with `on_fail`.
    Transmit {
        /// Where.
        flow: Flow,
        /// What.
        bytes: Bytes,
        /// Set when the proxy wants to know about a failure.
        on_fail: Option<SendRef>,
    },
    /// Resolve a host and answer with [`Proxy::handle_resolved`].
    Resolve {
        /// The id to answer with.
        id: ResolveId,
        /// What to resolve.
        target: ResolveTarget,
    },
    /// Look up the bindings of an AOR and answer with [`Proxy::handle_located`].
    Locate {
        /// The id to answer with.
        id: OpId,
        /// `user@host`, as in the Request-URI.
        aor: String,
    },
    /// Process a registration and answer with [`Proxy::handle_register`].
    Register(Box<Registration>),
    /// Check the digest credentials of a device's request (RFC 3261 §22.3, a proxy's 407)
    /// and answer with [`Proxy::handle_authorized`].
    Authorize {
        /// The id to answer with.
        id: OpId,
        /// The request as the device sent it.
        request: Message,
        /// Where it came from.
        flow: Flow,
    },
    /// Wake a device with a push and answer with [`Proxy::handle_pushed`].
    Push(Box<PushRequest>),
    /// Keep a message for a device that could not take it now; hand it back with
    /// [`Proxy::deliver`] when the device binds on this node again.
    Store(Box<StoredMessage>),
    /// How a [`Proxy::deliver`] ended: the final status (2xx: the device took it).
    Delivered {
        /// The delivery's id.
        id: DeliveryId,
        /// The final status.
        status: StatusCode,
    },
    /// Something worth a log line.
    Event(Event),
}

/// Noteworthy things, for logs (the counters are in [`Stats`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A message did not parse.
    Malformed {
        /// Who sent it.
        remote: SocketAddr,
        /// Metrics label.
        reason: &'static str,
        /// Human explanation.
        detail: String,
        /// Whether an error response was sent.
        answered: bool,
    },
    /// The upstream answered 401 or 407 (or 403 to a REGISTER) to a request from outside
    /// that carried credentials (RFC 3261 §22): the device's credentials were refused.
    AuthRejected {
        /// Who sent them.
        remote: SocketAddr,
        /// Whether `remote` is proven: a connection, or over UDP, credentials whose nonce
        /// was relayed to that address and no other ([`nonces`]). An unproven failure may be
        /// a spoofer's, written under a user's address.
        proven: bool,
        /// The upstream's answer.
        status: StatusCode,
        /// The `Authorization` (or `Proxy-Authorization`) value sent.
        credentials: Bytes,
    },
    /// A request from outside that was not in a dialog got an answer that says "no such
    /// user" or "not for you" (403, 404, 484, 604): what a user scan (`svwar`) collects, one
    /// answer at a time.
    Probed {
        /// Who asked.
        remote: SocketAddr,
        /// The answer.
        status: StatusCode,
        /// Whether `remote` is proven (a connection, not a UDP datagram that anyone could
        /// have sent under that address): the guard never lets unproven evidence alone ban
        /// an address that has authenticated.
        verified: bool,
    },
    /// The upstream accepted (2xx) a REGISTER from outside with credentials (through mode;
    /// a registrar checks them, where a 2xx to another method may not have): `remote` is a
    /// real user's address, for the guard's "known good" list. Over UDP only when the
    /// credentials' nonce was relayed to that address (see `nonces`).
    AuthAccepted {
        /// Who sent them.
        remote: SocketAddr,
    },
    /// A message was dropped on purpose.
    Dropped {
        /// Who sent it.
        remote: SocketAddr,
        /// Metrics label.
        reason: &'static str,
    },
}

/// Message counters kept by the core; the shell exports them.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Requests received, by method label.
    pub requests_in: FastMap<&'static str, u64>,
    /// Responses received, by status class label (`1xx`..`6xx`).
    pub responses_in: FastMap<&'static str, u64>,
    /// Requests sent (first copies), by method label.
    pub requests_out: FastMap<&'static str, u64>,
    /// Responses sent (first copies), by status class label.
    pub responses_out: FastMap<&'static str, u64>,
    /// Parse failures by reason.
    pub parse_failures: FastMap<&'static str, u64>,
    /// Messages dropped on purpose, by reason.
    pub dropped: FastMap<&'static str, u64>,
    /// Requests refused by a limit or policy (answered where the RFC allows), by reason.
    pub refused: FastMap<&'static str, u64>,
    /// Calls to sleeping devices: `push` (pushes asked), `late_branch` (branches made when a
    /// device came back), `fork_timeout` (calls that waited in vain).
    pub fork: FastMap<&'static str, u64>,
}

fn method_label(m: Option<Method>) -> &'static str {
    match m {
        Some(Method::Ack) => "ACK",
        Some(Method::Bye) => "BYE",
        Some(Method::Cancel) => "CANCEL",
        Some(Method::Info) => "INFO",
        Some(Method::Invite) => "INVITE",
        Some(Method::Message) => "MESSAGE",
        Some(Method::Notify) => "NOTIFY",
        Some(Method::Options) => "OPTIONS",
        Some(Method::Prack) => "PRACK",
        Some(Method::Publish) => "PUBLISH",
        Some(Method::Refer) => "REFER",
        Some(Method::Register) => "REGISTER",
        Some(Method::Subscribe) => "SUBSCRIBE",
        Some(Method::Update) => "UPDATE",
        _ => "other",
    }
}

fn class_label(s: StatusCode) -> &'static str {
    match s.class() {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        5 => "5xx",
        _ => "6xx",
    }
}

fn bump(map: &mut FastMap<&'static str, u64>, k: &'static str) {
    *map.entry(k).or_default() += 1;
}

/// Where a message came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inbound {
    /// The flow it arrived on (after PROXY protocol: the real client address).
    pub flow: Flow,
    /// Its side: the listener's, or Inside for a trusted source.
    pub side: Side,
}

/// The destination type inside the transaction layer.
#[derive(Clone, Copy, Debug)]
struct Dest {
    flow: Flow,
    on_fail: Option<SendRef>,
    /// The anti-amplification budget this send draws on (server transactions towards an
    /// unverified source).
    guard: Option<u64>,
}

#[derive(Debug)]
enum BranchState {
    Resolving,
    Sent(ClientTxId),
    /// The device was pushed and is not reachable: waiting for it to bind again.
    Parked,
    Done,
}

#[derive(Debug)]
struct Branch {
    state: BranchState,
    /// The request as sent; parsed only when a CANCEL or ACK must be derived from it (most
    /// branches never need it, and a parse per forwarded request is measurable).
    sent: Option<Bytes>,
    /// Where it went.
    flow: Option<Flow>,
    provisional: bool,
    cancel_pending: bool,
    /// Side of the target (decides the flow token in Record-Route).
    target_side: Side,
    /// Who chose the destination (decides where it may be).
    policy: DestPolicy,
    /// Resolved addresses not tried yet, for failover on a transport error (RFC 3263 §4.3).
    candidates: Vec<(Transport, SocketAddr)>,
    /// No failover after this (timer B/F of the first attempt).
    deadline: Instant,
    /// This branch's Request-URI, when a target set chose it (a binding's contact).
    request_uri: Option<Bytes>,
    /// A registered device's flow: a transport failure means it is unreachable (480).
    located: bool,
    /// Route values this branch adds (a binding's Path towards the node holding the device).
    routes: Vec<Bytes>,
    /// The binding's key (the device), for a located branch.
    key: Option<Bytes>,
    /// The device can be woken by a push.
    wake: Option<Wake>,
    /// Sent only so a woken iOS app can dismiss a call cancelled meanwhile: INVITE, then
    /// CANCEL at its first provisional; nothing goes back to the caller.
    ghost: bool,
    /// The `Reason` of this branch's CANCEL (RFC 3326).
    cancel_reason: Option<Bytes>,
    /// The flow token of the binding this branch was made for (a refresh of the same
    /// binding makes no new branch).
    conn_token: Option<String>,
    /// When its push timer fires, while armed.
    push_at: Option<Instant>,
    /// The binding's contact (its push parameters), for a located branch.
    contact: Option<Bytes>,
}

impl Branch {
    fn new(spec: BranchSpec, target_side: Side, policy: DestPolicy, deadline: Instant) -> Self {
        Self {
            state: BranchState::Resolving,
            sent: None,
            flow: None,
            provisional: false,
            cancel_pending: false,
            target_side,
            policy,
            candidates: Vec::new(),
            deadline,
            request_uri: spec.request_uri,
            located: spec.located,
            routes: spec.routes,
            key: spec.key,
            wake: spec.wake,
            ghost: spec.ghost,
            cancel_reason: spec.cancel_reason,
            conn_token: spec.conn_token,
            push_at: None,
            contact: spec.contact,
        }
    }
}

/// What a target set says about one branch besides its destination.
#[derive(Debug, Default)]
struct BranchSpec {
    request_uri: Option<Bytes>,
    located: bool,
    routes: Vec<Bytes>,
    key: Option<Bytes>,
    wake: Option<Wake>,
    ghost: bool,
    cancel_reason: Option<Bytes>,
    conn_token: Option<String>,
    contact: Option<Bytes>,
}

#[derive(Debug)]
enum Best {
    Received(Message),
    Local(StatusCode),
}

impl Best {
    fn status(&self) -> StatusCode {
        match self {
            Self::Received(m) => m.status().unwrap_or(StatusCode::SERVER_INTERNAL_ERROR),
            Self::Local(s) => *s,
        }
    }
}

/// How the request is rewritten, fixed before the destination is known.
#[derive(Debug, Clone)]
struct Plan {
    pop_routes: usize,
    record_route: bool,
    request_uri: Option<Bytes>,
    append_route: Option<Bytes>,
    remove_last_route: bool,
    max_forwards: u32,
    loop_hash: u64,
}

/// Who hears a context's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReplyTo {
    /// The request's server transaction.
    Server(ServerTxId),
    /// The shell: a stored message's delivery ([`Output::Delivered`]).
    Stored(DeliveryId),
}

/// A response context (RFC 3261 §16.7).
#[derive(Debug)]
struct Ctx {
    /// Who hears the answer: the server transaction, or the shell for a stored message.
    server: ReplyTo,
    request: Message,
    inbound: Inbound,
    /// Where responses go (RFC 3261 §18.2.2); minted into every branch for RFC 6026.
    reply: Flow,
    top_via: Bytes,
    to_tag: Bytes,
    plan: Plan,
    branches: Vec<Branch>,
    best: Option<Best>,
    final_sent: bool,
    cancelled: bool,
    timer_c: Option<Instant>,
    giving_up: bool,
    /// Over the UDP size limit (RFC 3261 §18.1.1).
    big: bool,
    /// A location or registrar operation in flight: the context must not end before it is
    /// answered, even with no branch.
    waiting: Option<OpId>,
    /// A registration, and how it is handled.
    registration: Option<RegistrarMode>,
    /// `through` registration: the Contact values sent upstream in place of the device's.
    contacts: Option<Vec<Bytes>>,
    /// `through` registration: the Path entry sent upstream.
    path: Option<Bytes>,
    /// `through` registration: the PBX's 2xx, held until the binding is stored.
    held: Option<Message>,
    /// The credentials were stg's (a 407 it sent): they are not passed upstream.
    strip_credentials: bool,
    /// When the request arrived (the fork timeout counts from it).
    created: Instant,
    /// The AOR the location service was asked for.
    aor: Option<String>,
    /// Waiting for pushed devices until this instant (fork late).
    late: Option<Instant>,
    /// Binding keys pushed for this request (one push per device).
    pushed: Vec<Bytes>,
    /// `110 Push sent` went to the caller.
    told_pushed: bool,
    /// Binding keys whose push could not be sent: not waited for.
    push_failed: Vec<Bytes>,
    /// Why the call stopped ringing (the caller's CANCEL, or answered elsewhere): the
    /// `Reason` of a ghost's CANCEL.
    end_reason: Option<Bytes>,
    /// A call the PBX routed along a device's Path (through mode): the flow it names; only
    /// that device's binding is a target.
    path_flow: Option<Flow>,
    /// A message waiting for pushed devices: when its sender is answered 202.
    accept_at: Option<Instant>,
    /// Binding keys whose copy of the message was handed to the shell to keep.
    stored: Vec<Bytes>,
    /// Binding keys that answered 2xx (a message they took is not kept for them).
    took: Vec<Bytes>,
}

/// What a pending resolution is for.
#[derive(Debug)]
enum Pending {
    Branch {
        ctx: u64,
        branch: u32,
    },
    Stateless {
        request: Box<Message>,
        plan: Plan,
        inbound: Inbound,
        target_side: Side,
        policy: DestPolicy,
    },
}

/// The stateful proxy core. See the [module docs](self).
#[derive(Debug)]
pub struct Proxy {
    config: ProxyConfig,
    tokens: FlowTokens,
    tx: Transactions<Dest>,
    ctxs: FastMap<u64, Ctx>,
    by_server: FastMap<ServerTxId, u64>,
    by_client: FastMap<ClientTxId, (u64, u32)>,
    /// 2xx-accepted client transactions: the server transaction their copies go to, and
    /// whether that is towards the outside (product headers removed).
    accepted: FastMap<ClientTxId, (ServerTxId, bool)>,
    /// Lookups in flight, each with the name asked and everything waiting for it.
    pending: FastMap<ResolveId, (ResolveTarget, Vec<Pending>)>,
    /// One lookup per name at a time.
    inflight: FastMap<ResolveTarget, ResolveId>,
    /// Live server transactions per outside source, and the source of each.
    per_source: FastMap<SourceKey, usize>,
    server_source: FastMap<ServerTxId, (SourceKey, usize)>,
    /// Bytes of the requests in `server_source`.
    awaiting_bytes: usize,
    /// Server transactions that have sent their final answer, oldest first (may hold ids
    /// that have already ended), and the set of them.
    lingering: VecDeque<ServerTxId>,
    /// The first instant seen: minted branches count seconds from it.
    epoch: Option<Instant>,
    finals: FastSet<ServerTxId>,
    /// Anti-amplification budgets (bytes) by guard, and the guard of each server transaction.
    amp_budget: FastMap<u64, usize>,
    guard_of: FastMap<ServerTxId, u64>,
    timer_c: BTreeSet<(Instant, u64)>,
    /// Location and registrar operations in flight, and their contexts.
    ops: FastMap<OpId, u64>,
    out: VecDeque<Output>,
    next_id: u64,
    counter: u64,
    stats: Stats,
    draining: bool,
    /// Set while timer output is pumped (see [`Self::guard_server`]).
    retransmitting: bool,
    /// `host:port` of each listener as written in Via and Record-Route, made once.
    host_ports: Vec<Bytes>,
    /// Push timers (context, branch) and fork deadlines (context, `u32::MAX`).
    late_timers: BTreeSet<(Instant, u64, u32)>,
    /// Calls waiting for devices to come back, by AOR.
    late_by_aor: FastMap<String, Vec<u64>>,
    /// Device branches by the connection they were sent on.
    by_conn: FastMap<ConnId, Vec<(u64, u32)>>,
    /// Digest nonces relayed to outside UDP sources: their return-routability proof.
    nonces: nonces::NonceBook,
}

impl Proxy {
    /// A proxy with no state.
    pub fn new(config: ProxyConfig) -> Self {
        let host_ports = config
            .listeners
            .iter()
            .map(|l| Bytes::from(host_port(l)))
            .collect();
        Self {
            host_ports,
            tokens: FlowTokens::new(config.flow_key),
            tx: Transactions::new(config.transactions),
            counter: config.seed,
            config,
            ctxs: FastMap::default(),
            by_server: FastMap::default(),
            by_client: FastMap::default(),
            accepted: FastMap::default(),
            pending: FastMap::default(),
            inflight: FastMap::default(),
            per_source: FastMap::default(),
            server_source: FastMap::default(),
            awaiting_bytes: 0,
            lingering: VecDeque::new(),
            epoch: None,
            finals: FastSet::default(),
            amp_budget: FastMap::default(),
            guard_of: FastMap::default(),
            timer_c: BTreeSet::new(),
            ops: FastMap::default(),
            out: VecDeque::new(),
            next_id: 1,
            stats: Stats::default(),
            draining: false,
            retransmitting: false,
            late_timers: BTreeSet::new(),
            late_by_aor: FastMap::default(),
            by_conn: FastMap::default(),
            nonces: nonces::NonceBook::default(),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// Message counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Live transactions `(client, server)`.
    pub fn transactions_alive(&self) -> (usize, usize) {
        self.tx.alive()
    }

    /// Whether every request taken in has had its final answer (drain can finish).
    ///
    /// Transactions that only linger to absorb retransmissions (timers D, H, I, J, K, L, M)
    /// do not count: waiting up to 32 s for them would hold a restart for nothing.
    pub fn is_idle(&self) -> bool {
        self.ctxs.is_empty()
            && self.pending.is_empty()
            && self.late_by_aor.is_empty()
            && self.by_conn.is_empty()
            && self.ops.is_empty()
            && self.late_timers.is_empty()
    }

    /// Stop accepting new requests: they get 503 with Retry-After while live transactions
    /// finish (graceful drain on SIGTERM).
    pub fn start_drain(&mut self) {
        self.draining = true;
    }

    /// The next output; drain until `None` after every input.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Self::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let c = self.timer_c.first().map(|(t, _)| *t);
        let late = self.late_timers.first().map(|(t, _, _)| *t);
        [self.tx.poll_timeout(), c, late]
            .into_iter()
            .flatten()
            .min()
    }

    /// Fires due timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.tx.handle_timeout(now);
        // What the timers send now are retransmissions (Timer G): they draw on the
        // anti-amplification budgets; first copies never do.
        self.retransmitting = true;
        self.pump(now);
        self.retransmitting = false;
        while let Some(&(at, ctx)) = self.timer_c.first() {
            if at > now {
                break;
            }
            self.timer_c.remove(&(at, ctx));
            self.on_timer_c(ctx, now);
            self.pump(now);
        }
        self.on_late_timers(now);
    }

    /// One datagram or one framed stream message arrived.
    pub fn handle_input(&mut self, inbound: Inbound, bytes: Bytes, now: Instant) {
        match Message::parse(bytes.clone()) {
            Ok(m) if m.is_request() => {
                bump(&mut self.stats.requests_in, method_label(m.method()));
                self.on_request(inbound, m, now);
            }
            Ok(m) => {
                if let Some(s) = m.status() {
                    bump(&mut self.stats.responses_in, class_label(s));
                }
                self.on_response(inbound, m, now);
            }
            Err(e) => {
                bump(&mut self.stats.parse_failures, e.reason());
                let reason = StatusCode::canonical_reason(e.status());
                let answer = error_response_for_unparsed(&bytes, e.status(), reason)
                    .filter(|a| !self.unverified(inbound) || a.len() <= bytes.len());
                let answered = answer.is_some();
                if let Some(bytes) = answer {
                    bump(&mut self.stats.responses_out, class_label(e.status()));
                    self.transmit(inbound.flow, bytes);
                }
                self.out.push_back(Output::Event(Event::Malformed {
                    remote: inbound.flow.remote,
                    reason: e.reason(),
                    detail: e.to_string(),
                    answered,
                }));
            }
        }
        self.pump(now);
    }

    /// The shell's answer to an [`Output::Resolve`]: addresses in preference order, or none.
    /// Every request that waited for the same name is served by the one answer.
    pub fn handle_resolved(
        &mut self,
        id: ResolveId,
        result: &[(Transport, SocketAddr)],
        now: Instant,
    ) {
        let Some((target, waiters)) = self.pending.remove(&id) else {
            return;
        };
        if self.inflight.get(&target) == Some(&id) {
            self.inflight.remove(&target);
        }
        for p in waiters {
            match p {
                Pending::Branch { ctx, branch } => {
                    let big = self.ctxs.get(&ctx).is_some_and(|c| c.big);
                    let candidates = size_rule(&target, result, big);
                    self.try_candidates(ctx, branch, candidates, now);
                }
                Pending::Stateless {
                    request,
                    plan,
                    inbound,
                    target_side,
                    policy,
                } => match self.choose(result, target_side, policy) {
                    Ok((flow, _)) => self.send_stateless(&request, &plan, inbound, flow),
                    Err(_) => self.stats_drop("unresolvable"),
                },
            }
        }
        self.pump(now);
    }

    /// The shell could not deliver a [`Output::Transmit`] that carried `on_fail`.
    pub fn handle_send_failed(&mut self, r: SendRef, now: Instant) {
        let state = self
            .ctxs
            .get(&r.ctx)
            .and_then(|c| c.branches.get(r.branch as usize))
            .map(|b| match b.state {
                BranchState::Sent(id) => Some(id),
                _ => None,
            });
        if let Some(Some(id)) = state {
            self.tx.transport_error(id, now);
        }
        self.pump(now);
    }

    // === requests ===

    fn on_request(&mut self, inbound: Inbound, m: Message, now: Instant) {
        let Some(top) = m.top_via() else {
            return;
        };
        if top.branch() == Some(b"z9hG4bK") {
            // RFC 4475 §3.2.1: the magic cookie alone identifies nothing.
            let r =
                Rejection::new(StatusCode::BAD_REQUEST).reason("Missing Transaction Identifier");
            self.reject(&m, &top, inbound, r);
            return;
        }
        if inbound.side == Side::Outside && self.config.drop_scanners && is_scanner(&m) {
            // A scanner learns nothing, not even that something listens here.
            self.drop(inbound, "scanner");
            return;
        }
        let key = self.server_key(&m, &top, inbound.flow.remote);
        let method = m.method().unwrap_or(Method::Extension);
        let reliable = inbound.flow.transport.is_reliable();
        let guard = self.unverified(inbound).then(|| {
            self.next_id += 1;
            self.next_id
        });
        let reply = Dest {
            flow: self.reply_flow(&top, inbound),
            on_fail: None,
            guard,
        };
        match method {
            Method::Ack => {
                let invite_key = key.with_method(Bytes::from_static(b"INVITE"));
                if let ServerMatch::PassToTu(_) =
                    self.tx
                        .handle_request(invite_key, RequestKind::Ack, reliable, reply, now)
                {
                    // The ACK of a rejection stg sent statelessly carries its To-tag: it ends
                    // here (RFC 3261 §17.2.1, hop by hop).
                    if m.to_tag() == Some(&self.stateless_tag(&m, &top)[..]) {
                        return;
                    }
                    self.forward_stateless(inbound, m, now);
                }
            }
            Method::Cancel => {
                let invite = self
                    .tx
                    .find_server(&key.with_method(Bytes::from_static(b"INVITE")))
                    .and_then(|s| self.by_server.get(&s).copied());
                let Some(ctx) = invite else {
                    // RFC 3261 §16.10 would forward it statelessly; with no INVITE context
                    // here there is nothing it could cancel downstream of us. Answered with
                    // no state (a CANCEL costs an outsider nothing to send).
                    let r = Rejection::new(StatusCode::CALL_DOES_NOT_EXIST);
                    self.reject(&m, &top, inbound, r);
                    return;
                };
                // One CANCEL per live INVITE (it has the INVITE's key and source): never
                // refused for budget, or a device at its limit could not hang up.
                let ServerMatch::New(id) =
                    self.tx
                        .handle_request(key, RequestKind::Cancel, reliable, reply, now)
                else {
                    return;
                };
                self.guard_server(id, guard, m.raw().len());
                let top_via = self.fixed_top_via(&top, inbound.flow.remote);
                let tag = self.new_tag();
                let resp = m.response(StatusCode::OK, None, Some(&tag), Some(&top_via), &[]);
                self.respond(id, StatusCode::OK, resp, now);
                // RFC 3326: the caller's reason goes on to the devices (a bounded copy).
                let reason = m
                    .header_values_by_name(b"Reason")
                    .next()
                    .filter(|r| {
                        r.len() <= late::MAX_REASON_LEN
                            && r.iter().all(|&b| b == b'\t' || !b.is_ascii_control())
                    })
                    .map(|r| m.slice(r));
                self.cancel_ctx(ctx, reason, now);
            }
            _ => {
                let kind = if method == Method::Invite {
                    RequestKind::Invite
                } else {
                    RequestKind::Other
                };
                // A retransmission goes to its transaction; a new request is checked first,
                // so that a rejection costs no state and is sent once per request received.
                let routing = if let Some(id) = self.tx.find_server(&key) {
                    // A retransmission earns its sender the same budget again (QUIC counts
                    // every byte received from an unverified address).
                    if let Some(b) = self
                        .guard_of
                        .get(&id)
                        .and_then(|g| self.amp_budget.get_mut(g))
                    {
                        *b = b.saturating_add(m.raw().len() * AMPLIFICATION_FACTOR);
                    }
                    None
                } else {
                    let checked = self
                        .check_request(&m, inbound)
                        .and_then(|r| self.admit(inbound, m.raw().len()).map(|()| r));
                    match checked {
                        Ok(r) => Some(r),
                        Err(r) => {
                            self.reject(&m, &top, inbound, r);
                            return;
                        }
                    }
                };
                let ServerMatch::New(id) = self.tx.handle_request(key, kind, reliable, reply, now)
                else {
                    return;
                };
                let Some(routing) = routing else {
                    // find_server saw no transaction, so handle_request made a new one.
                    debug_assert!(false, "new server transaction for a known key");
                    self.stats_drop("bug_new_retransmission");
                    return;
                };
                self.count_server(id, inbound, m.raw().len());
                self.guard_server(id, guard, m.raw().len());
                let top_via = self.fixed_top_via(&top, inbound.flow.remote);
                self.new_request(id, inbound, reply.flow, m, top_via, routing, now);
            }
        }
    }

    /// RFC 3261 §16.3 checks and the requests the node answers itself; what routing needs
    /// from the request if it is to be forwarded.
    fn check_request(&self, m: &Message, inbound: Inbound) -> Result<Routing, Rejection> {
        let (pop_routes, route_flow) = self.own_routes(m);
        let foreign_route = m.routes().nth(pop_routes).is_some();
        let uri = m.request_uri();
        // A request for the node itself: HAProxy and monitoring health checks.
        if m.method() == Some(Method::Options) && !foreign_route {
            if let Some(Uri::Sip(u)) = &uri {
                if u.user.is_none() && self.is_local(u) {
                    if self.draining {
                        // A balancer's health check must see the node going away.
                        return Err(Rejection::draining());
                    }
                    return Err(Rejection::new(StatusCode::OK)
                        .header("Allow", b"INVITE, ACK, CANCEL, BYE, OPTIONS, MESSAGE, REGISTER, SUBSCRIBE, NOTIFY, REFER, INFO, UPDATE, PRACK")
                        .header("Accept", b"application/sdp"));
                }
            }
        }
        // In-dialog requests (a BYE ending a call) still pass while draining: from the
        // outside only along our own Route, so made-up ones cannot hold a drain open.
        if self.draining
            && (m.to_tag().is_none() || inbound.side == Side::Outside && pop_routes == 0)
        {
            return Err(Rejection::draining());
        }
        let scheme_ok = match &uri {
            Some(Uri::Sip(_)) => true,
            Some(Uri::Other { scheme, .. }) => scheme.eq_ignore_ascii_case(b"tel"),
            _ => false,
        };
        if !scheme_ok {
            return Err(Rejection::new(StatusCode::UNSUPPORTED_URI_SCHEME));
        }
        if m.max_forwards() == Some(0) {
            return Err(Rejection::new(StatusCode::TOO_MANY_HOPS));
        }
        let loop_hash = loop_hash(&self.tokens, m);
        if self.is_loop(m, loop_hash) {
            return Err(Rejection::new(StatusCode::LOOP_DETECTED));
        }
        let mut unsupported = m.option_tags(HeaderName::ProxyRequire).peekable();
        if unsupported.peek().is_some() {
            let list = unsupported.collect::<Vec<&[u8]>>().join(&b", "[..]);
            return Err(Rejection::new(StatusCode::BAD_EXTENSION).header("Unsupported", &list));
        }
        Ok(Routing {
            pop_routes,
            route_flow,
            loop_hash,
        })
    }

    /// Whether a new request from this source fits the budgets. Budgets count requests still
    /// waiting for their final answer (a context's life); the transactions that only linger
    /// afterwards to absorb retransmissions have their own cap ([`Self::linger`]), so a
    /// device's answered calls never count against it. The inside (the PBX) is not budgeted:
    /// it must always reach devices, whatever outsiders do.
    fn admit(&mut self, inbound: Inbound, len: usize) -> Result<(), Rejection> {
        if inbound.side == Side::Inside {
            return Ok(());
        }
        let limits = self.config.limits;
        let refuse = |this: &mut Self, reason: &'static str| {
            bump(&mut this.stats.refused, reason);
            Err(Rejection::new(StatusCode::SERVICE_UNAVAILABLE).header("Retry-After", b"5"))
        };
        if self.server_source.len() >= limits.max_transactions {
            return refuse(self, "transactions");
        }
        if self.awaiting_bytes.saturating_add(len) > limits.max_transaction_bytes {
            return refuse(self, "transaction_bytes");
        }
        let k = SourceKey::new(inbound.flow.remote.ip(), limits.source_prefix_v6);
        if self.per_source.get(&k).copied().unwrap_or(0) >= limits.max_transactions_per_source {
            return refuse(self, "transactions_per_source");
        }
        Ok(())
    }

    /// Charges a new request to its source until its final answer is sent.
    fn count_server(&mut self, id: ServerTxId, inbound: Inbound, len: usize) {
        if inbound.side == Side::Outside {
            let k = SourceKey::new(
                inbound.flow.remote.ip(),
                self.config.limits.source_prefix_v6,
            );
            *self.per_source.entry(k).or_default() += 1;
            self.server_source.insert(id, (k, len));
            self.awaiting_bytes += len;
        }
    }

    fn uncount_server(&mut self, id: ServerTxId) {
        let Some((k, len)) = self.server_source.remove(&id) else {
            return;
        };
        self.awaiting_bytes -= len;
        if let Some(n) = self.per_source.get_mut(&k) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&k);
            }
        }
    }

    /// A server transaction has sent its final answer and now only lingers (timers J, H, I,
    /// L): beyond the cap on lingering transactions the oldest are ended early. The cost of
    /// ending one early is that a late retransmission of its request is handled as new.
    fn linger(&mut self, id: ServerTxId, now: Instant) {
        self.lingering.push_back(id);
        // Ended ones leave from the front (they end in about the order they were answered).
        while let Some(front) = self.lingering.front() {
            if self.finals.contains(front) {
                break;
            }
            self.lingering.pop_front();
        }
        let cap = self.config.limits.max_transactions.saturating_mul(2).max(1);
        while self.finals.len() > cap {
            let Some(old) = self.lingering.pop_front() else {
                break;
            };
            if self.finals.remove(&old) {
                bump(&mut self.stats.dropped, "lingering_evicted");
                self.tx.server_transport_error(old, now);
            }
        }
    }

    /// What the budgets hold now (for metrics, and the fuzz target's invariants).
    pub fn load(&self) -> Load {
        Load {
            awaiting: self.server_source.len(),
            awaiting_bytes: self.awaiting_bytes,
            lingering: self.finals.len(),
            late_forks: self.late_by_aor.values().map(Vec::len).sum(),
            nonce_proofs: self.nonces.len(),
        }
    }

    /// Over UDP from outside the source address may be forged: the retransmissions a server
    /// transaction sends to it on its own (Timer G copies of a final, forwarded or our own)
    /// stop once they reach three times the bytes of the request (QUIC's anti-amplification
    /// factor, RFC 9000 §8; each retransmitted request earns as much again). A real client
    /// still gets several copies of a lost final, and its ACK stops them anyway; a spoofed
    /// victim no longer gets eleven.
    fn guard_server(&mut self, id: ServerTxId, guard: Option<u64>, request_len: usize) {
        if let Some(g) = guard {
            self.amp_budget
                .insert(g, request_len.saturating_mul(AMPLIFICATION_FACTOR));
            self.guard_of.insert(id, g);
        }
    }

    /// Routing for a request with a fresh server transaction that passed the checks.
    #[allow(clippy::too_many_arguments)]
    fn new_request(
        &mut self,
        id: ServerTxId,
        inbound: Inbound,
        reply: Flow,
        m: Message,
        top_via: Bytes,
        routing: Routing,
        now: Instant,
    ) {
        if m.method() == Some(Method::Invite) {
            let trying = m.response(StatusCode::TRYING, None, None, Some(&top_via), &[]);
            // Over UDP from outside, not even the 100 may be larger than the request.
            if self.unverified(inbound) && trying.len() > m.raw().len() {
                self.stats_drop("amplification");
            } else {
                self.respond(id, StatusCode::TRYING, trying, now);
            }
        }
        let mut plan = Plan {
            pop_routes: routing.pop_routes,
            record_route: m.to_tag().is_none()
                && matches!(
                    m.method(),
                    Some(Method::Invite | Method::Subscribe | Method::Refer | Method::Notify)
                ),
            request_uri: None,
            append_route: None,
            remove_last_route: false,
            max_forwards: m.max_forwards().map_or(70, |n| n - 1),
            loop_hash: routing.loop_hash,
        };
        let route = self.route_request(&m, inbound, &mut plan, routing.route_flow);
        let ctx_id = self.new_ctx(ReplyTo::Server(id), inbound, reply, m, top_via, plan, now);
        match route {
            Route::Target(t) => self.add_branch(ctx_id, t, BranchSpec::default(), now),
            Route::Locate(aor) => {
                let op = self.wait(ctx_id, now);
                if let Some(c) = self.ctxs.get_mut(&ctx_id) {
                    c.aor = Some(aor.clone());
                }
                self.out.push_back(Output::Locate { id: op, aor });
            }
            Route::LocatePath(aor, flow) => {
                let op = self.wait(ctx_id, now);
                if let Some(c) = self.ctxs.get_mut(&ctx_id) {
                    c.aor = Some(aor.clone());
                    c.path_flow = Some(flow);
                }
                self.out.push_back(Output::Locate { id: op, aor });
            }
            Route::Register(mode) => {
                if let Some(c) = self.ctxs.get_mut(&ctx_id) {
                    c.registration = Some(mode);
                }
                self.emit_registration(ctx_id, None, now);
            }
            Route::Authorize => {
                let op = self.wait(ctx_id, now);
                if let Some(c) = self.ctxs.get(&ctx_id) {
                    let (request, flow) = (c.request.clone(), c.inbound.flow);
                    self.out.push_back(Output::Authorize {
                        id: op,
                        request,
                        flow,
                    });
                }
            }
        }
    }

    /// A new response context for request `m`; its id.
    #[allow(clippy::too_many_arguments)]
    fn new_ctx(
        &mut self,
        server: ReplyTo,
        inbound: Inbound,
        reply: Flow,
        m: Message,
        top_via: Bytes,
        plan: Plan,
        now: Instant,
    ) -> u64 {
        let ctx_id = self.next_id;
        self.next_id += 1;
        let tag = self.new_tag();
        let ctx = Ctx {
            server,
            inbound,
            reply,
            top_via,
            to_tag: Bytes::from(tag),
            plan,
            branches: Vec::new(),
            best: None,
            final_sent: false,
            cancelled: false,
            timer_c: None,
            giving_up: false,
            big: m.raw().len() > UDP_SIZE_LIMIT,
            request: m,
            waiting: None,
            registration: None,
            contacts: None,
            path: None,
            held: None,
            strip_credentials: false,
            created: now,
            aor: None,
            late: None,
            pushed: Vec::new(),
            told_pushed: false,
            push_failed: Vec::new(),
            end_reason: None,
            path_flow: None,
            accept_at: None,
            stored: Vec::new(),
            took: Vec::new(),
        };
        self.ctxs.insert(ctx_id, ctx);
        if let ReplyTo::Server(id) = server {
            self.by_server.insert(id, ctx_id);
        }
        ctx_id
    }

    /// The shell's answer to an [`Output::Authorize`].
    pub fn handle_authorized(&mut self, id: OpId, answer: Authorization, now: Instant) {
        let Some(ctx_id) = self.answered(id) else {
            return;
        };
        match answer {
            Authorization::Allow => {
                let upstream = self.config.upstream.clone();
                if let Some(c) = self.ctxs.get_mut(&ctx_id) {
                    c.strip_credentials = true;
                }
                self.add_branch(
                    ctx_id,
                    Target::Resolve(upstream, Side::Inside, DestPolicy::Upstream),
                    BranchSpec::default(),
                    now,
                );
            }
            Authorization::Deny { status, headers } => {
                self.answer_own(ctx_id, status, &headers, now);
            }
        }
        self.pump(now);
    }

    /// Starts one branch of a context towards `target`.
    fn add_branch(&mut self, ctx_id: u64, target: Target, spec: BranchSpec, now: Instant) {
        let (target_side, policy) = match &target {
            Target::Flow(_) => (Side::Outside, DestPolicy::Upstream),
            Target::Resolve(_, side, policy) => (*side, *policy),
        };
        let deadline = now + 64 * self.tx.config().t1;
        let Some(ctx) = self.ctxs.get_mut(&ctx_id) else {
            return;
        };
        let b = ctx.branches.len() as u32;
        ctx.branches
            .push(Branch::new(spec, target_side, policy, deadline));
        let big = ctx.big;
        self.arm_push_timer(ctx_id, b, now);
        match target {
            Target::Flow(flow) => self.send_branch(ctx_id, b, flow, now),
            Target::Resolve(t, _, _) => match literal_candidates(&t, big) {
                Some(candidates) => self.try_candidates(ctx_id, b, candidates, now),
                None => self.resolve(
                    t,
                    Pending::Branch {
                        ctx: ctx_id,
                        branch: b,
                    },
                    now,
                ),
            },
        }
    }

    /// Marks a context as waiting for an operation of the shell, with a deadline: timer C
    /// for an INVITE (RFC 3261 §16.6 step 11 bounds a call's wait, whatever it waits for),
    /// half of timer F otherwise (the client gives up at 64·T1: a late answer is useless).
    fn wait(&mut self, ctx_id: u64, now: Instant) -> OpId {
        let op = OpId(self.next_id);
        self.next_id += 1;
        self.ops.insert(op, ctx_id);
        let invite_wait = self.config.timer_c;
        let other_wait = 32 * self.tx.config().t1;
        if let Some(ctx) = self.ctxs.get_mut(&ctx_id) {
            ctx.waiting = Some(op);
            if ctx.timer_c.is_none() {
                let wait = if ctx.request.method() == Some(Method::Invite) {
                    invite_wait
                } else {
                    other_wait
                };
                let t = now + wait;
                ctx.timer_c = Some(t);
                self.timer_c.insert((t, ctx_id));
            }
        }
        op
    }

    /// Takes the operation `op` off its context, if the context still waits for it.
    fn answered(&mut self, op: OpId) -> Option<u64> {
        let ctx_id = self.ops.remove(&op)?;
        let ctx = self.ctxs.get_mut(&ctx_id)?;
        if ctx.waiting != Some(op) {
            return None;
        }
        ctx.waiting = None;
        if ctx.branches.is_empty() {
            if let Some(t) = ctx.timer_c.take() {
                self.timer_c.remove(&(t, ctx_id));
            }
        }
        Some(ctx_id)
    }

    /// Hands a registration to the shell: `response` is the PBX's 2xx in `through` mode.
    fn emit_registration(&mut self, ctx_id: u64, response: Option<Message>, now: Instant) {
        let op = self.wait(ctx_id, now);
        let Some(ctx) = self.ctxs.get(&ctx_id) else {
            return;
        };
        let Some(mode) = ctx.registration else {
            return;
        };
        let flow = ctx.inbound.flow;
        let path = match &ctx.path {
            Some(p) => p.clone(),
            None => self.path_entry(&flow, None),
        };
        let r = Registration {
            id: op,
            mode,
            request: ctx.request.clone(),
            flow,
            flow_token: self.tokens.encode(&flow),
            path,
            response,
        };
        self.out.push_back(Output::Register(Box::new(r)));
    }

    /// The location service's answer for [`Output::Locate`]: the bindings found (`Err`: the
    /// store failed). One branch per target whose flow token checks; none: 404 when nobody is
    /// registered, 480 when no binding is reachable, 503 when the store failed.
    pub fn handle_located(&mut self, id: OpId, result: Result<&[Located], ()>, now: Instant) {
        let Some(ctx_id) = self.answered(id) else {
            return;
        };
        let path_flow = self.ctxs.get(&ctx_id).and_then(|c| c.path_flow);
        if let Some(pf) = path_flow {
            self.located_path(ctx_id, pf, result.unwrap_or(&[]), now);
            self.pump(now);
            return;
        }
        let Ok(targets) = result else {
            self.finish_with(ctx_id, StatusCode::SERVICE_UNAVAILABLE, now);
            self.pump(now);
            return;
        };
        let mut branches = Vec::with_capacity(targets.len());
        for t in targets.iter().take(MAX_TARGETS) {
            let mut spec = BranchSpec {
                request_uri: Some(t.uri.clone()),
                located: true,
                routes: Vec::new(),
                key: Some(t.key.clone()),
                wake: t.wake,
                ghost: false,
                cancel_reason: None,
                conn_token: t.conn.clone(),
                contact: Some(t.uri.clone()),
            };
            match self.binding_target(t) {
                Some((target, routes)) => {
                    spec.routes = routes;
                    branches.push((Some(target), spec));
                }
                // Not connected here, but a push can wake it.
                None if t.wake.is_some() => branches.push((None, spec)),
                None => bump(&mut self.stats.dropped, "binding_unreachable"),
            }
        }
        if branches.is_empty() {
            self.finish_with(ctx_id, unreachable_status(targets.len()), now);
        } else {
            for (target, spec) in branches {
                match target {
                    Some(target) => self.add_branch(ctx_id, target, spec, now),
                    None => self.add_asleep(ctx_id, spec, now),
                }
            }
        }
        self.pump(now);
    }

    /// The shell's answer to an [`Output::Register`].
    pub fn handle_register(&mut self, id: OpId, answer: RegisterAnswer, now: Instant) {
        let Some(ctx_id) = self.answered(id) else {
            return;
        };
        match answer {
            RegisterAnswer::Forward { contacts } => {
                let upstream = self.config.upstream.clone();
                if let Some(c) = self.ctxs.get_mut(&ctx_id) {
                    c.contacts = Some(contacts);
                }
                self.add_branch(
                    ctx_id,
                    Target::Resolve(upstream, Side::Inside, DestPolicy::Upstream),
                    BranchSpec::default(),
                    now,
                );
            }
            RegisterAnswer::Respond { status, headers } => {
                let Some(ctx) = self.ctxs.get_mut(&ctx_id) else {
                    return;
                };
                match ctx.held.take() {
                    Some(ok) if status.is_success() => {
                        // The device's own binding comes first: over UDP from outside, the
                        // others go until the answer is no larger than the request.
                        let unverified = ctx.inbound.side == Side::Outside
                            && ctx.inbound.flow.transport == Transport::Udp;
                        let limit = ctx.request.raw().len() * AMPLIFICATION_FACTOR;
                        let mut n = headers.len();
                        let bytes = loop {
                            let extra: Vec<(&str, &[u8])> =
                                headers[..n].iter().map(|(h, v)| (*h, &v[..])).collect();
                            let b = ok.forward_response_edited(
                                &[
                                    HeaderName::Contact,
                                    HeaderName::Server,
                                    HeaderName::UserAgent,
                                    HeaderName::Warning,
                                ],
                                &extra,
                            );
                            if !unverified || b.len() <= limit || n <= 1 {
                                break b;
                            }
                            n -= 1;
                        };
                        ctx.final_sent = true;
                        let server = ctx.server;
                        self.reply(server, status, bytes, now);
                        self.maybe_finish(ctx_id, now);
                    }
                    _ => self.answer_own(ctx_id, status, &headers, now),
                }
            }
        }
        self.pump(now);
    }

    /// The node's own final answer to a context's request (a registrar's 200, a challenge).
    /// Over UDP from outside the source may be spoofed, so the answer is at most three times
    /// the request (QUIC's bound before an address is validated, RFC 9000 §8, and the budget
    /// Timer G already draws on): a challenge must reach a small REGISTER (SIPp's is 339
    /// bytes) or the device can never log in. Headers go from the last, a challenge keeps its
    /// first one, and an answer that still does not fit is not sent (the transaction ends
    /// unanswered).
    fn answer_own(
        &mut self,
        ctx_id: u64,
        status: StatusCode,
        headers: &[(&'static str, Bytes)],
        now: Instant,
    ) {
        let unverified = self
            .ctxs
            .get(&ctx_id)
            .is_some_and(|c| self.unverified(c.inbound));
        let Some(ctx) = self.ctxs.get_mut(&ctx_id) else {
            return;
        };
        let limit = ctx.request.raw().len() * AMPLIFICATION_FACTOR;
        let keep_min = usize::from(matches!(status.0, 401 | 407) && !headers.is_empty());
        let mut n = headers.len();
        let bytes = loop {
            let extra: Vec<(&str, &[u8])> =
                headers[..n].iter().map(|(h, v)| (*h, &v[..])).collect();
            let bytes =
                ctx.request
                    .response(status, None, Some(&ctx.to_tag), Some(&ctx.top_via), &extra);
            if !unverified || bytes.len() <= limit {
                break Some(bytes);
            }
            if n <= keep_min {
                break None;
            }
            n -= 1;
        };
        ctx.final_sent = true;
        let server = ctx.server;
        match (bytes, server) {
            (Some(b), _) => self.reply(server, status, b, now),
            (None, ReplyTo::Server(server)) => {
                self.stats_drop("amplification");
                self.uncount_server(server);
                self.tx.server_transport_error(server, now);
            }
            (None, ReplyTo::Stored(_)) => {}
        }
        self.maybe_finish(ctx_id, now);
    }

    /// Answers a context that has no branch left to wait for with `status`.
    fn finish_with(&mut self, ctx_id: u64, status: StatusCode, now: Instant) {
        if let Some(ctx) = self.ctxs.get_mut(&ctx_id) {
            if better(status, ctx.best.as_ref().map(Best::status)) {
                ctx.best = Some(Best::Local(status));
            }
        }
        self.maybe_finish(ctx_id, now);
    }

    /// Asks the shell to resolve `target` for `waiter`; one lookup per name at a time.
    fn resolve(&mut self, target: ResolveTarget, waiter: Pending, now: Instant) {
        if let Some(id) = self.inflight.get(&target).copied() {
            if let Some((_, waiters)) = self.pending.get_mut(&id) {
                // Stateless waiters (ACKs, which anyone can send without limit) have a small
                // share of their own: they must not crowd out requests with a context.
                let stateless = matches!(waiter, Pending::Stateless { .. });
                let n = waiters
                    .iter()
                    .filter(|w| matches!(w, Pending::Stateless { .. }) == stateless)
                    .count();
                let cap = if stateless {
                    MAX_STATELESS_WAITERS
                } else {
                    MAX_RESOLVE_WAITERS
                };
                if n < cap {
                    waiters.push(waiter);
                    return;
                }
                bump(&mut self.stats.refused, "resolve_waiters");
                match waiter {
                    Pending::Branch { ctx, branch } => {
                        self.branch_failed(ctx, branch, StatusCode::SERVICE_UNAVAILABLE, now);
                    }
                    Pending::Stateless { .. } => self.stats_drop("unresolvable"),
                }
                return;
            }
        }
        let id = ResolveId(self.next_id);
        self.next_id += 1;
        self.inflight.insert(target.clone(), id);
        self.pending.insert(id, (target.clone(), vec![waiter]));
        self.out.push_back(Output::Resolve { id, target });
    }

    /// Sends branch `b` to the first usable, allowed candidate; keeps the rest for failover
    /// (RFC 3263 §4.3). No usable candidate: 403 when the policy refused them, else 503.
    fn try_candidates(
        &mut self,
        ctx_id: u64,
        b: u32,
        candidates: Vec<(Transport, SocketAddr)>,
        now: Instant,
    ) {
        let Some(br) = self
            .ctxs
            .get(&ctx_id)
            .and_then(|c| c.branches.get(b as usize))
        else {
            return;
        };
        let (side, policy) = (br.target_side, br.policy);
        match self.choose(&candidates, side, policy) {
            Ok((flow, rest)) => {
                let rest = candidates[rest..].to_vec();
                if let Some(br) = self
                    .ctxs
                    .get_mut(&ctx_id)
                    .and_then(|c| c.branches.get_mut(b as usize))
                {
                    br.candidates = rest;
                }
                self.send_branch(ctx_id, b, flow, now);
            }
            Err(status) => self.branch_failed(ctx_id, b, status, now),
        }
    }

    /// The first candidate that is usable, allowed by `policy` and has a listener, and the
    /// index of the candidates after it.
    fn choose(
        &mut self,
        candidates: &[(Transport, SocketAddr)],
        side: Side,
        policy: DestPolicy,
    ) -> Result<(Flow, usize), StatusCode> {
        let mut forbidden = false;
        for (i, &(transport, remote)) in candidates.iter().enumerate() {
            let remote = SocketAddr::new(canonical(remote.ip()), remote.port());
            if is_unusable(remote.ip()) {
                continue;
            }
            if !self.destination_allowed(remote.ip(), policy) {
                forbidden = true;
                continue;
            }
            if let Some(flow) = self.pick_flow(transport, remote, side) {
                return Ok((flow, i + 1));
            }
        }
        if forbidden {
            bump(&mut self.stats.refused, "destination");
            Err(StatusCode::FORBIDDEN)
        } else {
            Err(StatusCode::SERVICE_UNAVAILABLE)
        }
    }

    /// Whether a request may be sent to `ip` (already canonical).
    fn destination_allowed(&self, ip: IpAddr, policy: DestPolicy) -> bool {
        if policy == DestPolicy::Upstream {
            return true;
        }
        if !self.config.allowed_destinations.is_empty() {
            return self
                .config
                .allowed_destinations
                .iter()
                .any(|n| n.contains(ip));
        }
        let special = match ip {
            IpAddr::V4(a) => a.is_loopback() || a.is_link_local() || a.octets()[0] == 0,
            // fe80::/10 link-local; ::1 loopback.
            IpAddr::V6(a) => a.is_loopback() || (a.segments()[0] & 0xffc0) == 0xfe80,
        };
        !special && !self.is_own_addr(ip)
    }

    /// The node's own addresses: its listeners' (bound and advertised) and its IP aliases.
    /// A listener on a wildcard address covers every interface address, which the core does
    /// not know: `sip.allowed_destinations` (or a firewall) must then exclude them.
    fn is_own_addr(&self, ip: IpAddr) -> bool {
        self.config.listeners.iter().any(|l| {
            canonical(l.local.ip()) == ip
                || l.host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                    .is_ok_and(|h| canonical(h) == ip)
        }) || self
            .config
            .aliases
            .iter()
            .any(|a| a.parse::<IpAddr>().is_ok_and(|x| canonical(x) == ip))
    }

    /// A listener to reach `remote` over `transport` from, preferring `side` and the
    /// address family of the remote.
    fn pick_flow(&self, transport: Transport, remote: SocketAddr, side: Side) -> Option<Flow> {
        let l = self
            .config
            .listeners
            .iter()
            .filter(|l| l.transport == transport)
            .max_by_key(|l| (l.side == side, l.local.is_ipv4() == remote.is_ipv4()))?;
        Some(Flow {
            listener: l.id,
            transport,
            remote,
            conn: None,
        })
    }

    fn send_branch(&mut self, ctx_id: u64, b: u32, flow: Flow, now: Instant) {
        let Some(ctx) = self.ctxs.get(&ctx_id) else {
            return;
        };
        let ghost = ctx.branches.get(b as usize).is_some_and(|br| br.ghost);
        // A message still owed to a device goes out after its sender's 202 (stored.rs).
        let owed = ctx
            .branches
            .get(b as usize)
            .and_then(|br| br.key.as_ref())
            .is_some_and(|k| ctx.owes_message(k));
        if !ghost
            && (ctx.cancelled
                || ctx.final_sent
                    && !owed
                    && !ctx.request.method().is_some_and(|m| m == Method::Invite))
        {
            self.branch_failed(ctx_id, b, StatusCode::REQUEST_TERMINATED, now);
            return;
        }
        let Some(out_l) = self.listener(flow.listener).cloned() else {
            self.branch_failed(ctx_id, b, StatusCode::SERVICE_UNAVAILABLE, now);
            return;
        };
        let (loop_hash, reply) = (ctx.plan.loop_hash, ctx.reply);
        let branch = self.new_branch(loop_hash, reply, flow.remote.ip(), now);
        let Some(ctx) = self.ctxs.get(&ctx_id) else {
            return;
        };
        let host_port = self.host_port(out_l.id);
        let via = our_via(flow.transport, &host_port, &branch, true);
        let rr = if ctx.plan.record_route {
            self.record_routes(ctx.inbound, flow)
        } else {
            Vec::new()
        };
        let rr_refs: Vec<&[u8]> = rr.iter().map(Vec::as_slice).collect();
        // A `through` registration leaves with stg's Path first and the device's Contacts
        // as the registrar rewrote them.
        let path = ctx
            .registration
            .is_some()
            .then(|| self.path_entry(&ctx.inbound.flow, Some(out_l.id)));
        let mut extra: Vec<(&str, &[u8])> = Vec::new();
        if let Some(p) = &path {
            extra.push(("Path", p));
        }
        if let Some(contacts) = &ctx.contacts {
            extra.extend(contacts.iter().map(|c| ("Contact", &c[..])));
        }
        let mut drop: Vec<HeaderName> = Vec::new();
        if ctx.inbound.side == Side::Outside {
            // The PBX trusts stg: an identity asserted by a device would be taken as proven
            // (RFC 3325 §5: removed at the trust boundary).
            drop.extend([HeaderName::PAssertedIdentity, HeaderName::RemotePartyId]);
            // A Path the device wrote itself would make the PBX send its calls wherever the
            // device likes: from the internet, stg's entry is the only one (the first hop).
            if ctx.request.method() == Some(Method::Register) {
                drop.push(HeaderName::Path);
            }
        }
        if ctx.contacts.is_some() {
            drop.push(HeaderName::Contact);
        }
        if ctx.strip_credentials {
            drop.push(HeaderName::ProxyAuthorization);
        }
        if let Some(br) = ctx.branches.get(b as usize) {
            extra.extend(br.routes.iter().map(|r| ("Route", &r[..])));
        }
        let request_uri = ctx
            .branches
            .get(b as usize)
            .and_then(|br| br.request_uri.as_deref())
            .or(ctx.plan.request_uri.as_deref());
        let bytes = ctx.request.forward_request(&RequestEdit {
            request_uri,
            top_via: Some(&ctx.top_via),
            via: &via,
            record_route: &rr_refs,
            pop_routes: ctx.plan.pop_routes,
            append_route: ctx.plan.append_route.as_deref(),
            remove_last_route: ctx.plan.remove_last_route,
            max_forwards: ctx.plan.max_forwards,
            drop: &drop,
            extra: &extra,
        });
        let method = ctx.request.method();
        let kind = if method == Some(Method::Invite) {
            RequestKind::Invite
        } else {
            RequestKind::Other
        };
        let key = TxKey::new(
            Bytes::from(branch),
            host_port,
            ctx.request.slice(ctx.request.cseq_method()),
        );
        let dest = Dest {
            flow,
            on_fail: Some(SendRef {
                ctx: ctx_id,
                branch: b,
            }),
            guard: None,
        };
        bump(&mut self.stats.requests_out, method_label(method));
        match self.tx.start_client(
            key,
            kind,
            flow.transport.is_reliable(),
            dest,
            bytes.clone(),
            now,
        ) {
            Ok(id) => {
                self.by_client.insert(id, (ctx_id, b));
                let timer_c = (kind == RequestKind::Invite).then(|| now + self.config.timer_c);
                let mut located = false;
                if let Some(ctx) = self.ctxs.get_mut(&ctx_id) {
                    if path.is_some() {
                        ctx.path = path;
                    }
                    if let Some(br) = ctx.branches.get_mut(b as usize) {
                        br.state = BranchState::Sent(id);
                        br.sent = Some(bytes);
                        br.flow = Some(flow);
                        // A ghost is cancelled as soon as the device rings.
                        br.cancel_pending = br.ghost;
                        located = br.located;
                    }
                    if let Some(t) = timer_c {
                        if let Some(old) = ctx.timer_c.replace(t) {
                            self.timer_c.remove(&(old, ctx_id));
                        }
                        self.timer_c.insert((t, ctx_id));
                    }
                }
                if located {
                    self.index_conn(ctx_id, b, flow);
                }
            }
            Err(_) => self.branch_failed(ctx_id, b, StatusCode::SERVER_INTERNAL_ERROR, now),
        }
    }

    /// Record-Route values, top first: the outbound listener's, then the inbound one's when
    /// they differ (RFC 3261 §16.6 step 4, doubled across listeners). The entry facing the
    /// outside carries the flow token of the device's flow.
    fn record_routes(&self, inbound: Inbound, out: Flow) -> Vec<Vec<u8>> {
        let entry = |l: &Listener, token: Option<&Flow>| {
            let host_port = self.host_port(l.id);
            let mut e = Vec::with_capacity(96 + host_port.len());
            e.extend_from_slice(b"<sip:");
            if let Some(f) = token {
                e.extend_from_slice(self.tokens.encode(f).as_bytes());
                e.push(b'@');
            }
            e.extend_from_slice(&host_port);
            e.extend_from_slice(b";transport=");
            e.extend_from_slice(l.transport.param().as_bytes());
            e.extend_from_slice(b";lr>");
            e
        };
        let (Some(in_l), Some(out_l)) = (
            self.listener(inbound.flow.listener),
            self.listener(out.listener),
        ) else {
            return Vec::new();
        };
        let in_token = (inbound.side == Side::Outside).then_some(&inbound.flow);
        let out_token = (in_l.side == Side::Inside || inbound.side == Side::Inside).then_some(&out);
        if in_l.id == out_l.id {
            return vec![entry(in_l, in_token.or(out_token))];
        }
        vec![
            entry(out_l, out_token.filter(|_| in_token.is_none())),
            entry(in_l, in_token),
        ]
    }

    /// ACK for a 2xx, and other requests that are routed without a transaction.
    fn forward_stateless(&mut self, inbound: Inbound, m: Message, now: Instant) {
        let (pop_routes, route_flow) = self.own_routes(&m);
        let mut plan = Plan {
            pop_routes,
            record_route: false,
            request_uri: None,
            append_route: None,
            remove_last_route: false,
            max_forwards: match m.max_forwards() {
                Some(0) => {
                    bump(&mut self.stats.dropped, "max_forwards");
                    return;
                }
                Some(n) => n - 1,
                None => 70,
            },
            loop_hash: loop_hash(&self.tokens, &m),
        };
        let target = match self.route_request(&m, inbound, &mut plan, route_flow) {
            Route::Target(t) => t,
            Route::LocatePath(_, flow) => Target::Flow(flow),
            Route::Locate(_) | Route::Register(_) | Route::Authorize => {
                // Only requests with a context look bindings up.
                self.stats_drop("unroutable");
                return;
            }
        };
        match target {
            Target::Flow(flow) => self.send_stateless(&m, &plan, inbound, flow),
            Target::Resolve(t, side, policy) => match literal_candidates(&t, false) {
                Some(candidates) => match self.choose(&candidates, side, policy) {
                    Ok((flow, _)) => self.send_stateless(&m, &plan, inbound, flow),
                    Err(_) => self.stats_drop("unresolvable"),
                },
                None => self.resolve(
                    t,
                    Pending::Stateless {
                        request: Box::new(m),
                        plan,
                        inbound,
                        target_side: side,
                        policy,
                    },
                    now,
                ),
            },
        }
    }

    fn send_stateless(&mut self, m: &Message, plan: &Plan, inbound: Inbound, flow: Flow) {
        let Some(l) = self.listener(flow.listener).cloned() else {
            return;
        };
        let top = m.top_via();
        let top_via = top.map(|t| self.fixed_top_via(&t, inbound.flow.remote));
        // A stateless hop's branch must be the same for retransmissions (RFC 3261 §16.11),
        // and as unpredictable as a stateful one.
        let mut branch = Vec::with_capacity(48);
        branch.extend_from_slice(BRANCH_PREFIX);
        push_hex_u64(&mut branch, plan.loop_hash);
        branch.push(b'-');
        push_hex_u64(
            &mut branch,
            self.tokens.keyed_hash(&[
                top.and_then(|t| t.branch()).unwrap_or(b""),
                m.method_bytes(),
            ]),
        );

        let via = our_via(flow.transport, &self.host_port(l.id), &branch, false);
        let bytes = m.forward_request(&RequestEdit {
            request_uri: plan.request_uri.as_deref(),
            top_via: top_via.as_deref(),
            via: &via,
            record_route: &[],
            pop_routes: plan.pop_routes,
            append_route: plan.append_route.as_deref(),
            remove_last_route: plan.remove_last_route,
            max_forwards: plan.max_forwards,
            drop: &[],
            extra: &[],
        });
        bump(&mut self.stats.requests_out, method_label(m.method()));
        self.transmit(flow, bytes);
    }

    // === responses ===

    fn on_response(&mut self, inbound: Inbound, m: Message, now: Instant) {
        let Some(top) = m.top_via() else {
            return;
        };
        if !self.is_our_via(&top) {
            // RFC 3261 §18.1.2: a response whose top Via is not ours is discarded.
            self.drop(inbound, "via_not_ours");
            return;
        }
        let Some(status) = m.status() else {
            return;
        };
        let key = TxKey::new(
            m.slice(top.branch().unwrap_or(b"")),
            m.slice(top.sent_by()),
            m.slice(m.cseq_method()),
        );
        // A response counts only from where its request went: anyone who learnt a branch
        // could otherwise answer (or end) someone else's call.
        if let Some(id) = self.tx.find_client(&key) {
            let from = canonical(inbound.flow.remote.ip());
            let to = self
                .tx
                .client_dest(id)
                .map(|d| canonical(d.flow.remote.ip()));
            if to.is_some_and(|to| to != from) {
                self.drop(inbound, "response_from_elsewhere");
                return;
            }
        }
        match self.tx.handle_response(&key, status.0, now) {
            ClientMatch::Pass { id, needs_ack } => {
                if let Some(&(server, outward)) = self.accepted.get(&id) {
                    // RFC 6026 §7.2, §8.4: every 2xx copy goes on, through the server
                    // transaction (Accepted) so it takes the caller's exact flow.
                    if status.is_success() {
                        let bytes = self.relayed(outward, &m);
                        self.respond(server, status, bytes, now);
                    }
                    return;
                }
                let Some(&(ctx_id, b)) = self.by_client.get(&id) else {
                    return;
                };
                if needs_ack {
                    let ack = self
                        .ctxs
                        .get(&ctx_id)
                        .and_then(|c| c.branches.get(b as usize))
                        .and_then(|br| br.sent.clone())
                        .and_then(|sent| Message::parse(sent).ok())
                        .map(|sent| sent.ack_for(&m));
                    if let Some(ack) = ack {
                        let _ = self.tx.set_ack(id, ack, now);
                    }
                }
                self.branch_response(ctx_id, b, m, now);
            }
            ClientMatch::Absorbed => {}
            _ => self.stray_response(inbound, &m, &top, status, now),
        }
    }

    /// A response that matches no transaction. RFC 3261 §16.7 would forward it by its next
    /// Via; at an edge that makes stg a relay to anywhere a forged Via names (a loopback
    /// Redis, an inside host, another device's TLS session) and a loop through itself. The
    /// one legitimate case is a 2xx retransmitted after its transaction ended (RFC 6026):
    /// its branch is one stg minted, and it goes back on the flow that branch carries.
    fn stray_response(
        &mut self,
        inbound: Inbound,
        m: &Message,
        top: &Via<'_>,
        status: StatusCode,
        now: Instant,
    ) {
        if status.is_success() && m.via_count() >= 2 && m.cseq_method() == b"INVITE" {
            if let Some(minted) = top.branch().and_then(|b| self.tokens.branch_flow(b)) {
                // Only from where the request went, and only while its callee may still be
                // retransmitting the 2xx: timer C, then 64*T1 of retransmissions, twice over.
                let window = self.config.timer_c + 128 * self.tx.config().t1;
                let age = self.secs(now).saturating_sub(minted.at_secs);
                if minted.sent_to == self.tokens.addr_tag(inbound.flow.remote.ip())
                    && u64::from(age) <= window.as_secs()
                {
                    bump(&mut self.stats.responses_out, class_label(status));
                    let outward = self
                        .listener(minted.reply.listener)
                        .is_some_and(|l| l.side == Side::Outside);
                    let bytes = self.relayed(outward, m);
                    self.transmit(minted.reply, bytes);
                    return;
                }
            }
        }
        self.drop(inbound, "stray_response");
    }

    /// RFC 3261 §16.7 for one branch's response.
    fn branch_response(&mut self, ctx_id: u64, b: u32, m: Message, now: Instant) {
        let Some(status) = m.status() else {
            return;
        };
        if m.via_count() < 2 {
            // §16.7 step 3: with only our Via, the response was meant for us; it must not be
            // forwarded (it would leave with no Via at all). A final ends the branch as a 502.
            self.stats_drop("no_next_via");
            if !status.is_provisional() {
                self.branch_failed(ctx_id, b, StatusCode(502), now);
            }
            return;
        }
        let Some(ctx) = self.ctxs.get_mut(&ctx_id) else {
            return;
        };
        let server = ctx.server;
        if status.is_provisional() {
            let Some(br) = ctx.branches.get_mut(b as usize) else {
                return;
            };
            br.provisional = true;
            let cancel_now = br.cancel_pending;
            br.cancel_pending = false;
            // Timer C restarts on every provisional (RFC 3261 §16.7 step 2).
            if let Some(old) = ctx
                .timer_c
                .take_if(|_| status != StatusCode::TRYING && !ctx.giving_up)
            {
                self.timer_c.remove(&(old, ctx_id));
                let t = now + self.config.timer_c;
                ctx.timer_c = Some(t);
                self.timer_c.insert((t, ctx_id));
            }
            let final_sent = ctx.final_sent;
            if cancel_now {
                self.send_cancel(ctx_id, b, now);
            }
            if status != StatusCode::TRYING && !final_sent {
                let outward = self
                    .ctxs
                    .get(&ctx_id)
                    .is_some_and(|c| c.inbound.side == Side::Outside);
                let bytes = self.relayed(outward, &m);
                self.reply(server, status, bytes, now);
            }
            return;
        }
        // A 408 or 503 from a device's dead connection (its device was pushed, or can be)
        // does not end the call: the branch waits for the device to come back.
        // Dead: the answer of a node on the way (the device's Path) or of a device already
        // pushed; a device's own 408/503 on a live connection is its answer.
        let dead = matches!(status.0, 408 | 503)
            && ctx.branches.get(b as usize).is_some_and(|br| {
                br.wake.is_some()
                    && (!br.routes.is_empty()
                        || br.key.as_ref().is_some_and(|k| ctx.pushed.contains(k)))
            });
        if dead && self.unreachable(ctx_id, b, now) {
            self.maybe_finish(ctx_id, now);
            return;
        }
        let Some(ctx) = self.ctxs.get_mut(&ctx_id) else {
            return;
        };
        // A device reached twice (its old connection was alive after all) refuses the second
        // INVITE as a merged request (RFC 3261 §8.2.2.2): not an answer while the other rings.
        // A ghost's answers never reach the caller (it has its 487).
        let key = ctx.branches.get(b as usize).and_then(|br| br.key.clone());
        let twin_alive = status.0 == 482
            && ctx.branches.iter().enumerate().any(|(i, br)| {
                i as u32 != b && br.key == key && matches!(br.state, BranchState::Sent(_))
            });
        let ghost = ctx.branches.get(b as usize).is_some_and(|br| br.ghost);
        if twin_alive || ghost {
            if let Some(br) = ctx.branches.get_mut(b as usize) {
                br.state = BranchState::Done;
            }
            if ghost && status.is_success() {
                // The woken iOS user accepted a call that was over: not forwarded; without an
                // ACK the app ends the dialog itself (RFC 3261 §13.3.1.4).
                bump(&mut self.stats.fork, "ghost_answered");
            }
            self.maybe_finish(ctx_id, now);
            return;
        }
        let mut sent_id = None;
        if let Some(br) = ctx.branches.get_mut(b as usize) {
            if let BranchState::Sent(id) = br.state {
                sent_id = Some(id);
            }
            br.state = BranchState::Done;
            if let (true, Some(k)) = (status.is_success(), &br.key) {
                ctx.took.push(k.clone());
            }
        }
        if status.is_success() {
            self.auth_accepted(ctx_id, now);
            if let (Some(id), ReplyTo::Server(server)) = (sent_id, server) {
                let outward = self
                    .ctxs
                    .get(&ctx_id)
                    .is_some_and(|c| c.inbound.side == Side::Outside);
                self.accepted.insert(id, (server, outward));
            }
            let Some(ctx) = self.ctxs.get_mut(&ctx_id) else {
                return;
            };
            if ctx.registration == Some(RegistrarMode::Through) && !ctx.final_sent {
                // The binding is stored before the device hears 2xx: an acknowledged
                // registration is never lost (a store failure answers 503 instead).
                ctx.held = Some(m.clone());
                self.emit_registration(ctx_id, Some(m), now);
                return;
            }
            // Every 2xx of an INVITE goes on (RFC 3261 §16.7 step 5); a non-INVITE has one
            // final (a message answered 202 already, delivered later after all).
            let forward = !ctx.final_sent || ctx.request.method() == Some(Method::Invite);
            ctx.final_sent = true;
            if forward {
                let outward = ctx.inbound.side == Side::Outside;
                let bytes = self.relayed(outward, &m);
                self.reply(server, status, bytes, now);
            }
            self.cancel_others(ctx_id, b, Some(late::COMPLETED_ELSEWHERE), now);
            self.maybe_finish(ctx_id, now);
            return;
        }
        if matches!(status.0, 401 | 407) {
            self.auth_rejected(ctx_id, status, &m, now);
            self.challenged(ctx_id, &m, now);
        } else if status.0 == 403
            && self.ctxs.get(&ctx_id).and_then(|c| c.request.method()) == Some(Method::Register)
        {
            // Some PBXs refuse a wrong password with 403, not a new challenge.
            self.auth_rejected(ctx_id, status, &m, now);
        }
        if status.class() == 6 {
            self.cancel_others(ctx_id, b, None, now);
        }
        if let Some(ctx) = self.ctxs.get_mut(&ctx_id) {
            if better(status, ctx.best.as_ref().map(Best::status)) {
                ctx.best = Some(Best::Received(m));
            }
        }
        self.maybe_finish(ctx_id, now);
    }

    /// The PBX refused credentials a device sent (through mode): an authentication failure
    /// for the operators' log and the guard. A first challenge (no credentials) is not one.
    ///
    /// Credentials over UDP whose nonce was not relayed to that source alone are reported
    /// unproven (the address may be forged: anyone could make a victim's address send
    /// garbage credentials, see [`nonces`]). Not counted: a challenge saying `stale=true` (a
    /// device's right credentials with an expired nonce: a refresh, not a guess).
    fn auth_rejected(&mut self, ctx_id: u64, status: StatusCode, response: &Message, now: Instant) {
        let Some(ctx) = self.ctxs.get(&ctx_id) else {
            return;
        };
        if ctx.inbound.side != Side::Outside {
            return;
        }
        let proven = self.proven(ctx, now);
        let stale = response
            .header_values_by_name(b"WWW-Authenticate")
            .chain(response.header_values_by_name(b"Proxy-Authenticate"))
            .any(|v| {
                v.windows(10).any(|w| w.eq_ignore_ascii_case(b"stale=true"))
                    || v.windows(12)
                        .any(|w| w.eq_ignore_ascii_case(b"stale=\"true\""))
            });
        if stale {
            return;
        }
        let credentials = ctx
            .request
            .header_values_by_name(b"Authorization")
            .chain(ctx.request.header_values_by_name(b"Proxy-Authorization"))
            .next();
        if let Some(c) = credentials {
            let event = Event::AuthRejected {
                remote: ctx.inbound.flow.remote,
                proven,
                status,
                credentials: ctx.request.slice(c),
            };
            self.out.push_back(Output::Event(event));
        }
    }

    /// Whether the sender of `ctx`'s request is who its address says: a connection, or over
    /// UDP, credentials carrying a nonce relayed to that address.
    fn proven(&self, ctx: &Ctx, now: Instant) -> bool {
        if !self.unverified(ctx.inbound) {
            return true;
        }
        let ip = ctx.inbound.flow.remote.ip();
        ctx.request
            .header_values_by_name(b"Authorization")
            .chain(ctx.request.header_values_by_name(b"Proxy-Authorization"))
            .filter_map(nonces::nonce_param)
            .any(|n| {
                self.nonces
                    .went_to(self.tokens.keyed_hash(&[b"nonce", n]), ip, now)
            })
    }

    /// A 401/407 on its way to an outside UDP source: its nonces now prove that address.
    fn challenged(&mut self, ctx_id: u64, response: &Message, now: Instant) {
        let Some(ctx) = self.ctxs.get(&ctx_id) else {
            return;
        };
        if !self.unverified(ctx.inbound) {
            return;
        }
        let ip = ctx.inbound.flow.remote.ip();
        let hashes: Vec<u64> = response
            .header_values_by_name(b"WWW-Authenticate")
            .chain(response.header_values_by_name(b"Proxy-Authenticate"))
            .filter_map(nonces::nonce_param)
            .map(|n| self.tokens.keyed_hash(&[b"nonce", n]))
            .collect();
        for h in hashes {
            self.nonces.sent(h, ip, now);
        }
    }

    /// The upstream accepted a device's credentials: tells the guard the address is a user's.
    fn auth_accepted(&mut self, ctx_id: u64, now: Instant) {
        let Some(ctx) = self.ctxs.get(&ctx_id) else {
            return;
        };
        let credentials = ctx
            .request
            .header_values_by_name(b"Authorization")
            .next()
            .is_some()
            || ctx
                .request
                .header_values_by_name(b"Proxy-Authorization")
                .next()
                .is_some();
        let register = ctx.request.method() == Some(Method::Register);
        if ctx.inbound.side == Side::Outside && register && credentials && self.proven(ctx, now) {
            let remote = ctx.inbound.flow.remote;
            self.out
                .push_back(Output::Event(Event::AuthAccepted { remote }));
        }
    }

    /// A branch ended without a response of its own (timeout, transport error, cancelled).
    fn branch_failed(&mut self, ctx_id: u64, b: u32, status: StatusCode, now: Instant) {
        let Some(ctx) = self.ctxs.get_mut(&ctx_id) else {
            return;
        };
        if let Some(br) = ctx.branches.get_mut(b as usize) {
            br.state = BranchState::Done;
        }
        if better(status, ctx.best.as_ref().map(Best::status)) {
            ctx.best = Some(Best::Local(status));
        }
        self.maybe_finish(ctx_id, now);
    }

    /// When every branch is done: send the best final (if no 2xx went) and forget the context.
    fn maybe_finish(&mut self, ctx_id: u64, now: Instant) {
        let Some(ctx) = self.ctxs.get(&ctx_id) else {
            return;
        };
        // A ghost (a cancelled call kept for an iOS device) does not hold back the caller's
        // answer, only the end of the context.
        if ctx.waiting.is_some()
            || !ctx
                .branches
                .iter()
                .all(|b| matches!(b.state, BranchState::Done) || b.ghost)
        {
            return;
        }
        let ghosts = ctx
            .branches
            .iter()
            .any(|b| b.ghost && !matches!(b.state, BranchState::Done));
        if ghosts {
            if !ctx.final_sent {
                let (status, bytes) = final_of(ctx, self.config.hide_products);
                let server = ctx.server;
                if let Some(c) = self.ctxs.get_mut(&ctx_id) {
                    c.final_sent = true;
                }
                self.reply(server, status, bytes, now);
            }
            return;
        }
        let Some(ctx) = self.ctxs.remove(&ctx_id) else {
            return;
        };
        if let Some(t) = ctx.timer_c {
            self.timer_c.remove(&(t, ctx_id));
        }
        if let Some(t) = ctx.late {
            self.late_timers.remove(&(t, ctx_id, u32::MAX));
        }
        if let Some(t) = ctx.accept_at {
            self.late_timers.remove(&(t, ctx_id, late::MESSAGE_ACCEPT));
        }
        for (i, br) in ctx.branches.iter().enumerate() {
            if let Some(t) = br.push_at {
                self.late_timers.remove(&(t, ctx_id, i as u32));
            }
        }
        self.forget_late(ctx_id, ctx.aor.as_deref());
        if let ReplyTo::Server(id) = ctx.server {
            self.by_server.remove(&id);
        }
        let mut flows = Vec::new();
        for br in &ctx.branches {
            if let BranchState::Sent(id) = br.state {
                self.by_client.remove(&id);
            }
            if br.located {
                flows.extend(br.flow);
            }
        }
        self.unindex_conns(ctx_id, &flows);
        if ctx.final_sent {
            return;
        }
        let (status, bytes) = final_of(&ctx, self.config.hide_products);
        self.probe_event(ctx.inbound, ctx.request.to_tag().is_none(), status);
        self.reply(ctx.server, status, bytes, now);
    }

    /// A "no such user" answer to an outsider's out-of-dialog request: one step of a user
    /// scan, for the guard (which weighs UDP's unproven source address itself).
    fn probe_event(&mut self, inbound: Inbound, initial: bool, status: StatusCode) {
        if matches!(status.0, 403 | 404 | 484 | 604) && initial && inbound.side == Side::Outside {
            self.out.push_back(Output::Event(Event::Probed {
                remote: inbound.flow.remote,
                status,
                verified: !self.unverified(inbound),
            }));
        }
    }

    fn on_timer_c(&mut self, ctx_id: u64, now: Instant) {
        let Some(ctx) = self.ctxs.get_mut(&ctx_id) else {
            return;
        };
        ctx.timer_c = None;
        if let Some(op) = ctx.waiting.take() {
            // The location service or the registrar never answered: its answer, if it ever
            // comes, finds nothing waiting.
            self.ops.remove(&op);
            let status = if ctx.held.take().is_some() {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::REQUEST_TIMEOUT
            };
            bump(&mut self.stats.dropped, "operation_timeout");
            self.finish_with(ctx_id, status, now);
            return;
        }
        if ctx.giving_up {
            // RFC 3261 §9.1: 64*T1 after the CANCEL, the INVITE counts as cancelled.
            let sent: Vec<(u32, ClientTxId)> = ctx
                .branches
                .iter()
                .enumerate()
                .filter_map(|(i, b)| match b.state {
                    BranchState::Sent(id) => Some((i as u32, id)),
                    _ => None,
                })
                .collect();
            for (b, id) in sent {
                self.branch_failed(ctx_id, b, StatusCode::REQUEST_TERMINATED, now);
                self.tx.transport_error(id, now);
            }
            return;
        }
        self.time_out(ctx_id, false, late::Unpark::Silently, now);
    }

    /// Ends a call that waited too long (timer C, the fork timeout): live branches are
    /// cancelled, parked ones released (`ghosts` too, or not), and the caller gets 408 (RFC
    /// 3261 §16.8: as if the branch had answered 408) unless a final went already.
    fn time_out(&mut self, ctx_id: u64, ghosts: bool, parked_end: late::Unpark, now: Instant) {
        let Some(ctx) = self.ctxs.get(&ctx_id) else {
            return;
        };
        let n = ctx.branches.len() as u32;
        let parked: Vec<u32> = ctx
            .branches
            .iter()
            .enumerate()
            .filter(|(_, br)| matches!(br.state, BranchState::Parked) && (ghosts || !br.ghost))
            .map(|(i, _)| i as u32)
            .collect();
        for b in 0..n {
            self.cancel_branch(ctx_id, b, now);
        }
        for b in parked {
            self.unpark(ctx_id, b, parked_end, now);
        }
        if let Some(ctx) = self.ctxs.get_mut(&ctx_id) {
            if !ctx.final_sent {
                ctx.final_sent = true;
                let resp = ctx.request.response(
                    StatusCode::REQUEST_TIMEOUT,
                    None,
                    Some(&ctx.to_tag),
                    Some(&ctx.top_via),
                    &[],
                );
                let server = ctx.server;
                self.reply(server, StatusCode::REQUEST_TIMEOUT, resp, now);
            }
        }
        // A call whose only branches were parked has nothing left to wait for.
        self.maybe_finish(ctx_id, now);
    }

    /// A transport error on branch `b`: the next resolved candidate, if any is left, the
    /// first attempt's timer B/F has not run out (RFC 3263 §4.3) and the target has not
    /// answered yet (after a provisional it has the request: trying another would fork the
    /// call); else a 503.
    fn failover(&mut self, ctx_id: u64, b: u32, now: Instant) {
        let next = self
            .ctxs
            .get_mut(&ctx_id)
            .filter(|c| !c.cancelled)
            .and_then(|c| c.branches.get_mut(b as usize))
            .filter(|br| now < br.deadline && !br.candidates.is_empty() && !br.provisional)
            .map(|br| {
                br.state = BranchState::Resolving;
                std::mem::take(&mut br.candidates)
            });
        match next {
            Some(candidates) => {
                self.try_candidates(ctx_id, b, candidates, now);
            }
            None => {
                let located = self
                    .ctxs
                    .get(&ctx_id)
                    .and_then(|c| c.branches.get(b as usize))
                    .is_some_and(|br| br.located);
                // A registered device whose connection is gone is pushed and waited for
                // when it can be; else it is temporarily unavailable, not a server failure.
                if located && self.unreachable(ctx_id, b, now) {
                    self.maybe_finish(ctx_id, now);
                    return;
                }
                let status = if located {
                    StatusCode(480)
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                self.branch_failed(ctx_id, b, status, now);
            }
        }
    }

    // === CANCEL ===

    fn cancel_ctx(&mut self, ctx_id: u64, reason: Option<Bytes>, now: Instant) {
        let Some(ctx) = self.ctxs.get_mut(&ctx_id) else {
            return;
        };
        ctx.cancelled = true;
        for br in &mut ctx.branches {
            br.cancel_reason.clone_from(&reason);
        }
        ctx.end_reason = reason;
        // Parked devices: an iOS app woken by a VoIP push must be shown the call, so it gets
        // INVITE then CANCEL when it is back (a ghost branch); the others are simply done.
        let parked: Vec<(u32, bool)> = ctx
            .branches
            .iter_mut()
            .enumerate()
            .filter(|(_, br)| matches!(br.state, BranchState::Parked))
            .map(|(i, br)| {
                let keep = br.wake.is_some_and(|w| w.deliver_cancel);
                br.ghost = keep;
                (i as u32, keep)
            })
            .collect();
        for (b, keep) in parked {
            if !keep {
                self.unpark(
                    ctx_id,
                    b,
                    late::Unpark::With(StatusCode::REQUEST_TERMINATED),
                    now,
                );
            } else if let Some(c) = self.ctxs.get_mut(&ctx_id) {
                // The caller's answer is 487, whatever the ghost does later.
                if better(
                    StatusCode::REQUEST_TERMINATED,
                    c.best.as_ref().map(Best::status),
                ) {
                    c.best = Some(Best::Local(StatusCode::REQUEST_TERMINATED));
                }
            }
        }
        let Some(ctx) = self.ctxs.get_mut(&ctx_id) else {
            return;
        };
        if let Some(op) = ctx.waiting.take() {
            // A lookup answered after the CANCEL finds nothing waiting (no branch is made).
            self.ops.remove(&op);
            if let Some(t) = ctx.timer_c.take() {
                self.timer_c.remove(&(t, ctx_id));
            }
            self.finish_with(ctx_id, StatusCode::REQUEST_TERMINATED, now);
            return;
        }
        let n = ctx.branches.len() as u32;
        for b in 0..n {
            self.cancel_branch(ctx_id, b, now);
        }
        // RFC 3261 §16.10: the caller gets its 487 from downstream; a branch still resolving
        // ends here.
        if let Some(ctx) = self.ctxs.get(&ctx_id) {
            let resolving: Vec<u32> = ctx
                .branches
                .iter()
                .enumerate()
                .filter(|(_, b)| matches!(b.state, BranchState::Resolving))
                .map(|(i, _)| i as u32)
                .collect();
            for b in resolving {
                self.branch_failed(ctx_id, b, StatusCode::REQUEST_TERMINATED, now);
            }
        }
        self.maybe_finish(ctx_id, now);
    }

    /// One branch answered with a 2xx or a 6xx: the others stop ringing (RFC 3261 §16.7
    /// step 10), and parked ones stop waiting. After a 2xx, the devices are told why (RFC
    /// 3326), so a phone does not list the call as missed.
    fn cancel_others(
        &mut self,
        ctx_id: u64,
        keep: u32,
        reason: Option<&'static [u8]>,
        now: Instant,
    ) {
        let Some(ctx) = self.ctxs.get_mut(&ctx_id) else {
            return;
        };
        let n = ctx.branches.len() as u32;
        let invite = ctx.request.method() == Some(Method::Invite);
        let mut parked = Vec::new();
        if let Some(r) = reason {
            ctx.end_reason = Some(Bytes::from_static(r));
        }
        for (i, br) in ctx.branches.iter_mut().enumerate() {
            if i as u32 == keep {
                continue;
            }
            if let Some(r) = reason {
                br.cancel_reason = Some(Bytes::from_static(r));
            }
            if matches!(br.state, BranchState::Parked) {
                // An iOS app woken for this call must still be told it is over.
                if invite && br.wake.is_some_and(|w| w.deliver_cancel) {
                    br.ghost = true;
                } else {
                    parked.push(i as u32);
                }
            }
        }
        for b in parked {
            // A message another device took is still every device's: a sleeping one's copy
            // is kept for it.
            if self.message_kept_later(ctx_id, b) {
                self.keep_message(ctx_id, b);
            }
            self.unpark(ctx_id, b, late::Unpark::Silently, now);
        }
        for b in (0..n).filter(|&b| b != keep) {
            self.cancel_branch(ctx_id, b, now);
        }
    }

    fn cancel_branch(&mut self, ctx_id: u64, b: u32, now: Instant) {
        let Some(br) = self
            .ctxs
            .get_mut(&ctx_id)
            .and_then(|c| c.branches.get_mut(b as usize))
        else {
            return;
        };
        if !matches!(br.state, BranchState::Sent(_)) {
            return;
        }
        if br.provisional {
            self.send_cancel(ctx_id, b, now);
        } else {
            // RFC 3261 §9.1: no CANCEL before a provisional response.
            br.cancel_pending = true;
        }
    }

    fn send_cancel(&mut self, ctx_id: u64, b: u32, now: Instant) {
        let Some(ctx) = self.ctxs.get(&ctx_id) else {
            return;
        };
        let Some(br) = ctx.branches.get(b as usize) else {
            return;
        };
        let (BranchState::Sent(_), Some(sent), Some(dest_flow)) =
            (&br.state, br.sent.clone(), br.flow)
        else {
            return;
        };
        let Ok(sent) = Message::parse(sent) else {
            return;
        };
        let Some(top) = sent.top_via() else {
            return;
        };
        let key = TxKey::new(
            sent.slice(top.branch().unwrap_or(b"")),
            sent.slice(top.sent_by()),
            Bytes::from_static(b"CANCEL"),
        );
        let cancel = sent.cancel_request(br.cancel_reason.as_deref());
        let give_up = now + 64 * self.tx.config().t1;
        if let Some(ctx) = self.ctxs.get_mut(&ctx_id) {
            ctx.giving_up = true;
            if let Some(old) = ctx.timer_c.replace(give_up) {
                self.timer_c.remove(&(old, ctx_id));
            }
            self.timer_c.insert((give_up, ctx_id));
        }
        bump(&mut self.stats.requests_out, "CANCEL");
        // The CANCEL's own transaction needs no context: its 200 is absorbed.
        let _ = self.tx.start_client(
            key,
            RequestKind::Cancel,
            dest_flow.transport.is_reliable(),
            Dest {
                flow: dest_flow,
                on_fail: None,
                guard: None,
            },
            cancel,
            now,
        );
    }

    // === transaction events ===

    fn pump(&mut self, now: Instant) {
        while let Some(o) = self.tx.poll_output() {
            match o {
                TxOutput::Transmit { dest, bytes } => {
                    let guard = dest.guard.filter(|_| self.retransmitting);
                    if let Some(budget) = guard.and_then(|g| self.amp_budget.get_mut(&g)) {
                        if *budget < bytes.len() {
                            bump(&mut self.stats.dropped, "amplification");
                            continue;
                        }
                        *budget -= bytes.len();
                    }
                    self.out.push_back(Output::Transmit {
                        flow: dest.flow,
                        bytes,
                        on_fail: dest.on_fail,
                    });
                }
                TxOutput::Event(e) => self.on_tx_event(e, now),
            }
        }
    }

    fn on_tx_event(&mut self, e: TxEvent, now: Instant) {
        match e {
            TxEvent::ClientTimeout(id) => {
                if let Some(&(ctx, b)) = self.by_client.get(&id) {
                    // A device silent until timer B/F is as gone as a closed connection: pushed
                    // and waited for if it can be, else temporarily unavailable.
                    if !self.unreachable(ctx, b, now) {
                        let located = self
                            .ctxs
                            .get(&ctx)
                            .and_then(|c| c.branches.get(b as usize))
                            .is_some_and(|br| br.located);
                        let status = if located {
                            StatusCode(480)
                        } else {
                            StatusCode::REQUEST_TIMEOUT
                        };
                        self.branch_failed(ctx, b, status, now);
                    }
                }
            }
            TxEvent::ClientTransportError(id) => {
                if let Some(&(ctx, b)) = self.by_client.get(&id) {
                    self.failover(ctx, b, now);
                }
            }
            TxEvent::ClientTerminated(id) => {
                self.by_client.remove(&id);
                self.accepted.remove(&id);
            }
            TxEvent::ServerTerminated(id) => {
                self.uncount_server(id);
                self.finals.remove(&id);
                if let Some(g) = self.guard_of.remove(&id) {
                    self.amp_budget.remove(&g);
                }
                // A context whose server transaction is gone cannot answer anymore.
                if let Some(ctx) = self.by_server.get(&id).copied() {
                    if let Some(c) = self.ctxs.get_mut(&ctx) {
                        c.final_sent = true;
                    }
                }
            }
            _ => {}
        }
    }

    // === helpers ===

    /// Answers a context: through its server transaction, or (a stored message's delivery)
    /// by telling the shell the final status.
    fn reply(&mut self, to: ReplyTo, status: StatusCode, bytes: Bytes, now: Instant) {
        match to {
            ReplyTo::Server(id) => self.respond(id, status, bytes, now),
            ReplyTo::Stored(id) if !status.is_provisional() => {
                self.out.push_back(Output::Delivered { id, status });
            }
            ReplyTo::Stored(_) => {}
        }
    }

    fn respond(&mut self, id: ServerTxId, status: StatusCode, bytes: Bytes, now: Instant) {
        bump(&mut self.stats.responses_out, class_label(status));
        if self
            .tx
            .send_response(id, status.0, bytes.clone(), now)
            .is_err()
            && status.is_success()
        {
            // Extra 2xx after the first (forking): RFC 3261 §16.7 forwards every 2xx.
            if let Some(ctx) = self.by_server.get(&id).and_then(|c| self.ctxs.get(c)) {
                let flow = ctx.inbound.flow;
                self.transmit(flow, bytes);
            }
        }
        if let Some(c) = self.by_server.get(&id).and_then(|c| self.ctxs.get(c)) {
            let (inbound, initial) = (c.inbound, c.request.to_tag().is_none());
            self.probe_event(inbound, initial, status);
        }
        if !status.is_provisional() {
            self.uncount_server(id);
            // An answered INVITE (Accepted, timer L) is a call the PBX took: not an outsider's
            // cheap state, and it cannot be ended early without losing the 2xx's ACK.
            let lingers = self
                .tx
                .server_state(id)
                .is_some_and(|s| s != ServerState::Accepted);
            if lingers && self.finals.insert(id) {
                self.linger(id, now);
            }
        }
    }

    /// The proxy's own answer to a request it takes no state for: sent once per request
    /// received, never retransmitted, with a To-tag that is the same for retransmissions of
    /// the request (RFC 3261 §8.2.6.2) yet unpredictable. Over UDP from outside the source may
    /// be spoofed: an answer larger than the request is not sent (no amplification).
    fn reject(&mut self, m: &Message, top: &Via<'_>, inbound: Inbound, r: Rejection) {
        let top_via = self.fixed_top_via(top, inbound.flow.remote);
        let tag = self.stateless_tag(m, top);
        let extra: Vec<(&str, &[u8])> = r.extra.iter().map(|(n, v)| (*n, &v[..])).collect();
        let mut resp = m.response(r.status, r.reason, Some(&tag), Some(&top_via), &extra);
        if self.unverified(inbound) && resp.len() > m.raw().len() {
            // The optional headers (Allow, Unsupported, Retry-After) go first; an answer
            // still larger than the request is not sent at all.
            resp = m.response(r.status, r.reason, Some(&tag), Some(&top_via), &[]);
            if resp.len() > m.raw().len() {
                self.drop(inbound, "amplification");
                return;
            }
        }
        bump(&mut self.stats.responses_out, class_label(r.status));
        let flow = self.reply_flow(top, inbound);
        self.transmit(flow, resp);
    }

    /// The To-tag of a stateless answer: the same for every retransmission of the request and
    /// for its ACK, unpredictable to anyone else.
    fn stateless_tag(&self, m: &Message, top: &Via<'_>) -> Vec<u8> {
        let mut tag = Vec::with_capacity(16);
        push_hex_u64(
            &mut tag,
            self.tokens.keyed_hash(&[
                m.from_tag().unwrap_or(b""),
                m.call_id(),
                &m.cseq().to_be_bytes(),
                top.branch().unwrap_or(b""),
            ]),
        );
        tag
    }

    /// A UDP source on the outside: its address may be forged.
    fn unverified(&self, inbound: Inbound) -> bool {
        inbound.side == Side::Outside && inbound.flow.transport == Transport::Udp
    }

    /// A response relayed on, towards the outside (`outward`) without the headers that name
    /// a product.
    fn relayed(&self, outward: bool, m: &Message) -> Bytes {
        if outward && self.config.hide_products {
            m.forward_response_edited(PRODUCT_HEADERS, &[])
        } else {
            m.forward_response()
        }
    }

    fn transmit(&mut self, flow: Flow, bytes: Bytes) {
        self.out.push_back(Output::Transmit {
            flow,
            bytes,
            on_fail: None,
        });
    }

    fn stats_drop(&mut self, reason: &'static str) {
        bump(&mut self.stats.dropped, reason);
    }

    fn drop(&mut self, inbound: Inbound, reason: &'static str) {
        bump(&mut self.stats.dropped, reason);
        self.out.push_back(Output::Event(Event::Dropped {
            remote: inbound.flow.remote,
            reason,
        }));
    }

    fn host_port(&self, id: ListenerId) -> Bytes {
        self.host_ports
            .get(usize::from(id.0))
            .cloned()
            .unwrap_or_default()
    }

    fn listener(&self, id: ListenerId) -> Option<&Listener> {
        self.config.listeners.get(usize::from(id.0))
    }

    /// RFC 3261 §18.2.2 / RFC 3581: where responses to this request go.
    fn reply_flow(&self, top: &Via<'_>, inbound: Inbound) -> Flow {
        let mut flow = inbound.flow;
        if flow.transport.is_reliable() || self.config.force_rport || top.rport().is_some() {
            return flow;
        }
        let port = top.port.unwrap_or(flow.transport.default_port());
        flow.remote.set_port(port);
        flow
    }

    /// The top Via as this proxy passes it on: `received` when the sent-by differs from the
    /// source address, `rport` filled in (RFC 3261 §18.2.1, RFC 3581; bare IPv6 per RFC 5118).
    fn fixed_top_via(&self, top: &Via<'_>, src: SocketAddr) -> Bytes {
        let wants_rport = top.rport().is_some() || self.config.force_rport;
        let sent_by_ip = top.host.ip();
        let needs_received = sent_by_ip != Some(src.ip()) || wants_rport;
        if !needs_received && !wants_rport {
            return Bytes::copy_from_slice(top.raw);
        }
        let head_len = top.raw.len() - top.params.len();
        let mut s = Vec::with_capacity(top.raw.len() + 48);
        s.extend_from_slice(&top.raw[..head_len]);
        for (name, value) in top.params() {
            if name.eq_ignore_ascii_case(b"received") || name.eq_ignore_ascii_case(b"rport") {
                continue;
            }
            s.push(b';');
            s.extend_from_slice(name);
            if let Some(v) = value {
                s.push(b'=');
                s.extend_from_slice(v);
            }
        }
        if needs_received {
            s.extend_from_slice(b";received=");
            s.extend_from_slice(src.ip().to_string().as_bytes());
        }
        if wants_rport {
            s.extend_from_slice(b";rport=");
            put_decimal(&mut s, u32::from(src.port()));
        }
        Bytes::from(s)
    }

    /// RFC 3261 §17.2.3 matching, hardened for an internet edge: the source address is part
    /// of the key, so a request can only match (retransmit, ACK, CANCEL) a transaction that
    /// came from the same address. Anyone who learns a branch could otherwise CANCEL someone
    /// else's call; retransmissions and CANCELs come from the sender's own address anyway.
    fn server_key(&self, m: &Message, top: &Via<'_>, src: SocketAddr) -> TxKey {
        let method = m.slice(m.cseq_method());
        let mut sent_by = Vec::with_capacity(top.sent_by().len() + 48);
        sent_by.extend_from_slice(top.sent_by());
        sent_by.push(b'|');
        push_addr(&mut sent_by, src);
        let sent_by = Bytes::from(sent_by);
        match top.branch() {
            Some(b) if b.starts_with(b"z9hG4bK") => TxKey::new(m.slice(b), sent_by, method),
            _ => {
                // RFC 2543 peer: a stable key from what its retransmissions and ACK share.
                let h = stable_hash(&[
                    m.request_uri_bytes(),
                    m.from_tag().unwrap_or(b""),
                    m.call_id(),
                    &m.cseq().to_be_bytes(),
                    top.raw,
                ]);
                TxKey::new(Bytes::from(format!("rfc2543-{h:016x}")), sent_by, method)
            }
        }
    }

    /// How many top Route entries are this node's, and the flow token found in them.
    fn own_routes(&self, m: &Message) -> (usize, Option<Flow>) {
        let mut n = 0;
        let mut flow = None;
        for r in m.routes() {
            let Some(u) = r.uri.as_sip() else {
                break;
            };
            if !self.is_local(u) {
                break;
            }
            n += 1;
            if let Some(f) = u.user.and_then(|t| self.tokens.decode(t)) {
                flow = Some(f);
            }
        }
        (n, flow)
    }

    /// Whether a URI's host (and port, when given) names this node.
    fn is_local(&self, u: &SipUri<'_>) -> bool {
        let host = u.host_raw;
        let ip = u.host.ip();
        let port_ok = |l: &Listener| u.port.is_none_or(|p| p == l.port || p == l.local.port());
        self.config.listeners.iter().any(|l| {
            let host_ok = l.host.as_bytes().eq_ignore_ascii_case(host)
                || ip.is_some_and(|ip| ip == l.local.ip() && !l.local.ip().is_unspecified());
            host_ok && port_ok(l)
        }) || self
            .config
            .aliases
            .iter()
            .any(|a| a.as_bytes().eq_ignore_ascii_case(host))
    }

    fn is_our_via(&self, v: &Via<'_>) -> bool {
        let port = v.port;
        self.config.listeners.iter().any(|l| {
            (l.host.as_bytes().eq_ignore_ascii_case(v.host_raw)
                || v.host.ip().is_some_and(|ip| ip == l.local.ip()))
                && port.unwrap_or(l.transport.default_port()) == l.port
        })
    }

    fn is_loop(&self, m: &Message, hash: u64) -> bool {
        let mut prefix = Vec::with_capacity(BRANCH_PREFIX.len() + 17);
        prefix.extend_from_slice(BRANCH_PREFIX);
        push_hex_u64(&mut prefix, hash);
        prefix.push(b'-');
        m.vias()
            .any(|v| self.is_our_via(&v) && v.branch().is_some_and(|b| b.starts_with(&prefix)))
    }

    fn new_branch(&mut self, loop_hash: u64, reply: Flow, to: IpAddr, now: Instant) -> Vec<u8> {
        self.counter = self.counter.wrapping_add(1);
        let nonce = self.tokens.prf(self.counter);
        let minted = Minted {
            at_secs: self.secs(now),
            sent_to: self.tokens.addr_tag(to),
            reply,
        };
        self.tokens.mint_branch(loop_hash, nonce, &minted)
    }

    /// Whole seconds since the first input (the epoch of minted branches).
    fn secs(&mut self, now: Instant) -> u32 {
        let epoch = *self.epoch.get_or_insert(now);
        u32::try_from(now.saturating_duration_since(epoch).as_secs()).unwrap_or(u32::MAX)
    }

    /// A To-tag: 64 bits from the PRF, as hex.
    fn new_tag(&mut self) -> Vec<u8> {
        self.counter = self.counter.wrapping_add(1);
        let mut t = Vec::with_capacity(16);
        push_hex_u64(&mut t, self.tokens.prf(self.counter));
        t
    }
}

/// Who chose a destination, which decides where it may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DestPolicy {
    /// The configuration (the upstream) or a flow token: anywhere usable.
    Upstream,
    /// A message (Route, Request-URI): only where [`ProxyConfig::allowed_destinations`]
    /// lets it.
    Chosen,
}

/// What routing needs from a request that passed the checks.
struct Routing {
    pop_routes: usize,
    route_flow: Option<Flow>,
    loop_hash: u64,
}

/// An answer the proxy gives itself, statelessly.
struct Rejection {
    status: StatusCode,
    reason: Option<&'static str>,
    extra: Vec<(&'static str, Vec<u8>)>,
}

impl Rejection {
    fn new(status: StatusCode) -> Self {
        Self {
            status,
            reason: None,
            extra: Vec::new(),
        }
    }

    fn draining() -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE)
            .reason("Draining")
            .header("Retry-After", b"5")
    }

    fn reason(mut self, reason: &'static str) -> Self {
        self.reason = Some(reason);
        self
    }

    fn header(mut self, name: &'static str, value: &[u8]) -> Self {
        self.extra.push((name, value.to_vec()));
        self
    }
}

/// Bytes a server transaction may send to an unverified source per byte received.
const AMPLIFICATION_FACTOR: usize = 3;

/// RFC 3261 §18.1.1: a request larger than this (with no known path MTU) goes over a
/// congestion-controlled transport.
const UDP_SIZE_LIMIT: usize = 1300;

/// Requests that may wait for one DNS answer; beyond it they fail at once (a DNS outage
/// must not turn into unbounded memory).
const MAX_RESOLVE_WAITERS: usize = 1024;

/// Stateless requests (ACKs) that may wait for one DNS answer.
const MAX_STATELESS_WAITERS: usize = 32;

/// Candidates for a target with an IP-literal host, without asking the shell (RFC 3263
/// §4.1, §4.2): the given transport; else TLS for `sips:`; else UDP, or TCP first when the
/// request is too big for UDP (RFC 3261 §18.1.1, with UDP as the fallback it allows).
fn literal_candidates(t: &ResolveTarget, big: bool) -> Option<Vec<(Transport, SocketAddr)>> {
    let h = t.host.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = h.parse().ok()?;
    let transports: &[Transport] = match (t.transport, t.sips, big) {
        (Some(tr), _, _) => {
            let port = t.port.unwrap_or(tr.default_port());
            return Some(vec![(tr, SocketAddr::new(ip, port))]);
        }
        (None, true, _) => &[Transport::Tls],
        (None, false, true) => &[Transport::Tcp, Transport::Udp],
        (None, false, false) => &[Transport::Udp],
    };
    Some(
        transports
            .iter()
            .map(|&tr| (tr, SocketAddr::new(ip, t.port.unwrap_or(tr.default_port()))))
            .collect(),
    )
}

/// RFC 3261 §18.1.1 on resolved candidates: when the target named no transport and the
/// request is too big for UDP, each UDP address is tried over TCP first.
fn size_rule(
    t: &ResolveTarget,
    result: &[(Transport, SocketAddr)],
    big: bool,
) -> Vec<(Transport, SocketAddr)> {
    if !big || t.transport.is_some() {
        return result.to_vec();
    }
    let mut out = Vec::with_capacity(result.len() * 2);
    for &(tr, a) in result {
        if tr == Transport::Udp {
            out.push((Transport::Tcp, a));
        }
        out.push((tr, a));
    }
    out
}

fn uri_target(u: &SipUri<'_>) -> ResolveTarget {
    // maddr is deprecated and a classic relay trick; routing ignores it.
    ResolveTarget {
        host: String::from_utf8_lossy(u.host_raw).into_owned(),
        port: u.port,
        transport: u.transport().and_then(Transport::from_token),
        sips: u.sips,
    }
}

/// `addr` as `a.b.c.d:port` (IPv6 through `Display`, rare enough).
fn push_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr.ip() {
        IpAddr::V4(a) => {
            for (i, o) in a.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                put_decimal(out, u32::from(o));
            }
        }
        IpAddr::V6(a) => {
            out.push(b'[');
            out.extend_from_slice(a.to_string().as_bytes());
            out.push(b']');
        }
    }
    out.push(b':');
    put_decimal(out, u32::from(addr.port()));
}

/// The Via this proxy adds: `SIP/2.0/<transport> <host:port>;branch=<branch>[;rport]`.
fn our_via(transport: Transport, host_port: &[u8], branch: &[u8], rport: bool) -> Vec<u8> {
    let mut via = Vec::with_capacity(30 + host_port.len() + branch.len());
    via.extend_from_slice(b"SIP/2.0/");
    via.extend_from_slice(transport.via_token().as_bytes());
    via.push(b' ');
    via.extend_from_slice(host_port);
    via.extend_from_slice(b";branch=");
    via.extend_from_slice(branch);
    if rport {
        via.extend_from_slice(b";rport");
    }
    via
}

fn host_port(l: &Listener) -> String {
    if l.host.contains(':') && !l.host.starts_with('[') {
        format!("[{}]:{}", l.host, l.port)
    } else {
        format!("{}:{}", l.host, l.port)
    }
}

/// Never send to broadcast, multicast or unspecified addresses (RFC 4475 §3.3.10).
fn is_unusable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_broadcast() || a.is_multicast() || a.is_unspecified(),
        IpAddr::V6(a) => a.is_multicast() || a.is_unspecified(),
    }
}

/// The final answer of a context whose branches are all done: the best response received, or
/// the node's own (RFC 3261 §16.7 step 6). A 503 received is sent as 500: it says the next hop
/// is overloaded, and the caller would take it as stg being so.
fn final_of(ctx: &Ctx, hide_products: bool) -> (StatusCode, Bytes) {
    let own = |s: StatusCode| {
        ctx.request
            .response(s, None, Some(&ctx.to_tag), Some(&ctx.top_via), &[])
    };
    match &ctx.best {
        Some(Best::Received(m)) if m.status() == Some(StatusCode::SERVICE_UNAVAILABLE) => {
            let s = StatusCode::SERVER_INTERNAL_ERROR;
            (s, own(s))
        }
        Some(Best::Received(m)) => (
            m.status().unwrap_or(StatusCode::SERVER_INTERNAL_ERROR),
            if hide_products && ctx.inbound.side == Side::Outside {
                m.forward_response_edited(PRODUCT_HEADERS, &[])
            } else {
                m.forward_response()
            },
        ),
        Some(Best::Local(s)) => (*s, own(*s)),
        None => (
            StatusCode::REQUEST_TIMEOUT,
            own(StatusCode::REQUEST_TIMEOUT),
        ),
    }
}

/// Headers that name a product, removed from what goes out to the internet.
const PRODUCT_HEADERS: &[HeaderName] = &[
    HeaderName::Server,
    HeaderName::UserAgent,
    HeaderName::Warning,
];

/// `User-Agent`s of SIP scanners (SIPVicious and its clones, sipcli, sundayddr, …), matched
/// case-insensitively anywhere in the value.
const SCANNERS: &[&[u8]] = &[
    b"friendly-scanner",
    b"sipvicious",
    b"sipcli",
    b"sip-scan",
    b"sundayddr",
    b"iwar",
    b"vaxsipuseragent",
    b"pplsip",
    b"sipsak",
];

/// Whether a request comes from a known scanner (its `User-Agent`).
fn is_scanner(m: &Message) -> bool {
    m.header_values_by_name(b"User-Agent").any(|v| {
        SCANNERS
            .iter()
            .any(|s| v.windows(s.len()).any(|w| w.eq_ignore_ascii_case(s)))
    })
}

/// RFC 3261 §16.7 step 6: whether `new` is a better final answer than `old`. A 6xx wins,
/// then the lowest class; within 4xx the answers that let the caller retry better (401, 407,
/// 415, 420, 484) come first; answers that say only "nobody there now" (408, 480, 503, most
/// often made up by stg itself for a dead branch) come last within their class.
fn better(new: StatusCode, old: Option<StatusCode>) -> bool {
    let Some(old) = old else {
        return true;
    };
    let rank = |s: StatusCode| -> (u16, u16) {
        let class = if s.class() == 6 { 0 } else { s.class() };
        let tier = match s.0 {
            401 | 407 | 415 | 420 | 484 => 0,
            408 | 480 | 503 => 2,
            _ => 1,
        };
        (class, tier)
    };
    rank(new) < rank(old)
}

fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h = SipHasher24::new_with_keys(0x7374_672d_6c6f_6f70, 0x6272_616e_6368_0001);
    for p in parts {
        h.write(p);
        h.write_u8(0xff);
    }
    h.finish()
}

/// RFC 3261 §16.6 step 8: the part of the branch that detects loops (not spirals). Keyed
/// with the per-process key, so nobody can recompute it from a request and recognise stg.
fn loop_hash(tokens: &FlowTokens, m: &Message) -> u64 {
    tokens.keyed_hash(&[
        m.request_uri_bytes(),
        m.from_tag().unwrap_or(b""),
        m.to_tag().unwrap_or(b""),
        m.call_id(),
        &m.cseq().to_be_bytes(),
        m.header_values(HeaderName::ProxyRequire)
            .next()
            .unwrap_or(b""),
        m.header_values_by_name(b"Proxy-Authorization")
            .next()
            .unwrap_or(b""),
    ])
}

/// Branches one request may fork to from a location answer (a device has a handful of
/// bindings; a record with hundreds is somebody's mistake or attack).
const MAX_TARGETS: usize = 16;
