//! `GET /jobs` on SQLite: one statement per combination of filters and index walked, each
//! an index seek that delivers jobs newest first (no sort), so a page costs the rows it reads.
//!
//! - no filter: the rowid (`seq`), backwards;
//! - `status`: `jobs_by_status (status, seq)`;
//! - `queue`: `jobs_by_queue (queue, seq)`;
//! - `function` (with `queue` or not): `jobs_by_function (function, seq)`, the queue checked
//!   on the rows it reads;
//! - `status` with `queue` (and no function): whichever of `jobs_by_status` and
//!   `jobs_by_queue` holds fewer jobs by `queue_counts`, the other filter checked on the rows
//!   it reads. For jobs spread evenly, the rows read for a page are its size times that
//!   total over the jobs that match, so the smaller total reads fewer: a few failed jobs of
//!   a big queue are found through the status, a small queue's through the queue;
//! - `status` with `function`: the function's index, the status checked on its rows.
//!
//! The queue's and the function's indexes leave `status` out so that a job's change of
//! status (two per job) does not move their entries; the price is the filtered walk above.

use std::sync::OnceLock;

use rusqlite::types::ToSql;
use rusqlite::Connection;

use super::row::RawJob;
use crate::error::Result;
use crate::job::JobStatus;
use crate::store::JobFilter;

/// Sums `n` of a queue and of a status, to choose the index walked.
pub(super) const QUEUE_AND_STATUS_TOTALS: &str =
    "SELECT (SELECT coalesce(sum(n), 0) FROM queue_counts WHERE queue = ?1),
            (SELECT coalesce(sum(n), 0) FROM queue_counts WHERE status = ?2)";

/// Which filters a statement has: it binds `status`, `queue` and `function` (those it has,
/// in that order) as `?1…`, then the `seq` bound and the row limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Shape {
    pub status: bool,
    pub queue: bool,
    pub function: bool,
}

/// The index a statement walks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Walk {
    Seq,
    Status,
    Queue,
    Function,
}

impl Shape {
    pub(super) const ALL: [Shape; 8] = {
        let mut all = [Shape {
            status: false,
            queue: false,
            function: false,
        }; 8];
        let mut n = 0;
        while n < 8 {
            all[n] = Shape {
                status: n & 1 != 0,
                queue: n & 2 != 0,
                function: n & 4 != 0,
            };
            n += 1;
        }
        all
    };

    fn of(filter: &JobFilter) -> Shape {
        Shape {
            status: filter.status.is_some(),
            queue: filter.queue.is_some(),
            function: filter.function.is_some(),
        }
    }

    fn index(self) -> usize {
        usize::from(self.status) | usize::from(self.queue) << 1 | usize::from(self.function) << 2
    }

    /// The indexes this shape may walk, the first when there is no reason to choose.
    pub(super) fn walks(self) -> &'static [Walk] {
        match (self.status, self.queue, self.function) {
            (_, _, true) => &[Walk::Function],
            (true, true, false) => &[Walk::Queue, Walk::Status],
            (false, true, false) => &[Walk::Queue],
            (true, false, false) => &[Walk::Status],
            (false, false, false) => &[Walk::Seq],
        }
    }

    /// The statement for this shape walking `walk` (one of [`walks`](Self::walks)), built once.
    pub(super) fn sql(self, walk: Walk) -> &'static str {
        static STATEMENTS: OnceLock<Vec<Vec<(Walk, String)>>> = OnceLock::new();
        let statements = STATEMENTS.get_or_init(|| {
            Shape::ALL
                .iter()
                .map(|shape| {
                    shape
                        .walks()
                        .iter()
                        .map(|walk| (*walk, shape.build(*walk)))
                        .collect()
                })
                .collect()
        });
        let built = &statements[self.index()];
        built
            .iter()
            .find(|(built_walk, _)| *built_walk == walk)
            .unwrap_or(&built[0])
            .1
            .as_str()
    }

    fn build(self, walk: Walk) -> String {
        let mut conditions = Vec::new();
        let mut next = 1;
        let mut bind = |column: &str| {
            conditions.push(format!("{column} = ?{next}"));
            next += 1;
        };
        if self.status {
            bind("status");
        }
        if self.queue {
            bind("queue");
        }
        if self.function {
            bind("function");
        }
        let (before, limit) = (next, next + 1);
        conditions.push(format!("seq < ?{before}"));
        let index = match walk {
            Walk::Seq => "",
            Walk::Status => " INDEXED BY jobs_by_status",
            Walk::Queue => " INDEXED BY jobs_by_queue",
            Walk::Function => " INDEXED BY jobs_by_function",
        };
        format!(
            "SELECT {} FROM jobs{index} WHERE {} ORDER BY seq DESC LIMIT ?{limit}",
            job_columns!(),
            conditions.join(" AND ")
        )
    }
}

/// The index to walk for `filter`: for a queue and a status, the one with fewer jobs.
pub(super) fn walk_for(connection: &Connection, filter: &JobFilter) -> Result<Walk> {
    let shape = Shape::of(filter);
    let (Some(queue), Some(status), None) = (&filter.queue, filter.status, &filter.function) else {
        return Ok(shape.walks()[0]);
    };
    let (in_queue, in_status): (i64, i64) = connection
        .prepare_cached(QUEUE_AND_STATUS_TOTALS)?
        .query_row(rusqlite::params![queue, status.as_str()], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?;
    Ok(if in_status < in_queue {
        Walk::Status
    } else {
        Walk::Queue
    })
}

/// Up to `fetch` jobs that pass `filter` with a `seq` below `before_seq`, newest first.
pub(super) fn page(
    connection: &Connection,
    filter: &JobFilter,
    before_seq: i64,
    fetch: i64,
) -> Result<Vec<RawJob>> {
    let status = filter.status.map(JobStatus::as_str);
    let mut values: Vec<&dyn ToSql> = Vec::with_capacity(5);
    if let Some(status) = &status {
        values.push(status);
    }
    if let Some(queue) = &filter.queue {
        values.push(queue);
    }
    if let Some(function) = &filter.function {
        values.push(function);
    }
    values.push(&before_seq);
    values.push(&fetch);
    let walk = walk_for(connection, filter)?;
    let raws = connection
        .prepare_cached(Shape::of(filter).sql(walk))?
        .query_map(values.as_slice(), RawJob::from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(raws)
}
