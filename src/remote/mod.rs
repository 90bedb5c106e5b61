//! A shared snapshot store on an object store (S3 or a directory): push, pull, list,
//! delete and prune there. Snapshots travel as content-addressed pieces packed together
//! (see [`format`]), so what a remote or this machine already holds never moves again.
//! The async client and its runtime stay inside [`client`]; every call here blocks.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use crate::choices::ModeKind;
use crate::delta::{Content as Copying, Delta, Source};
use crate::exit::{Code, fail};
use crate::manifest::{Allowed, Entry, Kind, Manifest};
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
    fn reusable(mut self) -> Pieces {
        self.pieces
            .retain(|_, l| !self.condemned_packs.contains(&l.pack));
        self.pieces
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
    let key = remote.key(SNAPSHOTS, name);
    // Independent, and each a good part of a push that finds little changed: this
    // snapshot's manifest, the previous snapshot's records, the remote's pieces.
    let (manifest, previous, on_remote) = std::thread::scope(|s| {
        let previous = s.spawn(|| local::Previous::find(store, snapshot, allowed));
        let on_remote = s.spawn(|| -> Result<_> {
            let seen = remote.version(&key)?;
            Ok((seen, Catalog::load(remote)?.reusable()))
        });
        let manifest = snapshot.manifest_with_pieces(allowed);
        (
            manifest,
            previous
                .join()
                .expect("finding the previous snapshot does not panic"),
            on_remote.join().expect("reading the remote does not panic"),
        )
    });
    let manifest = manifest?;
    let (seen, known) = on_remote?;
    let files: Vec<&Entry> = manifest
        .entries
        .iter()
        .filter(|e| e.kind == Kind::File && e.size > 0)
        .collect();
    let mut pushed = Pushed {
        name: name.clone(),
        remote: remote.url.to_string(),
        pieces: 0,
        pieces_uploaded: 0,
        bytes: files.iter().map(|e| e.size).sum(),
        bytes_read: 0,
        bytes_uploaded: 0,
        packs_uploaded: 0,
        seconds: 0.0,
    };
    let Plan {
        mut digests,
        runs,
        mut reused,
        done,
    } = plan(&files, &previous, &known);
    pushed.pieces = digests.iter().map(|d| d.len() as u64).sum();
    progress(done, pushed.bytes);
    let done = AtomicU64::new(done);
    let queued: Mutex<HashSet<Digest>> = Mutex::default();
    let packer = Mutex::new(Packer::default());
    let uploaded = AtomicU64::new(0);
    let (send, receive) = std::sync::mpsc::sync_channel::<(Vec<u8>, String)>(client::PARALLEL);
    let receive = Mutex::new(receive);
    // Set by the first upload or read that fails: the other threads drop the rest.
    let stopped = AtomicBool::new(false);
    let objects = std::thread::scope(|s| -> Result<_> {
        // Once stopped, the queue is still emptied: the readers would wait on a full one.
        let uploaders: Vec<_> = (0..client::PARALLEL)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    let mut result = Ok(());
                    loop {
                        let next = receive.lock().expect("queue lock").recv();
                        let Ok((bytes, id)) = next else { return result };
                        if !stopped.load(Ordering::Relaxed) {
                            crate::testhook::pause("remote_push_pack");
                            result = remote.put(&remote.key(PACKS, &id), bytes);
                            stopped.fetch_or(result.is_err(), Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        let packs = Mutex::new(Vec::new());
        let ship = |packer: Packer| {
            let (bytes, entry) = packer.finish();
            uploaded.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            let id = entry.id.clone();
            packs.lock().expect("no panics while locked").push(entry);
            send.send((bytes, id))
                .map_err(|_| remote.failed("uploading packs", "an upload stopped"))
        };
        // Read, hashed and compressed on every core.
        let read = crate::parallel::each(runs, Reader::default, |reader, run| {
            if stopped.load(Ordering::Relaxed) {
                return Ok(()); // the failure is told by its own thread
            }
            let result = (|| -> Result<()> {
                crate::signals::check()?;
                let entry = files[run.file];
                let file = source.open(entry)?;
                let mut found = Vec::with_capacity(run.pieces.len());
                for i in run.pieces.clone() {
                    let n = piece_len(entry, i);
                    reader.buf.resize(n, 0);
                    file.fill(&mut reader.buf, (i * PIECE) as u64)?;
                    reader.bytes_read += n as u64;
                    let digest = *blake3::hash(&reader.buf).as_bytes();
                    found.push(digest);
                    if let Some(location) = known.get(&digest) {
                        reader.reused.insert(&location.pack);
                    } else if queued
                        .lock()
                        .expect("no panics while locked")
                        .insert(digest)
                    {
                        let stored = format::compress(&reader.buf);
                        reader.pieces_uploaded += 1;
                        let mut packer = packer.lock().expect("no panics while locked");
                        packer.add(digest, &stored, n);
                        if packer.full() {
                            // Sent without the lock: the queue may make this thread wait.
                            let full = std::mem::take(&mut *packer);
                            drop(packer);
                            ship(full)?;
                        }
                    }
                }
                let n = run
                    .pieces
                    .clone()
                    .map(|i| piece_len(entry, i) as u64)
                    .sum::<u64>();
                progress(done.fetch_add(n, Ordering::Relaxed) + n, pushed.bytes);
                reader.found.push((run, found));
                Ok(())
            })();
            stopped.fetch_or(result.is_err(), Ordering::Relaxed);
            result
        });
        let packed = read.and_then(|readers| {
            let last = std::mem::take(&mut *packer.lock().expect("no panics while locked"));
            if !last.pieces.is_empty() {
                ship(last)?;
            }
            for reader in readers {
                pushed.bytes_read += reader.bytes_read;
                pushed.pieces_uploaded += reader.pieces_uploaded;
                reused.extend(reader.reused);
                for (run, found) in reader.found {
                    for (i, digest) in run.pieces.zip(found) {
                        digests[run.file][i] = Some(digest);
                    }
                }
            }
            Ok(())
        });
        drop(send);
        let packs = packs.into_inner().expect("no panics while locked");
        pushed.packs_uploaded = packs.len() as u64;
        pushed.bytes_uploaded = uploaded.load(Ordering::Relaxed);
        // While the last packs upload: the index and the snapshot object (unless an upload
        // failed, and the reading stopped: that error is told below).
        let objects = packed.and_then(|()| {
            anyhow::ensure!(!stopped.load(Ordering::Relaxed), "an upload stopped");
            encode_objects(snapshot, &manifest, &files, &digests, packs)
        });
        let uploaded: Result<Vec<()>> = uploaders
            .into_iter()
            .map(|u| u.join().expect("upload threads do not panic"))
            .collect();
        // An upload error is the cause of a closed queue: report it first.
        uploaded?;
        objects
    })
    .map_err(|e| {
        e.context(format!(
            "push of {name} stopped; {}'s {name} is unchanged",
            remote.url
        ))
    })?;
    // At once: the index, and one listing to check that no prune removed a pack this push
    // counted on since it read the indexes.
    let (put, there) = std::thread::scope(|s| {
        let there = s.spawn(|| -> Result<HashSet<String>> {
            if reused.is_empty() {
                return Ok(HashSet::new());
            }
            let listed = remote.list(PACKS)?;
            Ok(listed
                .iter()
                .map(|o| Remote::base_name(&o.location))
                .collect())
        });
        let put = objects.index.map_or(Ok(0), |index| {
            let id = blake3::hash(&index).to_hex().to_string();
            let len = index.len() as u64;
            remote.put(&remote.key(INDEX, &id), index).map(|()| len)
        });
        (put, there.join().expect("listing packs does not panic"))
    });
    pushed.bytes_uploaded += put?;
    let there = there?;
    if let Some(pack) = reused.iter().find(|p| !there.contains(**p)) {
        return Err(fail(
            Code::Failure,
            format!(
                "push of {name} stopped: pack {pack} on {} was removed meanwhile (a prune); {name} there is unchanged; push again",
                remote.url
            ),
        ));
    }
    pushed.bytes_uploaded += objects.snapshot.len() as u64;
    crate::testhook::pause("remote_push_snapshot");
    if !remote.put_if(&key, objects.snapshot, seen)? {
        return Err(fail(
            Code::Failure,
            format!(
                "another push of {name} to {} finished first; its version is the one there now (this push's pieces are stored, so pushing again moves little)",
                remote.url
            ),
        ));
    }
    // Where a later pull finds these pieces locally; only a hint, so a failure is a warning.
    if let Err(e) = local::write_content(&snapshot.dir, &objects.content) {
        tracing::warn!(snapshot = %name, error = %e, "content_not_recorded");
    }
    pushed.seconds = started.elapsed().as_secs_f64();
    Ok(pushed)
}

/// What a push reads: each file's pieces, those the manifests show unchanged known already
/// (and the packs holding them), the rest to read in runs (last first); the bytes known.
struct Plan<'a> {
    digests: Vec<Vec<Option<Digest>>>,
    runs: Vec<Run>,
    reused: HashSet<&'a str>,
    done: u64,
}

fn plan<'a>(files: &[&Entry], previous: &local::Previous, known: &'a Pieces) -> Plan<'a> {
    let mut plan = Plan {
        digests: Vec::with_capacity(files.len()),
        runs: Vec::new(),
        reused: HashSet::new(),
        done: 0,
    };
    for (f, entry) in files.iter().enumerate() {
        let mut mine = previous.unchanged(entry, known);
        mine.resize(entry.size.div_ceil(PIECE as u64) as usize, None);
        for (i, digest) in mine.iter().enumerate() {
            let runs = &mut plan.runs;
            match digest {
                Some(d) => {
                    plan.reused.insert(&known[d].pack);
                    plan.done += piece_len(entry, i) as u64;
                }
                None => match runs.last_mut() {
                    Some(run) if run.file == f && run.pieces.end == i && run.pieces.len() < RUN => {
                        run.pieces.end += 1;
                    }
                    _ => runs.push(Run {
                        file: f,
                        pieces: i..i + 1,
                    }),
                },
            }
        }
        plan.digests.push(mine);
    }
    // Taken from the end (parallel::each): so packs fill roughly in manifest order, the
    // order a pull reads them in.
    plan.runs.reverse();
    plan
}

/// At most this many pieces (4 MiB) are read as one unit of a push's work: enough that
/// opening the file costs little, few enough that the threads share a large file's reading.
const RUN: usize = 64;

/// Pieces `pieces` of the `file`th file, to read.
struct Run {
    file: usize,
    pieces: std::ops::Range<usize>,
}

/// One push thread's share: the digests of the runs it read, and its counts.
#[derive(Default)]
struct Reader<'a> {
    buf: Vec<u8>,
    found: Vec<(Run, Vec<Digest>)>,
    reused: HashSet<&'a str>,
    bytes_read: u64,
    pieces_uploaded: u64,
}

fn piece_len(entry: &Entry, i: usize) -> usize {
    (entry.size - (i * PIECE) as u64).min(PIECE as u64) as usize
}

/// A push's last objects, encoded: the index of its packs (None when it made none), the
/// snapshot object, and the content records in it.
struct Objects {
    index: Option<Vec<u8>>,
    snapshot: Vec<u8>,
    content: Vec<Content>,
}

/// The objects of a push of `snapshot`, whose `files` have the pieces `digests` (all known
/// now) and whose new pieces are in `packs`.
fn encode_objects(
    snapshot: &Snapshot,
    manifest: &Manifest,
    files: &[&Entry],
    digests: &[Vec<Option<Digest>>],
    packs: Vec<format::PackEntry>,
) -> Result<Objects> {
    let index = (!packs.is_empty()).then(|| {
        format::encode(&IndexObject {
            format: format::FORMAT,
            packs,
        })
    });
    let content = files
        .iter()
        .zip(digests)
        .map(|(entry, pieces)| Content {
            path: entry.path.clone(),
            pieces: pieces
                .iter()
                .map(|d| format::hex(&d.expect("every piece was read or known")))
                .collect(),
            blake3: entry.blake3.clone(),
        })
        .collect();
    let object = SnapshotObject {
        format: format::FORMAT,
        meta: serde_json::to_value(&snapshot.meta)?,
        manifest: String::from_utf8(manifest.to_bytes()).expect("manifests are JSON"),
        manifest_pieces: String::from_utf8(manifest.pieces_to_bytes()).expect("JSON"),
        content,
    };
    Ok(Objects {
        index,
        snapshot: format::encode(&object),
        content: object.content,
    })
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
