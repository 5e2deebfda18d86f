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
//! Group commit also keeps the number of pending jobs, because only here is it known which
//! writes commit: each write says by how much it changed the count ([`Writer`]), and the
//! changes of a batch count only once that batch has committed. A write that fails, or whose
//! batch fails, changes neither the database nor the count. And it reports to
//! [`WriteHealth`] each batch that the storage failed and each that committed changes.
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

use super::reply::{reply_slot, Message};
use super::write_health::WriteHealth;
use crate::error::{Error, Result, StorageFailure};
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

/// What one write works with: the batch's open transaction (through `Deref`), and the number
/// of pending jobs as that transaction sees it.
pub struct Writer<'c> {
    connection: &'c Connection,
    /// Pending jobs when this write began: committed, plus the earlier writes of its batch.
    pending_before: u64,
    /// How much this write has changed the number of pending jobs so far.
    pending_change: i64,
    /// The storage failure this write ran into, if any, as the message callers get.
    storage_failure: Option<String>,
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

    /// Records that this write made `change` more jobs pending (fewer when negative). Counts
    /// only if the write succeeds and its batch commits.
    pub fn pending_changed(&mut self, change: i64) {
        self.pending_change += change;
    }
}

impl GroupCommit {
    /// `pending` is the number of pending jobs in the database now.
    pub fn new(
        connection: Connection,
        pending: u64,
        commit_seconds: Arc<Histogram>,
    ) -> GroupCommit {
        GroupCommit {
            side: Mutex::new(WriteSide {
                connection,
                pending,
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
                    // A failed write changed nothing, the count included.
                    writer.pending_change = 0;
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
    let mut write_failure = None;
    // Some errors (disk full, I/O) make SQLite roll the whole transaction back by itself. The
    // writes after that must not run outside it, in autocommit.
    let mut rolled_back = false;
    let new_writer = |pending| Writer {
        connection,
        pending_before: pending,
        pending_change: 0,
        storage_failure: None,
    };
    // Redos to keep if this batch fails, and redos to keep in any case.
    let (mut redo_if_failed, mut redo_again) = (Vec::new(), Vec::new());
    let redos = mem::take(&mut side.redo);
    let redo_count = redos.len();
    for mut redo in redos {
        if rolled_back {
            redo_again.push(redo);
            continue;
        }
        let mut writer = new_writer(pending);
        match redo(&mut writer) {
            Ok(()) => {
                pending = writer.pending_jobs();
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
            let mut writer = new_writer(pending);
            let ran = (waiting.work)(Some(&mut writer));
            pending = writer.pending_jobs();
            write_failure = write_failure.take().or(writer.storage_failure);
            rolled_back = connection.is_autocommit();
            redo_if_failed.extend(ran.redo);
            ran.deliver
        })
        .collect();
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
    commit_seconds.observe(started.elapsed());
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
    let change_before = writer.pending_change;
    let result = write(writer);
    if result.is_err() {
        writer.pending_change = change_before;
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
                 CREATE TABLE t (n INTEGER PRIMARY KEY)",
            )
            .unwrap();
        Table {
            commit: GroupCommit::new(connection, 0, Arc::new(Histogram::new(&[1.0]))),
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
                w.pending_changed(2);
                Ok(w.pending_jobs())
            })
            .unwrap();
        assert_eq!((seen, commit.pending()), (2, 2));
        let failed = commit.write(|w| {
            w.pending_changed(5);
            Err::<(), _>(Error::Internal("refused".into()))
        });
        assert!(failed.is_err());
        let undone = commit.write(|w| {
            in_savepoint(w, |w| {
                w.pending_changed(-1);
                w.execute("INSERT INTO t (n) VALUES (1)", [])?;
                Ok(w.execute("INSERT INTO t (n) VALUES (1)", [])?)
            })
        });
        assert!(undone.is_err());
        assert_eq!(commit.pending(), 2);
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
                        w.pending_changed(1);
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
