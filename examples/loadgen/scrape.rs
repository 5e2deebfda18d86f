//! The scrape phase: what `GET /metrics` and `GET /stats` cost with a million jobs. The
//! database is seeded with `scrape_rows` jobs over four queues, ended in every status and 5%
//! of them pending (due: the oldest-pending gauges have something to find); the queues are
//! paused first, so the server starts no work and the figures are the cost of reading alone.
//! Each endpoint is then timed over `scrape_requests` sequential requests on one keep-alive
//! connection.

use std::time::Duration;

use crate::client::{self, Connection};
use crate::error::{Context, Error, Result};
use crate::phases::{json, latency_within, progress, wait_healthy, Bench, Latency};
use crate::seed::{self, Mix};

const QUEUES: &[&str] = &["default", "emails", "reports", "webhooks"];
const MIX: Mix = Mix {
    queues: QUEUES,
    pending_percent: 5,
    cancelled_percent: 2,
};
/// The most one endpoint's figure may take.
const DEADLINE: Duration = Duration::from_secs(60);

pub struct Scrape {
    pub rows: u64,
    pub seed_seconds: f64,
    /// Bytes of one scrape.
    pub scrape_bytes: usize,
    pub metrics: Latency,
    pub stats: Latency,
}

pub fn scrape(bench: &mut Bench) -> Result<Scrape> {
    let database = bench.fresh_database("scrape")?;
    // The server makes its schema and the paused queues' settings; the jobs then go in
    // behind its back, while it is stopped (as for scale).
    let server = bench.start_server("scrape, creating the schema", &database, &[])?;
    let mut connection = Connection::open(server.addr).context("cannot connect")?;
    for queue in QUEUES {
        let pause = client::request("POST", &format!("/queues/{queue}/pause"), None);
        let status = connection
            .exchange(&pause)
            .context(format!("cannot pause {queue}"))?;
        if status != 200 {
            return Err(Error::new(format!("pausing {queue} answered {status}")));
        }
    }
    drop(connection);
    server.stop()?;
    let rows = bench.plan.scrape_rows;
    progress(&format!(
        "scrape: inserting {rows} jobs over {} queues",
        QUEUES.len()
    ));
    let seeded = seed::fill_with(&database, rows, &mut bench.rng, &MIX)?;

    // Retention off: the oldest of the seeded jobs ended weeks ago, and pruning them would
    // both change the counts and load the server while it is timed.
    let server = bench.start_server("scrape", &database, &[("JOB_RETENTION_SECONDS", "0")])?;
    wait_healthy(&server)?;
    let scrape_bytes = check_counts(server.addr, rows)?;
    progress("scrape: GET /metrics and GET /stats latencies");
    let count = bench.plan.scrape_requests;
    let metrics = latency_within(
        server.addr,
        &[client::request("GET", "/metrics", None)],
        200,
        count,
        DEADLINE,
    )?;
    let stats = latency_within(
        server.addr,
        &[client::request("GET", "/stats", None)],
        200,
        count,
        DEADLINE,
    )?;
    server.stop()?;
    Ok(Scrape {
        rows: seeded.rows,
        seed_seconds: seeded.elapsed.as_secs_f64(),
        scrape_bytes,
        metrics,
        stats,
    })
}

/// The figures are worth something only if the answers count the million: `/stats` adds up
/// to every job, with pending jobs in each queue and a due one's age, and the scrape has
/// the per-queue gauges. Returns the scrape's size.
fn check_counts(addr: std::net::SocketAddr, rows: u64) -> Result<usize> {
    let mut connection = Connection::open(addr).context("cannot connect")?;
    let status = connection
        .exchange(&client::request("GET", "/stats", None))
        .context("GET /stats")?;
    let stats = json(connection.body())?;
    let total: u64 = stats["jobs"]
        .as_object()
        .map(|counts| counts.values().filter_map(|n| n.as_u64()).sum())
        .unwrap_or(0);
    let queues = stats["queues"].as_array().map_or(0, Vec::len);
    let aged = stats["queues"].as_array().is_some_and(|all| {
        all.iter()
            .all(|q| q["oldest_pending_age_seconds"].as_f64() > Some(0.0))
    });
    if status != 200 || total != rows || queues != QUEUES.len() || !aged {
        return Err(Error::new(format!(
            "GET /stats answered {status} with {total} jobs in {queues} queues (expected {rows} in {}, each with a due pending job): {}",
            QUEUES.len(),
            crate::load::snippet(connection.body())
        )));
    }
    let status = connection
        .exchange(&client::request("GET", "/metrics", None))
        .context("GET /metrics")?;
    let text = String::from_utf8_lossy(connection.body()).into_owned();
    let gauge = "minilambda_jobs{queue=\"webhooks\",status=\"pending\"}";
    if status != 200 || !text.contains(gauge) {
        return Err(Error::new(format!(
            "GET /metrics answered {status} without {gauge}"
        )));
    }
    Ok(text.len())
}
