//! Retry policy: exponential backoff with full jitter. Pure arithmetic, no clock, no I/O.

use std::time::Duration;

use crate::job::{AttemptEnd, Job};
use crate::time::Timestamp;

#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub base: Duration,
    pub cap: Duration,
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1-based): uniform in `0..=min(cap, base * 2^(retry-1))`.
    /// `random` is any uniformly distributed number; full jitter spreads a burst of failures
    /// so they do not all come back at the same instant.
    pub fn backoff(&self, retry: u32, random: u64) -> Duration {
        let exponent = retry.saturating_sub(1).min(32);
        let base_ms = u64::try_from(self.base.as_millis()).unwrap_or(u64::MAX);
        let cap_ms = u64::try_from(self.cap.as_millis()).unwrap_or(u64::MAX);
        let ceiling = base_ms.saturating_mul(1u64 << exponent).min(cap_ms);
        Duration::from_millis(random % (ceiling.saturating_add(1)))
    }
}

impl RetryPolicy {
    /// What a failed attempt leads to: another try after a backoff while the job's budget
    /// lasts, otherwise a final `failed`.
    pub fn after_failure(&self, job: &Job, error: String, now: Timestamp) -> AttemptEnd {
        let retry_at = (job.retry_count < job.max_retries)
            .then(|| now.plus(self.backoff(job.retry_count + 1, jitter_seed())));
        AttemptEnd::Failed { error, retry_at }
    }
}

/// A random number for jitter. A v4 UUID is 122 random bits from the OS generator, which saves
/// a dependency on a random-number crate.
pub fn jitter_seed() -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RetryPolicy = RetryPolicy {
        base: Duration::from_millis(200),
        cap: Duration::from_millis(60_000),
    };

    #[test]
    fn ceiling_doubles_per_retry_and_stops_at_the_cap() {
        assert_eq!(POLICY.backoff(1, 200), Duration::from_millis(200));
        assert_eq!(POLICY.backoff(2, 400), Duration::from_millis(400));
        assert_eq!(POLICY.backoff(3, 800), Duration::from_millis(800));
        assert_eq!(POLICY.backoff(20, 60_000), Duration::from_millis(60_000));
        assert_eq!(POLICY.backoff(90, 60_000), Duration::from_millis(60_000));
    }

    #[test]
    fn jitter_stays_within_the_ceiling() {
        for seed in 0..2_000u64 {
            let random = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            assert!(POLICY.backoff(3, random) <= Duration::from_millis(800));
        }
        assert_eq!(POLICY.backoff(3, 0), Duration::ZERO);
    }
}
