//! The shell: runs `nft` with the scripts of [`crate::script`]. Blocking (a process per
//! call); an async caller runs it on `spawn_blocking`.

use std::collections::{BTreeSet, HashMap};
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use ipnet::IpNet;

use crate::list::{self, Element};
use crate::script::Op;
use crate::{script, Change, Error, FirewallConfig, Refresh};

/// How many times [`Firewall::apply`] runs `nft` for one batch before giving up: each
/// failed run takes out the elements nft named, so this is only reached by a batch with
/// many refused elements (overlapping prefixes, which the guard does not make).
const MAX_RUNS: usize = 16;

/// How far an element's remaining time may be from the store's for [`Firewall::restore`]
/// to leave it alone under [`Refresh::Replace`] (nft lists whole seconds, and a restart
/// takes a moment).
pub const RESTORE_SLACK: Duration = Duration::from_secs(5);

/// The most of `nft`'s stderr kept in an [`Error`] (it echoes the failing lines).
const MAX_STDERR: usize = 4096;

/// What [`Firewall::apply`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Changes now in force.
    pub applied: usize,
    /// Changes the kernel or nft refused, each with nft's reason; the others were applied.
    pub rejected: Vec<Rejected>,
    /// `nft` processes run (1 unless some elements were refused).
    pub runs: usize,
}

/// A change that was not applied, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// The change.
    pub change: Change,
    /// nft's message, e.g. `interval overlaps with an existing one`.
    pub reason: String,
}

/// stg's nftables table. Holds only its config: the kernel holds the state, so dropping a
/// `Firewall` (or stg) changes nothing in it.
#[derive(Clone, Debug)]
pub struct Firewall {
    cfg: FirewallConfig,
    /// [`Refresh::Replace`] in force (a re-ban is a delete and an add).
    replace: bool,
}

impl Firewall {
    /// A handle on the table as configured, without touching it (for `list` and the
    /// operator's `remove_all`). [`Refresh::Auto`] is taken as [`Refresh::Replace`] here.
    pub fn new(cfg: FirewallConfig) -> Result<Self, Error> {
        cfg.validate()?;
        let replace = cfg.refresh != Refresh::Add;
        Ok(Self { cfg, replace })
    }

    /// Makes sure the table, both sets and the dropping chain exist, in one transaction,
    /// keeping every element already in the sets (bans survive a restart of stg). The chain
    /// is rebuilt, so a changed hook or priority takes effect. Fails if a set exists with
    /// another type or flags than ours (an old or foreign table of the same name). With
    /// [`Refresh::Auto`], also asks the kernel whether `add` updates an element's timeout
    /// (three more short runs on a scratch set).
    pub fn ensure(cfg: &FirewallConfig) -> Result<Self, Error> {
        let mut fw = Self::new(cfg.clone())?;
        let probe = cfg.refresh == Refresh::Auto;
        fw.run(&["-f", "-"], Some(&script::ensure(&fw.cfg, probe)))?;
        if probe {
            fw.replace = !fw.kernel_updates_timeouts()?;
        }
        Ok(fw)
    }

    /// The probe: the scratch set's element was added with one hour; add it again with one
    /// minute and look.
    fn kernel_updates_timeouts(&self) -> Result<bool, Error> {
        self.run(&["-f", "-"], Some(&script::probe_readd(&self.cfg)))?;
        let args = ["list", "set", "inet", &self.cfg.table, script::PROBE];
        let listed = self.run(&args, None);
        // The scratch set goes whatever the listing said.
        self.run(&["-f", "-"], Some(&script::probe_remove(&self.cfg)))?;
        Ok(listed?.contains("timeout 1m"))
    }

    /// The config this handle writes with.
    pub fn config(&self) -> &FirewallConfig {
        &self.cfg
    }

    /// How re-bans are written: [`Refresh::Add`] or [`Refresh::Replace`].
    pub fn refresh(&self) -> Refresh {
        if self.replace {
            Refresh::Replace
        } else {
            Refresh::Add
        }
    }

    /// Applies a batch in one `nft -f -` run (one kernel transaction). Changes to the same
    /// network count once, the last one winning. A prefix inside another prefix of the same
    /// batch is refused and the wider one kept (interval sets hold no overlaps, and the wider
    /// one covers it). If nft refuses some elements (a prefix overlapping one already in the
    /// set), those are taken out and the rest is run again, so one bad element never loses
    /// the others; they come back in [`Applied::rejected`]. An unban of a network that is not
    /// there counts as applied.
    pub fn apply(&self, changes: &[Change]) -> Result<Applied, Error> {
        let mut done = Applied::default();
        let mut live = last_per_net(changes);
        let inner = nested(&live, self.cfg.v6_prefix);
        if !inner.is_empty() {
            let mut kept = Vec::with_capacity(live.len());
            for (i, change) in live.into_iter().enumerate() {
                match inner.get(&i) {
                    Some(cover) => done.rejected.push(Rejected {
                        change,
                        reason: format!("inside {cover}, also in this batch"),
                    }),
                    None => kept.push(change),
                }
            }
            live = kept;
        }
        while !live.is_empty() {
            let s = script::batch(
                &self.cfg.table,
                self.cfg.v6_prefix,
                &ops(&live, self.replace),
            );
            done.runs += 1;
            let Err(err) = self.run(&["-f", "-"], Some(s.text())) else {
                break;
            };
            let Error::Nft { stderr, .. } = &err else {
                return Err(err);
            };
            let mut refused: HashMap<usize, String> = HashMap::new();
            for (line, col, reason) in positions(stderr) {
                if let Some(i) = s.owner(line, col) {
                    refused.entry(i).or_insert(reason);
                }
            }
            // An error not on an element (permissions, a missing table) fails the batch.
            if refused.is_empty() || done.runs >= MAX_RUNS {
                return Err(err);
            }
            let mut kept = Vec::with_capacity(live.len());
            for (i, change) in live.into_iter().enumerate() {
                match refused.remove(&i) {
                    None => kept.push(change),
                    Some(reason) => done.rejected.push(Rejected { change, reason }),
                }
            }
            live = kept;
        }
        done.applied = live.len();
        Ok(done)
    }

    /// Puts bans back, e.g. at start from the store, with what is left of each: in runs of
    /// [`FirewallConfig::restore_chunk`] elements, so 100,000 bans are a few runs.
    ///
    /// With [`Refresh::Add`] every element gets the given remaining time. With
    /// [`Refresh::Replace`] the sets are listed first, and an element already there that
    /// expires within [`RESTORE_SLACK`] of the given time is left alone (it is the same ban,
    /// written before the restart), so a restart deletes nothing in the usual case.
    pub fn restore(&self, bans: &[(IpNet, Duration)]) -> Result<Applied, Error> {
        let mut total = Applied::default();
        let present: HashMap<IpNet, Duration> = if self.replace {
            self.list()?
                .into_iter()
                .filter_map(|e| Some((e.net, e.expires?)))
                .collect()
        } else {
            HashMap::new()
        };
        let mut todo = Vec::with_capacity(bans.len());
        for &(net, timeout) in bans {
            let same = present
                .get(&crate::normalize(net))
                .is_some_and(|left| left.abs_diff(timeout) <= RESTORE_SLACK);
            if same {
                total.applied += 1;
            } else {
                todo.push(Change::Ban { net, timeout });
            }
        }
        for chunk in todo.chunks(self.cfg.restore_chunk) {
            let a = self.apply(chunk)?;
            total.applied += a.applied;
            total.runs += a.runs;
            total.rejected.extend(a.rejected);
        }
        Ok(total)
    }

    /// The elements of the four sets now, with what is left of their timeouts.
    pub fn list(&self) -> Result<Vec<Element>, Error> {
        let table = self.cfg.table.as_str();
        let args = ["-j", "list", "table", "inet", table];
        let out = self.run(&args, None)?;
        list::parse(&out, self.cfg.v6_prefix).map_err(|reason| Error::Output {
            command: self.command_line(&args),
            reason,
        })
    }

    /// Deletes the whole table and every ban in it. For an explicit operator command only:
    /// stg itself never calls it, at stop or otherwise.
    pub fn remove_all(&self) -> Result<(), Error> {
        self.run(&["-f", "-"], Some(&script::remove_all(&self.cfg)))?;
        Ok(())
    }

    /// Runs nft with `args`, `stdin` written from another thread so that neither side can
    /// block on a full pipe; returns its stdout.
    fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String, Error> {
        let command = self.command_line(args);
        let spawn_err = |source| Error::Spawn {
            command: command.clone(),
            source,
        };
        let mut child = Command::new(&self.cfg.nft)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        let pipe = child.stdin.take();
        let out = std::thread::scope(|scope| {
            if let (Some(mut pipe), Some(text)) = (pipe, stdin) {
                // A write error means nft exited early; its status and stderr say why.
                scope.spawn(move || pipe.write_all(text.as_bytes()));
            }
            child.wait_with_output()
        })
        .map_err(spawn_err)?;
        if !out.status.success() {
            let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            if stderr.len() > MAX_STDERR {
                let mut cut = MAX_STDERR;
                while !stderr.is_char_boundary(cut) {
                    cut -= 1;
                }
                stderr.truncate(cut);
                stderr.push_str(" [...]");
            }
            return Err(Error::Nft {
                command,
                status: out.status.to_string(),
                stderr,
            });
        }
        String::from_utf8(out.stdout).map_err(|_| Error::Output {
            command,
            reason: "not UTF-8".to_string(),
        })
    }

    fn command_line(&self, args: &[&str]) -> String {
        let mut s = self.cfg.nft.display().to_string();
        for a in args {
            s.push(' ');
            s.push_str(a);
        }
        s
    }
}

/// The changes with one per network, the last one given, in the order networks first
/// appear.
fn last_per_net(changes: &[Change]) -> Vec<Change> {
    let mut at: HashMap<IpNet, usize> = HashMap::with_capacity(changes.len());
    let mut out: Vec<Change> = Vec::with_capacity(changes.len());
    for c in changes {
        match at.get(&c.net()) {
            Some(&i) => out[i] = c.clone(),
            None => {
                at.insert(c.net(), out.len());
                out.push(c.clone());
            }
        }
    }
    out
}

/// What each change becomes (see [`crate::script`]): an unban is a placeholder and a
/// delete; a ban is an add, preceded by a placeholder and a delete with `replace`.
fn ops(live: &[Change], replace: bool) -> Vec<(usize, Op)> {
    let mut out = Vec::with_capacity(live.len() * if replace { 3 } else { 1 });
    for (i, c) in live.iter().enumerate() {
        let net = c.net();
        match c {
            Change::Ban { timeout, .. } => {
                if replace {
                    out.push((i, Op::Placeholder(net)));
                    out.push((i, Op::Delete(net)));
                }
                out.push((i, Op::Add(net, *timeout)));
            }
            Change::Unban { .. } => {
                out.push((i, Op::Placeholder(net)));
                out.push((i, Op::Delete(net)));
            }
        }
    }
    out
}

/// The changes bound for an interval set whose network lies inside another network of the
/// same batch bound for the same set, with that wider network (hash sets never conflict).
/// CIDR networks either nest or are disjoint, so one sweep in address order (the wider
/// first among those that start at the same address) finds them all.
fn nested(live: &[Change], v6_prefix: u8) -> HashMap<usize, IpNet> {
    let mut order: Vec<(IpNet, usize)> = live
        .iter()
        .enumerate()
        .map(|(i, c)| (c.net(), i))
        .filter(|&(n, _)| script::set_of(n, v6_prefix).1)
        .collect();
    order.sort_by_key(|&(n, _)| (n.network(), n.prefix_len()));
    let mut out = HashMap::new();
    let mut cover: Option<IpNet> = None;
    for (net, i) in order {
        match cover {
            Some(c) if c.contains(&net) => {
                out.insert(i, c);
            }
            _ => cover = Some(net),
        }
    }
    out
}

/// The error positions in nft's stderr: lines `/dev/stdin:LINE:COL[-COL]: Error: REASON`.
/// The set of positions is deduplicated: nft may report one element twice.
fn positions(stderr: &str) -> BTreeSet<(usize, usize, String)> {
    let mut out = BTreeSet::new();
    for l in stderr.lines() {
        let Some(rest) = l.strip_prefix("/dev/stdin:") else {
            continue;
        };
        let mut parts = rest.splitn(3, ':');
        let (Some(line), Some(cols), Some(msg)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let first_col = cols.split('-').next().unwrap_or(cols);
        let (Ok(line), Ok(col)) = (line.parse(), first_col.parse()) else {
            continue;
        };
        let msg = msg.trim();
        let msg = msg.strip_prefix("Error:").unwrap_or(msg).trim();
        out.insert((line, col, msg.to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_positions_are_read_from_nft_stderr() {
        let stderr = "/dev/stdin:2:35-42: Error: element does not exist\n\
                      delete element inet stg banned4 { 10.0.0.9 }\n\
                      \x20                                 ^^^^^^^^\n\
                      /dev/stdin:7:12: Error: interval overlaps with an existing one\n\
                      /dev/stdin:x:1: Error: garbage\n\
                      Error: Could not process rule: Operation not permitted\n";
        let got: Vec<_> = positions(stderr).into_iter().collect();
        assert_eq!(
            got,
            vec![
                (2, 35, "element does not exist".to_string()),
                (7, 12, "interval overlaps with an existing one".to_string()),
            ]
        );
    }

    #[test]
    fn a_network_inside_another_of_the_batch_is_found_with_the_wider_one() {
        let n = |s: &str| s.parse::<IpNet>().unwrap();
        let ban = |s| Change::Ban {
            net: n(s),
            timeout: Duration::from_secs(1),
        };
        let live = [
            ban("10.1.0.0/30"),
            ban("10.0.0.0/8"),
            ban("10.0.0.0/24"),
            // An address goes to the hash set, which holds it beside any prefix.
            ban("10.0.0.1/32"),
            ban("11.0.0.0/16"),
            ban("2001:db8::/64"),
            ban("2001:db8::/48"),
            ban("2001:db8::5/128"),
            ban("2001:db9::/60"),
            ban("0.0.0.0/1"),
        ];
        let mut got: Vec<(usize, IpNet)> = nested(&live, 64).into_iter().collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                (0, n("0.0.0.0/1")),
                (1, n("0.0.0.0/1")),
                (2, n("0.0.0.0/1")),
                (4, n("0.0.0.0/1")),
                (7, n("2001:db8::/48")),
            ]
        );
    }

    #[test]
    fn unbans_cannot_fail_and_replace_rewrites_bans() {
        let n = |s: &str| s.parse::<IpNet>().unwrap();
        let t = Duration::from_secs(9);
        let live = [
            Change::Ban {
                net: n("10.0.0.1/32"),
                timeout: t,
            },
            Change::Unban {
                net: n("10.0.0.3/32"),
            },
        ];
        assert_eq!(
            ops(&live, true),
            vec![
                (0, Op::Placeholder(n("10.0.0.1/32"))),
                (0, Op::Delete(n("10.0.0.1/32"))),
                (0, Op::Add(n("10.0.0.1/32"), t)),
                (1, Op::Placeholder(n("10.0.0.3/32"))),
                (1, Op::Delete(n("10.0.0.3/32"))),
            ]
        );
        assert_eq!(
            ops(&live, false),
            vec![
                (0, Op::Add(n("10.0.0.1/32"), t)),
                (1, Op::Placeholder(n("10.0.0.3/32"))),
                (1, Op::Delete(n("10.0.0.3/32"))),
            ]
        );
    }

    #[test]
    fn the_last_change_to_a_network_wins() {
        let n = |s: &str| s.parse::<IpNet>().unwrap();
        let ban = |s, t| Change::Ban {
            net: n(s),
            timeout: Duration::from_secs(t),
        };
        let got = last_per_net(&[
            ban("10.0.0.1/32", 1),
            ban("10.0.0.2/32", 1),
            Change::Unban {
                net: n("10.0.0.1/32"),
            },
            ban("10.0.0.2/32", 9),
            // The same network written differently is the same network.
            ban("::ffff:10.0.0.2/128", 7),
        ]);
        assert_eq!(
            got,
            vec![
                Change::Unban {
                    net: n("10.0.0.1/32")
                },
                ban("::ffff:10.0.0.2/128", 7)
            ]
        );
    }
}
