//! Turning the phases' numbers into the report: one row per figure with its ceiling or baseline,
//! the ratio, the target and a verdict; printed as a table and written as JSON. The
//! targets live here and only here.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

use serde::Serialize;

use crate::error::{Context, Result};
use crate::paths::Paths;
use crate::pg_phases::{PgEndToEnd, PgRun, PgSubmit};
use crate::phases::{Ceiling, EndToEnd, Latency, Normal, Rate, Scale, Submit};
use crate::plan::{Mode, Plan};

/// What the phases produced; `None` for a phase that failed (its error is in `failures`).
#[derive(Default)]
pub struct Results {
    pub ceiling: Option<Ceiling>,
    pub submit: Option<Submit>,
    pub normal: Option<Normal>,
    pub end_to_end: Option<EndToEnd>,
    pub dispatch: Option<Latency>,
    pub scale: Option<Scale>,
    pub scrape: Option<crate::scrape::Scrape>,
    pub prune: Option<crate::prune::Prune>,
    pub pg_submit: Option<PgSubmit>,
    pub pg_end_to_end: Option<PgEndToEnd>,
    pub batch: Option<crate::batch::Batches>,
    pub pg_batch: Option<crate::batch::Batches>,
    /// Why the PostgreSQL phases did not run (no server answering, a binary without the
    /// feature); their rows say so instead of ERROR.
    pub postgres_unavailable: Option<String>,
    pub failures: Vec<Failure>,
    /// Phases left out with `--only`: their figures are left out of the report too.
    pub skipped: Vec<&'static str>,
}

#[derive(Serialize)]
pub struct Failure {
    pub phase: &'static str,
    pub error: String,
}

#[derive(Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Verdict {
    #[serde(rename = "PASS")]
    Pass,
    #[serde(rename = "FAIL")]
    Fail,
    /// No target: an informational figure.
    #[serde(rename = "-")]
    Info,
    /// The figure cannot be judged (its comparison is not meaningful in this run).
    #[serde(rename = "n/a")]
    NotApplicable,
    /// The phase failed; no value.
    #[serde(rename = "ERROR")]
    Error,
    /// The phase could not run here (no PostgreSQL); the note says why.
    #[serde(rename = "skipped")]
    Skipped,
}

impl Verdict {
    fn text(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Info => "-",
            Verdict::NotApplicable => "n/a",
            Verdict::Error => "ERROR",
            Verdict::Skipped => "skipped",
        }
    }
}

#[derive(Clone, Copy)]
enum Target {
    /// value / baseline must be at least this.
    RatioAtLeast(f64),
    /// value must be below this, in the row's unit.
    Below(f64),
}

/// How the ratio reads: a share of the ceiling for rates, a multiple of the baseline otherwise.
#[derive(Clone, Copy, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RatioStyle {
    #[default]
    Percent,
    Times,
}

#[derive(Serialize)]
pub struct Row {
    key: &'static str,
    figure: String,
    value: Option<f64>,
    unit: &'static str,
    baseline: Option<f64>,
    /// What the baseline is: "ceiling, 64 connections", "bare round trip p50".
    baseline_of: Option<&'static str>,
    ratio: Option<f64>,
    ratio_style: RatioStyle,
    target: Option<&'static str>,
    result: Verdict,
    errors: u64,
    note: Option<String>,
    #[serde(skip)]
    check: Option<Target>,
    #[serde(skip)]
    not_applicable: bool,
    #[serde(skip)]
    skipped: bool,
}

impl Row {
    pub(crate) fn new(
        key: &'static str,
        figure: impl Into<String>,
        value: Option<f64>,
        unit: &'static str,
    ) -> Row {
        Row {
            key,
            figure: figure.into(),
            value,
            unit,
            baseline: None,
            baseline_of: None,
            ratio: None,
            ratio_style: RatioStyle::Percent,
            target: None,
            result: Verdict::Info,
            errors: 0,
            note: None,
            check: None,
            not_applicable: false,
            skipped: false,
        }
    }

    pub(crate) fn baseline(
        mut self,
        of: &'static str,
        value: Option<f64>,
        style: RatioStyle,
    ) -> Row {
        self.baseline_of = Some(of);
        self.baseline = value;
        self.ratio_style = style;
        self
    }

    fn target(mut self, text: &'static str, check: Target) -> Row {
        self.target = Some(text);
        self.check = Some(check);
        self
    }

    pub(crate) fn errors(mut self, errors: u64, first: Option<&str>) -> Row {
        self.errors += errors;
        if let Some(first) = first.filter(|_| errors > 0) {
            self.add_note(format!("first error: {first}"));
        }
        self
    }

    fn note(mut self, note: Option<String>) -> Row {
        if let Some(note) = note {
            self.add_note(note);
        }
        self
    }

    fn with_note(mut self, note: &str) -> Row {
        self.add_note(note.to_string());
        self
    }

    fn add_note(&mut self, note: String) {
        self.note = Some(match self.note.take() {
            Some(before) => format!("{before}; {note}"),
            None => note,
        });
    }

    /// Computes the ratio and the verdict. A figure with errors never passes: a rate that
    /// includes refused requests is not the rate of the server doing its job.
    fn judge(mut self) -> Row {
        self.ratio = match (self.value, self.baseline) {
            (Some(value), Some(baseline)) if baseline != 0.0 => Some(value / baseline),
            _ => None,
        };
        self.result = match (self.value, self.check) {
            (None, _) if self.skipped => Verdict::Skipped,
            (None, _) => Verdict::Error,
            (Some(_), _) if self.not_applicable => Verdict::NotApplicable,
            // A share of a ceiling that was not measured (failed, or left out) cannot be judged.
            (Some(_), Some(Target::RatioAtLeast(_))) if self.ratio.is_none() => {
                Verdict::NotApplicable
            }
            (Some(_), None) => Verdict::Info,
            (Some(value), Some(check)) => {
                let met = match check {
                    Target::RatioAtLeast(minimum) => {
                        self.ratio.is_some_and(|ratio| ratio >= minimum)
                    }
                    Target::Below(maximum) => value < maximum,
                };
                if met && self.errors == 0 {
                    Verdict::Pass
                } else {
                    Verdict::Fail
                }
            }
        };
        self
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn ms(duration: std::time::Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// Every figure, in the order of the list.
pub fn rows(results: &Results, plan: &Plan) -> Vec<Row> {
    let mut rows = ceiling_rows(results.ceiling.as_ref());
    rows.extend(submit_rows(results));
    rows.extend(end_to_end_rows(results));
    rows.extend(dispatch_rows(results));
    rows.extend(memory_rows(results, plan));
    rows.extend(scale_rows(results, plan));
    rows.extend(scrape_rows(results));
    rows.extend(crate::batch::rows("batch", "batch", results.batch.as_ref()));
    rows.extend(prune_rows(results, plan));
    rows.extend(postgres_rows(results));
    rows.extend(crate::batch::rows(
        "pg_batch",
        "PostgreSQL batch",
        results.pg_batch.as_ref(),
    ));
    // The reason for skipping the PostgreSQL rows is said once, on the first of them.
    let mut skipped_first: Option<&'static str> = None;
    rows.into_iter()
        .filter(|row| row.value.is_some() || !results.skipped.contains(&phase_of(row.key)))
        .map(|mut row| {
            if let Some(why) = &results.postgres_unavailable {
                if phase_of(row.key).starts_with("pg-") {
                    row.skipped = true;
                    row.note = Some(match skipped_first {
                        None => format!("skipped: {why}"),
                        Some(first) => format!("skipped, see {first}"),
                    });
                    skipped_first.get_or_insert(row.key);
                }
            }
            row.judge()
        })
        .collect()
}

/// The phase (as `--only` names it) that measures the figure `key`.
fn phase_of(key: &str) -> &'static str {
    match key {
        "submit_64_normal" | "submit_full_vs_normal" => "normal",
        _ if key.starts_with("pg_end_to_end") => "pg-end-to-end",
        _ if key.starts_with("pg_batch") => "pg-batch",
        _ if key.starts_with("batch") => "batch",
        _ if key.starts_with("pg_") => "pg-submit",
        _ if key.starts_with("ceiling_paired") => "submit",
        _ if key.starts_with("ceiling") => "ceiling",
        _ if key.starts_with("submit") || key.starts_with("rss") => "submit",
        _ if key.starts_with("end_to_end") => "end-to-end",
        _ if key.starts_with("dispatch") => "dispatch",
        _ if key.starts_with("prune") => "prune",
        _ if key.starts_with("scrape") => "scrape",
        _ => "scale",
    }
}

fn rate_row(key: &'static str, figure: &str, rate: Option<&Rate>) -> Row {
    Row::new(key, figure, rate.map(|rate| rate.per_second), "req/s")
        .errors(
            rate.map_or(0, |rate| rate.errors),
            rate.and_then(|rate| rate.first_error.as_deref()),
        )
        .note(rate.and_then(stall))
}

/// A response slower than this under load is a stall worth a note, whatever the rate says.
const STALL_MS: f64 = 1_000.0;

fn stall(rate: &Rate) -> Option<String> {
    let slow = (rate.slowest_ms >= STALL_MS)
        .then(|| format!("slowest response {:.0} ms", rate.slowest_ms));
    let starved = (rate.starved > 0).then(|| {
        format!(
            "{} of {} connections got no response in the window",
            rate.starved, rate.connections
        )
    });
    match (starved, slow) {
        (Some(starved), Some(slow)) => Some(format!("{starved}; {slow}")),
        (one, other) => one.or(other),
    }
}

fn latency_row(key: &'static str, figure: &str, latency: Option<&Latency>, p99: bool) -> Row {
    let value = latency.map(|latency| {
        if p99 {
            latency.percentiles.p99_ms
        } else {
            latency.percentiles.p50_ms
        }
    });
    let short = latency
        .filter(|latency| latency.percentiles.samples < latency.wanted)
        .map(|latency| {
            format!(
                "only {} of {} samples before the deadline",
                latency.percentiles.samples, latency.wanted
            )
        });
    Row::new(key, figure, value, "ms")
        .errors(
            latency.map_or(0, |latency| latency.errors),
            latency.and_then(|latency| latency.first_error.as_deref()),
        )
        .note(short)
}

fn ceiling_rows(ceiling: Option<&Ceiling>) -> Vec<Row> {
    let threads = ceiling.map(|c| {
        format!(
            "bare tiny_http with {} handler threads, as many as the server under test",
            c.handler_threads
        )
    });
    vec![
        rate_row(
            "ceiling_16",
            "ceiling: bare tiny_http, 16 conns",
            ceiling.map(|c| &c.rate16),
        )
        .note(threads),
        rate_row(
            "ceiling_64",
            "ceiling: bare tiny_http, 64 conns",
            ceiling.map(|c| &c.rate64),
        )
        .with_note("the standalone ceiling, measured alone before any server ran; the submit ratios use the paired ceiling (ceiling_paired_*) instead"),
        latency_row(
            "ceiling_round_trip_p50",
            "ceiling: round trip, 1 conn, p50",
            ceiling.map(|c| &c.round_trip),
            false,
        ),
        latency_row(
            "ceiling_round_trip_p99",
            "ceiling: round trip, 1 conn, p99",
            ceiling.map(|c| &c.round_trip),
            true,
        ),
        Row::new(
            "ceiling_rss_idle",
            "ceiling: peak RSS idle",
            ceiling.map(|c| mib(c.idle_peak_kib)),
            "MiB",
        ),
        Row::new(
            "ceiling_start",
            "ceiling: spawn to listening",
            ceiling.map(|c| ms(c.ready)),
            "ms",
        ),
    ]
}

fn submit_rows(results: &Results) -> Vec<Row> {
    let ceiling = results.ceiling.as_ref();
    let submit = results.submit.as_ref();
    let normal = results.normal.as_ref();
    let mut full_vs_normal = Row::new(
        "submit_full_vs_normal",
        "submit, 64 conns: FULL vs NORMAL (paired)",
        normal.map(|n| n.paired_full.per_second),
        "req/s",
    )
    .baseline(
        "submit at NORMAL, 64 conns",
        normal.map(|n| n.rate64.per_second),
        RatioStyle::Percent,
    )
    .target(">= 90% (within 10%)", Target::RatioAtLeast(0.90))
    .errors(normal.map_or(0, |n| n.paired_full.errors), None)
    .errors(normal.map_or(0, |n| n.rate64.errors), None);
    full_vs_normal
        .add_note("the median ratio of several rounds (5 full, 3 quick), each a FULL window next to a NORMAL one on two fresh servers".into());
    if normal.is_some_and(|n| !n.supported) {
        full_vs_normal.not_applicable = true;
        full_vs_normal.add_note(
            "the server does not read DURABILITY yet (not in --help): both runs were FULL".into(),
        );
    }
    let standalone = |pick: fn(&Ceiling) -> f64| ceiling.map(pick);
    let settling = submit.map(|s| {
        let waits = format!(
            "before each of its {} windows the server under test was idle (CPU time still for 300 ms) after at most {:.2} s and {:.0} ms of CPU",
            s.settling.windows,
            s.settling.longest.as_secs_f64(),
            s.settling.most_busy_ms
        );
        if s.settling.unsettled > 0 {
            format!(
                "{waits}; {} windows started at the deadline with the server still busy",
                s.settling.unsettled
            )
        } else {
            waits
        }
    });
    let paired_ceiling = |key, figure, rate: Option<&Rate>, alone: Option<f64>| {
        rate_row(key, figure, rate)
            .baseline(
                "standalone ceiling (ceiling phase), same connections",
                alone,
                RatioStyle::Percent,
            )
            .with_note("the baseline of the submit_16 and submit_64 ratios; far from 100% means the machine was busier during the submit phase than during the ceiling phase")
    };
    vec![
        paired_ceiling(
            "ceiling_paired_16",
            "ceiling: paired with submit, 16 conns",
            submit.map(|s| &s.ceiling16),
            standalone(|c| c.rate16.per_second),
        )
        .note(settling),
        paired_ceiling(
            "ceiling_paired_64",
            "ceiling: paired with submit, 64 conns",
            submit.map(|s| &s.ceiling64),
            standalone(|c| c.rate64.per_second),
        ),
        rate_row(
            "submit_16",
            "submit, 16 conns, FULL",
            submit.map(|s| &s.rate16),
        )
        .baseline(
            "paired ceiling, 16 conns (ceiling_paired_16)",
            submit.map(|s| s.ceiling16.per_second),
            RatioStyle::Percent,
        )
        .with_note("the round with the median ratio, of several rounds (5 full, 3 quick) each pairing a window with a ceiling window; ratio against the paired ceiling"),
        rate_row(
            "submit_64",
            "submit, 64 conns, FULL",
            submit.map(|s| &s.rate64),
        )
        .baseline(
            "paired ceiling, 64 conns (ceiling_paired_64)",
            submit.map(|s| s.ceiling64.per_second),
            RatioStyle::Percent,
        )
        .target(">= 30% (aim 40%)", Target::RatioAtLeast(0.30))
        .with_note("the round with the median ratio, of several rounds (5 full, 3 quick) each pairing a window with a ceiling window; ratio against the paired ceiling"),
        rate_row(
            "submit_64_normal",
            "submit, 64 conns, NORMAL (paired median)",
            normal.map(|n| &n.rate64),
        )
        .baseline(
            "paired ceiling of the submit phase, 64 conns (ceiling_paired_64), else ceiling_64",
            submit
                .map(|s| s.ceiling64.per_second)
                .or(ceiling.map(|c| c.rate64.per_second)),
            RatioStyle::Percent,
        ),
        full_vs_normal,
    ]
}

fn end_to_end_rows(results: &Results) -> Vec<Row> {
    let run = results.end_to_end.as_ref();
    let note = run.map(drain_note);
    let unfinished = run.map_or(0, |run| run.jobs.saturating_sub(run.finished));
    vec![Row::new(
        "end_to_end",
        "end to end, no-op jobs, 16 workers",
        run.map(EndToEnd::rate),
        "jobs/s",
    )
    .baseline(
        "paired ceiling of the submit phase, 64 conns (ceiling_paired_64), else ceiling_64",
        results
            .submit
            .as_ref()
            .map(|s| s.ceiling64.per_second)
            .or(results.ceiling.as_ref().map(|c| c.rate64.per_second)),
        RatioStyle::Percent,
    )
    .target(">= 15%", Target::RatioAtLeast(0.15))
    .note(note)
    // Jobs that never reached success count as errors: the rate would otherwise flatter.
    .errors(unfinished, None)
    .errors(
        run.map_or(0, |run| run.submit.errors),
        run.and_then(|run| run.submit.first_error.as_deref()),
    )
    .note(run.and_then(|run| stall(&run.submit)))]
}

/// How an end-to-end run went: how many jobs, how fast they were submitted, and when the last
/// one succeeded (or how many had when the deadline came).
fn drain_note(run: &EndToEnd) -> String {
    let submitted = format!(
        "{} jobs submitted at {:.0}/s",
        run.jobs, run.submit.per_second
    );
    if run.drained {
        format!(
            "{submitted}, all succeeded {:.2} s after the first",
            run.seconds
        )
    } else {
        format!(
            "{submitted}, only {} succeeded within the deadline ({:.1} s)",
            run.finished, run.seconds
        )
    }
}

/// The PostgreSQL figures, all informational: there is no target for them yet, and their
/// baseline is the database's own INSERT rate, not the HTTP ceiling.
fn postgres_rows(results: &Results) -> Vec<Row> {
    let submit = results.pg_submit.as_ref();
    let e2e = results.pg_end_to_end.as_ref();
    let settling = submit.map(|s| {
        format!(
            "64 clients, one job-shaped row per autocommitted INSERT, in the pg submit rounds' windows; before each the server was idle after at most {:.2} s{}",
            s.settling.longest.as_secs_f64(),
            if s.settling.unsettled > 0 {
                format!(" ({} waits hit the deadline)", s.settling.unsettled)
            } else {
                String::new()
            }
        )
    });
    let mut rows = vec![
        Row::new(
            "pg_baseline_insert_64",
            "PostgreSQL INSERT baseline, 64 clients",
            submit.map(|s| s.baseline.per_second),
            "tx/s",
        )
        .errors(
            submit.map_or(0, |s| s.baseline.errors),
            submit.and_then(|s| s.baseline.first_error.as_deref()),
        )
        .note(settling),
        rate_row(
            "pg_submit_64",
            "PostgreSQL submit, 64 conns, 1 node",
            submit.map(|s| &s.rate64),
        )
        .baseline(
            "INSERT baseline, 64 clients, paired windows (pg_baseline_insert_64)",
            submit.map(|s| s.baseline.per_second),
            RatioStyle::Percent,
        )
        .with_note("the round with the median ratio, of several rounds (5 full, 3 quick) each pairing a server window with a baseline window; the default MAX_PENDING_JOBS (a limit: each submit reads the sharded pending counters under a shared lock)"),
        rate_row(
            "pg_submit_64_unlimited",
            "PostgreSQL submit, 64 conns, MAX_PENDING_JOBS=0",
            submit.map(|s| &s.unlimited64),
        )
        .baseline(
            "INSERT baseline, 64 clients, paired windows of its own rounds",
            submit.map(|s| s.unlimited_baseline.per_second),
            RatioStyle::Percent,
        )
        .with_note("no pending limit, so no counters read and no lock: what the limit costs, next to pg_submit_64"),
    ];
    let run_row = |key, figure, pick: fn(&PgEndToEnd) -> &PgRun| {
        let run = e2e.map(pick);
        let unfinished = run.map_or(0, |r| r.run.jobs.saturating_sub(r.run.finished));
        Row::new(key, figure, run.map(|r| r.run.rate()), "jobs/s")
            .baseline(
                "INSERT baseline, 64 clients, measured just before on the same schema",
                run.map(|r| r.baseline.per_second),
                RatioStyle::Percent,
            )
            .note(run.map(|r| drain_note(&r.run)))
            .note(run.filter(|r| r.run.jobs < r.planned).map(|r| {
                format!(
                    "only {} of the {} planned jobs were submitted before the deadline",
                    r.run.jobs, r.planned
                )
            }))
            .note(run.map(|r| format!("{} node(s) of 16 workers, load round-robin", r.nodes)))
            .errors(unfinished, None)
            .errors(
                run.map_or(0, |r| r.run.submit.errors),
                run.and_then(|r| r.run.submit.first_error.as_deref()),
            )
            .errors(
                run.map_or(0, |r| r.baseline.errors),
                run.and_then(|r| r.baseline.first_error.as_deref()),
            )
    };
    rows.push(run_row(
        "pg_end_to_end_1",
        "PostgreSQL end to end, 1 node",
        |e| &e.one,
    ));
    rows.push(run_row(
        "pg_end_to_end_3",
        "PostgreSQL end to end, 3 nodes",
        |e| &e.three,
    ));
    // Each run against its own baseline too, as the raw ratio also moves with the machine.
    let normalised = e2e.map(|e| {
        let share = |r: &PgRun| r.run.rate() / r.baseline.per_second.max(1e-9);
        format!(
            "as shares of their own baselines: {:.2}x",
            share(&e.three) / share(&e.one).max(1e-9)
        )
    });
    rows.push(
        Row::new(
            "pg_end_to_end_3_vs_1",
            "PostgreSQL end to end: 3 nodes vs 1",
            e2e.map(|e| e.three.run.rate()),
            "jobs/s",
        )
        .baseline(
            "end to end on 1 node (pg_end_to_end_1)",
            e2e.map(|e| e.one.run.rate()),
            RatioStyle::Times,
        )
        .note(normalised),
    );
    rows
}

fn dispatch_rows(results: &Results) -> Vec<Row> {
    let dispatch = results.dispatch.as_ref();
    let round_trip = results.ceiling.as_ref().map(|c| c.round_trip.percentiles);
    let samples = dispatch.map(|d| format!("{} jobs", d.percentiles.samples));
    vec![
        latency_row(
            "dispatch_p50",
            "dispatch latency, idle, p50",
            dispatch,
            false,
        )
        .baseline(
            "bare round trip p50",
            round_trip.map(|p| p.p50_ms),
            RatioStyle::Times,
        )
        .target("< 1 ms", Target::Below(1.0))
        .note(samples.clone()),
        latency_row(
            "dispatch_p99",
            "dispatch latency, idle, p99",
            dispatch,
            true,
        )
        .baseline(
            "bare round trip p99",
            round_trip.map(|p| p.p99_ms),
            RatioStyle::Times,
        )
        .target("< 5 ms", Target::Below(5.0))
        .note(samples),
    ]
}

fn memory_rows(results: &Results, plan: &Plan) -> Vec<Row> {
    let submit = results.submit.as_ref();
    let bare = results.ceiling.as_ref().map(|c| mib(c.idle_peak_kib));
    let mut backlog = Row::new(
        "rss_backlog",
        format!(
            "peak RSS, {} pending jobs",
            submit.map_or(plan.pending_jobs, |s| s.backlog_jobs)
        ),
        submit.map(|s| mib(s.backlog_peak_kib)),
        "MiB",
    )
    .baseline("bare idle RSS", bare, RatioStyle::Times)
    .target("< 64 MiB", Target::Below(64.0));
    if let Some(submit) = submit {
        if submit.backlog_jobs < submit.acknowledged {
            // A 201 promises a stored job; fewer rows than 201s is a broken promise.
            let lost = submit.acknowledged - submit.backlog_jobs;
            backlog = backlog.errors(
                lost,
                Some(&format!(
                    "{} submits were acknowledged but only {} jobs are stored",
                    submit.acknowledged, submit.backlog_jobs
                )),
            );
        }
        if let Some(fill) = &submit.fill {
            backlog.add_note(format!(
                "{} of the jobs submitted at {:.0}/s on 16 conns",
                fill.jobs, fill.rate.per_second
            ));
            if let Some(stalled) = stall(&fill.rate) {
                backlog.add_note(stalled);
            }
            // In the note, not the errors column: the figure is memory, and the submits are
            // judged in the submit rows. Still shown, since a failed submit is never noise.
            if fill.rate.errors > 0 {
                backlog.add_note(format!(
                    "{} backlog submits failed, first: {}",
                    fill.rate.errors,
                    fill.rate.first_error.as_deref().unwrap_or("?")
                ));
            }
        }
        if submit.backlog_jobs < plan.pending_jobs {
            backlog.add_note(format!(
                "the backlog reached only {} of {}",
                submit.backlog_jobs, plan.pending_jobs
            ));
        }
    }
    if plan.mode == Mode::Quick {
        backlog.add_note("quick run: the target is for 100,000".into());
    }
    vec![
        Row::new(
            "rss_idle",
            "peak RSS idle",
            submit.map(|s| mib(s.idle_peak_kib)),
            "MiB",
        )
        .baseline("bare idle RSS", bare, RatioStyle::Times)
        .target("< 20 MiB", Target::Below(20.0)),
        backlog,
    ]
}

/// Submits while retention prunes a backlog of expired jobs, against the same build with
/// retention off (paired windows), and how long the backlog took.
fn prune_rows(results: &Results, plan: &Plan) -> Vec<Row> {
    let prune = results.prune.as_ref();
    let jobs = prune.map_or(plan.scale_rows, |p| p.jobs);
    vec![
        Row::new(
            "prune_submit_64",
            format!("submit, 64 conns, pruning {jobs} expired jobs"),
            prune.map(|p| p.pruning.per_second),
            "jobs/s",
        )
        .baseline(
            "same build, retention off (paired)",
            prune.map(|p| p.baseline.per_second),
            RatioStyle::Percent,
        )
        .target(">= 90% of retention off", Target::RatioAtLeast(0.9))
        .errors(
            prune.map_or(0, |p| p.pruning.errors + p.baseline.errors),
            prune.and_then(|p| p.pruning.first_error.as_deref()),
        )
        .note(prune.map(|p| format!("{} pruned during the rounds", p.pruned_during_rounds))),
        Row::new(
            "prune_rate",
            format!("pruning {jobs} expired jobs: rate, server alone"),
            prune.map(|p| p.rate),
            "jobs/s",
        )
        .note(prune.map(|p| match p.seconds {
            Some(seconds) => format!("all gone in {seconds:.0} s"),
            None => format!(
                "{} left after the watch; all of them in about {:.0} min at this rate",
                p.left,
                p.jobs as f64 / p.rate.max(1e-9) / 60.0
            ),
        })),
    ]
}

fn scale_rows(results: &Results, plan: &Plan) -> Vec<Row> {
    let scale = results.scale.as_ref();
    let rows_label = scale.map_or(plan.scale_rows, |s| s.rows);
    let round_trip = results.ceiling.as_ref().map(|c| c.round_trip.percentiles);
    let p50_base = round_trip.map(|p| p.p50_ms);
    let p99_base = round_trip.map(|p| p.p99_ms);
    let quick_note = (plan.mode == Mode::Quick)
        .then(|| "quick run: the target is for 1,000,000 jobs".to_string());
    let latency = |key, what: &str, pick: fn(&Scale) -> &Latency, p99: bool| {
        let percentile = if p99 { "p99" } else { "p50" };
        let row = latency_row(
            key,
            &format!("{rows_label} jobs: {what} {percentile}"),
            scale.map(pick),
            p99,
        );
        if p99 {
            row.baseline("bare round trip p99", p99_base, RatioStyle::Times)
                .target("< 5 ms", Target::Below(5.0))
                .note(quick_note.clone())
        } else {
            row.baseline("bare round trip p50", p50_base, RatioStyle::Times)
        }
    };
    vec![
        Row::new(
            "scale_start",
            format!("{rows_label} jobs: spawn to healthy"),
            scale.map(|s| ms(s.healthy)),
            "ms",
        )
        .baseline(
            "bare spawn to listening",
            results.ceiling.as_ref().map(|c| ms(c.ready)),
            RatioStyle::Times,
        )
        .target("< 3000 ms", Target::Below(3000.0))
        .note(scale.map(|s| {
            format!(
                "database {:.0} MiB, filled in {:.1} s",
                s.database_mib, s.seed_seconds
            )
        }))
        .note(quick_note.clone()),
        latency("scale_list_p50", "GET /jobs?limit=100", |s| &s.list, false),
        latency("scale_list_p99", "GET /jobs?limit=100", |s| &s.list, true),
        latency(
            "scale_list_failed_p50",
            "GET /jobs?status=failed&limit=100",
            |s| &s.list_failed,
            false,
        ),
        latency(
            "scale_list_failed_p99",
            "GET /jobs?status=failed&limit=100",
            |s| &s.list_failed,
            true,
        ),
        latency("scale_get_p50", "GET /jobs/:id", |s| &s.get, false),
        latency("scale_get_p99", "GET /jobs/:id", |s| &s.get, true),
    ]
}

/// `GET /metrics` and `GET /stats` with a million jobs: p50 against the bare round trip, p99
/// against the target.
fn scrape_rows(results: &Results) -> Vec<Row> {
    let scrape = results.scrape.as_ref();
    let rows = scrape.map_or(0, |s| s.rows);
    let round_trip = results.ceiling.as_ref().map(|c| c.round_trip.percentiles);
    let latency = |key, path: &str, pick: fn(&crate::scrape::Scrape) -> &Latency, p99: bool| {
        let percentile = if p99 { "p99" } else { "p50" };
        let row = latency_row(
            key,
            &format!("{rows} jobs: GET {path} {percentile}"),
            scrape.map(pick),
            p99,
        );
        if p99 {
            row.baseline(
                "bare round trip p99",
                round_trip.map(|p| p.p99_ms),
                RatioStyle::Times,
            )
            .target("< 5 ms", Target::Below(5.0))
        } else {
            row.baseline(
                "bare round trip p50",
                round_trip.map(|p| p.p50_ms),
                RatioStyle::Times,
            )
        }
    };
    vec![
        latency("scrape_metrics_p50", "/metrics", |s| &s.metrics, false).note(scrape.map(|s| {
            format!(
                "4 queues, 5% pending; a scrape is {} bytes; filled in {:.1} s",
                s.scrape_bytes, s.seed_seconds
            )
        })),
        latency("scrape_metrics_p99", "/metrics", |s| &s.metrics, true),
        latency("scrape_stats_p50", "/stats", |s| &s.stats, false),
        latency("scrape_stats_p99", "/stats", |s| &s.stats, true),
    ]
}

/// The table as printed: fixed columns, then the notes of the rows that have them.
pub fn table(rows: &[Row]) -> String {
    let headers = [
        "figure", "value", "unit", "baseline", "ratio", "target", "result", "errors",
    ];
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|row| {
            [
                row.figure.clone(),
                row.value
                    .map_or("-".into(), |value| number(value, row.unit)),
                row.unit.to_string(),
                row.baseline
                    .map_or("-".into(), |value| number(value, row.unit)),
                row.ratio.map_or("-".into(), |ratio| match row.ratio_style {
                    RatioStyle::Percent => format!("{:.1}%", ratio * 100.0),
                    RatioStyle::Times => format!("{ratio:.2}x"),
                }),
                row.target.unwrap_or("-").to_string(),
                row.result.text().to_string(),
                row.errors.to_string(),
            ]
        })
        .collect();
    let mut widths = headers.map(str::len);
    for line in &cells {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut print = |line: &[String]| {
        let mut text = String::new();
        for (index, (cell, width)) in line.iter().zip(widths).enumerate() {
            // Text columns left, numbers right.
            if matches!(index, 1 | 3 | 4 | 7) {
                let _ = write!(text, "{cell:>width$}  ");
            } else {
                let _ = write!(text, "{cell:<width$}  ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    print(&headers.map(String::from));
    print(&widths.map(|width| "-".repeat(width)));
    for line in &cells {
        print(line);
    }
    let notes: Vec<String> = rows
        .iter()
        .filter_map(|row| {
            row.note
                .as_ref()
                .map(|note| format!("  {}: {note}", row.key))
        })
        .collect();
    if !notes.is_empty() {
        out.push_str("\nnotes:\n");
        out.push_str(&notes.join("\n"));
        out.push('\n');
    }
    let judged = rows
        .iter()
        .filter(|row| matches!(row.result, Verdict::Pass | Verdict::Fail))
        .count();
    let passed = rows
        .iter()
        .filter(|row| row.result == Verdict::Pass)
        .count();
    let _ = writeln!(out, "\ntargets met: {passed} of {judged}");
    out
}

fn number(value: f64, unit: &str) -> String {
    match unit {
        "req/s" | "jobs/s" | "tx/s" => format!("{value:.0}"),
        "MiB" => format!("{value:.1}"),
        _ if value.abs() >= 100.0 => format!("{value:.0}"),
        _ => format!("{value:.3}"),
    }
}

/// Where and on what the run happened, for comparing reports later.
#[derive(Serialize)]
struct Meta {
    mode: Mode,
    timestamp: String,
    nproc: usize,
    git_commit: Option<String>,
    /// Uncommitted changes to tracked files: the commit alone does not describe what ran.
    git_dirty: Option<bool>,
    server_binary: PathBuf,
}

#[derive(Serialize)]
struct Document<'a> {
    #[serde(flatten)]
    meta: Meta,
    figures: &'a [Row],
    failures: &'a [Failure],
    /// Phases left out with `--only`.
    skipped: &'a [&'static str],
    /// Why the PostgreSQL phases were skipped, if they were.
    postgres_unavailable: Option<&'a str>,
    /// HTTP handler threads of the server under test, and so of the ceiling: the ceiling moves
    /// with this number, so reports are only comparable with it in view.
    handler_threads: Option<usize>,
    targets_met: usize,
    targets_judged: usize,
}

/// Writes the report to `paths.report(..)`; `git` runs in the repository to name the commit.
pub fn write_json(paths: &Paths, plan: &Plan, rows: &[Row], results: &Results) -> Result<PathBuf> {
    let repository = &paths.repository;
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(repository)
            .args(args)
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
    };
    let document = Document {
        meta: Meta {
            mode: plan.mode,
            timestamp: chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            nproc: std::thread::available_parallelism().map_or(0, usize::from),
            git_commit: git(&["rev-parse", "--short", "HEAD"]),
            git_dirty: git(&["status", "--porcelain", "--untracked-files=no"])
                .map(|status| !status.is_empty()),
            server_binary: paths.server.clone(),
        },
        figures: rows,
        failures: &results.failures,
        skipped: &results.skipped,
        postgres_unavailable: results.postgres_unavailable.as_deref(),
        handler_threads: results.ceiling.as_ref().map(|c| c.handler_threads),
        targets_met: rows
            .iter()
            .filter(|row| row.result == Verdict::Pass)
            .count(),
        targets_judged: rows
            .iter()
            .filter(|row| matches!(row.result, Verdict::Pass | Verdict::Fail))
            .count(),
    };
    let path = paths.report(results.skipped.is_empty());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).context(format!("cannot create {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(&document).context("cannot encode the report")?;
    std::fs::write(&path, text + "\n").context(format!("cannot write {}", path.display()))?;
    Ok(path)
}
