//! Connection threads: each accepted connection is served start to end by one thread, so its
//! requests run in the order they were sent and nothing a slow or hostile client does can hold
//! up another connection. Threads are reused: a thread that finished a connection waits for
//! the next one, and a pool of them is kept ready so a burst of new connections does not wait
//! for thread start-up. `MAX_CONNECTIONS` bounds how many run at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

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

struct Shared<C> {
    serve: Box<dyn Fn(C) + Send + Sync>,
    waiting: Receiver<C>,
    /// Connections being served now.
    open: AtomicUsize,
    max_open: usize,
    /// Threads alive, serving or waiting.
    threads: AtomicUsize,
    keep_ready: usize,
    names: AtomicUsize,
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
        serve: impl Fn(C) + Send + Sync + 'static,
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

    /// Serves `connection` on a waiting thread, or a new one; `Full` when `max_open` are open.
    pub fn dispatch(&self, connection: C) -> Handoff<C> {
        let shared = &self.shared;
        let taken = shared
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < shared.max_open).then_some(open + 1)
            });
        if taken.is_err() {
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
    // A panic outside a request (a request's own panic is caught where it is handled) must
    // not leak the slot or the thread.
    let outcome =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (shared.serve)(connection)));
    shared.open.fetch_sub(1, Ordering::AcqRel);
    if outcome.is_err() {
        warn!("a connection thread panicked; the connection was closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_beyond_the_cap_are_handed_back_and_slots_free_up() {
        let (release_tx, release) = crossbeam_channel::unbounded::<()>();
        let (served_tx, served) = crossbeam_channel::unbounded::<u32>();
        let pool = ConnectionPool::start(2, 1, move |n: u32| {
            let _ = served_tx.send(n);
            let _ = release.recv();
        })
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
