//! What `GET /metrics` and `GET /stats` read on PostgreSQL beyond the queue counters: the
//! oldest pending job of a queue (index seeks), the size of this deployment's tables, and the
//! jobs finished per minute (`finished_minutes`, added to by every node).

use postgres::types::ToSql;

use super::pool::Pool;
use crate::error::Result;
use crate::job::JobStatus;
use crate::metrics::MinuteCounts;
use crate::time::Timestamp;

/// The queue's pending job of the highest priority below `$2`, earliest `run_at` first: one
/// seek in `jobs_pending_by_queue` (queue, priority DESC, run_at, seq).
const NEXT_PRIORITY_OLDEST: &str = "SELECT priority, run_at FROM jobs
     WHERE status = 'pending' AND queue = $1 AND priority < $2
     ORDER BY priority DESC, run_at LIMIT 1";
/// The tables of this schema (the first of the `search_path`), with their indexes and TOAST.
const SIZE: &str = "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = current_schema() AND c.relkind = 'r'";
/// Adds `$3` (an array, one per minute and status) to each (minute, status) row.
const ADD_FINISHED: &str = "INSERT INTO finished_minutes (minute, status, n)
     SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[])
     ON CONFLICT (minute, status) DO UPDATE SET n = finished_minutes.n + excluded.n";
const PRUNE_FINISHED: &str = "DELETE FROM finished_minutes WHERE minute < $1";
const FINISHED_SINCE: &str = "SELECT minute, status, n FROM finished_minutes WHERE minute >= $1";

/// Walks the queue's pending priorities from the highest down, one seek each, and keeps the
/// earliest `run_at`.
pub(super) fn oldest_pending_run_at(pool: &Pool, queue: &str) -> Result<Option<Timestamp>> {
    pool.read(|connection| {
        let mut session = connection.session();
        let mut below = i32::MAX;
        let mut oldest: Option<i64> = None;
        while let Some(row) = session.query_opt(NEXT_PRIORITY_OLDEST, &[&queue, &below])? {
            let (priority, run_at): (i32, i64) = (row.try_get(0)?, row.try_get(1)?);
            oldest = Some(oldest.map_or(run_at, |earliest| earliest.min(run_at)));
            below = priority;
        }
        Ok(oldest.map(Timestamp::from_micros))
    })
}

pub(super) fn size_bytes(pool: &Pool) -> Result<u64> {
    let size: i64 =
        pool.read(|connection| Ok(connection.session().query_one(SIZE, &[])?.try_get(0)?))?;
    Ok(u64::try_from(size).unwrap_or(0))
}

pub(super) fn add_finished_minutes(
    pool: &Pool,
    counts: &MinuteCounts,
    prune_before: i64,
) -> Result<()> {
    let minutes: Vec<i64> = counts.keys().map(|(minute, _)| *minute).collect();
    let statuses: Vec<&str> = counts.keys().map(|(_, status)| status.as_str()).collect();
    let ns: Vec<i64> = counts
        .values()
        .map(|n| i64::try_from(*n).unwrap_or(i64::MAX))
        .collect();
    pool.run(|connection| {
        connection.transaction(|session| {
            if !minutes.is_empty() {
                let values: [&(dyn ToSql + Sync); 3] = [&minutes, &statuses, &ns];
                session.execute(ADD_FINISHED, &values)?;
            }
            session.execute(PRUNE_FINISHED, &[&prune_before])?;
            Ok(())
        })
    })
}

pub(super) fn finished_minutes(pool: &Pool, since: i64) -> Result<MinuteCounts> {
    pool.read(|connection| {
        let mut counts = MinuteCounts::new();
        for row in connection.session().query(FINISHED_SINCE, &[&since])? {
            let (minute, status, n): (i64, String, i64) =
                (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
            let status: JobStatus = status.parse()?;
            counts.insert((minute, status), u64::try_from(n).unwrap_or(0));
        }
        Ok(counts)
    })
}
