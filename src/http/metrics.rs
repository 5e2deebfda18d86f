//! `GET /metrics`: the Prometheus text exposition of `crate::metrics`.

use crate::error::{Error, Result};
use crate::http::handlers::AppState;
use crate::http::response::ApiResponse;

pub fn metrics(_state: &AppState) -> Result<ApiResponse> {
    Err(Error::NotFound("metrics are not built yet".into()))
}
