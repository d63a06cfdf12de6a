//! Kernel enforcement of stg's bans: an nftables table of stg's own (`inet stg` by default)
//! whose sets hold the banned sources, each element with its own timeout, and one base chain
//! that drops every packet from them. `banned4` holds IPv4 addresses and `banned6` the IPv6
//! /64s (by their first address; the rule masks the source), both hash sets; any other prefix
//! goes to the interval sets `banned4_nets` and `banned6_nets`. Why hash sets: nft 1.0 reads
//! a whole interval set before it changes one element (see [`script`]).
//!
//! # How it fits
//! The guard decides bans; this crate only mirrors them into the kernel, so a banned source
//! costs one set lookup in the kernel and nothing in stg. At start the shell calls
//! [`Firewall::ensure`] (creates what is missing, keeps every element already there), then
//! [`Firewall::restore`] with the bans the store still holds, before any listener opens.
//! While running, each ban or unban goes into a [`Batcher`] (sans-IO: coalesced by network,
//! flushed by size or after a short delay, time as an input) and each batch it yields goes to
//! [`Firewall::apply`], which is one `nft -f -` run. At stop nothing is done: the elements
//! expire in the kernel on their own, so bans hold while stg restarts.
//! [`Firewall::remove_all`] exists for an explicit operator command only.
//!
//! ```text
//! guard decision ──> Batcher::handle_change(change, now)
//!                    Batcher::poll_batch(now) ──> Firewall::apply(&batch)   (one nft run)
//!                    Batcher::poll_timeout()  ──> the shell sleeps until then
//! ```
//!
//! # Invariants
//! - One `nft` process per batch, never one per address (more only when nft refuses some
//!   elements); a restore of N elements is `ceil(N / restore_chunk)` runs, plus one listing
//!   under [`Refresh::Replace`].
//! - A re-ban gives the element its new timeout, longer or shorter, on every kernel: by `add`
//!   where the kernel updates timeouts, by delete and add in one transaction elsewhere
//!   ([`Refresh`], found out by [`Firewall::ensure`]).
//! - An unban of what is not there is no error; an element nft refuses (a prefix that
//!   overlaps another one) is reported in [`Applied::rejected`] and the rest of its batch is
//!   applied all the same.
//! - Nothing here flushes the sets except [`Firewall::remove_all`].
//! - Every name written into a script is checked ([`FirewallConfig::validate`]); addresses
//!   come from typed [`IpNet`]s, so no input can inject nft syntax.
//! - [`Batcher`] is bounded ([`BatchConfig::max_pending`]) and reads no clock.
//! - No input panics: `nft`'s output, however odd, is an [`Error`] or is skipped.
//!
//! Why the chain hooks `prerouting` at priority -300 and not `input`: see
//! [`FirewallConfig::hook`] and `docs/firewall.md`.
#![forbid(unsafe_code)]

mod batch;
mod config;
mod error;
mod list;
mod nft;
pub mod script;

use std::time::Duration;

pub use ipnet::IpNet;

pub use batch::{BatchConfig, Batcher};
pub use config::{FirewallConfig, Hook, Refresh};
pub use error::Error;
pub use list::Element;
pub use nft::{Applied, Firewall, Rejected, RESTORE_SLACK};

/// The longest timeout written to the kernel (ten years). Longer bans are written with this
/// one: the kernel refuses timeouts whose jiffies overflow, and a decade is "permanent" for
/// any operator.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// One change to the banned sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Put `net` in its set for `timeout` (rounded up to a millisecond, at most
    /// [`MAX_TIMEOUT`]). An element already there gets the new timeout, longer or shorter.
    Ban {
        /// An address (/32, /128) or a prefix; host bits are ignored.
        net: IpNet,
        /// How long the kernel keeps the element.
        timeout: Duration,
    },
    /// Take `net` out of its set; nothing happens if it is not there.
    Unban {
        /// As given to the [`Change::Ban`] (the same prefix length).
        net: IpNet,
    },
}

impl Change {
    /// The network this change is about, as written to the kernel (see [`normalize`]).
    pub fn net(&self) -> IpNet {
        match self {
            Self::Ban { net, .. } | Self::Unban { net } => normalize(*net),
        }
    }
}

/// The network as the kernel will see it: host bits cleared, and an IPv4-mapped IPv6
/// network (`::ffff:192.0.2.1/128` from a dual-stack socket) turned into its IPv4 network,
/// since those packets arrive as IPv4 and a `banned6` element would never match them.
pub fn normalize(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(|n| IpNet::V4(n.trunc()))
                .unwrap_or(IpNet::V6(v6.trunc())),
            None => IpNet::V6(v6.trunc()),
        },
        other => other.trunc(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_clears_host_bits_and_unmaps_ipv4() {
        let n = |s: &str| s.parse::<IpNet>().unwrap();
        assert_eq!(normalize(n("10.1.2.3/24")), n("10.1.2.0/24"));
        assert_eq!(normalize(n("2001:db8::1:2/64")), n("2001:db8::/64"));
        assert_eq!(normalize(n("::ffff:192.0.2.7/128")), n("192.0.2.7/32"));
        assert_eq!(normalize(n("::ffff:192.0.2.7/120")), n("192.0.2.0/24"));
        // A /64 around a mapped address is an IPv6 network, not an IPv4 one.
        assert_eq!(normalize(n("::ffff:192.0.2.7/64")), n("::/64"));
    }
}
