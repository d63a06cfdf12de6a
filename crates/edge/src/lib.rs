//! The tokio shell around the sans-IO SIP core: transports (UDP, TCP, TLS, WS, WSS), the
//! connection table, PROXY protocol v2, RFC 3263 resolution, metrics, and graceful drain.
//!
//! # How it fits
//! `stg run` builds a [`Node`] from the typed configuration ([`Node::bind`] binds every
//! socket first, so errors surface before anything runs), then [`Node::run`] drives one
//! [`stg_sip_core::proxy::Proxy`] in a single task: transport tasks hand it messages through
//! a bounded queue, it answers with outputs (send, resolve, log) that this crate carries out.
//! Protocol decisions live in the core; this crate only moves bytes and keeps time.
//!
//! # Invariants
//! - A message for a device goes only over the connection the device opened when a flow
//!   token names it; a connection id is never reused within a process. A send that names no
//!   connection reuses only a connection the node opened itself, never a device's.
//! - PROXY protocol headers are read only on listeners marked for it, and only from the
//!   configured balancer addresses; anyone else is refused before a byte is read.
//! - Every table is bounded: connections in all and per source, outbound connects in flight,
//!   sends waiting for a connection, each connection's write queue and write time, and the
//!   log throttle's sources.
//! - Nothing here blocks the core task: UDP sends use `try_send_to`, stream sends go through
//!   bounded per-connection queues.
#![forbid(unsafe_code)]

mod admin;
mod conn;
mod guard;
mod guard_inputs;
mod limits;
mod messages;
mod node;
mod push;
mod registrar;
pub mod resolver;
mod stream;
mod throttle;
mod udp;
mod ws;

pub use limits::{raise_nofile_limit, NofileLimits};
pub use node::{BoundListener, Node};
/// Moved to `stg-net` (shared with the web front); re-exported for the fuzz targets and the CLI.
pub use stg_net::{proxy_protocol, tls};

/// The time as the shell knows it: tokio's clock (so `tokio::time::pause` drives the core,
/// the timers and the limits alike), as the `std` instant the sans-IO core takes.
pub(crate) fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EdgeError {
    /// A socket could not be bound.
    #[error("{what}: cannot bind: {source}")]
    Bind {
        /// Which listener.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TLS certificate or key could not be loaded or created.
    #[error("tls: {0}")]
    Tls(String),
    /// The DNS resolver could not be set up.
    #[error("dns: {0}")]
    Dns(String),
    /// The binding store or the credentials database could not be opened.
    #[error("store: {0}")]
    Store(String),
    /// The push providers' credentials could not be loaded.
    #[error("push: {0}")]
    Push(String),
    /// The guard's nftables table could not be set up.
    #[error("guard: {0}")]
    Guard(String),
}
