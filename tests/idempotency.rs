//! `Idempotency-Key` on `POST /jobs` and `POST /jobs/batch`: a repeat with the same key and body
//! gets the first answer again, byte for byte, and creates nothing; another body with the key
//! is `422`; only successful creations are remembered; keys survive a restart, expire after
//! `IDEMPOTENCY_TTL_SECONDS`, and concurrent repeats create one job.

mod support;

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};
use support::{assert_error, eventually, request, Response, TestServer};

const REPLAYED: &str = "idempotent-replayed";

/// Scheduled an hour ahead, so the job stays pending for the whole test.
fn later(n: usize) -> Value {
    json!({"payload": {"n": n}, "delay_seconds": 3600})
}

fn post_with_key(server: &TestServer, path: &str, key: &str, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap();
    server.request(
        "POST",
        path,
        &[
            ("Content-Type", "application/json"),
            ("Idempotency-Key", key),
        ],
        Some(&bytes),
    )
}

fn stored(server: &TestServer) -> Vec<Value> {
    server.list("/jobs?limit=1000").0
}

fn assert_first_answer(response: &Response) {
    assert_eq!(response.status, 201, "{}", response.text());
    assert_eq!(response.header(REPLAYED), None);
}

fn assert_replay_of(response: &Response, first: &Response) {
    assert_eq!(response.status, first.status, "{}", response.text());
    assert_eq!(response.body, first.body, "byte for byte");
    assert_eq!(response.header(REPLAYED), Some("true"));
    assert_eq!(
        response.header("content-type"),
        first.header("content-type")
    );
    assert_eq!(response.header("location"), first.header("location"));
}

#[test]
fn a_repeated_submit_gets_the_first_answer_again_and_creates_nothing() {
    let server = TestServer::start();
    let first = post_with_key(&server, "/jobs", "order-17", &later(1));
    assert_first_answer(&first);
    let id = first.json()["job_id"].as_str().unwrap().to_string();
    assert_eq!(
        first.header("location"),
        Some(format!("/jobs/{id}").as_str())
    );
    for _ in 0..3 {
        assert_replay_of(
            &post_with_key(&server, "/jobs", "order-17", &later(1)),
            &first,
        );
    }
    let jobs = stored(&server);
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["id"], id.as_str());
    assert_eq!(server.job(&id)["payload"], json!({"n": 1}));
    // Without the key, the same body is a new job.
    server.submit(later(1));
    assert_eq!(stored(&server).len(), 2);
}

#[test]
fn a_repeated_batch_gets_the_first_answer_again_and_creates_nothing() {
    let server = TestServer::start();
    let body = json!({"jobs": [later(0), later(1), later(2)]});
    let first = post_with_key(&server, "/jobs/batch", "batch-1", &body);
    assert_first_answer(&first);
    assert_eq!(first.json()["jobs"].as_array().unwrap().len(), 3);
    assert_replay_of(
        &post_with_key(&server, "/jobs/batch", "batch-1", &body),
        &first,
    );
    assert_eq!(stored(&server).len(), 3);
}

#[test]
fn the_same_key_with_another_body_or_route_is_422_and_stores_nothing() {
    let server = TestServer::start();
    let first = post_with_key(&server, "/jobs", "k", &later(1));
    assert_first_answer(&first);
    let reused = |response: Response| {
        let message = assert_error(&response, 422, "idempotency_key_reused");
        assert_eq!(
            message,
            "Idempotency-Key \"k\" was used for a request with another body or route within IDEMPOTENCY_TTL_SECONDS; send a new key with a new request"
        );
    };
    reused(post_with_key(&server, "/jobs", "k", &later(2)));
    // Another body even if it would be refused (the key is looked at first).
    reused(post_with_key(
        &server,
        "/jobs",
        "k",
        &json!({"payload": 1, "priority": 99}),
    ));
    reused(post_with_key(
        &server,
        "/jobs/batch",
        "k",
        &json!({"jobs": [later(1)]}),
    ));
    // The same JSON written with other bytes is another body.
    let spaced = server.request(
        "POST",
        "/jobs",
        &[
            ("Content-Type", "application/json"),
            ("Idempotency-Key", "k"),
        ],
        Some(br#"{"payload": {"n": 1}, "delay_seconds": 3600}"#),
    );
    reused(spaced);
    assert_eq!(stored(&server).len(), 1);
    // The first request is still answered as it was.
    assert_replay_of(&post_with_key(&server, "/jobs", "k", &later(1)), &first);
}

#[test]
fn a_key_must_be_1_to_255_visible_ascii_characters() {
    let server = TestServer::start();
    let long = "k".repeat(256);
    for bad in ["", "two words", long.as_str()] {
        let message = assert_error(
            &post_with_key(&server, "/jobs", bad, &later(1)),
            400,
            "validation_error",
        );
        assert!(
            message.starts_with("Idempotency-Key must be 1 to 255 visible ASCII characters"),
            "{message}"
        );
    }
    let twice = server.request(
        "POST",
        "/jobs",
        &[("Idempotency-Key", "a"), ("Idempotency-Key", "b")],
        Some(later(1).to_string().as_bytes()),
    );
    let message = assert_error(&twice, 400, "validation_error");
    assert_eq!(message, "send at most one Idempotency-Key header");
    assert!(stored(&server).is_empty());
    let longest = "~".repeat(255);
    assert_first_answer(&post_with_key(&server, "/jobs", &longest, &later(1)));
    assert_first_answer(&post_with_key(
        &server,
        "/jobs/batch",
        "!#$%&'*+-.^_`|",
        &json!({"jobs": [later(1)]}),
    ));
}

#[test]
fn a_refused_request_is_not_remembered_so_the_client_can_fix_it_and_retry() {
    let server = TestServer::builder().env("MAX_PENDING_JOBS", "1").start();
    let mut bad = later(1);
    bad["timeout_seconds"] = json!(0);
    assert_error(
        &post_with_key(&server, "/jobs", "fix-me", &bad),
        400,
        "validation_error",
    );
    assert_error(
        &post_with_key(
            &server,
            "/jobs/batch",
            "fix-me-too",
            &json!({"jobs": [bad]}),
        ),
        400,
        "validation_error",
    );
    // The fixed request creates the job: the key was not taken by the refused one.
    assert_first_answer(&post_with_key(&server, "/jobs", "fix-me", &later(1)));

    // The queue is full now: a 429 is not remembered either.
    let full = post_with_key(
        &server,
        "/jobs/batch",
        "fix-me-too",
        &json!({"jobs": [later(2)]}),
    );
    assert_error(&full, 429, "queue_full");
    let only = &stored(&server)[0];
    assert_eq!(
        server
            .delete(&format!("/jobs/{}", only["id"].as_str().unwrap()))
            .status,
        204
    );
    let created = post_with_key(
        &server,
        "/jobs/batch",
        "fix-me-too",
        &json!({"jobs": [later(2)]}),
    );
    assert_first_answer(&created);
    assert_eq!(stored(&server).len(), 1);
    // A stored key is replayed even while the queue is full.
    assert_replay_of(
        &post_with_key(
            &server,
            "/jobs/batch",
            "fix-me-too",
            &json!({"jobs": [later(2)]}),
        ),
        &created,
    );
}

#[test]
fn keys_survive_a_restart() {
    let mut server = TestServer::start();
    let first = post_with_key(&server, "/jobs", "durable", &later(1));
    assert_first_answer(&first);
    let batch = json!({"jobs": [later(2), later(3)]});
    let first_batch = post_with_key(&server, "/jobs/batch", "durable-batch", &batch);
    assert_first_answer(&first_batch);
    server.restart();
    assert_replay_of(
        &post_with_key(&server, "/jobs", "durable", &later(1)),
        &first,
    );
    assert_replay_of(
        &post_with_key(&server, "/jobs/batch", "durable-batch", &batch),
        &first_batch,
    );
    assert_eq!(stored(&server).len(), 3);
}

#[test]
fn an_expired_key_counts_as_absent_and_is_replaced() {
    let server = TestServer::builder()
        .env("IDEMPOTENCY_TTL_SECONDS", "1")
        .start();
    let first = post_with_key(&server, "/jobs", "short-lived", &later(1));
    assert_first_answer(&first);
    // Replayed until the key is a second old; then the same request creates a second job.
    let second = eventually(Duration::from_secs(10), "the key to expire", || {
        let response = post_with_key(&server, "/jobs", "short-lived", &later(1));
        assert_eq!(response.status, 201, "{}", response.text());
        if response.header(REPLAYED).is_some() {
            assert_eq!(response.body, first.body);
            return None;
        }
        Some(response)
    });
    assert_ne!(second.body, first.body);
    assert_eq!(stored(&server).len(), 2);
    // The key now answers as the second request was answered (or has expired again).
    let again = post_with_key(&server, "/jobs", "short-lived", &later(1));
    if again.header(REPLAYED).is_some() {
        assert_eq!(again.body, second.body);
    }
    // After expiry another body may take the key.
    eventually(
        Duration::from_secs(10),
        "another body to take the key",
        || {
            let response = post_with_key(&server, "/jobs", "short-lived", &later(2));
            match response.status {
                422 => None,
                201 => Some(()),
                other => panic!("{other}: {}", response.text()),
            }
        },
    );
}

/// 16 requests with one key at once: one job, and every request is answered its id.
fn race(server: &TestServer, path: &'static str, body: Value, jobs: usize) {
    let start = Arc::new(Barrier::new(16));
    let racers: Vec<_> = (0..16)
        .map(|_| {
            let (start, addr, body) = (Arc::clone(&start), server.addr, body.to_string());
            thread::spawn(move || {
                start.wait();
                request(
                    addr,
                    "POST",
                    path,
                    &[
                        ("Content-Type", "application/json"),
                        ("Idempotency-Key", "race"),
                    ],
                    Some(body.as_bytes()),
                )
            })
        })
        .collect();
    let responses: Vec<Response> = racers
        .into_iter()
        .map(|racer| racer.join().unwrap())
        .collect();
    for response in &responses {
        assert_eq!(response.status, 201, "{}", response.text());
        assert_eq!(response.body, responses[0].body);
    }
    let replayed = responses
        .iter()
        .filter(|response| response.header(REPLAYED) == Some("true"))
        .count();
    assert_eq!(replayed, 15);
    assert_eq!(stored(server).len(), jobs);
}

#[test]
fn sixteen_concurrent_submits_with_one_key_create_one_job() {
    let server = TestServer::start();
    race(&server, "/jobs", later(1), 1);
}

#[test]
fn sixteen_concurrent_batches_with_one_key_create_one_batch() {
    let server = TestServer::start();
    race(
        &server,
        "/jobs/batch",
        json!({"jobs": [later(1), later(2)]}),
        2,
    );
}

/// Clients submitting keyed batches while the server is killed (`kill -9`): after the restart
/// every acknowledged batch replays its first answer, a request left unanswered by the kill
/// either replays or creates its batch, and each key has exactly one batch stored.
#[test]
fn keyed_batches_survive_a_kill_9_in_the_middle_of_submits() {
    let mut server = TestServer::start();
    let addr = server.addr;
    let body = |client: usize, n: usize| {
        json!({"jobs": [later(client * 10_000 + n * 3), later(client * 10_000 + n * 3 + 1),
                        later(client * 10_000 + n * 3 + 2)]})
    };
    let acknowledged = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|client| {
            let acknowledged = Arc::clone(&acknowledged);
            thread::spawn(move || {
                // (key, body, the answer's body if one came)
                let mut sent: Vec<(String, Value, Option<String>)> = Vec::new();
                for n in 0.. {
                    let key = format!("client-{client}-{n}");
                    let bytes = serde_json::to_vec(&body(client, n)).unwrap();
                    let headers = [
                        ("Content-Type", "application/json"),
                        ("Idempotency-Key", key.as_str()),
                    ];
                    match support::try_request(addr, "POST", "/jobs/batch", &headers, Some(&bytes))
                    {
                        Ok(response) if response.status == 201 => {
                            sent.push((key, body(client, n), Some(response.text())));
                            acknowledged.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        _ => {
                            sent.push((key, body(client, n), None));
                            return sent;
                        }
                    }
                }
                sent
            })
        })
        .collect();
    eventually(Duration::from_secs(30), "40 batches acknowledged", || {
        (acknowledged.load(std::sync::atomic::Ordering::SeqCst) >= 40).then_some(())
    });
    server.restart();
    let mut keys = 0;
    for client in clients {
        for (key, body, answer) in client.join().expect("a client thread") {
            keys += 1;
            let again = post_with_key(&server, "/jobs/batch", &key, &body);
            assert_eq!(again.status, 201, "{key}: {}", again.text());
            if let Some(first) = answer {
                assert_eq!(again.header(REPLAYED), Some("true"), "{key}");
                assert_eq!(
                    again.text(),
                    first,
                    "{key}: another answer after the restart"
                );
            }
        }
    }
    // Every job waits an hour: the default queue's pending count is every stored job.
    let queues = server.get("/queues").json();
    let pending = queues
        .as_array()
        .and_then(|queues| queues.iter().find(|queue| queue["name"] == "default"))
        .map(|queue| queue["counts"]["pending"].clone());
    assert_eq!(
        pending,
        Some(json!(keys * 3)),
        "each key must have exactly one batch of three jobs: {queues}"
    );
}
