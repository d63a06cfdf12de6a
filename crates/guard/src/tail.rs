//! Following a log file across rotations and restarts, sans-IO.
//!
//! A [`Tail`] is told what the path and the open file look like ([`Stat`]: device, inode,
//! length) and the time, and answers with the next [`Step`] for the shell: open the path,
//! read the head (to recognise a file after a restart), read more bytes, or wait for the next
//! poll. The bytes read come back through [`Tail::read`], which yields complete lines.
//! [`Tail::poll_timeout`] says when to poll again even if nothing changes (the end of a
//! rotation's grace); a shell woken by file events polls then, and on each event.
//!
//! - **Rotation by rename**: the path names another inode. The old file is read to its end
//!   and kept until it has not grown for [`REPLACED_GRACE`] (a writer may still hold it
//!   open for a moment); then its unfinished last line, if any, counts as a line and the new
//!   file is read from its start.
//! - **Truncation** (`copytruncate`): the open file is shorter than what was read; reading
//!   starts again at 0.
//! - **Restart**: [`Tail::position`] (inode, offset of the next whole line, hash of the first
//!   line) is persisted by the shell; [`Tail::new`] takes it back. The same inode with the same
//!   first line resumes at the offset; another file (rotated while stg was down) is read from
//!   its start. A file met for the first time without a position is read from its end
//!   (`from_start` reads it all: what fail2ban does without its database). A file that
//!   appears after the tail found none is new: read from its start.
//! - **Partial lines** wait for their newline; a line longer than [`MAX_LINE`] is cut there
//!   (the cut part is still matched) and the rest up to its newline is skipped and counted.

use std::time::{Duration, Instant};

/// Longest line kept; longer ones are cut to it.
pub const MAX_LINE: usize = 8192;

/// Most bytes asked for in one read.
pub const READ_CHUNK: usize = 64 * 1024;

/// How long a replaced file must stay without growth before the new one is read.
pub const REPLACED_GRACE: Duration = Duration::from_millis(500);

/// Which file: device and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileId {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
}

/// What `stat` says of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// Which file.
    pub id: FileId,
    /// Its length.
    pub len: u64,
}

/// Where a tail stands, to persist and resume from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// The file.
    pub id: FileId,
    /// The offset of the next line to read.
    pub offset: u64,
    /// [`head_hash`] of the file's first line, when it was complete.
    pub head: Option<u64>,
    /// The offset is inside a line that was too long: skip to its end.
    pub skipping: bool,
}

impl Position {
    /// One line of text: `v1 <dev> <ino> <offset> <head hex or -> <skipping 0/1>`.
    pub fn encode(&self) -> String {
        format!(
            "v1 {} {} {} {} {}",
            self.id.dev,
            self.id.ino,
            self.offset,
            self.head.map_or("-".to_owned(), |h| format!("{h:016x}")),
            u8::from(self.skipping)
        )
    }

    /// The reverse of [`Position::encode`]; `None` for anything else.
    pub fn decode(s: &str) -> Option<Self> {
        let mut it = s.split_ascii_whitespace();
        if it.next()? != "v1" {
            return None;
        }
        let dev = it.next()?.parse().ok()?;
        let ino = it.next()?.parse().ok()?;
        let offset = it.next()?.parse().ok()?;
        let head = match it.next()? {
            "-" => None,
            h => Some(u64::from_str_radix(h, 16).ok()?),
        };
        let skipping = match it.next()? {
            "0" => false,
            "1" => true,
            _ => return None,
        };
        if it.next().is_some() {
            return None;
        }
        Some(Self {
            id: FileId { dev, ino },
            offset,
            head,
            skipping,
        })
    }
}

/// What the shell does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Open the path (closing the open file, if any), then [`Tail::opened`] or
    /// [`Tail::open_failed`].
    Open,
    /// Read the open file's first `max` bytes (or fewer), then [`Tail::head`].
    Head {
        /// At most this many.
        max: usize,
    },
    /// Read the open file at `offset`, at most `max` bytes, then [`Tail::read`].
    Read {
        /// Where.
        offset: u64,
        /// At most this many.
        max: usize,
    },
    /// Nothing until the next poll.
    Wait,
}

/// Counts for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TailStats {
    /// Lines yielded.
    pub lines: u64,
    /// Lines cut at [`MAX_LINE`].
    pub cut: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Files replaced at the path (rotation by rename).
    pub rotations: u64,
    /// Truncations seen.
    pub truncations: u64,
    /// Saved positions that did not match the file (another first line).
    pub resume_mismatches: u64,
}

#[derive(Debug)]
enum State {
    /// No file open.
    Closed,
    /// Opened with a saved position whose head is to be checked.
    Checking {
        id: FileId,
        len: u64,
        saved: Position,
    },
    /// Reading.
    Open {
        id: FileId,
        /// Bytes consumed (lines yielded plus `pending`).
        offset: u64,
        head: Option<u64>,
        /// When the path was first seen naming another file while this one was at its end.
        replaced_since: Option<Instant>,
    },
}

/// One followed file.
#[derive(Debug)]
pub struct Tail {
    state: State,
    /// The unfinished last line.
    pending: Vec<u8>,
    /// Inside a cut line: bytes are dropped up to the next newline.
    skipping: bool,
    /// A position from an earlier run, used at the first open.
    saved: Option<Position>,
    /// Whether a file was opened yet (a file met first is read from its end).
    opened_once: bool,
    /// The path named no file before any was opened: the first one is new, read whole.
    absent_first: bool,
    from_start: bool,
    stats: TailStats,
}

/// The hash of a first line as [`Position::head`] keeps it: FNV-1a over at most
/// [`MAX_LINE`] bytes (stable across builds and processes).
pub fn head_hash(line: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in &line[..line.len().min(MAX_LINE)] {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The head hash of a file whose first bytes are `bytes`; `None` while its first line is
/// unfinished.
fn head_of(bytes: &[u8]) -> Option<u64> {
    let window = &bytes[..bytes.len().min(MAX_LINE + 1)];
    match memchr::memchr(b'\n', window) {
        Some(i) => Some(head_hash(&window[..i])),
        None if bytes.len() >= MAX_LINE => Some(head_hash(&bytes[..MAX_LINE])),
        None => None,
    }
}

impl Tail {
    /// A tail resuming from `saved` (an earlier run's [`Tail::position`]); `from_start`: a
    /// file without a saved position is read from its start rather than its end.
    pub fn new(saved: Option<Position>, from_start: bool) -> Self {
        Self {
            state: State::Closed,
            pending: Vec::new(),
            skipping: false,
            saved,
            opened_once: false,
            absent_first: false,
            from_start,
            stats: TailStats::default(),
        }
    }

    /// Counts for metrics.
    pub fn stats(&self) -> TailStats {
        self.stats
    }

    /// Where to resume after a restart; `None` before a file was opened (the saved one, if
    /// any, still holds).
    pub fn position(&self) -> Option<Position> {
        match &self.state {
            State::Open {
                id, offset, head, ..
            } => Some(Position {
                id: *id,
                offset: offset - self.pending.len() as u64,
                head: *head,
                skipping: self.skipping,
            }),
            State::Checking { saved, .. } => Some(*saved),
            State::Closed => self.saved,
        }
    }

    /// When to poll again though no file event came: the end of [`REPLACED_GRACE`] after
    /// the path was seen naming another file; `None`: not before the file changes.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Open {
                replaced_since: Some(since),
                ..
            } => Some(*since + REPLACED_GRACE),
            _ => None,
        }
    }

    /// The next step, given the path's `stat` and the open file's `fstat` (`None`: no such
    /// file, or none open) at `now`. Lines an unfinished rotation flushes go to `line`.
    pub fn poll(
        &mut self,
        now: Instant,
        path: Option<Stat>,
        open: Option<Stat>,
        mut line: impl FnMut(&[u8]),
    ) -> Step {
        match &mut self.state {
            State::Closed => {
                if path.is_some() {
                    Step::Open
                } else {
                    self.absent_first |= !self.opened_once;
                    Step::Wait
                }
            }
            State::Checking { .. } => Step::Head { max: MAX_LINE + 1 },
            State::Open {
                id,
                offset,
                head,
                replaced_since,
            } => {
                let Some(open) = open.filter(|o| o.id == *id) else {
                    // The handle is gone (an error): start over from the path.
                    self.state = State::Closed;
                    return if path.is_some() {
                        Step::Open
                    } else {
                        Step::Wait
                    };
                };
                if open.len < *offset {
                    self.stats.truncations += 1;
                    *offset = 0;
                    *head = None;
                    *replaced_since = None;
                    self.pending.clear();
                    self.skipping = false;
                }
                if open.len > *offset {
                    *replaced_since = None;
                    let max = (open.len - *offset).min(READ_CHUNK as u64) as usize;
                    return Step::Read {
                        offset: *offset,
                        max,
                    };
                }
                match path {
                    Some(p) if p.id != *id => {
                        let since = *replaced_since.get_or_insert(now);
                        if now.saturating_duration_since(since) < REPLACED_GRACE {
                            return Step::Wait;
                        }
                        // The old file is finished: its last line will get no newline.
                        if !self.pending.is_empty() && !self.skipping {
                            self.stats.lines += 1;
                            line(&self.pending);
                        }
                        self.pending.clear();
                        self.skipping = false;
                        self.stats.rotations += 1;
                        self.state = State::Closed;
                        Step::Open
                    }
                    _ => {
                        *replaced_since = None;
                        Step::Wait
                    }
                }
            }
        }
    }

    /// The shell opened the path; `stat` is the new file's.
    pub fn opened(&mut self, stat: Stat) {
        let first = !self.opened_once;
        self.opened_once = true;
        self.pending.clear();
        self.skipping = false;
        let saved = if first { self.saved.take() } else { None };
        self.saved = None;
        self.state = match saved {
            Some(s) if s.id == stat.id && stat.len >= s.offset => {
                if s.head.is_some() {
                    State::Checking {
                        id: stat.id,
                        len: stat.len,
                        saved: s,
                    }
                } else {
                    self.skipping = s.skipping;
                    State::Open {
                        id: stat.id,
                        offset: s.offset,
                        head: None,
                        replaced_since: None,
                    }
                }
            }
            Some(_) => {
                // Another file than the saved one (rotated while stg was down), or the
                // same one truncated: its lines are all new.
                self.stats.resume_mismatches += 1;
                self.open_at(stat.id, 0)
            }
            None if first && !self.from_start && !self.absent_first && stat.len > 0 => {
                // Met for the first time: from its end, with its head for later resumes.
                State::Checking {
                    id: stat.id,
                    len: stat.len,
                    saved: Position {
                        id: stat.id,
                        offset: stat.len,
                        head: None,
                        skipping: false,
                    },
                }
            }
            None => self.open_at(stat.id, 0),
        };
    }

    fn open_at(&self, id: FileId, offset: u64) -> State {
        State::Open {
            id,
            offset,
            head: None,
            replaced_since: None,
        }
    }

    /// The shell could not open the path (it went away between `stat` and `open`).
    pub fn open_failed(&mut self) {
        self.state = State::Closed;
    }

    /// The open file's first bytes, as [`Step::Head`] asked.
    pub fn head(&mut self, bytes: &[u8]) {
        let State::Checking { id, len, saved } = self.state else {
            return;
        };
        let head = head_of(bytes);
        let resume = match saved.head {
            // First meeting: from the end, whatever the head.
            None => true,
            Some(h) => head == Some(h),
        };
        let (offset, skipping) = if resume {
            (saved.offset.min(len), saved.skipping)
        } else {
            self.stats.resume_mismatches += 1;
            (0, false)
        };
        self.skipping = skipping && offset > 0;
        self.state = State::Open {
            id,
            offset,
            head: if resume { head } else { None },
            replaced_since: None,
        };
    }

    /// Bytes read at the offset [`Step::Read`] gave; each complete line (without its
    /// newline, cut at [`MAX_LINE`]) goes to `line`.
    pub fn read(&mut self, bytes: &[u8], mut line: impl FnMut(&[u8])) {
        let State::Open { offset, head, .. } = &mut self.state else {
            return;
        };
        self.stats.bytes += bytes.len() as u64;
        // The file offset of `bytes[0]`.
        let base = *offset;
        *offset += bytes.len() as u64;
        let mut pos = 0;
        while pos < bytes.len() {
            let rest = &bytes[pos..];
            // Where the line being completed starts in the file (0: the head).
            let line_start = base + pos as u64 - self.pending.len() as u64;
            let newline = memchr::memchr(b'\n', rest);
            let part = &rest[..newline.unwrap_or(rest.len())];
            pos += newline.map_or(rest.len(), |i| i + 1);
            if self.skipping {
                self.skipping = newline.is_none();
                continue;
            }
            let room = MAX_LINE - self.pending.len();
            let cut = part.len() > room;
            if newline.is_none() && !cut {
                self.pending.extend_from_slice(part);
                continue;
            }
            let whole: &[u8] = if self.pending.is_empty() && !cut {
                part
            } else {
                self.pending
                    .extend_from_slice(&part[..part.len().min(room)]);
                &self.pending
            };
            self.stats.lines += 1;
            if cut {
                self.stats.cut += 1;
                // The rest of a line cut before its newline is skipped.
                self.skipping = newline.is_none();
            }
            if line_start == 0 {
                *head = Some(head_hash(whole));
            }
            line(whole);
            self.pending.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file in memory with an inode, and a driver that plays the shell.
    struct Fake {
        path: Option<(FileId, Vec<u8>)>,
        /// The file the tail holds open (its content as it is now).
        open: Option<(FileId, Vec<u8>)>,
    }

    fn id(ino: u64) -> FileId {
        FileId { dev: 1, ino }
    }

    impl Fake {
        fn new(ino: u64, content: &[u8]) -> Self {
            Self {
                path: Some((id(ino), content.to_vec())),
                open: None,
            }
        }

        /// The writer appends to the file at the path, and to the open one when it is
        /// the same.
        fn append(&mut self, s: &str) {
            let (pid, c) = self.path.as_mut().unwrap();
            c.extend_from_slice(s.as_bytes());
            if let Some((oid, o)) = &mut self.open {
                if oid == pid {
                    *o = c.clone();
                }
            }
        }

        /// One poll round, to its Wait; the lines yielded.
        fn poll(&mut self, tail: &mut Tail, now: Instant) -> Vec<String> {
            let mut lines = Vec::new();
            for _ in 0..100_000 {
                let stat = |f: &Option<(FileId, Vec<u8>)>| {
                    f.as_ref().map(|(i, c)| Stat {
                        id: *i,
                        len: c.len() as u64,
                    })
                };
                let step = tail.poll(now, stat(&self.path), stat(&self.open), |l| {
                    lines.push(String::from_utf8_lossy(l).into_owned());
                });
                match step {
                    Step::Wait => return lines,
                    Step::Open => match &self.path {
                        Some(p) => {
                            self.open = Some(p.clone());
                            tail.opened(stat(&self.open).unwrap());
                        }
                        None => tail.open_failed(),
                    },
                    Step::Head { max } => {
                        let c = &self.open.as_ref().unwrap().1;
                        tail.head(&c[..c.len().min(max)]);
                    }
                    Step::Read { offset, max } => {
                        let c = &self.open.as_ref().unwrap().1;
                        let o = offset as usize;
                        // Short reads, as a real file may give.
                        let end = (o + max.min(7)).min(c.len());
                        tail.read(&c[o..end], |l| {
                            lines.push(String::from_utf8_lossy(l).into_owned());
                        });
                    }
                }
            }
            panic!("no Wait after 100,000 steps");
        }
    }

    fn t0() -> Instant {
        #[allow(clippy::disallowed_methods)]
        Instant::now()
    }

    #[test]
    fn lines_partial_lines_and_a_file_met_first_from_its_end() {
        let t = t0();
        let mut f = Fake::new(1, b"old 1\nold 2\n");
        let mut tail = Tail::new(None, false);
        assert!(f.poll(&mut tail, t).is_empty(), "read from the end");
        f.append("new 1\nnew ");
        assert_eq!(f.poll(&mut tail, t), ["new 1"]);
        f.append("2\n");
        assert_eq!(f.poll(&mut tail, t), ["new 2"]);
        let mut f = Fake::new(1, b"old 1\nold 2\n");
        let mut tail = Tail::new(None, true);
        assert_eq!(f.poll(&mut tail, t), ["old 1", "old 2"], "from_start");
    }

    #[test]
    fn rotation_by_rename_finishes_the_old_file_then_reads_the_new() {
        let t = t0();
        let mut f = Fake::new(1, b"");
        let mut tail = Tail::new(None, false);
        // Opened while empty: what follows is new.
        assert!(f.poll(&mut tail, t).is_empty());
        f.append("a\n");
        assert_eq!(f.poll(&mut tail, t), ["a"]);
        // Renamed away; the writer still writes into the old file for a moment.
        let old = f.path.take().unwrap();
        f.path = Some((id(2), b"n1\n".to_vec()));
        f.open = Some((old.0, b"a\nb\nunfinished".to_vec()));
        assert_eq!(f.poll(&mut tail, t), ["b"], "the old file first");
        assert!(f.poll(&mut tail, t + Duration::from_millis(100)).is_empty());
        // A shell woken only by events of the path must still come back when the grace ends.
        assert_eq!(tail.poll_timeout(), Some(t + REPLACED_GRACE));
        // The grace passed without growth: the old file's last line, then the new file
        // from its start.
        let got = f.poll(&mut tail, t + Duration::from_millis(700));
        assert_eq!(got, ["unfinished", "n1"]);
        assert_eq!(tail.stats().rotations, 1);
        assert_eq!(tail.poll_timeout(), None);
        f.append("n2\n");
        assert_eq!(f.poll(&mut tail, t + Duration::from_secs(1)), ["n2"]);
        // A path that vanishes (deleted, the new file not created yet) changes nothing.
        f.path = None;
        assert!(f.poll(&mut tail, t + Duration::from_secs(2)).is_empty());
    }

    #[test]
    fn a_file_that_appears_after_none_was_found_is_read_from_its_start() {
        let t = t0();
        let mut f = Fake::new(1, b"");
        f.path = None;
        let mut tail = Tail::new(None, false);
        assert!(f.poll(&mut tail, t).is_empty());
        assert_eq!(tail.poll_timeout(), None);
        // Created and written between two polls: every line is new.
        f.path = Some((id(1), b"one\ntwo\n".to_vec()));
        assert_eq!(f.poll(&mut tail, t), ["one", "two"]);
    }

    #[test]
    fn truncation_reads_again_from_the_start() {
        let t = t0();
        let mut f = Fake::new(1, b"");
        let mut tail = Tail::new(None, false);
        // Opened while empty: what follows is new.
        assert!(f.poll(&mut tail, t).is_empty());
        f.append("one\ntwo\n");
        assert_eq!(f.poll(&mut tail, t), ["one", "two"]);
        // copytruncate: same inode, emptied, then written again.
        f.path.as_mut().unwrap().1.clear();
        f.append("x\n");
        assert_eq!(f.poll(&mut tail, t), ["x"]);
        assert_eq!(tail.stats().truncations, 1);
    }

    #[test]
    fn resume_after_restart_same_file_other_file_and_changed_head() {
        let t = t0();
        let mut f = Fake::new(1, b"");
        let mut tail = Tail::new(None, false);
        // Opened while empty: what follows is new.
        assert!(f.poll(&mut tail, t).is_empty());
        f.append("first\nsecond\nthi");
        assert_eq!(f.poll(&mut tail, t), ["first", "second"]);
        let pos = tail.position().unwrap();
        assert_eq!(pos.offset, 13, "at the start of the unfinished line");
        assert_eq!(pos.head, Some(head_hash(b"first")));
        let pos = Position::decode(&pos.encode()).unwrap();
        // Restarted: the same file goes on where it stopped, nothing counted twice.
        f.append("rd\n");
        f.open = None;
        let mut tail = Tail::new(Some(pos), false);
        assert_eq!(f.poll(&mut tail, t), ["third"]);
        // Restarted after a rotation while down: the new file is read from its start.
        let mut g = Fake::new(9, b"fresh 1\nfresh 2\n");
        let mut tail = Tail::new(Some(pos), false);
        assert_eq!(g.poll(&mut tail, t), ["fresh 1", "fresh 2"]);
        // The same inode with another first line (reused inode): from the start too.
        let mut h = Fake::new(1, b"other first line\nand more lines here\n");
        let mut tail = Tail::new(Some(pos), false);
        assert_eq!(h.poll(&mut tail, t).len(), 2);
        assert_eq!(tail.stats().resume_mismatches, 1);
        // A file shorter than the position: truncated while down.
        let mut k = Fake::new(1, b"fi\n");
        let mut tail = Tail::new(Some(pos), false);
        assert_eq!(k.poll(&mut tail, t), ["fi"]);
        assert_eq!(Position::decode("v2 1 2 3 - 0"), None);
        assert_eq!(Position::decode("v1 1 2 3 zz 0"), None);
        assert_eq!(Position::decode("v1 1 2 3 - 0 extra"), None);
    }

    #[test]
    fn long_lines_are_cut_and_counted_and_the_rest_skipped() {
        let t = t0();
        let mut f = Fake::new(1, b"");
        let mut tail = Tail::new(None, true);
        let long = "L".repeat(MAX_LINE * 2 + 5);
        f.append(&format!("{long}\nshort\n"));
        let got = f.poll(&mut tail, t);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].len(), MAX_LINE);
        assert_eq!(got[1], "short");
        assert_eq!(tail.stats().cut, 1);
        // Exactly MAX_LINE is not cut; the head hash of a long first line matches what
        // a Head read computes after a restart.
        let exact = "E".repeat(MAX_LINE);
        f.append(&format!("{exact}\n"));
        assert_eq!(f.poll(&mut tail, t), [exact]);
        assert_eq!(tail.stats().cut, 1);
        let pos = tail.position().unwrap();
        assert_eq!(pos.head, head_of(long.as_bytes()));
        // Restarted in the middle of a cut line: the rest is skipped, not a new line.
        let mut g = Fake::new(2, b"");
        let mut tail = Tail::new(None, true);
        g.append(&"M".repeat(MAX_LINE + 100));
        assert_eq!(g.poll(&mut tail, t).len(), 1);
        let pos = tail.position().unwrap();
        assert!(pos.skipping);
        g.append("tail of the long line\nnext\n");
        g.open = None;
        let mut tail = Tail::new(Some(pos), true);
        assert_eq!(g.poll(&mut tail, t), ["next"]);
    }
}
