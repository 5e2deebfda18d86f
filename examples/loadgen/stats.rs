//! Latency summaries: percentiles by nearest rank over every sample (no histogram buckets, so
//! a p99 over 1,000 samples is the 990th smallest value, exactly).

use serde::Serialize;

#[derive(Clone, Copy, Debug, Serialize)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub samples: usize,
}

impl Percentiles {
    /// `None` for an empty sample: a figure without data must not read as zero.
    pub fn of(mut samples_ms: Vec<f64>) -> Option<Percentiles> {
        if samples_ms.is_empty() {
            return None;
        }
        samples_ms.sort_by(f64::total_cmp);
        Some(Percentiles {
            p50_ms: rank(&samples_ms, 0.50),
            p99_ms: rank(&samples_ms, 0.99),
            max_ms: samples_ms[samples_ms.len() - 1],
            samples: samples_ms.len(),
        })
    }
}

/// Nearest rank: the smallest value with at least `fraction` of the samples at or below it.
fn rank(sorted: &[f64], fraction: f64) -> f64 {
    let position = (fraction * sorted.len() as f64).ceil() as usize;
    sorted[position.clamp(1, sorted.len()) - 1]
}
