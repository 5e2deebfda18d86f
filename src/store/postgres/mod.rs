//! The PostgreSQL backend: many nodes on one database. Owns every SQL statement for
//! PostgreSQL (`statements`), the schema and its migrations (`schema`), its connections
//! (`pool`), the reading of its errors (`error`) and hearing of other nodes' jobs (`notify`).
//!
//! Every method is one statement that commits on its own, or one transaction. A claim locks
//! its job with `FOR UPDATE SKIP LOCKED`, so any number of workers on any number of nodes
//! claim concurrently and never share a job. Job times are the nodes' (as on SQLite); lease
//! times are the database's (`heartbeat`, `lost_attempts`), so the nodes' clocks need not
//! agree for leases to work.

mod bulk;
mod error;
mod list;
mod notify;
mod observe;
mod pool;
mod queues;
mod retention;
mod row;
mod schema;
mod statements;
mod submit;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use postgres::types::ToSql;
use postgres::Client;

use super::bulk::{Batch, BatchDone, BulkAction, BulkFilter};
use super::{
    not_found, Backend, Cancel, FinishAndClaim, Inserted, JobFilter, NewKey, NewRow,
    OnEndedElsewhere, OnJobQueued, Options, Page, RunningHere, StoredKey, SyncMode,
};
use crate::error::{Error, Result, StorageFailure};
use crate::job::{Attempt, AttemptDetails, AttemptEnd, Job, JobStatus};
use crate::metrics::MinuteCounts;
use crate::queue_settings::{QueueSummary, SettingsChange};
use crate::time::Timestamp;
use error::Failure;
use notify::{Announcer, Watcher};
use pool::{Pool, Session};
use statements::*;

/// How far below `MAX_PENDING_JOBS` the pending count must be, beyond the room a submit's own
/// jobs need, for the submit to take the fast way, which does not wait for the submits in
/// flight with it. That way passes the limit only if more than this many jobs (across all
/// nodes; a batch counts all its jobs) are in flight at one moment, each between its read of
/// the counters and its commit, while the count is within this margin of the limit; each
/// connection has at most one submit in flight, so a deployment whose nodes'
/// `DATABASE_POOL_SIZE` add up to no more than this never passes it with single submits, and
/// one with more, or with batches, passes it by at most the jobs in flight beyond it.
const PENDING_MARGIN: i64 = 1024;

/// How long sent data may stay unacknowledged by the database host before the connection
/// fails (TCP_USER_TIMEOUT), when the connection string does not say.
const UNACKNOWLEDGED_TIMEOUT: Duration = Duration::from_secs(20);
/// How long connecting may take when the connection string does not say.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The least time between two foldings of ended sessions' counter rows by this node (at a
/// heartbeat; a long recovery heartbeats more often than the lease keeper).
const COMPACT_EVERY: Duration = Duration::from_secs(10);

pub struct PostgresStore {
    pool: Pool,
    /// For the listening connection, which is not the pool's.
    config: postgres::Config,
    /// The schema the tables are in: the payload of this deployment's notifications.
    schema: String,
    /// The most jobs that may be pending when a new one is submitted; 0 means no limit.
    max_pending_jobs: u64,
    /// This process's node id, recorded on the jobs it claims.
    node: String,
    /// When this node started, for its row in `nodes`.
    started_at: Timestamp,
    /// The `LISTEN` thread, once `watch_other_nodes` started it; stopped when the store is.
    watcher: Mutex<Option<Watcher>>,
    /// Tells the other nodes of jobs this one queued or ended, once they are committed.
    announcer: Announcer,
    /// When this node last folded the counter rows of ended sessions; `None` before the first.
    compacted_at: Mutex<Option<Instant>>,
    /// What the watcher calls with the jobs other nodes ended (`hear_ended_elsewhere`).
    on_ended_elsewhere: OnceLock<OnEndedElsewhere>,
}

impl PostgresStore {
    /// Connects to the database at `url` and brings its schema up to date. A server that
    /// cannot be reached fails the start as an outage; credentials or a database it refuses
    /// are `DatabaseUnusable`.
    pub fn open(url: &str, options: &Options) -> Result<PostgresStore> {
        let describe = super::redact_password(url);
        let mut config = postgres::Config::from_str(url).map_err(|err| Error::Config {
            variable: "DATABASE_URL",
            message: format!("not a PostgreSQL connection string ({err}): {describe}"),
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        // A database that vanishes without closing the connection (a dead host, a dropped
        // route) fails a statement within this long instead of blocking its thread forever.
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(UNACKNOWLEDGED_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("mini-lambda-rust");
        }
        let sync = options.sync;
        let setup: pool::Setup = Box::new(move |client: &mut Client| {
            // Deferred: a commit returns before its WAL is flushed; a server crash may lose
            // the last commits, never corrupt.
            if sync == SyncMode::Deferred {
                client.batch_execute("SET synchronous_commit = off")?;
            }
            Ok(())
        });
        let unusable = |err: Error| match err {
            Error::Storage {
                kind: StorageFailure::Unusable,
                detail,
            } => Error::DatabaseUnusable(format!("cannot use the database {describe}: {detail}")),
            other => other,
        };
        let pool = Pool::open(
            config.clone(),
            options.pool_size,
            setup,
            options.metrics.db_commit_seconds(),
        )
        .map_err(unusable)?;
        let schema = pool.run(schema::migrate).map_err(unusable)?;
        let announcer = Announcer::start(config.clone(), schema.clone())?;
        Ok(PostgresStore {
            pool,
            schema,
            max_pending_jobs: options.max_pending_jobs,
            node: options.node.clone(),
            started_at: Timestamp::now(),
            watcher: Mutex::new(None),
            announcer,
            on_ended_elsewhere: OnceLock::new(),
            config,
            compacted_at: Mutex::new(None),
        })
    }

    /// Folds the counter rows of sessions that have ended into one, if this node has not done
    /// so for `COMPACT_EVERY`. Each session counts in rows of its own (so no two ever wait on
    /// one row), and a pool replaces its connections now and then, so without this the rows
    /// of ended ones would pile up. A failure is only logged: the next heartbeat tries again.
    fn compact_counts_if_due(&self) {
        {
            // Guards only the time of the last compaction; released before the statement.
            let mut compacted_at = self
                .compacted_at
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if compacted_at.is_some_and(|at| at.elapsed() < COMPACT_EVERY) {
                return;
            }
            *compacted_at = Some(Instant::now());
        }
        match self.compact_counts() {
            Ok(0) => {}
            Ok(folded) => log::debug!("folded {folded} counter row(s) of ended sessions"),
            Err(err) => log::warn!("cannot fold the counter rows of ended sessions: {err}"),
        }
    }

    /// Folds the counter rows of sessions that have ended now; how many rows it folded.
    fn compact_counts(&self) -> Result<i64> {
        self.pool
            .run(|connection| queues::compact_counts(&mut connection.session()))
    }

    /// A recorded outcome that put the job back in the queue (a retry, a release) is work for
    /// any node, and so is the place an end freed in a queue with a `concurrency` limit.
    fn announce_if_requeued(&self, finish: &Finish, recorded: Recorded) {
        if recorded.recorded && (finish.requeued || recorded.frees_a_place) {
            self.announcer.job_queued();
        }
    }

    /// A job by id inside a transaction, locked until it ends.
    fn lock_job(
        session: &mut Session<'_, postgres::Transaction<'_>>,
        id: &str,
    ) -> Result<Job, Failure> {
        let row = session
            .query_opt(LOCK_BY_ID, &[&id])?
            .ok_or_else(|| not_found(id))?;
        row::job(&row)
    }
}

impl Backend for PostgresStore {
    fn ping(&self) -> Result<()> {
        self.pool.read(|connection| {
            connection.session().query_one(PING, &[])?;
            Ok(())
        })
    }

    /// A read-write transaction is refused by a server that cannot write (a standby, or one
    /// set read-only); it costs one round trip more than a read and writes nothing.
    fn writes_ok(&self) -> Result<()> {
        let probe = self.pool.run(|connection| {
            let mut transaction = connection
                .client()
                .build_transaction()
                .read_only(false)
                .start()?;
            transaction.query_one("SELECT 1", &[])?;
            transaction.commit()?;
            Ok(())
        });
        probe.map_err(|err| {
            Error::Unavailable(format!("the database does not accept writes: {err}"))
        })
    }

    // -- Submits (in `submit`) -----------------------------------------------------------

    /// The jobs are one statement, in a transaction with the key if there is one. Without a
    /// limit, no lock. With one, the pending jobs are read from the counters the triggers
    /// keep, not counted, under the pending-limit lock, in one of two ways:
    ///
    /// - Far from the limit (the counters say the submit's jobs and `PENDING_MARGIN` more
    ///   would still fit), the lock is taken shared: submits on every node go on together,
    ///   each committing on its own. The counters show only committed submits, so each such
    ///   submit may not see the others in flight with it; the margin leaves room for them
    ///   (see `PENDING_MARGIN`).
    /// - Otherwise the lock is taken exclusive: it waits for every submit holding it shared
    ///   to end, and holds off new ones, so the count is exact and the limit is never passed:
    ///   a batch of n jobs needs room for n.
    ///
    /// The other nodes are woken once the jobs are committed. Claims, outcomes, cancels and
    /// deletes take no lock: they only leave fewer pending, except a retry or release
    /// putting a job back, which is not held to the limit (as on SQLite, only a submit is).
    fn insert_jobs(
        &self,
        jobs: &[NewRow],
        key: Option<&NewKey>,
        now: Timestamp,
    ) -> Result<Inserted> {
        self.insert_rows(jobs, key, now)
    }

    fn idempotency_key(&self, key: &str, fresh_since: Timestamp) -> Result<Option<StoredKey>> {
        self.fresh_key(key, fresh_since)
    }

    // -- end of submits ---------------------------------------------------------------------

    fn get(&self, id: &str) -> Result<Option<Job>> {
        if !is_storable(id) {
            return Ok(None);
        }
        self.pool.read(|connection| {
            connection
                .session()
                .query_opt(SELECT_BY_ID, &[&id])?
                .map(|row| row::job(&row))
                .transpose()
        })
    }

    fn list(&self, filter: &JobFilter, before: Option<&str>, limit: usize) -> Result<Page> {
        let fetch = i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1);
        let rows = self.pool.read(|connection| {
            let mut session = connection.session();
            let before_seq: i64 = match before {
                None => i64::MAX,
                Some(id) => {
                    let seq = if is_storable(id) {
                        session.query_opt(SEQ_OF_ID, &[&id])?
                    } else {
                        None
                    };
                    seq.ok_or_else(|| {
                        Error::Validation(format!(
                            "before must be the id of an existing job; no job has id {id:?}"
                        ))
                    })?
                    .try_get(0)?
                }
            };
            let status = filter.status.map(JobStatus::as_str);
            let mut values: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(5);
            if let Some(status) = &status {
                values.push(status);
            }
            if let Some(queue) = &filter.queue {
                values.push(queue);
            }
            if let Some(function) = &filter.function {
                values.push(function);
            }
            values.push(&before_seq);
            values.push(&fetch);
            session.query(list::Shape::of(filter).sql(), &values)
        })?;
        let has_more = rows.len() > limit;
        let jobs = rows
            .iter()
            .take(limit)
            .map(|row| row::job(row).map_err(Error::from))
            .collect::<Result<Vec<_>>>()?;
        Ok(Page { jobs, has_more })
    }

    fn claim_next_due(&self, now: Timestamp) -> Result<Option<Job>> {
        self.pool
            .run(|connection| claim(&mut connection.session(), &self.node, now))
    }

    fn next_due_at(&self) -> Result<Option<Timestamp>> {
        self.pool
            .read(|connection| next_due(&mut connection.session()))
    }

    fn finish_attempt(
        &self,
        job: &Job,
        end: &AttemptEnd,
        details: &AttemptDetails,
        now: Timestamp,
    ) -> Result<bool> {
        let finish = Finish::new(job, end, details, now)?;
        let recorded = self
            .pool
            .run(|connection| finish.run(&mut connection.session()))?;
        self.announce_if_requeued(&finish, recorded);
        Ok(recorded.recorded)
    }

    /// One transaction: an error leaves the outcome unrecorded, so the caller may record it
    /// again.
    fn finish_and_claim_next(
        &self,
        job: &Job,
        end: &AttemptEnd,
        details: &AttemptDetails,
        now: Timestamp,
    ) -> Result<FinishAndClaim> {
        let finish = Finish::new(job, end, details, now)?;
        let done = self.pool.run(|connection| {
            connection.transaction(|session| {
                let recorded = finish.run(session)?;
                let next = claim(session, &self.node, now)?;
                let next_due = match next {
                    Some(_) => None,
                    None => next_due(session)?,
                };
                Ok((
                    recorded,
                    FinishAndClaim {
                        recorded: recorded.recorded,
                        next,
                        next_due,
                    },
                ))
            })
        })?;
        let (recorded, done) = done;
        self.announce_if_requeued(&finish, recorded);
        Ok(done)
    }

    fn retry(&self, id: &str, now: Timestamp) -> Result<Job> {
        if !is_storable(id) {
            return Err(not_found(id));
        }
        let restarted = self.pool.run(|connection| {
            connection.transaction(|session| {
                let status: String = session
                    .query_opt(STATUS_OF_ID_LOCKED, &[&id])?
                    .ok_or_else(|| not_found(id))?
                    .try_get(0)?;
                let status: JobStatus = status.parse()?;
                if !status.is_retryable() {
                    return Err(Error::InvalidState(format!(
                        "job {id} is {status}; only failed, timeout or cancelled jobs can be retried"
                    ))
                    .into());
                }
                let row = session.query_one(RESTART_JOB, &[&id, &now.as_micros()])?;
                row::job(&row)
            })
        });
        if restarted.is_ok() {
            self.announcer.job_queued();
        }
        restarted
    }

    fn cancel(&self, id: &str, now: Timestamp) -> Result<Cancel> {
        if !is_storable(id) {
            return Err(not_found(id));
        }
        self.pool.run(|connection| {
            connection.transaction(|session| {
                let job = PostgresStore::lock_job(session, id)?;
                match job.status {
                    JobStatus::Pending => {
                        let row =
                            session.query_one(CANCEL_PENDING, &[&job.seq, &now.as_micros()])?;
                        Ok(Cancel::Cancelled(row::job(&row)?))
                    }
                    JobStatus::Running => {
                        session.execute(REQUEST_CANCEL, &[&job.seq])?;
                        Ok(Cancel::Running(job))
                    }
                    status => Err(Error::InvalidState(format!(
                        "job {} is {status}; only pending or running jobs can be cancelled",
                        job.id
                    ))
                    .into()),
                }
            })
        })
    }

    fn delete(&self, id: &str) -> Result<Option<Job>> {
        if !is_storable(id) {
            return Ok(None);
        }
        self.pool.run(|connection| {
            connection
                .session()
                .query_opt(DELETE_JOB, &[&id])?
                .map(|row| row::job(&row))
                .transpose()
        })
    }

    fn attempts(&self, id: &str) -> Result<Option<Vec<Attempt>>> {
        if !is_storable(id) {
            return Ok(None);
        }
        let rows = self
            .pool
            .read(|connection| connection.session().query(ATTEMPTS_OF_JOB, &[&id]))?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut attempts = Vec::with_capacity(rows.len());
        for row in &rows {
            // The one row of a job without attempts has a null attempt number.
            if row
                .try_get::<_, Option<i32>>(0)
                .map_err(Error::from)?
                .is_some()
            {
                attempts.push(row::attempt(row, 0)?);
            }
        }
        Ok(Some(attempts))
    }

    /// Also, now and then, folds the counter rows of ended sessions (after the heartbeat, so
    /// a failure there never costs the lease).
    fn heartbeat(&self, _now: Timestamp) -> Result<()> {
        let started_at = self.started_at.as_micros();
        self.pool.run(|connection| {
            connection
                .session()
                .execute(HEARTBEAT, &[&self.node, &started_at])?;
            Ok(())
        })?;
        self.compact_counts_if_due();
        Ok(())
    }

    /// By the database's clock. A row that cannot be read is logged and skipped rather than
    /// stopping the recovery.
    fn lost_attempts(
        &self,
        _now: Timestamp,
        lease: Duration,
        include_own: bool,
    ) -> Result<Vec<Job>> {
        let lease = micros(lease);
        let rows = self.pool.read(|connection| {
            connection
                .session()
                .query(LOST_ATTEMPTS, &[&self.node, &include_own, &lease])
        })?;
        Ok(rows
            .iter()
            .filter_map(|row| {
                row::job(row)
                    .map_err(|err| {
                        log::error!("skipping an unreadable running job: {}", Error::from(err))
                    })
                    .ok()
            })
            .collect())
    }

    fn forget_nodes(&self, _now: Timestamp, lease: Duration, leaving: bool) -> Result<()> {
        let lease = micros(lease);
        self.pool.run(|connection| {
            connection
                .session()
                .execute(FORGET_NODES, &[&self.node, &lease, &leaving])?;
            Ok(())
        })
    }

    fn running_here(&self) -> Result<Vec<RunningHere>> {
        let rows = self
            .pool
            .read(|connection| connection.session().query(RUNNING_HERE, &[&self.node]))?;
        rows.iter()
            .map(|row| {
                let attempt: Option<i32> = row.try_get(1)?;
                Ok(RunningHere {
                    job_id: row.try_get(0)?,
                    attempt: attempt.and_then(|n| u32::try_from(n).ok()).unwrap_or(0),
                    cancel_requested: row.try_get(2)?,
                })
            })
            .collect::<Result<Vec<_>, postgres::Error>>()
            .map_err(Error::from)
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn watch_other_nodes(&self, on_queued: OnJobQueued) -> Result<()> {
        let on_ended = self
            .on_ended_elsewhere
            .get()
            .cloned()
            .unwrap_or_else(|| Arc::new(|_| {}));
        let watcher = Watcher::start(
            self.config.clone(),
            self.schema.clone(),
            on_queued,
            on_ended,
        )?;
        let mut slot = self
            .watcher
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // A second call replaces the first watcher (which stops as it is dropped).
        *slot = Some(watcher);
        Ok(())
    }

    // --- Named queues ---

    fn queues(&self) -> Result<Vec<QueueSummary>> {
        self.pool
            .read(|connection| queues::all(&mut connection.session()))
    }

    fn set_paused(&self, name: &str, paused: bool, now: Timestamp) -> Result<QueueSummary> {
        let queue = self.pool.run(|connection| {
            connection.transaction(|session| queues::set_paused(session, name, paused, now))
        })?;
        if !paused {
            self.announcer.job_queued();
        }
        Ok(queue)
    }

    fn configure_queue(
        &self,
        name: &str,
        change: &SettingsChange,
        now: Timestamp,
    ) -> Result<QueueSummary> {
        let queue = self.pool.run(|connection| {
            connection.transaction(|session| queues::configure(session, name, change, now))
        })?;
        self.announcer.job_queued();
        Ok(queue)
    }

    // Bulk actions: the SQL is in `bulk.rs`.

    fn last_seq(&self) -> Result<i64> {
        self.bulk_last_seq()
    }

    fn bulk_batch(
        &self,
        action: BulkAction,
        filter: &BulkFilter,
        batch: &Batch<'_>,
        now: Timestamp,
    ) -> Result<BatchDone> {
        self.bulk_batch_in(action, filter, batch, now)
    }

    fn prune_ended(&self, before: Timestamp, limit: usize) -> Result<usize> {
        retention::prune_ended(&self.pool, before, limit)
    }

    fn prune_idempotency_keys(&self, before: Timestamp, limit: usize) -> Result<usize> {
        retention::prune_idempotency_keys(&self.pool, before, limit)
    }

    // Observing: the SQL is in `observe.rs`.

    fn oldest_pending_run_at(&self, queue: &str) -> Result<Option<Timestamp>> {
        observe::oldest_pending_run_at(&self.pool, queue)
    }

    fn size_bytes(&self) -> Result<u64> {
        observe::size_bytes(&self.pool)
    }

    fn add_finished_minutes(&self, counts: &MinuteCounts, prune_before: i64) -> Result<()> {
        observe::add_finished_minutes(&self.pool, counts, prune_before)
    }

    fn finished_minutes(&self, since: i64) -> Result<MinuteCounts> {
        observe::finished_minutes(&self.pool, since)
    }

    fn announce_ended(&self, id: &str) {
        self.announcer.job_ended(id);
    }

    fn hear_ended_elsewhere(&self, on_heard: OnEndedElsewhere) {
        // Called once, by `Store::with_backend`; a later call has nothing to add.
        let _ = self.on_ended_elsewhere.set(on_heard);
    }
}

/// Claims the highest-priority due job on this node in one call.
fn claim<C: postgres::GenericClient>(
    session: &mut Session<'_, C>,
    node: &str,
    now: Timestamp,
) -> Result<Option<Job>, Failure> {
    session
        .query_opt(CLAIM_DUE_JOB, &[&now.as_micros(), &node])?
        .map(|row| row::job(&row))
        .transpose()
}

/// By this node's clock, as job times are.
fn next_due<C: postgres::GenericClient>(
    session: &mut Session<'_, C>,
) -> Result<Option<Timestamp>, Failure> {
    let now = Timestamp::now().as_micros();
    let micros: Option<i64> = session.query_one(NEXT_DUE_AT, &[&now])?.try_get(0)?;
    Ok(micros.map(Timestamp::from_micros))
}

/// What `Finish::run` did.
#[derive(Clone, Copy)]
struct Recorded {
    /// The job still ran that attempt, and now has its outcome.
    recorded: bool,
    /// The job's queue has a `concurrency` limit: its end freed a place.
    frees_a_place: bool,
}

/// The end of an attempt, as the model's transition says, encoded for `FINISH_ATTEMPT`.
struct Finish {
    seq: i64,
    attempt: Option<i32>,
    job_status: &'static str,
    attempt_status: &'static str,
    /// Whether the job goes back in the queue (a retry, a release): other nodes are woken.
    requeued: bool,
    finished_at: i64,
    result: Option<String>,
    error: Option<String>,
    retry_at: Option<i64>,
    exit_code: Option<i32>,
    stderr_tail: Option<String>,
}

impl Finish {
    fn new(
        job: &Job,
        end: &AttemptEnd,
        details: &AttemptDetails,
        now: Timestamp,
    ) -> Result<Finish> {
        let transition = end.transition();
        let result = transition.result_text()?;
        let attempt = job
            .attempt
            .map(|attempt| column_int(attempt, "attempt"))
            .transpose()?;
        Ok(Finish {
            seq: job.seq,
            attempt,
            job_status: transition.job_status.as_str(),
            attempt_status: transition.attempt_status.as_str(),
            requeued: transition.job_status == JobStatus::Pending,
            finished_at: now.as_micros(),
            result,
            error: transition
                .error
                .as_deref()
                .map(storable)
                .map(Cow::into_owned),
            retry_at: transition.retry_at.map(Timestamp::as_micros),
            exit_code: details.exit_code,
            stderr_tail: details
                .stderr_tail
                .as_deref()
                .map(storable)
                .map(Cow::into_owned),
        })
    }

    /// Whether the job was still running that attempt (and so was updated).
    fn run<C: postgres::GenericClient>(
        &self,
        session: &mut Session<'_, C>,
    ) -> Result<Recorded, Failure> {
        let ended = session.query_opt(
            FINISH_ATTEMPT,
            &[
                &self.seq,
                &self.attempt,
                &self.attempt_status,
                &self.finished_at,
                &self.result,
                &self.error,
                &self.exit_code,
                &self.stderr_tail,
                &self.job_status,
                &self.retry_at,
            ],
        )?;
        Ok(match ended {
            Some(row) => Recorded {
                recorded: true,
                frees_a_place: row.try_get(1)?,
            },
            None => Recorded {
                recorded: false,
                frees_a_place: false,
            },
        })
    }
}

/// A count the model keeps as `u32`, for an `INTEGER` column.
fn column_int(value: u32, column: &str) -> Result<i32> {
    i32::try_from(value).map_err(|_| Error::Internal(format!("{column} {value} is out of range")))
}

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

/// PostgreSQL text cannot hold a NUL character (SQLite's can). An id with one names no job.
fn is_storable(id: &str) -> bool {
    !id.contains('\0')
}

/// Text to store: a NUL (a process's stderr may have one) becomes U+FFFD.
fn storable(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(text)
    }
}
