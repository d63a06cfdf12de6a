//! The nft scripts, as text (no I/O here). Writing the few statements we need ourselves is
//! simpler and faster than building JSON for `nft -j -f -`, and it keeps `nft`'s error
//! positions (`/dev/stdin:LINE:COL`) pointing at one element each, which is how a refused
//! element is told apart from the rest of its batch.
//!
//! # Replacing an element
//! `add element` on an element that exists succeeds, but whether it also takes the new
//! timeout depends on the kernel (only recent ones update it), and `delete element` on a
//! missing one fails the whole transaction. So every change is written as
//!
//! ```text
//! add element inet stg banned4 { 192.0.2.1 timeout 60s }        # now it surely exists
//! delete element inet stg banned4 { 192.0.2.1 }                 # now it surely does not
//! add element inet stg banned4 { 192.0.2.1 timeout 3600000ms }  # bans only
//! ```
//!
//! in one transaction: a re-ban gets exactly its new timeout and an unban of a missing
//! element is no error, on every kernel. The placeholder's timeout never reaches the kernel's
//! committed state; it is not zero so that a long transaction cannot see it expire between
//! its add and its delete.
//!
//! Elements are grouped [`PER_STATEMENT`] to a statement (one line), so a 20,000-element
//! restore is 60 lines, and an error's echo of its line stays small.

use std::fmt::Write as _;
use std::time::Duration;

use ipnet::IpNet;

use crate::{Change, FirewallConfig, MAX_TIMEOUT};

/// The set of banned IPv4 addresses and prefixes.
pub const SET4: &str = "banned4";
/// The set of banned IPv6 addresses and prefixes.
pub const SET6: &str = "banned6";
/// The base chain that drops what the sets hold.
pub const CHAIN: &str = "drop_banned";
/// Elements per `add element` / `delete element` statement.
pub const PER_STATEMENT: usize = 1000;

/// Creates the table and sets if missing, keeping their elements, and (re)creates the chain
/// with the configured hook and priority: the chain is deleted and added in the same
/// transaction, so a changed priority applies and there is no moment without it.
pub fn ensure(cfg: &FirewallConfig) -> String {
    let t = &cfg.table;
    format!(
        "add table inet {t}\n\
         add set inet {t} {SET4} {{ type ipv4_addr; flags interval, timeout; }}\n\
         add set inet {t} {SET6} {{ type ipv6_addr; flags interval, timeout; }}\n\
         add chain inet {t} {CHAIN}\n\
         delete chain inet {t} {CHAIN}\n\
         add chain inet {t} {CHAIN} {{ type filter hook {hook} priority {prio}; policy accept; }}\n\
         add rule inet {t} {CHAIN} ip saddr @{SET4} counter drop\n\
         add rule inet {t} {CHAIN} ip6 saddr @{SET6} counter drop\n",
        hook = cfg.hook.name(),
        prio = cfg.priority,
    )
}

/// Deletes the table, whatever is in it (`add` first, so a missing table is no error).
pub fn remove_all(cfg: &FirewallConfig) -> String {
    let t = &cfg.table;
    format!("add table inet {t}\ndelete table inet {t}\n")
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
        let i = self.spans.partition_point(|&(l, c, _)| (l, c) <= (line, col));
        let &(l, _, change) = self.spans.get(i.checked_sub(1)?)?;
        (l == line).then_some(change)
    }
}

/// The script for a batch of changes, in the order given; see the module docs for why each
/// change is an add, a delete and (for a ban) an add again.
pub fn batch(table: &str, changes: &[Change]) -> Script {
    let mut s = Script {
        text: String::new(),
        spans: Vec::new(),
    };
    let mut line = 1;
    for (v6, set) in [(false, SET4), (true, SET6)] {
        let mine: Vec<(usize, IpNet, Option<Duration>)> = changes
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let net = c.net();
                let timeout = match c {
                    Change::Ban { timeout, .. } => Some(*timeout),
                    Change::Unban { .. } => None,
                };
                (matches!(net, IpNet::V6(_)) == v6).then_some((i, net, timeout))
            })
            .collect();
        for group in mine.chunks(PER_STATEMENT) {
            let all = group.iter().map(|&(i, net, _)| (i, net, Some("60s".to_string())));
            statement(&mut s, &mut line, "add", table, set, all);
            let all = group.iter().map(|&(i, net, _)| (i, net, None));
            statement(&mut s, &mut line, "delete", table, set, all);
            let bans = group
                .iter()
                .filter_map(|&(i, net, t)| Some((i, net, Some(timeout_text(t?)))));
            statement(&mut s, &mut line, "add", table, set, bans);
        }
    }
    s
}

/// One `add|delete element` line, recording where each element starts.
fn statement(
    s: &mut Script,
    line: &mut usize,
    verb: &str,
    table: &str,
    set: &str,
    elements: impl Iterator<Item = (usize, IpNet, Option<String>)>,
) {
    let start = s.text.len();
    let _ = write!(s.text, "{verb} element inet {table} {set} {{ ");
    let mut any = false;
    for (i, net, timeout) in elements {
        if any {
            s.text.push_str(", ");
        }
        any = true;
        // Columns are bytes from the line's start, counting from 1; all of it is ASCII.
        s.spans.push((*line, s.text.len() - start + 1, i));
        write_net(&mut s.text, net);
        if let Some(t) = timeout {
            let _ = write!(s.text, " timeout {t}");
        }
    }
    if !any {
        // Nothing for this statement (a group of unbans has no second add).
        s.text.truncate(start);
        return;
    }
    s.text.push_str(" }\n");
    *line += 1;
}

/// An address alone for a host network (so it lists back as written), `addr/len` otherwise.
fn write_net(out: &mut String, net: IpNet) {
    if net.prefix_len() == net.max_prefix_len() {
        let _ = write!(out, "{}", net.addr());
    } else {
        let _ = write!(out, "{net}");
    }
}

/// A timeout in nft syntax: whole milliseconds, rounded up, between 1 ms and [`MAX_TIMEOUT`].
fn timeout_text(t: Duration) -> String {
    let t = t.min(MAX_TIMEOUT);
    let ms = t.as_millis() + u128::from(t.subsec_nanos() % 1_000_000 != 0);
    format!("{}ms", ms.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ban(net: &str, secs: u64) -> Change {
        Change::Ban {
            net: net.parse().unwrap(),
            timeout: Duration::from_secs(secs),
        }
    }

    #[test]
    fn a_batch_replaces_each_element_in_one_transaction() {
        let changes = [
            ban("192.0.2.1/32", 60),
            ban("2001:db8::/64", 3600),
            Change::Unban {
                net: "198.51.100.0/24".parse().unwrap(),
            },
        ];
        let s = batch("stg", &changes);
        assert_eq!(
            s.text(),
            "add element inet stg banned4 { 192.0.2.1 timeout 60s, 198.51.100.0/24 timeout 60s }\n\
             delete element inet stg banned4 { 192.0.2.1, 198.51.100.0/24 }\n\
             add element inet stg banned4 { 192.0.2.1 timeout 60000ms }\n\
             add element inet stg banned6 { 2001:db8::/64 timeout 60s }\n\
             delete element inet stg banned6 { 2001:db8::/64 }\n\
             add element inet stg banned6 { 2001:db8::/64 timeout 3600000ms }\n"
        );
        // Error positions name the change: line 2 column 46 is "198.51.100.0/24".
        assert_eq!(s.owner(2, 46), Some(2));
        assert_eq!(s.owner(2, 45), Some(0));
        assert_eq!(s.owner(1, 32), Some(0));
        assert_eq!(s.owner(1, 1), None);
        assert_eq!(s.owner(6, 33), Some(1));
        assert_eq!(s.owner(7, 1), None);
    }

    #[test]
    fn statements_hold_at_most_per_statement_elements() {
        let changes: Vec<Change> = (0..2500u32)
            .map(|i| Change::Ban {
                net: IpNet::from(std::net::IpAddr::from((0x0a00_0000 + i).to_be_bytes())),
                timeout: Duration::from_secs(1),
            })
            .collect();
        let s = batch("stg", &changes);
        assert_eq!(s.text().lines().count(), 9);
        let last_line = s.text().lines().nth(8).unwrap();
        assert_eq!(last_line.matches("timeout").count(), 500);
        assert_eq!(s.owner(9, last_line.len() - 10), Some(2499));
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
        let s = ensure(&FirewallConfig::default());
        assert!(!s.contains("flush"));
        assert!(s.contains("delete chain inet stg drop_banned\n"));
        assert!(!s.contains("delete set"));
        assert!(s.contains("hook prerouting priority -300;"));
    }
}
