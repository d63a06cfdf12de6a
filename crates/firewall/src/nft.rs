//! The shell: runs `nft` with the scripts of [`crate::script`]. Blocking (a process per
//! call); an async caller runs it on `spawn_blocking`.

use std::collections::{BTreeSet, HashMap};
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use ipnet::IpNet;

use crate::list::{self, Element};
use crate::{script, Change, Error, FirewallConfig};

/// How many times [`Firewall::apply`] runs `nft` for one batch before giving up: each
/// failed run takes out the elements it named (nft names up to ten per run), so this is
/// only reached by a batch with dozens of refused elements.
const MAX_RUNS: usize = 16;

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
}

impl Firewall {
    /// A handle on the table as configured, without touching it (for `list` and the
    /// operator's `remove_all`).
    pub fn new(cfg: FirewallConfig) -> Result<Self, Error> {
        cfg.validate()?;
        Ok(Self { cfg })
    }

    /// Makes sure the table, both sets and the dropping chain exist, in one transaction,
    /// keeping every element already in the sets (bans survive a restart of stg). The chain
    /// is rebuilt, so a changed hook or priority takes effect. Fails if a set exists with
    /// another type or flags than ours (an old or foreign table of the same name).
    pub fn ensure(cfg: &FirewallConfig) -> Result<Self, Error> {
        let fw = Self::new(cfg.clone())?;
        fw.run(&["-f", "-"], Some(&script::ensure(&fw.cfg)))?;
        Ok(fw)
    }

    /// The config this handle writes with.
    pub fn config(&self) -> &FirewallConfig {
        &self.cfg
    }

    /// Applies a batch in one `nft -f -` run (one kernel transaction). Changes to the same
    /// network count once, the last one winning. If nft refuses some elements (an interval
    /// overlapping another one), those are taken out and the rest is run again, so one bad
    /// element never loses the others; they come back in [`Applied::rejected`].
    pub fn apply(&self, changes: &[Change]) -> Result<Applied, Error> {
        let mut live = last_per_net(changes);
        let mut done = Applied::default();
        while !live.is_empty() {
            let s = script::batch(&self.cfg.table, &live);
            done.runs += 1;
            let err = match self.run(&["-f", "-"], Some(s.text())) {
                Ok(_) => break,
                Err(e) => e,
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
                    Some(reason) => done.rejected.push(Rejected { change, reason }),
                    None => kept.push(change),
                }
            }
            live = kept;
        }
        done.applied = live.len();
        Ok(done)
    }

    /// Puts bans back, e.g. at start from the store, with what is left of each: in runs of
    /// [`FirewallConfig::restore_chunk`] elements, so 100,000 bans are a few runs. An
    /// element already in the kernel gets the given remaining time.
    pub fn restore(&self, bans: &[(IpNet, Duration)]) -> Result<Applied, Error> {
        let mut total = Applied::default();
        for chunk in bans.chunks(self.cfg.restore_chunk) {
            let changes: Vec<Change> = chunk
                .iter()
                .map(|&(net, timeout)| Change::Ban { net, timeout })
                .collect();
            let a = self.apply(&changes)?;
            total.applied += a.applied;
            total.runs += a.runs;
            total.rejected.extend(a.rejected);
        }
        Ok(total)
    }

    /// The elements of both sets now, with what is left of their timeouts.
    pub fn list(&self) -> Result<Vec<Element>, Error> {
        let table = self.cfg.table.as_str();
        let args = ["-j", "list", "table", "inet", table];
        let out = self.run(&args, None)?;
        list::parse(&out).map_err(|reason| Error::Output {
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

/// The error positions in nft's stderr: lines `/dev/stdin:LINE:COL[-COL]: Error: REASON`.
/// The set of positions is deduplicated: nft may report one element twice.
fn positions(stderr: &str) -> BTreeSet<(usize, usize, String)> {
    let mut out = BTreeSet::new();
    for l in stderr.lines() {
        let Some(rest) = l.strip_prefix("/dev/stdin:") else {
            continue;
        };
        let mut parts = rest.splitn(3, ':');
        let (Some(line), Some(cols), Some(msg)) = (parts.next(), parts.next(), parts.next())
        else {
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
