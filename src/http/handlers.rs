//! Endpoint handlers: parsed input in, `ApiResponse` or `Error` out. They never touch the
//! socket, so everything here can be exercised without one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::executor::simulation::Simulation;
use crate::functions::Functions;
use crate::http::request::query_pairs;
use crate::http::response::ApiResponse;
use crate::job::{Job, JobDefaults, JobStatus, NewJob};
use crate::running::RunningAttempts;
use crate::store::{Cancel, Store};
use crate::time::Timestamp;
use crate::worker::Waker;

pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: usize = 1000;

/// What every handler thread shares.
pub struct AppState {
    pub store: Arc<Store>,
    pub waker: Waker,
    /// To stop a running attempt on cancel or delete.
    pub running: Arc<RunningAttempts>,
    /// The functions jobs can name.
    pub functions: Functions,
    pub defaults: JobDefaults,
    pub max_body_bytes: usize,
    /// How long a request body may take to arrive (`HTTP_IDLE_TIMEOUT_SECONDS`).
    pub body_patience: std::time::Duration,
    /// `API_TOKEN`, when set.
    pub api_token: Option<String>,
    /// The listening address: with a client's address it names a connection's socket.
    pub local_addr: std::net::SocketAddr,
    /// Set once shutdown begins; from then on every request is answered 503.
    pub shutting_down: AtomicBool,
    /// Requests being answered, so shutdown can wait for them.
    pub in_flight: crate::http::in_flight::InFlight,
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
    if let Err(err) = state.store.ping() {
        log::error!("health check: the database does not answer: {err}");
        return down("unavailable");
    }
    match state.store.writes_ok() {
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

/// The `201` body of `POST /jobs`.
#[derive(Serialize)]
struct Submitted<'a> {
    job_id: &'a str,
    status: JobStatus,
}

pub fn submit(state: &AppState, body: Value) -> Result<ApiResponse> {
    let now = Timestamp::now();
    let job = NewJob::from_json(body, state.defaults, now)?;
    match &job.function {
        Some(name) => {
            if state.functions.resolve(name).is_none() {
                return Err(Error::UnknownFunction(format!(
                    "no function named {name:?} in FUNCTIONS_DIR; GET /functions lists them"
                )));
            }
        }
        // Simulation keys are checked at submit so a typo fails now, not at run time.
        None => {
            Simulation::from_payload(&job.payload)?;
        }
    }
    // Time-ordered (v7), so each new id lands at the end of the id index. Random (v4) ids put
    // every insert on a random index page: once the index outgrew the cache, each job cost
    // several 4 KiB WAL frames and about a third of the submit rate.
    let id = uuid::Uuid::now_v7().to_string();
    state.store.insert(id.clone(), &job, now)?;
    log::info!("job {id} submitted");
    state.waker.job_queued(job.run_at.unwrap_or(now));
    Ok(ApiResponse::json(
        201,
        &Submitted {
            job_id: &id,
            status: JobStatus::Pending,
        },
    )
    .with_header("Location", format!("/jobs/{id}")))
}

pub fn functions(state: &AppState) -> ApiResponse {
    ApiResponse::json(200, &state.functions.list())
}

pub fn get(state: &AppState, id: &str) -> Result<ApiResponse> {
    let id = canonical_id(id)?;
    let job = state.store.get(&id)?.ok_or_else(|| not_found(&id))?;
    Ok(ApiResponse::json(200, &job))
}

pub fn list(state: &AppState, query: &str) -> Result<ApiResponse> {
    let mut status = None;
    let mut limit = DEFAULT_PAGE_SIZE;
    let mut before = None;
    for (name, value) in query_pairs(query) {
        match name.as_str() {
            "status" => {
                status = Some(value.parse::<JobStatus>().map_err(|_| {
                    Error::Validation(format!(
                        "status must be one of pending, running, success, failed, timeout, cancelled; got {value:?}"
                    ))
                })?)
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
                    "unknown query parameter {other:?}; allowed are status, limit, before"
                )))
            }
        }
    }
    let page = state.store.list(status, before.as_deref(), limit)?;
    let next = page.jobs.last().filter(|_| page.has_more).map(|last| {
        let status = status
            .map(|status| format!("status={status}&"))
            .unwrap_or_default();
        format!(
            "</jobs?{status}limit={limit}&before={}>; rel=\"next\"",
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
    let id = canonical_id(id)?;
    let attempts = state.store.attempts(&id)?.ok_or_else(|| not_found(&id))?;
    Ok(ApiResponse::json(200, &attempts))
}

pub fn retry(state: &AppState, id: &str) -> Result<ApiResponse> {
    let id = canonical_id(id)?;
    let job = state.store.retry(&id, Timestamp::now())?;
    log::info!(
        "job {id} retried by request; retry budget reset to {}",
        job.max_retries
    );
    state.waker.job_queued(job.run_at);
    Ok(ApiResponse::json(202, &job))
}

pub fn delete(state: &AppState, id: &str) -> Result<ApiResponse> {
    let id = canonical_id(id)?;
    let deleted = state.store.delete(&id)?.ok_or_else(|| not_found(&id))?;
    // The row is gone, so the stopped attempt has nothing to write back to.
    if deleted.status == JobStatus::Running {
        stop_attempt(state, &deleted);
    }
    log::info!("job {id} deleted");
    Ok(ApiResponse::empty(204))
}

/// `POST /jobs/:id/cancel`: a pending job is cancelled at once (`200`); a running one is
/// stopped and recorded `cancelled` by its worker a moment later (`202`, the job as it was).
pub fn cancel(state: &AppState, id: &str) -> Result<ApiResponse> {
    let id = canonical_id(id)?;
    match state.store.cancel(&id, Timestamp::now())? {
        Cancel::Cancelled(job) => {
            log::info!("job {id} cancelled before it ran");
            Ok(ApiResponse::json(200, &job))
        }
        Cancel::Running(job) => {
            stop_attempt(state, &job);
            log::info!("job {id}: cancelling its running attempt");
            Ok(ApiResponse::json(202, &job))
        }
    }
}

fn stop_attempt(state: &AppState, job: &Job) {
    state
        .running
        .cancel(&job.id, job.started_at.map(Timestamp::as_micros));
}

/// Job ids are UUIDs in lowercase hyphenated form; anything else names no job.
fn canonical_id(id: &str) -> Result<String> {
    uuid::Uuid::parse_str(id)
        .map(|uuid| uuid.hyphenated().to_string())
        .map_err(|_| not_found(id))
}

fn not_found(id: &str) -> Error {
    Error::NotFound(format!("no job with id {id:?}"))
}
