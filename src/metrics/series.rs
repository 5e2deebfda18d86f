//! The value types of the registry: a [`Counter`] and a [`Histogram`], both plain atomics, so
//! recording is a few relaxed atomic adds and never takes a lock. A scrape reads them while
//! they change; each value is read once, so a histogram's buckets may be a moment apart from
//! its count, never inconsistent with itself beyond that (the renderer derives `_count` from
//! the buckets it read).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn inc(&self) {
        self.add(1);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Bucket bounds, in seconds, for job waits and runs: milliseconds to an hour.
pub const JOB_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];
/// Bucket bounds, in seconds, for HTTP requests: half a millisecond to a minute (a request
/// may wait for its job up to 60 s).
pub const HTTP_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];
/// Bucket bounds, in seconds, for database commits: a tenth of a millisecond to a second.
pub const COMMIT_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Observations counted into fixed buckets (each counts only its own range; the renderer
/// makes them cumulative), with their sum in nanoseconds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One per bound, then the one above the last bound (`+Inf`).
    buckets: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
}

/// What a scrape read of a histogram: cumulative bucket counts, the count and the sum.
pub struct HistogramValues {
    pub bounds: &'static [f64],
    /// Cumulative: `cumulative[i]` observations were at most `bounds[i]`.
    pub cumulative: Vec<u64>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        let index = self
            .bounds
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(self.bounds.len());
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn values(&self) -> HistogramValues {
        let mut running = 0;
        let mut cumulative = Vec::with_capacity(self.buckets.len());
        for bucket in &self.buckets {
            running += bucket.load(Ordering::Relaxed);
            cumulative.push(running);
        }
        HistogramValues {
            bounds: self.bounds,
            count: running,
            cumulative,
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_the_count_is_the_last() {
        let histogram = Histogram::new(&[0.1, 1.0]);
        histogram.observe(Duration::from_millis(50));
        histogram.observe(Duration::from_millis(100));
        histogram.observe(Duration::from_millis(500));
        histogram.observe(Duration::from_secs(5));
        let values = histogram.values();
        assert_eq!(values.cumulative, [2, 3, 4]);
        assert_eq!(values.count, 4);
        assert!((values.sum_seconds - 5.65).abs() < 1e-9);
    }
}
