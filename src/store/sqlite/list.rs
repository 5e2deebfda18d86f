//! `GET /jobs` on SQLite: one statement per combination of filters, each an index seek that
//! delivers jobs newest first, so a page costs its size whatever the number of jobs.
//!
//! - no filter: the rowid (`seq`), backwards;
//! - `status`: `jobs_by_status (status, seq)`;
//! - `queue` (and `status`): `jobs_by_queue (queue, status, seq)`;
//! - `function` (with `status` or `queue` or both): `jobs_by_function (function, status,
//!   seq)`, the queue checked on the rows it reads.
//!
//! Without `status`, a queue's or function's index holds its jobs in status order, so the
//! statement reads one range per status and merges them (`UNION ALL … ORDER BY seq`): six
//! ordered seeks, no sort.

use std::sync::OnceLock;

use rusqlite::types::ToSql;
use rusqlite::Connection;

use super::row::RawJob;
use crate::error::Result;
use crate::job::JobStatus;
use crate::store::JobFilter;

/// Which filters a statement has: it binds `status`, `queue` and `function` (those it has,
/// in that order) as `?1…`, then the `seq` bound and the row limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Shape {
    pub status: bool,
    pub queue: bool,
    pub function: bool,
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

    /// The statement for this shape, built once.
    pub(super) fn sql(self) -> &'static str {
        static STATEMENTS: OnceLock<Vec<String>> = OnceLock::new();
        let statements = STATEMENTS.get_or_init(|| Shape::ALL.iter().map(|s| s.build()).collect());
        &statements[self.index()]
    }

    fn build(self) -> String {
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
        let index = if self.function {
            " INDEXED BY jobs_by_function"
        } else if self.queue {
            " INDEXED BY jobs_by_queue"
        } else {
            ""
        };
        let arm = |status: Option<&str>| {
            let mut conditions = conditions.clone();
            if let Some(status) = status {
                conditions.insert(0, format!("status = '{status}'"));
            }
            format!(
                "SELECT {} FROM jobs{index} WHERE {}",
                job_columns!(),
                conditions.join(" AND ")
            )
        };
        if self.status || !(self.queue || self.function) {
            format!("{} ORDER BY seq DESC LIMIT ?{limit}", arm(None))
        } else {
            let arms: Vec<String> = JobStatus::ALL
                .iter()
                .map(|status| arm(Some(status.as_str())))
                .collect();
            format!(
                "{} ORDER BY seq DESC LIMIT ?{limit}",
                arms.join(" UNION ALL ")
            )
        }
    }
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
    let raws = connection
        .prepare_cached(Shape::of(filter).sql())?
        .query_map(values.as_slice(), RawJob::from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(raws)
}
