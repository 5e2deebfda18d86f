//! `GET /metrics`: the Prometheus text exposition of `crate::metrics`, with the gauges read
//! at the scrape from the store's counters (never a scan of jobs): the queue counters, one
//! index seek per priority for each queue with pending jobs, and the database's size.

use log::warn;

use crate::error::Result;
use crate::http::handlers::AppState;
use crate::http::response::ApiResponse;
use crate::metrics::{Gauges, QueueGauges, CONTENT_TYPE};
use crate::time::Timestamp;

pub fn metrics(state: &AppState) -> Result<ApiResponse> {
    let gauges = Gauges {
        queues: queue_gauges(state, Timestamp::now())?,
        workers: state.workers,
        workers_busy: state.queue.busy_workers(),
        // A size the database cannot tell leaves the gauge out; the rest is still worth a scrape.
        db_size_bytes: state
            .queue
            .database_size()
            .inspect_err(|err| warn!("metrics: cannot read the database's size: {err}"))
            .ok(),
    };
    let text = state.queue.metrics().render(&gauges);
    Ok(ApiResponse::text(200, CONTENT_TYPE, text))
}

/// Every queue's counts, pause and oldest pending age, as of `now`.
pub fn queue_gauges(state: &AppState, now: Timestamp) -> Result<Vec<QueueGauges>> {
    state
        .queue
        .queues()?
        .into_iter()
        .map(|queue| {
            Ok(QueueGauges {
                oldest_pending_age_seconds: state.queue.oldest_pending_age_seconds(&queue, now)?,
                name: queue.name,
                paused: queue.paused,
                counts: queue.counts,
                concurrency: queue.concurrency,
                rate_per_second: queue.rate_per_second,
            })
        })
        .collect()
}
