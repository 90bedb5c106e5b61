//! Snapshots the stage-env harness left in snapshots_dir, recognised so that `list` shows
//! them, `delete` removes them and `adopt` turns them into stagesnap snapshots.
//!
//! ```text
//! <snapshots_dir>/
//!   <name>/.snapshot_metadata   a filesystem snapshot: a Python repr (never evaluated) …
//!   <name>/<node>/…             … beside a copy of each node directory
//!   <name>.sqfs                 a squashfs snapshot: an image whose root holds the node directories
//!   <name>.metadata             its Python repr
//!   <name>.marker, .overlays/   the harness's bookkeeping
//!   <name>/.stagesnap-adopt     an adopt in progress: where it moved the node directories
//! ```
//! The store is untrusted input: nothing here follows a symlink, and the metadata is read only
//! for a creation time and a node list, by a tolerant scan that gives up rather than guesses.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::choices::ModeKind;
use crate::exit::{Code, fail};
use crate::names::validate_name;
use crate::store::{
    DIR_METADATA, IMAGE_EXT, Lock, PAYLOAD_DIR, Staging, is_legacy_dir, legacy_image, sync_dir,
};
use crate::sys;

const METADATA_EXT: &str = "metadata";
const MARKER_EXT: &str = "marker";
/// Written inside the legacy directory before its first node moves; see [`recover`].
const JOURNAL: &str = ".stagesnap-adopt";
/// Where an adopted node directory goes, below the staging snapshot's payload.
pub const DATA_DIR: &str = "data";
/// More than any real metadata file; the rest of a larger one is not read.
const METADATA_LIMIT: u64 = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `<name>/<node>/…`
    Filesystem,
    /// `<name>.sqfs`
    Squashfs,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Filesystem => "filesystem",
            Format::Squashfs => "squashfs",
        }
    }

    /// The stagesnap mode an adopted snapshot of this format has.
    pub fn mode(self) -> ModeKind {
        match self {
            Format::Filesystem => ModeKind::Filesystem,
            Format::Squashfs => ModeKind::Squashfs,
        }
    }
}

/// A snapshot the harness left.
#[derive(Debug, Clone)]
pub struct Legacy {
    pub name: String,
    pub format: Format,
    /// `<name>/` or `<name>.sqfs`.
    pub path: PathBuf,
    /// The harness's metadata file of this snapshot (present or not).
    metadata: PathBuf,
}

/// What `list` says about a legacy snapshot.
#[derive(Debug, Clone)]
pub struct Summary {
    /// As they will be once adopted: `data/node1`, ….
    pub nodes: Vec<String>,
    /// Unknown for an image (only its metadata could tell, and that is not trusted for sizes).
    pub files: Option<u64>,
    pub bytes: Option<u64>,
    pub stored_bytes: u64,
    /// See [`Legacy::created`].
    pub created: jiff::Timestamp,
    /// The harness's files of this snapshot, relative to snapshots_dir (a directory ends in `/`).
    pub paths: Vec<String>,
}

fn sibling(store: &Path, name: &str, ext: &str) -> PathBuf {
    store.join(format!("{name}.{ext}"))
}

/// The legacy snapshots named `name` (both formats, in the odd case that both exist).
pub fn find(store: &Path, name: &str) -> Vec<Legacy> {
    let mut found = Vec::new();
    let dir = store.join(name);
    if is_legacy_dir(&dir) {
        found.push(Legacy {
            name: name.to_string(),
            format: Format::Filesystem,
            metadata: dir.join(DIR_METADATA),
            path: dir,
        });
    }
    if let Some(image) = legacy_image(store, name) {
        found.push(Legacy {
            name: name.to_string(),
            format: Format::Squashfs,
            path: image,
            metadata: sibling(store, name, METADATA_EXT),
        });
    }
    found
}

/// Every legacy snapshot in the store, by name.
pub fn scan(store: &Path) -> Result<Vec<Legacy>> {
    let rd = match fs::read_dir(store) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot read snapshots_dir {}", store.display()));
        }
    };
    let mut names = std::collections::BTreeSet::new();
    for entry in rd {
        let file = entry?.file_name().to_string_lossy().into_owned();
        let name = file.strip_suffix(&format!(".{IMAGE_EXT}")).unwrap_or(&file);
        if validate_name(name).is_ok() {
            names.insert(name.to_string());
        }
    }
    Ok(names.iter().flat_map(|n| find(store, n)).collect())
}

/// Removes the harness's files of `name` beside the snapshot directories (the image first,
/// which makes it a snapshot, then its metadata and marker), never following a symlink.
/// Returns whether there was any. A legacy directory goes with [`crate::store::Store::delete`].
pub fn remove_files(store: &Path, name: &str, _lock: &Lock) -> Result<bool> {
    let mut removed = false;
    for ext in [IMAGE_EXT, METADATA_EXT, MARKER_EXT] {
        let path = sibling(store, name, ext);
        match fs::remove_file(&path) {
            Ok(()) => removed = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("cannot remove {}", path.display()));
            }
        }
    }
    if removed {
        sync_dir(store)?;
    }
    Ok(removed)
}

impl Legacy {
    pub fn summary(&self, store: &Path) -> Result<Summary> {
        let mut paths = Vec::new();
        let (nodes, files, bytes, stored_bytes) = match self.format {
            Format::Filesystem => {
                paths.push(format!("{}/", self.name));
                let totals = crate::tree::totals(&self.path)?;
                (
                    node_names(&self.path),
                    Some(totals.files),
                    Some(totals.bytes),
                    totals.allocated,
                )
            }
            Format::Squashfs => {
                paths.push(format!("{}.{IMAGE_EXT}", self.name));
                let nodes = read_metadata(&self.metadata)
                    .as_deref()
                    .map(nodes_field)
                    .unwrap_or_default();
                let size = self.path.symlink_metadata().map_or(0, |m| m.len());
                (nodes, None, None, size)
            }
        };
        for ext in [METADATA_EXT, MARKER_EXT] {
            let file = format!("{}.{ext}", self.name);
            if store.join(&file).symlink_metadata().is_ok() {
                paths.push(file);
            }
        }
        Ok(Summary {
            nodes: nodes.iter().map(|n| format!("{DATA_DIR}/{n}")).collect(),
            files,
            bytes,
            stored_bytes,
            created: self.created(),
            paths,
        })
    }

    /// When the snapshot was made: what the harness's metadata says, else the metadata's
    /// (or the snapshot's) mtime.
    pub fn created(&self) -> jiff::Timestamp {
        read_metadata(&self.metadata)
            .as_deref()
            .and_then(created_at)
            .or_else(|| mtime(&self.metadata))
            .or_else(|| mtime(&self.path))
            .unwrap_or_else(jiff::Timestamp::now)
    }

    /// Fails (exit 1, naming the path) unless the snapshot itself is no symlink: an adopt
    /// would read or move what the link points at, outside the store.
    pub fn check_not_linked(&self) -> Result<()> {
        if self
            .path
            .symlink_metadata()
            .is_ok_and(|m| m.file_type().is_symlink())
        {
            return Err(fail(
                Code::Failure,
                format!(
                    "cannot adopt {}: {} is a symlink, and stagesnap never follows links in the store; put the file itself there, or delete the snapshot",
                    self.name,
                    self.path.display()
                ),
            ));
        }
        Ok(())
    }
}

/// The plain directories in `dir` with valid names, sorted naturally (node2 before node10).
fn node_names(dir: &Path) -> Vec<String> {
    let mut nodes: Vec<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| validate_name(n).is_ok())
        .collect();
    nodes.sort_by_key(|n| crate::tree::natural_key(n));
    nodes
}

/// The node directories in `dir` (a legacy snapshot directory, or the root of an extracted
/// legacy image), checked: every entry must be a plain directory, or one of `allowed`.
/// Fails (exit 1) naming the first entry that is a symlink or anything else, or when there
/// is no node directory at all. `shown` names a path of `dir` for the messages. Checked
/// before an adopt moves anything.
pub fn nodes_in(
    dir: &Path,
    allowed: &[&str],
    shown: &dyn Fn(&Path) -> String,
) -> Result<Vec<String>> {
    let refuse = |path: &Path, why: &str| {
        fail(
            Code::Failure,
            format!(
                "{} {why}; a stage-env snapshot holds only node directories{}. Move it out of the snapshot, or delete the snapshot",
                shown(path),
                if allowed.is_empty() {
                    String::new()
                } else {
                    format!(" and {}", allowed.join(", "))
                }
            ),
        )
    };
    let rd = fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for entry in rd {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        let file = entry.file_name().to_string_lossy().into_owned();
        let kind = entry
            .file_type()
            .with_context(|| format!("cannot stat {}", entry.path().display()))?;
        if allowed.contains(&file.as_str()) {
            continue;
        }
        if kind.is_symlink() {
            return Err(refuse(
                &entry.path(),
                "is a symlink, and stagesnap never follows links in the store",
            ));
        }
        if !kind.is_dir() {
            return Err(refuse(&entry.path(), "is not a directory"));
        }
        if validate_name(&file).is_err() {
            return Err(refuse(&entry.path(), "has a name no node directory has"));
        }
    }
    let nodes = node_names(dir);
    if nodes.is_empty() {
        return Err(fail(
            Code::Failure,
            format!(
                "{} holds no node directory, so there is nothing to adopt; delete the snapshot",
                shown(dir)
            ),
        ));
    }
    Ok(nodes)
}

/// Node directories of a legacy filesystem snapshot moved into a staging snapshot
/// (`<staging>/payload/data/<node>`), by rename: nothing is copied. Until the snapshot is
/// committed, [`Moved::put_back`] (or, after a crash, [`recover`]) moves them back.
pub struct Moved {
    legacy: PathBuf,
    staging: PathBuf,
    /// Those moved so far.
    nodes: Vec<String>,
    mtime: [i64; 2],
}

#[derive(Serialize, Deserialize)]
struct Record {
    /// The staging directory's name in snapshots_dir.
    staging: String,
    nodes: Vec<String>,
    /// The legacy directory's mtime (seconds, nanoseconds), which the moves change.
    mtime: [i64; 2],
}

/// Moves the `nodes` of the legacy directory `legacy` into `staging`'s payload, after
/// recording durably (in the legacy directory, so the record leaves with it once the adopted
/// snapshot replaces it) where they go. A failure half way moves back those already moved.
pub fn move_nodes(legacy: &Path, nodes: &[String], staging: &Staging) -> Result<Moved> {
    let before = legacy
        .symlink_metadata()
        .with_context(|| format!("cannot stat {}", legacy.display()))?;
    let record = Record {
        staging: staging
            .dir()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        nodes: nodes.to_vec(),
        mtime: [before.mtime(), before.mtime_nsec()],
    };
    let journal = legacy.join(JOURNAL);
    let mut f = File::create_new(&journal)
        .with_context(|| format!("cannot create {}", journal.display()))?;
    f.write_all(&serde_json::to_vec(&record)?)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", journal.display()))?;
    sync_dir(legacy)?;
    let into = staging.payload().join(DATA_DIR);
    fs::create_dir(&into).with_context(|| format!("cannot create {}", into.display()))?;
    let mut moved = Moved {
        legacy: legacy.to_path_buf(),
        staging: staging.dir().to_path_buf(),
        nodes: Vec::new(),
        mtime: record.mtime,
    };
    for node in nodes {
        let (from, to) = (legacy.join(node), into.join(node));
        if let Err(e) = fs::rename(&from, &to) {
            let err = anyhow::Error::new(e).context(format!(
                "cannot move {} to {}",
                from.display(),
                to.display()
            ));
            return Err(match moved.put_back() {
                Ok(()) => err,
                Err(back) => err.context(format!(
                    "and moving the others back failed too ({})",
                    crate::exit::one_line(&back)
                )),
            });
        }
        moved.nodes.push(node.clone());
    }
    sync_dir(&into)?;
    sync_dir(legacy)?;
    Ok(moved)
}

/// Whether node directories of the legacy directory `legacy` may be elsewhere: an adopt
/// moved them out and has not (yet) moved them back.
pub fn moved_out(legacy: &Path) -> bool {
    legacy.join(JOURNAL).symlink_metadata().is_ok()
}

impl Moved {
    /// Moves the node directories back where they were and removes the record: the legacy
    /// snapshot is then as it was (its directory's ctime aside).
    pub fn put_back(&self) -> Result<()> {
        put_back(&self.legacy, &self.staging, &self.nodes, self.mtime)
    }
}

fn put_back(legacy: &Path, staging: &Path, nodes: &[String], mtime: [i64; 2]) -> Result<()> {
    let moved = staging.join(PAYLOAD_DIR).join(DATA_DIR);
    for node in nodes {
        let (from, to) = (moved.join(node), legacy.join(node));
        // Each check makes a second pass (after a crash in the first) a no-op for the nodes
        // already back.
        if to.symlink_metadata().is_err() && from.symlink_metadata().is_ok() {
            fs::rename(&from, &to).with_context(|| {
                format!("cannot move {} back to {}", from.display(), to.display())
            })?;
        }
    }
    sync_dir(legacy)?;
    let journal = legacy.join(JOURNAL);
    fs::remove_file(&journal).with_context(|| format!("cannot remove {}", journal.display()))?;
    if let (Ok(sec), Ok(nsec)) = (u64::try_from(mtime[0]), u32::try_from(mtime[1])) {
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(sys::NOFOLLOW | sys::DIRECTORY)
            .open(legacy)
            .and_then(|dir| {
                dir.set_modified(std::time::UNIX_EPOCH + std::time::Duration::new(sec, nsec))
            })
            .with_context(|| format!("cannot set the mtime of {} back", legacy.display()))?;
    }
    sync_dir(legacy)
}

/// Puts back the node directories of an adopt that died before its snapshot was committed
/// (SIGKILL, power loss), as its record says. Runs under the lock (no adopt is running
/// then), before the staging directories that hold them are removed as leftovers.
pub fn recover(store: &Path, _lock: &Lock) -> Result<()> {
    let Ok(rd) = fs::read_dir(store) else {
        return Ok(());
    };
    for entry in rd.flatten() {
        let legacy = entry.path();
        let journal = legacy.join(JOURNAL);
        // Dot directories too: a create on a filesystem without RENAME_EXCHANGE may have
        // parked the legacy directory as `.staging-<name>-<pid>.old` (see `store::exchange`).
        if !entry.file_type().is_ok_and(|t| t.is_dir()) || journal.symlink_metadata().is_err() {
            continue;
        }
        let record: Record = read_limited(&journal)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .filter(|r: &Record| {
                r.staging.starts_with(".staging-")
                    && !r.staging.contains('/')
                    && r.nodes.iter().all(|n| validate_name(n).is_ok())
            })
            .ok_or_else(|| {
                fail(
                    Code::Failure,
                    format!(
                        "{} cannot be read, so an interrupted adopt cannot be undone; its node directories may be in {}/.staging-*/payload/data/: move them back into {} by hand, then remove the file",
                        journal.display(),
                        store.display(),
                        legacy.display()
                    ),
                )
            })?;
        put_back(
            &legacy,
            &store.join(&record.staging),
            &record.nodes,
            record.mtime,
        )?;
        tracing::warn!(path = %legacy.display(), "adopt_undone: an adopt of this stage-env snapshot was interrupted; its node directories are back");
    }
    Ok(())
}

/// A file's first bytes (up to [`METADATA_LIMIT`]), never through a symlink.
fn read_limited(path: &Path) -> Result<Vec<u8>> {
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(sys::NOFOLLOW | sys::NONBLOCK)
        .open(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if !f.metadata()?.is_file() {
        anyhow::bail!("{} is not a file", path.display());
    }
    let mut bytes = Vec::new();
    f.take(METADATA_LIMIT).read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn read_metadata(path: &Path) -> Option<String> {
    read_limited(path)
        .ok()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn mtime(path: &Path) -> Option<jiff::Timestamp> {
    let modified = path.symlink_metadata().ok()?.modified().ok()?;
    jiff::Timestamp::try_from(modified).ok()
}

/// The raw text of `key`'s value in a Python dict repr (`{'key': value, …}`): a quoted
/// string without its quotes, a bracketed list with its brackets, a call up to its closing
/// parenthesis, else up to the next `,` or `}`.
fn field<'a>(repr: &'a str, key: &str) -> Option<&'a str> {
    let at = [format!("'{key}'"), format!("\"{key}\"")]
        .iter()
        .filter_map(|k| repr.find(k.as_str()).map(|i| i + k.len()))
        .min()?;
    let rest = repr[at..].trim_start().strip_prefix(':')?.trim_start();
    let first = rest.chars().next()?;
    match first {
        '\'' | '"' => rest[1..].find(first).map(|end| &rest[1..=end]),
        '[' => rest.find(']').map(|end| &rest[..=end]),
        _ => {
            let end = match rest.find('(') {
                Some(open)
                    if rest[..open]
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_') =>
                {
                    rest.find(')')? + 1
                }
                _ => rest.find([',', '}']).unwrap_or(rest.len()),
            };
            Some(rest[..end].trim())
        }
    }
}

/// When the snapshot was made, from `created_at` (or `created`, `timestamp`): an ISO 8601
/// time (one without an offset is local time, as Python's `datetime.now()` writes it), a
/// `datetime.datetime(…)` repr, or seconds since the epoch. None when it says nothing usable.
fn created_at(repr: &str) -> Option<jiff::Timestamp> {
    let value = ["created_at", "created", "timestamp"]
        .iter()
        .find_map(|k| field(repr, k))?;
    if let Some(args) = value
        .strip_prefix("datetime.datetime(")
        .and_then(|v| v.strip_suffix(')'))
    {
        let n: Vec<i64> = args
            .split(',')
            .map(|a| a.trim().parse().ok())
            .collect::<Option<_>>()?;
        let part = |i: usize| n.get(i).copied().unwrap_or(0);
        let civil = jiff::civil::DateTime::new(
            i16::try_from(part(0)).ok()?,
            i8::try_from(part(1)).ok()?,
            i8::try_from(part(2)).ok()?,
            i8::try_from(part(3)).ok()?,
            i8::try_from(part(4)).ok()?,
            i8::try_from(part(5)).ok()?,
            i32::try_from(part(6) * 1000).ok()?,
        )
        .ok()?;
        return local(civil);
    }
    if let Ok(secs) = value.parse::<f64>() {
        return jiff::Timestamp::from_second(secs as i64).ok();
    }
    let iso = value.replacen(' ', "T", 1);
    iso.parse::<jiff::Timestamp>()
        .ok()
        .or_else(|| local(iso.parse().ok()?))
}

fn local(civil: jiff::civil::DateTime) -> Option<jiff::Timestamp> {
    jiff::tz::TimeZone::system().to_timestamp(civil).ok()
}

/// The node names in the metadata's `nodes` list, those that are plain names.
fn nodes_field(repr: &str) -> Vec<String> {
    let Some(list) = field(repr, "nodes") else {
        return vec![];
    };
    let mut nodes: Vec<String> = list
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(|n| n.trim().trim_matches(['\'', '"']).to_string())
        .filter(|n| validate_name(n).is_ok())
        .collect();
    nodes.sort_by_key(|n| crate::tree::natural_key(n));
    nodes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_fields() {
        let repr = "{'name': 'old_state', 'created_at': '2025-01-02T03:04:05+00:00', 'mode': 'filesystem', 'nodes': ['node10', 'node2', '../x']}";
        assert_eq!(
            created_at(repr),
            Some("2025-01-02T03:04:05Z".parse().unwrap())
        );
        assert_eq!(nodes_field(repr), ["node2", "node10"]);
        let epoch = "{\"timestamp\": 1735787045.5, \"nodes\": []}";
        assert_eq!(
            created_at(epoch),
            Some(jiff::Timestamp::from_second(1735787045).unwrap())
        );
        assert!(nodes_field(epoch).is_empty());
        let local = "{'created_at': '2025-01-02 03:04:05.123456'}";
        let call = "{'created': datetime.datetime(2025, 1, 2, 3, 4, 5, 123456), 'x': 1}";
        assert!(created_at(local).is_some());
        assert_eq!(created_at(local), created_at(call));
        for junk in [
            "",
            "{",
            "{'created_at': }",
            "{'created_at': 'tomorrow'}",
            "__import__('os')",
            "{'created_at': '2025",
        ] {
            assert_eq!(created_at(junk), None, "{junk}");
        }
    }
}
