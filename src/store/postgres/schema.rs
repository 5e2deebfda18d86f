//! The schema and its migrations, keyed by the versions recorded in `schema_migrations`.
//!
//! Several nodes may start at once against a new database: each migrates in one transaction
//! under a transaction-scoped advisory lock, so one applies what is missing and the others
//! find it applied. The tables live in the first schema of the connection's `search_path`,
//! which is created if missing, so several deployments (or tests) can share one database,
//! each with `options=-csearch_path%3D<name>` in its connection string.

use postgres::Transaction;

use super::error::Failure;
use super::pool::Connection;
use crate::error::Error;

/// Schema migrations, applied in order; version N is `MIGRATIONS[N - 1]`. Append; never edit.
///
/// Columns match the SQLite schema (times are microseconds since the Unix epoch, UTC), so
/// every answer is the same on both backends. `payload` and `result` are the JSON text as
/// submitted: `jsonb` would reorder keys and normalise numbers.
pub const MIGRATIONS: &[&str] = &[
    // 1: the schema as the SQLite backend has it after its sixth migration.
    "CREATE TABLE jobs (
        seq              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id               TEXT NOT NULL UNIQUE,
        payload          TEXT NOT NULL,
        status           TEXT NOT NULL,
        priority         INTEGER NOT NULL,
        run_at           BIGINT NOT NULL,
        created_at       BIGINT NOT NULL,
        started_at       BIGINT,
        finished_at      BIGINT,
        retry_count      INTEGER NOT NULL DEFAULT 0,
        max_retries      INTEGER NOT NULL,
        timeout_seconds  INTEGER NOT NULL,
        result           TEXT,
        error_message    TEXT,
        function         TEXT,
        attempt          INTEGER,
        node             TEXT,
        cancel_requested BOOLEAN NOT NULL DEFAULT false
     );
     -- GET /jobs?status=X, newest first; also finds running jobs for lease recovery.
     CREATE INDEX jobs_by_status ON jobs (status, seq);
     -- Claiming: the highest priority due job, oldest first. Partial, so ended jobs cost nothing.
     CREATE INDEX jobs_pending_by_priority ON jobs (priority DESC, run_at, seq)
        WHERE status = 'pending';
     -- What runs on a node: its cross-node stop check.
     CREATE INDEX jobs_running_by_node ON jobs (node) WHERE status = 'running';
     CREATE TABLE attempts (
        job_seq       BIGINT NOT NULL,
        attempt       INTEGER NOT NULL,
        status        TEXT NOT NULL,
        started_at    BIGINT NOT NULL,
        finished_at   BIGINT,
        result        TEXT,
        error_message TEXT,
        exit_code     INTEGER,
        stderr_tail   TEXT,
        node          TEXT,
        PRIMARY KEY (job_seq, attempt)
     );
     -- Each node's heartbeat, by the database's clock.
     CREATE TABLE nodes (
        id           TEXT PRIMARY KEY,
        started_at   BIGINT NOT NULL,
        heartbeat_at BIGINT NOT NULL
     );",
    // 2: the number of pending jobs, kept by triggers, so a submit under `MAX_PENDING_JOBS`
    // reads 16 rows instead of counting the pending index. Spread over 16 rows, each
    // session adding to the one its backend's pid picks, so concurrent writers seldom wait
    // on the same row; only the sum means anything (a row may go negative).
    //
    // Statement-level triggers with transition tables, not row-level ones: one update of a
    // counter row per statement, where a row-level trigger would update the same row once
    // per job and make one statement over many jobs (a bulk delete) quadratic in their
    // number, each update walking the row's versions made earlier in its transaction.
    // `SET search_path FROM CURRENT`: the functions find this schema's tables whatever the
    // calling session's search path (about 3 µs a call).
    //
    // The triggers are created before the count is taken: creating them waits for every
    // write to `jobs` in progress and holds off new ones until the migration commits, so
    // the count misses nothing and nothing is counted twice.
    "CREATE TABLE pending_counts (
        shard INTEGER PRIMARY KEY,
        n     BIGINT NOT NULL
     );
     CREATE FUNCTION count_pending_jobs() RETURNS trigger LANGUAGE plpgsql
        SET search_path FROM CURRENT AS $$
     DECLARE
        change BIGINT := 0;
     BEGIN
        IF TG_OP IN ('INSERT', 'UPDATE') THEN
            change := change + (SELECT count(*) FROM after_rows WHERE status = 'pending');
        END IF;
        IF TG_OP IN ('UPDATE', 'DELETE') THEN
            change := change - (SELECT count(*) FROM before_rows WHERE status = 'pending');
        END IF;
        IF change <> 0 THEN
            UPDATE pending_counts SET n = n + change WHERE shard = pg_backend_pid() % 16;
        END IF;
        RETURN NULL;
     END $$;
     CREATE FUNCTION forget_pending_jobs() RETURNS trigger LANGUAGE plpgsql
        SET search_path FROM CURRENT AS $$
     BEGIN
        UPDATE pending_counts SET n = 0;
        RETURN NULL;
     END $$;
     CREATE TRIGGER jobs_added_count_pending AFTER INSERT ON jobs
        REFERENCING NEW TABLE AS after_rows
        FOR EACH STATEMENT EXECUTE FUNCTION count_pending_jobs();
     CREATE TRIGGER jobs_changed_count_pending AFTER UPDATE ON jobs
        REFERENCING OLD TABLE AS before_rows NEW TABLE AS after_rows
        FOR EACH STATEMENT EXECUTE FUNCTION count_pending_jobs();
     CREATE TRIGGER jobs_deleted_count_pending AFTER DELETE ON jobs
        REFERENCING OLD TABLE AS before_rows
        FOR EACH STATEMENT EXECUTE FUNCTION count_pending_jobs();
     CREATE TRIGGER jobs_truncated_count_pending AFTER TRUNCATE ON jobs
        FOR EACH STATEMENT EXECUTE FUNCTION forget_pending_jobs();
     INSERT INTO pending_counts (shard, n)
        SELECT shard, CASE WHEN shard = 0
                           THEN (SELECT count(*) FROM jobs WHERE status = 'pending')
                           ELSE 0 END
        FROM generate_series(0, 15) AS shards (shard);
     -- The pending jobs by the counters, read after taking the pending-limit lock (the
     -- lock every node's submits take when `MAX_PENDING_JOBS` is set; the key is the one
     -- submits took before this migration, so nodes of both builds exclude one another):
     -- shared by the submits that are far from the limit, exclusive near it. Volatile, so
     -- in READ COMMITTED the sum is read in a snapshot taken after the lock was granted: it
     -- sees every submit the lock waited for.
     CREATE FUNCTION pending_jobs_under_limit_lock(exclusive BOOLEAN) RETURNS BIGINT
        LANGUAGE plpgsql VOLATILE SET search_path FROM CURRENT AS $$
     DECLARE
        pending BIGINT;
     BEGIN
        IF exclusive THEN
            PERFORM pg_advisory_xact_lock(1835822192, hashtext(current_schema()));
        ELSE
            PERFORM pg_advisory_xact_lock_shared(1835822192, hashtext(current_schema()));
        END IF;
        SELECT coalesce(sum(n), 0) INTO pending FROM pending_counts;
        RETURN pending;
     END $$;",
    // 3: named queues, their settings and counts; idempotency keys; retention (as SQLite's
    // seventh migration). `queue_counts` replaces `pending_counts`: the jobs of each queue in
    // each status, kept by statement-level triggers; the pending limit sums its pending rows.
    // Each session writes only the rows of its own shard, its backend's pid, so no two
    // sessions ever wait on each other's counter rows: a transaction may change the counts of
    // several queues in any order (a finish and the next claim) without a deadlock. Shard 0
    // belongs to `compact_queue_counts`, which folds into it the rows of backends that ended.
    "ALTER TABLE jobs ADD COLUMN queue TEXT NOT NULL DEFAULT 'default';
     CREATE INDEX jobs_pending_by_queue ON jobs (queue, priority DESC, run_at, seq)
        WHERE status = 'pending';
     CREATE INDEX jobs_by_queue ON jobs (queue, status, seq);
     CREATE INDEX jobs_by_function ON jobs (function, status, seq);
     CREATE INDEX jobs_ended_by_finish ON jobs (finished_at)
        WHERE status IN ('success', 'failed', 'timeout', 'cancelled');
     CREATE TABLE queues (
        name            TEXT PRIMARY KEY,
        paused          BOOLEAN NOT NULL DEFAULT false,
        concurrency     INTEGER,
        rate_per_second DOUBLE PRECISION,
        tokens          DOUBLE PRECISION NOT NULL DEFAULT 0,
        refilled_at     BIGINT NOT NULL DEFAULT 0,
        updated_at      BIGINT NOT NULL
     );
     CREATE TABLE queue_counts (
        queue  TEXT NOT NULL,
        status TEXT NOT NULL,
        shard  INTEGER NOT NULL,
        n      BIGINT NOT NULL,
        PRIMARY KEY (queue, status, shard)
     );
     CREATE FUNCTION count_queue_jobs() RETURNS trigger LANGUAGE plpgsql
        SET search_path FROM CURRENT AS $$
     BEGIN
        IF TG_OP = 'INSERT' THEN
            INSERT INTO queue_counts AS counts (queue, status, shard, n)
                SELECT queue, status, pg_backend_pid(), count(*) FROM after_rows
                GROUP BY queue, status ORDER BY queue, status
                ON CONFLICT (queue, status, shard) DO UPDATE SET n = counts.n + excluded.n;
        ELSIF TG_OP = 'UPDATE' THEN
            INSERT INTO queue_counts AS counts (queue, status, shard, n)
                SELECT queue, status, pg_backend_pid(), sum(change) FROM (
                    SELECT queue, status, 1 AS change FROM after_rows
                    UNION ALL
                    SELECT queue, status, -1 AS change FROM before_rows) AS changes
                GROUP BY queue, status HAVING sum(change) <> 0 ORDER BY queue, status
                ON CONFLICT (queue, status, shard) DO UPDATE SET n = counts.n + excluded.n;
        ELSE
            INSERT INTO queue_counts AS counts (queue, status, shard, n)
                SELECT queue, status, pg_backend_pid(), -count(*) FROM before_rows
                GROUP BY queue, status ORDER BY queue, status
                ON CONFLICT (queue, status, shard) DO UPDATE SET n = counts.n + excluded.n;
        END IF;
        RETURN NULL;
     END $$;
     CREATE FUNCTION forget_queue_counts() RETURNS trigger LANGUAGE plpgsql
        SET search_path FROM CURRENT AS $$
     BEGIN
        DELETE FROM queue_counts;
        RETURN NULL;
     END $$;
     DROP TRIGGER jobs_added_count_pending ON jobs;
     DROP TRIGGER jobs_changed_count_pending ON jobs;
     DROP TRIGGER jobs_deleted_count_pending ON jobs;
     DROP TRIGGER jobs_truncated_count_pending ON jobs;
     CREATE TRIGGER jobs_added_count_queues AFTER INSERT ON jobs
        REFERENCING NEW TABLE AS after_rows
        FOR EACH STATEMENT EXECUTE FUNCTION count_queue_jobs();
     CREATE TRIGGER jobs_changed_count_queues AFTER UPDATE ON jobs
        REFERENCING OLD TABLE AS before_rows NEW TABLE AS after_rows
        FOR EACH STATEMENT EXECUTE FUNCTION count_queue_jobs();
     CREATE TRIGGER jobs_deleted_count_queues AFTER DELETE ON jobs
        REFERENCING OLD TABLE AS before_rows
        FOR EACH STATEMENT EXECUTE FUNCTION count_queue_jobs();
     CREATE TRIGGER jobs_truncated_count_queues AFTER TRUNCATE ON jobs
        FOR EACH STATEMENT EXECUTE FUNCTION forget_queue_counts();
     INSERT INTO queue_counts (queue, status, shard, n)
        SELECT queue, status, 0, count(*) FROM jobs GROUP BY queue, status;
     DROP FUNCTION count_pending_jobs();
     DROP FUNCTION forget_pending_jobs();
     DROP TABLE pending_counts;
     CREATE OR REPLACE FUNCTION pending_jobs_under_limit_lock(exclusive BOOLEAN) RETURNS BIGINT
        LANGUAGE plpgsql VOLATILE SET search_path FROM CURRENT AS $$
     DECLARE
        pending BIGINT;
     BEGIN
        IF exclusive THEN
            PERFORM pg_advisory_xact_lock(1835822192, hashtext(current_schema()));
        ELSE
            PERFORM pg_advisory_xact_lock_shared(1835822192, hashtext(current_schema()));
        END IF;
        SELECT coalesce(sum(n), 0) INTO pending FROM queue_counts WHERE status = 'pending';
        RETURN pending;
     END $$;
     -- Folds the counter rows of backends that have ended into shard 0, so there are about
     -- as many rows as live sessions that write them. One node at a time (a transaction
     -- advisory lock, tried: a node finding it taken leaves the work to the holder). It never
     -- waits on a row: a row another transaction holds (only a new backend that got an ended
     -- one's pid writes one) is left for the next time. One statement moves what it deletes
     -- into shard 0, so nothing is lost or counted twice; a backend that reuses a pid and
     -- writes a row this deletes waits for the commit, then inserts a fresh row. Only this
     -- function writes shard 0 (and the migration): shard 0 rows that fall to 0 go.
     CREATE FUNCTION compact_queue_counts() RETURNS BIGINT
        LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
     DECLARE
        folded BIGINT;
     BEGIN
        IF NOT pg_try_advisory_xact_lock(1835819875, hashtext(current_schema())) THEN
            RETURN 0;
        END IF;
        WITH ended AS (
            SELECT queue, status, shard FROM queue_counts
            WHERE shard <> 0
              AND shard NOT IN (SELECT pid FROM pg_stat_activity WHERE pid IS NOT NULL)
            FOR UPDATE SKIP LOCKED),
        gone AS (
            DELETE FROM queue_counts AS c USING ended
            WHERE c.queue = ended.queue AND c.status = ended.status AND c.shard = ended.shard
            RETURNING c.queue, c.status, c.n),
        kept AS (
            INSERT INTO queue_counts AS counts (queue, status, shard, n)
            SELECT queue, status, 0, sum(n) FROM gone GROUP BY queue, status
            ORDER BY queue, status
            ON CONFLICT (queue, status, shard) DO UPDATE SET n = counts.n + excluded.n)
        SELECT count(*) INTO folded FROM gone;
        DELETE FROM queue_counts WHERE shard = 0 AND n = 0;
        RETURN folded;
     END $$;
     CREATE TABLE idempotency_keys (
        key             TEXT PRIMARY KEY,
        request_hash    TEXT NOT NULL,
        response_status INTEGER NOT NULL,
        response_body   TEXT NOT NULL,
        job_seq         BIGINT,
        created_at      BIGINT NOT NULL
     );
     CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);
     CREATE INDEX idempotency_keys_by_job ON idempotency_keys (job_seq);
     -- Claims and the schedule, one call each (see `statements::CLAIM_DUE_JOB`). While no
     -- queue restricts (a settings row that pauses or limits it), the claim is the global
     -- search of the first migration: one branch per priority, highest first, each a seek
     -- on `jobs_pending_by_priority`, `SKIP LOCKED`. Otherwise the queues that cannot start
     -- a job now (paused, running `concurrency` jobs by the counters, or without a start
     -- token) are left out, and every other queue with pending jobs is searched on
     -- `jobs_pending_by_queue`: a left-out queue's jobs are never read. A job of a
     -- restricting queue starts only under the lock of its `queues` row, after which the
     -- running count and the bucket are read again in a new snapshot: so claims of one
     -- restricted queue are serialized across nodes and its limits hold. The bucket runs on
     -- the database's clock. Unrestricted queues take no lock.
     --
     -- What is passed over is only what is unavailable: a queue that cannot start a job,
     -- or one (queue, priority) whose due jobs other claims all hold (`SKIP LOCKED`), not
     -- the rest of that queue. The first `queues` row a claim locks it waits for: its holder
     -- is a claim or a settings change, which waits on nothing more before it commits, so
     -- the wait is short and cannot close a cycle. A claim that already holds one takes any
     -- other `SKIP LOCKED` (two waits could cross), leaving a queue held that way to its
     -- holder this time.
     CREATE FUNCTION claim_due_job(p_now BIGINT, p_node TEXT) RETURNS SETOF jobs
        LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
     DECLARE
        picked_seq BIGINT;
        picked_queue TEXT;
        picked_priority INTEGER;
        blocked TEXT[];
        -- The (queue, priority) pairs whose due jobs other claims hold, side by side.
        held_queues TEXT[] := '{}';
        held_priorities INTEGER[] := '{}';
        -- The `queues` rows this claim has locked.
        locked TEXT[] := '{}';
        setting queues%ROWTYPE;
        clock BIGINT;
        tokens_now DOUBLE PRECISION;
        attempt_number INTEGER;
        claimed jobs%ROWTYPE;
     BEGIN
        IF NOT EXISTS (SELECT 1 FROM queues WHERE paused OR concurrency IS NOT NULL OR rate_per_second IS NOT NULL) THEN
            SELECT seq INTO picked_seq FROM (
                SELECT seq FROM (SELECT seq FROM jobs
                   WHERE status = 'pending' AND priority = 9 AND run_at <= p_now
                   ORDER BY run_at, seq LIMIT 1 FOR UPDATE SKIP LOCKED) AS p9
                UNION ALL SELECT seq FROM (SELECT seq FROM jobs
                   WHERE status = 'pending' AND priority = 8 AND run_at <= p_now
                   ORDER BY run_at, seq LIMIT 1 FOR UPDATE SKIP LOCKED) AS p8
                UNION ALL SELECT seq FROM (SELECT seq FROM jobs
                   WHERE status = 'pending' AND priority = 7 AND run_at <= p_now
                   ORDER BY run_at, seq LIMIT 1 FOR UPDATE SKIP LOCKED) AS p7
                UNION ALL SELECT seq FROM (SELECT seq FROM jobs
                   WHERE status = 'pending' AND priority = 6 AND run_at <= p_now
                   ORDER BY run_at, seq LIMIT 1 FOR UPDATE SKIP LOCKED) AS p6
                UNION ALL SELECT seq FROM (SELECT seq FROM jobs
                   WHERE status = 'pending' AND priority = 5 AND run_at <= p_now
                   ORDER BY run_at, seq LIMIT 1 FOR UPDATE SKIP LOCKED) AS p5
                UNION ALL SELECT seq FROM (SELECT seq FROM jobs
                   WHERE status = 'pending' AND priority = 4 AND run_at <= p_now
                   ORDER BY run_at, seq LIMIT 1 FOR UPDATE SKIP LOCKED) AS p4
                UNION ALL SELECT seq FROM (SELECT seq FROM jobs
                   WHERE status = 'pending' AND priority = 3 AND run_at <= p_now
                   ORDER BY run_at, seq LIMIT 1 FOR UPDATE SKIP LOCKED) AS p3
                UNION ALL SELECT seq FROM (SELECT seq FROM jobs
                   WHERE status = 'pending' AND priority = 2 AND run_at <= p_now
                   ORDER BY run_at, seq LIMIT 1 FOR UPDATE SKIP LOCKED) AS p2
                UNION ALL SELECT seq FROM (SELECT seq FROM jobs
                   WHERE status = 'pending' AND priority = 1 AND run_at <= p_now
                   ORDER BY run_at, seq LIMIT 1 FOR UPDATE SKIP LOCKED) AS p1
                UNION ALL SELECT seq FROM (SELECT seq FROM jobs
                   WHERE status = 'pending' AND priority = 0 AND run_at <= p_now
                   ORDER BY run_at, seq LIMIT 1 FOR UPDATE SKIP LOCKED) AS p0
            ) AS due LIMIT 1;
        ELSE
            clock := (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
            SELECT coalesce(array_agg(q.name), '{}') INTO blocked FROM queues AS q
            WHERE q.paused
               OR (q.concurrency IS NOT NULL AND q.concurrency <= (
                    SELECT coalesce(sum(c.n), 0) FROM queue_counts AS c
                    WHERE c.queue = q.name AND c.status = 'running'))
               OR (q.rate_per_second IS NOT NULL
                   AND least(greatest(q.rate_per_second, 1), q.tokens
                       + greatest(clock - q.refilled_at, 0) * q.rate_per_second / 1e6)
                       < 1 - 1e-9);
            LOOP
                picked_seq := NULL;
                SELECT j.seq, j.queue, j.priority INTO picked_seq, picked_queue, picked_priority
                FROM (SELECT queue FROM queue_counts WHERE status = 'pending'
                      GROUP BY queue HAVING sum(n) > 0) AS open
                CROSS JOIN generate_series(0, 9) AS p (priority)
                CROSS JOIN LATERAL (SELECT seq, queue, priority, run_at FROM jobs
                    WHERE status = 'pending' AND jobs.queue = open.queue
                      AND jobs.priority = p.priority AND run_at <= p_now
                    ORDER BY run_at, seq LIMIT 1) AS j
                WHERE open.queue <> ALL (blocked)
                  AND NOT EXISTS (SELECT 1 FROM unnest(held_queues, held_priorities)
                                      AS held (queue, priority)
                                  WHERE held.queue = open.queue AND held.priority = p.priority)
                ORDER BY j.priority DESC, j.run_at, j.seq LIMIT 1;
                EXIT WHEN picked_seq IS NULL;
                IF EXISTS (SELECT 1 FROM queues WHERE name = picked_queue AND (paused OR concurrency IS NOT NULL OR rate_per_second IS NOT NULL)) THEN
                    IF cardinality(locked) = 0 OR picked_queue = ANY (locked) THEN
                        SELECT * INTO setting FROM queues WHERE name = picked_queue FOR UPDATE;
                    ELSE
                        SELECT * INTO setting FROM queues WHERE name = picked_queue
                            FOR UPDATE SKIP LOCKED;
                    END IF;
                    IF FOUND THEN
                        locked := locked || picked_queue;
                    END IF;
                    IF NOT FOUND OR setting.paused OR (setting.concurrency IS NOT NULL
                        AND setting.concurrency <= (SELECT coalesce(sum(n), 0) FROM queue_counts
                            WHERE queue = picked_queue AND status = 'running')) THEN
                        blocked := blocked || picked_queue;
                        CONTINUE;
                    END IF;
                    IF setting.rate_per_second IS NOT NULL THEN
                        clock := (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
                        tokens_now := least(greatest(setting.rate_per_second, 1), setting.tokens
                            + greatest(clock - setting.refilled_at, 0)
                              * setting.rate_per_second / 1e6);
                        IF tokens_now < 1 - 1e-9 THEN
                            blocked := blocked || picked_queue;
                            CONTINUE;
                        END IF;
                    END IF;
                ELSE
                    setting := NULL;
                END IF;
                -- The best due job of that queue and priority no other claim holds.
                SELECT seq INTO picked_seq FROM jobs
                WHERE status = 'pending' AND queue = picked_queue AND priority = picked_priority
                  AND run_at <= p_now
                ORDER BY run_at, seq LIMIT 1 FOR UPDATE SKIP LOCKED;
                IF NOT FOUND THEN
                    picked_seq := NULL;
                    held_queues := held_queues || picked_queue;
                    held_priorities := held_priorities || picked_priority;
                    CONTINUE;
                END IF;
                IF setting.rate_per_second IS NOT NULL THEN
                    UPDATE queues SET tokens = greatest(tokens_now - 1, 0),
                           refilled_at = greatest(clock, refilled_at)
                    WHERE name = picked_queue;
                END IF;
                EXIT;
            END LOOP;
        END IF;
        IF picked_seq IS NULL THEN
            RETURN;
        END IF;
        INSERT INTO attempts (job_seq, attempt, status, started_at, node)
            SELECT picked_seq, coalesce(max(attempt), 0) + 1, 'running', p_now, p_node
            FROM attempts WHERE job_seq = picked_seq
            RETURNING attempt INTO attempt_number;
        UPDATE jobs SET status = 'running', started_at = p_now, finished_at = NULL,
               result = NULL, error_message = NULL, attempt = attempt_number, node = p_node,
               cancel_requested = false
        WHERE seq = picked_seq RETURNING * INTO claimed;
        RETURN NEXT claimed;
     END $$;
     -- When the next job may be claimed, by the node's clock `p_node_now`: the earliest
     -- pending job, or while a queue restricts, the earliest of each queue that is neither
     -- paused nor full, for a rate-limited one no earlier than its next token (the bucket's
     -- time, on the database's clock, moved to the node's).
     CREATE FUNCTION next_claimable_at(p_node_now BIGINT) RETURNS BIGINT
        LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
     DECLARE
        shift BIGINT;
     BEGIN
        IF NOT EXISTS (SELECT 1 FROM queues WHERE paused OR concurrency IS NOT NULL OR rate_per_second IS NOT NULL) THEN
            RETURN (SELECT min(oldest.run_at)
                    FROM generate_series(0, 9) AS priorities (priority)
                    CROSS JOIN LATERAL (SELECT run_at FROM jobs
                        WHERE status = 'pending' AND jobs.priority = priorities.priority
                        ORDER BY run_at LIMIT 1) AS oldest);
        END IF;
        shift := p_node_now - (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
        RETURN (SELECT min(greatest(earliest.run_at, CASE WHEN q.rate_per_second IS NULL THEN NULL
                    WHEN q.tokens >= 1 - 1e-9 THEN q.refilled_at + shift
                    ELSE q.refilled_at + shift + ceil(least(
                        (1 - 1e-9 - q.tokens) * 1e6 / q.rate_per_second, 1e15))::bigint END))
                FROM (SELECT queue FROM queue_counts WHERE status = 'pending'
                      GROUP BY queue HAVING sum(n) > 0) AS open
                LEFT JOIN queues AS q ON q.name = open.queue
                CROSS JOIN LATERAL (SELECT min(oldest.run_at) AS run_at
                    FROM generate_series(0, 9) AS priorities (priority)
                    CROSS JOIN LATERAL (SELECT run_at FROM jobs
                        WHERE status = 'pending' AND jobs.queue = open.queue
                          AND jobs.priority = priorities.priority
                        ORDER BY run_at LIMIT 1) AS oldest) AS earliest
                WHERE earliest.run_at IS NOT NULL AND NOT coalesce(q.paused, false)
                  AND NOT coalesce(q.concurrency <= (SELECT coalesce(sum(c.n), 0)
                        FROM queue_counts AS c
                        WHERE c.queue = open.queue AND c.status = 'running'), false));
     END $$;",
    // 4: as the SQLite backend's eighth: `traceparent` on jobs, and `finished_minutes`, the
    // jobs that ended per minute (Unix minute) and end status, added to by every node.
    "ALTER TABLE jobs ADD COLUMN traceparent TEXT;
     CREATE TABLE finished_minutes (
        minute BIGINT NOT NULL,
        status TEXT NOT NULL,
        n      BIGINT NOT NULL,
        PRIMARY KEY (minute, status)
     );",
];

/// The advisory lock every node's migration takes (an arbitrary constant, "mlmi").
const MIGRATION_LOCK: i64 = 0x6d6c_6d69;

/// Brings the schema up to date and returns the name of the schema the tables are in.
/// Refuses a database migrated by a newer build.
pub fn migrate(connection: &mut Connection) -> Result<String, Failure> {
    let mut transaction = connection.client().transaction()?;
    transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    // Not "relation already exists, skipping" in the log at every start.
    transaction.batch_execute("SET LOCAL client_min_messages = warning")?;
    create_first_schema(&mut transaction)?;
    let schema: Option<String> = transaction
        .query_one("SELECT current_schema()", &[])?
        .try_get(0)?;
    let schema = schema.ok_or_else(|| {
        Error::Startup(
            "no schema of the connection's search_path exists; create one, or name one in the \
             connection string (options=-csearch_path%3Dname)"
                .into(),
        )
    })?;
    transaction.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version    INTEGER PRIMARY KEY,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )?;
    let applied: i32 = transaction
        .query_one(
            "SELECT coalesce(max(version), 0) FROM schema_migrations",
            &[],
        )?
        .try_get(0)?;
    let known = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
    if applied > known {
        return Err(Error::Startup(format!(
            "the database schema is version {applied}, newer than this build knows ({known}); \
             use a newer mini-lambda-rust"
        ))
        .into());
    }
    for (version, migration) in (1..).zip(MIGRATIONS).skip(applied.unsigned_abs() as usize) {
        transaction.batch_execute(migration)?;
        transaction.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&version],
        )?;
        log::info!("applied database migration {version} in schema {schema}");
    }
    transaction.commit()?;
    Ok(schema)
}

/// Creates the first schema of `search_path` if it does not exist (unless it is `$user`,
/// PostgreSQL's default, which falls through to `public`). Looked up before creating: `CREATE
/// SCHEMA IF NOT EXISTS` needs the right to create schemas even when the schema exists.
fn create_first_schema(transaction: &mut Transaction<'_>) -> Result<(), Failure> {
    let search_path: String = transaction
        .query_one("SELECT current_setting('search_path')", &[])?
        .try_get(0)?;
    let Some(name) = first_schema(&search_path) else {
        return Ok(());
    };
    let exists = transaction
        .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&name])?
        .is_some();
    if !exists {
        transaction.batch_execute(&format!("CREATE SCHEMA {}", quote_identifier(&name)))?;
        log::info!("created schema {name}");
    }
    Ok(())
}

/// The first schema a `search_path` setting names, as PostgreSQL reads it: unquoted names
/// fold to lower case, quoted ones are taken as written. `None` for `$user` or an empty path.
pub fn first_schema(search_path: &str) -> Option<String> {
    let text = search_path.trim_start();
    let name = match text.strip_prefix('"') {
        Some(quoted) => {
            let mut name = String::new();
            let mut chars = quoted.chars().peekable();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        name.push('"');
                    }
                    '"' => break,
                    other => name.push(other),
                }
            }
            name
        }
        None => {
            let end = text.find(',').unwrap_or(text.len());
            text[..end].trim().to_lowercase()
        }
    };
    Some(name).filter(|name| !name.is_empty() && name != "$user")
}

pub fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_schema_is_read_as_postgresql_reads_it() {
        let cases = [
            ("smoke", Some("smoke")),
            ("Smoke, public", Some("smoke")),
            ("\"$user\", public", None),
            ("$user, public", None),
            ("\"My \"\"Jobs\"\"\", public", Some("My \"Jobs\"")),
            ("  spaced  ,public", Some("spaced")),
            ("", None),
            ("\"unterminated", None),
        ];
        for (path, expected) in cases {
            assert_eq!(first_schema(path).as_deref(), expected, "{path}");
        }
        assert_eq!(quote_identifier("a\"b"), "\"a\"\"b\"");
    }
}
