//! Pieces already on this machine, and the pulled snapshot's content as the delta engine's
//! source. Local files are input too: every piece read is checked against its digest, and
//! one that does not match is fetched from the remote instead.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use anyhow::Result;

use super::client::Client;
use super::format::{self, Content, Digest, Location, PIECE, Pieces};
use crate::delta::{Source, SourceFile};
use crate::exit::Error;
use crate::manifest::{self, Allowed, Entry, Name};
use crate::store::{Snapshot, Store};

/// Beside a snapshot's manifest: the content digests of its files' pieces (JSON lines of
/// [`Content`]), written by push and pull, so that a later pull finds pieces here. Not
/// vouched for by meta.json: only a hint, checked piece by piece when used.
pub const CONTENT_FILE: &str = "content.jsonl";

/// Packs a pull downloaded and has not yet turned into a snapshot; an interrupted pull's are
/// reused by the next, and a successful pull removes them.
pub const PULLED_DIR: &str = ".pulled";

/// Where a piece can be read on this machine: a local snapshot's file at an offset.
#[derive(Clone)]
struct Held {
    file: PathBuf,
    offset: u64,
}

/// The pieces of the local snapshots' files, by digest.
#[derive(Default)]
pub struct Local {
    held: HashMap<Digest, Held>,
}

impl Local {
    /// The pieces listed by the store's snapshots' content files whose file is there with
    /// enough bytes (a stat each; the content is checked when read).
    pub fn scan(store: &Store) -> Result<Local> {
        let mut local = Local::default();
        let (snapshots, _) = store.list()?;
        for snapshot in snapshots {
            for content in read_content(&snapshot) {
                let file = snapshot.payload().join(content.path.as_path());
                let Ok(meta) = fs::symlink_metadata(&file) else {
                    continue;
                };
                if !meta.is_file() {
                    continue;
                }
                for (i, d) in content
                    .digests()
                    .unwrap_or_default()
                    .into_iter()
                    .enumerate()
                {
                    let offset = (i * PIECE) as u64;
                    if offset < meta.len() {
                        local.held.entry(d).or_insert(Held {
                            file: file.clone(),
                            offset,
                        });
                    }
                }
            }
        }
        Ok(local)
    }

    pub fn has(&self, digest: &Digest) -> bool {
        self.held.contains_key(digest)
    }

    /// The piece's content from a local file, when it is there and matches its digest.
    fn read(&self, digest: &Digest, size: usize) -> Option<Vec<u8>> {
        let held = self.held.get(digest)?;
        let file = crate::store::open_nofollow(&held.file).ok()?;
        let mut buf = vec![0; size];
        file.read_exact_at(&mut buf, held.offset).ok()?;
        (blake3::hash(&buf).as_bytes() == digest).then_some(buf)
    }
}

/// The pieces of a snapshot pushed or pulled before, by path, with its manifest entries
/// (piece values included), for a push that need not read what did not change since.
#[derive(Default)]
pub struct Previous {
    files: HashMap<Name, (Entry, Vec<Digest>)>,
}

impl Previous {
    /// The newest of `snapshot` and the store's snapshots that has a content file; its
    /// records count only where they are of the file its (vouched) manifest describes.
    pub fn find(store: &Store, snapshot: &Snapshot, allowed: &Allowed) -> Previous {
        let others = store.list().map(|(s, _)| s).unwrap_or_default();
        for candidate in std::iter::once(snapshot).chain(&others) {
            if !candidate.dir.join(CONTENT_FILE).exists() {
                continue;
            }
            // At once: each is about half the work on 20 000 files.
            let (content, manifest) = std::thread::scope(|s| {
                let manifest = s.spawn(|| candidate.manifest_with_pieces(allowed));
                let content = read_content(candidate);
                (
                    content,
                    manifest.join().expect("reading a manifest does not panic"),
                )
            });
            let (false, Ok(manifest)) = (content.is_empty(), manifest) else {
                continue;
            };
            let mut files = HashMap::new();
            for c in content {
                let Ok(i) = manifest.entries.binary_search_by(|e| e.path.cmp(&c.path)) else {
                    continue;
                };
                let entry = &manifest.entries[i];
                if let Some(digests) = c.digests()
                    && entry.blake3.is_some()
                    && entry.blake3 == c.blake3
                    && digests.len() as u64 == entry.size.div_ceil(PIECE as u64)
                {
                    files.insert(c.path, (entry.clone(), digests));
                }
            }
            return Previous { files };
        }
        Previous::default()
    }

    /// For each piece of `entry`, its digest when the manifests show its bytes unchanged
    /// (the whole file's blake3, or the 1 MiB piece values around it) and the remote has it.
    pub fn unchanged(&self, entry: &Entry, known: &Pieces) -> Vec<Option<Digest>> {
        let Some((old, digests)) = self.files.get(&entry.path) else {
            return Vec::new();
        };
        let have = |d: &Digest| known.contains_key(d).then_some(*d);
        if old.size == entry.size && entry.blake3.is_some() && old.blake3 == entry.blake3 {
            return digests.iter().map(have).collect();
        }
        let (Some(was), Some(now)) = (
            old.pieces.as_deref().and_then(manifest::pieces::parse),
            entry.pieces.as_deref().and_then(manifest::pieces::parse),
        ) else {
            return Vec::new();
        };
        let per = manifest::pieces::PIECE / PIECE;
        let count = entry.size.div_ceil(PIECE as u64) as usize;
        (0..count)
            .map(|i| {
                let region = i / per;
                let same = was.get(region).is_some_and(|v| Some(v) == now.get(region));
                // A region equal in both is as long in both: its pieces line up.
                same.then(|| digests.get(i)).flatten().and_then(have)
            })
            .collect()
    }
}

/// A snapshot's content file, empty when it has none or it cannot be read.
pub fn read_content(snapshot: &Snapshot) -> Vec<Content> {
    let Ok(bytes) = crate::store::read_nofollow(&snapshot.dir.join(CONTENT_FILE)) else {
        return Vec::new();
    };
    bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect()
}

/// Writes `content` as the content file in `dir`, replacing any (atomically: a reader sees
/// the old one or the new one).
pub fn write_content(dir: &Path, content: &[Content]) -> std::io::Result<()> {
    let mut bytes = Vec::new();
    for c in content {
        serde_json::to_writer(&mut bytes, c).expect("content serializes");
        bytes.push(b'\n');
    }
    let tmp = dir.join(format!("{CONTENT_FILE}.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&tmp);
    fs::write(&tmp, &bytes)?;
    fs::rename(&tmp, dir.join(CONTENT_FILE))
}

/// The packs a pull is downloading while it builds the snapshot: a piece in one of them is
/// read once it has arrived.
pub struct Arrivals {
    state: Mutex<Arriving>,
    changed: Condvar,
}

struct Arriving {
    pending: HashSet<String>,
    /// A download or the build failed: nobody waits any more.
    stopped: bool,
}

impl Arrivals {
    pub fn new(packs: &[&str]) -> Arrivals {
        Arrivals {
            state: Mutex::new(Arriving {
                pending: packs.iter().map(|p| p.to_string()).collect(),
                stopped: false,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Arriving> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn arrived(&self, pack: &str) {
        self.lock().pending.remove(pack);
        self.changed.notify_all();
    }

    pub fn stop(&self) {
        self.lock().stopped = true;
        self.changed.notify_all();
    }

    pub fn stopped(&self) -> bool {
        self.lock().stopped
    }

    /// Waits until `pack` is not on its way (arrived, or never awaited); an error once the
    /// pull stopped.
    fn wait(&self, pack: &str) -> Result<()> {
        let mut state = self.lock();
        while state.pending.contains(pack) && !state.stopped {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if state.stopped {
            anyhow::bail!("the pull stopped before pack {pack} arrived");
        }
        Ok(())
    }
}

/// The pulled snapshot's files as the delta engine reads them: each piece from a local
/// snapshot, from a downloaded pack, or (when neither holds it intact) from the remote.
pub struct Pulled<'a> {
    pub files: HashMap<Name, Vec<Digest>>,
    pub local: &'a Local,
    pub remote: &'a Pieces,
    pub packs_dir: &'a Path,
    pub client: &'a Client,
    pub arrivals: &'a Arrivals,
}

impl Pulled<'_> {
    fn piece(&self, digest: &Digest, size: usize) -> Result<Vec<u8>> {
        if let Some(bytes) = self.local.read(digest, size) {
            return Ok(bytes);
        }
        let location = self.remote.get(digest).filter(|l| l.size as usize == size);
        let location = location.ok_or_else(|| {
            crate::exit::fail(
                crate::exit::Code::Failure,
                format!(
                    "bad object on {}: piece {} is in no index (of its size); nothing was changed",
                    self.client.url,
                    format::hex(digest)
                ),
            )
        })?;
        let end = location.offset + u64::from(location.stored);
        self.arrivals.wait(&location.pack)?;
        let stored = match crate::store::open_nofollow(&self.packs_dir.join(&location.pack)) {
            Ok(file) => {
                let mut buf = vec![0; location.stored as usize];
                file.read_exact_at(&mut buf, location.offset).map(|()| buf)
            }
            Err(e) => Err(e),
        };
        let stored = match stored {
            Ok(bytes) => bytes,
            Err(_) => self.client.get_range(
                &self.client.key(format::PACKS, &location.pack),
                location.offset..end,
            )?,
        };
        self.check(&stored, location, digest)
    }

    fn check(&self, stored: &[u8], location: &Location, digest: &Digest) -> Result<Vec<u8>> {
        format::unpack(stored, location, digest).map_err(|why| {
            crate::exit::fail(
                crate::exit::Code::Failure,
                format!(
                    "bad object on {}: packs/{}: {why}; nothing was changed",
                    self.client.url, location.pack
                ),
            )
        })
    }
}

impl Source for Pulled<'_> {
    fn open(&self, want: &Entry) -> Result<Box<dyn SourceFile + '_>> {
        let digests = self.files.get(&want.path).cloned().unwrap_or_default();
        if digests.len() as u64 != want.size.div_ceil(PIECE as u64) {
            return Err(Error::DamagedPayload {
                what: format!(
                    "{}'s pieces in {} do not cover its {} bytes",
                    want.path.display(),
                    self.client.url,
                    want.size
                ),
            }
            .into());
        }
        Ok(Box::new(PulledFile {
            source: self,
            digests,
            size: want.size,
            sparse: want.sparse,
            last: RefCell::new(None),
        }))
    }
}

struct PulledFile<'a> {
    source: &'a Pulled<'a>,
    digests: Vec<Digest>,
    size: u64,
    /// Pieces of zeros become holes again.
    sparse: bool,
    /// The piece read last: the engine reads a file front to back in smaller blocks.
    last: RefCell<Option<(usize, Vec<u8>)>>,
}

impl PulledFile<'_> {
    fn piece_len(&self, i: usize) -> usize {
        (self.size - (i * PIECE) as u64).min(PIECE as u64) as usize
    }

    fn zero(&self, i: usize) -> bool {
        self.sparse && self.digests[i] == *blake3::hash(&vec![0; self.piece_len(i)]).as_bytes()
    }
}

impl SourceFile for PulledFile<'_> {
    fn fill(&self, buf: &mut [u8], pos: u64) -> std::io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let at = pos + done as u64;
            let i = (at / PIECE as u64) as usize;
            if i >= self.digests.len() {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let mut last = self.last.borrow_mut();
            if last.as_ref().is_none_or(|(j, _)| *j != i) {
                let bytes = self
                    .source
                    .piece(&self.digests[i], self.piece_len(i))
                    .map_err(std::io::Error::other)?;
                *last = Some((i, bytes));
            }
            let (_, bytes) = last.as_ref().expect("just filled");
            let from = (at - (i * PIECE) as u64) as usize;
            let n = (bytes.len() - from).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&bytes[from..from + n]);
            done += n;
        }
        Ok(())
    }

    fn next_data(&self, pos: u64) -> std::io::Result<Option<u64>> {
        let first = (pos / PIECE as u64) as usize;
        Ok((first..self.digests.len())
            .find(|&i| !self.zero(i))
            .map(|i| pos.max((i * PIECE) as u64)))
    }

    fn next_hole(&self, pos: u64) -> std::io::Result<Option<u64>> {
        let first = (pos / PIECE as u64) as usize;
        Ok(Some(
            (first..self.digests.len())
                .find(|&i| self.zero(i))
                .map_or(self.size, |i| pos.max((i * PIECE) as u64)),
        ))
    }
}
