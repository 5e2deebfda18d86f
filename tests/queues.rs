//! Named queues over real HTTP, on SQLite or (with `TEST_POSTGRES_URL`) PostgreSQL:
//! `GET /queues` and its counts, pause and resume, `PUT /queues/:name` limits held by the
//! workers (concurrency, start rate), settings across a restart, a paused queue's backlog
//! costing other queues nothing, and `GET /jobs` filtered by queue and function.

mod support;

use serde_json::{json, Value};
use support::*;

/// `GET /queues`, asserting 200 and an array.
fn queues(server: &TestServer) -> Vec<Value> {
    let response = server.get("/queues");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_json_content_type(&response);
    response.json().as_array().unwrap().clone()
}

/// The queue named `name` as `GET /queues` lists it, if it does.
fn queue(server: &TestServer, name: &str) -> Option<Value> {
    queues(server)
        .into_iter()
        .find(|queue| queue["name"] == name)
}

fn counts(server: &TestServer, name: &str) -> Value {
    queue(server, name).map_or(Value::Null, |queue| queue["counts"].clone())
}

fn counted(pending: u64, running: u64, success: u64, failed: u64, cancelled: u64) -> Value {
    json!({"pending": pending, "running": running, "success": success, "failed": failed,
           "timeout": 0, "cancelled": cancelled})
}

fn job_in(queue: &str, duration_ms: u64) -> Value {
    json!({"queue": queue, "payload": {"duration_ms": duration_ms}, "max_retries": 0})
}

/// The `[started, finished)` interval of every attempt of `ids`, in microseconds; an attempt
/// still running ends "now".
fn intervals(server: &TestServer, ids: &[String]) -> Vec<(i64, i64)> {
    ids.iter()
        .flat_map(|id| server.attempts(id))
        .map(|attempt| {
            let started = ts(&attempt, "started_at");
            let finished = attempt["finished_at"]
                .as_str()
                .map_or(now_micros(), parse_ts);
            (started, finished)
        })
        .collect()
}

/// The most intervals that overlap by more than `slack` µs at any moment. A claim's time is
/// read just before its write, the end's before its own, so an attempt may seem to start a
/// moment before the one whose place it took had ended: `slack` forgives that.
fn most_at_once(intervals: &[(i64, i64)], slack: i64) -> usize {
    let mut events: Vec<(i64, i32)> = intervals
        .iter()
        .flat_map(|&(start, end)| [(start + slack, 1), (end, -1)])
        .collect();
    events.sort_unstable();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, change) in events {
        now += change;
        most = most.max(now);
    }
    most as usize
}

fn wait_done(server: &TestServer, ids: &[String], timeout: std::time::Duration) {
    for id in ids {
        server.wait_for_status(id, "success", timeout);
    }
}

#[test]
fn get_queues_lists_each_queue_with_exact_counts_through_every_change() {
    let server = TestServer::builder()
        .env("WORKER_COUNT", "2")
        .env("RETRY_BACKOFF_MS", "10")
        .start();
    assert_eq!(queues(&server), Vec::<Value>::new());
    // Paused first, so the counts move only when the test says.
    let paused = server.post_empty("/queues/counted/pause");
    assert_eq!(paused.status, 200, "{}", paused.text());
    assert_eq!(
        paused.json(),
        json!({"name": "counted", "paused": true, "concurrency": null,
               "rate_per_second": null, "counts": counted(0, 0, 0, 0, 0)})
    );
    let ids: Vec<String> = (0..4)
        .map(|_| server.submit(job_in("counted", 0)))
        .collect();
    let failing = server.submit(json!({"queue": "counted", "max_retries": 0,
                                       "payload": {"should_fail": true}}));
    let slow = server.submit(job_in("counted", 60_000));
    assert_eq!(counts(&server, "counted"), counted(6, 0, 0, 0, 0));
    assert_eq!(server.delete(&format!("/jobs/{}", ids[0])).status, 204);
    assert_eq!(
        server
            .post_empty(&format!("/jobs/{}/cancel", ids[1]))
            .status,
        200
    );
    assert_eq!(counts(&server, "counted"), counted(4, 0, 0, 0, 1));
    // Another queue's jobs are counted apart; `default` is where a submit names none.
    let other = server.submit(json!({"payload": {}}));
    server.wait_for_status(&other, "success", secs(10));
    let resumed = server.post_empty("/queues/counted/resume");
    assert_eq!(resumed.status, 200);
    assert_eq!(resumed.json()["paused"], false);
    wait_done(&server, &ids[2..], secs(10));
    server.wait_for_status(&failing, "failed", secs(10));
    server.wait_for_status(&slow, "running", secs(10));
    assert_eq!(counts(&server, "counted"), counted(0, 1, 2, 1, 1));
    let retried = server.post_empty(&format!("/jobs/{failing}/retry"));
    assert_eq!(retried.status, 202);
    server.wait_for_status(&failing, "failed", secs(10));
    assert_eq!(
        server.post_empty(&format!("/jobs/{slow}/cancel")).status,
        202
    );
    server.wait_for_status(&slow, "cancelled", secs(10));
    assert_eq!(counts(&server, "counted"), counted(0, 0, 2, 1, 2));
    let names: Vec<Value> = queues(&server).iter().map(|q| q["name"].clone()).collect();
    assert_eq!(names, [json!("counted"), json!("default")]);
    assert_eq!(counts(&server, "default"), counted(0, 0, 1, 0, 0));
    // A queue whose jobs are all gone, with no settings, is no longer listed.
    assert_eq!(server.delete(&format!("/jobs/{other}")).status, 204);
    let names: Vec<Value> = queues(&server).iter().map(|q| q["name"].clone()).collect();
    assert_eq!(names, [json!("counted")]);
}

#[test]
fn a_paused_queue_keeps_its_jobs_pending_lets_running_ones_finish_and_resume_runs_them() {
    let server = TestServer::builder().env("WORKER_COUNT", "2").start();
    let running = server.submit(job_in("emails", 1_500));
    server.wait_for_status(&running, "running", secs(10));
    assert_eq!(server.post_empty("/queues/emails/pause").status, 200);
    let waiting: Vec<String> = (0..3).map(|_| server.submit(job_in("emails", 0))).collect();
    // Another queue runs meanwhile.
    let other = server.submit(job_in("reports", 0));
    server.wait_for_status(&other, "success", secs(10));
    server.wait_for_status(&running, "success", secs(10));
    // Well past any idle wake-up (a submit's, a finished attempt's): still pending.
    assert_stays(secs(3), || {
        for id in &waiting {
            let status = server.job(id)["status"].clone();
            if status != "pending" {
                return Err(format!("job {id} of a paused queue is {status}"));
            }
        }
        Ok(())
    });
    let resumed = std::time::Instant::now();
    assert_eq!(server.post_empty("/queues/emails/resume").status, 200);
    wait_done(&server, &waiting, secs(10));
    assert!(
        resumed.elapsed() < secs(3),
        "resume took {:?}",
        resumed.elapsed()
    );
}

#[test]
fn a_queue_with_concurrency_2_never_runs_more_than_2_and_other_queues_are_unaffected() {
    let server = TestServer::builder().env("WORKER_COUNT", "6").start();
    let set = put_json(&server, "/queues/capped", &json!({"concurrency": 2}));
    assert_eq!(set.status, 200, "{}", set.text());
    assert_eq!(set.json()["concurrency"], 2);
    let capped: Vec<String> = (0..20)
        .map(|_| server.submit(job_in("capped", 300)))
        .collect();
    let free: Vec<String> = (0..8).map(|_| server.submit(job_in("free", 300))).collect();
    // The other queue's jobs take the other workers: they end long before the capped ones.
    wait_done(&server, &free, secs(10));
    assert!(
        counts(&server, "capped")["pending"].as_u64().unwrap() > 0,
        "the capped queue ran as fast as the free one"
    );
    let mut most_sampled = 0;
    eventually(secs(30), "every capped job done", || {
        let running = counts(&server, "capped")["running"].as_u64().unwrap();
        most_sampled = most_sampled.max(running);
        assert!(running <= 2, "{running} capped jobs run at once");
        (counts(&server, "capped")["success"] == 20).then_some(())
    });
    assert_eq!(most_sampled, 2);
    assert_eq!(most_at_once(&intervals(&server, &capped), 50_000), 2);
    assert!(most_at_once(&intervals(&server, &free), 50_000) > 2);
    // Lifting the limit (null) lets them all run at once again.
    let lifted = put_json(&server, "/queues/capped", &json!({"concurrency": null}));
    assert_eq!(lifted.json()["concurrency"], Value::Null);
}

#[test]
fn rate_per_second_spaces_the_starts_of_a_queues_jobs() {
    let server = TestServer::builder().env("WORKER_COUNT", "4").start();
    let set = put_json(&server, "/queues/paced", &json!({"rate_per_second": 2}));
    assert_eq!(set.status, 200, "{}", set.text());
    assert_eq!(set.json()["rate_per_second"], 2.0);
    let ids: Vec<String> = (0..10).map(|_| server.submit(job_in("paced", 0))).collect();
    wait_done(&server, &ids, secs(20));
    let mut starts: Vec<i64> = intervals(&server, &ids).iter().map(|&(s, _)| s).collect();
    starts.sort_unstable();
    let span = starts[9] - starts[0];
    // A full bucket (2) at once, then one start every half second: 8 more take 4 s.
    assert!(span >= 3_800_000, "10 starts in {span} µs");
    // In any stretch of time, at most burst + rate × its length starts (and a little slack).
    for i in 0..starts.len() {
        for j in i + 1..starts.len() {
            let allowed = 2.0 + 2.0 * (starts[j] - starts[i]) as f64 / 1e6 + 0.2;
            assert!(
                (j - i + 1) as f64 <= allowed,
                "{} starts within {} µs: {starts:?}",
                j - i + 1,
                starts[j] - starts[i]
            );
        }
    }
}

#[test]
fn queue_settings_survive_a_restart() {
    let mut server = TestServer::start();
    let set = put_json(
        &server,
        "/queues/kept",
        &json!({"concurrency": 3, "rate_per_second": 0.5}),
    );
    assert_eq!(set.status, 200, "{}", set.text());
    assert_eq!(server.post_empty("/queues/kept/pause").status, 200);
    // Missing fields keep their value.
    let changed = put_json(&server, "/queues/kept", &json!({"concurrency": 4}));
    let expected = json!({"name": "kept", "paused": true, "concurrency": 4,
                          "rate_per_second": 0.5, "counts": counted(0, 0, 0, 0, 0)});
    assert_eq!(changed.json(), expected);
    let waiting = server.submit(job_in("kept", 0));
    server.restart();
    let mut expected = expected;
    expected["counts"]["pending"] = json!(1);
    assert_eq!(queues(&server), [expected]);
    assert_stays(secs(2), || match server.job(&waiting)["status"].as_str() {
        Some("pending") => Ok(()),
        other => Err(format!("a paused queue's job is {other:?} after a restart")),
    });
}

#[test]
fn a_paused_queue_with_a_large_backlog_does_not_slow_another_queues_jobs() {
    let server = TestServer::builder().env("WORKER_COUNT", "2").start();
    assert_eq!(server.post_empty("/queues/backlog/pause").status, 200);
    insert_pending(&server, "backlog", 20_000);
    assert_eq!(counts(&server, "backlog")["pending"], 20_000);
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let id = server.submit(job_in("urgent", 0));
        server.wait_for_status(&id, "success", secs(10));
        assert!(
            started.elapsed() < ms(1_000),
            "a job of another queue took {:?}",
            started.elapsed()
        );
    }
    assert_eq!(counts(&server, "backlog")["pending"], 20_000);
}

/// Puts `n` pending jobs of the highest priority in `queue`, straight into the database: a
/// backlog too big to submit quickly. On PostgreSQL the triggers count them as any insert;
/// on SQLite the server counts the jobs it writes itself, so this adds them to
/// `queue_counts` in the same transaction (the server adds its own changes to the table, so
/// these stay counted).
fn insert_pending(server: &TestServer, queue: &str, n: u32) {
    let insert = format!(
        "INSERT INTO jobs (id, payload, status, priority, run_at, created_at, max_retries,
                           timeout_seconds, queue)
         SELECT 'backlog-' || n, '{{}}', 'pending', 9, 0, 0, 0, 5, '{queue}' FROM numbers"
    );
    match server.database() {
        Database::Sqlite => {
            let connection = rusqlite::Connection::open(server.db_path()).unwrap();
            connection.busy_timeout(secs(10)).unwrap();
            connection
                .execute_batch(&format!(
                    "BEGIN IMMEDIATE;
                     WITH RECURSIVE numbers (n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM numbers
                                                    WHERE n < {n})
                     {insert};
                     INSERT INTO queue_counts (queue, status, n) VALUES ('{queue}', 'pending', {n})
                        ON CONFLICT (queue, status) DO UPDATE SET n = n + excluded.n;
                     COMMIT;"
                ))
                .unwrap();
        }
        Database::Postgres(schema) => {
            let mut client =
                postgres::Client::connect(&schema.database_url(), postgres::NoTls).unwrap();
            client
                .batch_execute(&format!(
                    "WITH numbers AS (SELECT n FROM generate_series(1, {n}) AS n) {insert}"
                ))
                .unwrap();
        }
    }
}

#[test]
fn queue_routes_refuse_bad_names_bodies_and_methods() {
    let server = TestServer::start();
    for path in [
        "/queues/Emails/pause",
        "/queues/a%20b/resume",
        &format!("/queues/{}/pause", "x".repeat(65)),
    ] {
        assert_error(&server.post_empty(path), 400, "validation_error");
    }
    assert_error(
        &put_json(&server, "/queues/BAD", &json!({"concurrency": 1})),
        400,
        "validation_error",
    );
    for body in [
        json!({"concurrency": 0}),
        json!({"concurrency": 10_001}),
        json!({"concurrency": 2.5}),
        json!({"concurrency": "2"}),
        json!({"rate_per_second": 0}),
        json!({"rate_per_second": 10_001}),
        json!({"rate_per_second": "fast"}),
        json!({"paused": true}),
        json!(["concurrency"]),
    ] {
        let message = assert_error(
            &put_json(&server, "/queues/ok", &body),
            400,
            "validation_error",
        );
        assert!(!message.is_empty(), "{body}");
    }
    assert_error(
        &server.request(
            "PUT",
            "/queues/ok",
            &[("Content-Type", "application/json")],
            Some(b"{"),
        ),
        400,
        "invalid_json",
    );
    // Nothing refused was stored.
    assert_eq!(queues(&server), Vec::<Value>::new());
    let wrong = server.post_empty("/queues");
    assert_error(&wrong, 405, "method_not_allowed");
    assert_eq!(wrong.allow(), ["GET".to_string()].into());
    let wrong = server.get("/queues/ok");
    assert_error(&wrong, 405, "method_not_allowed");
    assert_eq!(wrong.allow(), ["PUT".to_string()].into());
    let wrong = server.get("/queues/ok/pause");
    assert_eq!(wrong.allow(), ["POST".to_string()].into());
    // The limits at their bounds are taken.
    let set = put_json(
        &server,
        "/queues/ok",
        &json!({"concurrency": 10_000, "rate_per_second": 10_000}),
    );
    assert_eq!(set.status, 200, "{}", set.text());
    assert_eq!(set.json()["concurrency"], 10_000);
}

#[test]
fn jobs_list_by_queue_and_function_with_status_and_cursor_and_the_link_keeps_them() {
    let server = TestServer::builder().env("WORKER_COUNT", "1").start();
    // Paused, so the statuses stay as the test leaves them.
    for queue in ["alpha", "beta"] {
        assert_eq!(
            server.post_empty(&format!("/queues/{queue}/pause")).status,
            200
        );
    }
    let alpha: Vec<String> = (0..5).map(|_| server.submit(job_in("alpha", 0))).collect();
    let beta: Vec<String> = (0..3).map(|_| server.submit(job_in("beta", 0))).collect();
    assert_eq!(
        server
            .post_empty(&format!("/jobs/{}/cancel", alpha[1]))
            .status,
        200
    );
    let newest_first = |ids: &[String]| ids.iter().rev().cloned().collect::<Vec<_>>();
    let (jobs, _) = server.list("/jobs?queue=alpha");
    assert_eq!(ids(&jobs), newest_first(&alpha));
    let (jobs, _) = server.list("/jobs?queue=beta&status=pending");
    assert_eq!(ids(&jobs), newest_first(&beta));
    let (jobs, _) = server.list("/jobs?status=cancelled&queue=alpha");
    assert_eq!(ids(&jobs), [alpha[1].clone()]);
    let (jobs, _) = server.list("/jobs?queue=nobody");
    assert!(jobs.is_empty());
    // Simulated jobs name no function: a function filter finds none of them.
    let (jobs, _) = server.list("/jobs?function=echo");
    assert!(jobs.is_empty());
    let (jobs, _) = server.list("/jobs?function=echo&queue=alpha&status=pending");
    assert!(jobs.is_empty());

    // Pages: the Link carries every filter.
    let (page, response) = server.list("/jobs?queue=alpha&status=pending&limit=2");
    assert_eq!(ids(&page), [alpha[4].clone(), alpha[3].clone()]);
    let link = response.header("link").unwrap().to_string();
    assert_eq!(
        link,
        format!(
            "</jobs?status=pending&queue=alpha&limit=2&before={}>; rel=\"next\"",
            alpha[3]
        )
    );
    let next = link.trim_start_matches('<').split('>').next().unwrap();
    let (page, response) = server.list(next);
    assert_eq!(ids(&page), [alpha[2].clone(), alpha[0].clone()]);
    assert!(response.header("link").is_none());

    for query in [
        "queue=Alpha",
        "queue=",
        "function=..",
        "function=",
        "function=a%2Fb",
        "status=done&queue=alpha",
    ] {
        assert_error(
            &server.get(&format!("/jobs?{query}")),
            400,
            "validation_error",
        );
    }
}
