//! Argon2 work off the async runtime, a bounded number at a time.
//!
//! Two caps: `max_hashing` hashes run at once (each on a blocking thread, holding a core and
//! the argon2 memory for tens of milliseconds), and at most `max_waiting` more logins wait
//! for a slot. A login beyond both is refused at once ([`Hashing::admit`] returns `None`):
//! a login flood then costs the node `max_hashing` cores and a bounded queue, and the SIP
//! core keeps the rest.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The hashing slots and the waiting room. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Hashing {
    /// Slots for running plus waiting logins.
    admit: Arc<Semaphore>,
    /// Slots for running hashes.
    run: Arc<Semaphore>,
    running: Arc<AtomicUsize>,
}

/// A login's place in the waiting room (or in a running slot), held until it is answered.
#[derive(Debug)]
pub(crate) struct Admitted(#[allow(dead_code)] OwnedSemaphorePermit);

impl Hashing {
    pub(crate) fn new(max_hashing: usize, max_waiting: usize) -> Self {
        let max_hashing = max_hashing.max(1);
        Self {
            admit: Arc::new(Semaphore::new(max_hashing.saturating_add(max_waiting))),
            run: Arc::new(Semaphore::new(max_hashing)),
            running: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// A place for one more login, or `None` when `max_hashing + max_waiting` are taken.
    pub(crate) fn admit(&self) -> Option<Admitted> {
        self.admit.clone().try_acquire_owned().ok().map(Admitted)
    }

    /// Runs `work` on a blocking thread once a hashing slot is free. The slot travels with
    /// the work, so a caller that gives up (client gone, future dropped) does not free it
    /// before the hash is done: the cap holds for CPU, not just for waiting futures.
    ///
    /// # Cancel safety
    /// Dropping the future while it waits for a slot gives up the wait; once the work has
    /// started it runs to its end on its thread, and its result is dropped.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        _admitted: &Admitted,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        // The semaphore is never closed, so acquiring only fails if it were.
        let slot = self.run.clone().acquire_owned().await.ok()?;
        let running = self.running.clone();
        let task = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let n = running.fetch_add(1, Ordering::SeqCst) + 1;
            metrics::gauge!("stg_portal_hashing").set(n as f64);
            let started = Instant::now();
            let out = work();
            metrics::histogram!("stg_portal_hash_seconds").record(started.elapsed().as_secs_f64());
            let n = running.fetch_sub(1, Ordering::SeqCst) - 1;
            metrics::gauge!("stg_portal_hashing").set(n as f64);
            out
        });
        // A panic inside argon2 would be a bug: the login fails, the node goes on.
        task.await.ok()
    }

    /// Hashes running now.
    #[cfg(test)]
    pub(crate) fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    /// Work that holds its slot until `release` is set (bounded: 5 s), recording the highest
    /// number of hashes seen running at once.
    fn work(
        h: &Hashing,
        peak: &Arc<AtomicUsize>,
        release: &Arc<AtomicBool>,
    ) -> impl FnOnce() + Send + 'static {
        let (h, peak, release) = (h.clone(), peak.clone(), release.clone());
        move || {
            peak.fetch_max(h.running(), Ordering::SeqCst);
            let until = Instant::now() + Duration::from_secs(5);
            while !release.load(Ordering::SeqCst) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    async fn settle(h: &Hashing, running: usize) {
        for _ in 0..2000 {
            if h.running() == running {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("{} running, expected {running}", h.running());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_max_hashing_run_and_max_waiting_wait() {
        let h = Hashing::new(2, 3);
        let peak = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(AtomicBool::new(false));
        let admitted: Vec<Admitted> = (0..5).map(|_| h.admit().unwrap()).collect();
        // The sixth login finds running and waiting slots all taken.
        assert!(h.admit().is_none());
        let mut tasks = Vec::new();
        for a in admitted {
            let (h2, w) = (h.clone(), work(&h, &peak, &release));
            tasks.push(tokio::spawn(async move { h2.run(&a, w).await }));
        }
        settle(&h, 2).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(h.running(), 2, "the cap holds while five want to run");
        release.store(true, Ordering::SeqCst);
        for t in tasks {
            assert_eq!(t.await.unwrap(), Some(()));
        }
        assert_eq!(peak.load(Ordering::SeqCst), 2);
        assert_eq!(h.running(), 0);
        // Everyone answered: the places are free again.
        assert!(h.admit().is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_that_gives_up_keeps_its_slot_until_the_hash_ends() {
        let h = Hashing::new(1, 4);
        let peak = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(AtomicBool::new(false));
        let a = h.admit().unwrap();
        let (h2, w) = (h.clone(), work(&h, &peak, &release));
        let first = tokio::spawn(async move { h2.run(&a, w).await });
        settle(&h, 1).await;
        // The client goes away: its future is dropped, its hash still runs.
        first.abort();
        let _ = first.await;
        assert_eq!(h.running(), 1);
        let b = h.admit().unwrap();
        let (h3, w) = (h.clone(), work(&h, &peak, &release));
        let second = tokio::spawn(async move { h3.run(&b, w).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(h.running(), 1, "the second waits for the abandoned one");
        release.store(true, Ordering::SeqCst);
        assert_eq!(second.await.unwrap(), Some(()));
        assert_eq!(peak.load(Ordering::SeqCst), 1);
    }
}
