//! Remote prune. Snapshots no rule keeps go at once; packs go in two steps, so that a push in
//! progress never loses a pack it counts on: a prune *condemns* the packs no remaining snapshot
//! needs (and repacks those mostly unneeded, copying their needed pieces into new packs), and
//! from then on pushes reuse none of their pieces; a prune at least [`PRUNE_GRACE`] later
//! removes the condemned packs that still hold nothing a snapshot needs elsewhere. A push that
//! read the indexes before the condemnation has published its snapshot by then (pushes take
//! far less than the grace period), so the second prune sees what it refers to.

use std::collections::{HashMap, HashSet};

use anyhow::Result;
use serde::Serialize;

use super::format::{
    self, CONDEMNED, CondemnedObject, Digest, INDEX, IndexObject, PACKS, PackEntry, Packer,
    SNAPSHOTS, SnapshotObject,
};
use super::{Catalog, Remote, bad_object, list};

/// How long a condemned pack stays before a prune removes it, and how old any pack must be
/// before a prune condemns it (a push in progress uploads its packs before the index and the
/// snapshot that refer to them).
pub const PRUNE_GRACE: std::time::Duration = std::time::Duration::from_secs(60 * 60);

/// A pack whose pieces no snapshot needs make at least this share of its stored bytes is
/// repacked: the pieces still needed are copied into a new pack, and it is condemned.
const REPACK_UNUSED: f64 = 0.5;

/// What a remote prune did (or would do).
#[derive(Debug, Serialize)]
pub struct Pruned {
    pub removed: Vec<String>,
    pub kept: Vec<String>,
    /// Packs removed now (condemned by a prune at least the grace period ago, or left by a
    /// push that died before its index) and their bytes.
    pub packs_removed: u64,
    pub bytes_freed: u64,
    /// Packs condemned now, which a prune after the grace period removes, and their bytes.
    pub packs_condemned: u64,
    pub bytes_condemned: u64,
    /// Of those, packs whose needed pieces were first copied into new packs (bytes written).
    pub packs_repacked: u64,
    pub bytes_repacked: u64,
    pub dry_run: bool,
}

/// Keeps the newest `keep` snapshots on the remote (and the pinned ones, and `always`) and
/// removes the rest; then removes the packs condemned at least [`PRUNE_GRACE`] ago that hold
/// no piece a remaining snapshot needs from them, and the packs no index lists; then condemns
/// the packs older than the grace period that no remaining snapshot needs, repacking first
/// those mostly unneeded.
pub fn prune(remote: &Remote, keep: usize, always: &str, dry_run: bool) -> Result<Pruned> {
    let mut pruned = Pruned {
        removed: Vec::new(),
        kept: Vec::new(),
        packs_removed: 0,
        bytes_freed: 0,
        packs_condemned: 0,
        bytes_condemned: 0,
        packs_repacked: 0,
        bytes_repacked: 0,
        dry_run,
    };
    for snapshot in list(remote)? {
        if snapshot.pinned || snapshot.name == always || pruned.kept.len() < keep {
            pruned.kept.push(snapshot.name);
        } else {
            pruned.removed.push(snapshot.name);
        }
    }
    if !dry_run {
        for name in &pruned.removed {
            remote.delete(&remote.key(SNAPSHOTS, name))?;
        }
    }
    let referenced = referenced(remote, &pruned.removed)?;
    let catalog = Catalog::load(remote)?;
    let now = jiff::Timestamp::now().as_second();
    let grace = PRUNE_GRACE.as_secs() as i64;
    // Every pack there: when it was written and its size.
    let packs: HashMap<String, (i64, u64)> = remote
        .list(PACKS)?
        .into_iter()
        .map(|o| {
            (
                Remote::base_name(&o.location),
                (o.last_modified.timestamp(), o.size),
            )
        })
        .collect();
    let size = |id: &str| packs.get(id).map_or(0, |(_, size)| *size);
    let entries: HashMap<&str, &PackEntry> = catalog
        .indexes
        .values()
        .flat_map(|i| &i.packs)
        .filter(|p| packs.contains_key(&p.id))
        .map(|p| (p.id.as_str(), p))
        .collect();
    let usage: HashMap<&str, Usage> = entries
        .iter()
        .map(|(id, pack)| (*id, Usage::of(pack, &referenced)))
        .collect();
    // For each needed piece, how many packs that are not condemned hold it.
    let mut holders: HashMap<Digest, u32> = HashMap::new();
    for (id, used) in &usage {
        if !catalog.condemned_packs.contains(*id) {
            for d in &used.needed {
                *holders.entry(*d).or_default() += 1;
            }
        }
    }

    // Condemned long enough: removed unless a snapshot needs a piece only they hold (a push
    // that overlapped the condemnation used it); those go back to being ordinary packs.
    let due: Vec<&super::Condemned> = catalog
        .condemned
        .iter()
        .filter(|c| now - c.written >= grace)
        .collect();
    let mut doomed: HashSet<String> = HashSet::new();
    for id in due.iter().flat_map(|c| &c.packs) {
        let Some(used) = usage.get(id.as_str()) else {
            continue; // removed already
        };
        if used
            .needed
            .iter()
            .all(|d| holders.get(d).is_some_and(|&n| n > 0))
        {
            doomed.insert(id.clone());
        }
    }
    // What a push that died before its index left.
    let listed: HashSet<&str> = catalog
        .indexes
        .values()
        .flat_map(|i| i.packs.iter().map(|p| p.id.as_str()))
        .collect();
    let orphans: Vec<&String> = packs
        .iter()
        .filter(|(id, (written, _))| !listed.contains(id.as_str()) && now - written >= grace)
        .map(|(id, _)| id)
        .collect();
    for id in doomed.iter().chain(orphans.iter().copied()) {
        pruned.packs_removed += 1;
        pruned.bytes_freed += size(id);
    }

    // Old packs no snapshot needs, or needs little of, are condemned now. In a fixed order,
    // so that of two packs holding the same needed piece only one is.
    let mut candidates: Vec<&&PackEntry> = entries
        .values()
        .filter(|p| {
            !catalog.condemned_packs.contains(&p.id)
                && packs
                    .get(&p.id)
                    .is_some_and(|(written, _)| now - written >= grace)
        })
        .collect();
    candidates.sort_by(|a, b| a.id.cmp(&b.id));
    let mut condemned = Vec::new();
    let mut repacker = Repacker::default();
    for pack in candidates {
        let used = &usage[pack.id.as_str()];
        let only_here: Vec<Digest> = used
            .needed
            .iter()
            .copied()
            .filter(|d| holders.get(d).is_some_and(|&n| n <= 1))
            .collect();
        if !only_here.is_empty() {
            let unused = used.stored - used.needed_stored;
            if used.stored == 0 || (unused as f64) < REPACK_UNUSED * used.stored as f64 {
                continue;
            }
            pruned.packs_repacked += 1;
            if !dry_run {
                repacker.copy(remote, pack, &only_here)?;
            }
        }
        for d in &used.needed {
            if let Some(n) = holders.get_mut(d) {
                *n = n.saturating_sub(1);
            }
        }
        // The copies hold them now.
        for d in only_here {
            *holders.entry(d).or_default() += 1;
        }
        pruned.packs_condemned += 1;
        pruned.bytes_condemned += size(&pack.id);
        condemned.push(pack.id.clone());
    }
    if dry_run {
        return Ok(pruned);
    }
    // The copies, then their index, then the condemnation: a reader always finds every
    // needed piece in a pack no prune will remove without looking again.
    pruned.bytes_repacked = repacker.finish(remote)?;
    if !condemned.is_empty() {
        let bytes = format::encode(&CondemnedObject {
            format: format::FORMAT,
            packs: condemned,
        });
        let id = blake3::hash(&bytes).to_hex().to_string();
        remote.put(&remote.key(CONDEMNED, &id), bytes)?;
    }
    for (name, index) in &catalog.indexes {
        if !index.packs.iter().any(|p| doomed.contains(&p.id)) {
            continue;
        }
        // The index without them goes in before the old one goes.
        let stay: Vec<PackEntry> = index
            .packs
            .iter()
            .filter(|p| !doomed.contains(&p.id))
            .cloned()
            .collect();
        if !stay.is_empty() {
            put_index(remote, stay)?;
        }
        remote.delete(&remote.key(INDEX, name))?;
    }
    for id in doomed.iter().chain(orphans.iter().copied()) {
        remote.delete(&remote.key(PACKS, id))?;
    }
    for c in due {
        remote.delete(&remote.key(CONDEMNED, &c.name))?;
    }
    Ok(pruned)
}

/// What of one pack the remaining snapshots need.
struct Usage {
    /// Its pieces that a snapshot refers to.
    needed: Vec<Digest>,
    /// Its stored bytes, and those of the needed pieces.
    stored: u64,
    needed_stored: u64,
}

impl Usage {
    fn of(pack: &PackEntry, referenced: &HashSet<Digest>) -> Usage {
        let mut usage = Usage {
            needed: Vec::new(),
            stored: 0,
            needed_stored: 0,
        };
        for (digest, _, stored, _) in &pack.pieces {
            usage.stored += u64::from(*stored);
            if let Some(d) = format::parse_digest(digest).filter(|d| referenced.contains(d)) {
                usage.needed.push(d);
                usage.needed_stored += u64::from(*stored);
            }
        }
        usage
    }
}

/// The pieces the remote's snapshots refer to, except those of `removed` (a dry run's).
fn referenced(remote: &Remote, removed: &[String]) -> Result<HashSet<Digest>> {
    let mut referenced = HashSet::new();
    for object in remote.list(SNAPSHOTS)? {
        if removed.contains(&Remote::base_name(&object.location)) {
            continue;
        }
        let Some(bytes) = remote.get(&object.location)? else {
            continue;
        };
        let key = object.location.to_string();
        let object: SnapshotObject =
            format::decode(&bytes).map_err(|why| bad_object(remote, &key, &why))?;
        for c in &object.content {
            referenced.extend(c.digests().unwrap_or_default());
        }
    }
    Ok(referenced)
}

/// Writes an index of `packs`.
fn put_index(remote: &Remote, packs: Vec<PackEntry>) -> Result<()> {
    let bytes = format::encode(&IndexObject {
        format: format::FORMAT,
        packs,
    });
    let id = blake3::hash(&bytes).to_hex().to_string();
    remote.put(&remote.key(INDEX, &id), bytes)
}

/// Copies needed pieces out of packs being condemned into new packs.
#[derive(Default)]
struct Repacker {
    packer: Packer,
    written: Vec<PackEntry>,
    bytes: u64,
}

impl Repacker {
    /// Copies `pieces` of `pack`, each checked against its digest.
    fn copy(&mut self, remote: &Remote, pack: &PackEntry, pieces: &[Digest]) -> Result<()> {
        let key = remote.key(PACKS, &pack.id);
        let Some(stored) = remote.get(&key)? else {
            return Err(bad_object(
                remote,
                key.as_ref(),
                "is listed by an index but gone",
            ));
        };
        let wanted: HashSet<&Digest> = pieces.iter().collect();
        for (digest, offset, size_stored, size) in &pack.pieces {
            let Some(d) = format::parse_digest(digest).filter(|d| wanted.contains(d)) else {
                continue;
            };
            let location = format::Location {
                pack: pack.id.clone(),
                offset: *offset,
                stored: *size_stored,
                size: *size,
            };
            let bytes = usize::try_from(*offset)
                .ok()
                .and_then(|at| stored.get(at..at + *size_stored as usize))
                .ok_or_else(|| {
                    bad_object(remote, key.as_ref(), "is shorter than its index says")
                })?;
            let plain = format::unpack(bytes, &location, &d)
                .map_err(|why| bad_object(remote, key.as_ref(), &why))?;
            self.packer.add(d, bytes, plain.len());
            if self.packer.full() {
                self.flush(remote)?;
            }
        }
        Ok(())
    }

    fn flush(&mut self, remote: &Remote) -> Result<()> {
        let (bytes, entry) = std::mem::take(&mut self.packer).finish();
        self.bytes += bytes.len() as u64;
        remote.put(&remote.key(PACKS, &entry.id), bytes)?;
        self.written.push(entry);
        Ok(())
    }

    /// Uploads the last pack and the index of the new ones; the bytes written.
    fn finish(mut self, remote: &Remote) -> Result<u64> {
        if !self.packer.pieces.is_empty() {
            self.flush(remote)?;
        }
        if !self.written.is_empty() {
            put_index(remote, self.written)?;
        }
        Ok(self.bytes)
    }
}
