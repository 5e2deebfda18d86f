//! `POST /jobs/batch`: 1 to 1,000 submit bodies stored all or none, answered in request order;
//! an invalid item names its index; `MAX_PENDING_JOBS` applies to the batch as a whole.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{assert_error, assert_json_content_type, Response, TestServer};

/// Scheduled an hour ahead, so the job stays pending for the whole test.
fn later(n: usize) -> Value {
    json!({"payload": {"n": n}, "delay_seconds": 3600})
}

fn post_batch(server: &TestServer, body: &Value) -> Response {
    server.post_json("/jobs/batch", body)
}

/// Every stored job, newest first.
fn stored(server: &TestServer) -> Vec<Value> {
    server.list("/jobs?limit=1000").0
}

/// The ids of a `201` batch answer, checking its exact shape.
fn created_ids(response: &Response, count: usize) -> Vec<String> {
    assert_eq!(response.status, 201, "{}", response.text());
    assert_json_content_type(response);
    let body = response.json();
    let object = body.as_object().unwrap();
    assert_eq!(object.keys().collect::<Vec<_>>(), ["jobs"], "{body}");
    let jobs = body["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), count, "{body}");
    jobs.iter()
        .map(|job| {
            let keys: Vec<&String> = job.as_object().unwrap().keys().collect();
            assert_eq!(keys, ["job_id", "status"], "{job}");
            assert_eq!(job["status"], "pending", "{job}");
            job["job_id"].as_str().unwrap().to_string()
        })
        .collect()
}

#[test]
fn a_batch_stores_every_job_and_answers_their_ids_in_request_order() {
    let server = TestServer::start();
    let items = json!([
        {"payload": {"n": 0}, "delay_seconds": 3600, "priority": 7},
        {"payload": "text", "delay_seconds": 3600, "max_retries": 0, "timeout_seconds": 9},
        {"payload": [1, 2], "run_at": "2099-01-01T00:00:00Z", "queue": "emails"},
    ]);
    let response = post_batch(&server, &json!({"jobs": items}));
    let ids = created_ids(&response, 3);
    assert!(response.header("location").is_none());

    let jobs: Vec<Value> = ids.iter().map(|id| server.job(id)).collect();
    assert_eq!(jobs[0]["payload"], json!({"n": 0}));
    assert_eq!(jobs[0]["priority"], 7);
    assert_eq!(jobs[1]["payload"], "text");
    assert_eq!(
        (
            jobs[1]["max_retries"].clone(),
            jobs[1]["timeout_seconds"].clone()
        ),
        (json!(0), json!(9))
    );
    assert_eq!(jobs[2]["payload"], json!([1, 2]));
    assert_eq!(jobs[2]["run_at"], "2099-01-01T00:00:00.000000Z");
    assert_eq!(jobs[2]["queue"], "emails");
    for job in &jobs {
        assert_eq!(job["status"], "pending");
        assert_eq!(
            job["created_at"], jobs[0]["created_at"],
            "one submit, one time"
        );
    }
    // Stored in request order: the listing (newest first) is the reverse.
    let listed: Vec<String> = stored(&server)
        .iter()
        .map(|job| job["id"].as_str().unwrap().to_string())
        .collect();
    let mut reversed = ids.clone();
    reversed.reverse();
    assert_eq!(listed, reversed);
}

#[test]
fn an_invalid_item_is_400_naming_its_index_and_stores_nothing() {
    let server = TestServer::start();
    let mut items: Vec<Value> = (0..5).map(later).collect();
    items[3]["timeout_seconds"] = json!(0);
    let message = assert_error(
        &post_batch(&server, &json!({"jobs": items})),
        400,
        "validation_error",
    );
    assert_eq!(
        message,
        "jobs[3].timeout_seconds must be an integer from 1 to 86400, got 0"
    );

    let cases = [
        (json!({"delay_seconds": 1}), 0, "validation_error", "jobs[0].payload is required and must not be null"),
        (json!({"payload": 1, "extra": true}), 1, "validation_error", "jobs[1]: unknown field \"extra\"; allowed fields are payload, function, timeout_seconds, max_retries, priority, run_at, delay_seconds, queue"),
        (json!({"payload": {"duration_ms": -1}}), 2, "validation_error", "jobs[2].payload.duration_ms must be an integer from 0 to 86400000, got -1"),
        (json!({"payload": 1, "function": "missing"}), 4, "unknown_function", "jobs[4]: no function named \"missing\" in FUNCTIONS_DIR; GET /functions lists them"),
        (json!("not an object"), 1, "validation_error", "jobs[1] must be a JSON object with a \"payload\" field"),
    ];
    for (bad, index, code, expected) in cases {
        let mut items: Vec<Value> = (0..5).map(later).collect();
        items[index] = bad;
        let message = assert_error(&post_batch(&server, &json!({"jobs": items})), 400, code);
        assert_eq!(message, expected);
    }
    assert!(stored(&server).is_empty());
}

#[test]
fn a_batch_of_1000_jobs_is_stored_and_one_of_1001_is_refused() {
    let server = TestServer::start();
    let items: Vec<Value> = (0..1000).map(later).collect();
    let ids = created_ids(&post_batch(&server, &json!({"jobs": items})), 1000);
    let (listed, response) = server.list("/jobs?limit=1000");
    assert_eq!(listed.len(), 1000);
    assert!(response.header("link").is_none(), "exactly 1000 stored");
    assert_eq!(listed[0]["id"], ids[999].as_str());
    assert_eq!(listed[999]["id"], ids[0].as_str());
    assert_eq!(listed[500]["payload"], json!({"n": 499}));

    let items: Vec<Value> = (0..1001).map(later).collect();
    let message = assert_error(
        &post_batch(&server, &json!({"jobs": items})),
        400,
        "validation_error",
    );
    assert_eq!(message, "jobs must hold 1 to 1000 submit bodies, got 1001");
    assert_eq!(stored(&server).len(), 1000);
}

#[test]
fn a_body_that_is_not_a_list_of_jobs_is_400() {
    let server = TestServer::start();
    let cases = [
        (
            json!({"jobs": []}),
            "jobs must hold 1 to 1000 submit bodies, got 0",
        ),
        (
            json!({}),
            "jobs is required: an array of 1 to 1000 submit bodies",
        ),
        (
            json!({"jobs": null}),
            "jobs is required: an array of 1 to 1000 submit bodies",
        ),
        (
            json!({"jobs": {"payload": 1}}),
            "jobs must be an array of 1 to 1000 submit bodies, got an object",
        ),
        (
            json!({"jobs": [later(0)], "atomic": true}),
            "unknown field \"atomic\"; the only allowed field is jobs",
        ),
        (
            json!([later(0)]),
            "the request body must be a JSON object with a \"jobs\" array",
        ),
    ];
    for (body, expected) in cases {
        let message = assert_error(&post_batch(&server, &body), 400, "validation_error");
        assert_eq!(message, expected, "{body}");
    }
    assert_error(
        &server.request(
            "POST",
            "/jobs/batch",
            &[("Content-Type", "application/json")],
            Some(b"{\"jobs\": ["),
        ),
        400,
        "invalid_json",
    );
    assert!(stored(&server).is_empty());
}

#[test]
fn max_pending_jobs_applies_to_the_batch_as_a_whole() {
    let server = TestServer::builder().env("MAX_PENDING_JOBS", "5").start();
    created_ids(
        &post_batch(&server, &json!({"jobs": [later(0), later(1), later(2)]})),
        3,
    );
    let refused = post_batch(&server, &json!({"jobs": [later(3), later(4), later(5)]}));
    let message = assert_error(&refused, 429, "queue_full");
    assert!(message.contains("MAX_PENDING_JOBS"), "{message}");
    assert_eq!(refused.header("retry-after"), Some("5"));
    assert_eq!(
        stored(&server).len(),
        3,
        "nothing of the refused batch is stored"
    );
    // Exactly up to the limit fits.
    created_ids(
        &post_batch(&server, &json!({"jobs": [later(6), later(7)]})),
        2,
    );
    assert_error(&server.post_json("/jobs", &later(8)), 429, "queue_full");
    assert_eq!(stored(&server).len(), 5);
}

#[test]
fn every_job_of_a_batch_that_is_due_runs() {
    let server = TestServer::builder().env("WORKER_COUNT", "4").start();
    let items: Vec<Value> = (0..40)
        .map(|n| json!({"payload": {"duration_ms": 0, "result": n}}))
        .collect();
    let ids = created_ids(&post_batch(&server, &json!({"jobs": items})), 40);
    for (n, id) in ids.iter().enumerate() {
        let job = server.wait_for_status(id, "success", Duration::from_secs(20));
        assert_eq!(job["result"], n);
    }
}

#[test]
fn a_batch_larger_than_max_body_bytes_is_413() {
    let server = TestServer::builder().env("MAX_BODY_BYTES", "1000").start();
    let items: Vec<Value> = (0..100).map(later).collect();
    assert_error(
        &post_batch(&server, &json!({"jobs": items})),
        413,
        "payload_too_large",
    );
    assert!(stored(&server).is_empty());
}

#[test]
fn the_batch_route_takes_only_post() {
    let server = TestServer::start();
    for method in ["GET", "DELETE", "PUT"] {
        let response = server.request(method, "/jobs/batch", &[], None);
        assert_error(&response, 405, "method_not_allowed");
        assert_eq!(response.header("allow"), Some("POST"));
    }
}
