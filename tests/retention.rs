//! Retention (`JOB_RETENTION_SECONDS`, `IDEMPOTENCY_TTL_SECONDS`): ended jobs go some time
//! after they ended, with their attempts and idempotency keys, and the per-queue counts follow;
//! pending, running and scheduled jobs stay; 0 keeps everything; what was pruned stays pruned
//! across restarts. The database is read directly to check what HTTP cannot show.

mod support;

use serde_json::{json, Value};
use support::*;

const ENDED: &str = "('success', 'failed', 'timeout', 'cancelled')";

/// A direct connection to a test server's database, SQLite or PostgreSQL.
enum Sql {
    Sqlite(rusqlite::Connection),
    Postgres(postgres::Client),
}

impl Sql {
    fn open(server: &TestServer) -> Sql {
        match server.database() {
            Database::Sqlite => {
                let connection = rusqlite::Connection::open(server.db_path()).unwrap();
                connection
                    .busy_timeout(std::time::Duration::from_secs(10))
                    .unwrap();
                Sql::Sqlite(connection)
            }
            Database::Postgres(schema) => Sql::Postgres(
                postgres::Client::connect(&schema.database_url(), postgres::NoTls).unwrap(),
            ),
        }
    }

    fn execute(&mut self, sql: &str) {
        match self {
            Sql::Sqlite(connection) => {
                connection.execute_batch(sql).unwrap();
            }
            Sql::Postgres(client) => client.batch_execute(sql).unwrap(),
        }
    }

    /// The one integer `sql` selects.
    fn number(&mut self, sql: &str) -> i64 {
        let sql = format!("SELECT CAST(({sql}) AS BIGINT)");
        match self {
            Sql::Sqlite(connection) => connection.query_row(&sql, [], |row| row.get(0)).unwrap(),
            Sql::Postgres(client) => client.query_one(&sql, &[]).unwrap().get(0),
        }
    }

    fn seq_of(&mut self, id: &str) -> i64 {
        self.number(&format!("SELECT seq FROM jobs WHERE id = '{id}'"))
    }

    /// An idempotency key as a submit would store it, for the job `job_seq`.
    fn add_key(&mut self, key: &str, job_seq: Option<i64>, created_at: i64) {
        let job_seq = job_seq.map_or("NULL".to_string(), |seq| seq.to_string());
        self.execute(&format!(
            "INSERT INTO idempotency_keys
                (key, request_hash, response_status, response_body, job_seq, created_at)
             VALUES ('{key}', 'hash', 201, '{{}}', {job_seq}, {created_at})"
        ));
    }

    fn keys(&mut self) -> i64 {
        self.number("SELECT count(*) FROM idempotency_keys")
    }

    fn has_key(&mut self, key: &str) -> bool {
        self.number(&format!(
            "SELECT count(*) FROM idempotency_keys WHERE key = '{key}'"
        )) == 1
    }

    /// Jobs of `statuses` (an SQL list) by the per-queue counters the triggers keep.
    fn counted(&mut self, statuses: &str) -> i64 {
        self.number(&format!(
            "SELECT coalesce(sum(n), 0) FROM queue_counts WHERE status IN {statuses}"
        ))
    }

    fn rows(&mut self, table: &str) -> i64 {
        self.number(&format!("SELECT count(*) FROM {table}"))
    }
}

fn is_gone(server: &TestServer, id: &str) -> bool {
    let job = server.get(&format!("/jobs/{id}"));
    let attempts = server.get(&format!("/jobs/{id}/attempts"));
    job.status == 404 && attempts.status == 404
}

fn noop() -> Value {
    json!({"payload": {"duration_ms": 0}})
}

#[test]
fn ended_jobs_go_with_their_attempts_and_keys_and_pending_running_and_scheduled_jobs_stay() {
    let server = TestServer::builder()
        .env("JOB_RETENTION_SECONDS", "1")
        .env("WORKER_COUNT", "2")
        .start();
    let mut sql = Sql::open(&server);
    let running =
        server.submit(json!({"payload": {"duration_ms": 60_000}, "timeout_seconds": 120}));
    server.wait_for_status(&running, "running", secs(10));
    let scheduled = server.submit(json!({"payload": {"duration_ms": 0}, "delay_seconds": 3600}));
    let succeeded = server.submit(noop());
    let failed = server.submit(json!({"payload": {"should_fail": true}, "max_retries": 0}));
    let timed_out = server.submit(json!({"payload": {"duration_ms": 5000}, "timeout_seconds": 1}));
    let cancelled = server.submit(json!({"payload": {}, "delay_seconds": 3600}));
    assert_eq!(
        server
            .post_empty(&format!("/jobs/{cancelled}/cancel"))
            .status,
        200
    );
    let now = now_micros();
    let (seq_succeeded, seq_scheduled) = (sql.seq_of(&succeeded), sql.seq_of(&scheduled));
    sql.add_key("of-an-ended-job", Some(seq_succeeded), now);
    // Keys are kept at most as long as jobs (1 s here): these two are dated ten minutes
    // ahead, so that only their job, not their age, could remove them during the test.
    let ahead = now + 600_000_000;
    sql.add_key("of-a-scheduled-job", Some(seq_scheduled), ahead);
    sql.add_key("expired", None, 0);
    sql.add_key("fresh", None, ahead);

    let ended = [&succeeded, &failed, &timed_out, &cancelled];
    eventually(secs(20), "every ended job pruned", || {
        ended.iter().all(|id| is_gone(&server, id)).then_some(())
    });
    assert_eq!(
        sql.number(&format!(
            "SELECT count(*) FROM jobs WHERE status IN {ENDED}"
        )),
        0
    );
    assert_eq!(sql.counted(ENDED), 0);
    assert_eq!(sql.counted("('pending')"), 1);
    assert_eq!(sql.counted("('running')"), 1);
    // Only the running job's attempt is left.
    assert_eq!(sql.rows("attempts"), 1);
    eventually(secs(10), "the expired key pruned", || {
        (!sql.has_key("expired")).then_some(())
    });
    assert!(!sql.has_key("of-an-ended-job"));
    assert!(sql.has_key("of-a-scheduled-job") && sql.has_key("fresh"));

    // A wait on a pruned job finds no job.
    let response = server.get(&format!("/jobs/{succeeded}?wait=5"));
    assert_error(&response, 404, "not_found");
    // Running and scheduled jobs stay, whatever their age.
    assert_stays(secs(3), || {
        let running = server.job(&running);
        let scheduled = server.job(&scheduled);
        match (running["status"].as_str(), scheduled["status"].as_str()) {
            (Some("running"), Some("pending")) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    assert_eq!(sql.keys(), 2);
    // And the server goes on: a new job runs and is pruned in turn.
    let later = server.submit(noop());
    server.wait_for_status(&later, "success", secs(10));
    eventually(secs(10), "the later job pruned", || {
        is_gone(&server, &later).then_some(())
    });
    assert_eq!(sql.counted(ENDED), 0);
}

#[test]
fn with_retention_zero_ended_jobs_are_kept() {
    let server = TestServer::builder()
        .env("JOB_RETENTION_SECONDS", "0")
        .start();
    let ids: Vec<String> = (0..3).map(|_| server.submit(noop())).collect();
    for id in &ids {
        server.wait_for_status(id, "success", secs(10));
    }
    assert_stays(secs(3), || {
        for id in &ids {
            if server.get(&format!("/jobs/{id}")).status != 200 {
                return Err(format!("job {id} was deleted"));
            }
        }
        Ok(())
    });
    let mut sql = Sql::open(&server);
    assert_eq!(sql.counted("('success')"), 3);
    assert_eq!(sql.rows("attempts"), 3);
}

#[test]
fn jobs_that_expired_while_the_server_was_stopped_go_at_start_and_stay_gone() {
    let mut server = TestServer::builder()
        .sqlite()
        .env("JOB_RETENTION_SECONDS", "0")
        .start();
    let ids: Vec<String> = (0..5).map(|_| server.submit(noop())).collect();
    for id in &ids {
        server.wait_for_status(id, "success", secs(10));
    }
    let kept = server.submit(json!({"payload": {}, "delay_seconds": 3600}));
    server.set_env("JOB_RETENTION_SECONDS", "1");
    server.restart();
    eventually(secs(10), "the expired jobs pruned at start", || {
        ids.iter().all(|id| is_gone(&server, id)).then_some(())
    });
    server.set_env("JOB_RETENTION_SECONDS", "0");
    server.restart();
    let mut sql = Sql::open(&server);
    for id in &ids {
        assert!(is_gone(&server, id), "{id} came back");
    }
    assert_eq!(sql.rows("jobs"), 1);
    assert_eq!(sql.rows("attempts"), 0);
    assert_eq!(sql.counted(ENDED), 0);
    assert_eq!(sql.counted("('pending')"), 1);
    assert_eq!(server.job(&kept)["status"], "pending");
}
