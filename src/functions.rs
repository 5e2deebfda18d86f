//! The functions directory: which files are functions, and the path of one by name. A
//! function is an executable regular file directly in the directory, named
//! `[A-Za-z0-9._-]{1,64}` without a leading dot; a symlink counts only if its target stays
//! inside the directory. The directory is read on each request, so adding a function needs no
//! restart.
//!
//! Beside a function `NAME` may lie its payload contract, `NAME.schema.json` (the same rule
//! for symlinks); compiling and checking it is `schemas`' business. A name ending in
//! `.schema.json` is never a function, executable or not.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use log::warn;
use serde::Serialize;
use serde_json::Value;

use crate::error::Result;
use crate::schemas::{Contract, Schemas};
use crate::time::Timestamp;

/// The file name suffix of a function's payload contract.
const SCHEMA_SUFFIX: &str = ".schema.json";

/// A function as `GET /functions` lists it.
#[derive(Clone, Debug, Serialize)]
pub struct FunctionInfo {
    pub name: String,
    pub size: u64,
    pub modified_at: Timestamp,
    /// Whether `NAME.schema.json` exists (usable or not).
    pub has_schema: bool,
    /// Why the schema file cannot be used; absent when it can (or there is none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema_error: Option<String>,
}

/// A function with its schema, as `GET /functions/:name` returns it.
#[derive(Clone, Debug, Serialize)]
pub struct FunctionDetail {
    #[serde(flatten)]
    pub info: FunctionInfo,
    /// The schema document, or `null` without one (or when the file is not JSON).
    pub schema: Option<Value>,
}

#[derive(Clone)]
pub struct Functions {
    dir: PathBuf,
    /// Compiled contracts, shared by every clone.
    schemas: Arc<Schemas>,
}

impl std::fmt::Debug for Functions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Functions").field("dir", &self.dir).finish()
    }
}

impl Functions {
    pub fn new(dir: PathBuf) -> Functions {
        Functions {
            dir,
            schemas: Arc::default(),
        }
    }

    /// Logs one warning at start if the directory cannot serve functions (missing, not a
    /// directory, unreadable). Not an error: the directory is read on each request, so
    /// creating it later is enough, and a server without functions still runs simulated jobs.
    pub fn warn_if_unusable(&self) {
        let dir = self.dir.display();
        match fs::read_dir(&self.dir) {
            Ok(_) => {}
            Err(err) if err.kind() == ErrorKind::NotFound => warn!(
                "FUNCTIONS_DIR {dir} does not exist: jobs naming a function are refused until \
                 it is created (no restart needed)"
            ),
            Err(err) if err.kind() == ErrorKind::NotADirectory => {
                warn!("FUNCTIONS_DIR {dir} is not a directory: jobs naming a function are refused")
            }
            Err(err) => warn!(
                "FUNCTIONS_DIR {dir} cannot be read ({err}): jobs naming a function are refused"
            ),
        }
    }

    /// Every function, sorted by name. A missing directory has none.
    pub fn list(&self) -> Vec<FunctionInfo> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut functions: Vec<FunctionInfo> = entries
            .filter_map(|entry| entry.ok())
            .filter_map(|entry| self.info(entry.file_name().into_string().ok()?))
            .collect();
        functions.sort_by(|a, b| a.name.cmp(&b.name));
        functions
    }

    /// One function with its schema, if `name` is a function.
    pub fn detail(&self, name: &str) -> Option<FunctionDetail> {
        let info = self.info(name.to_string())?;
        let schema = self
            .contract(name)
            .and_then(|contract| contract.document().cloned());
        Some(FunctionDetail { info, schema })
    }

    fn info(&self, name: String) -> Option<FunctionInfo> {
        let path = self.resolve(&name)?;
        let metadata = fs::metadata(path).ok()?;
        let modified = metadata.modified().ok()?;
        let micros = modified
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .and_then(|since| i64::try_from(since.as_micros()).ok())?;
        let contract = self.contract(&name);
        Some(FunctionInfo {
            has_schema: contract.is_some(),
            schema_error: contract.and_then(|contract| contract.error().map(str::to_string)),
            name,
            size: metadata.len(),
            modified_at: Timestamp::from_micros(micros),
        })
    }

    /// Checks a payload for function `name` against its schema, if it has one: `Validation`
    /// naming the first violation, or `SchemaUnusable` while the schema file is broken.
    pub fn check_payload(&self, name: &str, payload: &Value) -> Result<()> {
        match self.contract(name) {
            Some(contract) => contract.check(name, payload),
            None => Ok(()),
        }
    }

    /// The contract of function `name`, if its schema file exists (a symlink only if it stays
    /// inside the directory).
    fn contract(&self, name: &str) -> Option<Arc<Contract>> {
        if !valid_name(name) {
            return None;
        }
        let path = self.dir.join(format!("{name}{SCHEMA_SUFFIX}"));
        let link = fs::symlink_metadata(&path).ok()?;
        if link.file_type().is_symlink() && !stays_inside(&self.dir, &path) {
            return None;
        }
        self.schemas.contract(name, &path)
    }

    /// The path to run for function `name`, if it is one.
    pub fn resolve(&self, name: &str) -> Option<PathBuf> {
        if !valid_name(name) {
            return None;
        }
        let path = self.dir.join(name);
        let link = fs::symlink_metadata(&path).ok()?;
        if link.file_type().is_symlink() && !stays_inside(&self.dir, &path) {
            return None;
        }
        let target = fs::metadata(&path).ok()?;
        (target.is_file() && target.permissions().mode() & 0o111 != 0).then_some(path)
    }
}

/// Whether `name` can name a function (so also a `GET /jobs?function=` filter).
pub(crate) fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && !name.ends_with(SCHEMA_SUFFIX)
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn stays_inside(dir: &Path, path: &Path) -> bool {
    match (fs::canonicalize(dir), fs::canonicalize(path)) {
        (Ok(dir), Ok(target)) => target.parent() == Some(dir.as_path()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_touching_the_disk() {
        assert!(valid_name("echo") && valid_name("word-count_2.sh"));
        for bad in [
            "",
            ".hidden",
            "echo.schema.json",
            "../etc",
            "a/b",
            "with space",
            &"x".repeat(65),
        ] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
