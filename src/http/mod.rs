//! The HTTP layer, the only module that knows tiny_http. A pool of named handler threads takes
//! requests from tiny_http's accept loop; each request is routed, answered explicitly, and
//! logged in one line. A panic in a handler becomes a JSON 500 and the thread serves on.

mod handlers;
mod openapi;
mod request;
mod response;
mod routes;

use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, Receiver};
use log::{debug, error, info, warn};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::functions::Functions;
use crate::job::JobDefaults;
use crate::running::RunningAttempts;
use crate::store::Store;
use crate::worker::Waker;
use handlers::AppState;
use response::ApiResponse;

/// Threads that take requests off tiny_http's queue. A submit waits for its group commit, and
/// a commit can only batch the submits that are waiting, so this many threads is how many
/// requests one disk sync can acknowledge. Idle threads cost a little memory and nothing else.
pub const HANDLER_THREADS: usize = 64;

/// Connection threads tiny_http keeps ready. Its pool (tiny_http_fork 0.12.17, "legacy")
/// starts a new thread only when no thread is idle, and counts a woken thread as idle until
/// it runs: a burst of more new connections than idle threads leaves the extra ones queued
/// until some connection closes. Keeping this many threads idle makes such a burst need more
/// than this many simultaneous new connections. An idle thread costs a few KiB.
const CONNECTION_THREADS: usize = 256;

/// How long a connection may stay silent (mid-request, or idle between keep-alive requests)
/// and how long a response write may block. Without it a client that declares a body and
/// stops sending holds a handler thread forever, and with it the shutdown.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

pub struct HttpServer {
    server: Arc<tiny_http::Server>,
    state: Arc<AppState>,
    handles: Vec<JoinHandle<()>>,
    /// Closes (receives `Err`) once every handler thread has ended.
    exited: Receiver<()>,
    local_addr: SocketAddr,
}

impl HttpServer {
    pub fn start(
        config: &Config,
        store: Arc<Store>,
        waker: Waker,
        running: Arc<RunningAttempts>,
        functions: Functions,
    ) -> Result<HttpServer> {
        let (server, local_addr) = listen(config.server_addr).map_err(|err| {
            Error::Startup(format!("cannot listen on {}: {err}", config.server_addr))
        })?;
        let server = Arc::new(server);
        let state = Arc::new(AppState {
            store,
            waker,
            running,
            functions,
            defaults: JobDefaults {
                timeout_seconds: config.default_timeout_seconds,
                max_retries: config.default_max_retries,
            },
            max_body_bytes: config.max_body_bytes,
            shutting_down: AtomicBool::new(false),
        });
        let mut handles = Vec::with_capacity(HANDLER_THREADS);
        let (alive, exited) = bounded::<()>(0);
        for number in 1..=HANDLER_THREADS {
            let server = Arc::clone(&server);
            let state = Arc::clone(&state);
            let alive = alive.clone();
            let handle = thread::Builder::new()
                .name(format!("http-{number}"))
                .spawn(move || {
                    serve(&server, &state);
                    drop(alive);
                })
                .map_err(|err| Error::Startup(format!("cannot start handler thread: {err}")))?;
            handles.push(handle);
        }
        Ok(HttpServer {
            server,
            state,
            handles,
            exited,
            local_addr,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// From now on every request is answered `503 unavailable`.
    pub fn refuse_new_requests(&self) {
        self.state.shutting_down.store(true, Ordering::Release);
    }

    /// Stops the handler threads and waits for them, for at most `patience`; returns early with
    /// `false` if `interrupt` delivers (a second signal). Threads still busy after that are
    /// left to the process exit: none of them holds an acknowledgement that has not been sent.
    pub fn stop(self, patience: Duration, interrupt: &Receiver<()>) -> bool {
        self.refuse_new_requests();
        for _ in &self.handles {
            // Each call wakes one thread blocked in `recv`.
            let _ = self.server.unblock();
        }
        select! {
            recv(self.exited) -> _ => {}
            recv(interrupt) -> _ => return false,
            default(patience) => {
                warn!("some HTTP handler threads are still busy after {patience:?}; not waiting");
                return true;
            },
        }
        for handle in self.handles {
            if handle.join().is_err() {
                error!("an HTTP handler thread panicked outside a request");
            }
        }
        true
    }
}

/// Binds the address with `TCP_NODELAY` and `IO_TIMEOUT` set on the listener, which accepted
/// connections inherit on Linux: tiny_http writes a response over 1 KiB in several writes, and Nagle's
/// algorithm with the client's delayed ACK would hold each such response back ~40 ms.
///
/// Public so the benchmark's bare ceiling server runs tiny_http exactly as configured here.
pub fn listen(
    addr: SocketAddr,
) -> std::result::Result<(tiny_http::Server, SocketAddr), Box<dyn std::error::Error + Send + Sync>>
{
    let listener = std::net::TcpListener::bind(addr)?;
    let socket = socket2::SockRef::from(&listener);
    socket.set_nodelay(true)?;
    // Accepted sockets inherit the timeouts too (tiny_http sets none of its own).
    socket.set_read_timeout(Some(IO_TIMEOUT))?;
    socket.set_write_timeout(Some(IO_TIMEOUT))?;
    let local_addr = listener.local_addr()?;
    let server = tiny_http::Server::from_listener(
        listener,
        tiny_http::ListenAddr::from(local_addr),
        tiny_http::ServerConfig::new_http(local_addr)?.set_min_threads(CONNECTION_THREADS),
    )?;
    Ok((server, local_addr))
}

fn serve(server: &tiny_http::Server, state: &AppState) {
    loop {
        match server.recv() {
            Ok(Ok(request)) => handle(state, request),
            Ok(Err(bad_request)) => debug!("unreadable request: {bad_request}"),
            // `unblock` (one queued per thread at shutdown), or tiny_http stopped accepting.
            Err(err) => {
                if !state.is_shutting_down() {
                    error!("HTTP handler thread stopping: the server stopped accepting ({err})");
                }
                return;
            }
        }
    }
}

fn handle(state: &AppState, mut request: tiny_http::Request) {
    let started = Instant::now();
    // The request line is copied only when the request log is on.
    let line = log::log_enabled!(log::Level::Info).then(|| {
        let path = request.url().split('?').next().unwrap_or_default();
        format!("{} {path}", request.method())
    });
    let response = answer_or_500(|| routes::route(state, &mut request));
    let status = response.status;
    if let Err(err) = request.respond(response.into_tiny()) {
        debug!("could not send a response: {err}");
    }
    if let Some(line) = line {
        info!(
            "{line} {status} {:.3}ms",
            started.elapsed().as_secs_f64() * 1000.0
        );
    }
}

/// Runs a handler so that an error becomes its JSON response and a panic becomes a JSON 500;
/// either way the handler thread lives on. The panic hook has already logged the message.
fn answer_or_500(handler: impl FnOnce() -> Result<ApiResponse>) -> ApiResponse {
    catch_unwind(AssertUnwindSafe(handler))
        .unwrap_or_else(|_| Err(Error::Internal("a request handler panicked".into())))
        .unwrap_or_else(|err| ApiResponse::from_error(&err))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_handler_answers_a_json_500() {
        let response = answer_or_500(|| panic!("boom"));
        assert_eq!(response.status, 500);
        assert_eq!(
            response.body.as_deref(),
            Some(
                r#"{"error":{"code":"internal_error","message":"internal error; the server log has the details"}}"#
            )
        );
    }

    #[test]
    fn an_error_becomes_its_envelope() {
        let response = answer_or_500(|| Err(Error::NotFound("no job with id x".into())));
        assert_eq!(response.status, 404);
        assert_eq!(
            response.body.as_deref(),
            Some(r#"{"error":{"code":"not_found","message":"no job with id x"}}"#)
        );
    }
}
