//! The dashboard: one HTML page and its files, embedded in the binary.

use crate::error::{Error, Result};
use crate::http::handlers::AppState;
use crate::http::response::ApiResponse;

pub fn page(_state: &AppState) -> Result<ApiResponse> {
    Err(Error::NotFound("the dashboard is not built yet".into()))
}

pub fn asset(name: &str) -> Result<ApiResponse> {
    Err(Error::NotFound(format!(
        "no dashboard file {}",
        name.chars().take(100).collect::<String>()
    )))
}
