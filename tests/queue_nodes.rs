//! Queue limits across several nodes on one PostgreSQL schema: a queue's `concurrency` and
//! `rate_per_second` hold for the cluster, not per node, and a resume on one node wakes the
//! others' workers.
//!
//! Runs only against PostgreSQL (`TEST_POSTGRES_URL` and `--features postgres`); otherwise
//! each test says it is skipped and passes.

mod support;

use std::collections::BTreeSet;
use std::time::Instant;

use serde_json::json;
use support::*;

fn cluster_database() -> Option<Database> {
    let database = Database::postgres();
    if database.is_none() {
        eprintln!("{NEEDS_POSTGRES}");
    }
    database
}

fn node(database: &Database, id: &str, workers: usize) -> TestServer {
    TestServer::builder()
        .database(database)
        .env("NODE_ID", id)
        .env("WORKER_COUNT", &workers.to_string())
        .start()
}

fn running(server: &TestServer, queue: &str) -> u64 {
    listed_queue(server, queue, &[]).map_or(0, |q| q["counts"]["running"].as_u64().unwrap())
}

/// Each attempt's `(started, finished, node)`.
fn attempts(server: &TestServer, ids: &[String]) -> Vec<(i64, i64, String)> {
    ids.iter()
        .flat_map(|id| server.attempts(id))
        .map(|attempt| {
            (
                ts(&attempt, "started_at"),
                ts(&attempt, "finished_at"),
                attempt["node"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The most attempts overlapping by more than `slack` µs at one moment (a claim's time is
/// read just before its write, so it may seem to start a moment before the end it waited
/// for).
fn most_at_once(attempts: &[(i64, i64, String)], slack: i64) -> usize {
    let mut events: Vec<(i64, i32)> = attempts
        .iter()
        .flat_map(|(start, end, _)| [(start + slack, 1), (*end, -1)])
        .collect();
    events.sort_unstable();
    let (mut now, mut most) = (0, 0);
    for (_, change) in events {
        now += change;
        most = most.max(now);
    }
    most as usize
}

fn wait_success(server: &TestServer, ids: &[String]) {
    for id in ids {
        server.wait_for_status(id, "success", secs(60));
    }
}

#[test]
fn three_nodes_never_run_more_than_a_queues_concurrency_together() {
    let Some(database) = cluster_database() else {
        return;
    };
    let nodes: Vec<TestServer> = ["qa", "qb", "qc"]
        .iter()
        .map(|id| node(&database, id, 2))
        .collect();
    // Six workers for three places: the limit is what stops them, and no node alone can
    // fill the places (a worker that ends a job claims the next in the same transaction,
    // so a node that holds places tends to keep them).
    let set = put_json(&nodes[0], "/queues/shared", &json!({"concurrency": 3}));
    assert_eq!(set.status, 200, "{}", set.text());
    let ids: Vec<String> = (0..30)
        .map(|n| {
            nodes[n % 3].submit(json!({"queue": "shared", "max_retries": 0,
                                       "payload": {"duration_ms": 300}}))
        })
        .collect();
    eventually(secs(60), "every job done", || {
        let now = running(&nodes[1], "shared");
        assert!(now <= 3, "{now} jobs of the queue run at once");
        ids.iter()
            .all(|id| nodes[2].job(id)["status"] == "success")
            .then_some(())
    });
    let ran = attempts(&nodes[0], &ids);
    assert_eq!(ran.len(), 30);
    assert_eq!(most_at_once(&ran, 50_000), 3, "{ran:?}");
    let on: BTreeSet<&str> = ran.iter().map(|(_, _, node)| node.as_str()).collect();
    assert!(on.len() >= 2, "every job ran on {on:?}");
}

#[test]
fn a_start_rate_holds_across_nodes() {
    let Some(database) = cluster_database() else {
        return;
    };
    let nodes: Vec<TestServer> = ["ra", "rb", "rc"]
        .iter()
        .map(|id| node(&database, id, 2))
        .collect();
    let set = put_json(&nodes[0], "/queues/paced", &json!({"rate_per_second": 2}));
    assert_eq!(set.status, 200, "{}", set.text());
    let ids: Vec<String> = (0..8)
        .map(|n| nodes[n % 3].submit(json!({"queue": "paced", "payload": {}})))
        .collect();
    wait_success(&nodes[0], &ids);
    let mut starts: Vec<i64> = attempts(&nodes[0], &ids).iter().map(|a| a.0).collect();
    starts.sort_unstable();
    // Two at once (the burst), then one each half second: the last 3 s after the first.
    let span = starts[7] - starts[0];
    assert!(span >= 2_800_000, "8 starts in {span} µs: {starts:?}");
}

#[test]
fn a_resume_on_one_node_wakes_the_workers_of_the_others() {
    let Some(database) = cluster_database() else {
        return;
    };
    let busy = node(&database, "busy", 1);
    assert_eq!(busy.post_empty("/queues/held/pause").status, 200);
    // The node that resumes has no free worker (started alone, it took the long job): the
    // other node must run the held one.
    let long = busy.submit(json!({"payload": {"duration_ms": 20_000}, "timeout_seconds": 60}));
    busy.wait_for_status(&long, "running", secs(10));
    let idle = node(&database, "idle", 1);
    let held = idle.submit(json!({"queue": "held", "payload": {}}));
    assert_stays(secs(2), || match idle.job(&held)["status"].as_str() {
        Some("pending") => Ok(()),
        other => Err(format!("a paused queue's job is {other:?}")),
    });
    let resumed = Instant::now();
    assert_eq!(busy.post_empty("/queues/held/resume").status, 200);
    idle.wait_for_status(&held, "success", secs(10));
    assert!(resumed.elapsed() < secs(3), "{:?}", resumed.elapsed());
    assert_eq!(idle.attempts(&held)[0]["node"], "idle");
}
