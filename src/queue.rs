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
use crate::idempotency::Idempotency;
use crate::job::{queue_name, Attempt, Job, JobDefaults, JobStatus, NewJob};
use crate::job::{AttemptDetails, AttemptEnd};
use crate::log_line::job_line;
use crate::metrics::{Metrics, MinuteCounts};
use crate::queue_settings::{QueueSummary, SettingsChange};
use crate::running::RunningAttempts;
use crate::store::Store;
use crate::store::{FinishAndClaim, Inserted, NewKey, NewRow, StoredKey};
use crate::time::Timestamp;
use crate::trace::TraceParent;
use crate::worker::{Jobs, Waker};

pub use crate::store::bulk::{BulkAction, BulkFilter, MAX_FILTER_IDS};
pub use crate::store::{Answer, Cancel, JobFilter, Page};

/// Where the lines below are logged: the module that logged them before this layer existed,
/// so that `RUST_LOG` filters and log readers see them as before.
const LOG_TARGET: &str = "mini_lambda_rust::http::handlers";

/// After a waiter hears its job ended, how soon it reads it again while the end is not yet
/// visible (doubling each time, up to `SETTLE_LAST`).
const SETTLE_FIRST: Duration = Duration::from_millis(2);
const SETTLE_LAST: Duration = Duration::from_millis(100);

/// The most jobs one batch submit may hold.
pub const MAX_BATCH_JOBS: usize = 1000;

/// `IDEMPOTENCY_TTL_SECONDS`'s default, for a queue built without the configuration.
const DEFAULT_IDEMPOTENCY_TTL: Duration = Duration::from_secs(86_400);

/// What a submit did.
#[derive(Debug)]
pub enum Submitted {
    /// New jobs are stored; this is what to answer (and what their key, if any, keeps).
    Created(Answer),
    /// The request repeats an earlier one with the same key and fingerprint: nothing was
    /// stored, and this is the earlier answer, as it was.
    Replayed(Answer),
}

/// Wake-ups sent after one batch of a bulk retry: as many as there can be workers.
const MAX_WAKEUPS_PER_BATCH: u64 = 1024;

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
    /// How long a submit's idempotency key is remembered.
    idempotency_ttl: Duration,
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
            idempotency_ttl: DEFAULT_IDEMPOTENCY_TTL,
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

    // -- Submits: one job, a batch, idempotency keys --------------------------------------

    /// How long a submit's idempotency key is remembered (`IDEMPOTENCY_TTL_SECONDS`; a day
    /// unless this is called).
    pub fn with_idempotency_ttl(mut self, ttl: Duration) -> Queue {
        self.idempotency_ttl = ttl;
        self
    }

    /// Validates a submit request (`POST /jobs`), stores the job and wakes a worker if one is
    /// needed. `answer` makes what the client is told from the new job's id; it is stored with
    /// `key`, if one is given, and a later request with the same key and fingerprint gets it
    /// again, without a new job (also if the first is still being committed: it waits).
    /// `trace` is the request's `traceparent`, stored with the job.
    pub fn submit(
        &self,
        body: Value,
        key: Option<&Idempotency>,
        trace: Option<TraceParent>,
        answer: impl FnOnce(&[String]) -> Result<Answer>,
    ) -> Result<Submitted> {
        self.submit_jobs(key, answer, |now| {
            Ok(vec![self.validate(body, trace.as_ref(), now)?])
        })
    }

    /// `submit` for `{"jobs": [<submit body>, ...]}` (`POST /jobs/batch`): 1 to
    /// [`MAX_BATCH_JOBS`] jobs, stored all or none in one transaction. An invalid item is a
    /// validation error naming it (`jobs[3].priority ...`); the pending limit applies to the
    /// batch as a whole. `answer` gets the ids in request order.
    /// `trace`, the request's `traceparent`, is stored with every job of the batch.
    pub fn submit_batch(
        &self,
        body: Value,
        key: Option<&Idempotency>,
        trace: Option<TraceParent>,
        answer: impl FnOnce(&[String]) -> Result<Answer>,
    ) -> Result<Submitted> {
        self.submit_jobs(key, answer, |now| {
            batch_items(body)?
                .into_iter()
                .enumerate()
                .map(|(index, item)| {
                    self.validate(item, trace.as_ref(), now)
                        .map_err(|err| in_item(index, err))
                })
                .collect()
        })
    }

    /// Both submits: the answer stored with `key` if it was, else the jobs `validated` makes,
    /// stored. The key is looked up before the body is validated (see `replay`).
    fn submit_jobs(
        &self,
        key: Option<&Idempotency>,
        answer: impl FnOnce(&[String]) -> Result<Answer>,
        validated: impl FnOnce(Timestamp) -> Result<Vec<NewJob>>,
    ) -> Result<Submitted> {
        let now = Timestamp::now();
        if let Some(replayed) = self.replay(key, now)? {
            return Ok(replayed);
        }
        let jobs = validated(now)?;
        self.store_jobs(jobs, key, now, answer)
    }

    fn validate(&self, body: Value, trace: Option<&TraceParent>, now: Timestamp) -> Result<NewJob> {
        let mut job = NewJob::from_json(body, self.defaults, now)?;
        self.check_runnable(&job)?;
        job.traceparent = trace.map(|trace| trace.as_str().to_string());
        Ok(job)
    }

    /// The answer to replay if `key` was stored (committed) by an earlier request, looked up
    /// before the body is validated: a repeat is answered as the first was even if the same
    /// body would not be accepted now (its function since removed, the queue full).
    fn replay(&self, key: Option<&Idempotency>, now: Timestamp) -> Result<Option<Submitted>> {
        let Some(key) = key else {
            return Ok(None);
        };
        self.store
            .idempotency_key(&key.key, self.fresh_since(now))?
            .map(|stored| replayed(key, stored))
            .transpose()
    }

    fn fresh_since(&self, now: Timestamp) -> Timestamp {
        let ttl = i64::try_from(self.idempotency_ttl.as_micros()).unwrap_or(i64::MAX);
        Timestamp::from_micros(now.as_micros().saturating_sub(ttl))
    }

    /// Stores the jobs (with the key) and wakes one worker once they are committed; a woken
    /// worker that takes a job wakes the next while more are due.
    fn store_jobs(
        &self,
        jobs: Vec<NewJob>,
        key: Option<&Idempotency>,
        now: Timestamp,
        answer: impl FnOnce(&[String]) -> Result<Answer>,
    ) -> Result<Submitted> {
        // Time-ordered (v7), so each new id lands at the end of the id index. Random (v4) ids
        // put every insert on a random index page: once the index outgrew the cache, each job
        // cost several 4 KiB WAL frames and about a third of the submit rate.
        let rows: Vec<NewRow> = jobs
            .into_iter()
            .map(|job| (uuid::Uuid::now_v7().to_string(), job))
            .collect();
        let ids: Vec<String> = rows.iter().map(|(id, _)| id.clone()).collect();
        let answer = answer(&ids)?;
        let new_key = key.map(|key| NewKey {
            key: key.key.clone(),
            request_hash: key.fingerprint.clone(),
            answer: answer.clone(),
            expired_before: self.fresh_since(now),
        });
        if let Inserted::KeyTaken(stored) = self.store.insert_jobs(&rows, new_key.as_ref(), now)? {
            // Only reached with a key: the request it repeats committed while this one ran.
            return match key {
                Some(key) => replayed(key, stored),
                None => Err(Error::Internal("a submit without a key found one".into())),
            };
        }
        match rows.as_slice() {
            [(id, job)] => info!(
                target: LOG_TARGET,
                job_id = id.as_str(),
                queue = job.queue.as_str(),
                trace_id = job.trace_id();
                "job {id} submitted"
            ),
            // One trace for the whole batch; its jobs may be in several queues.
            [(first, job), .., (last, _)] => info!(
                target: LOG_TARGET,
                trace_id = job.trace_id();
                "batch of {} jobs submitted: {first} to {last}",
                rows.len()
            ),
            [] => {}
        }
        if let Some(due) = rows.iter().map(|(_, job)| job.run_at.unwrap_or(now)).min() {
            self.waker.job_queued(due);
        }
        Ok(Submitted::Created(answer))
    }

    /// What a job must pass besides its own fields before it is stored, for every way of
    /// submitting one (single or batch): its function exists and its payload matches the
    /// function's schema (`FUNCTIONS_DIR/NAME.schema.json`), or, simulated, its payload's
    /// simulation keys are valid.
    pub fn check_runnable(&self, job: &NewJob) -> Result<()> {
        match &job.function {
            Some(name) => {
                if self.functions.resolve(name).is_none() {
                    return Err(Error::UnknownFunction(format!(
                        "no function named {name:?} in FUNCTIONS_DIR; GET /functions lists them"
                    )));
                }
                self.functions.check_payload(name, &job.payload)
            }
            // Simulation keys are checked at submit so a typo fails now, not at run time.
            None => Simulation::from_payload(&job.payload).map(|_| ()),
        }
    }

    // -- end of submits ---------------------------------------------------------------------

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
        // Read after registering: an end between the two still wakes the waiter. Read as the
        // writer sees it: an end is heard as soon as it is answered, which on SQLite is before
        // its batch commits, so the reader could still show the job running.
        let mut settling = SETTLE_FIRST;
        let mut woken = false;
        loop {
            let job = self.store.get_latest(&id)?.ok_or_else(|| not_found(&id))?;
            if job.status.is_terminal() || waiter.stopping() || Instant::now() >= deadline {
                return Ok(job);
            }
            if woken {
                // Woken, yet the job has not ended as read: a wake-up for every waiter (another
                // node's notifications not arriving), or an end this read cannot see yet. Look
                // again shortly rather than sleep to the deadline.
                waiter.wait_until(deadline.min(Instant::now() + settling));
                settling = (settling * 2).min(SETTLE_LAST);
            } else {
                woken = waiter.wait_until(deadline);
            }
        }
    }

    /// Jobs newest first that pass `filter`, optionally older than the job `before` (a
    /// canonical id).
    pub fn list(&self, filter: &JobFilter, before: Option<&str>, limit: usize) -> Result<Page> {
        self.store.list(filter, before, limit)
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
        job_line!(
            target: LOG_TARGET,
            info,
            &job,
            "job {id} retried by request; retry budget reset to {}",
            job.max_retries
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
        job_line!(target: LOG_TARGET, info, &deleted, "job {id} deleted");
        Ok(())
    }

    /// Cancels a job: a pending one at once; a running one is stopped and recorded
    /// `cancelled` by its worker a moment later (returned as it was).
    pub fn cancel(&self, id: &str) -> Result<Cancel> {
        let id = canonical_id(id)?;
        let cancel = self.store.cancel(&id, Timestamp::now())?;
        match &cancel {
            Cancel::Cancelled(job) => {
                job_line!(target: LOG_TARGET, info, job, "job {id} cancelled before it ran")
            }
            Cancel::Running(job) => {
                self.stop_attempt(job);
                job_line!(
                    target: LOG_TARGET,
                    info,
                    job,
                    "job {id}: cancelling its running attempt"
                );
            }
        }
        Ok(cancel)
    }

    // --- Observing: what GET /metrics and GET /stats read ---

    /// Where what passes the store is counted.
    pub fn metrics(&self) -> &Arc<Metrics> {
        self.store.metrics()
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// How long the queue's oldest due pending job has been due, in seconds; 0 with none.
    /// Reads the index only for a queue whose counters say it has pending jobs.
    pub fn oldest_pending_age_seconds(&self, queue: &QueueSummary, now: Timestamp) -> Result<f64> {
        if queue.counts.pending == 0 {
            return Ok(0.0);
        }
        let oldest = self.store.oldest_pending_run_at(&queue.name)?;
        // From whole microseconds, so the figure prints as it was measured (1.143768).
        Ok(oldest.map_or(0.0, |run_at| run_at.until(now).as_micros() as f64 / 1e6))
    }

    /// The database's size on disk.
    pub fn database_size(&self) -> Result<u64> {
        self.store.size_bytes()
    }

    /// Attempts running on this node now.
    pub fn busy_workers(&self) -> usize {
        self.running.busy()
    }

    /// Jobs finished per minute and status from minute `since` on: the store's table (every
    /// node's flushed counts) and this node's not yet flushed.
    pub fn finished_since(&self, since: i64) -> Result<MinuteCounts> {
        self.metrics()
            .finished_minutes()
            .read(since, || self.store.finished_minutes(since))
    }

    // --- Named queues: GET /queues, pause, resume, PUT /queues/:name ---

    /// Every queue that has jobs or settings, by name.
    pub fn queues(&self) -> Result<Vec<QueueSummary>> {
        self.store.queues()
    }

    /// Pauses a queue: its jobs wait, its running ones finish.
    pub fn pause(&self, name: &str) -> Result<QueueSummary> {
        let queue = self
            .store
            .set_paused(queue_name(name)?, true, Timestamp::now())?;
        info!(target: LOG_TARGET, "queue {name} paused");
        Ok(queue)
    }

    /// Resumes a queue and wakes a worker for its jobs (each worker that takes one wakes the
    /// next while more are due; the store tells the other nodes).
    pub fn resume(&self, name: &str) -> Result<QueueSummary> {
        let queue = self
            .store
            .set_paused(queue_name(name)?, false, Timestamp::now())?;
        info!(target: LOG_TARGET, "queue {name} resumed");
        self.waker.wake_one();
        Ok(queue)
    }

    /// Changes a queue's limits from a `PUT /queues/:name` body; a looser limit may let jobs
    /// start now, so a worker is woken.
    pub fn configure_queue(&self, name: &str, body: Value) -> Result<QueueSummary> {
        let name = queue_name(name)?;
        let change = SettingsChange::from_json(body)?;
        let queue = self
            .store
            .configure_queue(name, &change, Timestamp::now())?;
        info!(
            target: LOG_TARGET,
            "queue {name}: concurrency {:?}, rate_per_second {:?}",
            queue.concurrency,
            queue.rate_per_second
        );
        self.waker.wake_one();
        Ok(queue)
    }

    // Bulk actions (`POST /jobs/retry`, `/jobs/cancel`, `/jobs/delete`).

    /// Applies `action` to every job `filter` matches that it applies to, in batches (see
    /// `store::bulk`); returns how many. As each batch commits, the attempts it cancelled or
    /// deleted stop at once if they run here (another node's lease keeper stops its own
    /// within a second), and the jobs it retried wake workers.
    pub fn bulk(&self, action: BulkAction, filter: &BulkFilter) -> Result<u64> {
        let now = Timestamp::now();
        let affected = self.store.bulk(action, filter, now, &mut |done| {
            for job in &done.stop {
                self.stop_attempt(job);
            }
            if action == BulkAction::Retry {
                // One wake-up per job, up to one for every idle worker: the channel holds no
                // more, and a full channel drops the rest.
                for _ in 0..done.affected.min(MAX_WAKEUPS_PER_BATCH) {
                    self.waker.job_queued(now);
                }
            }
        })?;
        info!(target: LOG_TARGET, "bulk {action:?} by request: {affected} jobs");
        Ok(affected)
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

/// The answer stored under `key`, if the request is the one that stored it.
fn replayed(key: &Idempotency, stored: StoredKey) -> Result<Submitted> {
    if stored.request_hash != key.fingerprint {
        return Err(Error::IdempotencyKeyReused(format!(
            "Idempotency-Key {:?} was used for a request with another body or route within IDEMPOTENCY_TTL_SECONDS; send a new key with a new request",
            key.key
        )));
    }
    info!(target: LOG_TARGET, "replayed the answer to Idempotency-Key {:?}", key.key);
    Ok(Submitted::Replayed(stored.answer))
}

/// The items of a batch body, `{"jobs": [...]}`, checked for count and shape.
fn batch_items(body: Value) -> Result<Vec<Value>> {
    let Value::Object(mut fields) = body else {
        return Err(Error::Validation(
            "the request body must be a JSON object with a \"jobs\" array".into(),
        ));
    };
    if let Some(unknown) = fields.keys().find(|name| name.as_str() != "jobs") {
        return Err(Error::Validation(format!(
            "unknown field {unknown:?}; the only allowed field is jobs"
        )));
    }
    let items = match fields.remove("jobs") {
        Some(Value::Array(items)) => items,
        None | Some(Value::Null) => {
            return Err(Error::Validation(format!(
                "jobs is required: an array of 1 to {MAX_BATCH_JOBS} submit bodies"
            )))
        }
        Some(other) => {
            return Err(Error::Validation(format!(
                "jobs must be an array of 1 to {MAX_BATCH_JOBS} submit bodies, got {}",
                json_type(&other)
            )))
        }
    };
    if items.is_empty() || items.len() > MAX_BATCH_JOBS {
        return Err(Error::Validation(format!(
            "jobs must hold 1 to {MAX_BATCH_JOBS} submit bodies, got {}",
            items.len()
        )));
    }
    if let Some(index) = items.iter().position(|item| !item.is_object()) {
        return Err(Error::Validation(format!(
            "jobs[{index}] must be a JSON object with a \"payload\" field"
        )));
    }
    Ok(items)
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An item's validation error, naming the item: `jobs[3].priority must be ...` for a message
/// about a field (or a payload key), `jobs[3]: unknown field ...` for others.
fn in_item(index: usize, err: Error) -> Error {
    let name = |message: String| {
        let first_word = message.split([' ', '.']).next().unwrap_or_default();
        if NewJob::is_field(first_word) {
            format!("jobs[{index}].{message}")
        } else {
            format!("jobs[{index}]: {message}")
        }
    };
    match err {
        Error::Validation(message) => Error::Validation(name(message)),
        Error::UnknownFunction(message) => Error::UnknownFunction(name(message)),
        other => other,
    }
}
