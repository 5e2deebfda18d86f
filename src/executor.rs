//! Runs one attempt of a job under its watchdog: the attempt gets the job's timeout, and a
//! shutdown abort stops it at once.
//!
//! A simulated job's work is a wait, so the attempt runs on the worker's own thread: the wait
//! is a `select!` on the abort channel bounded by the earlier of the job's duration and its
//! timeout. A timed-out or interrupted attempt therefore frees its worker at the deadline,
//! with no thread left sleeping and no hand-off between threads for a job that takes no time.

use std::time::Duration;

use crossbeam_channel::{select, Receiver};
use serde_json::Value;

use crate::job::Job;
use crate::simulation::{Simulation, SimulationEnd};

/// How an attempt ended, as the watchdog saw it.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Succeeded(Value),
    Failed(String),
    /// The job's `timeout_seconds` passed first.
    TimedOut,
    /// The abort channel closed (shutdown grace over) before the attempt ended.
    Interrupted,
}

/// Runs one attempt of `job`. `abort` is never sent on; it closes to stop the attempt.
pub fn run_attempt(job: &Job, abort: &Receiver<()>) -> Outcome {
    let simulation = match Simulation::from_payload(&job.payload) {
        Ok(simulation) => simulation,
        // Stored payloads were validated at submit; this covers rows written otherwise.
        Err(err) => return Outcome::Failed(format!("invalid payload: {err}")),
    };
    let timeout = job.timeout();
    let timed_out = simulation.duration > timeout;
    if !wait_unless_aborted(simulation.duration.min(timeout), abort) {
        return Outcome::Interrupted;
    }
    if timed_out {
        return Outcome::TimedOut;
    }
    match simulation.outcome() {
        SimulationEnd::Succeeded(result) => Outcome::Succeeded(result),
        SimulationEnd::Failed(message) => Outcome::Failed(message),
    }
}

/// Waits `duration`; returns `false` if `abort` closed first.
fn wait_unless_aborted(duration: Duration, abort: &Receiver<()>) -> bool {
    select! {
        recv(abort) -> _ => false,
        default(duration) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Timestamp;
    use crossbeam_channel::bounded;
    use serde_json::json;
    use std::time::Instant;

    fn job(payload: Value, timeout_seconds: u32) -> Job {
        Job {
            id: "test".into(),
            payload,
            status: crate::job::JobStatus::Running,
            created_at: Timestamp::from_micros(0),
            started_at: None,
            finished_at: None,
            retry_count: 0,
            max_retries: 0,
            timeout_seconds,
            result: None,
            error_message: None,
            priority: 0,
            run_at: Timestamp::from_micros(0),
        }
    }

    #[test]
    fn outcome_follows_the_payload() {
        let (_keep, abort) = bounded::<()>(0);
        let ok = job(json!({"duration_ms": 0, "result": [1]}), 5);
        assert_eq!(run_attempt(&ok, &abort), Outcome::Succeeded(json!([1])));
        let failing = job(
            json!({"duration_ms": 0, "should_fail": true, "error_message": "no"}),
            5,
        );
        assert_eq!(run_attempt(&failing, &abort), Outcome::Failed("no".into()));
    }

    #[test]
    fn the_timeout_ends_the_attempt_at_the_deadline() {
        let (_keep, abort) = bounded::<()>(0);
        let started = Instant::now();
        let slow = job(json!({"duration_ms": 60_000}), 1);
        assert_eq!(run_attempt(&slow, &abort), Outcome::TimedOut);
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_secs(1) && elapsed < Duration::from_secs(5),
            "{elapsed:?}"
        );
    }

    #[test]
    fn a_closed_abort_channel_interrupts_at_once() {
        let (stop, abort) = bounded::<()>(0);
        drop(stop);
        let started = Instant::now();
        let slow = job(json!({"duration_ms": 60_000}), 120);
        assert_eq!(run_attempt(&slow, &abort), Outcome::Interrupted);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
