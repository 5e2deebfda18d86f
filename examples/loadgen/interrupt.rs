//! Ctrl-C and SIGTERM handling for the loadgen. The signal only raises a flag; every loop checks
//! it, so an interrupted run unwinds normally and the guards stop the servers and delete the
//! temporary directory instead of leaving them behind.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Installs the handler. Without it a Ctrl-C would still end the run (the servers die with the
/// loadgen, see `servers.rs`), only without cleaning up.
pub fn install() {
    if let Err(err) = ctrlc::set_handler(|| REQUESTED.store(true, Ordering::Relaxed)) {
        eprintln!("warning: cannot install the Ctrl-C handler ({err}); an interrupted run leaves its temporary files");
    }
}

pub fn requested() -> bool {
    REQUESTED.load(Ordering::Relaxed)
}

/// `Err` once an interrupt has been requested; for the `?` at the top of each step.
pub fn check() -> Result<()> {
    if requested() {
        Err(Error::new("interrupted"))
    } else {
        Ok(())
    }
}
