//! `stagesnap create`: snapshot the live data, atomically.

use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use super::{docker_for, load_config, lock_timeout, prepare_configured, store};
use crate::cli::{CreateArgs, GlobalArgs};
use crate::config::Config;
use crate::exit::{Code, fail};
use crate::fingerprint::Fingerprint;
use crate::manifest::Manifest;
use crate::modes::{Mode, ModeContext};
use crate::output::Report;
use crate::progress;
use crate::quiesce::{self, Op};
use crate::store::{
    Lock, ManifestRef, Meta, SCHEMA, Snapshot, Staging, Store, prune_plan, validate_name,
};
use crate::tools::Found;
use crate::tree::{Live, human_bytes};

#[derive(Serialize)]
struct Created {
    name: String,
    mode: &'static str,
    files: u64,
    bytes: u64,
    stored_bytes: u64,
    seconds: f64,
    replaced: bool,
    pinned: bool,
    pruned: Vec<String>,
    skipped: bool,
}

pub fn run(g: &GlobalArgs, args: &CreateArgs) -> Result<Report> {
    let cfg = load_config(g)?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| cfg.snapshot_name().to_string());
    validate_name(&name)?;
    let (mode, tools) = prepare_configured(&cfg)?;
    if !mode.active() {
        tracing::info!(command = "create", "suite_isolation_disabled");
        let created = Created::skipped(&name, mode.as_ref());
        return Ok(Report::new(
            "create",
            &created,
            "suite isolation is disabled: nothing to do\n".into(),
        ));
    }
    let docker = docker_for(&cfg, mode.as_ref(), false)?;
    let live = Live::from_config(&cfg);
    live.check_present()?;
    live.check_store_outside(cfg.snapshots_dir())?;
    let store = store(&cfg);
    let lock = store.lock(&format!("create {name}"), lock_timeout(g))?;
    store.clean_leftovers(&lock)?;
    if store.exists(&name) && !args.force {
        return Err(fail(
            Code::Failure,
            format!(
                "snapshot {name} already exists in {}; use --force to replace it",
                store.dir().display()
            ),
        ));
    }
    let job = Job {
        cfg: &cfg,
        live: &live,
        store: &store,
        lock: &lock,
        mode: mode.as_ref(),
        tools: &tools,
    };
    let started = Instant::now();
    let replaced = store.exists(&name);
    let snap = quiesce::around(&cfg, docker.as_ref(), mode.as_ref(), Op::Create, || {
        job.create(&name, args.pin)
    })?;
    let pruned = job.auto_cleanup(&name)?;
    let seconds = crate::output::seconds(started.elapsed());
    let created = Created {
        name: name.clone(),
        mode: mode.kind().name(),
        files: snap.meta.files,
        bytes: snap.meta.bytes,
        stored_bytes: snap.meta.stored_bytes,
        seconds,
        replaced,
        pinned: args.pin,
        pruned,
        skipped: false,
    };
    let mut notes = String::new();
    if replaced {
        notes.push_str(", replacing the previous one");
    }
    if !created.pruned.is_empty() {
        notes.push_str(&format!(
            ", pruned {} older snapshots",
            created.pruned.len()
        ));
    }
    let text = summary_line(&snap, mode.as_ref(), "", seconds, &notes);
    Ok(Report::new("create", &created, text))
}

/// The summary line of a create (`how` says why, for an auto-create).
pub(super) fn summary_line(
    snap: &Snapshot,
    mode: &dyn Mode,
    how: &str,
    seconds: f64,
    notes: &str,
) -> String {
    let meta = &snap.meta;
    crate::output::summary(
        &format!("created {}{how} ({} mode)", meta.name, meta.mode),
        mode.writes_live_data().then_some((meta.files, meta.bytes)),
        seconds,
        &format!("stored {}{notes}", human_bytes(meta.stored_bytes)),
    )
}

impl Created {
    fn skipped(name: &str, mode: &dyn Mode) -> Created {
        Created {
            name: name.to_string(),
            mode: mode.kind().name(),
            files: 0,
            bytes: 0,
            stored_bytes: 0,
            seconds: 0.0,
            replaced: false,
            pinned: false,
            pruned: vec![],
            skipped: true,
        }
    }
}

/// Everything a create needs once the lock is held; restore reuses it for auto-create.
pub(super) struct Job<'a> {
    pub cfg: &'a Config,
    pub live: &'a Live,
    pub store: &'a Store,
    pub lock: &'a Lock,
    pub mode: &'a dyn Mode,
    pub tools: &'a [Found],
}

impl Job<'_> {
    /// Builds snapshot `name` in staging and moves it into place (replacing any old one
    /// atomically). The old snapshot is untouched until the new one is complete.
    pub fn create(&self, name: &str, pin: bool) -> Result<Snapshot> {
        let started = Instant::now();
        let staging = self.store.begin(name, self.lock)?;
        let _bars = self
            .mode
            .writes_live_data()
            .then(|| progress::Operation::create(format!("create {name}"), self.live));
        let ctx = ModeContext {
            cfg: self.cfg,
            live: self.live,
            tools: self.tools,
        };
        let payload = self.mode.create(&ctx, &staging.payload())?;
        crate::signals::check()?;
        progress::step("writing the manifest");
        let manifest = self.manifest(&ctx, &staging)?;
        let data = self.live.totals()?;
        let stored = crate::tree::totals(staging.dir())?;
        let meta = Meta {
            schema: SCHEMA,
            name: name.to_string(),
            mode: self.mode.kind().name().to_string(),
            created_at: jiff::Timestamp::now().to_string(),
            stagesnap_version: env!("CARGO_PKG_VERSION").to_string(),
            tools: self
                .tools
                .iter()
                .map(|f| (f.tool.program.to_string(), f.version.clone()))
                .collect(),
            cache_dir: self.live.cache_dir.clone(),
            include: self.live.include.clone(),
            nodes: self.live.nodes(),
            files: data.files,
            bytes: data.bytes,
            stored_bytes: stored.allocated,
            pinned: pin,
            payload,
            manifest,
            // Only data restored from a snapshot can disagree with the files beside it.
            fingerprint: if self.mode.writes_live_data() {
                Fingerprint::capture(self.cfg)?
            } else {
                None
            },
        };
        let snap = staging.commit(&meta, true)?;
        tracing::info!(name = %name,
            mode = %self.mode.kind().name(),
            files = meta.files,
            bytes = meta.bytes,
            seconds = crate::output::seconds(started.elapsed()),
            "snapshot_created"
        );
        Ok(snap)
    }

    /// Stores the manifest of what the mode just captured (while the data is still in the
    /// page cache); None for modes that capture no data.
    fn manifest(&self, ctx: &ModeContext, staging: &Staging) -> Result<Option<ManifestRef>> {
        if !self.mode.writes_live_data() {
            return Ok(None);
        }
        let started = Instant::now();
        let tree = self.mode.captured_tree(ctx, &staging.payload());
        let manifest = Manifest::capture(&tree, &self.live.include)?;
        let stored = staging.write_manifest(&manifest)?;
        let (files, bytes) = manifest.totals();
        tracing::info!(
            entries = stored.entries,
            files,
            bytes,
            seconds = crate::output::seconds(started.elapsed()),
            "manifest_written"
        );
        Ok(Some(stored))
    }

    /// Retention after a create: never removes the new snapshot, snapshot_name or a pinned one.
    pub fn auto_cleanup(&self, just_made: &str) -> Result<Vec<String>> {
        if !self.cfg.flag("auto_cleanup") {
            return Ok(vec![]);
        }
        let (snapshots, _) = self.store.list()?;
        let keep = self.cfg.count("keep_snapshot_count");
        let mut removed = Vec::new();
        for snap in prune_plan(&snapshots, keep, &[just_made, self.cfg.snapshot_name()]) {
            self.store.delete(&snap.meta.name, self.lock)?;
            tracing::info!(name = %snap.meta.name, reason = "auto_cleanup", "snapshot_deleted");
            removed.push(snap.meta.name.clone());
        }
        Ok(removed)
    }
}
