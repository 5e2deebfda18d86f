//! Recovery of lost attempts: an attempt whose node lost its lease (it crashed, was killed, or
//! stopped heartbeating) counts as failed, and the retry rule decides what becomes of its job.
//! It owns that one pass; the lease keeper (`lease`) decides when it runs.

use std::time::Duration;

use log::warn;

use super::idle::Waker;
use crate::error::Result;
use crate::job::{AttemptDetails, AttemptEnd};
use crate::retry::RetryPolicy;
use crate::store::Store;
use crate::time::Timestamp;

/// Recovers the attempts of nodes that lost their lease (with `include_own`, also this node
/// id's, left by an earlier process with the same id). Returns how many were recovered.
pub fn recover_lost(
    store: &Store,
    retry: &RetryPolicy,
    lease: Duration,
    include_own: bool,
    waker: Option<&Waker>,
) -> Result<usize> {
    let lost = store.lost_attempts(Timestamp::now(), lease, include_own)?;
    let mut recovered = 0;
    for job in &lost {
        let now = Timestamp::now();
        let node = job.node.as_deref().unwrap_or("an earlier server");
        let error =
            format!("interrupted: the server stopped while this attempt was running (node {node})");
        let end = retry.after_failure(job, error, now);
        // `false`: the attempt ended meanwhile after all, or another node recovered it first.
        if !store.finish_attempt(job, &end, &AttemptDetails::default(), now)? {
            continue;
        }
        recovered += 1;
        match end {
            AttemptEnd::Failed {
                retry_at: Some(at), ..
            } => {
                warn!(
                    "job {} recovered: node {node} stopped while it ran attempt {}; retry {} of {} at {at}",
                    job.id,
                    job.attempt_number(),
                    job.retry_count + 1,
                    job.max_retries
                );
                if let Some(waker) = waker {
                    waker.job_queued(at);
                }
            }
            _ => warn!(
                "job {} recovered: node {node} stopped while it ran attempt {}; no retries left, marked failed",
                job.id,
                job.attempt_number()
            ),
        }
    }
    Ok(recovered)
}
