//! `reflink`: a snapshot is a reflink clone (FICLONE) of every live file, kept in the store on
//! the data's own filesystem (XFS made with reflink=1, btrfs, bcachefs…). A clone shares the
//! data's blocks, so it costs neither the time nor the space of a copy until a suite writes.
//! Create and restore are both the delta engine with clones for content: create brings an
//! empty payload to the live data, restore brings the live data back to the manifest,
//! cloning again only the files that differ and removing extras, in place.
//!
//! The manifest of a reflink snapshot has no content hashes: reading every byte to hash it
//! would cost ten times the clone itself. Its content rests on the filesystem's copy-on-write
//! (a suite's writes never reach the snapshot's blocks); `verify` checks its metadata.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::{Finding, Mode, ModeContext, ModeKind, Restoration, Status, Verified, filesystem};
use crate::config::Config;
use crate::delta::{Content, Delta, clone};
use crate::exit::{Code, fail};
use crate::manifest::Manifest;
use crate::store::Snapshot;
use crate::sys;
use crate::tools::{Found, Tool};
use crate::tree::{Live, Totals};

pub struct Reflink;

impl Mode for Reflink {
    fn kind(&self) -> ModeKind {
        ModeKind::Reflink
    }

    fn tools(&self) -> &'static [Tool] {
        &[]
    }

    fn preflight(&self, cfg: &Config, _: &[Found]) -> Result<()> {
        probe(&cfg.settings.snapshots_dir, &cfg.live())
            .map(drop)
            .map_err(|why| fail(Code::Usage, why))
    }

    fn doctor(&self, ctx: &ModeContext) -> Vec<Finding> {
        vec![match probe(&ctx.cfg.settings.snapshots_dir, ctx.live) {
            Ok(detail) => Finding::new("reflink", Status::Ok, detail, ""),
            Err(why) => Finding::new(
                "reflink",
                Status::Fail,
                why,
                "put snapshots_dir on the data's filesystem, or use mode = filesystem",
            ),
        }]
    }

    /// Clones share the data's blocks: only metadata is new.
    fn space_needed(&self, _: &Totals) -> Option<u64> {
        Some(0)
    }

    fn hashes_content(&self) -> bool {
        false
    }

    /// The pulled tree is the payload as it stands: on a reflink filesystem, a reflink
    /// snapshot like one [`Mode::create`] clones (its files share no blocks with the data
    /// until a restore clones them back).
    fn take_tree(&self, ctx: &ModeContext, payload: &Path) -> Result<serde_json::Value> {
        super::tree_as_payload(ctx, payload)
    }

    fn create(&self, ctx: &ModeContext, payload: &Path) -> Result<serde_json::Value> {
        let live = ctx.live;
        let target = Manifest::scan(&live.cache_dir, &live.include)?;
        // The included directories first: the engine fills the nodes in parallel inside them.
        for rel in &live.include {
            let dst = payload.join(rel);
            if live.path(rel).is_dir() {
                std::fs::create_dir_all(&dst)?;
            } else if let Some(parent) = dst.parent() {
                std::fs::create_dir_all(parent)?;
            }
        }
        let done = Delta {
            target: &target,
            source: &crate::delta::Dir::live(&live.cache_dir)?,
            root: payload,
            content: Content::Clone,
            by_content: false,
            observer: ctx.observer,
            recheck: false,
            mapped: None,
            before_change: &|_| Ok(()),
        }
        .apply()?;
        tracing::debug!(files = done.stats.files_rewritten, "reflink_cloned");
        Ok(serde_json::Value::Null)
    }

    fn verify(&self, ctx: &ModeContext, snapshot: &Snapshot) -> Result<()> {
        filesystem::check_payload(snapshot)?;
        probe(&snapshot.payload(), ctx.live)
            .map(drop)
            .map_err(|why| {
                fail(
                    Code::Failure,
                    format!("cannot restore {}: {why}", snapshot.meta.name),
                )
            })
    }

    fn captured_tree(&self, _: &ModeContext, payload: &Path) -> PathBuf {
        payload.to_path_buf()
    }

    fn verify_stored(
        &self,
        _: &ModeContext,
        snapshot: &Snapshot,
        expected: &Manifest,
    ) -> Result<Verified> {
        filesystem::read_back(snapshot, expected, false)
    }

    fn restore(
        &self,
        ctx: &ModeContext,
        snapshot: &Snapshot,
        manifest: Option<&Manifest>,
    ) -> Result<Restoration> {
        super::payload_restore(ctx, snapshot, manifest, Content::Clone)
    }
}

/// Proves with a real clone that files of the data can be reflinked into `store` (or its
/// nearest existing parent): a few KiB of the first data file found, cloned into a temporary
/// file that is removed at once. Says which filesystems it found either way.
fn probe(store: &Path, live: &Live) -> std::result::Result<String, String> {
    let mut dir = store;
    while !dir.is_dir() {
        dir = dir.parent().unwrap_or(Path::new("/"));
    }
    let data = live
        .include
        .iter()
        .map(|rel| live.path(rel))
        .find(|p| p.exists())
        .unwrap_or_else(|| live.cache_dir.clone());
    let (store_fs, data_fs) = (fs_name(dir), fs_name(&data));
    let needs = "reflink mode needs snapshots_dir and the data on one filesystem that supports reflinks (XFS made with reflink=1, btrfs, bcachefs)";
    let Some(sample) = first_file(live) else {
        return if store_fs == data_fs {
            Ok(format!(
                "snapshots_dir and the data are on {store_fs}; there is no data file to test a clone with yet"
            ))
        } else {
            Err(format!(
                "{needs}: {} is on {store_fs}, {} on {data_fs}",
                dir.display(),
                data.display()
            ))
        };
    };
    let probe_path = dir.join(format!(".stagesnap-reflink-probe-{}", std::process::id()));
    let cloned = (|| -> std::io::Result<()> {
        let src = File::open(&sample)?;
        let dst = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&probe_path)?;
        let result = clone_head(&src, &dst);
        drop(dst);
        std::fs::remove_file(&probe_path)?;
        result
    })();
    match cloned {
        Ok(()) => Ok(format!(
            "a test clone of {} into {} worked ({store_fs})",
            sample.display(),
            dir.display()
        )),
        Err(e) => Err(format!(
            "{needs}: cloning {} into {} failed ({e}); {} is on {store_fs}, the data on {data_fs}",
            sample.display(),
            dir.display(),
            dir.display()
        )),
    }
}

/// Clones the first 64 KiB of `src` (all of a smaller file): enough to prove reflinks work,
/// cheap whatever the file's size.
fn clone_head(src: &File, dst: &File) -> std::io::Result<()> {
    const HEAD: u64 = 64 << 10;
    if src.metadata()?.len() <= HEAD {
        return clone(src, dst);
    }
    sys::clone_head(src, dst, HEAD)
}

/// The first non-empty regular file of the included paths.
fn first_file(live: &Live) -> Option<PathBuf> {
    live.include.iter().find_map(|rel| {
        walkdir::WalkDir::new(live.path(rel))
            .into_iter()
            .flatten()
            .find(|e| e.file_type().is_file() && e.metadata().is_ok_and(|m| m.len() > 0))
            .map(|e| e.into_path())
    })
}

/// The filesystem type of `path`, by statfs f_type.
fn fs_name(path: &Path) -> String {
    let Ok(magic) = sys::fs_magic(path) else {
        return "an unknown filesystem".into();
    };
    let name = match magic {
        0x5846_5342 => "xfs",
        0x9123_683e => "btrfs",
        0xca45_1a4e => "bcachefs",
        0xef53 => "ext4",
        0x0102_1994 => "tmpfs",
        0x794c_7630 => "overlayfs",
        0x2fc1_2fc1 => "zfs",
        0xf2f5_2010 => "f2fs",
        0x6969 => "nfs",
        0x7371_7368 => "squashfs",
        other => return format!("a filesystem of type 0x{other:x}"),
    };
    name.to_string()
}
