//! `MAX_PENDING_JOBS`: backpressure at submit. Beyond the limit a submit is `429 queue_full`
//! with `Retry-After`, nothing is stored, and the limit holds exactly under concurrency.

mod support;

use std::sync::{Arc, Barrier};
use std::thread;

use serde_json::json;
use support::{assert_error, request, Response, TestServer};

/// Scheduled an hour ahead, so the job stays pending for the whole test.
fn submit_for_later(server: &TestServer, n: usize) -> Response {
    server.post_json(
        "/jobs",
        &json!({"payload": {"n": n}, "delay_seconds": 3600}),
    )
}

fn assert_queue_full(response: &Response) {
    let message = assert_error(response, 429, "queue_full");
    assert!(message.contains("MAX_PENDING_JOBS"), "{message}");
    assert_eq!(response.header("retry-after"), Some("5"));
}

fn stored_jobs(server: &TestServer) -> usize {
    server.list("/jobs?limit=1000").0.len()
}

#[test]
fn a_submit_beyond_max_pending_jobs_is_429_with_retry_after_and_stores_nothing() {
    let server = TestServer::builder().env("MAX_PENDING_JOBS", "3").start();
    let ids: Vec<String> = (0..3)
        .map(|n| {
            let response = submit_for_later(&server, n);
            assert_eq!(response.status, 201, "{}", response.text());
            response.json()["job_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_queue_full(&submit_for_later(&server, 3));
    assert_eq!(stored_jobs(&server), 3);

    // A cancelled job is no longer pending: there is room for one more.
    assert_eq!(
        server
            .post_empty(&format!("/jobs/{}/cancel", ids[0]))
            .status,
        200
    );
    assert_eq!(submit_for_later(&server, 4).status, 201);
    assert_queue_full(&submit_for_later(&server, 5));
    // So is a deleted one.
    assert_eq!(server.delete(&format!("/jobs/{}", ids[1])).status, 204);
    assert_eq!(submit_for_later(&server, 6).status, 201);
    assert_queue_full(&submit_for_later(&server, 7));
    // Stored: the cancelled job, one of the first three, and the two that found room.
    assert_eq!(stored_jobs(&server), 4);
    let (pending, _) = server.list("/jobs?status=pending");
    assert_eq!(pending.len(), 3);
}

#[test]
fn concurrent_submits_never_pass_max_pending_jobs() {
    let server = TestServer::builder().env("MAX_PENDING_JOBS", "10").start();
    let start = Arc::new(Barrier::new(20));
    let submitters: Vec<_> = (0..20)
        .map(|n| {
            let (start, addr) = (Arc::clone(&start), server.addr);
            thread::spawn(move || {
                let body = json!({"payload": {"n": n}, "delay_seconds": 3600}).to_string();
                start.wait();
                request(
                    addr,
                    "POST",
                    "/jobs",
                    &[("Content-Type", "application/json")],
                    Some(body.as_bytes()),
                )
            })
        })
        .collect();
    let responses: Vec<Response> = submitters
        .into_iter()
        .map(|submitter| submitter.join().unwrap())
        .collect();
    let accepted = responses.iter().filter(|r| r.status == 201).count();
    for refused in responses.iter().filter(|r| r.status != 201) {
        assert_queue_full(refused);
    }
    assert_eq!(accepted, 10);
    assert_eq!(stored_jobs(&server), 10);
}

#[test]
fn max_pending_jobs_0_means_no_limit() {
    let server = TestServer::builder().env("MAX_PENDING_JOBS", "0").start();
    for n in 0..5 {
        assert_eq!(submit_for_later(&server, n).status, 201);
    }
    assert_eq!(stored_jobs(&server), 5);
}
