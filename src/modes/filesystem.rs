//! `filesystem`: a snapshot is an rsync copy of the included paths; restore is an in-place
//! rsync delta (`--delete`), which rewrites only what differs and never replaces the
//! included or node directories themselves (containers' bind mounts stay valid).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::{Mode, ModeContext, ModeKind, RestoreStats, Verified};
use crate::exit::{Code, fail};
use crate::manifest::{self, Manifest};
use crate::progress;
use crate::store::Snapshot;
use crate::tools::{Found, RSYNC, Tool};

pub struct Filesystem;

/// Everything rsync can preserve: hardlinks, ACLs, xattrs, sparse files, owners by number
/// (container uids mean nothing on the host), plus -a's modes, times, symlinks and devices.
/// `--modify-window=-1` compares mtimes to the nanosecond: with the default whole-second
/// comparison rsync neither sets a fresh copy's time that falls in the same second as the
/// source's, nor notices a same-size rewrite within the snapshot's second.
const PRESERVE: &[&str] = &["-aHAXS", "--numeric-ids", "--modify-window=-1"];

/// What rsync is asked to print while progress bars are drawn: `--info=progress2` the bytes
/// copied so far (inside a large file too) and the entries left to check (`to-chk=N/M`, with M
/// right from the start as `--no-inc-recursive` lists every file first), and `--out-format`
/// each file's name as its transfer starts, so the bytes that follow count for its node.
/// Reading that costs next to nothing and, unlike watching the destination grow, also shows a
/// delta restore, which rewrites files in place.
const PROGRESS: &[&str] = &["--info=progress2", "--no-inc-recursive", "--out-format=%n"];

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
                (&src, &dst, rel),
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

    /// The copy itself: its manifest then describes exactly what the snapshot holds, even
    /// if the live data changed after the copy (an unquiesced create).
    fn captured_tree(&self, _: &ModeContext, payload: &Path) -> PathBuf {
        payload.to_path_buf()
    }

    fn verify_stored(
        &self,
        _: &ModeContext,
        snapshot: &Snapshot,
        expected: &Manifest,
    ) -> Result<Verified> {
        let stored = Manifest::capture(&snapshot.payload(), &snapshot.meta.include)?;
        Ok(Verified {
            checked: format!(
                "every entry's metadata and every file's blake3 ({} entries)",
                stored.entries.len()
            ),
            problems: manifest::compare(expected, &stored)
                .iter()
                .map(|c| format!("{} differs from the manifest", c.described()))
                .collect(),
        })
    }

    fn restore(&self, ctx: &ModeContext, snapshot: &Snapshot) -> Result<RestoreStats> {
        let rsync = ctx.tool(RSYNC);
        let mut stats = RestoreStats::default();
        for rel in &snapshot.meta.include {
            let dst = ctx.live.path(rel);
            stats.add(delta(
                rsync,
                &snapshot.payload().join(rel),
                &dst,
                rel,
                &[],
                &format!(
                    "restoring {} from snapshot {}",
                    dst.display(),
                    snapshot.meta.name
                ),
            )?);
        }
        Ok(stats)
    }
}

/// The in-place delta restore of the included path `rel`: rsync rewrites what differs in
/// `dst` and deletes what `src` lacks. `extra` comes after [`PRESERVE`] and so may override
/// it (squashfs's mount restore compares whole seconds).
pub(super) fn delta(
    rsync: &Found,
    src: &Path,
    dst: &Path,
    rel: &Path,
    extra: &[&str],
    what: &str,
) -> Result<RestoreStats> {
    let args: Vec<&str> = ["--delete", "--stats"]
        .iter()
        .chain(extra)
        .copied()
        .collect();
    let out = sync(rsync, (src, dst, rel), &args, what)?;
    let report = String::from_utf8_lossy(&out.stdout);
    Ok(RestoreStats {
        files_rewritten: stat_number(&report, "Number of regular files transferred:"),
        bytes_rewritten: stat_number(&report, "Total transferred file size:"),
        entries_deleted: stat_number(&report, "Number of deleted files:"),
    })
}

/// rsync `src` onto `dst`, the copies of the included path `rel`. For directories the
/// trailing slash makes rsync fill `dst` in place instead of creating `dst/<name>`.
fn sync(
    rsync: &Found,
    (src, dst, rel): (&Path, &Path, &Path),
    extra: &[&str],
    what: &str,
) -> Result<std::process::Output> {
    let mut args: Vec<OsString> = PRESERVE.iter().chain(extra).map(OsString::from).collect();
    let (mut s, mut d) = (src.as_os_str().to_owned(), dst.as_os_str().to_owned());
    if src.is_dir() {
        s.push("/");
        d.push("/");
    }
    if !progress::active() {
        args.push(s);
        args.push(d);
        return rsync.run(args, what);
    }
    args.extend(PROGRESS.iter().map(OsString::from));
    args.push(s);
    args.push(d);
    let mut watch = Watch {
        rel,
        delta: extra.contains(&"--delete"),
        node: None,
        bytes: 0,
        done: false,
    };
    rsync.run_reporting(args, what, &mut |line| watch.line(line))
}

/// Reads rsync's [`PROGRESS`] output into the progress bars.
struct Watch<'a> {
    rel: &'a Path,
    /// A delta restore, whose bar follows the entries checked; a copy's follows the bytes.
    delta: bool,
    /// The node of the file being transferred.
    node: Option<String>,
    /// Bytes transferred so far, as the last progress line said.
    bytes: u64,
    /// The `--stats` report began: no more names or progress follow.
    done: bool,
}

impl Watch<'_> {
    fn line(&mut self, line: &str) {
        self.done = self.done || line.starts_with("Number of files: ");
        if self.done {
            return;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        match words[..] {
            [bytes, percent, rate, ..] if percent.ends_with('%') && rate.ends_with("/s") => {
                let Ok(bytes) = bytes.replace(',', "").parse::<u64>() else {
                    return;
                };
                progress::wrote(self.node.as_deref(), 0, bytes.saturating_sub(self.bytes));
                self.bytes = self.bytes.max(bytes);
                if self.delta
                    && let Some((left, total)) = entries_left(line)
                {
                    progress::share(total.saturating_sub(left), total);
                }
            }
            [] | ["deleting", ..] => {}
            _ => {
                self.node = progress::node_of(self.rel, Some(Path::new(line)));
                if !line.ends_with('/') {
                    progress::wrote(self.node.as_deref(), 1, 0);
                }
            }
        }
    }
}

/// The entries left to check and in all, from a progress line's `to-chk=N/M`.
fn entries_left(line: &str) -> Option<(u64, u64)> {
    let rest = line.split("-chk=").nth(1)?;
    let (left, total) = rest.trim_end_matches([')', ' ']).split_once('/')?;
    Some((left.parse().ok()?, total.parse().ok()?))
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
    use super::{entries_left, stat_number};

    #[test]
    fn reads_rsync_progress() {
        let line = "     30,001,000  33%  893.12MB/s    0:00:00 (xfr#2, to-chk=2/9)";
        assert_eq!(entries_left(line), Some((2, 9)));
        assert_eq!(
            entries_left("         32,768   0%    0.00kB/s    0:00:00  "),
            None
        );
    }

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
