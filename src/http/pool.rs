//! Connection threads: each accepted connection is served start to end by one thread, so its
//! requests run in the order they were sent and nothing a slow or hostile client does can hold
//! up another connection. Threads are reused: a thread that finished a connection waits for
//! the next one, and a pool of them is kept ready so a burst of new connections does not wait
//! for thread start-up. `MAX_CONNECTIONS` bounds how many run at once.
//!
//! A connection whose thread has been inside tiny_http's head reading for longer than the head
//! patience (a head trickled in forever, or tiny_http 0.12.17's deadlock on an `HTTP/2.0`
//! request line) is abandoned: its slot is given to a new connection, and its thread closes
//! the connection if it ever comes back. Too many abandoned threads alive at once is reported
//! as a failure, so the server drains and exits for a restart instead of filling up with them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use log::{error, warn};

/// How long a thread beyond the ready pool waits for another connection before it ends.
const SPARE_THREAD_LINGER: Duration = Duration::from_secs(30);

/// Runs `serve` for each connection on its own thread, at most `max_open` at once.
pub struct ConnectionPool<C> {
    shared: Arc<Shared<C>>,
    /// Zero capacity: a send succeeds only when a thread is waiting for work.
    handoff: Sender<C>,
}

/// How long a connection may stay inside one head read, and what to do when too many did.
pub struct Patience {
    pub head: Duration,
    /// Abandoned threads alive at once before `give_up` is called.
    pub max_abandoned: usize,
    pub give_up: Box<dyn Fn(String) + Send + Sync>,
}

/// What the pool runs for each connection.
type Serve<C> = Box<dyn Fn(C, &Watch) + Send + Sync>;

struct Shared<C> {
    serve: Serve<C>,
    waiting: Receiver<C>,
    /// Connections being served now.
    open: AtomicUsize,
    max_open: usize,
    /// Threads alive, serving or waiting.
    threads: AtomicUsize,
    keep_ready: usize,
    names: AtomicUsize,
    patience: Patience,
    /// Every connection being served, by number, so a full pool can find abandoned ones.
    watched: Mutex<HashMap<u64, Arc<Progress>>>,
    next_connection: AtomicU64,
    abandoned: AtomicUsize,
    epoch: Instant,
}

const LIVE: u8 = 0;
const ABANDONED: u8 = 1;
const FINISHED: u8 = 2;

/// Where one connection's thread is, written by it and read by the pool.
struct Progress {
    /// Microseconds since the pool's epoch, plus one, at which the current head read began;
    /// zero while the thread is not reading a head.
    reading_since: AtomicU64,
    /// `LIVE`, then `ABANDONED` (by the pool) or `FINISHED` (by the thread), whichever first:
    /// the one that moves it off `LIVE` frees the slot.
    fate: AtomicU8,
}

/// A connection thread's side of its `Progress`.
pub struct Watch {
    progress: Arc<Progress>,
    epoch: Instant,
}

impl Watch {
    /// The thread is about to wait for the next request head.
    pub fn reading(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.progress
            .reading_since
            .store(now.saturating_add(1), Ordering::Release);
    }

    /// The head has arrived (or the read failed).
    pub fn done_reading(&self) {
        self.progress.reading_since.store(0, Ordering::Release);
    }

    /// The pool gave this connection's slot away: close it without serving more.
    pub fn abandoned(&self) -> bool {
        self.progress.fate.load(Ordering::Acquire) == ABANDONED
    }
}

/// What became of a connection handed to the pool.
#[derive(Debug, PartialEq, Eq)]
pub enum Handoff<C> {
    Served,
    /// Every slot is taken: the caller refuses the connection.
    Full(C),
}

impl<C: Send + 'static> ConnectionPool<C> {
    /// Starts `keep_ready` threads named `http-N` that wait for connections.
    pub fn start(
        max_open: usize,
        keep_ready: usize,
        patience: Patience,
        serve: impl Fn(C, &Watch) + Send + Sync + 'static,
    ) -> std::io::Result<ConnectionPool<C>> {
        let (handoff, waiting) = bounded(0);
        let pool = ConnectionPool {
            shared: Arc::new(Shared {
                serve: Box::new(serve),
                waiting,
                open: AtomicUsize::new(0),
                max_open,
                threads: AtomicUsize::new(0),
                keep_ready,
                names: AtomicUsize::new(0),
                patience,
                watched: Mutex::new(HashMap::new()),
                next_connection: AtomicU64::new(0),
                abandoned: AtomicUsize::new(0),
                epoch: Instant::now(),
            }),
            handoff,
        };
        for _ in 0..keep_ready {
            pool.spawn(None)?;
        }
        Ok(pool)
    }

    #[cfg(test)]
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::Acquire)
    }

    /// Serves `connection` on a waiting thread, or a new one; `Full` when `max_open` are open
    /// and none of them can be abandoned.
    pub fn dispatch(&self, connection: C) -> Handoff<C> {
        let shared = &self.shared;
        if !shared.take_slot() && (shared.abandon_stuck() == 0 || !shared.take_slot()) {
            return Handoff::Full(connection);
        }
        match self.handoff.try_send(connection) {
            Ok(()) => Handoff::Served,
            Err(TrySendError::Full(connection) | TrySendError::Disconnected(connection)) => {
                match self.spawn(Some(connection)) {
                    Ok(()) => Handoff::Served,
                    Err(err) => {
                        // The connection went with the failed closure and is closed.
                        shared.open.fetch_sub(1, Ordering::AcqRel);
                        error!("cannot start a connection thread: {err}");
                        Handoff::Served
                    }
                }
            }
        }
    }

    fn spawn(&self, first: Option<C>) -> std::io::Result<()> {
        let shared = Arc::clone(&self.shared);
        let number = shared.names.fetch_add(1, Ordering::Relaxed) + 1;
        shared.threads.fetch_add(1, Ordering::AcqRel);
        let started = thread::Builder::new()
            .name(format!("http-{number}"))
            .spawn(move || connection_thread(&shared, first));
        if started.is_err() {
            self.shared.threads.fetch_sub(1, Ordering::AcqRel);
        }
        started.map(drop)
    }
}

impl<C> Shared<C> {
    fn take_slot(&self) -> bool {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.max_open).then_some(open + 1)
            })
            .is_ok()
    }

    /// Abandons every connection stuck in one head read for longer than the patience;
    /// returns how many slots that freed.
    fn abandon_stuck(&self) -> usize {
        let now = u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
        let patience = u64::try_from(self.patience.head.as_micros()).unwrap_or(u64::MAX);
        let mut freed = 0;
        for progress in self.watch_list().values() {
            let since = progress.reading_since.load(Ordering::Acquire);
            let stuck = since != 0 && now.saturating_sub(since - 1) > patience;
            if stuck
                && progress
                    .fate
                    .compare_exchange(LIVE, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                self.open.fetch_sub(1, Ordering::AcqRel);
                freed += 1;
            }
        }
        if freed > 0 {
            let alive = self.abandoned.fetch_add(freed, Ordering::AcqRel) + freed;
            warn!(
                "abandoned {freed} connection(s) stuck reading a request head for over {:?}; {alive} abandoned thread(s) alive",
                self.patience.head
            );
            if alive > self.patience.max_abandoned {
                (self.patience.give_up)(format!(
                    "{alive} connection threads are stuck inside tiny_http's head reading"
                ));
            }
        }
        freed
    }

    fn watch_list(&self) -> MutexGuard<'_, HashMap<u64, Arc<Progress>>> {
        // The map stays consistent whatever panicked while holding it.
        self.watched.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn connection_thread<C>(shared: &Shared<C>, first: Option<C>) {
    if let Some(connection) = first {
        serve_one(shared, connection);
    }
    loop {
        match shared.waiting.recv_timeout(SPARE_THREAD_LINGER) {
            Ok(connection) => serve_one(shared, connection),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                let spare =
                    shared
                        .threads
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |threads| {
                            (threads > shared.keep_ready).then(|| threads - 1)
                        });
                if spare.is_ok() {
                    return;
                }
            }
        }
    }
    shared.threads.fetch_sub(1, Ordering::AcqRel);
}

fn serve_one<C>(shared: &Shared<C>, connection: C) {
    let number = shared.next_connection.fetch_add(1, Ordering::Relaxed);
    let progress = Arc::new(Progress {
        reading_since: AtomicU64::new(0),
        fate: AtomicU8::new(LIVE),
    });
    shared.watch_list().insert(number, Arc::clone(&progress));
    let watch = Watch {
        progress: Arc::clone(&progress),
        epoch: shared.epoch,
    };
    // A panic outside a request (a request's own panic is caught where it is handled) must
    // not leak the slot or the thread.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        (shared.serve)(connection, &watch)
    }));
    shared.watch_list().remove(&number);
    let finished =
        progress
            .fate
            .compare_exchange(LIVE, FINISHED, Ordering::AcqRel, Ordering::Acquire);
    if finished.is_ok() {
        shared.open.fetch_sub(1, Ordering::AcqRel);
    } else {
        shared.abandoned.fetch_sub(1, Ordering::AcqRel);
    }
    if outcome.is_err() {
        warn!("a connection thread panicked; the connection was closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patience(head: Duration) -> Patience {
        Patience {
            head,
            max_abandoned: 1,
            give_up: Box::new(|_| {}),
        }
    }

    #[test]
    fn a_connection_stuck_reading_a_head_gives_its_slot_away_and_then_closes() {
        let (given_up_tx, given_up) = crossbeam_channel::unbounded::<String>();
        let (release_tx, release) = crossbeam_channel::unbounded::<()>();
        let (served_tx, served) = crossbeam_channel::unbounded::<(u32, bool)>();
        let patience = Patience {
            head: Duration::from_millis(50),
            max_abandoned: 1,
            give_up: Box::new(move |why| {
                let _ = given_up_tx.send(why);
            }),
        };
        let pool = ConnectionPool::start(1, 1, patience, move |n: u32, watch: &Watch| {
            // Connection 1 and 2 hang "inside a head read" until released.
            if n < 3 {
                watch.reading();
                let _ = release.recv();
                watch.done_reading();
            }
            let _ = served_tx.send((n, watch.abandoned()));
        })
        .unwrap();
        assert_eq!(pool.dispatch(1), Handoff::Served);
        // Not stuck for long enough yet: the pool is full.
        assert_eq!(pool.dispatch(9), Handoff::Full(9));
        thread::sleep(Duration::from_millis(100));
        assert_eq!(
            pool.dispatch(2),
            Handoff::Served,
            "the stuck connection's slot"
        );
        assert!(
            given_up.try_recv().is_err(),
            "one abandoned thread is allowed"
        );
        thread::sleep(Duration::from_millis(100));
        assert_eq!(pool.dispatch(3), Handoff::Served);
        assert!(
            given_up.recv_timeout(Duration::from_secs(5)).is_ok(),
            "two are too many"
        );
        release_tx.send(()).unwrap();
        release_tx.send(()).unwrap();
        let mut outcomes: Vec<(u32, bool)> = (0..3)
            .map(|_| served.recv_timeout(Duration::from_secs(5)).unwrap())
            .collect();
        outcomes.sort();
        assert_eq!(outcomes, vec![(1, true), (2, true), (3, false)]);
    }

    #[test]
    fn connections_beyond_the_cap_are_handed_back_and_slots_free_up() {
        let (release_tx, release) = crossbeam_channel::unbounded::<()>();
        let (served_tx, served) = crossbeam_channel::unbounded::<u32>();
        let pool = ConnectionPool::start(
            2,
            1,
            patience(Duration::from_secs(3600)),
            move |n: u32, _: &Watch| {
                let _ = served_tx.send(n);
                let _ = release.recv();
            },
        )
        .unwrap();
        assert_eq!(pool.dispatch(1), Handoff::Served);
        assert_eq!(pool.dispatch(2), Handoff::Served);
        assert_eq!(pool.dispatch(3), Handoff::Full(3));
        let mut got = vec![
            served.recv_timeout(Duration::from_secs(5)).unwrap(),
            served.recv_timeout(Duration::from_secs(5)).unwrap(),
        ];
        got.sort();
        assert_eq!(got, vec![1, 2]);
        release_tx.send(()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while pool.open_connections() > 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "the slot was not freed"
            );
            thread::yield_now();
        }
        assert_eq!(pool.dispatch(4), Handoff::Served);
        assert_eq!(served.recv_timeout(Duration::from_secs(5)).unwrap(), 4);
        release_tx.send(()).unwrap();
        release_tx.send(()).unwrap();
    }
}
