//! The functions directory: which files are functions, and the path of one by name. A
//! function is an executable regular file directly in the directory, named
//! `[A-Za-z0-9._-]{1,64}` without a leading dot; a symlink counts only if its target stays
//! inside the directory. The directory is read on each request, so adding a function needs no
//! restart.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use log::warn;
use serde::Serialize;

use crate::time::Timestamp;

#[derive(Clone, Debug, Serialize)]
pub struct FunctionInfo {
    pub name: String,
    pub size: u64,
    pub modified_at: Timestamp,
}

#[derive(Clone, Debug)]
pub struct Functions {
    dir: PathBuf,
}

impl Functions {
    pub fn new(dir: PathBuf) -> Functions {
        Functions { dir }
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
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let path = self.resolve(&name)?;
                let metadata = fs::metadata(path).ok()?;
                let modified = metadata.modified().ok()?;
                let micros = modified
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()
                    .and_then(|since| i64::try_from(since.as_micros()).ok())?;
                Some(FunctionInfo {
                    name,
                    size: metadata.len(),
                    modified_at: Timestamp::from_micros(micros),
                })
            })
            .collect();
        functions.sort_by(|a, b| a.name.cmp(&b.name));
        functions
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
            "../etc",
            "a/b",
            "with space",
            &"x".repeat(65),
        ] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
