//! `stagesnap restore`: bring the live data back to a snapshot, in place.

use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use super::create::Job;
use super::{Begun, Session, begin, docker_for, prepare};
use crate::cli::{GlobalArgs, RestoreArgs};
use crate::config::{Config, RestoreFallback};
use crate::docker::Docker;
use crate::exit::{Code, code_of, fail, one_line};
use crate::manifest::{self, Manifest, VerifyLevel};
use crate::modes::{Mode, ModeContext, ModeKind, RestoreStats, recreate};
use crate::output::{Report, summary};
use crate::progress;
use crate::quiesce::{self, Op};
use crate::store::{Lock, Snapshot, Store};
use crate::tools::Found;
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
    /// Set when the restore failed and `restore_fallback` ran instead (exit 6).
    #[serde(skip_serializing_if = "Option::is_none")]
    fallback: Option<Fallback>,
}

#[derive(Serialize)]
struct Fallback {
    method: &'static str,
    /// Why the restore failed.
    error: String,
}

pub fn run(g: &GlobalArgs, args: &RestoreArgs) -> Result<Report> {
    let Session {
        cfg,
        name,
        mode: configured_mode,
        tools: configured_tools,
        docker,
        live,
        store,
        lock,
    } = match begin(g, args.name.as_deref(), Op::Restore)? {
        Begun::Ready(session) => *session,
        Begun::Disabled { name, mode } => {
            return Ok(Report::new(
                "restore",
                &Restored::empty(&name, mode, false, true),
                "suite isolation is disabled: nothing to do\n".into(),
            ));
        }
    };
    let configured = configured_mode.kind();
    let started = Instant::now();
    // Before the auto-create below could make a snapshot of that name beside it, and the
    // fallback turn the refusal into a recreate.
    crate::legacy::refuse(store.dir(), &name)?;

    if !store.exists(&name) && super::pull::auto_pull(&cfg, &store, &lock, &name)?.is_none() {
        if !cfg.settings.auto_create_on_startup {
            return Err(store.not_found_or(&name, " (or set auto_create_on_startup = true)"));
        }
        tracing::warn!(name = %name, "snapshot_missing: snapshot {name} does not exist; auto_create_on_startup is on, so it is created from the current data");
        let job = Job {
            cfg: &cfg,
            live: &live,
            store: &store,
            lock: &lock,
            mode: configured_mode.as_ref(),
            tools: &configured_tools,
            allow_interrupted: false,
        };
        job.check_data(&name)?;
        let snap = quiesce::around(
            &cfg,
            docker.as_ref(),
            configured_mode.as_ref(),
            Op::Create,
            || job.create(&name, false),
        )?;
        job.auto_cleanup(&name)?;
        let mut r = Restored::empty(&name, configured, true, false);
        r.files = snap.meta.files;
        r.bytes = snap.meta.bytes;
        r.seconds = crate::output::seconds(started.elapsed());
        let text = super::create::summary_line(
            &snap,
            configured_mode.as_ref(),
            " from the current data, as it did not exist",
            r.seconds,
            "",
        );
        return Ok(Report::new("restore", &r, text));
    }

    let found = store.get(&name);
    // Checked before the fallback below can run: a stale snapshot is refused, not failed.
    if let Ok(snap) = &found {
        crate::fingerprint::guard(snap, args.allow_stale)?;
    }
    let guard = Guard {
        store: &store,
        lock: &lock,
        verify: args.verify.unwrap_or(cfg.settings.restore_verify),
    };
    // A snapshot that exists but cannot be read is a failed restore too, for the fallback.
    let restored = found.and_then(|snap| {
        let configured = (configured_mode, configured_tools);
        let (kind, stats) =
            restore_snapshot(&cfg, &live, &snap, configured, docker.as_ref(), &guard)?;
        Ok((snap, kind, stats))
    });
    let (snap, kind, stats) = match (restored, docker.as_ref()) {
        (Ok(done), _) => done,
        (Err(e), Some(docker))
            if cfg.settings.restore_fallback == RestoreFallback::Recreate
                && code_of(&e) != Code::Interrupted =>
        {
            return fall_back(&cfg, docker, &name, &e, started);
        }
        (Err(e), _) => return Err(e),
    };
    snap.record_restore(&lock);
    drop(lock);
    let seconds = crate::output::seconds(started.elapsed());
    tracing::info!(
        name = %name,
        mode = %kind.name(),
        files_rewritten = stats.files_rewritten,
        bytes_rewritten = stats.bytes_rewritten,
        entries_deleted = stats.entries_deleted,
        seconds,
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
        fallback: None,
    };
    let what = format!("restored {name} ({} mode)", kind.name());
    let text = if kind == ModeKind::Recreate {
        summary(
            &what,
            None,
            seconds,
            &format!(
                "removed {} entries in the node containers{}",
                stats.entries_deleted,
                restarted(&cfg)
            ),
        )
    } else {
        summary(
            &what,
            Some((r.files, r.bytes)),
            seconds,
            &format!(
                "rewrote {} files ({}), removed {} entries",
                stats.files_rewritten,
                human_bytes(stats.bytes_rewritten),
                stats.entries_deleted
            ),
        )
    };
    Ok(Report::new("restore", &r, text))
}

/// What wraps the mode's restore: the journal that `status` reads if it never ends, and the
/// check of the result against the manifest (`restore_verify`).
struct Guard<'a> {
    store: &'a Store,
    lock: &'a Lock,
    verify: VerifyLevel,
}

/// Restores `snap` with the mode it was made with, whatever the config says now: the
/// snapshot is verified before anything changes, then restored with the containers quiesced,
/// then the result is checked against the snapshot's manifest.
fn restore_snapshot(
    cfg: &Config,
    live: &Live,
    snap: &Snapshot,
    configured: (Box<dyn Mode>, Vec<Found>),
    docker: Option<&Docker>,
    guard: &Guard,
) -> Result<(ModeKind, RestoreStats)> {
    let name = &snap.meta.name;
    let kind = ModeKind::of(snap)?;
    let (mode, tools) = if kind == configured.0.kind() {
        configured
    } else {
        prepare(kind)?
    };
    let connected;
    let docker = match docker {
        Some(d) => Some(d),
        None => {
            connected = docker_for(cfg, mode.as_ref(), true)?;
            connected.as_ref()
        }
    };
    if snap.meta.cache_dir != live.cache_dir {
        tracing::warn!(
            snapshot_cache_dir = %snap.meta.cache_dir.display(),
            cache_dir = %live.cache_dir.display(),
            "snapshot_other_environment: snapshot {name} was taken from another cache_dir"
        );
    }
    let journal = guard.store.restore_journal(name, guard.lock);
    let ctx = ModeContext {
        cfg,
        live,
        tools: &tools,
        journal: Some(&journal),
        by_content: guard.verify == VerifyLevel::Full,
    };
    // Prove the snapshot usable before the first byte of live data changes. Its include
    // decides where everything after this looks, also for a snapshot without a manifest.
    if mode.writes_live_data() {
        snap.check_include(&cfg.allowed())?;
    }
    mode.verify(&ctx, snap)?;
    let expected = expected_manifest(cfg, snap, mode.as_ref(), guard.verify)?;
    let check = guard.verify != VerifyLevel::None;
    if mode.writes_live_data()
        && let Some(path) = snap
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
    let _bars = mode
        .writes_live_data()
        .then(|| progress::Operation::restore(format!("restore {name}"), snap.meta.bytes));
    // Checked before the containers come back, which would change the data at once.
    let stats = quiesce::around(cfg, docker, mode.as_ref(), Op::Restore, || {
        let result = mode
            .restore(&ctx, snap, expected.as_ref())
            .and_then(|done| {
                if let Some(expected) = expected.as_ref().filter(|_| check) {
                    progress::step("checking the result");
                    check_restored(
                        live,
                        snap,
                        expected,
                        guard.verify == VerifyLevel::Full,
                        done.seen,
                    )?;
                }
                Ok(done.stats)
            });
        // The restore's own error wins over one from the journal.
        let ended = journal.end(&result);
        result.and_then(|stats| ended.map(|()| stats))
    })?;
    Ok((kind, stats))
}

/// The manifest a restore works from and is checked against, read (and its digest checked)
/// before anything changes; None when the mode restores no data or the snapshot has none.
fn expected_manifest(
    cfg: &Config,
    snap: &Snapshot,
    mode: &dyn Mode,
    level: VerifyLevel,
) -> Result<Option<Manifest>> {
    if !mode.writes_live_data() {
        return Ok(None);
    }
    if snap.meta.manifest.is_none() {
        if level == VerifyLevel::None {
            return Ok(None);
        }
        tracing::warn!(
            name = %snap.meta.name,
            "restore_unverified: snapshot {} has no manifest (an older stagesnap made it), so the restore cannot be checked; recreate it with `stagesnap create {} --force`",
            snap.meta.name,
            snap.meta.name
        );
        return Ok(None);
    }
    crate::modes::manifest_to_compare(snap, cfg, level == VerifyLevel::Full).map(Some)
}

/// Fails (exit 1, listing the first differences) unless the live data now matches the
/// manifest: metadata always, and every file's hash when `full`. `seen` is the live data as
/// the mode's restore left it, when it looked at every entry; else the data is scanned.
fn check_restored(
    live: &Live,
    snap: &Snapshot,
    expected: &Manifest,
    full: bool,
    seen: Option<Manifest>,
) -> Result<()> {
    let started = Instant::now();
    let now = match seen {
        Some(mut seen) => {
            seen.hash_against(&live.cache_dir, expected, full)?;
            seen
        }
        None => manifest::scan_live(&live.cache_dir, &snap.meta.include, expected, full)?,
    };
    let changes = manifest::compare(expected, &now);
    tracing::info!(
        name = %snap.meta.name,
        level = %if full { "full" } else { "metadata" },
        entries = now.entries.len(),
        differences = changes.len(),
        seconds = crate::output::seconds(started.elapsed()),
        "restore_verified"
    );
    if changes.is_empty() {
        return Ok(());
    }
    const SHOWN: usize = 10;
    let first: Vec<String> = changes.iter().take(SHOWN).map(|c| c.described()).collect();
    Err(fail(
        Code::Failure,
        format!(
            "restore of {} did not reproduce the snapshot: {} entries differ from its manifest{}: {}; see them all with `stagesnap diff {}`, then restore again",
            snap.meta.name,
            changes.len(),
            if changes.len() > SHOWN {
                format!(", the first {SHOWN}")
            } else {
                String::new()
            },
            first.join("; "),
            snap.meta.name
        ),
    ))
}

/// `restore_fallback = recreate`: the recreate cleanup after a failed restore, said loudly
/// and with exit 6, since the data is then not the snapshot's.
fn fall_back(
    cfg: &Config,
    docker: &Docker,
    name: &str,
    error: &anyhow::Error,
    started: Instant,
) -> Result<Report> {
    let error = one_line(error);
    tracing::warn!(
        name = %name,
        error = %error,
        "restore_fallback: restoring {name} failed; restore_fallback = recreate, so the recreate cleanup runs instead and the data will not be the snapshot's"
    );
    let removed = recreate::clean(docker, cfg).map_err(|e| {
        let code = match code_of(&e) {
            Code::Interrupted => Code::Interrupted,
            _ => Code::Failure,
        };
        fail(
            code,
            format!(
                "restoring {name} failed ({error}), and the recreate fallback failed too: {}",
                one_line(&e)
            ),
        )
    })?;
    let mut r = Restored::empty(name, ModeKind::Recreate, false, false);
    r.seconds = crate::output::seconds(started.elapsed());
    r.stats.entries_deleted = removed;
    let text = summary(
        &format!(
            "restoring {name} failed ({error}), so it fell back to recreate (restore_fallback)"
        ),
        None,
        r.seconds,
        &format!(
            "removed {removed} entries in the node containers{}; the data is NOT the snapshot's",
            restarted(cfg)
        ),
    );
    r.fallback = Some(Fallback {
        method: "recreate",
        error,
    });
    Ok(Report::new("restore", &r, text).with_code(Code::Degraded))
}

fn restarted(cfg: &Config) -> &'static str {
    if cfg.settings.recreate_restart {
        " and restarted them"
    } else {
        ""
    }
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
            fallback: None,
        }
    }
}
