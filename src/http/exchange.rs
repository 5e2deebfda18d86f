//! One connection's requests, in order: each is checked (framing, limits), passed through the
//! middleware steps (token, access log), routed, answered explicitly, and only then is the
//! next one read. A request
//! whose framing is in doubt is answered and its connection closed, so whatever the client
//! sent after it is never read as a request.

use std::borrow::Cow;
use std::fmt::Display;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use log::debug;

use crate::error::{Error, Result};
use crate::http::framing::{self, Body, Head};
use crate::http::handlers::AppState;
use crate::http::middleware::Seen;
use crate::http::pool::Watch;
use crate::http::response::ApiResponse;
use crate::http::routes;
use crate::http::socket;

/// Whether the connection may carry another request.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    KeepAlive,
    Close,
}

/// Serves every request the connection sends until it closes, errs, or must be closed.
pub fn serve_connection<E: Display>(
    state: &AppState,
    mut requests: impl Iterator<Item = std::result::Result<tiny_http::Request, E>>,
    watch: &Watch,
) {
    loop {
        watch.reading();
        let received = requests.next();
        watch.done_reading();
        let Some(received) = received else {
            return;
        };
        if watch.abandoned() {
            debug!("closed a connection whose request head took too long");
            return;
        }
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
    let method = request.method().clone();
    let target = without_base_path(&state.base_path, request.url()).to_string();
    let seen = Seen {
        method: &method,
        target: &target,
        fields: &head.fields,
        peer: request.remote_addr().map(|peer| peer.ip()),
    };
    let checked = framing::check(&head).and_then(|body| {
        let headers = state.middleware.before(&seen)?;
        Ok((body, headers))
    });
    let mut body_read = false;
    let (response, next) = match checked {
        Err(err) => {
            // The body, if any, was not read: closing is the only way not to misread it.
            (ApiResponse::from_error(&err), Next::Close)
        }
        Ok((body, headers)) => {
            let mut response = answer_or_500(|| {
                routes::route(state, &target, &mut request, &body, &mut body_read)
            });
            response.headers.extend(headers);
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
    match next {
        Next::Close => answer_and_close(request, response, body_read, state.local_addr),
        Next::KeepAlive => {
            if let Err(err) = request.respond(response.into_tiny()) {
                debug!("could not send a response: {err}");
            }
        }
    }
    state.middleware.after(&seen, status, started.elapsed());
    next
}

/// The request target without `base` (`DASHBOARD_BASE_PATH`) in front of it: a proxy may
/// pass the prefix on or strip it, and either reaches the same route. `/base` alone is the
/// dashboard (`/`).
fn without_base_path<'a>(base: &str, target: &'a str) -> Cow<'a, str> {
    if base.is_empty() {
        return Cow::Borrowed(target);
    }
    match target.strip_prefix(base) {
        Some(rest) if rest.starts_with('/') => Cow::Borrowed(rest),
        Some(rest) if rest.is_empty() || rest.starts_with('?') => Cow::Owned(format!("/{rest}")),
        _ => Cow::Borrowed(target),
    }
}

/// Answers a request after which the connection is closed. `Connection: close` says so, but
/// tiny_http's `Response` drops that header, so the answer goes to the raw writer; and when
/// tiny_http still has body bytes to discard, which it does as the request is dropped (before a
/// raw writer could be written to), the answer goes out without the header instead.
///
/// A body tiny_http would discard is cut off first: the socket's reading side is shut, so the
/// discard ends at once, however long the client would keep sending.
pub fn answer_and_close(
    request: tiny_http::Request,
    response: ApiResponse,
    body_read: bool,
    local: SocketAddr,
) {
    let cut_off = || {
        request
            .remote_addr()
            .is_some_and(|peer| socket::stop_reading(local.port(), *peer))
    };
    let sent = if body_read || !discards_on_drop(&request) || cut_off() {
        let head_only = *request.method() == tiny_http::Method::Head;
        response.write_closing(&mut request.into_writer(), head_only)
    } else {
        request.respond(response.into_tiny())
    };
    if let Err(err) = sent {
        debug!("could not send a response: {err}");
    }
}

/// Whether dropping the request makes tiny_http (0.12.17) read and discard the rest of its
/// body: it does for a `Content-Length` over 1 KiB, or any with `Expect: 100-continue`, when
/// the body was not read to its end. Smaller bodies it has buffered already; chunked and
/// upgrade requests are refused before their bodies are touched, and those it never drains.
fn discards_on_drop(request: &tiny_http::Request) -> bool {
    let expects_continue = request.headers().get("Expect").is_some();
    request
        .body_length()
        .is_some_and(|length| length > 1024 || (length > 0 && expects_continue))
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
    fn the_base_path_is_taken_off_when_a_request_carries_it() {
        assert_eq!(without_base_path("", "/jobs"), "/jobs");
        assert_eq!(without_base_path("/admin", "/admin/jobs?x=1"), "/jobs?x=1");
        assert_eq!(without_base_path("/admin", "/admin"), "/");
        assert_eq!(
            without_base_path("/admin", "/admin?view=jobs"),
            "/?view=jobs"
        );
        assert_eq!(without_base_path("/admin", "/admin/"), "/");
        // Only a whole segment: `/administrator` is another path, left as it is.
        assert_eq!(
            without_base_path("/admin", "/administrator"),
            "/administrator"
        );
        assert_eq!(without_base_path("/admin", "/jobs"), "/jobs");
    }

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
