//! The worker pool: OS threads that claim due jobs from the store, run each attempt under a
//! watchdog that enforces the job's timeout, and record the outcome with the retry rule.
//!
//! One file per concern, each depending only on those before it: `idle` (the idle/wake
//! protocol: finding work, sleeping, the [`Waker`]), `attempt` (one attempt, run and recorded),
//! `pool` (the threads: start, drain, abort, join), `recovery` (the pass over attempts
//! whose node lost its lease) and `lease` (the node's heartbeat, and stopping attempts that
//! were cancelled or deleted elsewhere). This file only names them. Running the job's work itself is
//! the executor's (`crate::executor`); the SQL is the store's.

mod attempt;
mod idle;
mod jobs;
mod lease;
mod pool;
mod recovery;

pub use idle::Waker;
pub use jobs::Jobs;
pub use lease::LeaseKeeper;
pub use pool::{Drain, WorkerPool};
