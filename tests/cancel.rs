//! Cancellation: `POST /jobs/:id/cancel` and the delete of a running job.

mod support;

use serde_json::{json, Value};
use support::*;

fn cancel(server: &TestServer, id: &str) -> Response {
    server.post_empty(&format!("/jobs/{id}/cancel"))
}

#[test]
fn a_pending_or_scheduled_job_is_cancelled_at_once_and_never_runs() {
    let server = TestServer::builder().env("WORKER_COUNT", "1").start();
    let blocker = server.submit(json!({"payload": {"duration_ms": 1500}}));
    server.wait_for_status(&blocker, "running", secs(5));
    let pending = server.submit(json!({"payload": {"duration_ms": 0}}));
    let scheduled = server.submit(json!({"payload": {"duration_ms": 0}, "delay_seconds": 1}));
    for id in [&pending, &scheduled] {
        let response = cancel(&server, id);
        assert_eq!(response.status, 200, "{}", response.text());
        let job = response.json();
        assert_eq!(job["status"], "cancelled");
        assert_eq!(job["error_message"], "cancelled by request");
        assert_eq!(job["started_at"], Value::Null);
        ts(&job, "finished_at");
    }
    server.wait_for_status(&blocker, "success", secs(5));
    // Past the scheduled time, with the worker free: still cancelled, no attempt made.
    assert_stays(secs(2), || {
        for id in [&pending, &scheduled] {
            let job = server.job(id);
            if job["status"] != "cancelled" || !job["started_at"].is_null() {
                return Err(format!("a cancelled job ran: {job}"));
            }
        }
        Ok(())
    });
    let attempts = server.get(&format!("/jobs/{pending}/attempts")).json();
    assert_eq!(attempts, json!([]));
    let (listed, _) = server.list("/jobs?status=cancelled");
    assert_eq!(listed.len(), 2);
}

#[test]
fn a_running_job_is_stopped_at_once_and_recorded_cancelled() {
    let server = TestServer::builder().env("WORKER_COUNT", "1").start();
    let id = server.submit(json!({"payload": {"duration_ms": 60000}, "timeout_seconds": 120}));
    server.wait_for_status(&id, "running", secs(5));
    let response = cancel(&server, &id);
    assert_eq!(response.status, 202, "{}", response.text());
    assert_eq!(response.json()["status"], "running");
    let job = server.wait_for_status(&id, "cancelled", secs(3));
    assert_eq!(job["error_message"], "cancelled by request");
    let attempts = server.get(&format!("/jobs/{id}/attempts")).json();
    assert_eq!(attempts[0]["status"], "cancelled", "{attempts}");
    // The worker is free again: the next job runs now, not in a minute.
    let next = server.submit(json!({"payload": {"duration_ms": 0}}));
    server.wait_for_status(&next, "success", secs(3));
    // A cancelled job can be retried.
    let retried = server.post_empty(&format!("/jobs/{id}/retry"));
    assert_eq!(retried.status, 202, "{}", retried.text());
}

#[test]
fn cancelling_a_finished_or_unknown_job_is_refused() {
    let server = TestServer::start();
    let done = server.submit(json!({"payload": {"duration_ms": 0}}));
    server.wait_for_status(&done, "success", secs(5));
    assert_error(&cancel(&server, &done), 409, "invalid_state");
    assert_eq!(server.job(&done)["status"], "success");
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_error(&cancel(&server, &unknown), 404, "not_found");
    let wrong_method = server.get(&format!("/jobs/{done}/cancel"));
    assert_error(&wrong_method, 405, "method_not_allowed");
    assert_eq!(wrong_method.header("Allow"), Some("POST"));
}

#[test]
fn deleting_a_running_job_stops_it_and_nothing_is_written_back() {
    let server = TestServer::builder().env("WORKER_COUNT", "1").start();
    let id = server.submit(json!({"payload": {"duration_ms": 60000}, "timeout_seconds": 120}));
    server.wait_for_status(&id, "running", secs(5));
    assert_eq!(server.delete(&format!("/jobs/{id}")).status, 204);
    // The single worker is free at once, and the deleted job does not come back.
    let next = server.submit(json!({"payload": {"duration_ms": 0}}));
    server.wait_for_status(&next, "success", secs(3));
    assert_error(&server.get(&format!("/jobs/{id}")), 404, "not_found");
    let (jobs, _) = server.list("/jobs");
    assert_eq!(jobs.len(), 1, "{jobs:?}");
}
