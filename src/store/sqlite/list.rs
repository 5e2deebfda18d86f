//! `GET /jobs` on SQLite: one statement per combination of filters and index walked, each
//! an index seek, so a page costs the rows it reads.
//!
//! - no filter: the rowid (`seq`), backwards;
//! - `status`: `jobs_by_status (status, seq)`;
//! - `queue`: `jobs_by_queue (queue, seq)`;
//! - `function` (with `queue` or not): `jobs_by_function (function, seq)`, the rest checked
//!   on the rows it reads;
//! - an unsuccessful end (`failed`, `timeout`, `cancelled`) with `queue` or `function`:
//!   `jobs_unsuccessful_by_queue` / `_by_function (…, status, seq)`, partial, an exact seek;
//! - another status with `queue`: the cheapest, by `queue_counts`, of walking
//!   `jobs_by_status` or `jobs_by_queue` and checking the other filter on the rows read (for
//!   jobs spread evenly, a page reads its size times that index's total over the jobs that
//!   match), or for `pending`, reading the queue's pending jobs from `jobs_pending_by_queue`
//!   and sorting them (cheap when they are few);
//! - another status with `function`: the function's index, the status checked.
//!
//! Why not `(queue, status, seq)`: a job changes status twice, and each change would move
//! its entry, in the single writer's every claim and finish. The partial indexes hold only
//! jobs that ended without success, so the usual job (pending, running, success) costs them
//! nothing; the counts pick a walk for the rest.

use std::sync::OnceLock;

use rusqlite::types::ToSql;
use rusqlite::Connection;

use super::row::RawJob;
use crate::error::Result;
use crate::job::JobStatus;
use crate::store::JobFilter;

/// Jobs of a queue, of a status, and of both, by the counters: to choose the index walked.
pub(super) const QUEUE_AND_STATUS_TOTALS: &str =
    "SELECT (SELECT coalesce(sum(n), 0) FROM queue_counts WHERE queue = ?1),
            (SELECT coalesce(sum(n), 0) FROM queue_counts WHERE status = ?2),
            (SELECT coalesce(sum(n), 0) FROM queue_counts WHERE queue = ?1 AND status = ?2)";
/// The condition of the partial `jobs_unsuccessful_by_*` indexes, word for word: a statement
/// repeats it so that SQLite may use them.
pub(super) const UNSUCCESSFUL: &str = "status IN ('failed', 'timeout', 'cancelled')";

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
    /// A queue's (or function's) jobs that ended without success, of one status.
    QueueUnsuccessful,
    FunctionUnsuccessful,
    /// A queue's pending jobs, sorted.
    QueuePending,
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
            (true, _, true) => &[Walk::Function, Walk::FunctionUnsuccessful],
            (false, _, true) => &[Walk::Function],
            (true, true, false) => &[
                Walk::Queue,
                Walk::Status,
                Walk::QueueUnsuccessful,
                Walk::QueuePending,
            ],
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
            Walk::QueueUnsuccessful => " INDEXED BY jobs_unsuccessful_by_queue",
            Walk::FunctionUnsuccessful => " INDEXED BY jobs_unsuccessful_by_function",
            Walk::QueuePending => " INDEXED BY jobs_pending_by_queue",
        };
        match walk {
            Walk::QueueUnsuccessful | Walk::FunctionUnsuccessful => {
                conditions.push(UNSUCCESSFUL.to_string());
            }
            Walk::QueuePending => conditions.push("status = 'pending'".to_string()),
            _ => {}
        }
        format!(
            "SELECT {} FROM jobs{index} WHERE {} ORDER BY seq DESC LIMIT ?{limit}",
            job_columns!(),
            conditions.join(" AND ")
        )
    }
}

/// The index to walk for a page of `fetch` jobs that pass `filter` (see the module's notes).
pub(super) fn walk_for(connection: &Connection, filter: &JobFilter, fetch: i64) -> Result<Walk> {
    let shape = Shape::of(filter);
    let unsuccessful = filter.status.is_some_and(JobStatus::is_retryable);
    let (queue, status) = match (&filter.queue, filter.status, &filter.function) {
        (_, Some(_), Some(_)) if unsuccessful => return Ok(Walk::FunctionUnsuccessful),
        (Some(_), Some(_), None) if unsuccessful => return Ok(Walk::QueueUnsuccessful),
        (Some(queue), Some(status), None) => (queue, status),
        _ => return Ok(shape.walks()[0]),
    };
    let (in_queue, in_status, matching): (i64, i64, i64) = connection
        .prepare_cached(QUEUE_AND_STATUS_TOTALS)?
        .query_row(rusqlite::params![queue, status.as_str()], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })?;
    Ok(cheapest_walk(status, in_queue, in_status, matching, fetch))
}

/// Rows read, roughly, by each way to a page of `fetch` jobs of a queue in `status`, given
/// the queue's jobs, the status's and those of both; the cheapest.
fn cheapest_walk(
    status: JobStatus,
    in_queue: i64,
    in_status: i64,
    matching: i64,
    fetch: i64,
) -> Walk {
    let walk_cost = |total: i64| {
        let per_match = total as f64 / matching.max(1) as f64;
        (fetch as f64 * per_match).min(total as f64)
    };
    let mut costs = vec![
        (walk_cost(in_queue), Walk::Queue),
        (walk_cost(in_status), Walk::Status),
    ];
    if status == JobStatus::Pending {
        // Reads every pending job of the queue, then sorts them: a few times the rows.
        costs.push((4.0 * matching as f64, Walk::QueuePending));
    }
    costs
        .into_iter()
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .map_or(Walk::Queue, |(_, walk)| walk)
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
    let walk = walk_for(connection, filter, fetch)?;
    let raws = connection
        .prepare_cached(Shape::of(filter).sql(walk))?
        .query_map(values.as_slice(), RawJob::from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(raws)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_partial_indexes_hold_exactly_the_retryable_statuses() {
        let listed: Vec<&str> = JobStatus::ALL
            .into_iter()
            .filter(|status| status.is_retryable())
            .map(JobStatus::as_str)
            .collect();
        assert_eq!(
            UNSUCCESSFUL,
            format!("status IN ('{}')", listed.join("', '"))
        );
    }

    #[test]
    fn the_walk_reads_the_fewest_rows() {
        use JobStatus::*;
        // A big queue's few pending jobs, while another queue has a backlog: sorted.
        assert_eq!(
            cheapest_walk(Pending, 1_000_000, 1_000_000, 10, 101),
            Walk::QueuePending
        );
        // A backlog's own pending jobs: its queue, densely.
        assert_eq!(
            cheapest_walk(Pending, 1_000_000, 1_000_010, 1_000_000, 101),
            Walk::Queue
        );
        // A small queue among many successes; the few running jobs of a big queue.
        assert_eq!(cheapest_walk(Success, 50, 1_000_000, 40, 101), Walk::Queue);
        assert_eq!(cheapest_walk(Running, 1_000_000, 16, 4, 101), Walk::Status);
    }
}
