//! The SQL of bulk actions on SQLite (`store::bulk`): one batch is one write through group
//! commit, in a savepoint: pick the batch's jobs, then act on them by `seq`. Picking walks an
//! index that leads with what the filter fixes (`jobs_by_status`, `jobs_by_queue`,
//! `jobs_by_function`, each ending in `seq`) and checks the rest on the rows it reads, or
//! looks ids up one by one; acting is a rowid seek per job. A status that ended without
//! success (what a retry picks) with a queue or function seeks the partial
//! `jobs_unsuccessful_by_*` indexes; another status with a queue walks the index with fewer
//! jobs by the writer's counts (as `GET /jobs` does, see `list`). Sets of
//! values are bound as one JSON array and read with `json_each`.

use rusqlite::{params, OptionalExtension};

use super::group_commit::{in_savepoint, Writer};
use super::row::RawJob;
use super::SqliteStore;
use crate::error::{Error, Result};
use crate::job::JobStatus;
use crate::store::bulk::{Batch, BatchDone, BulkAction, BulkFilter, BATCH_SIZE};
use crate::store::Ending;
use crate::time::Timestamp;

/// Picking a range: `?1` status, `?2` < seq <= `?3`, at most `?4`, lowest seq first; `?5`
/// and `?6` the queue and function where the filter has them.
pub(super) const PICK_BY_STATUS: &str = "SELECT seq FROM jobs
     WHERE status = ?1 AND seq > ?2 AND seq <= ?3 ORDER BY seq LIMIT ?4";
pub(super) const PICK_BY_QUEUE: &str = "SELECT seq FROM jobs INDEXED BY jobs_by_queue
     WHERE queue = ?5 AND status = ?1 AND seq > ?2 AND seq <= ?3 ORDER BY seq LIMIT ?4";
/// The same, for a status with fewer jobs than the queue.
pub(super) const PICK_BY_QUEUE_VIA_STATUS: &str = "SELECT seq FROM jobs INDEXED BY jobs_by_status
     WHERE queue = ?5 AND status = ?1 AND seq > ?2 AND seq <= ?3 ORDER BY seq LIMIT ?4";
pub(super) const PICK_BY_FUNCTION: &str = "SELECT seq FROM jobs
     WHERE function = ?5 AND status = ?1 AND seq > ?2 AND seq <= ?3 ORDER BY seq LIMIT ?4";
pub(super) const PICK_BY_QUEUE_AND_FUNCTION: &str = "SELECT seq FROM jobs INDEXED BY jobs_by_queue
     WHERE queue = ?5 AND function = ?6 AND status = ?1 AND seq > ?2 AND seq <= ?3
     ORDER BY seq LIMIT ?4";
/// Picking by id: the ids `?1` whose status is one of `?2`, of queue `?3` and function `?4`
/// where given. `+status`: the id index drives the search, never the status index.
/// For a status that ended without success: the partial indexes, an exact seek (their
/// condition repeated word for word, `list::UNSUCCESSFUL`).
pub(super) const PICK_BY_QUEUE_UNSUCCESSFUL: &str = "SELECT seq FROM jobs
     INDEXED BY jobs_unsuccessful_by_queue
     WHERE queue = ?5 AND status = ?1 AND seq > ?2 AND seq <= ?3
       AND status IN ('failed', 'timeout', 'cancelled')
     ORDER BY seq LIMIT ?4";
pub(super) const PICK_BY_FUNCTION_UNSUCCESSFUL: &str = "SELECT seq FROM jobs
     INDEXED BY jobs_unsuccessful_by_function
     WHERE function = ?5 AND status = ?1 AND seq > ?2 AND seq <= ?3
       AND status IN ('failed', 'timeout', 'cancelled')
     ORDER BY seq LIMIT ?4";
pub(super) const PICK_BY_QUEUE_AND_FUNCTION_UNSUCCESSFUL: &str = "SELECT seq FROM jobs
     INDEXED BY jobs_unsuccessful_by_function
     WHERE queue = ?5 AND function = ?6 AND status = ?1 AND seq > ?2 AND seq <= ?3
       AND status IN ('failed', 'timeout', 'cancelled')
     ORDER BY seq LIMIT ?4";
pub(super) const PICK_BY_IDS: &str = "SELECT seq FROM jobs
     WHERE id IN (SELECT value FROM json_each(?1))
       AND +status IN (SELECT value FROM json_each(?2))
       AND (?3 IS NULL OR queue = ?3) AND (?4 IS NULL OR function = ?4)";

/// The acts, on the jobs whose seqs are the JSON array `?1`; each checks the status again
/// (`+status`: found by rowid, not through the status index).
/// What `RETRY` will move, for the counts (an update returns only the new status).
pub(super) const RETRYABLE: &str = "SELECT queue, status, count(*) FROM jobs
     WHERE seq IN (SELECT value FROM json_each(?1))
       AND +status IN ('failed', 'timeout', 'cancelled')
     GROUP BY queue, status";
pub(super) const RETRY: &str = "UPDATE jobs SET status = 'pending', retry_count = 0, run_at = ?2,
        started_at = NULL, finished_at = NULL, result = NULL, error_message = NULL
     WHERE seq IN (SELECT value FROM json_each(?1))
       AND +status IN ('failed', 'timeout', 'cancelled')";
pub(super) const CANCEL_PENDING: &str = "UPDATE jobs SET status = 'cancelled', finished_at = ?2,
        error_message = 'cancelled by request'
     WHERE seq IN (SELECT value FROM json_each(?1)) AND +status = 'pending'
     RETURNING id, queue";
pub(super) const REQUEST_CANCEL: &str = concat!(
    "UPDATE jobs SET cancel_requested = 1
     WHERE seq IN (SELECT value FROM json_each(?1)) AND +status = 'running'
     RETURNING ",
    job_columns!()
);
pub(super) const DELETE_ATTEMPTS: &str =
    "DELETE FROM attempts WHERE job_seq IN (SELECT value FROM json_each(?1))";
pub(super) const DELETE_JOBS: &str = concat!(
    "DELETE FROM jobs WHERE seq IN (SELECT value FROM json_each(?1)) RETURNING ",
    job_columns!()
);
pub(super) const LAST_SEQ: &str = "SELECT coalesce(max(seq), 0) FROM jobs";

impl SqliteStore {
    pub(super) fn bulk_last_seq(&self) -> Result<i64> {
        let last = self
            .read()
            .prepare_cached(LAST_SEQ)?
            .query_row([], |row| row.get(0))
            .optional()?;
        Ok(last.unwrap_or(0))
    }

    pub(super) fn bulk_batch_in(
        &self,
        action: BulkAction,
        filter: &BulkFilter,
        batch: &Batch<'_>,
        now: Timestamp,
    ) -> Result<BatchDone> {
        let pick = Pick::new(filter, batch)?;
        let now = now.as_micros();
        let raws = self.writes.write(move |writer| {
            in_savepoint(writer, |writer| {
                let seqs = pick.run(writer)?;
                let acted = act(writer, action, &seqs, now)?;
                Ok((seqs, acted))
            })
        })?;
        let (seqs, acted) = raws;
        let mut done = BatchDone {
            picked: seqs.len(),
            last_seq: seqs.iter().copied().max().unwrap_or(0),
            ..BatchDone::default()
        };
        match acted {
            Acted::Retried(count) => done.affected = count,
            Acted::Cancelled { ended, running } => {
                done.affected = (ended.len() + running.len()) as u64;
                done.ended = ended
                    .into_iter()
                    .map(|(id, queue)| (id, queue, Ending::Finished(JobStatus::Cancelled)))
                    .collect();
                done.stop = running
                    .into_iter()
                    .map(RawJob::into_job)
                    .collect::<Result<_>>()?;
            }
            Acted::Deleted(raws) => {
                done.affected = raws.len() as u64;
                for raw in raws {
                    let job = raw.into_job()?;
                    if !job.status.is_terminal() {
                        done.ended
                            .push((job.id.clone(), job.queue.clone(), Ending::Deleted));
                    }
                    if job.status == JobStatus::Running {
                        done.stop.push(job);
                    }
                }
            }
        }
        Ok(done)
    }
}

/// What one batch picks, as bound values: owned, for the write closure.
struct Pick {
    sql: &'static str,
    /// Range: status, after, up to, limit, then the queue and function if the filter has them.
    /// Ids: ids, statuses (JSON arrays), queue, function.
    values: Vec<rusqlite::types::Value>,
    /// For a queue's jobs of one status: both, to walk the status's index instead when it
    /// has fewer jobs.
    queue_and_status: Option<(String, JobStatus)>,
}

impl Pick {
    fn new(filter: &BulkFilter, batch: &Batch<'_>) -> Result<Pick> {
        use rusqlite::types::Value as Sql;
        let text = |value: &Option<String>| match value {
            Some(text) => Sql::Text(text.clone()),
            None => Sql::Null,
        };
        match batch {
            Batch::Range {
                status,
                after,
                up_to,
            } => {
                let mut values = vec![
                    Sql::Text(status.as_str().into()),
                    Sql::Integer(*after),
                    Sql::Integer(*up_to),
                    Sql::Integer(BATCH_SIZE as i64),
                ];
                let unsuccessful = status.is_retryable();
                let sql = match (&filter.queue, &filter.function, unsuccessful) {
                    (None, None, _) => PICK_BY_STATUS,
                    (Some(_), None, false) => PICK_BY_QUEUE,
                    (None, Some(_), false) => PICK_BY_FUNCTION,
                    (Some(_), Some(_), false) => PICK_BY_QUEUE_AND_FUNCTION,
                    (Some(_), None, true) => PICK_BY_QUEUE_UNSUCCESSFUL,
                    (None, Some(_), true) => PICK_BY_FUNCTION_UNSUCCESSFUL,
                    (Some(_), Some(_), true) => PICK_BY_QUEUE_AND_FUNCTION_UNSUCCESSFUL,
                };
                values.extend(
                    [&filter.queue, &filter.function]
                        .into_iter()
                        .filter(|value| value.is_some())
                        .map(text),
                );
                let queue_and_status = match (&filter.queue, &filter.function, unsuccessful) {
                    (Some(queue), None, false) => Some((queue.clone(), *status)),
                    _ => None,
                };
                Ok(Pick {
                    sql,
                    values,
                    queue_and_status,
                })
            }
            Batch::Ids { ids, statuses } => {
                let statuses: Vec<&str> = statuses.iter().map(|status| status.as_str()).collect();
                Ok(Pick {
                    sql: PICK_BY_IDS,
                    values: vec![
                        Sql::Text(json_array(ids)?),
                        Sql::Text(json_array(&statuses)?),
                        text(&filter.queue),
                        text(&filter.function),
                    ],
                    queue_and_status: None,
                })
            }
        }
    }

    fn run(&self, writer: &Writer<'_>) -> Result<Vec<i64>> {
        let sql = match &self.queue_and_status {
            Some((queue, status)) if writer.status_total(*status) < writer.queue_total(queue) => {
                PICK_BY_QUEUE_VIA_STATUS
            }
            _ => self.sql,
        };
        let seqs = writer
            .prepare_cached(sql)?
            .query_map(rusqlite::params_from_iter(&self.values), |row| row.get(0))?
            .collect::<rusqlite::Result<Vec<i64>>>()?;
        Ok(seqs)
    }
}

/// What acting on a batch's jobs did, with the rows callers need.
enum Acted {
    Retried(u64),
    Cancelled {
        /// Id and queue of each pending job cancelled.
        ended: Vec<(String, String)>,
        running: Vec<RawJob>,
    },
    Deleted(Vec<RawJob>),
}

fn act(writer: &mut Writer<'_>, action: BulkAction, seqs: &[i64], now: i64) -> Result<Acted> {
    if seqs.is_empty() {
        return Ok(match action {
            BulkAction::Retry => Acted::Retried(0),
            BulkAction::Cancel => Acted::Cancelled {
                ended: Vec::new(),
                running: Vec::new(),
            },
            BulkAction::Delete => Acted::Deleted(Vec::new()),
        });
    }
    let seqs = json_array(seqs)?;
    match action {
        BulkAction::Retry => {
            let moving = writer
                .prepare_cached(RETRYABLE)?
                .query_map([&seqs], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, i64>(2)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let changed = writer.prepare_cached(RETRY)?.execute(params![seqs, now])?;
            for (queue, status, n) in moving {
                writer.moved_many(&queue, Some(status.parse()?), Some(JobStatus::Pending), n);
            }
            Ok(Acted::Retried(changed as u64))
        }
        BulkAction::Cancel => {
            let cancelled = writer
                .prepare_cached(CANCEL_PENDING)?
                .query_map(params![seqs, now], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            for (_, queue) in &cancelled {
                writer.moved(queue, Some(JobStatus::Pending), Some(JobStatus::Cancelled));
            }
            let ended = cancelled;
            let running = writer
                .prepare_cached(REQUEST_CANCEL)?
                .query_map([&seqs], RawJob::from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(Acted::Cancelled { ended, running })
        }
        BulkAction::Delete => {
            writer.prepare_cached(DELETE_ATTEMPTS)?.execute([&seqs])?;
            let gone = writer
                .prepare_cached(DELETE_JOBS)?
                .query_map([&seqs], RawJob::from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            for raw in &gone {
                raw.deleted_by(writer);
            }
            Ok(Acted::Deleted(gone))
        }
    }
}

fn json_array(values: &[impl serde::Serialize]) -> Result<String> {
    serde_json::to_string(values)
        .map_err(|err| Error::Internal(format!("cannot encode a set of values: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::tests::{plan, temp_store};

    #[test]
    fn every_bulk_statement_is_served_by_an_index() {
        let store = temp_store();
        let cases = [
            (
                PICK_BY_STATUS,
                "SEARCH jobs USING COVERING INDEX jobs_by_status (status=? AND seq>? AND seq<?)",
            ),
            (
                PICK_BY_QUEUE,
                "SEARCH jobs USING INDEX jobs_by_queue (queue=? AND seq>? AND seq<?)",
            ),
            (
                PICK_BY_QUEUE_VIA_STATUS,
                "SEARCH jobs USING INDEX jobs_by_status (status=? AND seq>? AND seq<?)",
            ),
            (
                PICK_BY_FUNCTION,
                "SEARCH jobs USING INDEX jobs_by_function (function=? AND seq>? AND seq<?)",
            ),
            (
                PICK_BY_QUEUE_AND_FUNCTION,
                "SEARCH jobs USING INDEX jobs_by_queue (queue=? AND seq>? AND seq<?)",
            ),
            (
                PICK_BY_QUEUE_UNSUCCESSFUL,
                "SEARCH jobs USING COVERING INDEX jobs_unsuccessful_by_queue (queue=? AND status=? AND seq>? AND seq<?)",
            ),
            (
                PICK_BY_FUNCTION_UNSUCCESSFUL,
                "SEARCH jobs USING COVERING INDEX jobs_unsuccessful_by_function (function=? AND status=? AND seq>? AND seq<?)",
            ),
            (
                PICK_BY_QUEUE_AND_FUNCTION_UNSUCCESSFUL,
                "SEARCH jobs USING INDEX jobs_unsuccessful_by_function (function=? AND status=? AND seq>? AND seq<?)",
            ),
            (
                PICK_BY_IDS,
                "SEARCH jobs USING INDEX sqlite_autoindex_jobs_1 (id=?)",
            ),
            (RETRYABLE, "SEARCH jobs USING INTEGER PRIMARY KEY (rowid=?)"),
            (RETRY, "SEARCH jobs USING INTEGER PRIMARY KEY (rowid=?)"),
            (
                CANCEL_PENDING,
                "SEARCH jobs USING INTEGER PRIMARY KEY (rowid=?)",
            ),
            (
                REQUEST_CANCEL,
                "SEARCH jobs USING INTEGER PRIMARY KEY (rowid=?)",
            ),
            (
                DELETE_ATTEMPTS,
                "SEARCH attempts USING PRIMARY KEY (job_seq=?)",
            ),
            (
                DELETE_JOBS,
                "SEARCH jobs USING INTEGER PRIMARY KEY (rowid=?)",
            ),
        ];
        for (sql, expected) in cases {
            let plan = plan(&store, sql);
            assert!(plan.lines().any(|line| line == expected), "{sql}\n{plan}");
            assert!(!plan.contains("SCAN jobs"), "{sql}\n{plan}");
        }
    }
}
