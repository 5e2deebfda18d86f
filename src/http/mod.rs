//! The HTTP layer, the only module that knows tiny_http. Our accept loop (`listener`) takes
//! connections with tiny_http's accept step and hands each to a connection thread (`pool`),
//! which reads its requests with tiny_http's parser and answers them in order (`exchange`).
//! Every request is checked, passed through the middleware steps (`middleware`: auth, the
//! submit rate limit, the access log), routed and answered explicitly; a panic in a
//! handler becomes a JSON 500 and the thread serves on.

mod auth;
mod bulk;
mod dashboard;
mod exchange;
mod framing;
mod function;
mod handlers;
mod in_flight;
mod listener;
mod metrics;
mod middleware;
mod openapi;
mod pool;
mod queues;
mod rate_limit;
mod request;
mod response;
mod routes;
mod socket;
mod stats;
mod submit;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{bounded, select, Receiver, Sender};
use log::{debug, error, warn};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::functions::Functions;
use crate::metrics::Metrics;
use crate::queue::Queue;
use auth::Access;
use handlers::AppState;
use in_flight::InFlight;
use middleware::Chain;
use pool::{ConnectionPool, Handoff, Patience};
use response::ApiResponse;

/// Connection threads kept ready (named `http-N`). A submit waits for its group commit, and
/// a commit can only batch the submits that are waiting, so this many ready threads is how
/// many new connections one disk sync can acknowledge without a thread start. More start on
/// demand, up to `MAX_CONNECTIONS`. An idle thread costs a few KiB.
pub const HANDLER_THREADS: usize = 64;

/// Connections beyond `MAX_CONNECTIONS` that are read and answered `503` at once; past this
/// many such refusals in progress, further connections are closed without an answer.
const MAX_REFUSALS: usize = 16;

/// A connection may spend this many idle timeouts inside one request head's reading before
/// its slot is given away when another connection needs one: a silent connection ends after
/// one, so only a head trickled in (or one tiny_http deadlocks on) lasts this long.
const HEAD_PATIENCE_IDLE_TIMEOUTS: u32 = 2;

/// Descriptors the process needs besides its connections: the database, its journal, the
/// listener, function pipes.
const RESERVED_DESCRIPTORS: u64 = 64;

pub struct HttpServer {
    state: Arc<AppState>,
    accept: Option<JoinHandle<()>>,
    stop_accepting: Sender<()>,
    /// The listening socket, shut down to wake a blocked `accept` at stop.
    listener: TcpListener,
    failed: Receiver<String>,
    local_addr: SocketAddr,
}

impl HttpServer {
    pub fn start(
        config: &Config,
        queue: Arc<Queue>,
        functions: Functions,
        metrics: Arc<Metrics>,
    ) -> Result<HttpServer> {
        let cannot_listen = |err: std::io::Error| {
            Error::Startup(format!("cannot listen on {}: {err}", config.server_addr))
        };
        let max_connections = config.max_connections;
        raise_descriptor_limit(max_connections);
        let socket =
            listener::bind(config.server_addr, config.http_idle_timeout).map_err(cannot_listen)?;
        let local_addr = socket.local_addr().map_err(cannot_listen)?;
        let wake = socket.try_clone().map_err(cannot_listen)?;
        let state = Arc::new(AppState {
            queue,
            functions,
            max_body_bytes: config.max_body_bytes,
            body_patience: config.http_idle_timeout,
            middleware: Chain::new(
                Access {
                    token: config.api_token.clone(),
                    read_token: config.api_read_token.clone(),
                    metrics_public: config.metrics_public,
                },
                config.submit_rate_limit,
                metrics,
            ),
            workers: config.worker_count,
            base_path: config.base_path.clone(),
            local_addr,
            shutting_down: AtomicBool::new(false),
            in_flight: InFlight::default(),
        });
        let serving = Arc::clone(&state);
        let (stop_accepting, stop) = bounded::<()>(1);
        let (report_failure, failed) = bounded::<String>(1);
        let stuck_failure = report_failure.clone();
        let patience = Patience {
            head: config.http_idle_timeout * HEAD_PATIENCE_IDLE_TIMEOUTS,
            max_abandoned: max_connections,
            give_up: Box::new(move |why| {
                error!("giving up serving: {why}");
                let _ = stuck_failure.try_send(why);
            }),
        };
        let pool = ConnectionPool::start(
            max_connections,
            HANDLER_THREADS.min(max_connections),
            patience,
            move |connection, watch| exchange::serve_connection(&serving, connection, watch),
        )
        .map_err(|err| Error::Startup(format!("cannot start connection threads: {err}")))?;
        let tiny_listener = tiny_http::Listener::from(socket);
        let tls = tiny_http::SslContextWrap::build_ssl_capabilities(None)
            .map_err(|err| Error::Startup(format!("cannot set up the listener: {err}")))?;
        let refusals = Arc::new(AtomicUsize::new(0));
        let accept = thread::Builder::new()
            .name("accept".into())
            .spawn(move || {
                let ended = listener::accept_loop(
                    &tiny_listener,
                    &stop,
                    |listener| tiny_http::Server::accept_connection(listener, &tls),
                    |connection| {
                        if let Handoff::Full(connection) = pool.dispatch(connection) {
                            refuse(connection, max_connections, &refusals, local_addr);
                        }
                    },
                );
                if let Err(err) = ended {
                    error!("the HTTP server stopped accepting connections: {err}");
                    let _ = report_failure.try_send(err.to_string());
                }
            })
            .map_err(|err| Error::Startup(format!("cannot start the accept thread: {err}")))?;
        Ok(HttpServer {
            state,
            accept: Some(accept),
            stop_accepting,
            listener: wake,
            failed,
            local_addr,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Delivers once if the accept loop ended on an error: the server can no longer take
    /// connections and should shut down.
    pub fn failed(&self) -> &Receiver<String> {
        &self.failed
    }

    /// From now on every request is answered `503 unavailable` and its connection closed.
    pub fn refuse_new_requests(&self) {
        self.state.shutting_down.store(true, Ordering::Release);
    }

    /// Stops accepting, then waits until every request already received has been answered,
    /// for at most `patience`; returns early with `false` if `interrupt` delivers (a second
    /// signal). Idle keep-alive connections are left to the process exit.
    pub fn stop(mut self, patience: Duration, interrupt: &Receiver<()>) -> bool {
        self.refuse_new_requests();
        let _ = self.stop_accepting.send(());
        listener::interrupt_accept(&self.listener);
        if let Some(accept) = self.accept.take() {
            if accept.join().is_err() {
                error!("the accept thread panicked");
            }
        }
        let (answered_tx, answered) = bounded::<bool>(1);
        let state = Arc::clone(&self.state);
        let waiting = thread::Builder::new()
            .name("http-drain".into())
            .spawn(move || {
                let _ = answered_tx.send(state.in_flight.wait_idle(patience));
            });
        if let Err(err) = waiting {
            warn!("cannot wait for requests in progress: {err}");
            return true;
        }
        select! {
            recv(answered) -> all => {
                if all != Ok(true) {
                    warn!("some requests were still being answered after {patience:?}; not waiting");
                }
                true
            }
            recv(interrupt) -> _ => false,
        }
    }
}

/// Answers a connection beyond `MAX_CONNECTIONS` with a `503` on a short-lived thread, so a
/// client learns why; more than `MAX_REFUSALS` at once are closed unanswered.
fn refuse<C, E>(connection: C, limit: usize, refusals: &Arc<AtomicUsize>, local: SocketAddr)
where
    C: Iterator<Item = std::result::Result<tiny_http::Request, E>> + Send + 'static,
{
    let taken = refusals.fetch_update(Ordering::AcqRel, Ordering::Acquire, |busy| {
        (busy < MAX_REFUSALS).then_some(busy + 1)
    });
    if taken.is_err() {
        debug!("closed a connection over MAX_CONNECTIONS without an answer");
        return;
    }
    let refusing = Arc::clone(refusals);
    let spawned = thread::Builder::new().name("refuse".into()).spawn(move || {
        let mut connection = connection;
        if let Some(Ok(request)) = connection.next() {
            let response = ApiResponse::from_error(&Error::TooManyConnections { limit });
            exchange::answer_and_close(request, response, false, local);
        }
        refusing.fetch_sub(1, Ordering::AcqRel);
    });
    if spawned.is_err() {
        refusals.fetch_sub(1, Ordering::AcqRel);
    }
    warn!("refused a connection: all {limit} connection slots (MAX_CONNECTIONS) are taken");
}

/// Raises the soft limit on open files to the hard one, and warns when even that leaves too
/// few descriptors for `MAX_CONNECTIONS`: running out would stop `accept` itself.
fn raise_descriptor_limit(max_connections: usize) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let limit = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    // Each connection takes two descriptors (tiny_http duplicates the socket).
    let needed = u64::try_from(max_connections)
        .unwrap_or(u64::MAX)
        .saturating_mul(2)
        .saturating_add(RESERVED_DESCRIPTORS);
    if limit < needed {
        warn!(
            "the open-files limit is {limit}, too low for MAX_CONNECTIONS={max_connections} (about {needed} needed); raise it (ulimit -n) or lower MAX_CONNECTIONS"
        );
    }
}

/// A stock tiny_http server (its own accept loop and connection threads) on a listener set up
/// like ours: for the benchmark's bare ceiling server, the speed of tiny_http doing no work.
pub fn listen(
    addr: SocketAddr,
) -> std::result::Result<(tiny_http::Server, SocketAddr), Box<dyn std::error::Error + Send + Sync>>
{
    let listener = std::net::TcpListener::bind(addr)?;
    socket2::SockRef::from(&listener).set_nodelay(true)?;
    let local_addr = listener.local_addr()?;
    let server = tiny_http::Server::from_listener(
        listener,
        tiny_http::ListenAddr::from(local_addr),
        tiny_http::ServerConfig::new_http(local_addr)?.set_min_threads(256),
    )?;
    Ok((server, local_addr))
}
