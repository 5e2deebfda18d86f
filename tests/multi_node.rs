//! Several nodes on one PostgreSQL database: real server processes sharing one schema, each
//! with its own `NODE_ID` and a short lease. Work spreads over the nodes and runs once; a
//! node killed with `kill -9` has its attempts recovered by the others after its lease; a
//! cancel or delete made on one node stops the attempt on the node running it; a node that
//! stops gracefully leaves the others serving.
//!
//! Runs only against PostgreSQL (`TEST_POSTGRES_URL` and `--features postgres`); otherwise
//! each test says it is skipped and passes.

mod support;

use std::collections::BTreeSet;

use serde_json::{json, Value};
use support::*;

/// Short, so that recovery after a kill is quick; heartbeats come every third of it.
const LEASE_SECONDS: i64 = 2;

/// A fresh schema for one test's nodes, or `None` (after saying so) on SQLite.
fn cluster_database() -> Option<Database> {
    let database = Database::postgres();
    if database.is_none() {
        eprintln!("{NEEDS_POSTGRES}");
    }
    database
}

/// A node named `id` on `database`, with the test's lease and a quick retry.
fn node(database: &Database, id: &str, env: &[(&str, &str)]) -> TestServer {
    let mut builder = TestServer::builder()
        .database(database)
        .env("NODE_ID", id)
        .env("LEASE_SECONDS", &LEASE_SECONDS.to_string())
        .env("RETRY_BACKOFF_MS", "10")
        .env("RETRY_BACKOFF_MAX_MS", "50");
    for (key, value) in env {
        builder = builder.env(key, value);
    }
    builder.start()
}

/// The node running the job's current attempt, if one is running.
fn running_on(server: &TestServer, id: &str) -> Option<String> {
    let attempts = server.attempts(id);
    let last = attempts.last()?;
    (last["status"] == "running").then(|| node_of(last))
}

fn node_of(attempt: &Value) -> String {
    attempt["node"]
        .as_str()
        .unwrap_or_else(|| panic!("attempt without a node: {attempt}"))
        .to_string()
}

fn is_terminal(job: &Value) -> bool {
    ["success", "failed", "timeout", "cancelled"].contains(&job["status"].as_str().unwrap_or(""))
}

/// Waits until every job in `ids` has a terminal status, as `server` sees it.
fn wait_all_terminal(server: &TestServer, ids: &[String], timeout: std::time::Duration) {
    let mut left: Vec<&String> = ids.iter().collect();
    eventually(timeout, "every job terminal", || {
        left.retain(|id| !is_terminal(&server.job(id)));
        left.is_empty().then_some(())
    });
}

#[test]
fn jobs_submitted_round_robin_to_three_nodes_run_once_each_and_read_the_same_everywhere() {
    let Some(database) = cluster_database() else {
        return;
    };
    let nodes: Vec<TestServer> = ["node-a", "node-b", "node-c"]
        .iter()
        .map(|id| node(&database, id, &[("WORKER_COUNT", "2")]))
        .collect();

    // 60 jobs of 100 ms on 6 workers: a node alone would need a second for them, so every
    // node is busy while the others still submit, and work lands on more than one.
    let ids: Vec<String> = (0..60)
        .map(|n| {
            nodes[n % 3].submit(json!({
                "payload": {"n": n, "duration_ms": 100, "result": n},
                "max_retries": 0
            }))
        })
        .collect();
    wait_all_terminal(&nodes[0], &ids, secs(60));

    let mut ran_on = BTreeSet::new();
    for (n, id) in ids.iter().enumerate() {
        let job = nodes[0].job(id);
        assert_eq!(job["status"], "success", "{job}");
        assert_eq!(job["result"], n, "{job}");
        assert_eq!(job["retry_count"], 0, "{job}");
        for other in &nodes[1..] {
            assert_eq!(
                other.job(id),
                job,
                "job {id} reads differently on another node"
            );
        }
        let history = nodes[0].attempts(id);
        assert_eq!(
            history.len(),
            1,
            "job {id} did not run exactly once: {history:?}"
        );
        assert_eq!(history[0]["attempt"], 1);
        assert_eq!(history[0]["status"], "success", "{history:?}");
        let node = node_of(&history[0]);
        assert!(
            ["node-a", "node-b", "node-c"].contains(&node.as_str()),
            "job {id} ran on an unknown node: {history:?}"
        );
        for other in &nodes[1..] {
            assert_eq!(
                other.attempts(id),
                history,
                "attempts of {id} differ by node"
            );
        }
        ran_on.insert(node);
    }
    assert!(ran_on.len() >= 2, "all 60 jobs ran on one node: {ran_on:?}");
    eprintln!("60 jobs ran once each, on {ran_on:?}");
}

fn quick_job(submitter: usize, n: usize) -> Value {
    json!({
        "payload": {"submitter": submitter, "n": n, "duration_ms": n % 3 * 10},
        "max_retries": 3
    })
}

/// Every acknowledged job ends `success`, and its attempts never overlap in time: attempt
/// k+1 starts at or after attempt k finished. An attempt that did not succeed must be one the
/// killed node was running: `failed`, said to be interrupted, and finished by another node's
/// recovery, no earlier than the lease allows after the kill.
#[test]
fn a_killed_nodes_running_attempts_are_recovered_by_the_others_after_its_lease() {
    let Some(database) = cluster_database() else {
        return;
    };
    let workers = [("WORKER_COUNT", "2")];
    let survivor = node(&database, "node-a", &workers);
    let mut victim = node(&database, "node-b", &workers);
    let other = node(&database, "node-c", &workers);

    let long: Vec<String> = (0..12)
        .map(|n| {
            let target = [&survivor, &victim, &other][n % 3];
            target.submit(json!({
                "payload": {"n": n, "duration_ms": 2000},
                "timeout_seconds": 60,
                "max_retries": 3
            }))
        })
        .collect();
    let submitters = Submitters::start(victim.addr, 4, quick_job);
    let on_victim: Vec<String> = eventually(secs(20), "node-b running long jobs", || {
        let running: Vec<String> = long
            .iter()
            .filter(|id| running_on(&victim, id).as_deref() == Some("node-b"))
            .cloned()
            .collect();
        (!running.is_empty() && submitters.acknowledged() >= 20).then_some(running)
    });
    let killed_at = now_micros();
    victim.kill_9();
    let quick = submitters.finish();

    let all: Vec<String> = long.iter().chain(&quick).cloned().collect();
    wait_all_terminal(&survivor, &all, secs(90));

    // Recovery waits until node-b's last heartbeat is a lease old. That heartbeat may be up to
    // two heartbeat intervals (a third of the lease each) older than the kill.
    let lease_micros = LEASE_SECONDS * 1_000_000;
    let earliest_recovery = killed_at + lease_micros - 2 * lease_micros / 3 - 100_000;
    let mut recovered = 0;
    for id in &all {
        let job = survivor.job(id);
        assert_eq!(job["status"], "success", "{job}");
        assert_eq!(other.job(id), job, "job {id} reads differently on node-c");
        let history = survivor.attempts(id);
        let last = history
            .last()
            .unwrap_or_else(|| panic!("{id} has no attempt"));
        assert_eq!(last["status"], "success", "{history:?}");
        for (k, attempt) in history.iter().enumerate() {
            assert_eq!(attempt["attempt"], k + 1, "{history:?}");
            let finished = ts(attempt, "finished_at");
            assert!(ts(attempt, "started_at") <= finished, "{history:?}");
            if let Some(next) = history.get(k + 1) {
                assert!(
                    ts(next, "started_at") >= finished,
                    "job {id}: attempt {} started before attempt {} finished: {history:?}",
                    k + 2,
                    k + 1
                );
            }
            if attempt["status"] == "success" {
                continue;
            }
            assert_eq!(node_of(attempt), "node-b", "{history:?}");
            assert_eq!(attempt["status"], "failed", "{history:?}");
            let error = attempt["error_message"].as_str().unwrap_or_default();
            assert!(error.contains("interrupted"), "{history:?}");
            assert!(
                finished >= earliest_recovery,
                "job {id}: attempt {} recovered {} µs after the kill, before node-b's lease can have run out: {history:?}",
                k + 1,
                finished - killed_at
            );
            assert_ne!(node_of(last), "node-b", "{history:?}");
            recovered += 1;
        }
    }
    for id in &on_victim {
        let history = survivor.attempts(id);
        assert!(
            history.iter().any(|attempt| node_of(attempt) == "node-b"
                && attempt["status"] == "failed"),
            "job {id} was running on node-b at the kill, but no attempt there was recovered: {history:?}"
        );
    }
    assert!(recovered >= on_victim.len());
    eprintln!(
        "{} jobs acknowledged, {recovered} attempts of node-b recovered, all ended success",
        all.len()
    );
    let logs = survivor.stderr_text() + &other.stderr_text();
    assert!(
        logs.contains("node node-b stopped while it ran attempt"),
        "no node logged a recovery of node-b's attempts"
    );
}

/// A cancel and a delete made on node A of jobs running on node B stop them on B: the job is
/// `cancelled` (or gone everywhere) within seconds, and B's workers run other jobs again.
#[test]
fn a_cancel_or_delete_on_one_node_stops_the_attempt_on_the_node_running_it() {
    let Some(database) = cluster_database() else {
        return;
    };
    let long = json!({"payload": {"duration_ms": 60000}, "timeout_seconds": 120, "max_retries": 0});
    // B alone first, so that both long jobs are B's.
    let b = node(&database, "node-b", &[("WORKER_COUNT", "2")]);
    let to_cancel = b.submit(long.clone());
    let to_delete = b.submit(long.clone());
    for id in [&to_cancel, &to_delete] {
        eventually(secs(10), "the long jobs running on node-b", || {
            (running_on(&b, id).as_deref() == Some("node-b")).then_some(())
        });
    }
    // A has one worker, kept busy, so that whatever runs next runs on B.
    let a = node(&database, "node-a", &[("WORKER_COUNT", "1")]);
    let blocker = a.submit(long.clone());
    eventually(secs(10), "the blocker running on node-a", || {
        (running_on(&a, &blocker).as_deref() == Some("node-a")).then_some(())
    });

    let response = a.post_empty(&format!("/jobs/{to_cancel}/cancel"));
    assert_eq!(response.status, 202, "{}", response.text());
    assert_eq!(response.json()["status"], "running", "{}", response.text());
    let cancelled = a.wait_for_status(&to_cancel, "cancelled", secs(3));
    assert_eq!(cancelled["error_message"], "cancelled by request");
    assert_eq!(b.job(&to_cancel), cancelled);
    let history = a.attempts(&to_cancel);
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0]["status"], "cancelled", "{history:?}");
    assert_eq!(node_of(&history[0]), "node-b");

    let response = a.delete(&format!("/jobs/{to_delete}"));
    assert_eq!(response.status, 204, "{}", response.text());
    for server in [&a, &b] {
        assert_error(&server.get(&format!("/jobs/{to_delete}")), 404, "not_found");
    }
    eventually(secs(3), "node-b stopping the deleted job's attempt", || {
        b.stderr_text()
            .contains(&format!("job {to_delete}: stopping attempt 1"))
            .then_some(())
    });
    // Both of B's workers are free again: two new jobs run there side by side (A is busy).
    let next: Vec<String> = (0..2)
        .map(|_| a.submit(json!({"payload": {"duration_ms": 1500}, "max_retries": 0})))
        .collect();
    eventually(secs(5), "both new jobs running on node-b at once", || {
        next.iter()
            .all(|id| running_on(&b, id).as_deref() == Some("node-b"))
            .then_some(())
    });
    for id in &next {
        b.wait_for_status(id, "success", secs(10));
    }
    // The stopped attempt wrote nothing back: the deleted job stays gone.
    for server in [&a, &b] {
        assert_error(&server.get(&format!("/jobs/{to_delete}")), 404, "not_found");
    }
}

/// SIGTERM stops one node gracefully: it exits 0, the jobs submitted to it all end
/// `success`, and the other nodes keep taking and running jobs.
#[test]
fn a_node_stopped_with_sigterm_exits_0_and_the_others_keep_serving() {
    let Some(database) = cluster_database() else {
        return;
    };
    let env = [("WORKER_COUNT", "2"), ("SHUTDOWN_GRACE_SECONDS", "5")];
    let a = node(&database, "node-a", &env);
    let b = node(&database, "node-b", &env);
    let mut c = node(&database, "node-c", &env);

    let before: Vec<String> = (0..6)
        .map(|n| c.submit(json!({"payload": {"n": n, "duration_ms": 500}, "max_retries": 0})))
        .collect();
    eventually(secs(10), "a job running on node-c", || {
        before
            .iter()
            .any(|id| running_on(&c, id).as_deref() == Some("node-c"))
            .then_some(())
    });
    c.sigterm();
    let status = c.wait_exit(secs(15));
    assert_eq!(status.code(), Some(0), "node-c exit: {status:?}");

    let after: Vec<String> = (0..10)
        .map(|n| {
            let target = [&a, &b][n % 2];
            target.submit(json!({"payload": {"n": n, "duration_ms": 50}, "max_retries": 0}))
        })
        .collect();
    let all: Vec<String> = before.iter().chain(&after).cloned().collect();
    // Well within the lease's worth of waiting: a node that left says so, nobody waits for it.
    wait_all_terminal(&a, &all, secs(20));
    for id in &all {
        let job = a.job(id);
        assert_eq!(job["status"], "success", "{job}");
        assert_eq!(b.job(id), job);
    }
    for id in &after {
        let history = a.attempts(id);
        assert_eq!(history.len(), 1, "{history:?}");
        assert_ne!(node_of(&history[0]), "node-c", "{history:?}");
    }
    assert_eq!(a.get("/health").status, 200);
    assert_eq!(b.get("/health").status, 200);
}
