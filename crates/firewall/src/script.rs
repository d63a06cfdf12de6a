//! The nft scripts, as text (no I/O here). Writing the few statements we need ourselves is
//! simpler and faster than building JSON for `nft -j -f -`, and it keeps `nft`'s error
//! positions (`/dev/stdin:LINE:COL`) pointing at one element each, which is how a refused
//! element is told apart from the rest of its batch.
//!
//! # Four sets, two of them hashes
//! The bans the guard makes by default, IPv4 addresses and IPv6 /64s, go to hash sets:
//! [`SET4`] holds addresses, [`SET6`] holds the first address of each banned /64 (the
//! prefix length is [`FirewallConfig::v6_prefix`]) and its rule masks the source before the
//! lookup. Any other prefix (an operator's `/24`, a `/128`) goes to an interval set,
//! [`SET4_NETS`] or [`SET6_NETS`]. Why not one interval set per family: nft 1.0 (Debian 12)
//! reads every element of an interval set into its cache before it changes one, to check
//! for overlaps, so each run costs time in proportion to the set's size, and each deleted
//! element once more. Measured here next to 20,000 elements, under load: adding one element
//! took 180–230 ms in an interval set and under 5 ms in a hash set; deleting 1,000 took 11 s
//! from an interval set of 10,000 and 20 ms from a hash set of 20,000.
//!
//! # A batch
//! One transaction; per set, placeholders, then deletes, then adds, [`PER_STATEMENT`]
//! elements to a line (a 20,000-element restore is about 20 lines, and an error's echo of its
//! line stays small):
//!
//! ```text
//! add element inet stg banned4 { 192.0.2.9 timeout 60s }      # placeholder: now it exists
//! delete element inet stg banned4 { 192.0.2.9 }               # now it surely does not
//! add element inet stg banned4 { 192.0.2.1 timeout 3600000ms }
//! ```
//!
//! An unban is a placeholder and a delete, so unbanning what is not there is no error (a
//! delete alone would fail the whole transaction). A ban is an add, which on kernels that
//! update timeouts also refreshes an element already there ([`crate::Refresh::Add`]); on
//! others it is a placeholder, a delete and an add ([`crate::Refresh::Replace`]). The
//! placeholder never outlives its transaction; its timeout is not zero so that a long
//! transaction cannot see it expire between its add and its delete.

use std::fmt::Write as _;
use std::net::Ipv6Addr;
use std::time::Duration;

use ipnet::IpNet;

use crate::{FirewallConfig, MAX_TIMEOUT};

/// Banned IPv4 addresses (a hash set).
pub const SET4: &str = "banned4";
/// Banned IPv6 prefixes of [`FirewallConfig::v6_prefix`] bits, by their first address (a
/// hash set, looked up with the source masked).
pub const SET6: &str = "banned6";
/// Banned IPv4 prefixes shorter than /32 (an interval set).
pub const SET4_NETS: &str = "banned4_nets";
/// Banned IPv6 prefixes of any other length (an interval set).
pub const SET6_NETS: &str = "banned6_nets";
/// The base chain that drops what the sets hold.
pub const CHAIN: &str = "drop_banned";
/// Elements per `add element` / `delete element` statement.
pub const PER_STATEMENT: usize = 1000;
/// The scratch set of the refresh probe (see [`crate::Refresh`]).
pub const PROBE: &str = "refresh_probe";

/// The set that holds `net` (already normalized), and whether it is an interval set.
pub fn set_of(net: IpNet, v6_prefix: u8) -> (&'static str, bool) {
    match net {
        IpNet::V4(n) if n.prefix_len() == 32 => (SET4, false),
        IpNet::V4(_) => (SET4_NETS, true),
        IpNet::V6(n) if n.prefix_len() == v6_prefix => (SET6, false),
        IpNet::V6(_) => (SET6_NETS, true),
    }
}

/// Creates the table and sets if missing, keeping their elements, and (re)creates the chain
/// with the configured hook and priority: the chain is deleted and added in the same
/// transaction, so a changed priority applies and there is no moment without it. With
/// `probe`, also a fresh scratch set holding one element with a one-hour timeout.
pub fn ensure(cfg: &FirewallConfig, probe: bool) -> String {
    let t = &cfg.table;
    let mask = Ipv6Addr::from(
        u128::MAX
            .checked_shl(128 - u32::from(cfg.v6_prefix))
            .unwrap_or(0),
    );
    let mut s = format!(
        "add table inet {t}\n\
         add set inet {t} {SET4} {{ type ipv4_addr; flags timeout; }}\n\
         add set inet {t} {SET6} {{ type ipv6_addr; flags timeout; }}\n\
         add set inet {t} {SET4_NETS} {{ type ipv4_addr; flags interval, timeout; }}\n\
         add set inet {t} {SET6_NETS} {{ type ipv6_addr; flags interval, timeout; }}\n\
         add chain inet {t} {CHAIN}\n\
         delete chain inet {t} {CHAIN}\n\
         add chain inet {t} {CHAIN} {{ type filter hook {hook} priority {prio}; policy accept; }}\n\
         add rule inet {t} {CHAIN} ip saddr @{SET4} counter drop\n\
         add rule inet {t} {CHAIN} ip6 saddr & {mask} @{SET6} counter drop\n\
         add rule inet {t} {CHAIN} ip saddr @{SET4_NETS} counter drop\n\
         add rule inet {t} {CHAIN} ip6 saddr @{SET6_NETS} counter drop\n",
        hook = cfg.hook.name(),
        prio = cfg.priority,
    );
    if probe {
        let _ = write!(
            s,
            "add set inet {t} {PROBE} {{ type ipv4_addr; flags timeout; }}\n\
             delete set inet {t} {PROBE}\n\
             add set inet {t} {PROBE} {{ type ipv4_addr; flags timeout; }}\n\
             add element inet {t} {PROBE} {{ 192.0.2.0 timeout 1h }}\n"
        );
    }
    s
}

/// The probe's second step: the same element again, with one minute.
pub fn probe_readd(cfg: &FirewallConfig) -> String {
    format!(
        "add element inet {} {PROBE} {{ 192.0.2.0 timeout 1m }}\n",
        cfg.table
    )
}

/// The probe's last step.
pub fn probe_remove(cfg: &FirewallConfig) -> String {
    format!("delete set inet {} {PROBE}\n", cfg.table)
}

/// Deletes the table, whatever is in it (`add` first, so a missing table is no error).
pub fn remove_all(cfg: &FirewallConfig) -> String {
    let t = &cfg.table;
    format!("add table inet {t}\ndelete table inet {t}\n")
}

/// What a batch does to one element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `add element` with this timeout.
    Add(IpNet, Duration),
    /// `delete element` (fails the transaction if the element is not there).
    Delete(IpNet),
    /// `add element` with a short timeout, written before the deletes: makes sure the
    /// element exists, so that its delete cannot fail.
    Placeholder(IpNet),
}

impl Op {
    fn net(&self) -> IpNet {
        match self {
            Self::Add(net, _) | Self::Delete(net) | Self::Placeholder(net) => *net,
        }
    }
}

/// A batch script and, for each element written, where it is, so that an error position
/// names the change it came from.
#[derive(Debug)]
pub struct Script {
    text: String,
    /// (line, first column, index of the change), sorted; lines and columns count from 1
    /// as nft counts them.
    spans: Vec<(usize, usize, usize)>,
}

impl Script {
    /// The script, for `nft -f -`.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The change whose element `nft` reported at `line`:`col`, if the position falls on
    /// one (not on a statement's keywords).
    pub fn owner(&self, line: usize, col: usize) -> Option<usize> {
        // The last element that starts at or before the position, on the same line.
        let i = self
            .spans
            .partition_point(|&(l, c, _)| (l, c) <= (line, col));
        let &(l, _, change) = self.spans.get(i.checked_sub(1)?)?;
        (l == line).then_some(change)
    }
}

/// The script for a batch of operations on normalized networks, each tagged with the index
/// of the change it comes from ([`Script::owner`] gives that index back for an error
/// position).
pub fn batch(table: &str, v6_prefix: u8, ops: &[(usize, Op)]) -> Script {
    let mut s = Script {
        text: String::new(),
        spans: Vec::new(),
    };
    let mut line = 1;
    for set in [SET4, SET6, SET4_NETS, SET6_NETS] {
        let mine = || {
            ops.iter()
                .filter(move |(_, op)| set_of(op.net(), v6_prefix).0 == set)
        };
        let pick =
            |want: fn(&Op) -> Option<Option<String>>| -> Vec<(usize, IpNet, Option<String>)> {
                mine()
                    .filter_map(|(i, op)| want(op).map(|t| (*i, op.net(), t)))
                    .collect()
            };
        let placeholders = pick(|op| match op {
            Op::Placeholder(_) => Some(Some("60s".to_string())),
            _ => None,
        });
        let deletes = pick(|op| match op {
            Op::Delete(_) => Some(None),
            _ => None,
        });
        let adds = pick(|op| match op {
            Op::Add(_, t) => Some(Some(timeout_text(*t))),
            _ => None,
        });
        for (verb, list) in [("add", placeholders), ("delete", deletes), ("add", adds)] {
            for group in list.chunks(PER_STATEMENT) {
                statement(&mut s, &mut line, (verb, table, set), group);
            }
        }
    }
    s
}

/// One `add|delete element` line, recording where each element starts.
fn statement(
    s: &mut Script,
    line: &mut usize,
    (verb, table, set): (&str, &str, &str),
    elements: &[(usize, IpNet, Option<String>)],
) {
    let start = s.text.len();
    let _ = write!(s.text, "{verb} element inet {table} {set} {{ ");
    for (k, (i, net, timeout)) in elements.iter().enumerate() {
        if k > 0 {
            s.text.push_str(", ");
        }
        // Columns are bytes from the line's start, counting from 1; all of it is ASCII.
        s.spans.push((*line, s.text.len() - start + 1, *i));
        write_net(&mut s.text, set, *net);
        if let Some(t) = timeout {
            let _ = write!(s.text, " timeout {t}");
        }
    }
    s.text.push_str(" }\n");
    *line += 1;
}

/// A hash set's element is an address (for [`SET6`], the prefix's first one); an interval
/// set's is `addr/len`, or the address alone for a host.
fn write_net(out: &mut String, set: &str, net: IpNet) {
    if set == SET4 || set == SET6 || net.prefix_len() == net.max_prefix_len() {
        let _ = write!(out, "{}", net.network());
    } else {
        let _ = write!(out, "{net}");
    }
}

/// A timeout in nft syntax: whole milliseconds, rounded up, between 1 ms and [`MAX_TIMEOUT`].
fn timeout_text(t: Duration) -> String {
    let t = t.min(MAX_TIMEOUT);
    let ms = t.as_millis() + u128::from(!t.subsec_nanos().is_multiple_of(1_000_000));
    format!("{}ms", ms.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn each_network_goes_to_its_set() {
        assert_eq!(set_of(n("192.0.2.1/32"), 64), (SET4, false));
        assert_eq!(set_of(n("192.0.2.0/24"), 64), (SET4_NETS, true));
        assert_eq!(set_of(n("2001:db8::/64"), 64), (SET6, false));
        assert_eq!(set_of(n("2001:db8::1/128"), 64), (SET6_NETS, true));
        assert_eq!(set_of(n("2001:db8::/56"), 56), (SET6, false));
    }

    #[test]
    fn a_batch_writes_placeholders_deletes_then_adds_per_set() {
        let t = Duration::from_secs(60);
        let ops = [
            (0, Op::Add(n("192.0.2.1/32"), t)),
            (1, Op::Add(n("2001:db8::/64"), Duration::from_secs(3600))),
            (2, Op::Placeholder(n("198.51.100.0/24"))),
            (2, Op::Delete(n("198.51.100.0/24"))),
            (3, Op::Placeholder(n("192.0.2.7/32"))),
            (3, Op::Delete(n("192.0.2.7/32"))),
            (4, Op::Add(n("2001:db8::1/128"), t)),
        ];
        let s = batch("stg", 64, &ops);
        assert_eq!(
            s.text(),
            "add element inet stg banned4 { 192.0.2.7 timeout 60s }\n\
             delete element inet stg banned4 { 192.0.2.7 }\n\
             add element inet stg banned4 { 192.0.2.1 timeout 60000ms }\n\
             add element inet stg banned6 { 2001:db8:: timeout 3600000ms }\n\
             add element inet stg banned4_nets { 198.51.100.0/24 timeout 60s }\n\
             delete element inet stg banned4_nets { 198.51.100.0/24 }\n\
             add element inet stg banned6_nets { 2001:db8::1 timeout 60000ms }\n"
        );
        // Error positions name the change.
        assert_eq!(s.owner(1, 32), Some(3));
        assert_eq!(s.owner(1, 1), None);
        assert_eq!(s.owner(3, 40), Some(0));
        assert_eq!(s.owner(4, 32), Some(1));
        assert_eq!(s.owner(6, 40), Some(2));
        assert_eq!(s.owner(8, 1), None);
    }

    #[test]
    fn statements_hold_at_most_per_statement_elements() {
        let ops: Vec<(usize, Op)> = (0..2500u32)
            .map(|i| {
                let net = IpNet::from(std::net::IpAddr::from((0x0a00_0000 + i).to_be_bytes()));
                (i as usize, Op::Add(net, Duration::from_secs(1)))
            })
            .collect();
        let s = batch("stg", 64, &ops);
        assert_eq!(s.text().lines().count(), 3);
        let last_line = s.text().lines().nth(2).unwrap();
        assert_eq!(last_line.matches("timeout").count(), 500);
        assert_eq!(s.owner(3, last_line.len() - 10), Some(2499));
    }

    #[test]
    fn timeouts_round_up_to_a_millisecond_and_stop_at_the_cap() {
        assert_eq!(timeout_text(Duration::ZERO), "1ms");
        assert_eq!(timeout_text(Duration::from_micros(1500)), "2ms");
        assert_eq!(timeout_text(Duration::from_secs(2)), "2000ms");
        assert_eq!(timeout_text(Duration::MAX), "315360000000ms");
    }

    #[test]
    fn ensure_keeps_sets_and_replaces_the_chain() {
        let s = ensure(&FirewallConfig::default(), false);
        assert!(!s.contains("flush"));
        assert!(!s.contains(PROBE));
        assert!(ensure(&FirewallConfig::default(), true).contains(PROBE));
        assert!(s.contains("delete chain inet stg drop_banned\n"));
        assert!(!s.contains("delete set"));
        assert!(s.contains("hook prerouting priority -300;"));
        assert!(s.contains("ip6 saddr & ffff:ffff:ffff:ffff:: @banned6 counter drop"));
        let s48 = ensure(
            &FirewallConfig {
                v6_prefix: 48,
                ..FirewallConfig::default()
            },
            false,
        );
        assert!(s48.contains("ip6 saddr & ffff:ffff:ffff:: @banned6"));
    }
}
