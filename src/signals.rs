//! Ctrl-C / SIGTERM handling.
//!
//! The first signal only sets a flag: the running operation notices it (child processes are
//! stopped and waited for, guards remove temporary files and release the lock) and the
//! program exits 130. A second signal exits at once, like fd and just do.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use anyhow::Result;

use crate::exit::{Code, fail};

static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();

fn flag() -> &'static Arc<AtomicBool> {
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

pub fn install() -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    for sig in [SIGINT, SIGTERM, SIGHUP] {
        // Registered first so that it sees the flag as it was before this signal.
        signal_hook::flag::register_conditional_shutdown(
            sig,
            Code::Interrupted.as_i32(),
            flag().clone(),
        )?;
        signal_hook::flag::register(sig, flag().clone())?;
    }
    Ok(())
}

pub fn interrupted() -> bool {
    flag().load(Ordering::SeqCst)
}

/// Err(interrupted, exit 130) once a signal arrived; call between steps of long work.
pub fn check() -> Result<()> {
    if interrupted() {
        Err(fail(
            Code::Interrupted,
            "interrupted; nothing more was changed",
        ))
    } else {
        Ok(())
    }
}
