//! Telling other nodes of queued jobs, and hearing of theirs. After an insert, a manual retry
//! or a requeueing outcome has committed, the [`Announcer`] sends one `pg_notify` on
//! [`CHANNEL`] from a connection and thread of its own, with the schema's name as payload (a
//! channel is database-wide; several deployments may share a database, each in its schema).
//! Announcements asked for while one is being sent become one more, so a burst of submits
//! costs a notification or two, and no submit's transaction notifies: PostgreSQL holds a
//! database-wide lock from a notifying transaction's commit until it is flushed, which would
//! make every submit wait for every other (measured: 845 against 5,080 inserts/s).
//!
//! The [`Watcher`]'s thread, with a connection of its own, `LISTEN`s; each notification for
//! this schema calls `on_queued`.
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
use super::statements::NOTIFY_QUEUED;
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
/// How often the listener checks that notifications reach it, by sending itself one (a network
/// that drops packets silently, or a pooler that drops the `LISTEN`, shows nothing else).
const CHECK_INTERVAL: Duration = Duration::from_secs(30);
/// How long the listener waits for its own notification before it polls instead.
const PROBE_PATIENCE: Duration = Duration::from_secs(5);

/// The thread that sends the notifications; it ends when the announcer is dropped.
pub struct Announcer {
    /// One slot: a request made while one waits is already covered by it.
    requests: Sender<()>,
}

impl Announcer {
    pub fn start(config: postgres::Config) -> Result<Announcer> {
        let (requests, requested) = bounded::<()>(1);
        thread::Builder::new()
            .name("pg-notify".into())
            .spawn(move || announce(&config, &requested))
            .map_err(|err| Error::Startup(format!("cannot start the NOTIFY thread: {err}")))?;
        Ok(Announcer { requests })
    }

    /// Asks for one notification to the other nodes, soon; never blocks.
    pub fn job_queued(&self) {
        // Full: a notification is about to be sent, and it covers this job too.
        let _ = self.requests.try_send(());
    }
}

/// Sends one notification per request, connecting when it has none and again after a failure
/// (a lost notification costs the other nodes the wait until they poll or are woken by the
/// next one; their idle workers look at the queue at least once a minute).
fn announce(config: &postgres::Config, requested: &Receiver<()>) {
    let mut client: Option<Client> = None;
    let mut warned = false;
    while requested.recv().is_ok() {
        let sent = match client.as_mut() {
            Some(connected) => connected.batch_execute(NOTIFY_QUEUED),
            None => config.connect(NoTls).and_then(|mut connected| {
                let sent = connected.batch_execute(NOTIFY_QUEUED);
                client = Some(connected);
                sent
            }),
        };
        match sent {
            Ok(()) => warned = false,
            Err(err) => {
                client = None;
                if !warned {
                    warn!(
                        "cannot notify other nodes of a queued job ({}); they find it when they next look",
                        Error::from(err)
                    );
                    warned = true;
                }
            }
        }
    }
}

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
        let listen = format!("LISTEN {}", quote_identifier(CHANNEL));
        Watcher::start_listening_with(config, schema, on_queued, listen)
    }

    /// `start`, with `listen` as the statement that should make notifications arrive: a
    /// test gives one that does not, as a pooler in transaction mode would.
    pub(super) fn start_listening_with(
        config: postgres::Config,
        schema: String,
        on_queued: OnJobQueued,
        listen: String,
    ) -> Result<Watcher> {
        let (stop, stopped) = bounded::<()>(0);
        let listener = Listener {
            config,
            probe: format!("{schema} probe {}", std::process::id()),
            schema,
            on_queued,
            stopped,
            listen,
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
    listen: String,
    /// The payload of the notification this listener sends itself, to learn that
    /// notifications reach it.
    probe: String,
}

/// Why listening ended.
enum Deaf {
    Failed(postgres::Error),
    /// The probe did not come back: `LISTEN` was accepted, but nothing arrives (a pooler in
    /// transaction mode passes the statement to a server connection it then gives to others).
    Unheard,
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
                        Err(Deaf::Failed(err)) => warn!(
                            "stopped listening for jobs queued by other nodes ({}); polling every second instead",
                            Error::from(err)
                        ),
                        Err(Deaf::Unheard) if !polling => warn!(
                            "notifications from the database do not arrive (a connection pooler in transaction mode?); polling every second instead"
                        ),
                        Err(Deaf::Unheard) => {}
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
        client.batch_execute(&self.listen)?;
        Ok(client)
    }

    /// Calls `on_queued` for each notification of this schema until the store is dropped
    /// (`Ok`), the connection fails, or a probe does not come back. A probe goes out at the
    /// start and then every `CHECK_INTERVAL`, which also checks a silent connection for life.
    fn receive(&self, client: &mut Client) -> Result<(), Deaf> {
        let mut probe_sent = self.send_probe(client)?;
        let mut probe_heard = false;
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
                while let Some(notification) = iter.next().map_err(Deaf::Failed)? {
                    heard = true;
                    if notification.payload() == self.probe {
                        probe_heard = true;
                    } else if notification.payload() == self.schema {
                        (self.on_queued)();
                    }
                    if self.stop_requested() {
                        return Ok(());
                    }
                }
            }
            if !probe_heard && probe_sent.elapsed() >= PROBE_PATIENCE {
                return Err(Deaf::Unheard);
            }
            // An iterator that ended early, with nothing heard, saw the connection close.
            let early = !heard && started.elapsed() < WAIT_SLICE / 2;
            if early || client.is_closed() {
                client
                    .is_valid(Duration::from_secs(5))
                    .map_err(Deaf::Failed)?;
            }
            if probe_heard && probe_sent.elapsed() >= CHECK_INTERVAL {
                probe_sent = self.send_probe(client)?;
                probe_heard = false;
            }
        }
    }

    fn send_probe(&self, client: &mut Client) -> Result<Instant, Deaf> {
        let sent = Instant::now();
        client
            .execute(
                "SELECT pg_notify($1, $2)",
                &[&CHANNEL, &self.probe.as_str()],
            )
            .map_err(Deaf::Failed)?;
        Ok(sent)
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
