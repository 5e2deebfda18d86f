//! The worker pool: OS threads that claim due jobs from the store, run each attempt under a
//! watchdog that enforces the job's timeout, and record the outcome with the retry rule.
//!
//! The database is the queue. Workers claim work only when they are free, so a backlog of any
//! size costs no memory here; the wake channel only tells an idle worker "look again now".
//! It is bounded: when it is full, enough wake-ups are already on their way.
//!
//! A job scheduled for later needs no wake-up when a sleeping worker will wake by itself before
//! it is due: that worker reads the schedule when it wakes and sees the job. Each worker
//! publishes when it will wake (`Sleepers`). The one duty that comes with it: a worker that
//! wakes and takes a job is no longer watching the clock, so it hands the watch on first.
//!
//! Stopping uses dropped senders as signals: dropping the drain sender makes idle workers exit
//! once nothing is due; dropping the abort sender makes busy workers give up their attempts.
//!
//! A panic while running an attempt fails that attempt (the retry rule applies as to any
//! failure) and the worker goes on, so the pool keeps its size.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, Receiver, Sender, TryRecvError};
use log::{debug, error, info, warn};

use crate::error::{Error, Result};
use crate::executor::{Details, Executor, Outcome};
use crate::job::{AttemptDetails, AttemptEnd, Job};
use crate::retry::RetryPolicy;
use crate::running::RunningAttempts;
use crate::store::Store;
use crate::time::Timestamp;

/// The longest an idle worker sleeps before looking at the database again. A safety net only:
/// submits and scheduled times wake workers precisely.
const MAX_IDLE_WAIT: Duration = Duration::from_secs(60);
/// How long to back off after the database failed, before trying again.
const DATABASE_RETRY_WAIT: Duration = Duration::from_secs(1);
/// How many times a worker tries to record an attempt's outcome after an error of the write
/// itself, before leaving the job to crash recovery at the next start. While the database
/// cannot write at all (a full disk) it keeps trying: see `record_again`.
const RECORD_ATTEMPTS: usize = 3;

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

/// Tells idle workers that a job may have become due. Cheap to clone, never blocks.
#[derive(Clone)]
pub struct Waker {
    sender: Sender<()>,
    sleepers: Arc<Sleepers>,
}

impl Waker {
    /// Called after a job due at `run_at` is committed.
    pub fn job_queued(&self, run_at: Timestamp) {
        if run_at > Timestamp::now() && self.sleepers.cover(run_at) {
            return;
        }
        self.wake_one();
    }

    fn wake_one(&self) {
        // Full means every idle worker already has a wake-up waiting: nothing is lost.
        let _ = self.sender.try_send(());
    }
}

pub struct WorkerPool {
    handles: Vec<JoinHandle<()>>,
    drain: Option<Sender<()>>,
    abort: Option<Sender<()>>,
    exited: Receiver<()>,
}

struct WorkerContext {
    store: Arc<Store>,
    retry: RetryPolicy,
    wake: Receiver<()>,
    /// To hand the watch on to another idle worker.
    waker: Waker,
    /// Where this worker registers each attempt so that it can be cancelled.
    running: Arc<RunningAttempts>,
    /// Runs the attempts.
    executor: Arc<dyn Executor>,
    /// This worker's slot in `waker.sleepers`.
    slot: usize,
    drain: Receiver<()>,
    abort: Receiver<()>,
    /// Held until the thread ends; when every worker has dropped its clone, `exited` closes.
    _alive: Sender<()>,
}

impl WorkerPool {
    /// Starts `count` workers and returns the pool with the waker that HTTP handlers use.
    pub fn start(
        count: usize,
        store: Arc<Store>,
        retry: RetryPolicy,
        running: Arc<RunningAttempts>,
        executor: Arc<dyn Executor>,
    ) -> Result<(WorkerPool, Waker)> {
        let (wake_sender, wake) = bounded(count);
        let sleepers = Sleepers((0..count).map(|_| AtomicI64::new(AWAKE)).collect());
        let waker = Waker {
            sender: wake_sender,
            sleepers: Arc::new(sleepers),
        };
        let (drain_sender, drain) = bounded(0);
        let (abort_sender, abort) = bounded(0);
        let (alive, exited) = bounded(0);
        let mut handles = Vec::with_capacity(count);
        for number in 1..=count {
            let context = WorkerContext {
                store: Arc::clone(&store),
                retry,
                wake: wake.clone(),
                waker: waker.clone(),
                running: Arc::clone(&running),
                executor: Arc::clone(&executor),
                slot: number - 1,
                drain: drain.clone(),
                abort: abort.clone(),
                _alive: alive.clone(),
            };
            let handle = thread::Builder::new()
                .name(format!("worker-{number}"))
                .spawn(move || work(&context))
                .map_err(|err| Error::Startup(format!("cannot start worker thread: {err}")))?;
            handles.push(handle);
        }
        let pool = WorkerPool {
            handles,
            drain: Some(drain_sender),
            abort: Some(abort_sender),
            exited,
        };
        Ok((pool, waker))
    }

    /// From now on workers finish what is due and exit when nothing more is.
    pub fn begin_drain(&mut self) {
        self.drain = None;
    }

    /// Running attempts are given up and their jobs put back as pending.
    pub fn abort(&mut self) {
        self.abort = None;
    }

    /// Closes (receives `Err`) once every worker thread has ended.
    pub fn exited(&self) -> &Receiver<()> {
        &self.exited
    }

    /// Waits for every worker; a worker's panic is reported, not swallowed.
    pub fn join(self) {
        for handle in self.handles {
            let name = handle.thread().name().unwrap_or("worker").to_string();
            if handle.join().is_err() {
                error!("{name} panicked; its job, if any, is recovered at the next start");
            }
        }
    }
}

fn work(context: &WorkerContext) {
    let mut draining = false;
    let mut after = AfterAttempt::default();
    // A due time this worker learned from its own write, kept until it has looked for work at
    // that time through the writer, which sees it whether or not the reader does yet.
    let mut known_due: Option<Timestamp> = None;
    loop {
        let job = match after.next.take() {
            Some(job) => job,
            None => match find_work(context, &mut draining, &mut known_due) {
                Next::Run(job) => *job,
                Next::LookAgain => continue,
                Next::Stop => return,
            },
        };
        after = run_and_record(context, job);
        known_due = known_due.into_iter().chain(after.next_due.take()).min();
    }
}

/// What a worker learned while recording an attempt.
#[derive(Default)]
struct AfterAttempt {
    /// A job claimed together with the outcome, to run next.
    next: Option<Job>,
    /// When nothing was claimed: the next due time as the writer saw it, which the reader may
    /// not see until the write's batch commits.
    next_due: Option<Timestamp>,
}

enum Next {
    Run(Box<Job>),
    LookAgain,
    Stop,
}

/// The idle path: claim a due job, or wait until one is due or a wake-up arrives. `known_due`
/// is a due time the worker learned from its own writes that the reader may not see yet.
fn find_work(
    context: &WorkerContext,
    draining: &mut bool,
    known_due: &mut Option<Timestamp>,
) -> Next {
    if matches!(context.abort.try_recv(), Err(TryRecvError::Disconnected)) {
        return Next::Stop;
    }
    // A read first: most wake-ups (a job scheduled for later, a job another worker took)
    // need no write, and reads never wait for a commit.
    let now = Timestamp::now();
    let next_due = match context.store.next_due_at() {
        Ok(next_due) => next_due.into_iter().chain(*known_due).min(),
        Err(err) => {
            error!("cannot read the schedule: {err}");
            return pause_after_error(context, draining);
        }
    };
    if next_due.is_some_and(|due| due <= now) {
        // The claim goes through the writer, which sees every due job, so the hint is spent.
        *known_due = None;
        return match context.store.claim_next_due(now) {
            Ok(Some(job)) => {
                hand_over_the_watch(context);
                Next::Run(Box::new(job))
            }
            // Another worker was quicker.
            Ok(None) => Next::LookAgain,
            Err(err) => {
                error!("cannot claim a job: {err}");
                pause_after_error(context, draining)
            }
        };
    }
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
fn hand_over_the_watch(context: &WorkerContext) {
    match context.store.next_due_at() {
        Ok(None) => {}
        Ok(Some(next_due)) if context.waker.sleepers.cover(next_due) => {}
        Ok(Some(_)) | Err(_) => context.waker.wake_one(),
    }
}

fn pause_after_error(context: &WorkerContext, draining: &mut bool) -> Next {
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
/// that a job due then or later needs no wake-up.
fn wait_for_work(context: &WorkerContext, wakes_at: Timestamp, draining: &mut bool) {
    let slot = &context.waker.sleepers.0[context.slot];
    slot.store(wakes_at.as_micros(), Ordering::SeqCst);
    debug!("idle until {wakes_at} unless woken");
    let wait = Timestamp::now().until(wakes_at);
    select! {
        recv(context.wake) -> message => {
            // No waker left means no submit can come any more: finish what is due.
            if message.is_err() {
                *draining = true;
            }
        }
        recv(context.drain) -> _ => *draining = true,
        default(wait) => {}
    }
    slot.store(AWAKE, Ordering::SeqCst);
}

/// How an attempt ended, as the job's record will say. A cancel that came after the attempt
/// failed but before its outcome was recorded still stops the job: the failure must not
/// schedule a retry the client has asked not to happen.
fn attempt_end(
    retry: &RetryPolicy,
    job: &Job,
    outcome: Outcome,
    cancel_requested: bool,
) -> AttemptEnd {
    match outcome {
        Outcome::Succeeded(result) => AttemptEnd::Succeeded { result },
        Outcome::Failed(error) if cancel_requested => AttemptEnd::Cancelled {
            reason: format!("cancelled by request; the attempt had failed: {error}"),
        },
        Outcome::Failed(error) => retry.after_failure(job, error, Timestamp::now()),
        Outcome::TimedOut => AttemptEnd::TimedOut {
            error: format!(
                "timed out after {} s (timeout_seconds)",
                job.timeout_seconds
            ),
        },
        Outcome::Interrupted => AttemptEnd::Released {
            reason: "interrupted by server shutdown; the job runs again after restart".into(),
        },
        Outcome::Cancelled => AttemptEnd::Cancelled {
            reason: "cancelled by request".into(),
        },
    }
}

/// Runs one attempt under the watchdog, records how it ended and, unless the pool is being
/// aborted, claims the next due job in the same write.
fn run_and_record(context: &WorkerContext, job: Job) -> AfterAttempt {
    info!("job {} started (attempt {})", job.id, job.attempt_number());
    let started = Instant::now();
    let cancel = context.running.start(&job);
    let (outcome, details) = run_caught(context.executor.as_ref(), &job, &context.abort, &cancel);
    let cancel_requested = matches!(cancel.try_recv(), Err(TryRecvError::Disconnected));
    let end = attempt_end(&context.retry, &job, outcome, cancel_requested);
    let elapsed = started.elapsed();
    let now = Timestamp::now();
    // While the pool is being aborted nothing new is claimed.
    let aborting = matches!(context.abort.try_recv(), Err(TryRecvError::Disconnected));
    let (recorded, after) = if aborting || matches!(end, AttemptEnd::Released { .. }) {
        (
            context.store.finish_attempt(&job, &end, &details, now),
            AfterAttempt::default(),
        )
    } else {
        match context
            .store
            .finish_and_claim_next(&job, &end, &details, now)
        {
            Ok(done) => (
                Ok(done.recorded),
                AfterAttempt {
                    next: done.next,
                    next_due: done.next_due,
                },
            ),
            Err(err) => {
                error!(
                    "job {}: cannot record its outcome ({err}); trying again",
                    job.id
                );
                (
                    record_again(context, &job, &end, &details),
                    AfterAttempt::default(),
                )
            }
        }
    };
    if let (
        Ok(true),
        AttemptEnd::Failed {
            retry_at: Some(at), ..
        },
    ) = (&recorded, &end)
    {
        // This worker may be busy with another job by then; make sure someone wakes for it.
        context.waker.job_queued(*at);
    }
    context.running.end(&job);
    log_end(&job, &end, recorded, elapsed);
    after
}

/// Runs the attempt; a panic in it becomes the attempt's failure instead of ending the worker.
/// The panic hook has already printed the message and where it happened. Unwind safety: what
/// the attempt touches is the job (read only), its channels, and the process registry, whose
/// lock survives poisoning; a function's processes are killed as the panic unwinds.
fn run_caught(
    executor: &dyn Executor,
    job: &Job,
    abort: &Receiver<()>,
    cancel: &Receiver<()>,
) -> (Outcome, Details) {
    catch_unwind(AssertUnwindSafe(|| {
        executor.run_attempt(job, abort, cancel)
    }))
    .unwrap_or_else(|panic| {
        let message = format!(
            "the attempt panicked (a bug in the server): {}",
            panic_message(panic.as_ref())
        );
        error!("job {}: {message}", job.id);
        (Outcome::Failed(message), Details::default())
    })
}

/// The text a panic was raised with, if it was text.
fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message")
}

/// Retries recording an outcome a second apart, so that a database error does not leave the
/// job `running` until the next start: a few times after an error of the write itself, and
/// for as long as the database is unavailable (a full disk, say, where this worker could not
/// claim another job anyway), so the outcome lands once the disk has room again. Stops at once
/// when the pool is aborted.
fn record_again(
    context: &WorkerContext,
    job: &Job,
    end: &AttemptEnd,
    details: &AttemptDetails,
) -> Result<bool> {
    let mut last = context
        .store
        .finish_attempt(job, end, details, Timestamp::now());
    let mut tries = 1;
    loop {
        match &last {
            Ok(_) => break,
            Err(Error::Unavailable(_)) => {}
            Err(_) if tries >= RECORD_ATTEMPTS => break,
            Err(_) => {}
        }
        select! {
            recv(context.abort) -> _ => break,
            default(DATABASE_RETRY_WAIT) => {}
        }
        last = context
            .store
            .finish_attempt(job, end, details, Timestamp::now());
        tries += 1;
        match &last {
            Ok(_) => info!(
                "job {}: its outcome is recorded after {tries} tries",
                job.id
            ),
            Err(err) => debug!(
                "job {}: try {tries} to record its outcome failed: {err}",
                job.id
            ),
        }
    }
    last
}

fn log_end(job: &Job, end: &AttemptEnd, recorded: Result<bool>, elapsed: Duration) {
    let id = &job.id;
    let millis = elapsed.as_millis();
    match recorded {
        Err(err) => {
            error!("job {id}: cannot record the end of its attempt ({err}); it is recovered at the next start");
            return;
        }
        Ok(false) => {
            debug!("job {id} was deleted while running; its outcome is dropped");
            return;
        }
        Ok(true) => {}
    }
    match end {
        AttemptEnd::Succeeded { .. } => info!("job {id} succeeded in {millis} ms"),
        AttemptEnd::Failed {
            error,
            retry_at: Some(at),
        } => info!(
            "job {id} failed in {millis} ms: {error}; retry {} of {} at {at}",
            job.retry_count + 1,
            job.max_retries
        ),
        AttemptEnd::Failed {
            error,
            retry_at: None,
        } => warn!(
            "job {id} failed in {millis} ms: {error}; no retries left ({} of {} used)",
            job.retry_count, job.max_retries
        ),
        AttemptEnd::TimedOut { .. } => {
            warn!("job {id} timed out after {} s", job.timeout_seconds)
        }
        AttemptEnd::Released { .. } => {
            info!("job {id} interrupted by shutdown and put back as pending")
        }
        AttemptEnd::Cancelled { .. } => info!("job {id} cancelled after {millis} ms"),
    }
}

/// At start: attempts left `running` by a crash count as failed, then the normal retry rule
/// applies. Returns how many jobs were recovered.
pub fn recover_interrupted(store: &Store, retry: &RetryPolicy) -> Result<usize> {
    let interrupted = store.running_jobs()?;
    for job in &interrupted {
        let now = Timestamp::now();
        let error = "interrupted: the server stopped while this attempt was running".to_string();
        let end = retry.after_failure(job, error, now);
        store.finish_attempt(job, &end, &AttemptDetails::default(), now)?;
        match end {
            AttemptEnd::Failed { retry_at: Some(at), .. } => warn!(
                "job {} recovered: its attempt was interrupted by a crash; retry {} of {} at {at}",
                job.id,
                job.retry_count + 1,
                job.max_retries
            ),
            _ => warn!(
                "job {} recovered: its attempt was interrupted by a crash; no retries left, marked failed",
                job.id
            ),
        }
    }
    Ok(interrupted.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const RETRY: RetryPolicy = RetryPolicy {
        base: Duration::from_millis(100),
        cap: Duration::from_millis(1000),
    };

    #[test]
    fn a_failure_with_retries_left_schedules_a_retry() {
        let job = Job::running_for_test(json!({}), 3, 30);
        let end = attempt_end(&RETRY, &job, Outcome::Failed("boom".into()), false);
        assert!(
            matches!(&end, AttemptEnd::Failed { error, retry_at: Some(_) } if error == "boom"),
            "{end:?}"
        );
    }

    #[test]
    fn a_cancel_that_raced_a_failure_stops_the_job_instead_of_retrying_it() {
        let job = Job::running_for_test(json!({}), 3, 30);
        let end = attempt_end(&RETRY, &job, Outcome::Failed("boom".into()), true);
        match end {
            AttemptEnd::Cancelled { reason } => {
                assert_eq!(reason, "cancelled by request; the attempt had failed: boom")
            }
            other => panic!("expected a cancel, got {other:?}"),
        }
    }

    /// Panics in every job's first attempt; later attempts succeed.
    struct PanicsOnFirstAttempts;

    impl Executor for PanicsOnFirstAttempts {
        fn run_attempt(
            &self,
            job: &Job,
            _abort: &Receiver<()>,
            _cancel: &Receiver<()>,
        ) -> (Outcome, Details) {
            if job.attempt == Some(1) {
                panic!("injected panic in {}", job.id);
            }
            (
                Outcome::Succeeded(json!("second time lucky")),
                Details::default(),
            )
        }
    }

    #[test]
    fn a_panicking_attempt_fails_is_retried_and_the_worker_lives_on() {
        let dir = crate::store::test_dir::TestDir::new("worker-panic");
        let path = dir.path().join("jobs.db");
        let store = Arc::new(Store::open(&path, crate::store::SyncMode::EveryCommit, 0).unwrap());
        let now = Timestamp::now();
        for (id, max_retries) in [("retried", 1), ("out-of-retries", 0)] {
            let job = crate::job::NewJob {
                payload: json!({}),
                timeout_seconds: 5,
                max_retries,
                priority: 0,
                run_at: None,
                function: None,
            };
            store.insert(id.into(), &job, now).unwrap();
        }
        // One worker: if a panic ended it, the jobs after the first panic would never end.
        let (mut pool, waker) = WorkerPool::start(
            1,
            Arc::clone(&store),
            RETRY,
            Arc::new(RunningAttempts::default()),
            Arc::new(PanicsOnFirstAttempts),
        )
        .unwrap();
        waker.job_queued(now);
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = |id: &str| store.get(id).unwrap().unwrap().status;
        while status("retried") != crate::job::JobStatus::Success
            || status("out-of-retries") != crate::job::JobStatus::Failed
        {
            assert!(Instant::now() < deadline, "the jobs did not end");
            // Polling the store with a deadline; nothing else tells this test.
            thread::sleep(Duration::from_millis(10));
        }
        let attempts = store.attempts("retried").unwrap().unwrap();
        let summary: Vec<&str> = attempts.iter().map(|a| a.status.as_str()).collect();
        assert_eq!(summary, ["failed", "success"]);
        let message = attempts[0].error_message.as_deref().unwrap_or_default();
        assert_eq!(
            message,
            "the attempt panicked (a bug in the server): injected panic in retried"
        );
        let failed = store.get("out-of-retries").unwrap().unwrap();
        assert!(failed
            .error_message
            .unwrap_or_default()
            .contains("panicked"));
        pool.begin_drain();
        drop(waker);
        for handle in pool.handles {
            assert!(handle.join().is_ok(), "a worker thread panicked");
        }
    }

    #[test]
    fn a_success_stands_even_when_a_cancel_came_too_late() {
        let job = Job::running_for_test(json!({}), 3, 30);
        let end = attempt_end(&RETRY, &job, Outcome::Succeeded(json!(1)), true);
        assert!(matches!(end, AttemptEnd::Succeeded { .. }), "{end:?}");
    }
}
