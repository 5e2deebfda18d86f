//! Responses: the one place where an error becomes an HTTP status and a stable `code`, and
//! where our response value becomes a tiny_http response.

use serde::Serialize;
use serde_json::json;

use crate::error::Error;

/// What `Retry-After` tells a client whose submit found the queue full: long enough for
/// workers to take some jobs, short enough that a client does not wait for nothing.
pub const QUEUE_FULL_RETRY_AFTER_SECONDS: u32 = 5;

/// The media type of every API answer.
pub const JSON: &str = "application/json";

/// A response before it meets the socket: handlers build these, never tiny_http types.
#[derive(Debug)]
pub struct ApiResponse {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    /// The body's media type: JSON for the API, others for pages and metrics.
    pub content_type: &'static str,
    /// The body, or `None` for an empty one (204).
    pub body: Option<String>,
}

impl ApiResponse {
    pub fn json(status: u16, value: &impl Serialize) -> ApiResponse {
        match serde_json::to_string(value) {
            Ok(body) => ApiResponse::text(status, JSON, body),
            Err(err) => {
                ApiResponse::from_error(&Error::Internal(format!("cannot encode response: {err}")))
            }
        }
    }

    /// A body that is JSON text already (the built-in `openapi.json`).
    pub fn json_text(status: u16, body: &str) -> ApiResponse {
        ApiResponse::text(status, JSON, body.to_string())
    }

    /// A body of any media type, such as `text/plain; version=0.0.4` or `text/html`.
    pub fn text(status: u16, content_type: &'static str, body: String) -> ApiResponse {
        ApiResponse {
            status,
            headers: Vec::new(),
            content_type,
            body: Some(body),
        }
    }

    pub fn empty(status: u16) -> ApiResponse {
        ApiResponse {
            status,
            headers: Vec::new(),
            content_type: JSON,
            body: None,
        }
    }

    pub fn with_header(mut self, name: &'static str, value: String) -> ApiResponse {
        self.headers.push((name, value));
        self
    }

    /// The error envelope `{"error":{"code":…,"message":…}}`. Internal details are logged here
    /// and replaced by a generic message.
    pub fn from_error(error: &Error) -> ApiResponse {
        let (status, code) = status_and_code(error);
        let message = match error {
            Error::Storage { .. }
            | Error::CorruptRow(_)
            | Error::Internal(_)
            | Error::Startup(_)
            | Error::ListenerFailed(_)
            | Error::DatabaseUnusable(_)
            | Error::Config { .. } => {
                log::error!("internal error: {error}");
                if status == 503 {
                    "the database is not answering; try again shortly".to_string()
                } else {
                    "internal error; the server log has the details".to_string()
                }
            }
            _ => error.to_string(),
        };
        let response = ApiResponse::json(
            status,
            &json!({"error": {"code": code, "message": message}}),
        );
        match error {
            Error::MethodNotAllowed { allow } => {
                response.with_header("Allow", (*allow).to_string())
            }
            Error::Unauthorized(_) => response.with_header("WWW-Authenticate", "Bearer".into()),
            Error::TooManyConnections { .. } => response.with_header("Retry-After", "1".into()),
            Error::QueueFull { .. } => {
                response.with_header("Retry-After", QUEUE_FULL_RETRY_AFTER_SECONDS.to_string())
            }
            Error::RateLimited {
                limit,
                reset_seconds,
            } => response
                .with_header("Retry-After", (*reset_seconds).max(1).to_string())
                .with_header("RateLimit-Limit", limit.to_string())
                .with_header("RateLimit-Remaining", "0".into())
                .with_header("RateLimit-Reset", reset_seconds.to_string()),
            _ => response,
        }
    }

    pub fn into_tiny(self) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
        let has_body = self.body.is_some();
        let mut response = tiny_http::Response::from_data(self.body.unwrap_or_default())
            .with_status_code(self.status);
        if has_body {
            let content_type = if self.content_type == JSON {
                json_content_type()
            } else {
                tiny_http::Header::from_bytes("Content-Type", self.content_type).ok()
            };
            if let Some(content_type) = content_type {
                response.add_header(content_type);
            }
        }
        for (name, value) in &self.headers {
            add_header(&mut response, name, value);
        }
        response
    }
}

impl ApiResponse {
    /// Writes the response with `Connection: close`, which tiny_http's `Response` refuses to
    /// carry, straight to the connection's writer. Only for responses after which the server
    /// closes the connection: the client must not send another request on it.
    pub fn write_closing(
        self,
        writer: &mut dyn std::io::Write,
        head_only: bool,
    ) -> std::io::Result<()> {
        let reason = tiny_http::StatusCode(self.status).default_reason_phrase();
        let body = self.body.unwrap_or_default();
        let mut head = format!("HTTP/1.1 {} {reason}\r\n", self.status);
        if !body.is_empty() {
            head.push_str(&format!("Content-Type: {}\r\n", self.content_type));
        }
        for (name, value) in &self.headers {
            // Header values come from our own code, but a stray line break must never split them.
            if !value.contains(['\r', '\n']) {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        head.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        ));
        writer.write_all(head.as_bytes())?;
        if !head_only {
            writer.write_all(body.as_bytes())?;
        }
        writer.flush()
    }
}

/// Built once: parsing and checking a header's bytes costs more than cloning it. (`None`
/// cannot happen with these constant bytes.)
fn json_content_type() -> Option<tiny_http::Header> {
    static HEADER: std::sync::OnceLock<Option<tiny_http::Header>> = std::sync::OnceLock::new();
    HEADER
        .get_or_init(|| tiny_http::Header::from_bytes("Content-Type", "application/json").ok())
        .clone()
}

fn add_header<R: std::io::Read>(response: &mut tiny_http::Response<R>, name: &str, value: &str) {
    match tiny_http::Header::from_bytes(name, value) {
        Ok(header) => response.add_header(header),
        Err(_) => log::error!("dropped an invalid response header {name}"),
    }
}

/// The mapping from error to status and code. Every error response goes through here.
fn status_and_code(error: &Error) -> (u16, &'static str) {
    match error {
        Error::Validation(_) => (400, "validation_error"),
        Error::InvalidJson(_) => (400, "invalid_json"),
        Error::UnknownFunction(_) => (400, "unknown_function"),
        Error::NotFound(_) => (404, "not_found"),
        Error::MethodNotAllowed { .. } => (405, "method_not_allowed"),
        Error::InvalidState(_) => (409, "invalid_state"),
        Error::PayloadTooLarge { .. } => (413, "payload_too_large"),
        Error::QueueFull { .. } => (429, "queue_full"),
        Error::IdempotencyKeyReused(_) => (422, "idempotency_key_reused"),
        Error::RateLimited { .. } => (429, "rate_limited"),
        Error::SchemaUnusable(_) => (422, "schema_unusable"),
        Error::UnsupportedMediaType(_) => (415, "unsupported_media_type"),
        Error::Unavailable(_) => (503, "unavailable"),
        Error::BadRequest(_) => (400, "bad_request"),
        Error::Unauthorized(_) => (401, "unauthorized"),
        Error::Forbidden(_) => (403, "forbidden"),
        Error::RequestTimeout(_) => (408, "request_timeout"),
        Error::LengthRequired => (411, "length_required"),
        Error::UriTooLong { .. } => (414, "uri_too_long"),
        Error::HeaderTooLarge(_) => (431, "header_too_large"),
        Error::TooManyConnections { .. } => (503, "too_many_connections"),
        Error::Storage { kind, .. } if kind.is_outage() => (503, "unavailable"),
        Error::Storage { .. }
        | Error::CorruptRow(_)
        | Error::Internal(_)
        | Error::Config { .. }
        | Error::Startup(_)
        | Error::ListenerFailed(_)
        | Error::DatabaseUnusable(_) => (500, "internal_error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::StorageFailure;

    fn envelope(error: Error) -> (u16, serde_json::Value) {
        let response = ApiResponse::from_error(&error);
        let body = serde_json::from_str(response.body.as_deref().unwrap()).unwrap();
        (response.status, body)
    }

    #[test]
    fn internal_errors_hide_their_details() {
        let (status, body) = envelope(Error::Internal("secret path /etc/x".into()));
        assert_eq!(status, 500);
        assert_eq!(body["error"]["code"], "internal_error");
        assert!(!body.to_string().contains("secret"));
    }

    fn storage(kind: StorageFailure) -> Error {
        Error::Storage {
            kind,
            detail: "secret detail".into(),
        }
    }

    #[test]
    fn a_busy_database_is_unavailable_not_a_bug() {
        let (status, body) = envelope(storage(StorageFailure::Busy));
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (503, Some("unavailable"))
        );
        assert_eq!(
            body["error"]["message"],
            "the database is not answering; try again shortly"
        );
    }

    #[test]
    fn a_database_error_that_is_no_outage_is_internal_and_hidden() {
        let (status, body) = envelope(storage(StorageFailure::Other));
        assert_eq!(status, 500);
        assert_eq!(body["error"]["code"], "internal_error");
        assert!(!body.to_string().contains("secret"));
    }

    #[test]
    fn a_full_queue_is_429_with_retry_after() {
        let response = ApiResponse::from_error(&Error::QueueFull { limit: 3 });
        assert_eq!(response.status, 429);
        assert_eq!(response.headers, vec![("Retry-After", "5".to_string())]);
        let (_, body) = envelope(Error::QueueFull { limit: 3 });
        assert_eq!(body["error"]["code"], "queue_full");
    }

    #[test]
    fn a_rate_limited_submit_is_429_with_every_header() {
        let error = Error::RateLimited {
            limit: 3,
            reset_seconds: 20,
        };
        let response = ApiResponse::from_error(&error);
        assert_eq!(response.status, 429);
        let header = |value: &str| value.to_string();
        assert_eq!(
            response.headers,
            vec![
                ("Retry-After", header("20")),
                ("RateLimit-Limit", header("3")),
                ("RateLimit-Remaining", header("0")),
                ("RateLimit-Reset", header("20")),
            ]
        );
        assert_eq!(envelope(error).1["error"]["code"], "rate_limited");
    }

    #[test]
    fn a_body_of_another_media_type_keeps_its_type() {
        let response = ApiResponse::text(200, "text/plain; version=0.0.4", "up 1\n".into());
        let tiny = response.into_tiny();
        let content_type = tiny
            .headers()
            .get("Content-Type")
            .map(|value| value.as_str().to_string());
        assert_eq!(content_type.as_deref(), Some("text/plain; version=0.0.4"));
        let mut written = Vec::new();
        ApiResponse::text(200, "text/html", "<p>hi</p>".into())
            .write_closing(&mut written, false)
            .unwrap();
        let written = String::from_utf8(written).unwrap();
        assert!(written.contains("Content-Type: text/html\r\n"), "{written}");
        assert!(written.ends_with("\r\n\r\n<p>hi</p>"), "{written}");
    }

    #[test]
    fn method_not_allowed_carries_allow() {
        let response = ApiResponse::from_error(&Error::MethodNotAllowed { allow: "GET, POST" });
        assert_eq!(response.status, 405);
        assert_eq!(response.headers, vec![("Allow", "GET, POST".to_string())]);
    }
}
