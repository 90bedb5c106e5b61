//! A shared snapshot store on an object store (S3 or a directory): push, pull, list,
//! delete and prune there. Snapshots travel as content-addressed pieces packed together
//! (see [`format`]), so what a remote or this machine already holds never moves again.
//! The async client and its runtime stay inside [`client`]; every call here blocks.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use crate::choices::ModeKind;
use crate::delta::{Content as Copying, Delta, Source};
use crate::exit::{Code, fail};
use crate::manifest::{Allowed, Kind, Manifest};
use crate::store::{Lock, Meta, Snapshot, Store};

mod client;
mod format;
mod local;
mod prune;

pub use client::Client as Remote;
use format::{
    CONDEMNED, CondemnedObject, Content, Digest, INDEX, IndexObject, PACKS, PIECE, Packer, Pieces,
    SNAPSHOTS, SnapshotObject,
};
pub use prune::{Pruned, prune};

/// Told how much of a transfer is done: (done, total), in bytes read (push) or packs
/// downloaded (pull); the commands draw it.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);

/// The environment a pull brings a snapshot into.
pub struct Here<'a> {
    /// What its configuration lets a snapshot hold.
    pub allowed: Allowed<'a>,
    pub cache_dir: &'a Path,
    /// The configured mode, which the pulled snapshot takes.
    pub mode: ModeKind,
    /// Makes the staging payload (its second argument, empty) the configured mode's snapshot
    /// of the pulled tree of files (its first), returning meta.json's mode details.
    pub take_tree: &'a dyn Fn(&Path, &Path) -> Result<serde_json::Value>,
}

/// What a push did.
#[derive(Debug, Serialize)]
pub struct Pushed {
    pub name: String,
    pub remote: String,
    /// Pieces of the snapshot's files, and those the remote did not have.
    pub pieces: u64,
    pub pieces_uploaded: u64,
    /// Bytes of the files; those read (the rest the manifests showed unchanged since a
    /// snapshot pushed or pulled before); bytes sent (compressed packs, index and snapshot).
    pub bytes: u64,
    pub bytes_read: u64,
    pub bytes_uploaded: u64,
    pub packs_uploaded: u64,
    pub seconds: f64,
}

/// What a pull did.
#[derive(Debug, Serialize)]
pub struct Pulled {
    pub name: String,
    pub remote: String,
    pub pieces: u64,
    /// Pieces this machine held already (in a snapshot, or from an interrupted pull).
    pub pieces_local: u64,
    pub packs_downloaded: u64,
    pub bytes: u64,
    pub bytes_downloaded: u64,
    /// The local snapshot was that version already: nothing moved.
    pub up_to_date: bool,
    pub seconds: f64,
}

/// One snapshot on the remote.
#[derive(Debug, Serialize)]
pub struct Listed {
    pub name: String,
    pub created_at: String,
    pub mode: ModeKind,
    pub files: u64,
    pub bytes: u64,
    pub pinned: bool,
}

/// What the remote's indexes and condemned objects say.
struct Catalog {
    /// Every piece the indexes list, at a location outside the condemned packs where there
    /// is one.
    pieces: Pieces,
    /// The indexes by name.
    indexes: HashMap<String, IndexObject>,
    condemned: Vec<Condemned>,
    /// Every pack the condemned objects name.
    condemned_packs: HashSet<String>,
}

/// One `condemned/` object: its name, when it was written (Unix seconds, the remote's
/// clock) and the packs it names.
struct Condemned {
    name: String,
    written: i64,
    packs: Vec<String>,
}

impl Catalog {
    fn load(remote: &Remote) -> Result<Catalog> {
        let mut condemned = Vec::new();
        let mut condemned_packs = HashSet::new();
        for object in remote.list(CONDEMNED)? {
            let Some(bytes) = remote.get(&object.location)? else {
                continue; // swept by a prune meanwhile
            };
            let key = object.location.to_string();
            let listed: CondemnedObject =
                format::decode(&bytes).map_err(|why| bad_object(remote, &key, &why))?;
            if let Some(bad) = listed
                .packs
                .iter()
                .find(|p| format::parse_digest(p).is_none())
            {
                return Err(bad_object(
                    remote,
                    &key,
                    &format!("names pack {bad:?}, not a digest"),
                ));
            }
            condemned_packs.extend(listed.packs.iter().cloned());
            condemned.push(Condemned {
                name: Remote::base_name(&object.location),
                written: object.last_modified.timestamp(),
                packs: listed.packs,
            });
        }
        let mut pieces = Pieces::new();
        let mut indexes = HashMap::new();
        for object in remote.list(INDEX)? {
            let name = Remote::base_name(&object.location);
            let Some(bytes) = remote.get(&object.location)? else {
                continue; // removed by a prune meanwhile
            };
            let index: IndexObject = format::decode(&bytes)
                .and_then(|i: IndexObject| i.add_to(&mut pieces, &condemned_packs).map(|()| i))
                .map_err(|why| bad_object(remote, object.location.as_ref(), &why))?;
            indexes.insert(name, index);
        }
        Ok(Catalog {
            pieces,
            indexes,
            condemned,
            condemned_packs,
        })
    }

    /// The pieces a push may count on: none of a condemned pack, which a prune removes once
    /// the grace period is over whatever a push in progress then means to refer to.
    fn reusable(&self) -> Pieces {
        self.pieces
            .iter()
            .filter(|(_, l)| !self.condemned_packs.contains(&l.pack))
            .map(|(d, l)| (*d, l.clone()))
            .collect()
    }
}

fn bad_object(remote: &Remote, key: &str, why: &str) -> anyhow::Error {
    fail(
        Code::Failure,
        format!(
            "bad object on {}: {key} {why}; nothing was changed",
            remote.url
        ),
    )
}

/// Pushes `snapshot` of `store`, reading its files from `source`, except the 1 MiB regions
/// that the manifests show unchanged since a snapshot pushed or pulled before (their pieces
/// are known): the pieces the remote lacks, packed,
/// then an index of them, then the snapshot object, written last and only if the remote's
/// version of that name is still the one seen at the start (else another push won, exit 1).
/// A failure before that last write leaves the remote's version as it was.
pub fn push(
    store: &Store,
    snapshot: &Snapshot,
    allowed: &Allowed,
    source: &dyn Source,
    remote: &Remote,
    progress: Progress,
) -> Result<Pushed> {
    let started = Instant::now();
    let name = &snapshot.meta.name;
    let manifest = snapshot.manifest_with_pieces(allowed)?;
    let key = remote.key(SNAPSHOTS, name);
    let seen = remote.version(&key)?;
    let known = Catalog::load(remote)?.reusable();
    let previous = local::Previous::find(store, snapshot, allowed);
    let mut pushed = Pushed {
        name: name.clone(),
        remote: remote.url.to_string(),
        pieces: 0,
        pieces_uploaded: 0,
        bytes: 0,
        bytes_read: 0,
        bytes_uploaded: 0,
        packs_uploaded: 0,
        seconds: 0.0,
    };
    let mut content = Vec::new();
    let mut packs = Vec::new();
    let mut reused = HashSet::new();
    let (send, receive) = std::sync::mpsc::sync_channel::<(Vec<u8>, String)>(client::PARALLEL);
    let receive = std::sync::Mutex::new(receive);
    std::thread::scope(|s| -> Result<()> {
        let uploaders: Vec<_> = (0..client::PARALLEL)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    loop {
                        let next = receive.lock().expect("queue lock").recv();
                        let Ok((bytes, id)) = next else { return Ok(()) };
                        crate::testhook::pause("remote_push_pack");
                        remote.put(&remote.key(PACKS, &id), bytes)?;
                    }
                })
            })
            .collect();
        let packed = (|| -> Result<()> {
            let mut packer = Packer::default();
            let mut queued: HashSet<Digest> = HashSet::new();
            let mut buf = vec![0u8; PIECE];
            for entry in manifest
                .entries
                .iter()
                .filter(|e| e.kind == Kind::File && e.size > 0)
            {
                crate::signals::check()?;
                let count = entry.size.div_ceil(PIECE as u64) as usize;
                let mut digests = String::with_capacity(64 * count);
                let unchanged = previous.unchanged(entry, &known);
                let mut file = None;
                for i in 0..count {
                    let at = (i * PIECE) as u64;
                    if let Some(digest) = unchanged.get(i).copied().flatten() {
                        digests.push_str(&format::hex(&digest));
                        pushed.pieces += 1;
                        reused.insert(known[&digest].pack.clone());
                        continue;
                    }
                    let n = (entry.size - at).min(PIECE as u64) as usize;
                    if file.is_none() {
                        file = Some(source.open(entry)?);
                    }
                    file.as_ref().expect("opened").fill(&mut buf[..n], at)?;
                    pushed.bytes_read += n as u64;
                    let digest = *blake3::hash(&buf[..n]).as_bytes();
                    digests.push_str(&format::hex(&digest));
                    pushed.pieces += 1;
                    if let Some(location) = known.get(&digest) {
                        reused.insert(location.pack.clone());
                    } else if queued.insert(digest) {
                        packer.add(digest, &buf[..n]);
                        pushed.pieces_uploaded += 1;
                        if packer.full() {
                            let (bytes, entry) = std::mem::take(&mut packer).finish();
                            pushed.bytes_uploaded += bytes.len() as u64;
                            send.send((bytes, entry.id.clone())).map_err(|_| {
                                remote.failed("uploading packs", "an upload stopped")
                            })?;
                            packs.push(entry);
                        }
                    }
                }
                pushed.bytes += entry.size;
                progress(pushed.bytes, snapshot.meta.bytes);
                content.push(Content {
                    path: entry.path.clone(),
                    pieces: digests,
                    blake3: entry.blake3.clone(),
                });
            }
            if !packer.pieces.is_empty() {
                let (bytes, entry) = packer.finish();
                pushed.bytes_uploaded += bytes.len() as u64;
                send.send((bytes, entry.id.clone()))
                    .map_err(|_| remote.failed("uploading packs", "an upload stopped"))?;
                packs.push(entry);
            }
            Ok(())
        })();
        drop(send);
        let uploaded: Result<Vec<()>> = uploaders
            .into_iter()
            .map(|u| u.join().expect("upload threads do not panic"))
            .collect();
        // An upload error is the cause of a closed queue: report it first.
        uploaded?;
        packed
    })
    .map_err(|e| {
        e.context(format!(
            "push of {name} stopped; {}'s {name} is unchanged",
            remote.url
        ))
    })?;
    pushed.packs_uploaded = packs.len() as u64;
    if !packs.is_empty() {
        let index = format::encode(&IndexObject {
            format: format::FORMAT,
            packs,
        });
        pushed.bytes_uploaded += index.len() as u64;
        let id = blake3::hash(&index).to_hex().to_string();
        remote.put(&remote.key(INDEX, &id), index)?;
    }
    // A prune may have removed a pack this push counted on since its indexes were read.
    for pack in &reused {
        if !remote.exists(&remote.key(PACKS, pack))? {
            return Err(fail(
                Code::Failure,
                format!(
                    "push of {name} stopped: pack {pack} on {} was removed meanwhile (a prune); {name} there is unchanged; push again",
                    remote.url
                ),
            ));
        }
    }
    let object = format::encode(&SnapshotObject {
        format: format::FORMAT,
        meta: serde_json::to_value(&snapshot.meta)?,
        manifest: String::from_utf8(manifest.to_bytes()).expect("manifests are JSON"),
        manifest_pieces: String::from_utf8(manifest.pieces_to_bytes()).expect("JSON"),
        content: content.clone(),
    });
    pushed.bytes_uploaded += object.len() as u64;
    crate::testhook::pause("remote_push_snapshot");
    if !remote.put_if(&key, object, seen)? {
        return Err(fail(
            Code::Failure,
            format!(
                "another push of {name} to {} finished first; its version is the one there now (this push's pieces are stored, so pushing again moves little)",
                remote.url
            ),
        ));
    }
    // Where a later pull finds these pieces locally; only a hint, so a failure is a warning.
    if let Err(e) = local::write_content(&snapshot.dir, &content) {
        tracing::warn!(snapshot = %name, error = %e, "content_not_recorded");
    }
    pushed.seconds = started.elapsed().as_secs_f64();
    Ok(pushed)
}

/// Pulls snapshot `name` into `store` as a snapshot of the configured mode (built as a tree
/// of files beside the staging snapshot, which [`Here::take_tree`] turns into its payload): only the pieces that no local snapshot (nor
/// an interrupted pull) holds are downloaded, each checked against its digest, and the
/// snapshot appears in one rename once whole. The manifest is checked like a local one's
/// before anything is downloaded. Exit 4 when the remote has no such snapshot.
pub fn pull(
    store: &Store,
    lock: &Lock,
    name: &str,
    here: &Here,
    remote: &Remote,
    force: bool,
    progress: Progress,
) -> Result<Pulled> {
    let allowed = &here.allowed;
    let started = Instant::now();
    let key = remote.key(SNAPSHOTS, name);
    let Some(bytes) = remote.get(&key)? else {
        return Err(fail(
            Code::NotFound,
            format!(
                "snapshot {name} not found on {}; see `stagesnap list --remote`",
                remote.url
            ),
        ));
    };
    let bad = |why: String| bad_object(remote, key.as_ref(), &why);
    let object: SnapshotObject = format::decode(&bytes).map_err(&bad)?;
    if object.format > format::FORMAT {
        return Err(bad(format!(
            "is of format {}, newer than this stagesnap reads; upgrade stagesnap",
            object.format
        )));
    }
    let mut meta: Meta = serde_json::from_value(object.meta)
        .map_err(|e| bad(format!("holds no valid meta.json ({e})")))?;
    if meta.name != name || meta.schema > crate::store::SCHEMA {
        return Err(bad(format!(
            "holds the meta.json of {:?} (schema {})",
            meta.name, meta.schema
        )));
    }
    let mut manifest = Manifest::from_bytes(object.manifest.as_bytes())
        .map_err(|e| bad(format!("holds no valid manifest ({e})")))?;
    manifest
        .attach_pieces(object.manifest_pieces.as_bytes())
        .map_err(|e| bad(format!("holds invalid piece digests ({e})")))?;
    let mut files = HashMap::new();
    for c in &object.content {
        let digests = c
            .digests()
            .ok_or_else(|| bad(format!("lists malformed pieces for {}", c.path.display())))?;
        files.insert(c.path.clone(), digests);
    }

    let staging = store.begin(name, lock)?;
    meta.manifest = Some(staging.write_manifest(&manifest)?);
    // The same checks as every local snapshot's: include, digest, Manifest::check.
    let manifest = Snapshot {
        dir: staging.dir().to_path_buf(),
        meta: meta.clone(),
    }
    .manifest_with_pieces(allowed)?;
    let mut result = Pulled {
        name: name.to_string(),
        remote: remote.url.to_string(),
        pieces: 0,
        pieces_local: 0,
        packs_downloaded: 0,
        bytes: meta.bytes,
        bytes_downloaded: 0,
        up_to_date: false,
        seconds: 0.0,
    };
    if let Ok(existing) = store.get(name) {
        let same = existing.meta.manifest.as_ref().map(|m| &m.blake3)
            == meta.manifest.as_ref().map(|m| &m.blake3);
        if same {
            result.up_to_date = true;
            result.seconds = started.elapsed().as_secs_f64();
            return Ok(result);
        }
        if !force {
            return Err(fail(
                Code::Failure,
                format!(
                    "snapshot {name} here differs from {}'s; `stagesnap pull {name} --force` replaces it (nothing was changed)",
                    remote.url
                ),
            ));
        }
    }

    let pieces = Catalog::load(remote)?.pieces;
    let held = local::Local::scan(store)?;
    let packs_dir = store.dir().join(local::PULLED_DIR);
    // The packs to download, in the order the build first reads them (the manifest's), so
    // that it waits little for the downloads it overlaps.
    let mut needed: Vec<&str> = Vec::new();
    let mut listed: HashSet<&str> = HashSet::new();
    let in_order = manifest.entries.iter().filter_map(|e| files.get(&e.path));
    for digest in in_order.flatten() {
        result.pieces += 1;
        if held.has(digest) {
            result.pieces_local += 1;
            continue;
        }
        let location = pieces.get(digest).ok_or_else(|| {
            bad(format!(
                "refers to piece {}, which no index lists",
                format::hex(digest)
            ))
        })?;
        if packs_dir.join(&location.pack).is_file() {
            result.pieces_local += 1;
        } else if listed.insert(&location.pack) {
            needed.push(&location.pack);
        }
    }
    result.packs_downloaded = needed.len() as u64;
    let downloaded = std::sync::atomic::AtomicU64::new(0);
    let (packs_done, packs_total) = (std::sync::atomic::AtomicU64::new(0), needed.len() as u64);
    let arrivals = local::Arrivals::new(&needed);
    let download = |remote: &Remote, pack: &str| -> Result<()> {
        if arrivals.stopped() {
            return Ok(()); // the build failed: its error is told
        }
        let key = remote.key(PACKS, pack);
        crate::testhook::pause("remote_pull_pack");
        let Some(bytes) = remote.get(&key)? else {
            return Err(bad_object(remote, key.as_ref(), "is missing"));
        };
        if blake3::hash(&bytes).to_hex().as_str() != pack {
            return Err(bad_object(
                remote,
                key.as_ref(),
                "does not match its digest",
            ));
        }
        downloaded.fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
        // Complete packs only, under their name: an interrupted pull leaves none half written.
        let tmp = packs_dir.join(format!("{pack}.tmp"));
        std::fs::create_dir_all(&packs_dir)
            .and_then(|()| std::fs::write(&tmp, &bytes))
            .and_then(|()| std::fs::rename(&tmp, packs_dir.join(pack)))
            .map_err(|e| crate::store::write_error(&tmp, e))?;
        arrivals.arrived(pack);
        let done = packs_done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        progress(done, packs_total);
        Ok(())
    };
    let source = local::Pulled {
        files,
        local: &held,
        remote: &pieces,
        packs_dir: &packs_dir,
        client: remote,
        arrivals: &arrivals,
    };
    let tree = crate::tree::TreeBeside::new(staging.dir());
    std::fs::create_dir(&tree.0).map_err(|e| crate::store::write_error(&tree.0, e))?;
    // The tree is built while the packs download: the build waits for a pack only when it
    // reaches a piece in one still on its way. Either failing stops the other, and a
    // download's error (naming the server) is the one told.
    let (fetched, built) = std::thread::scope(|s| {
        let fetching = s.spawn(|| {
            let fetched = remote.each(needed, |remote, pack| download(remote, pack));
            if fetched.is_err() {
                arrivals.stop();
            }
            fetched
        });
        let built = materialize(&tree.0, &manifest, &source);
        if built.is_err() {
            arrivals.stop();
        }
        let fetched = fetching.join().expect("the download thread does not panic");
        (fetched, built)
    });
    fetched?;
    built?;
    result.bytes_downloaded = downloaded.into_inner();
    meta.payload = (here.take_tree)(&tree.0, &staging.payload())?;
    meta.mode = here.mode;
    local::write_content(staging.dir(), &object.content)
        .map_err(|e| crate::store::write_error(staging.dir(), e))?;
    // Made on another machine, perhaps: its paths become this environment's.
    meta.fingerprint = meta
        .fingerprint
        .map(|f| f.rebased(&meta.cache_dir, here.cache_dir));
    meta.cache_dir = here.cache_dir.to_path_buf();
    meta.stored_bytes = crate::tree::totals(&staging.payload())?.allocated;
    let mut staging = staging;
    staging.commit(&meta, force)?;
    // Whole now: the packs are in the snapshot's files.
    if let Err(e) = crate::tree::remove_tree(&packs_dir) {
        tracing::warn!(path = %packs_dir.display(), error = %crate::exit::one_line(&e), "leftover_not_removed");
    }
    result.seconds = started.elapsed().as_secs_f64();
    Ok(result)
}

/// Builds the tree `manifest` describes in the empty directory `payload`, with the delta
/// engine that every restore uses, reading file content from `source`.
fn materialize(payload: &Path, manifest: &Manifest, source: &dyn Source) -> Result<()> {
    // The engine repairs directories in place and never creates the included or node
    // directories (a restore keeps their inodes): it gets them all, to give them their
    // metadata.
    for dir in manifest.entries.iter().filter(|e| e.kind == Kind::Dir) {
        let path = payload.join(dir.path.as_path());
        std::fs::create_dir_all(&path).map_err(|e| crate::store::write_error(&path, e))?;
    }
    Delta {
        target: manifest,
        source,
        root: payload,
        content: Copying::Copy,
        by_content: false,
        recheck: false,
        mapped: None,
        // The pull's bar counts packs downloaded, which the build follows.
        observer: &crate::observe::Unobserved,
        before_change: &|_| Ok(()),
    }
    .apply()?;
    Ok(())
}

/// The remote's snapshots, newest first.
pub fn list(remote: &Remote) -> Result<Vec<Listed>> {
    let mut listed = Vec::new();
    for object in remote.list(SNAPSHOTS)? {
        let Some(bytes) = remote.get(&object.location)? else {
            continue; // deleted meanwhile
        };
        let key = object.location.to_string();
        let object: SnapshotObject =
            format::decode(&bytes).map_err(|why| bad_object(remote, &key, &why))?;
        let meta: Meta = serde_json::from_value(object.meta)
            .map_err(|e| bad_object(remote, &key, &format!("holds no valid meta.json ({e})")))?;
        listed.push(Listed {
            name: meta.name,
            created_at: meta.created_at,
            mode: meta.mode,
            files: meta.files,
            bytes: meta.bytes,
            pinned: meta.pinned,
        });
    }
    listed.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.name.cmp(&b.name)));
    Ok(listed)
}

/// Removes snapshots `names` from the remote; every one must be there first (exit 4 naming
/// the first that is not), so a typo removes nothing. Their pieces go at the next prune.
pub fn delete(remote: &Remote, names: &[String]) -> Result<()> {
    for name in names {
        if !remote.exists(&remote.key(SNAPSHOTS, name))? {
            return Err(fail(
                Code::NotFound,
                format!(
                    "snapshot {name} not found on {}; nothing was deleted; see `stagesnap list --remote`",
                    remote.url
                ),
            ));
        }
    }
    for name in names {
        remote.delete(&remote.key(SNAPSHOTS, name))?;
    }
    Ok(())
}
