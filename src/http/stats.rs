//! `GET /stats`: the dashboard's counters as JSON, from counters only (the queue counters,
//! index seeks for the oldest pending jobs, `finished_minutes`), never a scan of jobs.
//! Documented as the `Stats` schema in `openapi.json`.

use serde::Serialize;

use crate::error::Result;
use crate::http::handlers::AppState;
use crate::http::metrics::queue_gauges;
use crate::http::response::ApiResponse;
use crate::job::JobStatus;
use crate::metrics::{unix_minute, MinuteCounts};
use crate::queue_settings::QueueCounts;
use crate::time::Timestamp;

/// Minutes in `finished_per_minute`: the last hour, the current minute last.
const MINUTES: i64 = 60;

/// Keys in the documented order.
#[derive(Serialize)]
struct Stats<'a> {
    generated_at: Timestamp,
    node: &'a str,
    jobs: QueueCounts,
    queues: Vec<QueueStats>,
    workers: Workers,
    finished_per_minute: Vec<Minute>,
}

#[derive(Serialize)]
struct QueueStats {
    name: String,
    paused: bool,
    concurrency: Option<u32>,
    rate_per_second: Option<f64>,
    counts: QueueCounts,
    oldest_pending_age_seconds: f64,
}

#[derive(Serialize)]
struct Workers {
    total: usize,
    busy: usize,
}

/// One minute's ends; `failed` counts failed and timed-out jobs.
#[derive(Serialize)]
struct Minute {
    minute: Timestamp,
    succeeded: u64,
    failed: u64,
    cancelled: u64,
}

pub fn stats(state: &AppState) -> Result<ApiResponse> {
    let now = Timestamp::now();
    let queues = queue_gauges(state, now)?;
    let mut jobs = QueueCounts::default();
    for queue in &queues {
        for status in JobStatus::ALL {
            jobs.add(
                status,
                i64::try_from(queue.counts.get(status)).unwrap_or(i64::MAX),
            );
        }
    }
    let current = unix_minute(now);
    let first = current - (MINUTES - 1);
    let finished = state.queue.finished_since(first)?;
    let stats = Stats {
        generated_at: now,
        node: state.queue.node(),
        jobs,
        queues: queues
            .into_iter()
            .map(|queue| QueueStats {
                name: queue.name,
                paused: queue.paused,
                concurrency: queue.concurrency,
                rate_per_second: queue.rate_per_second,
                counts: queue.counts,
                oldest_pending_age_seconds: queue.oldest_pending_age_seconds,
            })
            .collect(),
        workers: Workers {
            total: state.workers,
            busy: state.queue.busy_workers(),
        },
        finished_per_minute: (first..=current)
            .map(|minute| minute_of(&finished, minute))
            .collect(),
    };
    Ok(ApiResponse::json(200, &stats))
}

fn minute_of(finished: &MinuteCounts, minute: i64) -> Minute {
    let n = |status| finished.get(&(minute, status)).copied().unwrap_or(0);
    Minute {
        minute: Timestamp::from_micros(minute * 60_000_000),
        succeeded: n(JobStatus::Success),
        failed: n(JobStatus::Failed) + n(JobStatus::Timeout),
        cancelled: n(JobStatus::Cancelled),
    }
}
