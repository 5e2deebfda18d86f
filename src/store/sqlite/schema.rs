//! The schema and its migrations, keyed by `PRAGMA user_version`.

use rusqlite::{Connection, TransactionBehavior};

use crate::error::{Error, Result};

/// Schema migrations, applied in order. `PRAGMA user_version` records how many have run, so a
/// database made by an older build is brought up to date at start. Append; never edit.
pub const MIGRATIONS: &[&str] = &[
    // 1: jobs. `seq` orders jobs by submission and is the pagination key; `id` is the public UUID.
    // Times are microseconds since the Unix epoch (UTC).
    "CREATE TABLE jobs (
        seq             INTEGER PRIMARY KEY,
        id              TEXT NOT NULL UNIQUE,
        payload         TEXT NOT NULL,
        status          TEXT NOT NULL,
        priority        INTEGER NOT NULL,
        run_at          INTEGER NOT NULL,
        created_at      INTEGER NOT NULL,
        started_at      INTEGER,
        finished_at     INTEGER,
        retry_count     INTEGER NOT NULL DEFAULT 0,
        max_retries     INTEGER NOT NULL,
        timeout_seconds INTEGER NOT NULL,
        result          TEXT,
        error_message   TEXT
     );
     -- GET /jobs?status=X, newest first; also finds running jobs at recovery.
     CREATE INDEX jobs_by_status ON jobs(status, seq);
     -- Claiming: the highest priority due job, oldest first. Partial, so finished jobs cost nothing.
     CREATE INDEX jobs_pending_by_priority ON jobs(priority DESC, run_at, seq) WHERE status = 'pending';
     -- When the next scheduled job becomes due.
     CREATE INDEX jobs_pending_by_run_at ON jobs(run_at) WHERE status = 'pending';",
    // 2: the next due time is read from jobs_pending_by_priority (one seek per priority), so
    // every submit and claim updates one index fewer.
    "DROP INDEX jobs_pending_by_run_at;",
    // 3: every attempt of every job, numbered from 1 per job. `exit_code` and `stderr_tail`
    // are for attempts that run a process; simulated attempts leave them null.
    "CREATE TABLE attempts (
        job_seq       INTEGER NOT NULL,
        attempt       INTEGER NOT NULL,
        status        TEXT NOT NULL,
        started_at    INTEGER NOT NULL,
        finished_at   INTEGER,
        result        TEXT,
        error_message TEXT,
        exit_code     INTEGER,
        stderr_tail   TEXT,
        PRIMARY KEY (job_seq, attempt)
     ) WITHOUT ROWID;",
    // 4: the function a job runs; null for simulated jobs.
    "ALTER TABLE jobs ADD COLUMN function TEXT;",
    // 5: one row that `GET /health` rewrites to learn whether writes reach the disk when no
    // other write has lately.
    "CREATE TABLE write_probe (id INTEGER PRIMARY KEY CHECK (id = 1), probed_at INTEGER NOT NULL);
     INSERT INTO write_probe (id, probed_at) VALUES (1, 0);",
    // 6: leases. A job records its current attempt's number (the attempt's identity with the
    // job) and, while it runs, the node running it; a cancel of a running job is recorded for
    // that node to act on. `nodes` holds each node's heartbeat. Jobs left running by an older
    // build have no node, so they count as lost and are recovered at the next start.
    "ALTER TABLE jobs ADD COLUMN attempt INTEGER;
     ALTER TABLE jobs ADD COLUMN node TEXT;
     ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE attempts ADD COLUMN node TEXT;
     UPDATE jobs SET attempt = (SELECT max(attempt) FROM attempts WHERE attempts.job_seq = jobs.seq);
     CREATE INDEX jobs_running_by_node ON jobs(node) WHERE status = 'running';
     CREATE TABLE nodes (
        id           TEXT PRIMARY KEY,
        started_at   INTEGER NOT NULL,
        heartbeat_at INTEGER NOT NULL
     );",
    // 7: named queues, their settings and counts; idempotency keys; retention.
    // `queue_counts` holds how many jobs each queue has in each status, kept by triggers in
    // the statement that changes a job, so `GET /queues` reads a few rows whatever the number
    // of jobs. A row may reach 0 and stay.
    // `queues` holds a queue's settings; a queue without a row has the defaults (running,
    // no limits). `tokens` and `refilled_at` are its start-rate bucket.
    // `idempotency_keys`: a submit's key with a fingerprint of its body and the answer it
    // got, so a repeat gets that answer again; `job_seq` (the first job it created) lets the
    // key go with that job when retention deletes it.
    "ALTER TABLE jobs ADD COLUMN queue TEXT NOT NULL DEFAULT 'default';
     -- Claiming within one queue: its highest priority due job, oldest first.
     CREATE INDEX jobs_pending_by_queue ON jobs(queue, priority DESC, run_at, seq)
        WHERE status = 'pending';
     -- GET /jobs?queue=X and ?function=X (with or without status), newest first.
     CREATE INDEX jobs_by_queue ON jobs(queue, status, seq);
     CREATE INDEX jobs_by_function ON jobs(function, status, seq);
     -- Retention: ended jobs, oldest end first.
     CREATE INDEX jobs_ended_by_finish ON jobs(finished_at)
        WHERE status IN ('success', 'failed', 'timeout', 'cancelled');
     CREATE TABLE queues (
        name            TEXT PRIMARY KEY,
        paused          INTEGER NOT NULL DEFAULT 0,
        concurrency     INTEGER,
        rate_per_second REAL,
        tokens          REAL NOT NULL DEFAULT 0,
        refilled_at     INTEGER NOT NULL DEFAULT 0,
        updated_at      INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE TABLE queue_counts (
        queue  TEXT NOT NULL,
        status TEXT NOT NULL,
        n      INTEGER NOT NULL,
        PRIMARY KEY (queue, status)
     ) WITHOUT ROWID;
     CREATE TRIGGER jobs_counted_on_insert AFTER INSERT ON jobs BEGIN
        INSERT INTO queue_counts (queue, status, n) VALUES (NEW.queue, NEW.status, 1)
           ON CONFLICT (queue, status) DO UPDATE SET n = n + 1;
     END;
     CREATE TRIGGER jobs_counted_on_update AFTER UPDATE OF status, queue ON jobs
        WHEN OLD.status IS NOT NEW.status OR OLD.queue IS NOT NEW.queue BEGIN
        UPDATE queue_counts SET n = n - 1 WHERE queue = OLD.queue AND status = OLD.status;
        INSERT INTO queue_counts (queue, status, n) VALUES (NEW.queue, NEW.status, 1)
           ON CONFLICT (queue, status) DO UPDATE SET n = n + 1;
     END;
     CREATE TRIGGER jobs_counted_on_delete AFTER DELETE ON jobs BEGIN
        UPDATE queue_counts SET n = n - 1 WHERE queue = OLD.queue AND status = OLD.status;
     END;
     INSERT INTO queue_counts (queue, status, n)
        SELECT queue, status, count(*) FROM jobs GROUP BY queue, status;
     CREATE TABLE idempotency_keys (
        key             TEXT PRIMARY KEY,
        request_hash    TEXT NOT NULL,
        response_status INTEGER NOT NULL,
        response_body   TEXT NOT NULL,
        job_seq         INTEGER,
        created_at      INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE INDEX idempotency_keys_by_age ON idempotency_keys(created_at);
     CREATE INDEX idempotency_keys_by_job ON idempotency_keys(job_seq);",
    // 8: `traceparent`, the W3C Trace Context a job was submitted with (passed to its
    // function). `finished_minutes`: how many jobs ended per minute (Unix minute) and end
    // status, for the dashboard's chart; added to in small batches, old minutes pruned.
    "ALTER TABLE jobs ADD COLUMN traceparent TEXT;
     CREATE TABLE finished_minutes (
        minute INTEGER NOT NULL,
        status TEXT NOT NULL,
        n      INTEGER NOT NULL,
        PRIMARY KEY (minute, status)
     ) WITHOUT ROWID;",
    // 9: end-to-end throughput. `queue_counts` is kept by the writer, which adds each
    // group-commit batch's changes in the batch's transaction (`counts`), no longer by
    // triggers that updated two counter rows in every write of a job; the counts are rebuilt
    // from the jobs. The queue's and the function's list indexes leave `status` out, so a
    // job's changes of status no longer move their entries (same names, new columns; jobs
    // without a function are left out). Jobs that ended without success, the ones a filter
    // by status looks for among a queue's many successes, get partial indexes with the
    // status, which the usual job never enters. `GET /jobs` picks among them (`list`).
    "DROP TRIGGER jobs_counted_on_insert;
     DROP TRIGGER jobs_counted_on_update;
     DROP TRIGGER jobs_counted_on_delete;
     DELETE FROM queue_counts;
     INSERT INTO queue_counts (queue, status, n)
        SELECT queue, status, count(*) FROM jobs GROUP BY queue, status;
     DROP INDEX jobs_by_queue;
     DROP INDEX jobs_by_function;
     CREATE INDEX jobs_by_queue ON jobs(queue, seq);
     CREATE INDEX jobs_by_function ON jobs(function, seq) WHERE function IS NOT NULL;
     CREATE INDEX jobs_unsuccessful_by_queue ON jobs(queue, status, seq)
        WHERE status IN ('failed', 'timeout', 'cancelled');
     CREATE INDEX jobs_unsuccessful_by_function ON jobs(function, status, seq)
        WHERE status IN ('failed', 'timeout', 'cancelled');",
];

/// Brings the schema up to date; refuses a database made by a newer build.
pub fn migrate(connection: &mut Connection) -> Result<()> {
    let applied: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    if applied > known {
        return Err(Error::Startup(format!(
            "the database schema is version {applied}, newer than this build knows ({known}); \
             use a newer mini-lambda-rust"
        )));
    }
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for (index, migration) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(applied.unsigned_abs() as usize)
    {
        transaction.execute_batch(migration)?;
        transaction.pragma_update(None, "user_version", index + 1)?;
        log::info!("applied database migration {}", index + 1);
    }
    transaction.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::super::tests::options;
    use super::super::SqliteStore;
    use super::MIGRATIONS;
    use crate::job::NewJob;
    use crate::store::test_dir::TestDir;
    use crate::store::Backend;
    use crate::time::Timestamp;

    fn rows(connection: &Connection, sql: &str) -> Vec<(String, String, i64)> {
        connection
            .prepare(sql)
            .unwrap()
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    const COUNTED: &str =
        "SELECT queue, status, count(*) FROM jobs GROUP BY queue, status ORDER BY 1, 2";
    const IN_TABLE: &str = "SELECT queue, status, n FROM queue_counts WHERE n <> 0 ORDER BY 1, 2";

    #[test]
    fn migration_9_drops_the_triggers_rebuilds_the_counts_and_swaps_the_list_indexes() {
        let dir = TestDir::new("migration-9");
        let path = dir.path().join("jobs.db");
        let old = Connection::open(&path).unwrap();
        for migration in &MIGRATIONS[..8] {
            old.execute_batch(migration).unwrap();
        }
        old.pragma_update(None, "user_version", 8).unwrap();
        // Jobs of two queues in several statuses, counted by the triggers; then a count that
        // went wrong (say, by hand), which the migration must not keep.
        old.execute_batch(
            "INSERT INTO jobs (id, payload, status, priority, run_at, created_at, max_retries,
                               timeout_seconds, queue, function)
             VALUES ('p1', '{}', 'pending', 0, 0, 0, 0, 5, 'a', NULL),
                    ('p2', '{}', 'pending', 0, 0, 0, 0, 5, 'b', 'f'),
                    ('r1', '{}', 'running', 0, 0, 0, 0, 5, 'a', 'f'),
                    ('s1', '{}', 'success', 0, 0, 0, 0, 5, 'a', NULL),
                    ('s2', '{}', 'success', 0, 0, 0, 0, 5, 'b', NULL),
                    ('x1', '{}', 'failed', 0, 0, 0, 0, 5, 'b', 'f');
             UPDATE jobs SET status = 'cancelled' WHERE id = 'x1';
             DELETE FROM jobs WHERE id = 's2';
             UPDATE queue_counts SET n = n + 40 WHERE queue = 'a' AND status = 'success';
             INSERT INTO queue_counts VALUES ('gone', 'pending', 3);",
        )
        .unwrap();
        drop(old);

        let store = SqliteStore::open(&path, &options(0)).unwrap();
        let connection = store.read();
        let version: i64 = connection
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .unwrap();
        assert_eq!(version, 9);
        let triggers: i64 = connection
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'trigger'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(triggers, 0);
        let expected: Vec<(String, String, i64)> = [
            ("a", "pending", 1),
            ("a", "running", 1),
            ("a", "success", 1),
            ("b", "cancelled", 1),
            ("b", "pending", 1),
        ]
        .into_iter()
        .map(|(queue, status, n)| (queue.into(), status.into(), n))
        .collect();
        assert_eq!(rows(&connection, COUNTED), expected);
        assert_eq!(rows(&connection, IN_TABLE), expected);
        for (index, columns) in [
            ("jobs_by_queue", &["queue", "seq"][..]),
            ("jobs_by_function", &["function", "seq"]),
            ("jobs_unsuccessful_by_queue", &["queue", "status", "seq"]),
            (
                "jobs_unsuccessful_by_function",
                &["function", "status", "seq"],
            ),
        ] {
            let found: Vec<String> = connection
                .prepare(&format!("SELECT name FROM pragma_index_info('{index}')"))
                .unwrap()
                .query_map([], |row| row.get(0))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            assert_eq!(found, columns, "{index}");
        }
        // The partial index holds the cancelled job (x1: failed, then cancelled), only.
        let unsuccessful: Vec<String> = connection
            .prepare(
                "SELECT id FROM jobs INDEXED BY jobs_unsuccessful_by_queue
                      WHERE queue = 'b' AND status = 'cancelled'
                        AND status IN ('failed', 'timeout', 'cancelled')",
            )
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(unsuccessful, ["x1"]);
        drop(connection);
        // The jobs' pending count, and a new job counted once (no trigger left to count it).
        assert_eq!(store.writes.pending(), 2);
        store
            .insert(
                "new".into(),
                &NewJob {
                    queue: "b".into(),
                    ..NewJob::for_test(0, None)
                },
                Timestamp::from_micros(1),
            )
            .unwrap();
        let connection = store.read();
        let counted = rows(&connection, COUNTED);
        assert_eq!(rows(&connection, IN_TABLE), counted);
        assert!(counted.contains(&("b".into(), "pending".into(), 2)));
    }
}
