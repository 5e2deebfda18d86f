//! The attempts running on this node right now, so that a cancel (or a delete) can stop one.
//! A worker registers each attempt before it runs and removes it after its outcome is
//! recorded; the queue (or the lease keeper, for a cancel made on another node) looks an
//! attempt up by job id and attempt number and drops its cancel sender, which wakes the
//! attempt's watchdog at once.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::job::Job;

type Key = (String, u32);

enum Slot {
    /// Dropping the sender cancels the attempt; it is held for that alone.
    Running(#[allow(dead_code)] Sender<()>),
    /// Cancelled: its sender is dropped, or, if the cancel came between the claim and the
    /// worker's registration, the attempt starts already cancelled.
    Cancelled,
}

#[derive(Default)]
pub struct RunningAttempts {
    /// Keyed by job id and attempt number; the lock is held only to look up.
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

    /// Cancels attempt `attempt` of job `id`. Called only while the database says that attempt
    /// runs on this node, so an unregistered attempt is one about to start.
    pub fn cancel(&self, id: &str, attempt: u32) {
        // Replacing a running slot drops its sender, which is the cancel.
        self.lock()
            .insert((id.to_string(), attempt), Slot::Cancelled);
    }

    /// The attempts registered now, cancelled or not.
    pub fn registered(&self) -> Vec<(String, u32)> {
        self.lock().keys().cloned().collect()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Slot>> {
        // The map stays consistent whatever a panicking holder was doing.
        self.slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn key(job: &Job) -> Key {
    (job.id.clone(), job.attempt_number())
}
