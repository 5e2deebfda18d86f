//! mini-lambda-rust: a single-binary job execution server.
//!
//! The crate is a library with a thin binary (`main.rs`). [`run`] wires the pieces together:
//! the SQLite [`store`] is the queue of record, the [`worker`] pool claims due jobs from it and
//! runs them through the [`executor`], and the [`http`] layer accepts, inspects and manages jobs
//! through the [`queue`], which stands between it and the store and wakes the workers.
//! Dependencies point one way: `job`, `time` and `error` know nothing else in the crate; the store
//! knows the model and SQLite; workers know the model and the store; the queue knows the store
//! and the workers' wake-ups; only `http` knows tiny_http, and it reaches jobs only through the
//! queue.
#![forbid(unsafe_code)]

mod background;
pub mod config;
pub mod error;
mod executor;
mod functions;
mod http;
mod idempotency;
mod job;
pub mod log_line;
mod metrics;
mod minute_flusher;
mod queue;
mod queue_settings;
mod retention;
mod retry;
mod running;
mod schemas;
mod server;
mod store;
mod time;
mod trace;
mod waiters;
mod worker;

pub use config::Config;
pub use error::Error;
pub use http::{listen as listen_http, HANDLER_THREADS};
pub use server::{run, Exit};
