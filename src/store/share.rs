//! Incremental local storage: a new filesystem-mode snapshot's files that are identical to
//! the previous snapshot's at the same path become hardlinks to them, so N snapshots of one
//! network cost the first plus the files that changed. Stagesnap never writes a stored file
//! in place (restores read them, deletes unlink them), so a shared inode stays as both
//! snapshots captured it, and deleting either leaves the other whole. (Reflink snapshots need
//! no linking: each is a clone of the live data, sharing its extents, and [`own_and_shared`]
//! counts those.)

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::Result;
use rustix::fs::OFlags;

use super::Snapshot;
use crate::manifest::{Allowed, Entry, Kind, Manifest};
use crate::sys::{self, DirFd};

/// Where a file is renamed into place: a name no manifest entry has.
const TMP: &[u8] = b".stagesnap-share.tmp";

/// Links the regular files of `manifest` (the snapshot being built in `payload`) that equal
/// `previous`'s entry at the same path in content digest and every attribute; returns the
/// bytes now shared. The directories whose entries were swapped get their recorded mtime
/// back, so the payload still matches its manifest. A previous snapshot that cannot be read
/// only means nothing is shared.
pub fn share_identical(
    payload: &Path,
    manifest: &Manifest,
    previous: &Snapshot,
    allowed: &Allowed,
) -> Result<u64> {
    let old = match previous.manifest(allowed) {
        Ok(old) => old,
        Err(e) => {
            tracing::warn!(previous = %previous.meta.name, error = %crate::exit::one_line(&e), "not_shared: the previous snapshot's manifest cannot be used");
            return Ok(0);
        }
    };
    let (old_root, new_root) = (DirFd::open(&previous.payload())?, DirFd::open(payload)?);
    let mut olds = old.entries.iter().peekable();
    let mut shared = 0;
    let mut touched: BTreeMap<&[u8], ()> = BTreeMap::new();
    for e in &manifest.entries {
        while olds.next_if(|o| o.path < e.path).is_some() {}
        let Some(o) = olds.peek() else { break };
        if o.path != e.path || !same_file(o, e) {
            continue;
        }
        let (dir, name) = sys::split(&e.path.0);
        if link_one(&old_root, &new_root, dir, name, o)? {
            shared += e.size;
            touched.insert(dir, ());
        }
    }
    let dirs: BTreeMap<&[u8], &Entry> = manifest
        .entries
        .iter()
        .filter(|e| e.kind == Kind::Dir)
        .map(|e| (e.path.0.as_slice(), e))
        .collect();
    for dir in touched.keys() {
        if let Some(entry) = dirs.get(dir) {
            let (parent, name) = new_root.parent_of(dir)?;
            parent.pin(name)?.set_mtime(entry.mtime_ns)?;
        }
    }
    Ok(shared)
}

/// Two manifest entries of a regular file with content that one inode can stand for.
fn same_file(a: &Entry, b: &Entry) -> bool {
    a.kind == Kind::File
        && b.kind == Kind::File
        && a.size > 0
        && a.link.is_none()
        && b.link.is_none()
        && a.blake3.is_some()
        && a.blake3 == b.blake3
        && (a.mode, a.uid, a.gid, a.mtime_ns, a.size, a.sparse)
            == (b.mode, b.uid, b.gid, b.mtime_ns, b.size, b.sparse)
        && a.xattrs == b.xattrs
}

/// Replaces `dir/name` in the new tree with a link to the old tree's, when the old file is
/// still what its manifest entry `old` says (the store is input: checked by descriptor,
/// never through a symlink) and the link made is that very inode.
fn link_one(
    old_root: &DirFd,
    new_root: &DirFd,
    dir: &[u8],
    name: &[u8],
    old: &Entry,
) -> Result<bool> {
    let Ok(old_dir) = old_root.dir(dir) else {
        return Ok(false);
    };
    let Ok(file) = old_dir.open_file(name, OFlags::RDONLY, 0) else {
        return Ok(false);
    };
    let st = file.metadata()?;
    let mtime = st.mtime() * 1_000_000_000 + st.mtime_nsec();
    if !st.is_file()
        || st.len() != old.size
        || st.mode() & 0o7777 != old.mode
        || (st.uid(), st.gid(), mtime) != (old.uid, old.gid, old.mtime_ns)
    {
        return Ok(false);
    }
    let new_dir = new_root.dir(dir)?;
    let _ = new_dir.remove(TMP, false);
    if old_dir.link(name, &new_dir, TMP).is_err() {
        return Ok(false); // another filesystem, a link limit: keep the copy
    }
    let linked = new_dir.open_file(TMP, OFlags::RDONLY, 0)?.metadata()?;
    if (linked.dev(), linked.ino()) != (st.dev(), st.ino()) {
        new_dir.remove(TMP, false)?;
        return Ok(false);
    }
    new_dir.rename(TMP, &new_dir, name)?;
    Ok(true)
}

/// A snapshot's stored bytes (allocated blocks): its own, and those it shares with other
/// snapshots or the live data, from a stat walk of its payload. A file shares its whole
/// inode when it has names outside the payload (filesystem mode's hardlinks), and the extents
/// the filesystem marks shared otherwise (reflink clones: FIEMAP_EXTENT_SHARED, which does
/// not say with what; a filesystem without extent sharing marks none).
pub fn own_and_shared(snapshot: &Snapshot) -> (u64, u64) {
    // Multiply linked inodes: names seen here, names in all, blocks.
    let mut linked: HashMap<(u64, u64), (u64, u64, u64)> = HashMap::new();
    let (mut own, mut shared) = (0, 0);
    for entry in walkdir::WalkDir::new(snapshot.payload())
        .into_iter()
        .flatten()
    {
        let Ok(st) = entry.metadata() else { continue };
        let bytes = st.blocks() * 512;
        if st.is_file() && st.nlink() > 1 {
            linked
                .entry((st.dev(), st.ino()))
                .or_insert((0, st.nlink(), bytes))
                .0 += 1;
        } else {
            let cloned = if st.is_file() && bytes > 0 {
                shared_extent_bytes(entry.path()).min(bytes)
            } else {
                0
            };
            own += bytes - cloned;
            shared += cloned;
        }
    }
    for (seen, nlink, bytes) in linked.into_values() {
        if seen < nlink {
            shared += bytes;
        } else {
            own += bytes;
        }
    }
    (own, shared)
}

/// Bytes of `path`'s extents that the filesystem marks shared with another file; 0 when it
/// cannot tell (no FIEMAP), which then counts them as the file's own.
fn shared_extent_bytes(path: &Path) -> u64 {
    crate::store::open_nofollow(path).map_or(0, |file| sys::shared_extent_bytes(&file))
}
