//! Executors: what runs one attempt of a job under its watchdog. The attempt gets the job's
//! timeout, and a shutdown abort or a cancel stops it at once.
//!
//! This file owns only the seam: the [`Executor`] trait a worker calls and the [`Outcome`] it
//! gets back. Each way of running lives in a child that depends on this file and nothing
//! else here: `simulation` (a job without a function, waited out on the worker's thread) and
//! `process` (a function as a child process). `runner` is the executor the server uses; it
//! picks between the two per job, so the dependencies point one way: `runner` → `process`,
//! `simulation` → this file. What an attempt's outcome does to the job (retry, record) is the
//! worker's, not an executor's.

use crossbeam_channel::Receiver;
use serde_json::Value;

use crate::job::Job;

mod process;
mod runner;
pub mod simulation;

pub use process::{FunctionRunner, ProcessGroups};

pub use crate::job::AttemptDetails as Details;

/// What a worker needs to run an attempt; the seam through which tests give workers an
/// executor of their own (one that panics, say).
pub trait Executor: Send + Sync {
    /// Runs one attempt of `job`. Neither channel is ever sent on: `abort` (the pool's)
    /// closes to interrupt every attempt, `cancel` (this attempt's) to cancel this one.
    fn run_attempt(
        &self,
        job: &Job,
        abort: &Receiver<()>,
        cancel: &Receiver<()>,
    ) -> (Outcome, Details);
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
