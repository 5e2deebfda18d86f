//! Looking into the server's SQLite file from the outside, read-only: counting jobs by status
//! (to know when every job has finished, and that every 201 is really stored) and sampling
//! existing ids. The server keeps writing meanwhile; WAL mode lets this reader run beside it.

use std::path::Path;
use std::time::Duration;

use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags};

use crate::error::{Context, Error, Result};
use crate::rng::Rng;

pub struct ReadOnly {
    connection: Connection,
}

impl ReadOnly {
    pub fn open(path: &Path) -> Result<ReadOnly> {
        let connection = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .context(format!("cannot open {} read-only", path.display()))?;
        // The server holds the write lock only briefly, but a checkpoint can make a reader wait.
        connection
            .busy_timeout(Duration::from_secs(5))
            .context("cannot set busy_timeout")?;
        Ok(ReadOnly { connection })
    }

    pub fn count(&self, status: &str) -> Result<u64> {
        self.connection
            .prepare_cached("SELECT count(*) FROM jobs WHERE status = ?1")
            .and_then(|mut statement| statement.query_row([status], |row| row.get(0)))
            .context(format!("cannot count {status} jobs"))
    }

    /// Up to `count` ids of existing jobs picked at random. Works by rowid, so it does not care
    /// what the other columns are called, and turns an id stored as a 16-byte blob into the
    /// UUID text the API uses.
    pub fn sample_ids(&self, count: usize, rng: &mut Rng) -> Result<Vec<String>> {
        let max_rowid: Option<i64> = self
            .connection
            .query_row("SELECT max(rowid) FROM jobs", [], |row| row.get(0))
            .context("cannot read the largest rowid")?;
        let max_rowid = max_rowid.ok_or_else(|| Error::new("the jobs table is empty"))?;
        let mut statement = self
            .connection
            .prepare("SELECT id FROM jobs WHERE rowid >= ?1 ORDER BY rowid LIMIT 1")
            .context("cannot prepare the id sample")?;
        let mut ids = Vec::with_capacity(count);
        for _ in 0..count {
            let rowid = 1 + i64::try_from(rng.below(max_rowid.unsigned_abs())).unwrap_or(0);
            let id: Option<Value> = statement
                .query_row([rowid], |row| row.get(0))
                .map(Some)
                .or_else(|err| match err {
                    rusqlite::Error::QueryReturnedNoRows => Ok(None),
                    err => Err(err),
                })
                .context("cannot sample an id")?;
            if let Some(id) = id {
                ids.push(id_text(id)?);
            }
        }
        Ok(ids)
    }
}

fn id_text(id: Value) -> Result<String> {
    match id {
        Value::Text(text) => Ok(text),
        Value::Blob(bytes) => uuid::Uuid::from_slice(&bytes)
            .map(|uuid| uuid.hyphenated().to_string())
            .context("an id blob is not a UUID"),
        other => Err(Error::new(format!(
            "jobs.id holds {other:?}, neither text nor a UUID blob"
        ))),
    }
}
