//! The SQLite store: the queue of record. Owns every SQL statement, the schema and its
//! migrations. Knows the job model and SQLite; never HTTP.
//!
//! One connection behind a mutex serves every thread. The mutex protects the connection and
//! keeps each statement or transaction atomic with respect to the others; it is held only for
//! the statement, never across a wait.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::job::{AttemptEnd, Job, JobStatus, NewJob};
use crate::time::Timestamp;

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Schema migrations, applied in order. `PRAGMA user_version` records how many have run, so a
/// database made by an older build is brought up to date at start. Append; never edit.
const MIGRATIONS: &[&str] = &[
    // 1: jobs. `seq` orders jobs by submission and is the pagination key; `id` is the public UUID.
    // Times are microseconds since the Unix epoch (UTC).
    "CREATE TABLE jobs (
        seq             INTEGER PRIMARY KEY,
        id              TEXT NOT NULL UNIQUE,
        payload         TEXT NOT NULL,
        status          TEXT NOT NULL,
        priority        INTEGER NOT NULL,
        run_at          INTEGER NOT NULL,
        created_at      INTEGER NOT NULL,
        started_at      INTEGER,
        finished_at     INTEGER,
        retry_count     INTEGER NOT NULL DEFAULT 0,
        max_retries     INTEGER NOT NULL,
        timeout_seconds INTEGER NOT NULL,
        result          TEXT,
        error_message   TEXT
     );
     -- GET /jobs?status=X, newest first; also finds running jobs at recovery.
     CREATE INDEX jobs_by_status ON jobs(status, seq);
     -- Claiming: the highest priority due job, oldest first. Partial, so finished jobs cost nothing.
     CREATE INDEX jobs_pending_by_priority ON jobs(priority DESC, run_at, seq) WHERE status = 'pending';
     -- When the next scheduled job becomes due.
     CREATE INDEX jobs_pending_by_run_at ON jobs(run_at) WHERE status = 'pending';",
];

/// The columns `RawJob::from_row` reads, in its order. A macro so `concat!` can build
/// `&'static str` statements that the query-plan test checks verbatim.
macro_rules! job_columns {
    () => {
        "id, payload, status, created_at, started_at, finished_at, retry_count, \
         max_retries, timeout_seconds, result, error_message, priority, run_at"
    };
}

const SELECT_BY_ID: &str = concat!("SELECT ", job_columns!(), " FROM jobs WHERE id = ?1");
const LIST_ALL: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM jobs WHERE seq < ?1 ORDER BY seq DESC LIMIT ?2"
);
const LIST_BY_STATUS: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM jobs WHERE status = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3"
);
/// `INDEXED BY` pins the partial indexes: without statistics the planner would pick the
/// status index and walk every pending job.
const CLAIM_NEXT_DUE: &str = concat!(
    "UPDATE jobs SET status = 'running', started_at = ?1, finished_at = NULL,
            result = NULL, error_message = NULL
     WHERE seq = (SELECT seq FROM jobs INDEXED BY jobs_pending_by_priority
                  WHERE status = 'pending' AND run_at <= ?1
                  ORDER BY priority DESC, run_at, seq LIMIT 1)
     RETURNING ",
    job_columns!()
);
const NEXT_DUE_AT: &str =
    "SELECT min(run_at) FROM jobs INDEXED BY jobs_pending_by_run_at WHERE status = 'pending'";
const RUNNING_JOBS: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM jobs WHERE status = 'running' ORDER BY seq"
);
const RESTART_JOB: &str = concat!(
    "UPDATE jobs SET status = 'pending', retry_count = 0, run_at = ?2, started_at = NULL,
            finished_at = NULL, result = NULL, error_message = NULL
     WHERE id = ?1 RETURNING ",
    job_columns!()
);
const SEQ_OF_ID: &str = "SELECT seq FROM jobs WHERE id = ?1";

pub struct Store {
    /// The one connection; see the module comment for what the lock covers.
    connection: Mutex<Connection>,
}

/// One page of `GET /jobs`.
pub struct Page {
    pub jobs: Vec<Job>,
    pub has_more: bool,
}

impl Store {
    /// Opens (creating if needed) the database file and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store> {
        let connection = Connection::open(path).map_err(|err| {
            Error::Startup(format!("cannot open database {}: {err}", path.display()))
        })?;
        Store::from_connection(connection)
    }

    fn from_connection(mut connection: Connection) -> Result<Store> {
        connection.busy_timeout(BUSY_TIMEOUT)?;
        // WAL lets readers run beside the writer; FULL syncs the WAL on every commit, so an
        // acknowledged job survives power loss, not just a process crash.
        let mode: String =
            connection.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") && !mode.eq_ignore_ascii_case("memory") {
            return Err(Error::Startup(format!(
                "the database refused WAL mode (journal_mode is {mode})"
            )));
        }
        connection.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")?;
        migrate(&mut connection)?;
        Ok(Store {
            connection: Mutex::new(connection),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the connection usable: an unfinished
        // transaction rolls back when it is dropped. So a poisoned lock is taken over.
        self.connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Checks that the database answers a real read.
    pub fn ping(&self) -> Result<()> {
        let connection = self.lock();
        connection.query_row("SELECT count(*) FROM sqlite_master", [], |row| {
            row.get::<_, i64>(0)
        })?;
        Ok(())
    }

    /// Stores a new pending job. Returns after the commit, i.e. once the job is durable.
    pub fn insert(&self, id: &str, job: &NewJob, now: Timestamp) -> Result<()> {
        let payload = serde_json::to_string(&job.payload)
            .map_err(|err| Error::Internal(format!("cannot encode payload: {err}")))?;
        let run_at = job.run_at.unwrap_or(now);
        let mut connection = self.lock();
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        transaction
            .prepare_cached(
                "INSERT INTO jobs (id, payload, status, priority, run_at, created_at, max_retries, timeout_seconds)
                 VALUES (?1, ?2, 'pending', ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                id,
                payload,
                job.priority,
                run_at.as_micros(),
                now.as_micros(),
                job.max_retries,
                job.timeout_seconds
            ])?;
        transaction.commit()?;
        Ok(())
    }

    pub fn get(&self, id: &str) -> Result<Option<Job>> {
        let connection = self.lock();
        let raw = connection
            .prepare_cached(SELECT_BY_ID)?
            .query_row([id], RawJob::from_row)
            .optional()?;
        drop(connection);
        raw.map(RawJob::into_job).transpose()
    }

    /// Jobs newest first, optionally of one status and older than the job `before`.
    pub fn list(
        &self,
        status: Option<JobStatus>,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Page> {
        let connection = self.lock();
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
        let raws = match status {
            Some(status) => connection
                .prepare_cached(LIST_BY_STATUS)?
                .query_map(
                    params![status.as_str(), before_seq, fetch],
                    RawJob::from_row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?,
            None => connection
                .prepare_cached(LIST_ALL)?
                .query_map(params![before_seq, fetch], RawJob::from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?,
        };
        drop(connection);
        let has_more = raws.len() > limit;
        let jobs = raws
            .into_iter()
            .take(limit)
            .map(RawJob::into_job)
            .collect::<Result<Vec<_>>>()?;
        Ok(Page { jobs, has_more })
    }

    /// Marks the highest-priority due job `running` and returns it; `None` when nothing is due.
    /// Select and update are one statement, so two workers never claim the same job.
    pub fn claim_next_due(&self, now: Timestamp) -> Result<Option<Job>> {
        let mut connection = self.lock();
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let raw = transaction
            .prepare_cached(CLAIM_NEXT_DUE)?
            .query_row([now.as_micros()], RawJob::from_row)
            .optional()?;
        transaction.commit()?;
        drop(connection);
        raw.map(RawJob::into_job).transpose()
    }

    /// When the earliest pending job becomes due (possibly in the past); `None` if none waits.
    pub fn next_due_at(&self) -> Result<Option<Timestamp>> {
        let connection = self.lock();
        let micros: Option<i64> = connection
            .prepare_cached(NEXT_DUE_AT)?
            .query_row([], |row| row.get(0))?;
        Ok(micros.map(Timestamp::from_micros))
    }

    /// Records how a running attempt ended. Returns `false` when the job is no longer running
    /// (deleted meanwhile), in which case nothing is written.
    pub fn finish_attempt(&self, id: &str, end: &AttemptEnd, now: Timestamp) -> Result<bool> {
        let mut connection = self.lock();
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = now.as_micros();
        let changed = match end {
            AttemptEnd::Succeeded { result } => {
                let result = serde_json::to_string(result)
                    .map_err(|err| Error::Internal(format!("cannot encode result: {err}")))?;
                transaction
                    .prepare_cached(
                        "UPDATE jobs SET status = 'success', finished_at = ?2, result = ?3, error_message = NULL
                         WHERE id = ?1 AND status = 'running'",
                    )?
                    .execute(params![id, now, result])?
            }
            AttemptEnd::Failed {
                error,
                retry_at: Some(retry_at),
            } => transaction
                .prepare_cached(
                    "UPDATE jobs SET status = 'pending', finished_at = ?2, error_message = ?3,
                            retry_count = retry_count + 1, run_at = ?4
                     WHERE id = ?1 AND status = 'running'",
                )?
                .execute(params![id, now, error, retry_at.as_micros()])?,
            AttemptEnd::Failed {
                error,
                retry_at: None,
            } => finish_with_status(&transaction, id, "failed", now, error)?,
            AttemptEnd::TimedOut { error } => {
                finish_with_status(&transaction, id, "timeout", now, error)?
            }
            AttemptEnd::Released { reason } => {
                finish_with_status(&transaction, id, "pending", now, reason)?
            }
        };
        transaction.commit()?;
        Ok(changed > 0)
    }

    /// Manual retry: a `failed` or `timeout` job starts over with its full retry budget.
    pub fn retry(&self, id: &str, now: Timestamp) -> Result<Job> {
        let mut connection = self.lock();
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let status: Option<String> = transaction
            .prepare_cached("SELECT status FROM jobs WHERE id = ?1")?
            .query_row([id], |row| row.get(0))
            .optional()?;
        let status: JobStatus = status.ok_or_else(|| not_found(id))?.parse()?;
        if !status.is_retryable() {
            return Err(Error::InvalidState(format!(
                "job {id} is {status}; only failed or timeout jobs can be retried"
            )));
        }
        let raw = transaction
            .prepare_cached(RESTART_JOB)?
            .query_row(params![id, now.as_micros()], RawJob::from_row)?;
        transaction.commit()?;
        drop(connection);
        raw.into_job()
    }

    /// Deletes a job and everything stored about it. Returns `false` if there was no such job.
    pub fn delete(&self, id: &str) -> Result<bool> {
        let mut connection = self.lock();
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let deleted = transaction
            .prepare_cached("DELETE FROM jobs WHERE id = ?1")?
            .execute([id])?;
        transaction.commit()?;
        Ok(deleted > 0)
    }

    /// Jobs marked `running`: at start these are attempts a crash interrupted.
    pub fn running_jobs(&self) -> Result<Vec<Job>> {
        let connection = self.lock();
        let raws = connection
            .prepare_cached(RUNNING_JOBS)?
            .query_map([], RawJob::from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        drop(connection);
        raws.into_iter().map(RawJob::into_job).collect()
    }
}

fn finish_with_status(
    transaction: &rusqlite::Transaction<'_>,
    id: &str,
    status: &str,
    now: i64,
    error: &str,
) -> Result<usize> {
    Ok(transaction
        .prepare_cached(
            "UPDATE jobs SET status = ?2, finished_at = ?3, error_message = ?4
             WHERE id = ?1 AND status = 'running'",
        )?
        .execute(params![id, status, now, error])?)
}

fn not_found(id: &str) -> Error {
    Error::NotFound(format!("no job with id {id}"))
}

fn migrate(connection: &mut Connection) -> Result<()> {
    let applied: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    if applied > known {
        return Err(Error::Startup(format!(
            "the database schema is version {applied}, newer than this build knows ({known}); \
             use a newer mini-lambda-rust"
        )));
    }
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for (index, migration) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(applied.unsigned_abs() as usize)
    {
        transaction.execute_batch(migration)?;
        transaction.pragma_update(None, "user_version", index + 1)?;
        log::info!("applied database migration {}", index + 1);
    }
    transaction.commit()?;
    Ok(())
}

/// A row as SQLite returns it, before the text columns are parsed.
struct RawJob {
    id: String,
    payload: String,
    status: String,
    created_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    retry_count: u32,
    max_retries: u32,
    timeout_seconds: u32,
    result: Option<String>,
    error_message: Option<String>,
    priority: u8,
    run_at: i64,
}

impl RawJob {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<RawJob> {
        Ok(RawJob {
            id: row.get(0)?,
            payload: row.get(1)?,
            status: row.get(2)?,
            created_at: row.get(3)?,
            started_at: row.get(4)?,
            finished_at: row.get(5)?,
            retry_count: row.get(6)?,
            max_retries: row.get(7)?,
            timeout_seconds: row.get(8)?,
            result: row.get(9)?,
            error_message: row.get(10)?,
            priority: row.get(11)?,
            run_at: row.get(12)?,
        })
    }

    fn into_job(self) -> Result<Job> {
        let parse_json = |text: &str, column: &str| -> Result<Value> {
            serde_json::from_str(text).map_err(|err| {
                Error::CorruptRow(format!(
                    "job {}: {column} is not valid JSON: {err}",
                    self.id
                ))
            })
        };
        Ok(Job {
            payload: parse_json(&self.payload, "payload")?,
            result: self
                .result
                .as_deref()
                .map(|text| parse_json(text, "result"))
                .transpose()?,
            status: self.status.parse()?,
            created_at: Timestamp::from_micros(self.created_at),
            started_at: self.started_at.map(Timestamp::from_micros),
            finished_at: self.finished_at.map(Timestamp::from_micros),
            retry_count: self.retry_count,
            max_retries: self.max_retries,
            timeout_seconds: self.timeout_seconds,
            error_message: self.error_message,
            priority: self.priority,
            run_at: Timestamp::from_micros(self.run_at),
            id: self.id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn memory_store() -> Store {
        Store::from_connection(Connection::open_in_memory().unwrap()).unwrap()
    }

    fn new_job(priority: u8, run_at: Option<i64>) -> NewJob {
        NewJob {
            payload: json!({"n": priority}),
            timeout_seconds: 5,
            max_retries: 1,
            priority,
            run_at: run_at.map(Timestamp::from_micros),
        }
    }

    fn plan(store: &Store, sql: &str) -> String {
        let connection = store.lock();
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
        let store = memory_store();
        let now = Timestamp::from_micros(1_000);
        store.insert("low", &new_job(0, None), now).unwrap();
        store.insert("high-1", &new_job(5, None), now).unwrap();
        store.insert("high-2", &new_job(5, None), now).unwrap();
        store
            .insert("future", &new_job(9, Some(5_000)), now)
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
        let store = memory_store();
        let now = Timestamp::from_micros(1);
        store.insert("a", &new_job(0, None), now).unwrap();
        store.claim_next_due(now).unwrap().unwrap();
        assert!(store.delete("a").unwrap());
        let end = AttemptEnd::Succeeded { result: json!(1) };
        assert!(!store.finish_attempt("a", &end, now).unwrap());
        assert!(store.get("a").unwrap().is_none());
    }

    #[test]
    fn pages_walk_newest_first_with_a_cursor() {
        let store = memory_store();
        for n in 0..5 {
            store
                .insert(
                    &format!("job-{n}"),
                    &new_job(0, None),
                    Timestamp::from_micros(n),
                )
                .unwrap();
        }
        let first = store.list(None, None, 2).unwrap();
        let ids: Vec<&str> = first.jobs.iter().map(|job| job.id.as_str()).collect();
        assert_eq!((ids, first.has_more), (vec!["job-4", "job-3"], true));
        let last = store.list(None, Some("job-1"), 2).unwrap();
        let ids: Vec<&str> = last.jobs.iter().map(|job| job.id.as_str()).collect();
        assert_eq!((ids, last.has_more), (vec!["job-0"], false));
        assert!(matches!(
            store.list(None, Some("nope"), 2),
            Err(Error::Validation(_))
        ));
    }

    #[test]
    fn every_api_query_uses_an_index() {
        let store = memory_store();
        let cases = [
            (LIST_ALL, "INTEGER PRIMARY KEY"),
            (LIST_BY_STATUS, "jobs_by_status"),
            (SELECT_BY_ID, "sqlite_autoindex_jobs_1"),
            (SEQ_OF_ID, "sqlite_autoindex_jobs_1"),
            (CLAIM_NEXT_DUE, "jobs_pending_by_priority"),
            (NEXT_DUE_AT, "jobs_pending_by_run_at"),
            (RUNNING_JOBS, "jobs_by_status"),
        ];
        for (sql, index) in cases {
            let plan = plan(&store, sql);
            assert!(plan.contains(index), "{sql}\n{plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{sql} sorts:\n{plan}");
        }
    }

    #[test]
    fn a_database_from_a_newer_build_is_refused() {
        let connection = Connection::open_in_memory().unwrap();
        connection.pragma_update(None, "user_version", 99).unwrap();
        assert!(matches!(
            Store::from_connection(connection),
            Err(Error::Startup(_))
        ));
    }
}
