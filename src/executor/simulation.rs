//! The simulated job: what a payload asks for (`duration_ms`, `should_fail`, `result`,
//! `error_message`), what it ends with, and one attempt of it under the job's watchdog. Submit
//! validates payloads here; the choice of simulating a job (it names no function) is
//! `runner`'s, and what the outcome does to the job is the worker's.
//!
//! A simulated job's work is a wait, so the attempt runs on the worker's own thread: the wait
//! is a `select!` on the abort channel bounded by the earlier of the job's duration and its
//! timeout. A timed-out or interrupted attempt therefore frees its worker at the deadline,
//! with no thread left sleeping and no hand-off between threads for a job that takes no time.

use std::time::Duration;

use crossbeam_channel::{select, Receiver};
use serde_json::Value;

use super::Outcome;
use crate::error::{Error, Result};
use crate::job::{whole_number, Job};

pub const DEFAULT_DURATION_MS: u64 = 750;
/// A simulated job may take as long as the longest allowed timeout, no longer.
pub const MAX_DURATION_MS: u64 = 86_400_000;
const DEFAULT_RESULT: &str = "job completed";
const DEFAULT_ERROR: &str = "job failed: the payload asked for a failure (should_fail)";

#[derive(Clone, Debug, PartialEq)]
pub struct Simulation {
    pub duration: Duration,
    pub should_fail: bool,
    pub result: Value,
    pub error_message: String,
}

/// How a simulated run ended.
#[derive(Debug, PartialEq)]
pub enum SimulationEnd {
    Succeeded(Value),
    Failed(String),
}

impl Simulation {
    /// Reads the simulation keys of a payload. Non-object payloads run as a default job; keys
    /// of the wrong type are a validation error naming `payload.<key>`. `null` for
    /// `duration_ms`, `should_fail` or `error_message` means the default; `"result": null`
    /// asks for a `null` result.
    pub fn from_payload(payload: &Value) -> Result<Simulation> {
        let mut simulation = Simulation {
            duration: Duration::from_millis(DEFAULT_DURATION_MS),
            should_fail: false,
            result: Value::String(DEFAULT_RESULT.into()),
            error_message: DEFAULT_ERROR.into(),
        };
        let Value::Object(fields) = payload else {
            return Ok(simulation);
        };
        match fields.get("duration_ms") {
            None | Some(Value::Null) => {}
            Some(value) => match whole_number(value) {
                Some(ms) if ms <= MAX_DURATION_MS => simulation.duration = Duration::from_millis(ms),
                _ => {
                    return Err(Error::Validation(format!(
                        "payload.duration_ms must be an integer from 0 to {MAX_DURATION_MS}, got {value}"
                    )))
                }
            },
        }
        match fields.get("should_fail") {
            None | Some(Value::Null) => {}
            Some(Value::Bool(flag)) => simulation.should_fail = *flag,
            Some(other) => {
                return Err(Error::Validation(format!(
                    "payload.should_fail must be true or false, got {other}"
                )))
            }
        }
        // Unlike the other keys, `null` is a result like any other: only a missing key defaults.
        if let Some(value) = fields.get("result") {
            simulation.result = value.clone();
        }
        match fields.get("error_message") {
            None | Some(Value::Null) => {}
            Some(Value::String(message)) => simulation.error_message = message.clone(),
            Some(other) => {
                return Err(Error::Validation(format!(
                    "payload.error_message must be a string, got {other}"
                )))
            }
        }
        Ok(simulation)
    }

    /// How the simulated work ends once its `duration` has passed.
    pub fn outcome(self) -> SimulationEnd {
        if self.should_fail {
            SimulationEnd::Failed(self.error_message)
        } else {
            SimulationEnd::Succeeded(self.result)
        }
    }
}

/// Runs one attempt of a simulated job.
pub(super) fn simulate(job: &Job, abort: &Receiver<()>, cancel: &Receiver<()>) -> Outcome {
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
    use serde_json::json;

    #[test]
    fn non_object_payloads_run_as_default_jobs() {
        let simulation = Simulation::from_payload(&json!([1, 2, 3])).unwrap();
        assert_eq!(
            simulation.duration,
            Duration::from_millis(DEFAULT_DURATION_MS)
        );
        assert!(!simulation.should_fail);
    }

    #[test]
    fn wrong_types_name_the_payload_key() {
        for (payload, key) in [
            (json!({"duration_ms": "abc"}), "payload.duration_ms"),
            (json!({"duration_ms": -1}), "payload.duration_ms"),
            (json!({"should_fail": "yes"}), "payload.should_fail"),
            (json!({"error_message": 5}), "payload.error_message"),
        ] {
            match Simulation::from_payload(&payload) {
                Err(Error::Validation(message)) => assert!(message.starts_with(key), "{message}"),
                other => panic!("expected a validation error for {key}, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_null_result_is_the_result_and_other_null_keys_are_defaults() {
        let payload = json!({"result": null, "duration_ms": null, "should_fail": null,
            "error_message": null});
        let simulation = Simulation::from_payload(&payload).unwrap();
        assert_eq!(
            (simulation.duration, simulation.should_fail),
            (Duration::from_millis(DEFAULT_DURATION_MS), false)
        );
        assert_eq!(simulation.outcome(), SimulationEnd::Succeeded(Value::Null));
        let default = Simulation::from_payload(&json!({})).unwrap();
        assert_eq!(
            default.outcome(),
            SimulationEnd::Succeeded(json!(DEFAULT_RESULT))
        );
    }

    #[test]
    fn outcome_follows_the_payload() {
        let ok = Simulation::from_payload(&json!({"result": {"n": 1}})).unwrap();
        assert_eq!(ok.outcome(), SimulationEnd::Succeeded(json!({"n": 1})));
        let failing =
            Simulation::from_payload(&json!({"should_fail": true, "error_message": "boom"}))
                .unwrap();
        assert_eq!(failing.outcome(), SimulationEnd::Failed("boom".into()));
    }
}

/// One attempt of a simulated job, under its watchdog.
#[cfg(test)]
mod attempt_tests {
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
