//! `GET /functions/:name`: one function with its payload contract (`schema`, or `null`).

use crate::error::{Error, Result};
use crate::http::handlers::AppState;
use crate::http::response::ApiResponse;

pub fn function(state: &AppState, name: &str) -> Result<ApiResponse> {
    match state.functions.detail(name) {
        Some(detail) => Ok(ApiResponse::json(200, &detail)),
        None => {
            let shown: String = name.chars().take(64).collect();
            Err(Error::NotFound(format!(
                "no function named {shown:?} in FUNCTIONS_DIR; GET /functions lists them"
            )))
        }
    }
}
