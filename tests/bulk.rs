//! Bulk actions: `POST /jobs/retry`, `POST /jobs/cancel`, `POST /jobs/delete` with a filter.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::thread;

use serde_json::{json, Value};
use support::*;

/// A job that waits an hour before it is due: it stays pending until acted on.
fn later(queue: &str) -> Value {
    json!({"payload": {"duration_ms": 0}, "queue": queue, "delay_seconds": 3600})
}

fn bulk(server: &TestServer, action: &str, filter: Value) -> u64 {
    let response = server.post_json(&format!("/jobs/{action}"), &filter);
    assert_eq!(
        response.status,
        200,
        "{action} {filter}: {}",
        response.text()
    );
    assert_eq!(
        response.json().as_object().unwrap().len(),
        1,
        "{}",
        response.text()
    );
    response.json()["affected"]
        .as_u64()
        .unwrap_or_else(|| panic!("no affected count in {}", response.text()))
}

/// The status of every stored job, by id, read page by page through `GET /jobs`.
fn statuses(server: &TestServer) -> BTreeMap<String, String> {
    let mut all = BTreeMap::new();
    let mut path = "/jobs?limit=1000".to_string();
    loop {
        let (jobs, response) = server.list(&path);
        for job in &jobs {
            all.insert(
                job["id"].as_str().unwrap().to_string(),
                job["status"].as_str().unwrap().to_string(),
            );
        }
        match response.header("Link") {
            Some(link) => {
                path = link
                    .trim_start_matches('<')
                    .split('>')
                    .next()
                    .unwrap()
                    .to_string()
            }
            None => return all,
        }
    }
}

fn status_of(server: &TestServer, id: &str) -> String {
    server.job(id)["status"].as_str().unwrap().to_string()
}

#[test]
fn each_action_applies_to_the_jobs_a_filter_matches_that_it_can_apply_to() {
    let server = TestServer::start();
    let emails: Vec<String> = (0..3).map(|_| server.submit(later("emails"))).collect();
    let reports: Vec<String> = (0..2).map(|_| server.submit(later("reports"))).collect();
    let done = server.submit(json!({"payload": {"duration_ms": 0}, "queue": "emails"}));
    server.wait_for_status(&done, "success", secs(10));

    // Cancel by queue: the three pending jobs; the succeeded one is skipped.
    assert_eq!(bulk(&server, "cancel", json!({"queue": "emails"})), 3);
    for id in &emails {
        assert_eq!(status_of(&server, id), "cancelled");
        assert_eq!(server.job(id)["error_message"], "cancelled by request");
    }
    assert_eq!(status_of(&server, &done), "success");
    assert_eq!(status_of(&server, &reports[0]), "pending");
    // Nothing left to cancel there.
    assert_eq!(bulk(&server, "cancel", json!({"queue": "emails"})), 0);
    // Retry by status: cancelled jobs start over, due now, and run.
    assert_eq!(bulk(&server, "retry", json!({"status": "cancelled"})), 3);
    for id in &emails {
        let job = server.wait_for_status(id, "success", secs(10));
        assert_eq!(job["retry_count"], 0, "{job}");
    }
    // Retry of a status it cannot apply to matches nothing.
    assert_eq!(bulk(&server, "retry", json!({"status": "success"})), 0);
    assert_eq!(bulk(&server, "retry", json!({"queue": "reports"})), 0);
    // Delete by ids, any status; an id of no job is skipped.
    let ids = json!([
        emails[0],
        reports[0],
        "0192f6c4-0000-7000-8000-000000000001"
    ]);
    assert_eq!(bulk(&server, "delete", json!({ "ids": ids })), 2);
    assert_error(
        &server.get(&format!("/jobs/{}", emails[0])),
        404,
        "not_found",
    );
    assert_error(
        &server.get(&format!("/jobs/{}", reports[0])),
        404,
        "not_found",
    );
    assert_eq!(server.attempts(&emails[1]).len(), 1);
    // Delete by status and queue together.
    assert_eq!(
        bulk(
            &server,
            "delete",
            json!({"status": "success", "queue": "emails"})
        ),
        3
    );
    let left = statuses(&server);
    assert_eq!(
        left,
        BTreeMap::from([(reports[1].clone(), "pending".to_string())])
    );
    assert_eq!(bulk(&server, "delete", json!({"queue": "nothing-here"})), 0);
    assert_eq!(bulk(&server, "cancel", json!({"ids": []})), 0);
}

#[test]
fn filters_by_function_and_combined_filters_match_every_field() {
    let dir = unique_temp_dir();
    for name in ["send", "render"] {
        let path = dir.join(name);
        fs::write(&path, "#!/bin/sh\ncat\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let server = TestServer::builder()
        .env("FUNCTIONS_DIR", dir.to_str().unwrap())
        .start();
    let job = |function: &str, queue: &str| {
        server.submit(json!({"function": function, "payload": {}, "queue": queue,
                             "delay_seconds": 3600}))
    };
    let send_a = job("send", "a");
    let send_b = job("send", "b");
    let render_a = job("render", "a");
    let simulated_a = server.submit(later("a"));

    assert_eq!(
        bulk(&server, "cancel", json!({"function": "send", "queue": "a"})),
        1
    );
    assert_eq!(status_of(&server, &send_a), "cancelled");
    assert_eq!(status_of(&server, &send_b), "pending");
    assert_eq!(bulk(&server, "cancel", json!({"function": "send"})), 1);
    assert_eq!(status_of(&server, &send_b), "cancelled");
    // Ids with other fields: only those of the ids that match them all.
    let ids = json!([send_a, send_b, render_a, simulated_a]);
    assert_eq!(
        bulk(
            &server,
            "cancel",
            json!({"ids": ids, "queue": "a", "status": "pending"})
        ),
        2
    );
    assert_eq!(status_of(&server, &render_a), "cancelled");
    assert_eq!(status_of(&server, &simulated_a), "cancelled");
    assert_eq!(
        bulk(&server, "delete", json!({"ids": ids, "function": "render"})),
        1
    );
    assert_eq!(
        bulk(
            &server,
            "retry",
            json!({"function": "send", "status": "failed"})
        ),
        0
    );
    assert_eq!(bulk(&server, "delete", json!({"function": "send"})), 2);
    assert_eq!(
        statuses(&server),
        BTreeMap::from([(simulated_a.clone(), "cancelled".to_string())])
    );
    drop(server);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_filter_is_refused_and_changes_nothing() {
    let server = TestServer::start();
    let id = server.submit(later("default"));
    for (filter, start) in [
        (
            json!({}),
            "give at least one of status, queue, function, ids",
        ),
        (json!({"state": "failed"}), "unknown field \"state\""),
        (json!({"status": "lost"}), "status must be one of"),
        (json!({"ids": ["nope"]}), "ids[0] must be a job id"),
        (json!({"queue": "No Such"}), "queue must be"),
        (json!({"status": null}), "status must be a string"),
    ] {
        for action in ["retry", "cancel", "delete"] {
            let response = server.post_json(&format!("/jobs/{action}"), &filter);
            let message = assert_error(&response, 400, "validation_error");
            assert!(message.starts_with(start), "{filter}: {message}");
        }
    }
    let too_many: Vec<String> = (0..1001)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    let response = server.post_json("/jobs/delete", &json!({ "ids": too_many }));
    assert_error(&response, 400, "validation_error");
    assert_error(&server.post_empty("/jobs/delete"), 400, "invalid_json");
    // The bulk paths are not job ids.
    for action in ["retry", "cancel", "delete"] {
        let response = server.get(&format!("/jobs/{action}"));
        assert_error(&response, 405, "method_not_allowed");
        assert_eq!(response.header("Allow"), Some("POST"));
    }
    assert_eq!(status_of(&server, &id), "pending");
}

#[test]
fn running_jobs_are_stopped_by_a_bulk_cancel_and_a_bulk_delete() {
    let server = TestServer::builder().env("WORKER_COUNT", "3").start();
    let long =
        || server.submit(json!({"payload": {"duration_ms": 60_000}, "timeout_seconds": 120}));
    let (first, second, third) = (long(), long(), long());
    for id in [&first, &second, &third] {
        server.wait_for_status(id, "running", secs(10));
    }
    assert_eq!(bulk(&server, "cancel", json!({"ids": [first, second]})), 2);
    for id in [&first, &second] {
        let job = server.wait_for_status(id, "cancelled", secs(10));
        assert!(job["error_message"].is_string(), "{job}");
        let attempts = server.attempts(id);
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0]["status"], "cancelled", "{attempts:?}");
    }
    assert_eq!(status_of(&server, &third), "running");
    // A delete stops the attempt too: all three workers are free again at once.
    assert_eq!(bulk(&server, "delete", json!({"status": "running"})), 1);
    assert_error(&server.get(&format!("/jobs/{third}")), 404, "not_found");
    let next: Vec<String> = (0..3)
        .map(|_| server.submit(json!({"payload": {"duration_ms": 30_000}})))
        .collect();
    for id in &next {
        server.wait_for_status(id, "running", secs(10));
    }
}

#[test]
fn thousands_of_jobs_are_acted_on_in_batches_with_exact_counts() {
    const JOBS: usize = 2_500;
    let server = TestServer::start();
    let addr = server.addr;
    let submitters: Vec<_> = (0..8)
        .map(|worker| {
            thread::spawn(move || {
                (0..JOBS)
                    .filter(|n| n % 8 == worker)
                    .map(|_| {
                        let body = serde_json::to_vec(&later("bulk")).unwrap();
                        let response = request(
                            addr,
                            "POST",
                            "/jobs",
                            &[("Content-Type", "application/json")],
                            Some(&body),
                        );
                        assert_eq!(response.status, 201, "{}", response.text());
                        response.json()["job_id"].as_str().unwrap().to_string()
                    })
                    .collect::<Vec<String>>()
            })
        })
        .collect();
    let ids: Vec<String> = submitters
        .into_iter()
        .flat_map(|submitter| submitter.join().unwrap())
        .collect();
    assert_eq!(ids.len(), JOBS);
    let other = server.submit(later("other"));

    // An outage's worth of jobs: cancelled, then every one retried by one request.
    assert_eq!(
        bulk(&server, "cancel", json!({"queue": "bulk"})),
        JOBS as u64
    );
    let after_cancel = statuses(&server);
    assert_eq!(after_cancel.len(), JOBS + 1);
    assert!(ids.iter().all(|id| after_cancel[id] == "cancelled"));
    assert_eq!(after_cancel[&other], "pending");
    assert_eq!(
        bulk(
            &server,
            "retry",
            json!({"queue": "bulk", "status": "cancelled"})
        ),
        JOBS as u64
    );
    // Retried, they are due now and run to the end.
    eventually(secs(60), "every retried job to succeed", || {
        let now = statuses(&server);
        ids.iter().all(|id| now[id] == "success").then_some(())
    });
    assert_eq!(status_of(&server, &other), "pending");
    assert_eq!(
        bulk(&server, "delete", json!({"status": "success"})),
        JOBS as u64
    );
    assert_eq!(
        statuses(&server),
        BTreeMap::from([(other.clone(), "pending".to_string())])
    );
}
