//! The guard in the node: authentication failures become ban decisions ([`stg_guard`],
//! sans-IO), and a banned source is refused by every listener before anything is parsed (a
//! hash lookup per datagram or connection), and dropped by the kernel when stg's nftables
//! table is on (`guard.firewall`, [`stg_firewall`]).
//!
//! Failures arrive as events on a queue (the registrar's digest failures and the PBX's
//! rejections of devices' credentials); one task owns the engine. Each ban is logged as the
//! operators' tools expect: `TRUCO_KO [<ip>] stg <jail> <time>` (the line existing fail2ban
//! setups read) and fail2ban's own `[<jail>] Ban <ip>`.
//!
//! With the firewall on, the kernel's set is the memory of the bans: it is not emptied at
//! stop, and at start its elements (with their remaining time) are the node's bans again.
//! Without it, bans live in the process only. Sharing bans across nodes (Redis) is not
//! here yet.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use stg_guard::{Engine, Event, GuardConfig, IpNet, Jail, Kind};
use tokio::sync::mpsc;

use crate::conn::Shared;

/// Most failure events queued for the engine; beyond it they are dropped and counted (the
/// engine keeps up with far more than an outsider can cause through digest exchanges).
const EVENT_QUEUE: usize = 4096;

/// Most `[jail] Found <ip>` lines a second (the rest are counted in one line).
const FOUND_LINES: u32 = 50;

/// At most `max` admissions per second of `now`; the count of refusals of a second that
/// ended is handed back once. (One source reaches its ban within `maxretry` lines; this
/// bounds a spread attack, which [`crate::throttle`]'s per-source windows would cut too
/// early for fail2ban's one-line-per-failure contract.)
struct PerSecond {
    max: u32,
    epoch: Instant,
    second: u64,
    admitted: u32,
    refused: u64,
}

impl PerSecond {
    fn new(max: u32, epoch: Instant) -> Self {
        Self {
            max,
            epoch,
            second: 0,
            admitted: 0,
            refused: 0,
        }
    }

    /// Whether to admit at `now`, and the refusals of the second that just ended, if any.
    fn admit(&mut self, now: Instant) -> (bool, Option<u64>) {
        let second = now.saturating_duration_since(self.epoch).as_secs();
        let mut ended = None;
        if second != self.second {
            ended = (self.refused > 0).then_some(self.refused);
            (self.second, self.admitted, self.refused) = (second, 0, 0);
        }
        if self.admitted < self.max {
            self.admitted += 1;
            (true, ended)
        } else {
            self.refused += 1;
            (false, ended)
        }
    }
}

/// Changes waiting for the firewall task; beyond, they are counted and stg's own listeners
/// still enforce the ban.
const FIREWALL_QUEUE: usize = 65_536;

/// Applies the kernel changes in batches (one `nft` run per batch, never one per address):
/// a burst of bans gathers into one run, a lone ban waits at most the batcher's delay.
async fn firewall_batches(
    fw: Arc<stg_firewall::Firewall>,
    mut rx: mpsc::Receiver<stg_firewall::Change>,
) {
    let mut batcher = stg_firewall::Batcher::new(stg_firewall::BatchConfig::default());
    loop {
        let due = batcher.poll_timeout();
        tokio::select! {
            c = rx.recv() => {
                let Some(c) = c else { return };
                let now = crate::now();
                let mut refused = !batcher.handle_change(c, now);
                while let Ok(c) = rx.try_recv() {
                    refused |= !batcher.handle_change(c, now);
                }
                if refused {
                    metrics::counter!("stg_guard_firewall_errors_total").increment(1);
                }
            }
            () = tokio::time::sleep_until(due.map_or_else(tokio::time::Instant::now, tokio::time::Instant::from_std)), if due.is_some() => {}
        }
        while let Some(batch) = batcher.poll_batch(crate::now()) {
            let fw = fw.clone();
            let r = tokio::task::spawn_blocking(move || fw.apply(&batch)).await;
            if !matches!(r, Ok(Ok(_))) {
                metrics::counter!("stg_guard_firewall_errors_total").increment(1);
                tracing::error!(result = ?r.map(|x| x.map(|_| ())), "guard: nftables not updated (stg itself is)");
            }
        }
    }
}

/// The jail of user scans: out-of-dialog requests answered 403/404/484/604 (TCP, TLS, WS,
/// and UDP unless `guard.udp_probes` is off).
pub(crate) const PROBE_JAIL: &str = "sipprobe";

/// How long an address that authenticated is a user's: evidence a spoofer could forge
/// (UDP) alone does not ban it meanwhile.
const KNOWN_GOOD_FOR: Duration = Duration::from_secs(24 * 3600);

/// How often one node tells the cluster again that an address authenticated.
const KNOWN_GOOD_SHARE_EVERY: Duration = Duration::from_secs(600);

/// Most addresses remembered as users' (only a right password adds one).
const MAX_KNOWN_GOOD: usize = 100_000;

/// Most bans held in the process (each is a kernel set element too, with the firewall).
const MAX_BANS: usize = 100_000;

/// The bans in force, read by every listener.
#[derive(Default)]
pub(crate) struct Bans {
    by_scope: RwLock<HashMap<IpNet, Instant>>,
    events: OnceLock<mpsc::Sender<Event>>,
    /// Changes for the kernel's sets, batched by [`firewall_batches`].
    firewall: OnceLock<mpsc::Sender<stg_firewall::Change>>,
    /// The cluster's store (Redis): bans decided here are published, others' arrive.
    store: OnceLock<stg_store::Bindings>,
    /// Jails' figures, who banned what, ban lines to syslog (`guard_inputs`).
    pub(crate) status: crate::guard_inputs::Status,
    /// Addresses (IPv6: /64s) that authenticated: when last, and when last told to the
    /// cluster.
    known_good: Mutex<HashMap<IpAddr, (Instant, Option<Instant>)>>,
    /// When (unix ms) the cluster last failed to say whether an address is known good.
    good_unasked: std::sync::atomic::AtomicU64,
}

/// How long the cluster is not asked again after it failed to answer.
const ASK_AGAIN_AFTER: Duration = Duration::from_secs(5);

/// The known-good key of an address: itself (IPv4), or its /64 (IPv6: one user's devices
/// share it, and a /64 is what a ban covers by default).
fn good_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

impl Bans {
    /// Whether `ip` is banned now: its address, or (IPv6) its /64.
    pub(crate) fn banned(&self, ip: IpAddr) -> bool {
        let map = self
            .by_scope
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.is_empty() {
            return false;
        }
        let ip = ip.to_canonical();
        let now = crate::now();
        let hit = |net: Option<IpNet>| {
            net.and_then(|n| map.get(&n.trunc()))
                .is_some_and(|&until| until > now)
        };
        match ip {
            IpAddr::V4(_) => hit(IpNet::new(ip, 32).ok()),
            IpAddr::V6(_) => hit(IpNet::new(ip, 128).ok()) || hit(IpNet::new(ip, 64).ok()),
        }
    }

    /// Counts a failure from `ip` (no-op when the guard is off).
    pub(crate) fn failure(&self, ip: IpAddr, kind: Kind, user: Option<&str>) {
        self.send(ip, kind, user, true);
    }

    /// Counts a failure whose source address may be forged (UDP): it counts like any
    /// other, but a ban it decides is withheld from an address that authenticated.
    pub(crate) fn unproven_failure(&self, ip: IpAddr, kind: Kind) {
        self.send(ip, kind, None, false);
    }

    /// `ip` authenticated: a user's address, here and (through Redis) on every node.
    pub(crate) fn authenticated(&self, ip: IpAddr) {
        if self.events.get().is_none() {
            return;
        }
        let ip = good_key(ip);
        let now = crate::now();
        let share = {
            let mut map = self
                .known_good
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if map.len() >= MAX_KNOWN_GOOD && !map.contains_key(&ip) {
                map.retain(|_, (seen, _)| now.saturating_duration_since(*seen) < KNOWN_GOOD_FOR);
                if map.len() >= MAX_KNOWN_GOOD {
                    metrics::counter!("stg_guard_known_good_refused_total").increment(1);
                    return;
                }
            }
            let entry = map.entry(ip).or_insert((now, None));
            entry.0 = now;
            let due = entry
                .1
                .is_none_or(|t| now.saturating_duration_since(t) >= KNOWN_GOOD_SHARE_EVERY);
            if due {
                entry.1 = Some(now);
            }
            metrics::gauge!("stg_guard_known_good").set(map.len() as f64);
            due
        };
        let Some(store) = self.store.get().cloned().filter(|_| share) else {
            return;
        };
        tokio::spawn(async move {
            let r = store
                .mark_authenticated(&ip.to_string(), KNOWN_GOOD_FOR.as_secs())
                .await;
            if r.is_err() {
                metrics::counter!("stg_guard_share_errors_total").increment(1);
            }
        });
    }

    /// Whether `ip` (its /64 for IPv6) authenticated within [`KNOWN_GOOD_FOR`], here or on
    /// another node. When the cluster cannot be asked, it might have: `true` (an unproven
    /// ban is withheld), and for [`ASK_AGAIN_AFTER`] it is not asked (a flood of forged
    /// decisions must not wait on a Redis that is down).
    async fn known_good(&self, ip: IpAddr) -> bool {
        let ip = good_key(ip);
        let here = self
            .known_good
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&ip)
            .is_some_and(|(seen, _)| {
                crate::now().saturating_duration_since(*seen) < KNOWN_GOOD_FOR
            });
        if here {
            return true;
        }
        let Some(store) = self.store.get() else {
            return false;
        };
        let failed_at = self.good_unasked.load(Ordering::Relaxed);
        if failed_at != 0
            && unix_ms().saturating_sub(failed_at) < ASK_AGAIN_AFTER.as_millis() as u64
        {
            return true;
        }
        let asked = tokio::time::timeout(
            Duration::from_millis(250),
            store.authenticated(&ip.to_string()),
        )
        .await;
        match asked {
            Ok(Ok(good)) => good,
            _ => {
                metrics::counter!("stg_guard_share_errors_total").increment(1);
                self.good_unasked.store(unix_ms(), Ordering::Relaxed);
                true
            }
        }
    }

    fn send(&self, ip: IpAddr, kind: Kind, user: Option<&str>, proven: bool) {
        let Some(tx) = self.events.get() else {
            return;
        };
        let ev = Event {
            source: ip,
            kind,
            user: user.map(str::to_owned),
            at: crate::now(),
            proven,
        };
        if tx.try_send(ev).is_err() {
            metrics::counter!("stg_guard_events_dropped_total").increment(1);
        }
    }

    fn insert(&self, scope: IpNet, until: Instant) -> bool {
        let mut map = self
            .by_scope
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= MAX_BANS && !map.contains_key(&scope) {
            let now = crate::now();
            map.retain(|_, &mut t| t > now);
            if map.len() >= MAX_BANS {
                return false;
            }
        }
        map.insert(scope.trunc(), until);
        metrics::gauge!("stg_guard_bans").set(map.len() as f64);
        true
    }

    /// The bans in force: scope and time left, longest first.
    pub(crate) fn list(&self) -> Vec<(IpNet, Duration)> {
        let map = self
            .by_scope
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = crate::now();
        let mut v: Vec<(IpNet, Duration)> = map
            .iter()
            .filter(|(_, &t)| t > now)
            .map(|(n, &t)| (*n, t - now))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }

    /// An operator's ban (`stg ban add`): like a jail's, logged the same way.
    pub(crate) fn add(&self, shared: &Shared, scope: IpNet, duration: Duration) -> bool {
        if !self.insert(scope, crate::now() + duration) {
            return false;
        }
        self.share(scope, Some(duration), "manual");
        self.status.banned("manual", scope);
        tracing::warn!(target: "stg::guard", "TRUCO_KO [{}] stg manual {}", scope.addr(), clock_time());
        tracing::warn!(target: "stg::guard", "[manual] Ban {scope}");
        shared.close_from(|a| scope.contains(&a.to_canonical()));
        self.to_firewall(stg_firewall::Change::Ban {
            net: scope,
            timeout: duration,
        });
        true
    }

    /// An operator's unban (`stg ban rm`); whether it was banned.
    pub(crate) fn remove(&self, scope: IpNet) -> bool {
        let removed = self
            .by_scope
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&scope.trunc())
            .is_some();
        tracing::warn!(target: "stg::guard", "[manual] Unban {scope}");
        self.to_firewall(stg_firewall::Change::Unban { net: scope });
        self.share(scope, None, "manual");
        removed
    }

    /// Publishes a ban (`None`: a lift) to the other nodes.
    fn share(&self, scope: IpNet, duration: Option<Duration>, what: &str) {
        let Some(store) = self.store.get().cloned() else {
            return;
        };
        let until_ms = duration.map_or(0, |d| unix_ms() + d.as_millis() as u64);
        let what = what.to_owned();
        tokio::spawn(async move {
            if let Err(e) = store.share_ban(&scope.to_string(), until_ms, &what).await {
                metrics::counter!("stg_guard_share_errors_total").increment(1);
                tracing::warn!(error = %e, %scope, "guard: ban not shared with the cluster");
            }
        });
    }

    /// A ban or lift published by a node (`<scope> <until unix ms>`, 0 = lifted); this
    /// node's own come back too and change nothing.
    pub(crate) fn remote(&self, message: &str) {
        let mut it = message.split(' ');
        let (Some(scope), Some(ms), None) = (it.next(), it.next(), it.next()) else {
            return;
        };
        let (Ok(scope), Ok(ms)) = (scope.parse::<IpNet>(), ms.parse::<u64>()) else {
            return;
        };
        let scope = scope.trunc();
        if ms == 0 {
            let had = self
                .by_scope
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&scope)
                .is_some();
            if had {
                self.to_firewall(stg_firewall::Change::Unban { net: scope });
            }
            return;
        }
        let left = Duration::from_millis(ms.saturating_sub(unix_ms()));
        if left.is_zero() {
            return;
        }
        let until = crate::now() + left;
        let known = self
            .by_scope
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&scope)
            .is_some_and(|&t| t + Duration::from_secs(1) >= until);
        if known {
            return;
        }
        metrics::counter!("stg_guard_bans_received_total").increment(1);
        if self.insert(scope, until) {
            self.status.banned("remote", scope);
            self.to_firewall(stg_firewall::Change::Ban {
                net: scope,
                timeout: left,
            });
        }
    }

    /// Takes the cluster's bans in force (start, and every 30 s in case a message was lost).
    async fn resync(&self) {
        let Some(store) = self.store.get() else {
            return;
        };
        let Ok(bans) = store.shared_bans(unix_ms()).await else {
            return;
        };
        for (scope, ms) in bans {
            self.remote(&format!("{scope} {ms}"));
        }
    }

    fn to_firewall(&self, change: stg_firewall::Change) {
        let Some(tx) = self.firewall.get() else {
            return;
        };
        if tx.try_send(change).is_err() {
            // `nft` does not keep up: the ban holds in stg's own listeners all the same.
            metrics::counter!("stg_guard_firewall_errors_total").increment(1);
        }
    }

    fn expire(&self) {
        let mut map = self
            .by_scope
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = crate::now();
        map.retain(|_, &mut t| t > now);
        metrics::gauge!("stg_guard_bans").set(map.len() as f64);
    }
}

impl stg_guard::Hook for Bans {
    fn banned(&self, ip: IpAddr) -> bool {
        Self::banned(self, ip)
    }

    fn failure(&self, ip: IpAddr, kind: Kind, user: Option<&str>) {
        Self::failure(self, ip, kind, user);
    }

    fn authenticated(&self, ip: IpAddr) {
        Self::authenticated(self, ip);
    }
}

/// Starts the guard task (when `guard.enabled`): restores the kernel's bans when the
/// firewall is on, then decides on failures until the node stops.
pub(crate) async fn start(
    shared: &Arc<Shared>,
    store: Option<(stg_store::Bindings, Option<stg_store::Watcher>)>,
) -> Result<(), String> {
    let cfg = &shared.config;
    if !cfg.guard.enabled {
        return Ok(());
    }
    // Never banned: the configured list, the inside and the balancers (SIP and web).
    let mut ignore: Vec<IpNet> = cfg.guard.ignore.clone();
    ignore.extend(cfg.sip.trusted_networks.iter().copied());
    ignore.extend(cfg.sip.load_balancers.iter().copied());
    ignore.extend(cfg.web.load_balancers.iter().copied());
    ignore.extend(cfg.web.internal_networks.iter().copied());
    let g = &cfg.guard;
    let mut jails = Jail::defaults();
    jails.push(Jail::new(PROBE_JAIL, g.probe_maxretry));
    let jails = jails
        .into_iter()
        .map(|mut j| {
            j.ignore.extend(ignore.iter().copied());
            j.findtime = g.findtime;
            j.bantime = g.bantime;
            if let Some(inc) = &mut j.increment {
                inc.max = g.max_bantime;
            }
            if j.name == "sip" {
                j.maxretry = g.sip_maxretry;
            }
            j
        })
        .collect::<Vec<_>>();
    let mut jails = jails;
    jails.extend(crate::guard_inputs::jails(g, &ignore));
    let guard_cfg = GuardConfig {
        jails,
        node: cfg.node.id.clone().unwrap_or_else(|| "stg".to_owned()),
        ..GuardConfig::default()
    };
    let cluster_count = Arc::new(AtomicU32::new(0));
    let mut engine = Engine::with_counters(
        guard_cfg.clone(),
        ClusterCounters {
            local: stg_guard::MemoryCounters::new(guard_cfg.max_entries),
            cluster: cluster_count.clone(),
        },
    );
    let firewall = if cfg.guard.firewall {
        let fw_cfg = stg_firewall::FirewallConfig {
            table: cfg.guard.firewall_table.clone(),
            ..stg_firewall::FirewallConfig::default()
        };
        let fw = tokio::task::spawn_blocking(move || stg_firewall::Firewall::ensure(&fw_cfg))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("guard.firewall: {e}"))?;
        let fw = Arc::new(fw);
        let f2 = fw.clone();
        let kept = tokio::task::spawn_blocking(move || f2.list())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("guard.firewall: {e}"))?;
        let now = crate::now();
        for el in &kept {
            if let Some(left) = el.expires {
                shared.bans.insert(el.net, now + left);
            }
        }
        tracing::info!(table = %cfg.guard.firewall_table, bans = kept.len(), "guard: nftables table ready, bans restored");
        let (ftx, frx) = mpsc::channel(FIREWALL_QUEUE);
        let _ = shared.bans.firewall.set(ftx);
        tokio::spawn(firewall_batches(fw.clone(), frx));
        Some(fw)
    } else {
        None
    };
    if let Some((store, watcher)) = store {
        if store.kind() != "embedded" {
            let _ = shared.bans.store.set(store);
            if let Some(w) = watcher {
                // For the node's life: the cluster's bans and lifts.
                w.watch(stg_store::BANS_CHANNEL);
            }
            shared.bans.resync().await;
        }
    }
    let (tx, mut rx) = mpsc::channel::<Event>(EVENT_QUEUE);
    let _ = shared.bans.events.set(tx.clone());
    crate::guard_inputs::start(shared, tx).await?;
    shared.bans.status.record(engine.jail_stats());
    let shared = shared.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        let mut ticks = 0u64;
        let mut found = PerSecond::new(FOUND_LINES, crate::now());
        loop {
            tokio::select! {
                ev = rx.recv() => {
                    let Some(ev) = ev else { break };
                    let now = crate::now();
                    // Counted cluster-wide first (an attacker spread over the nodes by
                    // HAProxy is one attacker); locally when Redis does not answer.
                    let counted = count_in_cluster(&shared, &engine, &ev).await;
                    // fail2ban's own line for each failure it counts (the seed's acceptance
                    // table reads it), at most FOUND_LINES a second: a spread attack must not
                    // turn into a log flood.
                    let (log, ended) = found.admit(now);
                    if let Some(n) = ended {
                        tracing::info!(target: "stg::guard", suppressed = n, "more failures counted than logged");
                    }
                    if log {
                        tracing::info!(target: "stg::guard", "[{}] Found {} - {}", ev.kind.jail(), ev.source, clock_time());
                    } else {
                        metrics::counter!("stg_log_suppressed_total").increment(1);
                    }
                    if let Some(c) = counted {
                        cluster_count.store(c.max(1), Ordering::Relaxed);
                    }
                    let decided = engine.failure(now, &ev);
                    shared.bans.status.record(engine.jail_stats());
                    let Some(d) = decided else { continue };
                    if !d.proven
                        && (shared.bans.known_good(ev.source).await
                            || shared.bans.known_good(d.scope.addr()).await)
                    {
                        // Forgeable evidence against a user's address: a spoofer's way to
                        // lock a user out. Counted and said, never enforced.
                        metrics::counter!("stg_guard_bans_withheld_total", "jail" => jail_label(&d.jail)).increment(1);
                        tracing::warn!(target: "stg::guard", "[{}] Withheld ban of {}: it authenticated within {} h and the evidence came over UDP", d.jail, d.scope, KNOWN_GOOD_FOR.as_secs() / 3600);
                        continue;
                    }
                    if counted.is_some() {
                        if let Some(store) = shared.bans.store.get().cloned() {
                            let (jail, scope) = (d.jail.clone(), d.scope.to_string());
                            tokio::spawn(async move {
                                let _ = store.clear_failures(&jail, &scope).await;
                            });
                        }
                    }
                    ban(&shared, firewall.as_ref(), &d, now);
                }
                _ = tick.tick() => {
                    engine.tick(crate::now());
                    shared.bans.status.record(engine.jail_stats());
                    shared.bans.expire();
                    ticks += 1;
                    if ticks.is_multiple_of(3) {
                        shared.bans.resync().await;
                    }
                }
            }
        }
    });
    Ok(())
}

fn ban(
    shared: &Arc<Shared>,
    firewall: Option<&Arc<stg_firewall::Firewall>>,
    d: &stg_guard::Decision,
    now: Instant,
) {
    if !shared.bans.insert(d.scope, now + d.duration) {
        metrics::counter!("stg_guard_bans_refused_total").increment(1);
        return;
    }
    metrics::counter!("stg_guard_bans_total", "jail" => jail_label(&d.jail)).increment(1);
    shared.bans.status.banned(&d.jail, d.scope);
    let ip = d.scope.addr();
    let time = clock_time();
    // The operators' convention (the seed's fail2ban filters read it), then fail2ban's own.
    tracing::warn!(target: "stg::guard", "TRUCO_KO [{ip}] stg {} {time}", d.jail);
    tracing::warn!(target: "stg::guard", "[{}] Ban {} ({})", d.jail, d.scope, d.reason);
    shared.bans.share(
        d.scope,
        Some(d.duration),
        &format!("{} {}", d.origin, d.jail),
    );
    // Connections already open from there end now.
    shared.close_from(|a| d.scope.contains(&a.to_canonical()));
    if firewall.is_some() {
        shared.bans.to_firewall(stg_firewall::Change::Ban {
            net: d.scope,
            timeout: d.duration,
        });
    }
}

/// A bounded label for metrics.
fn jail_label(jail: &str) -> &'static str {
    match jail {
        "sip" => "sip",
        "portal" => "portal",
        "token" => "token",
        "probe" => "probe",
        PROBE_JAIL => PROBE_JAIL,
        _ => "other",
    }
}

/// The engine's counters, told the cluster's count of the failure being added when Redis
/// gave it ([`count_in_cluster`]); the local count otherwise.
struct ClusterCounters {
    local: stg_guard::MemoryCounters,
    /// The cluster's count for the next `add`; 0: none.
    cluster: Arc<AtomicU32>,
}

impl stg_guard::CounterStore for ClusterCounters {
    fn add(
        &mut self,
        key: &stg_guard::CounterKey,
        at: Instant,
        window: Duration,
        keep: usize,
    ) -> u32 {
        let local = self.local.add(key, at, window, keep);
        match self.cluster.swap(0, Ordering::Relaxed) {
            0 => local,
            c => c.max(local),
        }
    }

    fn clear(&mut self, key: &stg_guard::CounterKey) {
        self.local.clear(key);
    }

    fn expire(&mut self, now: Instant, window_of: &dyn Fn(&str) -> Option<Duration>) {
        self.local.expire(now, window_of);
    }

    fn stats(&self) -> stg_guard::CounterStats {
        self.local.stats()
    }

    fn live(&self, jail: &str) -> Option<usize> {
        self.local.live(jail)
    }
}

/// Adds the failure to the cluster's window of its jail and scope (Redis); its count, or
/// `None` (no Redis, an ignored source, Redis slow or down: counted locally).
async fn count_in_cluster(
    shared: &Shared,
    engine: &Engine<ClusterCounters>,
    ev: &Event,
) -> Option<u32> {
    let store = shared.bans.store.get()?;
    if !ev.proven {
        // Forged evidence is free to send under fresh addresses: counted in this process
        // only (its own table), never one Redis key and round trip per datagram.
        return None;
    }
    let jail = engine.jails().iter().find(|j| j.name == ev.kind.jail())?;
    let src = ev.source.to_canonical();
    if jail.ignore.iter().any(|n| n.contains(&src)) {
        return None;
    }
    let scope = jail.scope(ev.source).to_string();
    let window = jail.findtime.as_millis() as u64;
    let keep = jail.maxretry as usize;
    let r = tokio::time::timeout(
        Duration::from_millis(250),
        store.count_failure(&jail.name, &scope, unix_ms(), window, keep),
    )
    .await;
    match r {
        Ok(Ok(c)) => c,
        _ => {
            metrics::counter!("stg_guard_share_errors_total").increment(1);
            None
        }
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `HH:MM:SS.mmm` (UTC), as the seed's TRUCO_KO lines carry it.
fn clock_time() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let day_ms = ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spread attack (thousands of failures a second from as many sources) writes at most
    /// FOUND_LINES `Found` lines a second, and the rest is told once, when the second ends.
    #[test]
    fn found_lines_are_capped_per_second_and_the_rest_summed() {
        let t0 = Instant::now();
        let mut found = PerSecond::new(FOUND_LINES, t0);
        let admitted = (0..10_000)
            .filter(|_| found.admit(t0 + Duration::from_millis(500)).0)
            .count();
        assert_eq!(admitted, FOUND_LINES as usize);
        let (log, ended) = found.admit(t0 + Duration::from_millis(1500));
        assert!(log, "a new second");
        assert_eq!(ended, Some(10_000 - u64::from(FOUND_LINES)));
        assert_eq!(
            found.admit(t0 + Duration::from_millis(1600)).1,
            None,
            "told once"
        );
    }

    /// An attacker failing from many addresses fills the bans table at most to its cap: the
    /// next ban is refused (counted by the caller), and expired bans make room again.
    #[test]
    fn the_bans_table_is_capped_and_expired_bans_make_room() {
        let bans = Bans::default();
        let now = crate::now();
        let net =
            |i: u32| IpNet::new(IpAddr::from((0xC000_0000u32 + i).to_be_bytes()), 32).unwrap();
        for i in 0..MAX_BANS as u32 {
            let until = if i < 10 {
                now + Duration::from_millis(1)
            } else {
                now + Duration::from_secs(3600)
            };
            assert!(bans.insert(net(i), until), "ban {i}");
        }
        assert!(bans.banned(net(20).addr()));
        std::thread::sleep(Duration::from_millis(5));
        // Ten bans expired: ten new ones fit, the eleventh does not.
        for i in 0..10u32 {
            assert!(bans.insert(net(MAX_BANS as u32 + i), now + Duration::from_secs(60)));
        }
        assert!(!bans.insert(net(MAX_BANS as u32 + 10), now + Duration::from_secs(60)));
        assert!(!bans.banned(net(MAX_BANS as u32 + 10).addr()));
        assert!(bans.list().len() <= MAX_BANS);
    }
}
