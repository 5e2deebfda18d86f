//! The documents agree with the code: the README's examples are run against the real server
//! and compared with what it answers, and the LICENSE file is the license Cargo.toml names.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use serde::Deserialize;
use serde_json::{json, Value};
use support::*;

fn readme() -> String {
    fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("read README.md")
}

/// The README from the heading `heading` to the next heading of any level (a `#` line outside
/// a fenced block).
fn section<'a>(readme: &'a str, heading: &str) -> &'a str {
    let start = readme
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("README has no heading {heading:?}"));
    let body = &readme[start + heading.len() + 2..];
    let mut fenced = false;
    let mut offset = 0;
    for line in body.split_inclusive('\n') {
        if line.starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            break;
        }
        offset += line.len();
    }
    &body[..offset]
}

/// The fenced blocks of `text` whose info string is `lang` (`""` for a bare fence).
fn blocks<'a>(text: &'a str, lang: &str) -> Vec<&'a str> {
    let open = format!("```{lang}\n");
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("```") {
        let after = &rest[start..];
        let Some(end) = after[3..].find("\n```") else {
            break;
        };
        if after.starts_with(&open) {
            found.push(&after[open.len()..3 + end + 1]);
        }
        rest = &after[3 + end + 4..];
    }
    found
}

/// The first JSON value in `text`, ignoring whatever follows it.
fn first_json(text: &str) -> Value {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    Value::deserialize(&mut deserializer).unwrap_or_else(|err| panic!("{err}: {text}"))
}

/// The body of the first `curl … --json '…'` in `text`.
fn json_sent(text: &str) -> Value {
    let (_, rest) = text
        .split_once("--json '")
        .unwrap_or_else(|| panic!("no curl --json in {text}"));
    let (body, _) = rest.split_once('\'').expect("a closing quote");
    serde_json::from_str(body).unwrap_or_else(|err| panic!("{err}: {body}"))
}

/// Fields whose value differs from run to run: the README shows one run's.
const VOLATILE: [&str; 7] = [
    "id",
    "created_at",
    "started_at",
    "finished_at",
    "run_at",
    "duration_ms",
    "node",
];

/// `shown` (from the README) is what the server answered (`real`): the same fields, the same
/// values, except that a volatile field needs only the same kind of value.
fn assert_shown_as(shown: &Value, real: &Value, context: &str) {
    match (shown, real) {
        (Value::Object(shown), Value::Object(real)) => {
            let keys =
                |map: &serde_json::Map<String, Value>| map.keys().cloned().collect::<Vec<String>>();
            assert_eq!(keys(shown), keys(real), "{context}: the fields differ");
            for (key, value) in shown {
                if VOLATILE.contains(&key.as_str()) {
                    let kind = |value: &Value| std::mem::discriminant(value);
                    assert_eq!(kind(value), kind(&real[key]), "{context}: {key}");
                } else {
                    assert_shown_as(value, &real[key], &format!("{context}.{key}"));
                }
            }
        }
        (Value::Array(shown), Value::Array(real)) => {
            assert_eq!(shown.len(), real.len(), "{context}: {shown:?} vs {real:?}");
            for (index, (shown, real)) in shown.iter().zip(real).enumerate() {
                assert_shown_as(shown, real, &format!("{context}[{index}]"));
            }
        }
        _ => assert_eq!(shown, real, "{context}"),
    }
}

#[test]
fn the_readme_job_examples_show_what_the_server_answers() {
    let readme = readme();
    let server = TestServer::start();

    // POST /jobs, then GET /jobs/:id of the same job.
    let submit = section(&readme, "### `POST /jobs`");
    let id = server.submit(json_sent(blocks(submit, "sh")[0]));
    server.wait_for_status(&id, "success", secs(10));
    let get = section(&readme, "### `GET /jobs/:id`");
    let shown = first_json(blocks(get, "json")[0]);
    assert_shown_as(&shown, &server.job(&id), "GET /jobs/:id");

    // The failing job of the attempts example, then its manual retry.
    let attempts = section(&readme, "### `GET /jobs/:id/attempts`");
    let failing = server.submit(json_sent(blocks(attempts, "sh")[0]));
    server.wait_for_status(&failing, "failed", secs(10));
    let real = server.get(&format!("/jobs/{failing}/attempts")).json();
    let shown = first_json(blocks(attempts, "json")[0]);
    assert_shown_as(&shown, &real, "GET /jobs/:id/attempts");

    let retry = section(&readme, "### `POST /jobs/:id/retry`");
    let answer = server.post_empty(&format!("/jobs/{failing}/retry"));
    let shown = blocks(retry, "")[0];
    let (status_line, _) = shown.split_once('\n').expect("a status line");
    assert_eq!(status_line, format!("HTTP/1.1 {} Accepted", answer.status));
    let (_, body) = shown.split_once("\n\n").expect("a body after the headers");
    assert_shown_as(&first_json(body), &answer.json(), "POST /jobs/:id/retry");
}

/// The README's tutorial function, written as the README shows it, has the size the README
/// gives and answers the result it gives.
#[test]
fn the_readme_greet_tutorial_gives_the_size_and_result_it_shows() {
    let readme = readme();
    let tutorial = blocks(section(&readme, "## Functions"), "sh")[0];
    let (_, script) = tutorial
        .split_once("cat > functions/greet <<'SH'\n")
        .expect("the tutorial writes functions/greet");
    let (script, _) = script.split_once("\nSH\n").expect("the end of the heredoc");
    let script = format!("{script}\n");

    let (_, listed) = tutorial
        .split_once(r#"{"name":"greet","size":"#)
        .expect("the tutorial lists greet with its size");
    let digits: String = listed.chars().take_while(char::is_ascii_digit).collect();
    let shown_size: u64 = digits.parse().expect("a size");
    let (_, shown_result) = tutorial
        .split_once(r#""result":"#)
        .expect("the tutorial shows the result");
    let shown_result = first_json(shown_result);

    let dir = unique_temp_dir();
    let path = dir.join("greet");
    fs::write(&path, &script).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    let server = TestServer::builder()
        .env("FUNCTIONS_DIR", dir.to_str().unwrap())
        .start();
    let listed = server.get("/functions").json();
    assert_eq!(listed[0]["name"], "greet", "{listed}");
    assert_eq!(listed[0]["size"], json!(script.len()), "{listed}");
    assert_eq!(
        shown_size,
        script.len() as u64,
        "the README's size of greet"
    );

    let id = server.submit(json_sent(tutorial));
    let job = server.wait_for_status(&id, "success", secs(10));
    assert_eq!(job["result"], shown_result, "{job}");
    assert_eq!(job["function"], "greet", "{job}");
    drop(server);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn the_license_file_is_the_license_cargo_toml_names() {
    assert_eq!(env!("CARGO_PKG_LICENSE"), "MIT");
    let license = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/LICENSE"))
        .expect("a LICENSE file next to Cargo.toml");
    assert!(license.starts_with("MIT License\n"), "{license}");
    assert!(
        license.contains("Copyright (c) 2026 the mini-lambda-rust developers"),
        "{license}"
    );
    assert!(
        license.contains("THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND"),
        "{license}"
    );
}
