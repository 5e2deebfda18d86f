//! Named queues on SQLite: every statement on `queues` and `queue_counts`, the claim's and the
//! schedule's way around queues that may not start a job now, and the settings that
//! `GET /queues`, pause, resume and `PUT /queues/:name` read and write.
//!
//! A queue *restricts* when its settings row pauses it or sets a limit. While none does, the
//! claim and the schedule take the global index as before (`jobs_pending_by_priority`). When
//! one does, the queues that cannot start a job now (paused, running `concurrency` jobs,
//! or without a start token) are *blocked*, and the others are searched one by one on
//! `jobs_pending_by_queue`, so a blocked queue's jobs, however many, are never walked. One
//! process owns the file and every claim goes through the one writer, so the checks and the
//! claim cannot race.
//!
//! The counts these checks read come from [`Counts`]: inside a write, the writer's own
//! (which include the earlier writes of its batch, not yet in `queue_counts`); on the read
//! connection, the table.

use std::collections::{BTreeMap, HashSet};

use rusqlite::{params, Connection, OptionalExtension};

use super::group_commit::Writer;
use crate::error::{Error, Result};
use crate::job::{JobStatus, MAX_PRIORITY};
use crate::queue_settings::{burst, Bucket, QueueSummary, SettingsChange};
use crate::time::Timestamp;

/// The settings rows that restrict: a few rows, read whole.
const RESTRICTIONS: &str = "SELECT name, paused, concurrency, rate_per_second, tokens, refilled_at
     FROM queues WHERE paused <> 0 OR concurrency IS NOT NULL OR rate_per_second IS NOT NULL";
pub(super) const RUNNING_IN_QUEUE: &str =
    "SELECT coalesce(sum(n), 0) FROM queue_counts WHERE queue = ?1 AND status = 'running'";
/// The queues with pending jobs, by their counters (a row per queue and status).
const PENDING_QUEUES: &str =
    "SELECT queue FROM queue_counts WHERE status = 'pending' AND n > 0 ORDER BY queue";
/// The oldest due job of one priority in one queue: a range seek, as `DUE_AT_PRIORITY`.
pub(super) const DUE_IN_QUEUE: &str =
    "SELECT seq, run_at FROM jobs INDEXED BY jobs_pending_by_queue
     WHERE status = 'pending' AND queue = ?1 AND priority = ?2 AND run_at <= ?3
     ORDER BY run_at, seq LIMIT 1";
/// The earliest `run_at` of one queue's pending jobs: one seek per priority.
pub(super) const EARLIEST_IN_QUEUE: &str =
    "SELECT min((SELECT run_at FROM jobs INDEXED BY jobs_pending_by_queue
                  WHERE status = 'pending' AND queue = ?1 AND priority = priorities.column1
                  ORDER BY run_at LIMIT 1))
     FROM (VALUES (0), (1), (2), (3), (4), (5), (6), (7), (8), (9)) AS priorities";
pub(super) const TAKE_TOKEN: &str =
    "UPDATE queues SET tokens = ?2, refilled_at = ?3 WHERE name = ?1";
/// Whether a queue has a `concurrency` limit: a job of it that ends frees a place.
pub(super) const LIMITS_CONCURRENCY: &str =
    "SELECT 1 FROM queues WHERE name = ?1 AND concurrency IS NOT NULL";
const ALL_COUNTS: &str = "SELECT queue, status, n FROM queue_counts WHERE n <> 0";
const ALL_SETTINGS: &str = "SELECT name, paused, concurrency, rate_per_second FROM queues";
pub(super) const COUNTS_OF_QUEUE: &str =
    "SELECT status, n FROM queue_counts WHERE queue = ?1 AND n <> 0";
pub(super) const SETTINGS_OF_QUEUE: &str =
    "SELECT paused, concurrency, rate_per_second FROM queues WHERE name = ?1";
const SET_PAUSED: &str = "INSERT INTO queues (name, paused, updated_at) VALUES (?1, ?2, ?3)
     ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at";
/// Writes the limits; `?5` (a new rate) fills the bucket: `tokens` `?6` at `?3`.
const SET_LIMITS: &str = "INSERT INTO queues
        (name, concurrency, rate_per_second, updated_at, tokens, refilled_at)
     VALUES (?1, ?2, ?4, ?3, coalesce(?6, 0), ?3)
     ON CONFLICT (name) DO UPDATE SET concurrency = excluded.concurrency,
        rate_per_second = excluded.rate_per_second, updated_at = excluded.updated_at,
        tokens = CASE WHEN ?5 THEN excluded.tokens ELSE tokens END,
        refilled_at = CASE WHEN ?5 THEN excluded.refilled_at ELSE refilled_at END";

/// The jobs per queue and status, as the caller sees them.
pub(super) trait Counts {
    fn running_in(&self, queue: &str) -> Result<i64>;
    /// The queues with pending jobs, by name.
    fn pending_queues(&self) -> Result<Vec<String>>;
    /// A queue's non-zero counts.
    fn counts_of(&self, queue: &str) -> Result<Vec<(JobStatus, i64)>>;
}

/// The committed counts, from the table.
impl Counts for Connection {
    fn running_in(&self, queue: &str) -> Result<i64> {
        Ok(self
            .prepare_cached(RUNNING_IN_QUEUE)?
            .query_row([queue], |row| row.get(0))?)
    }

    fn pending_queues(&self) -> Result<Vec<String>> {
        let names = self
            .prepare_cached(PENDING_QUEUES)?
            .query_map([], |row| row.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(names)
    }

    fn counts_of(&self, queue: &str) -> Result<Vec<(JobStatus, i64)>> {
        let rows = self
            .prepare_cached(COUNTS_OF_QUEUE)?
            .query_map([queue], |row| Ok((row.get::<_, String>(0)?, row.get(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|(status, n)| Ok((status_of(&status)?, n)))
            .collect()
    }
}

/// The counts as a write sees them: its batch's earlier writes and its own included.
impl Counts for Writer<'_> {
    fn running_in(&self, queue: &str) -> Result<i64> {
        Ok(self.job_count(queue, JobStatus::Running))
    }

    fn pending_queues(&self) -> Result<Vec<String>> {
        Ok(self.queues_with_pending())
    }

    fn counts_of(&self, queue: &str) -> Result<Vec<(JobStatus, i64)>> {
        Ok(JobStatus::ALL
            .into_iter()
            .map(|status| (status, self.job_count(queue, status)))
            .filter(|(_, n)| *n != 0)
            .collect())
    }
}

/// A queue's settings row that restricts it.
pub(super) struct Restriction {
    name: String,
    paused: bool,
    concurrency: Option<u32>,
    bucket: Option<Bucket>,
}

impl Restriction {
    /// Whether running `concurrency` jobs already (by the counters).
    fn is_full(&self, counts: &dyn Counts) -> Result<bool> {
        let Some(limit) = self.concurrency else {
            return Ok(false);
        };
        Ok(counts.running_in(&self.name)? >= i64::from(limit))
    }

    /// Whether no job of this queue may start at `now`.
    fn blocks(&self, counts: &dyn Counts, now: i64) -> Result<bool> {
        Ok(self.paused
            || self.bucket.is_some_and(|bucket| !bucket.has_token(now))
            || self.is_full(counts)?)
    }
}

/// The settings rows that restrict a queue; empty in the common case.
pub(super) fn restrictions(connection: &Connection) -> Result<Vec<Restriction>> {
    let rows = connection
        .prepare_cached(RESTRICTIONS)?
        .query_map([], |row| {
            let rate: Option<f64> = row.get(3)?;
            Ok(Restriction {
                name: row.get(0)?,
                paused: row.get(1)?,
                concurrency: row.get(2)?,
                bucket: match rate {
                    Some(rate) => Some(Bucket {
                        rate,
                        tokens: row.get(4)?,
                        refilled_at: row.get(5)?,
                    }),
                    None => None,
                },
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// The job to claim when some queue restricts: the highest priority, then oldest due job of
/// a queue that may start one now. `anywhere` is the global search, used while no queue is
/// blocked.
pub(super) fn due_within_limits(
    connection: &Connection,
    counts: &dyn Counts,
    restrictions: &[Restriction],
    now: i64,
    anywhere: impl FnOnce() -> Result<Option<i64>>,
) -> Result<Option<i64>> {
    let mut blocked = HashSet::new();
    for restriction in restrictions {
        if restriction.blocks(counts, now)? {
            blocked.insert(restriction.name.as_str());
        }
    }
    if blocked.is_empty() {
        return anywhere();
    }
    let open: Vec<String> = counts
        .pending_queues()?
        .into_iter()
        .filter(|queue| !blocked.contains(queue.as_str()))
        .collect();
    let mut statement = connection.prepare_cached(DUE_IN_QUEUE)?;
    for priority in (0..=MAX_PRIORITY).rev() {
        let mut best: Option<(i64, i64)> = None;
        for queue in &open {
            let due: Option<(i64, i64)> = statement
                .query_row(params![queue, priority, now], |row| {
                    Ok((row.get(1)?, row.get(0)?))
                })
                .optional()?;
            best = best.into_iter().chain(due).min();
        }
        if let Some((_, seq)) = best {
            return Ok(Some(seq));
        }
    }
    Ok(None)
}

/// After a job of `queue` started at `now`: takes a start token if its queue has a rate.
pub(super) fn started(
    connection: &Connection,
    restrictions: &[Restriction],
    queue: &str,
    now: i64,
) -> Result<()> {
    let bucket = restrictions
        .iter()
        .find(|restriction| restriction.name == queue)
        .and_then(|restriction| restriction.bucket);
    if let Some(bucket) = bucket {
        let after = bucket.take(now);
        connection.prepare_cached(TAKE_TOKEN)?.execute(params![
            queue,
            after.tokens,
            after.refilled_at
        ])?;
    }
    Ok(())
}

/// When the next job may be claimed when some queue restricts: the earliest pending job of
/// each queue that is neither paused nor full, for a rate-limited one no earlier than its
/// next token.
pub(super) fn next_due_within_limits(
    connection: &Connection,
    counts: &dyn Counts,
    restrictions: &[Restriction],
) -> Result<Option<Timestamp>> {
    let mut earliest: Option<i64> = None;
    let mut statement = connection.prepare_cached(EARLIEST_IN_QUEUE)?;
    for queue in counts.pending_queues()? {
        let restriction = restrictions.iter().find(|r| r.name == queue);
        let token_at = match restriction {
            Some(restriction) if restriction.paused || restriction.is_full(counts)? => continue,
            Some(restriction) => restriction.bucket.map(|bucket| bucket.next_token_at()),
            None => None,
        };
        let due: Option<i64> = statement.query_row([&queue], |row| row.get(0))?;
        let due = due.map(|due| token_at.map_or(due, |token_at| due.max(token_at)));
        earliest = earliest.into_iter().chain(due).min();
    }
    Ok(earliest.map(Timestamp::from_micros))
}

/// Whether a job of `queue` that ends frees a place others may be waiting for.
pub(super) fn limits_concurrency(connection: &Connection, queue: &str) -> Result<bool> {
    Ok(connection
        .prepare_cached(LIMITS_CONCURRENCY)?
        .query_row([queue], |_| Ok(()))
        .optional()?
        .is_some())
}

fn status_of(text: &str) -> Result<JobStatus> {
    text.parse()
        .map_err(|_| Error::CorruptRow(format!("queue_counts has an unknown status {text:?}")))
}

/// Every queue with jobs or settings, by name.
pub(super) fn all(connection: &Connection) -> Result<Vec<QueueSummary>> {
    let mut queues: BTreeMap<String, QueueSummary> = BTreeMap::new();
    let mut with_settings = HashSet::new();
    let settings = connection
        .prepare_cached(ALL_SETTINGS)?
        .query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for (name, paused, concurrency, rate_per_second) in settings {
        let queue = QueueSummary {
            paused,
            concurrency,
            rate_per_second,
            ..QueueSummary::empty(&name)
        };
        with_settings.insert(name.clone());
        queues.insert(name, queue);
    }
    let counts = connection
        .prepare_cached(ALL_COUNTS)?
        .query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get(2)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for (name, status, n) in counts {
        let status = status_of(&status)?;
        queues
            .entry(name.clone())
            .or_insert_with(|| QueueSummary::empty(&name))
            .counts
            .add(status, n);
    }
    // A queue whose counters all went back to 0 (or below) and has no settings is gone.
    Ok(queues
        .into_values()
        .filter(|queue| !queue.counts.is_empty() || with_settings.contains(&queue.name))
        .collect())
}

/// One queue as the writer sees it now (the defaults if it has neither jobs nor settings).
fn one(writer: &Writer<'_>, name: &str) -> Result<QueueSummary> {
    let connection: &Connection = writer;
    let mut queue = QueueSummary::empty(name);
    let settings: Option<(bool, Option<u32>, Option<f64>)> = connection
        .prepare_cached(SETTINGS_OF_QUEUE)?
        .query_row([name], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .optional()?;
    if let Some((paused, concurrency, rate_per_second)) = settings {
        queue.paused = paused;
        queue.concurrency = concurrency;
        queue.rate_per_second = rate_per_second;
    }
    for (status, n) in writer.counts_of(name)? {
        queue.counts.add(status, n);
    }
    Ok(queue)
}

pub(super) fn set_paused(
    writer: &Writer<'_>,
    name: &str,
    paused: bool,
    now: Timestamp,
) -> Result<QueueSummary> {
    writer
        .prepare_cached(SET_PAUSED)?
        .execute(params![name, paused, now.as_micros()])?;
    one(writer, name)
}

pub(super) fn configure(
    writer: &Writer<'_>,
    name: &str,
    change: &SettingsChange,
    now: Timestamp,
) -> Result<QueueSummary> {
    let current = one(writer, name)?;
    let concurrency = change.concurrency.unwrap_or(current.concurrency);
    let rate = change.rate_per_second.unwrap_or(current.rate_per_second);
    let new_rate = change.rate_per_second.is_some() && rate != current.rate_per_second;
    writer.prepare_cached(SET_LIMITS)?.execute(params![
        name,
        concurrency,
        now.as_micros(),
        rate,
        new_rate,
        rate.map(burst)
    ])?;
    one(writer, name)
}
