//! The benchmark of mini-lambda-rust (`make bench`, `make bench-quick`): measures a bare
//! tiny_http server as the ceiling, then the real server binary in an optimised build (submit
//! throughput, end to end, dispatch latency, memory, a large database; then, if a PostgreSQL
//! answers at `BENCH_POSTGRES_URL`, submit and end to end on PostgreSQL with one and three
//! nodes), prints one table against the targets of the performance issue and writes it to
//! `target/bench/latest.json`.
//!
//! This file owns the command line and the order of the phases; each phase is in `phases.rs`.
//! Traffic goes only to servers it starts on 127.0.0.1, every loop is bounded in count and
//! time, and every server it starts is stopped when it ends, also on error or Ctrl-C.
//!
//! ```text
//! loadgen [--full | --quick] [--only PHASE,...] [--server PATH] [--keep]
//! loadgen bare-server ADDR [THREADS]   the ceiling server (started by the benchmark itself)
//! ```

mod bare;
mod batch;
mod client;
mod db;
mod error;
mod interrupt;
mod load;
mod paths;
mod pg;
mod pg_phases;
mod phases;
mod plan;
mod prune;
mod report;
mod rng;
mod scrape;
mod seed;
mod servers;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use error::{Error, Result};
use paths::Paths;
use phases::Bench;
use plan::{Mode, Plan};
use report::{Failure, Results};
use rng::Rng;

const USAGE: &str = "\
usage: loadgen [--full | --quick] [--only PHASE,...] [--server PATH] [--keep]
       loadgen bare-server ADDR [THREADS]

  --full          the figures of the performance issue (default; a few minutes)
  --quick         the same phases, smaller (under a minute)
  --only PHASES   run only these of: ceiling, submit, normal, end-to-end, dispatch, scale,
                  scrape, batch, prune, pg-submit, pg-end-to-end, pg-batch
  --server PATH   the server binary (default: the one beside this loadgen, target/profiling/mini-lambda-rust under make bench)
  --keep          keep the temporary directory (databases, server logs) and print its path

  LOADGEN_SERVER_LOG=FILTER sets the servers' RUST_LOG (default mini_lambda_rust=warn)
  BENCH_POSTGRES_URL=URL is the PostgreSQL of the pg- phases (default postgres://root@127.0.0.1/test);
    they are skipped when it does not answer or the server was built without --features postgres";

/// The phases in the order they run; `--only` names them.
const PHASES: [&str; 12] = [
    "ceiling",
    "submit",
    "normal",
    "end-to-end",
    "dispatch",
    "scale",
    "scrape",
    "batch",
    "prune",
    "pg-submit",
    "pg-end-to-end",
    "pg-batch",
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("bare-server") {
        let addr = args.get(1).map_or("127.0.0.1:0", String::as_str);
        let threads = match args.get(2).map(|text| text.parse::<usize>()) {
            None => 8,
            Some(Ok(threads)) if threads > 0 => threads,
            Some(_) => {
                eprintln!("bare-server: THREADS must be a positive number\n{USAGE}");
                return ExitCode::from(2);
            }
        };
        return match bare::serve(addr, threads) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("bare-server: {err}");
                ExitCode::FAILURE
            }
        };
    }
    if args.iter().any(|arg| arg == "--help" || arg == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let options = match parse(&args) {
        Ok(options) => options,
        Err(err) => {
            eprintln!("error: {err}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    interrupt::install();
    match run(options) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

struct Options {
    mode: Mode,
    server: Option<PathBuf>,
    only: Option<Vec<String>>,
    keep: bool,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut options = Options {
        mode: Mode::Full,
        server: None,
        only: None,
        keep: false,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--full" => options.mode = Mode::Full,
            "--quick" => options.mode = Mode::Quick,
            "--keep" => options.keep = true,
            "--server" => {
                let path = args
                    .next()
                    .ok_or_else(|| Error::new("--server needs a path"))?;
                options.server = Some(PathBuf::from(path));
            }
            "--only" => {
                let list = args
                    .next()
                    .ok_or_else(|| Error::new("--only needs phase names"))?;
                let names: Vec<String> = list
                    .split(',')
                    .map(|name| name.trim().to_string())
                    .collect();
                if let Some(unknown) = names.iter().find(|name| !PHASES.contains(&name.as_str())) {
                    return Err(Error::new(format!("unknown phase {unknown:?}")));
                }
                options.only = Some(names);
            }
            other => return Err(Error::new(format!("unknown argument {other:?}"))),
        }
    }
    Ok(options)
}

/// Runs every phase, prints and writes the report. `Ok(false)` when a phase failed: the report
/// is still written, with that phase's figures marked ERROR.
fn run(options: Options) -> Result<bool> {
    let started = Instant::now();
    let mode = options.mode;
    let paths = Paths::discover(options.server, options.keep)?;
    let mut bench = Bench {
        plan: Plan::new(mode),
        paths,
        // Fixed seed: two runs fill the scale database with the same shape of data.
        rng: Rng::new(0x5eed_1e55_ca1e),
        handler_threads: None,
        postgres: None,
    };
    eprintln!(
        "benchmarking {} ({} run)",
        bench.paths.server.display(),
        if mode == Mode::Quick { "quick" } else { "full" }
    );
    let wanted = |name: &str| {
        options
            .only
            .as_ref()
            .is_none_or(|only| only.iter().any(|n| n == name))
    };
    let mut results = Results {
        skipped: PHASES.into_iter().filter(|name| !wanted(name)).collect(),
        ..Results::default()
    };
    let failures = &mut results.failures;
    // The ceiling first, on a machine no server has loaded yet.
    if wanted("ceiling") {
        results.ceiling = phase("ceiling", &mut bench, failures, phases::ceiling);
    }
    if wanted("submit") {
        results.submit = phase("submit", &mut bench, failures, phases::submit);
    }
    if wanted("normal") {
        results.normal = phase("normal", &mut bench, failures, phases::submit_normal);
    }
    if wanted("end-to-end") {
        results.end_to_end = phase("end-to-end", &mut bench, failures, phases::end_to_end);
    }
    if wanted("dispatch") {
        results.dispatch = phase("dispatch", &mut bench, failures, phases::dispatch);
    }
    if wanted("scale") {
        results.scale = phase("scale", &mut bench, failures, phases::scale);
    }
    if wanted("scrape") {
        results.scrape = phase("scrape", &mut bench, failures, scrape::scrape);
    }
    if wanted("prune") {
        results.prune = phase("prune", &mut bench, failures, prune::prune);
    }
    if wanted("batch") {
        results.batch = phase("batch", &mut bench, failures, batch::sqlite);
    }
    if (wanted("pg-submit") || wanted("pg-end-to-end") || wanted("pg-batch"))
        && !interrupt::requested()
    {
        eprintln!("postgres: looking for a usable PostgreSQL");
        match pg_phases::available(&bench) {
            Ok(Ok(postgres)) => bench.postgres = Some(postgres),
            Ok(Err(why)) => {
                eprintln!("  skipping the PostgreSQL phases: {why}");
                results.postgres_unavailable = Some(why);
            }
            Err(err) => {
                eprintln!("  FAILED: {err}");
                failures.push(Failure {
                    phase: "postgres",
                    error: err.to_string(),
                });
            }
        }
    }
    if bench.postgres.is_some() {
        if wanted("pg-submit") {
            results.pg_submit = phase("pg-submit", &mut bench, failures, pg_phases::submit);
        }
        if wanted("pg-end-to-end") {
            results.pg_end_to_end =
                phase("pg-end-to-end", &mut bench, failures, pg_phases::end_to_end);
        }
        if wanted("pg-batch") {
            results.pg_batch = phase("pg-batch", &mut bench, failures, batch::postgres);
        }
    }

    let rows = report::rows(&results, &bench.plan);
    println!("\n{}", report::table(&rows));
    for failure in &results.failures {
        println!("phase {} failed: {}", failure.phase, failure.error);
    }
    let written = report::write_json(&bench.paths, &bench.plan, &rows, &results)?;
    println!(
        "written to {} after {:.0} s",
        written.display(),
        started.elapsed().as_secs_f64()
    );
    interrupt::check()?;
    Ok(results.failures.is_empty())
}

/// Runs one phase; a failure is recorded and the run goes on, so one broken phase does not
/// hide the others' figures. After an interrupt the remaining phases are skipped.
fn phase<T>(
    name: &'static str,
    bench: &mut Bench,
    failures: &mut Vec<Failure>,
    measure: fn(&mut Bench) -> Result<T>,
) -> Option<T> {
    if interrupt::requested() {
        return None;
    }
    eprintln!("{name}");
    let phase_started = Instant::now();
    match measure(bench) {
        Ok(value) => {
            eprintln!("  done in {:.1} s", phase_started.elapsed().as_secs_f64());
            Some(value)
        }
        Err(err) => {
            eprintln!(
                "  FAILED after {:.1} s: {err}",
                phase_started.elapsed().as_secs_f64()
            );
            failures.push(Failure {
                phase: name,
                error: err.to_string(),
            });
            None
        }
    }
}
