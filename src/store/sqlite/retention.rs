//! Retention on SQLite: deleting ended jobs (with their attempts and idempotency keys) and
//! expired idempotency keys, a batch per write. Each batch is one write of the group commit,
//! so it shares a transaction and a sync with the submits around it and holds the writer only
//! for its own few hundred rows; the caller pauses between batches.

use rusqlite::params;

use super::group_commit::{in_savepoint, GroupCommit};
use crate::error::Result;
use crate::time::Timestamp;

/// The oldest-ended jobs that ended before `?1`, at most `?2`. Pinned to the partial index
/// on `finished_at`, whose condition this repeats word for word.
pub(super) const ENDED_BEFORE: &str = "SELECT seq FROM jobs INDEXED BY jobs_ended_by_finish
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
/// Ended jobs are not pending, so the pending count stays as it is.
pub(super) fn prune_ended(writes: &GroupCommit, before: Timestamp, limit: usize) -> Result<usize> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    writes.write(move |writer| {
        in_savepoint(writer, |writer| {
            let seqs = writer
                .prepare_cached(ENDED_BEFORE)?
                .query_map(params![before.as_micros(), limit], |row| {
                    row.get::<_, i64>(0)
                })?
                .collect::<rusqlite::Result<Vec<i64>>>()?;
            for seq in &seqs {
                writer
                    .prepare_cached(DELETE_ATTEMPTS_OF_SEQ)?
                    .execute([seq])?;
                writer.prepare_cached(DELETE_KEYS_OF_SEQ)?.execute([seq])?;
                writer.prepare_cached(DELETE_JOB_BY_SEQ)?.execute([seq])?;
            }
            Ok(seqs.len())
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
