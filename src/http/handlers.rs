//! Endpoint handlers: parsed input in, `ApiResponse` or `Error` out. They never touch the
//! socket, so everything here can be exercised without one.

use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::functions::Functions;
use crate::http::request::query_pairs;
use crate::http::response::ApiResponse;
use crate::job::{queue_name, JobStatus};
use crate::queue::{canonical_id, Cancel, JobFilter, Queue};

pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: usize = 1000;
/// The longest `GET /jobs/:id?wait=N` may wait.
pub const MAX_WAIT_SECONDS: u64 = 60;

/// What every connection thread shares while it answers requests.
pub struct AppState {
    /// What requests do to jobs.
    pub queue: std::sync::Arc<Queue>,
    /// The functions jobs can name, for `GET /functions`.
    pub functions: Functions,
    pub max_body_bytes: usize,
    /// How long a request body may take to arrive (`HTTP_IDLE_TIMEOUT_SECONDS`).
    pub body_patience: std::time::Duration,
    /// The steps around every request (auth, access log).
    pub middleware: crate::http::middleware::Chain,
    /// `DASHBOARD_BASE_PATH`: a prefix requests may carry (a reverse proxy that does not
    /// strip it), removed before routing; empty for none.
    pub base_path: String,
    /// The listening address: with a client's address it names a connection's socket.
    pub local_addr: std::net::SocketAddr,
    /// Set once shutdown begins; from then on every request is answered 503.
    pub shutting_down: AtomicBool,
    /// Requests being answered, so shutdown can wait for them.
    pub in_flight: crate::http::in_flight::InFlight,
    /// Worker threads on this node (`WORKER_COUNT`), for `/metrics` and `/stats`.
    pub workers: usize,
}

impl AppState {
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }
}

/// `GET /health`: a struct rather than `json!` so the keys keep their documented order.
#[derive(Serialize)]
struct Health {
    status: &'static str,
    database: &'static str,
}

/// `200` only if the database answers a read and writes reach the disk: reads alone still
/// work on a full disk, where every submit fails.
pub fn health(state: &AppState) -> ApiResponse {
    let down = |database| {
        let health = Health {
            status: "unavailable",
            database,
        };
        ApiResponse::json(503, &health)
    };
    if let Err(err) = state.queue.ping() {
        log::error!("health check: the database does not answer: {err}");
        return down("unavailable");
    }
    match state.queue.writes_ok() {
        Ok(()) => ApiResponse::json(
            200,
            &Health {
                status: "ok",
                database: "ok",
            },
        ),
        // Each failed write is logged where it failed; a polled /health would repeat it.
        Err(err) => {
            log::debug!("health check: writes fail: {err}");
            down("writes_failing")
        }
    }
}

pub fn functions(state: &AppState) -> ApiResponse {
    ApiResponse::json(200, &state.functions.list())
}

/// `GET /jobs/:id`, and with `?wait=N` (1 to `MAX_WAIT_SECONDS`) the job once it has
/// ended or after N seconds, whichever comes first (`Queue::wait_for_end`).
pub fn get(state: &AppState, id: &str, query: &str) -> Result<ApiResponse> {
    let mut wait = None;
    for (name, value) in query_pairs(query) {
        match name.as_str() {
            "wait" if wait.is_none() => wait = Some(wait_seconds(&value)?),
            "wait" => return Err(Error::Validation("wait is given more than once".into())),
            other => {
                return Err(Error::Validation(format!(
                    "unknown query parameter {other:?}; allowed is wait"
                )))
            }
        }
    }
    let job = match wait {
        Some(seconds) => state
            .queue
            .wait_for_end(id, std::time::Duration::from_secs(seconds))?,
        None => state.queue.get(id)?,
    };
    Ok(ApiResponse::json(200, &job))
}

fn wait_seconds(value: &str) -> Result<u64> {
    Some(value)
        .filter(|digits| !digits.is_empty() && digits.bytes().all(|byte| byte.is_ascii_digit()))
        .and_then(|digits| digits.parse::<u64>().ok())
        .filter(|seconds| (1..=MAX_WAIT_SECONDS).contains(seconds))
        .ok_or_else(|| {
            Error::Validation(format!(
                "wait must be a whole number of seconds from 1 to {MAX_WAIT_SECONDS}, got {value:?}"
            ))
        })
}

pub fn list(state: &AppState, query: &str) -> Result<ApiResponse> {
    let mut filter = JobFilter::default();
    let mut limit = DEFAULT_PAGE_SIZE;
    let mut before = None;
    for (name, value) in query_pairs(query) {
        match name.as_str() {
            "status" => {
                filter.status = Some(value.parse::<JobStatus>().map_err(|_| {
                    Error::Validation(format!(
                        "status must be one of pending, running, success, failed, timeout, cancelled; got {value:?}"
                    ))
                })?)
            }
            "queue" => filter.queue = Some(queue_name(&value)?.to_string()),
            "function" => {
                if !crate::functions::valid_name(&value) {
                    let shown: String = value.chars().take(65).collect();
                    return Err(Error::Validation(format!(
                        "function must be a function name (1 to 64 of A-Z, a-z, 0-9, '.', '_' and '-', not starting with '.'), got {shown:?}"
                    )));
                }
                filter.function = Some(value);
            }
            "limit" => {
                limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|limit| (1..=MAX_PAGE_SIZE).contains(limit))
                    .ok_or_else(|| {
                        Error::Validation(format!(
                            "limit must be an integer from 1 to {MAX_PAGE_SIZE}, got {value:?}"
                        ))
                    })?
            }
            "before" => {
                before = Some(canonical_id(&value).map_err(|_| {
                    Error::Validation(format!("before must be a job id, got {value:?}"))
                })?)
            }
            other => {
                return Err(Error::Validation(format!(
                    "unknown query parameter {other:?}; allowed are status, queue, function, limit, before"
                )))
            }
        }
    }
    let page = state.queue.list(&filter, before.as_deref(), limit)?;
    let next = page.jobs.last().filter(|_| page.has_more).map(|last| {
        // The filters' values need no escaping: statuses, queue and function names are all
        // of characters a query may hold as they are.
        let mut filters = String::new();
        if let Some(status) = filter.status {
            filters.push_str(&format!("status={status}&"));
        }
        if let Some(queue) = &filter.queue {
            filters.push_str(&format!("queue={queue}&"));
        }
        if let Some(function) = &filter.function {
            filters.push_str(&format!("function={function}&"));
        }
        format!(
            "</jobs?{filters}limit={limit}&before={}>; rel=\"next\"",
            last.id
        )
    });
    let response = ApiResponse::json(200, &page.jobs);
    Ok(match next {
        Some(link) => response.with_header("Link", link),
        None => response,
    })
}

pub fn attempts(state: &AppState, id: &str) -> Result<ApiResponse> {
    let attempts = state.queue.attempts(id)?;
    Ok(ApiResponse::json(200, &attempts))
}

pub fn retry(state: &AppState, id: &str) -> Result<ApiResponse> {
    let job = state.queue.retry(id)?;
    Ok(ApiResponse::json(202, &job))
}

pub fn delete(state: &AppState, id: &str) -> Result<ApiResponse> {
    state.queue.delete(id)?;
    Ok(ApiResponse::empty(204))
}

/// `POST /jobs/:id/cancel`: a pending job is cancelled at once (`200`); a running one is
/// stopped and recorded `cancelled` by its worker a moment later (`202`, the job as it was).
pub fn cancel(state: &AppState, id: &str) -> Result<ApiResponse> {
    match state.queue.cancel(id)? {
        Cancel::Cancelled(job) => Ok(ApiResponse::json(200, &job)),
        Cancel::Running(job) => Ok(ApiResponse::json(202, &job)),
    }
}
