//! Job execution: the simulation keys, timeouts, automatic and manual
//! retries, scheduling, priority order and worker concurrency.

mod support;

use std::time::Instant;

use serde_json::{json, Value};
use support::*;

/// Microseconds between two timestamp fields of a job.
fn span(job: &Value, from: &str, to: &str) -> i64 {
    ts(job, to) - ts(job, from)
}

// ---------------------------------------------------------------------------
// Simulation keys
// ---------------------------------------------------------------------------

#[test]
fn successful_job_reports_payload_result_after_its_duration() {
    let server = TestServer::start();
    let id = server.submit(json!({
        "payload": {"duration_ms": 300, "result": {"answer": 42, "list": [1, 2]}}
    }));
    let job = server.wait_for_status(&id, "success", secs(10));
    assert_eq!(job["result"], json!({"answer": 42, "list": [1, 2]}));
    assert_eq!(job["error_message"], Value::Null);
    assert_eq!(job["retry_count"], 0);
    let ran = span(&job, "started_at", "finished_at");
    assert!(
        (290_000..5_000_000).contains(&ran),
        "a 300 ms job ran for {ran} us: {job}"
    );
}

#[test]
fn success_without_result_key_gives_a_string_result() {
    let server = TestServer::start();
    let id = server.submit(json!({"payload": {"duration_ms": 0}}));
    let job = server.wait_for_status(&id, "success", secs(10));
    assert!(
        job["result"].is_string(),
        "default result should be a string: {job}"
    );
    assert_eq!(job["error_message"], Value::Null);

    let id = server.submit(json!({"payload": {"duration_ms": 0, "should_fail": false}}));
    let job = server.wait_for_status(&id, "success", secs(10));
    assert_eq!(job["error_message"], Value::Null);
}

#[test]
fn non_object_payloads_and_missing_duration_run_as_default_750ms_jobs() {
    let server = TestServer::start();
    let payloads = [
        json!("hello"),
        json!(42),
        json!([1, 2, 3]),
        json!({"result": "default duration"}),
    ];
    let ids: Vec<String> = payloads
        .iter()
        .map(|p| server.submit(json!({ "payload": p })))
        .collect();
    for (id, payload) in ids.iter().zip(&payloads) {
        let job = server.wait_for_status(id, "success", secs(10));
        assert_eq!(&job["payload"], payload);
        let ran = span(&job, "started_at", "finished_at");
        assert!(
            (740_000..5_000_000).contains(&ran),
            "default job with payload {payload} ran for {ran} us, expected about 750 ms"
        );
    }
    let job = server.job(&ids[3]);
    assert_eq!(job["result"], "default duration");
}

#[test]
fn should_fail_job_fails_with_the_payload_error_message() {
    let server = TestServer::start();
    let id = server.submit(json!({
        "payload": {"duration_ms": 50, "should_fail": true, "error_message": "boom"},
        "max_retries": 0
    }));
    let job = server.wait_for_status(&id, "failed", secs(10));
    assert_eq!(job["error_message"], "boom");
    assert_eq!(job["retry_count"], 0);
    assert_eq!(job["result"], Value::Null);
    let ran = span(&job, "started_at", "finished_at");
    assert!(ran >= 45_000, "ran {ran} us, expected at least 50 ms");
}

#[test]
fn should_fail_without_error_message_still_reports_one() {
    let server = TestServer::start();
    let id = server.submit(json!({
        "payload": {"duration_ms": 0, "should_fail": true},
        "max_retries": 0
    }));
    let job = server.wait_for_status(&id, "failed", secs(10));
    let message = job["error_message"].as_str().unwrap_or_default();
    assert!(
        !message.trim().is_empty(),
        "no default error message: {job}"
    );
    ts(&job, "finished_at");
}

// ---------------------------------------------------------------------------
// Automatic retries
// ---------------------------------------------------------------------------

#[test]
fn failed_job_is_retried_until_max_retries() {
    let server = TestServer::builder().env("RETRY_BACKOFF_MS", "10").start();
    let id = server.submit(json!({
        "payload": {"duration_ms": 0, "should_fail": true, "error_message": "still broken"},
        "max_retries": 2
    }));
    let job = server.wait_for_status(&id, "failed", secs(10));
    assert_eq!(job["retry_count"], 2);
    assert_eq!(job["max_retries"], 2);
    assert_eq!(job["error_message"], "still broken");
    assert_eq!(job["result"], Value::Null);
    // It stays failed: the budget is spent.
    assert_stays(ms(300), || {
        let now = server.job(&id);
        if now["status"] == "failed" && now["retry_count"] == 2 {
            Ok(())
        } else {
            Err(format!("job moved on after its last retry: {now}"))
        }
    });
}

#[test]
fn job_waiting_for_retry_is_pending_with_incremented_retry_count() {
    // One worker. A fails once; while it waits to be retried, a higher
    // priority job B holds the worker, so A is visibly pending for a while.
    let server = TestServer::builder()
        .env("WORKER_COUNT", "1")
        .env("RETRY_BACKOFF_MS", "10")
        .start();
    let a = server.submit(json!({
        "payload": {"duration_ms": 200, "should_fail": true, "error_message": "first"},
        "max_retries": 1
    }));
    let running = server.wait_for_status(&a, "running", secs(5));
    assert_eq!(running["retry_count"], 0);
    let b = server.submit(json!({"payload": {"duration_ms": 1500}, "priority": 9}));

    let waiting = server.wait_for_job(&a, secs(5), "retry_count 1", |j| {
        assert_ne!(
            j["status"], "failed",
            "A must not be failed while it has budget: {j}"
        );
        j["retry_count"] == 1
    });
    assert_eq!(
        waiting["status"], "pending",
        "waiting for a retry is pending: {waiting}"
    );
    server.wait_for_status(&b, "running", secs(5));
    assert_stays(ms(400), || {
        let now = server.job(&a);
        if now["status"] == "pending" && now["retry_count"] == 1 {
            Ok(())
        } else {
            Err(format!("A should wait while B runs: {now}"))
        }
    });

    let b_done = server.wait_for_status(&b, "success", secs(10));
    let a_done = server.wait_for_status(&a, "failed", secs(10));
    assert_eq!(a_done["retry_count"], 1);
    assert_eq!(a_done["error_message"], "first");
    assert!(
        ts(&a_done, "started_at") >= ts(&b_done, "finished_at"),
        "A's retry ran after B: A {a_done} B {b_done}"
    );
}

#[test]
fn retry_backoff_is_capped_by_retry_backoff_max_ms() {
    // Ten retries from a 100 ms base: uncapped, the later waits are drawn
    // from up to 25.6 s and 51.2 s; capped at 200 ms, all ten take < 2 s.
    let server = TestServer::builder()
        .env("RETRY_BACKOFF_MS", "100")
        .env("RETRY_BACKOFF_MAX_MS", "200")
        .start();
    let started = Instant::now();
    let id = server.submit(json!({
        "payload": {"duration_ms": 0, "should_fail": true},
        "max_retries": 10
    }));
    let job = server.wait_for_status(&id, "failed", secs(5));
    assert_eq!(job["retry_count"], 10);
    assert!(started.elapsed() < secs(5));
}

// ---------------------------------------------------------------------------
// Timeouts
// ---------------------------------------------------------------------------

#[test]
fn job_exceeding_its_timeout_is_marked_timeout_within_two_seconds() {
    let server = TestServer::builder().env("RETRY_BACKOFF_MS", "10").start();
    let submitted = Instant::now();
    let id = server.submit(json!({
        "payload": {"duration_ms": 4000, "result": "too late"},
        "timeout_seconds": 1,
        "max_retries": 3
    }));
    let job = server.wait_for_status(&id, "timeout", secs(4));
    let observed = submitted.elapsed();
    assert!(
        observed <= ms(2100),
        "timeout observed {observed:?} after submission"
    );
    assert!(
        span(&job, "created_at", "finished_at") <= 2_000_000,
        "finished_at more than 2 s after created_at: {job}"
    );
    let ran = span(&job, "started_at", "finished_at");
    assert!(
        (950_000..1_600_000).contains(&ran),
        "a 1 s timeout fired after {ran} us: {job}"
    );
    let message = job["error_message"].as_str().unwrap_or_default();
    assert!(
        message.to_lowercase().contains("timed out"),
        "error_message should say it timed out: {job}"
    );
    assert_eq!(job["result"], Value::Null);
    assert_eq!(job["retry_count"], 0);

    // Timeouts are not retried automatically, and the late work does not
    // overwrite the verdict.
    assert_stays(ms(1000), || {
        let now = server.job(&id);
        if now == job {
            Ok(())
        } else {
            Err(format!("timed-out job changed from {job} to {now}"))
        }
    });
}

#[test]
fn timed_out_job_frees_its_worker_at_once() {
    let server = TestServer::builder().env("WORKER_COUNT", "1").start();
    let slow = server.submit(json!({
        "payload": {"duration_ms": 60000},
        "timeout_seconds": 1,
        "max_retries": 0
    }));
    server.wait_for_status(&slow, "running", secs(5));
    let submitted = Instant::now();
    let quick = server.submit(json!({"payload": {"duration_ms": 0, "result": "next"}}));
    let quick_done = server.wait_for_status(&quick, "success", secs(5));
    assert!(
        submitted.elapsed() < secs(3),
        "the single worker was held past the timeout"
    );
    let slow_done = server.wait_for_status(&slow, "timeout", secs(1));
    let gap = ts(&quick_done, "started_at") - ts(&slow_done, "finished_at");
    assert!(
        (0..700_000).contains(&gap),
        "next job should start right after the timeout (gap {gap} us): slow {slow_done} quick {quick_done}"
    );
}

#[test]
fn default_timeout_and_max_retries_come_from_the_environment() {
    let server = TestServer::builder()
        .env("DEFAULT_TIMEOUT_SECONDS", "1")
        .env("DEFAULT_MAX_RETRIES", "5")
        .start();
    let parked = server.submit(json!({"payload": 1, "delay_seconds": 3600}));
    let job = server.job(&parked);
    assert_eq!(job["timeout_seconds"], 1);
    assert_eq!(job["max_retries"], 5);

    let id = server.submit(json!({"payload": {"duration_ms": 3000}}));
    let job = server.wait_for_status(&id, "timeout", secs(5));
    assert_eq!(job["retry_count"], 0);
}

// ---------------------------------------------------------------------------
// Manual retry
// ---------------------------------------------------------------------------

#[test]
fn manual_retry_of_failed_job_resets_retry_count_and_gives_a_full_budget() {
    let server = TestServer::builder().env("RETRY_BACKOFF_MS", "10").start();
    let id = server.submit(json!({
        "payload": {"duration_ms": 0, "should_fail": true, "error_message": "boom"},
        "max_retries": 2
    }));
    let first = server.wait_for_status(&id, "failed", secs(10));
    assert_eq!(first["retry_count"], 2);

    let resp = server.post_empty(&format!("/jobs/{id}/retry"));
    assert_eq!(resp.status, 202, "{}", resp.text());
    let requeued = resp.json();
    assert_job_shape(&requeued);
    assert_eq!(requeued["status"], "pending");
    assert_eq!(requeued["retry_count"], 0);
    assert_eq!(requeued["max_retries"], 2);
    assert_eq!(requeued["payload"], first["payload"]);
    for field in ["started_at", "finished_at", "result", "error_message"] {
        assert_eq!(requeued[field], Value::Null, "{field}: {requeued}");
    }

    // It runs again and uses the whole budget once more.
    let second = server.wait_for_job(&id, secs(10), "a second failure", |j| {
        j["status"] == "failed" && j["finished_at"] != first["finished_at"]
    });
    assert_eq!(second["retry_count"], 2);
    assert_eq!(second["error_message"], "boom");
    assert!(ts(&second, "started_at") > ts(&first, "finished_at"));
    assert_eq!(second["created_at"], first["created_at"]);
}

#[test]
fn manual_retry_of_timed_out_job_runs_it_again() {
    let server = TestServer::start();
    let id = server.submit(json!({
        "payload": {"duration_ms": 1500},
        "timeout_seconds": 1,
        "max_retries": 0
    }));
    let first = server.wait_for_status(&id, "timeout", secs(5));

    let resp = server.post_empty(&format!("/jobs/{id}/retry"));
    assert_eq!(resp.status, 202, "{}", resp.text());
    let requeued = resp.json();
    assert_eq!(requeued["status"], "pending");
    assert_eq!(requeued["retry_count"], 0);
    assert_eq!(requeued["finished_at"], Value::Null);
    assert_eq!(requeued["error_message"], Value::Null);

    let second = server.wait_for_job(&id, secs(5), "a second timeout", |j| {
        j["status"] == "timeout" && j["finished_at"] != first["finished_at"]
    });
    assert!(ts(&second, "started_at") > ts(&first, "finished_at"));
    assert_eq!(second["retry_count"], 0);
    // Retrying a job that is pending again is refused.
    let id2 = server.submit(json!({"payload": 1, "delay_seconds": 3600}));
    assert_error(
        &server.post_empty(&format!("/jobs/{id2}/retry")),
        409,
        "invalid_state",
    );
}

// ---------------------------------------------------------------------------
// Scheduling
// ---------------------------------------------------------------------------

/// Asserts the job stays pending and unstarted until shortly before `run_at`.
fn assert_waits_until_run_at(server: &TestServer, id: &str, run_at: i64) {
    let quiet = run_at - now_micros() - 250_000;
    assert!(quiet > 500_000, "test too slow to observe the wait");
    assert_stays(std::time::Duration::from_micros(quiet as u64), || {
        let job = server.job(id);
        if job["status"] == "pending" && job["started_at"].is_null() {
            Ok(())
        } else {
            Err(format!("job started before its run_at: {job}"))
        }
    });
}

#[test]
fn delayed_job_waits_until_its_run_at_then_runs() {
    let server = TestServer::start();
    let id = server.submit(json!({
        "payload": {"duration_ms": 0, "result": "later"},
        "delay_seconds": 2
    }));
    let job = server.job(&id);
    assert_eq!(job["status"], "pending");
    assert_eq!(job["started_at"], Value::Null);
    let run_at = ts(&job, "run_at");
    let delay = run_at - ts(&job, "created_at");
    assert!(
        (1_900_000..=2_100_000).contains(&delay),
        "run_at should be created_at + 2 s: {job}"
    );
    assert_waits_until_run_at(&server, &id, run_at);
    let done = server.wait_for_status(&id, "success", secs(5));
    assert!(
        ts(&done, "started_at") >= run_at,
        "started before run_at: {done}"
    );
    assert_eq!(done["run_at"], job["run_at"]);
    assert_eq!(done["result"], "later");
}

#[test]
fn run_at_job_waits_until_then_and_run_at_is_stored_in_utc() {
    let server = TestServer::start();
    let target = now_micros() + 2_000_000;
    // Given with a +01:00 offset; stored and returned as UTC `Z`.
    let given = format_ts_with_offset(target, 60);
    let id = server.submit(json!({"payload": {"duration_ms": 0}, "run_at": given}));
    let job = server.job(&id);
    assert_eq!(job["run_at"], format_ts(target), "given {given}");
    assert_eq!(job["status"], "pending");
    assert_waits_until_run_at(&server, &id, target);
    let done = server.wait_for_status(&id, "success", secs(5));
    assert!(ts(&done, "started_at") >= target, "started early: {done}");
}

// ---------------------------------------------------------------------------
// Priority and concurrency
// ---------------------------------------------------------------------------

#[test]
fn higher_priority_jobs_start_first_and_fifo_within_a_priority() {
    let server = TestServer::builder().env("WORKER_COUNT", "1").start();
    let blocker = server.submit(json!({"payload": {"duration_ms": 1500}}));
    server.wait_for_status(&blocker, "running", secs(5));

    let plan = [("a", 1), ("b", 5), ("c", 9), ("d", 5), ("e", 0), ("f", 9)];
    let submitted: Vec<(&str, String)> = plan
        .iter()
        .map(|(name, priority)| {
            let id = server.submit(json!({
                "payload": {"duration_ms": 0, "result": name},
                "priority": priority
            }));
            (*name, id)
        })
        .collect();
    for (_, id) in &submitted {
        let job = server.job(id);
        assert_eq!(job["status"], "pending", "the only worker is busy: {job}");
    }

    let blocker_done = server.wait_for_status(&blocker, "success", secs(10));
    let mut done: Vec<(i64, &str)> = submitted
        .iter()
        .map(|(name, id)| {
            let job = server.wait_for_status(id, "success", secs(10));
            let started = ts(&job, "started_at");
            assert!(
                started >= ts(&blocker_done, "finished_at"),
                "{name} started while the blocker ran"
            );
            (started, *name)
        })
        .collect();
    done.sort();
    let order: Vec<&str> = done.iter().map(|(_, n)| *n).collect();
    assert_eq!(
        order,
        vec!["c", "f", "b", "d", "a", "e"],
        "start order {done:?}"
    );
    for pair in done.windows(2) {
        assert!(
            pair[0].0 < pair[1].0,
            "one worker: distinct start times {done:?}"
        );
    }
}

#[test]
fn workers_run_jobs_concurrently_up_to_worker_count() {
    let server = TestServer::builder().env("WORKER_COUNT", "2").start();
    let ids: Vec<String> = (0..3)
        .map(|n| server.submit(json!({"payload": {"duration_ms": 400, "result": n}})))
        .collect();
    let jobs: Vec<Value> = ids
        .iter()
        .map(|id| server.wait_for_status(id, "success", secs(10)))
        .collect();
    let mut by_start: Vec<&Value> = jobs.iter().collect();
    by_start.sort_by_key(|j| ts(j, "started_at"));
    let (first, second, third) = (by_start[0], by_start[1], by_start[2]);
    // Two ran side by side...
    assert!(
        ts(second, "started_at") < ts(first, "finished_at"),
        "two workers should overlap: {first} {second}"
    );
    // ...and the third waited for a free worker.
    let earliest_finish = ts(first, "finished_at").min(ts(second, "finished_at"));
    assert!(
        ts(third, "started_at") >= earliest_finish,
        "a third job started while both workers were busy: {jobs:?}"
    );
}

/// A job scheduled for later wakes no worker when a sleeping worker will wake by itself
/// before it is due. That worker must hand the watch on when it takes other work. Two workers:
/// the first submit makes one of them the watcher; the long high-priority job and the short
/// ones are all covered by it. When it wakes and takes the long job, the other worker must run
/// the short ones on time instead of sleeping on.
#[test]
fn a_worker_that_takes_a_long_job_hands_the_schedule_to_an_idle_one() {
    let server = TestServer::builder().env("WORKER_COUNT", "2").start();
    let due = now_micros() + 1_500_000;
    let short_first = server.submit(json!({
        "payload": {"duration_ms": 0}, "run_at": format_ts(due)
    }));
    // Both workers went idle at start; wait for the one woken by this submit to go idle again,
    // now watching for `due`, so that the next submits count on it.
    eventually(secs(5), "a worker idle until the first job is due", || {
        (server.stderr_text().matches("idle until").count() >= 3).then_some(())
    });
    let long = server.submit(json!({
        "payload": {"duration_ms": 3000}, "run_at": format_ts(due), "priority": 9
    }));
    let short_later = server.submit(json!({
        "payload": {"duration_ms": 0}, "run_at": format_ts(due + 1_000_000)
    }));
    for id in [&short_first, &short_later] {
        let done = server.wait_for_status(id, "success", secs(6));
        let late = ts(&done, "started_at") - ts(&done, "run_at");
        assert!(
            (0..500_000).contains(&late),
            "started {late} µs after its run_at while a worker was idle: {done}"
        );
    }
    assert_eq!(server.job(&long)["status"], "running");
}

/// A worker that schedules a retry and finds nothing else due must wake for that retry even
/// when its write was answered before the batch (led by another writer) committed. Other
/// writes keep batches busy: a stream of deletes of unknown ids.
#[test]
fn retries_run_on_time_while_other_writes_keep_the_writer_busy() {
    let server = TestServer::builder()
        .env("WORKER_COUNT", "1")
        .env("RETRY_BACKOFF_MS", "50")
        .env("RETRY_BACKOFF_MAX_MS", "100")
        .start();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let deleters: Vec<_> = (0..8)
        .map(|_| {
            let (addr, stop) = (server.addr, std::sync::Arc::clone(&stop));
            std::thread::spawn(move || {
                // Bounded: the test stops it long before.
                for _ in 0..20_000 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                    let path = format!("/jobs/{}", uuid::Uuid::new_v4());
                    let _ = try_request(addr, "DELETE", &path, &[], None);
                }
            })
        })
        .collect();
    for round in 0..6 {
        let id = server.submit(json!({
            "payload": {"duration_ms": 0, "should_fail": true, "error_message": "again"},
            "max_retries": 3
        }));
        let done = server.wait_for_status(&id, "failed", secs(4));
        assert_eq!(done["retry_count"], 3, "round {round}: {done}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for deleter in deleters {
        deleter.join().expect("deleter thread");
    }
}

// ---------------------------------------------------------------------------
// Attempt history
// ---------------------------------------------------------------------------

#[test]
fn every_attempt_is_recorded_across_automatic_and_manual_retries() {
    let server = TestServer::builder().env("RETRY_BACKOFF_MS", "10").start();
    let id = server.submit(json!({
        "payload": {"duration_ms": 20, "should_fail": true, "error_message": "nope"},
        "max_retries": 2
    }));
    server.wait_for_status(&id, "failed", secs(5));
    let first_run = server.attempts(&id);
    assert_eq!(first_run.len(), 3, "{first_run:?}");
    for (index, attempt) in first_run.iter().enumerate() {
        assert_eq!(attempt["attempt"], index + 1);
        assert_eq!(attempt["status"], "failed");
        assert_eq!(attempt["error_message"], "nope");
        assert_eq!(attempt["result"], Value::Null);
        assert_eq!(attempt["exit_code"], Value::Null);
        assert_eq!(attempt["stderr_tail"], Value::Null);
        let took = attempt["duration_ms"].as_i64().unwrap_or(-1);
        assert!((15..5_000).contains(&took), "{attempt}");
        assert_eq!(
            (ts(attempt, "finished_at") - ts(attempt, "started_at")) / 1000,
            took
        );
    }
    // A manual retry starts the retry budget over but keeps counting attempts.
    assert_eq!(server.post_empty(&format!("/jobs/{id}/retry")).status, 202);
    server.wait_for_job(&id, secs(5), "three more attempts", |job| {
        job["status"] == "failed" && job["retry_count"] == 2
    });
    let numbers: Vec<Value> = server
        .attempts(&id)
        .iter()
        .map(|attempt| attempt["attempt"].clone())
        .collect();
    assert_eq!(numbers, (1..=6).map(|n| json!(n)).collect::<Vec<_>>());
}

#[test]
fn attempts_show_success_and_timeout_and_go_with_their_job() {
    let server = TestServer::start();
    let ok = server.submit(json!({"payload": {"duration_ms": 0, "result": {"n": 7}}}));
    let slow = server.submit(json!({"payload": {"duration_ms": 4000}, "timeout_seconds": 1}));
    server.wait_for_status(&ok, "success", secs(5));
    server.wait_for_status(&slow, "timeout", secs(5));
    let ok_attempts = server.attempts(&ok);
    assert_eq!(ok_attempts.len(), 1);
    assert_eq!(ok_attempts[0]["status"], "success");
    assert_eq!(ok_attempts[0]["result"], json!({"n": 7}));
    let slow_attempts = server.attempts(&slow);
    assert_eq!(slow_attempts.len(), 1);
    assert_eq!(slow_attempts[0]["status"], "timeout");

    assert_eq!(server.delete(&format!("/jobs/{ok}")).status, 204);
    let gone = server.get(&format!("/jobs/{ok}/attempts"));
    assert_error(&gone, 404, "not_found");
    let unknown = server.get(&format!("/jobs/{}/attempts", uuid::Uuid::new_v4()));
    assert_error(&unknown, 404, "not_found");
    let wrong_method = server.post_empty(&format!("/jobs/{slow}/attempts"));
    assert_error(&wrong_method, 405, "method_not_allowed");
    assert_eq!(wrong_method.header("Allow"), Some("GET"));
}
