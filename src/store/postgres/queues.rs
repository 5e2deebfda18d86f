//! Named queues on PostgreSQL: the statements on `queues` and `queue_counts` behind
//! `GET /queues`, pause, resume and `PUT /queues/:name`, and the folding of counter rows left
//! by ended sessions. The counters are sharded (a row per queue, status and writing backend,
//! plus shard 0 for the folded ones), so every count is a sum. Holding claims to the settings
//! is the `claim_due_job` and `next_claimable_at` functions' (migration 3).

use std::collections::{BTreeMap, BTreeSet};

use postgres::GenericClient;

use super::error::Failure;
use super::pool::Session;
use crate::error::Error;
use crate::job::JobStatus;
use crate::queue_settings::{burst, QueueSummary, SettingsChange};
use crate::time::Timestamp;

const ALL_COUNTS: &str = "SELECT queue, status, sum(n)::bigint FROM queue_counts
     GROUP BY queue, status HAVING sum(n) <> 0";
/// Folds the counter rows of ended backends into shard 0 (migration 3's function); returns
/// how many rows it folded, 0 if another node was at it.
const COMPACT_COUNTS: &str = "SELECT compact_queue_counts()";
const ALL_SETTINGS: &str = "SELECT name, paused, concurrency, rate_per_second FROM queues";
const COUNTS_OF_QUEUE: &str = "SELECT status, sum(n)::bigint FROM queue_counts
     WHERE queue = $1 GROUP BY status HAVING sum(n) <> 0";
const SETTINGS_OF_QUEUE: &str =
    "SELECT paused, concurrency, rate_per_second FROM queues WHERE name = $1";
/// A settings row with the defaults (unpaused, no limits), unless the queue has one: so that
/// there is always a row to lock, even for two first changes of a queue at once.
const ADD_DEFAULT_SETTINGS: &str = "INSERT INTO queues (name, updated_at) VALUES ($1, $2)
     ON CONFLICT (name) DO NOTHING";
const LOCK_SETTINGS: &str =
    "SELECT paused, concurrency, rate_per_second FROM queues WHERE name = $1 FOR UPDATE";
const SET_PAUSED: &str = "INSERT INTO queues (name, paused, updated_at) VALUES ($1, $2, $3)
     ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at";
/// Writes the limits of the locked row; `$5` (a new rate) fills the bucket with `$6` tokens,
/// now by the database's clock (the bucket's).
const SET_LIMITS: &str = "UPDATE queues SET concurrency = $2::integer,
        rate_per_second = $4::double precision, updated_at = $3::bigint,
        tokens = CASE WHEN $5::boolean THEN coalesce($6::double precision, 0) ELSE tokens END,
        refilled_at = CASE WHEN $5::boolean
                           THEN (extract(epoch FROM clock_timestamp()) * 1000000)::bigint
                           ELSE refilled_at END
     WHERE name = $1";

type Settings = (bool, Option<i32>, Option<f64>);

fn status_of(text: &str) -> Result<JobStatus, Failure> {
    text.parse().map_err(|_| {
        Error::CorruptRow(format!("queue_counts has an unknown status {text:?}")).into()
    })
}

fn summary(name: &str, settings: Option<Settings>) -> QueueSummary {
    let mut queue = QueueSummary::empty(name);
    if let Some((paused, concurrency, rate_per_second)) = settings {
        queue.paused = paused;
        queue.concurrency = concurrency.and_then(|n| u32::try_from(n).ok());
        queue.rate_per_second = rate_per_second;
    }
    queue
}

/// Every queue with jobs or settings, by name.
pub fn all<C: GenericClient>(session: &mut Session<'_, C>) -> Result<Vec<QueueSummary>, Failure> {
    let mut queues = BTreeMap::new();
    let mut with_settings = BTreeSet::new();
    for row in session.query(ALL_SETTINGS, &[])? {
        let name: String = row.try_get(0)?;
        let settings = (row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
        with_settings.insert(name.clone());
        queues.insert(name.clone(), summary(&name, Some(settings)));
    }
    for row in session.query(ALL_COUNTS, &[])? {
        let name: String = row.try_get(0)?;
        let status: String = row.try_get(1)?;
        let n: i64 = row.try_get(2)?;
        queues
            .entry(name.clone())
            .or_insert_with(|| QueueSummary::empty(&name))
            .counts
            .add(status_of(&status)?, n);
    }
    Ok(queues
        .into_values()
        .filter(|queue| !queue.counts.is_empty() || with_settings.contains(&queue.name))
        .collect())
}

/// One queue as it is now (the defaults if it has neither jobs nor settings).
pub fn one<C: GenericClient>(
    session: &mut Session<'_, C>,
    name: &str,
) -> Result<QueueSummary, Failure> {
    let settings = match session.query_opt(SETTINGS_OF_QUEUE, &[&name])? {
        Some(row) => Some((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)),
        None => None,
    };
    let mut queue = summary(name, settings);
    for row in session.query(COUNTS_OF_QUEUE, &[&name])? {
        let status: String = row.try_get(0)?;
        queue.counts.add(status_of(&status)?, row.try_get(1)?);
    }
    Ok(queue)
}

pub fn set_paused<C: GenericClient>(
    session: &mut Session<'_, C>,
    name: &str,
    paused: bool,
    now: Timestamp,
) -> Result<QueueSummary, Failure> {
    session.execute(SET_PAUSED, &[&name, &paused, &now.as_micros()])?;
    one(session, name)
}

/// In a transaction: the row (made first if the queue has none) is locked while the change
/// is merged into it, so two changes at once each keep the other's fields.
pub fn configure<C: GenericClient>(
    session: &mut Session<'_, C>,
    name: &str,
    change: &SettingsChange,
    now: Timestamp,
) -> Result<QueueSummary, Failure> {
    session.execute(ADD_DEFAULT_SETTINGS, &[&name, &now.as_micros()])?;
    let row = session.query_one(LOCK_SETTINGS, &[&name])?;
    let (current_concurrency, current_rate): (Option<i32>, Option<f64>) =
        (row.try_get(1)?, row.try_get(2)?);
    let concurrency: Option<i32> = match change.concurrency {
        Some(concurrency) => concurrency.and_then(|n| i32::try_from(n).ok()),
        None => current_concurrency,
    };
    let rate = change.rate_per_second.unwrap_or(current_rate);
    let new_rate = change.rate_per_second.is_some() && rate != current_rate;
    let tokens = rate.map(burst);
    session.execute(
        SET_LIMITS,
        &[
            &name,
            &concurrency,
            &now.as_micros(),
            &rate,
            &new_rate,
            &tokens,
        ],
    )?;
    one(session, name)
}

/// Folds the counter rows of sessions that have ended; the sums stay as they were.
pub fn compact_counts<C: GenericClient>(session: &mut Session<'_, C>) -> Result<i64, Failure> {
    Ok(session.query_one(COMPACT_COUNTS, &[])?.try_get(0)?)
}
