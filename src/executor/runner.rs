//! The executor the server runs: a job that names a function runs as a child process
//! (`process`), any other job is simulated (`simulation`). It owns only that choice; how
//! either way runs, and what the functions directory holds, are theirs.

use crossbeam_channel::Receiver;

use super::process::{self, FunctionRunner};
use super::simulation::simulate;
use super::{Details, Executor, Outcome};
use crate::job::Job;

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

/// Runs one attempt of `job`. Neither channel is ever sent on: `abort` (the pool's) closes to
/// interrupt every attempt, `cancel` (this attempt's) to cancel this one.
fn run_attempt(
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
