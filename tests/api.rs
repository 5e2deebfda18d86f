//! The HTTP API: every endpoint, every error code, listing and pagination,
//! and robustness against malformed requests.

mod support;

use std::collections::BTreeSet;
use std::thread;

use serde_json::{json, Value};
use support::*;

/// A job that stays pending for an hour: useful where only storage matters.
fn parked(n: u64) -> Value {
    json!({"payload": {"n": n, "duration_ms": 0}, "delay_seconds": 3600})
}

/// A job that fails at once with no retries.
fn failing_now(n: u64) -> Value {
    json!({"payload": {"n": n, "duration_ms": 0, "should_fail": true}, "max_retries": 0})
}

fn random_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

// ---------------------------------------------------------------------------
// POST /jobs
// ---------------------------------------------------------------------------

#[test]
fn submit_returns_201_with_job_id_pending_status_and_location() {
    let server = TestServer::start();
    let resp = server.post_json("/jobs", &json!({"payload": {"duration_ms": 0}}));
    assert_eq!(resp.status, 201, "{}", resp.text());
    assert_json_content_type(&resp);
    let body = resp.json();
    let id = body["job_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no job_id: {body}"))
        .to_string();
    assert!(
        uuid::Uuid::parse_str(&id).is_ok(),
        "job_id {id:?} is not a uuid"
    );
    assert_eq!(body, json!({"job_id": id, "status": "pending"}));
    let location = format!("/jobs/{id}");
    assert_eq!(resp.header("location"), Some(location.as_str()));
    // The location resolves to the stored job.
    let job = server.job(&id);
    assert_eq!(job["payload"], json!({"duration_ms": 0}));
}

/// Ids are UUIDv7: they sort by submission, and each new one lands at the end of the id index
/// instead of on a random page of it.
#[test]
fn job_ids_are_time_ordered_uuid_v7() {
    let server = TestServer::start();
    let ids: Vec<String> = (0..20).map(|n| server.submit(parked(n))).collect();
    for id in &ids {
        let uuid = uuid::Uuid::parse_str(id).unwrap_or_else(|err| panic!("{id:?}: {err}"));
        assert_eq!(uuid.get_version_num(), 7, "{id}");
        assert_eq!(id, &uuid.hyphenated().to_string(), "not canonical");
    }
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(
        sorted, ids,
        "ids of jobs submitted one after another must sort in that order"
    );
}

#[test]
fn get_job_returns_every_field_with_defaults_and_microsecond_utc_timestamps() {
    let server = TestServer::start();
    let before = now_micros();
    let payload = json!({"duration_ms": 0, "result": {"answer": 42}, "extra": [1, "two"]});
    let id = server.submit(json!({ "payload": payload }));
    let after = now_micros();

    let job = server.job(&id);
    assert_eq!(job["id"], id.as_str());
    assert_eq!(job["payload"], payload);
    assert_eq!(job["retry_count"], 0);
    assert_eq!(job["max_retries"], 3, "DEFAULT_MAX_RETRIES is 3");
    assert_eq!(job["timeout_seconds"], 30, "DEFAULT_TIMEOUT_SECONDS is 30");
    assert_eq!(job["priority"], 0, "default priority is 0");
    let created = ts(&job, "created_at");
    assert!(
        created >= before - 1_000_000 && created <= after + 1_000_000,
        "created_at {} is not the submission time",
        job["created_at"]
    );

    let done = server.wait_for_status(&id, "success", secs(10));
    assert_eq!(
        done["created_at"], job["created_at"],
        "created_at never changes"
    );
    let started = ts(&done, "started_at");
    let finished = ts(&done, "finished_at");
    assert!(created <= started, "created_at <= started_at: {done}");
    assert!(started <= finished, "started_at <= finished_at: {done}");
    assert_eq!(done["result"], json!({"answer": 42}));
    assert_eq!(done["error_message"], Value::Null);
    assert_eq!(done["retry_count"], 0);
}

#[test]
fn submit_stores_explicit_timeout_retries_and_priority() {
    let server = TestServer::start();
    let id = server.submit(json!({
        "payload": "x",
        "timeout_seconds": 5,
        "max_retries": 7,
        "priority": 9,
        "delay_seconds": 3600
    }));
    let job = server.job(&id);
    assert_eq!(job["payload"], "x");
    assert_eq!(job["timeout_seconds"], 5);
    assert_eq!(job["max_retries"], 7);
    assert_eq!(job["priority"], 9);
    assert_eq!(job["status"], "pending");
    assert_eq!(job["started_at"], Value::Null);
    assert_eq!(job["finished_at"], Value::Null);
    assert_eq!(job["result"], Value::Null);
    assert_eq!(job["error_message"], Value::Null);
}

#[test]
fn submit_accepts_boundary_values_and_any_non_null_payload() {
    let server = TestServer::start();
    let accepted = [
        json!({"payload": 1, "timeout_seconds": 1, "delay_seconds": 3600}),
        json!({"payload": 1, "timeout_seconds": 86400, "delay_seconds": 3600}),
        json!({"payload": 1, "max_retries": 0, "delay_seconds": 3600}),
        json!({"payload": 1, "max_retries": 100, "delay_seconds": 3600}),
        json!({"payload": 1, "priority": 0, "delay_seconds": 3600}),
        json!({"payload": 1, "priority": 9, "delay_seconds": 3600}),
        json!({"payload": "a string", "delay_seconds": 3600}),
        json!({"payload": 3.5, "delay_seconds": 3600}),
        json!({"payload": [1, 2, 3], "delay_seconds": 3600}),
        json!({"payload": false, "delay_seconds": 3600}),
        json!({"payload": {}, "delay_seconds": 3600}),
        json!({"payload": {"result": null, "nested": {"a": [null]}}, "delay_seconds": 3600}),
    ];
    for body in accepted {
        let id = server.submit(body.clone());
        let job = server.job(&id);
        assert_eq!(job["payload"], body["payload"], "payload stored verbatim");
        for key in ["timeout_seconds", "max_retries", "priority"] {
            if let Some(v) = body.get(key) {
                assert_eq!(&job[key], v, "{key} stored for {body}");
            }
        }
    }
}

#[test]
fn invalid_submissions_are_400_validation_error_naming_the_field_and_not_stored() {
    let server = TestServer::start();
    let cases: Vec<(Value, &str)> = vec![
        (json!({}), "payload"),
        (json!({"payload": null}), "payload"),
        (
            json!({"payload": 1, "timeout_seconds": 0}),
            "timeout_seconds",
        ),
        (
            json!({"payload": 1, "timeout_seconds": 86401}),
            "timeout_seconds",
        ),
        (
            json!({"payload": 1, "timeout_seconds": -1}),
            "timeout_seconds",
        ),
        (
            json!({"payload": 1, "timeout_seconds": "5"}),
            "timeout_seconds",
        ),
        (
            json!({"payload": 1, "timeout_seconds": 1.5}),
            "timeout_seconds",
        ),
        (json!({"payload": 1, "max_retries": -1}), "max_retries"),
        (json!({"payload": 1, "max_retries": 101}), "max_retries"),
        (json!({"payload": 1, "max_retries": "3"}), "max_retries"),
        (json!({"payload": 1, "priority": 10}), "priority"),
        (json!({"payload": 1, "priority": -1}), "priority"),
        (json!({"payload": 1, "priority": 2.5}), "priority"),
        (json!({"payload": 1, "run_at": "tomorrow"}), "run_at"),
        (json!({"payload": 1, "run_at": 12345}), "run_at"),
        (json!({"payload": 1, "delay_seconds": -1}), "delay_seconds"),
        (json!({"payload": 1, "delay_seconds": "3"}), "delay_seconds"),
        (json!({"payload": 1, "delay_seconds": 1.5}), "delay_seconds"),
        (json!({"payload": 1, "timeout_second": 5}), "timeout_second"),
        (json!({"payload": 1, "bogus_field": true}), "bogus_field"),
        (
            json!({"payload": {"duration_ms": "abc"}}),
            "payload.duration_ms",
        ),
        (
            json!({"payload": {"duration_ms": -5}}),
            "payload.duration_ms",
        ),
        (
            json!({"payload": {"duration_ms": 1.5}}),
            "payload.duration_ms",
        ),
        (
            json!({"payload": {"should_fail": "yes"}}),
            "payload.should_fail",
        ),
        (
            json!({"payload": {"should_fail": 1}}),
            "payload.should_fail",
        ),
        (
            json!({"payload": {"error_message": 5}}),
            "payload.error_message",
        ),
    ];
    for (body, field) in &cases {
        let resp = server.post_json("/jobs", body);
        let message = assert_error(&resp, 400, "validation_error");
        assert!(
            message.contains(field),
            "message for {body} should name {field:?}: {message:?}"
        );
    }

    // run_at and delay_seconds together are rejected, naming one of them.
    let future = format_ts(now_micros() + 60_000_000);
    let body = json!({"payload": 1, "run_at": future, "delay_seconds": 5});
    let message = assert_error(&server.post_json("/jobs", &body), 400, "validation_error");
    assert!(
        message.contains("run_at") || message.contains("delay_seconds"),
        "message for {body} should name run_at or delay_seconds: {message:?}"
    );

    // A body that is JSON but not an object is rejected too.
    for raw in [&b"[1,2]"[..], b"\"text\"", b"42", b"null"] {
        let resp = server.post_jobs_raw(raw);
        assert_eq!(resp.status, 400, "{:?} -> {}", resp.text(), resp.status);
        let code = resp.json()["error"]["code"].clone();
        assert!(
            code == "validation_error" || code == "invalid_json",
            "non-object body {:?} gave code {code}",
            String::from_utf8_lossy(raw)
        );
    }

    let (jobs, _) = server.list("/jobs");
    assert!(
        jobs.is_empty(),
        "rejected submissions were stored: {jobs:?}"
    );
}

/// JSON Schema's `integer`, which openapi.json uses, is any number with a zero fraction: `30.0`
/// and `3e1` are the integer 30, for the submit fields and the simulation keys alike.
#[test]
fn numbers_with_a_zero_fraction_count_as_integers() {
    let server = TestServer::start();
    let body = br#"{"payload": {"duration_ms": 1e1}, "timeout_seconds": 30.0, "max_retries": 2.000, "priority": 5e0, "delay_seconds": 3.6e3}"#;
    let resp = server.post_jobs_raw(body);
    assert_eq!(resp.status, 201, "{}", resp.text());
    let job = server.job(resp.json()["job_id"].as_str().unwrap());
    assert_eq!(
        (
            &job["timeout_seconds"],
            &job["max_retries"],
            &job["priority"]
        ),
        (&json!(30), &json!(2), &json!(5)),
        "{job}"
    );
    for raw in [
        &br#"{"payload": 1, "timeout_seconds": 30.5}"#[..],
        br#"{"payload": {"duration_ms": 0.5}}"#,
    ] {
        assert_error(&server.post_jobs_raw(raw), 400, "validation_error");
    }
}

/// RFC 3339 has four-digit years: a time that is outside years 0000–9999 once converted to
/// UTC cannot be shown as one, so it is refused instead of stored and printed as `+10000-…`.
#[test]
fn run_at_outside_years_0000_to_9999_in_utc_is_400_and_the_edges_are_accepted() {
    let server = TestServer::start();
    for run_at in ["9999-12-31T23:59:59-00:01", "0000-01-01T00:00:00+00:01"] {
        let body = json!({"payload": 1, "run_at": run_at});
        let message = assert_error(&server.post_json("/jobs", &body), 400, "validation_error");
        assert!(
            message.starts_with("run_at") && message.contains("0000 to 9999"),
            "{run_at}: {message:?}"
        );
    }
    assert!(
        server.list("/jobs").0.is_empty(),
        "a refused job was stored"
    );

    let last = server.submit(json!({"payload": 1, "run_at": "9999-12-31T23:59:59.999999Z"}));
    assert_eq!(server.job(&last)["run_at"], "9999-12-31T23:59:59.999999Z");
    let first = server.submit(json!({"payload": 1, "run_at": "0000-01-01T00:30:00+00:30"}));
    assert_eq!(server.job(&first)["run_at"], "0000-01-01T00:00:00.000000Z");
}

/// `null` for an optional field means "not given": the default applies. A value of the wrong
/// type is still a 400 (see the test above).
#[test]
fn null_optional_fields_take_their_defaults() {
    let server = TestServer::start();
    let before = now_micros();
    let id = server.submit(json!({
        "payload": {"n": 1},
        "function": null,
        "timeout_seconds": null,
        "max_retries": null,
        "priority": null,
        "run_at": null,
        "delay_seconds": 3600
    }));
    let job = server.job(&id);
    assert_eq!(
        (
            &job["function"],
            &job["timeout_seconds"],
            &job["max_retries"],
            &job["priority"]
        ),
        (&Value::Null, &json!(30), &json!(3), &json!(0)),
        "{job}"
    );
    // A null run_at does not count as given together with delay_seconds.
    assert!(ts(&job, "run_at") >= before + 3_600_000_000, "{job}");
    let id = server
        .submit(json!({"payload": 1, "run_at": "2030-01-01T00:00:00Z", "delay_seconds": null}));
    assert_eq!(server.job(&id)["run_at"], "2030-01-01T00:00:00.000000Z");
}

/// Numbers keep their digits however large or precise, and object keys their order: what is
/// read back is what was sent, not a float approximation or a sorted copy.
#[test]
fn a_payload_comes_back_as_submitted_with_integers_beyond_64_bits_and_key_order() {
    let server = TestServer::start();
    let payload = r#"{"z":1,"big":123456789012345678901234567890,"neg":-98765432109876543210987,"u64_plus_one":[18446744073709551616],"dec":1.50,"a":{"y":true,"b":null}}"#;
    let body = format!(r#"{{"payload":{payload},"delay_seconds":3600}}"#);
    let resp = server.post_jobs_raw(body.as_bytes());
    assert_eq!(resp.status, 201, "{}", resp.text());
    let id = resp.json()["job_id"].as_str().unwrap().to_string();
    let expected = format!(r#""payload":{payload},"#);
    let one = server.get(&format!("/jobs/{id}")).text();
    assert!(
        one.contains(&expected),
        "GET /jobs/:id changed the payload: {one}"
    );
    let listed = server.get("/jobs").text();
    assert!(
        listed.contains(&expected),
        "GET /jobs changed the payload: {listed}"
    );

    // A simulated result comes back exactly too, after a trip through the database.
    let result = "123456789012345678901234567890123";
    let body = format!(r#"{{"payload":{{"duration_ms":0,"result":{result}}}}}"#);
    let resp = server.post_jobs_raw(body.as_bytes());
    assert_eq!(resp.status, 201, "{}", resp.text());
    let id = resp.json()["job_id"].as_str().unwrap().to_string();
    server.wait_for_status(&id, "success", secs(10));
    let done = server.get(&format!("/jobs/{id}")).text();
    assert!(done.contains(&format!(r#""result":{result},"#)), "{done}");
}

#[test]
fn a_null_result_in_a_simulated_payload_is_the_null_result_not_the_default() {
    let server = TestServer::start();
    let id = server.submit(json!({"payload": {"duration_ms": 0, "result": null}}));
    let job = server.wait_for_status(&id, "success", secs(10));
    assert_eq!(job["result"], Value::Null, "{job}");
    let attempts = server.get(&format!("/jobs/{id}/attempts")).json();
    assert_eq!(attempts[0]["status"], "success", "{attempts}");
    assert_eq!(attempts[0]["result"], Value::Null, "{attempts}");
}

#[test]
fn malformed_json_body_is_400_invalid_json() {
    let server = TestServer::start();
    for raw in [
        &b"{\"payload\":"[..],
        b"{payload: 1}",
        b"{\"payload\": 1,}",
        b"",
        b"\xff\xfe\x00garbage",
    ] {
        let resp = server.post_jobs_raw(raw);
        assert_error(&resp, 400, "invalid_json");
    }
    let (jobs, _) = server.list("/jobs");
    assert!(jobs.is_empty());
}

#[test]
fn non_json_content_type_is_415_but_missing_or_charset_json_is_accepted() {
    let server = TestServer::start();
    let body = br#"{"payload": {"duration_ms": 0}}"#;

    let resp = server.request(
        "POST",
        "/jobs",
        &[("Content-Type", "text/plain")],
        Some(body),
    );
    assert_error(&resp, 415, "unsupported_media_type");

    let resp = server.request("POST", "/jobs", &[], Some(body));
    assert_eq!(resp.status, 201, "missing Content-Type: {}", resp.text());

    let resp = server.request(
        "POST",
        "/jobs",
        &[("Content-Type", "application/json; charset=utf-8")],
        Some(body),
    );
    assert_eq!(resp.status, 201, "charset parameter: {}", resp.text());

    let (jobs, _) = server.list("/jobs");
    assert_eq!(jobs.len(), 2, "only the two accepted jobs are stored");
}

#[test]
fn body_over_max_body_bytes_is_413_payload_too_large() {
    let server = TestServer::builder().env("MAX_BODY_BYTES", "1024").start();
    // `{"payload":"aaa…"}` padded to an exact size.
    let body_of = |len: usize| {
        let overhead = r#"{"payload":""}"#.len();
        format!(r#"{{"payload":"{}"}}"#, "a".repeat(len - overhead)).into_bytes()
    };
    assert_eq!(body_of(1024).len(), 1024);

    let resp = server.post_jobs_raw(&body_of(1024));
    assert_eq!(
        resp.status,
        201,
        "a body of exactly MAX_BODY_BYTES is accepted: {}",
        resp.text()
    );

    let resp = server.post_jobs_raw(&body_of(1025));
    assert_error(&resp, 413, "payload_too_large");

    let resp = server.post_jobs_raw(&body_of(4000));
    assert_error(&resp, 413, "payload_too_large");

    let (jobs, _) = server.list("/jobs");
    assert_eq!(jobs.len(), 1, "oversized bodies are not stored");
    assert_eq!(server.get("/health").status, 200);
}

// ---------------------------------------------------------------------------
// GET /jobs/:id, DELETE /jobs/:id, GET /health
// ---------------------------------------------------------------------------

#[test]
fn unknown_or_malformed_job_id_is_404_not_found() {
    let server = TestServer::start();
    let paths = [
        format!("/jobs/{}", random_id()),
        "/jobs/not-a-uuid".to_string(),
        "/jobs/12345".to_string(),
    ];
    for path in &paths {
        assert_error(&server.get(path), 404, "not_found");
        assert_error(&server.delete(path), 404, "not_found");
        assert_error(
            &server.post_empty(&format!("{path}/retry")),
            404,
            "not_found",
        );
    }
}

#[test]
fn unknown_route_is_404_not_found() {
    let server = TestServer::start();
    assert_error(&server.get("/nope"), 404, "not_found");
    assert_error(&server.post_empty("/nope"), 404, "not_found");
    assert_error(
        &server.get(&format!("/jobs/{}/nope", random_id())),
        404,
        "not_found",
    );
}

#[test]
fn delete_removes_job_and_answers_204_then_404() {
    let server = TestServer::start();
    let keep = server.submit(json!({"payload": {"duration_ms": 0}}));
    let id = server.submit(json!({"payload": {"duration_ms": 0, "result": "bye"}}));
    server.wait_for_status(&id, "success", secs(10));

    let resp = server.delete(&format!("/jobs/{id}"));
    assert_eq!(resp.status, 204, "{}", resp.text());
    assert!(resp.body.is_empty(), "204 has a body: {:?}", resp.text());

    assert_error(&server.get(&format!("/jobs/{id}")), 404, "not_found");
    assert_error(&server.delete(&format!("/jobs/{id}")), 404, "not_found");
    assert_error(
        &server.post_empty(&format!("/jobs/{id}/retry")),
        404,
        "not_found",
    );
    let (jobs, _) = server.list("/jobs");
    assert_eq!(
        ids(&jobs),
        vec![keep.clone()],
        "only the other job is listed"
    );
    server.job(&keep);
}

#[test]
fn delete_of_pending_job_means_it_never_runs() {
    let server = TestServer::start();
    let id = server.submit(json!({"payload": {"duration_ms": 0}, "delay_seconds": 1}));
    let resp = server.delete(&format!("/jobs/{id}"));
    assert_eq!(resp.status, 204, "{}", resp.text());
    // Past the job's run_at it is still gone and nothing was resurrected.
    assert_stays(ms(1500), || {
        let resp = server.get(&format!("/jobs/{id}"));
        if resp.status == 404 {
            Ok(())
        } else {
            Err(format!(
                "deleted job is back: {} {}",
                resp.status,
                resp.text()
            ))
        }
    });
    let (jobs, _) = server.list("/jobs");
    assert!(jobs.is_empty());
}

#[test]
fn get_openapi_json_serves_the_repository_document_and_other_methods_are_405() {
    let server = TestServer::start();
    let resp = server.get("/openapi.json");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_json_content_type(&resp);
    assert_eq!(resp.text(), include_str!("../openapi.json"));
    assert!(resp.json()["openapi"].as_str().unwrap().starts_with("3.1."));
    let refused = server.request("POST", "/openapi.json", &[], Some(b"{}"));
    assert_error(&refused, 405, "method_not_allowed");
    assert_eq!(refused.allow(), BTreeSet::from(["GET".to_string()]));
}

#[test]
fn health_reports_ok_for_api_and_database() {
    let server = TestServer::start();
    let resp = server.get("/health");
    assert_eq!(resp.status, 200);
    assert_json_content_type(&resp);
    assert_eq!(resp.json(), json!({"status": "ok", "database": "ok"}));
}

// ---------------------------------------------------------------------------
// 405 with Allow
// ---------------------------------------------------------------------------

#[test]
fn wrong_method_on_known_path_is_405_with_allow_header() {
    let server = TestServer::start();
    let id = server.submit(parked(1));
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        ("PUT", "/jobs".into(), vec!["GET", "POST"]),
        ("DELETE", "/jobs".into(), vec!["GET", "POST"]),
        ("PATCH", format!("/jobs/{id}"), vec!["GET", "DELETE"]),
        ("POST", format!("/jobs/{id}"), vec!["GET", "DELETE"]),
        (
            "PUT",
            format!("/jobs/{}", random_id()),
            vec!["GET", "DELETE"],
        ),
        ("GET", format!("/jobs/{id}/retry"), vec!["POST"]),
        ("DELETE", format!("/jobs/{id}/retry"), vec!["POST"]),
        ("POST", "/health".into(), vec!["GET"]),
        ("DELETE", "/health".into(), vec!["GET"]),
    ];
    for (method, path, allowed) in &cases {
        let body: Option<&[u8]> = if *method == "GET" || *method == "DELETE" {
            None
        } else {
            Some(b"{}")
        };
        let resp = server.request(method, path, &[("Content-Type", "application/json")], body);
        assert_error(&resp, 405, "method_not_allowed");
        let allow = resp.allow();
        for m in allowed {
            assert!(
                allow.contains(*m),
                "{method} {path}: Allow {allow:?} lacks {m}"
            );
        }
        assert!(
            !allow.contains(*method),
            "{method} {path}: Allow {allow:?} lists the refused method"
        );
    }
    // GET /jobs/:id/retry allows exactly POST.
    let resp = server.get(&format!("/jobs/{id}/retry"));
    assert_eq!(resp.allow(), BTreeSet::from(["POST".to_string()]));
    // Nothing was changed by the refused requests.
    let job = server.job(&id);
    assert_eq!(job["status"], "pending");
    let (jobs, _) = server.list("/jobs");
    assert_eq!(jobs.len(), 1);
}

// ---------------------------------------------------------------------------
// POST /jobs/:id/retry status codes (execution effects are in execution.rs)
// ---------------------------------------------------------------------------

#[test]
fn retry_of_pending_or_succeeded_job_is_409_invalid_state_and_changes_nothing() {
    let server = TestServer::start();
    let pending = server.submit(parked(1));
    let done = server.submit(json!({"payload": {"duration_ms": 0, "result": "ok"}}));
    let done_job = server.wait_for_status(&done, "success", secs(10));
    let pending_job = server.job(&pending);

    assert_error(
        &server.post_empty(&format!("/jobs/{pending}/retry")),
        409,
        "invalid_state",
    );
    assert_error(
        &server.post_empty(&format!("/jobs/{done}/retry")),
        409,
        "invalid_state",
    );
    assert_eq!(server.job(&pending), pending_job);
    assert_eq!(server.job(&done), done_job);
}

#[test]
fn retry_of_running_job_is_409_invalid_state() {
    let server = TestServer::start();
    let id = server.submit(json!({"payload": {"duration_ms": 3000}}));
    server.wait_for_status(&id, "running", secs(5));
    assert_error(
        &server.post_empty(&format!("/jobs/{id}/retry")),
        409,
        "invalid_state",
    );
    let job = server.job(&id);
    assert_eq!(job["status"], "running");
    assert_eq!(job["retry_count"], 0);
}

#[test]
fn retry_of_failed_job_answers_202_with_the_requeued_job() {
    let server = TestServer::start();
    let id = server.submit(failing_now(1));
    let failed = server.wait_for_status(&id, "failed", secs(10));
    let resp = server.post_empty(&format!("/jobs/{id}/retry"));
    assert_eq!(resp.status, 202, "{}", resp.text());
    assert_json_content_type(&resp);
    let job = resp.json();
    assert_job_shape(&job);
    assert_eq!(job["id"], id.as_str());
    assert_eq!(job["status"], "pending");
    assert_eq!(job["retry_count"], 0);
    assert_eq!(job["payload"], failed["payload"]);
    assert_eq!(job["created_at"], failed["created_at"]);
    for field in ["started_at", "finished_at", "result", "error_message"] {
        assert_eq!(job[field], Value::Null, "{field} after retry: {job}");
    }
}

// ---------------------------------------------------------------------------
// GET /jobs
// ---------------------------------------------------------------------------

#[test]
fn list_is_empty_array_on_a_fresh_database() {
    let server = TestServer::start();
    let (jobs, resp) = server.list("/jobs");
    assert!(jobs.is_empty());
    assert_json_content_type(&resp);
    assert_eq!(resp.header("link"), None);
}

#[test]
fn list_returns_jobs_newest_first() {
    let server = TestServer::start();
    let submitted: Vec<String> = (0..5).map(|n| server.submit(parked(n))).collect();
    let (jobs, resp) = server.list("/jobs");
    let mut expected = submitted.clone();
    expected.reverse();
    assert_eq!(ids(&jobs), expected);
    assert_eq!(resp.header("link"), None, "no next page");
    for (n, job) in jobs.iter().rev().enumerate() {
        assert_eq!(job["payload"]["n"], n as u64);
        assert_eq!(job["status"], "pending");
    }
}

#[test]
fn list_paginates_with_before_cursor_and_link_header() {
    let server = TestServer::start();
    let submitted: Vec<String> = (0..5).map(|n| server.submit(parked(n))).collect();
    let newest_first: Vec<String> = submitted.iter().rev().cloned().collect();

    let (page1, resp) = server.list("/jobs?limit=2");
    assert_eq!(ids(&page1), newest_first[0..2].to_vec());
    let link = resp.header("link").expect("Link header on page 1");
    assert_eq!(
        link,
        format!("</jobs?limit=2&before={}>; rel=\"next\"", newest_first[1])
    );

    let next = link_target(link);
    let (page2, resp) = server.list(&next);
    assert_eq!(ids(&page2), newest_first[2..4].to_vec());
    let link = resp.header("link").expect("Link header on page 2");
    assert_eq!(
        link,
        format!("</jobs?limit=2&before={}>; rel=\"next\"", newest_first[3])
    );

    let (page3, resp) = server.list(&link_target(link));
    assert_eq!(ids(&page3), newest_first[4..5].to_vec());
    assert_eq!(resp.header("link"), None, "no Link on the last page");

    // A page that ends exactly at the last job has no Link either.
    let (all, resp) = server.list("/jobs?limit=5");
    assert_eq!(ids(&all), newest_first);
    assert_eq!(resp.header("link"), None);
    let (rest, resp) = server.list(&format!("/jobs?limit=3&before={}", newest_first[1]));
    assert_eq!(ids(&rest), newest_first[2..5].to_vec());
    assert_eq!(resp.header("link"), None);
    // before the oldest job: nothing.
    let (none, resp) = server.list(&format!("/jobs?before={}", newest_first[4]));
    assert!(none.is_empty());
    assert_eq!(resp.header("link"), None);
}

#[test]
fn list_filters_by_status_and_keeps_the_filter_in_the_link() {
    let server = TestServer::start();
    // Interleave: failed, parked, failed, parked, failed.
    let mut failed = Vec::new();
    let mut pending = Vec::new();
    for n in 0..5 {
        if n % 2 == 0 {
            failed.push(server.submit(failing_now(n)));
        } else {
            pending.push(server.submit(parked(n)));
        }
    }
    for id in &failed {
        server.wait_for_status(id, "failed", secs(10));
    }
    failed.reverse();
    pending.reverse();

    let (jobs, resp) = server.list("/jobs?status=failed");
    assert_eq!(ids(&jobs), failed);
    assert!(jobs.iter().all(|j| j["status"] == "failed"));
    assert_eq!(resp.header("link"), None);

    let (jobs, _) = server.list("/jobs?status=pending");
    assert_eq!(ids(&jobs), pending);

    for status in ["running", "success", "timeout"] {
        let (jobs, _) = server.list(&format!("/jobs?status={status}"));
        assert!(jobs.is_empty(), "status={status}: {jobs:?}");
    }

    let (page1, resp) = server.list("/jobs?status=failed&limit=2");
    assert_eq!(ids(&page1), failed[0..2].to_vec());
    let link = resp.header("link").expect("Link header");
    assert_eq!(
        link,
        format!(
            "</jobs?status=failed&limit=2&before={}>; rel=\"next\"",
            failed[1]
        )
    );
    let (page2, resp) = server.list(&link_target(link));
    assert_eq!(ids(&page2), failed[2..3].to_vec());
    assert_eq!(resp.header("link"), None);
}

#[test]
fn list_default_limit_is_100() {
    let server = TestServer::start();
    let submitted: Vec<String> = (0..101).map(|n| server.submit(parked(n))).collect();
    let (jobs, resp) = server.list("/jobs");
    assert_eq!(jobs.len(), 100);
    assert_eq!(jobs[0]["id"], submitted[100].as_str());
    assert_eq!(jobs[99]["id"], submitted[1].as_str());
    assert_eq!(
        resp.header("link"),
        Some(format!("</jobs?limit=100&before={}>; rel=\"next\"", submitted[1]).as_str())
    );
    let (jobs, resp) = server.list("/jobs?limit=1000");
    assert_eq!(jobs.len(), 101);
    assert_eq!(resp.header("link"), None);
}

#[test]
fn list_rejects_bad_status_limit_and_before_with_400() {
    let server = TestServer::start();
    server.submit(parked(1));
    let cases = [
        ("/jobs?status=bogus".to_string(), "status"),
        ("/jobs?limit=0".to_string(), "limit"),
        ("/jobs?limit=1001".to_string(), "limit"),
        ("/jobs?limit=-1".to_string(), "limit"),
        ("/jobs?limit=abc".to_string(), "limit"),
        (format!("/jobs?before={}", random_id()), "before"),
        ("/jobs?before=not-a-uuid".to_string(), "before"),
    ];
    for (path, field) in &cases {
        let message = assert_error(&server.get(path), 400, "validation_error");
        assert!(
            message.contains(field),
            "GET {path}: message should name {field:?}: {message:?}"
        );
    }
    let (jobs, _) = server.list("/jobs?limit=1000");
    assert_eq!(jobs.len(), 1);
    let (jobs, _) = server.list("/jobs?limit=1");
    assert_eq!(jobs.len(), 1);
}

/// The URL inside `<...>` of a Link header value.
fn link_target(link: &str) -> String {
    let start = link.find('<').expect("Link has <") + 1;
    let end = link.find('>').expect("Link has >");
    link[start..end].to_string()
}

// ---------------------------------------------------------------------------
// Concurrency and robustness
// ---------------------------------------------------------------------------

#[test]
fn concurrent_submissions_are_all_stored() {
    let server = TestServer::start();
    let addr = server.addr;
    let handles: Vec<_> = (0..8)
        .map(|t| {
            thread::spawn(move || {
                (0..5)
                    .map(|i| {
                        let body = serde_json::to_vec(&parked(t * 10 + i)).unwrap();
                        let resp = request(
                            addr,
                            "POST",
                            "/jobs",
                            &[("Content-Type", "application/json")],
                            Some(&body),
                        );
                        assert_eq!(resp.status, 201, "{}", resp.text());
                        resp.json()["job_id"].as_str().unwrap().to_string()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut submitted = BTreeSet::new();
    for h in handles {
        submitted.extend(h.join().expect("submitter thread"));
    }
    assert_eq!(submitted.len(), 40);
    let (jobs, _) = server.list("/jobs?limit=1000");
    let listed: BTreeSet<String> = ids(&jobs).into_iter().collect();
    assert_eq!(listed, submitted);
}

#[test]
fn malformed_http_does_not_crash_the_server() {
    let server = TestServer::start();
    let addr = server.addr;
    let garbage: Vec<Vec<u8>> = vec![
        b"GARBAGE\r\n\r\n".to_vec(),
        b"\x00\x01\x02\x03\xff\xfe\xfd".to_vec(),
        b"GET /jobs HTTP/9.9\r\n\r\n".to_vec(),
        b"GET\r\n\r\n".to_vec(),
        b"GET /jobs HTTP/1.1\r\nthis header has no colon\r\n\r\n".to_vec(),
        b"POST /jobs HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"pay".to_vec(),
        b"POST /jobs HTTP/1.1\r\nContent-Length: abc\r\n\r\n{}".to_vec(),
        b"POST /jobs HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nxx\r\n".to_vec(),
        b"GET /jobs?limit=%%%zz HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec(),
        format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(20_000)).into_bytes(),
        Vec::new(),
    ];
    let handles: Vec<_> = garbage
        .into_iter()
        .map(|bytes| thread::spawn(move || send_raw(addr, &bytes, secs(3))))
        .collect();
    for h in handles {
        let answer = h.join().expect("raw sender thread");
        if !answer.is_empty() {
            let text = String::from_utf8_lossy(&answer);
            assert!(
                text.starts_with("HTTP/1."),
                "a reply to garbage must still be HTTP: {text:?}"
            );
        }
    }
    let resp = server.get("/health");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json(), json!({"status": "ok", "database": "ok"}));
    server.submit(json!({"payload": 1}));
    let (jobs, _) = server.list("/jobs");
    assert_eq!(jobs.len(), 1, "garbage created no jobs");
}
