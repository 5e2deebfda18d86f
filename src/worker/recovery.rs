//! Recovery at start: attempts a crash left `running` count as failed, and the retry rule
//! decides what becomes of their jobs. It owns only that one pass, run before any worker
//! starts; it does not start workers (`pool`) or record attempts that end normally
//! (`attempt`).

use log::warn;

use crate::error::Result;
use crate::job::{AttemptDetails, AttemptEnd};
use crate::retry::RetryPolicy;
use crate::store::Store;
use crate::time::Timestamp;

/// At start: attempts left `running` by a crash count as failed, then the normal retry rule
/// applies. Returns how many jobs were recovered.
pub fn recover_interrupted(store: &Store, retry: &RetryPolicy) -> Result<usize> {
    let interrupted = store.running_jobs()?;
    for job in &interrupted {
        let now = Timestamp::now();
        let error = "interrupted: the server stopped while this attempt was running".to_string();
        let end = retry.after_failure(job, error, now);
        store.finish_attempt(job, &end, &AttemptDetails::default(), now)?;
        match end {
            AttemptEnd::Failed { retry_at: Some(at), .. } => warn!(
                "job {} recovered: its attempt was interrupted by a crash; retry {} of {} at {at}",
                job.id,
                job.retry_count + 1,
                job.max_retries
            ),
            _ => warn!(
                "job {} recovered: its attempt was interrupted by a crash; no retries left, marked failed",
                job.id
            ),
        }
    }
    Ok(interrupted.len())
}
