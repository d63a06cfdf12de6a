//! Sans-IO batching of changes, so a burst of bans is one `nft` run and not one per address.
//!
//! Drain rule: after each [`Batcher::handle_change`] (and when the shell's timer fires), call
//! [`Batcher::poll_batch`] until it returns `None`, hand each batch to
//! [`crate::Firewall::apply`], then sleep until [`Batcher::poll_timeout`].

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::Change;

/// When a batch is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    /// A batch is due as soon as this many networks are pending (default 1,000: one `nft`
    /// run of that size takes a few milliseconds more than a run of one).
    pub max_batch: usize,
    /// ... or this long after the oldest pending change arrived (default 5 ms: a ban reaches
    /// the kernel well inside the 50 ms budget while a burst still gathers into one run).
    /// The clock starts at the first change, not the last, so a steady trickle cannot hold a
    /// batch back forever.
    pub max_delay: Duration,
    /// At most this many networks wait (default 100,000); a change for a new network beyond
    /// it is refused (and counted), which only happens if `nft` stops keeping up. The guard
    /// still enforces refused bans in-process.
    pub max_pending: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_batch: 1000,
            max_delay: Duration::from_millis(5),
            max_pending: 100_000,
        }
    }
}

/// A queue of changes coalesced by network (the last change to a network wins), released in
/// batches by size or age. Reads no clock: `now` is an argument.
#[derive(Debug)]
pub struct Batcher {
    cfg: BatchConfig,
    /// Pending changes in the order their networks first arrived.
    queue: VecDeque<Change>,
    /// Where each pending network's change sits: `queue[at[net] - head]`.
    at: HashMap<IpNet, usize>,
    /// How many changes were ever taken out of `queue` (so `at` never needs renumbering).
    head: usize,
    /// When the oldest pending change arrived.
    since: Option<Instant>,
    refused: u64,
}

impl Batcher {
    /// An empty queue.
    pub fn new(cfg: BatchConfig) -> Self {
        Self {
            cfg: BatchConfig {
                max_batch: cfg.max_batch.max(1),
                ..cfg
            },
            queue: VecDeque::new(),
            at: HashMap::new(),
            head: 0,
            since: None,
            refused: 0,
        }
    }

    /// Queues a change. A change to a network already pending replaces that one in place
    /// and keeps its age. Returns `false` if the change was refused because
    /// [`BatchConfig::max_pending`] networks are already waiting.
    pub fn handle_change(&mut self, change: Change, now: Instant) -> bool {
        let net = change.net();
        if let Some(&i) = self.at.get(&net) {
            self.queue[i - self.head] = change;
            return true;
        }
        if self.at.len() >= self.cfg.max_pending {
            self.refused += 1;
            return false;
        }
        self.at.insert(net, self.head + self.queue.len());
        self.queue.push_back(change);
        self.since.get_or_insert(now);
        true
    }

    /// The next batch if one is due at `now`: up to [`BatchConfig::max_batch`] changes, the
    /// oldest first.
    pub fn poll_batch(&mut self, now: Instant) -> Option<Vec<Change>> {
        let due =
            self.at.len() >= self.cfg.max_batch || self.poll_timeout().is_some_and(|t| now >= t);
        if !due {
            return None;
        }
        let n = self.cfg.max_batch.min(self.queue.len());
        let batch: Vec<Change> = self.queue.drain(..n).collect();
        for c in &batch {
            self.at.remove(&c.net());
        }
        self.head += n;
        // What is left arrived later than the batch, but its exact arrival is not kept: it
        // is due at once, which can only make it earlier.
        self.since = if self.queue.is_empty() {
            None
        } else {
            Some(now)
        };
        Some(batch)
    }

    /// When the next batch is due by age, if anything is pending.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.since.map(|t| t + self.cfg.max_delay)
    }

    /// Networks pending.
    pub fn len(&self) -> usize {
        self.at.len()
    }

    /// Nothing pending?
    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }

    /// Changes refused since the start because the queue was full.
    pub fn refused(&self) -> u64 {
        self.refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one reading of the clock: a starting point for fake time.
    #[allow(clippy::disallowed_methods)]
    fn start() -> Instant {
        Instant::now()
    }

    fn ban(i: u32) -> Change {
        Change::Ban {
            net: IpNet::from(std::net::IpAddr::from((0x0a00_0000 + i).to_be_bytes())),
            timeout: Duration::from_secs(60),
        }
    }

    fn cfg(max_batch: usize, delay_ms: u64, max_pending: usize) -> BatchConfig {
        BatchConfig {
            max_batch,
            max_delay: Duration::from_millis(delay_ms),
            max_pending,
        }
    }

    #[test]
    fn a_burst_of_a_thousand_bans_is_one_batch() {
        let t0 = start();
        let mut b = Batcher::new(BatchConfig::default());
        for i in 0..1000 {
            assert!(b.handle_change(ban(i), t0));
        }
        let batch = b.poll_batch(t0).expect("full batch is due at once");
        assert_eq!(batch.len(), 1000);
        assert_eq!(batch[0], ban(0));
        assert!(b.poll_batch(t0).is_none());
        assert_eq!(b.poll_timeout(), None);
    }

    #[test]
    fn a_small_batch_waits_for_the_delay_counted_from_its_first_change() {
        let t0 = start();
        let mut b = Batcher::new(cfg(100, 5, 1000));
        assert_eq!(b.poll_timeout(), None);
        b.handle_change(ban(1), t0);
        b.handle_change(ban(2), t0 + Duration::from_millis(4));
        assert_eq!(b.poll_timeout(), Some(t0 + Duration::from_millis(5)));
        assert!(b.poll_batch(t0 + Duration::from_millis(4)).is_none());
        let batch = b.poll_batch(t0 + Duration::from_millis(5)).unwrap();
        assert_eq!(batch, vec![ban(1), ban(2)]);
        assert!(b.is_empty());
    }

    #[test]
    fn the_last_change_to_a_network_wins_in_its_first_place() {
        let t0 = start();
        let mut b = Batcher::new(cfg(100, 5, 1000));
        b.handle_change(ban(1), t0);
        b.handle_change(ban(2), t0);
        let unban = Change::Unban { net: ban(1).net() };
        b.handle_change(unban.clone(), t0);
        assert_eq!(b.len(), 2);
        let late = t0 + Duration::from_secs(1);
        assert_eq!(b.poll_batch(late).unwrap(), vec![unban, ban(2)]);
    }

    #[test]
    fn a_long_burst_comes_out_in_full_batches_then_the_rest_after_the_delay() {
        let t0 = start();
        let mut b = Batcher::new(cfg(100, 5, 10_000));
        for i in 0..250 {
            b.handle_change(ban(i), t0);
        }
        assert_eq!(b.poll_batch(t0).unwrap().len(), 100);
        let second = b.poll_batch(t0).unwrap();
        assert_eq!(second.first(), Some(&ban(100)));
        assert_eq!(second.len(), 100);
        // 50 left: not a full batch, due by age.
        assert!(b.poll_batch(t0 + Duration::from_millis(1)).is_none());
        // Coalescing still finds the networks that moved down the queue.
        b.handle_change(
            Change::Unban {
                net: ban(249).net(),
            },
            t0,
        );
        assert_eq!(b.len(), 50);
        let rest = b.poll_batch(t0 + Duration::from_millis(5)).unwrap();
        assert_eq!(rest.len(), 50);
        assert_eq!(
            rest.last(),
            Some(&Change::Unban {
                net: ban(249).net()
            })
        );
        assert!(b.is_empty());
    }

    #[test]
    fn the_queue_is_bounded() {
        let t0 = start();
        let mut b = Batcher::new(cfg(10_000, 5, 3));
        for i in 0..3 {
            assert!(b.handle_change(ban(i), t0));
        }
        assert!(!b.handle_change(ban(3), t0));
        // A change to a network already waiting still gets in.
        assert!(b.handle_change(Change::Unban { net: ban(0).net() }, t0));
        assert_eq!((b.len(), b.refused()), (3, 1));
    }
}
