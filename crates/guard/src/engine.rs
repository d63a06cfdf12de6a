//! The ban engine: failure events in, ban decisions out.
//!
//! Each [`Jail`] counts failures per scope (an IPv4 address, an IPv6 /64 by default) over a
//! sliding window of `findtime`; the failure that brings the count to `maxretry` bans the
//! scope for `bantime`, longer for a repeat offender ([`Increment`]). Counters live behind
//! the [`CounterStore`] seam: [`MemoryCounters`] here, bounded; a cluster-wide store
//! (Redis) implements the same trait in an adapter crate.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// What failed. Each kind is counted in the jail of the same name ([`Kind::jail`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// A log line matched by a filter, or any other source, counted in the named jail.
    External {
        /// The jail that counts it.
        jail: String,
    },
    /// A request with an invalid token (jail `token`, the seed's "token invalido").
    InvalidToken,
    /// A wrong password at the web portal (jail `portal`).
    PortalLogin,
    /// A request for an unknown short URL (jail `probe`).
    Probe,
    /// A failed SIP digest authentication (jail `sip`).
    SipAuth,
}

impl Kind {
    /// The name of the jail that counts this kind.
    pub fn jail(&self) -> &str {
        match self {
            Self::External { jail } => jail,
            Self::InvalidToken => "token",
            Self::PortalLogin => "portal",
            Self::Probe => "probe",
            Self::SipAuth => "sip",
        }
    }
}

/// One failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The client's address (after PROXY protocol, where trusted).
    pub source: IpAddr,
    /// What failed.
    pub kind: Kind,
    /// The user name tried, when known (reported in the reason).
    pub user: Option<String>,
    /// When it happened (the window counts event times, not arrival times).
    pub at: Instant,
    /// Whether `source` is proven (a connection, a nonce echoed back, a log line of a
    /// trusted service), not a UDP datagram that anyone could have sent under that address.
    pub proven: bool,
}

/// Longer bans for repeat offenders, as fail2ban's `bantime.increment`: ban number `n`
/// (0 for the first) lasts `bantime × multipliers[min(n, len-1)]` when `multipliers` is
/// set, else `bantime × factor × 2^n`; never longer than `max`.
#[derive(Clone, Debug, PartialEq)]
pub struct Increment {
    /// `bantime.factor` (default 1).
    pub factor: f64,
    /// `bantime.multipliers` (default none: doubling).
    pub multipliers: Vec<u32>,
    /// `bantime.maxtime`: the cap (default one week).
    pub max: Duration,
    /// How long a past ban is remembered for the increment (default one week).
    pub forget_after: Duration,
}

impl Default for Increment {
    fn default() -> Self {
        Self {
            factor: 1.0,
            multipliers: Vec::new(),
            max: Duration::from_secs(7 * 86400),
            forget_after: Duration::from_secs(7 * 86400),
        }
    }
}

impl Increment {
    fn duration(&self, bantime: Duration, previous: u32) -> Duration {
        let d = if self.multipliers.is_empty() {
            bantime.as_secs_f64() * self.factor * f64::from(1u32 << previous.min(20))
        } else {
            let i = (previous as usize).min(self.multipliers.len() - 1);
            bantime.as_secs_f64() * f64::from(self.multipliers[i])
        };
        // `min` first: a huge factor must not overflow `Duration` (NaN gives `max`).
        Duration::try_from_secs_f64(d.min(self.max.as_secs_f64()).max(0.0)).unwrap_or(self.max)
    }
}

/// One jail: what counts, how many, how long.
#[derive(Clone, Debug, PartialEq)]
pub struct Jail {
    /// The jail's name (events name it through [`Kind::jail`]).
    pub name: String,
    /// The failure that brings the count within `findtime` to `maxretry` bans (fail2ban's
    /// rule: count ≥ maxretry). "More than ten" is `maxretry = 11`.
    pub maxretry: u32,
    /// The sliding window of counting.
    pub findtime: Duration,
    /// The first ban's length.
    pub bantime: Duration,
    /// Longer bans for repeat offenders; `None`: every ban lasts `bantime`.
    pub increment: Option<Increment>,
    /// Never banned: the nodes, HAProxy, the floating IP, the PBX.
    pub ignore: Vec<IpNet>,
    /// IPv6 sources are counted and banned by this prefix (default 64).
    pub v6_prefix: u8,
}

impl Jail {
    /// A jail with fail2ban-like defaults: 10 minutes of window, 1 hour of ban doubling
    /// per repeat up to a week, IPv6 by /64.
    pub fn new(name: &str, maxretry: u32) -> Self {
        Self {
            name: name.to_owned(),
            maxretry: maxretry.max(1),
            findtime: Duration::from_secs(600),
            bantime: Duration::from_secs(3600),
            increment: Some(Increment::default()),
            ignore: Vec::new(),
            v6_prefix: 64,
        }
    }

    /// The seed's jails: SIP digest failures, portal logins and invalid tokens ban at the
    /// 11th failure ("more than ten"), probing of unknown URLs at the 101st ("more than
    /// one hundred").
    pub fn defaults() -> Vec<Self> {
        vec![
            Self::new("sip", 11),
            Self::new("portal", 11),
            Self::new("token", 11),
            Self::new("probe", 101),
        ]
    }

    /// The scope an address is counted and banned by.
    pub fn scope(&self, addr: IpAddr) -> IpNet {
        match addr.to_canonical() {
            IpAddr::V4(a) => IpNet::V4(Ipv4Net::from(a)),
            IpAddr::V6(a) => {
                let p = self.v6_prefix.clamp(1, 128);
                // A prefix of at most 128 is valid by construction.
                let net = Ipv6Net::new(a, p).unwrap_or_else(|_| Ipv6Net::from(a));
                IpNet::V6(net.trunc())
            }
        }
    }

    fn ignores(&self, addr: IpAddr) -> bool {
        let a = addr.to_canonical();
        self.ignore.iter().any(|n| n.contains(&a))
    }
}

/// The engine's configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct GuardConfig {
    /// The jails; an event whose kind names no jail is counted nowhere (and reported in
    /// [`Stats::unknown_jail`]).
    pub jails: Vec<Jail>,
    /// Counters kept at most (all jails together); the least recently failed is evicted.
    /// Default 100,000.
    pub max_entries: usize,
    /// This node's id, carried in every decision.
    pub node: String,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            jails: Jail::defaults(),
            max_entries: 100_000,
            node: "stg".to_owned(),
        }
    }
}

/// A ban to enforce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// What to ban: the address (/32, /128) or the IPv6 prefix.
    pub scope: IpNet,
    /// For how long.
    pub duration: Duration,
    /// The node that decided.
    pub origin: String,
    /// The jail that decided.
    pub jail: String,
    /// A human-readable reason (for logs and `stg ban list`).
    pub reason: String,
    /// Failures counted in the window when it banned.
    pub count: u32,
    /// Which ban of this scope in this jail this is (1 for the first).
    pub nth: u32,
    /// Whether the deciding failure's source was proven ([`Event::proven`]): the shell
    /// withholds an unproven ban of an address known to belong to a user.
    pub proven: bool,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ban {} for {}s in jail {} by {}: {}",
            self.scope,
            self.duration.as_secs(),
            self.jail,
            self.origin,
            self.reason
        )
    }
}

/// What a counter is keyed by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CounterKey {
    /// The jail's name.
    pub jail: String,
    /// The scope counted.
    pub scope: IpNet,
}

/// Counter figures for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterStats {
    /// Counters held now.
    pub entries: usize,
    /// Counters evicted because the table was full.
    pub evictions: u64,
    /// Counters dropped because their window passed.
    pub expired: u64,
}

/// Where failures are counted. The engine asks for one thing: "add this failure, how many
/// are within the window now?". A cluster-wide store answers it with one atomic round trip
/// (see docs/guard.md); [`MemoryCounters`] answers it locally.
pub trait CounterStore {
    /// Records a failure at `at` and returns how many failures of `key` fall within
    /// `window` ending at `at`, this one included. A store may keep only the latest
    /// `keep` failures of a key (the count never needs to exceed it).
    fn add(&mut self, key: &CounterKey, at: Instant, window: Duration, keep: usize) -> u32;
    /// Forgets a key's failures (after a ban).
    fn clear(&mut self, key: &CounterKey);
    /// Drops counters whose latest failure is older than `window_of(jail)` before `now`.
    fn expire(&mut self, now: Instant, window_of: &dyn Fn(&str) -> Option<Duration>);
    /// Figures for metrics.
    fn stats(&self) -> CounterStats;
    /// How many scopes of `jail` have failures counted now, when the store knows it
    /// (`stg ban status`).
    fn live(&self, _jail: &str) -> Option<usize> {
        None
    }
}

/// In-process counters: a bounded table of the latest failure times per key.
#[derive(Debug)]
pub struct MemoryCounters {
    entries: HashMap<CounterKey, Entry>,
    /// Keys by last failure, oldest first; stale positions (older `seq`) are skipped.
    order: VecDeque<(CounterKey, u64)>,
    seq: u64,
    max: usize,
    evictions: u64,
    expired: u64,
    /// Live counters per jail.
    per_jail: HashMap<String, usize>,
}

#[derive(Debug)]
struct Entry {
    times: VecDeque<Instant>,
    seq: u64,
}

impl MemoryCounters {
    /// A table of at most `max` counters (at least one).
    pub fn new(max: usize) -> Self {
        Self {
            entries: HashMap::new(),
            order: VecDeque::new(),
            seq: 0,
            max: max.max(1),
            evictions: 0,
            expired: 0,
            per_jail: HashMap::new(),
        }
    }

    fn forget(per_jail: &mut HashMap<String, usize>, jail: &str) {
        if let Some(n) = per_jail.get_mut(jail) {
            *n = n.saturating_sub(1);
        }
    }

    fn compact(&mut self) {
        // Stale positions are bounded to as many again as live ones.
        if self.order.len() > 2 * self.entries.len() + 16 {
            let entries = &self.entries;
            self.order
                .retain(|(k, s)| entries.get(k).is_some_and(|e| e.seq == *s));
        }
    }
}

impl CounterStore for MemoryCounters {
    fn add(&mut self, key: &CounterKey, at: Instant, window: Duration, keep: usize) -> u32 {
        self.seq += 1;
        let seq = self.seq;
        if !self.entries.contains_key(key) {
            while self.entries.len() >= self.max {
                let Some((old, s)) = self.order.pop_front() else {
                    break;
                };
                if self.entries.get(&old).is_some_and(|e| e.seq == s) {
                    self.entries.remove(&old);
                    Self::forget(&mut self.per_jail, &old.jail);
                    self.evictions += 1;
                }
            }
            *self.per_jail.entry(key.jail.clone()).or_default() += 1;
        }
        let e = self.entries.entry(key.clone()).or_insert_with(|| Entry {
            times: VecDeque::new(),
            seq,
        });
        e.seq = seq;
        e.times.push_back(at);
        while e.times.len() > keep.max(1) {
            e.times.pop_front();
        }
        // Events may arrive out of order (several log files): count by time, not position.
        let count = e
            .times
            .iter()
            .filter(|t| at.saturating_duration_since(**t) < window && **t <= at)
            .count();
        self.order.push_back((key.clone(), seq));
        self.compact();
        u32::try_from(count).unwrap_or(u32::MAX)
    }

    fn clear(&mut self, key: &CounterKey) {
        if self.entries.remove(key).is_some() {
            Self::forget(&mut self.per_jail, &key.jail);
        }
    }

    fn expire(&mut self, now: Instant, window_of: &dyn Fn(&str) -> Option<Duration>) {
        let before = self.entries.len();
        let per_jail = &mut self.per_jail;
        self.entries.retain(|k, e| {
            let w = window_of(&k.jail).unwrap_or(Duration::ZERO);
            let keep = e
                .times
                .back()
                .is_some_and(|t| now.saturating_duration_since(*t) < w);
            if !keep {
                Self::forget(per_jail, &k.jail);
            }
            keep
        });
        self.expired += (before - self.entries.len()) as u64;
        self.compact();
    }

    fn stats(&self) -> CounterStats {
        CounterStats {
            entries: self.entries.len(),
            evictions: self.evictions,
            expired: self.expired,
        }
    }

    fn live(&self, jail: &str) -> Option<usize> {
        Some(self.per_jail.get(jail).copied().unwrap_or(0))
    }
}

/// One jail's figures (`stg ban status`, as fail2ban's `status <jail>`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JailStats {
    /// The jail.
    pub name: String,
    /// Scopes with failures counted now (`None`: the counter store cannot tell).
    pub failing: Option<usize>,
    /// Failures counted since start.
    pub failures: u64,
    /// Bans decided since start.
    pub bans: u64,
}

/// Engine figures for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Failures counted.
    pub failures: u64,
    /// Failures from ignored addresses (not counted).
    pub ignored: u64,
    /// Failures from scopes already banned (not counted).
    pub while_banned: u64,
    /// Failures whose kind names no configured jail.
    pub unknown_jail: u64,
    /// Bans decided.
    pub bans: u64,
    /// Past bans remembered for increments.
    pub offenders: usize,
    /// The counter table's figures.
    pub counters: CounterStats,
}

#[derive(Debug)]
struct Offender {
    bans: u32,
    banned_until: Instant,
    last_ban: Instant,
}

/// The sans-IO ban engine. Feed it [`Engine::failure`]; enforce the [`Decision`]s it
/// returns; call [`Engine::tick`] now and then so counters of quiet sources go away.
#[derive(Debug)]
pub struct Engine<C: CounterStore = MemoryCounters> {
    jails: Vec<Jail>,
    counters: C,
    offenders: HashMap<CounterKey, Offender>,
    /// Unproven evidence (UDP, which anyone can forge under any address) has its own
    /// counters and offenders, in this process only: forged events under fresh addresses
    /// cannot evict a proven count, and an unproven ban (which the shell may withhold)
    /// never silences proven failures of the same scope.
    unproven_counters: MemoryCounters,
    unproven_offenders: HashMap<CounterKey, Offender>,
    max_offenders: usize,
    node: String,
    stats: Stats,
    /// Per jail (same order as `jails`): failures counted, bans decided.
    totals: Vec<(u64, u64)>,
}

impl Engine<MemoryCounters> {
    /// An engine with in-process counters bounded by `config.max_entries`.
    pub fn new(config: GuardConfig) -> Self {
        let counters = MemoryCounters::new(config.max_entries);
        Self::with_counters(config, counters)
    }
}

impl<C: CounterStore> Engine<C> {
    /// An engine over another counter store (a cluster-wide one).
    pub fn with_counters(config: GuardConfig, counters: C) -> Self {
        Self {
            counters,
            offenders: HashMap::new(),
            unproven_counters: MemoryCounters::new(config.max_entries),
            unproven_offenders: HashMap::new(),
            max_offenders: config.max_entries.max(1),
            node: config.node,
            stats: Stats::default(),
            totals: vec![(0, 0); config.jails.len()],
            jails: config.jails,
        }
    }

    /// The jails.
    pub fn jails(&self) -> &[Jail] {
        &self.jails
    }

    /// Counts one failure; returns the ban it decides, if any.
    pub fn failure(&mut self, now: Instant, ev: &Event) -> Option<Decision> {
        let name = ev.kind.jail();
        let Some(ji) = self.jails.iter().position(|j| j.name == name) else {
            self.stats.unknown_jail += 1;
            return None;
        };
        let jail = &self.jails[ji];
        if jail.ignores(ev.source) {
            self.stats.ignored += 1;
            return None;
        }
        let key = CounterKey {
            jail: jail.name.clone(),
            scope: jail.scope(ev.source),
        };
        let offenders = if ev.proven {
            &mut self.offenders
        } else {
            &mut self.unproven_offenders
        };
        if offenders.get(&key).is_some_and(|o| o.banned_until > now) {
            self.stats.while_banned += 1;
            return None;
        }
        self.stats.failures += 1;
        self.totals[ji].0 += 1;
        let keep = jail.maxretry as usize;
        let count = if ev.proven {
            self.counters.add(&key, ev.at, jail.findtime, keep)
        } else {
            self.unproven_counters.add(&key, ev.at, jail.findtime, keep)
        };
        if count < jail.maxretry {
            return None;
        }
        if ev.proven {
            self.counters.clear(&key);
        } else {
            self.unproven_counters.clear(&key);
        }
        let previous = match (&jail.increment, offenders.get(&key)) {
            (Some(inc), Some(o))
                if now.saturating_duration_since(o.last_ban) < inc.forget_after =>
            {
                o.bans
            }
            _ => 0,
        };
        let duration = match &jail.increment {
            Some(inc) => inc.duration(jail.bantime, previous),
            None => jail.bantime,
        };
        let reason = match &ev.user {
            Some(u) => format!(
                "{count} failures within {}s (last user {u:?})",
                jail.findtime.as_secs()
            ),
            None => format!("{count} failures within {}s", jail.findtime.as_secs()),
        };
        let decision = Decision {
            scope: key.scope,
            duration,
            origin: self.node.clone(),
            jail: jail.name.clone(),
            reason,
            count,
            nth: previous + 1,
            proven: ev.proven,
        };
        if !offenders.contains_key(&key) && offenders.len() >= self.max_offenders {
            // Forget the offender whose ban ended first: it matters least.
            if let Some(k) = offenders
                .iter()
                .min_by_key(|(_, o)| o.banned_until)
                .map(|(k, _)| k.clone())
            {
                offenders.remove(&k);
            }
        }
        // A configured ban longer than `Instant` can represent holds for ten years.
        let banned_until = now
            .checked_add(duration)
            .or_else(|| now.checked_add(Duration::from_secs(10 * 365 * 86400)))
            .unwrap_or(now);
        offenders.insert(
            key,
            Offender {
                bans: previous + 1,
                banned_until,
                last_ban: now,
            },
        );
        self.stats.bans += 1;
        self.totals[ji].1 += 1;
        Some(decision)
    }

    /// Drops counters whose window has passed and offenders forgotten by their jail.
    pub fn tick(&mut self, now: Instant) {
        let jails = &self.jails;
        let window_of = |name: &str| jails.iter().find(|j| j.name == name).map(|j| j.findtime);
        self.counters.expire(now, &window_of);
        self.unproven_counters.expire(now, &window_of);
        let keep = |k: &CounterKey, o: &mut Offender| {
            let forget = jails
                .iter()
                .find(|j| j.name == k.jail)
                .and_then(|j| j.increment.as_ref())
                .map_or(Duration::ZERO, |i| i.forget_after);
            o.banned_until > now || now.saturating_duration_since(o.last_ban) < forget
        };
        self.offenders.retain(keep);
        self.unproven_offenders.retain(keep);
    }

    /// Each jail's figures, in configuration order.
    pub fn jail_stats(&self) -> Vec<JailStats> {
        self.jails
            .iter()
            .zip(&self.totals)
            .map(|(j, &(failures, bans))| JailStats {
                name: j.name.clone(),
                failing: self.counters.live(&j.name),
                failures,
                bans,
            })
            .collect()
    }

    /// Figures for metrics.
    pub fn stats(&self) -> Stats {
        Stats {
            offenders: self.offenders.len(),
            counters: self.counters.stats(),
            ..self.stats
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Instant {
        // Tests take one real instant as the origin; every later time is computed from it.
        #[allow(clippy::disallowed_methods)]
        Instant::now()
    }

    fn ev(ip: &str, kind: Kind, at: Instant) -> Event {
        Event {
            source: ip.parse().unwrap(),
            kind,
            user: None,
            at,
            proven: true,
        }
    }

    fn engine() -> Engine {
        Engine::new(GuardConfig::default())
    }

    #[test]
    fn tenth_failure_does_not_ban_eleventh_does() {
        let t = t0();
        let mut e = engine();
        for i in 0..10 {
            let now = t + Duration::from_secs(i);
            assert_eq!(e.failure(now, &ev("192.0.2.1", Kind::SipAuth, now)), None);
        }
        let now = t + Duration::from_secs(10);
        let d = e
            .failure(now, &ev("192.0.2.1", Kind::SipAuth, now))
            .expect("11th failure bans");
        assert_eq!(d.scope, "192.0.2.1/32".parse::<IpNet>().unwrap());
        assert_eq!(d.duration, Duration::from_secs(3600));
        assert_eq!((d.jail.as_str(), d.count, d.nth), ("sip", 11, 1));
        assert_eq!(d.origin, "stg");
        assert!(d.reason.contains("11 failures"), "{}", d.reason);
        // Banned: further failures are not counted and do not ban again.
        assert_eq!(e.failure(now, &ev("192.0.2.1", Kind::SipAuth, now)), None);
        assert_eq!(e.stats().while_banned, 1);
    }

    #[test]
    fn probe_bans_on_the_101st() {
        let t = t0();
        let mut e = engine();
        for i in 0..100 {
            assert_eq!(
                e.failure(
                    t,
                    &ev("192.0.2.9", Kind::Probe, t + Duration::from_millis(i))
                ),
                None
            );
        }
        assert!(e
            .failure(
                t,
                &ev("192.0.2.9", Kind::Probe, t + Duration::from_millis(100))
            )
            .is_some());
    }

    #[test]
    fn window_slides() {
        let t = t0();
        let mut e = engine();
        // Ten failures a minute apart, then one more 601 s after the first: the first has
        // left the 600 s window, so ten are within it.
        for i in 0..10 {
            let at = t + Duration::from_secs(60 * i);
            assert_eq!(e.failure(at, &ev("192.0.2.2", Kind::PortalLogin, at)), None);
        }
        let at = t + Duration::from_secs(601);
        assert_eq!(e.failure(at, &ev("192.0.2.2", Kind::PortalLogin, at)), None);
        // The next one makes 11 within the window (60 s .. 661 s).
        let at = t + Duration::from_secs(602);
        assert!(e
            .failure(at, &ev("192.0.2.2", Kind::PortalLogin, at))
            .is_some());
    }

    #[test]
    fn ignored_addresses_never_ban() {
        let t = t0();
        let mut cfg = GuardConfig::default();
        for j in &mut cfg.jails {
            j.ignore = vec![
                "10.0.0.0/8".parse().unwrap(),
                "2001:db8:1::/48".parse().unwrap(),
            ];
        }
        let mut e = Engine::new(cfg);
        for i in 0..50 {
            let at = t + Duration::from_millis(i);
            assert_eq!(e.failure(at, &ev("10.1.2.3", Kind::SipAuth, at)), None);
            assert_eq!(e.failure(at, &ev("2001:db8:1::5", Kind::SipAuth, at)), None);
            assert_eq!(
                e.failure(at, &ev("::ffff:10.9.9.9", Kind::SipAuth, at)),
                None
            );
        }
        assert_eq!(e.stats().ignored, 150);
        assert_eq!(e.stats().counters.entries, 0);
    }

    #[test]
    fn ipv6_counts_by_64() {
        let t = t0();
        let mut e = engine();
        // Eleven different addresses of one /64 are one attacker.
        for i in 1..=10u16 {
            let ip = format!("2001:db8:0:7::{i:x}");
            assert_eq!(e.failure(t, &ev(&ip, Kind::SipAuth, t)), None);
        }
        let d = e
            .failure(t, &ev("2001:db8:0:7:ffff::1", Kind::SipAuth, t))
            .unwrap();
        assert_eq!(d.scope, "2001:db8:0:7::/64".parse::<IpNet>().unwrap());
        // Another /64 is counted apart.
        assert_eq!(e.failure(t, &ev("2001:db8:0:8::1", Kind::SipAuth, t)), None);
    }

    #[test]
    fn repeat_offenders_get_longer_bans_up_to_the_cap() {
        let t = t0();
        let mut cfg = GuardConfig::default();
        cfg.jails[0].increment = Some(Increment {
            max: Duration::from_secs(5 * 3600),
            ..Increment::default()
        });
        let mut e = Engine::new(cfg);
        let mut now = t;
        let mut got = Vec::new();
        for _ in 0..5 {
            let mut d = None;
            for _ in 0..11 {
                d = e.failure(now, &ev("198.51.100.7", Kind::SipAuth, now));
            }
            let d = d.expect("ban");
            got.push((d.nth, d.duration.as_secs() / 3600));
            // Wait out the ban.
            now += d.duration + Duration::from_secs(1);
        }
        assert_eq!(got, vec![(1, 1), (2, 2), (3, 4), (4, 5), (5, 5)]);
        let mut cfg = GuardConfig::default();
        cfg.jails[0].increment = Some(Increment {
            multipliers: vec![1, 5, 30],
            ..Increment::default()
        });
        let mut e = Engine::new(cfg);
        let mut now = t;
        let mut got = Vec::new();
        for _ in 0..4 {
            let mut d = None;
            for _ in 0..11 {
                d = e.failure(now, &ev("198.51.100.8", Kind::SipAuth, now));
            }
            let d = d.unwrap();
            got.push(d.duration.as_secs() / 3600);
            now += d.duration + Duration::from_secs(1);
        }
        assert_eq!(got, vec![1, 5, 30, 30]);
    }

    #[test]
    fn counter_table_is_bounded_and_evicts_the_oldest() {
        let t = t0();
        let mut e = Engine::new(GuardConfig {
            max_entries: 100,
            ..GuardConfig::default()
        });
        // A spray from 10,000 addresses: the table never holds more than 100.
        for i in 0..10_000u32 {
            let ip = std::net::Ipv4Addr::from(0xC000_0000 + i);
            let at = t + Duration::from_millis(u64::from(i));
            e.failure(at, &ev(&ip.to_string(), Kind::SipAuth, at));
            assert!(e.stats().counters.entries <= 100);
        }
        let s = e.stats().counters;
        assert_eq!((s.entries, s.evictions), (100, 9_900));
        // The newest survive: the last address still has its count.
        let last = std::net::Ipv4Addr::from(0xC000_0000 + 9_999u32).to_string();
        let at = t + Duration::from_secs(20);
        for _ in 0..9 {
            assert_eq!(e.failure(at, &ev(&last, Kind::SipAuth, at)), None);
        }
        assert!(e.failure(at, &ev(&last, Kind::SipAuth, at)).is_some());
    }

    #[test]
    fn jail_stats_count_failing_sources_failures_and_bans() {
        let t = t0();
        let mut e = engine();
        for i in 0..11 {
            let at = t + Duration::from_millis(i);
            e.failure(at, &ev("192.0.2.20", Kind::SipAuth, at));
        }
        e.failure(t, &ev("192.0.2.21", Kind::SipAuth, t));
        e.failure(t, &ev("192.0.2.22", Kind::Probe, t));
        let s = e.jail_stats();
        let sip = s.iter().find(|j| j.name == "sip").unwrap();
        // The banned source's counter went with its ban: one source is failing now.
        assert_eq!((sip.failing, sip.failures, sip.bans), (Some(1), 12, 1));
        let probe = s.iter().find(|j| j.name == "probe").unwrap();
        assert_eq!((probe.failing, probe.failures, probe.bans), (Some(1), 1, 0));
        e.tick(t + Duration::from_secs(3600));
        assert!(e.jail_stats().iter().all(|j| j.failing == Some(0)));
    }

    #[test]
    fn tick_expires_quiet_counters() {
        let t = t0();
        let mut e = engine();
        e.failure(t, &ev("192.0.2.3", Kind::SipAuth, t));
        e.failure(t, &ev("192.0.2.4", Kind::Probe, t));
        e.tick(t + Duration::from_secs(599));
        assert_eq!(e.stats().counters.entries, 2);
        e.tick(t + Duration::from_secs(601));
        assert_eq!(e.stats().counters.entries, 0);
        assert_eq!(e.stats().counters.expired, 2);
    }

    #[test]
    fn external_jails_and_unknown_ones() {
        let t = t0();
        let mut cfg = GuardConfig::default();
        cfg.jails.push(Jail::new("sshd", 3));
        let mut e = Engine::new(cfg);
        let k = Kind::External {
            jail: "sshd".into(),
        };
        assert_eq!(e.failure(t, &ev("192.0.2.5", k.clone(), t)), None);
        assert_eq!(e.failure(t, &ev("192.0.2.5", k.clone(), t)), None);
        assert_eq!(e.failure(t, &ev("192.0.2.5", k, t)).unwrap().jail, "sshd");
        let nobody = Kind::External {
            jail: "nope".into(),
        };
        assert_eq!(e.failure(t, &ev("192.0.2.5", nobody, t)), None);
        assert_eq!(e.stats().unknown_jail, 1);
    }
}
