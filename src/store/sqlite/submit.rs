//! Submits on SQLite: new jobs, one or a batch, and the idempotency key that comes with them.
//!
//! Every submit is one write of the group commit, so the single writer orders submits with
//! the same key: the second finds the first's key (committed, or written earlier in the same
//! batch) and writes nothing. A write answers only after its batch is durable, so a request
//! that finds a key is never answered before the request that stored it could have been.
//! The pending limit is checked inside the write, for the batch as a whole, so it is exact.

use rusqlite::{params, OptionalExtension};

use super::group_commit::{in_savepoint, Writer};
use super::SqliteStore;
use crate::error::{Error, Result};
use crate::store::{Answer, Inserted, NewKey, NewRow, StoredKey};
use crate::time::Timestamp;

pub(super) const INSERT_JOB: &str = "INSERT INTO jobs
        (id, payload, status, priority, run_at, created_at, max_retries, timeout_seconds, function,
         queue)
     VALUES (?1, ?2, 'pending', ?3, ?4, ?5, ?6, ?7, ?8, ?9)";
/// The key if it was stored at or after `?2`; an older one counts as absent.
pub(super) const FRESH_KEY: &str =
    "SELECT request_hash, response_status, response_body FROM idempotency_keys
     WHERE key = ?1 AND created_at >= ?2";
/// Replaces an expired key of the same name that was not pruned yet.
pub(super) const STORE_KEY: &str = "INSERT OR REPLACE INTO idempotency_keys
        (key, request_hash, response_status, response_body, job_seq, created_at)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

/// A job's columns, encoded before the write so the writer only binds them.
struct Row {
    id: String,
    payload: String,
    priority: u8,
    run_at: i64,
    max_retries: u32,
    timeout_seconds: u32,
    function: Option<String>,
    queue: String,
}

/// The key's columns but the first job's `seq`, known only once it is inserted.
struct Key {
    key: String,
    request_hash: String,
    status: u16,
    body: String,
    expired_before: i64,
}

impl SqliteStore {
    /// One write: the key looked up, the pending limit checked, the jobs inserted through one
    /// prepared statement, the key stored. A write of several statements runs in a savepoint,
    /// so that an error leaves nothing of it (and the rest of its batch commits).
    pub(super) fn insert_rows(
        &self,
        jobs: &[NewRow],
        key: Option<&NewKey>,
        now: Timestamp,
    ) -> Result<Inserted> {
        let rows = jobs
            .iter()
            .map(|(id, job)| {
                Ok(Row {
                    id: id.clone(),
                    payload: serde_json::to_string(&job.payload)
                        .map_err(|err| Error::Internal(format!("cannot encode payload: {err}")))?,
                    priority: job.priority,
                    run_at: job.run_at.unwrap_or(now).as_micros(),
                    max_retries: job.max_retries,
                    timeout_seconds: job.timeout_seconds,
                    function: job.function.clone(),
                    queue: job.queue.clone(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let key = key.map(|key| Key {
            key: key.key.clone(),
            request_hash: key.request_hash.clone(),
            status: key.answer.status,
            body: key.answer.body.clone(),
            expired_before: key.expired_before.as_micros(),
        });
        let limit = self.max_pending_jobs;
        let created_at = now.as_micros();
        self.writes.write(move |writer| {
            // One job without a key is one statement, which SQLite undoes by itself on error.
            if rows.len() == 1 && key.is_none() {
                return insert_in(writer, &rows, None, limit, created_at);
            }
            in_savepoint(writer, |writer| {
                insert_in(writer, &rows, key.as_ref(), limit, created_at)
            })
        })
    }

    pub(super) fn fresh_key(&self, key: &str, fresh_since: Timestamp) -> Result<Option<StoredKey>> {
        find_key(&self.read(), key, fresh_since.as_micros())
    }
}

fn insert_in(
    writer: &mut Writer<'_>,
    rows: &[Row],
    key: Option<&Key>,
    limit: u64,
    created_at: i64,
) -> Result<Inserted> {
    if let Some(key) = key {
        if let Some(found) = find_key(writer, &key.key, key.expired_before)? {
            return Ok(Inserted::KeyTaken(found));
        }
    }
    let count = u64::try_from(rows.len()).unwrap_or(u64::MAX);
    if limit > 0 && writer.pending_jobs().saturating_add(count) > limit {
        return Err(Error::QueueFull { limit });
    }
    let mut first_seq = None;
    {
        let mut insert = writer.prepare_cached(INSERT_JOB)?;
        for row in rows {
            let seq = insert.insert(params![
                row.id,
                row.payload,
                row.priority,
                row.run_at,
                created_at,
                row.max_retries,
                row.timeout_seconds,
                row.function,
                row.queue
            ])?;
            first_seq.get_or_insert(seq);
        }
    }
    writer.pending_changed(i64::try_from(count).unwrap_or(i64::MAX));
    if let Some(key) = key {
        writer.prepare_cached(STORE_KEY)?.execute(params![
            key.key,
            key.request_hash,
            key.status,
            key.body,
            first_seq,
            created_at
        ])?;
    }
    Ok(Inserted::Stored)
}

fn find_key(
    connection: &rusqlite::Connection,
    key: &str,
    fresh_since: i64,
) -> Result<Option<StoredKey>> {
    let found = connection
        .prepare_cached(FRESH_KEY)?
        .query_row(params![key, fresh_since], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, String>(2)?,
            ))
        })
        .optional()?;
    found
        .map(|(request_hash, status, body)| {
            let status = u16::try_from(status).map_err(|_| {
                Error::CorruptRow(format!("idempotency key {key:?} has status {status}"))
            })?;
            Ok(StoredKey {
                request_hash,
                answer: Answer { status, body },
            })
        })
        .transpose()
}
