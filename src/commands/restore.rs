//! `stagesnap restore`: bring the live data back to a snapshot, in place.

use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use super::create::Job;
use super::{load_config, lock_timeout, prepare, store};
use crate::cli::{GlobalArgs, RestoreArgs};
use crate::exit::{Code, fail};
use crate::modes::{ModeContext, ModeKind, RestoreStats};
use crate::output::Report;
use crate::store::validate_name;
use crate::tree::{Live, human_bytes};

#[derive(Serialize)]
struct Restored {
    name: String,
    mode: &'static str,
    /// True when the snapshot did not exist and was created from the live data instead.
    auto_created: bool,
    skipped: bool,
    files: u64,
    bytes: u64,
    seconds: f64,
    #[serde(flatten)]
    stats: RestoreStats,
}

pub fn run(g: &GlobalArgs, args: &RestoreArgs) -> Result<Report> {
    let cfg = load_config(g)?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| cfg.snapshot_name().to_string());
    validate_name(&name)?;
    let configured = cfg.mode();
    let (configured_mode, configured_tools) = prepare(configured)?;
    if !configured_mode.active() {
        tracing::info!(command = "restore", "suite_isolation_disabled");
        let r = Restored::empty(&name, configured, false, true);
        return Ok(Report::new(
            "restore",
            &r,
            "suite isolation is disabled: nothing to do\n".into(),
        ));
    }
    let live = Live::from_config(&cfg);
    live.check_present()?;
    live.check_store_outside(cfg.snapshots_dir())?;
    let store = store(&cfg);
    let lock = store.lock(&format!("restore {name}"), lock_timeout(g))?;
    let started = Instant::now();

    if !store.exists(&name) {
        if !cfg.flag("auto_create_on_startup") {
            return Err(fail(
                Code::NotFound,
                format!(
                    "snapshot {name} not found in {}; create it with `stagesnap create {name}` (or set auto_create_on_startup = true)",
                    store.dir().display()
                ),
            ));
        }
        tracing::warn!(name = %name, "snapshot_missing: snapshot {name} does not exist; auto_create_on_startup is on, so it is created from the current data");
        store.clean_leftovers(&lock)?;
        let job = Job {
            cfg: &cfg,
            live: &live,
            store: &store,
            lock: &lock,
            mode: configured_mode.as_ref(),
            tools: &configured_tools,
        };
        let snap = job.create(&name, false)?;
        job.auto_cleanup(&name)?;
        let mut r = Restored::empty(&name, configured, true, false);
        r.files = snap.meta.files;
        r.bytes = snap.meta.bytes;
        r.seconds = started.elapsed().as_secs_f64();
        let text = format!(
            "snapshot {name} did not exist: created it from the current data ({} files)\n",
            r.files
        );
        return Ok(Report::new("restore", &r, text));
    }

    let snap = store.get(&name)?;
    // The snapshot's own mode decides how it is restored, whatever the config says now.
    let kind = ModeKind::from_name(&snap.meta.mode).ok_or_else(|| {
        fail(
            Code::Failure,
            format!(
                "snapshot {name} has unknown mode {:?}; it was made by another stagesnap",
                snap.meta.mode
            ),
        )
    })?;
    let (mode, tools) = if kind == configured {
        (configured_mode, configured_tools)
    } else {
        prepare(kind)?
    };
    if snap.meta.cache_dir != live.cache_dir {
        tracing::warn!(
            snapshot_cache_dir = %snap.meta.cache_dir.display(),
            cache_dir = %live.cache_dir.display(),
            "snapshot_other_environment: snapshot {name} was taken from another cache_dir"
        );
    }
    let ctx = ModeContext {
        cfg: &cfg,
        live: &live,
        tools: &tools,
    };
    // Prove the snapshot usable before the first byte of live data changes.
    mode.verify(&ctx, &snap)?;
    if let Some(path) = snap
        .meta
        .include
        .iter()
        .find_map(|rel| crate::tree::first_unwritable(&live.path(rel)))
    {
        return Err(fail(
            Code::Failure,
            format!(
                "cannot restore: {} is not writable by this user (container data is usually root-owned); nothing was changed. Run stagesnap as root or as the data's owner",
                path.display()
            ),
        ));
    }
    let stats = mode.restore(&ctx, &snap)?;
    drop(lock);
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        name = %name,
        mode = kind.name(),
        files_rewritten = stats.files_rewritten,
        bytes_rewritten = stats.bytes_rewritten,
        entries_deleted = stats.entries_deleted,
        seconds = format!("{seconds:.3}"),
        "snapshot_restored"
    );
    let r = Restored {
        name: name.clone(),
        mode: kind.name(),
        auto_created: false,
        skipped: false,
        files: snap.meta.files,
        bytes: snap.meta.bytes,
        seconds,
        stats,
    };
    let text = format!(
        "restored {name} ({} mode): {} files, {} in {seconds:.2} s; rewrote {} files ({}), removed {} entries\n",
        kind.name(),
        r.files,
        human_bytes(r.bytes),
        stats.files_rewritten,
        human_bytes(stats.bytes_rewritten),
        stats.entries_deleted
    );
    Ok(Report::new("restore", &r, text))
}

impl Restored {
    fn empty(name: &str, kind: ModeKind, auto_created: bool, skipped: bool) -> Restored {
        Restored {
            name: name.to_string(),
            mode: kind.name(),
            auto_created,
            skipped,
            files: 0,
            bytes: 0,
            seconds: 0.0,
            stats: RestoreStats::default(),
        }
    }
}
