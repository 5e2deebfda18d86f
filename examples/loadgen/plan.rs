//! What a run measures and how much: the sizes and durations of `--full` (the figures the issue
//! asks for) and `--quick` (the same phases, smaller, under a minute, for use while developing).

use std::time::Duration;

use serde::Serialize;

#[derive(Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Quick,
    Full,
}

pub struct Plan {
    pub mode: Mode,
    /// Not counted at the start of each throughput phase: connections open, caches warm.
    pub warmup: Duration,
    /// The measuring window of each throughput phase.
    pub window: Duration,
    /// Rounds of each paired comparison (server window next to ceiling window, FULL next to
    /// NORMAL); the round with the median ratio is reported.
    pub paired_rounds: usize,
    /// Sequential round trips against the bare server (the latency baseline).
    pub round_trips: usize,
    /// Jobs timed from 201 to `started_at`, one at a time.
    pub dispatch_jobs: usize,
    /// The backlog behind the memory figure.
    pub pending_jobs: u64,
    /// Rows in the database of the scale figures.
    pub scale_rows: u64,
    /// Requests per scale figure, over one keep-alive connection.
    pub scale_requests: usize,
    /// Jobs behind the scrape figures (`GET /metrics`, `GET /stats`), and requests per figure.
    /// A million in either mode: the target is for a million, and seeding takes seconds.
    pub scrape_rows: u64,
    pub scrape_requests: usize,
    /// The most one latency figure may take; a slow server gets fewer samples (the report
    /// says how many) instead of a run that blows its time budget.
    pub latency_deadline: Duration,
    /// How long the end-to-end phase may wait for its jobs to finish, and the backlog fill may
    /// take: bounds, not expectations.
    pub drain_deadline: Duration,
    pub fill_deadline: Duration,
    /// No-op jobs of each PostgreSQL end-to-end run, and how long submitting them and waiting
    /// for them may take.
    pub pg_jobs: u64,
    pub pg_drain_deadline: Duration,
    /// The longest wait for a server to go quiet before a window on another server.
    pub settle_deadline: Duration,
}

impl Plan {
    pub fn new(mode: Mode) -> Plan {
        match mode {
            Mode::Full => Plan {
                mode,
                warmup: Duration::from_millis(500),
                window: Duration::from_secs(5),
                paired_rounds: 5,
                round_trips: 2_000,
                dispatch_jobs: 1_000,
                pending_jobs: 100_000,
                scale_rows: 1_000_000,
                scale_requests: 1_000,
                scrape_rows: 1_000_000,
                scrape_requests: 2_000,
                latency_deadline: Duration::from_secs(60),
                drain_deadline: Duration::from_secs(120),
                fill_deadline: Duration::from_secs(180),
                settle_deadline: Duration::from_secs(15),
                pg_jobs: 10_000,
                pg_drain_deadline: Duration::from_secs(180),
            },
            Mode::Quick => Plan {
                mode,
                warmup: Duration::from_millis(500),
                window: Duration::from_secs(2),
                paired_rounds: 3,
                round_trips: 500,
                dispatch_jobs: 300,
                pending_jobs: 20_000,
                scale_rows: 100_000,
                scale_requests: 300,
                scrape_rows: 1_000_000,
                scrape_requests: 2_000,
                latency_deadline: Duration::from_secs(4),
                drain_deadline: Duration::from_secs(10),
                fill_deadline: Duration::from_secs(10),
                settle_deadline: Duration::from_secs(5),
                pg_jobs: 3_000,
                pg_drain_deadline: Duration::from_secs(60),
            },
        }
    }
}
