//! The prune phase: what retention costs the submits beside it. A database is seeded with
//! `scale_rows` jobs that ended long ago (one attempt each, an idempotency key on every tenth),
//! and copied; one server runs on it with `JOB_RETENTION_SECONDS=1`, so every one of those
//! jobs is expired and pruned from the start, the other (the same build) on the copy with
//! retention off. Their submit windows alternate (64 connections), and the round with the
//! median ratio is reported; while the baseline is measured the pruning server is stopped
//! (SIGSTOP), so neither shares the cores with the other's work. Then the pruning server is
//! left to finish: how long the backlog took, its stopped time not counted.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use crate::client;
use crate::error::{Context, Result};
use crate::load;
use crate::phases::{median_pair, progress, Bench, Rate, SUBMIT_BODY};
use crate::plan::Mode;
use crate::seed;
use crate::servers::Server;

/// The jobs the retention index holds: ended ones.
const COUNT_ENDED: &str =
    "SELECT count(*) FROM jobs WHERE status IN ('success', 'failed', 'timeout', 'cancelled')";
/// How often the wait for the end of the backlog counts what is left.
const COUNT_POLL: Duration = Duration::from_secs(1);

pub struct Prune {
    pub jobs: u64,
    /// Median round: the pruning server's submit rate, and the baseline's next to it.
    pub pruning: Rate,
    pub baseline: Rate,
    /// Ended jobs pruned while the rounds ran.
    pub pruned_during_rounds: u64,
    /// How long the whole backlog took to prune, stopped time not counted; `None` if it was
    /// not done by the end of the watch.
    pub seconds: Option<f64>,
    /// Expired jobs pruned per second while the server was left alone after the rounds.
    pub rate: f64,
    /// Ended jobs left when the wait ended.
    pub left: u64,
}

pub fn prune(bench: &mut Bench) -> Result<Prune> {
    let dir = bench.paths.fresh_dir("prune")?;
    let database = dir.join("pruning.db");
    // The server makes its schema; the rows then go in behind its back (as for scale).
    bench
        .start_server_at(
            "prune, creating the schema",
            &sqlite_url(&database),
            &dir.join("schema.log"),
            &[],
        )?
        .stop()?;
    let jobs = bench.plan.scale_rows;
    progress(&format!("prune: inserting {jobs} ended jobs"));
    seed::fill(&database, jobs, &mut bench.rng)?;
    add_attempts_and_keys(&database)?;
    let baseline_database = dir.join("baseline.db");
    std::fs::copy(&database, &baseline_database).context("cannot copy the seeded database")?;

    let baseline = bench.start_server_at(
        "prune baseline, retention off",
        &sqlite_url(&baseline_database),
        &dir.join("baseline.log"),
        &[
            ("JOB_RETENTION_SECONDS", "0"),
            ("IDEMPOTENCY_TTL_SECONDS", "31536000"),
        ],
    )?;
    let pruning = bench.start_server_at(
        "prune, retention 1 s",
        &sqlite_url(&database),
        &dir.join("pruning.log"),
        &[("JOB_RETENTION_SECONDS", "1")],
    )?;
    let started = pruning.spawned_at;
    let mut stopped_for = Duration::ZERO;
    let before = count_ended(&database)?;

    let request = client::request("POST", "/jobs", Some(SUBMIT_BODY));
    let window = load::Until::Window {
        warmup: bench.plan.warmup,
        window: bench.plan.window / 2,
    };
    let mut rounds = Vec::new();
    let rounds_wanted = bench.plan.paired_rounds;
    for round in 1..=rounds_wanted {
        progress(&format!(
            "prune: 64 connections, pruning against not, round {round} of {rounds_wanted}"
        ));
        let paused = Paused::stop(&pruning);
        baseline.settle(bench.plan.settle_deadline)?;
        let without = Rate::from(&load::run(baseline.addr, 64, &request, 201, window)?);
        stopped_for += paused.resume();
        baseline.settle(bench.plan.settle_deadline)?;
        let with = Rate::from(&load::run(pruning.addr, 64, &request, 201, window)?);
        rounds.push((with, without));
    }
    baseline.stop()?;
    let after_rounds = count_ended(&database)?;

    // Watched for a minute, not to the end: at the designed pace a million takes about 20
    // minutes, and the rate is what the figure needs.
    let watch_started = Instant::now();
    let deadline = watch_started
        + match bench.plan.mode {
            Mode::Full => Duration::from_secs(60),
            Mode::Quick => Duration::from_secs(20),
        };
    progress(&format!(
        "prune: watching the other {after_rounds} expired jobs go"
    ));
    let mut left = after_rounds;
    while left > 0 && Instant::now() < deadline {
        crate::interrupt::check()?;
        thread::sleep(COUNT_POLL);
        left = count_ended(&database)?;
    }
    let seconds = (left == 0).then(|| (started.elapsed() - stopped_for).as_secs_f64());
    let rate =
        after_rounds.saturating_sub(left) as f64 / watch_started.elapsed().as_secs_f64().max(1e-9);
    pruning.stop()?;
    let (pruning, baseline) = median_pair(rounds);
    Ok(Prune {
        jobs,
        pruning,
        baseline,
        pruned_during_rounds: before.saturating_sub(after_rounds),
        seconds,
        rate,
        left,
    })
}

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// Makes the seeded history look like one the server wrote: ids time-ordered as the server
/// makes them (UUID v7: the creation time in milliseconds first; the seed's are random), one
/// finished attempt per job, and an idempotency key on every tenth. With random ids each
/// pruned job would dirty a page of its own in the id index, a cost a real database (whose
/// oldest jobs are the first ids) does not have.
fn add_attempts_and_keys(path: &Path) -> Result<()> {
    let connection = Connection::open(path).context(format!("cannot open {}", path.display()))?;
    connection
        .execute_batch(
            "PRAGMA synchronous = OFF;
             BEGIN;
             UPDATE jobs SET id = printf('%08x-%04x-7%03x-8000-%012x',
                (created_at / 1000) >> 16, (created_at / 1000) & 65535, seq >> 48 & 4095,
                seq & 281474976710655);
             INSERT INTO attempts (job_seq, attempt, status, started_at, finished_at, node)
                SELECT seq, 1, status, started_at, finished_at, 'seed' FROM jobs;
             INSERT INTO idempotency_keys
                (key, request_hash, response_status, response_body, job_seq, created_at)
                SELECT 'seed-' || seq, 'seed', 201, '{}', seq, created_at FROM jobs
                WHERE seq % 10 = 0;
             COMMIT;",
        )
        .context("cannot add the attempts and keys")?;
    connection
        .close()
        .map_err(|(_, err)| crate::error::Error::new(format!("cannot close the database: {err}")))
}

fn count_ended(path: &Path) -> Result<u64> {
    let connection = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .context(format!("cannot open {} read-only", path.display()))?;
    connection
        .busy_timeout(Duration::from_secs(5))
        .context("cannot set busy_timeout")?;
    connection
        .query_row(COUNT_ENDED, [], |row| row.get(0))
        .context("cannot count the ended jobs")
}

/// A server stopped with SIGSTOP until `resume` (or the drop) continues it.
struct Paused<'a> {
    server: &'a Server,
    since: Instant,
}

impl<'a> Paused<'a> {
    fn stop(server: &'a Server) -> Paused<'a> {
        signal(server, libc::SIGSTOP);
        Paused {
            server,
            since: Instant::now(),
        }
    }

    /// Continues the server; how long it was stopped.
    fn resume(self) -> Duration {
        self.since.elapsed()
    }
}

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        signal(self.server, libc::SIGCONT);
    }
}

fn signal(server: &Server, signal: i32) {
    let Ok(pid) = libc::pid_t::try_from(server.pid()) else {
        return;
    };
    // SAFETY: kill(2) on our own child, not yet reaped, so the pid is still its.
    unsafe {
        libc::kill(pid, signal);
    }
}
