//! Recovery of lost attempts: an attempt whose node lost its lease (it crashed, was killed, or
//! stopped heartbeating) counts as failed, and the retry rule decides what becomes of its job.
//! It owns that one pass; the lease keeper (`lease`) decides when it runs.

use std::time::Duration;

use log::warn;

use super::idle::Waker;
use crate::error::Result;
use crate::job::AttemptEnd;
use crate::log_line::job_line;
use crate::retry::RetryPolicy;
use crate::store::Store;
use crate::time::Timestamp;

/// How many attempts are recovered between two heartbeats of this node.
const RECOVERIES_PER_HEARTBEAT: usize = 100;

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
        // A cancel asked for while the node still ran it stands: the job does not run again.
        let end = if job.cancel_requested {
            AttemptEnd::Cancelled {
                reason: format!(
                    "cancelled by request; node {node} stopped before it could stop the attempt"
                ),
            }
        } else {
            retry.after_failure(job, error, now)
        };
        // `false`: the attempt ended meanwhile after all, or another node recovered it first.
        if !store.finish_recovered(job, &end, now)? {
            continue;
        }
        recovered += 1;
        store.metrics().job_recovered();
        match end {
            AttemptEnd::Failed {
                retry_at: Some(at), ..
            } => {
                job_line!(
                    warn,
                    job,
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
            AttemptEnd::Cancelled { .. } => job_line!(
                warn,
                job,
                "job {} recovered: node {node} stopped while it ran attempt {}; it had been cancelled, marked cancelled",
                job.id,
                job.attempt_number()
            ),
            _ => job_line!(
                warn,
                job,
                "job {} recovered: node {node} stopped while it ran attempt {}; no retries left, marked failed",
                job.id,
                job.attempt_number()
            ),
        }
        // A long recovery must not cost this node its own lease.
        if recovered % RECOVERIES_PER_HEARTBEAT == 0 {
            store.heartbeat(Timestamp::now())?;
        }
    }
    Ok(recovered)
}

/// Recovers attempt `attempt` of job `job_id`, which the database says runs on this node but
/// no worker here runs (its claim committed, and its answer was lost), like a lost node's.
pub fn recover_orphan(
    store: &Store,
    retry: &RetryPolicy,
    job_id: &str,
    attempt: u32,
    waker: &Waker,
) {
    let job = match store.get(job_id) {
        Ok(Some(job)) if job.attempt == Some(attempt) => job,
        Ok(_) => return,
        Err(err) => {
            warn!(job_id, attempt; "cannot read job {job_id} to recover its orphaned attempt: {err}");
            return;
        }
    };
    let now = Timestamp::now();
    let error = "interrupted: this node lost track of the attempt (its claim's answer was lost)"
        .to_string();
    let end = retry.after_failure(&job, error, now);
    match store.finish_recovered(&job, &end, now) {
        Ok(true) => {
            store.metrics().job_recovered();
            job_line!(
                warn,
                &job,
                "job {job_id}: attempt {attempt} ran nowhere; recovered as interrupted"
            );
            if let AttemptEnd::Failed {
                retry_at: Some(at), ..
            } = end
            {
                waker.job_queued(at);
            }
        }
        Ok(false) => {}
        Err(err) => job_line!(
            warn,
            &job,
            "cannot recover job {job_id}'s orphaned attempt: {err}"
        ),
    }
}
