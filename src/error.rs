//! The crate's one error type. Each variant says when it happens; the HTTP layer maps every
//! variant to a status and a stable `code` string in exactly one place (`http::response`).
//!
//! A database's own errors never cross the store's boundary: the store turns them into
//! [`Error::Storage`], whose [`StorageFailure`] says what happened in terms any backend can
//! report and any caller can act on.

use std::fmt;

/// Everything that can go wrong, from a bad request field to a database that stopped answering.
#[derive(Debug)]
pub enum Error {
    /// A request field or query parameter is missing, has the wrong type or is out of range.
    /// The message names the field.
    Validation(String),
    /// The job names a function that does not exist (or is not a valid function name).
    UnknownFunction(String),
    /// The request body is not well-formed JSON.
    InvalidJson(String),
    /// The job (or route) does not exist.
    NotFound(String),
    /// The path exists but not with this method; `allow` lists the methods that do.
    MethodNotAllowed { allow: &'static str },
    /// The job exists but is in a state where the operation makes no sense
    /// (for example retrying a job that succeeded).
    InvalidState(String),
    /// The request body is larger than `MAX_BODY_BYTES`.
    PayloadTooLarge { limit: usize },
    /// The request declares a body type other than JSON.
    UnsupportedMediaType(String),
    /// The server is shutting down, or the database is busy, unreachable or cannot write (a
    /// full disk, an I/O error).
    Unavailable(String),
    /// The request's framing is ambiguous or malformed (a bad or repeated `Content-Length`,
    /// `Content-Length` with `Transfer-Encoding`, an unknown transfer coding). The connection
    /// is closed after the answer, so the bytes after such a request are never run.
    BadRequest(String),
    /// The request head has more header fields or bytes than the server accepts.
    HeaderTooLarge(String),
    /// The request target is longer than the server accepts; the message never echoes it.
    UriTooLong { limit: usize },
    /// The request body did not arrive in time.
    RequestTimeout(String),
    /// A body sent without a `Content-Length` (chunked): refused, as tiny_http's chunked
    /// decoder has no bound on what it buffers.
    LengthRequired,
    /// `API_TOKEN` is set and the request carries no valid `Authorization: Bearer` token.
    Unauthorized(String),
    /// The request's token is valid but may not do this (`API_READ_TOKEN` on a write).
    Forbidden(String),
    /// Every connection slot (`MAX_CONNECTIONS`) is taken.
    TooManyConnections { limit: usize },
    /// A submit found `limit` jobs pending already (`MAX_PENDING_JOBS`); nothing was stored.
    /// The client should try again later, when workers have taken some.
    QueueFull { limit: u64 },
    /// A submit's `Idempotency-Key` was used within `IDEMPOTENCY_TTL_SECONDS` by a request
    /// with another body (or to another route); nothing was stored. The client must use a new
    /// key for a new request.
    IdempotencyKeyReused(String),
    /// A client's submits passed `SUBMIT_RATE_LIMIT` (`limit` per period); nothing was read
    /// or stored. A token is back in `reset_seconds` (at least 1).
    RateLimited { limit: u32, reset_seconds: u64 },
    /// The job names a function whose `NAME.schema.json` cannot be used (not JSON, not a
    /// valid draft 2020-12 schema): its payloads cannot be checked, so none is accepted. The
    /// message names the function and what is wrong with the file.
    SchemaUnusable(String),
    /// The database failed; `kind` says how. The detail (the database's own message) is
    /// logged, never sent to a client.
    Storage {
        kind: StorageFailure,
        detail: String,
    },
    /// A stored row could not be understood (for example an unknown status string).
    CorruptRow(String),
    /// A bug: a handler panicked or an invariant broke. The detail is logged, never sent.
    Internal(String),
    /// An environment variable has a value the server cannot use; the start is refused.
    Config {
        variable: &'static str,
        message: String,
    },
    /// The database file cannot be opened or is not a SQLite database (its directory does not
    /// exist, it is a directory or another kind of file, it may not be written). The start is
    /// refused; the message names the file and says what is wrong with it.
    DatabaseUnusable(String),
    /// The server could not start: the address is taken, a thread cannot be started, the
    /// database was made by a newer build, etc.
    Startup(String),
    /// The accept loop ended on an error it cannot recover from (for example, out of file
    /// descriptors for too long); the server drained and exits non-zero for a restart.
    ListenerFailed(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How the database failed, in terms of what can be done about it rather than a driver's codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageFailure {
    /// Another connection held the database for longer than the store waits (busy, locked).
    Busy,
    /// The disk is full: nothing more can be written until space is freed.
    Full,
    /// The device failed to read or write.
    Io,
    /// The database can be read but not written (a read-only file, directory or mount).
    ReadOnly,
    /// The database cannot be opened (its directory is missing, it is a directory, ...).
    CannotOpen,
    /// The file is not a database, or this process is denied access to it.
    Unusable,
    /// Anything else: a statement the database refused or a value it could not convert, so a
    /// bug in the server or a damaged database.
    Other,
}

impl StorageFailure {
    /// Busy, unreadable, unwritable or full: conditions that pass, or that an operator fixes,
    /// rather than bugs. A client may try again later.
    pub fn is_outage(self) -> bool {
        use StorageFailure::*;
        matches!(self, Busy | Full | Io | ReadOnly | CannotOpen)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Validation(message)
            | Error::InvalidJson(message)
            | Error::UnknownFunction(message)
            | Error::NotFound(message)
            | Error::InvalidState(message)
            | Error::UnsupportedMediaType(message)
            | Error::Unavailable(message)
            | Error::BadRequest(message)
            | Error::HeaderTooLarge(message)
            | Error::RequestTimeout(message)
            | Error::Unauthorized(message)
            | Error::Forbidden(message)
            | Error::IdempotencyKeyReused(message)
            | Error::CorruptRow(message)
            | Error::Internal(message)
            | Error::DatabaseUnusable(message)
            | Error::SchemaUnusable(message)
            | Error::Startup(message) => f.write_str(message),
            Error::ListenerFailed(message) => {
                write!(f, "the server stopped accepting connections: {message}")
            }
            Error::MethodNotAllowed { allow } => {
                write!(f, "method not allowed on this path; allowed: {allow}")
            }
            Error::PayloadTooLarge { limit } => {
                write!(f, "request body is larger than the limit of {limit} bytes")
            }
            Error::LengthRequired => f.write_str(
                "send the body with a Content-Length; chunked request bodies are not accepted",
            ),
            Error::UriTooLong { limit } => write!(
                f,
                "the request target is longer than the limit of {limit} bytes"
            ),
            Error::TooManyConnections { limit } => write!(
                f,
                "the server is serving its maximum of {limit} connections; retry shortly"
            ),
            Error::QueueFull { limit } => write!(
                f,
                "the queue is full: {limit} jobs are pending (MAX_PENDING_JOBS); try again later"
            ),
            Error::RateLimited {
                limit,
                reset_seconds,
            } => write!(
                f,
                "too many submits: this client may make {limit} per SUBMIT_RATE_LIMIT period; \
                 try again in {reset_seconds} s"
            ),
            Error::Storage { detail, .. } => write!(f, "database error: {detail}"),
            Error::Config { variable, message } => write!(f, "{variable}: {message}"),
        }
    }
}

impl std::error::Error for Error {}
