//! The simulated job: what a payload asks for (`duration_ms`, `should_fail`, `result`,
//! `error_message`) and how it is carried out. The wait is a `recv_timeout` on a channel so that
//! a timed-out or interrupted job frees its thread at once instead of sleeping on.

use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use serde_json::Value;

use crate::error::{Error, Result};

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
    /// The wait was woken before `duration` passed: the worker gave up on the job.
    Cancelled,
}

impl Simulation {
    /// Reads the simulation keys of a payload. Non-object payloads run as a default job; keys
    /// of the wrong type are a validation error naming `payload.<key>`.
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
            Some(value) => match value.as_u64() {
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
        match fields.get("result") {
            None | Some(Value::Null) => {}
            Some(value) => simulation.result = value.clone(),
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

    /// Waits `duration` on `cancel`; a message or a dropped sender ends the wait early.
    pub fn run(self, cancel: &Receiver<()>) -> SimulationEnd {
        if !self.duration.is_zero() {
            match cancel.recv_timeout(self.duration) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return SimulationEnd::Cancelled,
            }
        }
        if self.should_fail {
            SimulationEnd::Failed(self.error_message)
        } else {
            SimulationEnd::Succeeded(self.result)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::bounded;
    use serde_json::json;
    use std::time::Instant;

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
    fn outcome_follows_the_payload() {
        let (_keep, cancel) = bounded::<()>(0);
        let ok = Simulation::from_payload(&json!({"duration_ms": 0, "result": {"n": 1}})).unwrap();
        assert_eq!(ok.run(&cancel), SimulationEnd::Succeeded(json!({"n": 1})));
        let failing = Simulation::from_payload(
            &json!({"duration_ms": 0, "should_fail": true, "error_message": "boom"}),
        )
        .unwrap();
        assert_eq!(failing.run(&cancel), SimulationEnd::Failed("boom".into()));
    }

    #[test]
    fn dropping_the_sender_wakes_the_wait_at_once() {
        let (stop, cancel) = bounded::<()>(0);
        let simulation = Simulation::from_payload(&json!({"duration_ms": 60_000})).unwrap();
        let started = Instant::now();
        drop(stop);
        assert_eq!(simulation.run(&cancel), SimulationEnd::Cancelled);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
