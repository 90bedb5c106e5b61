//! Create: snapshot the live data, atomically.

use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use super::{Begun, Session};
use crate::capture;
use crate::choices::Choice;
use crate::config::{Config, Isolation};
use crate::exit::{Code, fail, one_line};
use crate::fingerprint::Fingerprint;
use crate::manifest::Manifest;
use crate::modes::{Mode, ModeContext};
use crate::observe::{Observer, Watched};
use crate::quiesce::{self, Op};
use crate::retention::{self, Rules};
use crate::store::{Background, Finishing, Lock, Meta, SCHEMA, Snapshot, Staging, Store};
use crate::tools::Found;
use crate::tree::{Live, Totals, free_bytes, human_bytes};

#[derive(Debug, Default, Clone, Copy)]
pub struct CreateOpts {
    /// Replace a snapshot of that name.
    pub force: bool,
    pub pin: bool,
    /// Create even while a restore's journal says the data is in an unknown state.
    pub allow_interrupted: bool,
    /// Return once the capture is done and the containers run again, and finish the
    /// snapshot in a detached process.
    pub background: bool,
}

/// What a create did: `create --json`'s record.
#[derive(Debug, Serialize)]
pub struct Created {
    pub name: String,
    pub mode: &'static str,
    pub files: u64,
    pub bytes: u64,
    pub stored_bytes: u64,
    pub seconds: f64,
    /// How long the node containers were held paused (or stopped); None when none were.
    pub paused_seconds: Option<f64>,
    pub replaced: bool,
    pub pinned: bool,
    pub pruned: Vec<String>,
    pub skipped: bool,
    /// The snapshot is being finished by a detached process (`create --background`):
    /// `stored_bytes` and `pruned` are not known yet.
    pub background: bool,
    /// Whether the mode copied the live data (else `files` and `bytes` are not what it stored).
    #[serde(skip)]
    pub covers_data: bool,
}

impl Session {
    /// Snapshot `name` (else `snapshot_name`) of the live data, with the containers quiesced
    /// around the copy and the retention rules applied after it (`auto_cleanup`).
    pub fn create(&self, name: Option<&str>, opts: CreateOpts) -> Result<Created> {
        let ready = match self.begin(name, Op::Create)? {
            Begun::Ready(ready) => *ready,
            Begun::Disabled { name } => return Ok(Created::skipped(&name)),
        };
        let name = &ready.name;
        if ready.store.exists(name) && !opts.force {
            return Err(fail(
                Code::Failure,
                format!(
                    "snapshot {name} already exists in {}; use --force to replace it",
                    ready.store.dir().display()
                ),
            ));
        }
        let job = Job {
            cfg: ready.cfg,
            live: &ready.live,
            store: &ready.store,
            lock: &ready.lock,
            mode: ready.mode.as_ref(),
            tools: &ready.tools,
            observer: self.observer,
            allow_interrupted: opts.allow_interrupted,
        };
        let started = Instant::now();
        let replaced = ready.store.exists(name);
        job.check_data(name)?;
        // Two-phase: the mode's first pass runs while the nodes do, the pause covers only the
        // second and the record of what it captured, and hashing follows the unpause.
        let capture = job.begin_capture(name, opts.pin)?;
        let (captured, paused) = quiesce::around_timed(
            ready.cfg,
            ready.docker.as_ref(),
            ready.mode.as_ref(),
            Op::Create,
            || capture.quiesced(),
        )?;
        ready.store.forget_background(name, &ready.lock)?;
        if opts.background {
            let finishing = ready.store.begin_background(name, &ready.lock)?;
            // A fork, not a new program: the child goes on with the capture as it is in
            // memory (staging, manifest, payload, mode), nothing to write down and read back.
            // The quiesce's and the copy's threads have ended and no progress bar ticks with
            // --background; what may remain are rayon's idle workers (squashfs's image digest),
            // which hold no lock while they wait and which the child never uses: as
            // fork_detached needs.
            if crate::sys::fork_detached()? {
                std::process::exit(self.finish_detached(&job, name, captured, finishing));
            }
            let data = captured.data();
            // The staging directory is the detached process's now: not removed here. Closing
            // this process's copies of the marker and the store's lock leaves both held by
            // the child's (a flock belongs to the open file, which the fork shared).
            std::mem::forget(captured);
            tracing::info!(name = %name, "create_backgrounded");
            return Ok(Created {
                name: name.clone(),
                mode: ready.mode.kind().name(),
                files: data.files,
                bytes: data.bytes,
                stored_bytes: 0,
                seconds: crate::tree::seconds(started.elapsed()),
                paused_seconds: paused.map(crate::tree::seconds),
                replaced,
                pinned: opts.pin,
                pruned: vec![],
                skipped: false,
                background: true,
                covers_data: ready.mode.writes_live_data(),
            });
        }
        let snap = captured.finish()?;
        let pruned = job.auto_cleanup(name)?;
        Ok(Created {
            replaced,
            pruned,
            paused_seconds: paused.map(crate::tree::seconds),
            ..Created::of(
                &snap,
                ready.mode.as_ref(),
                crate::tree::seconds(started.elapsed()),
            )
        })
    }
}

impl Session {
    /// The detached process of a background create: lets the store's lock go (it holds
    /// `finishing`, its snapshot's marker), finishes the snapshot, applies the retention
    /// under the lock taken again, and records the outcome in the marker; its exit code.
    fn finish_detached(
        &self,
        job: &Job,
        name: &str,
        captured: Captured,
        finishing: Finishing,
    ) -> i32 {
        job.lock.release();
        crate::testhook::pause("background-finish");
        let result = captured.finish().and_then(|_| {
            let lock = job
                .store
                .lock(&format!("create {name} (background)"), self.lock_timeout)?;
            Job {
                lock: &lock,
                ..*job
            }
            .auto_cleanup(name)
        });
        let code = result
            .as_ref()
            .map_or_else(|e| crate::exit::code_of(e).as_i32(), |_| 0);
        match finishing.end(&result) {
            Ok(()) => code,
            Err(_) => Code::Failure.as_i32(),
        }
    }
}

/// `wait --json`'s record.
#[derive(Debug, Serialize)]
pub struct Waited {
    pub name: String,
    /// Whether a background create was still finishing it.
    pub waited: bool,
}

impl Session {
    /// Waits, without limit, until no background create is finishing `name` (else
    /// `snapshot_name`); Ok when the snapshot is then complete, else the failure's error
    /// with its exit code, or exit 4 when there is no such snapshot.
    pub fn wait(&self, name: Option<&str>) -> Result<Waited> {
        let name = self.snapshot_named(name)?;
        let store = self.checked_store()?;
        let waited = matches!(store.background(&name)?, Some(Background::Finishing { .. }));
        if let Some(ended) = store.await_background(&name, std::time::Duration::MAX)? {
            ended.outcome(&name)?;
        }
        store.get(&name)?;
        Ok(Waited { name, waited })
    }
}

impl Created {
    fn skipped(name: &str) -> Created {
        Created {
            name: name.to_string(),
            mode: Isolation::Disabled.name(),
            files: 0,
            bytes: 0,
            stored_bytes: 0,
            seconds: 0.0,
            paused_seconds: None,
            replaced: false,
            pinned: false,
            pruned: vec![],
            skipped: true,
            background: false,
            covers_data: false,
        }
    }

    /// The record of `snap`, just made by `mode` in `seconds`.
    pub(super) fn of(snap: &Snapshot, mode: &dyn Mode, seconds: f64) -> Created {
        Created {
            name: snap.meta.name.clone(),
            mode: mode.kind().name(),
            files: snap.meta.files,
            bytes: snap.meta.bytes,
            stored_bytes: snap.meta.stored_bytes,
            seconds,
            paused_seconds: None,
            replaced: false,
            pinned: snap.meta.pinned,
            pruned: vec![],
            skipped: false,
            background: false,
            covers_data: mode.writes_live_data(),
        }
    }
}

/// Free space below which a store whose copier failed counts as full.
const NO_ROOM: u64 = 1 << 20;

/// The store's free space against what a snapshot needs.
struct Space<'a> {
    store: &'a Store,
    /// What the mode says the snapshot will take, when it can tell beforehand.
    needed: Option<u64>,
    /// The included data's size on disk, the most any mode stores.
    on_disk: u64,
    /// Free in snapshots_dir before the create started.
    free: u64,
}

impl<'a> Space<'a> {
    /// Fails (exit 1), before anything is written, when the mode can tell that the
    /// snapshot will not fit.
    fn check(store: &'a Store, mode: &dyn Mode, data: &Totals, name: &str) -> Result<Space<'a>> {
        let space = Space {
            store,
            needed: mode.space_needed(data),
            on_disk: data.allocated,
            free: free_bytes(store.dir())?,
        };
        if space.needed.is_some_and(|n| n > space.free) {
            return Err(fail(
                Code::Failure,
                format!(
                    "not enough space in snapshots_dir {} for snapshot {name}: it needs {}, {} are free; nothing was changed. Free space there or move snapshots_dir to a larger filesystem",
                    store.dir().display(),
                    space.needs(),
                    human_bytes(space.free)
                ),
            ));
        }
        Ok(space)
    }

    fn needs(&self) -> String {
        match self.needed {
            Some(n) => format!("about {}", human_bytes(n)),
            None => format!(
                "up to {} (the included data's size on disk)",
                human_bytes(self.on_disk)
            ),
        }
    }

    /// `err`, said as what it is when the store filled up (the data grew, another process
    /// wrote there, or the mode could not tell beforehand). By then the partial snapshot is
    /// gone: the staging directory removes itself when the create fails.
    fn explain_if_full(&self, err: anyhow::Error, name: &str) -> anyhow::Error {
        // Tools run with LC_ALL=C and Rust's own io errors are untranslated, so the text is stable.
        let mut text = one_line(&err);
        if !text.contains("No space left on device") && !text.contains("Disk quota exceeded") {
            // A copier whose writer died of ENOSPC may report only what that did to its other
            // end (rsync's sender: "Broken pipe"): a store left with no room says it instead.
            if !free_bytes(self.store.dir()).is_ok_and(|free| free < NO_ROOM) {
                return err;
            }
            text = format!("No space left on device; {text}");
        }
        fail(
            Code::Failure,
            format!(
                "snapshots_dir {} ran out of space while snapshot {name} was created ({text}): it needs {}, {} were free when it started. The partial snapshot was removed and existing snapshots are unchanged; free space there or move snapshots_dir to a larger filesystem",
                self.store.dir().display(),
                self.needs(),
                human_bytes(self.free)
            ),
        )
    }
}

/// What [`Job::seal`] records about a snapshot besides its payload and manifest.
pub struct Sealed<'a> {
    pub name: &'a str,
    pub created_at: jiff::Timestamp,
    /// Node directories, relative to cache_dir.
    pub nodes: Vec<String>,
    /// The captured data's totals.
    pub data: Totals,
    pub pin: bool,
    /// The mode's details for meta.json.
    pub payload: serde_json::Value,
    pub fingerprint: Option<Fingerprint>,
    /// What changed in the live data during the copy, for the capture check; None when
    /// nothing was copied from it (adopt).
    pub changes: Option<capture::Changes>,
}

/// Everything a create needs once the lock is held; restore reuses it for auto-create, adopt
/// to seal what it moved or re-packed.
pub struct Job<'a> {
    pub cfg: &'a Config,
    pub live: &'a Live,
    pub store: &'a Store,
    pub lock: &'a Lock,
    pub mode: &'a dyn Mode,
    pub tools: &'a [Found],
    pub observer: &'a dyn Observer,
    /// Create even while a restore's journal says the data is in an unknown state.
    pub allow_interrupted: bool,
}

impl Job<'_> {
    /// Builds snapshot `name` in staging and moves it into place (replacing any old one
    /// atomically). The old snapshot is untouched until the new one is complete. Refuses to
    /// start when the store has clearly too little space, and says how much is needed when
    /// it fills up anyway.
    pub fn create(&self, name: &str, pin: bool) -> Result<Snapshot> {
        self.begin_capture(name, pin)?.quiesced()?.finish()
    }

    /// What a create does before the node containers are quiesced: the checks, the staging
    /// snapshot, and the mode's first pass ([`Mode::precopy`]). [`Capture::quiesced`] follows.
    pub fn begin_capture<'j>(&'j self, name: &'j str, pin: bool) -> Result<Capture<'j>> {
        let data = self.live.totals()?;
        let space = Space::check(self.store, self.mode, &data, name)?;
        let started = Instant::now();
        let staging = self.store.begin(name, self.lock)?;
        let watched = self
            .mode
            .writes_live_data()
            .then(|| Watched::create(self.observer, format!("create {name}"), self.live));
        let ctx = ModeContext::new(self.cfg, self.live, self.tools, &super::Quiesced)
            .observed(self.observer);
        let begun = (|| {
            // Before the copy: a pattern refused (past fingerprint::MAX_FILES) fails fast.
            // Only data restored from a snapshot can disagree with the files beside it.
            let fingerprint = if self.mode.writes_live_data() {
                Fingerprint::capture(self.cfg)?
            } else {
                None
            };
            // Before the copy, so that a swap during it shows (see crate::capture).
            let watch = self
                .mode
                .writes_live_data()
                .then(|| capture::Watch::start(self.live))
                .transpose()?;
            crate::testhook::pause("create-before-copy");
            self.mode.precopy(&ctx, &staging.payload())?;
            crate::testhook::pause("create-between-passes");
            Ok((fingerprint, watch))
        })();
        let (fingerprint, watch) = begun.map_err(|e| space.explain_if_full(e, name))?;
        Ok(Capture {
            job: self,
            name,
            pin,
            data,
            space,
            started,
            staging,
            _watched: watched,
            ctx,
            fingerprint,
            watch,
        })
    }

    /// Refuses data that cannot be a clean state, before the containers are quiesced, so a
    /// refusal changes nothing at all: none of the node directories that are a node's state
    /// (exit 2: restoring such a snapshot would delete every node directory made since), or
    /// data an interrupted or failed restore left half restored (exit 1: replacing the clean
    /// snapshot with it would lose the clean state for good).
    pub fn check_data(&self, name: &str) -> Result<()> {
        if self.mode.writes_live_data() && self.live.nodes().is_empty() {
            let paths: Vec<String> = self
                .live
                .include
                .iter()
                .map(|rel| self.live.path(rel).display().to_string())
                .collect();
            return Err(fail(
                Code::Usage,
                format!(
                    "cannot create {name}: no node directories in {}; a snapshot would hold no node state. Start the environment so that its nodes create their directories, or fix include in [suite_isolation]; nothing was changed",
                    paths.join(", ")
                ),
            ));
        }
        let Some(journal) = self.store.unfinished_restore(self.lock)? else {
            return Ok(());
        };
        if self.allow_interrupted {
            tracing::warn!(name = %name, "create_interrupted: {}; --allow-interrupted snapshots it as it is", journal.describe());
            return Ok(());
        }
        let force = if self.store.exists(name) {
            " --force"
        } else {
            ""
        };
        Err(fail(
            Code::Failure,
            format!(
                "cannot create {name}: {} first, or snapshot the data as it is with `stagesnap create {name}{force} --allow-interrupted`; nothing was changed",
                journal.unknown_state(&self.cfg.settings.snapshot_name)
            ),
        ))
    }

    /// Completes a snapshot whose payload `staging` holds: the manifest of what the mode
    /// captured (the tree [`Mode::captured_tree`] names, under `self.live`'s included
    /// paths), then meta.json, then the atomic move into place. Shared by create and adopt.
    pub fn seal(
        &self,
        staging: &mut Staging,
        ctx: &ModeContext,
        sealed: Sealed,
    ) -> Result<Snapshot> {
        let recorded = self.record(ctx, staging, sealed.changes.as_ref())?;
        self.seal_recorded(staging, ctx, sealed, recorded)
    }

    /// [`Job::seal`] of a manifest [`Job::record`] took: its hashes, then meta.json, then the
    /// atomic move into place.
    fn seal_recorded(
        &self,
        staging: &mut Staging,
        ctx: &ModeContext,
        sealed: Sealed,
        recorded: Option<Manifest>,
    ) -> Result<Snapshot> {
        let manifest = recorded
            .map(|mut manifest| {
                ctx.observer.step("writing the manifest");
                let started = Instant::now();
                if self.mode.hashes_content() {
                    let payload = staging.payload();
                    let tree = self.mode.captured_tree(ctx, &payload);
                    let known = manifest.take_known(self.mode.known_digests(ctx, &payload)?);
                    let hashed = manifest.hash(&tree, |e| e.blake3.is_none())?;
                    tracing::info!(
                        known,
                        files = hashed.files,
                        bytes = hashed.bytes,
                        seconds = crate::tree::seconds(started.elapsed()),
                        "captured_hashed"
                    );
                }
                let stored = staging.write_manifest(&manifest)?;
                // Only a copy: adopt's moved data goes back to the harness if the adopt fails.
                if sealed.changes.is_some() && self.mode.shares_identical_files() {
                    self.share_with_previous(staging, &manifest)?;
                }
                let (files, bytes) = manifest.totals();
                tracing::info!(
                    entries = stored.entries,
                    files,
                    bytes,
                    seconds = crate::tree::seconds(started.elapsed()),
                    "manifest_written"
                );
                Ok::<_, anyhow::Error>(stored)
            })
            .transpose()?;
        let stored = crate::tree::totals(staging.dir())?;
        let meta = Meta {
            schema: SCHEMA,
            name: sealed.name.to_string(),
            mode: self.mode.kind(),
            created_at: sealed.created_at.to_string(),
            stagesnap_version: env!("CARGO_PKG_VERSION").to_string(),
            tools: self
                .tools
                .iter()
                .map(|f| Ok((f.tool.program.to_string(), f.version()?.to_string())))
                .collect::<Result<_>>()?,
            cache_dir: self.live.cache_dir.clone(),
            include: self.live.include.clone(),
            nodes: sealed.nodes,
            files: sealed.data.files,
            bytes: sealed.data.bytes,
            stored_bytes: stored.allocated,
            pinned: sealed.pin,
            payload: sealed.payload,
            manifest,
            fingerprint: sealed.fingerprint,
        };
        staging.commit(&meta, true)
    }

    /// The manifest of what the mode just captured, once what it holds beneath the
    /// directories that changed during the copy (see [`capture`]) proved to come from the
    /// live data; None for modes that capture no data. Everything that reads the live data
    /// is done here, quiesced: files are hashed now only when the captured tree is the live
    /// data, else [`Job::seal_recorded`] hashes the rest from the copy after the unpause.
    fn record(
        &self,
        ctx: &ModeContext,
        staging: &Staging,
        changes: Option<&capture::Changes>,
    ) -> Result<Option<Manifest>> {
        if !self.mode.writes_live_data() {
            return Ok(None);
        }
        let tree = self.mode.captured_tree(ctx, &staging.payload());
        let mut manifest = Manifest::scan(&tree, &self.live.include)?;
        if self.mode.hashes_content() && tree == self.live.cache_dir {
            manifest.hash(&tree, |_| true)?;
        }
        if let Some(changes) = changes.filter(|c| !c.suspects.is_empty()) {
            let held =
                self.mode
                    .held_beneath(ctx, &staging.payload(), &manifest, &changes.suspects)?;
            let tool = self.mode.tools().first().map_or("the copy", |t| t.program);
            capture::check(self.live, changes, &held, tool)?;
        }
        self.mode.describe_captured(ctx, &mut manifest)?;
        Ok(Some(manifest))
    }

    /// The new snapshot's files identical to the newest snapshot's of the same mode become
    /// hardlinks to them (see [`crate::store::share_identical`]).
    fn share_with_previous(&self, staging: &Staging, manifest: &Manifest) -> Result<()> {
        let (snapshots, _) = self.store.list()?;
        let Some(previous) = snapshots.iter().find(|s| s.meta.mode == self.mode.kind()) else {
            return Ok(());
        };
        let shared = crate::store::share_identical(
            &staging.payload(),
            manifest,
            previous,
            &self.cfg.allowed(),
        )?;
        tracing::info!(previous = %previous.meta.name, bytes = shared, "files_shared");
        Ok(())
    }

    /// Retention after a create: never removes the new snapshot, snapshot_name or a pinned one.
    pub fn auto_cleanup(&self, just_made: &str) -> Result<Vec<String>> {
        if !self.cfg.settings.auto_cleanup {
            return Ok(vec![]);
        }
        let rules = Rules {
            just_made: Some(just_made),
            ..Rules::configured(self.cfg)
        };
        let decisions = retention::prune(self.store, self.lock, &rules, false, "auto_cleanup")?;
        Ok(decisions
            .into_iter()
            .filter(|d| d.remove())
            .map(|d| d.name)
            .collect())
    }
}

/// A create between [`Job::begin_capture`] and the pause: the mode's first pass is done.
pub struct Capture<'j> {
    job: &'j Job<'j>,
    name: &'j str,
    pin: bool,
    data: Totals,
    space: Space<'j>,
    started: Instant,
    staging: Staging,
    _watched: Option<Watched<'j>>,
    ctx: ModeContext<'j>,
    fingerprint: Option<Fingerprint>,
    watch: Option<capture::Watch>,
}

/// A create whose capture is complete and recorded: nothing of it reads the live data any
/// more, so the node containers may run again before [`Captured::finish`].
pub struct Captured<'j> {
    capture: Capture<'j>,
    sealed: Sealed<'j>,
    manifest: Option<Manifest>,
}

impl<'j> Capture<'j> {
    /// The part of a create that needs the node containers quiesced: the mode's capture (all
    /// of it, or the second pass after [`Mode::precopy`]) and the record of what it captured
    /// ([`Job::record`]).
    pub fn quiesced(mut self) -> Result<Captured<'j>> {
        let job = self.job;
        let recorded = (|| {
            let payload = job.mode.create(&self.ctx, &self.staging.payload())?;
            crate::testhook::pause("create-after-copy");
            let changes = self.watch.take().map(|w| w.changes(job.live)).transpose()?;
            crate::signals::check()?;
            let manifest = job.record(&self.ctx, &self.staging, changes.as_ref())?;
            Ok((payload, changes, manifest))
        })();
        let (payload, changes, manifest) =
            recorded.map_err(|e| self.space.explain_if_full(e, self.name))?;
        let sealed = Sealed {
            name: self.name,
            created_at: jiff::Timestamp::now(),
            nodes: job.live.nodes(),
            data: self.data,
            pin: self.pin,
            payload,
            fingerprint: self.fingerprint.take(),
            changes,
        };
        Ok(Captured {
            capture: self,
            sealed,
            manifest,
        })
    }
}

impl Captured<'_> {
    /// The captured data's totals.
    fn data(&self) -> Totals {
        self.sealed.data
    }

    /// The rest of a create, with the node containers running again: the hashes of what
    /// was captured, meta.json, and the atomic move into place.
    pub fn finish(self) -> Result<Snapshot> {
        let Captured {
            mut capture,
            sealed,
            manifest,
        } = self;
        let job = capture.job;
        let name = capture.name;
        let snap = job
            .seal_recorded(&mut capture.staging, &capture.ctx, sealed, manifest)
            .map_err(|e| capture.space.explain_if_full(e, name))?;
        tracing::info!(name = %name,
            mode = %job.mode.kind().name(),
            files = snap.meta.files,
            bytes = snap.meta.bytes,
            seconds = crate::tree::seconds(capture.started.elapsed()),
            "snapshot_created"
        );
        Ok(snap)
    }
}
