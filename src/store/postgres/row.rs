//! Turning `jobs` and `attempts` rows into a `Job` and an `Attempt`. A damaged row (an unknown
//! status, text that is not JSON, a number out of range) is an error, never a panic.

use postgres::Row;
use serde_json::Value;

use super::error::Failure;
use crate::error::Error;
use crate::job::{Attempt, Job};
use crate::time::Timestamp;

/// The columns [`job`] reads, in its order; a macro so statements can be built with `concat!`.
macro_rules! job_columns {
    () => {
        "jobs.id, jobs.payload, jobs.status, jobs.created_at, jobs.started_at, \
         jobs.finished_at, jobs.retry_count, jobs.max_retries, jobs.timeout_seconds, \
         jobs.result, jobs.error_message, jobs.priority, jobs.run_at, jobs.function, jobs.seq, \
         jobs.attempt, jobs.node, jobs.cancel_requested, jobs.queue, jobs.traceparent"
    };
}
pub(crate) use job_columns;

/// The columns [`attempt`] reads, in its order.
macro_rules! attempt_columns {
    () => {
        "attempts.attempt, attempts.status, attempts.started_at, attempts.finished_at, \
         attempts.result, attempts.error_message, attempts.exit_code, attempts.stderr_tail, \
         attempts.node"
    };
}
pub(crate) use attempt_columns;

pub fn job(row: &Row) -> Result<Job, Failure> {
    let id: String = row.try_get(0)?;
    let payload: String = row.try_get(1)?;
    let status: String = row.try_get(2)?;
    let result: Option<String> = row.try_get(9)?;
    let number = |value: i32, column: &str| {
        u32::try_from(value).map_err(|_| corrupt(&id, &format!("{column} is {value}")))
    };
    let retry_count = number(row.try_get(6)?, "retry_count")?;
    let max_retries = number(row.try_get(7)?, "max_retries")?;
    let timeout_seconds = number(row.try_get(8)?, "timeout_seconds")?;
    let priority: i32 = row.try_get(11)?;
    let priority =
        u8::try_from(priority).map_err(|_| corrupt(&id, &format!("priority is {priority}")))?;
    let attempt = row
        .try_get::<_, Option<i32>>(15)?
        .map(|attempt| number(attempt, "attempt"))
        .transpose()?;
    Ok(Job {
        payload: json(&payload, || format!("job {id}: payload"))?,
        result: result
            .map(|text| json(&text, || format!("job {id}: result")))
            .transpose()?,
        status: status.parse()?,
        created_at: Timestamp::from_micros(row.try_get(3)?),
        started_at: row
            .try_get::<_, Option<i64>>(4)?
            .map(Timestamp::from_micros),
        finished_at: row
            .try_get::<_, Option<i64>>(5)?
            .map(Timestamp::from_micros),
        retry_count,
        max_retries,
        timeout_seconds,
        error_message: row.try_get(10)?,
        priority,
        run_at: Timestamp::from_micros(row.try_get(12)?),
        function: row.try_get(13)?,
        seq: row.try_get(14)?,
        attempt,
        node: row.try_get(16)?,
        cancel_requested: row.try_get(17)?,
        queue: row.try_get(18)?,
        traceparent: row.try_get(19)?,
        id,
    })
}

pub fn attempt(row: &Row, first: usize) -> Result<Attempt, Failure> {
    let at = |offset: usize| first + offset;
    let number: i32 = row.try_get(at(0))?;
    let attempt = u32::try_from(number)
        .map_err(|_| Error::CorruptRow(format!("attempt number {number} is out of range")))?;
    let status: String = row.try_get(at(1))?;
    let started_at: i64 = row.try_get(at(2))?;
    let finished_at: Option<i64> = row.try_get(at(3))?;
    let result: Option<String> = row.try_get(at(4))?;
    Ok(Attempt {
        attempt,
        status: status.parse()?,
        started_at: Timestamp::from_micros(started_at),
        finished_at: finished_at.map(Timestamp::from_micros),
        duration_ms: finished_at.map(|finished| (finished - started_at) / 1000),
        result: result
            .map(|text| json(&text, || format!("attempt {attempt}: result")))
            .transpose()?,
        error_message: row.try_get(at(5))?,
        exit_code: row.try_get(at(6))?,
        stderr_tail: row.try_get(at(7))?,
        node: row.try_get(at(8))?,
    })
}

fn json(text: &str, what: impl FnOnce() -> String) -> Result<Value, Error> {
    serde_json::from_str(text)
        .map_err(|err| Error::CorruptRow(format!("{} is not valid JSON: {err}", what())))
}

fn corrupt(id: &str, what: &str) -> Error {
    Error::CorruptRow(format!("job {id}: {what}"))
}
