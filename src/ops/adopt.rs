//! Adopt: turn a snapshot the stage-env harness left into a stagesnap snapshot.
//! A filesystem one keeps its data where it is (its node directories are renamed into the
//! new snapshot's payload); a squashfs image is re-packed, since its root holds the node
//! directories where a stagesnap image holds `data/<node>`. Until the new snapshot is in
//! place the legacy one stays as it was, or is put back so (see [`crate::legacy::recover`]).

use std::ffi::OsString;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use super::create::{Job, Sealed};
use super::{Session, clean_leftovers, prepare};
use crate::config::Config;
use crate::exit::{Code, fail, one_line};
use crate::legacy::{self, DATA_DIR, Format, Legacy};
use crate::modes::squashfs::UNSQUASHFS;
use crate::modes::{Mode, ModeContext};
use crate::observe::Unobserved;
use crate::store::{DIR_METADATA, Lock, Snapshot, Staging, Store};
use crate::tools::Found;
use crate::tree::{Live, TreeBeside};

/// What an adopt did: `adopt --json`'s record.
#[derive(Debug, Serialize)]
pub struct Adopted {
    pub name: String,
    /// The legacy snapshot's format: filesystem or squashfs.
    pub format: Format,
    /// The new snapshot's mode.
    pub mode: &'static str,
    pub nodes: Vec<String>,
    pub files: u64,
    pub bytes: u64,
    pub stored_bytes: u64,
    /// True when a stagesnap snapshot of the same name was replaced (--force).
    pub replaced: bool,
    pub seconds: f64,
}

impl Session {
    /// Adopts the stage-env harness's snapshot `name` (else `snapshot_name`); `force`
    /// replaces a stagesnap snapshot of that name.
    pub fn adopt(&self, name: Option<&str>, force: bool) -> Result<Adopted> {
        let cfg = &self.cfg;
        let name = self.snapshot_named(name)?;
        let store = self.checked_store()?;
        let lock = store.lock(&format!("adopt {name}"), self.lock_timeout)?;
        clean_leftovers(&store, &lock)?;
        let legacy = match legacy::find(store.dir(), &name).as_slice() {
            [one] => one.clone(),
            [] => {
                return Err(fail(
                    Code::NotFound,
                    format!(
                        "no stage-env snapshot {name} in {} (neither {name}/ with {DIR_METADATA} nor {name}.sqfs){}; see `stagesnap list`",
                        store.dir().display(),
                        if store.exists(&name) {
                            ": it is a stagesnap snapshot already"
                        } else {
                            ""
                        }
                    ),
                ));
            }
            [dir, image, ..] => {
                return Err(fail(
                    Code::Failure,
                    format!(
                        "cannot adopt {name}: the stage-env harness left both {} and {}; delete the one you do not want by hand, then adopt the other",
                        dir.path.display(),
                        image.path.display()
                    ),
                ));
            }
        };
        legacy.check_not_linked()?;
        // A legacy directory is never also a stagesnap snapshot (it has no meta.json), but an
        // image can sit beside one of the same name.
        let replaced = legacy.format == Format::Squashfs && store.exists(&name);
        if replaced && !force {
            return Err(fail(
                Code::Failure,
                format!(
                    "cannot adopt {name}: a stagesnap snapshot {name} already exists in {}; use --force to replace it with the adopted one",
                    store.dir().display()
                ),
            ));
        }
        let (mode, tools) = prepare(legacy.format.mode(), cfg)?;
        mode.preflight(cfg, &tools)?;
        let started = Instant::now();
        let adoption = Adoption {
            cfg,
            store: &store,
            lock: &lock,
            mode: mode.as_ref(),
            tools: &tools,
            legacy: &legacy,
        };
        let snap = match legacy.format {
            Format::Filesystem => {
                // Checked before anything moves.
                legacy::nodes_in(&legacy.path, &[DIR_METADATA], &|p| p.display().to_string())
                    .and_then(|nodes| adoption.by_rename(&nodes))
            }
            Format::Squashfs => adoption.by_repack(),
        }
        .map_err(|e| {
            // Unless moving the node directories back failed, which the error then says.
            if legacy::moved_out(&legacy.path) {
                return e;
            }
            e.context(format!(
                "adopting {name} failed; the stage-env snapshot {} is as it was",
                legacy.path.display()
            ))
        })?;
        // The snapshot is adopted; what is left of the legacy one only takes space and would
        // list it twice, so a failure to remove it is said, not fatal.
        if let Err(e) = legacy::remove_files(store.dir(), &name, &lock) {
            tracing::warn!(name = %name, error = %one_line(&e), "legacy_files_left: adopted, but the stage-env files of {name} could not be removed; remove them by hand");
        }
        let seconds = crate::tree::seconds(started.elapsed());
        tracing::info!(name = %name, format = %legacy.format.name(), files = snap.meta.files, bytes = snap.meta.bytes, seconds, "snapshot_adopted");
        let meta = &snap.meta;
        Ok(Adopted {
            name,
            format: legacy.format,
            mode: mode.kind().name(),
            nodes: meta.nodes.clone(),
            files: meta.files,
            bytes: meta.bytes,
            stored_bytes: meta.stored_bytes,
            replaced,
            seconds,
        })
    }
}

/// One adopt, under the lock.
struct Adoption<'a> {
    cfg: &'a Config,
    store: &'a Store,
    lock: &'a Lock,
    mode: &'a dyn Mode,
    tools: &'a [Found],
    legacy: &'a Legacy,
}

impl Adoption<'_> {
    /// The snapshot's live data as cache_dir's `data/<node>` for each of `nodes`: what the
    /// legacy snapshot holds is exactly those node directories, so a restore touches only them.
    fn live(&self, cache_dir: &Path, nodes: &[String]) -> Live {
        Live {
            cache_dir: cache_dir.to_path_buf(),
            include: nodes.iter().map(|n| Path::new(DATA_DIR).join(n)).collect(),
        }
    }

    /// Seals the staging snapshot of `nodes` whose captured tree the mode's `ctx` names (see
    /// [`Job::seal`]), as made when the harness made the legacy one.
    fn seal(
        &self,
        staging: &mut Staging,
        ctx: &ModeContext,
        nodes: &[String],
        payload: serde_json::Value,
    ) -> Result<Snapshot> {
        let live = self.live(&self.cfg.settings.cache_dir, nodes);
        let job = Job {
            cfg: self.cfg,
            live: &live,
            store: self.store,
            lock: self.lock,
            mode: self.mode,
            tools: self.tools,
            // Adopting draws no bars: it copies nothing.
            observer: &Unobserved,
            // Adopting reads the harness's copy, never the live data a restore left.
            allow_interrupted: true,
        };
        let sealed = Sealed {
            name: &self.legacy.name,
            created_at: self.legacy.created(),
            nodes: live
                .include
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect(),
            data: ctx.live.totals()?,
            pin: false,
            payload,
            // The harness recorded no digests of the files beside the data.
            fingerprint: None,
            // Nothing is copied from the live data.
            changes: None,
        };
        job.seal(staging, ctx, sealed)
    }

    /// A legacy filesystem snapshot: its node directories are renamed into the payload
    /// (same filesystem, nothing copied), the manifest is computed from them there, and the
    /// new snapshot replaces the legacy directory in one atomic step. A failure before that
    /// moves them back.
    fn by_rename(&self, nodes: &[String]) -> Result<Snapshot> {
        let legacy = &self.legacy.path;
        let mut staging = self.store.begin(&self.legacy.name, self.lock)?;
        let payload = staging.payload();
        let adopted = legacy::move_nodes(legacy, nodes, &staging).and_then(|moved| {
            let sealed = (|| {
                crate::testhook::pause("adopt-after-move");
                crate::signals::check()?;
                let live = self.live(&payload, nodes);
                let ctx = ModeContext::new(self.cfg, &live, self.tools, &super::Quiesced);
                self.seal(&mut staging, &ctx, nodes, serde_json::Value::Null)
            })();
            sealed.map_err(|e| match moved.put_back() {
                Ok(()) => e,
                Err(back) => e.context(format!(
                    "and moving its node directories back failed too ({})",
                    one_line(&back)
                )),
            })
        });
        if adopted.is_err() && legacy::moved_out(legacy) {
            // The staging directory holds node directories, so it must outlive this process:
            // the record in the legacy directory lets the next command that locks the store
            // move them back before it clears leftovers.
            std::mem::forget(staging);
            return adopted.context(format!(
                "node directories of {} are in {}; the next stagesnap command that locks the store (`stagesnap adopt {}` again) moves them back",
                legacy.display(),
                payload.join(DATA_DIR).display(),
                self.legacy.name
            ));
        }
        adopted
    }

    /// A legacy squashfs image: extracted (by unsquashfs) beside the staging snapshot under
    /// `data/`, then packed again as the squashfs mode packs the live data (compression as
    /// configured), manifest from the extracted tree. The image stays until the new snapshot
    /// is in place.
    fn by_repack(&self) -> Result<Snapshot> {
        let image = &self.legacy.path;
        let mut staging = self.store.begin(&self.legacy.name, self.lock)?;
        let tree = TreeBeside::new(staging.dir());
        let root = tree.0.join(DATA_DIR);
        std::fs::create_dir(&tree.0)
            .with_context(|| format!("cannot create {}", tree.0.display()))?;
        let unsquashfs = self
            .tools
            .iter()
            .find(|f| f.tool == UNSQUASHFS)
            .expect("the squashfs mode's tools include unsquashfs");
        let mut args: Vec<OsString> = ["-quiet", "-no-progress", "-strict-errors", "-dest"]
            .map(OsString::from)
            .to_vec();
        args.extend([root.clone().into(), image.clone().into()]);
        unsquashfs.run(
            args,
            &format!(
                "extracting the stage-env image {} into {}",
                image.display(),
                root.display()
            ),
        )?;
        crate::signals::check()?;
        let nodes = legacy::nodes_in(&root, &[], &|p| {
            let inside = p.strip_prefix(&root).unwrap_or(p);
            format!("/{} in the image {}", inside.display(), image.display())
        })?;
        let live = self.live(&tree.0, &nodes);
        let ctx = ModeContext::new(self.cfg, &live, self.tools, &super::Quiesced);
        let payload = self.mode.create(&ctx, &staging.payload())?;
        crate::signals::check()?;
        self.seal(&mut staging, &ctx, &nodes, payload)
    }
}
