//! The PostgreSQL phases: submit at 64 connections on one node, and end to end on one node and
//! on three nodes sharing one schema, each judged against the INSERT baseline (`pg.rs`) on the
//! same PostgreSQL server in the same run. Every phase works in a fresh schema of its own and
//! drops it at the end. They are skipped, with the reason, when no PostgreSQL answers at
//! `BENCH_POSTGRES_URL` or the server binary was built without the `postgres` feature.

use std::net::SocketAddr;

use crate::client;
use crate::error::{Error, Result};
use crate::load::{self, Until};
use crate::pg::Postgres;
use crate::phases::{self, progress, Bench, EndToEnd, Rate, Settling, NOOP_BODY, SUBMIT_BODY};
use crate::servers::Server;

/// Clients of the baseline and connections of the load, as `pgbench -c 64` would run.
const CONNECTIONS: usize = 64;
/// Worker threads per node: the SQLite end-to-end phase's count, on every node.
const WORKERS_PER_NODE: &str = "16";
/// What the server says when it was built without the `postgres` feature.
const NO_SUPPORT: &str = "no PostgreSQL support";

pub struct PgSubmit {
    /// The round with the median ratio: the server's window and the baseline's next to it.
    pub rate64: Rate,
    pub baseline: Rate,
    /// The same with `MAX_PENDING_JOBS=0` (no limit, so no counters read and no lock),
    /// and the baseline of its median round.
    pub unlimited64: Rate,
    pub unlimited_baseline: Rate,
    pub settling: Settling,
}

pub struct PgEndToEnd {
    pub one: PgRun,
    pub three: PgRun,
}

pub struct PgRun {
    pub nodes: usize,
    /// Jobs the run meant to submit; fewer if the submit deadline came first.
    pub planned: u64,
    pub run: EndToEnd,
    /// The INSERT baseline measured just before the nodes started, in the same schema.
    pub baseline: Rate,
}

/// Whether the PostgreSQL phases can run: `Ok(Err(why))` skips them. A server is started
/// once against a scratch schema, since only the binary knows whether it has the feature.
pub fn available(bench: &Bench) -> Result<std::result::Result<Postgres, String>> {
    let postgres = match Postgres::from_environment() {
        Ok(postgres) => postgres,
        Err(why) => return Ok(Err(why)),
    };
    let schema = postgres.fresh_schema("probe")?;
    let log = bench.paths.fresh_dir("pg-probe")?.join("server.log");
    match bench.start_server_at("PostgreSQL probe", &schema.url(), &log, &[]) {
        Ok(server) => server.stop()?,
        Err(err) if err.to_string().contains(NO_SUPPORT) => {
            return Ok(Err(format!(
                "{} was built without PostgreSQL support; build it with `cargo build --profile profiling --features postgres` (make bench does)",
                bench.paths.server.display()
            )))
        }
        Err(err) => return Err(err),
    }
    schema.drop_now()?;
    Ok(Ok(postgres))
}

fn postgres(bench: &Bench) -> Result<&Postgres> {
    bench
        .postgres
        .as_ref()
        .ok_or_else(|| Error::new("PostgreSQL was not found usable"))
}

/// One node, submits of jobs scheduled a year out at 64 connections, in rounds that each pair
/// a baseline window with a server window (as the SQLite submit pairs with the ceiling); then
/// the same on a server with `MAX_PENDING_JOBS=0`. One server at a time: two would hold two
/// pools, and with the baseline's 64 clients that is more than PostgreSQL's 100 slots.
pub fn submit(bench: &mut Bench) -> Result<PgSubmit> {
    let mut settling = Settling::default();
    let (rate64, baseline) = submit_rounds(bench, "submit", &[], &mut settling)?;
    let (unlimited64, unlimited_baseline) = submit_rounds(
        bench,
        "submit_unlimited",
        &[("MAX_PENDING_JOBS", "0")],
        &mut settling,
    )?;
    Ok(PgSubmit {
        rate64,
        baseline,
        unlimited64,
        unlimited_baseline,
        settling,
    })
}

/// The paired rounds of one server (started with `extra`) in a fresh schema `name`: the
/// median-ratio round's server rate and baseline rate.
fn submit_rounds(
    bench: &Bench,
    name: &str,
    extra: &[(&str, &str)],
    settling: &mut Settling,
) -> Result<(Rate, Rate)> {
    let postgres = postgres(bench)?;
    let schema = postgres.fresh_schema(name)?;
    let log = bench
        .paths
        .fresh_dir(&format!("pg-{name}"))?
        .join("server.log");
    let mut env = vec![("NODE_ID", "bench-1")];
    env.extend_from_slice(extra);
    let label = match extra {
        [] => "PostgreSQL submit, 1 node".to_string(),
        _ => format!("PostgreSQL submit, 1 node, {extra:?}"),
    };
    let server = bench.start_server_at(&label, &schema.url(), &log, &env)?;
    let request = client::request("POST", "/jobs", Some(SUBMIT_BODY));
    let (warmup, window) = (bench.plan.warmup, bench.plan.window / 2);
    let rounds_wanted = bench.plan.paired_rounds;
    let mut rounds = Vec::new();
    for round in 1..=rounds_wanted {
        progress(&format!(
            "pg {name}: 64 connections against the INSERT baseline, round {round} of {rounds_wanted}"
        ));
        // The server idle before the baseline's window, as before a ceiling window.
        settling.add(server.settle(bench.plan.settle_deadline)?);
        let baseline = schema.insert_baseline(CONNECTIONS, warmup, window)?;
        let outcome = load::run(
            server.addr,
            CONNECTIONS,
            &request,
            201,
            Until::Window { warmup, window },
        )?;
        rounds.push((Rate::from(&outcome), baseline));
    }
    server.stop()?;
    schema.drop_now()?;
    Ok(phases::median_pair(rounds))
}

/// End to end on one node, then on three nodes sharing one schema (load round-robin across
/// them), each after its own INSERT baseline.
pub fn end_to_end(bench: &mut Bench) -> Result<PgEndToEnd> {
    let one = run_nodes(bench, 1)?;
    let three = run_nodes(bench, 3)?;
    Ok(PgEndToEnd { one, three })
}

/// `pg_jobs` no-op jobs submitted over 64 connections spread across `nodes` servers, then the
/// time from the first submit until every one has succeeded, counted in the database.
fn run_nodes(bench: &Bench, nodes: usize) -> Result<PgRun> {
    let postgres = postgres(bench)?;
    let schema = postgres.fresh_schema(&format!("e2e_{nodes}"))?;
    progress(&format!("pg end to end, {nodes} node(s): INSERT baseline"));
    let baseline = schema.insert_baseline(CONNECTIONS, bench.plan.warmup, bench.plan.window)?;
    let dir = bench.paths.fresh_dir(&format!("pg-end-to-end-{nodes}"))?;
    // One after the other: the first creates the tables, the others find them.
    let mut servers: Vec<Server> = Vec::with_capacity(nodes);
    for node in 1..=nodes {
        let node_id = format!("bench-{node}");
        servers.push(bench.start_server_at(
            &format!("PostgreSQL end to end, node {node} of {nodes}"),
            &schema.url(),
            &dir.join(format!("{node_id}.log")),
            &[("NODE_ID", &node_id), ("WORKER_COUNT", WORKERS_PER_NODE)],
        )?);
    }
    let addrs: Vec<SocketAddr> = servers.iter().map(|server| server.addr).collect();
    let request = client::request("POST", "/jobs", Some(NOOP_BODY));
    let total = bench.plan.pg_jobs;
    progress(&format!(
        "pg end to end, {nodes} node(s): submitting {total} no-op jobs on 64 connections"
    ));
    let submitted = load::run_spread(
        &addrs,
        CONNECTIONS,
        &request,
        201,
        Until::Count {
            total,
            deadline: bench.plan.pg_drain_deadline,
        },
    )?;
    let first_submit = submitted
        .started
        .ok_or_else(|| Error::new("no connection sent anything"))?;
    let jobs = submitted.ok_total;
    progress(&format!(
        "pg end to end, {nodes} node(s): waiting for {jobs} jobs to succeed"
    ));
    let mut reader = schema.reader()?;
    let (finished, done_at) = phases::drain(jobs, bench.plan.pg_drain_deadline, || {
        reader.count("success")
    })?;
    drop(reader);
    for server in servers {
        server.stop()?;
    }
    schema.drop_now()?;
    Ok(PgRun {
        nodes,
        planned: total,
        run: EndToEnd {
            jobs,
            finished,
            seconds: (done_at - first_submit).as_secs_f64(),
            submit: Rate {
                per_second: jobs as f64 / submitted.elapsed.as_secs_f64().max(1e-9),
                ..Rate::from(&submitted)
            },
            drained: finished >= jobs,
        },
        baseline,
    })
}
