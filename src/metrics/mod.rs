//! The server's Prometheus metrics: one [`Metrics`] registry, made in the composition root and
//! shared by the store, the workers and the HTTP layer, which record into it; and its
//! rendering in the text exposition format ([`Metrics::render`]). Recording is cheap: plain
//! atomics, and per-queue and per-route series are found through read-mostly maps whose
//! write lock is taken once, when a series is first seen.
//!
//! Labels come from bounded sets only: queue names (of stored jobs), statuses, attempt
//! outcomes, rejection reasons, and route templates; never a job id. Counters and histograms
//! are this node's (Prometheus adds nodes up); the gauges the caller passes to `render` come
//! from the database and cover every node.
//!
//! It owns no thread and knows neither the store nor HTTP: the gauges are read by the caller
//! ([`Gauges`]), and the finished-per-minute counts are flushed by `crate::minute_flusher`.

mod minutes;
mod process;
mod series;
mod text;

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::job::JobStatus;
use crate::queue_settings::QueueCounts;
use crate::time::Timestamp;
pub use minutes::{FinishedMinutes, MinuteCounts};
pub use series::Histogram;
use series::{Counter, COMMIT_BUCKETS, HTTP_BUCKETS, JOB_BUCKETS};
use text::Exposition;
pub use text::CONTENT_TYPE;

/// Every name starts with this.
const PREFIX: &str = "minilambda_";

/// How an attempt ended, as `job_attempts_total` labels it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failed,
    Timeout,
    Cancelled,
    /// Put back unfinished (a shutdown): the job runs again.
    Released,
    /// Its node stopped while it ran, and another recovered it: how long it ran is unknown.
    Interrupted,
}

impl Outcome {
    const ALL: [Outcome; 6] = [
        Outcome::Success,
        Outcome::Failed,
        Outcome::Timeout,
        Outcome::Cancelled,
        Outcome::Released,
        Outcome::Interrupted,
    ];

    /// Its place in `ALL`, and in a queue's attempt counters.
    fn index(self) -> usize {
        Outcome::ALL
            .iter()
            .position(|known| *known == self)
            .unwrap_or(0)
    }

    fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failed => "failed",
            Outcome::Timeout => "timeout",
            Outcome::Cancelled => "cancelled",
            Outcome::Released => "released",
            Outcome::Interrupted => "interrupted",
        }
    }
}

/// Why a submit was refused, as `submits_rejected_total` labels it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// A field, the JSON, the body's size or type.
    Validation,
    UnknownFunction,
    QueueFull,
    RateLimited,
    IdempotencyKeyReused,
    /// The payload fails its function's schema, or the schema cannot be used.
    Schema,
    /// The database or the server cannot take it now.
    Unavailable,
    /// A bug (an internal error).
    Internal,
}

impl RejectReason {
    const ALL: [RejectReason; 8] = [
        RejectReason::Validation,
        RejectReason::UnknownFunction,
        RejectReason::QueueFull,
        RejectReason::RateLimited,
        RejectReason::IdempotencyKeyReused,
        RejectReason::Schema,
        RejectReason::Unavailable,
        RejectReason::Internal,
    ];

    fn as_str(self) -> &'static str {
        match self {
            RejectReason::Validation => "validation",
            RejectReason::UnknownFunction => "unknown_function",
            RejectReason::QueueFull => "queue_full",
            RejectReason::RateLimited => "rate_limited",
            RejectReason::IdempotencyKeyReused => "idempotency_key_reused",
            RejectReason::Schema => "schema",
            RejectReason::Unavailable => "unavailable",
            RejectReason::Internal => "internal",
        }
    }
}

/// The statuses a job ends in, as `jobs_finished_total` labels them.
const ENDED: [JobStatus; 4] = [
    JobStatus::Success,
    JobStatus::Failed,
    JobStatus::Timeout,
    JobStatus::Cancelled,
];

/// One queue's series on this node.
struct QueueSeries {
    submitted: Counter,
    /// By `Outcome::ALL`'s order.
    attempts: [Counter; Outcome::ALL.len()],
    /// By `ENDED`'s order.
    finished: [Counter; 4],
    wait: Histogram,
    run: Histogram,
}

impl QueueSeries {
    fn new() -> QueueSeries {
        QueueSeries {
            submitted: Counter::default(),
            attempts: Default::default(),
            finished: Default::default(),
            wait: Histogram::new(JOB_BUCKETS),
            run: Histogram::new(JOB_BUCKETS),
        }
    }
}

/// One route's series on this node.
struct RouteSeries {
    duration: Histogram,
    /// Requests by status; a status's counter is added the first time it is answered.
    statuses: RwLock<Vec<(u16, Counter)>>,
}

/// Series found by a key, added on first use. The write lock is taken only to add one.
struct Family<K, T> {
    series: RwLock<HashMap<K, Arc<T>>>,
}

impl<K: Eq + Hash + Ord + Clone, T> Family<K, T> {
    fn new() -> Family<K, T> {
        Family {
            series: RwLock::new(HashMap::new()),
        }
    }

    fn get<Q>(&self, key: &Q, make: impl FnOnce() -> T) -> Arc<T>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ToOwned<Owned = K> + ?Sized,
    {
        if let Some(found) = read(&self.series).get(key) {
            return Arc::clone(found);
        }
        let mut series = self
            .series
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(
            series
                .entry(key.to_owned())
                .or_insert_with(|| Arc::new(make())),
        )
    }

    /// Every series, sorted by key, so a scrape's order is stable.
    fn sorted(&self) -> Vec<(K, Arc<T>)> {
        let mut all: Vec<(K, Arc<T>)> = read(&self.series)
            .iter()
            .map(|(key, series)| (key.clone(), Arc::clone(series)))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

/// A read guard that survives poisoning: the maps hold counters, consistent after any panic.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A queue's gauges, read from the database by the caller of `render`.
pub struct QueueGauges {
    pub name: String,
    pub paused: bool,
    pub concurrency: Option<u32>,
    pub rate_per_second: Option<f64>,
    pub counts: QueueCounts,
    pub oldest_pending_age_seconds: f64,
}

/// The gauges a scrape reports from outside the registry.
pub struct Gauges {
    pub queues: Vec<QueueGauges>,
    pub workers: usize,
    pub workers_busy: usize,
    /// `None` when the database cannot say.
    pub db_size_bytes: Option<u64>,
}

pub struct Metrics {
    version: &'static str,
    queues: Family<String, QueueSeries>,
    /// By `RejectReason::ALL`'s order.
    rejected: [Counter; 8],
    recovered: Counter,
    pruned: Counter,
    routes: Family<&'static str, RouteSeries>,
    db_commit: Arc<Histogram>,
    finished_minutes: FinishedMinutes,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new(env!("CARGO_PKG_VERSION"))
    }
}

impl Metrics {
    pub fn new(version: &'static str) -> Metrics {
        Metrics {
            version,
            queues: Family::new(),
            rejected: Default::default(),
            recovered: Counter::default(),
            pruned: Counter::default(),
            routes: Family::new(),
            db_commit: Arc::new(Histogram::new(COMMIT_BUCKETS)),
            finished_minutes: FinishedMinutes::default(),
        }
    }

    fn queue(&self, name: &str) -> Arc<QueueSeries> {
        self.queues.get(name, QueueSeries::new)
    }

    /// Jobs stored by a submit.
    pub fn jobs_submitted(&self, queue: &str, n: u64) {
        self.queue(queue).submitted.add(n);
    }

    pub fn submit_rejected(&self, reason: RejectReason) {
        let index = RejectReason::ALL
            .iter()
            .position(|known| *known == reason)
            .unwrap_or(0);
        self.rejected[index].inc();
    }

    /// A claimed job starts: `wait` is from when it was due.
    pub fn job_started(&self, queue: &str, wait: Duration) {
        self.queue(queue).wait.observe(wait);
    }

    /// An attempt's outcome was recorded after it ran for `run`.
    pub fn attempt_ended(&self, queue: &str, outcome: Outcome, run: Duration) {
        let series = self.queue(queue);
        series.attempts[outcome.index()].inc();
        series.run.observe(run);
    }

    /// An attempt recovered after its node stopped: counted, with no run time.
    pub fn attempt_interrupted(&self, queue: &str) {
        self.queue(queue).attempts[Outcome::Interrupted.index()].inc();
    }

    /// A job ended for good in `status` (terminal) at `at`.
    pub fn job_finished(&self, queue: &str, status: JobStatus, at: Timestamp) {
        if let Some(index) = ENDED.iter().position(|ended| *ended == status) {
            self.queue(queue).finished[index].inc();
            self.finished_minutes.record(unix_minute(at), status);
        }
    }

    pub fn job_recovered(&self) {
        self.recovered.inc();
    }

    pub fn jobs_pruned(&self, n: u64) {
        self.pruned.add(n);
    }

    /// A request to `route` (a template of `ROUTES`, or "other") was answered.
    pub fn http_request(&self, route: &'static str, status: u16, elapsed: Duration) {
        let series = self.routes.get(&route, || RouteSeries {
            duration: Histogram::new(HTTP_BUCKETS),
            statuses: RwLock::new(Vec::new()),
        });
        series.duration.observe(elapsed);
        if let Some((_, counter)) = read(&series.statuses).iter().find(|(s, _)| *s == status) {
            counter.inc();
            return;
        }
        let mut statuses = series
            .statuses
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match statuses.iter().find(|(s, _)| *s == status) {
            Some((_, counter)) => counter.inc(),
            None => {
                let counter = Counter::default();
                counter.inc();
                statuses.push((status, counter));
                statuses.sort_by_key(|(s, _)| *s);
            }
        }
    }

    /// Where the database's commits are timed (`db_commit_seconds`).
    pub fn db_commit_seconds(&self) -> Arc<Histogram> {
        Arc::clone(&self.db_commit)
    }

    pub fn finished_minutes(&self) -> &FinishedMinutes {
        &self.finished_minutes
    }

    /// The whole scrape: this node's counters and histograms, `gauges`, and the process's.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = Exposition::default();
        let queues = self.queues.sorted();
        let name = |short: &str| format!("{PREFIX}{short}");

        let submitted = name("jobs_submitted_total");
        out.family(
            &submitted,
            "counter",
            "Jobs stored by submits on this node.",
        );
        for (queue, series) in &queues {
            out.int(&submitted, &[("queue", queue)], series.submitted.get());
        }
        let rejected = name("submits_rejected_total");
        out.family(
            &rejected,
            "counter",
            "Submits refused on this node, by reason.",
        );
        for (reason, counter) in RejectReason::ALL.iter().zip(&self.rejected) {
            out.int(&rejected, &[("reason", reason.as_str())], counter.get());
        }
        let attempts = name("job_attempts_total");
        out.family(
            &attempts,
            "counter",
            "Attempts whose outcome this node recorded.",
        );
        for (queue, series) in &queues {
            for (outcome, counter) in Outcome::ALL.iter().zip(&series.attempts) {
                let labels = [("queue", queue.as_str()), ("outcome", outcome.as_str())];
                out.int(&attempts, &labels, counter.get());
            }
        }
        let finished = name("jobs_finished_total");
        out.family(
            &finished,
            "counter",
            "Jobs that ended for good on this node.",
        );
        for (queue, series) in &queues {
            for (status, counter) in ENDED.iter().zip(&series.finished) {
                let labels = [("queue", queue.as_str()), ("status", status.as_str())];
                out.int(&finished, &labels, counter.get());
            }
        }
        let recovered = name("jobs_recovered_total");
        out.family(
            &recovered,
            "counter",
            "Lost attempts (of stopped nodes) this node recovered.",
        );
        out.int(&recovered, &[], self.recovered.get());
        let pruned = name("jobs_pruned_total");
        out.family(
            &pruned,
            "counter",
            "Ended jobs deleted by retention on this node.",
        );
        out.int(&pruned, &[], self.pruned.get());

        let routes = self.routes.sorted();
        let requests = name("http_requests_total");
        out.family(
            &requests,
            "counter",
            "HTTP requests answered, by route template and status.",
        );
        for (route, series) in &routes {
            for (status, counter) in read(&series.statuses).iter() {
                let status = status.to_string();
                out.int(
                    &requests,
                    &[("route", route), ("status", &status)],
                    counter.get(),
                );
            }
        }

        let wait = name("job_wait_seconds");
        out.family(
            &wait,
            "histogram",
            "Time from when a job was due until it started.",
        );
        for (queue, series) in &queues {
            out.histogram(&wait, &[("queue", queue)], &series.wait.values());
        }
        let run = name("job_run_seconds");
        out.family(
            &run,
            "histogram",
            "Time an attempt ran, until its outcome was recorded.",
        );
        for (queue, series) in &queues {
            out.histogram(&run, &[("queue", queue)], &series.run.values());
        }
        let duration = name("http_request_duration_seconds");
        out.family(
            &duration,
            "histogram",
            "Time to answer an HTTP request, by route template.",
        );
        for (route, series) in &routes {
            out.histogram(&duration, &[("route", route)], &series.duration.values());
        }
        let commit = name("db_commit_seconds");
        out.family(&commit, "histogram", "Time a database commit took.");
        out.histogram(&commit, &[], &self.db_commit.values());

        render_gauges(&mut out, gauges, self.version);
        out.into_text()
    }
}

fn render_gauges(out: &mut Exposition, gauges: &Gauges, version: &str) {
    let name = |short: &str| format!("{PREFIX}{short}");
    let jobs = name("jobs");
    out.family(
        &jobs,
        "gauge",
        "Jobs in the database, by queue and status (all nodes).",
    );
    for queue in &gauges.queues {
        for status in JobStatus::ALL {
            let n = queue.counts.get(status);
            out.int(
                &jobs,
                &[("queue", &queue.name), ("status", status.as_str())],
                n,
            );
        }
    }
    let age = name("queue_oldest_pending_age_seconds");
    out.family(
        &age,
        "gauge",
        "How long the queue's oldest due pending job has been due; 0 with none.",
    );
    for queue in &gauges.queues {
        out.real(
            &age,
            &[("queue", &queue.name)],
            queue.oldest_pending_age_seconds,
        );
    }
    let paused = name("queue_paused");
    out.family(&paused, "gauge", "1 while the queue is paused.");
    for queue in &gauges.queues {
        out.int(&paused, &[("queue", &queue.name)], u64::from(queue.paused));
    }
    let workers = name("workers");
    out.family(&workers, "gauge", "Worker threads on this node.");
    out.int(&workers, &[], gauges.workers as u64);
    let busy = name("workers_busy");
    out.family(&busy, "gauge", "Workers running an attempt on this node.");
    out.int(&busy, &[], gauges.workers_busy as u64);
    if let Some(size) = gauges.db_size_bytes {
        let db = name("db_size_bytes");
        out.family(&db, "gauge", "Size of the database on disk.");
        out.int(&db, &[], size);
    }
    let build = name("build_info");
    out.family(
        &build,
        "gauge",
        "Always 1; the label says the server's version.",
    );
    out.int(&build, &[("version", version)], 1);

    // The process gauges keep the names every Prometheus client library gives them (no
    // prefix), so existing dashboards and alerts for `process_*` work unchanged.
    let process = process::read();
    let mut optional = |full: &str, help: &str, value: Option<f64>| {
        if let Some(value) = value {
            out.family(full, "gauge", help);
            out.real(full, &[], value);
        }
    };
    optional(
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        process.resident_memory_bytes.map(|n| n as f64),
    );
    optional(
        "process_open_fds",
        "Number of open file descriptors.",
        process.open_fds.map(|n| n as f64),
    );
    optional(
        "process_threads",
        "Number of OS threads in the process.",
        process.threads.map(|n| n as f64),
    );
    optional(
        "process_start_time_seconds",
        "Start time of the process since the Unix epoch in seconds.",
        process.start_time_seconds,
    );
}

/// The Unix minute (seconds / 60) a time falls in.
pub fn unix_minute(at: Timestamp) -> i64 {
    at.as_micros().div_euclid(60_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_gauges() -> Gauges {
        Gauges {
            queues: Vec::new(),
            workers: 2,
            workers_busy: 0,
            db_size_bytes: None,
        }
    }

    #[test]
    fn recorded_values_appear_in_the_scrape_with_their_labels() {
        let metrics = Metrics::new("1.2.3");
        metrics.jobs_submitted("emails", 3);
        metrics.submit_rejected(RejectReason::QueueFull);
        metrics.attempt_ended("emails", Outcome::Failed, Duration::from_millis(20));
        metrics.job_finished("emails", JobStatus::Failed, Timestamp::from_micros(0));
        metrics.http_request("/jobs/{id}", 404, Duration::from_millis(1));
        metrics.http_request("/jobs/{id}", 200, Duration::from_millis(1));
        metrics.http_request("/jobs/{id}", 200, Duration::from_millis(1));
        let text = metrics.render(&no_gauges());
        for line in [
            "minilambda_jobs_submitted_total{queue=\"emails\"} 3",
            "minilambda_submits_rejected_total{reason=\"queue_full\"} 1",
            "minilambda_submits_rejected_total{reason=\"schema\"} 0",
            "minilambda_job_attempts_total{queue=\"emails\",outcome=\"failed\"} 1",
            "minilambda_jobs_finished_total{queue=\"emails\",status=\"failed\"} 1",
            "minilambda_http_requests_total{route=\"/jobs/{id}\",status=\"200\"} 2",
            "minilambda_http_requests_total{route=\"/jobs/{id}\",status=\"404\"} 1",
            "minilambda_http_request_duration_seconds_count{route=\"/jobs/{id}\"} 3",
            "minilambda_workers 2",
            "minilambda_build_info{version=\"1.2.3\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }

    #[test]
    fn minutes_are_unix_minutes() {
        assert_eq!(unix_minute(Timestamp::from_micros(119_999_999)), 1);
        assert_eq!(unix_minute(Timestamp::from_micros(-1)), -1);
    }
}
