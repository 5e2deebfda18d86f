//! What the server says at start about a configuration that cannot work as meant: a missing
//! `FUNCTIONS_DIR`, an invalid `RUST_LOG`, a `DATABASE_URL` that cannot be opened.

mod support;

use std::fs;

use support::*;

/// Waits until the server has logged its `listening on` line (logged after every start-up
/// check), then returns the whole log so far.
fn log_after_start(server: &TestServer) -> String {
    eventually(secs(10), "the `listening on` log line", || {
        let log = server.stderr_text();
        log.lines()
            .any(|line| line.contains("INFO") && line.contains("listening on http://"))
            .then_some(log)
    })
}

fn lines_with<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines().filter(|line| line.contains(needle)).collect()
}

#[test]
fn a_missing_functions_dir_is_named_in_one_warning_at_start() {
    let server = TestServer::builder()
        .env("FUNCTIONS_DIR", "no-such-dir")
        .start();
    let log = log_after_start(&server);
    let path = server.dir().join("no-such-dir");
    let warnings = lines_with(&log, "FUNCTIONS_DIR");
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(
        warnings[0].contains("WARN")
            && warnings[0].contains(&format!("FUNCTIONS_DIR {} does not exist", path.display())),
        "{log}"
    );

    // A path that is a file is not a directory either.
    let file = server.dir().join("a-file");
    fs::write(&file, "").unwrap();
    let other = TestServer::builder()
        .env("FUNCTIONS_DIR", file.to_str().unwrap())
        .start();
    let log = log_after_start(&other);
    let warnings = lines_with(&log, "FUNCTIONS_DIR");
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(
        warnings[0].contains(&format!(
            "FUNCTIONS_DIR {} is not a directory",
            file.display()
        )),
        "{log}"
    );
}

#[test]
fn an_existing_functions_dir_starts_without_a_warning() {
    let dir = unique_temp_dir();
    let server = TestServer::builder()
        .env("FUNCTIONS_DIR", dir.to_str().unwrap())
        .start();
    let log = log_after_start(&server);
    assert_eq!(
        lines_with(&log, "FUNCTIONS_DIR"),
        Vec::<&str>::new(),
        "{log}"
    );
    drop(server);
    let _ = fs::remove_dir_all(&dir);
}

/// env_logger drops a directive it cannot parse, which leaves only error lines; a bare word
/// that is not a level is a module name, which hides everything. Both now warn and log.
#[test]
fn an_invalid_rust_log_warns_and_logs_with_the_default_filter() {
    for (spec, says) in [
        ("mini_lambda_rust=loud", "is not a valid log filter"),
        ("verbose", "sets no level for mini_lambda_rust"),
    ] {
        let server = TestServer::builder().env("RUST_LOG", spec).start();
        // The info lines of the start are there: logging was not silenced.
        let log = log_after_start(&server);
        let warnings = lines_with(&log, "RUST_LOG");
        assert_eq!(warnings.len(), 1, "RUST_LOG={spec}: {log}");
        assert!(
            warnings[0].contains("WARN")
                && warnings[0].contains(&format!("RUST_LOG={spec:?} {says}")),
            "RUST_LOG={spec}: {log}"
        );
        // And a job's events are logged as with the default filter.
        let id = server.submit(serde_json::json!({"payload": {"duration_ms": 0}}));
        server.wait_for_status(&id, "success", secs(10));
        eventually(secs(5), "the job's `started` line", || {
            let log = server.stderr_text();
            log.lines()
                .any(|line| line.contains(&format!("job {id} started")))
                .then_some(())
        });
    }
}

/// A database file that cannot be opened is a configuration error: exit 2 and one stderr line
/// that names DATABASE_URL, the file and what is wrong with it.
#[test]
fn a_database_url_that_cannot_be_opened_exits_2_naming_the_variable() {
    let dir = unique_temp_dir();
    let text = dir.join("notes.txt");
    fs::write(
        &text,
        "these are notes, not a database; long enough for a header",
    )
    .unwrap();
    let missing = dir.join("missing").join("jobs.db");
    let cases = [
        (
            format!("sqlite://{}", missing.display()),
            format!(
                "error: DATABASE_URL: cannot open the database file {}: the directory {} does not exist",
                missing.display(),
                dir.join("missing").display()
            ),
        ),
        (
            dir.display().to_string(),
            format!(
                "error: DATABASE_URL: cannot open the database file {}: it is a directory; \
                 name a file in it, e.g. {}",
                dir.display(),
                dir.join("mini_lambda.db").display()
            ),
        ),
        (
            text.display().to_string(),
            format!(
                "error: DATABASE_URL: cannot open the database file {}: file is not a database",
                text.display()
            ),
        ),
    ];
    for (url, expected) in cases {
        let out = run_to_exit(&[], &[("DATABASE_URL", &url)], secs(20));
        assert_eq!(
            (out.status.code(), out.stderr.trim_end()),
            (Some(2), expected.as_str()),
            "DATABASE_URL={url}"
        );
        assert_eq!(out.stdout, "", "DATABASE_URL={url}");
    }
    let _ = fs::remove_dir_all(&dir);
}

/// One SQLite file serves one process: a second server on a file another one has open is
/// refused at start, saying so, and the first serves on untouched.
#[test]
fn a_second_server_on_the_same_sqlite_file_is_refused() {
    let first = TestServer::builder().sqlite().start();
    let id = first.submit(serde_json::json!({"payload": {"n": 1}}));
    let url = format!("sqlite://{}", first.db_path().display());
    let second = run_to_exit(&[], &[("DATABASE_URL", &url)], secs(20));
    assert_eq!(second.status.code(), Some(1), "{}", second.stderr);
    let expected = format!(
        "the database file {} is in use by another mini-lambda-rust process; one SQLite file \
         serves one process (use PostgreSQL for several nodes)",
        first.db_path().display()
    );
    assert!(second.stderr.contains(&expected), "{}", second.stderr);
    assert_eq!(first.wait_for_status(&id, "success", secs(10))["id"], id);
}
