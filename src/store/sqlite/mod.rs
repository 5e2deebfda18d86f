//! The SQLite backend: the embedded default. Owns every SQL statement for SQLite, the schema
//! and its migrations.
//!
//! Two connections to one WAL database: every write goes through the mutex-guarded write
//! connection in group-committed batches (`group_commit`), and reads use their own
//! mutex-guarded connection, so a `GET` never waits for a disk sync.
//!
//! The backend also keeps the number of pending jobs (for `MAX_PENDING_JOBS`, without a count
//! per submit) and the jobs per queue and status (`counts`, for `GET /queues` and queue
//! limits, without a trigger per write), and knows whether writes reach the disk
//! (`write_health`, for `GET /health`).
//! One process owns the file: it is locked (`flock`) for as long as the store is open, so a
//! second server on the same file is refused, and every node but this one has lost its lease.

mod counts;
mod error;
mod group_commit;
mod observe;
mod queues;
mod reply;
mod retention;
mod row;
mod schema;
mod submit;
mod write_health;

use std::fs::File;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use rusqlite::{params, Connection, OptionalExtension};

use super::bulk::{Batch, BatchDone, BulkAction, BulkFilter};
use super::{
    not_found, Backend, Cancel, FinishAndClaim, Inserted, JobFilter, NewKey, NewRow, OnJobQueued,
    Options, Page, RunningHere, StoredKey, SyncMode,
};
use crate::error::{Error, Result, StorageFailure};
use crate::job::{
    Attempt, AttemptDetails, AttemptEnd, AttemptStatus, Job, JobStatus, MAX_PRIORITY,
};
use crate::metrics::MinuteCounts;
use crate::queue_settings::{QueueSummary, SettingsChange};
use crate::time::Timestamp;
use group_commit::{in_savepoint, GroupCommit, Writer};
use row::{RawAttempt, RawJob};
use write_health::Verdict;

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The columns `RawJob::from_row` reads, in its order. A macro so `concat!` can build
/// `&'static str` statements that the query-plan test checks verbatim.
macro_rules! job_columns {
    () => {
        "id, payload, status, created_at, started_at, finished_at, retry_count, \
         max_retries, timeout_seconds, result, error_message, priority, run_at, function, seq, \
         attempt, node, cancel_requested, queue, traceparent"
    };
}

// After `job_columns!`, which it uses.
mod list;
// After `job_columns!`, which its statements use.
mod bulk;

const SELECT_BY_ID: &str = concat!("SELECT ", job_columns!(), " FROM jobs WHERE id = ?1");
/// The oldest due job of one priority. `INDEXED BY` pins the partial index (without
/// statistics the planner would pick the status index and walk every pending job); with
/// `priority` fixed the index is a range seek, so a million future jobs cost nothing here.
const DUE_AT_PRIORITY: &str = "SELECT seq FROM jobs INDEXED BY jobs_pending_by_priority
     WHERE status = 'pending' AND priority = ?1 AND run_at <= ?2
     ORDER BY run_at, seq LIMIT 1";
const START_ATTEMPT: &str = concat!(
    "UPDATE jobs SET status = 'running', started_at = ?2, finished_at = NULL,
            result = NULL, error_message = NULL, attempt = ?3, node = ?4, cancel_requested = 0
     WHERE seq = ?1 RETURNING ",
    job_columns!()
);
/// The earliest `run_at` among pending jobs: the oldest of each priority, one index seek
/// each, then the minimum of those ten.
const NEXT_DUE_AT: &str = "SELECT min((SELECT run_at FROM jobs INDEXED BY jobs_pending_by_priority
                  WHERE status = 'pending' AND priority = priorities.column1
                  ORDER BY run_at LIMIT 1))
     FROM (VALUES (0), (1), (2), (3), (4), (5), (6), (7), (8), (9)) AS priorities";
/// Running jobs of every node but one (`?1`): this process owns the file, so their nodes are
/// gone.
const RUNNING_ELSEWHERE: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM jobs WHERE status = 'running' AND node IS NOT ?1 ORDER BY seq"
);
const RUNNING_ANYWHERE: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM jobs WHERE status = 'running' ORDER BY seq"
);
const RUNNING_HERE: &str = "SELECT id, attempt, cancel_requested FROM jobs
     WHERE node = ?1 AND status = 'running'";
const HEARTBEAT: &str = "INSERT INTO nodes (id, started_at, heartbeat_at) VALUES (?1, ?2, ?3)
     ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at";
/// Every node but this one has lost its lease; one that runs nothing is forgotten.
const FORGET_NODES: &str = "DELETE FROM nodes WHERE id IS NOT ?1 AND NOT EXISTS
        (SELECT 1 FROM jobs WHERE jobs.node = nodes.id AND jobs.status = 'running')";
const LEAVE: &str = "DELETE FROM nodes WHERE id = ?1";
const RESTART_JOB: &str = concat!(
    "UPDATE jobs SET status = 'pending', retry_count = 0, run_at = ?2, started_at = NULL,
            finished_at = NULL, result = NULL, error_message = NULL
     WHERE id = ?1 RETURNING ",
    job_columns!()
);
const SEQ_OF_ID: &str = "SELECT seq FROM jobs WHERE id = ?1";
const STATUS_OF_ID: &str = "SELECT status FROM jobs WHERE id = ?1";
const DELETE_JOB: &str = "DELETE FROM jobs WHERE id = ?1";
const CANCEL_PENDING: &str = "UPDATE jobs SET status = 'cancelled', finished_at = ?2,
        error_message = 'cancelled by request'
     WHERE id = ?1 AND status = 'pending'";
/// Tells the node running the job to stop it.
const REQUEST_CANCEL: &str = "UPDATE jobs SET cancel_requested = 1
     WHERE id = ?1 AND status = 'running'";
const DELETE_ATTEMPTS: &str =
    "DELETE FROM attempts WHERE job_seq = (SELECT seq FROM jobs WHERE id = ?1)";
/// Numbers the attempt after the job's last one: `max` over the primary key is one seek.
const INSERT_ATTEMPT: &str = "INSERT INTO attempts (job_seq, attempt, status, started_at, node)
     SELECT ?1, coalesce(max(attempt), 0) + 1, 'running', ?2, ?3 FROM attempts WHERE job_seq = ?1
     RETURNING attempt";
/// Ends attempt `?2` of the job, claimed at `?9`, if it still runs.
const FINISH_ATTEMPT_ROW: &str = "UPDATE attempts SET status = ?3, finished_at = ?4, result = ?5,
        error_message = ?6, exit_code = ?7, stderr_tail = ?8
     WHERE job_seq = ?1 AND attempt = ?2 AND started_at = ?9 AND status = 'running'";
const ATTEMPTS_OF_JOB: &str = "SELECT attempt, status, started_at, finished_at, result,
        error_message, exit_code, stderr_tail, node
     FROM attempts WHERE job_seq = ?1 ORDER BY attempt";
/// Read once at open; from then on the count is kept in memory by the writes.
const COUNT_PENDING: &str = "SELECT count(*) FROM jobs WHERE status = 'pending'";
/// The write `GET /health` makes when nothing else has written lately: one row, one page.
const PROBE_WRITE: &str = "UPDATE write_probe SET probed_at = ?1 WHERE id = 1";
/// Ends the job's running attempt `?7`, claimed at `?8`, with the status `?2` its transition
/// says: a retry (`?6` set) counts one more retry and is due at `?6`. An outcome lands only on
/// the attempt it belongs to, never on a later attempt of the same job: the job was recovered
/// elsewhere, or its claim was lost when a batch failed to commit after the claim was
/// answered, and the next claim took the same number (the claim time tells them apart).
const FINISH_ATTEMPT: &str = "UPDATE jobs SET
        status = ?2,
        finished_at = ?3,
        result = ?4,
        error_message = ?5,
        retry_count = retry_count + (?6 IS NOT NULL),
        run_at = coalesce(?6, run_at),
        node = NULL
     WHERE seq = ?1 AND status = 'running' AND attempt IS ?7 AND started_at IS ?8";

pub struct SqliteStore {
    /// The database file, for its size.
    path: std::path::PathBuf,
    writes: GroupCommit,
    /// The read connection; the lock makes its statements one at a time.
    reader: Mutex<Connection>,
    /// The most jobs that may be pending when a new one is submitted; 0 means no limit.
    max_pending_jobs: u64,
    /// This process's node id, recorded on the jobs it claims.
    node: String,
    /// When this node started, for its row in `nodes`.
    started_at: Timestamp,
    /// Held open for its lock: no other process uses this file while the store is open.
    _owner: Flock<File>,
    /// Told when an ended job freed a place in a queue with a `concurrency` limit, so that
    /// an idle worker looks again (`watch_other_nodes`).
    on_freed: OnceLock<OnJobQueued>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and brings its schema up to date. A file
    /// that cannot be a database is `DatabaseUnusable`, saying why; one that another process
    /// has open is refused. A submit that would make more than `max_pending_jobs` jobs pending
    /// is refused (0: no limit).
    pub fn open(path: &Path, options: &Options) -> Result<SqliteStore> {
        SqliteStore::open_connections(path, options).map_err(|err| unusable_file(path, err))
    }

    fn open_connections(path: &Path, options: &Options) -> Result<SqliteStore> {
        let open = || Connection::open(path);
        let mut writer = open()?;
        let owner = lock_file(path)?;
        configure(&writer, options.sync)?;
        schema::migrate(&mut writer)?;
        let reader = open()?;
        configure(&reader, options.sync)?;
        reader.pragma_update(None, "query_only", true)?;
        let pending: u64 = writer.query_row(COUNT_PENDING, [], |row| row.get(0))?;
        let counts = counts::Tally::load(&writer)?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            writes: GroupCommit::new(writer, pending, counts, options.metrics.db_commit_seconds()),
            reader: Mutex::new(reader),
            max_pending_jobs: options.max_pending_jobs,
            node: options.node.clone(),
            started_at: Timestamp::now(),
            _owner: owner,
            on_freed: OnceLock::new(),
        })
    }

    fn read(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the connection usable, so take it over.
        self.reader
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether the end of `job` frees a place in its queue that a worker may be waiting for.
    /// Such an end is written synced, so that the woken workers' reads see the place.
    fn frees_a_place(&self, job: &Job) -> Result<bool> {
        queues::limits_concurrency(&self.read(), &job.queue)
    }

    fn place_freed(&self) {
        if let Some(on_freed) = self.on_freed.get() {
            on_freed();
        }
    }
}

impl Backend for SqliteStore {
    fn ping(&self) -> Result<()> {
        self.read()
            .query_row("SELECT count(*) FROM sqlite_master", [], |row| {
                row.get::<_, i64>(0)
            })?;
        Ok(())
    }

    /// Answered from what recent writes reported; when there were none for a second, one
    /// probe write finds out, joining the next group commit like any write (a one-row update:
    /// the write lock is held no longer than for a submit). Callers that arrive while a probe
    /// runs get the last verdict without waiting.
    fn writes_ok(&self) -> Result<()> {
        let health = self.writes.health();
        match health.verdict(Instant::now()) {
            Verdict::Healthy => Ok(()),
            Verdict::Failing(message) => Err(Error::Unavailable(message)),
            Verdict::Probe => {
                let now = Timestamp::now().as_micros();
                let probed = self.writes.write(move |writer| {
                    writer.prepare_cached(PROBE_WRITE)?.execute([now])?;
                    Ok(())
                });
                health.probe_done();
                probed
            }
        }
    }

    // -- Submits (in `submit`) -----------------------------------------------------------

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

    /// Read through the writer: an outcome is answered, and `job_ended` called, before its
    /// batch commits, so the reader may not see it yet.
    fn get_latest(&self, id: &str) -> Result<Option<Job>> {
        let id = id.to_string();
        let raw = self.writes.write_unsynced(move |writer| {
            Ok(writer
                .prepare_cached(SELECT_BY_ID)?
                .query_row([&id], RawJob::from_row)
                .optional()?)
        })?;
        raw.map(RawJob::into_job).transpose()
    }

    fn get(&self, id: &str) -> Result<Option<Job>> {
        let raw = self
            .read()
            .prepare_cached(SELECT_BY_ID)?
            .query_row([id], RawJob::from_row)
            .optional()?;
        raw.map(RawJob::into_job).transpose()
    }

    fn list(&self, filter: &JobFilter, before: Option<&str>, limit: usize) -> Result<Page> {
        let connection = self.read();
        let before_seq = match before {
            None => i64::MAX,
            Some(id) => connection
                .prepare_cached(SEQ_OF_ID)?
                .query_row([id], |row| row.get(0))
                .optional()?
                .ok_or_else(|| {
                    Error::Validation(format!(
                        "before must be the id of an existing job; no job has id {id:?}"
                    ))
                })?,
        };
        let fetch = i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1);
        let raws = list::page(&connection, filter, before_seq, fetch)?;
        drop(connection);
        let has_more = raws.len() > limit;
        let jobs = raws
            .into_iter()
            .take(limit)
            .map(RawJob::into_job)
            .collect::<Result<Vec<_>>>()?;
        Ok(Page { jobs, has_more })
    }

    /// Writes go through one connection in order, so two workers never claim the same job.
    fn claim_next_due(&self, now: Timestamp) -> Result<Option<Job>> {
        // Unsynced: a claim lost in a crash leaves the job pending, and it simply runs later.
        let node = self.node.clone();
        let raw = self.writes.write_unsynced(move |writer| {
            in_savepoint(writer, |writer| claim_in(writer, &node, now))
        })?;
        raw.map(RawJob::into_job).transpose()
    }

    fn next_due_at(&self) -> Result<Option<Timestamp>> {
        let connection = self.read();
        next_due_in(&connection, &*connection)
    }

    fn finish_attempt(
        &self,
        job: &Job,
        end: &AttemptEnd,
        details: &AttemptDetails,
        now: Timestamp,
    ) -> Result<bool> {
        let finish = Finish::new(job, end, details, now)?;
        let write =
            move |writer: &mut Writer<'_>| in_savepoint(writer, |writer| finish.run(writer));
        if self.frees_a_place(job)? {
            let recorded = self.writes.write(write)?;
            self.place_freed();
            return Ok(recorded);
        }
        // Unsynced: an outcome lost in a crash leaves the job running, and the node's lease
        // recovers that attempt as interrupted. Readers see it only once committed.
        let redo = Finish::new(job, end, details, now)?.redo();
        self.writes.write_unsynced_redone(write, redo)
    }

    /// One trip through the writer per job for a busy worker. When nothing is due, also
    /// returns when the next job will be, read inside the write: the reader connection cannot
    /// see it yet if this write's batch has not committed (a retry it just scheduled, say).
    fn finish_and_claim_next(
        &self,
        job: &Job,
        end: &AttemptEnd,
        details: &AttemptDetails,
        now: Timestamp,
    ) -> Result<FinishAndClaim> {
        let finish = Finish::new(job, end, details, now)?;
        let redo = finish.redo();
        let node = self.node.clone();
        let write = move |writer: &mut Writer<'_>| {
            in_savepoint(writer, |writer| {
                let recorded = finish.run(writer)?;
                let claimed = claim_in(writer, &node, now)?;
                let next_due = match claimed {
                    Some(_) => None,
                    None => next_due_in(writer, &*writer)?,
                };
                Ok((recorded, claimed, next_due))
            })
        };
        // A scheduled retry must be visible to every worker before one is woken for it, so
        // that write waits for its commit, as does a place freed in a limited queue; other
        // outcomes need not.
        let frees_a_place = self.frees_a_place(job)?;
        let (recorded, raw, next_due) = if end.transition().retry_at.is_some() || frees_a_place {
            let written = self.writes.write(write)?;
            if frees_a_place {
                self.place_freed();
            }
            written
        } else {
            // Should the batch fail after this is answered, the outcome is redone; the claim
            // is not (the job stays pending, and runs again).
            self.writes.write_unsynced_redone(write, redo)?
        };
        Ok(FinishAndClaim {
            recorded,
            next: raw.map(RawJob::into_job).transpose()?,
            next_due,
        })
    }

    fn retry(&self, id: &str, now: Timestamp) -> Result<Job> {
        let id = id.to_string();
        let raw = self.writes.write(move |writer| {
            let status: Option<String> = writer
                .prepare_cached(STATUS_OF_ID)?
                .query_row([&id], |row| row.get(0))
                .optional()?;
            let status: JobStatus = status.ok_or_else(|| not_found(&id))?.parse()?;
            if !status.is_retryable() {
                return Err(Error::InvalidState(format!(
                    "job {id} is {status}; only failed, timeout or cancelled jobs can be retried"
                )));
            }
            let raw = writer
                .prepare_cached(RESTART_JOB)?
                .query_row(params![id, now.as_micros()], RawJob::from_row)?;
            writer.moved(raw.queue(), Some(status), Some(JobStatus::Pending));
            Ok(raw)
        })?;
        raw.into_job()
    }

    fn cancel(&self, id: &str, now: Timestamp) -> Result<Cancel> {
        let id = id.to_string();
        let (cancelled, raw) = self.writes.write(move |writer| {
            in_savepoint(writer, |writer| {
                let raw = writer
                    .prepare_cached(SELECT_BY_ID)?
                    .query_row([&id], RawJob::from_row)
                    .optional()?
                    .ok_or_else(|| not_found(&id))?;
                let changed = writer
                    .prepare_cached(CANCEL_PENDING)?
                    .execute(params![id, now.as_micros()])?;
                if changed == 0 {
                    writer.prepare_cached(REQUEST_CANCEL)?.execute([&id])?;
                    return Ok((false, raw));
                }
                writer.moved(
                    raw.queue(),
                    Some(JobStatus::Pending),
                    Some(JobStatus::Cancelled),
                );
                let raw = writer
                    .prepare_cached(SELECT_BY_ID)?
                    .query_row([&id], RawJob::from_row)?;
                Ok((true, raw))
            })
        })?;
        let job = raw.into_job()?;
        match job.status {
            _ if cancelled => Ok(Cancel::Cancelled(job)),
            JobStatus::Running => Ok(Cancel::Running(job)),
            status => Err(Error::InvalidState(format!(
                "job {} is {status}; only pending or running jobs can be cancelled",
                job.id
            ))),
        }
    }

    fn delete(&self, id: &str) -> Result<Option<Job>> {
        let id = id.to_string();
        let raw = self.writes.write(move |writer| {
            in_savepoint(writer, |writer| {
                let raw = writer
                    .prepare_cached(SELECT_BY_ID)?
                    .query_row([&id], RawJob::from_row)
                    .optional()?;
                writer.prepare_cached(DELETE_ATTEMPTS)?.execute([&id])?;
                writer.prepare_cached(DELETE_JOB)?.execute([&id])?;
                if let Some(raw) = &raw {
                    raw.deleted_by(writer);
                }
                Ok(raw)
            })
        })?;
        raw.map(RawJob::into_job).transpose()
    }

    fn attempts(&self, id: &str) -> Result<Option<Vec<Attempt>>> {
        let connection = self.read();
        let seq: Option<i64> = connection
            .prepare_cached(SEQ_OF_ID)?
            .query_row([id], |row| row.get(0))
            .optional()?;
        let Some(seq) = seq else {
            return Ok(None);
        };
        let raws = connection
            .prepare_cached(ATTEMPTS_OF_JOB)?
            .query_map([seq], RawAttempt::from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        drop(connection);
        raws.into_iter()
            .map(RawAttempt::into_attempt)
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// Unsynced: a heartbeat lost in a crash is one the next would have replaced.
    fn heartbeat(&self, now: Timestamp) -> Result<()> {
        let (node, started_at) = (self.node.clone(), self.started_at.as_micros());
        self.writes.write_unsynced(move |writer| {
            writer.prepare_cached(HEARTBEAT)?.execute(params![
                node,
                started_at,
                now.as_micros()
            ])?;
            Ok(())
        })
    }

    /// This process owns the file, so every other node is gone whatever its heartbeat says.
    /// A row that cannot be read is logged and skipped rather than stopping the recovery.
    fn lost_attempts(
        &self,
        _now: Timestamp,
        _lease: Duration,
        include_own: bool,
    ) -> Result<Vec<Job>> {
        let connection = self.read();
        let raws = if include_own {
            connection
                .prepare_cached(RUNNING_ANYWHERE)?
                .query_map([], RawJob::from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?
        } else {
            connection
                .prepare_cached(RUNNING_ELSEWHERE)?
                .query_map([&self.node], RawJob::from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?
        };
        drop(connection);
        Ok(raws
            .into_iter()
            .filter_map(|raw| {
                raw.into_job()
                    .map_err(|err| log::error!("skipping an unreadable running job: {err}"))
                    .ok()
            })
            .collect())
    }

    fn forget_nodes(&self, _now: Timestamp, _lease: Duration, leaving: bool) -> Result<()> {
        let node = self.node.clone();
        self.writes.write(move |writer| {
            writer.prepare_cached(FORGET_NODES)?.execute([&node])?;
            if leaving {
                writer.prepare_cached(LEAVE)?.execute([&node])?;
            }
            Ok(())
        })
    }

    /// Read through the writer: a claim is answered before its batch commits, so the reader
    /// may not see yet an attempt that already runs.
    fn running_here(&self) -> Result<Vec<RunningHere>> {
        let node = self.node.clone();
        self.writes.write_unsynced(move |writer| {
            let rows = writer
                .prepare_cached(RUNNING_HERE)?
                .query_map([&node], |row| {
                    Ok(RunningHere {
                        job_id: row.get(0)?,
                        attempt: row.get::<_, Option<u32>>(1)?.unwrap_or(0),
                        cancel_requested: row.get(2)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    fn is_shared(&self) -> bool {
        false
    }

    /// No other node; `on_queued` hears of places freed in limited queues.
    fn watch_other_nodes(&self, on_queued: OnJobQueued) -> Result<()> {
        // A second call keeps the first callback: the server makes one.
        let _ = self.on_freed.set(on_queued);
        Ok(())
    }

    // --- Named queues ---

    fn queues(&self) -> Result<Vec<QueueSummary>> {
        queues::all(&self.read())
    }

    fn set_paused(&self, name: &str, paused: bool, now: Timestamp) -> Result<QueueSummary> {
        let name = name.to_string();
        self.writes
            .write(move |writer| queues::set_paused(writer, &name, paused, now))
    }

    fn configure_queue(
        &self,
        name: &str,
        change: &SettingsChange,
        now: Timestamp,
    ) -> Result<QueueSummary> {
        let (name, change) = (name.to_string(), *change);
        self.writes.write(move |writer| {
            in_savepoint(writer, |writer| {
                queues::configure(writer, &name, &change, now)
            })
        })
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
        retention::prune_ended(&self.writes, before, limit)
    }

    fn prune_idempotency_keys(&self, before: Timestamp, limit: usize) -> Result<usize> {
        retention::prune_idempotency_keys(&self.writes, before, limit)
    }

    // Observing: the SQL is in `observe.rs`.

    fn oldest_pending_run_at(&self, queue: &str) -> Result<Option<Timestamp>> {
        observe::oldest_pending_run_at(&self.read(), queue)
    }

    fn size_bytes(&self) -> Result<u64> {
        observe::size_bytes(&self.path)
    }

    fn add_finished_minutes(&self, counts: &MinuteCounts, prune_before: i64) -> Result<()> {
        observe::add_finished_minutes(&self.writes, counts, prune_before)
    }

    fn finished_minutes(&self, since: i64) -> Result<MinuteCounts> {
        observe::finished_minutes(&self.read(), since)
    }
}

/// Claims the highest-priority due job inside a write. While no queue restricts, one seek
/// per priority, highest first, ten index lookups at worst; otherwise the queues that may
/// start a job are searched (`queues`), and a start takes its queue's token. Several
/// statements: the caller runs it in a savepoint.
fn claim_in(writer: &mut Writer<'_>, node: &str, now: Timestamp) -> Result<Option<RawJob>> {
    let now = now.as_micros();
    let restrictions = queues::restrictions(writer)?;
    let due = if restrictions.is_empty() {
        due_anywhere(writer, now)?
    } else {
        queues::due_within_limits(writer, &*writer, &restrictions, now, || {
            due_anywhere(writer, now)
        })?
    };
    let Some(seq) = due else {
        return Ok(None);
    };
    let attempt: u32 = writer
        .prepare_cached(INSERT_ATTEMPT)?
        .query_row(params![seq, now, node], |row| row.get(0))?;
    let raw = writer
        .prepare_cached(START_ATTEMPT)?
        .query_row(params![seq, now, attempt, node], RawJob::from_row)?;
    queues::started(writer, &restrictions, raw.queue(), now)?;
    writer.moved(
        raw.queue(),
        Some(JobStatus::Pending),
        Some(JobStatus::Running),
    );
    Ok(Some(raw))
}

/// The highest-priority, then oldest, due job of any queue.
fn due_anywhere(connection: &Connection, now: i64) -> Result<Option<i64>> {
    let mut statement = connection.prepare_cached(DUE_AT_PRIORITY)?;
    for priority in (0..=MAX_PRIORITY).rev() {
        let due: Option<i64> = statement
            .query_row(params![priority, now], |row| row.get(0))
            .optional()?;
        if due.is_some() {
            return Ok(due);
        }
    }
    Ok(None)
}

/// When the next job is due; `counts` are the queue counts as the caller sees them.
fn next_due_in(connection: &Connection, counts: &dyn queues::Counts) -> Result<Option<Timestamp>> {
    let restrictions = queues::restrictions(connection)?;
    if !restrictions.is_empty() {
        return queues::next_due_within_limits(connection, counts, &restrictions);
    }
    let micros: Option<i64> = connection
        .prepare_cached(NEXT_DUE_AT)?
        .query_row([], |row| row.get(0))?;
    Ok(micros.map(Timestamp::from_micros))
}

/// The end of an attempt, as the model's transition says, encoded for `FINISH_ATTEMPT`.
#[derive(Clone)]
struct Finish {
    /// The job's row: outcomes address it by `seq`, a rowid seek, not by `id`.
    seq: i64,
    /// For the counts: the job leaves `running` of this queue.
    queue: String,
    attempt: Option<u32>,
    started_at: Option<i64>,
    details: AttemptDetails,
    job_status: JobStatus,
    attempt_status: AttemptStatus,
    finished_at: i64,
    result: Option<String>,
    error: Option<String>,
    retry_at: Option<i64>,
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
        Ok(Finish {
            seq: job.seq,
            queue: job.queue.clone(),
            attempt: job.attempt,
            started_at: job.started_at.map(Timestamp::as_micros),
            details: details.clone(),
            job_status: transition.job_status,
            attempt_status: transition.attempt_status,
            finished_at: now.as_micros(),
            result,
            error: transition.error,
            retry_at: transition.retry_at.map(Timestamp::as_micros),
        })
    }

    /// The same outcome, to record again if the batch that first recorded it fails to commit
    /// after its worker was answered. Harmless if the job has moved on: the statements only
    /// touch the attempt while it is still running.
    fn redo(&self) -> impl FnMut(&mut Writer<'_>) -> Result<()> + Send + 'static {
        let finish = self.clone();
        move |writer| in_savepoint(writer, |writer| finish.run(writer).map(|_| ()))
    }

    /// Returns whether the job was still running that attempt (and so was updated). The
    /// attempt's own row is closed either way. Two statements: the caller runs it in a
    /// savepoint.
    fn run(&self, writer: &mut Writer<'_>) -> Result<bool> {
        writer.prepare_cached(FINISH_ATTEMPT_ROW)?.execute(params![
            self.seq,
            self.attempt,
            self.attempt_status.as_str(),
            self.finished_at,
            self.result,
            self.error,
            self.details.exit_code,
            self.details.stderr_tail,
            self.started_at
        ])?;
        let changed = writer.prepare_cached(FINISH_ATTEMPT)?.execute(params![
            self.seq,
            self.job_status.as_str(),
            self.finished_at,
            self.result,
            self.error,
            self.retry_at,
            self.attempt,
            self.started_at
        ])?;
        // A retry or a release puts the job back in the queue (pending).
        if changed > 0 {
            writer.moved(&self.queue, Some(JobStatus::Running), Some(self.job_status));
        }
        Ok(changed > 0)
    }
}

/// Per-connection settings. WAL lets the reader run beside the writer. `FULL` syncs the WAL on
/// every commit, so an acknowledged job survives power loss; `NORMAL` syncs only at
/// checkpoints, so it survives a process crash but may lose the last commits on power loss.
fn configure(connection: &Connection, sync: SyncMode) -> Result<()> {
    connection.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = connection.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Startup(format!(
            "the database refused WAL mode (journal_mode is {mode})"
        )));
    }
    let synchronous = match sync {
        SyncMode::EveryCommit => "FULL",
        SyncMode::Deferred => "NORMAL",
    };
    connection.pragma_update(None, "synchronous", synchronous)?;
    Ok(())
}

/// `err` from opening `path`, as `DatabaseUnusable` when the file is what is wrong (as opposed
/// to, say, a full disk), with the reason in words where SQLite's would puzzle.
fn unusable_file(path: &Path, err: Error) -> Error {
    let Error::Storage {
        kind: StorageFailure::CannotOpen | StorageFailure::Unusable | StorageFailure::ReadOnly,
        detail,
    } = &err
    else {
        return err;
    };
    let parent = match path.parent() {
        Some(parent) if parent.as_os_str().is_empty() => Path::new("."),
        Some(parent) => parent,
        None => Path::new("/"),
    };
    let reason = if path.is_dir() {
        format!(
            "it is a directory; name a file in it, e.g. {}",
            path.join("mini_lambda.db").display()
        )
    } else if !parent.exists() {
        format!("the directory {} does not exist", parent.display())
    } else if !parent.is_dir() {
        format!("{} is not a directory", parent.display())
    } else {
        detail.clone()
    };
    Error::DatabaseUnusable(format!(
        "cannot open the database file {}: {reason}",
        path.display()
    ))
}

/// Locks the database file for this process, so that no second server uses it (it would
/// count pending jobs on its own and take this one's running jobs for lost). `flock` does not
/// touch the POSIX locks SQLite itself uses. Released when the process ends, however it ends.
fn lock_file(path: &Path) -> Result<Flock<File>> {
    let file = File::options().read(true).open(path).map_err(|err| {
        Error::DatabaseUnusable(format!(
            "cannot open the database file {}: {err}",
            path.display()
        ))
    })?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(locked) => Ok(locked),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(Error::Startup(format!(
            "the database file {} is in use by another mini-lambda-rust process; \
             one SQLite file serves one process (use PostgreSQL for several nodes)",
            path.display()
        ))),
        Err((_, err)) => Err(Error::Startup(format!(
            "cannot lock the database file {}: {err}",
            path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::NewJob;
    use serde_json::json;

    /// A store on a fresh file in its own directory, removed when dropped.
    use crate::store::test_dir;

    pub(crate) struct TempStore {
        pub(crate) store: SqliteStore,
        pub(crate) dir: test_dir::TestDir,
    }

    impl std::ops::Deref for TempStore {
        type Target = SqliteStore;
        fn deref(&self) -> &SqliteStore {
            &self.store
        }
    }

    /// The options of a test store: synced commits, node `test-node`.
    pub(crate) fn options(max_pending_jobs: u64) -> Options {
        Options::for_test("test-node", max_pending_jobs)
    }

    fn open(path: &Path, max_pending_jobs: u64) -> Result<SqliteStore> {
        SqliteStore::open(path, &options(max_pending_jobs))
    }

    pub(super) fn temp_store() -> TempStore {
        let dir = test_dir::TestDir::new("store");
        let store = open(&dir.path().join("jobs.db"), 0).unwrap();
        TempStore { store, dir }
    }

    /// Job "a", submitted at 1 µs with no schedule, claimed at `at` µs.
    fn insert_and_claim(store: &SqliteStore, at: i64) -> Job {
        store
            .insert("a".into(), &new_job(0, None), Timestamp::from_micros(1))
            .unwrap();
        store
            .claim_next_due(Timestamp::from_micros(at))
            .unwrap()
            .unwrap()
    }

    fn new_job(priority: u8, run_at: Option<i64>) -> NewJob {
        NewJob::for_test(priority, run_at)
    }

    pub(super) fn plan(store: &SqliteStore, sql: &str) -> String {
        let connection = store.read();
        let mut statement = connection
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap();
        // Unbound parameters are NULL; the plan does not depend on their values.
        let nulls = vec![rusqlite::types::Null; statement.parameter_count()];
        let rows = statement
            .query_map(rusqlite::params_from_iter(nulls), |row| {
                row.get::<_, String>(3)
            })
            .unwrap()
            .collect::<rusqlite::Result<Vec<_>>>()
            .unwrap();
        rows.join("\n")
    }

    #[test]
    fn claims_highest_priority_first_then_oldest() {
        let store = temp_store();
        let now = Timestamp::from_micros(1_000);
        store.insert("low".into(), &new_job(0, None), now).unwrap();
        store
            .insert("high-1".into(), &new_job(5, None), now)
            .unwrap();
        store
            .insert("high-2".into(), &new_job(5, None), now)
            .unwrap();
        store
            .insert("future".into(), &new_job(9, Some(5_000)), now)
            .unwrap();
        let order: Vec<String> = std::iter::from_fn(|| store.claim_next_due(now).unwrap())
            .map(|job| job.id)
            .collect();
        assert_eq!(order, ["high-1", "high-2", "low"]);
        assert_eq!(
            store.next_due_at().unwrap(),
            Some(Timestamp::from_micros(5_000))
        );
        let later = store
            .claim_next_due(Timestamp::from_micros(5_000))
            .unwrap()
            .unwrap();
        assert_eq!(
            (later.id.as_str(), later.status),
            ("future", JobStatus::Running)
        );
    }

    #[test]
    fn finishing_a_deleted_job_writes_nothing() {
        let store = temp_store();
        let now = Timestamp::from_micros(1);
        store.insert("a".into(), &new_job(0, None), now).unwrap();
        let attempt = store.claim_next_due(now).unwrap().unwrap();
        assert!(store.delete("a").unwrap().is_some());
        let end = AttemptEnd::Succeeded { result: json!(1) };
        assert!(!store
            .finish_attempt(&attempt, &end, &AttemptDetails::default(), now)
            .unwrap());
        assert!(store.get("a").unwrap().is_none());
    }

    #[test]
    fn an_outcome_lands_only_on_its_own_attempt() {
        let store = temp_store();
        let first = insert_and_claim(&store, 2);
        let released = AttemptEnd::Released {
            reason: "test".into(),
        };
        assert!(store
            .finish_attempt(
                &first,
                &released,
                &AttemptDetails::default(),
                Timestamp::from_micros(3)
            )
            .unwrap());
        let second = store
            .claim_next_due(Timestamp::from_micros(4))
            .unwrap()
            .unwrap();
        // The first attempt's outcome arriving late must not end the second attempt.
        let late = AttemptEnd::Succeeded {
            result: json!("stale"),
        };
        assert!(!store
            .finish_attempt(
                &first,
                &late,
                &AttemptDetails::default(),
                Timestamp::from_micros(5)
            )
            .unwrap());
        assert_eq!(store.get("a").unwrap().unwrap().status, JobStatus::Running);
        let done = AttemptEnd::Succeeded {
            result: json!("fresh"),
        };
        assert!(store
            .finish_attempt(
                &second,
                &done,
                &AttemptDetails::default(),
                Timestamp::from_micros(6)
            )
            .unwrap());
        assert_eq!(
            store.get("a").unwrap().unwrap().result,
            Some(json!("fresh"))
        );
    }

    #[test]
    fn finishing_without_a_claim_reports_when_the_next_job_is_due() {
        let store = temp_store();
        let attempt = insert_and_claim(&store, 2);
        let retry = AttemptEnd::Failed {
            error: "boom".into(),
            retry_at: Some(Timestamp::from_micros(90)),
        };
        let done = store
            .finish_and_claim_next(
                &attempt,
                &retry,
                &AttemptDetails::default(),
                Timestamp::from_micros(3),
            )
            .unwrap();
        assert!(done.recorded && done.next.is_none());
        assert_eq!(done.next_due, Some(Timestamp::from_micros(90)));
    }

    #[test]
    fn pages_walk_newest_first_with_a_cursor() {
        let store = temp_store();
        for n in 0..5 {
            store
                .insert(
                    format!("job-{n}"),
                    &new_job(0, None),
                    Timestamp::from_micros(n),
                )
                .unwrap();
        }
        let first = store.list(&JobFilter::default(), None, 2).unwrap();
        let ids: Vec<&str> = first.jobs.iter().map(|job| job.id.as_str()).collect();
        assert_eq!((ids, first.has_more), (vec!["job-4", "job-3"], true));
        let last = store.list(&JobFilter::default(), Some("job-1"), 2).unwrap();
        let ids: Vec<&str> = last.jobs.iter().map(|job| job.id.as_str()).collect();
        assert_eq!((ids, last.has_more), (vec!["job-0"], false));
        assert!(matches!(
            store.list(&JobFilter::default(), Some("nope"), 2),
            Err(Error::Validation(_))
        ));
    }

    #[test]
    fn every_api_query_uses_an_index() {
        let store = temp_store();
        // Each statement must seek (SEARCH) an index on the columns it constrains; a SCAN or a
        // sort would grow with the number of jobs.
        let cases = [
            (
                queues::DUE_IN_QUEUE,
                "SEARCH jobs USING COVERING INDEX jobs_pending_by_queue (queue=? AND priority=? AND run_at<?)",
            ),
            (
                queues::EARLIEST_IN_QUEUE,
                "SEARCH jobs USING COVERING INDEX jobs_pending_by_queue (queue=? AND priority=?)",
            ),
            (
                queues::RUNNING_IN_QUEUE,
                "SEARCH queue_counts USING PRIMARY KEY (queue=? AND status=?)",
            ),
            (
                queues::COUNTS_OF_QUEUE,
                "SEARCH queue_counts USING PRIMARY KEY (queue=?)",
            ),
            (
                queues::SETTINGS_OF_QUEUE,
                "SEARCH queues USING PRIMARY KEY (name=?)",
            ),
            (
                queues::LIMITS_CONCURRENCY,
                "SEARCH queues USING PRIMARY KEY (name=?)",
            ),
            (queues::TAKE_TOKEN, "SEARCH queues USING PRIMARY KEY (name=?)"),
            (
                SELECT_BY_ID,
                "SEARCH jobs USING INDEX sqlite_autoindex_jobs_1 (id=?)",
            ),
            (
                SEQ_OF_ID,
                "SEARCH jobs USING COVERING INDEX sqlite_autoindex_jobs_1 (id=?)",
            ),
            (
                DUE_AT_PRIORITY,
                "SEARCH jobs USING COVERING INDEX jobs_pending_by_priority (priority=? AND run_at<?)",
            ),
            (
                START_ATTEMPT,
                "SEARCH jobs USING INTEGER PRIMARY KEY (rowid=?)",
            ),
            (
                NEXT_DUE_AT,
                "SEARCH jobs USING COVERING INDEX jobs_pending_by_priority (priority=?)",
            ),
            (
                RUNNING_ELSEWHERE,
                "SEARCH jobs USING INDEX jobs_by_status (status=?)",
            ),
            (
                RUNNING_HERE,
                "SEARCH jobs USING INDEX jobs_running_by_node (node=?)",
            ),
            (
                FINISH_ATTEMPT,
                "SEARCH jobs USING INTEGER PRIMARY KEY (rowid=?)",
            ),
            (
                DELETE_JOB,
                "SEARCH jobs USING INDEX sqlite_autoindex_jobs_1 (id=?)",
            ),
            (
                CANCEL_PENDING,
                "SEARCH jobs USING INDEX sqlite_autoindex_jobs_1 (id=?)",
            ),
            (INSERT_ATTEMPT, "SEARCH attempts USING PRIMARY KEY (job_seq=?)"),
            (
                FINISH_ATTEMPT_ROW,
                "SEARCH attempts USING PRIMARY KEY (job_seq=? AND attempt=?)",
            ),
            (ATTEMPTS_OF_JOB, "SEARCH attempts USING PRIMARY KEY (job_seq=?)"),
            (DELETE_ATTEMPTS, "SEARCH jobs USING COVERING INDEX sqlite_autoindex_jobs_1 (id=?)"),
            (PROBE_WRITE, "SEARCH write_probe USING INTEGER PRIMARY KEY (rowid=?)"),
        ];
        for (sql, expected) in cases {
            let plan = plan(&store, sql);
            assert!(plan.lines().any(|line| line == expected), "{sql}\n{plan}");
            assert!(
                !plan.contains("SCAN") && !plan.contains("TEMP B-TREE"),
                "{sql}\n{plan}"
            );
        }
    }

    #[test]
    fn claims_skip_paused_full_and_rate_limited_queues_and_the_schedule_agrees() {
        use crate::queue_settings::SettingsChange;
        let store = temp_store();
        let at = Timestamp::from_micros;
        for (id, queue, priority) in [
            ("p1", "paused", 9),
            ("c1", "capped", 5),
            ("c2", "capped", 5),
            ("r1", "rated", 3),
            ("r2", "rated", 3),
            ("o1", "open", 0),
        ] {
            let mut job = new_job(priority, None);
            job.queue = queue.into();
            store.insert(id.into(), &job, at(1)).unwrap();
        }
        store.set_paused("paused", true, at(1)).unwrap();
        let limit = |concurrency, rate_per_second| SettingsChange {
            concurrency,
            rate_per_second,
        };
        store
            .configure_queue("capped", &limit(Some(Some(1)), None), at(1))
            .unwrap();
        let rated = store
            .configure_queue("rated", &limit(None, Some(Some(1.0))), at(1_000_000))
            .unwrap();
        assert_eq!(rated.rate_per_second, Some(1.0));
        assert_eq!(rated.counts.pending, 2);
        let now = at(2_000_000);
        let claimed: Vec<Job> = std::iter::from_fn(|| store.claim_next_due(now).unwrap()).collect();
        let ids: Vec<&str> = claimed.iter().map(|job| job.id.as_str()).collect();
        assert_eq!(ids, ["c1", "r1", "o1"]);
        // The rated queue's next token comes a second after its last start; nothing else may
        // start (paused, or at its limit).
        assert_eq!(store.next_due_at().unwrap(), Some(at(3_000_000)));
        assert!(store.claim_next_due(at(2_999_999)).unwrap().is_none());
        assert_eq!(
            store.claim_next_due(at(3_000_000)).unwrap().unwrap().id,
            "r2"
        );
        assert_eq!(store.next_due_at().unwrap(), None);
        // The capped queue's running job ends: its next may start.
        let done = AttemptEnd::Succeeded { result: json!(1) };
        let next = store
            .finish_and_claim_next(
                &claimed[0],
                &done,
                &AttemptDetails::default(),
                at(4_000_000),
            )
            .unwrap();
        assert_eq!(next.next.map(|job| job.id).as_deref(), Some("c2"));
        store.set_paused("paused", false, at(5_000_000)).unwrap();
        assert_eq!(store.next_due_at().unwrap(), Some(at(1)));
        assert_eq!(
            store.claim_next_due(at(5_000_000)).unwrap().unwrap().id,
            "p1"
        );
        let names: Vec<(String, u64, u64)> = store
            .queues()
            .unwrap()
            .into_iter()
            .map(|queue| (queue.name, queue.counts.running, queue.counts.success))
            .collect();
        assert_eq!(
            names,
            [
                ("capped".to_string(), 1, 1),
                ("open".to_string(), 1, 0),
                ("paused".to_string(), 1, 0),
                ("rated".to_string(), 2, 0)
            ]
        );
    }

    #[test]
    fn every_combination_of_list_filters_is_an_ordered_index_seek() {
        let store = temp_store();
        for shape in list::Shape::ALL {
            for walk in shape.walks() {
                let sql = shape.sql(*walk);
                let plan = plan(&store, sql);
                let expected = match walk {
                    list::Walk::Seq => "SEARCH jobs USING INTEGER PRIMARY KEY (rowid<?)",
                    list::Walk::Status => {
                        "SEARCH jobs USING INDEX jobs_by_status (status=? AND seq<?)"
                    }
                    list::Walk::Queue => {
                        "SEARCH jobs USING INDEX jobs_by_queue (queue=? AND seq<?)"
                    }
                    list::Walk::Function => {
                        "SEARCH jobs USING INDEX jobs_by_function (function=? AND seq<?)"
                    }
                    list::Walk::QueueUnsuccessful => {
                        "SEARCH jobs USING INDEX jobs_unsuccessful_by_queue (queue=? AND status=? AND seq<?)"
                    }
                    list::Walk::FunctionUnsuccessful => {
                        "SEARCH jobs USING INDEX jobs_unsuccessful_by_function (function=? AND status=? AND seq<?)"
                    }
                    // The queue's pending jobs, sorted: chosen only when they are few.
                    list::Walk::QueuePending => {
                        "SEARCH jobs USING INDEX jobs_pending_by_queue (queue=?)\nUSE TEMP B-TREE FOR ORDER BY"
                    }
                };
                assert_eq!(plan, expected, "{shape:?} {walk:?}: {sql}");
            }
        }
        assert_eq!(
            plan(&store, list::QUEUE_AND_STATUS_TOTALS),
            "SCAN CONSTANT ROW\nSCALAR SUBQUERY 1\nSEARCH queue_counts USING PRIMARY KEY (queue=?)\n\
             SCALAR SUBQUERY 2\nSCAN queue_counts\n\
             SCALAR SUBQUERY 3\nSEARCH queue_counts USING PRIMARY KEY (queue=? AND status=?)"
        );
    }

    /// `n` jobs of `queue` in `status`, straight into the table (and its counts), fast.
    fn insert_many(store: &SqliteStore, queue: &'static str, status: &'static str, n: i64) {
        store
            .writes
            .write(move |w| {
                w.execute(
                    "WITH RECURSIVE k (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < ?3)
                     INSERT INTO jobs (id, payload, status, priority, run_at, created_at,
                                       max_retries, timeout_seconds, queue)
                     SELECT ?1 || '-' || ?2 || '-' || i, '{}', ?2, 0, 0, 0, 0, 5, ?1 FROM k",
                    params![queue, status, n],
                )?;
                w.moved_many(queue, None, Some(status.parse()?), n);
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn a_queue_and_status_page_walks_the_smaller_of_the_two() {
        let store = temp_store();
        // A big queue with few failed jobs, and a small one.
        insert_many(&store, "big", "success", 20_000);
        insert_many(&store, "big", "failed", 3);
        insert_many(&store, "small", "success", 2);
        insert_many(&store, "small", "failed", 1);
        let filter = |queue: &str, status| JobFilter {
            queue: Some(queue.into()),
            status: Some(status),
            ..JobFilter::default()
        };
        let reads = |filter: &JobFilter| -> Vec<String> {
            let started = Instant::now();
            let page = store.list(filter, None, 50).unwrap();
            assert!(started.elapsed() < Duration::from_secs(1), "{filter:?}");
            page.jobs.into_iter().map(|job| job.id).collect()
        };
        let connection = store.read();
        let walk = |filter: &JobFilter| list::walk_for(&connection, filter, 51).unwrap();
        assert_eq!(
            walk(&filter("big", JobStatus::Failed)),
            list::Walk::QueueUnsuccessful
        );
        assert_eq!(
            walk(&filter("small", JobStatus::Success)),
            list::Walk::Queue
        );
        drop(connection);
        assert_eq!(
            reads(&filter("big", JobStatus::Failed)),
            ["big-failed-3", "big-failed-2", "big-failed-1"]
        );
        assert_eq!(
            reads(&filter("small", JobStatus::Success)),
            ["small-success-2", "small-success-1"]
        );
        assert_eq!(
            reads(&filter("small", JobStatus::Failed)),
            ["small-failed-1"]
        );
    }

    #[test]
    fn attempts_are_numbered_closed_and_deleted_with_their_job() {
        let store = temp_store();
        let first = insert_and_claim(&store, 10);
        let retry = AttemptEnd::Failed {
            error: "boom".into(),
            retry_at: Some(Timestamp::from_micros(20)),
        };
        store
            .finish_attempt(
                &first,
                &retry,
                &AttemptDetails::default(),
                Timestamp::from_micros(2_010),
            )
            .unwrap();
        let second = store
            .claim_next_due(Timestamp::from_micros(30))
            .unwrap()
            .unwrap();
        let attempts = store.attempts("a").unwrap().unwrap();
        let summary: Vec<(u32, &str, Option<i64>)> = attempts
            .iter()
            .map(|a| (a.attempt, a.status.as_str(), a.duration_ms))
            .collect();
        assert_eq!(summary, vec![(1, "failed", Some(2)), (2, "running", None)]);
        assert_eq!(attempts[0].error_message.as_deref(), Some("boom"));
        let done = AttemptEnd::Succeeded {
            result: json!({"ok": true}),
        };
        store
            .finish_attempt(
                &second,
                &done,
                &AttemptDetails::default(),
                Timestamp::from_micros(40),
            )
            .unwrap();
        let attempts = store.attempts("a").unwrap().unwrap();
        assert_eq!(attempts[1].result, Some(json!({"ok": true})));
        assert!(store.delete("a").unwrap().is_some());
        assert!(store.attempts("a").unwrap().is_none());
        let left: i64 = store
            .read()
            .query_row("SELECT count(*) FROM attempts", [], |row| row.get(0))
            .unwrap();
        assert_eq!(left, 0);
    }

    #[test]
    fn cancel_ends_a_pending_job_and_reports_a_running_one() {
        let store = temp_store();
        let now = Timestamp::from_micros(1);
        store
            .insert("waiting".into(), &new_job(0, Some(1_000)), now)
            .unwrap();
        store.insert("busy".into(), &new_job(9, None), now).unwrap();
        store
            .claim_next_due(Timestamp::from_micros(2))
            .unwrap()
            .unwrap();
        match store.cancel("waiting", Timestamp::from_micros(3)).unwrap() {
            Cancel::Cancelled(job) => assert_eq!(job.status, JobStatus::Cancelled),
            Cancel::Running(job) => panic!("a pending job is cancelled at once: {job:?}"),
        }
        assert!(store
            .claim_next_due(Timestamp::from_micros(5_000))
            .unwrap()
            .is_none());
        match store.cancel("busy", Timestamp::from_micros(4)).unwrap() {
            Cancel::Running(job) => assert_eq!(job.status, JobStatus::Running),
            Cancel::Cancelled(job) => panic!("a running job is left to its worker: {job:?}"),
        }
        assert!(matches!(
            store.cancel("waiting", Timestamp::from_micros(5)),
            Err(Error::InvalidState(_))
        ));
        assert!(matches!(store.cancel("nope", now), Err(Error::NotFound(_))));
    }

    #[test]
    fn a_database_from_the_first_schema_is_migrated_and_keeps_its_jobs() {
        let temp = temp_store();
        let path = temp.dir.path().join("old.db");
        let old = Connection::open(&path).unwrap();
        old.execute_batch(schema::MIGRATIONS[0]).unwrap();
        old.pragma_update(None, "user_version", 1).unwrap();
        old.execute(
            "INSERT INTO jobs (id, payload, status, priority, run_at, created_at, max_retries, timeout_seconds)
             VALUES ('kept', '{\"n\":1}', 'pending', 3, 7, 5, 1, 30)",
            [],
        )
        .unwrap();
        drop(old);
        let store = open(&path, 0).unwrap();
        let version: i64 = store
            .read()
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .unwrap();
        assert_eq!(version, schema::MIGRATIONS.len() as i64);
        let job = store.get("kept").unwrap().unwrap();
        assert_eq!((job.priority, job.payload), (3, json!({"n": 1})));
        assert_eq!(
            store.next_due_at().unwrap(),
            Some(Timestamp::from_micros(7))
        );
    }

    /// The pending count kept in memory, and the one SQL finds.
    fn pending_counts(store: &SqliteStore) -> (u64, u64) {
        let counted: u64 = store
            .read()
            .query_row(COUNT_PENDING, [], |row| row.get(0))
            .unwrap();
        (store.writes.pending(), counted)
    }

    #[test]
    fn the_pending_count_follows_every_change_of_status() {
        let store = temp_store();
        let at = Timestamp::from_micros;
        let no_details = AttemptDetails::default();
        for (id, run_at) in [("a", None), ("b", Some(1_000_000)), ("c", Some(2_000_000))] {
            store.insert(id.into(), &new_job(0, run_at), at(1)).unwrap();
        }
        assert_eq!(pending_counts(&store), (3, 3));
        let first = store.claim_next_due(at(2)).unwrap().unwrap();
        assert_eq!(pending_counts(&store), (2, 2));
        let retry = AttemptEnd::Failed {
            error: "boom".into(),
            retry_at: Some(at(3)),
        };
        store
            .finish_attempt(&first, &retry, &no_details, at(3))
            .unwrap();
        assert_eq!(pending_counts(&store), (3, 3));
        let second = store.claim_next_due(at(4)).unwrap().unwrap();
        let released = AttemptEnd::Released {
            reason: "shutdown".into(),
        };
        store
            .finish_attempt(&second, &released, &no_details, at(5))
            .unwrap();
        assert_eq!(pending_counts(&store), (3, 3));
        let third = store.claim_next_due(at(6)).unwrap().unwrap();
        let failed = AttemptEnd::Failed {
            error: "boom".into(),
            retry_at: None,
        };
        let done = store
            .finish_and_claim_next(&third, &failed, &no_details, at(7))
            .unwrap();
        assert!(done.recorded && done.next.is_none());
        assert_eq!(pending_counts(&store), (2, 2));
        store.retry("a", at(8)).unwrap();
        assert_eq!(pending_counts(&store), (3, 3));
        assert!(matches!(store.cancel("b", at(9)), Ok(Cancel::Cancelled(_))));
        assert_eq!(pending_counts(&store), (2, 2));
        assert!(store.delete("c").unwrap().is_some());
        assert!(store.delete("b").unwrap().is_some());
        assert_eq!(pending_counts(&store), (1, 1));
        // A refused write leaves the count alone.
        assert!(store.retry("a", at(10)).is_err());
        assert_eq!(pending_counts(&store), (1, 1));
        // The file lock is this process's too: the first store must close before the second.
        let TempStore { store, dir } = store;
        drop(store);
        let reopened = open(&dir.path().join("jobs.db"), 0).unwrap();
        assert_eq!(pending_counts(&reopened), (1, 1));
    }

    #[test]
    fn a_submit_beyond_the_pending_limit_stores_nothing() {
        let dir = test_dir::TestDir::new("store-limit");
        let store = open(&dir.path().join("jobs.db"), 2).unwrap();
        let now = Timestamp::from_micros(1);
        store.insert("a".into(), &new_job(0, None), now).unwrap();
        store.insert("b".into(), &new_job(0, None), now).unwrap();
        assert!(matches!(
            store.insert("c".into(), &new_job(0, None), now),
            Err(Error::QueueFull { limit: 2 })
        ));
        assert!(store.get("c").unwrap().is_none());
        // A claimed job is no longer pending, so there is room again.
        store.claim_next_due(now).unwrap().unwrap();
        store.insert("c".into(), &new_job(0, None), now).unwrap();
        assert_eq!(pending_counts(&store), (2, 2));
    }

    #[test]
    fn a_path_that_cannot_be_a_database_says_why() {
        let dir = test_dir::TestDir::new("store");
        let reason = |path: &Path| match open(path, 0) {
            Err(Error::DatabaseUnusable(message)) => message,
            Err(other) => panic!(
                "{}: expected DatabaseUnusable, got {other:?}",
                path.display()
            ),
            Ok(_) => panic!("{}: opened", path.display()),
        };
        let missing = dir.path().join("missing").join("jobs.db");
        assert_eq!(
            reason(&missing),
            format!(
                "cannot open the database file {}: the directory {} does not exist",
                missing.display(),
                dir.path().join("missing").display()
            )
        );
        assert!(
            reason(dir.path()).contains(": it is a directory; name a file in it"),
            "{}",
            reason(dir.path())
        );
        let text = dir.path().join("notes.txt");
        std::fs::write(
            &text,
            "not a database, just text that is long enough to have a header",
        )
        .unwrap();
        assert!(
            reason(&text).ends_with(": file is not a database"),
            "{}",
            reason(&text)
        );
    }

    #[test]
    fn a_second_store_on_the_same_file_is_refused_until_the_first_closes() {
        let TempStore { store, dir } = temp_store();
        let path = dir.path().join("jobs.db");
        match open(&path, 0) {
            Err(Error::Startup(message)) => assert!(
                message.contains("is in use by another mini-lambda-rust process"),
                "{message}"
            ),
            Err(other) => panic!("expected Startup, got {other:?}"),
            Ok(_) => panic!("two stores opened one file"),
        }
        drop(store);
        assert!(open(&path, 0).is_ok());
    }

    #[test]
    fn attempts_of_other_nodes_are_lost_and_a_cancel_is_left_for_the_running_node() {
        let store = temp_store();
        let now = Timestamp::from_micros(1);
        let lease = Duration::from_secs(30);
        for id in ["mine", "theirs"] {
            store.insert(id.into(), &new_job(0, None), now).unwrap();
        }
        let mine = store.claim_next_due(now).unwrap().unwrap();
        assert_eq!(
            (mine.node.as_deref(), mine.attempt),
            (Some("test-node"), Some(1))
        );
        // Another process claimed "theirs" before this one opened the file.
        store
            .writes
            .write(|w| {
                w.moved(
                    "default",
                    Some(JobStatus::Pending),
                    Some(JobStatus::Running),
                );
                Ok(w.execute(
                    "UPDATE jobs SET status = 'running', node = 'gone', attempt = 1 WHERE id = 'theirs'",
                    [],
                )?)
            })
            .unwrap();
        store.heartbeat(now).unwrap();
        let lost = store.lost_attempts(now, lease, false).unwrap();
        let ids: Vec<(&str, Option<&str>)> = lost
            .iter()
            .map(|job| (job.id.as_str(), job.node.as_deref()))
            .collect();
        assert_eq!(ids, [("theirs", Some("gone"))]);
        assert_eq!(store.lost_attempts(now, lease, true).unwrap().len(), 2);

        let here = |store: &SqliteStore| store.running_here().unwrap();
        assert_eq!(
            here(&store),
            [RunningHere {
                job_id: "mine".into(),
                attempt: 1,
                cancel_requested: false
            }]
        );
        assert!(matches!(
            store.cancel("mine", now).unwrap(),
            Cancel::Running(_)
        ));
        assert!(here(&store)[0].cancel_requested);
        // Recorded by the node that ran it, the attempt ends and no longer runs here.
        let cancelled = AttemptEnd::Cancelled {
            reason: "by request".into(),
        };
        assert!(store
            .finish_attempt(&mine, &cancelled, &AttemptDetails::default(), now)
            .unwrap());
        assert!(here(&store).is_empty());
        let attempts = store.attempts("mine").unwrap().unwrap();
        assert_eq!(
            (attempts[0].status, attempts[0].node.as_deref()),
            (AttemptStatus::Cancelled, Some("test-node"))
        );
        // The lost node is forgotten once nothing of it runs; this node stays until it leaves.
        let node_count = |store: &SqliteStore| -> i64 {
            store
                .read()
                .query_row("SELECT count(*) FROM nodes", [], |row| row.get(0))
                .unwrap()
        };
        store
            .writes
            .write(|w| {
                Ok(w.execute(
                    "INSERT INTO nodes (id, started_at, heartbeat_at) VALUES ('gone', 0, 0)",
                    [],
                )?)
            })
            .unwrap();
        store.forget_nodes(now, lease, false).unwrap();
        assert_eq!(node_count(&store), 2, "'gone' still runs 'theirs'");
        let theirs = &lost[0];
        let retry = AttemptEnd::Failed {
            error: "interrupted".into(),
            retry_at: Some(now),
        };
        assert!(store
            .finish_attempt(theirs, &retry, &AttemptDetails::default(), now)
            .unwrap());
        store.forget_nodes(now, lease, false).unwrap();
        assert_eq!(node_count(&store), 1);
        store.forget_nodes(now, lease, true).unwrap();
        assert_eq!(node_count(&store), 0);
    }

    #[test]
    fn a_database_from_a_newer_build_is_refused() {
        let temp = temp_store();
        let path = temp.dir.path().join("jobs.db");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        assert!(matches!(open(&path, 0), Err(Error::Startup(_))));
    }
}
