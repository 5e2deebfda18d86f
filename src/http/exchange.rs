//! One connection's requests, in order: each is checked (framing, limits, token), routed,
//! answered explicitly and logged in one line, and only then is the next one read. A request
//! whose framing is in doubt is answered and its connection closed, so whatever the client
//! sent after it is never read as a request.

use std::fmt::Display;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use log::{debug, info};

use crate::error::{Error, Result};
use crate::http::auth;
use crate::http::framing::{self, Body, Head};
use crate::http::handlers::AppState;
use crate::http::response::ApiResponse;
use crate::http::routes;

/// Whether the connection may carry another request.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    KeepAlive,
    Close,
}

/// Serves every request the connection sends until it closes, errs, or must be closed.
pub fn serve_connection<E: Display>(
    state: &AppState,
    requests: impl Iterator<Item = std::result::Result<tiny_http::Request, E>>,
) {
    for received in requests {
        match received {
            Ok(request) => {
                if serve_request(state, request) == Next::Close {
                    return;
                }
            }
            // tiny_http has answered it (an empty 400 or 408) and ends the connection.
            Err(err) => {
                debug!("unreadable request: {err}");
                return;
            }
        }
    }
}

fn serve_request(state: &AppState, mut request: tiny_http::Request) -> Next {
    let started = Instant::now();
    let _answering = state.in_flight.enter();
    let fields = framing::fields_of(request.headers());
    let head = Head {
        target: request.url(),
        fields,
    };
    let public = auth::is_public(request.method(), request.url());
    let checked = framing::check(&head).and_then(|body| {
        auth::authorize(state.api_token.as_deref(), public, &head.fields)?;
        Ok(body)
    });
    // Logged without the query, and never more than the limit of the target.
    let line = log::log_enabled!(log::Level::Info).then(|| {
        let path = request.url().split('?').next().unwrap_or_default();
        let path: String = path
            .chars()
            .take(framing::MAX_TARGET_BYTES.min(200))
            .collect();
        format!("{} {path}", request.method())
    });
    let mut body_read = false;
    let (response, next) = match checked {
        Err(err) => {
            // The body, if any, was not read: closing is the only way not to misread it.
            (ApiResponse::from_error(&err), Next::Close)
        }
        Ok(body) => {
            let response =
                answer_or_500(|| routes::route(state, &mut request, &body, &mut body_read));
            let unread = !body_read && !matches!(body, Body::Empty | Body::Length(0));
            let next = if state.is_shutting_down() || unread {
                Next::Close
            } else {
                Next::KeepAlive
            };
            (response, next)
        }
    };
    let status = response.status;
    let sent = if next == Next::Close && !tiny_reads_more(&request, body_read) {
        let head_only = *request.method() == tiny_http::Method::Head;
        response.write_closing(&mut request.into_writer(), head_only)
    } else {
        // tiny_http reads what is left of a body when the request is dropped, and
        // `into_writer` drops it before we could write: answer first, without the
        // `Connection: close` tiny_http will not send; the connection closes all the same.
        request.respond(response.into_tiny())
    };
    if let Err(err) = sent {
        debug!("could not send a response: {err}");
    }
    if let Some(line) = line {
        info!(
            "{line} {status} {:.3}ms",
            started.elapsed().as_secs_f64() * 1000.0
        );
    }
    next
}

/// Whether tiny_http still has body bytes to read (and discard) for this request: it
/// buffers none of a body we did not read unless it declared at most 1 KiB (0.12.17).
fn tiny_reads_more(request: &tiny_http::Request, body_read: bool) -> bool {
    if body_read {
        return false;
    }
    match request.body_length() {
        Some(length) => length > 0,
        None => request.headers().get("Transfer-Encoding").is_some(),
    }
}

/// Runs a handler so that an error becomes its JSON response and a panic becomes a JSON 500;
/// either way the connection thread lives on. The panic hook has already logged the message.
fn answer_or_500(handler: impl FnOnce() -> Result<ApiResponse>) -> ApiResponse {
    catch_unwind(AssertUnwindSafe(handler))
        .unwrap_or_else(|_| Err(Error::Internal("a request handler panicked".into())))
        .unwrap_or_else(|err| ApiResponse::from_error(&err))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_handler_answers_a_json_500() {
        let response = answer_or_500(|| panic!("boom"));
        assert_eq!(response.status, 500);
        assert_eq!(
            response.body.as_deref(),
            Some(
                r#"{"error":{"code":"internal_error","message":"internal error; the server log has the details"}}"#
            )
        );
    }

    #[test]
    fn an_error_becomes_its_envelope() {
        let response = answer_or_500(|| Err(Error::NotFound("no job with id x".into())));
        assert_eq!(response.status, 404);
        assert_eq!(
            response.body.as_deref(),
            Some(r#"{"error":{"code":"not_found","message":"no job with id x"}}"#)
        );
    }
}
