//! Runs one attempt of a job on a thread of its own and reports how it ended over a channel.
//! The worker that started it watches that channel with the job's timeout; to give up on an
//! attempt it drops the cancel sender, which wakes the attempt's wait at once.

use std::thread;

use crossbeam_channel::{bounded, Receiver, Sender};
use serde_json::Value;

use crate::job::Job;
use crate::simulation::{Simulation, SimulationEnd};

/// How an attempt ended, as seen by the attempt itself.
#[derive(Debug)]
pub enum Outcome {
    Succeeded(Value),
    Failed(String),
    /// The worker gave up on the attempt (timeout or shutdown) before it finished.
    Cancelled,
}

/// An attempt in progress: `done` delivers its outcome exactly once.
pub struct RunningAttempt {
    pub done: Receiver<Outcome>,
    cancel: Sender<()>,
}

impl RunningAttempt {
    /// Stops the attempt's work; its thread ends promptly and its outcome is ignored.
    pub fn cancel(self) {
        drop(self.cancel);
    }
}

/// Starts an attempt of `job`. Fails only if the operating system refuses a thread.
pub fn start(job: &Job) -> std::io::Result<RunningAttempt> {
    let (done_sender, done) = bounded(1);
    let (cancel, cancelled) = bounded::<()>(0);
    let work = Simulation::from_payload(&job.payload);
    thread::Builder::new()
        .name(format!("attempt-{}", short_id(&job.id)))
        .spawn(move || {
            let outcome = match work {
                // Stored payloads were validated at submit; this covers rows written otherwise.
                Err(err) => Outcome::Failed(format!("invalid payload: {err}")),
                Ok(simulation) => match simulation.run(&cancelled) {
                    SimulationEnd::Succeeded(result) => Outcome::Succeeded(result),
                    SimulationEnd::Failed(message) => Outcome::Failed(message),
                    SimulationEnd::Cancelled => Outcome::Cancelled,
                },
            };
            // The worker may have stopped listening (timeout); nothing to do then.
            let _ = done_sender.send(outcome);
        })?;
    Ok(RunningAttempt { done, cancel })
}

/// Thread names are capped at 15 bytes on Linux; the first UUID group identifies the job.
fn short_id(id: &str) -> &str {
    id.split('-').next().unwrap_or(id)
}
