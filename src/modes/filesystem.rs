//! `filesystem`: a snapshot is an rsync copy of the included paths; restore is the delta
//! engine's in-place repair from that copy (see [`crate::delta`]), which rewrites only what
//! differs and never replaces the included or node directories themselves (containers' bind
//! mounts stay valid).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::{Mode, ModeContext, ModeKind, Restoration, Verified};
use crate::delta::Content;
use crate::exit::Error;
use crate::manifest::{self, Manifest};
use crate::observe::Observer;
use crate::store::Snapshot;
use crate::tools::{Found, Tool};
use crate::tree::{Totals, node_of};

pub struct Filesystem;

const RSYNC: Tool = Tool {
    program: "rsync",
    package: "rsync",
    product: "rsync",
    version_args: &["--version"],
    // stagesnap runs rsync only to copy live data into a snapshot. A file that vanishes while
    // rsync reads its xattrs or ACLs makes it exit 23 instead of 24.
    exit_hints: &[(24, "", VANISHED), (23, "vanished", VANISHED)],
};

const VANISHED: &str = "files vanished while rsync copied them, so the nodes are writing to their data: quiesce them during create (quiesce = pause or stop in [suite_isolation]) and create again";

/// Everything rsync can preserve: hardlinks, ACLs, xattrs, sparse files, owners by number
/// (container uids mean nothing on the host), plus -a's modes, times, symlinks and devices.
/// `--modify-window=-1` compares mtimes to the nanosecond: with the default whole-second
/// comparison rsync neither sets a fresh copy's time that falls in the same second as the
/// source's, nor notices a same-size rewrite within the snapshot's second.
const PRESERVE: &[&str] = &["-aHAXS", "--numeric-ids", "--modify-window=-1"];

/// What rsync is asked to print while progress bars are drawn: `--info=progress2` the bytes
/// copied so far (inside a large file too), and `--out-format` each file's name as its
/// transfer starts, so the bytes that follow count for its node. Reading that costs next to
/// nothing.
const PROGRESS: &[&str] = &["--info=progress2", "--out-format=%n"];

impl Mode for Filesystem {
    fn kind(&self) -> ModeKind {
        ModeKind::Filesystem
    }

    fn tools(&self) -> &'static [Tool] {
        &[RSYNC]
    }

    /// A copy takes what the data takes (rsync -H and -S keep hardlinks and holes).
    fn space_needed(&self, data: &Totals) -> Option<u64> {
        Some(data.allocated)
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
                ctx,
                rsync,
                (&src, &dst, rel),
                &format!("copying {} into the snapshot", src.display()),
            )?;
        }
        Ok(serde_json::Value::Null)
    }

    /// The pulled tree is the payload as it stands.
    fn take_tree(&self, ctx: &ModeContext, payload: &Path) -> Result<serde_json::Value> {
        super::tree_as_payload(ctx, payload)
    }

    /// A file a suite left alone is stored once, hardlinked from the previous snapshot.
    fn shares_identical_files(&self) -> bool {
        true
    }

    fn verify(&self, _: &ModeContext, snapshot: &Snapshot) -> Result<()> {
        check_payload(snapshot)
    }

    /// The copy itself: its manifest then describes exactly what the snapshot holds, even
    /// if the live data changed after the copy (an unquiesced create).
    fn captured_tree(&self, _: &ModeContext, payload: &Path) -> PathBuf {
        payload.to_path_buf()
    }

    /// rsync -S turns every run of zeros into holes (mdbx files hold such runs), so the copy can
    /// be sparse where the live file was dense. Such a file is described as dense, as it was
    /// captured: `status` right after `create` finds no difference, and a restore keeps it
    /// dense. Only the copy's sparse files are looked at (one lstat each); the copy keeps its
    /// holes, which `verify` accepts (holes appearing is no difference).
    fn describe_captured(&self, ctx: &ModeContext, manifest: &mut Manifest) -> Result<()> {
        for entry in manifest.entries.iter_mut().filter(|e| e.sparse) {
            let live = ctx.live.cache_dir.join(OsStr::from_bytes(&entry.path.0));
            if std::fs::symlink_metadata(&live)
                .is_ok_and(|st| st.is_file() && st.blocks().saturating_mul(512) >= st.len())
            {
                entry.sparse = false;
            }
        }
        Ok(())
    }

    fn verify_stored(
        &self,
        _: &ModeContext,
        snapshot: &Snapshot,
        expected: &Manifest,
    ) -> Result<Verified> {
        read_back(snapshot, expected, true)
    }

    fn restore(
        &self,
        ctx: &ModeContext,
        snapshot: &Snapshot,
        manifest: Option<&Manifest>,
    ) -> Result<Restoration> {
        super::payload_restore(ctx, snapshot, manifest, Content::Copy)
    }
}

/// rsync `src` onto `dst`, the copies of the included path `rel`. For directories the
/// trailing slash makes rsync fill `dst` in place instead of creating `dst/<name>`.
fn sync(
    ctx: &ModeContext,
    rsync: &Found,
    (src, dst, rel): (&Path, &Path, &Path),
    what: &str,
) -> Result<()> {
    let mut args: Vec<OsString> = PRESERVE.iter().map(OsString::from).collect();
    let (mut s, mut d) = (src.as_os_str().to_owned(), dst.as_os_str().to_owned());
    if src.is_dir() {
        s.push("/");
        d.push("/");
    }
    if !ctx.observer.active() {
        args.push(s);
        args.push(d);
        return rsync.run(args, what).map(drop);
    }
    args.extend(PROGRESS.iter().map(OsString::from));
    args.push(s);
    args.push(d);
    let mut watch = Watch {
        observer: ctx.observer,
        rel,
        node: None,
        bytes: 0,
    };
    rsync
        .run_reporting(args, what, &mut |line| watch.line(line))
        .map(drop)
}

/// Reads rsync's [`PROGRESS`] output into the progress bars.
struct Watch<'a> {
    observer: &'a dyn Observer,
    rel: &'a Path,
    /// The node of the file being transferred.
    node: Option<String>,
    /// Bytes transferred so far, as the last progress line said.
    bytes: u64,
}

impl Watch<'_> {
    fn line(&mut self, line: &str) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words[..] {
            [bytes, percent, rate, ..] if percent.ends_with('%') && rate.ends_with("/s") => {
                let Ok(bytes) = bytes.replace(',', "").parse::<u64>() else {
                    return;
                };
                self.observer
                    .wrote(self.node.as_deref(), 0, bytes.saturating_sub(self.bytes));
                self.bytes = self.bytes.max(bytes);
            }
            [] => {}
            _ => {
                self.node = node_of(self.rel, Some(Path::new(line)));
                if !line.ends_with('/') {
                    self.observer.wrote(self.node.as_deref(), 1, 0);
                }
            }
        }
    }
}

/// Fails ("damaged", nothing restored) unless every included path is in the payload: the
/// pre-restore check of the modes whose snapshot is a tree of files.
pub(super) fn check_payload(snapshot: &Snapshot) -> Result<()> {
    for rel in &snapshot.meta.include {
        let path = snapshot.payload().join(rel);
        if path.symlink_metadata().is_err() {
            return Err(Error::Damaged {
                snapshot: snapshot.meta.name.clone(),
                what: format!("{} is missing", path.display()),
                refused: true,
            }
            .into());
        }
    }
    Ok(())
}

/// `verify` of a snapshot that is a tree of files: the payload scanned (and every file hashed,
/// with `hash`) and compared with the manifest.
pub(super) fn read_back(snapshot: &Snapshot, expected: &Manifest, hash: bool) -> Result<Verified> {
    let payload = snapshot.payload();
    let stored = if hash {
        Manifest::capture(&payload, &snapshot.meta.include)?
    } else {
        Manifest::scan(&payload, &snapshot.meta.include)?
    };
    Ok(Verified {
        checked: if hash {
            format!(
                "every entry's metadata and every file's blake3 ({} entries)",
                stored.entries.len()
            )
        } else {
            format!(
                "every entry's metadata ({} entries; the manifest holds no content hashes)",
                stored.entries.len()
            )
        },
        problems: manifest::compare(expected, &stored)
            .iter()
            .map(|c| format!("{} differs from the manifest", c.described()))
            .collect(),
    })
}
