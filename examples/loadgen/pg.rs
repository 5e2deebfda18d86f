//! The loadgen's own PostgreSQL connections: whether a server is reachable, each phase's fresh
//! schema (created, handed to the servers through their URL, dropped at the end), counting
//! the servers' jobs from the outside, and the baseline the PostgreSQL figures are judged
//! against: many clients each inserting one job-shaped row per autocommitted transaction, the
//! least a durable submit can cost on that database (what `pgbench -c 64 -n` with a one-line
//! INSERT script measures, without needing pgbench installed).

use std::str::FromStr;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use postgres::{Client, Config, NoTls};

use crate::error::{Context, Error, Result};
use crate::interrupt;
use crate::phases::Rate;

/// Where `make bench` looks for PostgreSQL; `BENCH_POSTGRES_URL` overrides it.
pub const DEFAULT_URL: &str = "postgres://root@127.0.0.1/test";
/// A database that does not answer within this is taken as absent, not waited for.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the baseline waits for enough free connection slots.
const SLOT_DEADLINE: Duration = Duration::from_secs(20);

/// The scratch table of the baseline: the columns and indexes of the PostgreSQL backend's
/// `jobs` table, so the baseline stores the same kind of row, with the same index upkeep, as a
/// submit does.
const SCRATCH_TABLE: &str = "
    CREATE TABLE insert_baseline (
        seq             BIGSERIAL PRIMARY KEY,
        id              TEXT NOT NULL UNIQUE,
        payload         TEXT NOT NULL,
        status          TEXT NOT NULL,
        priority        INTEGER NOT NULL,
        run_at          BIGINT NOT NULL,
        created_at      BIGINT NOT NULL,
        retry_count     INTEGER NOT NULL DEFAULT 0,
        max_retries     INTEGER NOT NULL,
        timeout_seconds INTEGER NOT NULL,
        started_at      BIGINT,
        finished_at     BIGINT,
        result          TEXT,
        error_message   TEXT,
        function        TEXT,
        attempt         INTEGER,
        node            TEXT,
        cancel_requested BOOLEAN NOT NULL DEFAULT FALSE
    );
    CREATE INDEX insert_baseline_by_status ON insert_baseline (status, seq);
    CREATE INDEX insert_baseline_pending ON insert_baseline (priority DESC, run_at, seq)
        WHERE status = 'pending';
    CREATE INDEX insert_baseline_running ON insert_baseline (node) WHERE status = 'running';";

const SCRATCH_INSERT: &str = "INSERT INTO insert_baseline
    (id, payload, status, priority, run_at, created_at, max_retries, timeout_seconds)
    VALUES ($1, $2, 'pending', 0, $3, $3, 3, 30)";

/// The PostgreSQL server the phases use, by the URL the benchmark was given.
pub struct Postgres {
    pub url: String,
}

impl Postgres {
    /// `BENCH_POSTGRES_URL` or the default. `Err` says why there is no usable server, for the
    /// message that skips the PostgreSQL phases.
    pub fn from_environment() -> std::result::Result<Postgres, String> {
        let url = std::env::var("BENCH_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_URL.to_string());
        let postgres = Postgres { url };
        match postgres.connect(None) {
            Ok(mut client) => match client.simple_query("SELECT 1") {
                Ok(_) => Ok(postgres),
                Err(err) => Err(format!("{} does not answer queries: {err}", postgres.url)),
            },
            Err(err) => Err(format!("no PostgreSQL reachable: {err}")),
        }
    }

    /// A connection, with `schema` first on its search path if given.
    fn connect(&self, schema: Option<&str>) -> Result<Client> {
        let mut config = Config::from_str(&self.url)
            .context(format!("BENCH_POSTGRES_URL {:?} does not parse", self.url))?;
        config.connect_timeout(CONNECT_TIMEOUT);
        if let Some(schema) = schema {
            config.options(&format!("-csearch_path={schema}"));
        }
        config
            .connect(NoTls)
            .map_err(|err| Error::new(format!("cannot connect to {}: {}", self.url, cause(&err))))
    }

    /// Waits until PostgreSQL has `wanted` connection slots free: the backends of the last
    /// baseline's clients end a moment after they disconnect, and other clients (tests on a
    /// shared machine) may hold slots too. Errors, saying how many are taken, if none free up.
    fn wait_for_slots(&self, wanted: usize) -> Result<()> {
        let mut client = self.connect(None)?;
        let deadline = Instant::now() + SLOT_DEADLINE;
        loop {
            interrupt::check()?;
            let row = client
                .query_one(
                    "SELECT current_setting('max_connections')::bigint
                          - current_setting('superuser_reserved_connections')::bigint,
                            count(*)
                       FROM pg_stat_activity WHERE backend_type = 'client backend'",
                    &[],
                )
                .map_err(|err| Error::new(format!("cannot count connections: {}", cause(&err))))?;
            let (limit, taken): (i64, i64) = row
                .try_get(0)
                .and_then(|limit| Ok((limit, row.try_get(1)?)))
                .map_err(|err| Error::new(format!("cannot read the connection count: {err}")))?;
            // This connection is one of the taken, and is closed before the clients connect.
            let free = limit - taken + 1;
            if free >= i64::try_from(wanted).unwrap_or(i64::MAX) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::new(format!(
                    "PostgreSQL has {free} free connection slots of {limit}, the baseline needs {wanted}; \
                     {taken} are taken (other clients of {})",
                    self.url
                )));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The URL a server is given to work in `schema` (which it creates if missing).
    pub fn url_for(&self, schema: &str) -> String {
        let separator = if self.url.contains('?') { '&' } else { '?' };
        format!("{}{separator}options=-csearch_path%3D{schema}", self.url)
    }

    /// A fresh, empty schema; one left by an earlier run that was killed is dropped first.
    pub fn fresh_schema(&self, name: &str) -> Result<Schema<'_>> {
        let schema = format!("bench_{name}_{}", std::process::id());
        let mut client = self.connect(None)?;
        client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
            ))
            .context(format!("cannot create the schema {schema}"))?;
        Ok(Schema {
            postgres: self,
            name: schema,
            dropped: false,
        })
    }
}

/// The error with its causes: the driver's "error connecting to server" alone does not say
/// whether the port was closed or the login refused.
fn cause(err: &postgres::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        text.push_str(&format!(": {inner}"));
        source = inner.source();
    }
    text
}

/// One phase's schema; dropped by `drop_now`, or on `Drop` if the phase ended early.
pub struct Schema<'a> {
    postgres: &'a Postgres,
    pub name: String,
    dropped: bool,
}

impl Schema<'_> {
    pub fn url(&self) -> String {
        self.postgres.url_for(&self.name)
    }

    /// A connection that reads the servers' tables in this schema.
    pub fn reader(&self) -> Result<Reader> {
        Ok(Reader {
            client: self.postgres.connect(Some(&self.name))?,
        })
    }

    /// Drops the schema, reporting a failure (the `Drop` fallback can only print it).
    pub fn drop_now(mut self) -> Result<()> {
        self.dropped = true;
        self.postgres
            .connect(None)?
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name))
            .context(format!("cannot drop the schema {}", self.name))
    }

    /// `clients` connections inserting job-shaped rows into a scratch table of this schema,
    /// each row its own transaction, for `warmup` and then `window`; the rate counts the
    /// commits inside the window. The connections are closed when it returns, so they do not
    /// hold PostgreSQL's connection slots (or its memory) while a server is measured.
    pub fn insert_baseline(
        &self,
        clients: usize,
        warmup: Duration,
        window: Duration,
    ) -> Result<Rate> {
        interrupt::check()?;
        self.postgres
            .connect(Some(&self.name))?
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS insert_baseline; {SCRATCH_TABLE}"
            ))
            .context("cannot create the baseline's scratch table")?;
        self.postgres.wait_for_slots(clients)?;
        // Connected before the start line, so the window measures inserts, not connecting.
        let connected: Vec<Result<Client>> = (0..clients)
            .map(|_| self.postgres.connect(Some(&self.name)))
            .collect();
        let start_line = Barrier::new(clients);
        let outcomes: Vec<Result<Inserts>> = thread::scope(|scope| {
            let handles: Vec<_> = connected
                .into_iter()
                .map(|client| {
                    let start_line = &start_line;
                    scope.spawn(move || {
                        start_line.wait();
                        insert_until(client?, warmup, window)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|handle| {
                    handle
                        .join()
                        .unwrap_or_else(|_| Err(Error::new("a baseline thread panicked")))
                })
                .collect()
        });
        let mut total = Inserts::default();
        for outcome in outcomes {
            let outcome = outcome?;
            total.counted += outcome.counted;
            total.errors += outcome.errors;
            total.slowest = total.slowest.max(outcome.slowest);
            total.starved += usize::from(outcome.counted == 0);
            if total.first_error.is_none() {
                total.first_error = outcome.first_error;
            }
        }
        interrupt::check()?;
        Ok(Rate {
            per_second: total.counted as f64 / window.as_secs_f64().max(1e-9),
            errors: total.errors,
            first_error: total.first_error,
            slowest_ms: total.slowest.as_secs_f64() * 1e3,
            starved: total.starved,
            connections: clients,
        })
    }
}

impl Drop for Schema<'_> {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let dropped = self.postgres.connect(None).and_then(|mut client| {
            client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name))
                .context("DROP SCHEMA failed")
        });
        if let Err(err) = dropped {
            eprintln!("warning: cannot drop the schema {}: {err}", self.name);
        }
    }
}

#[derive(Default)]
struct Inserts {
    counted: u64,
    errors: u64,
    first_error: Option<String>,
    slowest: Duration,
    starved: usize,
}

/// One client's loop, timed like the HTTP load (`load::drive`): a commit counts if it
/// completes inside the window.
fn insert_until(mut client: Client, warmup: Duration, window: Duration) -> Result<Inserts> {
    let insert = client
        .prepare(SCRATCH_INSERT)
        .context("cannot prepare the baseline INSERT")?;
    let payload = r#"{"duration_ms":0}"#;
    let started = Instant::now();
    let (window_start, stop) = (started + warmup, started + warmup + window);
    let mut inserts = Inserts::default();
    let mut now = started;
    while now < stop && !interrupt::requested() {
        let before = now;
        let id = uuid::Uuid::now_v7();
        let micros = chrono::Utc::now().timestamp_micros();
        let result = client.execute(&insert, &[&id.to_string(), &payload, &micros]);
        now = Instant::now();
        inserts.slowest = inserts.slowest.max(now - before);
        match result {
            Ok(_) if now >= window_start && now < stop => inserts.counted += 1,
            Ok(_) => {}
            Err(err) => {
                inserts.errors += 1;
                inserts.first_error.get_or_insert(err.to_string());
                if client.is_closed() {
                    break;
                }
            }
        }
    }
    Ok(inserts)
}

/// Reads the servers' tables from the outside, like `db::ReadOnly` does for SQLite.
pub struct Reader {
    client: Client,
}

impl Reader {
    pub fn count(&mut self, status: &str) -> Result<u64> {
        let row = self
            .client
            .query_one("SELECT count(*) FROM jobs WHERE status = $1", &[&status])
            .context(format!("cannot count {status} jobs"))?;
        let count: i64 = row
            .try_get(0)
            .context(format!("cannot read the count of {status} jobs"))?;
        u64::try_from(count).context("a negative count")
    }
}
