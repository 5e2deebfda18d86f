//! The queue layer between HTTP and the store: what a client can do to jobs. It owns submit
//! (validation, the job id, the insert and the wake-up of an idle worker), cancel, retry and
//! delete (stopping a running attempt through `RunningAttempts`), the reads HTTP serves, and
//! the health checks of the database behind it. HTTP calls this and nothing below it; it
//! knows nothing of HTTP: requests, statuses and headers stay in `http`.
//!
//! Workers claim and record through it too (it implements `worker::Jobs`), so submit, claim,
//! cancel, retry, delete and wake-ups are all here. Every end of a job, a worker's and the
//! ones requested here, passes the store's `job_ended`, below both paths.

use std::sync::Arc;
use std::time::{Duration, Instant};

use log::info;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::executor::simulation::Simulation;
use crate::functions::Functions;
use crate::job::{Attempt, Job, JobDefaults, JobStatus, NewJob};
use crate::job::{AttemptDetails, AttemptEnd};
use crate::running::RunningAttempts;
use crate::store::FinishAndClaim;
use crate::store::Store;
use crate::time::Timestamp;
use crate::worker::{Jobs, Waker};

pub use crate::store::{Cancel, Page};

/// Where the lines below are logged: the module that logged them before this layer existed,
/// so that `RUST_LOG` filters and log readers see them as before.
const LOG_TARGET: &str = "mini_lambda_rust::http::handlers";

pub struct Queue {
    store: Arc<Store>,
    /// Tells an idle worker that a job may have become due.
    waker: Waker,
    /// To stop a running attempt on cancel or delete.
    running: Arc<RunningAttempts>,
    /// The functions a job may name.
    functions: Functions,
    /// What a submit leaves out, from the configuration.
    defaults: JobDefaults,
    /// This node's id: an attempt running here can be stopped here.
    node: String,
}

impl Queue {
    pub fn new(
        store: Arc<Store>,
        waker: Waker,
        running: Arc<RunningAttempts>,
        functions: Functions,
        defaults: JobDefaults,
        node: String,
    ) -> Queue {
        Queue {
            store,
            waker,
            running,
            functions,
            defaults,
            node,
        }
    }

    /// Checks that the database answers a real read.
    pub fn ping(&self) -> Result<()> {
        self.store.ping()
    }

    /// Whether writes reach the disk: `Err(Unavailable)` while they fail.
    pub fn writes_ok(&self) -> Result<()> {
        self.store.writes_ok()
    }

    /// Validates a submit request, stores the job and wakes a worker if one is needed.
    /// Returns the new job's id once the job is durable; it is `pending`.
    pub fn submit(&self, body: Value) -> Result<String> {
        let now = Timestamp::now();
        let job = NewJob::from_json(body, self.defaults, now)?;
        match &job.function {
            Some(name) => {
                if self.functions.resolve(name).is_none() {
                    return Err(Error::UnknownFunction(format!(
                        "no function named {name:?} in FUNCTIONS_DIR; GET /functions lists them"
                    )));
                }
            }
            // Simulation keys are checked at submit so a typo fails now, not at run time.
            None => {
                Simulation::from_payload(&job.payload)?;
            }
        }
        // Time-ordered (v7), so each new id lands at the end of the id index. Random (v4) ids
        // put every insert on a random index page: once the index outgrew the cache, each job
        // cost several 4 KiB WAL frames and about a third of the submit rate.
        let id = uuid::Uuid::now_v7().to_string();
        self.store.insert(id.clone(), &job, now)?;
        info!(target: LOG_TARGET, "job {id} submitted");
        self.waker.job_queued(job.run_at.unwrap_or(now));
        Ok(id)
    }

    pub fn get(&self, id: &str) -> Result<Job> {
        let id = canonical_id(id)?;
        self.store.get(&id)?.ok_or_else(|| not_found(&id))
    }

    /// The job once it has ended, or as it is after `patience`, whichever comes first. At
    /// once when as many requests wait as may (the waiters' limit) or the server is stopping;
    /// `NotFound` also if the job is deleted meanwhile. Woken by `job_ended`, here or on
    /// another node, never by polling the job.
    pub fn wait_for_end(&self, id: &str, patience: Duration) -> Result<Job> {
        let id = canonical_id(id)?;
        let deadline = Instant::now() + patience;
        let Some(waiter) = self.store.waiters().register(&id) else {
            return self.get(&id);
        };
        // Read after registering: an end between the two still wakes the waiter.
        loop {
            let job = self.get(&id)?;
            if job.status.is_terminal() || waiter.stopping() || Instant::now() >= deadline {
                return Ok(job);
            }
            waiter.wait_until(deadline);
        }
    }

    /// Jobs newest first, optionally of one status and older than the job `before` (a
    /// canonical id).
    pub fn list(
        &self,
        status: Option<JobStatus>,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Page> {
        self.store.list(status, before, limit)
    }

    /// Every attempt of a job in order.
    pub fn attempts(&self, id: &str) -> Result<Vec<Attempt>> {
        let id = canonical_id(id)?;
        self.store.attempts(&id)?.ok_or_else(|| not_found(&id))
    }

    /// Starts an ended job over with its full retry budget; returns it as it now is.
    pub fn retry(&self, id: &str) -> Result<Job> {
        let id = canonical_id(id)?;
        let job = self.store.retry(&id, Timestamp::now())?;
        info!(
            target: LOG_TARGET,
            "job {id} retried by request; retry budget reset to {}", job.max_retries
        );
        self.waker.job_queued(job.run_at);
        Ok(job)
    }

    /// Deletes a job and everything stored about it, stopping its attempt if one runs.
    pub fn delete(&self, id: &str) -> Result<()> {
        let id = canonical_id(id)?;
        let deleted = self.store.delete(&id)?.ok_or_else(|| not_found(&id))?;
        // The row is gone, so the stopped attempt has nothing to write back to.
        if deleted.status == JobStatus::Running {
            self.stop_attempt(&deleted);
        }
        info!(target: LOG_TARGET, "job {id} deleted");
        Ok(())
    }

    /// Cancels a job: a pending one at once; a running one is stopped and recorded
    /// `cancelled` by its worker a moment later (returned as it was).
    pub fn cancel(&self, id: &str) -> Result<Cancel> {
        let id = canonical_id(id)?;
        let cancel = self.store.cancel(&id, Timestamp::now())?;
        match &cancel {
            Cancel::Cancelled(_) => info!(target: LOG_TARGET, "job {id} cancelled before it ran"),
            Cancel::Running(job) => {
                self.stop_attempt(job);
                info!(target: LOG_TARGET, "job {id}: cancelling its running attempt");
            }
        }
        Ok(cancel)
    }

    /// Stops the job's attempt if it runs on this node; the store has recorded the request for
    /// any other node, whose lease keeper stops it there.
    fn stop_attempt(&self, job: &Job) {
        if job.node.as_deref() == Some(self.node.as_str()) {
            self.running.cancel(job);
        }
    }
}

impl Jobs for Queue {
    fn claim_next_due(&self, now: Timestamp) -> Result<Option<Job>> {
        self.store.claim_next_due(now)
    }

    fn next_due_at(&self) -> Result<Option<Timestamp>> {
        self.store.next_due_at()
    }

    fn finish_attempt(
        &self,
        job: &Job,
        end: &AttemptEnd,
        details: &AttemptDetails,
        now: Timestamp,
    ) -> Result<bool> {
        self.store.finish_attempt(job, end, details, now)
    }

    fn finish_and_claim_next(
        &self,
        job: &Job,
        end: &AttemptEnd,
        details: &AttemptDetails,
        now: Timestamp,
    ) -> Result<FinishAndClaim> {
        self.store.finish_and_claim_next(job, end, details, now)
    }
}

/// Job ids are UUIDs in lowercase hyphenated form; anything else names no job.
pub fn canonical_id(id: &str) -> Result<String> {
    uuid::Uuid::parse_str(id)
        .map(|uuid| uuid.hyphenated().to_string())
        .map_err(|_| not_found(id))
}

fn not_found(id: &str) -> Error {
    Error::NotFound(format!("no job with id {id:?}"))
}
