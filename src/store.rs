//! The snapshot store: layout, metadata, atomic create, deletion, retention and locking.
//!
//! ```text
//! <snapshots_dir>/
//!   .lock                      flock'ed by every command that changes snapshots; shared by
//!                              those that only read them (not list)
//!   .restore-journal           a restore in progress, or one that was interrupted or failed
//!   <name>/meta.json           written last; a directory without it is not a snapshot
//!   <name>/manifest.jsonl      every captured entry (see `manifest`); its digest is in meta.json
//!   <name>/payload/…           mode-specific data
//!   .staging-<name>-<pid>/     a create in progress (or a crashed one: removed by the next create/prune)
//!   .finishing-<name>          a background create finishing <name> (see `background`)
//!   .failed-<name>             how the last background create of <name> failed
//!   .trash-<name>-<pid>/       a snapshot being deleted
//! ```
//! Snapshots appear and disappear only by `rename(2)`, so a reader never sees half of one.
//!
//! The store is untrusted input: stagesnap never follows a symlink inside it (one at a store
//! file's name, or in place of a snapshot), so a planted link cannot make it read or write
//! another file. A symlinked snapshots_dir itself is the user's configuration, and allowed.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use crate::choices::ModeKind;
use crate::exit::{Code, Error, fail};
use crate::fingerprint::Fingerprint;
use crate::manifest::{Allowed, Manifest};
use crate::names::validate_name;
use crate::signals;
use crate::sys;
use crate::tree::remove_tree;

mod background;
mod share;
pub use background::{Background, Finishing};
pub use share::{own_and_shared, share_identical};

/// Version of meta.json's layout. Readers refuse newer ones.
pub const SCHEMA: u32 = 1;
pub const META_FILE: &str = "meta.json";
/// The stage-env harness keeps its snapshots in the same folder (see [`crate::legacy`], which
/// adopts them): a directory holding this metadata file, or an image `<name>.sqfs`.
pub const DIR_METADATA: &str = ".snapshot_metadata";
pub const IMAGE_EXT: &str = "sqfs";
pub const PAYLOAD_DIR: &str = "payload";
pub const MANIFEST_FILE: &str = "manifest.jsonl";
/// The manifest's piece digests (see [`Manifest::pieces_to_bytes`]).
pub const PIECES_FILE: &str = "pieces.jsonl";
/// When a snapshot was last restored and how often; see [`Usage`].
pub const USAGE_FILE: &str = "usage.json";
const LOCK_FILE: &str = ".lock";
const JOURNAL_FILE: &str = ".restore-journal";
const STAGING_PREFIX: &str = ".staging-";
const TRASH_PREFIX: &str = ".trash-";
const PARKED_SUFFIX: &str = ".old";

/// Whether `dir`, an entry of snapshots_dir, is a legacy filesystem snapshot: a real directory
/// with the harness's metadata and no meta.json.
pub fn is_legacy_dir(dir: &Path) -> bool {
    let exists = |p: &Path| p.symlink_metadata().is_ok();
    dir.symlink_metadata().is_ok_and(|m| m.is_dir())
        && !exists(&dir.join(META_FILE))
        && exists(&dir.join(DIR_METADATA))
}

/// The stage-env harness's image of snapshot `name` in snapshots_dir `store`, if it has one.
pub fn legacy_image(store: &Path, name: &str) -> Option<PathBuf> {
    let image = store.join(format!("{name}.{IMAGE_EXT}"));
    image
        .symlink_metadata()
        .is_ok_and(|m| !m.is_dir())
        .then_some(image)
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    pub schema: u32,
    pub name: String,
    pub mode: ModeKind,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub stagesnap_version: String,
    /// Tool name → version used to make the snapshot.
    pub tools: BTreeMap<String, String>,
    pub cache_dir: PathBuf,
    /// Included paths, relative to cache_dir.
    pub include: Vec<PathBuf>,
    pub nodes: Vec<String>,
    /// Non-directory entries captured.
    pub files: u64,
    /// Apparent bytes of the captured regular files.
    pub bytes: u64,
    /// Bytes the snapshot occupies in the store.
    pub stored_bytes: u64,
    pub pinned: bool,
    /// Mode-specific details.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub payload: serde_json::Value,
    /// Absent for snapshots that hold no data and for those made before manifests existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<ManifestRef>,
    /// Digests of the files named by `fingerprint` at create; absent when there were none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<Fingerprint>,
}

/// Where meta.json vouches for the manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ManifestRef {
    /// blake3 of manifest.jsonl, hex.
    pub blake3: String,
    pub entries: u64,
    /// blake3 of pieces.jsonl, hex; absent when no file has pieces (or an older stagesnap
    /// kept them in the manifest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pieces: Option<String>,
}

impl Meta {
    pub fn created(&self) -> jiff::Timestamp {
        self.created_at
            .parse()
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
    }
}

/// How a snapshot has been used: written by each successful restore, read by `list` and by
/// prune's keep_used_within. meta.json does not vouch for it, so it is read leniently: a
/// missing or malformed file is "never restored", never an error.
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    pub last_restored: jiff::Timestamp,
    pub restores: u64,
}

/// [`Usage`] as stored.
#[derive(Serialize, Deserialize)]
struct UsageFile {
    /// RFC 3339, UTC.
    last_restored: String,
    restores: u64,
}

/// A complete snapshot in the store.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub dir: PathBuf,
    pub meta: Meta,
}

impl Snapshot {
    pub fn payload(&self) -> PathBuf {
        self.dir.join(PAYLOAD_DIR)
    }

    /// The snapshot's [`Usage`], None when it was never restored or its file is unreadable.
    pub fn usage(&self) -> Option<Usage> {
        let bytes = read_nofollow(&self.dir.join(USAGE_FILE)).ok()?;
        let file: UsageFile = serde_json::from_slice(&bytes).ok()?;
        Some(Usage {
            last_restored: file.last_restored.parse().ok()?,
            restores: file.restores,
        })
    }

    /// Counts a successful restore in the usage file. Never fails the restore: a store this
    /// process cannot write (read-only, or another user's) only skips it, and any other
    /// error is a warning. Not synced: a crash soon after may lose the count (an empty file
    /// reads as never restored), which only makes the snapshot look less used, while a sync
    /// would cost a no-change restore more than its whole stat walk.
    pub fn record_restore(&self, _lock: &Lock) {
        let usage = UsageFile {
            last_restored: jiff::Timestamp::now().to_string(),
            restores: self.usage().map_or(0, |u| u.restores).saturating_add(1),
        };
        let path = self.dir.join(USAGE_FILE);
        match replace_json(&path, &usage, false) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    Errno::from_io_error(&e),
                    Some(Errno::ROFS | Errno::ACCESS | Errno::PERM)
                ) =>
            {
                tracing::debug!(path = %path.display(), error = %e, "usage_not_recorded");
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "usage_not_recorded: the restore succeeded, but when it happened could not be recorded");
            }
        }
    }

    /// The snapshot's manifest, checked against the digest in meta.json and, as the store is
    /// input and not truth, against what the configuration `allowed` (see
    /// [`Manifest::check`]). Every reader of a stored manifest comes through here.
    pub fn manifest(&self, allowed: &Allowed) -> Result<Manifest> {
        self.check_include(allowed)?;
        let name = &self.meta.name;
        let Some(expected) = &self.meta.manifest else {
            return Err(fail(
                Code::Failure,
                format!(
                    "snapshot {name} has no manifest (an older stagesnap made it); recreate it with `stagesnap create {name} --force`"
                ),
            ));
        };
        let bytes = self.read_vouched(MANIFEST_FILE, &expected.blake3)?;
        let manifest = Manifest::from_bytes(&bytes)
            .map_err(|e| self.damaged(MANIFEST_FILE, &format!("is not a valid manifest ({e})")))?;
        let own = Allowed {
            // Checked to lie within the configured include above.
            include: &self.meta.include,
            devices: allowed.devices,
        };
        manifest
            .check(&own)
            .map_err(|e| self.damaged(MANIFEST_FILE, &format!("is refused: {e}")))?;
        Ok(manifest)
    }

    /// Fails unless the snapshot was made of the configured included paths (`allowed`), or
    /// of paths below them (an adopted harness snapshot covers `data/nodeN`): its include
    /// decides what a restore walks and deletes, so it must not come from the store alone.
    pub fn check_include(&self, allowed: &Allowed) -> Result<()> {
        let within = |p: &PathBuf| {
            p.components()
                .all(|c| matches!(c, std::path::Component::Normal(_)))
                && allowed.include.iter().any(|root| p.starts_with(root))
        };
        let include = &self.meta.include;
        let nested = include.iter().enumerate().any(|(i, a)| {
            include
                .iter()
                .skip(i + 1)
                .any(|b| a.starts_with(b) || b.starts_with(a))
        });
        if !include.is_empty() && !nested && include.iter().all(within) {
            return Ok(());
        }
        let show = |paths: &[PathBuf]| {
            let v: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            v.join(" ")
        };
        let name = &self.meta.name;
        Err(fail(
            Code::Failure,
            format!(
                "snapshot {name} was made with include = {}, which is not within the configuration's include = {}; nothing was changed. Set include back, or create it again with `stagesnap create {name} --force`",
                show(&self.meta.include),
                show(allowed.include)
            ),
        ))
    }

    /// [`Snapshot::manifest`] with the piece digests of its large files, checked against
    /// their digest in meta.json too.
    pub fn manifest_with_pieces(&self, allowed: &Allowed) -> Result<Manifest> {
        let mut manifest = self.manifest(allowed)?;
        self.attach_pieces(&mut manifest)?;
        Ok(manifest)
    }

    /// Gives `manifest` (this snapshot's) the piece digests of its large files, checked
    /// against their digest in meta.json; nothing when the snapshot recorded none.
    pub fn attach_pieces(&self, manifest: &mut Manifest) -> Result<()> {
        let Some(expected) = self.meta.manifest.as_ref().and_then(|m| m.pieces.as_ref()) else {
            return Ok(());
        };
        let bytes = self.read_vouched(PIECES_FILE, expected)?;
        manifest.attach_pieces(&bytes).map_err(|e| {
            self.damaged(
                PIECES_FILE,
                &format!("is not a valid list of piece digests ({e})"),
            )
        })
    }

    /// The bytes of `file`, which meta.json vouches for with the digest `blake3`.
    fn read_vouched(&self, file: &str, blake3: &str) -> Result<Vec<u8>> {
        let bytes = read_nofollow(&self.dir.join(file))
            .map_err(|e| self.damaged(file, &format!("cannot be read ({e})")))?;
        if blake3::hash(&bytes).to_hex().as_str() != blake3 {
            return Err(self.damaged(file, "does not match the digest recorded in meta.json"));
        }
        Ok(bytes)
    }

    fn damaged(&self, file: &str, why: &str) -> anyhow::Error {
        damaged(
            &self.meta.name,
            format!("{} {why}", self.dir.join(file).display()),
        )
    }
}

/// The record of a restore in progress (`.restore-journal`). A restore writes it (durably)
/// just before its first change to the live data and removes it once the data is verified; a
/// crash leaves it behind, a failure leaves it with the error, and `status` reports either
/// (and `create` refuses). A restore that finds nothing to change, or fails before its first
/// change, writes none.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JournalRecord {
    pub snapshot: String,
    pub pid: u32,
    pub host: String,
    /// RFC 3339, UTC.
    pub started: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl JournalRecord {
    /// "restore of clean_state was interrupted at …" (or "failed (why) at …").
    pub fn describe(&self) -> String {
        let what = match &self.error {
            None => "was interrupted".to_string(),
            Some(e) => format!("failed ({e})"),
        };
        format!(
            "restore of {} {what} at {} (pid {} on {})",
            self.snapshot, self.started, self.pid, self.host
        )
    }

    /// "data is in an unknown state: restore of … was interrupted …; run `stagesnap restore`",
    /// naming the snapshot in the command unless it is `snapshot_name`, the default.
    pub fn unknown_state(&self, snapshot_name: &str) -> String {
        let again = if self.snapshot == snapshot_name {
            String::new()
        } else {
            format!(" {}", self.snapshot)
        };
        format!(
            "data is in an unknown state: {}; run `stagesnap restore{again}`",
            self.describe()
        )
    }
}

/// A restore in progress; see [`JournalRecord`].
pub struct Journal {
    path: PathBuf,
    record: JournalRecord,
    written: AtomicBool,
}

impl Journal {
    /// Writes the record, once: called before the restore's first change to the live data.
    pub fn begin(&self) -> Result<()> {
        if !self.written.load(Ordering::Acquire) {
            write_json_atomic(&self.path, &self.record)
                .context("cannot start the restore (the live data is unchanged)")?;
            sync_dir(self.path.parent().unwrap_or(Path::new("/")))?;
            self.written.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Clears the record when `result` is a success (also one left by an earlier restore
    /// that this one finished), else records its error.
    pub fn end<T>(&self, result: &Result<T>) -> Result<()> {
        match result {
            Ok(_) => match fs::remove_file(&self.path) {
                Ok(()) => sync_dir(self.path.parent().unwrap_or(Path::new("/"))),
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound
                        && !self.written.load(Ordering::Acquire) =>
                {
                    Ok(())
                }
                Err(e) => Err(e).with_context(|| format!("cannot remove {}", self.path.display())),
            },
            // Failed before its first change: the data is as it was (and a record an earlier
            // restore left stays), so create need not refuse it.
            Err(_) if !self.written.load(Ordering::Acquire) => Ok(()),
            Err(e) => {
                let record = JournalRecord {
                    error: Some(crate::exit::one_line(e)),
                    ..self.record.clone()
                };
                write_json_atomic(&self.path, &record)?;
                sync_dir(self.path.parent().unwrap_or(Path::new("/")))
            }
        }
    }
}

/// A directory in the store that looks like a snapshot but cannot be read.
#[derive(Debug, Clone, Serialize)]
pub struct Unreadable {
    pub name: String,
    pub problem: String,
}

#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: &Path) -> Store {
        Store {
            dir: dir.to_path_buf(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the store's exclusive lock, waiting up to `timeout` (exit 5 after that), and
    /// records its holder for those who wait. The kernel drops the lock when the process
    /// dies, so a crashed holder never blocks anyone.
    pub fn lock(&self, command: &str, timeout: Duration) -> Result<Lock> {
        fs::create_dir_all(&self.dir).map_err(|e| {
            fail(
                Code::Failure,
                format!(
                    "cannot create snapshots_dir {}: {e}; check the path and its permissions",
                    self.dir.display()
                ),
            )
        })?;
        let path = self.dir.join(LOCK_FILE);
        let file = open_lock(&path, true).map_err(|e| lock_error(&path, e))?;
        self.wait(&file, &path, timeout, File::try_lock)?;
        let holder = Holder {
            pid: std::process::id(),
            command: command.to_string(),
            host: hostname(),
            started: jiff::Timestamp::now().to_string(),
        };
        let record = toml::to_string(&holder)?;
        // Written over the last holder's record, then cut to length: truncating to zero first
        // frees the file's block only to allocate it again.
        file.write_all_at(record.as_bytes(), 0)
            .and_then(|()| file.set_len(record.len() as u64))
            .with_context(|| format!("cannot record the lock's holder in {}", path.display()))?;
        Ok(Lock { file: Some(file) })
    }

    /// Takes the store's lock shared, for commands that only read it: they run side by side,
    /// wait only for a writer, and write nothing (no holder record), so they work on a
    /// read-only store. Where the lock file neither exists nor can be made, none is taken.
    /// That is safe: a store this process cannot write is either read-only to everyone, so
    /// no writer can change it, or writable by another user, whose first writer creates the
    /// lock file before it changes anything and never removes it (so there has been none).
    pub fn lock_shared(&self, timeout: Duration) -> Result<Lock> {
        let path = self.dir.join(LOCK_FILE);
        let file = match open_lock(&path, true) {
            Err(e)
                if matches!(
                    Errno::from_io_error(&e),
                    Some(Errno::ROFS | Errno::ACCESS | Errno::PERM)
                ) =>
            {
                open_lock(&path, false)
            }
            opened => opened,
        };
        let file = match file {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Lock { file: None }),
            Err(e) => return Err(lock_error(&path, e)),
        };
        self.wait(&file, &path, timeout, File::try_lock_shared)?;
        Ok(Lock { file: Some(file) })
    }

    /// Waits up to `timeout` until `try_lock` takes the lock on `file`, naming its holder
    /// once, then in the exit-5 error.
    fn wait(
        &self,
        file: &File,
        path: &Path,
        timeout: Duration,
        try_lock: fn(&File) -> std::result::Result<(), fs::TryLockError>,
    ) -> Result<()> {
        self.poll(timeout, "lock_wait", || match try_lock(file) {
            Ok(()) => Ok(Ok(())),
            Err(fs::TryLockError::WouldBlock) => Ok(Err(read_holder(path))),
            Err(fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("cannot lock {}", path.display()))
            }
        })
    }

    /// Calls `attempt` until it gives a value, or for up to `timeout` while it names who
    /// holds what it waits for: logged once as `event`, then in the exit-5 error.
    fn poll<T>(
        &self,
        timeout: Duration,
        event: &str,
        mut attempt: impl FnMut() -> Result<std::result::Result<T, String>>,
    ) -> Result<T> {
        let start = Instant::now();
        let mut announced = false;
        loop {
            let holder = match attempt()? {
                Ok(value) => return Ok(value),
                Err(holder) => holder,
            };
            if start.elapsed() >= timeout {
                return Err(Error::Locked {
                    store: self.dir.clone(),
                    holder,
                    waited_secs: timeout.as_secs(),
                }
                .into());
            }
            if !announced {
                tracing::info!(holder = %holder, "{event}");
                announced = true;
            }
            signals::check()?;
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Complete snapshots, newest first, and the snapshot-like directories that could not be read.
    pub fn list(&self) -> Result<(Vec<Snapshot>, Vec<Unreadable>)> {
        let mut snapshots = Vec::new();
        let mut unreadable = Vec::new();
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((snapshots, unreadable));
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot read snapshots_dir {}", self.dir.display()));
            }
        };
        for entry in rd {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // A symlink is listed too, as unreadable, so that it can be seen and deleted.
            let kind = entry.file_type()?;
            if name.starts_with('.')
                || !(kind.is_dir() || kind.is_symlink())
                || validate_name(&name).is_err()
                || is_legacy_dir(&entry.path())
            {
                continue;
            }
            match self.read(&name) {
                Ok(s) => snapshots.push(s),
                // Deleted (renamed away) since the directory was read: list runs unlocked.
                Err(_) if !self.exists(&name) => {}
                Err(e) => unreadable.push(Unreadable {
                    name,
                    problem: crate::exit::one_line(&e),
                }),
            }
        }
        snapshots.sort_by(|a, b| {
            b.meta
                .created()
                .cmp(&a.meta.created())
                .then(a.meta.name.cmp(&b.meta.name))
        });
        Ok((snapshots, unreadable))
    }

    /// The snapshot `name`, or exit 4 when there is none, or an error naming what is wrong with it.
    pub fn get(&self, name: &str) -> Result<Snapshot> {
        validate_name(name)?;
        self.refuse_legacy(name)?;
        if !self.exists(name) {
            return Err(self.not_found(name));
        }
        self.read(name)
    }

    /// Fails (exit 1) when `name` is the stage-env harness's snapshot and not a stagesnap
    /// one, saying to adopt it: what every command that reads a snapshot says instead of
    /// "damaged" or "not found".
    pub fn refuse_legacy(&self, name: &str) -> Result<()> {
        let dir = self.dir.join(name);
        if dir.join(META_FILE).symlink_metadata().is_ok() {
            return Ok(());
        }
        let found = if is_legacy_dir(&dir) {
            Some(dir)
        } else {
            legacy_image(&self.dir, name)
        };
        match found {
            None => Ok(()),
            Some(path) => Err(fail(
                Code::Failure,
                format!(
                    "snapshot {name} was made by the stage-env harness ({}); run `stagesnap adopt {name}` to use it",
                    path.display()
                ),
            )),
        }
    }

    fn not_found(&self, name: &str) -> anyhow::Error {
        self.not_found_or(name, "")
    }

    /// Exit 4 for snapshot `name`; `also` is a further way out the caller knows of.
    pub fn not_found_or(&self, name: &str, also: &'static str) -> anyhow::Error {
        Error::NotFound {
            snapshot: name.to_string(),
            store: self.dir.clone(),
            also,
        }
        .into()
    }

    /// Why the store's entry `name` is not a complete snapshot (damaged, or not a directory
    /// at all), or None when it is one; exit 4 when there is no such entry. Follows no symlink.
    pub fn incomplete(&self, name: &str) -> Result<Option<String>> {
        validate_name(name)?;
        let path = self.dir.join(name);
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(self.not_found(name)),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
            Ok(m) if m.file_type().is_symlink() => Ok(Some(format!(
                "{} is a symlink, not a snapshot directory",
                path.display()
            ))),
            Ok(m) if !m.is_dir() => Ok(Some(format!("{} is not a directory", path.display()))),
            Ok(_) => Ok(self.read(name).err().map(|e| crate::exit::one_line(&e))),
        }
    }

    /// Whether the store holds an entry named `name`; a symlink counts, never followed.
    pub fn exists(&self, name: &str) -> bool {
        self.dir.join(name).symlink_metadata().is_ok()
    }

    fn read(&self, name: &str) -> Result<Snapshot> {
        let dir = self.dir.join(name);
        if let Ok(target) = fs::read_link(&dir) {
            return Err(fail(
                Code::Failure,
                format!(
                    "snapshot {name} is not usable: {} is a symlink (to {}), and stagesnap never uses a snapshot through one. Remove the link with `stagesnap delete {name}` (its target is left alone)",
                    dir.display(),
                    target.display()
                ),
            ));
        }
        let path = dir.join(META_FILE);
        let text = read_nofollow(&path)
            .map_err(|e| damaged(name, format!("cannot read {}: {e}", path.display())))?;
        #[derive(Deserialize)]
        struct Probe {
            schema: u32,
            mode: Option<String>,
        }
        let probe: Probe =
            serde_json::from_slice(&text).map_err(|e| not_metadata(name, &path, &e))?;
        if probe.schema > SCHEMA {
            return Err(fail(
                Code::Failure,
                format!(
                    "snapshot {name} was written by a newer stagesnap ({} schema {}, this one reads up to {SCHEMA}); upgrade stagesnap",
                    path.display(),
                    probe.schema
                ),
            ));
        }
        if let Some(mode) = probe.mode.filter(|m| ModeKind::from_name(m).is_none()) {
            return Err(fail(
                Code::Failure,
                format!(
                    "snapshot {name} has unknown mode {mode:?} ({}); it was made by another stagesnap",
                    path.display()
                ),
            ));
        }
        let meta: Meta =
            serde_json::from_slice(&text).map_err(|e| not_metadata(name, &path, &e))?;
        if meta.name != name {
            return Err(damaged(
                name,
                format!("{} names it {:?}", path.display(), meta.name),
            ));
        }
        let snapshot = Snapshot { dir, meta };
        if snapshot.payload().is_symlink() {
            return Err(snapshot.damaged(PAYLOAD_DIR, "is a symlink"));
        }
        Ok(snapshot)
    }

    /// Starts building snapshot `name` in a private staging directory.
    pub fn begin(&self, name: &str, _lock: &Lock) -> Result<Staging> {
        validate_name(name)?;
        let dir = self
            .dir
            .join(format!("{STAGING_PREFIX}{name}-{}", std::process::id()));
        // What a process of the same pid left, or a planted link: removed, never followed.
        remove_tree(&dir)?;
        fs::create_dir(&dir)
            .and_then(|()| fs::create_dir(dir.join(PAYLOAD_DIR)))
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Staging {
            store: self.clone(),
            name: name.to_string(),
            dir,
            done: false,
        })
    }

    /// Removes the store's entry `name` (a snapshot, or whatever [`Store::incomplete`] found
    /// there): it vanishes from listings atomically, then its files go. A symlink goes
    /// itself; what it points to is never touched.
    pub fn delete(&self, name: &str, _lock: &Lock) -> Result<()> {
        let snap = self.dir.join(name);
        let trash = self
            .dir
            .join(format!("{TRASH_PREFIX}{name}-{}", std::process::id()));
        fs::rename(&snap, &trash)
            .with_context(|| format!("cannot remove snapshot {}", snap.display()))?;
        sync_dir(&self.dir)?;
        let is_dir = fs::symlink_metadata(&trash)
            .with_context(|| format!("cannot read {}", trash.display()))?
            .is_dir();
        if is_dir {
            remove_tree(&trash)
        } else {
            fs::remove_file(&trash).with_context(|| format!("cannot remove {}", trash.display()))
        }
    }

    /// The journal of a restore of `snapshot` starting now; see [`Journal::begin`].
    pub fn restore_journal(&self, snapshot: &str, _lock: &Lock) -> Journal {
        let record = JournalRecord {
            snapshot: snapshot.to_string(),
            pid: std::process::id(),
            host: hostname(),
            started: jiff::Timestamp::now().to_string(),
            error: None,
        };
        Journal {
            path: self.dir.join(JOURNAL_FILE),
            record,
            written: AtomicBool::new(false),
        }
    }

    /// The record of the last restore if it did not end well. Read under the lock, so a
    /// record present is never a restore still running.
    pub fn unfinished_restore(&self, _lock: &Lock) -> Result<Option<JournalRecord>> {
        let path = self.dir.join(JOURNAL_FILE);
        let bytes = match read_nofollow(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            fail(
                Code::Failure,
                format!("data is in an unknown state: a restore left {}, which cannot be read ({e}); run `stagesnap restore`", path.display()),
            )
        })
    }

    /// Removes what interrupted creates and deletes left behind, and puts back a snapshot
    /// that a create on a filesystem without RENAME_EXCHANGE had parked (see [`exchange`])
    /// when it died. Only safe under the lock, which guarantees no other process is building
    /// or deleting right now. A leftover that cannot be removed is only a warning: it is
    /// hidden and takes nothing but space.
    pub fn clean_leftovers(&self, _lock: &Lock) -> Result<usize> {
        let mut removed = 0;
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return Ok(0);
        };
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(parked) = parked_snapshot(&name)
                && !self.dir.join(parked).exists()
            {
                fs::rename(entry.path(), self.dir.join(parked))
                    .with_context(|| format!("cannot put {} back", entry.path().display()))?;
                sync_dir(&self.dir)?;
                tracing::warn!(name = %parked, "snapshot_recovered: a create that replaced {parked} died half way; the previous {parked} is back");
            } else if (name.starts_with(STAGING_PREFIX) && !self.staging_in_background(&name))
                || name.starts_with(TRASH_PREFIX)
            {
                match remove_tree(&entry.path()) {
                    Ok(()) => {
                        tracing::info!(path = %entry.path().display(), "leftover_removed");
                        removed += 1;
                    }
                    Err(e) => {
                        tracing::warn!(path = %entry.path().display(), error = %crate::exit::one_line(&e), "leftover_not_removed")
                    }
                }
            }
        }
        Ok(removed)
    }
}

/// The snapshot name in `.staging-<name>-<pid>.old`, where [`exchange`] parks a snapshot.
fn parked_snapshot(entry: &str) -> Option<&str> {
    let (name, pid) = entry
        .strip_prefix(STAGING_PREFIX)?
        .strip_suffix(PARKED_SUFFIX)?
        .rsplit_once('-')?;
    (validate_name(name).is_ok() && pid.bytes().all(|b| b.is_ascii_digit())).then_some(name)
}

fn damaged(name: &str, what: String) -> anyhow::Error {
    Error::Damaged {
        snapshot: name.to_string(),
        what,
        refused: false,
    }
    .into()
}

fn not_metadata(name: &str, path: &Path, e: &serde_json::Error) -> anyhow::Error {
    damaged(
        name,
        format!("{} is not valid metadata ({e})", path.display()),
    )
}

/// A create in progress. Dropped without [`Staging::commit`], it removes itself.
pub struct Staging {
    store: Store,
    name: String,
    dir: PathBuf,
    done: bool,
}

impl Staging {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn payload(&self) -> PathBuf {
        self.dir.join(PAYLOAD_DIR)
    }

    /// Stores the snapshot's manifest; [`Staging::commit`] makes it durable with the rest.
    pub fn write_manifest(&self, manifest: &Manifest) -> Result<ManifestRef> {
        let write = |file: &str, bytes: &[u8]| -> Result<String> {
            let path = self.dir.join(file);
            create_new(&path)
                .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
                .map_err(|e| write_error(&path, e))?;
            Ok(blake3::hash(bytes).to_hex().to_string())
        };
        let pieces = manifest.pieces_to_bytes();
        Ok(ManifestRef {
            blake3: write(MANIFEST_FILE, &manifest.to_bytes())?,
            entries: manifest.entries.len() as u64,
            pieces: if pieces.is_empty() {
                None
            } else {
                Some(write(PIECES_FILE, &pieces)?)
            },
        })
    }

    /// Writes the metadata and moves the snapshot into place. An existing snapshot of the
    /// same name is swapped out in one atomic step (`--force`), so at every instant exactly
    /// one complete snapshot of that name exists. On failure the staging directory stays
    /// until dropped, so a caller can first take back what it moved in (`adopt`).
    pub fn commit(&mut self, meta: &Meta, replace: bool) -> Result<Snapshot> {
        write_json_atomic(&self.dir.join(META_FILE), meta)?;
        sync_dir(&self.dir)?;
        let target = self.store.dir.join(&self.name);
        if replace && self.store.exists(&self.name) {
            exchange(&self.dir, &target)?;
            sync_dir(&self.store.dir)?;
            // self.dir now holds the old snapshot; Drop removes it.
        } else {
            rename_noreplace(&self.dir, &target).map_err(|e| {
                fail(
                    Code::Failure,
                    format!(
                        "cannot move the new snapshot into {}: {e}",
                        target.display()
                    ),
                )
            })?;
            sync_dir(&self.store.dir)?;
            self.done = true;
        }
        Ok(Snapshot {
            dir: target,
            meta: meta.clone(),
        })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done
            && let Err(e) = remove_tree(&self.dir)
        {
            tracing::warn!(path = %self.dir.display(), error = %e, "staging_cleanup_failed");
        }
    }
}

/// Proof that the store's lock is held; operations that change the store take it.
/// No file where [`Store::lock_shared`] could take none.
pub struct Lock {
    file: Option<File>,
}

impl Lock {
    /// Lets the lock go while its holder goes on: a background create's detached process,
    /// which holds its snapshot's marker instead (see [`Store::begin_background`]), so that
    /// commands on other snapshots run meanwhile. The process that forked it shares the
    /// lock and is exiting.
    pub fn release(&self) {
        if let Some(file) = &self.file {
            let _ = file.unlock();
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Holder {
    pid: u32,
    command: String,
    host: String,
    started: String,
}

/// Who holds the lock, from the last exclusive holder's record. Readers write none, so a
/// record of a process gone from this host means the holders are readers.
fn read_holder(path: &Path) -> String {
    let text = read_nofollow(path).unwrap_or_default();
    match toml::from_slice::<Holder>(&text) {
        Ok(h)
            if h.host != hostname()
                || Path::new("/proc").join(h.pid.to_string()).exists()
                || !Path::new("/proc/self").exists() =>
        {
            format!(
                "pid {} on {} (`{}`, since {})",
                h.pid, h.host, h.command, h.started
            )
        }
        _ => "another stagesnap process".to_string(),
    }
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown host".into())
}

/// Writes `value` to a new temporary file beside `path`, then renames it over `path`; a
/// failure leaves nothing behind.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    replace_json(path, value, true).map_err(|e| write_error(path, e))
}

/// [`write_json_atomic`] with the raw error. Unless `durable`, nothing is synced, so after a
/// crash the file may be the old one, or empty.
fn replace_json<T: Serialize>(path: &Path, value: &T, durable: bool) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    create_new(&tmp)
        .and_then(|mut f| {
            f.write_all(&bytes)?;
            if durable { f.sync_all() } else { Ok(()) }
        })
        .and_then(|()| {
            if durable {
                return fs::rename(&tmp, path);
            }
            // Renaming over a file makes ext4 write the new one's data first (auto_da_alloc),
            // which costs more than a no-change restore's scan; swapping the two does not.
            match sys::rename_exchange(&tmp, path) {
                Ok(()) => fs::remove_file(&tmp),
                Err(e) if matches!(Errno::from_io_error(&e), Some(Errno::NOENT | Errno::INVAL)) => {
                    fs::rename(&tmp, path)
                }
                Err(e) => Err(e),
            }
        })
        .inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
}

/// Opens a store file to read it, never through a symlink.
pub fn open_nofollow(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(sys::NOFOLLOW)
        .open(path)
}

pub(crate) fn read_nofollow(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    open_nofollow(path)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Creates `path` as a new file (O_EXCL, so never through a symlink). A name already there,
/// a crash's leftover or a planted link, is unlinked first: unlink never follows.
fn create_new(path: &Path) -> std::io::Result<File> {
    let open = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(sys::NOFOLLOW)
            .open(path)
    };
    match open() {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            fs::remove_file(path)?;
            open()
        }
        opened => opened,
    }
}

/// The lock file, opened without following a symlink; `create`d read-write, else read-only.
fn open_lock(path: &Path, create: bool) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(create)
        .create(create)
        .truncate(false)
        .custom_flags(sys::NOFOLLOW)
        .open(path)
}

fn lock_error(path: &Path, e: std::io::Error) -> anyhow::Error {
    if Errno::from_io_error(&e) == Some(Errno::LOOP) {
        return fail(
            Code::Failure,
            format!(
                "lock file {} is a symlink, which stagesnap never follows; remove it and try again",
                path.display()
            ),
        );
    }
    anyhow::Error::new(e).context(format!("cannot open lock file {}", path.display()))
}

/// The error for a store file that could not be written, saying what needs room when the
/// filesystem is full.
pub(crate) fn write_error(path: &Path, e: std::io::Error) -> anyhow::Error {
    if matches!(Errno::from_io_error(&e), Some(Errno::NOSPC | Errno::DQUOT)) {
        let dir = path.parent().unwrap_or(Path::new("/"));
        return fail(
            Code::Failure,
            format!(
                "cannot write {}: {e}; the store needs free space in {}. Free some there and try again",
                path.display(),
                dir.display()
            ),
        );
    }
    anyhow::Error::new(e).context(format!("cannot write {}", path.display()))
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
}

fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    match sys::rename_no_replace(from, to) {
        Err(e) if Errno::from_io_error(&e) == Some(Errno::INVAL) => {
            if to.exists() {
                return Err(std::io::Error::from(std::io::ErrorKind::AlreadyExists));
            }
            fs::rename(from, to)
        }
        other => other,
    }
}

/// Atomically swaps two directories. Filesystems without RENAME_EXCHANGE get three renames,
/// with the old snapshot parked as `<a>.old` in between, where
/// [`Store::clean_leftovers`] finds it if the process dies there.
fn exchange(a: &Path, b: &Path) -> Result<()> {
    match sys::rename_exchange(a, b) {
        Ok(()) => Ok(()),
        Err(e) if Errno::from_io_error(&e) == Some(Errno::INVAL) => {
            let mut parked = a.as_os_str().to_owned();
            parked.push(PARKED_SUFFIX);
            let parked = PathBuf::from(parked);
            fs::rename(b, &parked)?;
            fs::rename(a, b)?;
            fs::rename(&parked, a)?;
            Ok(())
        }
        Err(e) => {
            Err(e).with_context(|| format!("cannot swap {} into {}", a.display(), b.display()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["clean_state", "a", "A.b-c_9", &"x".repeat(128)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "../x",
            "a/b",
            ".hidden",
            "-x",
            "a b",
            "é",
            &"x".repeat(129),
            "..",
            ".",
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_parked_snapshot_is_put_back_and_other_leftovers_go() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let lock = store.lock("test", Duration::ZERO).unwrap();
        // A create replacing a.b died between parking the old one and moving the new one in;
        // one replacing d died after moving the new one in.
        for d in [
            ".staging-a.b-12.old",
            ".staging-a.b-12",
            ".staging-d-4.old",
            "d",
            ".trash-c-3",
        ] {
            fs::create_dir(dir.path().join(d)).unwrap();
        }
        fs::write(dir.path().join(".staging-a.b-12.old/meta.json"), "old").unwrap();
        store.clean_leftovers(&lock).unwrap();
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [".lock", "a.b", "d"]);
        assert_eq!(fs::read(dir.path().join("a.b/meta.json")).unwrap(), b"old");
    }
}
