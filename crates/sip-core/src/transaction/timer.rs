//! Timers A–M and the one deadline queue shared by every transaction.
//!
//! A transaction keeps the deadlines of its running timers inside its state (each state holds
//! only its own data), so leaving a state cancels its timers without touching the queue. The
//! queue is a min-heap of `(deadline, timer, transaction)` entries with lazy invalidation: an
//! entry counts only while its transaction still reports that exact deadline for that timer.
//! Stale entries are dropped when they reach the top, which the owner does after every
//! mutation, so the top is always live and [`TimerQueue::next`] is the exact earliest deadline
//! in O(1). Arming costs O(log n); a state change costs nothing.
//!
//! Deadlines are unique per `(transaction, timer)`: a retransmission timer is re-armed strictly
//! later than it fired (intervals are at least 1 ms, see `Timings`), the other timers are set
//! once on entering the one state that owns them, and no state is ever re-entered. So equality
//! of deadlines is a sufficient generation check and ids, never reused, need no generation.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use super::{ClientTxId, ServerTxId};

/// Below this many entries the queue is never compacted: rebuilding a small heap saves nothing.
const COMPACT_FLOOR: usize = 1024;

/// A live transaction holds at most two timers (one retransmission, one lifetime). When the
/// heap holds more than this many entries per live transaction, most are stale (cancelled
/// timers not yet at the top) and one O(n) rebuild drops them, amortised over the pushes that
/// made them.
const COMPACT_RATIO: usize = 8;

/// The timers of RFC 3261 §17 (Table 4 in Appendix A) plus L and M from RFC 6026.
///
/// RFC order. A, E and G drive retransmissions; the others end a state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Timer {
    /// INVITE client, Calling: retransmit the INVITE (unreliable only), T1 doubling.
    A,
    /// INVITE client, Calling: give up, 64*T1.
    B,
    /// INVITE client, Completed: absorb final retransmissions, ≥ 32 s unreliable, 0 reliable.
    D,
    /// Non-INVITE client, Trying/Proceeding: retransmit (unreliable only), T1 doubling to T2.
    E,
    /// Non-INVITE client, Trying/Proceeding: give up, 64*T1.
    F,
    /// INVITE server, Completed: retransmit the final (unreliable only), T1 doubling to T2.
    G,
    /// INVITE server, Completed: give up waiting for the ACK, 64*T1.
    H,
    /// INVITE server, Confirmed: absorb ACK retransmissions, T4 unreliable, 0 reliable.
    I,
    /// Non-INVITE server, Completed: absorb request retransmissions, 64*T1 unreliable, 0
    /// reliable.
    J,
    /// Non-INVITE client, Completed: absorb response retransmissions, T4 unreliable, 0
    /// reliable.
    K,
    /// INVITE server, Accepted (RFC 6026): absorb INVITE retransmissions, pass ACKs, 64*T1.
    L,
    /// INVITE client, Accepted (RFC 6026): pass further 2xx to the TU, 64*T1.
    M,
}

impl Timer {
    /// Every timer, for scans in tests.
    #[cfg(test)]
    pub(super) const ALL: [Self; 12] = [
        Self::A,
        Self::B,
        Self::D,
        Self::E,
        Self::F,
        Self::G,
        Self::H,
        Self::I,
        Self::J,
        Self::K,
        Self::L,
        Self::M,
    ];

    /// Retransmission timers sort after lifetime timers due at the same instant, so a
    /// transaction that is about to end does not send one last useless copy first.
    fn is_retransmission(self) -> bool {
        matches!(self, Self::A | Self::E | Self::G)
    }
}

/// The transaction a queued deadline belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum TxRef {
    Client(ClientTxId),
    Server(ServerTxId),
}

/// One queued deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Deadline {
    pub(super) at: Instant,
    pub(super) timer: Timer,
    pub(super) tx: TxRef,
}

impl Ord for Deadline {
    fn cmp(&self, other: &Self) -> Ordering {
        self.at
            .cmp(&other.at)
            .then_with(|| {
                self.timer
                    .is_retransmission()
                    .cmp(&other.timer.is_retransmission())
            })
            .then_with(|| self.tx.cmp(&other.tx))
            // A total order keeps `Ord` consistent with `Eq`; the rank itself is arbitrary.
            .then_with(|| (self.timer as u8).cmp(&(other.timer as u8)))
    }
}

impl PartialOrd for Deadline {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A running retransmission timer (A, E or G): when it fires next and the interval that
/// produced that deadline, from which the next interval is derived.
#[derive(Clone, Copy, Debug)]
pub(super) struct Retransmit {
    pub(super) at: Instant,
    pub(super) interval: Duration,
}

impl Retransmit {
    /// The first interval is always T1 (RFC 3261 §17.1.1.2, §17.1.2.2, §17.2.1).
    pub(super) fn start(now: Instant, t1: Duration) -> Self {
        Self {
            at: now + t1,
            interval: t1,
        }
    }
}

/// Min-heap of deadlines with lazy invalidation (see the module docs).
#[derive(Debug, Default)]
pub(super) struct TimerQueue {
    heap: BinaryHeap<Reverse<Deadline>>,
}

impl TimerQueue {
    /// Queues `timer` of `tx` to fire at `at`.
    pub(super) fn schedule(&mut self, at: Instant, timer: Timer, tx: TxRef) {
        self.heap.push(Reverse(Deadline { at, timer, tx }));
    }

    /// The earliest queued deadline; exact once [`Self::drop_stale`] has run.
    pub(super) fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(d)| d.at)
    }

    /// Pops the earliest entry if it is due at `now`, live or stale: the caller checks.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<Deadline> {
        match self.heap.peek() {
            Some(Reverse(d)) if d.at <= now => self.heap.pop().map(|Reverse(d)| d),
            _ => None,
        }
    }

    /// Pops stale entries off the top until the top is live, and rebuilds the heap when stale
    /// entries dominate it. `live_txs` bounds the live entries (two per transaction).
    pub(super) fn drop_stale(&mut self, live_txs: usize, is_live: impl Fn(&Deadline) -> bool) {
        while let Some(Reverse(top)) = self.heap.peek() {
            if is_live(top) {
                break;
            }
            self.heap.pop();
        }
        if self.heap.len() > COMPACT_FLOOR
            && self.heap.len() > live_txs.saturating_mul(COMPACT_RATIO)
        {
            self.heap.retain(|Reverse(d)| is_live(d));
        }
    }

    /// Number of queued entries, live or stale.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.heap.len()
    }
}
