//! Turning SQLite's `jobs` and `attempts` rows into a `Job` and an `Attempt`: SQLite hands back text and integers; parsing them can
//! fail on a damaged row, and that must be an error, never a panic.

use rusqlite::Row;
use serde_json::Value;

use super::group_commit::Writer;
use crate::error::{Error, Result};
use crate::job::{Attempt, Job, JobStatus};
use crate::time::Timestamp;

/// A row as SQLite returns it, before the text columns are parsed.
pub struct RawJob {
    id: String,
    payload: String,
    status: String,
    created_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    retry_count: u32,
    max_retries: u32,
    timeout_seconds: u32,
    result: Option<String>,
    error_message: Option<String>,
    priority: u8,
    run_at: i64,
    function: Option<String>,
    seq: i64,
    attempt: Option<u32>,
    node: Option<String>,
    cancel_requested: bool,
    queue: String,
    traceparent: Option<String>,
}

impl RawJob {
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Counts this row, just deleted by `writer`, out of its queue's counts. A row whose
    /// status cannot be read was never counted under a known status.
    pub fn deleted_by(&self, writer: &mut Writer<'_>) {
        match self.status.parse::<JobStatus>() {
            Ok(status) => writer.moved(&self.queue, Some(status), None),
            Err(_) => log::warn!("deleted job {} had an unknown status", self.id),
        }
    }

    pub fn from_row(row: &Row<'_>) -> rusqlite::Result<RawJob> {
        Ok(RawJob {
            id: row.get(0)?,
            payload: row.get(1)?,
            status: row.get(2)?,
            created_at: row.get(3)?,
            started_at: row.get(4)?,
            finished_at: row.get(5)?,
            retry_count: row.get(6)?,
            max_retries: row.get(7)?,
            timeout_seconds: row.get(8)?,
            result: row.get(9)?,
            error_message: row.get(10)?,
            priority: row.get(11)?,
            run_at: row.get(12)?,
            function: row.get(13)?,
            seq: row.get(14)?,
            attempt: row.get(15)?,
            node: row.get(16)?,
            cancel_requested: row.get(17)?,
            queue: row.get(18)?,
            traceparent: row.get(19)?,
        })
    }

    pub fn into_job(self) -> Result<Job> {
        let parse_json = |text: &str, column: &str| -> Result<Value> {
            serde_json::from_str(text).map_err(|err| {
                Error::CorruptRow(format!(
                    "job {}: {column} is not valid JSON: {err}",
                    self.id
                ))
            })
        };
        Ok(Job {
            payload: parse_json(&self.payload, "payload")?,
            result: self
                .result
                .as_deref()
                .map(|text| parse_json(text, "result"))
                .transpose()?,
            status: self.status.parse()?,
            created_at: Timestamp::from_micros(self.created_at),
            started_at: self.started_at.map(Timestamp::from_micros),
            finished_at: self.finished_at.map(Timestamp::from_micros),
            retry_count: self.retry_count,
            max_retries: self.max_retries,
            timeout_seconds: self.timeout_seconds,
            error_message: self.error_message,
            priority: self.priority,
            run_at: Timestamp::from_micros(self.run_at),
            function: self.function,
            seq: self.seq,
            attempt: self.attempt,
            node: self.node,
            cancel_requested: self.cancel_requested,
            queue: self.queue,
            traceparent: self.traceparent,
            id: self.id,
        })
    }
}

/// An `attempts` row as SQLite returns it.
pub struct RawAttempt {
    attempt: u32,
    status: String,
    started_at: i64,
    finished_at: Option<i64>,
    result: Option<String>,
    error_message: Option<String>,
    exit_code: Option<i32>,
    stderr_tail: Option<String>,
    node: Option<String>,
}

impl RawAttempt {
    pub fn from_row(row: &Row<'_>) -> rusqlite::Result<RawAttempt> {
        Ok(RawAttempt {
            attempt: row.get(0)?,
            status: row.get(1)?,
            started_at: row.get(2)?,
            finished_at: row.get(3)?,
            result: row.get(4)?,
            error_message: row.get(5)?,
            exit_code: row.get(6)?,
            stderr_tail: row.get(7)?,
            node: row.get(8)?,
        })
    }

    pub fn into_attempt(self) -> Result<Attempt> {
        let result = self
            .result
            .as_deref()
            .map(serde_json::from_str::<Value>)
            .transpose()
            .map_err(|err| {
                Error::CorruptRow(format!(
                    "attempt {}: result is not valid JSON: {err}",
                    self.attempt
                ))
            })?;
        Ok(Attempt {
            attempt: self.attempt,
            status: self.status.parse()?,
            started_at: Timestamp::from_micros(self.started_at),
            finished_at: self.finished_at.map(Timestamp::from_micros),
            duration_ms: self
                .finished_at
                .map(|finished| (finished - self.started_at) / 1000),
            result,
            error_message: self.error_message,
            exit_code: self.exit_code,
            stderr_tail: self.stderr_tail,
            node: self.node,
        })
    }
}
