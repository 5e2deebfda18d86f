//! Requests waiting for a job to end (`GET /jobs/:id?wait=N`): a registry from job id to the
//! waiters of that job, woken from the store's `job_ended` (a job that ended on this node) and
//! from the PostgreSQL listener (one that ended on another node, or "any may have", while
//! notifications do not arrive). It owns no job state: a woken waiter re-reads its job and
//! decides whether to wait on, so a spurious wake-up costs one read and a missed one at most
//! the rest of the wait.
//!
//! Each waiter holds a connection thread, so the registry admits at most `limit` at once
//! (half the connection slots, set at start); beyond that `register` says no and the request
//! answers at once. A waiter leaves the registry when it is dropped, however its wait ended.
//! Once `stop` is called (shutdown), every waiter is woken and told to answer, and no new one
//! is admitted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};

pub struct Waiters {
    /// Every waiter by job id; the lock is held only to add, remove or signal entries.
    waiting: Mutex<Waiting>,
    /// The most waiters admitted at once.
    limit: AtomicUsize,
    /// Set by `stop`: waiters answer now, new ones are not admitted.
    stopping: AtomicBool,
}

#[derive(Default)]
struct Waiting {
    by_job: HashMap<String, Vec<Entry>>,
    count: usize,
    next_key: u64,
}

struct Entry {
    key: u64,
    /// One slot: a wake-up that finds one waiting is already covered by it.
    wake: Sender<()>,
}

/// One request's wait for one job; leaves the registry when dropped.
pub struct Waiter<'a> {
    waiters: &'a Waiters,
    id: String,
    key: u64,
    woken: Receiver<()>,
}

impl Default for Waiters {
    fn default() -> Waiters {
        Waiters::new(usize::MAX)
    }
}

impl Waiters {
    pub fn new(limit: usize) -> Waiters {
        Waiters {
            waiting: Mutex::default(),
            limit: AtomicUsize::new(limit),
            stopping: AtomicBool::new(false),
        }
    }

    /// Admits at most `limit` waiters at once from now on.
    pub fn limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Release);
    }

    /// A waiter for the job `id`, or `None` when `limit` wait already or the registry stopped.
    /// Read the job after this: an end between that read and this registration would
    /// otherwise go unnoticed.
    pub fn register(&self, id: &str) -> Option<Waiter<'_>> {
        if self.is_stopping() {
            return None;
        }
        let (wake, woken) = bounded(1);
        let key = {
            let mut waiting = self.lock();
            if waiting.count >= self.limit.load(Ordering::Acquire) {
                return None;
            }
            waiting.count += 1;
            waiting.next_key += 1;
            let key = waiting.next_key;
            waiting
                .by_job
                .entry(id.to_string())
                .or_default()
                .push(Entry { key, wake });
            key
        };
        Some(Waiter {
            waiters: self,
            id: id.to_string(),
            key,
            woken,
        })
    }

    /// Wakes every waiter of the job `id`.
    pub fn wake(&self, id: &str) {
        if let Some(entries) = self.lock().by_job.get(id) {
            for entry in entries {
                let _ = entry.wake.try_send(());
            }
        }
    }

    /// Wakes every waiter: any job may have ended (notifications from other nodes do not
    /// arrive), or the server is stopping.
    pub fn wake_all(&self) {
        for entry in self.lock().by_job.values().flatten() {
            let _ = entry.wake.try_send(());
        }
    }

    /// Shutdown: every waiter answers now, and no new one waits.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.wake_all();
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// How many wait now.
    #[cfg(test)]
    pub fn count(&self) -> usize {
        self.lock().count
    }

    fn lock(&self) -> MutexGuard<'_, Waiting> {
        // The map stays consistent whatever panicked while holding it.
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Waiter<'_> {
    /// Blocks until this waiter is woken or `deadline` passes; `true` if it was woken.
    pub fn wait_until(&self, deadline: Instant) -> bool {
        let patience = deadline.saturating_duration_since(Instant::now());
        match self.woken.recv_timeout(patience) {
            Ok(()) => true,
            // The sender lives in the registry as long as this waiter does.
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => false,
        }
    }

    /// The server is stopping: answer now.
    pub fn stopping(&self) -> bool {
        self.waiters.is_stopping()
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let mut waiting = self.waiters.lock();
        let Some(entries) = waiting.by_job.get_mut(&self.id) else {
            return;
        };
        let before = entries.len();
        entries.retain(|entry| entry.key != self.key);
        let removed = before - entries.len();
        if entries.is_empty() {
            waiting.by_job.remove(&self.id);
        }
        waiting.count -= removed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;
    use std::time::Duration;

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn a_wake_reaches_the_waiters_of_its_job_only() {
        let waiters = Waiters::default();
        let first = waiters.register("a").unwrap();
        let second = waiters.register("a").unwrap();
        let other = waiters.register("b").unwrap();
        waiters.wake("a");
        assert!(first.wait_until(soon()));
        assert!(second.wait_until(soon()));
        assert!(!other.wait_until(Instant::now() + Duration::from_millis(50)));
        // A wake-up while none waits is kept for the next wait, once.
        waiters.wake("b");
        waiters.wake("b");
        assert!(other.wait_until(soon()));
        assert!(!other.wait_until(Instant::now()));
    }

    #[test]
    fn a_waiter_leaves_the_registry_however_its_wait_ended() {
        let waiters = Waiters::default();
        {
            let _timed_out = waiters.register("a").unwrap();
            let _woken = waiters.register("a").unwrap();
            let _elsewhere = waiters.register("b").unwrap();
            assert_eq!(waiters.count(), 3);
        }
        assert_eq!(waiters.count(), 0);
        assert!(waiters.lock().by_job.is_empty());
        thread::scope(|scope| {
            let dying = scope.spawn(|| {
                let _waiter = waiters.register("c").unwrap();
                panic!("a waiting request's handler panics");
            });
            assert!(dying.join().is_err());
        });
        assert_eq!(waiters.count(), 0);
    }

    #[test]
    fn beyond_the_limit_no_waiter_is_admitted_until_one_leaves() {
        let waiters = Waiters::new(2);
        let first = waiters.register("a").unwrap();
        let _second = waiters.register("b").unwrap();
        assert!(waiters.register("c").is_none());
        drop(first);
        assert!(waiters.register("c").is_some());
    }

    #[test]
    fn stop_wakes_every_waiter_and_admits_no_new_one() {
        let waiters = Waiters::default();
        thread::scope(|scope| {
            let waiting = scope.spawn(|| {
                let waiter = waiters.register("a").unwrap();
                let started = Instant::now();
                while !waiter.stopping() {
                    waiter.wait_until(started + Duration::from_secs(30));
                }
                started.elapsed()
            });
            while waiters.count() == 0 {
                thread::yield_now();
            }
            waiters.stop();
            assert!(waiting.join().unwrap() < Duration::from_secs(5));
        });
        assert!(waiters.register("a").is_none());
    }
}
