//! `stagesnap run`: restore a snapshot, run the test suite on it, and exit with the suite's
//! exit code; with `--keep-failed`, snapshot what a failing suite left behind.

use std::ffi::OsString;
use std::process::ExitStatus;
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use super::{create_report, open, restore_report};
use crate::cli::{GlobalArgs, RunArgs};
use crate::exit::{Code, code_of, fail, one_line};
use crate::names::validate_name;
use crate::ops::create::{CreateOpts, Created};
use crate::ops::restore::{RestoreOpts, Restored};
use crate::output::Report;
use crate::tree::seconds;

#[derive(Serialize)]
struct Ran {
    snapshot: String,
    /// The restore's record, as `restore --json` gives it.
    restore: Restored,
    restore_exit_code: u8,
    restore_seconds: f64,
    suite: Vec<String>,
    suite_exit_code: u8,
    suite_seconds: f64,
    /// The create's record of the `--keep-failed` snapshot, as `create --json` gives it.
    #[serde(skip_serializing_if = "Option::is_none")]
    kept: Option<Created>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kept_error: Option<String>,
}

pub fn run(g: &GlobalArgs, args: &RunArgs) -> Result<Report> {
    let session = open(g)?;
    let name = session.snapshot_named(args.snapshot.as_deref())?;
    if args.keep_failed && validate_name(&kept_name(&name, jiff::Timestamp::UNIX_EPOCH)).is_err() {
        // Said now: once the suite has failed it is too late.
        return Err(fail(
            Code::Usage,
            format!(
                "--keep-failed: snapshot name {name} is too long to add -failed-<time> to (names have at most 128 characters); restore a shorter name"
            ),
        ));
    }
    let started = Instant::now();
    let restored = session.restore(
        Some(&name),
        RestoreOpts {
            verify: None,
            allow_stale: args.allow_stale,
        },
    )?;
    let restore_seconds = seconds(started.elapsed());
    if restored.code() != Code::Ok {
        tracing::warn!(name = %name, "run_restore_degraded: the suite runs on data that is not the snapshot's");
    }
    if !g.json {
        // Before the suite's own output, where it belongs in time.
        crate::output::print(&restore_report(&restored), false);
    }

    let shown = shown(&args.command);
    tracing::info!(command = %shown, "suite_started");
    let suite_started = Instant::now();
    let status = crate::tools::run_suite(&args.command)?;
    let suite_seconds = seconds(suite_started.elapsed());
    let code = exit_code(status);
    tracing::info!(exit_code = code, seconds = suite_seconds, "suite_finished");

    let mut ran = Ran {
        snapshot: name.clone(),
        restore_exit_code: restored.code().as_i32() as u8,
        restore: restored,
        restore_seconds,
        suite: args
            .command
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        suite_exit_code: code,
        suite_seconds,
        kept: None,
        kept_error: None,
    };
    let mut text = String::new();
    let mut kept_as = String::new();
    if args.keep_failed && code != 0 {
        if crate::signals::interrupted() {
            tracing::info!("keep_failed_skipped: the suite was interrupted");
        } else {
            let kept = kept_name(&name, jiff::Timestamp::now());
            // --timeout bounds the restore and this snapshot, not the suite between them.
            crate::signals::arm(g.timeout);
            let opts = CreateOpts {
                pin: true,
                ..CreateOpts::default()
            };
            match session.create(Some(&kept), opts) {
                Ok(created) => {
                    text.push_str(&create_report(&created).text);
                    kept_as = format!("; its data is kept as {kept} (pinned)");
                    ran.kept = Some(created);
                }
                Err(e) if code_of(&e) == Code::Interrupted => return Err(e),
                // The suite's exit code still says what matters; the error is not hidden.
                Err(e) => {
                    tracing::error!(name = %kept, error = %one_line(&e), "keep_failed_error: the failed suite's data could not be snapshotted");
                    ran.kept_error = Some(one_line(&e));
                }
            }
        }
    }
    text.push_str(&format!(
        "suite `{shown}` exited {code} after {suite_seconds:.2} s; restoring {name} took {restore_seconds:.2} s{kept_as}\n"
    ));
    Ok(Report::new("run", &ran, text).with_status(code))
}

/// `clean_state-failed-20260102T030405Z`.
fn kept_name(name: &str, at: jiff::Timestamp) -> String {
    format!("{name}-failed-{}", at.strftime("%Y%m%dT%H%M%SZ"))
}

/// A shell's view of an exit status: the code, or 128 + the signal that ended the process.
fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => 128u8.saturating_add(signal as u8),
        (None, None) => Code::Failure.as_i32() as u8,
    }
}

fn shown(argv: &[OsString]) -> String {
    argv.iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_names_are_valid_and_sortable() {
        let at: jiff::Timestamp = "2026-01-02T03:04:05.678Z".parse().unwrap();
        let kept = kept_name("clean_state", at);
        assert_eq!(kept, "clean_state-failed-20260102T030405Z");
        validate_name(&kept).unwrap();
    }
}
