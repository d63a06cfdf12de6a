//! The node: binds every listener, runs the proxy core in one task and the transports
//! around it, exports metrics, and drains on request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use stg_config::{Config, Host, Side as CfgSide, Transport as CfgTransport};
use stg_sip_core::net::{Flow, IpNetwork, Listener, ListenerId, Side, Transport};
use stg_sip_core::proxy::{
    Authorization, Event, Output, Proxy, ProxyConfig, RegisterAnswer, ResolveTarget,
};
use stg_sip_core::transaction::TransactionConfig;
use stg_sip_msg::StatusCode;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::sleep_until;
use tokio_util::sync::CancellationToken;

use crate::conn::{CoreInput, Shared};
use crate::stream::{self, StreamListener};
use crate::{admin, udp, EdgeError};

/// Depth of the queue into the core task: deep enough to ride out a burst, bounded so a
/// flood turns into backpressure on the sockets instead of memory.
const CORE_QUEUE: usize = 16 * 1024;

/// How long connections get to close once the core has stopped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Longest an RFC 3263 lookup may take before the request is answered 503.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(8);

/// One bound listener, as reported to the operator.
#[derive(Clone, Debug)]
pub struct BoundListener {
    /// Transport.
    pub transport: Transport,
    /// The address actually bound (port 0 resolved).
    pub local: SocketAddr,
    /// Side it faces.
    pub side: Side,
}

enum Socket {
    Udp(Arc<UdpSocket>),
    Tcp(TcpListener, StreamListener),
}

/// A node with every socket bound, ready to [`Node::run`].
pub struct Node {
    config: Arc<Config>,
    sockets: Vec<(Socket, Side)>,
    listeners: Vec<Listener>,
    admin: Option<TcpListener>,
    tls: Option<Arc<crate::tls::TlsStore>>,
    /// The guard's bans: made here so the web front can hold them before the node runs.
    bans: Arc<crate::guard::Bans>,
}

fn transport(t: CfgTransport) -> Transport {
    match t {
        CfgTransport::Udp => Transport::Udp,
        CfgTransport::Tcp => Transport::Tcp,
        CfgTransport::Tls => Transport::Tls,
        CfgTransport::Ws => Transport::Ws,
        CfgTransport::Wss => Transport::Wss,
    }
}

fn side(s: CfgSide) -> Side {
    match s {
        CfgSide::Outside => Side::Outside,
        CfgSide::Inside => Side::Inside,
    }
}

impl Node {
    /// Binds every listener and the admin endpoint. Errors name the listener.
    pub async fn bind(config: Config) -> Result<Self, EdgeError> {
        let needs_tls = config
            .sip
            .listen
            .iter()
            .any(|l| matches!(l.transport, CfgTransport::Tls | CfgTransport::Wss));
        let tls = if needs_tls {
            Some(Arc::new(
                crate::tls::TlsStore::load(&config).map_err(|e| EdgeError::Tls(e.to_string()))?,
            ))
        } else {
            None
        };
        let mut sockets = Vec::new();
        let mut listeners = Vec::new();
        for (i, l) in config.sip.listen.iter().enumerate() {
            let id = ListenerId(i as u16);
            let t = transport(l.transport);
            let bind_err = |e: std::io::Error| EdgeError::Bind {
                what: format!("sip.listen[{i}] ({} {})", l.transport, l.address),
                source: e,
            };
            let (socket, local) = if t == Transport::Udp {
                let s = udp::bind(l.address).map_err(bind_err)?;
                let local = s.local_addr().map_err(bind_err)?;
                (Socket::Udp(Arc::new(s)), local)
            } else {
                let s = TcpListener::bind(l.address).await.map_err(bind_err)?;
                let local = s.local_addr().map_err(bind_err)?;
                let sl = StreamListener {
                    id,
                    transport: t,
                    side: side(l.side),
                    proxy_protocol: l.proxy_protocol,
                };
                (Socket::Tcp(s, sl), local)
            };
            let (host, port) = match &l.advertise {
                Some(hp) => (
                    match &hp.host {
                        Host::Ip(ip) => ip.to_string(),
                        Host::Domain(d) => d.clone(),
                    },
                    hp.port.unwrap_or(local.port()),
                ),
                None => (local.ip().to_string(), local.port()),
            };
            if local.ip().is_unspecified() && l.advertise.is_none() {
                tracing::warn!(listener = i, "listening on a wildcard address without sip.listen.advertise: Via and Record-Route will carry {host}");
            }
            listeners.push(Listener {
                id,
                transport: t,
                side: side(l.side),
                local,
                host,
                port,
            });
            sockets.push((socket, side(l.side)));
        }
        let admin = match config.admin.listen {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| EdgeError::Bind {
                what: format!("admin.listen ({addr})"),
                source: e,
            })?),
            None => None,
        };
        Ok(Self {
            config: Arc::new(config),
            sockets,
            listeners,
            admin,
            tls,
            bans: Arc::default(),
        })
    }

    /// The listeners as bound.
    pub fn listeners(&self) -> Vec<BoundListener> {
        self.listeners
            .iter()
            .map(|l| BoundListener {
                transport: l.transport,
                local: l.local,
                side: l.side,
            })
            .collect()
    }

    /// The admin (metrics) address as bound.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|a| a.local_addr().ok())
    }

    /// A handle to reload the TLS certificate (SIGHUP), if the node has TLS listeners.
    pub fn tls(&self) -> Option<Arc<crate::tls::TlsStore>> {
        self.tls.clone()
    }

    /// The node's guard as the other roles see it: is a source banned, count a failure.
    /// Without `[guard] enabled`, nobody is banned and nothing is counted (as with
    /// [`stg_guard::NoGuard`]).
    pub fn guard(&self) -> Arc<dyn stg_guard::Hook> {
        self.bans.clone()
    }

    fn proxy_config(&self) -> ProxyConfig {
        let up = &self.config.sip.upstream;
        let mut key = [0u8; 16];
        let mut seed = [0u8; 8];
        // Without OS randomness flow tokens would be forgeable: refuse to run rather than
        // fall back to a fixed key.
        getrandom::fill(&mut key).expect("OS random source unavailable");
        getrandom::fill(&mut seed).expect("OS random source unavailable");
        ProxyConfig {
            listeners: self.listeners.clone(),
            upstream: ResolveTarget {
                host: match &up.host {
                    Host::Ip(ip) => ip.to_string(),
                    Host::Domain(d) => d.clone(),
                },
                port: up.port,
                transport: up.transport.map(transport),
                sips: up.scheme_sips,
            },
            inside_networks: self
                .config
                .sip
                .trusted_networks
                .iter()
                .map(|n| IpNetwork {
                    addr: n.network(),
                    prefix_len: n.prefix_len(),
                })
                .collect(),
            aliases: self
                .config
                .node
                .aliases
                .iter()
                .map(|h| match h {
                    Host::Ip(ip) => ip.to_string(),
                    Host::Domain(d) => d.clone(),
                })
                .collect(),
            force_rport: self.config.sip.force_rport,
            timer_c: self.config.sip.timers.timer_c,
            transactions: TransactionConfig {
                t1: self.config.sip.timers.t1,
                t2: self.config.sip.timers.t2,
                t4: self.config.sip.timers.t4,
            },
            flow_key: key,
            seed: u64::from_le_bytes(seed),
            limits: stg_sip_core::proxy::ProxyLimits {
                max_transactions: self.config.sip.max_transactions,
                max_transactions_per_source: self.config.sip.max_transactions_per_source,
                source_prefix_v6: self.config.sip.source_prefix_v6,
                max_transaction_bytes: self.config.sip.max_transaction_bytes,
            },
            registrar: crate::registrar::domains(&self.config),
            node_id: self.config.node.id.clone().unwrap_or_default(),
            push: stg_sip_core::proxy::PushPolicy {
                timeout: self.config.push.timeout,
                call_fork_timeout: self.config.push.call_fork_timeout,
                message_accept_timeout: self.config.push.message_accept_timeout,
            },
            hide_products: self.config.sip.hide_product_headers,
            drop_scanners: self.config.sip.drop_scanners,
            allowed_destinations: self
                .config
                .sip
                .allowed_destinations
                .iter()
                .map(|n| IpNetwork {
                    addr: n.network(),
                    prefix_len: n.prefix_len(),
                })
                .collect(),
        }
    }

    /// Runs until `drain` is cancelled and the drain completes (live transactions finished
    /// or `sip.drain_timeout` passed).
    pub async fn run(self, drain: CancellationToken) -> Result<(), EdgeError> {
        // First: every later start step (registrar, guard, tails) counts into it.
        let handle = admin::install_recorder();
        let proxy = Proxy::new(self.proxy_config());
        let registrar = if self.config.registrar.domains.is_empty() {
            None
        } else {
            let r = crate::registrar::Registrar::open(&self.config)
                .await
                .map_err(|e| EdgeError::Store(e.to_string()))?;
            tracing::info!(store = r.store_kind(), "registrar ready");
            Some(Arc::new(r))
        };
        let pusher =
            stg_push::Pusher::new(&self.config.push).map_err(|e| EdgeError::Push(e.to_string()))?;
        let (core_tx, core_rx) = mpsc::channel(CORE_QUEUE);
        let accept_stop = CancellationToken::new();
        let shared = Arc::new(
            Shared::new(
                core_tx,
                self.config.clone(),
                accept_stop.clone(),
                self.tls.clone(),
            )
            .with_bans(self.bans.clone()),
        );
        if let Some(r) = &registrar {
            r.start_watching(&shared);
            let messages = crate::messages::Messages::start(r.bindings().clone(), &shared);
            let _ = shared.messages.set(messages);
        }
        let store = registrar
            .as_ref()
            .map(|r| (r.bindings().clone(), r.watcher()));
        crate::guard::start(&shared, store)
            .await
            .map_err(EdgeError::Guard)?;
        let resolver = crate::resolver::Resolver::new(
            &self.config.dns.nameservers,
            self.config.dns.cache_size,
        )
        .map_err(|e| EdgeError::Dns(e.to_string()))?;
        if let (Some(listener), Some(handle)) = (self.admin, handle.clone()) {
            // Not tracked: it serves until the process ends.
            let bindings = registrar.as_ref().map(|r| r.bindings().clone());
            tokio::spawn(admin::serve(listener, handle, bindings, shared.clone()));
        }
        let mut udp_sockets: Vec<Option<Arc<UdpSocket>>> = Vec::new();
        let mut udp_rx = Vec::new();
        for (socket, s) in self.sockets {
            match socket {
                Socket::Udp(sock) => {
                    let id = ListenerId(udp_sockets.len() as u16);
                    udp_sockets.push(Some(sock.clone()));
                    udp_rx.push((id, s, sock));
                }
                Socket::Tcp(listener, sl) => {
                    udp_sockets.push(None);
                    shared
                        .tasks
                        .spawn(stream::accept_loop(listener, sl, shared.clone()));
                }
            }
        }
        tracing::info!(
            max_connections = self.config.sip.max_connections,
            open_file_limit =
                crate::limits::nofile_soft().map_or("unlimited".to_owned(), |n| n.to_string()),
            reserve = crate::conn::FD_RESERVE,
            effective = shared.caps.accepted,
            per_source = shared.caps.per_source,
            "connection caps"
        );
        metrics::gauge!("stg_connections_max").set(shared.caps.accepted as f64);
        let after = shared.clone();
        let core = Core {
            proxy,
            shared,
            udp: udp_sockets,
            udp_rx: Some(udp::UdpListeners::new(udp_rx)),
            resolver,
            lookups: Arc::new(tokio::sync::Semaphore::new(MAX_LOOKUPS)),
            listener_sides: self.listeners.iter().map(|l| l.side).collect(),
            registrar,
            pusher,
        };
        core.run(core_rx, drain, accept_stop, self.config.sip.drain_timeout)
            .await;
        // The core is done: connections close (a TLS close_notify, a WebSocket Close), and
        // the tasks get a moment to finish before the process ends (messages handed over to
        // be kept are written).
        if let Some(m) = after.messages.get() {
            m.stop();
        }
        after.close_all();
        after.tasks.close();
        if tokio::time::timeout(CLOSE_GRACE, after.tasks.wait())
            .await
            .is_err()
        {
            tracing::debug!(left = after.tasks.len(), "tasks still running at exit");
        }
        Ok(())
    }
}

struct Core {
    proxy: Proxy,
    shared: Arc<Shared>,
    udp: Vec<Option<Arc<UdpSocket>>>,
    /// Read by the core task itself; UDP keeps receiving while draining (responses finish
    /// live transactions).
    udp_rx: Option<udp::UdpListeners>,
    resolver: crate::resolver::Resolver,
    /// Lookups in flight: each holds DNS sockets for up to `RESOLVE_TIMEOUT`, and names can
    /// come from messages (inside routing), so they are capped like connects.
    lookups: Arc<tokio::sync::Semaphore>,
    listener_sides: Vec<Side>,
    /// Bindings and credentials; None when `[registrar]` names no domain.
    registrar: Option<Arc<crate::registrar::Registrar>>,
    /// APNs, FCM, the webhook, or the log.
    pusher: stg_push::Pusher,
}

/// Most DNS lookups in flight at once; beyond it a lookup fails at once (the request gets
/// 503). The core already asks once per name at a time.
const MAX_LOOKUPS: usize = 64;

impl Core {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<CoreInput>,
        drain: CancellationToken,
        accept_stop: CancellationToken,
        drain_timeout: Duration,
    ) {
        // "No timer": a fixed instant far ahead, so an idle core does not reset its timer.
        let far = tokio::time::Instant::now() + Duration::from_secs(365 * 86_400);
        let mut stats_tick = tokio::time::interval(Duration::from_secs(1));
        let mut drain_deadline: Option<tokio::time::Instant> = None;
        // Taken out of `self` so the select! below can borrow it next to `self.handle`.
        let Some(mut udp_rx) = self.udp_rx.take() else {
            return;
        };
        let shared = self.shared.clone();
        // One timer, moved only when the core's next deadline changes: building a new
        // `Sleep` on every loop turn registers a timer entry per message.
        let sleep = sleep_until(far);
        tokio::pin!(sleep);
        loop {
            let next = self
                .proxy
                .poll_timeout()
                .map_or(far, tokio::time::Instant::from_std);
            if sleep.deadline() != next {
                sleep.as_mut().reset(next);
            }
            tokio::select! {
                biased;
                input = rx.recv() => {
                    let Some(input) = input else { break };
                    self.handle(input);
                    // Take what is already queued without going back through select!.
                    for _ in 0..64 {
                        match rx.try_recv() {
                            Ok(input) => self.handle(input),
                            Err(_) => break,
                        }
                    }
                }
                (inbound, bytes) = udp_rx.recv(&shared) => {
                    self.proxy.handle_input(inbound, bytes, crate::now());
                    // Each answer goes out before the next datagram is taken (taking a batch
                    // first held the first answers back: p99 50 ms at 3,200 calls/s); what the
                    // kernel already holds is still drained without going back to sleep.
                    self.flush();
                    for _ in 0..64 {
                        match udp_rx.try_recv(&shared) {
                            Some((inbound, bytes)) => {
                                self.proxy.handle_input(inbound, bytes, crate::now());
                                self.flush();
                            }
                            None => break,
                        }
                    }
                }
                () = &mut sleep => {
                    self.proxy.handle_timeout(crate::now());
                    self.flush();
                }
                _ = drain.cancelled(), if drain_deadline.is_none() => {
                    tracing::info!(timeout = ?drain_timeout, "draining: new requests refused, live transactions finishing");
                    self.proxy.start_drain();
                    accept_stop.cancel();
                    drain_deadline = Some(tokio::time::Instant::now() + drain_timeout);
                }
                _ = stats_tick.tick() => {
                    self.export_stats();
                    self.shared.log_summaries();
                }
            }
            if let Some(deadline) = drain_deadline {
                if self.proxy.is_idle() {
                    tracing::info!("drained");
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    let (c, s) = self.proxy.transactions_alive();
                    tracing::warn!(
                        client = c,
                        server = s,
                        "drain timeout: exiting with transactions alive"
                    );
                    break;
                }
            }
        }
        self.export_stats();
        self.shared.log_final_summaries();
    }

    fn handle(&mut self, input: CoreInput) {
        let now = crate::now();
        match input {
            CoreInput::Message { inbound, bytes } => self.proxy.handle_input(inbound, bytes, now),
            CoreInput::SendFailed(r) => self.proxy.handle_send_failed(r, now),
            CoreInput::Resolved { id, result } => self.proxy.handle_resolved(id, &result, now),
            CoreInput::Registered { id, answer } => self.proxy.handle_register(id, answer, now),
            CoreInput::Authorized { id, answer } => self.proxy.handle_authorized(id, answer, now),
            CoreInput::Located { id, result } => {
                self.proxy
                    .handle_located(id, result.as_deref().map_err(|_| ()), now);
            }
            CoreInput::FlowClosed(flow) => self.proxy.handle_flow_closed(flow, now),
            CoreInput::Bound { aor, binding } => self.proxy.handle_bound(&aor, &binding, now),
            CoreInput::Pushed { id, outcome } => self.proxy.handle_pushed(id, outcome, now),
            CoreInput::Deliver {
                id,
                request,
                binding,
            } => self.proxy.deliver(id, request, &binding, now),
        }
        self.flush();
    }

    /// Carries out everything the core asked for; failed sends go back in as inputs.
    fn flush(&mut self) {
        loop {
            let mut failed = Vec::new();
            while let Some(o) = self.proxy.poll_output() {
                match o {
                    Output::Transmit {
                        flow,
                        bytes,
                        on_fail,
                    } => {
                        let sent = self.send(flow, bytes, on_fail);
                        failed.extend(on_fail.filter(|_| !sent));
                    }
                    Output::Resolve { id, target } => {
                        let Ok(permit) = self.lookups.clone().try_acquire_owned() else {
                            metrics::counter!("stg_dns_lookups_refused_total").increment(1);
                            self.proxy.handle_resolved(id, &[], crate::now());
                            continue;
                        };
                        let resolver = self.resolver.clone();
                        let shared = self.shared.clone();
                        self.shared.tasks.spawn(async move {
                            let _permit = permit;
                            // NAPTR, SRV and A/AAAA run in sequence: with an unreachable DNS
                            // server that can outlast timer B, so the caller is answered
                            // (503) within a bound of our own. A failure is remembered for a
                            // few seconds (the core already asks once per name at a time).
                            let result = match resolver.lookup(&target, RESOLVE_TIMEOUT).await {
                                Ok(r) => r,
                                Err(e @ crate::resolver::ResolveError::Cached { .. }) => {
                                    tracing::debug!(host = %target.host, error = %e, "resolution skipped");
                                    Vec::new()
                                }
                                // Outside requests can cause lookups: throttled like them.
                                Err(e) => {
                                    if shared.may_log_about("failed resolutions", "error", None) {
                                        tracing::warn!(host = %target.host, error = %e, "resolution failed");
                                    }
                                    Vec::new()
                                }
                            };
                            let _ = shared
                                .core_tx
                                .send(CoreInput::Resolved { id, result })
                                .await;
                        });
                    }
                    Output::Register(r) => {
                        let id = r.id;
                        let answer = match &self.registrar {
                            Some(reg) => reg.register(*r, &self.shared),
                            None => Some(RegisterAnswer::Respond {
                                status: StatusCode::SERVICE_UNAVAILABLE,
                                headers: Vec::new(),
                            }),
                        };
                        if let Some(a) = answer {
                            self.proxy.handle_register(id, a, crate::now());
                        }
                    }
                    Output::Authorize { id, request, flow } => {
                        let answer = match &self.registrar {
                            Some(reg) => reg.authorize(id, request, flow, &self.shared),
                            None => Some(Authorization::Deny {
                                status: StatusCode::SERVICE_UNAVAILABLE,
                                headers: Vec::new(),
                            }),
                        };
                        if let Some(a) = answer {
                            self.proxy.handle_authorized(id, a, crate::now());
                        }
                    }
                    Output::Locate { id, aor } => {
                        let started = self
                            .registrar
                            .as_ref()
                            .is_some_and(|reg| reg.locate(id, aor, &self.shared));
                        if !started {
                            self.proxy.handle_located(id, Err(()), crate::now());
                        }
                    }
                    Output::Push(p) => {
                        let registrar = self.registrar.clone();
                        if let Some(r) = &registrar {
                            // The device may wake on another node: follow its binds while
                            // the call may wait (plus a margin for the push itself).
                            let wait = self.proxy.config().push.call_fork_timeout
                                + Duration::from_secs(10);
                            r.watch_for(&p.aor, wait);
                        }
                        let outcome = crate::push::send(*p, &self.pusher, registrar, &self.shared);
                        if let Some((id, outcome)) = outcome {
                            self.proxy.handle_pushed(id, outcome, crate::now());
                        }
                    }
                    Output::Store(m) => match self.shared.messages.get() {
                        Some(messages) => messages.keep(m),
                        None => tracing::warn!(aor = %m.aor, "message not kept: no store"),
                    },
                    Output::Delivered { id, status } => {
                        if let Some(messages) = self.shared.messages.get() {
                            messages.delivered(id, status);
                        }
                    }
                    Output::Event(e) => self.log_event(&e),
                    _ => {}
                }
            }
            if failed.is_empty() {
                return;
            }
            let now = crate::now();
            for r in failed {
                self.proxy.handle_send_failed(r, now);
            }
        }
    }

    /// Sends now (UDP) or hands to a connection task (streams); false when it surely failed.
    fn send(
        &mut self,
        flow: Flow,
        bytes: bytes::Bytes,
        on_fail: Option<stg_sip_core::proxy::SendRef>,
    ) -> bool {
        tracing::trace!(remote = %flow.remote, transport = %flow.transport, conn = ?flow.conn, len = bytes.len(), "send");
        if flow.transport == Transport::Udp {
            let Some(Some(sock)) = self.udp.get(usize::from(flow.listener.0)) else {
                return false;
            };
            return match sock.try_send_to(&bytes, flow.remote) {
                Ok(_) => true,
                Err(e) => {
                    metrics::counter!("stg_sip_send_errors_total", "transport" => "udp")
                        .increment(1);
                    tracing::debug!(remote = %flow.remote, error = %e, "UDP send failed");
                    false
                }
            };
        }
        match self.shared.send_stream(&flow, bytes) {
            Ok(()) => true,
            Err(crate::conn::SendError::Full) => {
                // The peer is not keeping up: the send fails (a 503 for a request), rather
                // than a second connection that would reorder and pile up more.
                metrics::counter!("stg_sip_send_errors_total", "transport" => flow.transport.param(), "reason" => "queue_full").increment(1);
                false
            }
            Err(crate::conn::SendError::NoConnection(bytes)) => {
                if flow.conn.is_some() {
                    // The device's own flow is gone: nothing else may carry it.
                    return false;
                }
                let side = self
                    .listener_sides
                    .get(usize::from(flow.listener.0))
                    .copied()
                    .unwrap_or(Side::Outside);
                stream::send_or_connect(&self.shared, flow, bytes, on_fail, side)
            }
        }
    }

    /// Logs what the core reports, throttled per reason and source (the counters the
    /// lines stand for are exact in the metrics).
    fn log_event(&self, e: &Event) {
        match e {
            Event::Malformed {
                remote,
                reason,
                detail,
                answered,
            } if self
                .shared
                .may_log("malformed messages", reason, remote.ip()) =>
            {
                tracing::info!(%remote, reason, detail, answered, "malformed SIP message");
            }
            Event::AuthRejected {
                remote,
                proven: false,
                ..
            } => {
                // Maybe a spoofer's under a user's address: counted apart, never written as
                // a TRUCO_KO line (another tool would ban on it), withheld from users.
                metrics::counter!("stg_auth_failures_total", "service" => "sip", "reason" => "unproven").increment(1);
                self.shared
                    .bans
                    .unproven_failure(remote.ip(), stg_guard::Kind::SipAuth);
            }
            Event::AuthRejected {
                remote,
                credentials,
                ..
            } => {
                let user = stg_auth::Credentials::parse(credentials, "")
                    .map(|c| c.user)
                    .unwrap_or_default();
                let failure = stg_auth::AuthFailure::sip(
                    remote.ip(),
                    stg_auth::FailReason::PbxRejected,
                    &user,
                );
                crate::registrar::report(&self.shared, failure);
            }
            Event::Probed {
                remote, verified, ..
            } => {
                let kind = stg_guard::Kind::External {
                    jail: crate::guard::PROBE_JAIL.to_owned(),
                };
                if *verified {
                    self.shared.bans.failure(remote.ip(), kind, None);
                } else if self.shared.config.guard.udp_probes {
                    self.shared.bans.unproven_failure(remote.ip(), kind);
                }
            }
            Event::AuthAccepted { remote } => self.shared.bans.authenticated(remote.ip()),
            Event::Dropped { remote, reason }
                if tracing::enabled!(tracing::Level::DEBUG)
                    && self.shared.may_log("dropped messages", reason, remote.ip()) =>
            {
                tracing::debug!(%remote, reason, "message dropped");
            }
            _ => {}
        }
    }

    fn export_stats(&self) {
        let s = self.proxy.stats();
        for (k, v) in &s.requests_in {
            metrics::counter!("stg_sip_messages_in_total", "kind" => "request", "method" => *k)
                .absolute(*v);
        }
        for (k, v) in &s.responses_in {
            metrics::counter!("stg_sip_messages_in_total", "kind" => "response", "status" => *k)
                .absolute(*v);
        }
        for (k, v) in &s.requests_out {
            metrics::counter!("stg_sip_messages_out_total", "kind" => "request", "method" => *k)
                .absolute(*v);
        }
        for (k, v) in &s.responses_out {
            metrics::counter!("stg_sip_messages_out_total", "kind" => "response", "status" => *k)
                .absolute(*v);
        }
        for (k, v) in &s.parse_failures {
            metrics::counter!("stg_sip_parse_failures_total", "reason" => *k).absolute(*v);
        }
        for (k, v) in &s.dropped {
            metrics::counter!("stg_sip_dropped_total", "reason" => *k).absolute(*v);
        }
        for (k, v) in &s.refused {
            metrics::counter!("stg_sip_refused_total", "reason" => *k).absolute(*v);
        }
        for (k, v) in &s.fork {
            metrics::counter!("stg_push_fork_total", "event" => *k).absolute(*v);
        }
        let load = self.proxy.load();
        metrics::gauge!("stg_sip_requests_awaiting").set(load.awaiting as f64);
        metrics::gauge!("stg_sip_requests_awaiting_bytes").set(load.awaiting_bytes as f64);
        metrics::gauge!("stg_sip_transactions_lingering").set(load.lingering as f64);
        metrics::gauge!("stg_push_pending_forks").set(load.late_forks as f64);
        metrics::gauge!("stg_sip_nonce_proofs").set(load.nonce_proofs as f64);
        let (c, sv) = self.proxy.transactions_alive();
        metrics::gauge!("stg_sip_transactions", "role" => "client").set(c as f64);
        metrics::gauge!("stg_sip_transactions", "role" => "server").set(sv as f64);
        metrics::gauge!("stg_connections_total_open").set(self.shared.connection_count() as f64);
    }
}
