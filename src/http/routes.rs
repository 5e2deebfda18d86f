//! Routing: one `match` on method and path segments. A known path with the wrong method is a
//! 405 with `Allow`; anything else is a 404.

use tiny_http::{Method, Request};

use crate::error::{Error, Result};
use crate::http::framing::Body;
use crate::http::handlers::{self, AppState};
use crate::http::request::{read_json_body, BodyLimits};
use crate::http::response::ApiResponse;

/// Routes one request. `body_read` is set once its body has been read to the end, so the
/// connection knows whether the next bytes on it start a new request.
pub fn route(
    state: &AppState,
    request: &mut Request,
    body: &Body,
    body_read: &mut bool,
) -> Result<ApiResponse> {
    if state.is_shutting_down() {
        return Err(Error::Unavailable(
            "the server is shutting down; try again after it restarts".into(),
        ));
    }
    let url = request.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let method = request.method().clone();
    match (&method, segments.as_slice()) {
        (Method::Get, ["health"]) => Ok(handlers::health(state)),
        (Method::Get, ["functions"]) => Ok(handlers::functions(state)),
        (Method::Post, ["jobs"]) => {
            let limits = BodyLimits {
                max_bytes: state.max_body_bytes,
                patience: state.body_patience,
            };
            let body = read_json_body(request, body, limits, body_read)?;
            handlers::submit(state, body)
        }
        (Method::Get, ["jobs"]) => handlers::list(state, query),
        (Method::Get, ["jobs", id]) => handlers::get(state, id),
        (Method::Delete, ["jobs", id]) => handlers::delete(state, id),
        (Method::Post, ["jobs", id, "retry"]) => handlers::retry(state, id),
        (Method::Post, ["jobs", id, "cancel"]) => handlers::cancel(state, id),
        (Method::Get, ["jobs", id, "attempts"]) => handlers::attempts(state, id),
        (_, ["health" | "functions"]) => Err(Error::MethodNotAllowed { allow: "GET" }),
        (_, ["jobs"]) => Err(Error::MethodNotAllowed { allow: "GET, POST" }),
        (_, ["jobs", _]) => Err(Error::MethodNotAllowed {
            allow: "GET, DELETE",
        }),
        (_, ["jobs", _, "retry" | "cancel"]) => Err(Error::MethodNotAllowed { allow: "POST" }),
        (_, ["jobs", _, "attempts"]) => Err(Error::MethodNotAllowed { allow: "GET" }),
        _ => Err(Error::NotFound(format!("no route for {path}"))),
    }
}
