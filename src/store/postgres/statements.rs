//! Every statement the PostgreSQL backend runs on jobs, attempts and nodes. Parameters are
//! typed as the columns are: `INTEGER` binds an `i32`, `BIGINT` an `i64`.

use super::row::job_columns;

/// Now by the database's clock, in microseconds: leases compare heartbeats with this, so
/// the nodes' own clocks never matter.
macro_rules! database_now {
    () => {
        "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint"
    };
}

pub const SELECT_BY_ID: &str = concat!("SELECT ", job_columns!(), " FROM jobs WHERE id = $1");
pub const LOCK_BY_ID: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM jobs WHERE id = $1 FOR UPDATE"
);
pub const SEQ_OF_ID: &str = "SELECT seq FROM jobs WHERE id = $1";

/// Stores jobs in one statement (one round trip, committed before it is answered unless in a
/// transaction), if `$condition` holds: all of them or none. The jobs' columns come as arrays
/// (`$1` to `$9`, one element per job, in request order), `$10` is their `created_at`. With the
/// idempotency key `$11` (null for none), the key's row, claimed earlier in the transaction,
/// gets the first job's `seq`. Returns the number of jobs stored. The condition is a scalar
/// subquery, so it is evaluated once, not per job: the pending-limit lock is taken once and
/// every job sees the same count. The other nodes hear of the jobs from the announcer
/// (`notify`), not from a `NOTIFY` here: a transaction that notifies holds a database-wide
/// lock through its commit, which would make every submit wait for the others.
macro_rules! insert_jobs_if {
    ($condition:expr) => {
        concat!(
            "WITH added AS (
                INSERT INTO jobs (id, payload, status, priority, run_at, created_at,
                                  max_retries, timeout_seconds, function, queue, traceparent)
                SELECT job.id, job.payload, 'pending', job.priority, job.run_at, $10::bigint,
                       job.max_retries, job.timeout_seconds, job.function, job.queue,
                       job.traceparent
                FROM unnest($1::text[], $2::text[], $3::integer[], $4::bigint[], $5::integer[],
                            $6::integer[], $7::text[], $8::text[], $9::text[]) WITH ORDINALITY
                     AS job (id, payload, priority, run_at, max_retries, timeout_seconds,
                             function, queue, traceparent, position)
                WHERE ",
            $condition,
            " ORDER BY job.position
                RETURNING seq),
             keyed AS (
                UPDATE idempotency_keys SET job_seq = (SELECT min(seq) FROM added)
                WHERE key = $11::text)
             SELECT count(*) FROM added"
        )
    };
}
/// Without a pending limit.
pub const INSERT_JOBS: &str = insert_jobs_if!("true");
/// The fast path under a pending limit: the shared lock, and room for the jobs plus `$12`
/// (the margin) more than the counters say is pending, within the limit `$13`.
pub const INSERT_JOBS_FAR_FROM_LIMIT: &str = insert_jobs_if!(
    "(SELECT pending_jobs_under_limit_lock(false)) + $12::bigint + cardinality($1::text[])
        <= $13::bigint"
);
/// The exact path: the exclusive lock, and room for the jobs within the limit `$12`.
pub const INSERT_JOBS_UNDER_LIMIT: &str = insert_jobs_if!(
    "(SELECT pending_jobs_under_limit_lock(true)) + cardinality($1::text[]) <= $12::bigint"
);
/// Claims an idempotency key for this transaction: stores it (`$1` to `$5`, the answer
/// included), or replaces one stored before `$6` (expired, not yet pruned). Returns a row
/// if it claimed the key. A key inserted by a transaction still in progress makes this wait
/// for that transaction's end (the unique index): it then finds the key, or, if that
/// transaction rolled back, claims it.
pub const CLAIM_KEY: &str = "INSERT INTO idempotency_keys AS stored
        (key, request_hash, response_status, response_body, job_seq, created_at)
     VALUES ($1, $2, $3, $4, NULL, $5)
     ON CONFLICT (key) DO UPDATE SET request_hash = excluded.request_hash,
        response_status = excluded.response_status, response_body = excluded.response_body,
        job_seq = NULL, created_at = excluded.created_at
     WHERE stored.created_at < $6
     RETURNING 1";
/// The key if it was stored at or after `$2`.
pub const FRESH_KEY: &str =
    "SELECT request_hash, response_status, response_body FROM idempotency_keys
     WHERE key = $1 AND created_at >= $2";
/// The pending jobs by the counters the triggers keep (committed ones, no lock).
#[cfg(test)]
pub const COUNTED_PENDING: &str =
    "SELECT coalesce(sum(n), 0)::bigint FROM queue_counts WHERE status = 'pending'";

/// Claims the highest-priority due job of a queue that may start one now, in one call of
/// the function migration 3 made (which says how): `SKIP LOCKED` throughout, so no job goes to
/// two claims and claims do not queue behind one another. The attempt is numbered after the
/// job's last one.
pub const CLAIM_DUE_JOB: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM claim_due_job($1, $2) AS jobs"
);

/// When the next job may be claimed, by the node's clock `$1` (the function of migration 3):
/// never for a paused or full queue, not before a rate-limited one's next token.
pub const NEXT_DUE_AT: &str = "SELECT next_claimable_at($1)";

/// Ends attempt `$2` of job `$1` with the status `$9` its transition says, if the job still
/// runs that attempt: an outcome never lands on a later attempt of the same job (it was
/// recovered elsewhere). A retry (`$10` set) counts one more retry and is due at `$10`. The
/// attempt's own row is closed in the same statement, after the job's: it reads the job's
/// update, so the job row is always locked first, as every other statement that writes
/// both (a claim, a delete, a bulk delete) does, and none waits for the other crosswise.
/// Returns the number of jobs updated.
macro_rules! finish_attempt {
    ($then:expr) => {
        concat!(
            "WITH ended AS (
                UPDATE jobs SET status = $9, finished_at = $4, result = $5, error_message = $6,
                       retry_count = retry_count + CASE WHEN $10::bigint IS NULL THEN 0 ELSE 1 END,
                       run_at = coalesce($10::bigint, run_at),
                       node = NULL
                WHERE seq = $1 AND status = 'running' AND attempt IS NOT DISTINCT FROM $2
                RETURNING seq, queue),
             closed AS (
                UPDATE attempts SET status = $3, finished_at = $4, result = $5,
                       error_message = $6, exit_code = $7, stderr_tail = $8
                WHERE job_seq = (SELECT seq FROM ended) AND attempt = $2 AND status = 'running')
             SELECT ",
            $then,
            " FROM ended"
        )
    };
}
/// Also says whether the job's queue has a `concurrency` limit: the end frees a place.
pub const FINISH_ATTEMPT: &str = finish_attempt!(
    "seq, EXISTS (SELECT 1 FROM queues WHERE queues.name = ended.queue
                  AND queues.concurrency IS NOT NULL)"
);

pub const STATUS_OF_ID_LOCKED: &str = "SELECT status FROM jobs WHERE id = $1 FOR UPDATE";
pub const RESTART_JOB: &str = concat!(
    "UPDATE jobs SET status = 'pending', retry_count = 0, run_at = $2, started_at = NULL,
            finished_at = NULL, result = NULL, error_message = NULL
     WHERE id = $1 RETURNING ",
    job_columns!()
);
/// Wakes the other nodes (the announcer sends it, in a transaction of its own).
pub const NOTIFY_QUEUED: &str = "SELECT pg_notify('minilambda_jobs', current_schema())";
pub const CANCEL_PENDING: &str = concat!(
    "UPDATE jobs SET status = 'cancelled', finished_at = $2,
            error_message = 'cancelled by request'
     WHERE seq = $1 RETURNING ",
    job_columns!()
);
/// Tells the node running the job to stop it.
pub const REQUEST_CANCEL: &str = "UPDATE jobs SET cancel_requested = true WHERE seq = $1";
/// Deletes a job and its attempts; returns the job as it was.
pub const DELETE_JOB: &str = concat!(
    "WITH gone AS (DELETE FROM jobs WHERE id = $1 RETURNING *),
          attempts_gone AS (DELETE FROM attempts WHERE job_seq IN (SELECT seq FROM gone))
     SELECT ",
    job_columns!(),
    " FROM gone AS jobs"
);
/// The job's attempts in order, with a row of nulls for a job that has none; no row for no
/// such job. `LATERAL`: the attempts are one seek on their key per job.
pub const ATTEMPTS_OF_JOB: &str = concat!(
    "SELECT ",
    super::row::attempt_columns!(),
    " FROM jobs LEFT JOIN LATERAL (SELECT * FROM attempts WHERE attempts.job_seq = jobs.seq)
        AS attempts ON true
     WHERE jobs.id = $1 ORDER BY attempts.attempt"
);

pub const HEARTBEAT: &str = concat!(
    "INSERT INTO nodes (id, started_at, heartbeat_at) VALUES ($1, $2, ",
    database_now!(),
    ") ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at"
);
/// Running jobs whose node lost its lease (`$3` microseconds without a heartbeat, by the
/// database's clock, or no row at all), and with `$2` every job of this node (`$1`).
pub const LOST_ATTEMPTS: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM jobs WHERE status = 'running' AND (
        (jobs.node = $1 AND $2::boolean)
        OR (jobs.node IS DISTINCT FROM $1 AND NOT EXISTS (
            SELECT 1 FROM nodes WHERE nodes.id = jobs.node
            AND nodes.heartbeat_at >= ",
    database_now!(),
    " - $3::bigint)))
     ORDER BY seq"
);
/// Forgets the nodes that lost their lease and run nothing, and with `$3` this node (`$1`).
pub const FORGET_NODES: &str = concat!(
    "DELETE FROM nodes WHERE (id = $1 AND $3::boolean)
        OR (id <> $1 AND heartbeat_at < ",
    database_now!(),
    " - $2::bigint AND NOT EXISTS (
            SELECT 1 FROM jobs WHERE jobs.node = nodes.id AND jobs.status = 'running'))"
);
pub const RUNNING_HERE: &str = "SELECT id, attempt, cancel_requested FROM jobs
     WHERE node = $1 AND status = 'running'";
/// A real read of the jobs table.
pub const PING: &str = "SELECT count(*) FROM (SELECT 1 FROM jobs LIMIT 1) AS one";
