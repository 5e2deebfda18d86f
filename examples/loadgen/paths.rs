//! Where things are: the server binary next to this example's build, the loadgen itself (it
//! re-executes itself as the bare server), the JSON report, and the run's private temporary
//! directory, which is removed when the run ends however it ends.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Context, Error, Result};

pub struct Paths {
    pub loadgen: PathBuf,
    pub server: PathBuf,
    /// The crate's root: where `git` runs and `target/bench/latest.json` goes.
    pub repository: PathBuf,
    pub work: TempDir,
}

impl Paths {
    /// `server` overrides the binary under test; by default it is the build beside this
    /// example, of the same profile (`make bench` builds `profiling`:
    /// target/profiling/examples/loadgen → target/profiling/mini-lambda-rust).
    pub fn discover(server: Option<PathBuf>, keep: bool) -> Result<Paths> {
        let loadgen = std::env::current_exe().context("cannot find the loadgen's own path")?;
        let server = match server {
            Some(server) => server,
            None => loadgen
                .parent()
                .and_then(Path::parent)
                .map(|profile| profile.join(env!("CARGO_PKG_NAME")))
                .ok_or_else(|| Error::new("cannot derive the server's path from the loadgen's"))?,
        };
        if !server.is_file() {
            return Err(Error::new(format!(
                "no server binary at {}; build it first with `cargo build --profile profiling --features postgres --bins` (make bench does)",
                server.display()
            )));
        }
        Ok(Paths {
            loadgen,
            server,
            repository: PathBuf::from(env!("CARGO_MANIFEST_DIR")),
            work: TempDir::create(keep)?,
        })
    }

    /// `target/bench/latest.json`; a run of only some phases (`--only`) writes `partial.json`
    /// instead, so it never replaces the last complete report.
    pub fn report(&self, complete: bool) -> PathBuf {
        let name = if complete {
            "latest.json"
        } else {
            "partial.json"
        };
        self.repository.join("target").join("bench").join(name)
    }

    /// A fresh directory for one server's database and log.
    pub fn fresh_dir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.work.path.join(name);
        std::fs::create_dir(&dir).context(format!("cannot create {}", dir.display()))?;
        Ok(dir)
    }
}

pub struct TempDir {
    pub path: PathBuf,
    /// `--keep`: leave it for a look at the databases and server logs.
    keep: bool,
}

impl TempDir {
    fn create(keep: bool) -> Result<TempDir> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.subsec_nanos())
            .unwrap_or(0);
        let path =
            std::env::temp_dir().join(format!("mini-lambda-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&path).context(format!("cannot create {}", path.display()))?;
        Ok(TempDir { path, keep })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kept {}", self.path.display());
            return;
        }
        if let Err(err) = std::fs::remove_dir_all(&self.path) {
            eprintln!("warning: cannot remove {}: {err}", self.path.display());
        }
    }
}
