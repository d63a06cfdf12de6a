//! SIP transactions and the stateful edge proxy, sans-IO.
//!
//! This crate is the protocol core of stg's SIP edge. It never touches a socket, a clock or
//! a random source: the tokio shell (`stg-edge`) feeds it bytes, time (`now`) and the answers
//! to what it asked for (DNS, failed sends), and carries out what it returns. Every decision
//! of the edge policy lives here, so each one is a fake-time test.
//!
//! - [`transaction`]: RFC 3261 §17 as amended by RFC 6026, timers A–M, one owner of every
//!   client and server transaction.
//! - [`proxy`]: the stateful proxy (RFC 3261 §16) with the edge policy: the outside never
//!   chooses a destination, flow tokens bind dialogs to the device's connection, nothing is
//!   relayed that no transaction asked for, and every outsider's state is capped.
//! - [`net`]: the transport-level names both share with the shell (flows, listeners, sides,
//!   networks, per-source budget keys).
//!
//! The drain rule of every core: after each `handle_*` call, drain `poll_output` until
//! `None`, then re-arm the shell's one timer at `poll_timeout`.
#![forbid(unsafe_code)]

#[doc(hidden)]
/// The hot path's maps: foldhash (several times cheaper than std's SipHash per lookup),
/// seeded at random per map, so keys an outsider picks (branches, Call-IDs) cannot be made to
/// collide in advance.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// The hot path's sets (see [`FastMap`]).
pub type FastSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;

pub mod fuzz_support;
pub mod net;
pub mod proxy;
pub mod transaction;
