//! `GET /jobs` on PostgreSQL: one statement per combination of filters, each an index scan
//! that delivers jobs newest first (as on SQLite, `sqlite/list.rs`):
//!
//! - no filter: the primary key (`seq`), backwards;
//! - `status`: `jobs_by_status (status, seq)`;
//! - `queue` (and `status`): `jobs_by_queue (queue, status, seq)`;
//! - `function` (with `status` or `queue` or both): `jobs_by_function (function, status,
//!   seq)`, the queue checked on the rows it reads.
//!
//! Without `status`, one limited range per status, merged (`Merge Append`): no sort.

use std::sync::OnceLock;

use super::row::job_columns;
use crate::job::JobStatus;
use crate::store::JobFilter;

/// Which filters a statement has: it binds `status`, `queue` and `function` (those it has,
/// in that order) as `$1…`, then the `seq` bound and the row limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub status: bool,
    pub queue: bool,
    pub function: bool,
}

impl Shape {
    pub fn all() -> impl Iterator<Item = Shape> {
        (0..8).map(|n| Shape {
            status: n & 1 != 0,
            queue: n & 2 != 0,
            function: n & 4 != 0,
        })
    }

    pub fn of(filter: &JobFilter) -> Shape {
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
    pub fn sql(self) -> &'static str {
        static STATEMENTS: OnceLock<Vec<String>> = OnceLock::new();
        let statements = STATEMENTS.get_or_init(|| Shape::all().map(Shape::build).collect());
        &statements[self.index()]
    }

    fn build(self) -> String {
        let mut conditions = Vec::new();
        let mut next = 1;
        for (present, column) in [
            (self.status, "status"),
            (self.queue, "queue"),
            (self.function, "function"),
        ] {
            if present {
                conditions.push(format!("{column} = ${next}"));
                next += 1;
            }
        }
        let (before, limit) = (next, next + 1);
        conditions.push(format!("seq < ${before}::bigint"));
        let arm = |status: Option<&str>| {
            let mut conditions = conditions.clone();
            if let Some(status) = status {
                conditions.insert(0, format!("status = '{status}'"));
            }
            format!(
                "SELECT {} FROM jobs WHERE {}",
                job_columns!(),
                conditions.join(" AND ")
            )
        };
        if self.status || !(self.queue || self.function) {
            format!("{} ORDER BY seq DESC LIMIT ${limit}::bigint", arm(None))
        } else {
            // Each arm limited and ordered on its own: the planner then merges the six
            // index scans (an unlimited `UNION ALL` it would read whole and sort).
            let arms: Vec<String> = JobStatus::ALL
                .iter()
                .map(|status| {
                    format!(
                        "({} ORDER BY seq DESC LIMIT ${limit}::bigint)",
                        arm(Some(status.as_str()))
                    )
                })
                .collect();
            format!(
                "{} ORDER BY seq DESC LIMIT ${limit}::bigint",
                arms.join(" UNION ALL ")
            )
        }
    }
}
