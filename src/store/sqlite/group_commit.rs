//! Group commit: many writers, one transaction, one sync.
//!
//! With `synchronous=FULL` every commit waits for the disk, so committing each write on its own
//! caps throughput at the disk's sync rate. Here writes that arrive while a commit is in
//! progress wait in a queue; one of the waiting callers becomes the leader, takes the mutex-
//! guarded connection, runs the whole queue in one `BEGIN IMMEDIATE` transaction, commits once,
//! and hands every caller its own result. A caller of `write` is answered only after the
//! transaction holding its write is durable, so an acknowledgement still means "on disk".
//! `write_unsynced` answers as soon as the write has run, for job state whose loss in a crash
//! recovery already handles (a worker's claim or outcome).
//!
//! Leadership passes from caller to caller: a leader runs exactly one batch, wakes the first
//! caller still queued to lead the next, and only then wakes the callers of its own batch, so
//! the next batch is not held up by those wake-ups. No thread is dedicated to committing and
//! no caller leads twice, so every write is answered after at most two batches.
//!
//! The contract for a write: when it returns an error, it must have changed nothing, so that
//! the rest of its batch can still commit. A write with one modifying statement has that for
//! free (SQLite undoes a failed statement); one with several wraps them in [`in_savepoint`].
//!
//! Group commit also keeps the number of pending jobs and the counts per queue and status,
//! because only here is it known which writes commit: each write says which jobs it moved
//! from one status to another ([`Writer::moved`]), and the changes of a batch count only once
//! that batch has committed. The batch's changes of the per-queue counts are written to
//! `queue_counts` in its transaction, just before the commit (`counts`). A write that fails,
//! or whose batch fails, changes neither the database nor the counts; a write redone in a
//! later batch counts in the batch that commits it. And it reports to [`WriteHealth`] each
//! batch that the storage failed and each that committed changes.
//!
//! When the storage fails (disk full, I/O error), every caller of the batch gets
//! `Error::Unavailable` saying so, and the connection is left outside any transaction, ready
//! for the next batch: it recovers by itself once the disk does. Callers of `write_unsynced`
//! have had their answer by then; from then on, while writes fail, they wait for the commit
//! too, and a write they must not lose (a worker's outcome) is redone in later batches until
//! one commits it.

use std::mem;
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use rusqlite::Connection;

use super::counts::{Change, Tally};
use super::reply::{reply_slot, Message};
use super::write_health::WriteHealth;
use crate::error::{Error, Result, StorageFailure};
use crate::job::JobStatus;
use crate::metrics::Histogram;

/// Runs a queued write against the batch's transaction (`None` if there is none to run in) and
/// returns how to deliver the write's result once the commit's fate is known.
type Work = Box<dyn FnOnce(Option<&mut Writer<'_>>) -> Ran + Send>;
/// Sends the result, or the commit's failure (`Some(message)`), to the waiting caller.
type Deliver = Box<dyn FnOnce(Option<&str>) + Send>;
/// A write to run again in later batches until one commits it: its caller was told it was
/// done before its batch failed to commit.
type Redo = Box<dyn FnMut(&mut Writer<'_>) -> Result<()> + Send>;

/// What running a queued write left behind.
struct Ran {
    deliver: Deliver,
    /// For a write answered already: what stands in for it if the batch fails.
    redo: Option<Redo>,
}

/// When a write's caller gets its result.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    AfterSync,
    BeforeSync,
}

struct Waiting {
    work: Work,
    /// Tells this caller to lead the next batch. Never blocks.
    lead: Box<dyn Fn() + Send>,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Waiting>,
    leader_active: bool,
}

/// The write connection and what is known only on its side.
struct WriteSide {
    connection: Connection,
    /// Pending jobs as of the last committed batch.
    pending: u64,
    /// Jobs per queue and status as of the last committed batch (as in `queue_counts`).
    counts: Tally,
    /// Writes answered before their batch failed, run first in the next batch.
    redo: Vec<Redo>,
}

pub struct GroupCommit {
    /// Only the current leader locks it, for the length of one batch.
    side: Mutex<WriteSide>,
    /// Writes waiting for the next batch, and whether a leader is running one.
    queue: Mutex<Queue>,
    health: WriteHealth,
    /// Where each batch's commit time is counted (`db_commit_seconds`).
    commit_seconds: Arc<Histogram>,
}

/// What one write works with: the batch's open transaction (through `Deref`), and the
/// counts of jobs as that transaction sees them.
pub struct Writer<'c> {
    connection: &'c Connection,
    /// Pending jobs when this write began: committed, plus the earlier writes of its batch.
    pending_before: u64,
    /// How much this write has changed the number of pending jobs so far.
    pending_change: i64,
    /// Per-queue counts as of the last committed batch.
    committed_counts: &'c Tally,
    /// What the earlier writes of this batch changed in them.
    batch_counts: &'c Tally,
    /// What this write has changed in them so far, in order (a savepoint undoes a suffix).
    count_changes: Vec<Change>,
    /// The storage failure this write ran into, if any, as the message callers get.
    storage_failure: Option<String>,
}

impl<'c> Writer<'c> {
    fn new(
        connection: &'c Connection,
        pending_before: u64,
        committed_counts: &'c Tally,
        batch_counts: &'c Tally,
    ) -> Writer<'c> {
        Writer {
            connection,
            pending_before,
            pending_change: 0,
            committed_counts,
            batch_counts,
            count_changes: Vec::new(),
            storage_failure: None,
        }
    }

    /// The pending count after this write, and its changes of the per-queue counts.
    fn finish(self) -> (u64, Vec<Change>) {
        (self.pending_jobs(), self.count_changes)
    }
}

impl Deref for Writer<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.connection
    }
}

impl Writer<'_> {
    /// Pending jobs as this write sees them, its own changes included.
    pub fn pending_jobs(&self) -> u64 {
        self.pending_before
            .saturating_add_signed(self.pending_change)
    }

    /// Records that this write moved a job of `queue` out of status `from` (`None`: it
    /// inserted the job) into `to` (`None`: it deleted the job). Every write that inserts,
    /// changes the status of or deletes a job says so, once per job: that is what keeps the
    /// pending count and `queue_counts` exact. Counts only if the write succeeds and its
    /// batch commits.
    pub fn moved(&mut self, queue: &str, from: Option<JobStatus>, to: Option<JobStatus>) {
        self.moved_many(queue, from, to, 1);
    }

    /// [`moved`](Self::moved) for `n` jobs of one queue at once.
    pub fn moved_many(
        &mut self,
        queue: &str,
        from: Option<JobStatus>,
        to: Option<JobStatus>,
        n: i64,
    ) {
        if from == to || n == 0 {
            return;
        }
        for (status, sign) in [(from, -1), (to, 1)] {
            if let Some(status) = status {
                if status == JobStatus::Pending {
                    self.pending_change += sign * n;
                }
                self.count_changes
                    .push((queue.to_string(), status, sign * n));
            }
        }
    }

    /// Jobs of `queue` in `status` as this write sees them, its own changes included.
    pub fn job_count(&self, queue: &str, status: JobStatus) -> i64 {
        let own: i64 = self
            .count_changes
            .iter()
            .filter(|(q, s, _)| q == queue && *s == status)
            .map(|(_, _, n)| n)
            .sum();
        self.committed_counts.get(queue, status) + self.batch_counts.get(queue, status) + own
    }

    /// Jobs of `queue` in any status, as this write sees them.
    pub fn queue_total(&self, queue: &str) -> i64 {
        JobStatus::ALL
            .into_iter()
            .map(|status| self.job_count(queue, status))
            .sum()
    }

    /// Jobs in `status` in any queue, as this write sees them.
    pub fn status_total(&self, status: JobStatus) -> i64 {
        let own: i64 = self
            .count_changes
            .iter()
            .filter(|(_, s, _)| *s == status)
            .map(|(_, _, n)| n)
            .sum();
        self.committed_counts.status_total(status) + self.batch_counts.status_total(status) + own
    }

    /// The queues with pending jobs as this write sees them, by name.
    pub fn queues_with_pending(&self) -> Vec<String> {
        let mut names: Vec<&str> = self
            .committed_counts
            .queues()
            .chain(self.batch_counts.queues())
            .chain(
                self.count_changes
                    .iter()
                    .map(|(queue, _, _)| queue.as_str()),
            )
            .collect();
        names.sort_unstable();
        names.dedup();
        names
            .into_iter()
            .filter(|queue| self.job_count(queue, JobStatus::Pending) > 0)
            .map(str::to_string)
            .collect()
    }

    /// Forgets this write's changes of the counts after the first `kept`.
    fn undo_changes(&mut self, kept: usize, pending_change: i64) {
        self.count_changes.truncate(kept);
        self.pending_change = pending_change;
    }
}

impl GroupCommit {
    /// `pending` is the number of pending jobs in the database now, `counts` those of
    /// `queue_counts`; each commit's time goes to `commit_seconds`.
    pub fn new(
        connection: Connection,
        pending: u64,
        counts: Tally,
        commit_seconds: Arc<Histogram>,
    ) -> GroupCommit {
        GroupCommit {
            side: Mutex::new(WriteSide {
                connection,
                pending,
                counts,
                redo: Vec::new(),
            }),
            queue: Mutex::new(Queue::default()),
            health: WriteHealth::default(),
            commit_seconds,
        }
    }

    pub fn health(&self) -> &WriteHealth {
        &self.health
    }

    /// Pending jobs as of the last committed batch.
    #[cfg(test)]
    pub fn pending(&self) -> u64 {
        lock(&self.side).pending
    }

    /// Per-queue counts as of the last committed batch.
    #[cfg(test)]
    pub fn counts(&self) -> Tally {
        lock(&self.side).counts.clone()
    }

    /// Runs `write` in the next batch and returns its result once that batch is committed.
    pub fn write<T, F>(&self, write: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Writer<'_>) -> Result<T> + Send + 'static,
    {
        self.enqueue(write, Answer::AfterSync, None)
    }

    /// Like [`write`](Self::write), but answers as soon as the write has run in its batch,
    /// without waiting for the sync. For writes whose loss in a crash is already handled (a
    /// job's claim or outcome: crash recovery reruns the job). The write still commits with
    /// its batch; a caller that happens to lead the batch still waits for the sync.
    ///
    /// While the storage is failing (see [`WriteHealth::failing`]) it waits for the commit like
    /// `write`, so that callers learn of the failure instead of acting on writes that are lost:
    /// a worker must not run a job whose claim cannot be stored, again and again.
    pub fn write_unsynced<T, F>(&self, write: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Writer<'_>) -> Result<T> + Send + 'static,
    {
        self.enqueue(write, Answer::BeforeSync, None)
    }

    /// Like [`write_unsynced`](Self::write_unsynced), for a write that must not be lost when
    /// its batch fails to commit after it was answered (the first batch a full disk refuses):
    /// then `redo` runs first in each later batch until one commits it. `redo` must do nothing
    /// once the state it was meant for has moved on.
    pub fn write_unsynced_redone<T, F, R>(&self, write: F, redo: R) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Writer<'_>) -> Result<T> + Send + 'static,
        R: FnMut(&mut Writer<'_>) -> Result<()> + Send + 'static,
    {
        self.enqueue(write, Answer::BeforeSync, Some(Box::new(redo)))
    }

    fn enqueue<T, F>(&self, write: F, answer: Answer, redo: Option<Redo>) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Writer<'_>) -> Result<T> + Send + 'static,
    {
        let answer = match answer {
            Answer::BeforeSync if self.health.failing(Instant::now()) => Answer::AfterSync,
            answer => answer,
        };
        let (reply, outcome) = reply_slot::<T>();
        let lead_reply = reply.leader_call();
        let lead = Box::new(move || lead_reply.call());
        let work: Work = Box::new(move |writer| {
            let result = match writer {
                Some(writer) => write(&mut *writer).map_err(|err| {
                    // A failed write changed nothing, the counts included.
                    writer.undo_changes(0, 0);
                    match storage_failure(&err) {
                        Some(message) => {
                            writer.storage_failure = Some(message.clone());
                            Error::Unavailable(message)
                        }
                        None => err,
                    }
                }),
                None => Err(Error::Unavailable(
                    "the database could not run this write: its transaction failed".into(),
                )),
            };
            if answer == Answer::BeforeSync {
                let done = result.is_ok();
                reply.send(result);
                return Ran {
                    deliver: Box::new(|_| {}),
                    redo: redo.filter(|_| done),
                };
            }
            let deliver: Deliver = Box::new(move |commit_failure| {
                let delivered = match commit_failure {
                    None => result,
                    Some(message) => Err(Error::Unavailable(message.to_string())),
                };
                reply.send(delivered);
            });
            Ran {
                deliver,
                redo: None,
            }
        });
        let leading = {
            let mut queue = lock(&self.queue);
            queue.waiting.push(Waiting { work, lead });
            !mem::replace(&mut queue.leader_active, true)
        };
        if leading {
            self.lead_one_batch();
        }
        loop {
            match outcome.wait() {
                Message::Done(result) => return result,
                Message::Lead => self.lead_one_batch(),
                Message::Lost => return Err(lost_write()),
            }
        }
    }

    fn lead_one_batch(&self) {
        // Passes leadership on even if a write panics, so the queue never stalls.
        let hand_off = HandOff(self);
        let batch = mem::take(&mut lock(&self.queue).waiting);
        // Only one leader runs at a time, so this lock is never contended; a failed try_lock
        // would mean two leaders, a bug the tests must see.
        debug_assert!(
            !matches!(
                self.side.try_lock(),
                Err(std::sync::TryLockError::WouldBlock)
            ),
            "two group-commit leaders"
        );
        let mut side = lock(&self.side);
        let (deliveries, failure) = run_batch(&mut side, batch, &self.health, &self.commit_seconds);
        // The next batch can start while this one's callers are woken, one system call each.
        drop(side);
        drop(hand_off);
        for deliver in deliveries {
            deliver(failure.as_deref());
        }
    }
}

/// Runs every write of `batch` in one transaction and commits it, after the writes waiting to
/// be redone. Returns how to answer each caller, and the message every caller gets if the
/// batch failed. On success the batch's changes to the pending count are kept; the storage's
/// health is reported either way.
fn run_batch(
    side: &mut WriteSide,
    batch: Vec<Waiting>,
    health: &WriteHealth,
    commit_seconds: &Histogram,
) -> (Vec<Deliver>, Option<String>) {
    let connection = &side.connection;
    let transaction = match Transaction::begin(connection) {
        Ok(transaction) => transaction,
        Err(err) => {
            log::error!("cannot begin a write transaction: {err}");
            let message = format!(
                "the database could not start a transaction: {}",
                describe(&err.into())
            );
            health.failed(&message, Instant::now());
            let deliveries = batch
                .into_iter()
                .map(|waiting| (waiting.work)(None).deliver)
                .collect();
            return (deliveries, Some(message));
        }
    };
    let changes_before = connection.total_changes();
    let mut pending = side.pending;
    let committed_counts = &side.counts;
    // What this batch's writes changed in the per-queue counts.
    let mut batch_counts = Tally::default();
    let mut write_failure = None;
    // Some errors (disk full, I/O) make SQLite roll the whole transaction back by itself. The
    // writes after that must not run outside it, in autocommit.
    let mut rolled_back = false;
    // Redos to keep if this batch fails, and redos to keep in any case.
    let (mut redo_if_failed, mut redo_again) = (Vec::new(), Vec::new());
    let redos = mem::take(&mut side.redo);
    let redo_count = redos.len();
    for mut redo in redos {
        if rolled_back {
            redo_again.push(redo);
            continue;
        }
        let mut writer = Writer::new(connection, pending, committed_counts, &batch_counts);
        let redone = redo(&mut writer);
        let (pending_after, changes) = writer.finish();
        match redone {
            Ok(()) => {
                pending = pending_after;
                batch_counts.add_changes(&changes);
                redo_if_failed.push(redo);
            }
            Err(err) => match storage_failure(&err) {
                Some(message) => {
                    write_failure = write_failure.or(Some(message));
                    redo_again.push(redo);
                }
                None => log::error!("dropped a write that could not be redone: {err}"),
            },
        }
        rolled_back = connection.is_autocommit();
    }
    let deliveries: Vec<Deliver> = batch
        .into_iter()
        .map(|waiting| {
            if rolled_back {
                return (waiting.work)(None).deliver;
            }
            let mut writer = Writer::new(connection, pending, committed_counts, &batch_counts);
            let ran = (waiting.work)(Some(&mut writer));
            write_failure = write_failure.take().or(writer.storage_failure.take());
            // A failed write has already undone its changes of the counts.
            let (pending_after, changes) = writer.finish();
            pending = pending_after;
            batch_counts.add_changes(&changes);
            rolled_back = connection.is_autocommit();
            redo_if_failed.extend(ran.redo);
            ran.deliver
        })
        .collect();
    // The batch's changes of the counts join its transaction, as its last statements.
    if !rolled_back && !batch_counts.is_empty() {
        if let Err(err) = batch_counts.add_to_table(connection) {
            log::error!("cannot add a batch's changes to queue_counts: {err}");
            let message = format!(
                "the database could not count this batch's jobs: {}",
                describe(&err.into())
            );
            if !connection.is_autocommit() {
                let _ = connection.execute_batch("ROLLBACK");
            }
            write_failure = write_failure.or(Some(message));
            rolled_back = true;
        }
    }
    let started = Instant::now();
    let failure = if rolled_back {
        transaction.abandon();
        Some(write_failure.clone().unwrap_or_else(|| {
            "the database could not commit: a write error rolled the transaction back".into()
        }))
    } else {
        transaction
            .commit()
            .err()
            .map(|err| format!("the database could not commit: {}", describe(&err.into())))
    };
    // Only a commit's time: an abandoned batch took none and would pull the figure down.
    if !rolled_back {
        commit_seconds.observe(started.elapsed());
    }
    log::trace!(
        "committed {} write(s) in {:?}",
        deliveries.len(),
        started.elapsed()
    );
    let now = Instant::now();
    match (&failure, &write_failure) {
        (Some(message), _) => {
            log::error!(
                "group commit of {} write(s) failed: {message}",
                deliveries.len()
            );
            health.failed(message, now);
        }
        (None, Some(message)) => health.failed(message, now),
        (None, None) => {
            if connection.total_changes() > changes_before {
                health.committed(now);
            }
        }
    }
    if failure.is_some() {
        redo_again.append(&mut redo_if_failed);
        if !redo_again.is_empty() {
            log::warn!(
                "{} write(s) already answered wait to be redone once the database can write",
                redo_again.len()
            );
        }
    } else {
        // A write that failed alone still leaves the others committed, with their count changes.
        side.pending = pending;
        side.counts.merge(&batch_counts);
        let redone = redo_count - redo_again.len();
        if redone > 0 {
            log::info!("{redone} write(s) answered before a failed commit are now committed");
        }
    }
    side.redo = redo_again;
    (deliveries, failure)
}

/// The message for an error of the storage itself, which the caller cannot fix by changing its
/// request; `None` for any other error.
fn storage_failure(err: &Error) -> Option<String> {
    use StorageFailure::*;
    match err {
        Error::Storage {
            kind: Full | Io | ReadOnly | CannotOpen,
            ..
        } => Some(format!("the database cannot write: {}", describe(err))),
        _ => None,
    }
}

/// A storage error in words a client can act on.
fn describe(err: &Error) -> String {
    match err {
        Error::Storage {
            kind: StorageFailure::Full,
            ..
        } => "the disk is full; nothing can be stored until space is freed".to_string(),
        Error::Storage { detail, .. } => detail.clone(),
        other => other.to_string(),
    }
}

/// A `BEGIN IMMEDIATE` transaction run through cached statements (rusqlite's own transaction
/// parses its SQL on every use, a cost paid once per batch on the hottest path). Rolls back
/// when dropped unfinished, e.g. while a panic unwinds.
struct Transaction<'c> {
    connection: &'c Connection,
    finished: bool,
}

impl<'c> Transaction<'c> {
    fn begin(connection: &'c Connection) -> rusqlite::Result<Transaction<'c>> {
        connection.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        Ok(Transaction {
            connection,
            finished: false,
        })
    }

    fn commit(mut self) -> rusqlite::Result<()> {
        self.finished = true;
        let committed = self
            .connection
            .prepare_cached("COMMIT")
            .and_then(|mut commit| commit.execute([]));
        if committed.is_err() {
            self.rollback();
        }
        committed.map(|_| ())
    }

    /// SQLite already ended the transaction; nothing to commit or roll back.
    fn abandon(mut self) {
        self.finished = true;
    }

    fn rollback(&self) {
        if !self.connection.is_autocommit() {
            let _ = self.connection.execute_batch("ROLLBACK");
        }
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.rollback();
        }
    }
}

/// On drop, wakes the next queued caller to lead, or records that no leader is running.
struct HandOff<'a>(&'a GroupCommit);

impl Drop for HandOff<'_> {
    fn drop(&mut self) {
        let mut queue = lock(&self.0.queue);
        match queue.waiting.first() {
            Some(next) => (next.lead)(),
            None => queue.leader_active = false,
        }
    }
}

/// Runs several statements as one write: on error their changes (and their changes to the
/// pending count) are undone and the rest of the batch stands. If they cannot be undone alone,
/// the whole transaction is rolled back, so that none of them can commit.
pub fn in_savepoint<T>(
    writer: &mut Writer<'_>,
    write: impl FnOnce(&mut Writer<'_>) -> Result<T>,
) -> Result<T> {
    writer.prepare_cached("SAVEPOINT write")?.execute([])?;
    let (changes_before, pending_before) = (writer.count_changes.len(), writer.pending_change);
    let result = write(writer);
    if result.is_err() {
        writer.undo_changes(changes_before, pending_before);
        // SQLite may have ended the transaction already (disk full, I/O): nothing to undo.
        if !writer.is_autocommit() {
            let undone = writer
                .prepare_cached("ROLLBACK TO write")
                .and_then(|mut statement| statement.execute([]));
            if let Err(err) = undone {
                abandon_transaction(writer, &err);
                return result;
            }
        }
    }
    if !writer.is_autocommit() {
        let released = writer
            .prepare_cached("RELEASE write")
            .and_then(|mut statement| statement.execute([]));
        if let Err(err) = released {
            abandon_transaction(writer, &err);
            return Err(err.into());
        }
    }
    result
}

/// Ends the batch's transaction with a rollback; group commit sees it and fails the batch.
fn abandon_transaction(connection: &Connection, err: &rusqlite::Error) {
    log::error!("cannot undo a failed write on its own ({err}); rolling back its batch");
    if !connection.is_autocommit() {
        let _ = connection.execute_batch("ROLLBACK");
    }
}

fn lost_write() -> Error {
    Error::Internal("a write was lost: its batch leader panicked".into())
}

/// Poisoning only means another thread panicked; the data behind the store's locks stays valid
/// (an unfinished transaction rolls back when dropped and the pending count is only updated
/// after a commit, a reply slot is a plain `Option`), so the lock is taken over.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;

    /// A group commit over a one-table database file, deleted on drop.
    struct Table {
        commit: GroupCommit,
        _dir: crate::store::test_dir::TestDir,
    }

    impl std::ops::Deref for Table {
        type Target = GroupCommit;
        fn deref(&self) -> &GroupCommit {
            &self.commit
        }
    }

    fn table() -> Table {
        // A file with synced commits makes batches slow enough for writers to pile up.
        let dir = crate::store::test_dir::TestDir::new("group-commit");
        let connection = Connection::open(dir.path().join("t.db")).unwrap();
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
                 CREATE TABLE t (n INTEGER PRIMARY KEY);
                 CREATE TABLE queue_counts (queue TEXT NOT NULL, status TEXT NOT NULL,
                    n INTEGER NOT NULL, PRIMARY KEY (queue, status)) WITHOUT ROWID",
            )
            .unwrap();
        Table {
            commit: GroupCommit::new(
                connection,
                0,
                Tally::default(),
                Arc::new(Histogram::new(&[1.0])),
            ),
            _dir: dir,
        }
    }

    fn count(commit: &GroupCommit) -> i64 {
        commit
            .write(|c| Ok(c.query_row("SELECT count(*) FROM t", [], |row| row.get(0))?))
            .unwrap()
    }

    #[test]
    fn concurrent_writers_each_get_their_own_result() {
        let commit = Arc::new(table());
        let threads: Vec<_> = (0..16)
            .map(|thread_number| {
                let commit = Arc::clone(&commit);
                thread::spawn(move || {
                    for i in 0..100i64 {
                        let n = thread_number * 1000 + i;
                        let stored = commit
                            .write(move |c| {
                                c.execute("INSERT INTO t (n) VALUES (?1)", [n])?;
                                Ok(n)
                            })
                            .unwrap();
                        assert_eq!(stored, n);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(count(&commit), 16 * 100);
    }

    #[test]
    fn a_failing_write_is_undone_alone() {
        let commit = table();
        commit
            .write(|c| Ok(c.execute("INSERT INTO t (n) VALUES (1)", [])?))
            .unwrap();
        let duplicate = commit.write(|c| {
            in_savepoint(c, |c| {
                c.execute("INSERT INTO t (n) VALUES (2)", [])?;
                Ok(c.execute("INSERT INTO t (n) VALUES (1)", [])?)
            })
        });
        assert!(matches!(
            duplicate,
            Err(Error::Storage {
                kind: StorageFailure::Other,
                ..
            })
        ));
        assert_eq!(count(&commit), 1);
    }

    #[test]
    fn the_pending_count_moves_only_with_writes_that_commit() {
        let commit = table();
        let seen = commit
            .write(|w| {
                w.moved_many("q", None, Some(JobStatus::Pending), 2);
                Ok(w.pending_jobs())
            })
            .unwrap();
        assert_eq!((seen, commit.pending()), (2, 2));
        let failed = commit.write(|w| {
            w.moved_many("q", None, Some(JobStatus::Pending), 5);
            Err::<(), _>(Error::Internal("refused".into()))
        });
        assert!(failed.is_err());
        let undone = commit.write(|w| {
            in_savepoint(w, |w| {
                w.moved("q", Some(JobStatus::Pending), None);
                w.execute("INSERT INTO t (n) VALUES (1)", [])?;
                Ok(w.execute("INSERT INTO t (n) VALUES (1)", [])?)
            })
        });
        assert!(undone.is_err());
        assert_eq!(commit.pending(), 2);
        assert_eq!(commit.counts().get("q", JobStatus::Pending), 2);
        assert_eq!(table_count(&commit, "q", "pending"), 2);
    }

    /// A count in `queue_counts`, read by a write (so as committed by the batches before).
    fn table_count(commit: &GroupCommit, queue: &'static str, status: &'static str) -> i64 {
        commit
            .write(move |c| {
                Ok(c.query_row(
                    "SELECT coalesce(sum(n), 0) FROM queue_counts WHERE queue = ?1 AND status = ?2",
                    [queue, status],
                    |row| row.get(0),
                )?)
            })
            .unwrap()
    }

    #[test]
    fn a_redone_write_counts_once_in_the_batch_that_commits_it() {
        let commit = table();
        // Answered, then its batch fails: its count changes must not stay.
        let answered = commit.write_unsynced_redone(
            |w| {
                w.execute("INSERT INTO t (n) VALUES (7)", [])?;
                w.moved("q", Some(JobStatus::Running), Some(JobStatus::Success));
                Ok(w.execute_batch("ROLLBACK")?)
            },
            |w| {
                // Like a finish's redo: acts (and counts) only if the row is not there yet.
                if w.execute("INSERT OR IGNORE INTO t (n) VALUES (7)", [])? > 0 {
                    w.moved("q", Some(JobStatus::Running), Some(JobStatus::Success));
                }
                Ok(())
            },
        );
        assert!(answered.is_ok());
        assert_eq!(commit.counts(), Tally::default());
        // The next batch redoes it, and counts it, once.
        assert_eq!(table_count(&commit, "q", "success"), 0);
        assert_eq!(table_count(&commit, "q", "success"), 1);
        assert_eq!(table_count(&commit, "q", "running"), -1);
        assert_eq!(commit.counts().get("q", JobStatus::Success), 1);
        assert_eq!(count(&commit), 1);
        assert_eq!(table_count(&commit, "q", "success"), 1);
    }

    #[test]
    fn a_write_sees_the_counts_of_the_earlier_writes_of_its_batch_and_its_own() {
        let commit = Arc::new(table());
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let commit = Arc::clone(&commit);
                thread::spawn(move || {
                    // Start a job only while fewer than 5 run, like a queue's concurrency.
                    commit.write(|w| {
                        w.moved("capped", None, Some(JobStatus::Pending));
                        if w.job_count("capped", JobStatus::Running) >= 5 {
                            return Ok(false);
                        }
                        w.moved("capped", Some(JobStatus::Pending), Some(JobStatus::Running));
                        Ok(true)
                    })
                })
            })
            .collect();
        let started = threads
            .into_iter()
            .map(|thread| thread.join().unwrap().unwrap())
            .filter(|started| *started)
            .count();
        let counts = commit.counts();
        assert_eq!(started, 5);
        assert_eq!(counts.get("capped", JobStatus::Running), 5);
        assert_eq!(counts.get("capped", JobStatus::Pending), 11);
        assert_eq!(commit.pending(), 11);
        assert_eq!(table_count(&commit, "capped", "pending"), 11);
        assert_eq!(table_count(&commit, "capped", "running"), 5);
    }

    #[test]
    fn a_write_answered_before_its_batch_failed_is_redone_in_the_next_batch() {
        let commit = table();
        // Answered at once, then its batch fails: the write itself ends the transaction.
        let answered = commit.write_unsynced_redone(
            |w| {
                w.execute("INSERT INTO t (n) VALUES (7)", [])?;
                Ok(w.execute_batch("ROLLBACK")?)
            },
            |w| {
                w.execute("INSERT OR IGNORE INTO t (n) VALUES (7)", [])?;
                Ok(())
            },
        );
        assert!(answered.is_ok());
        assert!(commit.health().failing(Instant::now()));
        assert_eq!(count(&commit), 1);
        // Redone once, not again.
        assert_eq!(count(&commit), 1);
        assert!(lock(&commit.side).redo.is_empty());
    }

    #[test]
    fn writes_of_one_batch_see_each_others_count() {
        let commit = Arc::new(table());
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let commit = Arc::clone(&commit);
                thread::spawn(move || {
                    // Take a slot only while fewer than 10 are taken, like a limited queue.
                    commit.write(|w| {
                        if w.pending_jobs() >= 10 {
                            return Ok(false);
                        }
                        w.moved("q", None, Some(JobStatus::Pending));
                        Ok(true)
                    })
                })
            })
            .collect();
        let taken = threads
            .into_iter()
            .map(|thread| thread.join().unwrap().unwrap())
            .filter(|taken| *taken)
            .count();
        assert_eq!((taken, commit.pending()), (10, 10));
    }
}
