//! The PostgreSQL backend against a real server: run only when `TEST_POSTGRES_URL` names one
//! (`postgres://root@127.0.0.1/test`). Each test works in a fresh schema of its own, dropped
//! at the end, so tests run in parallel and leave nothing behind.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::unbounded;
use postgres::{Client, NoTls};
use serde_json::json;

use super::*;
use crate::job::{AttemptStatus, NewJob};
use crate::store::EndedElsewhere;

/// A schema of its own for one test; dropped (with everything in it) when the test ends.
struct TestSchema {
    base: String,
    name: String,
}

impl TestSchema {
    /// `None`, saying so, when no server is configured.
    fn new(test: &str) -> Option<TestSchema> {
        let Ok(base) = std::env::var("TEST_POSTGRES_URL") else {
            eprintln!("skipped: TEST_POSTGRES_URL not set");
            return None;
        };
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "mlr_{test}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let schema = TestSchema { base, name };
        schema
            .client()
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", schema.name))
            .unwrap();
        Some(schema)
    }

    /// The connection string with this schema as the search path.
    fn url(&self) -> String {
        let separator = if self.base.contains('?') { '&' } else { '?' };
        format!(
            "{}{separator}options=-csearch_path%3D{}",
            self.base, self.name
        )
    }

    fn open(&self, node: &str) -> PostgresStore {
        self.open_with(node, 0)
    }

    fn open_with(&self, node: &str, max_pending_jobs: u64) -> PostgresStore {
        let options = Options {
            pool_size: 4,
            ..Options::for_test(node, max_pending_jobs)
        };
        PostgresStore::open(&self.url(), &options).unwrap()
    }

    /// A plain connection in this schema, to look at or arrange rows directly.
    fn client(&self) -> Client {
        Client::connect(&self.url(), NoTls).unwrap()
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        if let Ok(mut client) = Client::connect(&self.base, NoTls) {
            let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
        }
    }
}

fn new_job(priority: u8, run_at: Option<i64>) -> NewJob {
    NewJob::for_test(priority, run_at)
}

fn at(micros: i64) -> Timestamp {
    Timestamp::from_micros(micros)
}

fn claimed_id(store: &PostgresStore, now: i64) -> Option<String> {
    store.claim_next_due(at(now)).unwrap().map(|job| job.id)
}

#[test]
fn claims_take_the_highest_priority_then_the_oldest_due_job() {
    let Some(db) = TestSchema::new("claim_order") else {
        return;
    };
    let store = db.open("n1");
    for (id, priority, run_at) in [
        ("low-old", 0, 10),
        ("high-new", 5, 30),
        ("high-old", 5, 20),
        ("high-future", 9, 1_000),
        ("low-new", 0, 40),
    ] {
        store
            .insert(id.into(), &new_job(priority, Some(run_at)), at(1))
            .unwrap();
    }
    let order: Vec<_> = std::iter::from_fn(|| claimed_id(&store, 100)).collect();
    assert_eq!(order, ["high-old", "high-new", "low-old", "low-new"]);
    assert_eq!(store.next_due_at().unwrap(), Some(at(1_000)));
    let job = store.claim_next_due(at(1_000)).unwrap().unwrap();
    assert_eq!(
        (
            job.id.as_str(),
            job.status,
            job.attempt,
            job.node.as_deref()
        ),
        ("high-future", JobStatus::Running, Some(1), Some("n1"))
    );
    assert_eq!(job.started_at, Some(at(1_000)));
    assert_eq!(store.next_due_at().unwrap(), None);
}

#[test]
fn concurrent_claims_on_two_nodes_take_each_job_exactly_once() {
    let Some(db) = TestSchema::new("skip_locked") else {
        return;
    };
    let nodes = [Arc::new(db.open("n1")), Arc::new(db.open("n2"))];
    const THREADS: usize = 8;
    const JOBS_PER_THREAD: usize = 200;
    for n in 0..THREADS * JOBS_PER_THREAD {
        nodes[0]
            .insert(format!("job-{n}"), &new_job((n % 10) as u8, None), at(1))
            .unwrap();
    }
    let start = Arc::new(Barrier::new(THREADS));
    let claimers: Vec<_> = (0..THREADS)
        .map(|thread| {
            let store = Arc::clone(&nodes[thread % 2]);
            let start = Arc::clone(&start);
            thread::spawn(move || {
                start.wait();
                let mut mine = Vec::new();
                while let Some(job) = store.claim_next_due(at(2)).unwrap() {
                    mine.push(job.id);
                }
                mine
            })
        })
        .collect();
    let mut seen = HashSet::new();
    let mut total = 0;
    for claimer in claimers {
        for id in claimer.join().unwrap() {
            total += 1;
            assert!(seen.insert(id.clone()), "{id} was claimed twice");
        }
    }
    assert_eq!(total, THREADS * JOBS_PER_THREAD);
    let attempts: i64 = db
        .client()
        .query_one(
            "SELECT count(*) FROM attempts WHERE attempt = 1 AND status = 'running'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(attempts, (THREADS * JOBS_PER_THREAD) as i64);
}

#[test]
fn an_outcome_lands_only_on_its_own_attempt() {
    let Some(db) = TestSchema::new("own_attempt") else {
        return;
    };
    let store = db.open("n1");
    store.insert("a".into(), &new_job(0, None), at(1)).unwrap();
    let first = store.claim_next_due(at(10)).unwrap().unwrap();
    let retry = AttemptEnd::Failed {
        error: "boom".into(),
        retry_at: Some(at(20)),
    };
    let details = AttemptDetails {
        exit_code: Some(3),
        stderr_tail: Some("bad\0byte".into()),
    };
    assert!(store
        .finish_attempt(&first, &retry, &details, at(2_010))
        .unwrap());
    let pending = store.get("a").unwrap().unwrap();
    assert_eq!(
        (
            pending.status,
            pending.retry_count,
            pending.run_at,
            pending.node
        ),
        (JobStatus::Pending, 1, at(20), None)
    );
    let second = store.claim_next_due(at(30)).unwrap().unwrap();
    assert_eq!(second.attempt, Some(2));
    // The first attempt's outcome, delivered again (a recovery elsewhere, say): dropped.
    let late = AttemptEnd::Succeeded {
        result: json!("late"),
    };
    assert!(!store
        .finish_attempt(&first, &late, &AttemptDetails::default(), at(35))
        .unwrap());
    let done = AttemptEnd::Succeeded {
        result: serde_json::from_str(r#"{"z":1,"a":12345678901234567890123}"#).unwrap(),
    };
    let next = store
        .finish_and_claim_next(&second, &done, &AttemptDetails::default(), at(40))
        .unwrap();
    assert!(next.recorded && next.next.is_none() && next.next_due.is_none());
    let job = store.get("a").unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Success);
    assert_eq!(
        serde_json::to_string(&job.result).unwrap(),
        r#"{"z":1,"a":12345678901234567890123}"#
    );
    let attempts = store.attempts("a").unwrap().unwrap();
    let summary: Vec<_> = attempts
        .iter()
        .map(|a| (a.attempt, a.status, a.duration_ms, a.node.as_deref()))
        .collect();
    assert_eq!(
        summary,
        [
            (1, AttemptStatus::Failed, Some(2), Some("n1")),
            (2, AttemptStatus::Success, Some(0), Some("n1"))
        ]
    );
    assert_eq!(attempts[0].exit_code, Some(3));
    assert_eq!(attempts[0].stderr_tail.as_deref(), Some("bad\u{FFFD}byte"));
    assert_eq!(attempts[0].error_message.as_deref(), Some("boom"));
    assert_eq!(store.attempts("nope").unwrap().map(|a| a.len()), None);
    store.insert("b".into(), &new_job(0, None), at(1)).unwrap();
    assert_eq!(store.attempts("b").unwrap().map(|a| a.len()), Some(0));
}

#[test]
fn a_payload_comes_back_byte_for_byte() {
    let Some(db) = TestSchema::new("payload") else {
        return;
    };
    let store = db.open("n1");
    let text =
        r#"{"zeta":1.50,"alpha":[1e3,-0.0],"big":123456789012345678901234567890,"s":"\u0000é"}"#;
    let mut job = new_job(0, None);
    job.payload = serde_json::from_str(text).unwrap();
    store.insert("p".into(), &job, at(1)).unwrap();
    let stored = store.get("p").unwrap().unwrap();
    assert_eq!(
        serde_json::to_string(&stored.payload).unwrap(),
        serde_json::to_string(&job.payload).unwrap()
    );
    assert!(store.get("p\0").unwrap().is_none());
}

#[test]
fn cancel_delete_and_retry_say_what_they_refuse() {
    let Some(db) = TestSchema::new("cancel") else {
        return;
    };
    let store = db.open("n1");
    store
        .insert("waiting".into(), &new_job(0, Some(1_000)), at(1))
        .unwrap();
    store
        .insert("busy".into(), &new_job(9, None), at(1))
        .unwrap();
    let busy = store.claim_next_due(at(2)).unwrap().unwrap();
    match store.cancel("waiting", at(3)).unwrap() {
        Cancel::Cancelled(job) => {
            assert_eq!(job.status, JobStatus::Cancelled);
            assert_eq!(job.error_message.as_deref(), Some("cancelled by request"));
            assert_eq!(job.finished_at, Some(at(3)));
        }
        Cancel::Running(job) => panic!("a pending job is cancelled at once: {job:?}"),
    }
    assert!(store.claim_next_due(at(5_000)).unwrap().is_none());
    assert!(!store.running_here().unwrap()[0].cancel_requested);
    match store.cancel("busy", at(4)).unwrap() {
        Cancel::Running(job) => assert_eq!(job.status, JobStatus::Running),
        Cancel::Cancelled(job) => panic!("a running job is left to its worker: {job:?}"),
    }
    assert_eq!(
        store.running_here().unwrap(),
        [RunningHere {
            job_id: "busy".into(),
            attempt: 1,
            cancel_requested: true
        }]
    );
    let message = |result: Result<_>| match result {
        Err(Error::InvalidState(message) | Error::NotFound(message)) => message,
        Err(other) => panic!("unexpected error {other:?}"),
        Ok(_) => panic!("not refused"),
    };
    assert_eq!(
        message(store.cancel("waiting", at(5)).map(|_| ())),
        "job waiting is cancelled; only pending or running jobs can be cancelled"
    );
    assert_eq!(
        message(store.cancel("nope", at(5)).map(|_| ())),
        "no job with id nope"
    );
    assert_eq!(
        message(store.retry("busy", at(5)).map(|_| ())),
        "job busy is running; only failed, timeout or cancelled jobs can be retried"
    );
    assert_eq!(
        message(store.retry("nope", at(5)).map(|_| ())),
        "no job with id nope"
    );

    // A manual retry starts over with the full budget; its next attempt is numbered on.
    let cancelled = AttemptEnd::Cancelled {
        reason: "by request".into(),
    };
    assert!(store
        .finish_attempt(&busy, &cancelled, &AttemptDetails::default(), at(6))
        .unwrap());
    let restarted = store.retry("busy", at(7)).unwrap();
    assert_eq!(
        (
            restarted.status,
            restarted.retry_count,
            restarted.run_at,
            restarted.finished_at
        ),
        (JobStatus::Pending, 0, at(7), None)
    );
    let again = store.claim_next_due(at(8)).unwrap().unwrap();
    assert_eq!((again.id.as_str(), again.attempt), ("busy", Some(2)));
    assert!(store
        .running_here()
        .unwrap()
        .iter()
        .all(|here| !here.cancel_requested));

    // Delete returns the job as it was and takes its attempts along.
    let deleted = store.delete("busy").unwrap().unwrap();
    assert_eq!(deleted.status, JobStatus::Running);
    assert!(store.delete("busy").unwrap().is_none());
    assert!(store.get("busy").unwrap().is_none());
    let attempts_left: i64 = db
        .client()
        .query_one("SELECT count(*) FROM attempts", &[])
        .unwrap()
        .get(0);
    assert_eq!(attempts_left, 0);
    assert!(!store
        .finish_attempt(&again, &cancelled, &AttemptDetails::default(), at(9))
        .unwrap());
}

#[test]
fn list_pages_newest_first_and_refuses_an_unknown_cursor() {
    let Some(db) = TestSchema::new("list") else {
        return;
    };
    let store = db.open("n1");
    for id in ["a", "b", "c", "d"] {
        store.insert(id.into(), &new_job(0, None), at(1)).unwrap();
    }
    store.claim_next_due(at(2)).unwrap().unwrap();
    let ids = |page: &Page| {
        page.jobs
            .iter()
            .map(|job| job.id.clone())
            .collect::<Vec<_>>()
    };
    let first = store.list(&JobFilter::default(), None, 2).unwrap();
    assert_eq!(
        (ids(&first), first.has_more),
        (vec!["d".into(), "c".into()], true)
    );
    let rest = store.list(&JobFilter::default(), Some("c"), 2).unwrap();
    assert_eq!(
        (ids(&rest), rest.has_more),
        (vec!["b".into(), "a".into()], false)
    );
    let pending = store
        .list(
            &JobFilter {
                status: Some(JobStatus::Pending),
                ..JobFilter::default()
            },
            Some("d"),
            10,
        )
        .unwrap();
    assert_eq!(ids(&pending), ["c", "b"]);
    for unknown in ["zzz", "z\0"] {
        match store.list(&JobFilter::default(), Some(unknown), 2) {
            Err(Error::Validation(message)) => assert_eq!(
                message,
                format!("before must be the id of an existing job; no job has id {unknown:?}")
            ),
            other => panic!(
                "expected a validation error, got {:?}",
                other.map(|p| p.jobs.len())
            ),
        }
    }
}

#[test]
fn attempts_of_an_expired_node_are_lost_and_the_node_forgotten_once_idle() {
    let Some(db) = TestSchema::new("lease") else {
        return;
    };
    let lease = Duration::from_secs(30);
    let here = db.open("here");
    let ghost = db.open("ghost");
    for id in ["mine", "ghosts", "orphan"] {
        here.insert(id.into(), &new_job(0, None), at(1)).unwrap();
    }
    // Heartbeats carry the database's clock, whatever the node's says.
    here.heartbeat(at(0)).unwrap();
    ghost.heartbeat(at(0)).unwrap();
    assert_eq!(claimed_id(&here, 2).as_deref(), Some("mine"));
    assert_eq!(claimed_id(&ghost, 2).as_deref(), Some("ghosts"));
    assert_eq!(claimed_id(&ghost, 2).as_deref(), Some("orphan"));
    let mut client = db.client();
    // A node with no row at all has lost its lease too.
    client
        .execute("UPDATE jobs SET node = 'vanished' WHERE id = 'orphan'", &[])
        .unwrap();
    let lost = |include_own| {
        let mut ids: Vec<_> = here
            .lost_attempts(Timestamp::now(), lease, include_own)
            .unwrap()
            .into_iter()
            .map(|job| (job.id, job.attempt, job.node))
            .collect();
        ids.sort();
        ids
    };
    let orphan = ("orphan".to_string(), Some(1), Some("vanished".to_string()));
    assert_eq!(lost(false), std::slice::from_ref(&orphan));
    client
        .execute(
            "UPDATE nodes SET heartbeat_at = heartbeat_at - 3600000000 WHERE id = 'ghost'",
            &[],
        )
        .unwrap();
    let ghosts = ("ghosts".to_string(), Some(1), Some("ghost".to_string()));
    assert_eq!(lost(false), [ghosts.clone(), orphan.clone()]);
    let mine = ("mine".to_string(), Some(1), Some("here".to_string()));
    assert_eq!(lost(true), [ghosts, mine, orphan]);

    let nodes = |client: &mut Client| {
        let rows = client
            .query("SELECT id FROM nodes ORDER BY id", &[])
            .unwrap();
        rows.iter()
            .map(|row| row.get::<_, String>(0))
            .collect::<Vec<_>>()
    };
    // The ghost still runs a job: kept until that attempt is recovered.
    here.forget_nodes(Timestamp::now(), lease, false).unwrap();
    assert_eq!(nodes(&mut client), ["ghost", "here"]);
    let job = here.get("ghosts").unwrap().unwrap();
    let recovered = AttemptEnd::Failed {
        error: "interrupted".into(),
        retry_at: None,
    };
    assert!(here
        .finish_attempt(
            &job,
            &recovered,
            &AttemptDetails::default(),
            Timestamp::now()
        )
        .unwrap());
    here.forget_nodes(Timestamp::now(), lease, false).unwrap();
    assert_eq!(nodes(&mut client), ["here"]);
    here.forget_nodes(Timestamp::now(), lease, true).unwrap();
    assert!(nodes(&mut client).is_empty());
}

#[test]
fn migrations_run_once_however_many_nodes_open_the_schema() {
    let Some(db) = TestSchema::new("migrate") else {
        return;
    };
    let db = Arc::new(db);
    let openers: Vec<_> = (0..4)
        .map(|n| {
            let db = Arc::clone(&db);
            thread::spawn(move || drop(db.open(&format!("n{n}"))))
        })
        .collect();
    for opener in openers {
        opener.join().unwrap();
    }
    let store = db.open("n1");
    store
        .insert("kept".into(), &new_job(3, Some(7)), at(5))
        .unwrap();
    drop(store);
    let reopened = db.open("n1");
    assert_eq!(reopened.get("kept").unwrap().unwrap().priority, 3);
    let versions: Vec<i32> = db
        .client()
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        versions,
        (1..=schema::MIGRATIONS.len() as i32).collect::<Vec<_>>()
    );

    // A schema migrated by a newer build is refused.
    db.client()
        .execute("INSERT INTO schema_migrations (version) VALUES (999)", &[])
        .unwrap();
    let options = Options {
        sync: SyncMode::Deferred,
        ..Options::for_test("n1", 0)
    };
    match PostgresStore::open(&db.url(), &options) {
        Err(Error::Startup(message)) => assert!(message.contains("newer"), "{message}"),
        Err(other) => panic!("expected a startup error, got {other:?}"),
        Ok(_) => panic!("opened a schema from a newer build"),
    }
}

#[test]
fn an_insert_on_another_node_wakes_a_listening_one() {
    let Some(db) = TestSchema::new("listen") else {
        return;
    };
    let listening = db.open("n1");
    let (woken, wakes) = unbounded();
    listening
        .watch_other_nodes(Box::new(move || {
            let _ = woken.send(());
        }))
        .unwrap();
    // The first call comes once LISTEN is in place: anything queued before is looked for.
    wakes.recv_timeout(Duration::from_secs(10)).unwrap();
    while wakes.try_recv().is_ok() {}
    let other = db.open("n2");
    let sent = Instant::now();
    other.insert("x".into(), &new_job(0, None), at(1)).unwrap();
    wakes.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(
        sent.elapsed() < Duration::from_millis(900),
        "woken by a poll, not a notification"
    );

    // A retry scheduled by an outcome wakes it too.
    let job = other.claim_next_due(at(2)).unwrap().unwrap();
    while wakes.try_recv().is_ok() {}
    let retry = AttemptEnd::Failed {
        error: "boom".into(),
        retry_at: Some(at(3)),
    };
    other
        .finish_attempt(&job, &retry, &AttemptDetails::default(), at(3))
        .unwrap();
    wakes.recv_timeout(Duration::from_secs(5)).unwrap();
    drop(listening);
}

#[test]
fn the_pending_limit_holds_across_nodes() {
    let Some(db) = TestSchema::new("limit") else {
        return;
    };
    const LIMIT: u64 = 5;
    let nodes = [
        Arc::new(db.open_with("n1", LIMIT)),
        Arc::new(db.open_with("n2", LIMIT)),
    ];
    let start = Arc::new(Barrier::new(8));
    let submitters: Vec<_> = (0..8)
        .map(|thread| {
            let store = Arc::clone(&nodes[thread % 2]);
            let start = Arc::clone(&start);
            thread::spawn(move || {
                start.wait();
                let mut accepted = 0;
                for n in 0..10 {
                    match store.insert(format!("{thread}-{n}"), &new_job(0, None), at(1)) {
                        Ok(()) => accepted += 1,
                        Err(Error::QueueFull { limit: LIMIT }) => {}
                        Err(other) => panic!("{other:?}"),
                    }
                }
                accepted
            })
        })
        .collect();
    let accepted: u64 = submitters.into_iter().map(|s| s.join().unwrap()).sum();
    assert_eq!(accepted, LIMIT);
    // A claimed job is no longer pending, so there is room for one more.
    nodes[1].claim_next_due(at(2)).unwrap().unwrap();
    nodes[0]
        .insert("late".into(), &new_job(0, None), at(3))
        .unwrap();
    assert!(matches!(
        nodes[1].insert("too-late".into(), &new_job(0, None), at(3)),
        Err(Error::QueueFull { limit: LIMIT })
    ));
}

/// The pending jobs as the triggers count them, after checking the count against the table.
fn counted_pending(client: &mut Client) -> i64 {
    let counted: i64 = client.query_one(COUNTED_PENDING, &[]).unwrap().get(0);
    let pending: i64 = client
        .query_one("SELECT count(*) FROM jobs WHERE status = 'pending'", &[])
        .unwrap()
        .get(0);
    assert_eq!(counted, pending, "the counters disagree with the table");
    counted
}

#[test]
fn the_pending_counters_follow_every_transition() {
    let Some(db) = TestSchema::new("counters") else {
        return;
    };
    let lease = Duration::from_secs(30);
    let here = db.open_with("here", 100);
    let ghost = db.open_with("ghost", 100);
    let mut client = db.client();
    for n in 0..12 {
        here.insert(format!("j{n}"), &new_job(0, Some(n)), at(1))
            .unwrap();
    }
    assert_eq!(counted_pending(&mut client), 12);
    let retry = |at_micros| AttemptEnd::Failed {
        error: "boom".into(),
        retry_at: Some(at(at_micros)),
    };
    let none = AttemptDetails::default();

    // j0: claimed, a failure scheduled for a retry, claimed again, succeeded with the next
    // claim in one transaction (which takes j1).
    let j0 = here.claim_next_due(at(100)).unwrap().unwrap();
    assert_eq!(counted_pending(&mut client), 11);
    assert!(here.finish_attempt(&j0, &retry(0), &none, at(101)).unwrap());
    assert_eq!(counted_pending(&mut client), 12);
    let j0 = here.claim_next_due(at(100)).unwrap().unwrap();
    assert_eq!(j0.id, "j0");
    let done = AttemptEnd::Succeeded { result: json!(1) };
    let next = here
        .finish_and_claim_next(&j0, &done, &none, at(102))
        .unwrap();
    assert_eq!(next.next.map(|job| job.id).as_deref(), Some("j1"));
    assert_eq!(counted_pending(&mut client), 10);

    // j1: released (a shutdown), then claimed and failed for good, then retried by hand.
    let j1 = here.get("j1").unwrap().unwrap();
    let release = AttemptEnd::Released {
        reason: "shutdown".into(),
    };
    assert!(here.finish_attempt(&j1, &release, &none, at(103)).unwrap());
    assert_eq!(counted_pending(&mut client), 11);
    let j1 = here.claim_next_due(at(100)).unwrap().unwrap();
    assert_eq!(j1.id, "j1");
    let failed = AttemptEnd::Failed {
        error: "boom".into(),
        retry_at: None,
    };
    assert!(here.finish_attempt(&j1, &failed, &none, at(104)).unwrap());
    assert_eq!(counted_pending(&mut client), 10);
    here.retry("j1", at(105)).unwrap();
    assert_eq!(counted_pending(&mut client), 11);

    // A pending job cancelled, one deleted, a running one deleted, a running one cancelled
    // (it stays running until its attempt ends).
    assert!(matches!(
        here.cancel("j2", at(106)).unwrap(),
        Cancel::Cancelled(_)
    ));
    assert_eq!(counted_pending(&mut client), 10);
    here.retry("j2", at(107)).unwrap();
    assert_eq!(counted_pending(&mut client), 11);
    here.cancel("j2", at(107)).unwrap();
    here.delete("j3").unwrap().unwrap();
    assert_eq!(counted_pending(&mut client), 9);
    let running = here.claim_next_due(at(100)).unwrap().unwrap();
    assert_eq!(counted_pending(&mut client), 8);
    here.delete(&running.id).unwrap().unwrap();
    let running = here.claim_next_due(at(100)).unwrap().unwrap();
    assert!(matches!(
        here.cancel(&running.id, at(108)).unwrap(),
        Cancel::Running(_)
    ));
    assert_eq!(counted_pending(&mut client), 7);

    // The ghost node claims two jobs and loses its lease; their recovery puts one back in
    // the queue and ends the other.
    here.heartbeat(at(0)).unwrap();
    ghost.heartbeat(at(0)).unwrap();
    ghost.claim_next_due(at(100)).unwrap().unwrap();
    ghost.claim_next_due(at(100)).unwrap().unwrap();
    assert_eq!(counted_pending(&mut client), 5);
    client
        .execute(
            "UPDATE nodes SET heartbeat_at = heartbeat_at - 3600000000 WHERE id = 'ghost'",
            &[],
        )
        .unwrap();
    let lost = here.lost_attempts(Timestamp::now(), lease, false).unwrap();
    assert_eq!(lost.len(), 2);
    assert!(here
        .finish_attempt(&lost[0], &retry(200), &none, at(109))
        .unwrap());
    assert!(here
        .finish_attempt(&lost[1], &failed, &none, at(109))
        .unwrap());
    assert_eq!(counted_pending(&mut client), 6);

    // Statements outside the store, over many jobs at once, and a truncate.
    client
        .batch_execute(
            "UPDATE jobs SET status = 'pending' WHERE status <> 'running';
             DELETE FROM jobs WHERE id IN ('j10', 'j11')",
        )
        .unwrap();
    assert_eq!(counted_pending(&mut client), 7);
    client.batch_execute("TRUNCATE jobs").unwrap();
    assert_eq!(counted_pending(&mut client), 0);
}

#[test]
fn the_counters_start_from_the_jobs_already_pending() {
    let Some(db) = TestSchema::new("counters_migrate") else {
        return;
    };
    let mut client = Client::connect(&db.base, NoTls).unwrap();
    client
        .batch_execute(&format!(
            "CREATE SCHEMA {schema}; SET search_path = {schema}; {first};
             CREATE TABLE schema_migrations (
                version    INTEGER PRIMARY KEY,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
             );
             INSERT INTO schema_migrations (version) VALUES (1);
             INSERT INTO jobs (id, payload, status, priority, run_at, created_at, max_retries,
                               timeout_seconds)
             SELECT 'j' || n, '{{}}', CASE WHEN n % 3 = 0 THEN 'success' ELSE 'pending' END,
                    0, 1, 1, 1, 5
             FROM generate_series(1, 30) AS n",
            schema = db.name,
            first = schema::MIGRATIONS[0]
        ))
        .unwrap();
    let store = db.open_with("n1", 21);
    assert_eq!(counted_pending(&mut db.client()), 20);
    store
        .insert("last".into(), &new_job(0, None), at(1))
        .unwrap();
    assert!(matches!(
        store.insert("one-too-many".into(), &new_job(0, None), at(1)),
        Err(Error::QueueFull { limit: 21 })
    ));
}

#[test]
fn a_count_under_the_lock_sees_the_submit_it_waited_for() {
    let Some(db) = TestSchema::new("fresh_count") else {
        return;
    };
    let store = db.open_with("n1", 100);
    store.insert("a".into(), &new_job(0, None), at(1)).unwrap();
    let mut holder = db.client();
    let mut holding = holder.transaction().unwrap();
    let held: i64 = holding
        .query_one("SELECT pending_jobs_under_limit_lock(true)", &[])
        .unwrap()
        .get(0);
    assert_eq!(held, 1);
    holding
        .batch_execute(
            "INSERT INTO jobs (id, payload, status, priority, run_at, created_at, max_retries,
                               timeout_seconds)
             VALUES ('b', '{}', 'pending', 0, 1, 1, 1, 5)",
        )
        .unwrap();
    let url = db.url();
    let (waiter_pid, waiter_started) = unbounded();
    let waiter = thread::spawn(move || {
        let mut client = Client::connect(&url, NoTls).unwrap();
        let pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .unwrap()
            .get(0);
        waiter_pid.send(pid).unwrap();
        let pending: i64 = client
            .query_one("SELECT pending_jobs_under_limit_lock(false)", &[])
            .unwrap()
            .get(0);
        pending
    });
    // Commit only once the other session waits for the lock: its statement started (and
    // took its snapshot) before the insert committed.
    let pid = waiter_started
        .recv_timeout(Duration::from_secs(10))
        .unwrap();
    let mut watcher = db.client();
    let deadline = Instant::now() + Duration::from_secs(10);
    while watcher
        .query_opt(
            "SELECT 1 FROM pg_locks WHERE pid = $1 AND locktype = 'advisory' AND NOT granted",
            &[&pid],
        )
        .unwrap()
        .is_none()
    {
        assert!(Instant::now() < deadline, "the other session never waited");
        thread::sleep(Duration::from_millis(10));
    }
    holding.commit().unwrap();
    assert_eq!(waiter.join().unwrap(), 2);
}

#[test]
fn a_pending_limit_above_the_margin_holds_exactly() {
    let Some(db) = TestSchema::new("limit_margin") else {
        return;
    };
    const LIMIT: u64 = 2000;
    const THREADS: usize = 16;
    const SUBMITS: usize = 200;
    let nodes = [
        Arc::new(db.open_with("n1", LIMIT)),
        Arc::new(db.open_with("n2", LIMIT)),
    ];
    let start = Arc::new(Barrier::new(THREADS));
    let submitters: Vec<_> = (0..THREADS)
        .map(|thread| {
            let store = Arc::clone(&nodes[thread % 2]);
            let start = Arc::clone(&start);
            thread::spawn(move || {
                start.wait();
                let (mut accepted, mut refused) = (0, 0);
                for n in 0..SUBMITS {
                    match store.insert(format!("{thread}-{n}"), &new_job(0, None), at(1)) {
                        Ok(()) => accepted += 1,
                        Err(Error::QueueFull { limit: LIMIT }) => refused += 1,
                        Err(other) => panic!("{other:?}"),
                    }
                }
                (accepted, refused)
            })
        })
        .collect();
    let (accepted, refused) = submitters
        .into_iter()
        .map(|s| s.join().unwrap())
        .fold((0, 0), |(a, r), (a2, r2)| (a + a2, r + r2));
    assert_eq!(accepted, LIMIT);
    assert_eq!(refused, (THREADS * SUBMITS) as u64 - LIMIT);
    assert_eq!(counted_pending(&mut db.client()), LIMIT as i64);
}

#[test]
fn a_server_that_cannot_be_reached_is_an_outage_and_bad_credentials_are_not() {
    let Some(db) = TestSchema::new("errors") else {
        return;
    };
    let options = Options::for_test("n1", 0);
    // Port 9 (discard) on loopback: nothing listens.
    match PostgresStore::open(
        "postgres://root@127.0.0.1:9/test?connect_timeout=2",
        &options,
    ) {
        Err(Error::Storage { kind, detail }) => {
            assert_eq!(kind, StorageFailure::CannotOpen, "{detail}");
            assert!(kind.is_outage());
        }
        Err(other) => panic!("expected a storage error, got {other:?}"),
        Ok(_) => panic!("connected to nothing"),
    }
    let missing = db.base.replacen("/test", "/no_such_database_mlr", 1);
    match PostgresStore::open(&missing, &options) {
        Err(Error::DatabaseUnusable(message)) => {
            assert!(message.contains("no_such_database_mlr"), "{message}")
        }
        Err(other) => panic!("expected DatabaseUnusable, got {other:?}"),
        Ok(_) => panic!("opened a database that does not exist"),
    }
    assert!(matches!(
        PostgresStore::open("postgres://[bad", &options),
        Err(Error::Config { .. })
    ));
    let store = db.open("n1");
    store.ping().unwrap();
    store.writes_ok().unwrap();
}

#[test]
fn a_dead_connection_is_replaced() {
    let Some(db) = TestSchema::new("reconnect") else {
        return;
    };
    let options = Options::for_test("n1", 0);
    let name = format!("{}_app", db.name);
    let url = format!("{}&application_name={name}", db.url());
    let store = PostgresStore::open(&url, &options).unwrap();
    store.insert("a".into(), &new_job(0, None), at(1)).unwrap();
    // Ends this store's one pooled connection, as a server restart would (the announcer's
    // own connection, whose last statement notified, is left alone).
    let ended = db
        .client()
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE application_name = $1 AND query NOT LIKE '%pg_notify%'",
            &[&name],
        )
        .unwrap();
    assert_eq!(ended, 1);
    // A read is tried again on a new connection; the pool then serves on.
    let deadline = Instant::now() + Duration::from_secs(5);
    while db
        .client()
        .query_opt(
            "SELECT 1 FROM pg_stat_activity
             WHERE application_name = $1 AND query NOT LIKE '%pg_notify%'",
            &[&name],
        )
        .unwrap()
        .is_some()
    {
        assert!(Instant::now() < deadline, "the terminated backend lingers");
    }
    assert!(store.get("a").unwrap().is_some());
    store.insert("b".into(), &new_job(0, None), at(1)).unwrap();
}

#[test]
fn hot_statements_use_their_indexes() {
    let Some(db) = TestSchema::new("plans") else {
        return;
    };
    let store = db.open("n1");
    let mut client = db.client();
    // A database that has run a while: mostly ended jobs, each with an attempt, some waiting
    // far in the future, a few running.
    client
        .batch_execute(
            "INSERT INTO jobs (id, payload, status, priority, run_at, created_at, max_retries,
                               timeout_seconds, attempt, node, queue, function)
             SELECT 'j' || n, '{}',
                    CASE WHEN n % 100 = 0 THEN 'pending' WHEN n % 250 = 1 THEN 'running'
                         ELSE 'success' END,
                    n % 10, CASE WHEN n % 100 = 0 THEN 1000000 + n ELSE n END, n, 1, 5, 1,
                    CASE WHEN n % 250 = 1 THEN 'n' || (n % 7) END,
                    'q' || (n % 5), CASE WHEN n % 3 = 0 THEN 'f' || (n % 4) END
             FROM generate_series(1, 20000) AS n;
             INSERT INTO attempts (job_seq, attempt, status, started_at, node)
             SELECT seq, 1, status, 0, node FROM jobs;
             ANALYZE",
        )
        .unwrap();
    store.claim_next_due(at(2_000_000)).unwrap().unwrap();
    let list_args = |shape: list::Shape| {
        let mut args: Vec<&str> = Vec::new();
        // A status with many jobs: a few the planner may sort, as it may a job's attempts.
        if shape.status {
            args.push("'success'");
        }
        if shape.queue {
            args.push("'q1'");
        }
        if shape.function {
            args.push("'f1'");
        }
        args.extend(["19000", "11"]);
        args.join(", ")
    };
    let lists: Vec<(&str, String)> = list::Shape::all()
        .map(|shape| (shape.sql(), list_args(shape)))
        .collect();
    let fixed: [(&str, &str); 6] = [
        (
            FINISH_ATTEMPT,
            "1, 1, 'failed', 5, NULL, 'x', NULL, NULL, 'pending', 7",
        ),
        (SELECT_BY_ID, "'j3'"),
        (DELETE_JOB, "'j4'"),
        (ATTEMPTS_OF_JOB, "'j1'"),
        (RUNNING_HERE, "'n1'"),
        (LOST_ATTEMPTS, "'n1', false, 30000000"),
    ];
    let cases = fixed
        .iter()
        .map(|&(sql, args)| (sql, args.to_string()))
        .chain(lists);
    for (n, (sql, args)) in cases.enumerate() {
        client
            .batch_execute(&format!("BEGIN; PREPARE plan{n} AS {sql}"))
            .unwrap();
        let execute = match args.is_empty() {
            true => format!("EXPLAIN EXECUTE plan{n}"),
            false => format!("EXPLAIN EXECUTE plan{n}({args})"),
        };
        let plan: Vec<String> = client
            .query(&execute, &[])
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        client.batch_execute("ROLLBACK").unwrap();
        let shown = plan.join("\n");
        // `nodes` has a row per node: read whole, as it should be.
        for table in ["jobs", "attempts"] {
            assert!(
                !shown.contains(&format!("Seq Scan on {table}")),
                "{sql}\n{shown}"
            );
        }
        // An index scan without a condition reads the whole index.
        for (line, next) in plan.iter().zip(plan.iter().skip(1)) {
            if line.contains("Index Scan") || line.contains("Index Only Scan") {
                assert!(next.contains("Index Cond"), "{sql}\n{shown}");
            }
        }
        // A job's few attempts may be sorted; nothing else is.
        // (A `Merge Append` says its `Sort Key`: that is no sort.)
        if sql != ATTEMPTS_OF_JOB {
            assert!(!shown.contains("Sort  ("), "{sql}\n{shown}");
        }
    }
}

#[test]
fn without_listen_the_watcher_polls_every_second() {
    let Some(_db) = TestSchema::new("poll") else {
        return;
    };
    // Nothing listens on port 9: LISTEN cannot start, so the watcher polls.
    let config: postgres::Config = "postgres://root@127.0.0.1:9/test?connect_timeout=1"
        .parse()
        .unwrap();
    let (woken, wakes) = unbounded();
    let (heard, hearings) = unbounded();
    let watcher = Watcher::start(
        config,
        "public".into(),
        Box::new(move || {
            let _ = woken.send(Instant::now());
        }),
        Arc::new(move |ended: EndedElsewhere<'_>| {
            let _ = heard.send(ended == EndedElsewhere::Any);
        }),
    )
    .unwrap();
    let first = wakes.recv_timeout(Duration::from_secs(5)).unwrap();
    let second = wakes.recv_timeout(Duration::from_secs(5)).unwrap();
    let gap = second - first;
    assert!(
        gap >= Duration::from_millis(900) && gap < Duration::from_millis(2_000),
        "{gap:?}"
    );
    // Requests waiting for a job look again as often: any job may have ended elsewhere.
    assert!(hearings.recv_timeout(Duration::from_secs(5)).unwrap());
    assert!(hearings.recv_timeout(Duration::from_secs(5)).unwrap());
    drop(watcher);
    // Stopped: no more calls once the drop has returned.
    while wakes.try_recv().is_ok() {}
    assert!(wakes.recv_timeout(Duration::from_millis(1_500)).is_err());
}

#[test]
fn a_listen_that_hears_nothing_falls_back_to_polling() {
    let Some(db) = TestSchema::new("deaf") else {
        return;
    };
    let config: postgres::Config = db.url().parse().unwrap();
    let (woken, wakes) = unbounded();
    let notify = |woken: crossbeam_channel::Sender<Instant>| -> OnJobQueued {
        Box::new(move || {
            let _ = woken.send(Instant::now());
        })
    };
    // Accepted, but no LISTEN: as behind a pooler in transaction mode.
    let watcher = Watcher::start_listening_with(
        config.clone(),
        db.name.clone(),
        notify(woken),
        Arc::new(|_| {}),
        "SELECT 1".into(),
    )
    .unwrap();
    let started = Instant::now();
    // The call after "listening"; then, once the probe has gone unheard, one a second.
    wakes.recv_timeout(Duration::from_secs(5)).unwrap();
    let first_poll = wakes.recv_timeout(Duration::from_secs(10)).unwrap();
    let second_poll = wakes.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(
        first_poll - started >= Duration::from_secs(4),
        "{:?}",
        first_poll - started
    );
    assert!(second_poll - first_poll < Duration::from_millis(2_000));
    drop(watcher);

    // A real LISTEN hears its probe and stays quiet while nothing is queued.
    let (woken, wakes) = unbounded();
    let watcher = Watcher::start(config, db.name.clone(), notify(woken), Arc::new(|_| {})).unwrap();
    wakes.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(
        wakes.recv_timeout(Duration::from_secs(7)).is_err(),
        "polled"
    );
    drop(watcher);
}

fn queued_job(queue: &str, priority: u8) -> NewJob {
    let mut job = new_job(priority, None);
    job.queue = queue.into();
    job
}

#[test]
fn claims_skip_paused_full_and_rate_limited_queues_and_the_schedule_agrees() {
    use crate::queue_settings::SettingsChange;
    let Some(db) = TestSchema::new("queue_limits") else {
        return;
    };
    let store = db.open("n1");
    for (id, queue, priority) in [
        ("p1", "paused", 9),
        ("c1", "capped", 5),
        ("c2", "capped", 5),
        ("r1", "rated", 3),
        ("r2", "rated", 3),
        ("o1", "open", 0),
    ] {
        store
            .insert(id.into(), &queued_job(queue, priority), at(1))
            .unwrap();
    }
    store.set_paused("paused", true, at(1)).unwrap();
    let limit = |concurrency, rate_per_second| SettingsChange {
        concurrency,
        rate_per_second,
    };
    store
        .configure_queue("capped", &limit(Some(Some(1)), None), at(1))
        .unwrap();
    // One token a second: the first start now, the next a second later (database clock).
    store
        .configure_queue("rated", &limit(None, Some(Some(1.0))), at(1))
        .unwrap();
    let now = Timestamp::now().as_micros();
    let claimed: Vec<Job> = std::iter::from_fn(|| store.claim_next_due(at(now)).unwrap()).collect();
    let ids: Vec<&str> = claimed.iter().map(|job| job.id.as_str()).collect();
    assert_eq!(ids, ["c1", "r1", "o1"]);
    let due = store.next_due_at().unwrap().unwrap().as_micros();
    assert!(
        due > now + 500_000 && due <= Timestamp::now().as_micros() + 1_000_000,
        "{due} vs {now}"
    );
    let done = AttemptEnd::Succeeded { result: json!(1) };
    let next = store
        .finish_and_claim_next(&claimed[0], &done, &AttemptDetails::default(), at(now))
        .unwrap();
    assert_eq!(next.next.map(|job| job.id).as_deref(), Some("c2"));
    store.set_paused("paused", false, at(2)).unwrap();
    assert_eq!(claimed_id(&store, now).as_deref(), Some("p1"));
    let summary: Vec<(String, bool, u64, u64)> = store
        .queues()
        .unwrap()
        .into_iter()
        .map(|queue| {
            (
                queue.name,
                queue.paused,
                queue.counts.pending,
                queue.counts.running,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("capped".to_string(), false, 0, 1),
            ("open".to_string(), false, 0, 1),
            ("paused".to_string(), false, 0, 1),
            ("rated".to_string(), false, 1, 1)
        ]
    );
}

#[test]
fn claims_on_two_nodes_never_run_more_than_a_queues_concurrency() {
    use crate::queue_settings::SettingsChange;
    let Some(db) = TestSchema::new("queue_concurrency") else {
        return;
    };
    let nodes = [Arc::new(db.open("n1")), Arc::new(db.open("n2"))];
    for n in 0..200 {
        let queue = if n % 2 == 0 { "capped" } else { "open" };
        nodes[0]
            .insert(format!("job-{n}"), &queued_job(queue, 0), at(1))
            .unwrap();
    }
    let change = SettingsChange {
        concurrency: Some(Some(3)),
        rate_per_second: None,
    };
    nodes[0].configure_queue("capped", &change, at(1)).unwrap();
    const THREADS: usize = 8;
    let start = Arc::new(Barrier::new(THREADS));
    let claimers: Vec<_> = (0..THREADS)
        .map(|thread| {
            let store = Arc::clone(&nodes[thread % 2]);
            let start = Arc::clone(&start);
            thread::spawn(move || {
                start.wait();
                let mut mine = Vec::new();
                while let Some(job) = store.claim_next_due(at(2)).unwrap() {
                    mine.push(job.queue);
                }
                mine
            })
        })
        .collect();
    let mut capped = 0;
    let mut open = 0;
    for claimer in claimers {
        for queue in claimer.join().unwrap() {
            match queue.as_str() {
                "capped" => capped += 1,
                _ => open += 1,
            }
        }
    }
    assert_eq!((capped, open), (3, 100));
    let queues = nodes[1].queues().unwrap();
    assert_eq!(queues[0].name, "capped");
    assert_eq!(
        (queues[0].counts.running, queues[0].counts.pending),
        (3, 97)
    );
}

/// A store whose pool keeps `size` connections.
fn open_pooled(db: &TestSchema, node: &str, size: usize) -> PostgresStore {
    let options = Options {
        pool_size: size,
        ..Options::for_test(node, 0)
    };
    PostgresStore::open(&db.url(), &options).unwrap()
}

/// Each queue's (pending, running, success) by the counters.
fn queue_counts_of(store: &PostgresStore) -> Vec<(String, u64, u64, u64)> {
    store
        .queues()
        .unwrap()
        .into_iter()
        .map(|queue| {
            (
                queue.name,
                queue.counts.pending,
                queue.counts.running,
                queue.counts.success,
            )
        })
        .collect()
}

/// Workers on 24 connections each finish a job and claim the next in one transaction, the
/// jobs of two queues alternating, so transactions keep changing the counts of one queue
/// and then the other's, in both orders. Run without limits, then with one queue limited
/// (claims of it serialized on its settings row, many waiting, some missing).
#[test]
fn finishing_and_claiming_across_two_queues_on_many_connections_never_deadlocks() {
    use crate::queue_settings::SettingsChange;
    let Some(db) = TestSchema::new("cross_queues") else {
        return;
    };
    let nodes = [
        Arc::new(open_pooled(&db, "n1", 12)),
        Arc::new(open_pooled(&db, "n2", 12)),
    ];
    const THREADS: usize = 24;
    const JOBS: usize = 480;
    for round in 0..2 {
        if round == 1 {
            let change = SettingsChange {
                concurrency: Some(Some(5)),
                rate_per_second: None,
            };
            nodes[0].configure_queue("b", &change, at(1)).unwrap();
        }
        let rows: Vec<NewRow> = (0..JOBS)
            .map(|n| {
                let queue = if n % 2 == 0 { "a" } else { "b" };
                let mut job = queued_job(queue, 0);
                job.run_at = Some(at(1 + n as i64));
                (format!("r{round}-{n}"), job)
            })
            .collect();
        nodes[0].insert_jobs(&rows, None, at(1)).unwrap();
        let finished = Arc::new(AtomicUsize::new(0));
        // Set by a worker that failed, so that the others stop instead of waiting for its job.
        let failed = Arc::new(AtomicBool::new(false));
        let start = Arc::new(Barrier::new(THREADS));
        let deadline = Instant::now() + Duration::from_secs(120);
        let workers: Vec<_> = (0..THREADS)
            .map(|thread| {
                let store = Arc::clone(&nodes[thread % 2]);
                let (start, finished, failed) = (
                    Arc::clone(&start),
                    Arc::clone(&finished),
                    Arc::clone(&failed),
                );
                thread::spawn(move || -> Result<()> {
                    let done = AttemptEnd::Succeeded { result: json!(1) };
                    let details = AttemptDetails::default();
                    let now = at(1_000_000);
                    start.wait();
                    let mut next: Option<Job> = None;
                    let mut step = || -> Result<()> {
                        let job = match next.take() {
                            Some(job) => job,
                            None => match store.claim_next_due(now)? {
                                Some(job) => job,
                                // The rest run elsewhere, or wait for a place in "b".
                                None => {
                                    thread::yield_now();
                                    return Ok(());
                                }
                            },
                        };
                        let ended = store.finish_and_claim_next(&job, &done, &details, now)?;
                        assert!(ended.recorded, "{}", job.id);
                        finished.fetch_add(1, Ordering::SeqCst);
                        next = ended.next;
                        Ok(())
                    };
                    while finished.load(Ordering::SeqCst) < JOBS && !failed.load(Ordering::SeqCst) {
                        assert!(Instant::now() < deadline, "the jobs never all ended");
                        if let Err(err) = step() {
                            failed.store(true, Ordering::SeqCst);
                            return Err(err);
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for worker in workers {
            if let Err(err) = worker.join().unwrap() {
                panic!("round {round}: {err}");
            }
        }
        let ended = (JOBS / 2 * (round + 1)) as u64;
        assert_eq!(
            queue_counts_of(&nodes[1]),
            [
                ("a".to_string(), 0, 0, ended),
                ("b".to_string(), 0, 0, ended)
            ],
            "round {round}"
        );
        let mut client = db.client();
        let row = client
            .query_one(
                "SELECT count(*) FILTER (WHERE status = 'success'), count(*) FROM jobs",
                &[],
            )
            .unwrap();
        let (success, all): (i64, i64) = (row.get(0), row.get(1));
        assert_eq!((success, all), (ended as i64 * 2, ended as i64 * 2));
        let attempts: i64 = client
            .query_one(
                "SELECT count(*) FROM attempts WHERE attempt = 1 AND status = 'success'",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(attempts, ended as i64 * 2, "each job ran exactly once");
        assert_eq!(counted_pending(&mut client), 0);
    }
}

/// The sum of each queue's counters by status, and how many rows they are spread over.
fn counter_sums(client: &mut Client) -> (Vec<(String, String, i64)>, i64) {
    let sums = client
        .query(
            "SELECT queue, status, sum(n)::bigint FROM queue_counts
             GROUP BY queue, status HAVING sum(n) <> 0 ORDER BY queue, status",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    let rows: i64 = client
        .query_one("SELECT count(*) FROM queue_counts", &[])
        .unwrap()
        .get(0);
    (sums, rows)
}

fn backend_pid(client: &mut Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0)
}

/// Closes `client` and waits until the server has let its backend go.
fn close_and_wait(client: Client, pid: i32, observer: &mut Client) {
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(10);
    while observer
        .query_opt("SELECT 1 FROM pg_stat_activity WHERE pid = $1", &[&pid])
        .unwrap()
        .is_some()
    {
        assert!(Instant::now() < deadline, "backend {pid} lingers");
        thread::yield_now();
    }
}

#[test]
fn compaction_folds_the_counters_of_ended_sessions_and_keeps_every_sum() {
    let Some(db) = TestSchema::new("compact") else {
        return;
    };
    let store = db.open("n1");
    let mut observer = db.client();
    // Three sessions write counter rows of their own (inserts, a claim-like update, a delete)
    // and end; a fourth stays open.
    let mut ended = Vec::new();
    for n in 0..3 {
        let mut client = db.client();
        let pid = backend_pid(&mut client);
        client
            .batch_execute(&format!(
                "INSERT INTO jobs (id, payload, status, priority, run_at, created_at,
                                   max_retries, timeout_seconds, queue)
                 SELECT 's{n}-' || i, '{{}}', 'pending', 0, 1, 1, 1, 5,
                        CASE WHEN i % 2 = 0 THEN 'a' ELSE 'b' END
                 FROM generate_series(1, 10) AS i;
                 UPDATE jobs SET status = 'running' WHERE id IN ('s{n}-1', 's{n}-2');
                 DELETE FROM jobs WHERE id = 's{n}-3'"
            ))
            .unwrap();
        ended.push((client, pid));
    }
    let mut open = db.client();
    let open_pid = backend_pid(&mut open);
    open.batch_execute("UPDATE jobs SET status = 'success' WHERE id = 's0-4'")
        .unwrap();
    let pids: Vec<i32> = ended.iter().map(|(_, pid)| *pid).collect();
    for (client, pid) in ended {
        close_and_wait(client, pid, &mut observer);
    }
    let (before, rows_before) = counter_sums(&mut observer);
    assert_eq!(
        before,
        [
            ("a".to_string(), "pending".to_string(), 11),
            ("a".to_string(), "running".to_string(), 3),
            ("a".to_string(), "success".to_string(), 1),
            ("b".to_string(), "pending".to_string(), 9),
            ("b".to_string(), "running".to_string(), 3),
        ]
    );
    let of_ended = |client: &mut Client| -> i64 {
        client
            .query_one(
                "SELECT count(*) FROM queue_counts WHERE shard = ANY($1)",
                &[&pids],
            )
            .unwrap()
            .get(0)
    };
    // Per session: (a, pending), (b, pending), (a, running), (b, running).
    let ended_rows = of_ended(&mut observer);
    assert_eq!(ended_rows, 12);

    // A row of an ended session that some transaction holds is left for the next time,
    // without waiting; so is all of it while another node compacts.
    let mut holder = db.client();
    let mut held = holder.transaction().unwrap();
    held.execute(
        "SELECT 1 FROM queue_counts WHERE shard = $1 AND queue = 'a' AND status = 'pending'
         FOR UPDATE",
        &[&pids[0]],
    )
    .unwrap();
    let folded = store.compact_counts().unwrap();
    assert_eq!(folded, ended_rows - 1);
    assert_eq!(of_ended(&mut observer), 1);
    assert_eq!(counter_sums(&mut observer).0, before);
    held.rollback().unwrap();
    let mut other_node = holder.transaction().unwrap();
    other_node
        .execute(
            "SELECT pg_advisory_xact_lock(1835819875, hashtext(current_schema()))",
            &[],
        )
        .unwrap();
    assert_eq!(store.compact_counts().unwrap(), 0);
    other_node.rollback().unwrap();
    assert_eq!(store.compact_counts().unwrap(), 1);
    assert_eq!(store.compact_counts().unwrap(), 0);

    // What is left: shard 0 (no zeros) and the rows of live sessions; the same sums.
    let (after, rows_after) = counter_sums(&mut observer);
    assert_eq!(after, before);
    assert!(rows_after < rows_before, "{rows_after} vs {rows_before}");
    assert_eq!(of_ended(&mut observer), 0);
    let strays: i64 = observer
        .query_one(
            "SELECT count(*) FROM queue_counts
             WHERE (shard = 0 AND n = 0)
                OR (shard <> 0 AND shard NOT IN (SELECT pid FROM pg_stat_activity))",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(strays, 0);
    let open_rows: i64 = observer
        .query_one(
            "SELECT count(*) FROM queue_counts WHERE shard = $1",
            &[&open_pid],
        )
        .unwrap()
        .get(0);
    assert_eq!(open_rows, 2, "a live session's rows stay its own");

    // The counters go on from there.
    let job = store.claim_next_due(at(10)).unwrap().unwrap();
    assert_eq!((job.id.as_str(), job.queue.as_str()), ("s0-5", "b"));
    assert!(store
        .finish_attempt(
            &job,
            &AttemptEnd::Succeeded { result: json!(1) },
            &AttemptDetails::default(),
            at(11)
        )
        .unwrap());
    assert_eq!(counted_pending(&mut observer), 19);
    assert_eq!(
        queue_counts_of(&store),
        [("a".to_string(), 11, 3, 1), ("b".to_string(), 8, 3, 1)]
    );
}

/// A held job is passed over for the next of its queue, not for another queue's; a held
/// settings row is waited for, not passed over.
#[test]
fn a_restricted_claim_passes_over_only_what_another_claim_holds() {
    use crate::queue_settings::SettingsChange;
    let Some(db) = TestSchema::new("claim_held") else {
        return;
    };
    let store = Arc::new(db.open("n1"));
    for (id, queue, priority) in [
        ("c-high", "capped", 9),
        ("c-mid", "capped", 5),
        ("c-low", "capped", 4),
        ("other", "other", 1),
    ] {
        store
            .insert(id.into(), &queued_job(queue, priority), at(1))
            .unwrap();
    }
    let change = SettingsChange {
        concurrency: Some(Some(10)),
        rate_per_second: None,
    };
    store.configure_queue("capped", &change, at(1)).unwrap();
    let mut holder = db.client();
    let holder_pid = backend_pid(&mut holder);

    // Another transaction holds the best job of "capped" (a bulk action, a cancel).
    let mut held = holder.transaction().unwrap();
    held.execute("SELECT 1 FROM jobs WHERE id = 'c-high' FOR UPDATE", &[])
        .unwrap();
    assert_eq!(claimed_id(&store, 10).as_deref(), Some("c-mid"));
    held.rollback().unwrap();

    // Another claim holds the settings row of "capped": this claim waits for it.
    let mut held = holder.transaction().unwrap();
    held.execute("SELECT 1 FROM queues WHERE name = 'capped' FOR UPDATE", &[])
        .unwrap();
    let claimer = {
        let store = Arc::clone(&store);
        thread::spawn(move || claimed_id(&store, 10))
    };
    let mut observer = db.client();
    let deadline = Instant::now() + Duration::from_secs(10);
    while observer
        .query_opt(
            "SELECT 1 FROM pg_stat_activity WHERE $1 = ANY (pg_blocking_pids(pid))",
            &[&holder_pid],
        )
        .unwrap()
        .is_none()
    {
        assert!(Instant::now() < deadline, "the claim did not wait");
        thread::yield_now();
    }
    held.commit().unwrap();
    assert_eq!(claimer.join().unwrap().as_deref(), Some("c-high"));
    assert_eq!(claimed_id(&store, 10).as_deref(), Some("c-low"));
    assert_eq!(claimed_id(&store, 10).as_deref(), Some("other"));
    assert_eq!(claimed_id(&store, 10), None);
}

/// Two first changes of a queue's settings at once keep each other's field.
#[test]
fn concurrent_first_settings_of_a_queue_keep_both_fields() {
    use crate::queue_settings::SettingsChange;
    let Some(db) = TestSchema::new("configure_race") else {
        return;
    };
    let nodes = [Arc::new(db.open("n1")), Arc::new(db.open("n2"))];
    for round in 0..20 {
        let name = format!("q{round}");
        let start = Arc::new(Barrier::new(2));
        let changes = [
            SettingsChange {
                concurrency: Some(Some(2)),
                rate_per_second: None,
            },
            SettingsChange {
                concurrency: None,
                rate_per_second: Some(Some(5.0)),
            },
        ];
        let writers: Vec<_> = changes
            .into_iter()
            .zip(&nodes)
            .map(|(change, store)| {
                let (store, start, name) = (Arc::clone(store), Arc::clone(&start), name.clone());
                thread::spawn(move || {
                    start.wait();
                    store.configure_queue(&name, &change, at(1)).unwrap();
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        let queue = nodes[0]
            .queues()
            .unwrap()
            .into_iter()
            .find(|queue| queue.name == name)
            .unwrap();
        assert_eq!(
            (queue.concurrency, queue.rate_per_second),
            (Some(2), Some(5.0)),
            "round {round}"
        );
    }
}
