//! Payload contracts: a function may ship a JSON Schema (draft 2020-12) beside it, in
//! `FUNCTIONS_DIR/NAME.schema.json`, and then every job naming it must carry a payload the
//! schema accepts. This module owns reading, compiling and caching those schemas and checking
//! a payload against one; which file belongs to which function is `functions`' business.
//!
//! Each schema is compiled once into a validator and kept with the file's size and
//! modification time; every use compares them with the file's (one `stat`), so a changed,
//! added or removed schema takes effect with the next submit, without a restart. A file that
//! cannot be used (unreadable, too large, not JSON, not a valid 2020-12 schema) is kept as
//! the reason why: the function is listed with it, and submits naming the function are
//! refused (`422 schema_unusable`) until the file is fixed, rather than run unchecked.
//!
//! The validator never fetches anything: the `jsonschema` crate is built without its HTTP
//! and file resolvers, so a `$ref` outside the document makes the schema unusable. `format`
//! is asserted (an `"format": "email"` that is no email is refused), not merely annotated.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use serde_json::Value;

use crate::error::{Error, Result};

/// A schema file larger than this is refused unread: a contract is a few KiB.
pub const MAX_SCHEMA_BYTES: u64 = 1 << 20;

/// The `$schema` URI of the one draft supported (a trailing `#` is accepted too).
const DRAFT_2020_12: &str = "https://json-schema.org/draft/2020-12/schema";

/// Validation messages longer than this are cut: they may quote the offending value.
const MAX_MESSAGE_CHARS: usize = 300;

/// What a function's schema file holds.
pub enum Contract {
    Usable {
        document: Value,
        validator: jsonschema::Validator,
    },
    /// The file exists but cannot be used; `document` is its JSON if it is JSON.
    Unusable {
        document: Option<Value>,
        reason: String,
    },
}

impl Contract {
    /// The schema as the file holds it, if it is JSON.
    pub fn document(&self) -> Option<&Value> {
        match self {
            Contract::Usable { document, .. } => Some(document),
            Contract::Unusable { document, .. } => document.as_ref(),
        }
    }

    /// Why the file cannot be used, if it cannot.
    pub fn error(&self) -> Option<&str> {
        match self {
            Contract::Usable { .. } => None,
            Contract::Unusable { reason, .. } => Some(reason),
        }
    }

    /// Checks the payload of a job naming `function`: `Validation` naming the JSON Pointer of
    /// the first violation within the payload, or `SchemaUnusable`.
    pub fn check(&self, function: &str, payload: &Value) -> Result<()> {
        match self {
            Contract::Usable { validator, .. } => validator.validate(payload).map_err(|error| {
                let pointer = error.instance_path().as_str().to_string();
                let place = if pointer.is_empty() {
                    "at the payload's root".to_string()
                } else {
                    format!("at {pointer}")
                };
                Error::Validation(format!(
                    "payload does not match the schema of function {function:?} {place}: {}",
                    shorten(&error.to_string())
                ))
            }),
            Contract::Unusable { reason, .. } => Err(Error::SchemaUnusable(format!(
                "function {function:?} cannot take jobs: its schema file {function}.schema.json \
                 is unusable ({reason}); fix the file (GET /functions/{function} shows this)"
            ))),
        }
    }
}

/// The file's identity for the cache: a rewrite changes its size, its modification time or
/// its change time (to the nanosecond, so two writes of one size within a second differ), and
/// a file renamed into place (an editor's save) its inode.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    changed: (i64, i64),
    inode: u64,
}

/// Compiled contracts by function name.
#[derive(Default)]
pub struct Schemas {
    /// Held to look up or store an entry; compiling happens outside it.
    cache: Mutex<HashMap<String, (Stamp, Arc<Contract>)>>,
}

impl Schemas {
    /// The contract in `path` for `function`, compiled once per version of the file; `None`
    /// (and the cache entry dropped) when there is no such file.
    pub fn contract(&self, function: &str, path: &Path) -> Option<Arc<Contract>> {
        let Ok(metadata) = fs::metadata(path) else {
            self.lock().remove(function);
            return None;
        };
        let stamp = Stamp {
            len: metadata.len(),
            modified: metadata.modified().ok(),
            changed: (metadata.ctime(), metadata.ctime_nsec()),
            inode: metadata.ino(),
        };
        if let Some((cached, contract)) = self.lock().get(function) {
            if *cached == stamp {
                return Some(Arc::clone(contract));
            }
        }
        let contract = Arc::new(if metadata.is_file() {
            load(path)
        } else {
            Contract::Unusable {
                document: None,
                reason: "it is not a regular file".into(),
            }
        });
        if let Contract::Unusable { reason, .. } = contract.as_ref() {
            log::warn!("the schema of function {function:?} is unusable: {reason}");
        }
        self.lock()
            .insert(function.to_string(), (stamp, Arc::clone(&contract)));
        Some(contract)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, (Stamp, Arc<Contract>)>> {
        // Each insert or removal leaves the map consistent.
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Reads and compiles one schema file.
fn load(path: &Path) -> Contract {
    let unusable = |document, reason: String| Contract::Unusable { document, reason };
    let mut text = Vec::new();
    let read = fs::File::open(path)
        .and_then(|file| file.take(MAX_SCHEMA_BYTES + 1).read_to_end(&mut text));
    if let Err(err) = read {
        return unusable(None, format!("it cannot be read: {err}"));
    }
    if text.len() as u64 > MAX_SCHEMA_BYTES {
        return unusable(None, format!("it is larger than {MAX_SCHEMA_BYTES} bytes"));
    }
    let document: Value = match serde_json::from_slice(&text) {
        Ok(document) => document,
        Err(err) => return unusable(None, format!("it is not JSON: {err}")),
    };
    compile(document)
}

/// Compiles a schema document as draft 2020-12.
pub fn compile(document: Value) -> Contract {
    if let Some(declared) = document.get("$schema") {
        let supported = declared
            .as_str()
            .is_some_and(|uri| uri.trim_end_matches('#') == DRAFT_2020_12);
        if !supported {
            return Contract::Unusable {
                reason: format!(
                    "only JSON Schema draft 2020-12 is supported, but $schema is {declared}"
                ),
                document: Some(document),
            };
        }
    }
    let built = jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&document);
    match built {
        Ok(validator) => Contract::Usable {
            document,
            validator,
        },
        Err(err) => Contract::Unusable {
            reason: format!(
                "it is not a valid JSON Schema: {}",
                shorten(&err.to_string())
            ),
            document: Some(document),
        },
    }
}

fn shorten(message: &str) -> String {
    if message.chars().count() <= MAX_MESSAGE_CHARS {
        return message.to_string();
    }
    let cut: String = message.chars().take(MAX_MESSAGE_CHARS).collect();
    format!("{cut}…")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(schema: Value, payload: Value) -> Result<()> {
        compile(schema).check("greet", &payload)
    }

    #[test]
    fn a_violation_names_its_json_pointer() {
        let schema = json!({
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string"}, "tags": {"items": {"type": "integer"}}}
        });
        assert!(check(schema.clone(), json!({"name": "Ada"})).is_ok());
        let message = |payload| match check(schema.clone(), payload) {
            Err(Error::Validation(message)) => message,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            message(json!({"name": 5})),
            "payload does not match the schema of function \"greet\" at /name: 5 is not of type \"string\""
        );
        assert!(message(json!({"name": "x", "tags": [1, "two"]})).contains(" at /tags/1: "));
        assert!(message(json!({})).contains(" at the payload's root: "));
    }

    #[test]
    fn formats_are_asserted() {
        let schema = json!({"properties": {"to": {"type": "string", "format": "email"}}});
        assert!(check(schema.clone(), json!({"to": "ada@example.com"})).is_ok());
        assert!(matches!(
            check(schema, json!({"to": "not an address"})),
            Err(Error::Validation(_))
        ));
    }

    #[test]
    fn an_unusable_schema_refuses_every_payload_with_the_reason() {
        for (schema, reason) in [
            (json!({"type": 5}), "it is not a valid JSON Schema"),
            (
                json!({"$schema": "http://json-schema.org/draft-07/schema#"}),
                "only JSON Schema draft 2020-12 is supported",
            ),
            (
                json!({"$ref": "https://example.com/other.json"}),
                "it is not a valid JSON Schema",
            ),
        ] {
            let contract = compile(schema.clone());
            assert!(
                contract
                    .error()
                    .is_some_and(|error| error.starts_with(reason)),
                "{schema}: {:?}",
                contract.error()
            );
            match contract.check("greet", &json!({})) {
                Err(Error::SchemaUnusable(message)) => {
                    assert!(message.contains(reason), "{message}")
                }
                other => panic!("{schema}: {other:?}"),
            }
        }
        let declared = json!({"$schema": "https://json-schema.org/draft/2020-12/schema#"});
        assert!(compile(declared).error().is_none());
    }
}
