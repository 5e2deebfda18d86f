//! What workers need from the queue: claim due work, learn when more is due, and record how an
//! attempt ended. Defined here and implemented by the queue layer (`crate::queue::Queue`), so
//! that workers go through the same layer as every client action without `worker` and `queue`
//! depending on each other.

use crate::error::Result;
use crate::job::{AttemptDetails, AttemptEnd, Job};
use crate::store::FinishAndClaim;
use crate::time::Timestamp;

pub trait Jobs: Send + Sync {
    /// Claims the highest-priority due job for this node; `None` when nothing is due.
    fn claim_next_due(&self, now: Timestamp) -> Result<Option<Job>>;

    /// When the earliest pending job becomes due; `None` if none waits.
    fn next_due_at(&self) -> Result<Option<Timestamp>>;

    /// Records how the attempt ended; `false` when it is no longer the job's running one.
    fn finish_attempt(
        &self,
        job: &Job,
        end: &AttemptEnd,
        details: &AttemptDetails,
        now: Timestamp,
    ) -> Result<bool>;

    /// Records how the attempt ended and claims the next due job.
    fn finish_and_claim_next(
        &self,
        job: &Job,
        end: &AttemptEnd,
        details: &AttemptDetails,
        now: Timestamp,
    ) -> Result<FinishAndClaim>;
}
