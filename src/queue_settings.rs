//! Named queues in the model: a queue's settings (paused, the most jobs running at once, the
//! start rate), what `PUT /queues/:name` may change and its validation, what `GET /queues`
//! shows of a queue, and the start-rate bucket's arithmetic. Storing the settings and holding
//! claims to them is the store's; waking workers when they change is the queue layer's.
//! Depends on nothing in the crate but `error` and `job`.

use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::job::{whole_number, JobStatus};

/// The highest `concurrency` a queue may have.
pub const MAX_CONCURRENCY: u64 = 10_000;
/// The highest `rate_per_second` a queue may have.
pub const MAX_RATE_PER_SECOND: f64 = 10_000.0;

/// How many jobs of a queue are in each status, as the store's counters say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct QueueCounts {
    pub pending: u64,
    pub running: u64,
    pub success: u64,
    pub failed: u64,
    pub timeout: u64,
    pub cancelled: u64,
}

impl QueueCounts {
    /// Adds `n` jobs of `status` (a counter row; a negative sum counts as none).
    pub fn add(&mut self, status: JobStatus, n: i64) {
        let slot = match status {
            JobStatus::Pending => &mut self.pending,
            JobStatus::Running => &mut self.running,
            JobStatus::Success => &mut self.success,
            JobStatus::Failed => &mut self.failed,
            JobStatus::Timeout => &mut self.timeout,
            JobStatus::Cancelled => &mut self.cancelled,
        };
        *slot = slot.saturating_add_signed(n);
    }

    /// How many jobs are in `status`.
    pub fn get(&self, status: JobStatus) -> u64 {
        match status {
            JobStatus::Pending => self.pending,
            JobStatus::Running => self.running,
            JobStatus::Success => self.success,
            JobStatus::Failed => self.failed,
            JobStatus::Timeout => self.timeout,
            JobStatus::Cancelled => self.cancelled,
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == QueueCounts::default()
    }
}

/// A queue as `GET /queues` shows it. Keys in the documented order.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QueueSummary {
    pub name: String,
    pub paused: bool,
    pub concurrency: Option<u32>,
    pub rate_per_second: Option<f64>,
    pub counts: QueueCounts,
}

impl QueueSummary {
    /// A queue with the defaults: running, no limits, no jobs.
    pub fn empty(name: &str) -> QueueSummary {
        QueueSummary {
            name: name.to_string(),
            paused: false,
            concurrency: None,
            rate_per_second: None,
            counts: QueueCounts::default(),
        }
    }
}

/// What a `PUT /queues/:name` changes. The outer `None` keeps the current value; `Some(None)`
/// removes the limit.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SettingsChange {
    pub concurrency: Option<Option<u32>>,
    pub rate_per_second: Option<Option<f64>>,
}

impl SettingsChange {
    /// Reads `{"concurrency": N|null, "rate_per_second": R|null}`, either key optional; any
    /// other key is refused.
    pub fn from_json(body: Value) -> Result<SettingsChange> {
        let Value::Object(fields) = body else {
            return Err(Error::Validation(format!(
                "the body must be a JSON object such as {{\"concurrency\": 2}}, got {body}"
            )));
        };
        let mut change = SettingsChange::default();
        for (name, value) in fields {
            match name.as_str() {
                "concurrency" => change.concurrency = Some(concurrency(&value)?),
                "rate_per_second" => change.rate_per_second = Some(rate(&value)?),
                other => {
                    return Err(Error::Validation(format!(
                        "unknown field {other:?}; allowed are concurrency and rate_per_second"
                    )))
                }
            }
        }
        Ok(change)
    }
}

fn concurrency(value: &Value) -> Result<Option<u32>> {
    if value.is_null() {
        return Ok(None);
    }
    whole_number(value)
        .filter(|n| (1..=MAX_CONCURRENCY).contains(n))
        .and_then(|n| u32::try_from(n).ok())
        .map(Some)
        .ok_or_else(|| {
            Error::Validation(format!(
                "concurrency must be an integer from 1 to {MAX_CONCURRENCY}, or null for no limit; got {value}"
            ))
        })
}

fn rate(value: &Value) -> Result<Option<f64>> {
    if value.is_null() {
        return Ok(None);
    }
    value
        .as_f64()
        .filter(|rate| rate.is_finite() && *rate > 0.0 && *rate <= MAX_RATE_PER_SECOND)
        .map(Some)
        .ok_or_else(|| {
            Error::Validation(format!(
                "rate_per_second must be a number above 0 and at most {MAX_RATE_PER_SECOND}, or null for no limit; got {value}"
            ))
        })
}

/// The most start tokens a queue's bucket holds: a queue idle for a while may start this many
/// jobs at once, then `rate` a second.
pub fn burst(rate: f64) -> f64 {
    rate.max(1.0)
}

/// Tokens short of a whole one that still count as one: the bucket's sums are floating point.
const TOKEN_SLACK: f64 = 1e-9;

/// A queue's start-rate bucket: `tokens` at `refilled_at` (microseconds), filling at `rate`
/// a second up to `burst(rate)`. A start takes one token.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    pub rate: f64,
    pub tokens: f64,
    pub refilled_at: i64,
}

impl Bucket {
    /// The tokens at `now` (never fewer than stored: a clock that went back adds none).
    pub fn tokens_at(&self, now: i64) -> f64 {
        let elapsed = now.saturating_sub(self.refilled_at).max(0) as f64 / 1e6;
        (self.tokens + elapsed * self.rate).min(burst(self.rate))
    }

    /// Whether a job may start at `now`.
    pub fn has_token(&self, now: i64) -> bool {
        self.tokens_at(now) >= 1.0 - TOKEN_SLACK
    }

    /// The bucket after a start at `now` (call only when `has_token(now)`).
    pub fn take(&self, now: i64) -> Bucket {
        Bucket {
            tokens: (self.tokens_at(now) - 1.0).max(0.0),
            refilled_at: now.max(self.refilled_at),
            ..*self
        }
    }

    /// When the next token is whole: `refilled_at` if there is one already. Rounded up, so
    /// that a claim at that moment finds it.
    pub fn next_token_at(&self) -> i64 {
        let missing = 1.0 - TOKEN_SLACK - self.tokens;
        if missing <= 0.0 {
            return self.refilled_at;
        }
        // `as` saturates: a tiny rate waits "forever", not a wrapped-around time.
        let wait = (missing * 1e6 / self.rate).ceil() as i64;
        self.refilled_at.saturating_add(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_change_reads_limits_nulls_and_refuses_anything_else() {
        let change = SettingsChange::from_json(json!({"concurrency": 2})).unwrap();
        assert_eq!(
            change,
            SettingsChange {
                concurrency: Some(Some(2)),
                rate_per_second: None
            }
        );
        let change =
            SettingsChange::from_json(json!({"concurrency": null, "rate_per_second": 0.5}))
                .unwrap();
        assert_eq!(change.concurrency, Some(None));
        assert_eq!(change.rate_per_second, Some(Some(0.5)));
        assert_eq!(
            SettingsChange::from_json(json!({"concurrency": 3.0}))
                .unwrap()
                .concurrency,
            Some(Some(3))
        );
        for bad in [
            json!({"concurrency": 0}),
            json!({"concurrency": 10_001}),
            json!({"concurrency": 1.5}),
            json!({"concurrency": "2"}),
            json!({"rate_per_second": 0}),
            json!({"rate_per_second": -1}),
            json!({"rate_per_second": 10_000.5}),
            json!({"rate_per_second": true}),
            json!({"paused": true}),
            json!([]),
        ] {
            assert!(
                matches!(
                    SettingsChange::from_json(bad.clone()),
                    Err(Error::Validation(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_bucket_fills_at_its_rate_up_to_its_burst() {
        let full = Bucket {
            rate: 2.0,
            tokens: 2.0,
            refilled_at: 0,
        };
        assert!(full.has_token(0));
        let one = full.take(0);
        let none = one.take(0);
        assert!(!none.has_token(0));
        assert_eq!(none.next_token_at(), 500_000);
        assert!(none.has_token(500_000) && !none.has_token(499_000));
        // Idle for a minute, it holds its burst, no more.
        assert_eq!(none.tokens_at(60_000_000), 2.0);
        let slow = Bucket {
            rate: 0.5,
            tokens: 0.0,
            refilled_at: 10,
        };
        assert_eq!(burst(0.5), 1.0);
        assert_eq!(slow.next_token_at(), 2_000_010);
        let tiny = Bucket {
            rate: 1e-300,
            tokens: 0.0,
            refilled_at: 10,
        };
        assert_eq!(tiny.next_token_at(), i64::MAX);
    }
}
