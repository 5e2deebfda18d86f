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

pub fn submit(state: &AppState, key: Option<&str>, body: &[u8]) -> Result<ApiResponse> {
    let key = key
        .map(|key| Idempotency::new(key, "/jobs", body))
        .transpose()?;
    let body = parse_json(body)?;
    let submitted = state.queue.submit(body, key.as_ref(), |ids| {
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

pub fn submit_batch(state: &AppState, key: Option<&str>, body: &[u8]) -> Result<ApiResponse> {
    let key = key
        .map(|key| Idempotency::new(key, "/jobs/batch", body))
        .transpose()?;
    let body = parse_json(body)?;
    let submitted = state.queue.submit_batch(body, key.as_ref(), |ids| {
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

/// The `Idempotency-Key` header's value, if the request has one; two are refused.
pub fn idempotency_key(request: &tiny_http::Request) -> Result<Option<String>> {
    // tiny_http finds the first field of a name; only then are all of them read.
    if request.headers().get(IDEMPOTENCY_KEY).is_none() {
        return Ok(None);
    }
    let fields = framing::fields_of(request.headers());
    let mut values = fields
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case(IDEMPOTENCY_KEY))
        .map(|(_, value)| value.clone());
    let first = values.next();
    if values.next().is_some() {
        return Err(Error::Validation(format!(
            "send at most one {IDEMPOTENCY_KEY} header"
        )));
    }
    Ok(first)
}
