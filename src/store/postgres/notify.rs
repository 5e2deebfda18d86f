//! Telling other nodes of queued and ended jobs, and hearing of theirs. After an insert, a
//! manual retry or a requeueing outcome has committed, the [`Announcer`] sends one
//! `pg_notify` on [`CHANNEL`] from a connection and thread of its own, with the schema's name
//! as payload (a channel is database-wide; several deployments may share a database, each in
//! its schema). Announcements asked for while one is being sent become one more, so a burst
//! of submits costs a notification or two, and no submit's transaction notifies: PostgreSQL
//! holds a database-wide lock from a notifying transaction's commit until it is flushed,
//! which would make every submit wait for every other (measured: 845 against 5,080
//! inserts/s).
//!
//! The ids of jobs that ended here (`Store::job_ended`) go the same way on [`ENDED_CHANNEL`],
//! for the requests waiting on them elsewhere: those gathered while a round is sent go in the
//! next, several ids to a notification (`ids:schema`, under PostgreSQL's 8,000-byte limit).
//! Too many gathered at once become one `*:schema`: "any job may have ended".
//!
//! The [`Watcher`]'s thread, with a connection of its own, `LISTEN`s on both; each
//! notification for this schema calls `on_queued` or `on_ended`.
//!
//! Where `LISTEN` does not work (the connection fails, or a pooler in transaction mode drops
//! it), the thread warns once and calls `on_queued`, and `on_ended` with "any job", every
//! second instead, trying `LISTEN` again now and then.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
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
use crate::store::{EndedElsewhere, OnEndedElsewhere};

/// The channel job notifications travel on.
pub const CHANNEL: &str = "minilambda_jobs";
/// The channel the ids of ended jobs travel on.
pub const ENDED_CHANNEL: &str = "minilambda_ended";
/// Sends each payload of `$1` on the ended channel, in one round trip and one transaction.
const NOTIFY_ENDED: &str =
    "SELECT pg_notify('minilambda_ended', payload) FROM unnest($1::text[]) AS payload";
/// The longest payload sent: PostgreSQL refuses 8,000 bytes and more.
const MAX_PAYLOAD_BYTES: usize = 7_900;
/// Ended ids gathered for the next round beyond which it says "any job" instead.
const MAX_GATHERED_ENDS: usize = 10_000;
/// The payload that stands for "any job may have ended", before `:schema`.
const ANY_JOB: &str = "*";

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
    wanted: Arc<Wanted>,
}

/// What the next round sends, shared with the announcing thread.
#[derive(Default)]
struct Wanted {
    /// A job was queued: the next round notifies `CHANNEL`.
    queued: AtomicBool,
    /// Jobs that ended here since the last round.
    ended: Mutex<Ended>,
}

#[derive(Default)]
struct Ended {
    ids: Vec<String>,
    /// More than `MAX_GATHERED_ENDS` were gathered: send "any job" instead.
    overflowed: bool,
}

impl Announcer {
    /// Starts the thread; `schema` goes into the payloads of ended jobs.
    pub fn start(config: postgres::Config, schema: String) -> Result<Announcer> {
        let (requests, requested) = bounded::<()>(1);
        let wanted = Arc::new(Wanted::default());
        let sending = Arc::clone(&wanted);
        thread::Builder::new()
            .name("pg-notify".into())
            .spawn(move || announce(&config, &schema, &requested, &sending))
            .map_err(|err| Error::Startup(format!("cannot start the NOTIFY thread: {err}")))?;
        Ok(Announcer { requests, wanted })
    }

    /// Asks for one notification to the other nodes, soon; never blocks.
    pub fn job_queued(&self) {
        self.wanted.queued.store(true, Ordering::Release);
        self.request();
    }

    /// Tells the other nodes, soon, that the job `id` ended; never blocks.
    pub fn job_ended(&self, id: &str) {
        {
            let mut ended = self.wanted.ended();
            if ended.ids.len() < MAX_GATHERED_ENDS {
                ended.ids.push(id.to_string());
            } else {
                ended.overflowed = true;
            }
        }
        self.request();
    }

    fn request(&self) {
        // Full: a round is about to be sent, and it covers this request too.
        let _ = self.requests.try_send(());
    }
}

impl Wanted {
    fn ended(&self) -> std::sync::MutexGuard<'_, Ended> {
        // A plain list: whatever panicked while holding it left it usable.
        self.ended.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Sends one round of notifications per request, connecting when it has none and again after
/// a failure (a lost notification costs the other nodes the wait until they poll or are woken
/// by the next one; their idle workers look at the queue at least once a minute, and their
/// waiting requests answer when their wait runs out).
fn announce(config: &postgres::Config, schema: &str, requested: &Receiver<()>, wanted: &Wanted) {
    let mut client: Option<Client> = None;
    let mut warned = false;
    while requested.recv().is_ok() {
        let queued = wanted.queued.swap(false, Ordering::AcqRel);
        let ended = std::mem::take(&mut *wanted.ended());
        let payloads = ended_payloads(schema, &ended);
        let send = |client: &mut Client| -> Result<(), postgres::Error> {
            if queued {
                client.batch_execute(NOTIFY_QUEUED)?;
            }
            if !payloads.is_empty() {
                client.execute(NOTIFY_ENDED, &[&payloads])?;
            }
            Ok(())
        };
        let sent = match client.as_mut() {
            Some(connected) => send(connected),
            None => config.connect(NoTls).and_then(|mut connected| {
                let sent = send(&mut connected);
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
                        "cannot notify other nodes of queued or ended jobs ({}); they find them when they next look",
                        Error::from(err)
                    );
                    warned = true;
                }
            }
        }
    }
}

/// The payloads that tell of `ended`: as many ids to each as fit in `MAX_PAYLOAD_BYTES`,
/// separated by commas, then `:schema`; or `*:schema` when there were too many.
fn ended_payloads(schema: &str, ended: &Ended) -> Vec<String> {
    let suffix = format!(":{schema}");
    if ended.overflowed {
        return vec![format!("{ANY_JOB}{suffix}")];
    }
    let mut payloads = Vec::new();
    let mut ids = String::new();
    for id in &ended.ids {
        if !ids.is_empty() && ids.len() + 1 + id.len() + suffix.len() > MAX_PAYLOAD_BYTES {
            payloads.push(std::mem::take(&mut ids) + &suffix);
        }
        if !ids.is_empty() {
            ids.push(',');
        }
        ids.push_str(id);
    }
    if !ids.is_empty() {
        payloads.push(ids + &suffix);
    }
    payloads
}

/// What a payload on `ENDED_CHANNEL` says for `schema`: `None` when it is another schema's.
fn heard_ended<'a>(payload: &'a str, schema: &str) -> Option<Vec<EndedElsewhere<'a>>> {
    // Ids have no colon; the schema's name may.
    let (ids, of_schema) = payload.split_once(':')?;
    if of_schema != schema {
        return None;
    }
    if ids == ANY_JOB {
        return Some(vec![EndedElsewhere::Any]);
    }
    Some(ids.split(',').map(EndedElsewhere::Job).collect())
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
        on_ended: OnEndedElsewhere,
    ) -> Result<Watcher> {
        let listen = format!(
            "LISTEN {}; LISTEN {}",
            quote_identifier(CHANNEL),
            quote_identifier(ENDED_CHANNEL)
        );
        Watcher::start_listening_with(config, schema, on_queued, on_ended, listen)
    }

    /// `start`, with `listen` as the statement that should make notifications arrive: a
    /// test gives one that does not, as a pooler in transaction mode would.
    pub(super) fn start_listening_with(
        config: postgres::Config,
        schema: String,
        on_queued: OnJobQueued,
        on_ended: OnEndedElsewhere,
        listen: String,
    ) -> Result<Watcher> {
        let (stop, stopped) = bounded::<()>(0);
        let listener = Listener {
            config,
            probe: format!("{schema} probe {}", std::process::id()),
            schema,
            on_queued,
            on_ended,
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
    on_ended: OnEndedElsewhere,
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
                    // Anything queued or ended while nobody listened.
                    self.anything_may_have_happened();
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
                    if notification.channel() == ENDED_CHANNEL {
                        for heard in heard_ended(notification.payload(), &self.schema)
                            .into_iter()
                            .flatten()
                        {
                            (self.on_ended)(heard);
                        }
                    } else if notification.payload() == self.probe {
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

    /// Calls `on_queued` and `on_ended` every second for `period`; `true` if the store was
    /// dropped meanwhile.
    fn poll_for(&self, period: Duration) -> bool {
        let until = Instant::now() + period;
        while Instant::now() < until {
            self.anything_may_have_happened();
            match self.stopped.recv_timeout(POLL_INTERVAL) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return true,
            }
        }
        false
    }

    /// Nothing was heard for a while, or cannot be: any job may have been queued or ended.
    fn anything_may_have_happened(&self) {
        (self.on_queued)();
        (self.on_ended)(EndedElsewhere::Any);
    }

    fn stop_requested(&self) -> bool {
        !matches!(self.stopped.try_recv(), Err(TryRecvError::Empty))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(ids: &[String]) -> Ended {
        Ended {
            ids: ids.to_vec(),
            overflowed: false,
        }
    }

    #[test]
    fn ended_ids_travel_in_payloads_under_the_limit_and_are_read_back() {
        let ids: Vec<String> = (0..1_000)
            .map(|n| format!("0192f6c4-0000-7000-8000-{n:012}"))
            .collect();
        let schema = "t_1:odd name";
        let payloads = ended_payloads(schema, &ended(&ids));
        assert!(payloads.len() > 1);
        let mut heard = Vec::new();
        for payload in &payloads {
            assert!(payload.len() <= MAX_PAYLOAD_BYTES, "{}", payload.len());
            heard.extend(heard_ended(payload, schema).unwrap());
        }
        let expected: Vec<EndedElsewhere<'_>> =
            ids.iter().map(|id| EndedElsewhere::Job(id)).collect();
        assert_eq!(heard, expected);
        assert_eq!(heard_ended(&payloads[0], "another"), None);
        assert!(ended_payloads(schema, &ended(&[])).is_empty());
    }

    #[test]
    fn too_many_ended_ids_become_any_job() {
        let overflowed = Ended {
            ids: Vec::new(),
            overflowed: true,
        };
        let payloads = ended_payloads("s", &overflowed);
        assert_eq!(payloads, ["*:s"]);
        assert_eq!(
            heard_ended(&payloads[0], "s"),
            Some(vec![EndedElsewhere::Any])
        );
    }
}
