//! The attempts running on this node right now, so that a cancel (or a delete) can stop one.
//! A worker registers each attempt before it runs and removes it after its outcome is
//! recorded; the queue (or the lease keeper, for a cancel made on another node) looks an
//! attempt up and drops its cancel sender, which wakes the attempt's watchdog at once.
//!
//! An attempt is keyed by its job, its number and when it was claimed: on SQLite a claim is
//! answered before it is committed, and one lost with a failed commit leaves the number to
//! be taken again by the next claim of the job; the claim time tells the two apart.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::job::Job;

type Key = (String, u32, Option<i64>);

/// How long a cancel that came before its attempt registered is kept for it: the worker
/// registers within moments of its claim, so an older one is for an attempt that has ended.
const EARLY_CANCEL_KEPT: Duration = Duration::from_secs(60);

enum Slot {
    /// Dropping the sender cancels the attempt; it is held for that alone.
    Running(#[allow(dead_code)] Sender<()>),
    /// Cancelled: its sender is dropped, or, if the cancel came between the claim and the
    /// worker's registration, the attempt starts already cancelled.
    Cancelled(Instant),
}

#[derive(Default)]
pub struct RunningAttempts {
    /// The lock is held only to look up.
    slots: Mutex<HashMap<Key, Slot>>,
    /// Attempts between `start` and `end`: the workers busy (`workers_busy`).
    busy: AtomicUsize,
}

impl RunningAttempts {
    /// Registers the attempt the worker is about to run; returns the receiver its watchdog
    /// waits on, which closes when the attempt is cancelled.
    pub fn start(&self, job: &Job) -> Receiver<()> {
        self.busy.fetch_add(1, Ordering::Relaxed);
        let (cancel, cancelled) = bounded(0);
        let mut slots = self.lock();
        match slots.get(&key(job)) {
            Some(Slot::Cancelled(_)) => drop(cancel),
            _ => {
                slots.insert(key(job), Slot::Running(cancel));
            }
        }
        cancelled
    }

    /// Forgets the attempt once its outcome is recorded.
    pub fn end(&self, job: &Job) {
        self.lock().remove(&key(job));
        let _ = self
            .busy
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// How many attempts run here now (each `start` not yet `end`ed).
    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::Relaxed)
    }

    /// Cancels the job's current attempt, which the database says runs on this node: if it
    /// has not registered yet, it starts cancelled.
    pub fn cancel(&self, job: &Job) {
        let mut slots = self.lock();
        // Early cancels whose attempt never came (it had ended) are dropped here.
        slots.retain(|_, slot| match slot {
            Slot::Cancelled(at) => at.elapsed() < EARLY_CANCEL_KEPT,
            Slot::Running(_) => true,
        });
        // Replacing a running slot drops its sender, which is the cancel.
        slots.insert(key(job), Slot::Cancelled(Instant::now()));
    }

    /// Cancels attempt `attempt` of job `id` if it is running here; `false` if it is not.
    pub fn cancel_if_running(&self, id: &str, attempt: u32) -> bool {
        let mut slots = self.lock();
        let running: Vec<Key> = slots
            .iter()
            .filter(|((job, number, _), slot)| {
                job == id && *number == attempt && matches!(slot, Slot::Running(_))
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in &running {
            slots.insert(key.clone(), Slot::Cancelled(Instant::now()));
        }
        !running.is_empty()
    }

    /// The attempts running here now, by job id and number.
    pub fn registered(&self) -> Vec<(String, u32)> {
        self.lock()
            .iter()
            .filter(|(_, slot)| matches!(slot, Slot::Running(_)))
            .map(|((id, attempt, _), _)| (id.clone(), *attempt))
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Slot>> {
        // The map stays consistent whatever a panicking holder was doing.
        self.slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn key(job: &Job) -> Key {
    (
        job.id.clone(),
        job.attempt_number(),
        job.started_at.map(|at| at.as_micros()),
    )
}
