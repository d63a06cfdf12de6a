//! A log throttle an attacker cannot turn into a log flood, nor into memory: per (what,
//! reason, source) at most [`LINES_PER_WINDOW`] lines per [`WINDOW`], then one summary line
//! when the window ends ("1234 more malformed messages from 192.0.2.10 in 60 s").
//!
//! Sans-IO: the caller passes the time in and writes the lines; the metrics the lines stand
//! for are counted elsewhere, exactly. The table holds at most [`MAX_KEYS`] sources; events
//! from further sources share one "other sources" entry per kind and reason, so the table
//! stays bounded whatever the number of addresses an attacker uses.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use crate::conn::SourceKey;

/// How long one throttling window lasts.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);

/// Lines written per key and window before the rest are only counted.
pub(crate) const LINES_PER_WINDOW: u32 = 5;

/// Most keys with a source of their own.
pub(crate) const MAX_KEYS: usize = 4096;

/// Most lines per kind and reason per window, all sources together: spoofed UDP sources
/// are free, so the per-source budget alone would still let 4,096 of them write 5 lines each.
pub(crate) const LINES_PER_REASON: u32 = 50;

/// Most summary lines per kind and reason per window; the rest are folded into one.
pub(crate) const SUMMARIES_PER_REASON: usize = 20;

/// What is being logged, e.g. "malformed messages" (plural: it names the summary's count).
pub(crate) type What = &'static str;

/// Whose lines a window counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Subject {
    /// One source.
    Source(SourceKey),
    /// Every source beyond the table's capacity.
    OtherSources,
    /// Lines about no source in particular (a failed DNS lookup).
    Node,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    what: What,
    reason: &'static str,
    source: Subject,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    logged: u32,
    suppressed: u64,
}

/// Whether the caller writes its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Log,
    Suppress,
}

/// One summary line: `count` lines of `what` (for `reason`) from `source` were left out in
/// the window that just ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Summary {
    pub(crate) what: What,
    pub(crate) reason: &'static str,
    pub(crate) source: Subject,
    pub(crate) count: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} more {}", self.count, self.what)?;
        match self.source {
            Subject::Source(s) => write!(f, " from {s}")?,
            Subject::OtherSources => f.write_str(" from other sources")?,
            Subject::Node => {}
        }
        write!(f, " in {} s (reason={})", WINDOW.as_secs(), self.reason)
    }
}

/// The throttle's table.
#[derive(Debug, Default)]
pub(crate) struct LogThrottle {
    windows: HashMap<Key, Window>,
    /// Lines written per kind and reason in the current window (few keys: both are static).
    per_reason: HashMap<(What, &'static str), (Instant, u32)>,
}

impl LogThrottle {
    /// Whether a line about `what` for `reason` from `source` (None: about no source in
    /// particular) may be written at `now`.
    pub(crate) fn check(
        &mut self,
        what: What,
        reason: &'static str,
        source: Option<SourceKey>,
        now: Instant,
    ) -> Verdict {
        let mut key = Key {
            what,
            reason,
            source: source.map_or(Subject::Node, Subject::Source),
        };
        if !self.windows.contains_key(&key) && self.sources() >= MAX_KEYS {
            key.source = Subject::OtherSources;
        }
        let w = self.windows.entry(key).or_insert(Window {
            start: now,
            logged: 0,
            suppressed: 0,
        });
        let total = self.per_reason.entry((what, reason)).or_insert((now, 0));
        if now.saturating_duration_since(total.0) >= WINDOW {
            *total = (now, 0);
        }
        if w.logged < LINES_PER_WINDOW && total.1 < LINES_PER_REASON {
            w.logged += 1;
            total.1 += 1;
            Verdict::Log
        } else {
            w.suppressed += 1;
            Verdict::Suppress
        }
    }

    /// Ends every window older than [`WINDOW`] at `now`: returns a summary for each that
    /// suppressed lines, and forgets them all.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<Summary> {
        let mut out = Vec::new();
        self.windows.retain(|key, w| {
            if now.saturating_duration_since(w.start) < WINDOW {
                return true;
            }
            if w.suppressed > 0 {
                out.push(Summary {
                    what: key.what,
                    reason: key.reason,
                    source: key.source,
                    count: w.suppressed,
                });
            }
            false
        });
        out.sort_by_key(|s| std::cmp::Reverse(s.count));
        // The largest few per kind and reason keep their own line; the rest become one.
        let mut kept: HashMap<(What, &'static str), usize> = HashMap::new();
        let mut folded: Vec<Summary> = Vec::new();
        out.retain(|s| {
            if matches!(s.source, Subject::Node | Subject::OtherSources) {
                return true;
            }
            let n = kept.entry((s.what, s.reason)).or_default();
            if *n < SUMMARIES_PER_REASON {
                *n += 1;
                return true;
            }
            match folded
                .iter_mut()
                .find(|f| f.what == s.what && f.reason == s.reason)
            {
                Some(f) => f.count += s.count,
                None => folded.push(Summary {
                    source: Subject::OtherSources,
                    ..*s
                }),
            }
            false
        });
        for f in folded {
            match out.iter_mut().find(|s| {
                s.what == f.what && s.reason == f.reason && s.source == Subject::OtherSources
            }) {
                Some(s) => s.count += f.count,
                None => out.push(f),
            }
        }
        out
    }

    /// Keys held with a source of their own.
    fn sources(&self) -> usize {
        // The "other sources" entries are few (one per kind and reason, both static).
        self.windows.len()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.windows.len()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    fn src(last: u8) -> Option<SourceKey> {
        Some(SourceKey::new(
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, last)),
            64,
        ))
    }

    #[test]
    fn a_few_lines_then_one_summary_per_window() {
        let mut t = LogThrottle::default();
        let t0 = Instant::now();
        let verdicts: Vec<_> = (0..1239)
            .map(|i| {
                t.check(
                    "malformed messages",
                    "bad_header",
                    src(10),
                    t0 + Duration::from_millis(i),
                )
            })
            .collect();
        assert!(verdicts[..5].iter().all(|v| *v == Verdict::Log));
        assert!(verdicts[5..].iter().all(|v| *v == Verdict::Suppress));
        // Another source and another reason have windows of their own.
        assert_eq!(
            t.check("malformed messages", "bad_header", src(11), t0),
            Verdict::Log
        );
        assert_eq!(
            t.check("malformed messages", "bad_start_line", src(10), t0),
            Verdict::Log
        );
        // Nothing to say before the window ends.
        assert!(t.expire(t0 + Duration::from_secs(59)).is_empty());
        let summaries = t.expire(t0 + WINDOW);
        assert_eq!(
            summaries,
            [Summary {
                what: "malformed messages",
                reason: "bad_header",
                source: Subject::Source(src(10).unwrap()),
                count: 1234,
            }]
        );
        assert_eq!(
            summaries[0].to_string(),
            "1234 more malformed messages from 192.0.2.10 in 60 s (reason=bad_header)"
        );
        // Every window ended and was forgotten; the next event starts a new one.
        assert_eq!(t.len(), 0);
        assert_eq!(
            t.check("malformed messages", "bad_header", src(10), t0 + WINDOW),
            Verdict::Log
        );
    }

    #[test]
    fn the_table_is_bounded() {
        let mut t = LogThrottle::default();
        let t0 = Instant::now();
        for i in 0..(MAX_KEYS as u32 + 10_000) {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            for _ in 0..7 {
                t.check(
                    "framing errors",
                    "too_large",
                    Some(SourceKey::new(ip, 64)),
                    t0,
                );
            }
        }
        // MAX_KEYS sources plus the one shared entry.
        assert_eq!(t.len(), MAX_KEYS + 1);
        let summaries = t.expire(t0 + WINDOW);
        let other = summaries
            .iter()
            .find(|s| s.source == Subject::OtherSources)
            .unwrap();
        // Only LINES_PER_REASON lines were written in all; every other event is in a
        // summary, and at most SUMMARIES_PER_REASON sources get a summary line of their own.
        let events = (MAX_KEYS as u64 + 10_000) * 7;
        assert_eq!(
            summaries.iter().map(|s| s.count).sum::<u64>(),
            events - u64::from(LINES_PER_REASON)
        );
        assert_eq!(summaries.len(), SUMMARIES_PER_REASON + 1);
        assert!(other
            .to_string()
            .ends_with("more framing errors from other sources in 60 s (reason=too_large)"));
        assert_eq!(t.len(), 0);
    }

    /// per-source windows, and 4,096 sources before the shared entry: UDP
    /// sources are spoofable, so one attacker gets 4,096 x 5 lines per reason per minute.
    #[test]
    fn lines_per_window_are_bounded_across_sources() {
        let mut t = LogThrottle::default();
        let t0 = Instant::now();
        let mut logged = 0;
        for i in 0..10_000u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(0xc633_0000 + i));
            for _ in 0..10 {
                if t.check(
                    "malformed messages",
                    "bad_header",
                    Some(SourceKey::new(ip, 64)),
                    t0,
                ) == Verdict::Log
                {
                    logged += 1;
                }
            }
        }
        assert!(
            logged <= 1_000,
            "{logged} lines written in one window for one reason"
        );
    }

    #[test]
    fn ipv6_sources_are_counted_per_prefix() {
        let mut t = LogThrottle::default();
        let t0 = Instant::now();
        for i in 0..100u16 {
            let ip: IpAddr = format!("2001:db8:0:1::{i:x}").parse().unwrap();
            t.check("malformed messages", "x", Some(SourceKey::new(ip, 64)), t0);
        }
        assert_eq!(t.len(), 1);
        let s = t.expire(t0 + WINDOW);
        assert_eq!(
            s[0].to_string(),
            "95 more malformed messages from 2001:db8:0:1::/64 in 60 s (reason=x)"
        );
    }

    #[test]
    fn lines_about_no_source_are_throttled_too() {
        let mut t = LogThrottle::default();
        let t0 = Instant::now();
        let logged = (0..100)
            .filter(|_| t.check("failed resolutions", "timeout", None, t0) == Verdict::Log)
            .count();
        assert_eq!(logged, 5);
        let s = t.expire(t0 + WINDOW);
        assert_eq!(
            s[0].to_string(),
            "95 more failed resolutions in 60 s (reason=timeout)"
        );
    }
}
