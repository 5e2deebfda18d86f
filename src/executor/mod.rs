//! Runs one attempt of a job under its watchdog: the attempt gets the job's timeout, and a
//! shutdown abort or a cancel stops it at once. A job that names a function runs it as a child
//! process (`process`); any other job is simulated.
//!
//! A simulated job's work is a wait, so the attempt runs on the worker's own thread: the wait
//! is a `select!` on the abort channel bounded by the earlier of the job's duration and its
//! timeout. A timed-out or interrupted attempt therefore frees its worker at the deadline,
//! with no thread left sleeping and no hand-off between threads for a job that takes no time.

use std::time::Duration;

use crossbeam_channel::{select, Receiver};
use serde_json::Value;

use crate::functions::Functions;
use crate::job::Job;
use simulation::{Simulation, SimulationEnd};

mod process;
pub mod simulation;

pub use process::ProcessGroups;

/// What running functions needs, from the configuration.
pub struct FunctionRunner {
    pub functions: Functions,
    pub max_output: usize,
    pub kill_grace: std::time::Duration,
    /// `PATH` and the passed-through variables, as the server had them at start.
    pub env: Vec<(String, String)>,
    /// The groups of the functions running now.
    pub groups: std::sync::Arc<process::ProcessGroups>,
}

pub use crate::job::AttemptDetails as Details;

/// What a worker needs to run an attempt; the seam through which tests give workers an
/// executor of their own (one that panics, say).
pub trait Executor: Send + Sync {
    /// Runs one attempt of `job`, as [`run_attempt`] does.
    fn run_attempt(
        &self,
        job: &Job,
        abort: &Receiver<()>,
        cancel: &Receiver<()>,
    ) -> (Outcome, Details);
}

impl Executor for FunctionRunner {
    fn run_attempt(
        &self,
        job: &Job,
        abort: &Receiver<()>,
        cancel: &Receiver<()>,
    ) -> (Outcome, Details) {
        run_attempt(job, self, abort, cancel)
    }
}

/// How an attempt ended, as the watchdog saw it.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Succeeded(Value),
    Failed(String),
    /// The job's `timeout_seconds` passed first.
    TimedOut,
    /// The abort channel closed (shutdown grace over) before the attempt ended.
    Interrupted,
    /// The attempt's own cancel channel closed (cancel or delete by request).
    Cancelled,
}

/// Runs one attempt of `job`. Neither channel is ever sent on: `abort` (the pool's) closes to
/// interrupt every attempt, `cancel` (this attempt's) to cancel this one.
pub fn run_attempt(
    job: &Job,
    runner: &FunctionRunner,
    abort: &Receiver<()>,
    cancel: &Receiver<()>,
) -> (Outcome, Details) {
    let Some(name) = &job.function else {
        return (simulate(job, abort, cancel), Details::default());
    };
    match runner.functions.resolve(name) {
        Some(path) => process::run(runner, job, name, &path, abort, cancel),
        None => (
            Outcome::Failed(format!(
                "function {name:?} no longer exists in FUNCTIONS_DIR"
            )),
            Details::default(),
        ),
    }
}

fn simulate(job: &Job, abort: &Receiver<()>, cancel: &Receiver<()>) -> Outcome {
    let simulation = match Simulation::from_payload(&job.payload) {
        Ok(simulation) => simulation,
        // Stored payloads were validated at submit; this covers rows written otherwise.
        Err(err) => return Outcome::Failed(format!("invalid payload: {err}")),
    };
    let timeout = job.timeout();
    let timed_out = simulation.duration > timeout;
    if let Some(stopped) = wait_unless_stopped(simulation.duration.min(timeout), abort, cancel) {
        return stopped;
    }
    if timed_out {
        return Outcome::TimedOut;
    }
    match simulation.outcome() {
        SimulationEnd::Succeeded(result) => Outcome::Succeeded(result),
        SimulationEnd::Failed(message) => Outcome::Failed(message),
    }
}

/// Waits `duration`; returns how the attempt was stopped if a channel closed first.
fn wait_unless_stopped(
    duration: Duration,
    abort: &Receiver<()>,
    cancel: &Receiver<()>,
) -> Option<Outcome> {
    select! {
        recv(abort) -> _ => Some(Outcome::Interrupted),
        recv(cancel) -> _ => Some(Outcome::Cancelled),
        default(duration) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::bounded;
    use serde_json::json;
    use std::time::Instant;

    fn job(payload: Value, timeout_seconds: u32) -> Job {
        Job::running_for_test(payload, 0, timeout_seconds)
    }

    /// A channel that never closes during the test.
    fn open() -> (crossbeam_channel::Sender<()>, Receiver<()>) {
        bounded::<()>(0)
    }

    #[test]
    fn outcome_follows_the_payload() {
        let ((_a, abort), (_c, cancel)) = (open(), open());
        let ok = job(json!({"duration_ms": 0, "result": [1]}), 5);
        assert_eq!(
            simulate(&ok, &abort, &cancel),
            Outcome::Succeeded(json!([1]))
        );
        let failing = job(
            json!({"duration_ms": 0, "should_fail": true, "error_message": "no"}),
            5,
        );
        assert_eq!(
            simulate(&failing, &abort, &cancel),
            Outcome::Failed("no".into())
        );
    }

    #[test]
    fn the_timeout_ends_the_attempt_at_the_deadline() {
        let ((_a, abort), (_c, cancel)) = (open(), open());
        let started = Instant::now();
        let slow = job(json!({"duration_ms": 60_000}), 1);
        assert_eq!(simulate(&slow, &abort, &cancel), Outcome::TimedOut);
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_secs(1) && elapsed < Duration::from_secs(5),
            "{elapsed:?}"
        );
    }

    #[test]
    fn a_closed_channel_stops_the_attempt_at_once() {
        let slow = job(json!({"duration_ms": 60_000}), 120);
        let ((stop, abort), (_c, cancel)) = (open(), open());
        drop(stop);
        let started = Instant::now();
        assert_eq!(simulate(&slow, &abort, &cancel), Outcome::Interrupted);
        let ((_a, abort), (stop, cancel)) = (open(), open());
        drop(stop);
        assert_eq!(simulate(&slow, &abort, &cancel), Outcome::Cancelled);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
