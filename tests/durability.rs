//! Group commit must keep the promise that a 201 means "on disk": many concurrent submits,
//! `kill -9` in the middle of them, and every job that was acknowledged is there after restart.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{eventually, Submitters, TestServer};

const SUBMITTERS: usize = 16;

/// A job that stays pending: only submits write while the server is killed.
fn scheduled_job(submitter: usize, n: usize) -> Value {
    json!({
        "payload": {"submitter": submitter, "n": n, "duration_ms": 0},
        "delay_seconds": 3600
    })
}

#[test]
fn every_acknowledged_job_survives_kill_9_during_concurrent_submits() {
    let mut server = TestServer::start();
    let submitters = Submitters::start(server.addr, SUBMITTERS, scheduled_job);
    eventually(Duration::from_secs(30), "300 jobs acknowledged", || {
        (submitters.acknowledged() >= 300).then_some(())
    });
    server.kill_9();
    let acknowledged = submitters.finish();

    server.restart();
    assert!(acknowledged.len() >= 300);
    let missing: Vec<&String> = acknowledged
        .iter()
        .filter(|id| server.get(&format!("/jobs/{id}")).status != 200)
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged jobs lost after kill -9: {:?}",
        missing.len(),
        acknowledged.len(),
        missing.iter().take(5).collect::<Vec<_>>()
    );
}
