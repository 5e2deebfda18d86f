//! Which database a test server runs on. SQLite (a file in the server's temp dir) unless
//! `TEST_POSTGRES_URL` is set and this build has the cargo feature `postgres`: then each
//! server gets a fresh PostgreSQL schema of its own, named in `DATABASE_URL`'s `options`
//! parameter (the backend creates it), and dropped when the last server using it is gone.
//!
//! The drop goes through the `postgres` crate, the same client the server uses, so the suite
//! needs no `psql`. It is best effort: a schema that cannot be dropped is reported on stderr
//! and left behind (names start with `t_`, so `DROP SCHEMA` by pattern clears them).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::{SystemTime, UNIX_EPOCH};

/// The variable that points the suite at a PostgreSQL server, e.g.
/// `postgres://root@127.0.0.1/test`.
pub const POSTGRES_URL_VARIABLE: &str = "TEST_POSTGRES_URL";

/// What a skipped PostgreSQL-only test prints.
pub const NEEDS_POSTGRES: &str = "skipped: needs TEST_POSTGRES_URL and --features postgres";

/// The PostgreSQL server to test against, if the environment names one and this build can
/// talk to it. Says once per test binary when the variable is set but the feature is off.
pub fn postgres_url() -> Option<String> {
    let url = std::env::var(POSTGRES_URL_VARIABLE)
        .ok()
        .filter(|url| !url.trim().is_empty())?;
    if cfg!(feature = "postgres") {
        return Some(url);
    }
    static NOTE: Once = Once::new();
    NOTE.call_once(|| {
        eprintln!(
            "TEST_POSTGRES_URL is set but this build has no postgres feature; running against SQLite"
        )
    });
    None
}

/// The database of one test server (shared by every process of a multi-node test).
#[derive(Clone)]
pub enum Database {
    /// `jobs.db` in the server's temp dir.
    Sqlite,
    /// A schema of its own on the PostgreSQL server.
    Postgres(Arc<Schema>),
}

impl Database {
    /// PostgreSQL when the environment asks for it (see [`postgres_url`]), else SQLite.
    pub fn from_env() -> Database {
        Database::postgres().unwrap_or(Database::Sqlite)
    }

    /// A fresh PostgreSQL schema, or `None` when the suite runs on SQLite: for tests that
    /// need several nodes on one database.
    pub fn postgres() -> Option<Database> {
        Schema::fresh().map(|schema| Database::Postgres(Arc::new(schema)))
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Database::Postgres(_))
    }

    /// How the log and failure messages name it.
    pub fn describe(&self) -> String {
        match self {
            Database::Sqlite => "SQLite".to_string(),
            Database::Postgres(schema) => format!("PostgreSQL schema {}", schema.name),
        }
    }
}

/// One PostgreSQL schema, dropped with everything in it when the last holder lets go.
pub struct Schema {
    /// The server URL the schema lives on, as `TEST_POSTGRES_URL` gave it.
    server_url: String,
    pub name: String,
}

impl Schema {
    /// A new, unique schema name on the server `TEST_POSTGRES_URL` names; `None` when the
    /// suite runs on SQLite. Nothing is created here: the server creates the schema it is
    /// pointed at, and that is part of what runs under test.
    pub fn fresh() -> Option<Schema> {
        let server_url = postgres_url()?;
        Some(Schema {
            server_url,
            name: unique_schema_name(),
        })
    }

    /// The `DATABASE_URL` that points a server at this schema.
    pub fn database_url(&self) -> String {
        let separator = if self.server_url.contains('?') {
            '&'
        } else {
            '?'
        };
        format!(
            "{}{separator}options=-csearch_path%3D{}",
            self.server_url, self.name
        )
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        if let Err(err) = drop_schema(&self.server_url, &self.name) {
            eprintln!("note: could not drop test schema {}: {err}", self.name);
        }
    }
}

/// `t_<pid>_<counter>_<nanos>`: unique across the test binaries that run at once (pid),
/// the servers of one binary (counter), and runs that reuse a pid (nanos). Lower case, so it
/// needs no quoting in SQL.
fn unique_schema_name() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.subsec_nanos())
        .unwrap_or(0);
    format!(
        "t_{}_{}_{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(feature = "postgres")]
fn drop_schema(server_url: &str, name: &str) -> Result<(), String> {
    let mut client =
        postgres::Client::connect(server_url, postgres::NoTls).map_err(|err| err.to_string())?;
    // A killed server's connections may still hold locks for a moment: wait, but not forever.
    client
        .batch_execute(&format!(
            "SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS {name} CASCADE"
        ))
        .map_err(|err| err.to_string())
}

#[cfg(not(feature = "postgres"))]
fn drop_schema(_server_url: &str, _name: &str) -> Result<(), String> {
    // Unreachable: without the feature no schema is ever handed out.
    Ok(())
}
