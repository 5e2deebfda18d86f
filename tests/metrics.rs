//! `GET /metrics` and `GET /stats` over real HTTP, on SQLite or (with `TEST_POSTGRES_URL`)
//! PostgreSQL: exact counters in a real scrape after jobs that succeed and fail, histograms
//! whose buckets add up, labels that never hold a job id, the `/stats` shape and counts, the
//! jobs finished per minute across a restart and (PostgreSQL) across nodes, who may read
//! which, and `promtool check metrics` on a real scrape when promtool is installed.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use support::*;

/// Every sample of a scrape: `name{labels}` to its value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let value = match value {
                "+Inf" => f64::INFINITY,
                other => other
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {line}")),
            };
            (series.to_string(), value)
        })
        .collect()
}

fn scrape(server: &TestServer) -> (String, BTreeMap<String, f64>) {
    let response = server.get("/metrics");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = response.text();
    let parsed = samples(&text);
    (text, parsed)
}

fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no sample {series} in {samples:#?}"))
}

fn get_stats(server: &TestServer) -> Value {
    let response = server.get("/stats");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_json_content_type(&response);
    response.json()
}

fn succeeding(queue: &str) -> Value {
    json!({"queue": queue, "payload": {"duration_ms": 0}})
}

fn failing(queue: &str) -> Value {
    json!({"queue": queue, "payload": {"duration_ms": 0, "should_fail": true}, "max_retries": 0})
}

/// Three jobs that succeed in `emails`, two that fail in `reports`, each waited for; a submit
/// refused for validation and one for an unknown function. Returns the ids.
fn run_jobs(server: &TestServer) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(server.submit(succeeding("emails")));
    }
    for _ in 0..2 {
        ids.push(server.submit(failing("reports")));
    }
    let refused = server.post_json("/jobs", &json!({"payload": {"duration_ms": -1}}));
    assert_error(&refused, 400, "validation_error");
    let unknown = server.post_json("/jobs", &json!({"function": "nope", "payload": {}}));
    assert_eq!(unknown.status, 400, "{}", unknown.text());
    for id in &ids[..3] {
        server.wait_for_status(id, "success", secs(20));
    }
    for id in &ids[3..] {
        server.wait_for_status(id, "failed", secs(20));
    }
    ids
}

#[test]
fn a_scrape_counts_submits_attempts_and_ends_exactly() {
    let server = TestServer::builder().env("WORKER_COUNT", "2").start();
    let ids = run_jobs(&server);
    assert_eq!(server.get("/no/such/route").status, 404);
    let _ = scrape(&server);
    // Ends are counted as their outcome is answered: once every job reads as ended, a scrape
    // sees them all; the workers may still be between attempts and the counters.
    let (text, samples) = eventually(secs(10), "every attempt counted", || {
        let (text, samples) = scrape(&server);
        let attempts = samples
            .get("minilambda_job_attempts_total{queue=\"reports\",outcome=\"failed\"}")
            .copied();
        (attempts == Some(2.0)).then_some((text, samples))
    });
    let exact = [
        ("minilambda_jobs_submitted_total{queue=\"emails\"}", 3.0),
        ("minilambda_jobs_submitted_total{queue=\"reports\"}", 2.0),
        (
            "minilambda_submits_rejected_total{reason=\"validation\"}",
            1.0,
        ),
        (
            "minilambda_submits_rejected_total{reason=\"unknown_function\"}",
            1.0,
        ),
        (
            "minilambda_submits_rejected_total{reason=\"queue_full\"}",
            0.0,
        ),
        (
            "minilambda_job_attempts_total{queue=\"emails\",outcome=\"success\"}",
            3.0,
        ),
        (
            "minilambda_job_attempts_total{queue=\"emails\",outcome=\"failed\"}",
            0.0,
        ),
        (
            "minilambda_job_attempts_total{queue=\"reports\",outcome=\"failed\"}",
            2.0,
        ),
        (
            "minilambda_jobs_finished_total{queue=\"emails\",status=\"success\"}",
            3.0,
        ),
        (
            "minilambda_jobs_finished_total{queue=\"reports\",status=\"failed\"}",
            2.0,
        ),
        (
            "minilambda_jobs_finished_total{queue=\"reports\",status=\"success\"}",
            0.0,
        ),
        ("minilambda_jobs_recovered_total", 0.0),
        ("minilambda_jobs_pruned_total", 0.0),
        ("minilambda_job_wait_seconds_count{queue=\"emails\"}", 3.0),
        ("minilambda_job_run_seconds_count{queue=\"reports\"}", 2.0),
        ("minilambda_jobs{queue=\"emails\",status=\"success\"}", 3.0),
        ("minilambda_jobs{queue=\"emails\",status=\"pending\"}", 0.0),
        ("minilambda_jobs{queue=\"reports\",status=\"failed\"}", 2.0),
        (
            "minilambda_queue_oldest_pending_age_seconds{queue=\"emails\"}",
            0.0,
        ),
        ("minilambda_queue_paused{queue=\"emails\"}", 0.0),
        ("minilambda_workers", 2.0),
        ("minilambda_workers_busy", 0.0),
        (
            "minilambda_http_requests_total{route=\"/jobs\",status=\"201\"}",
            5.0,
        ),
        (
            "minilambda_http_requests_total{route=\"/jobs\",status=\"400\"}",
            2.0,
        ),
        (
            "minilambda_http_requests_total{route=\"other\",status=\"404\"}",
            1.0,
        ),
        (
            "minilambda_http_request_duration_seconds_count{route=\"/jobs\"}",
            7.0,
        ),
    ];
    for (series, expected) in exact {
        assert_eq!(value(&samples, series), expected, "{series}");
    }
    assert!(
        value(
            &samples,
            "minilambda_http_requests_total{route=\"/metrics\",status=\"200\"}"
        ) >= 1.0
    );
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        value(
            &samples,
            &format!("minilambda_build_info{{version=\"{version}\"}}")
        ),
        1.0
    );
    assert!(value(&samples, "minilambda_db_commit_seconds_count") >= 1.0);
    assert!(value(&samples, "minilambda_db_size_bytes") > 0.0);
    assert!(value(&samples, "process_resident_memory_bytes") > 0.0);
    assert!(value(&samples, "process_open_fds") > 0.0);
    assert!(value(&samples, "process_threads") > 1.0);
    let started = value(&samples, "process_start_time_seconds");
    let now = now_micros() as f64 / 1e6;
    assert!(
        started <= now + 1.0 && started > now - 3600.0,
        "{started} vs {now}"
    );

    // No label holds a job id, and every route label is a template.
    for id in &ids {
        assert!(!text.contains(id.as_str()), "{id} in the scrape:\n{text}");
    }
    for series in samples.keys() {
        if let Some(start) = series.find("route=\"") {
            let route = &series[start + 7..];
            let route = &route[..route.find('"').unwrap()];
            assert!(
                route == "other" || route.starts_with('/') && !route.contains("-"),
                "{series}"
            );
        }
    }
    assert_histograms_add_up(&text, &samples);
}

/// Each histogram's buckets never decrease, and its `+Inf` bucket equals its `_count`.
fn assert_histograms_add_up(text: &str, samples: &BTreeMap<String, f64>) {
    let mut checked = 0;
    let histograms: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" histogram"))
        .collect();
    assert_eq!(histograms.len(), 4, "{histograms:?}");
    for name in histograms {
        // The series of this histogram, by their labels without `le`.
        let mut buckets: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(&format!("{name}_bucket{{")) else {
                continue;
            };
            let labels = &rest[..rest.find("le=\"").unwrap()];
            let (_, value) = line.rsplit_once(' ').unwrap();
            buckets
                .entry(labels.trim_end_matches(',').to_string())
                .or_default()
                .push(value.parse().unwrap());
        }
        for (labels, counts) in buckets {
            assert!(
                counts.windows(2).all(|w| w[0] <= w[1]),
                "{name}{{{labels}}}: {counts:?}"
            );
            let count_series = if labels.is_empty() {
                format!("{name}_count")
            } else {
                format!("{name}_count{{{labels}}}")
            };
            assert_eq!(
                counts.last().copied(),
                Some(value(samples, &count_series)),
                "{count_series}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} histogram series");
}

#[test]
fn stats_has_the_documented_shape_and_survives_a_restart() {
    let mut server = TestServer::builder().env("WORKER_COUNT", "3").start();
    run_jobs(&server);
    // A paused queue's job waits: its age grows.
    assert_eq!(server.post_empty("/queues/held/pause").status, 200);
    server.submit(succeeding("held"));

    let stats = eventually(secs(10), "the ends in /stats", || {
        let stats = get_stats(&server);
        let ended = stats["jobs"]["success"] == 3 && stats["jobs"]["failed"] == 2;
        (ended && stats["queues"][1]["oldest_pending_age_seconds"].as_f64() > Some(0.0))
            .then_some(stats)
    });
    let keys =
        |value: &Value| -> Vec<String> { value.as_object().unwrap().keys().cloned().collect() };
    assert_eq!(
        keys(&stats),
        [
            "generated_at",
            "node",
            "jobs",
            "queues",
            "workers",
            "finished_per_minute"
        ]
    );
    let generated_at = parse_ts(stats["generated_at"].as_str().unwrap());
    assert!((generated_at - now_micros()).abs() < 60_000_000);
    assert!(stats["node"].as_str().is_some_and(|node| !node.is_empty()));
    assert_eq!(
        stats["jobs"],
        json!({"pending": 1, "running": 0, "success": 3, "failed": 2, "timeout": 0, "cancelled": 0})
    );
    assert_eq!(stats["workers"], json!({"total": 3, "busy": 0}));
    let queues = stats["queues"].as_array().unwrap();
    let names: Vec<&str> = queues.iter().map(|q| q["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["emails", "held", "reports"]);
    let emails = &queues[0];
    assert_eq!(
        keys(emails),
        [
            "name",
            "paused",
            "concurrency",
            "rate_per_second",
            "counts",
            "oldest_pending_age_seconds"
        ]
    );
    assert_eq!(emails["paused"], false);
    assert_eq!(emails["concurrency"], Value::Null);
    assert_eq!(emails["rate_per_second"], Value::Null);
    assert_eq!(
        emails["counts"],
        json!({"pending": 0, "running": 0, "success": 3, "failed": 0, "timeout": 0, "cancelled": 0})
    );
    assert_eq!(emails["oldest_pending_age_seconds"], 0.0);
    assert_eq!(queues[1]["paused"], true);
    assert_eq!(queues[1]["counts"]["pending"], 1);
    let age = queues[1]["oldest_pending_age_seconds"].as_f64().unwrap();
    assert!(age > 0.0 && age < 60.0, "{age}");
    let (_, samples) = scrape(&server);
    assert_eq!(
        value(&samples, "minilambda_queue_paused{queue=\"held\"}"),
        1.0
    );
    assert!(
        value(
            &samples,
            "minilambda_queue_oldest_pending_age_seconds{queue=\"held\"}"
        ) > 0.0
    );

    assert_finished_per_minute(&stats, generated_at);
    // A graceful stop writes what it counted; the next start reads it from the table.
    server.sigterm();
    assert!(
        server.wait_exit(secs(30)).success(),
        "{}",
        server.stderr_text()
    );
    server.restart();
    server.wait_healthy();
    let after = get_stats(&server);
    assert_finished_per_minute(&after, parse_ts(after["generated_at"].as_str().unwrap()));
}

/// 60 minutes, oldest first, the one `generated_at` falls in last; 3 succeeded and 2 failed
/// in all (the jobs ended within the last minute or two).
fn assert_finished_per_minute(stats: &Value, generated_at: i64) {
    let minutes = stats["finished_per_minute"].as_array().unwrap();
    assert_eq!(minutes.len(), 60, "{minutes:?}");
    let starts: Vec<i64> = minutes
        .iter()
        .map(|minute| parse_ts(minute["minute"].as_str().unwrap()))
        .collect();
    assert!(
        starts.windows(2).all(|w| w[1] - w[0] == 60_000_000),
        "{starts:?}"
    );
    let last = *starts.last().unwrap();
    assert!(last <= generated_at && generated_at < last + 60_000_000);
    let total = |key: &str| -> u64 { minutes.iter().map(|m| m[key].as_u64().unwrap()).sum() };
    assert_eq!(
        (total("succeeded"), total("failed"), total("cancelled")),
        (3, 2, 0),
        "{minutes:?}"
    );
    for minute in minutes {
        assert_eq!(
            minute.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["minute", "succeeded", "failed", "cancelled"]
        );
    }
    // The jobs just ended: in the last two minutes.
    let recent: u64 = minutes[58..]
        .iter()
        .map(|m| m["succeeded"].as_u64().unwrap() + m["failed"].as_u64().unwrap())
        .sum();
    assert_eq!(recent, 5, "{minutes:?}");
}

#[test]
fn a_cancel_counts_as_finished_in_its_queue() {
    let server = TestServer::start();
    assert_eq!(server.post_empty("/queues/later/pause").status, 200);
    let id = server.submit(succeeding("later"));
    assert_eq!(server.post_empty(&format!("/jobs/{id}/cancel")).status, 200);
    let (_, samples) = scrape(&server);
    assert_eq!(
        value(
            &samples,
            "minilambda_jobs_finished_total{queue=\"later\",status=\"cancelled\"}"
        ),
        1.0
    );
    let minutes = get_stats(&server)["finished_per_minute"].clone();
    let cancelled: u64 = minutes
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["cancelled"].as_u64().unwrap())
        .sum();
    assert_eq!(cancelled, 1);
}

#[test]
fn metrics_public_opens_metrics_alone_and_the_read_token_reads_both() {
    let server = TestServer::builder()
        .env("API_TOKEN", "writer")
        .env("API_READ_TOKEN", "reader")
        .env("METRICS_PUBLIC", "true")
        .start();
    assert_eq!(server.get("/metrics").status, 200);
    assert_error(&server.get("/stats"), 401, "unauthorized");
    let read = [("Authorization", "Bearer reader")];
    for path in ["/metrics", "/stats"] {
        let response = server.request("GET", path, &read, None);
        assert_eq!(response.status, 200, "{path}: {}", response.text());
    }

    let closed = TestServer::builder()
        .env("API_TOKEN", "writer")
        .env("API_READ_TOKEN", "reader")
        .start();
    assert_error(&closed.get("/metrics"), 401, "unauthorized");
    for path in ["/metrics", "/stats"] {
        let response = closed.request("GET", path, &read, None);
        assert_eq!(response.status, 200, "{path}: {}", response.text());
        let writer = [("Authorization", "Bearer writer")];
        assert_eq!(closed.request("GET", path, &writer, None).status, 200);
    }
}

#[test]
fn promtool_accepts_a_real_scrape() {
    let server = TestServer::start();
    run_jobs(&server);
    let (text, _) = scrape(&server);
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            println!("skipped: promtool not installed (apt-get install prometheus)");
            return;
        }
        Err(err) => panic!("cannot run promtool: {err}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}\n--- scrape ---\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn on_postgresql_the_minutes_add_up_every_node() {
    let Some(database) = Database::postgres() else {
        eprintln!("{NEEDS_POSTGRES}");
        return;
    };
    let first = TestServer::builder()
        .database(&database)
        .env("NODE_ID", "metrics-a")
        .start();
    let second = TestServer::builder()
        .database(&database)
        .env("NODE_ID", "metrics-b")
        .start();
    // Each node submits and waits for its own; either may run any of them.
    for server in [&first, &second] {
        for _ in 0..2 {
            let id = server.submit(succeeding("default"));
            server.wait_for_status(&id, "success", secs(20));
        }
    }
    // Each node flushes its own counts within seconds: either node then sees all four.
    for server in [&first, &second] {
        eventually(secs(20), "every node's ends in /stats", || {
            let minutes = get_stats(server)["finished_per_minute"].clone();
            let succeeded: u64 = minutes
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["succeeded"].as_u64().unwrap())
                .sum();
            (succeeded == 4).then_some(())
        });
    }
    // The per-node counters add up to the four as well.
    let finished = |server: &TestServer| {
        let (_, samples) = scrape(server);
        samples
            .get("minilambda_jobs_finished_total{queue=\"default\",status=\"success\"}")
            .copied()
            .unwrap_or(0.0)
    };
    assert_eq!(finished(&first) + finished(&second), 4.0);
}

/// An attempt lost with its process (`kill -9`) is recovered by the next start: counted as
/// recovered and as an `interrupted` attempt, with no run time (it stopped at an unknown
/// moment), and the job's end as finished.
#[test]
fn an_attempt_lost_to_kill_9_counts_as_recovered_and_interrupted_after_the_restart() {
    // A fixed node id: the restarted process recovers its own attempts at once, on either
    // backend (without it PostgreSQL would wait for the lease).
    let mut server = TestServer::builder()
        .env("NODE_ID", "metrics-recovery")
        .start();
    let id = server.submit(json!({"queue": "long", "max_retries": 0,
                                  "payload": {"duration_ms": 60_000}}));
    server.wait_for_status(&id, "running", secs(20));
    server.restart();
    server.wait_for_status(&id, "failed", secs(30));
    let (_, samples) = scrape(&server);
    assert_eq!(value(&samples, "minilambda_jobs_recovered_total"), 1.0);
    let attempts = |outcome: &str| {
        value(
            &samples,
            &format!("minilambda_job_attempts_total{{queue=\"long\",outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(attempts("interrupted"), 1.0);
    assert_eq!(attempts("failed"), 0.0);
    assert_eq!(
        value(
            &samples,
            "minilambda_jobs_finished_total{queue=\"long\",status=\"failed\"}"
        ),
        1.0
    );
    let runs = samples
        .get("minilambda_job_run_seconds_count{queue=\"long\"}")
        .copied()
        .unwrap_or(0.0);
    assert_eq!(runs, 0.0, "a recovered attempt has no run time");
}
