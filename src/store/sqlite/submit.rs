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
use crate::job::JobStatus;
use crate::store::{Answer, Inserted, NewKey, NewRow, StoredKey};
use crate::time::Timestamp;

pub(super) const INSERT_JOB: &str = "INSERT INTO jobs
        (id, payload, status, priority, run_at, created_at, max_retries, timeout_seconds, function,
         queue, traceparent)
     VALUES (?1, ?2, 'pending', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";
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
    traceparent: Option<String>,
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
                    traceparent: job.traceparent.clone(),
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
                row.queue,
                row.traceparent
            ])?;
            first_seq.get_or_insert(seq);
        }
    }
    for row in rows {
        writer.moved(&row.queue, None, Some(JobStatus::Pending));
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::NewJob;
    use crate::store::{test_dir::TestDir, Backend, Options};

    fn store(dir: &TestDir, limit: u64) -> SqliteStore {
        SqliteStore::open(&dir.path().join("jobs.db"), &Options::for_test("n", limit)).unwrap()
    }

    fn rows(ids: &[&str]) -> Vec<NewRow> {
        ids.iter()
            .map(|id| (id.to_string(), NewJob::for_test(0, Some(1_000))))
            .collect()
    }

    fn key(name: &str, body: &str) -> NewKey {
        NewKey {
            key: name.into(),
            request_hash: format!("hash of {body}"),
            answer: Answer {
                status: 201,
                body: body.into(),
            },
            expired_before: Timestamp::from_micros(5),
        }
    }

    #[test]
    fn a_key_is_stored_with_its_jobs_and_found_by_the_next_write() {
        let dir = TestDir::new("submit-key");
        let store = store(&dir, 0);
        let now = Timestamp::from_micros(10);
        let first = key("k", "first");
        assert_eq!(
            store
                .insert_jobs(&rows(&["a", "b"]), Some(&first), now)
                .unwrap(),
            Inserted::Stored
        );
        let found = store
            .insert_jobs(&rows(&["c"]), Some(&key("k", "second")), now)
            .unwrap();
        let stored = StoredKey {
            request_hash: first.request_hash.clone(),
            answer: first.answer.clone(),
        };
        assert_eq!(found, Inserted::KeyTaken(stored.clone()));
        assert!(store.get("c").unwrap().is_none());
        assert_eq!(store.idempotency_key("k", now).unwrap(), Some(stored));
        // The key points at the batch's first job.
        let seq_of_a = store.get("a").unwrap().unwrap().seq;
        let job_seq: i64 = store
            .read()
            .query_row(
                "SELECT job_seq FROM idempotency_keys WHERE key = 'k'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(job_seq, seq_of_a);
        // Once it is older than `expired_before`, the key is absent and replaced.
        assert_eq!(
            store
                .idempotency_key("k", Timestamp::from_micros(11))
                .unwrap(),
            None
        );
        let later = NewKey {
            expired_before: Timestamp::from_micros(11),
            ..key("k", "third")
        };
        assert_eq!(
            store
                .insert_jobs(&rows(&["d"]), Some(&later), Timestamp::from_micros(20))
                .unwrap(),
            Inserted::Stored
        );
        assert_eq!(
            store
                .idempotency_key("k", Timestamp::from_micros(20))
                .unwrap()
                .unwrap()
                .answer
                .body,
            "third"
        );
    }

    #[test]
    fn a_batch_past_the_pending_limit_stores_nothing_not_even_its_key() {
        let dir = TestDir::new("submit-limit");
        let store = store(&dir, 3);
        let now = Timestamp::from_micros(10);
        store.insert_jobs(&rows(&["a", "b"]), None, now).unwrap();
        assert!(matches!(
            store.insert_jobs(&rows(&["c", "d"]), Some(&key("k", "x")), now),
            Err(Error::QueueFull { limit: 3 })
        ));
        assert!(store.get("c").unwrap().is_none());
        assert_eq!(store.idempotency_key("k", now).unwrap(), None);
        assert_eq!(store.writes.pending(), 2);
        store
            .insert_jobs(&rows(&["c"]), Some(&key("k", "x")), now)
            .unwrap();
        assert_eq!(store.writes.pending(), 3);
    }

    #[test]
    fn the_key_is_found_by_its_primary_key() {
        let dir = TestDir::new("submit-plan");
        let store = store(&dir, 0);
        let connection = store.read();
        let plan: Vec<String> = connection
            .prepare(&format!("EXPLAIN QUERY PLAN {FRESH_KEY}"))
            .unwrap()
            .query_map(params!["k", 0], |row| row.get::<_, String>(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(plan, ["SEARCH idempotency_keys USING PRIMARY KEY (key=?)"]);
    }
}
