//! W3C Trace Context: a `traceparent` header on a submit is checked, stored with the job (every
//! job of a batch), returned as the job's `traceparent` field, passed to its function as
//! `TRACEPARENT`, and left out of the idempotency fingerprint.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use serde_json::{json, Value};
use support::*;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn post(server: &TestServer, path: &str, headers: &[(&str, &str)], body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap();
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    server.request("POST", path, &all, Some(&bytes))
}

#[test]
fn a_submitted_traceparent_is_stored_and_shown_on_the_job_everywhere() {
    let server = TestServer::start();
    let response = post(
        &server,
        "/jobs",
        &[("traceparent", TRACEPARENT)],
        &json!({"payload": {"n": 1}, "delay_seconds": 3600}),
    );
    assert_eq!(response.status, 201, "{}", response.text());
    let id = response.json()["job_id"].as_str().unwrap().to_string();
    let job = server.job(&id);
    assert_job_shape(&job);
    assert_eq!(job["traceparent"], TRACEPARENT);

    let untraced = server.submit(json!({"payload": 2, "delay_seconds": 3600}));
    let job = server.job(&untraced);
    assert_job_shape(&job);
    assert_eq!(job["traceparent"], Value::Null);

    let (listed, _) = server.list("/jobs");
    let shown: Vec<(String, Value)> = listed
        .iter()
        .map(|job| {
            (
                job["id"].as_str().unwrap().to_string(),
                job["traceparent"].clone(),
            )
        })
        .collect();
    assert_eq!(
        shown,
        [(untraced, Value::Null), (id.clone(), json!(TRACEPARENT))]
    );
    // A cancel answers with the job: the field is there too.
    let cancelled = server.post_empty(&format!("/jobs/{id}/cancel"));
    assert_eq!(cancelled.status, 200, "{}", cancelled.text());
    assert_eq!(cancelled.json()["traceparent"], TRACEPARENT);
}

#[test]
fn every_job_of_a_batch_gets_the_batch_traceparent() {
    let server = TestServer::start();
    let later = "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00-future";
    let response = post(
        &server,
        "/jobs/batch",
        &[("traceparent", later)],
        &json!({"jobs": [
            {"payload": 1, "delay_seconds": 3600},
            {"payload": 2, "delay_seconds": 3600, "queue": "other"},
        ]}),
    );
    assert_eq!(response.status, 201, "{}", response.text());
    for item in response.json()["jobs"].as_array().unwrap() {
        let job = server.job(item["job_id"].as_str().unwrap());
        assert_eq!(job["traceparent"], later, "{job}");
    }
}

#[test]
fn an_invalid_traceparent_is_refused_naming_the_header_and_stores_nothing() {
    let server = TestServer::start();
    for (path, body) in [
        ("/jobs", json!({"payload": 1})),
        ("/jobs/batch", json!({"jobs": [{"payload": 1}]})),
    ] {
        for bad in [
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "garbage",
        ] {
            let response = post(&server, path, &[("traceparent", bad)], &body);
            let message = assert_error(&response, 400, "validation_error");
            assert!(
                message.starts_with("the traceparent header"),
                "{path} {bad}: {message}"
            );
        }
        let twice = post(
            &server,
            path,
            &[("traceparent", TRACEPARENT), ("Traceparent", TRACEPARENT)],
            &body,
        );
        let message = assert_error(&twice, 400, "validation_error");
        assert!(message.contains("traceparent"), "{message}");
    }
    let (listed, _) = server.list("/jobs");
    assert!(listed.is_empty(), "{listed:?}");
}

#[test]
fn a_retry_with_another_traceparent_replays_the_first_answer() {
    let server = TestServer::start();
    let body = json!({"payload": 1, "delay_seconds": 3600});
    let key = ("Idempotency-Key", "trace-retry");
    let first = post(
        &server,
        "/jobs",
        &[key, ("traceparent", TRACEPARENT)],
        &body,
    );
    assert_eq!(first.status, 201, "{}", first.text());
    let retried_from = "00-4bf92f3577b34da6a3ce929d0e0e4736-b9c7c989f97918e1-01";
    let again = post(
        &server,
        "/jobs",
        &[key, ("traceparent", retried_from)],
        &body,
    );
    assert_eq!(again.status, 201, "{}", again.text());
    assert_eq!(again.header("Idempotent-Replayed"), Some("true"));
    assert_eq!(again.text(), first.text());
    let id = first.json()["job_id"].as_str().unwrap().to_string();
    assert_eq!(server.job(&id)["traceparent"], TRACEPARENT);
}

#[test]
fn the_function_sees_the_traceparent_as_its_environment() {
    let root = unique_temp_dir();
    let functions = root.join("functions");
    fs::create_dir(&functions).unwrap();
    let script = functions.join("env-trace");
    // Prints TRACEPARENT as JSON, or null when it is not set at all.
    fs::write(
        &script,
        "#!/bin/sh\ncat >/dev/null\nif [ \"${TRACEPARENT+set}\" = set ]; then \
         printf '{\"traceparent\":\"%s\"}' \"$TRACEPARENT\"; else printf '{\"traceparent\":null}'; fi\n",
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    // A TRACEPARENT of the server's own, passed through, must not reach an untraced job.
    let server = TestServer::builder()
        .env("FUNCTIONS_DIR", functions.to_str().unwrap())
        .env("FUNCTION_ENV_PASSTHROUGH", "TRACEPARENT")
        .env(
            "TRACEPARENT",
            "00-11111111111111111111111111111111-2222222222222222-01",
        )
        .start();
    let body = json!({"function": "env-trace", "payload": {}, "max_retries": 0});
    let traced = post(&server, "/jobs", &[("traceparent", TRACEPARENT)], &body);
    assert_eq!(traced.status, 201, "{}", traced.text());
    let traced = traced.json()["job_id"].as_str().unwrap().to_string();
    let untraced = server.submit(body);
    for (id, seen) in [(traced, json!(TRACEPARENT)), (untraced, Value::Null)] {
        let job = server.wait_for_status(&id, "success", secs(10));
        assert_eq!(job["result"], json!({"traceparent": seen}), "{job}");
    }
    drop(server);
    let _ = fs::remove_dir_all(root);
}
