//! The log: `LOG_FORMAT=json` writes one JSON object per line, and every line about a job,
//! in either format, carries the job's id, queue, attempt and trace id.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use serde_json::{json, Map, Value};
use support::*;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// A functions directory with `flaky`: fails its first run (leaving a marker), then succeeds.
struct Flaky {
    root: PathBuf,
}

impl Flaky {
    fn new() -> Flaky {
        let root = unique_temp_dir();
        let functions = root.join("functions");
        fs::create_dir(&functions).unwrap();
        let marker = root.join("ran-once");
        let script = functions.join("flaky");
        fs::write(
            &script,
            format!(
                "#!/bin/sh\ncat >/dev/null\nif [ -e '{marker}' ]; then echo '{{\"ok\":true}}'; \
                 else : > '{marker}'; echo 'first \"try\" fails' >&2; exit 3; fi\n",
                marker = marker.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        Flaky { root }
    }

    fn server(&self, format: &str) -> TestServer {
        TestServer::builder()
            .env(
                "FUNCTIONS_DIR",
                self.root.join("functions").to_str().unwrap(),
            )
            .env("RETRY_BACKOFF_MS", "50")
            .env("LOG_FORMAT", format)
            .start()
    }
}

impl Drop for Flaky {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// Submits `flaky` with the trace, waits for its success and stops the server gracefully, so
/// that its whole log is written. Returns the job id and the server's stderr.
fn run_flaky_job(format: &str) -> (String, String) {
    let flaky = Flaky::new();
    let mut server = flaky.server(format);
    let body =
        serde_json::to_vec(&json!({"function": "flaky", "payload": {}, "max_retries": 1})).unwrap();
    let response = server.request(
        "POST",
        "/jobs",
        &[
            ("Content-Type", "application/json"),
            ("traceparent", TRACEPARENT),
        ],
        Some(&body),
    );
    assert_eq!(response.status, 201, "{}", response.text());
    let id = response.json()["job_id"].as_str().unwrap().to_string();
    let job = server.wait_for_status(&id, "success", secs(10));
    assert_eq!(job["retry_count"], 1, "{job}");
    server.sigterm();
    assert!(server.wait_exit(secs(10)).success());
    (id, server.stderr_text())
}

/// The lines whose message is about job `id` (not the access log's, which name paths).
fn lines_about<'a>(lines: &'a [Map<String, Value>], id: &str) -> Vec<&'a Map<String, Value>> {
    let about = format!("job {id}");
    lines
        .iter()
        .filter(|line| line["message"].as_str().unwrap().contains(&about))
        .collect()
}

#[test]
fn json_log_lines_parse_and_carry_the_job_fields() {
    let (id, stderr) = run_flaky_job("json");
    let lines: Vec<Map<String, Value>> = stderr
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|err| panic!("not a JSON object ({err}): {line:?}\n{stderr}"))
        })
        .collect();
    assert!(lines.len() >= 6, "{stderr}");
    for line in &lines {
        let keys: Vec<&str> = line.keys().take(4).map(String::as_str).collect();
        assert_eq!(keys, ["time", "level", "target", "message"], "{line:?}");
        let time = line["time"].as_str().unwrap();
        // RFC 3339 in UTC with milliseconds: 2026-12-01T17:28:28.123Z.
        assert_eq!(time.len(), 24, "{time}");
        assert!(
            time.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(time).is_ok(),
            "{time}"
        );
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&line["level"].as_str().unwrap()),
            "{line:?}"
        );
        assert!(line["target"]
            .as_str()
            .unwrap()
            .starts_with("mini_lambda_rust"));
    }
    let about = lines_about(&lines, &id);
    let find = |text: &str| {
        about
            .iter()
            .find(|line| line["message"].as_str().unwrap().contains(text))
            .unwrap_or_else(|| panic!("no line about {id} saying {text:?} in\n{stderr}"))
    };
    let fields = |line: &Map<String, Value>| {
        line.iter()
            .skip(4)
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect::<Map<String, Value>>()
    };
    let expected = |attempt: Option<u32>| {
        let mut fields = json!({"job_id": id, "queue": "default"});
        if let Some(attempt) = attempt {
            fields["attempt"] = json!(attempt);
        }
        fields["trace_id"] = json!(TRACE_ID);
        fields.as_object().unwrap().clone()
    };
    assert_eq!(fields(find("submitted")), expected(None));
    assert_eq!(fields(find("started (attempt 1)")), expected(Some(1)));
    let failed = find("failed in");
    assert_eq!(fields(failed), expected(Some(1)));
    assert_eq!(failed["level"], "INFO");
    assert_eq!(fields(find("started (attempt 2)")), expected(Some(2)));
    assert_eq!(fields(find("succeeded in")), expected(Some(2)));
    // Every line about the job says so in its fields.
    for line in &about {
        assert_eq!(line["job_id"], id.as_str(), "{line:?}");
        assert_eq!(line["trace_id"], TRACE_ID, "{line:?}");
    }
    // Lines about no job have none of its fields.
    let stopped = lines
        .iter()
        .find(|line| line["message"] == "stopped")
        .unwrap_or_else(|| panic!("no `stopped` line in\n{stderr}"));
    assert_eq!(stopped.len(), 4, "{stopped:?}");
}

#[test]
fn text_log_lines_about_a_job_end_with_its_fields() {
    let (id, stderr) = run_flaky_job("text");
    let line = |text: &str| {
        stderr
            .lines()
            .find(|line| line.contains(&id) && line.contains(text))
            .unwrap_or_else(|| panic!("no line about {id} saying {text:?} in\n{stderr}"))
    };
    assert!(
        line("started (attempt 2)").ends_with(&format!(
            "job {id} started (attempt 2) job_id={id} queue=default attempt=2 trace_id={TRACE_ID}"
        )),
        "{stderr}"
    );
    assert!(
        line("submitted").ends_with(&format!(
            "job {id} submitted job_id={id} queue=default trace_id={TRACE_ID}"
        )),
        "{stderr}"
    );
    let stopped = stderr
        .lines()
        .find(|line| line.ends_with("] stopped"))
        .unwrap_or_else(|| panic!("no `stopped` line in\n{stderr}"));
    assert!(stopped.starts_with('['), "{stopped}");
}
