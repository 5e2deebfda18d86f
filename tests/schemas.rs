//! Payload contracts: `FUNCTIONS_DIR/NAME.schema.json` checked on every submit naming `NAME`.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use serde_json::{json, Value};
use support::*;

/// A functions directory of its own, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        Dir(unique_temp_dir())
    }

    fn function(&self, name: &str) {
        let path = self.0.join(name);
        fs::write(&path, "#!/bin/sh\ncat\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        fs::write(&path, text).unwrap();
        path
    }

    fn server(&self) -> TestServer {
        TestServer::builder()
            .env("FUNCTIONS_DIR", self.0.to_str().unwrap())
            .start()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn greet_schema() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "minLength": 1},
            "tags": {"type": "array", "items": {"type": "string"}}
        }
    })
}

fn setup() -> Dir {
    let dir = Dir::new();
    dir.function("greet");
    dir.function("plain");
    dir.function("broken");
    dir.function("odd");
    let schema = dir.file("greet.schema.json", &greet_schema().to_string());
    // Executable or not, a schema file is never a function.
    fs::set_permissions(&schema, fs::Permissions::from_mode(0o755)).unwrap();
    dir.file("broken.schema.json", "{\"type\": \"object\",");
    dir.file("odd.schema.json", "{\"type\": 5}");
    dir
}

fn submit(server: &TestServer, function: &str, payload: Value) -> Response {
    server.post_json("/jobs", &json!({"function": function, "payload": payload}))
}

fn stored(server: &TestServer) -> usize {
    server.list("/jobs?limit=1000").0.len()
}

#[test]
fn a_payload_is_checked_against_its_functions_schema() {
    let dir = setup();
    let server = dir.server();
    let id = server.submit(json!({"function": "greet", "payload": {"name": "Ada"}}));
    let job = server.wait_for_status(&id, "success", secs(10));
    assert_eq!(job["result"], json!({"name": "Ada"}), "{job}");

    let refused = |payload: Value, pointer: &str| {
        let response = submit(&server, "greet", payload.clone());
        let message = assert_error(&response, 400, "validation_error");
        assert!(
            message.starts_with(&format!(
                "payload does not match the schema of function \"greet\" {pointer}: "
            )),
            "{payload}: {message}"
        );
        message
    };
    let message = refused(json!({"name": 5}), "at /name");
    assert!(
        message.ends_with("5 is not of type \"string\""),
        "{message}"
    );
    refused(json!({"name": "Ada", "tags": ["a", 2]}), "at /tags/1");
    let message = refused(json!({}), "at the payload's root");
    assert!(
        message.contains("\"name\" is a required property"),
        "{message}"
    );
    refused(json!("just text"), "at the payload's root");
    // A function without a schema takes any payload.
    let other = submit(&server, "plain", json!(["anything", 1]));
    assert_eq!(other.status, 201, "{}", other.text());
    assert_eq!(stored(&server), 2);
}

#[test]
fn functions_say_whether_they_have_a_schema_and_one_shows_it() {
    let dir = setup();
    let server = dir.server();
    let listed = server.get("/functions").json();
    let summary: Vec<(String, Value, Value)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|function| {
            (
                function["name"].as_str().unwrap().to_string(),
                function["has_schema"].clone(),
                function
                    .get("schema_error")
                    .map(|error| Value::Bool(error.is_string()))
                    .unwrap_or(Value::Null),
            )
        })
        .collect();
    let row = |name: &str, has: bool, error: Value| (name.to_string(), Value::Bool(has), error);
    assert_eq!(
        summary,
        [
            row("broken", true, Value::Bool(true)),
            row("greet", true, Value::Null),
            row("odd", true, Value::Bool(true)),
            row("plain", false, Value::Null),
        ],
        "{listed}"
    );

    let greet = server.get("/functions/greet");
    assert_eq!(greet.status, 200, "{}", greet.text());
    let greet = greet.json();
    let mut keys: Vec<&str> = greet
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["has_schema", "modified_at", "name", "schema", "size"]
    );
    assert_eq!(greet["schema"], greet_schema());
    assert_eq!(greet["has_schema"], true);
    let plain = server.get("/functions/plain").json();
    assert_eq!(
        (plain["schema"].clone(), plain["has_schema"].clone()),
        (Value::Null, json!(false))
    );
    let odd = server.get("/functions/odd").json();
    assert_eq!(odd["schema"], json!({"type": 5}), "{odd}");
    assert!(
        odd["schema_error"]
            .as_str()
            .unwrap()
            .starts_with("it is not a valid JSON Schema"),
        "{odd}"
    );
    let broken = server.get("/functions/broken").json();
    assert_eq!(broken["schema"], Value::Null, "{broken}");
    assert!(
        broken["schema_error"]
            .as_str()
            .unwrap()
            .starts_with("it is not JSON"),
        "{broken}"
    );
    for missing in ["nope", "greet.schema.json", "..%2Fetc"] {
        let response = server.get(&format!("/functions/{missing}"));
        assert_error(&response, 404, "not_found");
    }
}

#[test]
fn a_broken_schema_refuses_its_functions_jobs_and_a_fixed_one_takes_effect_at_once() {
    let dir = setup();
    let server = dir.server();
    for function in ["broken", "odd"] {
        let response = submit(&server, function, json!({}));
        let message = assert_error(&response, 422, "schema_unusable");
        assert!(
            message.starts_with(&format!(
                "function \"{function}\" cannot take jobs: its schema file {function}.schema.json is unusable ("
            )),
            "{message}"
        );
    }
    // The schema file itself names no function.
    let response = submit(&server, "greet.schema.json", json!({"name": "x"}));
    assert_error(&response, 400, "unknown_function");
    assert_eq!(stored(&server), 0);

    dir.file(
        "broken.schema.json",
        &json!({"type": "object", "required": ["id"]}).to_string(),
    );
    let response = submit(&server, "broken", json!({}));
    let message = assert_error(&response, 400, "validation_error");
    assert!(
        message.contains("\"id\" is a required property"),
        "{message}"
    );
    assert_eq!(submit(&server, "broken", json!({"id": 1})).status, 201);
    // A schema removed is no contract any more.
    fs::remove_file(dir.0.join("odd.schema.json")).unwrap();
    assert_eq!(submit(&server, "odd", json!([1])).status, 201);
    let odd = server.get("/functions/odd").json();
    assert_eq!(
        (odd["has_schema"].clone(), odd["schema"].clone()),
        (json!(false), Value::Null)
    );
    assert_eq!(stored(&server), 2);
}
