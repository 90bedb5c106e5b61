//! Ctrl-C / SIGTERM handling.
//!
//! The first signal only sets a flag: the running operation notices it (child processes are
//! stopped and waited for, guards remove temporary files and release the lock) and the
//! program exits 130. A second signal exits at once, like fd and just do.
//!
//! While `stagesnap run` waits for a test suite, signals are the suite's business instead, as
//! a shell leaves them to its foreground job: Ctrl-C already reached it from the terminal (same
//! process group), so it is not sent twice; SIGTERM and SIGHUP, which may have been sent to
//! stagesnap alone, are passed on. stagesnap itself waits for the suite however many arrive,
//! and only records that one did.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use anyhow::Result;

use crate::exit::{Code, fail};

static FLAG: AtomicBool = AtomicBool::new(false);
/// The suite's pid while `run` waits for it, else 0.
static SUITE: AtomicI32 = AtomicI32::new(0);

pub fn install() -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    for sig in [SIGINT, SIGTERM, SIGHUP] {
        // SAFETY: the handler only uses atomics, kill(2) and _exit(2), which are
        // async-signal-safe.
        unsafe { signal_hook::low_level::register(sig, move || on_signal(sig)) }?;
    }
    Ok(())
}

fn on_signal(sig: i32) {
    let suite = SUITE.load(Ordering::SeqCst);
    if suite > 0 {
        if sig != signal_hook::consts::SIGINT {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(suite, sig) };
        }
        FLAG.store(true, Ordering::SeqCst);
        return;
    }
    if FLAG.swap(true, Ordering::SeqCst) {
        signal_hook::low_level::exit(Code::Interrupted.as_i32());
    }
}

pub fn interrupted() -> bool {
    FLAG.load(Ordering::SeqCst)
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

/// Leaves signals to the suite `pid` until dropped (see the module's docs).
pub fn forward_to(pid: u32) -> Forwarding {
    SUITE.store(pid as i32, Ordering::SeqCst);
    Forwarding(())
}

pub struct Forwarding(());

impl Drop for Forwarding {
    fn drop(&mut self) {
        SUITE.store(0, Ordering::SeqCst);
    }
}
