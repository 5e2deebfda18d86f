//! Endpoint handlers for named queues: `GET /queues`, `POST /queues/:name/pause` and
//! `/resume`, and `PUT /queues/:name`. Parsed input in, `ApiResponse` or `Error` out, as in
//! `handlers`.

use serde_json::Value;

use crate::error::Result;
use crate::http::handlers::AppState;
use crate::http::response::ApiResponse;

/// `GET /queues`: every queue that has jobs or settings, by name.
pub fn list(state: &AppState) -> Result<ApiResponse> {
    Ok(ApiResponse::json(200, &state.queue.queues()?))
}

pub fn pause(state: &AppState, name: &str) -> Result<ApiResponse> {
    Ok(ApiResponse::json(200, &state.queue.pause(name)?))
}

pub fn resume(state: &AppState, name: &str) -> Result<ApiResponse> {
    Ok(ApiResponse::json(200, &state.queue.resume(name)?))
}

/// `PUT /queues/:name` with `{"concurrency": …, "rate_per_second": …}`.
pub fn configure(state: &AppState, name: &str, body: Value) -> Result<ApiResponse> {
    Ok(ApiResponse::json(
        200,
        &state.queue.configure_queue(name, body)?,
    ))
}
