//! A crash loop: the server is killed with `kill -9` over and over while clients submit and
//! workers run jobs, then restarted once more and left to drain. No acknowledged job may be
//! lost, no job may stay `pending` or `running`, and the database file must be intact.
//!
//! 10 cycles by default; `CHAOS_CYCLES=100` (what `make chaos` runs) for the long version.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{eventually, Submitters, TestServer};

const DEFAULT_CYCLES: usize = 10;
const SUBMITTERS: usize = 8;

fn cycles() -> usize {
    match std::env::var("CHAOS_CYCLES") {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("CHAOS_CYCLES must be a number, got {value:?}")),
        Err(_) => DEFAULT_CYCLES,
    }
}

/// A job that is due at once and ends within 20 ms, so that kills land among submits, claims,
/// outcomes and retries alike, and the final drain is quick. Every fifth one fails once and
/// is retried.
fn quick_job(submitter: usize, n: usize) -> Value {
    json!({
        "payload": {"submitter": submitter, "n": n, "duration_ms": n % 3 * 10, "should_fail": n.is_multiple_of(5)},
        "max_retries": 1
    })
}

/// Whether the server lists no job with `status`.
fn none_with_status(server: &TestServer, status: &str) -> bool {
    server
        .list(&format!("/jobs?status={status}&limit=1"))
        .0
        .is_empty()
}

#[test]
fn repeated_kill_9_under_concurrent_submits_loses_no_job_and_leaves_none_unfinished() {
    let started = Instant::now();
    let cycles = cycles();
    // SQLite: the end checks the database file itself.
    let mut server = TestServer::builder()
        .sqlite()
        // Jobs a crash interrupts come back after a short backoff, so the drain stays short.
        .env("RETRY_BACKOFF_MS", "10")
        .env("RETRY_BACKOFF_MAX_MS", "50")
        .start();
    let mut acknowledged = Vec::new();
    for cycle in 0..cycles {
        let submitters = Submitters::start(server.addr, SUBMITTERS, quick_job);
        // A different moment in each cycle: 10 to 89 acknowledgements in.
        let kill_after = 10 + (cycle * 37) % 80;
        eventually(
            Duration::from_secs(30),
            &format!("{kill_after} jobs acknowledged in cycle {cycle}"),
            || (submitters.acknowledged() >= kill_after).then_some(()),
        );
        server.kill_9();
        acknowledged.extend(submitters.finish());
        server.restart();
    }

    eventually(
        Duration::from_secs(60),
        "every job finished after the last restart",
        || {
            (none_with_status(&server, "pending") && none_with_status(&server, "running"))
                .then_some(())
        },
    );
    server.kill_9();

    let db = rusqlite::Connection::open(server.db_path()).unwrap();
    let integrity: String = db
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    let mut statement = db.prepare("SELECT id, status FROM jobs").unwrap();
    let rows: Vec<(String, String)> = statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    let stored: HashSet<&str> = rows.iter().map(|(id, _)| id.as_str()).collect();
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|id| !stored.contains(id.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged jobs lost over {cycles} kill -9 cycles: {:?}",
        lost.len(),
        acknowledged.len(),
        lost.iter().take(5).collect::<Vec<_>>()
    );
    let unfinished: Vec<&(String, String)> = rows
        .iter()
        .filter(|(_, status)| status == "pending" || status == "running")
        .collect();
    assert!(unfinished.is_empty(), "{unfinished:?}");
    eprintln!(
        "{cycles} kill -9 cycles, {} jobs acknowledged, {} stored, in {:?}",
        acknowledged.len(),
        rows.len(),
        started.elapsed()
    );
}
