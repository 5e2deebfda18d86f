//! Retention on PostgreSQL: deleting ended jobs (with their attempts and idempotency keys) and
//! expired idempotency keys, one statement per batch. The rows of a batch are locked with
//! `FOR UPDATE SKIP LOCKED`, so nodes pruning at once take different rows and never wait on
//! each other, and a job a retry holds is left for the next batch. The triggers keep
//! `queue_counts` right as the rows go.

use super::pool::Pool;
use crate::error::Result;
use crate::time::Timestamp;

/// Deletes up to `$2` jobs that ended before `$1`, oldest end first (the partial index
/// `jobs_ended_by_finish`, whose condition this repeats), with their attempts and keys;
/// returns how many jobs.
pub(super) const PRUNE_ENDED: &str = "WITH doomed AS (
        SELECT seq FROM jobs
        WHERE status IN ('success', 'failed', 'timeout', 'cancelled') AND finished_at < $1
        ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED),
     gone AS (DELETE FROM jobs WHERE seq IN (SELECT seq FROM doomed) RETURNING seq),
     attempts_gone AS (DELETE FROM attempts WHERE job_seq IN (SELECT seq FROM gone)),
     keys_gone AS (DELETE FROM idempotency_keys WHERE job_seq IN (SELECT seq FROM gone))
     SELECT count(*) FROM gone";
/// Deletes up to `$2` idempotency keys made before `$1`, oldest first; returns how many.
pub(super) const PRUNE_KEYS: &str = "WITH gone AS (
        DELETE FROM idempotency_keys WHERE key IN (
            SELECT key FROM idempotency_keys WHERE created_at < $1
            ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)
        RETURNING 1)
     SELECT count(*) FROM gone";

pub(super) fn prune_ended(pool: &Pool, before: Timestamp, limit: usize) -> Result<usize> {
    prune(pool, PRUNE_ENDED, before, limit)
}

pub(super) fn prune_idempotency_keys(
    pool: &Pool,
    before: Timestamp,
    limit: usize,
) -> Result<usize> {
    prune(pool, PRUNE_KEYS, before, limit)
}

/// Runs one of the statements above, which commits on its own.
fn prune(pool: &Pool, sql: &'static str, before: Timestamp, limit: usize) -> Result<usize> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let deleted: i64 = pool.run(|connection| {
        Ok(connection
            .session()
            .query_one(sql, &[&before.as_micros(), &limit])?
            .try_get(0)?)
    })?;
    Ok(usize::try_from(deleted).unwrap_or(0))
}
