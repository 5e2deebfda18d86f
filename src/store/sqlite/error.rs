//! The one place that reads SQLite's error codes: every `rusqlite::Error` becomes an
//! [`Error::Storage`] here (through `?`), saying what happened as a [`StorageFailure`]. Nothing
//! outside this module looks at a SQLite code; the rest of the store and the server decide on
//! the failure kind alone.

use rusqlite::ErrorCode;

use crate::error::{Error, StorageFailure};

impl From<rusqlite::Error> for Error {
    fn from(err: rusqlite::Error) -> Self {
        Error::Storage {
            kind: classify(&err),
            detail: err.to_string(),
        }
    }
}

/// Only an SQLite failure carries a code; rusqlite's own errors (a column of the wrong type, no
/// row where one was expected) are ours to fix, so `Other`.
fn classify(err: &rusqlite::Error) -> StorageFailure {
    match err.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StorageFailure::Busy,
        Some(ErrorCode::DiskFull) => StorageFailure::Full,
        Some(ErrorCode::SystemIoFailure) => StorageFailure::Io,
        Some(ErrorCode::ReadOnly) => StorageFailure::ReadOnly,
        Some(ErrorCode::CannotOpen) => StorageFailure::CannotOpen,
        Some(ErrorCode::NotADatabase | ErrorCode::PermissionDenied) => StorageFailure::Unusable,
        _ => StorageFailure::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(code: std::os::raw::c_int, message: Option<&str>) -> Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), message.map(Into::into))
            .into()
    }

    fn kind(err: &Error) -> StorageFailure {
        match err {
            Error::Storage { kind, .. } => *kind,
            other => panic!("expected a storage error, got {other:?}"),
        }
    }

    #[test]
    fn each_sqlite_failure_says_what_happened() {
        use rusqlite::ffi;
        let cases = [
            (ffi::SQLITE_BUSY, StorageFailure::Busy),
            (ffi::SQLITE_LOCKED, StorageFailure::Busy),
            (ffi::SQLITE_FULL, StorageFailure::Full),
            (ffi::SQLITE_IOERR, StorageFailure::Io),
            (ffi::SQLITE_IOERR_FSYNC, StorageFailure::Io),
            (ffi::SQLITE_READONLY, StorageFailure::ReadOnly),
            (ffi::SQLITE_CANTOPEN, StorageFailure::CannotOpen),
            (ffi::SQLITE_NOTADB, StorageFailure::Unusable),
            (ffi::SQLITE_PERM, StorageFailure::Unusable),
            (ffi::SQLITE_CONSTRAINT_UNIQUE, StorageFailure::Other),
            (ffi::SQLITE_ERROR, StorageFailure::Other),
        ];
        for (code, expected) in cases {
            assert_eq!(kind(&failure(code, None)), expected, "code {code}");
        }
        assert_eq!(
            kind(&rusqlite::Error::QueryReturnedNoRows.into()),
            StorageFailure::Other
        );
    }

    #[test]
    fn a_busy_database_is_an_outage_not_a_bug() {
        assert!(kind(&failure(rusqlite::ffi::SQLITE_BUSY, None)).is_outage());
        assert!(!kind(&failure(rusqlite::ffi::SQLITE_CONSTRAINT, None)).is_outage());
    }

    #[test]
    fn the_detail_is_sqlites_message() {
        let err = failure(rusqlite::ffi::SQLITE_NOTADB, Some("file is not a database"));
        assert_eq!(err.to_string(), "database error: file is not a database");
        let err = failure(rusqlite::ffi::SQLITE_FULL, None);
        assert_eq!(
            err.to_string(),
            "database error: Error code 13: Insertion failed because database is full"
        );
    }
}
