//! The attempts running right now, so that a cancel (or a delete) can stop one. A worker
//! registers each attempt before it runs and removes it after its outcome is recorded; the
//! queue looks an attempt up by job id and `started_at` (the attempt's token) and drops its
//! cancel sender, which wakes the attempt's watchdog at once.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::job::Job;

type Key = (String, Option<i64>);

enum Slot {
    /// Dropping the sender cancels the attempt; it is held for that alone.
    Running(#[allow(dead_code)] Sender<()>),
    /// Cancelled: its sender is dropped, or, if the cancel came between the claim and the
    /// worker's registration, the attempt starts already cancelled.
    Cancelled,
}

#[derive(Default)]
pub struct RunningAttempts {
    /// Keyed by job id and the attempt's `started_at`; the lock is held only to look up.
    slots: Mutex<HashMap<Key, Slot>>,
}

impl RunningAttempts {
    /// Registers the attempt the worker is about to run; returns the receiver its watchdog
    /// waits on, which closes when the attempt is cancelled.
    pub fn start(&self, job: &Job) -> Receiver<()> {
        let (cancel, cancelled) = bounded(0);
        let mut slots = self.lock();
        match slots.get(&key(job)) {
            Some(Slot::Cancelled) => drop(cancel),
            _ => {
                slots.insert(key(job), Slot::Running(cancel));
            }
        }
        cancelled
    }

    /// Forgets the attempt once its outcome is recorded.
    pub fn end(&self, job: &Job) {
        self.lock().remove(&key(job));
    }

    /// Cancels the attempt of job `id` that started at `started_at`. Called only while the
    /// database says that attempt is running, so an unregistered attempt is one about to start.
    pub fn cancel(&self, id: &str, started_at: Option<i64>) {
        // Replacing a running slot drops its sender, which is the cancel.
        self.lock()
            .insert((id.to_string(), started_at), Slot::Cancelled);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Slot>> {
        // The map stays consistent whatever a panicking holder was doing.
        self.slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn key(job: &Job) -> Key {
    (job.id.clone(), job.started_at.map(|at| at.as_micros()))
}
