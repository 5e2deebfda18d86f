//! The queue of record, behind one interface. [`Backend`] is what a database must do for the
//! server; `sqlite` (the embedded default) and `postgres` (many nodes on one database, behind
//! the cargo feature `postgres`) implement it, and own every SQL statement, their schema and
//! its migrations. [`Store`] is what the rest of the server holds: it picks the backend from a
//! [`Location`] and adds what every backend shares, the one hook every end of a job passes
//! (`job_ended`), which wakes the requests waiting for that job ([`Waiters`]) and has the
//! backend tell the other nodes.
//!
//! The store knows the job model and its database; never HTTP, nor the configuration: the
//! caller passes plain values ([`Options`]). Job state transitions are the model's
//! (`AttemptEnd::transition`); a backend stores them and decides none.
//!
//! Leases: each server process is a node with an id. A claim records the claiming node on the
//! job; the node's heartbeat says it is alive; attempts of a node whose heartbeat is older than
//! the lease are recovered by any other node (`worker::lease`).

pub mod bulk;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod sqlite;
#[cfg(test)]
pub(crate) mod test_dir;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::job::{Attempt, AttemptDetails, AttemptEnd, Job, JobStatus, NewJob};
use crate::metrics::{Metrics, MinuteCounts, Outcome};
use crate::queue_settings::{QueueSummary, SettingsChange};
use crate::time::Timestamp;
use crate::waiters::Waiters;
use bulk::{Batch, BatchDone, BulkAction, BulkFilter};

/// Where the jobs are stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A SQLite database file, owned by this process alone.
    Sqlite(PathBuf),
    /// A PostgreSQL connection string (`postgres://user@host/db`), shared by every node.
    Postgres(String),
}

impl Location {
    /// The location as the log and error messages name it, without a password.
    pub fn describe(&self) -> String {
        match self {
            Location::Sqlite(path) => path.display().to_string(),
            Location::Postgres(url) => redact_password(url),
        }
    }
}

/// When a commit reaches the disk: the caller's trade between durability and speed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    /// Every commit is synced before it is acknowledged: acknowledged jobs survive power loss.
    EveryCommit,
    /// Commits are synced later (SQLite: at checkpoints; PostgreSQL: `synchronous_commit =
    /// off`): acknowledged jobs survive a crash of the process, but the last ones may be lost
    /// if the machine (SQLite) or the database server (PostgreSQL) loses power.
    Deferred,
}

/// What a store is opened with.
#[derive(Clone, Debug)]
pub struct Options {
    pub sync: SyncMode,
    /// The most jobs that may be pending when a new one is submitted; 0 means no limit.
    pub max_pending_jobs: u64,
    /// This process's node id: recorded on every job it claims.
    pub node: String,
    /// Connections to keep to a database server (PostgreSQL); SQLite uses two.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub pool_size: usize,
    /// Where the store records submits, attempts, ends and commit times.
    pub metrics: Arc<Metrics>,
}

#[cfg(test)]
impl Options {
    /// Synced commits, one pooled connection, node `node`, for unit tests.
    pub(crate) fn for_test(node: &str, max_pending_jobs: u64) -> Options {
        Options {
            sync: SyncMode::EveryCommit,
            max_pending_jobs,
            node: node.into(),
            pool_size: 1,
            metrics: Arc::default(),
        }
    }
}

/// What `cancel` found.
pub enum Cancel {
    /// The job was pending and is now `cancelled`.
    Cancelled(Job),
    /// The job is running; its attempt must be stopped. The store has recorded the request, so
    /// the node running it stops it even if that is another node.
    Running(Job),
}

/// What `finish_and_claim_next` did.
pub struct FinishAndClaim {
    /// Whether the outcome was recorded (the attempt was still the job's running one).
    pub recorded: bool,
    /// The job claimed to run next.
    pub next: Option<Job>,
    /// When nothing was claimed: when the next pending job is due, as the writer sees it.
    pub next_due: Option<Timestamp>,
}

/// Which jobs `GET /jobs` lists: each filter given narrows it; any combination is served
/// by an index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    pub queue: Option<String>,
    pub function: Option<String>,
}

/// One page of `GET /jobs`.
pub struct Page {
    pub jobs: Vec<Job>,
    pub has_more: bool,
}

/// An attempt the database says runs on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningHere {
    pub job_id: String,
    pub attempt: u32,
    /// A cancel was requested (possibly on another node).
    pub cancel_requested: bool,
}

// -- Submits and their idempotency keys ---------------------------------------------------

/// A job to store: its id and what was submitted.
pub type NewRow = (String, NewJob);

/// An idempotency key to store with the jobs of a submit, in the same transaction.
pub struct NewKey {
    pub key: String,
    /// The fingerprint of the request (`idempotency::Idempotency`).
    pub request_hash: String,
    /// What the submit is answered, repeated to every later request with the key.
    pub answer: Answer,
    /// A key stored before this is expired: it counts as absent, and is replaced.
    pub expired_before: Timestamp,
}

/// What a submit was answered, as its key keeps it: the status and the body, byte for byte.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// A key found stored (and not expired).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredKey {
    pub request_hash: String,
    pub answer: Answer,
}

/// What `insert_jobs` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Inserted {
    /// The jobs (and the key, if one was given) are committed.
    Stored,
    /// The key was stored already, by an earlier request (committed before this one's turn):
    /// nothing was written.
    KeyTaken(StoredKey),
}

/// Called when another node may have queued a job (PostgreSQL's `LISTEN/NOTIFY`, or a poll).
pub type OnJobQueued = Box<dyn Fn() + Send + Sync>;

/// What a node heard of jobs that ended on other nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "postgres"), allow(dead_code))] // Heard on PostgreSQL only.
pub enum EndedElsewhere<'a> {
    /// This job ended (or was deleted before it had).
    Job(&'a str),
    /// Any job may have ended: notifications do not arrive, so waiters must look again.
    Any,
}

/// Called with what the node hears of jobs ending elsewhere (PostgreSQL's `LISTEN/NOTIFY`).
pub type OnEndedElsewhere = Arc<dyn Fn(EndedElsewhere<'_>) + Send + Sync>;

/// What a database must do for the server. Every method is one transaction (or one read);
/// a method that returns an error has changed nothing.
pub trait Backend: Send + Sync {
    /// Checks that the database answers a real read.
    fn ping(&self) -> Result<()>;

    /// Whether writes reach the database's storage: `Err(Unavailable)` while they fail.
    fn writes_ok(&self) -> Result<()>;

    // -- Submits (insert_jobs, idempotency_key) ------------------------------------------

    /// Stores new pending jobs, all or none, in one transaction with `key` if one is given;
    /// returns once they are committed. `QueueFull` if they would take the pending jobs past
    /// the limit. A key stored already (and not expired) makes it write nothing and return
    /// `KeyTaken`; a request with the same key still being committed is waited for.
    fn insert_jobs(
        &self,
        jobs: &[NewRow],
        key: Option<&NewKey>,
        now: Timestamp,
    ) -> Result<Inserted>;

    /// The key as stored, if it was stored at or after `fresh_since` (committed ones only).
    fn idempotency_key(&self, key: &str, fresh_since: Timestamp) -> Result<Option<StoredKey>>;

    /// Stores one new pending job without a key (`insert_jobs` of one), for the unit tests.
    #[cfg(test)]
    fn insert(&self, id: String, job: &NewJob, now: Timestamp) -> Result<()> {
        self.insert_jobs(&[(id, job.clone())], None, now)
            .map(|_| ())
    }

    // -- end of submits ---------------------------------------------------------------------

    fn get(&self, id: &str) -> Result<Option<Job>>;

    /// `get`, seeing every write already answered, even one whose commit is still under way:
    /// what a request waiting for the job's end reads once `job_ended` has woken it.
    fn get_latest(&self, id: &str) -> Result<Option<Job>> {
        self.get(id)
    }

    /// Jobs newest first that pass `filter`, optionally older than the job `before`.
    fn list(&self, filter: &JobFilter, before: Option<&str>, limit: usize) -> Result<Page>;

    /// Marks the highest-priority due job `running` on this node, opens its next attempt and
    /// returns it (with `attempt` and `node` set); `None` when nothing is due. Never hands one
    /// job to two claims. Skips the jobs of a paused queue, of one running its `concurrency`
    /// already and of one without a start token (`rate_per_second`), across every node.
    fn claim_next_due(&self, now: Timestamp) -> Result<Option<Job>>;

    /// When the earliest pending job becomes claimable (possibly in the past): never for a
    /// paused or full queue's jobs, and not before the next start token of a rate-limited
    /// one; `None` if none waits.
    fn next_due_at(&self) -> Result<Option<Timestamp>>;

    /// Records how the attempt `job.attempt` ended. `false` when it is no longer the job's
    /// running attempt (deleted, recovered elsewhere), and then nothing is written.
    fn finish_attempt(
        &self,
        job: &Job,
        end: &AttemptEnd,
        details: &AttemptDetails,
        now: Timestamp,
    ) -> Result<bool>;

    /// `finish_attempt`, then a claim, in one transaction where the backend can.
    fn finish_and_claim_next(
        &self,
        job: &Job,
        end: &AttemptEnd,
        details: &AttemptDetails,
        now: Timestamp,
    ) -> Result<FinishAndClaim>;

    /// Manual retry: a `failed`, `timeout` or `cancelled` job starts over with its full retry
    /// budget. `NotFound`, or `InvalidState` for any other status.
    fn retry(&self, id: &str, now: Timestamp) -> Result<Job>;

    /// A pending job becomes `cancelled`; a running one is returned as it is, with the cancel
    /// recorded on it for its node; an ended one is `InvalidState`; `NotFound`.
    fn cancel(&self, id: &str, now: Timestamp) -> Result<Cancel>;

    /// Deletes a job and its attempts; returns it as it was, `None` if there was none.
    fn delete(&self, id: &str) -> Result<Option<Job>>;

    /// Every attempt of a job in order; `None` if there is no such job.
    fn attempts(&self, id: &str) -> Result<Option<Vec<Attempt>>>;

    /// Records that this node is alive now.
    fn heartbeat(&self, now: Timestamp) -> Result<()>;

    /// Running jobs whose node has lost its lease: its last heartbeat is older than `lease`, or
    /// it has none. With `include_own`, also this node's id's (at start: a previous process with
    /// the same id). A backend that knows no other process can use its database (SQLite, which
    /// locks its file) counts every other node as lost. Each job carries its `attempt`.
    fn lost_attempts(&self, now: Timestamp, lease: Duration, include_own: bool)
        -> Result<Vec<Job>>;

    /// Forgets nodes that lost their lease and run nothing any more, and, with `leaving`, this
    /// node (a graceful stop).
    fn forget_nodes(&self, now: Timestamp, lease: Duration, leaving: bool) -> Result<()>;

    /// The attempts the database says run on this node.
    fn running_here(&self) -> Result<Vec<RunningHere>>;

    /// Whether other nodes may use the same queue (so a draining node leaves them the jobs).
    fn is_shared(&self) -> bool;

    /// Calls `on_queued` whenever another node may have queued a job, or a job that ended
    /// freed a place in a queue with a `concurrency` limit, for as long as the process runs.
    fn watch_other_nodes(&self, on_queued: OnJobQueued) -> Result<()>;

    // --- Named queues: settings and counts (GET /queues, pause, resume, PUT) ---

    /// Every queue that has jobs or settings, by name, with its counts from the counters.
    fn queues(&self) -> Result<Vec<QueueSummary>>;

    /// Pauses or resumes a queue (creating its settings row); returns it as it now is. A
    /// resume tells the other nodes.
    fn set_paused(&self, name: &str, paused: bool, now: Timestamp) -> Result<QueueSummary>;

    /// Changes a queue's limits (creating its settings row); fields not in `change` keep their
    /// value. A new rate starts with a full bucket. Tells the other nodes.
    fn configure_queue(
        &self,
        name: &str,
        change: &SettingsChange,
        now: Timestamp,
    ) -> Result<QueueSummary>;

    // Bulk actions (`bulk`: the loop is `Store::bulk`; each backend's SQL is its `bulk.rs`).

    /// The highest `seq` of any job, 0 with none: a bulk action leaves later jobs alone.
    fn last_seq(&self) -> Result<i64>;

    /// One batch of a bulk action, in one transaction: picks the jobs `batch` names that
    /// match the filter's queue and function, and applies `action` to those it applies to.
    /// Retry starts a job over as `retry` does; cancel ends a pending job as `cancel` does and
    /// records the cancel of a running one for its node; delete removes jobs with their
    /// attempts. Other nodes hear of retried jobs as of any queued job.
    fn bulk_batch(
        &self,
        action: BulkAction,
        filter: &BulkFilter,
        batch: &Batch<'_>,
        now: Timestamp,
    ) -> Result<BatchDone>;

    // -- Retention, and waiting for the end of a job on another node ---------------------

    /// Deletes up to `limit` jobs that ended (success, failed, timeout, cancelled) before
    /// `before`, oldest end first, with their attempts and the idempotency keys whose job
    /// they are; returns how many jobs. One short transaction: a caller prunes a backlog in
    /// many calls, so other writers never wait long. Several nodes may prune at once.
    fn prune_ended(&self, before: Timestamp, limit: usize) -> Result<usize>;

    /// Deletes up to `limit` idempotency keys created before `before`, oldest first; returns
    /// how many.
    fn prune_idempotency_keys(&self, before: Timestamp, limit: usize) -> Result<usize>;

    // -- Observing: what `GET /metrics` and `GET /stats` read beside the queue counters ----

    /// The earliest `run_at` among the queue's pending jobs (due or not), `None` with none:
    /// one index seek per priority its pending jobs have.
    fn oldest_pending_run_at(&self, queue: &str) -> Result<Option<Timestamp>>;

    /// The database's size on disk in bytes, cheaply (file sizes, or the server's own count).
    fn size_bytes(&self) -> Result<u64>;

    /// Adds `counts` to `finished_minutes` (n = n + delta) and deletes the rows of minutes
    /// before `prune_before`, in one transaction.
    fn add_finished_minutes(&self, counts: &MinuteCounts, prune_before: i64) -> Result<()>;

    /// The rows of `finished_minutes` from minute `since` on.
    fn finished_minutes(&self, since: i64) -> Result<MinuteCounts>;

    /// Tells the other nodes, soon and without blocking, that the job `id` ended here, for
    /// their requests waiting on it. A backend without other nodes does nothing.
    fn announce_ended(&self, _id: &str) {}

    /// Calls `on_heard` from the thread `watch_other_nodes` starts, with what it hears of
    /// jobs ending on other nodes. Called once, before `watch_other_nodes`. A backend without
    /// other nodes does nothing.
    fn hear_ended_elsewhere(&self, _on_heard: OnEndedElsewhere) {}
}

/// How a job left the queue for good, as `job_ended` hears of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// It reached a terminal status: success, failed, timeout or cancelled.
    Finished(JobStatus),
    /// It was deleted before it had ended.
    Deleted,
}

/// The store the server holds: a backend, and what every backend shares.
pub struct Store {
    backend: Box<dyn Backend>,
    /// Submits, claims, outcomes and ends are counted here, as they pass the store.
    metrics: Arc<Metrics>,
    /// The requests waiting for a job to end, woken by `job_ended` and by other nodes.
    waiters: Arc<Waiters>,
    /// What `job_ended` saw, for the tests that check every end passes it once.
    #[cfg(test)]
    ended: std::sync::Mutex<Vec<(String, Ending)>>,
}

impl Store {
    /// Opens the database at `location`, bringing its schema up to date.
    pub fn open(location: &Location, options: &Options) -> Result<Store> {
        let backend: Box<dyn Backend> = match location {
            Location::Sqlite(path) => Box::new(sqlite::SqliteStore::open(path, options)?),
            #[cfg(feature = "postgres")]
            Location::Postgres(url) => Box::new(postgres::PostgresStore::open(url, options)?),
            #[cfg(not(feature = "postgres"))]
            Location::Postgres(_) => {
                return Err(Error::Startup(
                    "DATABASE_URL names PostgreSQL, but this build has no PostgreSQL support; \
                     build with `cargo build --release --features postgres`"
                        .into(),
                ))
            }
        };
        let mut store = Store::with_backend(backend);
        store.metrics = Arc::clone(&options.metrics);
        Ok(store)
    }

    pub fn with_backend(backend: Box<dyn Backend>) -> Store {
        let waiters = Arc::new(Waiters::default());
        let woken = Arc::clone(&waiters);
        backend.hear_ended_elsewhere(Arc::new(move |heard| match heard {
            EndedElsewhere::Job(id) => woken.wake(id),
            EndedElsewhere::Any => woken.wake_all(),
        }));
        Store {
            backend,
            metrics: Arc::default(),
            waiters,
            #[cfg(test)]
            ended: std::sync::Mutex::default(),
        }
    }

    pub fn ping(&self) -> Result<()> {
        self.backend.ping()
    }

    pub fn writes_ok(&self) -> Result<()> {
        self.backend.writes_ok()
    }

    pub fn insert_jobs(
        &self,
        jobs: &[NewRow],
        key: Option<&NewKey>,
        now: Timestamp,
    ) -> Result<Inserted> {
        let inserted = self.backend.insert_jobs(jobs, key, now)?;
        if inserted == Inserted::Stored {
            // Runs of one queue counted at once: a batch is mostly one queue's.
            for run in jobs.chunk_by(|(_, a), (_, b)| a.queue == b.queue) {
                self.metrics
                    .jobs_submitted(&run[0].1.queue, run.len() as u64);
            }
        }
        Ok(inserted)
    }

    pub fn idempotency_key(&self, key: &str, fresh_since: Timestamp) -> Result<Option<StoredKey>> {
        self.backend.idempotency_key(key, fresh_since)
    }

    /// One job without a key, for the unit tests.
    #[cfg(test)]
    pub fn insert(&self, id: String, job: &NewJob, now: Timestamp) -> Result<()> {
        self.backend.insert(id, job, now)
    }

    pub fn get_latest(&self, id: &str) -> Result<Option<Job>> {
        self.backend.get_latest(id)
    }

    pub fn get(&self, id: &str) -> Result<Option<Job>> {
        self.backend.get(id)
    }

    pub fn list(&self, filter: &JobFilter, before: Option<&str>, limit: usize) -> Result<Page> {
        self.backend.list(filter, before, limit)
    }

    pub fn claim_next_due(&self, now: Timestamp) -> Result<Option<Job>> {
        let claimed = self.backend.claim_next_due(now)?;
        if let Some(job) = &claimed {
            self.job_started(job, now);
        }
        Ok(claimed)
    }

    pub fn next_due_at(&self) -> Result<Option<Timestamp>> {
        self.backend.next_due_at()
    }

    pub fn finish_attempt(
        &self,
        job: &Job,
        end: &AttemptEnd,
        details: &AttemptDetails,
        now: Timestamp,
    ) -> Result<bool> {
        let recorded = self.backend.finish_attempt(job, end, details, now)?;
        if recorded {
            self.attempt_recorded(job, end, now);
        }
        Ok(recorded)
    }

    /// `finish_attempt` for an attempt whose node lost it (recovery): counted as
    /// `interrupted`, without a run time, since it may have stopped long before `now`.
    pub fn finish_recovered(&self, job: &Job, end: &AttemptEnd, now: Timestamp) -> Result<bool> {
        let recorded = self
            .backend
            .finish_attempt(job, end, &AttemptDetails::default(), now)?;
        if recorded {
            self.metrics.attempt_interrupted(&job.queue);
            if let Some(status) = end.final_status() {
                self.job_ended(&job.id, &job.queue, Ending::Finished(status));
            }
        }
        Ok(recorded)
    }

    pub fn finish_and_claim_next(
        &self,
        job: &Job,
        end: &AttemptEnd,
        details: &AttemptDetails,
        now: Timestamp,
    ) -> Result<FinishAndClaim> {
        let done = self.backend.finish_and_claim_next(job, end, details, now)?;
        if done.recorded {
            self.attempt_recorded(job, end, now);
        }
        if let Some(next) = &done.next {
            self.job_started(next, now);
        }
        Ok(done)
    }

    pub fn retry(&self, id: &str, now: Timestamp) -> Result<Job> {
        self.backend.retry(id, now)
    }

    pub fn cancel(&self, id: &str, now: Timestamp) -> Result<Cancel> {
        let cancel = self.backend.cancel(id, now)?;
        if let Cancel::Cancelled(job) = &cancel {
            self.job_ended(&job.id, &job.queue, Ending::Finished(job.status));
        }
        Ok(cancel)
    }

    pub fn delete(&self, id: &str) -> Result<Option<Job>> {
        let deleted = self.backend.delete(id)?;
        // A job that had ended already passed `job_ended` then.
        if let Some(job) = deleted.as_ref().filter(|job| !job.status.is_terminal()) {
            self.job_ended(&job.id, &job.queue, Ending::Deleted);
        }
        Ok(deleted)
    }

    pub fn attempts(&self, id: &str) -> Result<Option<Vec<Attempt>>> {
        self.backend.attempts(id)
    }

    pub fn heartbeat(&self, now: Timestamp) -> Result<()> {
        self.backend.heartbeat(now)
    }

    pub fn lost_attempts(
        &self,
        now: Timestamp,
        lease: Duration,
        include_own: bool,
    ) -> Result<Vec<Job>> {
        self.backend.lost_attempts(now, lease, include_own)
    }

    pub fn forget_nodes(&self, now: Timestamp, lease: Duration, leaving: bool) -> Result<()> {
        self.backend.forget_nodes(now, lease, leaving)
    }

    pub fn running_here(&self) -> Result<Vec<RunningHere>> {
        self.backend.running_here()
    }

    pub fn is_shared(&self) -> bool {
        self.backend.is_shared()
    }

    pub fn watch_other_nodes(&self, on_queued: OnJobQueued) -> Result<()> {
        self.backend.watch_other_nodes(on_queued)
    }

    // --- Named queues ---

    pub fn queues(&self) -> Result<Vec<QueueSummary>> {
        self.backend.queues()
    }

    pub fn set_paused(&self, name: &str, paused: bool, now: Timestamp) -> Result<QueueSummary> {
        self.backend.set_paused(name, paused, now)
    }

    pub fn configure_queue(
        &self,
        name: &str,
        change: &SettingsChange,
        now: Timestamp,
    ) -> Result<QueueSummary> {
        self.backend.configure_queue(name, change, now)
    }

    pub fn prune_ended(&self, before: Timestamp, limit: usize) -> Result<usize> {
        let pruned = self.backend.prune_ended(before, limit)?;
        self.metrics.jobs_pruned(pruned as u64);
        Ok(pruned)
    }

    pub fn oldest_pending_run_at(&self, queue: &str) -> Result<Option<Timestamp>> {
        self.backend.oldest_pending_run_at(queue)
    }

    pub fn size_bytes(&self) -> Result<u64> {
        self.backend.size_bytes()
    }

    pub fn add_finished_minutes(&self, counts: &MinuteCounts, prune_before: i64) -> Result<()> {
        self.backend.add_finished_minutes(counts, prune_before)
    }

    pub fn finished_minutes(&self, since: i64) -> Result<MinuteCounts> {
        self.backend.finished_minutes(since)
    }

    /// Where the store records what passes it.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn prune_idempotency_keys(&self, before: Timestamp, limit: usize) -> Result<usize> {
        self.backend.prune_idempotency_keys(before, limit)
    }

    /// The requests waiting for a job to end.
    pub fn waiters(&self) -> &Waiters {
        &self.waiters
    }

    /// A claimed job starts: how long it waited since it was due.
    fn job_started(&self, job: &Job, now: Timestamp) {
        let started = job.started_at.unwrap_or(now);
        self.metrics
            .job_started(&job.queue, job.run_at.until(started));
    }

    /// Counts the attempt's outcome, and passes the job to `job_ended` if the outcome just
    /// recorded for its attempt ends it.
    fn attempt_recorded(&self, job: &Job, end: &AttemptEnd, now: Timestamp) {
        let outcome = match end {
            AttemptEnd::Succeeded { .. } => Outcome::Success,
            AttemptEnd::Failed { .. } => Outcome::Failed,
            AttemptEnd::TimedOut { .. } => Outcome::Timeout,
            AttemptEnd::Cancelled { .. } => Outcome::Cancelled,
            AttemptEnd::Released { .. } => Outcome::Released,
        };
        let ran = job
            .started_at
            .map_or(Duration::ZERO, |started| started.until(now));
        self.metrics.attempt_ended(&job.queue, outcome, ran);
        if let Some(status) = end.final_status() {
            self.job_ended(&job.id, &job.queue, Ending::Finished(status));
        }
    }

    /// The one point every job passes when it ends for good: a worker's outcome that leaves it
    /// success, failed, timeout or cancelled (a recovery's too), the cancel of a pending job,
    /// and the delete of a job that had not ended. A scheduled retry or a release is no end; a
    /// manual retry starts the job over, and it ends here again. It wakes the requests
    /// waiting for the job here, has the backend tell the other nodes for theirs, and counts
    /// the end in the metrics (`queue` is the job's; webhooks would hang here too). Runs on the caller's thread once its write is
    /// answered; a worker's outcome may be answered before it is on disk (SQLite), so after a
    /// crash a job can end here twice.
    fn job_ended(&self, id: &str, queue: &str, ending: Ending) {
        debug_assert!(
            !matches!(ending, Ending::Finished(status) if !status.is_terminal()),
            "job {id} reported ended as {ending:?}"
        );
        self.waiters.wake(id);
        self.backend.announce_ended(id);
        if let Ending::Finished(status) = ending {
            self.metrics.job_finished(queue, status, Timestamp::now());
        }
        #[cfg(test)]
        self.ended
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push((id.to_string(), ending));
        #[cfg(not(test))]
        let _ = (id, ending);
    }

    /// What `job_ended` saw so far.
    #[cfg(test)]
    pub(crate) fn ended(&self) -> Vec<(String, Ending)> {
        self.ended
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// Job ids are UUIDs; a store asked for anything else finds nothing.
pub(crate) fn not_found(id: &str) -> Error {
    Error::NotFound(format!("no job with id {id}"))
}

/// `postgres://user:secret@host/db` as `postgres://user:***@host/db`, and a `password=`
/// parameter (in the query, or a `key=value` string) as `password=***`.
fn redact_password(url: &str) -> String {
    let url = redact_password_parameter(url);
    let Some((scheme, rest)) = url.split_once("://") else {
        return url;
    };
    let (authority, tail) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((credentials, host)) => match credentials.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.clone(),
        },
        None => url.clone(),
    }
}

fn redact_password_parameter(url: &str) -> String {
    let mut redacted = String::with_capacity(url.len());
    let mut rest = url;
    while let Some(found) = rest.to_ascii_lowercase().find("password=") {
        let value_start = found + "password=".len();
        redacted.push_str(&rest[..value_start]);
        redacted.push_str("***");
        let value_end = rest[value_start..]
            .find(['&', ' '])
            .map_or(rest.len(), |end| value_start + end);
        rest = &rest[value_end..];
    }
    redacted.push_str(rest);
    redacted
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn new_job(priority: u8, run_at: Option<i64>) -> NewJob {
        NewJob::for_test(priority, run_at)
    }

    #[test]
    fn every_end_of_a_job_passes_job_ended_exactly_once() {
        let dir = test_dir::TestDir::new("job-ended");
        let options = Options::for_test("test-node", 0);
        let sqlite = sqlite::SqliteStore::open(&dir.path().join("jobs.db"), &options).unwrap();
        let store = Store::with_backend(Box::new(sqlite));
        let now = Timestamp::from_micros(10);
        let details = AttemptDetails::default();
        let start = |id: &str| {
            store.insert(id.into(), &new_job(0, None), now).unwrap();
            store.claim_next_due(now).unwrap().unwrap()
        };
        let succeeded = || AttemptEnd::Succeeded { result: json!(1) };
        let ended = || store.ended();

        // A worker's outcome, recorded either way.
        let done = start("done");
        assert!(store
            .finish_attempt(&done, &succeeded(), &details, now)
            .unwrap());
        let slow = start("slow");
        let timed_out = AttemptEnd::TimedOut {
            error: "slow".into(),
        };
        let recorded = store.finish_and_claim_next(&slow, &timed_out, &details, now);
        assert!(recorded.unwrap().recorded);
        // A scheduled retry and a release put the job back: no end until a later attempt's.
        let failing = start("failing");
        let retry_at = Timestamp::from_micros(20);
        let failed = |retry_at| AttemptEnd::Failed {
            error: "boom".into(),
            retry_at,
        };
        store
            .finish_and_claim_next(&failing, &failed(Some(retry_at)), &details, now)
            .unwrap();
        let released = start("released");
        let release = AttemptEnd::Released {
            reason: "shutdown".into(),
        };
        store
            .finish_attempt(&released, &release, &details, now)
            .unwrap();
        assert_eq!(ended().len(), 2, "{:?}", ended());
        let again = store.claim_next_due(now).unwrap().unwrap();
        assert_eq!(again.id, "released");
        store
            .finish_attempt(&again, &succeeded(), &details, now)
            .unwrap();
        let retried = store.claim_next_due(retry_at).unwrap().unwrap();
        assert_eq!(retried.id, "failing");
        store
            .finish_attempt(&retried, &failed(None), &details, retry_at)
            .unwrap();

        // Cancel: a pending job ends at once, a running one when its worker records it.
        store
            .insert("waiting".into(), &new_job(0, None), now)
            .unwrap();
        assert!(matches!(
            store.cancel("waiting", now).unwrap(),
            Cancel::Cancelled(_)
        ));
        let busy = start("busy");
        assert!(matches!(
            store.cancel("busy", now).unwrap(),
            Cancel::Running(_)
        ));
        let cancelled = AttemptEnd::Cancelled {
            reason: "by request".into(),
        };
        store
            .finish_attempt(&busy, &cancelled, &details, now)
            .unwrap();

        // Delete ends a job that had not ended; a deleted attempt's outcome is dropped.
        store
            .insert("unwanted".into(), &new_job(0, None), now)
            .unwrap();
        store.delete("unwanted").unwrap();
        let doomed = start("doomed");
        store.delete("doomed").unwrap();
        assert!(!store
            .finish_attempt(&doomed, &succeeded(), &details, now)
            .unwrap());
        store.delete("done").unwrap();

        // A manual retry starts the job over, and it ends again.
        store.retry("slow", now).unwrap();
        let rerun = store.claim_next_due(now).unwrap().unwrap();
        store
            .finish_attempt(&rerun, &succeeded(), &details, now)
            .unwrap();

        let finished = |id: &str, status| (id.to_string(), Ending::Finished(status));
        assert_eq!(
            ended(),
            [
                finished("done", JobStatus::Success),
                finished("slow", JobStatus::Timeout),
                finished("released", JobStatus::Success),
                finished("failing", JobStatus::Failed),
                finished("waiting", JobStatus::Cancelled),
                finished("busy", JobStatus::Cancelled),
                ("unwanted".to_string(), Ending::Deleted),
                ("doomed".to_string(), Ending::Deleted),
                finished("slow", JobStatus::Success),
            ]
        );
    }

    #[test]
    fn a_password_never_reaches_the_log() {
        let cases = [
            (
                "postgres://app:s3cret@db.internal:5432/jobs",
                "postgres://app:***@db.internal:5432/jobs",
            ),
            ("postgres://app@db/jobs", "postgres://app@db/jobs"),
            ("postgres://db/jobs", "postgres://db/jobs"),
            ("host=db user=app", "host=db user=app"),
            (
                "postgres://app@db/jobs?password=s3cret&sslmode=disable",
                "postgres://app@db/jobs?password=***&sslmode=disable",
            ),
            (
                "host=db password=s3cret user=app",
                "host=db password=*** user=app",
            ),
        ];
        for (url, shown) in cases {
            assert_eq!(Location::Postgres(url.into()).describe(), shown);
        }
    }
}
