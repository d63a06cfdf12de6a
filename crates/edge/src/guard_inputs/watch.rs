//! Wakes a log tail as soon as its file changes: one inotify instance for the node, one
//! watch per directory of a followed log (not per file: a watch on a file follows its inode
//! away at a rename rotation, and sees neither a file created later nor the new file of a
//! rotation). An event names the entry it is about; the tail whose file name matches is
//! woken, the others are not.
//!
//! Waking is a hint, never the only way a tail reads: each tail still polls every
//! `guard.tail_poll`, which covers what inotify does not see (NFS, some overlay and bind
//! mounts, a log path that is a symlink, no inotify at all, the watch limit reached) and
//! events lost when the kernel's queue overflows (then every tail is woken).
//!
//! Bursts coalesce twice: the kernel merges identical unread events, and a tail's
//! [`Notify`] holds at most one permit, so a write storm costs at most one poll round in
//! flight per file and one more after it.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How often a directory that could not be watched is tried again (it may be created later,
/// or watches freed); its tails poll meanwhile.
const REARM: Duration = Duration::from_secs(5);

/// Room for about 250 events with short names per read.
const EVENT_BUFFER: usize = 16 * 1024;

/// The directory entries' changes that can concern a followed file: written or truncated,
/// created, renamed to or from, deleted; and the directory itself going away.
fn mask() -> WatchMask {
    WatchMask::MODIFY
        | WatchMask::CREATE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::DELETE
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::ONLYDIR
}

/// The followed files, by directory, each with its tail's waker.
#[derive(Default)]
pub(super) struct LogWatch {
    dirs: Vec<Dir>,
}

struct Dir {
    path: PathBuf,
    files: Vec<(OsString, Arc<Notify>)>,
    /// Its watch, while the directory is watched.
    wd: Option<WatchDescriptor>,
    /// A failure to watch it was logged (once, not at each retry).
    warned: bool,
}

impl LogWatch {
    /// Registers `path` and returns the waker of its tail.
    pub(super) fn add(&mut self, path: &Path) -> Arc<Notify> {
        let wake = Arc::new(Notify::new());
        let Some(name) = path.file_name() else {
            // No file name (`/`, `..`): nothing an event could name; the poll serves it.
            return wake;
        };
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let i = match self.dirs.iter().position(|d| d.path == dir) {
            Some(i) => i,
            None => {
                self.dirs.push(Dir {
                    path: dir,
                    files: Vec::new(),
                    wd: None,
                    warned: false,
                });
                self.dirs.len() - 1
            }
        };
        self.dirs[i].files.push((name.to_owned(), wake.clone()));
        wake
    }

    /// Watches until `stop`; returns at once if inotify is not to be had (logged once: the
    /// tails poll).
    pub(super) async fn run(mut self, stop: CancellationToken) {
        if self.dirs.is_empty() {
            return;
        }
        let stream = Inotify::init().and_then(|i| i.into_event_stream(vec![0u8; EVENT_BUFFER]));
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                metrics::counter!("stg_guard_tail_watch_errors_total").increment(1);
                tracing::warn!(error = %e, "guard: no inotify; followed logs are polled every guard.tail_poll");
                return;
            }
        };
        let mut watches = stream.watches();
        self.arm(&mut watches);
        let mut rearm = tokio::time::interval(REARM);
        rearm.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let unwatched = self.dirs.iter().any(|d| d.wd.is_none());
            tokio::select! {
                () = stop.cancelled() => return,
                _ = rearm.tick(), if unwatched => self.arm(&mut watches),
                ev = stream.next() => match ev {
                    Some(Ok(ev)) => self.handle(&mut watches, &ev.wd, ev.mask, ev.name.as_deref()),
                    Some(Err(e)) => {
                        metrics::counter!("stg_guard_tail_watch_errors_total").increment(1);
                        tracing::warn!(error = %e, "guard: inotify failed; followed logs are polled every guard.tail_poll");
                        self.wake_all();
                        return;
                    }
                    None => return,
                },
            }
        }
    }

    /// Watches each directory not watched yet.
    fn arm(&mut self, watches: &mut Watches) {
        for d in self.dirs.iter_mut().filter(|d| d.wd.is_none()) {
            match watches.add(&d.path, mask()) {
                Ok(wd) => {
                    d.wd = Some(wd);
                    if d.warned {
                        tracing::info!(dir = %d.path.display(), "guard: log directory watched again");
                    }
                    d.warned = false;
                    // What changed before the watch existed was not seen.
                    d.wake();
                }
                Err(e) => {
                    if !d.warned {
                        metrics::counter!("stg_guard_tail_watch_errors_total").increment(1);
                        tracing::warn!(error = %e, dir = %d.path.display(), "guard: log directory not watched (polled; tried again every 5 s)");
                        d.warned = true;
                    }
                }
            }
        }
    }

    fn handle(
        &mut self,
        watches: &mut Watches,
        wd: &WatchDescriptor,
        mask: EventMask,
        name: Option<&OsStr>,
    ) {
        if mask.contains(EventMask::Q_OVERFLOW) {
            // Events were lost: any file may have changed.
            metrics::counter!("stg_guard_tail_watch_overflows_total").increment(1);
            self.wake_all();
            return;
        }
        let gone =
            mask.intersects(EventMask::IGNORED | EventMask::DELETE_SELF | EventMask::MOVE_SELF);
        // Two configured directories may be one (`.` and its absolute path): one watch.
        for d in self.dirs.iter_mut().filter(|d| d.wd.as_ref() == Some(wd)) {
            if gone {
                // The directory went away, or moved and took the watch along: watch the
                // path again once it names a directory.
                if mask.contains(EventMask::MOVE_SELF) {
                    let _ = watches.remove(wd.clone());
                }
                d.wd = None;
                d.wake();
                continue;
            }
            let Some(name) = name else { continue };
            for (file, wake) in &d.files {
                if file == name {
                    wake.notify_one();
                }
            }
        }
    }

    fn wake_all(&self) {
        for d in &self.dirs {
            d.wake();
        }
    }
}

impl Dir {
    fn wake(&self) {
        for (_, wake) in &self.files {
            wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of its own under the system's temporary one, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let p = std::env::temp_dir().join(format!("stg-watch-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Whether `n` was woken since it was last asked, once the watcher has handled every
    /// event queued so far (a paused clock moves only when every task waits, and the kernel
    /// queues an event within the write's own system call).
    async fn woken(n: &Notify) -> bool {
        tokio::time::sleep(Duration::from_millis(1)).await;
        tokio::time::timeout(Duration::ZERO, n.notified())
            .await
            .is_ok()
    }

    fn append(path: &Path, text: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_tail_whose_file_changed_is_woken_and_a_burst_is_one_wake() {
        let dir = TempDir::new("names");
        let (a_path, b_path) = (dir.0.join("a.log"), dir.0.join("b.log"));
        let mut w = LogWatch::default();
        let a = w.add(&a_path);
        let b = w.add(&b_path);
        let stop = CancellationToken::new();
        let task = tokio::spawn(w.run(stop.clone()));
        // Arming wakes both: what changed before the watch was in was not seen.
        assert!(woken(&a).await && woken(&b).await);
        assert!(!woken(&a).await && !woken(&b).await);

        append(&a_path, "x\n");
        assert!(woken(&a).await, "created");
        assert!(!woken(&b).await, "another file's change");
        // A burst of writes while the tail is busy: one wake, so one more round.
        for _ in 0..100 {
            append(&a_path, "y\n");
        }
        assert!(woken(&a).await);
        assert!(!woken(&a).await, "one wake for the burst");
        // Rotation by rename: the name leaves (the tail sees its path gone), then returns.
        append(&b_path, "b\n");
        assert!(woken(&b).await);
        std::fs::rename(&b_path, dir.0.join("b.log.1")).unwrap();
        assert!(woken(&b).await, "renamed away");
        // The writer still writes to the renamed file: no event names b.log (the tail's
        // rotation grace brings it back to read that).
        append(&dir.0.join("b.log.1"), "late\n");
        assert!(!woken(&b).await);
        append(&b_path, "new\n");
        assert!(woken(&b).await, "created again");
        // Truncation (copytruncate).
        std::fs::OpenOptions::new()
            .write(true)
            .open(&b_path)
            .unwrap()
            .set_len(0)
            .unwrap();
        assert!(woken(&b).await, "truncated");
        assert!(!woken(&a).await);
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_directory_created_later_is_watched_once_it_exists() {
        let dir = TempDir::new("later");
        let later = dir.0.join("later");
        let path = later.join("x.log");
        let mut w = LogWatch::default();
        let x = w.add(&path);
        let stop = CancellationToken::new();
        let task = tokio::spawn(w.run(stop.clone()));
        assert!(!woken(&x).await, "nothing to watch yet");
        std::fs::create_dir(&later).unwrap();
        // Armed within one retry period, which wakes the tail.
        tokio::time::sleep(REARM).await;
        assert!(woken(&x).await);
        append(&path, "x\n");
        assert!(woken(&x).await);
        // The directory removed, then made again: watched again.
        std::fs::remove_dir_all(&later).unwrap();
        assert!(woken(&x).await, "gone");
        std::fs::create_dir(&later).unwrap();
        assert!(!woken(&x).await);
        tokio::time::sleep(REARM).await;
        assert!(woken(&x).await);
        append(&path, "x\n");
        assert!(woken(&x).await);
        stop.cancel();
        task.await.unwrap();
    }
}
