//! One attempt: run a claimed job through the executor, turn how it ended into the job's
//! record with the retry rule, write that record (claiming the next due job in the same
//! write), and log the end. It owns the attempt's registration for cancel, the catching of a
//! panic in it, and the retries of a failed write of its outcome. It does not choose which
//! job runs (`idle`), run the job's work itself (`executor`), or own the thread (`pool`).
//!
//! A panic while running an attempt fails that attempt (the retry rule applies as to any
//! failure) and the worker goes on, so the pool keeps its size.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, TryRecvError};

use super::idle::{Waker, DATABASE_RETRY_WAIT};
use super::jobs::Jobs;
use super::pool::Drain;
use crate::error::{Error, Result};
use crate::executor::{Details, Executor, Outcome};
use crate::job::{AttemptDetails, AttemptEnd, Job};
use crate::log_line::job_line;
use crate::retry::RetryPolicy;
use crate::running::RunningAttempts;
use crate::time::Timestamp;

/// How many times a worker tries to record an attempt's outcome after an error of the write
/// itself, before leaving the job to crash recovery at the next start. While the database
/// cannot write at all (a full disk) it keeps trying: see `record_again`.
const RECORD_ATTEMPTS: usize = 3;

/// What one worker needs to run and record attempts.
pub(super) struct AttemptContext {
    pub(super) jobs: Arc<dyn Jobs>,
    pub(super) retry: RetryPolicy,
    /// To make sure someone wakes for a retry this worker may be too busy to take.
    pub(super) waker: Waker,
    /// Where this worker registers each attempt so that it can be cancelled.
    pub(super) running: Arc<RunningAttempts>,
    /// Runs the attempts.
    pub(super) executor: Arc<dyn Executor>,
    pub(super) abort: Receiver<()>,
    pub(super) drain: Receiver<()>,
    pub(super) drain_mode: Drain,
}

/// What a worker learned while recording an attempt.
#[derive(Default)]
pub(super) struct AfterAttempt {
    /// A job claimed together with the outcome, to run next.
    pub(super) next: Option<Job>,
    /// When nothing was claimed: the next due time as the writer saw it, which the reader may
    /// not see until the write's batch commits.
    pub(super) next_due: Option<Timestamp>,
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
pub(super) fn run_and_record(context: &AttemptContext, job: Job) -> AfterAttempt {
    job_line!(
        info,
        &job,
        "job {} started (attempt {})",
        job.id,
        job.attempt_number()
    );
    let started = Instant::now();
    let cancel = context.running.start(&job);
    let (outcome, details) = run_caught(context.executor.as_ref(), &job, &context.abort, &cancel);
    let cancel_requested = matches!(cancel.try_recv(), Err(TryRecvError::Disconnected));
    let end = attempt_end(&context.retry, &job, outcome, cancel_requested);
    let elapsed = started.elapsed();
    let now = Timestamp::now();
    // While the pool is being aborted nothing new is claimed, nor while it drains a queue
    // other nodes share.
    let stopped =
        |signal: &Receiver<()>| matches!(signal.try_recv(), Err(TryRecvError::Disconnected));
    let aborting = stopped(&context.abort);
    let claims_nothing =
        aborting || (context.drain_mode == Drain::RunningOnly && stopped(&context.drain));
    let (recorded, after) = if claims_nothing || matches!(end, AttemptEnd::Released { .. }) {
        let recorded = match context.jobs.finish_attempt(&job, &end, &details, now) {
            // A drain still has time to record it; an abort puts the job back either way.
            Err(err) if !aborting => {
                job_line!(
                    error,
                    &job,
                    "job {}: cannot record its outcome ({err}); trying again",
                    job.id
                );
                record_again(context, &job, &end, &details)
            }
            recorded => recorded,
        };
        (recorded, AfterAttempt::default())
    } else {
        match context
            .jobs
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
                job_line!(
                    error,
                    &job,
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
        job_line!(error, job, "job {}: {message}", job.id);
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
    context: &AttemptContext,
    job: &Job,
    end: &AttemptEnd,
    details: &AttemptDetails,
) -> Result<bool> {
    let mut last = context
        .jobs
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
            .jobs
            .finish_attempt(job, end, details, Timestamp::now());
        tries += 1;
        match &last {
            Ok(_) => job_line!(
                info,
                job,
                "job {}: its outcome is recorded after {tries} tries",
                job.id
            ),
            Err(err) => job_line!(
                debug,
                job,
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
            job_line!(error, job, "job {id}: cannot record the end of its attempt ({err}); it is recovered at the next start");
            return;
        }
        Ok(false) => {
            job_line!(
                debug,
                job,
                "job {id} was deleted while running; its outcome is dropped"
            );
            return;
        }
        Ok(true) => {}
    }
    match end {
        AttemptEnd::Succeeded { .. } => job_line!(info, job, "job {id} succeeded in {millis} ms"),
        AttemptEnd::Failed {
            error,
            retry_at: Some(at),
        } => job_line!(
            info,
            job,
            "job {id} failed in {millis} ms: {error}; retry {} of {} at {at}",
            job.retry_count + 1,
            job.max_retries
        ),
        AttemptEnd::Failed {
            error,
            retry_at: None,
        } => job_line!(
            warn,
            job,
            "job {id} failed in {millis} ms: {error}; no retries left ({} of {} used)",
            job.retry_count,
            job.max_retries
        ),
        AttemptEnd::TimedOut { .. } => {
            job_line!(
                warn,
                job,
                "job {id} timed out after {} s",
                job.timeout_seconds
            )
        }
        AttemptEnd::Released { .. } => {
            job_line!(
                info,
                job,
                "job {id} interrupted by shutdown and put back as pending"
            )
        }
        AttemptEnd::Cancelled { .. } => {
            job_line!(info, job, "job {id} cancelled after {millis} ms")
        }
    }
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

    #[test]
    fn a_success_stands_even_when_a_cancel_came_too_late() {
        let job = Job::running_for_test(json!({}), 3, 30);
        let end = attempt_end(&RETRY, &job, Outcome::Succeeded(json!(1)), true);
        assert!(matches!(end, AttemptEnd::Succeeded { .. }), "{end:?}");
    }
}
