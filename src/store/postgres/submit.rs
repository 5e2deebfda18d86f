//! Submits on PostgreSQL: new jobs, one or a batch, in one multi-row `INSERT` (the columns as
//! arrays, `unnest`ed), and the idempotency key that comes with them.
//!
//! Without a key a submit is that one statement, committed on its own. With a key it is one
//! transaction: the key is claimed first (`INSERT … ON CONFLICT`), then the jobs are stored.
//! The key's unique index orders requests with the same key: the second one's claim waits
//! for the first's transaction, then finds its key and reads it back, and stores nothing.
//!
//! The pending limit (see `PostgresStore::insert_jobs` in `mod.rs`) is checked by the insert
//! itself, for all its jobs at once. A keyed submit that found no room on the fast way rolls
//! its transaction back and starts over on the exact way, so that it never waits for the
//! exclusive lock while holding the shared one (two such submits would deadlock).

use postgres::types::ToSql;
use postgres::GenericClient;

use super::error::Failure;
use super::pool::{Connection, Session};
use super::statements::{
    CLAIM_KEY, FRESH_KEY, INSERT_JOBS, INSERT_JOBS_FAR_FROM_LIMIT, INSERT_JOBS_UNDER_LIMIT,
};
use super::{column_int, PostgresStore, PENDING_MARGIN};
use crate::error::{Error, Result};
use crate::store::{Answer, Inserted, NewKey, NewRow, StoredKey};
use crate::time::Timestamp;

/// How many times a key's claim is tried when the key it conflicted with is gone by the time
/// it is read (pruned in between): each try either claims it or finds it, almost always.
const CLAIM_TRIES: usize = 3;

/// The jobs of one submit as the insert's array parameters, one element per job.
struct Columns<'a> {
    ids: Vec<&'a str>,
    payloads: Vec<String>,
    priorities: Vec<i32>,
    run_ats: Vec<i64>,
    max_retries: Vec<i32>,
    timeouts: Vec<i32>,
    functions: Vec<Option<&'a str>>,
    queues: Vec<&'a str>,
    traceparents: Vec<Option<&'a str>>,
    created_at: i64,
}

impl<'a> Columns<'a> {
    fn new(jobs: &'a [NewRow], now: Timestamp) -> Result<Columns<'a>> {
        let mut columns = Columns {
            ids: Vec::with_capacity(jobs.len()),
            payloads: Vec::with_capacity(jobs.len()),
            priorities: Vec::with_capacity(jobs.len()),
            run_ats: Vec::with_capacity(jobs.len()),
            max_retries: Vec::with_capacity(jobs.len()),
            timeouts: Vec::with_capacity(jobs.len()),
            functions: Vec::with_capacity(jobs.len()),
            queues: Vec::with_capacity(jobs.len()),
            traceparents: Vec::with_capacity(jobs.len()),
            created_at: now.as_micros(),
        };
        for (id, job) in jobs {
            columns.ids.push(id);
            columns.payloads.push(
                serde_json::to_string(&job.payload)
                    .map_err(|err| Error::Internal(format!("cannot encode payload: {err}")))?,
            );
            columns.priorities.push(i32::from(job.priority));
            columns.run_ats.push(job.run_at.unwrap_or(now).as_micros());
            columns
                .max_retries
                .push(column_int(job.max_retries, "max_retries")?);
            columns
                .timeouts
                .push(column_int(job.timeout_seconds, "timeout_seconds")?);
            columns.functions.push(job.function.as_deref());
            columns.queues.push(&job.queue);
            columns.traceparents.push(job.traceparent.as_deref());
        }
        Ok(columns)
    }
}

/// The most jobs a submit may hold and still take the fast way under the pending limit.
const FAST_WAY_MOST_JOBS: usize = 16;

/// How an insert makes sure there is room under the pending limit.
#[derive(Clone, Copy)]
enum Room {
    /// No limit: no lock, no counters.
    Unlimited,
    /// The shared lock and the counters, with `PENDING_MARGIN` to spare.
    FarFromLimit,
    /// The exclusive lock: the count is exact.
    UnderLimit,
}

impl PostgresStore {
    /// Tries the fast way, then the exact one; `QueueFull` if neither finds room. Wakes the
    /// other nodes once the jobs are committed.
    pub(super) fn insert_rows(
        &self,
        jobs: &[NewRow],
        key: Option<&NewKey>,
        now: Timestamp,
    ) -> Result<Inserted> {
        let columns = Columns::new(jobs, now)?;
        let limit = self.max_pending_jobs;
        // The margin covers submits in flight on other connections, one job each, but not
        // batches: a batch of many jobs takes the exact way, so batches in flight together
        // cannot pass the limit by more than the margin.
        let ways: &[Room] = if limit == 0 {
            &[Room::Unlimited]
        } else if jobs.len() > FAST_WAY_MOST_JOBS {
            &[Room::UnderLimit]
        } else {
            &[Room::FarFromLimit, Room::UnderLimit]
        };
        let mut inserted = Err(Error::QueueFull { limit });
        for &room in ways {
            inserted = self
                .pool
                .run(|connection| insert_once(connection, &columns, key, room, limit));
            if !matches!(inserted, Err(Error::QueueFull { .. })) {
                break;
            }
        }
        if matches!(inserted, Ok(Inserted::Stored)) {
            self.announcer.job_queued();
        }
        inserted
    }

    pub(super) fn fresh_key(&self, key: &str, fresh_since: Timestamp) -> Result<Option<StoredKey>> {
        self.pool
            .read(|connection| find_key(&mut connection.session(), key, fresh_since))
    }
}

/// One try: the insert alone, or, with a key, the key's claim and the insert in a transaction
/// (rolled back if there is no room this way).
fn insert_once(
    connection: &mut Connection,
    columns: &Columns<'_>,
    key: Option<&NewKey>,
    room: Room,
    limit: u64,
) -> Result<Inserted, Failure> {
    let Some(key) = key else {
        insert_jobs(&mut connection.session(), columns, None, room, limit)?;
        return Ok(Inserted::Stored);
    };
    connection.transaction(|session| {
        if let Some(found) = claim_key(session, key, columns.created_at)? {
            return Ok(Inserted::KeyTaken(found));
        }
        insert_jobs(session, columns, Some(&key.key), room, limit)?;
        Ok(Inserted::Stored)
    })
}

fn insert_jobs<C: GenericClient>(
    session: &mut Session<'_, C>,
    columns: &Columns<'_>,
    key: Option<&str>,
    room: Room,
    limit: u64,
) -> Result<(), Failure> {
    let bound = i64::try_from(limit).unwrap_or(i64::MAX);
    let params: [&(dyn ToSql + Sync); 11] = [
        &columns.ids,
        &columns.payloads,
        &columns.priorities,
        &columns.run_ats,
        &columns.max_retries,
        &columns.timeouts,
        &columns.functions,
        &columns.queues,
        &columns.traceparents,
        &columns.created_at,
        &key,
    ];
    let row = match room {
        Room::Unlimited => session.query_one(INSERT_JOBS, &params)?,
        Room::FarFromLimit => session.query_one(
            INSERT_JOBS_FAR_FROM_LIMIT,
            &[&params[..], &[&PENDING_MARGIN, &bound]].concat(),
        )?,
        Room::UnderLimit => {
            session.query_one(INSERT_JOBS_UNDER_LIMIT, &[&params[..], &[&bound]].concat())?
        }
    };
    let added: i64 = row.try_get(0)?;
    if added == 0 {
        return Err(Error::QueueFull { limit }.into());
    }
    Ok(())
}

/// Claims the key for this transaction (`None`), or returns the key an earlier request
/// stored, once that request's transaction has ended.
fn claim_key<C: GenericClient>(
    session: &mut Session<'_, C>,
    key: &NewKey,
    created_at: i64,
) -> Result<Option<StoredKey>, Failure> {
    let status = i32::from(key.answer.status);
    let expired_before = key.expired_before.as_micros();
    for _ in 0..CLAIM_TRIES {
        let claimed = session.query_opt(
            CLAIM_KEY,
            &[
                &key.key,
                &key.request_hash,
                &status,
                &key.answer.body,
                &created_at,
                &expired_before,
            ],
        )?;
        if claimed.is_some() {
            return Ok(None);
        }
        // Read COMMITTED: this statement's snapshot sees the key the claim waited for.
        if let Some(found) = find_key(session, &key.key, key.expired_before)? {
            return Ok(Some(found));
        }
    }
    Err(Error::Unavailable(format!(
        "the Idempotency-Key {:?} could neither be stored nor read; try again",
        key.key
    ))
    .into())
}

fn find_key<C: GenericClient>(
    session: &mut Session<'_, C>,
    key: &str,
    fresh_since: Timestamp,
) -> Result<Option<StoredKey>, Failure> {
    let Some(row) = session.query_opt(FRESH_KEY, &[&key, &fresh_since.as_micros()])? else {
        return Ok(None);
    };
    let status: i32 = row.try_get(1)?;
    let status = u16::try_from(status)
        .map_err(|_| Error::CorruptRow(format!("idempotency key {key:?} has status {status}")))?;
    Ok(Some(StoredKey {
        request_hash: row.try_get(0)?,
        answer: Answer {
            status,
            body: row.try_get(2)?,
        },
    }))
}
