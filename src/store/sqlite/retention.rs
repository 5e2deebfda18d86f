//! Retention on SQLite: deleting ended jobs (with their attempts and idempotency keys) and
//! expired idempotency keys, a batch per write. Each batch is one write of the group commit,
//! so it shares a transaction and a sync with the submits around it and holds the writer only
//! for its own few hundred rows; the caller pauses between batches.

use rusqlite::params;

use super::group_commit::{in_savepoint, GroupCommit};
use crate::error::Result;
use crate::job::JobStatus;
use crate::time::Timestamp;

/// The oldest-ended jobs that ended before `?1`, at most `?2`. Pinned to the partial index
/// on `finished_at`, whose condition this repeats word for word.
pub(super) const ENDED_BEFORE: &str =
    "SELECT seq, queue, status FROM jobs INDEXED BY jobs_ended_by_finish
     WHERE status IN ('success', 'failed', 'timeout', 'cancelled') AND finished_at < ?1
     ORDER BY finished_at LIMIT ?2";
pub(super) const DELETE_ATTEMPTS_OF_SEQ: &str = "DELETE FROM attempts WHERE job_seq = ?1";
pub(super) const DELETE_KEYS_OF_SEQ: &str = "DELETE FROM idempotency_keys WHERE job_seq = ?1";
pub(super) const DELETE_JOB_BY_SEQ: &str = "DELETE FROM jobs WHERE seq = ?1";
/// The oldest keys made before `?1`, at most `?2`.
pub(super) const DELETE_KEYS_BEFORE: &str = "DELETE FROM idempotency_keys WHERE key IN
        (SELECT key FROM idempotency_keys INDEXED BY idempotency_keys_by_age
         WHERE created_at < ?1 ORDER BY created_at LIMIT ?2)";

/// Deletes up to `limit` jobs that ended before `before`, in one write; returns how many.
/// Each is counted out of its queue's counts.
pub(super) fn prune_ended(writes: &GroupCommit, before: Timestamp, limit: usize) -> Result<usize> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    writes.write(move |writer| {
        in_savepoint(writer, |writer| {
            let ended = writer
                .prepare_cached(ENDED_BEFORE)?
                .query_map(params![before.as_micros(), limit], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            for (seq, queue, status) in &ended {
                writer
                    .prepare_cached(DELETE_ATTEMPTS_OF_SEQ)?
                    .execute([seq])?;
                writer.prepare_cached(DELETE_KEYS_OF_SEQ)?.execute([seq])?;
                writer.prepare_cached(DELETE_JOB_BY_SEQ)?.execute([seq])?;
                writer.moved(queue, Some(status.parse::<JobStatus>()?), None);
            }
            Ok(ended.len())
        })
    })
}

/// Deletes up to `limit` idempotency keys made before `before`; returns how many.
pub(super) fn prune_idempotency_keys(
    writes: &GroupCommit,
    before: Timestamp,
    limit: usize,
) -> Result<usize> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    writes.write(move |writer| {
        Ok(writer
            .prepare_cached(DELETE_KEYS_BEFORE)?
            .execute(params![before.as_micros(), limit])?)
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::SqliteStore;
    use super::*;
    use crate::job::{AttemptDetails, AttemptEnd, NewJob};
    use crate::store::test_dir::TestDir;
    use crate::store::{Backend, Options};

    fn at(micros: i64) -> Timestamp {
        Timestamp::from_micros(micros)
    }

    /// Job `id` submitted at 1 µs and run to success at `ended` µs.
    fn ended_at(store: &SqliteStore, id: &str, ended: i64) {
        store
            .insert(id.into(), &NewJob::for_test(0, None), at(1))
            .unwrap();
        let job = store.claim_next_due(at(ended)).unwrap().unwrap();
        let done = AttemptEnd::Succeeded { result: json!(1) };
        assert!(store
            .finish_attempt(&job, &done, &AttemptDetails::default(), at(ended))
            .unwrap());
    }

    fn count(store: &SqliteStore, sql: &str) -> i64 {
        store.read().query_row(sql, [], |row| row.get(0)).unwrap()
    }

    #[test]
    fn ended_jobs_go_oldest_first_in_batches_with_their_attempts_and_keys() {
        let dir = TestDir::new("prune");
        let options = Options::for_test("test-node", 0);
        let store = SqliteStore::open(&dir.path().join("jobs.db"), &options).unwrap();
        for (id, ended) in [("a", 10), ("b", 20), ("c", 30), ("late", 100)] {
            ended_at(&store, id, ended);
        }
        store
            .insert("waiting".into(), &NewJob::for_test(0, Some(1_000)), at(1))
            .unwrap();
        store
            .writes
            .write(|writer| {
                writer.execute_batch(
                    "INSERT INTO idempotency_keys VALUES
                    ('of-a', 'h', 201, '{}', (SELECT seq FROM jobs WHERE id = 'a'), 1000),
                    ('of-late', 'h', 201, '{}', (SELECT seq FROM jobs WHERE id = 'late'), 1000),
                    ('old', 'h', 201, '{}', NULL, 5)",
                )?;
                Ok(())
            })
            .unwrap();

        assert_eq!(store.prune_ended(at(50), 2).unwrap(), 2);
        assert!(store.get("a").unwrap().is_none() && store.get("b").unwrap().is_none());
        assert_eq!(store.prune_ended(at(50), 2).unwrap(), 1);
        assert_eq!(store.prune_ended(at(50), 2).unwrap(), 0);
        for kept in ["late", "waiting"] {
            assert!(store.get(kept).unwrap().is_some(), "{kept}");
        }
        assert_eq!(count(&store, "SELECT count(*) FROM attempts"), 1);
        assert_eq!(
            count(
                &store,
                "SELECT count(*) FROM idempotency_keys WHERE key = 'of-a'"
            ),
            0
        );
        assert_eq!(store.prune_idempotency_keys(at(100), 10).unwrap(), 1);
        assert_eq!(count(&store, "SELECT count(*) FROM idempotency_keys"), 1);
        assert_eq!(
            count(
                &store,
                "SELECT sum(n) FROM queue_counts WHERE status = 'success'"
            ),
            1
        );
    }

    #[test]
    fn pruning_seeks_the_indexes() {
        let dir = TestDir::new("prune-plan");
        let options = Options::for_test("test-node", 0);
        let store = SqliteStore::open(&dir.path().join("jobs.db"), &options).unwrap();
        let plan = |sql: &str| -> String {
            let connection = store.read();
            let mut statement = connection
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap();
            let nulls = vec![rusqlite::types::Null; statement.parameter_count()];
            let details = statement
                .query_map(rusqlite::params_from_iter(nulls), |row| {
                    row.get::<_, String>(3)
                })
                .unwrap()
                .collect::<rusqlite::Result<Vec<_>>>()
                .unwrap();
            details.join("\n")
        };
        for (sql, index) in [
            (ENDED_BEFORE, "jobs_ended_by_finish"),
            (DELETE_ATTEMPTS_OF_SEQ, "PRIMARY KEY"),
            (DELETE_KEYS_OF_SEQ, "idempotency_keys_by_job"),
            (DELETE_JOB_BY_SEQ, "INTEGER PRIMARY KEY"),
            (DELETE_KEYS_BEFORE, "idempotency_keys_by_age"),
        ] {
            let shown = plan(sql);
            assert!(shown.contains(index), "{sql}\n{shown}");
            assert!(
                !shown.contains("SCAN") && !shown.contains("TEMP B-TREE"),
                "{sql}\n{shown}"
            );
        }
    }
}
