//! The process: configuration errors, --help/--version, the startup line,
//! logging, durability across restarts, crash recovery after kill -9, and
//! graceful shutdown on SIGTERM/SIGINT.

mod support;

use std::thread;
use std::time::Instant;

use serde_json::json;
use support::*;

// ---------------------------------------------------------------------------
// Command line and configuration
// ---------------------------------------------------------------------------

#[test]
fn invalid_configuration_exits_2_with_one_stderr_line_naming_the_variable() {
    let cases = [
        ("WORKER_COUNT", "abc"),
        ("WORKER_COUNT", "0"),
        ("WORKER_COUNT", "-1"),
        ("DEFAULT_TIMEOUT_SECONDS", "abc"),
        ("DEFAULT_MAX_RETRIES", "abc"),
        ("RETRY_BACKOFF_MS", "abc"),
        ("RETRY_BACKOFF_MAX_MS", "abc"),
        ("MAX_BODY_BYTES", "abc"),
        ("SHUTDOWN_GRACE_SECONDS", "abc"),
        ("SERVER_ADDR", "not-an-address"),
    ];
    let handles: Vec<_> = cases
        .iter()
        .map(|&(var, value)| {
            thread::spawn(move || (var, value, run_to_exit(&[], &[(var, value)], secs(20))))
        })
        .collect();
    for h in handles {
        let (var, value, out) = h.join().expect("runner thread");
        assert_eq!(
            out.status.code(),
            Some(2),
            "{var}={value}: exit {:?}, stderr {:?}",
            out.status,
            out.stderr
        );
        let lines: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "{var}={value}: expected one stderr line, got {:?}",
            out.stderr
        );
        assert!(
            lines[0].contains(var),
            "{var}={value}: the error should name {var}: {:?}",
            lines[0]
        );
        assert!(
            !out.stdout.contains("listening"),
            "{var}={value}: server started anyway: {:?}",
            out.stdout
        );
    }
}

#[test]
fn help_lists_every_variable_with_defaults_and_exits_0() {
    let out = run_to_exit(&["--help"], &[], secs(20));
    assert_eq!(out.status.code(), Some(0), "stderr {:?}", out.stderr);
    // The documented contract, written out rather than read from the server's own table.
    for var in [
        "SERVER_ADDR",
        "DATABASE_URL",
        "WORKER_COUNT",
        "DEFAULT_TIMEOUT_SECONDS",
        "DEFAULT_MAX_RETRIES",
        "RETRY_BACKOFF_MS",
        "RETRY_BACKOFF_MAX_MS",
        "MAX_BODY_BYTES",
        "SHUTDOWN_GRACE_SECONDS",
        "DURABILITY",
    ] {
        assert!(
            out.stdout.contains(var),
            "--help lacks {var}: {}",
            out.stdout
        );
    }
    for default in ["127.0.0.1:3000", "mini_lambda.db"] {
        assert!(
            out.stdout.contains(default),
            "--help lacks the default {default}: {}",
            out.stdout
        );
    }
    assert!(!out.stdout.contains("listening on"));
}

/// Every variable's meaning starts in the same column, however long the longest name, and a
/// variable without a default says nothing about one.
#[test]
fn help_aligns_the_meanings_and_omits_empty_defaults() {
    let out = run_to_exit(&["--help"], &[], secs(20));
    assert_eq!(out.status.code(), Some(0), "stderr {:?}", out.stderr);
    let (_, table) = out
        .stdout
        .split_once("Configuration comes from the environment:\n")
        .unwrap_or_else(|| panic!("no variable table: {}", out.stdout));
    let names = config_vars().chain(["RUST_LOG"]);
    let columns: Vec<(&str, usize)> = table
        .lines()
        .zip(names)
        .map(|(line, name)| {
            let rest = line
                .strip_prefix("    ")
                .and_then(|rest| rest.strip_prefix(name))
                .unwrap_or_else(|| panic!("expected {name} in {line:?}"));
            let gap = rest.len() - rest.trim_start().len();
            assert!(gap >= 1, "{name}: meaning not set apart: {line:?}");
            (name, 4 + name.len() + gap)
        })
        .collect();
    assert_eq!(columns.len(), config_vars().count() + 1, "{table}");
    let first = columns[0].1;
    assert!(
        columns.iter().all(|&(_, column)| column == first),
        "meanings start in different columns: {columns:?}\n{table}"
    );
    assert!(!out.stdout.contains("(default: )"), "{}", out.stdout);
    let passthrough = table
        .lines()
        .find(|line| line.contains("FUNCTION_ENV_PASSTHROUGH"))
        .expect("FUNCTION_ENV_PASSTHROUGH is listed");
    assert!(!passthrough.contains("default"), "{passthrough:?}");
}

#[test]
fn version_prints_name_and_version_and_exits_0() {
    let out = run_to_exit(&["--version"], &[], secs(20));
    assert_eq!(out.status.code(), Some(0), "stderr {:?}", out.stderr);
    assert_eq!(
        out.stdout.trim(),
        format!("mini-lambda-rust {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn stdout_is_exactly_the_listening_line_and_the_database_is_created() {
    let server = TestServer::builder().sqlite().start();
    let id = server.submit(json!({"payload": {"duration_ms": 0}}));
    server.wait_for_status(&id, "success", secs(10));
    assert_eq!(server.get("/health").status, 200);
    assert_eq!(
        server.stdout_text(),
        format!("listening on http://{}\n", server.addr)
    );
    assert!(
        server.db_path().exists(),
        "no database at {}",
        server.db_path().display()
    );
}

#[test]
fn logs_each_job_event_and_each_request_to_stderr() {
    let server = TestServer::start();
    let id = server.submit(json!({"payload": {"duration_ms": 0}}));
    server.wait_for_status(&id, "success", secs(10));
    let failed = server.submit(json!({
        "payload": {"duration_ms": 0, "should_fail": true},
        "max_retries": 0
    }));
    server.wait_for_status(&failed, "failed", secs(10));
    assert_eq!(server.get("/health").status, 200);
    // submitted, started, succeeded / failed: at least three lines per job.
    eventually(
        secs(5),
        "log lines for both jobs and the health check",
        || {
            let log = server.stderr_text();
            let mentions = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
            (mentions(&id) >= 3 && mentions(&failed) >= 3 && mentions("/health") >= 1).then_some(())
        },
    );
}

/// The log's attempt number is the one `GET /jobs/:id/attempts` shows, also after a manual
/// retry, which starts `retry_count` over but continues the count of attempts.
#[test]
fn the_started_line_gives_the_attempt_number_the_api_shows() {
    let server = TestServer::start();
    let id = server.submit(json!({
        "payload": {"duration_ms": 0, "should_fail": true},
        "max_retries": 1
    }));
    server.wait_for_status(&id, "failed", secs(10));
    assert_eq!(server.post_empty(&format!("/jobs/{id}/retry")).status, 202);
    server.wait_for_job(&id, secs(10), "the manual retry's attempts to end", |job| {
        job["status"] == "failed" && job["retry_count"] == 1
    });
    let numbers: Vec<u64> = server
        .get(&format!("/jobs/{id}/attempts"))
        .json()
        .as_array()
        .expect("an array of attempts")
        .iter()
        .map(|attempt| attempt["attempt"].as_u64().expect("a number"))
        .collect();
    assert_eq!(numbers, [1, 2, 3, 4]);
    let logged = eventually(secs(5), "four `started` lines", || {
        let log = server.stderr_text();
        let started: Vec<String> = log
            .lines()
            .filter_map(|line| line.split_once(&format!("job {id} started ")))
            .map(|(_, rest)| rest.to_string())
            .collect();
        (started.len() == 4).then_some(started)
    });
    // The line's fields (appended by the text format) give the same attempt.
    let expected: Vec<String> = (1..=4)
        .map(|n| format!("(attempt {n}) job_id={id} queue=default attempt={n}"))
        .collect();
    assert_eq!(logged, expected);
}

// ---------------------------------------------------------------------------
// Durability across restarts
// ---------------------------------------------------------------------------

#[test]
fn finished_jobs_are_unchanged_after_a_restart() {
    let mut server = TestServer::start();
    let ok = server.submit(json!({"payload": {"duration_ms": 0, "result": {"k": [1, 2]}}}));
    let bad = server.submit(json!({
        "payload": {"duration_ms": 0, "should_fail": true, "error_message": "nope"},
        "max_retries": 0
    }));
    server.wait_for_status(&ok, "success", secs(10));
    server.wait_for_status(&bad, "failed", secs(10));
    let (before, _) = server.list("/jobs");

    server.sigterm();
    assert_eq!(server.wait_exit(secs(10)).code(), Some(0));
    server.restart();

    let (after, _) = server.list("/jobs");
    assert_eq!(after, before);
    assert_eq!(server.job(&ok)["result"], json!({"k": [1, 2]}));
    assert_eq!(server.job(&bad)["error_message"], "nope");
}

#[test]
fn scheduled_jobs_survive_a_graceful_restart_and_run_on_time() {
    let mut server = TestServer::start();
    let delayed = server.submit(json!({
        "payload": {"duration_ms": 0, "result": "delayed"},
        "delay_seconds": 2
    }));
    let target = now_micros() + 3_000_000;
    let at = server.submit(json!({
        "payload": {"duration_ms": 0, "result": "at"},
        "run_at": format_ts(target)
    }));
    let delayed_run_at = ts(&server.job(&delayed), "run_at");

    server.sigterm();
    assert_eq!(server.wait_exit(secs(10)).code(), Some(0));
    server.restart();

    let first = server.wait_for_status(&delayed, "success", secs(10));
    assert_eq!(first["result"], "delayed");
    assert!(ts(&first, "started_at") >= delayed_run_at, "{first}");
    let second = server.wait_for_status(&at, "success", secs(10));
    assert_eq!(second["result"], "at");
    assert!(ts(&second, "started_at") >= target, "{second}");
}

#[test]
fn kill_9_with_jobs_running_recovers_them_on_restart() {
    let mut server = TestServer::builder()
        .env("WORKER_COUNT", "2")
        .env("RETRY_BACKOFF_MS", "10")
        .start();
    let no_budget = server.submit(json!({
        "payload": {"duration_ms": 60000},
        "timeout_seconds": 120,
        "max_retries": 0
    }));
    let with_budget = server.submit(json!({
        "payload": {"duration_ms": 2000, "result": "second attempt"},
        "timeout_seconds": 120,
        "max_retries": 1
    }));
    server.wait_for_status(&no_budget, "running", secs(5));
    server.wait_for_status(&with_budget, "running", secs(5));
    let queued = server.submit(json!({
        "payload": {"duration_ms": 0, "result": "queued"},
        "max_retries": 0
    }));
    assert_eq!(server.job(&queued)["status"], "pending");

    server.kill_9();
    server.restart();

    // The running job without budget: failed, said to be interrupted.
    let failed = server.wait_for_status(&no_budget, "failed", secs(5));
    let message = failed["error_message"].as_str().unwrap_or_default();
    assert!(
        message.to_lowercase().contains("interrupted"),
        "error_message should say it was interrupted: {failed}"
    );
    assert_eq!(failed["retry_count"], 0);
    ts(&failed, "finished_at");

    // The running job with budget: its attempt counted, then it runs again.
    let again = server.job(&with_budget);
    assert!(
        again["status"] == "pending" || again["status"] == "running",
        "interrupted job with budget should be requeued: {again}"
    );
    assert_eq!(again["retry_count"], 1, "{again}");
    let done = server.wait_for_status(&with_budget, "success", secs(10));
    assert_eq!(done["retry_count"], 1);
    assert_eq!(done["result"], "second attempt");
    // Both attempts are in its history: the one the crash interrupted, then the one that ran.
    let attempts = server.get(&format!("/jobs/{with_budget}/attempts")).json();
    assert_eq!(attempts.as_array().map(Vec::len), Some(2), "{attempts}");
    assert_eq!(attempts[0]["attempt"], 1);
    assert_eq!(attempts[0]["status"], "failed");
    let interrupted = attempts[0]["error_message"].as_str().unwrap_or_default();
    assert!(interrupted.contains("interrupted"), "{attempts}");
    assert_eq!(attempts[1]["attempt"], 2);
    assert_eq!(attempts[1]["status"], "success");
    assert_eq!(attempts[1]["result"], "second attempt");

    // The queued job survived and ran.
    let done = server.wait_for_status(&queued, "success", secs(10));
    assert_eq!(done["result"], "queued");

    let (jobs, _) = server.list("/jobs");
    assert_eq!(jobs.len(), 3);
    assert!(
        jobs.iter().all(|j| j["status"] != "running"),
        "nothing stays running: {jobs:?}"
    );
}

// ---------------------------------------------------------------------------
// Graceful shutdown
// ---------------------------------------------------------------------------

/// After a shutdown signal, polls GET /jobs/:id until the process exits.
/// Every answer must be 503 `unavailable` (a 200 is tolerated only in the
/// first 500 ms, before the signal is handled); a refused connection is
/// accepted only once the process has exited. Returns whether a 503 was seen.
fn probe_until_exit(server: &mut TestServer, id: &str) -> bool {
    let addr = server.addr;
    let path = format!("/jobs/{id}");
    let signalled = Instant::now();
    let mut saw_503 = false;
    let mut tried_submit = false;
    loop {
        if server.try_wait_exit(ms(0)).is_some() {
            return saw_503;
        }
        assert!(signalled.elapsed() < secs(20), "server never exited");
        match try_request(addr, "GET", &path, &[], None) {
            Ok(resp) if resp.status == 503 => {
                assert_error(&resp, 503, "unavailable");
                saw_503 = true;
                if !tried_submit {
                    tried_submit = true;
                    let body = br#"{"payload": {"duration_ms": 0}}"#;
                    let headers = [("Content-Type", "application/json")];
                    match try_request(addr, "POST", "/jobs", &headers, Some(body)) {
                        Ok(resp) => {
                            assert_error(&resp, 503, "unavailable");
                        }
                        Err(e) => assert!(
                            server.try_wait_exit(ms(500)).is_some(),
                            "POST /jobs failed ({e}) while the process was still running"
                        ),
                    }
                }
            }
            Ok(resp) if resp.status == 200 && !saw_503 && signalled.elapsed() < ms(500) => {}
            Ok(resp) => panic!(
                "while shutting down, GET {path} answered {} {:?} ({:?} after the signal)",
                resp.status,
                resp.text(),
                signalled.elapsed()
            ),
            Err(e) => {
                assert!(
                    server.try_wait_exit(ms(500)).is_some(),
                    "connection failed ({e}) while the process was still running, {:?} after the signal",
                    signalled.elapsed()
                );
                return saw_503;
            }
        }
        thread::sleep(ms(20));
    }
}

#[test]
fn sigterm_lets_the_running_job_finish_answers_503_meanwhile_and_exits_0() {
    let mut server = TestServer::start();
    let id = server.submit(json!({"payload": {"duration_ms": 1500, "result": "finished"}}));
    server.wait_for_status(&id, "running", secs(5));

    server.sigterm();
    let saw_503 = probe_until_exit(&mut server, &id);
    let status = server.wait_exit(secs(10));
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    assert!(
        saw_503,
        "requests during the ~1.5 s drain should be answered 503 unavailable"
    );

    server.restart();
    let job = server.job(&id);
    assert_eq!(
        job["status"], "success",
        "the job finished before exit: {job}"
    );
    assert_eq!(job["result"], "finished");
    assert_eq!(job["retry_count"], 0);
    let (jobs, _) = server.list("/jobs");
    assert_eq!(ids(&jobs), vec![id], "nothing was accepted while draining");
}

/// On SQLite a drain runs every due job; on PostgreSQL (a queue other nodes share) it only
/// finishes the attempts running.
#[test]
fn graceful_shutdown_drains_due_jobs_before_exiting() {
    let mut server = TestServer::builder().env("WORKER_COUNT", "1").start();
    let running = server.submit(json!({"payload": {"duration_ms": 500}}));
    server.wait_for_status(&running, "running", secs(5));
    let queued = server.submit(json!({"payload": {"duration_ms": 0, "result": "drained"}}));
    assert_eq!(server.job(&queued)["status"], "pending");

    server.sigterm();
    let status = server.wait_exit(secs(10));
    let exited = now_micros();
    assert_eq!(status.code(), Some(0), "exit status {status:?}");

    server.restart();
    let first = server.job(&running);
    assert_eq!(first["status"], "success", "{first}");
    if server.database().is_postgres() {
        // A queue other nodes share: the draining node finished what it ran and left the
        // due job to the others; here the next start runs it.
        let second = server.wait_for_status(&queued, "success", secs(10));
        assert!(ts(&second, "finished_at") > exited, "{second}");
        assert_eq!(second["result"], "drained");
        return;
    }
    let second = server.job(&queued);
    assert_eq!(
        second["status"], "success",
        "due job drained before exit: {second}"
    );
    assert!(ts(&second, "finished_at") <= exited, "{second}");
    assert_eq!(second["result"], "drained");
}

#[test]
fn shutdown_grace_expiry_exits_0_and_puts_the_unfinished_job_back() {
    let mut server = TestServer::builder()
        .env("SHUTDOWN_GRACE_SECONDS", "1")
        .env("WORKER_COUNT", "1")
        .start();
    let long = server.submit(json!({
        "payload": {"duration_ms": 60000},
        "timeout_seconds": 120,
        "max_retries": 3
    }));
    server.wait_for_status(&long, "running", secs(5));
    let waiting = server.submit(json!({
        "payload": {"duration_ms": 0, "result": "ran after restart"},
        "priority": 9
    }));
    assert_eq!(server.job(&waiting)["status"], "pending");

    server.sigterm();
    let signalled = Instant::now();
    let status = server.wait_exit(secs(8));
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    assert!(
        signalled.elapsed() < secs(5),
        "took {:?} to exit with a 1 s grace period",
        signalled.elapsed()
    );

    server.restart();
    let job = server.job(&long);
    assert!(
        job["status"] == "pending" || job["status"] == "running",
        "the unfinished job goes back to the queue, not failed: {job}"
    );
    assert_eq!(
        job["retry_count"], 0,
        "putting back is not a failed attempt: {job}"
    );

    // The queued job was kept as well and runs first (higher priority).
    let done = server.wait_for_status(&waiting, "success", secs(10));
    assert_eq!(done["result"], "ran after restart");
    let job = server.job(&long);
    assert!(
        job["status"] == "pending" || job["status"] == "running",
        "{job}"
    );
    assert_eq!(job["retry_count"], 0);
}

#[test]
fn second_signal_exits_at_once_without_losing_the_job() {
    let mut server = TestServer::start();
    let long = server.submit(json!({
        "payload": {"duration_ms": 60000},
        "timeout_seconds": 120,
        "max_retries": 3
    }));
    server.wait_for_status(&long, "running", secs(5));

    server.sigterm();
    let path = format!("/jobs/{long}");
    eventually(
        secs(5),
        "the server to answer 503 while draining",
        || match server.try_request("GET", &path, &[], None) {
            Ok(resp) if resp.status == 503 => Some(()),
            Ok(_) => None,
            Err(e) => panic!("connection failed while draining a 60 s job: {e}"),
        },
    );
    let second = Instant::now();
    server.sigterm();
    server.wait_exit(secs(3));
    assert!(second.elapsed() < secs(3));

    server.restart();
    let job = server.job(&long);
    assert!(
        job["status"] == "pending" || job["status"] == "running",
        "the job is still queued after a forced exit: {job}"
    );
}

#[test]
fn sigint_shuts_down_gracefully_with_exit_0() {
    let mut server = TestServer::start();
    server.wait_healthy();
    server.sigint();
    let status = server.wait_exit(secs(10));
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
}

#[test]
fn health_still_answers_after_many_requests() {
    // A smoke check that the server keeps serving across a burst of mixed
    // requests, including errors.
    let server = TestServer::start();
    for n in 0..30 {
        let _ = server.get("/nope");
        let _ = server.post_jobs_raw(b"{bad json");
        let _ = server.get(&format!("/jobs/{}", uuid::Uuid::new_v4()));
        if n % 10 == 0 {
            server.submit(json!({"payload": n, "delay_seconds": 3600}));
        }
    }
    let resp = server.get("/health");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json(), json!({"status": "ok", "database": "ok"}));
    let (jobs, _) = server.list("/jobs");
    assert_eq!(jobs.len(), 3);
}

/// A client that declares a body and stops sending must not hold the shutdown: the handler
/// thread reading it is not waited for beyond a few seconds.
#[test]
fn a_stalled_request_body_does_not_hang_the_shutdown() {
    let mut server = TestServer::builder()
        .env("SHUTDOWN_GRACE_SECONDS", "1")
        .start();
    let mut stalled = std::net::TcpStream::connect(server.addr).expect("connect");
    std::io::Write::write_all(
        &mut stalled,
        b"POST /jobs HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n{\"payload\":",
    )
    .expect("send a partial body");
    // The handler is now blocked reading the rest of the body; the API still answers.
    server.wait_healthy();
    let signalled = Instant::now();
    server.sigterm();
    let status = server.wait_exit(secs(15));
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    assert!(
        signalled.elapsed() < secs(10),
        "shutdown took {:?}",
        signalled.elapsed()
    );
    drop(stalled);
}
