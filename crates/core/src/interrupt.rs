//! Ctrl-C as a request to stop, not a kill. The command line installs a handler; long loops (the
//! batch loader, benchmarks, generators) call `check` between units of work and return
//! `Error::Interrupted`, so that the usual error path runs: temporary outputs are removed, the
//! previous output stays as it was, and the command says how to resume where resuming exists.
//! A second Ctrl-C quits at once (the next run clears what that leaves behind).

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Installs the handler for Ctrl-C (SIGINT) and SIGTERM. Called once by the command line.
pub fn install() -> Result<()> {
    ctrlc::set_handler(|| {
        if REQUESTED.swap(true, Ordering::SeqCst) {
            eprintln!("\ninterrupted again: quitting now");
            std::process::exit(130);
        }
        eprintln!("\nstopping at the next safe point (press Ctrl-C again to quit at once)…");
    })
    .map_err(|e| Error::invalid(format!("cannot install the Ctrl-C handler: {e}")))
}

/// Asks the running work to stop (what the handler does; also for tests).
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Whether a stop was requested.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::Relaxed)
}

/// `Err(Error::Interrupted)` once a stop was requested.
pub fn check() -> Result<()> {
    if requested() {
        Err(Error::Interrupted)
    } else {
        Ok(())
    }
}
