//! Bulk actions (`POST /jobs/retry`, `/jobs/cancel`, `/jobs/delete`): what they are, and the
//! loop every backend shares. A filter is matched, and the action applies to the matching
//! jobs it can apply to (retry: failed, timeout, cancelled; cancel: pending, running; delete:
//! any); the others are skipped.
//!
//! The work is cut into batches of at most [`BATCH_SIZE`] jobs, each one transaction of its
//! own (`Backend::bulk_batch`), so a filter matching a million jobs never holds the writer
//! for long and other requests go on between batches. Without `ids`, batches walk one status
//! at a time in the order jobs were submitted, on an index of that status (with the queue or
//! function), and never past the last job that existed when the action began: jobs submitted
//! while it runs are left alone, and each job is considered once. With `ids`, they go
//! [`BATCH_SIZE`] ids at a time.
//!
//! Every batch is committed on its own: should one fail, the batches before it stay done,
//! and the action can be repeated (each of them leaves a job it has done unmatched, or, for
//! delete, gone).

use crate::error::Result;
use crate::job::{Job, JobStatus};
use crate::time::Timestamp;

use super::{Ending, Store};

/// Jobs per transaction.
pub const BATCH_SIZE: usize = 500;

/// The most ids one filter may name.
pub const MAX_FILTER_IDS: usize = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BulkAction {
    Retry,
    Cancel,
    Delete,
}

impl BulkAction {
    /// The statuses of the jobs the action applies to.
    pub fn applies_to(self) -> &'static [JobStatus] {
        use JobStatus::*;
        match self {
            BulkAction::Retry => &[Failed, Timeout, Cancelled],
            BulkAction::Cancel => &[Pending, Running],
            BulkAction::Delete => &[Pending, Running, Success, Failed, Timeout, Cancelled],
        }
    }
}

/// Which jobs an action is for: those matching every field given. At least one is given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BulkFilter {
    pub status: Option<JobStatus>,
    pub queue: Option<String>,
    pub function: Option<String>,
    /// Canonical job ids, without repeats, at most [`MAX_FILTER_IDS`].
    pub ids: Option<Vec<String>>,
}

/// The jobs one batch may pick, beside the filter's queue and function.
#[derive(Clone, Debug)]
pub enum Batch<'a> {
    /// Up to `BATCH_SIZE` jobs of `status` with `after < seq <= up_to`, lowest `seq` first.
    Range {
        status: JobStatus,
        after: i64,
        up_to: i64,
    },
    /// The jobs among `ids` whose status is one of `statuses`.
    Ids {
        ids: &'a [String],
        statuses: &'a [JobStatus],
    },
}

/// What one batch did.
#[derive(Debug, Default)]
pub struct BatchDone {
    /// Jobs the action applied to.
    pub affected: u64,
    /// For a range: how many jobs it picked, and the highest `seq` among them.
    pub picked: usize,
    pub last_seq: i64,
    /// Jobs the batch ended (a cancelled pending job, a deleted job that had not ended), for
    /// `job_ended`: id, queue, and how.
    pub ended: Vec<(String, String, Ending)>,
    /// Running jobs whose attempt must stop: cancelled (the cancel is recorded for their
    /// node) or deleted. With their `node`, `attempt` and `started_at`.
    pub stop: Vec<Job>,
}

impl Store {
    /// Applies `action` to every job `filter` matches, batch by batch; `on_batch` hears what
    /// each batch did as soon as it is committed (its ends have passed `job_ended`), to stop
    /// attempts and wake workers. Returns the number of jobs the action applied to.
    pub fn bulk(
        &self,
        action: BulkAction,
        filter: &BulkFilter,
        now: Timestamp,
        on_batch: &mut dyn FnMut(&BatchDone),
    ) -> Result<u64> {
        let statuses: Vec<JobStatus> = action
            .applies_to()
            .iter()
            .copied()
            .filter(|status| filter.status.is_none_or(|wanted| wanted == *status))
            .collect();
        let mut affected = 0;
        let mut done_with = |done: BatchDone| {
            for (id, queue, ending) in &done.ended {
                self.job_ended(id, queue, *ending);
            }
            on_batch(&done);
            affected += done.affected;
            (done.picked, done.last_seq)
        };
        if let Some(ids) = &filter.ids {
            for chunk in ids.chunks(BATCH_SIZE) {
                if statuses.is_empty() {
                    break;
                }
                let batch = Batch::Ids {
                    ids: chunk,
                    statuses: &statuses,
                };
                done_with(self.backend.bulk_batch(action, filter, &batch, now)?);
            }
            return Ok(affected);
        }
        let up_to = self.backend.last_seq()?;
        for status in statuses {
            let mut after = 0;
            loop {
                let batch = Batch::Range {
                    status,
                    after,
                    up_to,
                };
                let (picked, last_seq) =
                    done_with(self.backend.bulk_batch(action, filter, &batch, now)?);
                if picked < BATCH_SIZE {
                    break;
                }
                after = last_seq;
            }
        }
        Ok(affected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::NewJob;
    use crate::store::{sqlite, test_dir, Options};

    #[test]
    fn every_job_a_bulk_cancel_or_delete_ends_passes_job_ended() {
        let dir = test_dir::TestDir::new("bulk-ended");
        let options = Options::for_test("test-node", 0);
        let backend = sqlite::SqliteStore::open(&dir.path().join("jobs.db"), &options).unwrap();
        let store = Store::with_backend(Box::new(backend));
        let now = Timestamp::from_micros(10);
        for id in ["running", "waiting", "kept", "doomed"] {
            store
                .insert(id.into(), &NewJob::for_test(0, None), now)
                .unwrap();
        }
        let running = store.claim_next_due(now).unwrap().unwrap();
        assert_eq!(running.id, "running");
        let filter = |ids: &[&str]| BulkFilter {
            ids: Some(ids.iter().map(|id| id.to_string()).collect()),
            ..BulkFilter::default()
        };
        let mut stopped = Vec::new();
        let mut on_batch = |done: &BatchDone| {
            stopped.extend(done.stop.iter().map(|job| job.id.clone()));
        };
        let cancelled = store
            .bulk(
                BulkAction::Cancel,
                &filter(&["running", "waiting"]),
                now,
                &mut on_batch,
            )
            .unwrap();
        assert_eq!(cancelled, 2);
        let deleted = store
            .bulk(BulkAction::Delete, &filter(&["doomed"]), now, &mut on_batch)
            .unwrap();
        assert_eq!(deleted, 1);
        assert_eq!(stopped, ["running"]);
        // The running job ends when its worker records the cancel, as for a single cancel.
        assert_eq!(
            store.ended(),
            [
                (
                    "waiting".to_string(),
                    Ending::Finished(JobStatus::Cancelled)
                ),
                ("doomed".to_string(), Ending::Deleted),
            ]
        );
        let retried = store
            .bulk(
                BulkAction::Retry,
                &BulkFilter {
                    status: Some(JobStatus::Cancelled),
                    ..BulkFilter::default()
                },
                now,
                &mut |_| {},
            )
            .unwrap();
        assert_eq!(retried, 1);
        assert_eq!(
            store.get("waiting").unwrap().unwrap().status,
            JobStatus::Pending
        );
        assert_eq!(
            store.get("kept").unwrap().unwrap().status,
            JobStatus::Pending
        );
    }
}
