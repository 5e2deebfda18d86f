//! The SQL of bulk actions on PostgreSQL (`store::bulk`): one batch is one transaction that
//! picks its jobs and locks them (`FOR UPDATE`: a claim's `SKIP LOCKED` passes over them, an
//! outcome waits), then acts on them by `seq`. Picking walks an index that leads with what
//! the filter fixes (`jobs_by_status`, `jobs_by_queue`, `jobs_by_function`, each ending in
//! `seq`), or looks ids up in the id index; acting is a primary-key lookup per job.

use super::pool::Session;
use super::row::{self, job_columns};
use super::PostgresStore;
use crate::error::Result;
use crate::job::JobStatus;
use crate::store::bulk::{Batch, BatchDone, BulkAction, BulkFilter, BATCH_SIZE};
use crate::store::Ending;
use crate::time::Timestamp;

/// Picking a range: `$1` status, `$2` < seq <= `$3`, at most `$4`, lowest seq first; `$5`
/// (and `$6`) the queue and function where the filter has them.
pub(super) const PICK_BY_STATUS: &str = "SELECT seq FROM jobs
     WHERE status = $1 AND seq > $2 AND seq <= $3 ORDER BY seq LIMIT $4 FOR UPDATE";
pub(super) const PICK_BY_QUEUE: &str = "SELECT seq FROM jobs
     WHERE queue = $5 AND status = $1 AND seq > $2 AND seq <= $3
     ORDER BY seq LIMIT $4 FOR UPDATE";
pub(super) const PICK_BY_FUNCTION: &str = "SELECT seq FROM jobs
     WHERE function = $5 AND status = $1 AND seq > $2 AND seq <= $3
     ORDER BY seq LIMIT $4 FOR UPDATE";
pub(super) const PICK_BY_QUEUE_AND_FUNCTION: &str = "SELECT seq FROM jobs
     WHERE queue = $5 AND function = $6 AND status = $1 AND seq > $2 AND seq <= $3
     ORDER BY seq LIMIT $4 FOR UPDATE";
/// Picking by id: the ids `$1` whose status is one of `$2`, of queue `$3` and function `$4`
/// where given.
pub(super) const PICK_BY_IDS: &str = "SELECT seq FROM jobs
     WHERE id = ANY($1::text[]) AND status = ANY($2::text[])
       AND ($3::text IS NULL OR queue = $3) AND ($4::text IS NULL OR function = $4)
     ORDER BY seq FOR UPDATE";

/// The acts, on the jobs whose seqs are `$1`; each checks the status again.
pub(super) const RETRY: &str = "UPDATE jobs SET status = 'pending', retry_count = 0, run_at = $2,
        started_at = NULL, finished_at = NULL, result = NULL, error_message = NULL
     WHERE seq = ANY($1::bigint[]) AND status IN ('failed', 'timeout', 'cancelled')";
pub(super) const CANCEL_PENDING: &str = "UPDATE jobs SET status = 'cancelled', finished_at = $2,
        error_message = 'cancelled by request'
     WHERE seq = ANY($1::bigint[]) AND status = 'pending'
     RETURNING id, queue";
pub(super) const REQUEST_CANCEL: &str = concat!(
    "UPDATE jobs SET cancel_requested = true
     WHERE seq = ANY($1::bigint[]) AND status = 'running'
     RETURNING ",
    job_columns!()
);
pub(super) const DELETE_JOBS: &str = concat!(
    "WITH gone AS (DELETE FROM jobs WHERE seq = ANY($1::bigint[]) RETURNING *),
          attempts_gone AS (DELETE FROM attempts WHERE job_seq IN (SELECT seq FROM gone))
     SELECT ",
    job_columns!(),
    " FROM gone AS jobs"
);
pub(super) const LAST_SEQ: &str = "SELECT coalesce(max(seq), 0)::bigint FROM jobs";

impl PostgresStore {
    pub(super) fn bulk_last_seq(&self) -> Result<i64> {
        self.pool
            .read(|connection| Ok(connection.session().query_one(LAST_SEQ, &[])?.try_get(0)?))
    }

    pub(super) fn bulk_batch_in(
        &self,
        action: BulkAction,
        filter: &BulkFilter,
        batch: &Batch<'_>,
        now: Timestamp,
    ) -> Result<BatchDone> {
        let now = now.as_micros();
        let done = self.pool.run(|connection| {
            connection.transaction(|session| {
                let seqs = pick(session, filter, batch)?;
                let mut done = BatchDone {
                    picked: seqs.len(),
                    last_seq: seqs.iter().copied().max().unwrap_or(0),
                    ..BatchDone::default()
                };
                if seqs.is_empty() {
                    return Ok(done);
                }
                match action {
                    BulkAction::Retry => {
                        done.affected = session.execute(RETRY, &[&seqs, &now])?;
                    }
                    BulkAction::Cancel => {
                        for row in session.query(CANCEL_PENDING, &[&seqs, &now])? {
                            let (id, queue): (String, String) = (row.try_get(0)?, row.try_get(1)?);
                            let ending = Ending::Finished(JobStatus::Cancelled);
                            done.ended.push((id, queue, ending));
                        }
                        for row in session.query(REQUEST_CANCEL, &[&seqs])? {
                            done.stop.push(row::job(&row)?);
                        }
                        done.affected = (done.ended.len() + done.stop.len()) as u64;
                    }
                    BulkAction::Delete => {
                        let rows = session.query(DELETE_JOBS, &[&seqs])?;
                        done.affected = rows.len() as u64;
                        for row in rows {
                            let job = row::job(&row)?;
                            if !job.status.is_terminal() {
                                done.ended.push((
                                    job.id.clone(),
                                    job.queue.clone(),
                                    Ending::Deleted,
                                ));
                            }
                            if job.status == JobStatus::Running {
                                done.stop.push(job);
                            }
                        }
                    }
                }
                Ok(done)
            })
        })?;
        if action == BulkAction::Retry && done.affected > 0 {
            self.announcer.job_queued();
        }
        Ok(done)
    }
}

fn pick(
    session: &mut Session<'_, postgres::Transaction<'_>>,
    filter: &BulkFilter,
    batch: &Batch<'_>,
) -> Result<Vec<i64>, super::error::Failure> {
    let rows = match batch {
        Batch::Range {
            status,
            after,
            up_to,
        } => {
            let status = status.as_str();
            let limit = BATCH_SIZE as i64;
            let range: [&(dyn postgres::types::ToSql + Sync); 4] = [&status, after, up_to, &limit];
            match (&filter.queue, &filter.function) {
                (None, None) => session.query(PICK_BY_STATUS, &range)?,
                (Some(queue), None) => {
                    session.query(PICK_BY_QUEUE, &[&range[..], &[queue]].concat())?
                }
                (None, Some(function)) => {
                    session.query(PICK_BY_FUNCTION, &[&range[..], &[function]].concat())?
                }
                (Some(queue), Some(function)) => session.query(
                    PICK_BY_QUEUE_AND_FUNCTION,
                    &[&range[..], &[queue, function]].concat(),
                )?,
            }
        }
        Batch::Ids { ids, statuses } => {
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            let statuses: Vec<&str> = statuses.iter().map(|status| status.as_str()).collect();
            session.query(
                PICK_BY_IDS,
                &[&ids, &statuses, &filter.queue, &filter.function],
            )?
        }
    };
    rows.iter()
        .map(|row| row.try_get(0))
        .collect::<Result<Vec<i64>, postgres::Error>>()
        .map_err(Into::into)
}
