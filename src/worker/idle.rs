//! The idle/wake protocol: how a free worker finds its next job, sleeps until one is due, and
//! is woken. It owns the wake channel, the [`Waker`] that submits and retries use, and
//! `Sleepers`, where each sleeping worker publishes when it wakes by itself. It does not run
//! or record attempts (`attempt`) nor start and stop the threads (`pool`).
//!
//! The database is the queue. Workers claim work only when they are free, so a backlog of any
//! size costs no memory here; the wake channel only tells an idle worker "look again now".
//! It is bounded: when it is full, enough wake-ups are already on their way.
//!
//! A job scheduled for later needs no wake-up when a sleeping worker will wake by itself before
//! it is due: that worker reads the schedule when it wakes and sees the job. Each worker
//! publishes when it will wake (`Sleepers`). The one duty that comes with it: a worker that
//! wakes and takes a job is no longer watching the clock, so it hands the watch on first.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{bounded, never, select, Receiver, Sender, TryRecvError};
use log::{debug, error};

use super::jobs::Jobs;
use super::pool::Drain;
use crate::job::Job;
use crate::time::Timestamp;

/// The longest an idle worker sleeps before looking at the database again. A safety net only:
/// submits and scheduled times wake workers precisely.
const MAX_IDLE_WAIT: Duration = Duration::from_secs(60);
/// How long to back off after the database failed, before trying again.
pub(super) const DATABASE_RETRY_WAIT: Duration = Duration::from_secs(1);
/// The first wait, and the longest, after a claim that found nothing although the schedule
/// said a job was due now: other claims held it, or a limited queue filled up in between.
/// Short, and cut by any wake-up, so a job freed meanwhile starts without delay; but never
/// none, or workers competing for one limited queue would spin on the database.
const MISSED_CLAIM_FIRST_WAIT: Duration = Duration::from_millis(5);
const MISSED_CLAIM_MAX_WAIT: Duration = Duration::from_millis(50);

/// A worker's slot while it is not sleeping.
const AWAKE: i64 = i64::MIN;

/// For each worker, when it will wake by itself (microseconds), or `AWAKE`. A slot is set just
/// before the worker sleeps and reset as soon as it wakes, before it reads the database; both
/// sides use `SeqCst` so that a waker that sees a sleeping worker's time knows the worker's
/// next read comes after the waker's own commit.
struct Sleepers(Box<[AtomicI64]>);

impl Sleepers {
    /// Whether some sleeping worker wakes by itself no later than `due`.
    fn cover(&self, due: Timestamp) -> bool {
        let due = due.as_micros();
        self.0.iter().any(|slot| {
            let wakes_at = slot.load(Ordering::SeqCst);
            wakes_at != AWAKE && wakes_at <= due
        })
    }
}

/// The receiving end of the wake channel, for the pool's workers.
pub struct Wakeups(pub(super) Receiver<()>);

/// Tells idle workers that a job may have become due. Cheap to clone, never blocks.
#[derive(Clone)]
pub struct Waker {
    sender: Sender<()>,
    sleepers: Arc<Sleepers>,
}

impl Waker {
    /// The waker of a pool of `count` workers, and the wake-ups they will all receive, for
    /// `WorkerPool::start`. Made before the pool, so that HTTP can hold the waker (and bind
    /// its port) before any worker claims a job.
    pub fn for_workers(count: usize) -> (Waker, Wakeups) {
        let (wake_sender, wake) = bounded(count);
        let sleepers = Sleepers((0..count).map(|_| AtomicI64::new(AWAKE)).collect());
        let waker = Waker {
            sender: wake_sender,
            sleepers: Arc::new(sleepers),
        };
        (waker, Wakeups(wake))
    }

    /// Called after a job due at `run_at` is committed.
    pub fn job_queued(&self, run_at: Timestamp) {
        if run_at > Timestamp::now() && self.sleepers.cover(run_at) {
            return;
        }
        self.wake_one();
    }

    /// Wakes one idle worker to look at the queue (another node may have queued a job).
    pub fn wake_one(&self) {
        // Full means every idle worker already has a wake-up waiting: nothing is lost.
        let _ = self.sender.try_send(());
    }
}

/// What one worker needs while it is idle.
pub(super) struct IdleContext {
    pub(super) jobs: Arc<dyn Jobs>,
    pub(super) wake: Receiver<()>,
    /// To hand the watch on to another idle worker.
    pub(super) waker: Waker,
    /// This worker's slot in `waker.sleepers`.
    pub(super) slot: usize,
    pub(super) drain: Receiver<()>,
    pub(super) drain_mode: Drain,
    pub(super) abort: Receiver<()>,
}

/// A worker's claims in a row that found nothing although a job was due: the longer the run,
/// the longer the wait before the next (doubling from `MISSED_CLAIM_FIRST_WAIT`).
#[derive(Default)]
pub(super) struct MissedClaims(u32);

impl MissedClaims {
    fn next_wait(&mut self) -> Duration {
        let wait = MISSED_CLAIM_FIRST_WAIT
            .saturating_mul(1 << self.0.min(8))
            .min(MISSED_CLAIM_MAX_WAIT);
        self.0 = self.0.saturating_add(1);
        wait
    }

    fn reset(&mut self) {
        self.0 = 0;
    }
}

pub(super) enum Next {
    Run(Box<Job>),
    LookAgain,
    Stop,
}

/// The idle path: claim a due job, or wait until one is due or a wake-up arrives. `known_due`
/// is a due time the worker learned from its own writes that the reader may not see yet;
/// `missed` counts the claims in a row that found nothing although a job was due.
pub(super) fn find_work(
    context: &IdleContext,
    draining: &mut bool,
    known_due: &mut Option<Timestamp>,
    missed: &mut MissedClaims,
) -> Next {
    if matches!(context.abort.try_recv(), Err(TryRecvError::Disconnected)) {
        return Next::Stop;
    }
    // A worker busy when the drain began has not seen it yet: the signal says so directly.
    if context.drain_mode == Drain::RunningOnly
        && (*draining || matches!(context.drain.try_recv(), Err(TryRecvError::Disconnected)))
    {
        return Next::Stop;
    }
    // A read first: most wake-ups (a job scheduled for later, a job another worker took)
    // need no write, and reads never wait for a commit.
    let now = Timestamp::now();
    let next_due = match context.jobs.next_due_at() {
        Ok(next_due) => next_due.into_iter().chain(*known_due).min(),
        Err(err) => {
            error!("cannot read the schedule: {err}");
            return pause_after_error(context, draining);
        }
    };
    if next_due.is_some_and(|due| due <= now) {
        // The claim goes through the writer, which sees every due job, so the hint is spent.
        *known_due = None;
        return match context.jobs.claim_next_due(now) {
            Ok(Some(job)) => {
                missed.reset();
                hand_over_the_watch(context);
                Next::Run(Box::new(job))
            }
            // Another worker was quicker, or the job's queue is at its limit now. The
            // schedule may say "due" again at once (its read does not wait for their
            // commits): a short wait, longer the more it repeats.
            Ok(None) => {
                let wait = missed.next_wait();
                wait_for_work(context, Timestamp::now().plus(wait), draining);
                Next::LookAgain
            }
            Err(err) => {
                error!("cannot claim a job: {err}");
                pause_after_error(context, draining)
            }
        };
    }
    missed.reset();
    if *draining {
        return Next::Stop;
    }
    let latest = now.plus(MAX_IDLE_WAIT);
    let wakes_at = next_due.map_or(latest, |due| due.min(latest));
    wait_for_work(context, wakes_at, draining);
    Next::LookAgain
}

/// This worker is about to run a job after sleeping, so it may have been the one a submit
/// counted on to wake for a scheduled job. If no other sleeping worker wakes by the next due
/// time, one is woken to take over the watch.
fn hand_over_the_watch(context: &IdleContext) {
    match context.jobs.next_due_at() {
        Ok(None) => {}
        Ok(Some(next_due)) if context.waker.sleepers.cover(next_due) => {}
        Ok(Some(_)) | Err(_) => context.waker.wake_one(),
    }
}

fn pause_after_error(context: &IdleContext, draining: &mut bool) -> Next {
    if *draining {
        return Next::Stop;
    }
    wait_for_work(
        context,
        Timestamp::now().plus(DATABASE_RETRY_WAIT),
        draining,
    );
    Next::LookAgain
}

/// Sleeps until `wakes_at`, a wake-up message, or the start of the drain. While asleep the
/// worker's slot says when it will look at the schedule again: exactly the next due time, so
/// that a job due then or later needs no wake-up. A worker already draining (only one backing
/// off after a missed claim sleeps then) waits for the time alone: both channels may be
/// closed by then, and a closed channel would end the wait at once.
fn wait_for_work(context: &IdleContext, wakes_at: Timestamp, draining: &mut bool) {
    let slot = &context.waker.sleepers.0[context.slot];
    slot.store(wakes_at.as_micros(), Ordering::SeqCst);
    debug!("idle until {wakes_at} unless woken");
    let wait = Timestamp::now().until(wakes_at);
    let (wake, drain) = if *draining {
        (never(), never())
    } else {
        (context.wake.clone(), context.drain.clone())
    };
    select! {
        recv(wake) -> message => {
            // No waker left means no submit can come any more: finish what is due.
            if message.is_err() {
                *draining = true;
            }
        }
        recv(drain) -> _ => *draining = true,
        default(wait) => {}
    }
    slot.store(AWAKE, Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missed_claims_back_off_doubling_up_to_the_cap_and_start_over_after_a_reset() {
        let mut missed = MissedClaims::default();
        let waits: Vec<u128> = (0..7).map(|_| missed.next_wait().as_millis()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 50, 50, 50]);
        missed.reset();
        assert_eq!(missed.next_wait(), MISSED_CLAIM_FIRST_WAIT);
    }
}
