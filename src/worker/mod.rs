//! The worker pool: OS threads that claim due jobs from the store, run each attempt under a
//! watchdog that enforces the job's timeout, and record the outcome with the retry rule.
//!
//! One file per concern, each depending only on those before it: `idle` (the idle/wake
//! protocol: finding work, sleeping, the [`Waker`]), `attempt` (one attempt, run and recorded),
//! `pool` (the threads: start, drain, abort, join) and `recovery` (the pass at start over
//! attempts a crash interrupted). This file only names them. Running the job's work itself is
//! the executor's (`crate::executor`); the SQL is the store's.

mod attempt;
mod idle;
mod pool;
mod recovery;

pub use idle::Waker;
pub use pool::WorkerPool;
pub use recovery::recover_interrupted;
