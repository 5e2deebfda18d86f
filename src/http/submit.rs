//! `POST /jobs` and `POST /jobs/batch`: the `Idempotency-Key` header, the `201` bodies, and
//! the replay of a recorded answer. The body is taken as bytes, because a key's fingerprint is
//! of the bytes as sent; validation and storage are the queue's.
//!
//! The first answer to a request with a key is the very text the key records, so a replay
//! (`Idempotent-Replayed: true`) repeats it byte for byte.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::http::framing;
use crate::http::request::parse_json;
use crate::http::response::{ApiResponse, JSON};
use crate::idempotency::Idempotency;
use crate::job::JobStatus;
use crate::queue::{Answer, Submitted};
use crate::trace::{self, TraceParent};

use super::handlers::AppState;

pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";
pub const REPLAYED: &str = "Idempotent-Replayed";

/// The `201` body of `POST /jobs`, and each item of `POST /jobs/batch`'s.
#[derive(Serialize)]
struct Created<'a> {
    job_id: &'a str,
    status: JobStatus,
}

/// The `201` body of `POST /jobs/batch`.
#[derive(Serialize)]
struct CreatedBatch<'a> {
    jobs: Vec<Created<'a>>,
}

/// Reads a job id back from a recorded `POST /jobs` answer, for `Location`.
#[derive(Deserialize)]
struct RecordedId {
    job_id: String,
}

/// The headers a submit reads besides its body.
pub struct SubmitHeaders {
    pub idempotency_key: Option<String>,
    /// Stored with every job of the submit. Not part of the key's fingerprint: a retry of the
    /// same request may well come from a new span of the same trace.
    pub traceparent: Option<TraceParent>,
}

impl SubmitHeaders {
    /// Reads and checks them; two of either, or an invalid `traceparent`, is refused.
    pub fn of(request: &tiny_http::Request) -> Result<SubmitHeaders> {
        Ok(SubmitHeaders {
            idempotency_key: single_header(request, IDEMPOTENCY_KEY)?,
            traceparent: single_header(request, trace::HEADER)?
                // HTTP's optional whitespace around a value is not part of it.
                .map(|value| TraceParent::parse(value.trim_matches([' ', '\t'])))
                .transpose()?,
        })
    }
}

pub fn submit(state: &AppState, headers: SubmitHeaders, body: &[u8]) -> Result<ApiResponse> {
    let key = headers
        .idempotency_key
        .map(|key| Idempotency::new(&key, "/jobs", body))
        .transpose()?;
    let body = parse_json(body)?;
    let trace = headers.traceparent;
    let submitted = state.queue.submit(body, key.as_ref(), trace, |ids| {
        let jobs = created(ids);
        let job = jobs
            .first()
            .ok_or_else(|| Error::Internal("a submit stored no job".into()))?;
        answer(job)
    })?;
    let response = respond(submitted);
    // The id of a stored body, first answer or replay alike.
    let location = response
        .body
        .as_deref()
        .and_then(|body| serde_json::from_str::<RecordedId>(body).ok())
        .map(|recorded| format!("/jobs/{}", recorded.job_id));
    Ok(match location {
        Some(location) => response.with_header("Location", location),
        None => response,
    })
}

pub fn submit_batch(state: &AppState, headers: SubmitHeaders, body: &[u8]) -> Result<ApiResponse> {
    let key = headers
        .idempotency_key
        .map(|key| Idempotency::new(&key, "/jobs/batch", body))
        .transpose()?;
    let body = parse_json(body)?;
    let trace = headers.traceparent;
    let submitted = state.queue.submit_batch(body, key.as_ref(), trace, |ids| {
        answer(&CreatedBatch { jobs: created(ids) })
    })?;
    Ok(respond(submitted))
}

fn created(ids: &[String]) -> Vec<Created<'_>> {
    ids.iter()
        .map(|id| Created {
            job_id: id,
            status: JobStatus::Pending,
        })
        .collect()
}

fn answer(body: &impl Serialize) -> Result<Answer> {
    let body = serde_json::to_string(body)
        .map_err(|err| Error::Internal(format!("cannot encode response: {err}")))?;
    Ok(Answer { status: 201, body })
}

fn respond(submitted: Submitted) -> ApiResponse {
    match submitted {
        Submitted::Created(answer) => ApiResponse::text(answer.status, JSON, answer.body),
        Submitted::Replayed(answer) => {
            ApiResponse::text(answer.status, JSON, answer.body).with_header(REPLAYED, "true".into())
        }
    }
}

/// The value of header `name`, if the request has one; two are refused.
fn single_header(request: &tiny_http::Request, name: &str) -> Result<Option<String>> {
    // tiny_http finds the first field of a name; only then are all of them read.
    if request.headers().get(name).is_none() {
        return Ok(None);
    }
    let fields = framing::fields_of(request.headers());
    let mut values = fields
        .iter()
        .filter(|(field, _)| field.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.clone());
    let first = values.next();
    if values.next().is_some() {
        return Err(Error::Validation(format!("send at most one {name} header")));
    }
    Ok(first)
}
