//! The one place that reads PostgreSQL's errors: every `postgres::Error` becomes an
//! [`Error::Storage`] here, saying what happened as a [`StorageFailure`] (by SQLSTATE class,
//! or by the connection having failed). Nothing else in the backend looks at a SQLSTATE.
//!
//! Inside the backend a statement's error travels as a [`Failure`], which keeps the driver's
//! error long enough for the pool to tell whether the connection is still usable.

use std::io;

use postgres::error::SqlState;

use crate::error::{Error, StorageFailure};

/// What a closure run on a pooled connection failed with: the database's error (which may
/// mean the connection is gone) or the store's own answer (`NotFound`, `QueueFull`, ...).
#[derive(Debug)]
pub enum Failure {
    Database(postgres::Error),
    Refused(Error),
}

impl From<postgres::Error> for Failure {
    fn from(err: postgres::Error) -> Self {
        Failure::Database(err)
    }
}

impl From<Error> for Failure {
    fn from(err: Error) -> Self {
        Failure::Refused(err)
    }
}

impl From<Failure> for Error {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Database(err) => err.into(),
            Failure::Refused(err) => err,
        }
    }
}

impl Failure {
    /// Whether the connection that produced this can no longer be trusted: it was closed,
    /// its socket failed, or the server ended the session. The pool drops such a connection.
    pub fn breaks_connection(&self) -> bool {
        match self {
            Failure::Database(err) => breaks_connection(err),
            Failure::Refused(_) => false,
        }
    }
}

pub fn breaks_connection(err: &postgres::Error) -> bool {
    match err.code() {
        Some(code) => ends_session(code),
        None => err.is_closed() || io_cause(err).is_some(),
    }
}

impl From<postgres::Error> for Error {
    fn from(err: postgres::Error) -> Self {
        Error::Storage {
            kind: classify(&err),
            detail: detail(&err),
        }
    }
}

/// An error from connecting: a server that cannot be reached is `CannotOpen` (an outage);
/// credentials or a database name the server refuses are `Unusable` (a configuration error).
pub fn connect_failure(err: postgres::Error) -> Error {
    let kind = match err.code() {
        Some(_) => classify(&err),
        None => StorageFailure::CannotOpen,
    };
    Error::Storage {
        kind,
        detail: format!("cannot connect to PostgreSQL: {}", detail(&err)),
    }
}

fn classify(err: &postgres::Error) -> StorageFailure {
    let Some(code) = err.code() else {
        // No SQLSTATE: the driver's own error. A failed socket is the server being
        // unreachable; a value that cannot be converted is a bug of ours.
        return if err.is_closed() || io_cause(err).is_some() {
            StorageFailure::Io
        } else {
            StorageFailure::Other
        };
    };
    let class = &code.code()[..2];
    if *code == SqlState::DISK_FULL {
        StorageFailure::Full
    } else if *code == SqlState::READ_ONLY_SQL_TRANSACTION {
        StorageFailure::ReadOnly
    } else if [
        SqlState::T_R_SERIALIZATION_FAILURE,
        SqlState::T_R_DEADLOCK_DETECTED,
        SqlState::LOCK_NOT_AVAILABLE,
        SqlState::QUERY_CANCELED,
        SqlState::CANNOT_CONNECT_NOW,
    ]
    .contains(code)
        || class == "53"
    {
        // Contention, a statement timeout, a server starting up, too many connections, out
        // of memory: conditions that pass.
        StorageFailure::Busy
    } else if class == "08" || class == "58" || ends_session(code) {
        StorageFailure::Io
    } else if class == "28"
        || *code == SqlState::INVALID_CATALOG_NAME
        || *code == SqlState::INSUFFICIENT_PRIVILEGE
    {
        // Wrong credentials, no such database, no permission: an operator must fix it.
        StorageFailure::Unusable
    } else {
        StorageFailure::Other
    }
}

/// The server ended the session (shut down, crashed, or was told to end it).
fn ends_session(code: &SqlState) -> bool {
    code.code().starts_with("08")
        || [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::IDLE_SESSION_TIMEOUT,
        ]
        .contains(code)
}

fn io_cause(err: &postgres::Error) -> Option<&io::Error> {
    std::error::Error::source(err).and_then(|source| source.downcast_ref::<io::Error>())
}

/// The driver's message with its cause: `postgres::Error` alone says only "db error". Never
/// holds a password: the driver's messages do not quote the connection string.
fn detail(err: &postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{} ({}): {}", db.severity(), db.code().code(), db.message()),
        None => match std::error::Error::source(err) {
            Some(cause) => format!("{err}: {cause}"),
            None => err.to_string(),
        },
    }
}
