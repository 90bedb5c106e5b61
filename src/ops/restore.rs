//! Restore: bring the live data back to a snapshot, in place.

use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use super::create::{Created, Job};
use super::{Begun, Prepared, Ready, Session, docker_for, prepare};
use crate::choices::{Choice, ModeKind};
use crate::config::{Config, Isolation, RestoreFallback};
use crate::delta::RestoreStats;
use crate::docker::Docker;
use crate::exit::{Code, code_of, fail, one_line};
use crate::manifest::{self, Manifest, VerifyLevel};
use crate::modes::{Mode, ModeContext, recreate};
use crate::observe::{Observer, Watched};
use crate::quiesce::{self, Op};
use crate::store::{Lock, Snapshot, Store};
use crate::tree::Live;

#[derive(Debug, Default, Clone, Copy)]
pub struct RestoreOpts {
    /// The check after the restore; None for `restore_verify`.
    pub verify: Option<VerifyLevel>,
    /// Restore a snapshot that the fingerprinted files no longer match.
    pub allow_stale: bool,
}

/// What a restore did: `restore --json`'s record.
#[derive(Debug, Serialize)]
pub struct Restored {
    pub name: String,
    pub mode: &'static str,
    /// True when the snapshot did not exist and was created from the live data instead.
    pub auto_created: bool,
    pub skipped: bool,
    pub files: u64,
    pub bytes: u64,
    pub seconds: f64,
    #[serde(flatten)]
    pub stats: RestoreStats,
    /// Set when the restore failed and `restore_fallback` ran instead (exit 6).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
    /// The snapshot made instead, when it did not exist (`auto_create_on_startup`).
    #[serde(skip)]
    pub created: Option<Created>,
    /// Whether the restore worked inside the node containers (`recreate`, and the fallback)
    /// rather than on the live data, and whether it restarted them.
    #[serde(skip)]
    pub in_containers: bool,
    #[serde(skip)]
    pub restarted: bool,
}

#[derive(Debug, Serialize)]
pub struct Fallback {
    pub method: &'static str,
    /// Why the restore failed.
    pub error: String,
}

impl Restored {
    /// The exit code: a fallback's data is not the snapshot's.
    pub fn code(&self) -> Code {
        if self.fallback.is_some() {
            Code::Degraded
        } else {
            Code::Ok
        }
    }
}

impl Session {
    /// Brings the live data back to snapshot `name` (else `snapshot_name`) with the mode it
    /// was made with; creates it from the live data when it does not exist and
    /// `auto_create_on_startup` is on; runs the recreate cleanup when it fails and
    /// `restore_fallback = recreate`.
    pub fn restore(&self, name: Option<&str>, opts: RestoreOpts) -> Result<Restored> {
        let Ready {
            cfg,
            name,
            mode: configured_mode,
            tools: configured_tools,
            docker,
            live,
            store,
            lock,
        } = match self.begin(name, Op::Restore)? {
            Begun::Ready(ready) => *ready,
            Begun::Disabled { name } => {
                return Ok(Restored::empty(&name, Isolation::Disabled.name(), true));
            }
        };
        let started = Instant::now();
        // Before the auto-create below could make a snapshot of that name beside it, and the
        // fallback turn the refusal into a recreate.
        store.refuse_legacy(&name)?;

        let into = super::remote::PullInto {
            store: &store,
            lock: &lock,
            mode: configured_mode.as_ref(),
            tools: &configured_tools,
        };
        if !store.exists(&name) && self.auto_pull(&into, &name)?.is_none() {
            if !cfg.settings.auto_create_on_startup {
                return Err(store.not_found_or(&name, " (or set auto_create_on_startup = true)"));
            }
            tracing::warn!(name = %name, "snapshot_missing: snapshot {name} does not exist; auto_create_on_startup is on, so it is created from the current data");
            let job = Job {
                cfg,
                live: &live,
                store: &store,
                lock: &lock,
                mode: configured_mode.as_ref(),
                tools: &configured_tools,
                observer: self.observer,
                allow_interrupted: false,
            };
            job.check_data(&name)?;
            let snap = quiesce::around(
                cfg,
                docker.as_ref(),
                configured_mode.as_ref(),
                Op::Create,
                || job.create(&name, false),
            )?;
            job.auto_cleanup(&name)?;
            let seconds = crate::tree::seconds(started.elapsed());
            let mut r = Restored::empty(&name, configured_mode.kind().name(), false);
            r.auto_created = true;
            r.files = snap.meta.files;
            r.bytes = snap.meta.bytes;
            r.seconds = seconds;
            r.created = Some(Created::of(&snap, configured_mode.as_ref(), seconds));
            return Ok(r);
        }

        let found = store.get(&name);
        // Checked before the fallback below can run: a stale snapshot is refused, not failed.
        if let Ok(snap) = &found {
            crate::fingerprint::guard(
                &snap.meta.name,
                snap.meta.fingerprint.as_ref(),
                opts.allow_stale,
            )?;
        }
        let guard = Guard {
            observer: self.observer,
            store: &store,
            lock: &lock,
            verify: opts.verify.unwrap_or(cfg.settings.restore_verify),
        };
        // A snapshot that exists but cannot be read is a failed restore too, for the fallback.
        let restored = found.and_then(|snap| {
            let configured = (configured_mode, configured_tools);
            let (mode, stats) =
                restore_snapshot(cfg, &live, &snap, configured, docker.as_ref(), &guard)?;
            Ok((snap, mode, stats))
        });
        let (snap, mode, stats) = match (restored, docker.as_ref()) {
            (Ok(done), _) => done,
            (Err(e), Some(docker))
                if cfg.settings.restore_fallback == RestoreFallback::Recreate
                    && code_of(&e) != Code::Interrupted =>
            {
                return fall_back(cfg, docker, &name, &e, started);
            }
            (Err(e), _) => return Err(e),
        };
        snap.record_restore(&lock);
        drop(lock);
        let seconds = crate::tree::seconds(started.elapsed());
        let kind = mode.kind();
        tracing::info!(
            name = %name,
            mode = %kind.name(),
            files_rewritten = stats.files_rewritten,
            bytes_rewritten = stats.bytes_rewritten,
            entries_deleted = stats.entries_deleted,
            seconds,
            "snapshot_restored"
        );
        Ok(Restored {
            files: snap.meta.files,
            bytes: snap.meta.bytes,
            seconds,
            stats,
            in_containers: !mode.writes_live_data(),
            restarted: mode.restarts_containers(),
            ..Restored::empty(&name, kind.name(), false)
        })
    }
}

/// What wraps the mode's restore: the journal that `status` reads if it never ends, and the
/// check of the result against the manifest (`restore_verify`).
struct Guard<'a> {
    observer: &'a dyn Observer,
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
    configured: Prepared,
    docker: Option<&Docker>,
    guard: &Guard,
) -> Result<(Box<dyn Mode>, RestoreStats)> {
    let name = &snap.meta.name;
    let kind = snap.meta.mode;
    let (mode, tools) = if kind == configured.0.kind() {
        configured
    } else {
        prepare(kind, cfg)?
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
        containers: &super::Quiesced,
        journal: Some(&journal),
        by_content: guard.verify == VerifyLevel::Full,
        observer: guard.observer,
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
    let _watched = mode
        .writes_live_data()
        .then(|| Watched::restore(guard.observer, format!("restore {name}"), snap.meta.bytes));
    // Checked before the containers come back, which would change the data at once.
    let stats = quiesce::around(cfg, docker, mode.as_ref(), Op::Restore, || {
        let result = mode
            .restore(&ctx, snap, expected.as_ref())
            .and_then(|done| {
                if let Some(expected) = expected.as_ref().filter(|_| check) {
                    guard.observer.step("checking the result");
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
    Ok((mode, stats))
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
        seconds = crate::tree::seconds(started.elapsed()),
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
) -> Result<Restored> {
    let error = one_line(error);
    tracing::warn!(
        name = %name,
        error = %error,
        "restore_fallback: restoring {name} failed; restore_fallback = recreate, so the recreate cleanup runs instead and the data will not be the snapshot's"
    );
    let recreate = recreate::Recreate::new(cfg);
    let removed = recreate.clean(docker, cfg, &super::Quiesced).map_err(|e| {
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
    let mut r = Restored::empty(name, ModeKind::Recreate.name(), false);
    r.seconds = crate::tree::seconds(started.elapsed());
    r.stats.entries_deleted = removed;
    r.in_containers = true;
    r.restarted = recreate.restarts_containers();
    r.fallback = Some(Fallback {
        method: "recreate",
        error,
    });
    Ok(r)
}

impl Restored {
    fn empty(name: &str, mode: &'static str, skipped: bool) -> Restored {
        Restored {
            name: name.to_string(),
            mode,
            auto_created: false,
            skipped,
            files: 0,
            bytes: 0,
            seconds: 0.0,
            stats: RestoreStats::default(),
            fallback: None,
            created: None,
            in_containers: false,
            restarted: false,
        }
    }
}
