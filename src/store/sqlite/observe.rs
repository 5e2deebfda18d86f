//! What `GET /metrics` and `GET /stats` read on SQLite beyond the queue counters: the oldest
//! pending job of a queue (index seeks), the database's size (file sizes), and the jobs
//! finished per minute (`finished_minutes`, added to through the group commit).

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use super::group_commit::{in_savepoint, GroupCommit};
use crate::error::Result;
use crate::job::JobStatus;
use crate::metrics::MinuteCounts;
use crate::time::Timestamp;

/// The queue's pending job of the highest priority below `?2`, earliest `run_at` first: one
/// seek in `jobs_pending_by_queue` (queue, priority DESC, run_at, seq), which it is pinned to.
const NEXT_PRIORITY_OLDEST: &str = "SELECT priority, run_at FROM jobs
     INDEXED BY jobs_pending_by_queue
     WHERE status = 'pending' AND queue = ?1 AND priority < ?2
     ORDER BY priority DESC, run_at LIMIT 1";
const ADD_FINISHED: &str = "INSERT INTO finished_minutes (minute, status, n) VALUES (?1, ?2, ?3)
     ON CONFLICT (minute, status) DO UPDATE SET n = n + excluded.n";
const PRUNE_FINISHED: &str = "DELETE FROM finished_minutes WHERE minute < ?1";
const FINISHED_SINCE: &str = "SELECT minute, status, n FROM finished_minutes WHERE minute >= ?1";

/// Walks the queue's pending priorities from the highest down, one seek each, and keeps the
/// earliest `run_at`.
pub(super) fn oldest_pending_run_at(reader: &Connection, queue: &str) -> Result<Option<Timestamp>> {
    let mut statement = reader.prepare_cached(NEXT_PRIORITY_OLDEST)?;
    let mut below = i64::MAX;
    let mut oldest: Option<i64> = None;
    while let Some((priority, run_at)) = statement
        .query_row(params![queue, below], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
        })
        .optional()?
    {
        oldest = Some(oldest.map_or(run_at, |earliest| earliest.min(run_at)));
        below = priority;
    }
    Ok(oldest.map(Timestamp::from_micros))
}

/// The database file and its write-ahead log.
pub(super) fn size_bytes(path: &Path) -> Result<u64> {
    let size = |path: &Path| std::fs::metadata(path).map_or(0, |meta| meta.len());
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    Ok(size(path) + size(Path::new(&wal)))
}

pub(super) fn add_finished_minutes(
    writes: &GroupCommit,
    counts: &MinuteCounts,
    prune_before: i64,
) -> Result<()> {
    let rows: Vec<(i64, &'static str, i64)> = counts
        .iter()
        .map(|((minute, status), n)| {
            (
                *minute,
                status.as_str(),
                i64::try_from(*n).unwrap_or(i64::MAX),
            )
        })
        .collect();
    writes.write(move |writer| {
        in_savepoint(writer, |writer| {
            let mut add = writer.prepare_cached(ADD_FINISHED)?;
            for (minute, status, n) in &rows {
                add.execute(params![minute, status, n])?;
            }
            writer
                .prepare_cached(PRUNE_FINISHED)?
                .execute([prune_before])?;
            Ok(())
        })
    })
}

pub(super) fn finished_minutes(reader: &Connection, since: i64) -> Result<MinuteCounts> {
    let mut counts = MinuteCounts::new();
    let mut statement = reader.prepare_cached(FINISHED_SINCE)?;
    let rows = statement.query_map([since], |row| {
        Ok((
            row.get::<_, i64>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, i64>(2)?,
        ))
    })?;
    for row in rows {
        let (minute, status, n) = row?;
        let status: JobStatus = status.parse()?;
        counts.insert((minute, status), u64::try_from(n).unwrap_or(0));
    }
    Ok(counts)
}
