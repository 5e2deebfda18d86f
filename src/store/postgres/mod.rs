//! The PostgreSQL backend: many nodes on one database. Owns every SQL statement for
//! PostgreSQL (`statements`), the schema and its migrations (`schema`), its connections
//! (`pool`), the reading of its errors (`error`) and hearing of other nodes' jobs (`notify`).
//!
//! Every method is one statement that commits on its own, or one transaction. A claim locks
//! its job with `FOR UPDATE SKIP LOCKED`, so any number of workers on any number of nodes
//! claim concurrently and never share a job. Job times are the nodes' (as on SQLite); lease
//! times are the database's (`heartbeat`, `lost_attempts`), so the nodes' clocks need not
//! agree for leases to work.

mod error;
mod notify;
mod pool;
mod retention;
mod row;
mod schema;
mod statements;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use postgres::types::ToSql;
use postgres::Client;

use super::{
    not_found, Backend, Cancel, FinishAndClaim, OnEndedElsewhere, OnJobQueued, Options, Page,
    RunningHere, SyncMode,
};
use crate::error::{Error, Result, StorageFailure};
use crate::job::{Attempt, AttemptDetails, AttemptEnd, Job, JobStatus, NewJob};
use crate::time::Timestamp;
use error::Failure;
use notify::{Announcer, Watcher};
use pool::{Pool, Session};
use statements::*;

/// How far below `MAX_PENDING_JOBS` the pending count must be for a submit to take the fast
/// way, which does not wait for the submits in flight with it. That way passes the limit only
/// if more than this many submits (across all nodes) are in flight at one moment, each
/// between its read of the counters and its commit, while the count is within this margin
/// of the limit; each connection has at most one submit in flight, so a deployment whose
/// nodes' `DATABASE_POOL_SIZE` add up to no more than this never passes it, and one with
/// more passes it by at most the excess.
const PENDING_MARGIN: i64 = 1024;

/// How long sent data may stay unacknowledged by the database host before the connection
/// fails (TCP_USER_TIMEOUT), when the connection string does not say.
const UNACKNOWLEDGED_TIMEOUT: Duration = Duration::from_secs(20);
/// How long connecting may take when the connection string does not say.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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
        let pool = Pool::open(config.clone(), options.pool_size, setup).map_err(unusable)?;
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
        })
    }

    /// A recorded outcome that put the job back in the queue (a retry, a release) is work for
    /// any node.
    fn announce_if_requeued(&self, finish: &Finish, recorded: bool) {
        if recorded && finish.requeued {
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

    /// Without a limit, one statement. With one, the pending jobs are read from the counters
    /// the triggers keep, not counted, under the pending-limit lock, in one of two ways:
    ///
    /// - Far from the limit (the counters say `PENDING_MARGIN` more would still fit), the
    ///   lock is taken shared: submits on every node go on together, each committing on
    ///   its own. The counters show only committed submits, so each such submit may not see
    ///   the others in flight with it; the margin leaves room for them (see
    ///   `PENDING_MARGIN`).
    /// - Otherwise the lock is taken exclusive: it waits for every submit holding it shared
    ///   to end, and holds off new ones, so the count is exact and the limit is never passed.
    ///
    /// Each way is one statement that commits on its own (and wakes the other nodes).
    /// Claims, outcomes, cancels and deletes take no lock: they only leave fewer pending,
    /// except a retry or release putting a job back, which is not held to the limit (as on
    /// SQLite, only a submit is).
    fn insert(&self, id: String, job: &NewJob, now: Timestamp) -> Result<()> {
        let payload = serde_json::to_string(&job.payload)
            .map_err(|err| Error::Internal(format!("cannot encode payload: {err}")))?;
        let run_at = job.run_at.unwrap_or(now).as_micros();
        let (priority, max_retries, timeout_seconds) = (
            i32::from(job.priority),
            column_int(job.max_retries, "max_retries")?,
            column_int(job.timeout_seconds, "timeout_seconds")?,
        );
        let function = job.function.as_deref();
        let created_at = now.as_micros();
        let queue = job.queue.as_str();
        let params: [&(dyn ToSql + Sync); 9] = [
            &id,
            &payload,
            &priority,
            &run_at,
            &created_at,
            &max_retries,
            &timeout_seconds,
            &function,
            &queue,
        ];
        let limit = self.max_pending_jobs;
        let bound = i64::try_from(limit).unwrap_or(i64::MAX);
        let stored = self.pool.run(|connection| {
            let mut session = connection.session();
            if limit == 0 {
                session.execute(INSERT_JOB, &params)?;
                return Ok(());
            }
            let far_from_limit = [&params[..], &[&PENDING_MARGIN, &bound]].concat();
            if session.execute(INSERT_JOB_FAR_FROM_LIMIT, &far_from_limit)? > 0 {
                return Ok(());
            }
            let under_limit = [&params[..], &[&bound]].concat();
            if session.execute(INSERT_JOB_UNDER_LIMIT, &under_limit)? > 0 {
                return Ok(());
            }
            Err(Error::QueueFull { limit }.into())
        });
        if stored.is_ok() {
            self.announcer.job_queued();
        }
        stored
    }

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

    fn list(&self, status: Option<JobStatus>, before: Option<&str>, limit: usize) -> Result<Page> {
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
            match status {
                Some(status) => {
                    session.query(LIST_BY_STATUS, &[&status.as_str(), &before_seq, &fetch])
                }
                None => session.query(LIST_ALL, &[&before_seq, &fetch]),
            }
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
        Ok(recorded)
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
                Ok(FinishAndClaim {
                    recorded,
                    next,
                    next_due,
                })
            })
        })?;
        self.announce_if_requeued(&finish, done.recorded);
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

    fn heartbeat(&self, _now: Timestamp) -> Result<()> {
        let started_at = self.started_at.as_micros();
        self.pool.run(|connection| {
            connection
                .session()
                .execute(HEARTBEAT, &[&self.node, &started_at])?;
            Ok(())
        })
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

    fn prune_ended(&self, before: Timestamp, limit: usize) -> Result<usize> {
        retention::prune_ended(&self.pool, before, limit)
    }

    fn prune_idempotency_keys(&self, before: Timestamp, limit: usize) -> Result<usize> {
        retention::prune_idempotency_keys(&self.pool, before, limit)
    }

    fn announce_ended(&self, id: &str) {
        self.announcer.job_ended(id);
    }

    fn hear_ended_elsewhere(&self, on_heard: OnEndedElsewhere) {
        // Called once, by `Store::with_backend`; a later call has nothing to add.
        let _ = self.on_ended_elsewhere.set(on_heard);
    }
}

/// Claims the highest-priority due job on this node in one statement.
fn claim<C: postgres::GenericClient>(
    session: &mut Session<'_, C>,
    node: &str,
    now: Timestamp,
) -> Result<Option<Job>, Failure> {
    session
        .query_opt(claim_next_due(), &[&now.as_micros(), &node])?
        .map(|row| row::job(&row))
        .transpose()
}

fn next_due<C: postgres::GenericClient>(
    session: &mut Session<'_, C>,
) -> Result<Option<Timestamp>, Failure> {
    let micros: Option<i64> = session.query_one(NEXT_DUE_AT, &[])?.try_get(0)?;
    Ok(micros.map(Timestamp::from_micros))
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
    ) -> Result<bool, Failure> {
        let changed = session.execute(
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
        Ok(changed > 0)
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
