//! Filling a database with a large history of finished jobs, fast, for the scale figures.
//! Going through HTTP would take minutes for a million jobs, so rows go straight into SQLite in
//! one transaction, into a schema the real server created (see `phases::scale`).
//!
//! This is the one module that knows the `jobs` columns (src/store/schema.rs owns them). It
//! reads the table's columns at run time and fills those it knows, so an added nullable or
//! defaulted column, or an id stored as a 16-byte blob instead of text, needs no change here.
//! A new NOT NULL column without a default is reported by name: teach `value_of` about it.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::types::Value;
use rusqlite::Connection;

use crate::error::{Context, Error, Result};
use crate::interrupt;
use crate::rng::Rng;

const PAYLOAD: &str = r#"{"duration_ms":120,"result":{"rows":42}}"#;
const RESULT: &str = r#"{"rows":42}"#;
const FAILED: &str = "job failed: the payload asked for a failure (should_fail)";
const TIMED_OUT: &str = "timed out after 30 s (timeout_seconds)";
/// Jobs are spread one second apart, ending now: a million jobs is about twelve days of history.
const SPACING_MICROS: i64 = 1_000_000;

/// What a fill is made of: the queues the jobs are spread over (evenly, at random) and the
/// share of them left pending (due since they were created) or cancelled; the rest ended.
pub struct Mix {
    pub queues: &'static [&'static str],
    pub pending_percent: u64,
    pub cancelled_percent: u64,
}

/// Ended jobs only, all in `default`: a server started on them has nothing to do.
pub const ENDED: Mix = Mix {
    queues: &["default"],
    pending_percent: 0,
    cancelled_percent: 0,
};

/// One synthetic job, before it meets the schema.
struct Job {
    id: uuid::Uuid,
    queue: &'static str,
    status: &'static str,
    priority: i64,
    created_at: i64,
    /// `None` for a job that never started (pending, or cancelled while pending).
    started_at: Option<i64>,
    finished_at: Option<i64>,
    retry_count: i64,
}

impl Job {
    /// The mix's pending and cancelled shares; of the rest 80% success, 10% failed, 10%
    /// timeout. Nothing running, so the only work a server started on the database can find
    /// is the pending jobs (none in `ENDED`: the figures are the cost of reading alone).
    fn random(rng: &mut Rng, created_at: i64, mix: &Mix) -> Job {
        // Only a mix with those shares and queues draws for them: `ENDED` fills exactly as
        // this did before mixes, so the scale and prune figures stay comparable.
        let share = if mix.pending_percent + mix.cancelled_percent > 0 {
            rng.below(100)
        } else {
            100
        };
        let status = if share < mix.pending_percent {
            "pending"
        } else if share < mix.pending_percent + mix.cancelled_percent {
            "cancelled"
        } else {
            match rng.below(10) {
                0..=7 => "success",
                8 => "failed",
                _ => "timeout",
            }
        };
        let ran = !matches!(status, "pending" | "cancelled");
        let started_at =
            ran.then(|| created_at + 200 + i64::try_from(rng.below(5_000)).unwrap_or(0));
        let queue = match mix.queues {
            [] => "default",
            [only] => only,
            queues => queues[usize::try_from(rng.below(queues.len() as u64)).unwrap_or(0)],
        };
        Job {
            id: uuid::Builder::from_random_bytes(rng.bytes16()).into_uuid(),
            queue,
            status,
            priority: i64::try_from(rng.below(3)).unwrap_or(0),
            created_at,
            started_at,
            finished_at: match status {
                "pending" => None,
                "cancelled" => Some(created_at + 1_000),
                _ => started_at.map(|started| started + 120_000),
            },
            retry_count: if status == "failed" { 3 } else { 0 },
        }
    }
}

/// A column of `jobs` as `PRAGMA table_info` describes it.
struct Column {
    name: String,
    declared_type: String,
}

impl Column {
    /// The value for this column, or `None` when the column is unknown here.
    fn value_of(&self, job: &Job) -> Option<Value> {
        let text = |text: &str| Some(Value::Text(text.to_string()));
        match self.name.as_str() {
            "id" if self.declared_type.eq_ignore_ascii_case("BLOB") => {
                Some(Value::Blob(job.id.as_bytes().to_vec()))
            }
            "id" => Some(Value::Text(job.id.hyphenated().to_string())),
            "payload" => text(PAYLOAD),
            "status" => text(job.status),
            "queue" => text(job.queue),
            "priority" => Some(Value::Integer(job.priority)),
            "run_at" | "created_at" => Some(Value::Integer(job.created_at)),
            "started_at" => Some(job.started_at.map_or(Value::Null, Value::Integer)),
            "finished_at" => Some(job.finished_at.map_or(Value::Null, Value::Integer)),
            "retry_count" => Some(Value::Integer(job.retry_count)),
            "max_retries" => Some(Value::Integer(3)),
            "timeout_seconds" => Some(Value::Integer(30)),
            "result" if job.status == "success" => text(RESULT),
            "error_message" if job.status == "failed" => text(FAILED),
            "error_message" if job.status == "timeout" => text(TIMED_OUT),
            "result" | "error_message" => Some(Value::Null),
            _ => None,
        }
    }
}

pub struct Seeded {
    pub rows: u64,
    pub elapsed: Duration,
}

/// Appends `rows` finished jobs to the `jobs` table of the (stopped) server's database.
pub fn fill(path: &Path, rows: u64, rng: &mut Rng) -> Result<Seeded> {
    fill_with(path, rows, rng, &ENDED)
}

/// Appends `rows` jobs made as `mix` says to the `jobs` table of the (stopped) server's
/// database.
pub fn fill_with(path: &Path, rows: u64, rng: &mut Rng, mix: &Mix) -> Result<Seeded> {
    let started = Instant::now();
    let mut connection =
        Connection::open(path).context(format!("cannot open {}", path.display()))?;
    // A rollback journal instead of WAL for the load: with WAL the whole million rows would be
    // written twice (log, then checkpoint). No sync: if this crashes, the run is void anyway.
    // The database goes back to WAL below, the mode the server expects and would set itself.
    set_journal_mode(&connection, "delete")?;
    connection
        .execute_batch("PRAGMA synchronous = OFF; PRAGMA cache_size = -262144;")
        .context("cannot configure the bulk load")?;
    let (columns, sql) = insert_statement(&connection)?;
    let now = chrono::Utc::now().timestamp_micros();
    let first_created =
        now - i64::try_from(rows).unwrap_or(i64::MAX / SPACING_MICROS) * SPACING_MICROS;
    let transaction = connection
        .transaction()
        .context("cannot begin the bulk load")?;
    {
        let mut insert = transaction
            .prepare(&sql)
            .context(format!("cannot prepare {sql}"))?;
        let mut values: Vec<Value> = Vec::with_capacity(columns.len());
        for index in 0..rows {
            if index % 10_000 == 0 {
                interrupt::check()?;
            }
            let created_at = first_created + i64::try_from(index).unwrap_or(0) * SPACING_MICROS;
            let job = Job::random(rng, created_at, mix);
            values.clear();
            values.extend(columns.iter().filter_map(|column| column.value_of(&job)));
            insert
                .execute(rusqlite::params_from_iter(values.iter()))
                .context(format!("cannot insert row {index}"))?;
        }
    }
    recount_queues(&transaction)?;
    transaction
        .commit()
        .context("cannot commit the bulk load")?;
    set_journal_mode(&connection, "wal")?;
    connection
        .close()
        .map_err(|(_, err)| Error::new(format!("cannot close {}: {err}", path.display())))?;
    Ok(Seeded {
        rows,
        elapsed: started.elapsed(),
    })
}

/// Counts the jobs per queue and status into `queue_counts`, as the server's writer keeps
/// it (it counts its own writes, not rows inserted behind its back); a schema without the
/// table has nothing to count.
fn recount_queues(connection: &Connection) -> Result<()> {
    let has_counts: bool = connection
        .query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'queue_counts'",
            [],
            |row| row.get(0),
        )
        .context("cannot look for queue_counts")?;
    if has_counts {
        connection
            .execute_batch(
                "DELETE FROM queue_counts;
                 INSERT INTO queue_counts (queue, status, n)
                    SELECT queue, status, count(*) FROM jobs GROUP BY queue, status;",
            )
            .context("cannot count the jobs per queue")?;
    }
    Ok(())
}

/// Reads the table's columns and builds the INSERT for those this module can fill. Refuses a
/// schema with a required column it cannot fill, rather than inserting something wrong.
fn insert_statement(connection: &Connection) -> Result<(Vec<Column>, String)> {
    let mut statement = connection
        .prepare("SELECT name, type, \"notnull\", dflt_value IS NOT NULL, pk FROM pragma_table_info('jobs')")
        .context("cannot read the columns of jobs")?;
    let described = statement
        .query_map([], |row| {
            Ok((
                Column {
                    name: row.get(0)?,
                    declared_type: row.get(1)?,
                },
                row.get::<_, bool>(2)?,
                row.get::<_, bool>(3)?,
                row.get::<_, i64>(4)?,
            ))
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .context("cannot read the columns of jobs")?;
    if described.is_empty() {
        return Err(Error::new(
            "the database has no jobs table; did the server create its schema?",
        ));
    }
    let probe = Job::random(&mut Rng::new(1), 0, &ENDED);
    let mut columns = Vec::new();
    for (column, not_null, has_default, primary_key) in described {
        // An INTEGER PRIMARY KEY is the rowid: SQLite numbers the rows in insertion order,
        // which is submission order, as the server's own inserts do.
        let is_rowid = primary_key == 1 && column.declared_type.eq_ignore_ascii_case("INTEGER");
        if is_rowid {
            continue;
        }
        if column.value_of(&probe).is_some() {
            columns.push(column);
        } else if not_null && !has_default {
            return Err(Error::new(format!(
                "jobs.{} ({}) is NOT NULL without a default and the loadgen does not know it; \
                 add it to value_of in examples/loadgen/seed.rs",
                column.name, column.declared_type
            )));
        }
    }
    let names: Vec<&str> = columns.iter().map(|column| column.name.as_str()).collect();
    let placeholders: Vec<String> = (1..=names.len()).map(|n| format!("?{n}")).collect();
    let sql = format!(
        "INSERT INTO jobs ({}) VALUES ({})",
        names.join(", "),
        placeholders.join(", ")
    );
    Ok((columns, sql))
}

fn set_journal_mode(connection: &Connection, mode: &str) -> Result<()> {
    let now: String = connection
        .query_row(&format!("PRAGMA journal_mode = {mode}"), [], |row| {
            row.get(0)
        })
        .context(format!("cannot set journal_mode to {mode}"))?;
    if now.eq_ignore_ascii_case(mode) {
        Ok(())
    } else {
        Err(Error::new(format!(
            "journal_mode stayed {now} when set to {mode}"
        )))
    }
}
