//! Hearing of jobs other nodes queue: a thread with a connection of its own `LISTEN`s on
//! [`CHANNEL`]; every insert, manual retry and requeueing outcome sends a `pg_notify` in its
//! transaction, with the schema's name as payload (a channel is database-wide; several
//! deployments may share a database, each in its schema). Each notification for this schema
//! calls `on_queued`.
//!
//! Where `LISTEN` does not work (the connection fails, or a pooler in transaction mode drops
//! it), the thread warns once and calls `on_queued` every second instead, trying `LISTEN`
//! again now and then.

use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TryRecvError};
use log::{info, warn};
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};

use super::schema::quote_identifier;
use super::OnJobQueued;
use crate::error::{Error, Result};

/// The channel job notifications travel on.
pub const CHANNEL: &str = "minilambda_jobs";

/// How often `on_queued` is called while `LISTEN` is unavailable.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How long the listening thread blocks at a time before it checks whether to stop: a
/// store's drop (at the end of a shutdown) waits at most this long for the thread.
const WAIT_SLICE: Duration = Duration::from_millis(100);
/// How often `LISTEN` is tried again while it is unavailable.
const RELISTEN_INTERVAL: Duration = Duration::from_secs(30);
/// How long the listening connection may be silent before it is checked for life (a network
/// that drops packets silently shows nothing else).
const CHECK_INTERVAL: Duration = Duration::from_secs(30);

/// The listening thread; stopped and joined on drop.
pub struct Watcher {
    /// Dropped to stop the thread.
    stop: Option<Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl Watcher {
    pub fn start(
        config: postgres::Config,
        schema: String,
        on_queued: OnJobQueued,
    ) -> Result<Watcher> {
        let (stop, stopped) = bounded::<()>(0);
        let listener = Listener {
            config,
            schema,
            on_queued,
            stopped,
        };
        let handle = thread::Builder::new()
            .name("pg-listen".into())
            .spawn(move || listener.run())
            .map_err(|err| Error::Startup(format!("cannot start the LISTEN thread: {err}")))?;
        Ok(Watcher {
            stop: Some(stop),
            handle: Some(handle),
        })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop = None;
        if let Some(handle) = self.handle.take() {
            if handle.join().is_err() {
                log::error!("the LISTEN thread panicked");
            }
        }
    }
}

struct Listener {
    config: postgres::Config,
    schema: String,
    on_queued: OnJobQueued,
    stopped: Receiver<()>,
}

impl Listener {
    fn run(self) {
        // Whether the warning that this node polls instead has been logged.
        let mut polling = false;
        loop {
            match self.listen() {
                Ok(mut client) => {
                    if polling {
                        info!("listening for jobs queued by other nodes again");
                    }
                    // Anything queued while nobody listened.
                    (self.on_queued)();
                    match self.receive(&mut client) {
                        Ok(()) => return,
                        Err(err) => warn!(
                            "stopped listening for jobs queued by other nodes ({}); polling every second instead",
                            Error::from(err)
                        ),
                    }
                    polling = true;
                }
                Err(err) if !polling => {
                    warn!(
                        "cannot LISTEN for jobs queued by other nodes ({}); polling every second instead",
                        Error::from(err)
                    );
                    polling = true;
                }
                Err(_) => {}
            }
            if self.poll_for(RELISTEN_INTERVAL) {
                return;
            }
        }
    }

    fn listen(&self) -> Result<Client, postgres::Error> {
        let mut client = self.config.connect(NoTls)?;
        client.batch_execute(&format!("LISTEN {}", quote_identifier(CHANNEL)))?;
        Ok(client)
    }

    /// Calls `on_queued` for each notification of this schema until the store is dropped
    /// (`Ok`) or the connection fails.
    fn receive(&self, client: &mut Client) -> Result<(), postgres::Error> {
        let mut last_check = Instant::now();
        loop {
            if self.stop_requested() {
                return Ok(());
            }
            let started = Instant::now();
            let mut heard = false;
            {
                let mut notifications = client.notifications();
                let mut iter = notifications.timeout_iter(WAIT_SLICE);
                // Ends after a slice without a notification, or when the connection closes.
                while let Some(notification) = iter.next()? {
                    heard = true;
                    if notification.payload() == self.schema {
                        (self.on_queued)();
                    }
                    if self.stop_requested() {
                        return Ok(());
                    }
                }
            }
            // An iterator that ended early, with nothing heard, saw the connection close;
            // a silent connection is checked now and then.
            let early = !heard && started.elapsed() < WAIT_SLICE / 2;
            if early || client.is_closed() || last_check.elapsed() >= CHECK_INTERVAL {
                client.is_valid(Duration::from_secs(5))?;
                last_check = Instant::now();
            }
        }
    }

    /// Calls `on_queued` every second for `period`; `true` if the store was dropped meanwhile.
    fn poll_for(&self, period: Duration) -> bool {
        let until = Instant::now() + period;
        while Instant::now() < until {
            (self.on_queued)();
            match self.stopped.recv_timeout(POLL_INTERVAL) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return true,
            }
        }
        false
    }

    fn stop_requested(&self) -> bool {
        !matches!(self.stopped.try_recv(), Err(TryRecvError::Empty))
    }
}
