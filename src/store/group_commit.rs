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

use std::mem;
use std::sync::{Mutex, MutexGuard};

use rusqlite::Connection;

use super::reply::{reply_slot, Message};
use crate::error::{Error, Result};

/// Runs a queued write against the batch's transaction (`None` if it could not begin) and
/// returns how to deliver the write's result once the commit's fate is known.
type Work = Box<dyn FnOnce(Option<&Connection>) -> Deliver + Send>;
/// Sends the result, or the commit's failure (`Some(message)`), to the waiting caller.
type Deliver = Box<dyn FnOnce(Option<&str>) + Send>;

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

pub struct GroupCommit {
    /// The write connection. Only the current leader locks it, for the length of one batch.
    connection: Mutex<Connection>,
    /// Writes waiting for the next batch, and whether a leader is running one.
    queue: Mutex<Queue>,
}

impl GroupCommit {
    pub fn new(connection: Connection) -> GroupCommit {
        GroupCommit {
            connection: Mutex::new(connection),
            queue: Mutex::new(Queue::default()),
        }
    }

    /// Runs `write` in the next batch and returns its result once that batch is committed.
    pub fn write<T, F>(&self, write: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        self.enqueue(write, Answer::AfterSync)
    }

    /// Like [`write`](Self::write), but answers as soon as the write has run in its batch,
    /// without waiting for the sync. For writes whose loss in a crash is already handled (a
    /// job's claim or outcome: crash recovery reruns the job). The write still commits with
    /// its batch; a caller that happens to lead the batch still waits for the sync.
    pub fn write_unsynced<T, F>(&self, write: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        self.enqueue(write, Answer::BeforeSync)
    }

    fn enqueue<T, F>(&self, write: F, answer: Answer) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (reply, outcome) = reply_slot::<T>();
        let lead_reply = reply.leader_call();
        let lead = Box::new(move || lead_reply.call());
        let work: Work = Box::new(move |connection| {
            let result = match connection {
                Some(connection) => write(connection),
                None => Err(Error::Unavailable(
                    "the database could not start a transaction".into(),
                )),
            };
            if answer == Answer::BeforeSync {
                reply.send(result);
                return Box::new(|_| {});
            }
            Box::new(move |commit_failure| {
                let delivered = match commit_failure {
                    None => result,
                    Some(message) => Err(Error::Unavailable(format!(
                        "the database could not commit: {message}"
                    ))),
                };
                reply.send(delivered);
            })
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
                self.connection.try_lock(),
                Err(std::sync::TryLockError::WouldBlock)
            ),
            "two group-commit leaders"
        );
        let connection = lock(&self.connection);
        let (deliveries, failure) = run_batch(&connection, batch);
        // The next batch can start while this one's callers are woken, one system call each.
        drop(connection);
        drop(hand_off);
        for deliver in deliveries {
            deliver(failure.as_deref());
        }
    }
}

/// Runs every write of `batch` in one transaction and commits it. Returns how to answer each
/// caller, and the commit's failure if it failed.
fn run_batch(connection: &Connection, batch: Vec<Waiting>) -> (Vec<Deliver>, Option<String>) {
    let transaction = match Transaction::begin(connection) {
        Ok(transaction) => transaction,
        Err(err) => {
            let message = err.to_string();
            log::error!("cannot begin a write transaction: {message}");
            let deliveries = batch
                .into_iter()
                .map(|waiting| (waiting.work)(None))
                .collect();
            return (deliveries, Some(message));
        }
    };
    // Some errors (disk full, I/O) make SQLite roll the whole transaction back by itself. The
    // writes after that must not run outside it, in autocommit.
    let mut rolled_back = false;
    let deliveries: Vec<Deliver> = batch
        .into_iter()
        .map(|waiting| {
            if rolled_back {
                return (waiting.work)(None);
            }
            let deliver = (waiting.work)(Some(connection));
            rolled_back = connection.is_autocommit();
            deliver
        })
        .collect();
    let started = std::time::Instant::now();
    let failure = if rolled_back {
        transaction.abandon();
        Some("the transaction was rolled back by a write error".to_string())
    } else {
        transaction.commit().err().map(|err| err.to_string())
    };
    log::trace!(
        "committed {} write(s) in {:?}",
        deliveries.len(),
        started.elapsed()
    );
    if let Some(message) = &failure {
        log::error!(
            "group commit of {} write(s) failed: {message}",
            deliveries.len()
        );
    }
    (deliveries, failure)
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

/// Runs several statements as one write: on error their changes are undone and the rest of
/// the batch stands.
pub fn in_savepoint<T>(
    connection: &Connection,
    write: impl FnOnce(&Connection) -> Result<T>,
) -> Result<T> {
    connection.prepare_cached("SAVEPOINT write")?.execute([])?;
    let result = write(connection);
    if result.is_err() {
        connection
            .prepare_cached("ROLLBACK TO write")?
            .execute([])?;
    }
    connection.prepare_cached("RELEASE write")?.execute([])?;
    result
}

fn lost_write() -> Error {
    Error::Internal("a write was lost: its batch leader panicked".into())
}

/// Poisoning only means another thread panicked; the data behind the store's locks stays valid
/// (an unfinished transaction rolls back when dropped, a reply slot is a plain `Option`), so
/// the lock is taken over.
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
            commit: GroupCommit::new(connection),
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
        assert!(matches!(duplicate, Err(Error::Database(_))));
        assert_eq!(count(&commit), 1);
    }
}
