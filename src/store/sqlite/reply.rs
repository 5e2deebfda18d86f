//! The one-shot answer to a caller of group commit: its write's result, the call to lead the
//! next batch, or word that its write was lost.
//!
//! The caller parks its own thread and whoever answers unparks it, which costs a system call
//! only when the caller has really gone to sleep. A channel receiver spins and yields before it
//! sleeps; with 64 handler threads on two cores those yields were a measurable share of each
//! request's CPU time.

use std::sync::{Arc, Mutex};
use std::thread::{self, Thread};

use super::group_commit::lock;
use crate::error::Result;

pub enum Message<T> {
    Done(Result<T>),
    Lead,
    /// The write was dropped unanswered: the leader running it panicked.
    Lost,
}

struct Slot<T> {
    message: Mutex<Option<Message<T>>>,
    waiter: Thread,
}

impl<T> Slot<T> {
    /// Leaves `message` unless one is already waiting to be read, then wakes the caller.
    fn offer(&self, message: Message<T>) {
        {
            let mut slot = lock(&self.message);
            if slot.is_some() {
                return;
            }
            *slot = Some(message);
        }
        self.waiter.unpark();
    }
}

/// Delivers the result; reports the write lost if dropped without delivering.
pub struct Reply<T> {
    slot: Arc<Slot<T>>,
    answered: bool,
}

/// What the calling thread waits on.
pub struct Outcome<T> {
    slot: Arc<Slot<T>>,
}

/// Calls the caller to lead; may be used while its reply is still pending.
pub struct LeaderCall<T> {
    slot: Arc<Slot<T>>,
}

/// A reply for a write made by the current thread, which must be the one that waits.
pub fn reply_slot<T>() -> (Reply<T>, Outcome<T>) {
    let slot = Arc::new(Slot {
        message: Mutex::new(None),
        waiter: thread::current(),
    });
    let reply = Reply {
        slot: Arc::clone(&slot),
        answered: false,
    };
    (reply, Outcome { slot })
}

impl<T> Reply<T> {
    pub fn send(mut self, result: Result<T>) {
        self.answered = true;
        self.slot.offer(Message::Done(result));
    }

    pub fn leader_call(&self) -> LeaderCall<T> {
        LeaderCall {
            slot: Arc::clone(&self.slot),
        }
    }
}

impl<T> Drop for Reply<T> {
    fn drop(&mut self) {
        if !self.answered {
            self.slot.offer(Message::Lost);
        }
    }
}

impl<T> LeaderCall<T> {
    /// A caller is called to lead only while its write is still queued, so the slot is empty:
    /// the result comes after the caller has read this call and run its batch.
    pub fn call(&self) {
        self.slot.offer(Message::Lead);
    }
}

impl<T> Outcome<T> {
    /// Blocks until a message arrives. Parking may return early (a wake-up meant for an earlier
    /// reply of this thread, or spuriously), so the slot is checked each time.
    pub fn wait(&self) -> Message<T> {
        loop {
            if let Some(message) = lock(&self.slot.message).take() {
                return message;
            }
            thread::park();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn a_result_sent_from_another_thread_wakes_the_caller() {
        let (reply, outcome) = reply_slot::<u32>();
        let sender = thread::spawn(move || reply.send(Ok(7)));
        assert!(matches!(outcome.wait(), Message::Done(Ok(7))));
        sender.join().unwrap();
    }

    #[test]
    fn the_call_to_lead_comes_before_the_result() {
        let (reply, outcome) = reply_slot::<u32>();
        reply.leader_call().call();
        assert!(matches!(outcome.wait(), Message::Lead));
        reply.send(Err(Error::Internal("x".into())));
        assert!(matches!(outcome.wait(), Message::Done(Err(_))));
    }

    #[test]
    fn a_reply_dropped_unanswered_reports_the_write_lost() {
        let (reply, outcome) = reply_slot::<u32>();
        thread::spawn(move || drop(reply)).join().unwrap();
        assert!(matches!(outcome.wait(), Message::Lost));
    }
}
