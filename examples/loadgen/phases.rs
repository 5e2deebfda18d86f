//! The measurements, one function per phase, each with its own fresh server(s) so no phase
//! inherits another's database or warm state. A phase returns plain numbers; judging them
//! against the ceiling and the targets is `report.rs`'s business.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::client::{self, Connection};
use crate::db::ReadOnly;
use crate::error::{Context, Error, Result};
use crate::interrupt;
use crate::load::{self, Outcome, Until};
use crate::paths::Paths;
use crate::pg::Postgres;
use crate::plan::Plan;
use crate::rng::Rng;
use crate::seed;
use crate::servers::{Server, Settled, Spec};
use crate::stats::Percentiles;

/// Scheduled a year out: workers never touch these, so submit measures accepting a job
/// durably and nothing else, and the jobs stay pending for the memory figure.
pub const SUBMIT_BODY: &str = r#"{"payload":{"duration_ms":0},"delay_seconds":31536000}"#;
/// Due now, no work: what end to end and dispatch latency run.
pub const NOOP_BODY: &str = r#"{"payload":{"duration_ms":0}}"#;
/// Lets a server that just printed its address finish starting threads before memory is read.
const SETTLE: Duration = Duration::from_millis(300);
/// How often the end-to-end phase counts finished jobs.
const DRAIN_POLL: Duration = Duration::from_millis(50);
/// Uncounted requests before a latency sample, so the first connection's costs do not count.
const LATENCY_WARMUP: usize = 20;
/// Bounds for single steps that take milliseconds when all is well.
const STEP_DEADLINE: Duration = Duration::from_secs(10);

pub struct Bench {
    pub plan: Plan,
    pub paths: Paths,
    pub rng: Rng,
    /// The server's handler thread count, once the ceiling phase has counted it.
    pub handler_threads: Option<usize>,
    /// The PostgreSQL server of the `pg-` phases, once found usable.
    pub postgres: Option<Postgres>,
}

/// A throughput figure with its error count, as the report needs it.
pub struct Rate {
    pub per_second: f64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub slowest_ms: f64,
    /// Connections that got no response at all inside the window.
    pub starved: usize,
    pub connections: usize,
}

impl From<&Outcome> for Rate {
    fn from(outcome: &Outcome) -> Rate {
        Rate {
            per_second: outcome.rate(),
            errors: outcome.errors(),
            first_error: outcome.first_error.clone(),
            slowest_ms: outcome.slowest.as_secs_f64() * 1e3,
            starved: outcome.starved,
            connections: outcome.connections,
        }
    }
}

/// A latency figure with the requests that failed while sampling it.
pub struct Latency {
    pub percentiles: Percentiles,
    /// How many samples were asked for; fewer were taken if the deadline came first.
    pub wanted: usize,
    pub errors: u64,
    pub first_error: Option<String>,
}

pub struct Ceiling {
    /// Handler threads of the server under test, and so of the bare server.
    pub handler_threads: usize,
    pub rate16: Rate,
    pub rate64: Rate,
    pub round_trip: Latency,
    pub idle_peak_kib: u64,
    pub ready: Duration,
}

pub struct Submit {
    /// Medians of the windows that alternated with the ceiling's.
    pub rate16: Rate,
    pub rate64: Rate,
    /// The ceiling's medians from those same alternating windows.
    pub ceiling16: Rate,
    pub ceiling64: Rate,
    pub idle_peak_kib: u64,
    pub backlog_peak_kib: u64,
    /// Pending jobs in the database when the backlog figure was read.
    pub backlog_jobs: u64,
    /// 201s the client received; every one must be a stored job, so `backlog_jobs` must not be
    /// smaller.
    pub acknowledged: u64,
    /// How the backlog fill went (16 connections): `None` if the submit phases already
    /// reached it. Its rate shows whether submitting slows down as the backlog grows.
    pub fill: Option<Fill>,
    /// How long the server took to go quiet before each paired ceiling window.
    pub settling: Settling,
}

/// The waits for a quiet server before the ceiling windows of a paired comparison, summed up
/// for the report: a paired ceiling is only clean if every wait ended quiet.
#[derive(Default)]
pub struct Settling {
    pub windows: usize,
    /// Waits that hit the deadline: their ceiling window shared the cores with the server.
    pub unsettled: usize,
    pub longest: Duration,
    /// The most CPU the server used in one wait, in ms.
    pub most_busy_ms: f64,
}

impl Settling {
    pub fn add(&mut self, settled: Settled) {
        self.windows += 1;
        self.unsettled += usize::from(!settled.quiet);
        self.longest = self.longest.max(settled.waited);
        self.most_busy_ms = self.most_busy_ms.max(settled.busy_ms);
    }
}

pub struct Fill {
    pub rate: Rate,
    pub jobs: u64,
}

pub struct Normal {
    /// Median of the NORMAL windows.
    pub rate64: Rate,
    /// Median of the FULL windows that alternated with them.
    pub paired_full: Rate,
    /// Whether the server under test documents `DURABILITY`; if not, this run was FULL too.
    pub supported: bool,
}

pub struct EndToEnd {
    pub jobs: u64,
    pub finished: u64,
    pub seconds: f64,
    /// The submitting part alone (its rate is submits per second during the window).
    pub submit: Rate,
    pub drained: bool,
}

impl EndToEnd {
    pub fn rate(&self) -> f64 {
        self.finished as f64 / self.seconds.max(1e-9)
    }
}

pub struct Scale {
    pub rows: u64,
    pub seed_seconds: f64,
    pub database_mib: f64,
    pub healthy: Duration,
    pub list: Latency,
    pub list_failed: Latency,
    pub get: Latency,
}

impl Bench {
    pub fn window(&self) -> Until {
        Until::Window {
            warmup: self.plan.warmup,
            window: self.plan.window,
        }
    }

    /// Starts the real server on the SQLite file `database` with the benchmark's settings
    /// plus `extra`; its log goes beside the file.
    pub fn start_server(
        &self,
        name: &str,
        database: &Path,
        extra: &[(&str, &str)],
    ) -> Result<Server> {
        self.start_server_at(
            name,
            &format!("sqlite://{}", database.display()),
            &database.with_file_name("server.log"),
            extra,
        )
    }

    /// Starts the real server on `database_url` (SQLite or PostgreSQL), logging to `log`.
    pub fn start_server_at(
        &self,
        name: &str,
        database_url: &str,
        log: &Path,
        extra: &[(&str, &str)],
    ) -> Result<Server> {
        let mut env = vec![
            ("SERVER_ADDR".to_string(), "127.0.0.1:0".to_string()),
            ("DATABASE_URL".to_string(), database_url.to_string()),
            // Per-request info lines would make the figure the cost of logging. LOADGEN_SERVER_LOG
            // overrides it to see what a server did (with --keep, its log stays).
            (
                "RUST_LOG".to_string(),
                std::env::var("LOADGEN_SERVER_LOG")
                    .unwrap_or_else(|_| "mini_lambda_rust=warn".to_string()),
            ),
            // Bounds the stop of a server that still has due work.
            ("SHUTDOWN_GRACE_SECONDS".to_string(), "5".to_string()),
        ];
        env.extend(
            extra
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string())),
        );
        Server::start(Spec {
            name: format!("server ({name})"),
            program: &self.paths.server,
            args: Vec::new(),
            env,
            log: log.to_path_buf(),
        })
    }

    pub fn fresh_database(&self, name: &str) -> Result<PathBuf> {
        Ok(self.paths.fresh_dir(name)?.join("bench.db"))
    }
}

/// The bare tiny_http server: rates at 16 and 64 connections, one connection's round trip,
/// idle memory and start-up time.
pub fn ceiling(bench: &mut Bench) -> Result<Ceiling> {
    let handler_threads = handler_threads(bench)?;
    bench.handler_threads = Some(handler_threads);
    let server = start_bare(bench, handler_threads, "bare")?;
    thread::sleep(SETTLE);
    let idle = server.memory()?;
    let submit = client::request("POST", "/jobs", Some(SUBMIT_BODY));
    progress("ceiling: 16 connections");
    let rate16 = load::run(server.addr, 16, &submit, 201, bench.window())?;
    progress("ceiling: 64 connections");
    let rate64 = load::run(server.addr, 64, &submit, 201, bench.window())?;
    progress("ceiling: sequential round trips");
    let round_trip = latency(
        &bench.plan,
        server.addr,
        &[submit],
        201,
        bench.plan.round_trips,
    )?;
    let ready = server.ready_after;
    server.stop()?;
    Ok(Ceiling {
        handler_threads,
        rate16: Rate::from(&rate16),
        rate64: Rate::from(&rate64),
        round_trip,
        idle_peak_kib: idle.peak_kib,
        ready,
    })
}

/// Starts the bare tiny_http server (the loadgen itself as `bare-server`).
fn start_bare(bench: &Bench, handler_threads: usize, name: &str) -> Result<Server> {
    let dir = bench.paths.fresh_dir(name)?;
    Server::start(Spec {
        name: "bare tiny_http".into(),
        program: &bench.paths.loadgen,
        args: vec![
            "bare-server".into(),
            "127.0.0.1:0".into(),
            handler_threads.to_string(),
        ],
        env: Vec::new(),
        log: dir.join("bare.log"),
    })
}

/// The real server's HTTP handler threads (named `http-N`), counted in a running server: the
/// ceiling must use as many, and counting them keeps it right whatever the source says.
fn handler_threads(bench: &Bench) -> Result<usize> {
    let database = bench.fresh_database("thread-count")?;
    let server = bench.start_server("counting handler threads", &database, &[])?;
    thread::sleep(SETTLE);
    let threads = server.threads_named("http-")?;
    server.stop()?;
    if threads == 0 {
        return Err(Error::new(
            "the server has no thread named http-N; how many handler threads does it run?",
        ));
    }
    Ok(threads)
}

/// Submit at 16 and 64 connections with the default durability, then the memory figures on
/// the same server: idle before the load, and once the backlog of pending jobs is complete.
pub fn submit(bench: &mut Bench) -> Result<Submit> {
    let database = bench.fresh_database("submit-full")?;
    let server = bench.start_server("submit, default durability", &database, &[])?;
    thread::sleep(SETTLE);
    let idle = server.memory()?;
    let request = client::request("POST", "/jobs", Some(SUBMIT_BODY));
    // The ceiling's windows alternate with the server's, as for FULL vs NORMAL: on a shared
    // machine the load drifts between phases by more than the difference being measured.
    let threads = match bench.handler_threads {
        Some(threads) => threads,
        None => handler_threads(bench)?,
    };
    let bare = start_bare(bench, threads, "bare-paired")?;
    let window = Until::Window {
        warmup: bench.plan.warmup,
        window: bench.plan.window / 2,
    };
    let mut acknowledged = 0;
    let mut settling = Settling::default();
    let rounds_wanted = bench.plan.paired_rounds;
    let settle_deadline = bench.plan.settle_deadline;
    let mut paired = |connections: usize| -> Result<(Rate, Rate)> {
        let mut rounds = Vec::new();
        for round in 1..=rounds_wanted {
            progress(&format!(
                "submit: {connections} connections against the ceiling, round {round} of {rounds_wanted}"
            ));
            // Each window starts with the other server idle: the server's checkpoints and
            // closing connections from its window would otherwise land in the ceiling's.
            settling.add(server.settle(settle_deadline)?);
            let ceiling = Rate::from(&load::run(bare.addr, connections, &request, 201, window)?);
            bare.settle(settle_deadline)?;
            let outcome = load::run(server.addr, connections, &request, 201, window)?;
            acknowledged += outcome.ok_total;
            rounds.push((Rate::from(&outcome), ceiling));
        }
        Ok(median_pair(rounds))
    };
    let (rate16, ceiling16) = paired(16)?;
    let (rate64, ceiling64) = paired(64)?;
    bare.stop()?;

    let reader = ReadOnly::open(&database)?;
    let stored = reader.count("pending")?;
    let missing = bench.plan.pending_jobs.saturating_sub(stored);
    let mut fill = None;
    if missing > 0 {
        progress(&format!("memory: submitting {missing} more pending jobs"));
        let outcome = load::run(
            server.addr,
            16,
            &request,
            201,
            Until::Count {
                total: missing,
                deadline: bench.plan.fill_deadline,
            },
        )?;
        acknowledged += outcome.ok_total;
        fill = Some(Fill {
            rate: Rate {
                per_second: outcome.ok_total as f64 / outcome.elapsed.as_secs_f64().max(1e-9),
                ..Rate::from(&outcome)
            },
            jobs: outcome.ok_total,
        });
    }
    let backlog_jobs = reader.count("pending")?;
    let backlog = server.memory()?;
    drop(reader);
    server.stop()?;
    Ok(Submit {
        rate16,
        rate64,
        ceiling16,
        ceiling64,
        idle_peak_kib: idle.peak_kib,
        backlog_peak_kib: backlog.peak_kib,
        backlog_jobs,
        acknowledged,
        fill,
        settling,
    })
}

/// FULL against NORMAL at 64 connections, paired: two fresh servers, one per durability, and
/// their windows alternate (FULL, NORMAL, FULL, ...). On a shared machine the load drifts by
/// more than the cost of syncing, so two runs seconds apart would compare the drift; the
/// median of alternating windows compares the servers.
pub fn submit_normal(bench: &mut Bench) -> Result<Normal> {
    let supported = documents_durability(&bench.paths.server);
    let full_database = bench.fresh_database("submit-paired-full")?;
    let full = bench.start_server("submit, paired FULL", &full_database, &[])?;
    let normal_database = bench.fresh_database("submit-normal")?;
    let normal = bench.start_server(
        "submit, DURABILITY=normal",
        &normal_database,
        &[("DURABILITY", "normal")],
    )?;
    let request = client::request("POST", "/jobs", Some(SUBMIT_BODY));
    let window = Until::Window {
        warmup: bench.plan.warmup,
        window: bench.plan.window / 2,
    };
    let mut rounds = Vec::new();
    let rounds_wanted = bench.plan.paired_rounds;
    for round in 1..=rounds_wanted {
        progress(&format!(
            "submit: FULL vs NORMAL, 64 connections, round {round} of {rounds_wanted}"
        ));
        // As for the ceiling: each window starts with the other server quiet.
        normal.settle(bench.plan.settle_deadline)?;
        let full_rate = Rate::from(&load::run(full.addr, 64, &request, 201, window)?);
        full.settle(bench.plan.settle_deadline)?;
        let normal_rate = Rate::from(&load::run(normal.addr, 64, &request, 201, window)?);
        rounds.push((full_rate, normal_rate));
    }
    full.stop()?;
    normal.stop()?;
    let (paired_full, rate64) = median_pair(rounds);
    Ok(Normal {
        rate64,
        paired_full,
        supported,
    })
}

/// The round whose ratio (first over second) is the median, so that each ratio compares two
/// windows measured next to each other; errors of every round are kept in it.
pub fn median_pair(mut rounds: Vec<(Rate, Rate)>) -> (Rate, Rate) {
    let errors: (u64, u64) = rounds
        .iter()
        .fold((0, 0), |(a, b), (x, y)| (a + x.errors, b + y.errors));
    let ratio = |(x, y): &(Rate, Rate)| x.per_second / y.per_second.max(1e-9);
    rounds.sort_by(|a, b| ratio(a).total_cmp(&ratio(b)));
    let (mut first, mut second) = rounds.swap_remove(rounds.len() / 2);
    first.errors = errors.0;
    second.errors = errors.1;
    (first, second)
}

/// No-op jobs submitted over 64 connections for one window, then the time until every one of
/// them is `success`, counted in the database.
pub fn end_to_end(bench: &mut Bench) -> Result<EndToEnd> {
    let database = bench.fresh_database("end-to-end")?;
    let server = bench.start_server("end to end", &database, &[("WORKER_COUNT", "16")])?;
    let request = client::request("POST", "/jobs", Some(NOOP_BODY));
    progress("end to end: submitting no-op jobs on 64 connections");
    // No warm-up: every job submitted counts, from the first submit on.
    let submitted = load::run(
        server.addr,
        64,
        &request,
        201,
        Until::Window {
            warmup: Duration::ZERO,
            window: bench.plan.window,
        },
    )?;
    let first_submit = submitted
        .started
        .ok_or_else(|| Error::new("no connection sent anything"))?;
    let jobs = submitted.ok_total;
    progress(&format!("end to end: waiting for {jobs} jobs to succeed"));
    let reader = ReadOnly::open(&database)?;
    let (finished, done_at) = drain(jobs, bench.plan.drain_deadline, || reader.count("success"))?;
    drop(reader);
    server.stop()?;
    Ok(EndToEnd {
        jobs,
        finished,
        seconds: (done_at - first_submit).as_secs_f64(),
        submit: Rate::from(&submitted),
        drained: finished >= jobs,
    })
}

/// Polls `succeeded` until it reaches `jobs` or `deadline` passes: how many had succeeded, and
/// when that was seen.
pub fn drain(
    jobs: u64,
    deadline: Duration,
    mut succeeded: impl FnMut() -> Result<u64>,
) -> Result<(u64, Instant)> {
    let deadline = Instant::now() + deadline;
    loop {
        interrupt::check()?;
        let finished = succeeded()?;
        let now = Instant::now();
        if finished >= jobs || now >= deadline {
            return Ok((finished, now));
        }
        thread::sleep(DRAIN_POLL);
    }
}

/// On an idle server, jobs one at a time: the client's clock when the 201 arrives against the
/// job's `started_at`. Signed: the worker may start the job before the 201 reaches the client.
pub fn dispatch(bench: &mut Bench) -> Result<Latency> {
    let database = bench.fresh_database("dispatch")?;
    let server = bench.start_server("dispatch latency", &database, &[])?;
    progress(&format!(
        "dispatch: {} jobs one at a time",
        bench.plan.dispatch_jobs
    ));
    let mut connection = Connection::open(server.addr).context("cannot connect")?;
    let submit = client::request("POST", "/jobs", Some(NOOP_BODY));
    let mut samples = Vec::with_capacity(bench.plan.dispatch_jobs);
    let mut errors = 0;
    let mut first_error = None;
    let deadline = Instant::now() + bench.plan.latency_deadline;
    for index in 0..LATENCY_WARMUP + bench.plan.dispatch_jobs {
        interrupt::check()?;
        if Instant::now() >= deadline {
            break;
        }
        match dispatch_one(&mut connection, &submit) {
            Ok(latency_ms) if index >= LATENCY_WARMUP => samples.push(latency_ms),
            Ok(_) => {}
            Err(err) => {
                errors += 1;
                first_error.get_or_insert(err.to_string());
            }
        }
    }
    server.stop()?;
    let percentiles = Percentiles::of(samples)
        .ok_or_else(|| Error::new(format!("no job was timed; first error: {first_error:?}")))?;
    Ok(Latency {
        percentiles,
        wanted: bench.plan.dispatch_jobs,
        errors,
        first_error,
    })
}

/// One job: submit, then read it until it has finished (so the next job meets an idle server)
/// and return `started_at` minus the client's time of the 201, in ms.
fn dispatch_one(connection: &mut Connection, submit: &[u8]) -> Result<f64> {
    let status = connection.exchange(submit).context("submit failed")?;
    let acknowledged = chrono::Utc::now().timestamp_micros();
    let body = json(connection.body())?;
    if status != 201 {
        return Err(Error::new(format!("submit answered {status}: {body}")));
    }
    let id = body["job_id"]
        .as_str()
        .ok_or_else(|| Error::new(format!("no job_id in {body}")))?;
    let get = client::request("GET", &format!("/jobs/{id}"), None);
    let deadline = Instant::now() + STEP_DEADLINE;
    loop {
        // Give the worker the time it needs before asking: polling in a tight loop would take
        // CPU and the store's lock from the very worker being timed.
        thread::sleep(Duration::from_millis(1));
        let status = connection.exchange(&get).context("GET of the job failed")?;
        let job = json(connection.body())?;
        if status != 200 {
            return Err(Error::new(format!(
                "GET /jobs/{id} answered {status}: {job}"
            )));
        }
        let finished = matches!(
            job["status"].as_str(),
            Some("success" | "failed" | "timeout")
        );
        if let (true, Some(started)) = (finished, job["started_at"].as_str()) {
            let started = chrono::DateTime::parse_from_rfc3339(started)
                .context(format!("started_at {started:?} is not RFC 3339"))?
                .timestamp_micros();
            return Ok((started - acknowledged) as f64 / 1e3);
        }
        if Instant::now() >= deadline {
            return Err(Error::new(format!(
                "job {id} did not finish within {STEP_DEADLINE:?}: {job}"
            )));
        }
    }
}

/// A database of `scale_rows` finished jobs: start-up time, then list and get latencies.
pub fn scale(bench: &mut Bench) -> Result<Scale> {
    let database = bench.fresh_database("scale")?;
    // The server creates its own schema; the rows are then added behind its back while it is
    // stopped, which is the only way to get a million jobs in seconds.
    bench
        .start_server("scale, creating the schema", &database, &[])?
        .stop()?;
    progress(&format!("scale: inserting {} jobs", bench.plan.scale_rows));
    let seeded = seed::fill(&database, bench.plan.scale_rows, &mut bench.rng)?;
    let ids = ReadOnly::open(&database)?.sample_ids(bench.plan.scale_requests, &mut bench.rng)?;
    let database_mib = std::fs::metadata(&database)
        .map(|meta| meta.len() as f64 / 1_048_576.0)
        .unwrap_or(f64::NAN);

    let server = bench.start_server("scale", &database, &[])?;
    let healthy = wait_healthy(&server)?;
    progress("scale: list and get latencies");
    check_pages(server.addr)?;
    let count = bench.plan.scale_requests;
    let list = latency(
        &bench.plan,
        server.addr,
        &[client::request("GET", "/jobs?limit=100", None)],
        200,
        count,
    )?;
    let list_failed = latency(
        &bench.plan,
        server.addr,
        &[client::request(
            "GET",
            "/jobs?status=failed&limit=100",
            None,
        )],
        200,
        count,
    )?;
    let gets: Vec<Vec<u8>> = ids
        .iter()
        .map(|id| client::request("GET", &format!("/jobs/{id}"), None))
        .collect();
    let get = latency(&bench.plan, server.addr, &gets, 200, count)?;
    server.stop()?;
    Ok(Scale {
        rows: seeded.rows,
        seed_seconds: seeded.elapsed.as_secs_f64(),
        database_mib,
        healthy,
        list,
        list_failed,
        get,
    })
}

/// From spawn to the first `200` on `/health`. The port is known only from the server's
/// `listening on` line, so polling starts there; the time is still counted from the spawn.
pub fn wait_healthy(server: &Server) -> Result<Duration> {
    let health = client::request("GET", "/health", None);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        interrupt::check()?;
        match Connection::open(server.addr).and_then(|mut connection| connection.exchange(&health))
        {
            Ok(200) => return Ok(server.spawned_at.elapsed()),
            Ok(status) => last = format!("status {status}"),
            Err(err) => last = err.to_string(),
        }
        thread::sleep(Duration::from_millis(1));
    }
    Err(Error::new(format!("/health never answered 200 ({last})")))
}

/// The list figures are only worth something if the pages are what they claim to be: a full
/// page of 100, and only failed jobs when asking for failed ones.
fn check_pages(addr: SocketAddr) -> Result<()> {
    let mut connection = Connection::open(addr).context("cannot connect")?;
    for (path, status) in [
        ("/jobs?limit=100", None),
        ("/jobs?status=failed&limit=100", Some("failed")),
    ] {
        let code = connection
            .exchange(&client::request("GET", path, None))
            .context(format!("GET {path}"))?;
        let page = json(connection.body())?;
        let jobs = page
            .as_array()
            .ok_or_else(|| Error::new(format!("GET {path} answered {code} with no array")))?;
        let wrong = status.is_some_and(|want| jobs.iter().any(|job| job["status"] != want));
        if code != 200 || jobs.len() != 100 || wrong {
            return Err(Error::new(format!(
                "GET {path} answered {code} with {} jobs{}; expected 100{}",
                jobs.len(),
                if wrong { " of other statuses" } else { "" },
                status.map(|want| format!(" {want}")).unwrap_or_default()
            )));
        }
    }
    Ok(())
}

fn latency(
    plan: &Plan,
    addr: SocketAddr,
    requests: &[Vec<u8>],
    expect: u16,
    count: usize,
) -> Result<Latency> {
    latency_within(addr, requests, expect, count, plan.latency_deadline)
}

/// `latency` with a deadline of its own.
pub fn latency_within(
    addr: SocketAddr,
    requests: &[Vec<u8>],
    expect: u16,
    count: usize,
    deadline: Duration,
) -> Result<Latency> {
    let sampled = load::sequential(addr, requests, expect, LATENCY_WARMUP, count, deadline)?;
    let percentiles = Percentiles::of(sampled.latencies_ms).ok_or_else(|| {
        Error::new(format!(
            "no request succeeded; first error: {}",
            sampled.first_error.as_deref().unwrap_or("none")
        ))
    })?;
    Ok(Latency {
        percentiles,
        wanted: count,
        errors: sampled.errors,
        first_error: sampled.first_error,
    })
}

pub fn json(body: &[u8]) -> Result<Value> {
    serde_json::from_slice(body).context(format!("response is not JSON: {}", load::snippet(body)))
}

/// `DURABILITY` appears in `--help` once the server reads it; until then it is ignored and
/// a "normal" run measures the default, which the report must say.
fn documents_durability(server: &Path) -> bool {
    Command::new(server)
        .arg("--help")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).contains("DURABILITY"))
        .unwrap_or(false)
}

pub fn progress(step: &str) {
    eprintln!("  .. {step}");
}
