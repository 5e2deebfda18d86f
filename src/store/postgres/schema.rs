//! The schema and its migrations, keyed by the versions recorded in `schema_migrations`.
//!
//! Several nodes may start at once against a new database: each migrates in one transaction
//! under a transaction-scoped advisory lock, so one applies what is missing and the others
//! find it applied. The tables live in the first schema of the connection's `search_path`,
//! which is created if missing, so several deployments (or tests) can share one database,
//! each with `options=-csearch_path%3D<name>` in its connection string.

use postgres::Transaction;

use super::error::Failure;
use super::pool::Connection;
use crate::error::Error;

/// Schema migrations, applied in order; version N is `MIGRATIONS[N - 1]`. Append; never edit.
///
/// Columns match the SQLite schema (times are microseconds since the Unix epoch, UTC), so
/// every answer is the same on both backends. `payload` and `result` are the JSON text as
/// submitted: `jsonb` would reorder keys and normalise numbers.
pub const MIGRATIONS: &[&str] = &[
    // 1: the schema as the SQLite backend has it after its sixth migration.
    "CREATE TABLE jobs (
        seq              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id               TEXT NOT NULL UNIQUE,
        payload          TEXT NOT NULL,
        status           TEXT NOT NULL,
        priority         INTEGER NOT NULL,
        run_at           BIGINT NOT NULL,
        created_at       BIGINT NOT NULL,
        started_at       BIGINT,
        finished_at      BIGINT,
        retry_count      INTEGER NOT NULL DEFAULT 0,
        max_retries      INTEGER NOT NULL,
        timeout_seconds  INTEGER NOT NULL,
        result           TEXT,
        error_message    TEXT,
        function         TEXT,
        attempt          INTEGER,
        node             TEXT,
        cancel_requested BOOLEAN NOT NULL DEFAULT false
     );
     -- GET /jobs?status=X, newest first; also finds running jobs for lease recovery.
     CREATE INDEX jobs_by_status ON jobs (status, seq);
     -- Claiming: the highest priority due job, oldest first. Partial, so ended jobs cost nothing.
     CREATE INDEX jobs_pending_by_priority ON jobs (priority DESC, run_at, seq)
        WHERE status = 'pending';
     -- What runs on a node: its cross-node stop check.
     CREATE INDEX jobs_running_by_node ON jobs (node) WHERE status = 'running';
     CREATE TABLE attempts (
        job_seq       BIGINT NOT NULL,
        attempt       INTEGER NOT NULL,
        status        TEXT NOT NULL,
        started_at    BIGINT NOT NULL,
        finished_at   BIGINT,
        result        TEXT,
        error_message TEXT,
        exit_code     INTEGER,
        stderr_tail   TEXT,
        node          TEXT,
        PRIMARY KEY (job_seq, attempt)
     );
     -- Each node's heartbeat, by the database's clock.
     CREATE TABLE nodes (
        id           TEXT PRIMARY KEY,
        started_at   BIGINT NOT NULL,
        heartbeat_at BIGINT NOT NULL
     );",
];

/// The advisory lock every node's migration takes (an arbitrary constant, "mlmi").
const MIGRATION_LOCK: i64 = 0x6d6c_6d69;

/// Brings the schema up to date and returns the name of the schema the tables are in.
/// Refuses a database migrated by a newer build.
pub fn migrate(connection: &mut Connection) -> Result<String, Failure> {
    let mut transaction = connection.client().transaction()?;
    transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    // Not "relation already exists, skipping" in the log at every start.
    transaction.batch_execute("SET LOCAL client_min_messages = warning")?;
    create_first_schema(&mut transaction)?;
    let schema: Option<String> = transaction
        .query_one("SELECT current_schema()", &[])?
        .try_get(0)?;
    let schema = schema.ok_or_else(|| {
        Error::Startup(
            "no schema of the connection's search_path exists; create one, or name one in the \
             connection string (options=-csearch_path%3Dname)"
                .into(),
        )
    })?;
    transaction.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version    INTEGER PRIMARY KEY,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )?;
    let applied: i32 = transaction
        .query_one(
            "SELECT coalesce(max(version), 0) FROM schema_migrations",
            &[],
        )?
        .try_get(0)?;
    let known = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
    if applied > known {
        return Err(Error::Startup(format!(
            "the database schema is version {applied}, newer than this build knows ({known}); \
             use a newer mini-lambda-rust"
        ))
        .into());
    }
    for (version, migration) in (1..).zip(MIGRATIONS).skip(applied.unsigned_abs() as usize) {
        transaction.batch_execute(migration)?;
        transaction.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&version],
        )?;
        log::info!("applied database migration {version} in schema {schema}");
    }
    transaction.commit()?;
    Ok(schema)
}

/// Creates the first schema of `search_path` if it does not exist (unless it is `$user`,
/// PostgreSQL's default, which falls through to `public`). Looked up before creating: `CREATE
/// SCHEMA IF NOT EXISTS` needs the right to create schemas even when the schema exists.
fn create_first_schema(transaction: &mut Transaction<'_>) -> Result<(), Failure> {
    let search_path: String = transaction
        .query_one("SELECT current_setting('search_path')", &[])?
        .try_get(0)?;
    let Some(name) = first_schema(&search_path) else {
        return Ok(());
    };
    let exists = transaction
        .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&name])?
        .is_some();
    if !exists {
        transaction.batch_execute(&format!("CREATE SCHEMA {}", quote_identifier(&name)))?;
        log::info!("created schema {name}");
    }
    Ok(())
}

/// The first schema a `search_path` setting names, as PostgreSQL reads it: unquoted names
/// fold to lower case, quoted ones are taken as written. `None` for `$user` or an empty path.
pub fn first_schema(search_path: &str) -> Option<String> {
    let text = search_path.trim_start();
    let name = match text.strip_prefix('"') {
        Some(quoted) => {
            let mut name = String::new();
            let mut chars = quoted.chars().peekable();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        name.push('"');
                    }
                    '"' => break,
                    other => name.push(other),
                }
            }
            name
        }
        None => {
            let end = text.find(',').unwrap_or(text.len());
            text[..end].trim().to_lowercase()
        }
    };
    Some(name).filter(|name| !name.is_empty() && name != "$user")
}

pub fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_schema_is_read_as_postgresql_reads_it() {
        let cases = [
            ("smoke", Some("smoke")),
            ("Smoke, public", Some("smoke")),
            ("\"$user\", public", None),
            ("$user, public", None),
            ("\"My \"\"Jobs\"\"\", public", Some("My \"Jobs\"")),
            ("  spaced  ,public", Some("spaced")),
            ("", None),
            ("\"unterminated", None),
        ];
        for (path, expected) in cases {
            assert_eq!(first_schema(path).as_deref(), expected, "{path}");
        }
        assert_eq!(quote_identifier("a\"b"), "\"a\"\"b\"");
    }
}
