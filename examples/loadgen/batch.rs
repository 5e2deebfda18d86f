//! The batch phases (`batch`, `pg-batch`): jobs per second submitted through `POST /jobs/batch`
//! in batches of 100 and of 1,000 from a few clients, next to the single-submit rate of the
//! same server in the same run, on SQLite and on PostgreSQL. One fresh server (and database)
//! per phase; the three windows run one after the other on it, the single submits first.

use crate::client;
use crate::error::{Error, Result};
use crate::load::{self, Outcome};
use crate::phases::{progress, Bench, Rate, SUBMIT_BODY};
use crate::report::{RatioStyle, Row};

/// Connections of the single-submit figure: the submit phase's smaller count.
const SINGLE_CONNECTIONS: usize = 16;
/// Connections sending batches: a few clients, each with a large unit of work.
const BATCH_CONNECTIONS: usize = 4;
/// The batch sizes measured.
const SIZES: [usize; 2] = [100, 1_000];

pub struct Batches {
    /// Jobs per second submitted one per request.
    pub single: Rate,
    /// Jobs per second submitted in batches of `SIZES[i]`.
    pub batched: Vec<(usize, Rate)>,
}

/// On SQLite: a fresh database file.
pub fn sqlite(bench: &mut Bench) -> Result<Batches> {
    let dir = bench.paths.fresh_dir("batch")?;
    let database = dir.join("bench.db");
    let url = format!("sqlite://{}", database.display());
    let server = bench.start_server_at("batch submits", &url, &dir.join("server.log"), &[])?;
    let measured = measure(bench, server.addr, "batch");
    server.stop()?;
    measured
}

/// On PostgreSQL: a fresh schema, dropped at the end.
pub fn postgres(bench: &mut Bench) -> Result<Batches> {
    let postgres = bench
        .postgres
        .as_ref()
        .ok_or_else(|| Error::new("PostgreSQL was not found usable"))?;
    let schema = postgres.fresh_schema("batch")?;
    let log = bench.paths.fresh_dir("pg-batch")?.join("server.log");
    let server = bench.start_server_at(
        "PostgreSQL batch submits",
        &schema.url(),
        &log,
        &[("NODE_ID", "bench-1")],
    )?;
    let measured = measure(bench, server.addr, "pg batch");
    server.stop()?;
    schema.drop_now()?;
    measured
}

fn measure(bench: &Bench, addr: std::net::SocketAddr, name: &str) -> Result<Batches> {
    progress(&format!(
        "{name}: single submits, {SINGLE_CONNECTIONS} connections"
    ));
    let single = client::request("POST", "/jobs", Some(SUBMIT_BODY));
    let single = load::run(addr, SINGLE_CONNECTIONS, &single, 201, bench.window())?;
    let mut batched = Vec::new();
    for size in SIZES {
        progress(&format!(
            "{name}: batches of {size}, {BATCH_CONNECTIONS} connections"
        ));
        let body = format!("{{\"jobs\":[{}]}}", vec![SUBMIT_BODY; size].join(","));
        let request = client::request("POST", "/jobs/batch", Some(&body));
        let outcome = load::run(addr, BATCH_CONNECTIONS, &request, 201, bench.window())?;
        batched.push((size, jobs_per_second(&outcome, size)));
    }
    Ok(Batches {
        single: jobs_per_second(&single, 1),
        batched,
    })
}

/// A request rate as jobs per second: `size` jobs in each request.
fn jobs_per_second(outcome: &Outcome, size: usize) -> Rate {
    let rate = Rate::from(outcome);
    Rate {
        per_second: rate.per_second * size as f64,
        ..rate
    }
}

/// The report's rows: each batch rate with the single-submit rate as its baseline (the ratio
/// reads "×"), and the single rate itself. `prefix` is `batch` or `pg_batch`.
pub fn rows(prefix: &'static str, label: &str, batches: Option<&Batches>) -> Vec<Row> {
    let single = batches.map(|batches| &batches.single);
    let mut rows = vec![rate_row(
        if prefix == "batch" {
            "batch_single"
        } else {
            "pg_batch_single"
        },
        format!("{label}: single submits, {SINGLE_CONNECTIONS} conns (jobs/s)"),
        single,
    )];
    for (index, size) in SIZES.into_iter().enumerate() {
        let rate = batches
            .and_then(|batches| batches.batched.get(index))
            .map(|(_, rate)| rate);
        let key = match (prefix, size) {
            ("batch", 100) => "batch_100",
            ("batch", _) => "batch_1000",
            (_, 100) => "pg_batch_100",
            _ => "pg_batch_1000",
        };
        rows.push(
            rate_row(
                key,
                format!("{label}: batches of {size}, {BATCH_CONNECTIONS} conns (jobs/s)"),
                rate,
            )
            .baseline(
                "single submits",
                single.map(|rate| rate.per_second),
                RatioStyle::Times,
            ),
        );
    }
    rows
}

fn rate_row(key: &'static str, figure: String, rate: Option<&Rate>) -> Row {
    Row::new(key, figure, rate.map(|rate| rate.per_second), "jobs/s").errors(
        rate.map_or(0, |rate| rate.errors),
        rate.and_then(|rate| rate.first_error.as_deref()),
    )
}
