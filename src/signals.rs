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
//!
//! `--timeout SECONDS` sets a deadline that work checks in the same places as the flag: an
//! expired one stops the operation the same way, with exit 1 instead of 130.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::exit::{Code, Failure};

static FLAG: AtomicBool = AtomicBool::new(false);
/// The suite's pid while `run` waits for it, else 0.
static SUITE: AtomicI32 = AtomicI32::new(0);
/// When `--timeout` expires, and its seconds for the message.
static DEADLINE: Mutex<Option<(Instant, u64)>> = Mutex::new(None);

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
            crate::sys::forward_signal(suite, sig);
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

/// Starts the `--timeout` clock for the operation about to run; None: no limit.
pub fn arm(seconds: Option<u64>) {
    *DEADLINE.lock().unwrap_or_else(PoisonError::into_inner) =
        seconds.map(|s| (Instant::now() + Duration::from_secs(s), s));
}

/// Why work has to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Ctrl-C, SIGTERM or SIGHUP (exit 130).
    Interrupted,
    /// `--timeout SECONDS` expired (exit 1).
    TimedOut(u64),
}

impl Stop {
    /// The error that ends the command; `rest` says what was under way and what was undone.
    pub fn error(self, rest: &str) -> anyhow::Error {
        anyhow::Error::new(self.failure(rest))
    }

    fn failure(self, rest: &str) -> Failure {
        let (code, message) = match self {
            Stop::Interrupted => (Code::Interrupted, format!("interrupted{rest}")),
            Stop::TimedOut(s) => (
                Code::Failure,
                format!(
                    "timed out after {s} s (--timeout {s}){rest}; raise --timeout if it needs longer"
                ),
            ),
        };
        Failure { code, message }
    }
}

/// Some once a signal arrived or `--timeout` expired.
pub fn stop() -> Option<Stop> {
    if interrupted() {
        return Some(Stop::Interrupted);
    }
    let deadline = *DEADLINE.lock().unwrap_or_else(PoisonError::into_inner);
    deadline
        .filter(|(at, _)| Instant::now() >= *at)
        .map(|(_, s)| Stop::TimedOut(s))
}

/// Err once a signal arrived (exit 130) or `--timeout` expired (exit 1); call between steps
/// of long work.
pub fn check() -> Result<()> {
    match stop() {
        Some(why) => Err(why.error(NOTHING_MORE)),
        None => Ok(()),
    }
}

/// [`check`] for code that can only return io errors; the error keeps its exit code (see
/// [`crate::exit::code_of`]).
pub fn check_io() -> std::io::Result<()> {
    match stop() {
        Some(why) => Err(std::io::Error::other(why.failure(NOTHING_MORE))),
        None => Ok(()),
    }
}

const NOTHING_MORE: &str = "; nothing more was changed";

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
