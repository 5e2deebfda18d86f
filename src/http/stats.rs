//! `GET /stats`: the dashboard's counters as JSON.

use crate::error::{Error, Result};
use crate::http::handlers::AppState;
use crate::http::response::ApiResponse;

pub fn stats(_state: &AppState) -> Result<ApiResponse> {
    Err(Error::NotFound("stats are not built yet".into()))
}
