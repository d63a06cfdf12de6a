//! The guard of stg, sans-IO: the intrusion-prevention core that turns failures into bans,
//! and reads operators' fail2ban filters so their existing logs keep feeding it.
//!
//! # How it fits
//! Every failure is one [`Event`]: stg's own roles produce them directly (SIP digest, portal
//! login, invalid token, probing: [`Kind`]), external logs through a fail2ban [`f2b::Filter`]
//! (a log tail or syslog intake in the shell turns each [`f2b::Failure`] into an
//! [`Kind::External`] event of its jail). [`Engine::failure`] counts the event in its
//! [`Jail`] and returns a [`Decision`] when the count reaches `maxretry`; the shell enforces
//! it (nftables, the listeners' admission check), stores and publishes it (Redis), and
//! writes the `TRUCO_KO` line. `stg ban test-filter` is [`f2b`] on a file.
//!
//! # Invariants
//! - No clock, no I/O: time arrives as `Instant` values (events carry theirs), filter
//!   files are read only when loading a filter.
//! - Every table an outsider can grow is bounded: counters ([`GuardConfig::max_entries`],
//!   the least recently failed evicted first), repeat offenders (same bound), fail2ban
//!   multi-line sessions (100).
//! - An ignored address is never counted, so never banned.
//! - No input panics: malformed lines simply do not match; a pathological regex hits the
//!   backtracking limit and counts as no match.
//!
//! The counting rule follows fail2ban: the failure that brings the count within `findtime`
//! to `maxretry` bans. The seed's "more than ten failures" is therefore `maxretry = 11`
//! (the 10th failure does not ban, the 11th does); "more than one hundred" is 101.
#![forbid(unsafe_code)]

mod engine;
pub mod f2b;
pub mod syslog;
pub mod tail;

pub use engine::{
    CounterKey, CounterStats, CounterStore, Decision, Engine, Event, GuardConfig, Increment, Jail,
    JailStats, Kind, MemoryCounters, Stats,
};
pub use ipnet::IpNet;

/// How the roles outside the SIP core (web front, authentication service, log tails) report
/// failures to the node's guard and ask whether a source is banned. The node implements it;
/// a role built without a guard gets [`NoGuard`].
pub trait Hook: Send + Sync + 'static {
    /// Whether `ip` (the real client address, after PROXY protocol) is banned now.
    fn banned(&self, ip: std::net::IpAddr) -> bool;
    /// Counts one failure from `ip` in the jail of `kind`; `user` is the name tried, if any.
    fn failure(&self, ip: std::net::IpAddr, kind: Kind, user: Option<&str>);
    /// `ip` authenticated (a user's address): evidence from a forgeable source (UDP) alone
    /// never bans it for a while.
    fn authenticated(&self, _ip: std::net::IpAddr) {}
}

/// The guard of a node that has none: nobody is banned, nothing is counted.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoGuard;

impl Hook for NoGuard {
    fn banned(&self, _ip: std::net::IpAddr) -> bool {
        false
    }
    fn failure(&self, _ip: std::net::IpAddr, _kind: Kind, _user: Option<&str>) {}
}
