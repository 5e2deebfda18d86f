//! How many jobs each queue has in each status, kept by the writer instead of by triggers.
//!
//! Every write that inserts a job, changes its status or deletes it says so
//! ([`Writer::moved`](super::group_commit::Writer::moved)); group commit adds up the changes
//! of a batch and, inside the batch's transaction, adds them to `queue_counts` with one
//! statement per queue and status touched, just before the commit. So the table changes in
//! the same transaction as the jobs (a crash never leaves them apart), a job's three writes
//! cost a few counter updates per batch instead of five per job, and a batch that fails
//! counts nothing. The counts are added, never overwritten, so the table stays right even
//! if something else adds to it.
//!
//! The writer also holds the committed counts in memory ([`Tally`]), so the writes of a batch
//! (a claim checking a queue's `concurrency`) see the counts as of the earlier writes of
//! their batch, their own included. Readers use the table.

use std::collections::HashMap;

use rusqlite::Connection;

use crate::error::Result;
use crate::job::JobStatus;

const ALL_COUNTS: &str = "SELECT queue, status, n FROM queue_counts";
const ADD_TO_COUNT: &str = "INSERT INTO queue_counts (queue, status, n) VALUES (?1, ?2, ?3)
     ON CONFLICT (queue, status) DO UPDATE SET n = n + excluded.n";

/// Counts, or changes of counts, per queue and status (in the order of `JobStatus::ALL`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Tally {
    queues: HashMap<String, [i64; 6]>,
}

/// One change of one count: a job of `queue` entered (`+1`) or left (`-1`) `status`.
pub(super) type Change = (String, JobStatus, i64);

fn slot(status: JobStatus) -> usize {
    match status {
        JobStatus::Pending => 0,
        JobStatus::Running => 1,
        JobStatus::Success => 2,
        JobStatus::Failed => 3,
        JobStatus::Timeout => 4,
        JobStatus::Cancelled => 5,
    }
}

impl Tally {
    /// The counts in `queue_counts` now. A row with a status this build does not know is
    /// left out (and refused by `GET /queues` as corrupt).
    pub(super) fn load(connection: &Connection) -> Result<Tally> {
        let mut tally = Tally::default();
        let rows = connection
            .prepare(ALL_COUNTS)?
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        for (queue, status, n) in rows {
            match status.parse::<JobStatus>() {
                Ok(status) => tally.add(&queue, status, n),
                Err(_) => log::warn!("queue_counts has an unknown status {status:?}; ignored"),
            }
        }
        Ok(tally)
    }

    pub(super) fn get(&self, queue: &str, status: JobStatus) -> i64 {
        self.queues
            .get(queue)
            .map_or(0, |counts| counts[slot(status)])
    }

    pub(super) fn status_total(&self, status: JobStatus) -> i64 {
        self.queues
            .values()
            .map(|counts| counts[slot(status)])
            .sum()
    }

    pub(super) fn add(&mut self, queue: &str, status: JobStatus, n: i64) {
        if n == 0 {
            return;
        }
        match self.queues.get_mut(queue) {
            Some(counts) => counts[slot(status)] += n,
            None => {
                let mut counts = [0; 6];
                counts[slot(status)] = n;
                self.queues.insert(queue.to_string(), counts);
            }
        }
    }

    pub(super) fn add_changes(&mut self, changes: &[Change]) {
        for (queue, status, n) in changes {
            self.add(queue, *status, *n);
        }
    }

    pub(super) fn merge(&mut self, other: &Tally) {
        for (queue, counts) in &other.queues {
            for status in JobStatus::ALL {
                self.add(queue, status, counts[slot(status)]);
            }
        }
    }

    /// The queues that have a count here, in any status.
    pub(super) fn queues(&self) -> impl Iterator<Item = &str> {
        self.queues.keys().map(String::as_str)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.queues
            .values()
            .all(|counts| counts.iter().all(|n| *n == 0))
    }

    /// Adds these changes to `queue_counts`: one statement per count that changed.
    pub(super) fn add_to_table(&self, connection: &Connection) -> rusqlite::Result<()> {
        let mut add = connection.prepare_cached(ADD_TO_COUNT)?;
        for (queue, counts) in &self.queues {
            for status in JobStatus::ALL {
                let n = counts[slot(status)];
                if n != 0 {
                    add.execute(rusqlite::params![queue, status.as_str(), n])?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::super::tests::temp_store;
    use super::super::{Finish, SqliteStore};
    use super::*;
    use crate::job::{AttemptDetails, AttemptEnd, Job, NewJob};
    use crate::store::bulk::{Batch, BulkAction, BulkFilter};
    use crate::store::{Backend, Cancel, NewKey};
    use crate::time::Timestamp;

    impl Tally {
        /// The non-zero counts, comparable whatever went up and back down.
        fn non_zero(&self) -> BTreeMap<(String, &'static str), i64> {
            let mut counts = BTreeMap::new();
            for (queue, by_status) in &self.queues {
                for status in JobStatus::ALL {
                    let n = by_status[slot(status)];
                    if n != 0 {
                        counts.insert((queue.clone(), status.as_str()), n);
                    }
                }
            }
            counts
        }
    }

    /// The counts the writer holds, those in `queue_counts` and those counted from the jobs
    /// agree, and so does the pending count.
    fn assert_exact(store: &SqliteStore, when: &str) {
        let connection = store.read();
        let mut counted = Tally::default();
        let rows = connection
            .prepare("SELECT queue, status, count(*) FROM jobs GROUP BY queue, status")
            .unwrap()
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                ))
            })
            .unwrap()
            .collect::<rusqlite::Result<Vec<_>>>()
            .unwrap();
        for (queue, status, n) in rows {
            counted.add(&queue, status.parse().unwrap(), n);
        }
        let table = Tally::load(&connection).unwrap();
        drop(connection);
        let counted = counted.non_zero();
        assert_eq!(table.non_zero(), counted, "queue_counts {when}");
        assert_eq!(
            store.writes.counts().non_zero(),
            counted,
            "in memory {when}"
        );
        let pending: i64 = counted
            .iter()
            .filter(|((_, status), _)| *status == "pending")
            .map(|(_, n)| n)
            .sum();
        assert_eq!(store.writes.pending(), pending as u64, "pending {when}");
    }

    fn at(micros: i64) -> Timestamp {
        Timestamp::from_micros(micros)
    }

    fn job_in(queue: &str, priority: u8) -> NewJob {
        NewJob {
            queue: queue.into(),
            ..NewJob::for_test(priority, None)
        }
    }

    fn claim(store: &SqliteStore, id: &str) -> Job {
        let job = store.claim_next_due(at(1_000)).unwrap().unwrap();
        assert_eq!(job.id, id);
        job
    }

    fn failed(retry_at: Option<i64>) -> AttemptEnd {
        AttemptEnd::Failed {
            error: "boom".into(),
            retry_at: retry_at.map(at),
        }
    }

    #[test]
    fn the_counts_stay_exact_through_every_kind_of_write() {
        let store = temp_store();
        let none = AttemptDetails::default();
        // Submits: one, and a batch with a key. Priorities set the claim order.
        store.insert("a".into(), &job_in("q1", 9), at(1)).unwrap();
        let key = NewKey {
            key: "k".into(),
            request_hash: "h".into(),
            answer: crate::store::Answer {
                status: 201,
                body: "{}".into(),
            },
            expired_before: at(0),
        };
        let batch: Vec<_> = [("b", 8), ("c", 7), ("d", 6), ("e", 5), ("f", 4), ("g", 3)]
            .into_iter()
            .map(|(id, priority)| (id.to_string(), job_in("q2", priority)))
            .collect();
        store.insert_jobs(&batch, Some(&key), at(1)).unwrap();
        // A repeat of the key inserts (and counts) nothing.
        store.insert_jobs(&batch[..1], Some(&key), at(1)).unwrap();
        assert_exact(&store, "after submits");

        // Claim and succeed; claim and fail into a retry while claiming the next.
        let a = claim(&store, "a");
        assert_exact(&store, "after a claim");
        store
            .finish_attempt(
                &a,
                &AttemptEnd::Succeeded { result: json!(1) },
                &none,
                at(2),
            )
            .unwrap();
        let b = claim(&store, "b");
        let next = store
            .finish_and_claim_next(&b, &failed(Some(5_000)), &none, at(3))
            .unwrap();
        assert_eq!(next.next.as_ref().map(|job| job.id.as_str()), Some("c"));
        assert_exact(&store, "after a retry scheduled and a claim");
        // Fail for good, then retry by hand; a refused retry changes nothing.
        let c = next.next.unwrap();
        store
            .finish_attempt(&c, &failed(None), &none, at(4))
            .unwrap();
        store.retry("c", at(5)).unwrap();
        assert!(store.retry("c", at(5)).is_err());
        assert_exact(&store, "after a retry by hand");
        // Released (shutdown) and recovered (lost) attempts go back to pending.
        let c = claim(&store, "c");
        let released = AttemptEnd::Released {
            reason: "shutdown".into(),
        };
        store.finish_attempt(&c, &released, &none, at(6)).unwrap();
        let c = claim(&store, "c");
        let lost = store
            .lost_attempts(at(7), std::time::Duration::ZERO, true)
            .unwrap();
        assert_eq!(lost.len(), 1);
        store
            .finish_attempt(&lost[0], &failed(Some(7)), &none, at(7))
            .unwrap();
        // The late outcome of the lost attempt changes nothing.
        assert!(!store
            .finish_attempt(&c, &failed(None), &none, at(8))
            .unwrap());
        assert_exact(&store, "after a release and a recovery");

        // Cancels: a pending job ends; a running one is only asked to stop.
        assert!(matches!(store.cancel("g", at(9)), Ok(Cancel::Cancelled(_))));
        let c = claim(&store, "c");
        assert!(matches!(store.cancel("c", at(9)), Ok(Cancel::Running(_))));
        assert_exact(&store, "after cancels");
        // Deletes: running, pending, ended, and one that is not there.
        assert!(store.delete("c").unwrap().is_some());
        assert!(!store
            .finish_attempt(&c, &failed(None), &none, at(10))
            .unwrap());
        assert!(store.delete("f").unwrap().is_some());
        assert!(store.delete("a").unwrap().is_some());
        assert!(store.delete("nope").unwrap().is_none());
        assert_exact(&store, "after deletes");

        // Bulk: retry the failed and cancelled, cancel by id, delete a queue's pending.
        let d = claim(&store, "d");
        store
            .finish_attempt(&d, &failed(None), &none, at(11))
            .unwrap();
        let filter = BulkFilter {
            queue: Some("q2".into()),
            ..BulkFilter::default()
        };
        let last = store.last_seq().unwrap();
        for status in [JobStatus::Failed, JobStatus::Cancelled] {
            let range = Batch::Range {
                status,
                after: 0,
                up_to: last,
            };
            let done = store
                .bulk_batch(BulkAction::Retry, &filter, &range, at(12))
                .unwrap();
            assert_eq!(done.affected, 1, "{status}");
        }
        assert_exact(&store, "after a bulk retry");
        let ids = ["d".to_string(), "e".to_string()];
        let by_id = Batch::Ids {
            ids: &ids,
            statuses: BulkAction::Cancel.applies_to(),
        };
        let running = claim(&store, "d");
        let done = store
            .bulk_batch(BulkAction::Cancel, &filter, &by_id, at(13))
            .unwrap();
        assert_eq!(done.affected, 2);
        assert_exact(&store, "after a bulk cancel");
        let range = Batch::Range {
            status: JobStatus::Pending,
            after: 0,
            up_to: last,
        };
        let done = store
            .bulk_batch(BulkAction::Delete, &filter, &range, at(14))
            .unwrap();
        assert_eq!(done.affected, 2, "b (due later) and g");
        assert_exact(&store, "after a bulk delete");

        // A batch that fails after its write was answered: the outcome is redone, and
        // counted, once, in the batch that commits it.
        let finish = Finish::new(
            &running,
            &AttemptEnd::Succeeded { result: json!(2) },
            &none,
            at(15),
        )
        .unwrap();
        let redo = finish.redo();
        store
            .writes
            .write_unsynced_redone(
                move |writer| {
                    finish.run(writer)?;
                    Ok(writer.execute_batch("ROLLBACK")?)
                },
                redo,
            )
            .unwrap();
        assert_eq!(store.get("d").unwrap().unwrap().status, JobStatus::Running);
        assert_exact(&store, "after a failed batch");
        store.heartbeat(at(16)).unwrap();
        assert_eq!(store.get("d").unwrap().unwrap().status, JobStatus::Success);
        assert_exact(&store, "after the redo");
        store.heartbeat(at(17)).unwrap();
        assert_exact(&store, "after a batch with nothing to redo");

        // Retention deletes ended jobs, counted out.
        // d (success) and e (cancelled); the rest were deleted.
        assert_eq!(store.prune_ended(at(1_000_000), 100).unwrap(), 2);
        assert_exact(&store, "after pruning");
        assert_eq!(store.writes.counts().non_zero().len(), 0);

        // A queue's summary, read inside a write, has its counts.
        store.insert("h".into(), &job_in("q3", 0), at(20)).unwrap();
        let summary = store.set_paused("q3", true, at(21)).unwrap();
        assert_eq!(summary.counts.pending, 1);
        // And a reopened store starts from the table.
        let super::super::tests::TempStore { store, dir } = store;
        drop(store);
        let reopened = SqliteStore::open(
            &dir.path().join("jobs.db"),
            &super::super::tests::options(0),
        )
        .unwrap();
        assert_exact(&reopened, "after reopening");
    }

    #[test]
    fn changes_add_up_per_queue_and_status_and_reach_the_table_once_each() {
        let connection = Connection::open_in_memory().unwrap();
        connection
            .execute_batch(
                "CREATE TABLE queue_counts (queue TEXT NOT NULL, status TEXT NOT NULL,
                    n INTEGER NOT NULL, PRIMARY KEY (queue, status)) WITHOUT ROWID;
                 INSERT INTO queue_counts VALUES ('a', 'pending', 4), ('a', 'nonsense', 1);",
            )
            .unwrap();
        let mut loaded = Tally::load(&connection).unwrap();
        assert_eq!(loaded.get("a", JobStatus::Pending), 4);
        let mut batch = Tally::default();
        batch.add_changes(&[
            ("a".into(), JobStatus::Pending, -1),
            ("a".into(), JobStatus::Running, 1),
            ("b".into(), JobStatus::Pending, 1),
            ("b".into(), JobStatus::Pending, -1),
        ]);
        batch.add_to_table(&connection).unwrap();
        loaded.merge(&batch);
        let mut reloaded = Tally::load(&connection).unwrap();
        // 'b' pending went up and back down: nothing written, nothing to compare.
        reloaded.add("b", JobStatus::Pending, 0);
        assert_eq!(loaded.get("a", JobStatus::Running), 1);
        assert_eq!(reloaded.get("a", JobStatus::Pending), 3);
        assert_eq!(reloaded.get("b", JobStatus::Pending), 0);
        let rows: i64 = connection
            .query_row("SELECT count(*) FROM queue_counts", [], |row| row.get(0))
            .unwrap();
        assert_eq!(rows, 3, "a/pending, a/running, a/nonsense; b never written");
    }
}
