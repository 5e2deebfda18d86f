//! `GET /jobs/:id?wait=N`: the answer comes when the job ends, or after N seconds with the
//! job as it is; invalid waits are refused; at most half the connection slots wait at once;
//! a stopping server answers its waiters at once; on PostgreSQL a job that ends on another
//! node wakes the waiter here.

mod support;

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

/// `GET /jobs/{id}?wait={seconds}` on `addr`, and how long its answer took.
fn wait_for(addr: SocketAddr, id: &str, seconds: &str) -> (Response, Duration) {
    let started = Instant::now();
    let response = request(
        addr,
        "GET",
        &format!("/jobs/{id}?wait={seconds}"),
        &[],
        None,
    );
    (response, started.elapsed())
}

/// A job that stays pending for an hour.
fn future_job(server: &TestServer) -> String {
    server.submit(json!({"payload": {"duration_ms": 0}, "delay_seconds": 3600}))
}

/// A request waiting on a job, in a thread of its own.
type Waiting = thread::JoinHandle<(Response, Duration)>;

fn start_waiting(addr: SocketAddr, id: &str) -> Waiting {
    let id = id.to_string();
    thread::spawn(move || wait_for(addr, &id, "30"))
}

/// Starts one waiting request on each of `ids` and returns once all of them wait and every
/// waiting slot is taken: a `wait=1` then answers at once. A request refused a slot because
/// such a probe held it answers at once, and is started again; no probe is sent in the
/// round a request was (re)started, which gives it a head start.
fn all_waiting(addr: SocketAddr, ids: &[String]) -> Vec<Waiting> {
    let mut waiting: Vec<Waiting> = ids.iter().map(|id| start_waiting(addr, id)).collect();
    let mut started = true;
    eventually(secs(30), "every waiting slot taken", || {
        for (index, wait) in waiting.iter_mut().enumerate() {
            if wait.is_finished() {
                *wait = start_waiting(addr, &ids[index]);
                started = true;
            }
        }
        if std::mem::take(&mut started) {
            return None;
        }
        let (response, took) = wait_for(addr, &ids[0], "1");
        let full = response.status == 200 && took < ms(500);
        (full && waiting.iter().all(|wait| !wait.is_finished())).then_some(())
    });
    waiting
}

#[test]
fn a_wait_answers_as_soon_as_the_job_ends() {
    let server = TestServer::start();
    let id = server.submit(json!({"payload": {"duration_ms": 300, "result": {"n": 7}}}));
    let (response, took) = wait_for(server.addr, &id, "30");
    assert_eq!(response.status, 200, "{}", response.text());
    let job = response.json();
    assert_job_shape(&job);
    assert_eq!(job["status"], "success", "{job}");
    assert_eq!(job["result"], json!({"n": 7}));
    assert!(took < secs(2), "took {took:?}");
}

#[test]
fn a_wait_on_a_job_that_does_not_end_answers_after_n_seconds_with_the_job_as_it_is() {
    let server = TestServer::start();
    let id = future_job(&server);
    let (response, took) = wait_for(server.addr, &id, "1");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["status"], "pending");
    assert!(took >= secs(1) && took < secs(3), "took {took:?}");
}

#[test]
fn a_wait_on_an_ended_job_answers_at_once() {
    let server = TestServer::start();
    let id = server
        .submit(json!({"payload": {"duration_ms": 0, "should_fail": true}, "max_retries": 0}));
    server.wait_for_status(&id, "failed", secs(10));
    let (response, took) = wait_for(server.addr, &id, "30");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["status"], "failed");
    assert!(took < secs(1), "took {took:?}");
}

#[test]
fn a_wait_that_is_not_1_to_60_whole_seconds_or_an_unknown_parameter_is_refused() {
    let server = TestServer::start();
    let id = future_job(&server);
    for query in [
        "wait=0",
        "wait=61",
        "wait=-1",
        "wait=%2B5",
        "wait=1.5",
        "wait=1e1",
        "wait=abc",
        "wait=",
        "wait",
        "wait=99999999999999999999999",
        "wait=1&wait=2",
        "wait=1&limit=3",
        "timeout=5",
    ] {
        let started = Instant::now();
        let response = server.get(&format!("/jobs/{id}?{query}"));
        let message = assert_error(&response, 400, "validation_error");
        assert!(started.elapsed() < secs(1), "{query}");
        assert!(
            message.contains("wait") || message.contains("parameter"),
            "{query}: {message}"
        );
    }
    // The bounds themselves are accepted.
    let ended = server.submit(json!({"payload": {"duration_ms": 0}}));
    server.wait_for_status(&ended, "success", secs(10));
    for seconds in ["1", "60", "007"] {
        let (response, took) = wait_for(server.addr, &ended, seconds);
        assert_eq!(response.status, 200, "wait={seconds}: {}", response.text());
        assert!(took < secs(1), "wait={seconds} took {took:?}");
    }
}

#[test]
fn a_job_deleted_or_cancelled_during_a_wait_ends_the_wait() {
    let missing = "0192f6c4-0000-7000-8000-000000000001";
    let server = TestServer::start();
    let (response, took) = wait_for(server.addr, missing, "30");
    assert_error(&response, 404, "not_found");
    assert!(took < secs(1), "took {took:?}");
    drop(server);

    // Two connection slots more than the test's own: two may wait, and do.
    let server = TestServer::builder().env("MAX_CONNECTIONS", "4").start();
    let deleted = future_job(&server);
    let cancelled = future_job(&server);
    let addr = server.addr;
    let waits = all_waiting(addr, &[deleted.clone(), cancelled.clone()]);
    let ended_at = Instant::now();
    assert_eq!(server.delete(&format!("/jobs/{deleted}")).status, 204);
    assert_eq!(
        server
            .post_empty(&format!("/jobs/{cancelled}/cancel"))
            .status,
        200
    );
    let mut answers = waits.into_iter().map(|wait| wait.join().unwrap());
    let (gone, _) = answers.next().unwrap();
    assert_error(&gone, 404, "not_found");
    let (stopped, _) = answers.next().unwrap();
    assert_eq!(stopped.status, 200, "{}", stopped.text());
    assert_eq!(stopped.json()["status"], "cancelled");
    assert!(ended_at.elapsed() < secs(2), "{:?}", ended_at.elapsed());
}

#[test]
fn waits_beyond_half_the_connection_slots_answer_at_once_and_slots_free_up() {
    // Four connection slots: two may wait.
    let server = TestServer::builder().env("MAX_CONNECTIONS", "4").start();
    let id = future_job(&server);
    let addr = server.addr;
    let waiting = all_waiting(addr, &[id.clone(), id.clone()]);
    let (extra, took) = wait_for(addr, &id, "30");
    assert_eq!(extra.json()["status"], "pending");
    assert!(took < secs(1), "took {took:?}");
    assert!(waiting.iter().all(|wait| !wait.is_finished()));

    // Both waiters see the end; their slots are free again afterwards.
    assert_eq!(server.post_empty(&format!("/jobs/{id}/cancel")).status, 200);
    for wait in waiting {
        let (response, took) = wait.join().unwrap();
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.json()["status"], "cancelled");
        assert!(took < secs(20), "took {took:?}");
    }
    let other = future_job(&server);
    let (response, took) = wait_for(addr, &other, "1");
    assert_eq!(response.json()["status"], "pending");
    assert!(
        took >= secs(1),
        "a slot stayed taken: answered after {took:?}"
    );
}

#[test]
fn a_stopping_server_answers_its_waiters_at_once() {
    // Two connection slots: one may wait.
    let mut server = TestServer::builder().env("MAX_CONNECTIONS", "2").start();
    let id = future_job(&server);
    let addr = server.addr;
    let mut waiting = all_waiting(addr, &[id]);
    let waiter = waiting.remove(0);
    let stopping = Instant::now();
    server.sigterm();
    let (response, _) = waiter.join().unwrap();
    assert!(stopping.elapsed() < secs(3), "{:?}", stopping.elapsed());
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["status"], "pending");
    assert!(server.wait_exit(secs(10)).success());
}

#[test]
fn on_postgresql_a_job_that_ends_on_another_node_wakes_the_wait_here() {
    let Some(database) = Database::postgres() else {
        eprintln!("{NEEDS_POSTGRES}");
        return;
    };
    let runner = TestServer::builder()
        .database(&database)
        .env("NODE_ID", "runner")
        .start();
    let id = runner.submit(json!({"payload": {"duration_ms": 3000}}));
    runner.wait_for_status(&id, "running", secs(5));
    // Started once the job runs on the other node, so this one cannot have claimed it.
    let waiter = TestServer::builder()
        .database(&database)
        .env("NODE_ID", "waiter")
        .start();
    let (response, _) = wait_for(waiter.addr, &id, "30");
    let answered = now_micros();
    assert_eq!(response.status, 200, "{}", response.text());
    let job = response.json();
    assert_eq!(job["status"], "success", "{job}");
    let attempts = waiter.attempts(&id);
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["node"], "runner");
    let late = answered - ts(&job, "finished_at");
    assert!(late < 1_000_000, "answered {late} µs after the job ended");
}

/// Under load, many jobs end in each commit batch, each heard of before its batch commits:
/// every wait must still answer when its job ends, not when its `wait` runs out.
#[test]
fn waits_on_many_jobs_ending_together_each_answer_at_their_end() {
    let server = TestServer::builder().env("WORKER_COUNT", "16").start();
    // Jobs a year ahead, submitted meanwhile, keep the writer's batches full.
    let busy = {
        let addr = server.addr;
        thread::spawn(move || {
            let body = json!({"payload": {"duration_ms": 0}, "delay_seconds": 31_536_000});
            for _ in 0..2_000 {
                request(
                    addr,
                    "POST",
                    "/jobs",
                    &[],
                    Some(body.to_string().as_bytes()),
                );
            }
        })
    };
    let ids: Vec<String> = (0..200)
        .map(|n| server.submit(json!({"payload": {"duration_ms": 20 + n % 7 * 5}})))
        .collect();
    let waits: Vec<_> = ids
        .iter()
        .map(|id| {
            let (addr, id) = (server.addr, id.clone());
            thread::spawn(move || wait_for(addr, &id, "30"))
        })
        .collect();
    for wait in waits {
        let (response, took) = wait.join().expect("a waiting thread");
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.json()["status"], "success", "{}", response.text());
        assert!(
            took < secs(10),
            "a wait took {took:?}: it missed its job's end"
        );
    }
    busy.join().expect("the submitting thread");
}
