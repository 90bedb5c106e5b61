//! `filesystem`: a snapshot is an rsync copy of the included paths; restore is an in-place
//! rsync delta (`--delete`), which rewrites only what differs and never replaces the
//! included or node directories themselves (containers' bind mounts stay valid).

use std::ffi::OsString;
use std::path::Path;

use anyhow::Result;

use super::{Mode, ModeContext, ModeKind, RestoreStats};
use crate::exit::{Code, fail};
use crate::store::Snapshot;
use crate::tools::{Found, RSYNC, Tool};

pub struct Filesystem;

/// Everything rsync can preserve: hardlinks, ACLs, xattrs, sparse files, owners by number
/// (container uids mean nothing on the host), plus -a's modes, times, symlinks and devices.
/// `--modify-window=-1` compares mtimes to the nanosecond: with the default whole-second
/// comparison rsync neither sets a fresh copy's time that falls in the same second as the
/// source's, nor notices a same-size rewrite within the snapshot's second.
const PRESERVE: &[&str] = &["-aHAXS", "--numeric-ids", "--modify-window=-1"];

impl Mode for Filesystem {
    fn kind(&self) -> ModeKind {
        ModeKind::Filesystem
    }

    fn tools(&self) -> &'static [Tool] {
        &[RSYNC]
    }

    fn create(&self, ctx: &ModeContext, payload: &Path) -> Result<serde_json::Value> {
        let rsync = ctx.tool(RSYNC);
        for rel in &ctx.live.include {
            let src = ctx.live.path(rel);
            let dst = payload.join(rel);
            if let Some(parent) = dst.parent() {
                std::fs::create_dir_all(parent)?;
            }
            sync(
                rsync,
                &src,
                &dst,
                &[],
                &format!("copying {} into the snapshot", src.display()),
            )?;
        }
        Ok(serde_json::Value::Null)
    }

    fn verify(&self, _: &ModeContext, snapshot: &Snapshot) -> Result<()> {
        for rel in &snapshot.meta.include {
            let path = snapshot.payload().join(rel);
            if path.symlink_metadata().is_err() {
                return Err(fail(
                    Code::Failure,
                    format!(
                        "snapshot {} is damaged: {} is missing; nothing was restored. Delete it and create it again",
                        snapshot.meta.name,
                        path.display()
                    ),
                ));
            }
        }
        Ok(())
    }

    fn restore(&self, ctx: &ModeContext, snapshot: &Snapshot) -> Result<RestoreStats> {
        let rsync = ctx.tool(RSYNC);
        let mut stats = RestoreStats::default();
        for rel in &snapshot.meta.include {
            let src = snapshot.payload().join(rel);
            let dst = ctx.live.path(rel);
            let out = sync(
                rsync,
                &src,
                &dst,
                &["--delete", "--stats"],
                &format!(
                    "restoring {} from snapshot {}",
                    dst.display(),
                    snapshot.meta.name
                ),
            )?;
            let report = String::from_utf8_lossy(&out.stdout);
            stats.files_rewritten += stat_number(&report, "Number of regular files transferred:");
            stats.bytes_rewritten += stat_number(&report, "Total transferred file size:");
            stats.entries_deleted += stat_number(&report, "Number of deleted files:");
        }
        Ok(stats)
    }
}

/// rsync `src` onto `dst`. For directories the trailing slash makes rsync fill `dst` in
/// place instead of creating `dst/<name>`.
fn sync(
    rsync: &Found,
    src: &Path,
    dst: &Path,
    extra: &[&str],
    what: &str,
) -> Result<std::process::Output> {
    let mut args: Vec<OsString> = PRESERVE.iter().chain(extra).map(OsString::from).collect();
    let (mut s, mut d) = (src.as_os_str().to_owned(), dst.as_os_str().to_owned());
    if src.is_dir() {
        s.push("/");
        d.push("/");
    }
    args.push(s);
    args.push(d);
    rsync.run(args, what)
}

/// A number from rsync's `--stats` report (`Number of deleted files: 1,234 (reg: …)`).
fn stat_number(report: &str, label: &str) -> u64 {
    report
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.replace(',', "").parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::stat_number;

    #[test]
    fn reads_rsync_stats() {
        let report = "Number of files: 20 (reg: 10, dir: 10)\nNumber of deleted files: 3 (reg: 3)\n\
                      Number of regular files transferred: 1,204\nTotal transferred file size: 12,345 bytes\n";
        assert_eq!(stat_number(report, "Number of deleted files:"), 3);
        assert_eq!(
            stat_number(report, "Number of regular files transferred:"),
            1204
        );
        assert_eq!(stat_number(report, "Total transferred file size:"), 12345);
        assert_eq!(stat_number(report, "Missing:"), 0);
    }
}
