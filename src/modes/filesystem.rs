//! `filesystem`: a snapshot is an rsync copy of the included paths; restore is the delta
//! engine's in-place repair from that copy (see [`crate::delta`]), which rewrites only what
//! differs and never replaces the included or node directories themselves (containers' bind
//! mounts stay valid).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use rustix::fs::OFlags;

use super::{Mode, ModeContext, ModeKind, Restoration, Verified};
use crate::delta::{Content, Delta};
use crate::exit::{Code, Error, code_of, one_line};
use crate::manifest::pieces::{self, Digest};
use crate::manifest::{self, Kind, Known, Manifest, Name, walk};
use crate::observe::Observer;
use crate::store::Snapshot;
use crate::sys::{DirFd, Mapped};
use crate::tools::{Found, Tool};
use crate::tree::{Totals, node_of};
use crate::writers::FileId;

const RSYNC: Tool = Tool {
    program: "rsync",
    package: "rsync",
    product: "rsync",
    version_args: &["--version"],
    // stagesnap runs rsync only to copy live data into a snapshot. A file that vanishes while
    // rsync reads its xattrs or ACLs makes it exit 23 instead of 24.
    exit_hints: &[(24, "", VANISHED), (23, "vanished", VANISHED)],
};

const VANISHED: &str = "files vanished while rsync copied them, so the nodes are writing to their data: quiesce them during create (quiesce = pause or stop in [suite_isolation]) and create again";

/// Between a two-phase create's passes: what the first found (see [`Filesystem::precopy`]);
/// and from the first pass to the hashing after the unpause, the copy's files hashed as they
/// were copied.
#[derive(Default)]
pub struct Filesystem {
    first: Mutex<Option<FirstPass>>,
    hashed: Mutex<HashMap<Name, Hashed>>,
    /// The first pass's copies of files the second pass will compare, mapped with their pages
    /// faulted in while the nodes still run (see [`premap`]). Unmapped with the mode, after
    /// the pause: unmapping gigabytes of faulted-in pages takes time too.
    mapped: Mutex<HashMap<Name, Mapped>>,
}

/// A copied file as it was when hashed. Only the second pass changes the copy: rsync replaces
/// a file it updates by a new inode, and metadata changes move the ctime; the delta engine,
/// which rewrites files in place, says what it wrote. So a file found with the same stamp
/// later holds what was hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Stamp {
        Stamp {
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        }
    }
}

/// A copied file's digest, taken in the first pass.
struct Hashed {
    stamp: Stamp,
    digest: Digest,
    /// When the second pass's delta engine rewrote the file in place: its stamp after that,
    /// and the byte ranges written.
    patched: Option<(Stamp, Vec<(u64, u64)>)>,
}

/// What the second pass of a two-phase create needs from the first to tell which files it
/// must compare by content.
struct FirstPass {
    /// Live regular files with one name, as the first pass left them, by device and inode.
    files: HashMap<FileId, Name>,
    /// Files whose mtime is close to or after the first pass's start: a write in the same
    /// clock tick as the copy's read leaves the mtime the copy got (git's "racily clean").
    recent: Vec<Name>,
    /// Files open for writing or mapped shared-writable when the first pass began.
    writers: HashSet<FileId>,
}

/// How far before the first pass's start an mtime still counts as [`FirstPass::recent`]:
/// more than a whole second, for filesystems that store no fraction.
const RACY_MARGIN: Duration = Duration::from_millis(2020);

/// Everything rsync can preserve: hardlinks, ACLs, xattrs, sparse files, owners by number
/// (container uids mean nothing on the host), plus -a's modes, times, symlinks and devices.
/// `--modify-window=-1` compares mtimes to the nanosecond: with the default whole-second
/// comparison rsync neither sets a fresh copy's time that falls in the same second as the
/// source's, nor notices a same-size rewrite within the snapshot's second.
const PRESERVE: &[&str] = &["-aHAXS", "--numeric-ids", "--modify-window=-1"];

/// What rsync is asked to print while progress bars are drawn, the bytes copied so far (inside
/// a large file too). Reading that costs next to nothing.
const PROGRESS: &str = "--info=progress2";

/// Each file's name as its transfer starts: the bytes that follow count for its node, and in
/// the first pass it is hashed once in place.
const NAMES: &str = "--out-format=%n";

impl Mode for Filesystem {
    fn kind(&self) -> ModeKind {
        ModeKind::Filesystem
    }

    fn tools(&self) -> &'static [Tool] {
        &[RSYNC]
    }

    /// A copy takes what the data takes (rsync -H and -S keep hardlinks and holes).
    fn space_needed(&self, data: &Totals) -> Option<u64> {
        Some(data.allocated)
    }

    /// The first pass: everything copied while the nodes run, then the live files indexed
    /// (outside the pause) for the second pass's choice of what to compare by content.
    /// The copy's files are hashed as rsync finishes them, beside it (rsync leaves most of a
    /// second core idle), so that only what the second pass changes is hashed after the
    /// unpause (see [`Mode::known_digests`]).
    fn precopy(&self, ctx: &ModeContext, payload: &Path) -> Result<()> {
        let started = SystemTime::now();
        let writers = crate::writers::scan();
        let (copied, names) = mpsc::channel();
        let (mut hashed, behind) = std::thread::scope(|s| {
            // At the lowest priority: where rsync (or the nodes) want both cores, the copy is
            // not slowed, and what the hasher has not reached by rsync's end is hashed then.
            let hasher = s.spawn(|| {
                if let Err(e) = crate::sys::lowest_thread_priority() {
                    tracing::debug!(error = %e, "hasher_priority_unchanged");
                }
                hash_copied(payload, names)
            });
            let done = copy(ctx, payload, None, Some(&copied));
            drop(copied);
            let hashed = hasher
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            done.map(|()| hashed)
        })?;
        // What the hasher had not reached when rsync ended, on every core now.
        let caught_up = Instant::now();
        let top = DirFd::open(payload)?;
        for (_, more) in crate::parallel::each(
            behind,
            || (vec![0u8; pieces::PIECE], Vec::new()),
            |(buf, more), path| {
                crate::signals::check()?;
                if let Ok(Some(h)) = stamped_digest(&top, &path, buf) {
                    more.push((path, h));
                }
                Ok(())
            },
        )? {
            hashed.extend(more);
        }
        tracing::info!(
            files = hashed.len(),
            seconds = crate::tree::seconds(started.elapsed().unwrap_or_default()),
            behind_seconds = crate::tree::seconds(caught_up.elapsed()),
            "first_pass_hashed"
        );
        *self.hashed.lock().unwrap_or_else(PoisonError::into_inner) = hashed;
        let since = started
            .checked_sub(RACY_MARGIN)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as i64);
        let mut first = FirstPass {
            files: HashMap::new(),
            recent: Vec::new(),
            writers,
        };
        for rel in &ctx.live.include {
            let Ok(dev) = std::fs::metadata(ctx.live.path(rel)).map(|m| m.dev()) else {
                continue;
            };
            for (entry, inode, (ino, _)) in
                walk::scan_stamped(&ctx.live.cache_dir, std::slice::from_ref(rel))?
            {
                // Hardlinked files stay with rsync -H, which keeps their links in the copy.
                if entry.kind != Kind::File || inode.is_some() || entry.path == Name::from_path(rel)
                {
                    continue;
                }
                if entry.mtime_ns >= since {
                    first.recent.push(entry.path.clone());
                }
                first.files.insert((dev, ino), entry.path);
            }
        }
        *self.mapped.lock().unwrap_or_else(PoisonError::into_inner) =
            premap(payload, &first.suspects(&HashSet::new()));
        *self.first.lock().unwrap_or_else(PoisonError::into_inner) = Some(first);
        Ok(())
    }

    /// One pass, or after [`Filesystem::precopy`] the second: rsync's quick check (size and
    /// mtime) brings the copy up to date, except for the files some process writes or that
    /// changed close to the first pass, which the delta engine compares with the live ones
    /// page by page, rewriting only the pages that differ.
    fn create(&self, ctx: &ModeContext, payload: &Path) -> Result<serde_json::Value> {
        let first = self
            .first
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(first) = first else {
            copy(ctx, payload, None, None)?;
            return Ok(serde_json::Value::Null);
        };
        let suspects = first.suspects(&crate::writers::scan());
        // As they are now, and only those the copy has as a regular file: the others are new
        // to rsync (or gone, for its --delete).
        let mut target = Manifest::scan(&ctx.live.cache_dir, &suspects)?;
        // The copy is resolved beneath the payload, never through a symlink the live data
        // had (rsync copies those as they are).
        let copied = DirFd::open(payload)?;
        target
            .entries
            .retain(|e| e.kind == Kind::File && regular_file(&copied, &e.path).is_some());
        target.header.include = target.entries.iter().map(|e| e.path.clone()).collect();
        let started = Instant::now();
        copy(ctx, payload, Some(&target.entries), None)?;
        let quick_checked = started.elapsed();
        let mut hashed = self.hashed.lock().unwrap_or_else(PoisonError::into_inner);
        // The suspects as the delta engine finds them: those no longer as hashed are hashed
        // again after the unpause.
        for e in &target.entries {
            if hashed
                .get(&e.path)
                .is_some_and(|h| stamp_of(&copied, &e.path) != Some(h.stamp))
            {
                hashed.remove(&e.path);
            }
        }
        crate::testhook::pause("create-before-compare");
        let mapped = self.mapped.lock().unwrap_or_else(PoisonError::into_inner);
        let compared = Delta {
            target: &target,
            source: &crate::delta::Dir::live(&ctx.live.cache_dir)?,
            root: payload,
            content: Content::Copy,
            by_content: false,
            recheck: true,
            mapped: Some(&mapped),
            observer: ctx.observer,
            before_change: &|_| Ok(()),
        }
        .apply();
        let done = match compared {
            Ok(done) => done,
            Err(e) if code_of(&e) == Code::Interrupted => return Err(e),
            Err(e) => {
                // Nodes writing on through an unquiesced create: the suspects are copied again
                // whole, as by a one-pass create (a half-compared file could keep the size and
                // mtime that rsync's quick check would trust).
                tracing::warn!(error = %one_line(&e), "second_pass_recopied: the files being compared changed meanwhile; they are copied again whole");
                for e in &target.entries {
                    hashed.remove(&e.path);
                    // One whose directory is no longer one beneath the payload is not there to
                    // remove: rsync's recopy below replaces what is.
                    if let Ok((dir, name)) = copied.parent_of(&e.path.0) {
                        match dir.remove(name, false) {
                            Err(gone) if gone.kind() == std::io::ErrorKind::NotFound => {}
                            removed => removed?,
                        }
                    }
                }
                copy(ctx, payload, Some(&[]), None)?;
                return Ok(serde_json::Value::Null);
            }
        };
        // A suspect the engine rewrote in place keeps its digest, the pieces written to be
        // hashed again; one it left alone keeps it as is; one it changed in any other way
        // (metadata only, or a new inode) is hashed again.
        let mut written: HashMap<Name, Vec<(u64, u64)>> = done.written.into_iter().collect();
        for e in &target.entries {
            let Some(h) = hashed.get_mut(&e.path) else {
                continue;
            };
            match (written.remove(&e.path), stamp_of(&copied, &e.path)) {
                (None, Some(now)) if now == h.stamp => {}
                (Some(ranges), Some(now)) if now.ino == h.stamp.ino => {
                    h.patched = Some((now, ranges));
                }
                _ => {
                    hashed.remove(&e.path);
                }
            }
        }
        tracing::info!(
            compared = target.entries.len(),
            files = done.stats.files_rewritten,
            bytes = done.stats.bytes_rewritten,
            rsync_seconds = crate::tree::seconds(quick_checked),
            seconds = crate::tree::seconds(started.elapsed()),
            "second_pass_compared"
        );
        Ok(serde_json::Value::Null)
    }

    /// The pulled tree is the payload as it stands.
    fn take_tree(&self, ctx: &ModeContext, payload: &Path) -> Result<serde_json::Value> {
        super::tree_as_payload(ctx, payload)
    }

    /// The first pass's digests of files the second left as they were (or patched in place:
    /// then the pieces it wrote are hashed again), checked against the copy as it is now.
    fn known_digests(&self, _: &ModeContext, payload: &Path) -> Result<HashMap<Name, Known>> {
        let hashed =
            std::mem::take(&mut *self.hashed.lock().unwrap_or_else(PoisonError::into_inner));
        if hashed.is_empty() {
            return Ok(HashMap::new());
        }
        let top = DirFd::open(payload)?;
        let per_thread = crate::parallel::each(
            hashed.into_iter().collect(),
            || (vec![0u8; pieces::PIECE], Vec::new()),
            |(buf, known), (path, h)| {
                if let Some(k) = still_hashed(&top, &path, h, buf) {
                    known.push((path, k));
                }
                Ok(())
            },
        )?;
        Ok(per_thread.into_iter().flat_map(|(_, k)| k).collect())
    }

    /// A file a suite left alone is stored once, hardlinked from the previous snapshot.
    fn shares_identical_files(&self) -> bool {
        true
    }

    fn verify(&self, _: &ModeContext, snapshot: &Snapshot) -> Result<()> {
        check_payload(snapshot)
    }

    /// The copy itself: its manifest then describes exactly what the snapshot holds, even
    /// if the live data changed after the copy (an unquiesced create).
    fn captured_tree(&self, _: &ModeContext, payload: &Path) -> PathBuf {
        payload.to_path_buf()
    }

    /// rsync -S turns every run of zeros into holes (mdbx files hold such runs), so the copy can
    /// be sparse where the live file was dense. Such a file is described as dense, as it was
    /// captured: `status` right after `create` finds no difference, and a restore keeps it
    /// dense. Only the copy's sparse files are looked at (one lstat each); the copy keeps its
    /// holes, which `verify` accepts (holes appearing is no difference).
    /// The live file is resolved beneath the data directory without following symlinks: a
    /// node that swapped a directory for a symlink gets no host file looked at.
    fn describe_captured(&self, ctx: &ModeContext, manifest: &mut Manifest) -> Result<()> {
        let live = DirFd::open(&ctx.live.cache_dir)?;
        for entry in manifest.entries.iter_mut().filter(|e| e.sparse) {
            let dense = regular_file(&live, &entry.path)
                .is_some_and(|st| st.blocks().saturating_mul(512) >= st.len());
            if dense {
                entry.sparse = false;
            }
        }
        Ok(())
    }

    fn verify_stored(
        &self,
        _: &ModeContext,
        snapshot: &Snapshot,
        expected: &Manifest,
    ) -> Result<Verified> {
        read_back(snapshot, expected, true)
    }

    fn restore(
        &self,
        ctx: &ModeContext,
        snapshot: &Snapshot,
        manifest: Option<&Manifest>,
    ) -> Result<Restoration> {
        super::payload_restore(ctx, snapshot, manifest, Content::Copy)
    }
}

impl FirstPass {
    /// The files the second pass compares by content: those written close to the first
    /// pass, and those some process had open for writing or mapped shared-writable when the
    /// first pass began or has now (`writers`).
    fn suspects(&self, writers: &HashSet<FileId>) -> Vec<PathBuf> {
        let mut paths: BTreeSet<Name> = self.recent.iter().cloned().collect();
        for id in self.writers.iter().chain(writers) {
            if let Some(path) = self.files.get(id) {
                paths.insert(path.clone());
            }
        }
        paths
            .into_iter()
            .map(|p| PathBuf::from(OsString::from_vec(p.0)))
            .collect()
    }
}

/// The stamp of the copy's regular file `path` beneath `copied`; None when it is no regular
/// file there.
fn stamp_of(copied: &DirFd, path: &Name) -> Option<Stamp> {
    regular_file(copied, path).map(|m| Stamp::of(&m))
}

/// The metadata of the regular file `path` beneath `root`, reached without following a
/// symlink; None when there is no regular file there.
fn regular_file(root: &DirFd, path: &Name) -> Option<std::fs::Metadata> {
    let (dir, name) = root.parent_of(&path.0).ok()?;
    let f = dir.open_file(name, OFlags::PATH, 0).ok()?;
    f.metadata().ok().filter(|m| m.is_file())
}

/// What rsync's output says of the copy: a file it named (its transfer started), or that it
/// ended (each file it named is in place, or never will be).
type Copied = Option<Name>;

/// Hashes the copy's files beneath `payload` that rsync names on `names`, in its order, each
/// once it is in place: rsync writes a file under a temporary name and renames it once it is
/// complete, and a file of the first pass is written to no more (see [`Stamp`]). Each is
/// stamped before and after; one that changed meanwhile, or that is no regular file, or is not
/// there when rsync ended, is left out, to be hashed after the unpause. Returns once every
/// sender is gone (rsync ended), with the files named but not reached yet.
fn hash_copied(
    payload: &Path,
    names: mpsc::Receiver<Copied>,
) -> (HashMap<Name, Hashed>, Vec<Name>) {
    let mut hashed = HashMap::new();
    let Ok(top) = DirFd::open(payload) else {
        return (hashed, Vec::new());
    };
    let mut buf = vec![0u8; pieces::PIECE];
    let mut pending: VecDeque<Copied> = VecDeque::new();
    // Whether more may come: false once every sender is gone.
    let mut open = true;
    let take = |pending: &mut VecDeque<Copied>, open: &mut bool| loop {
        match names.try_recv() {
            Ok(copied) => pending.push_back(copied),
            Err(mpsc::TryRecvError::Empty) => break,
            Err(mpsc::TryRecvError::Disconnected) => {
                *open = false;
                break;
            }
        }
    };
    loop {
        take(&mut pending, &mut open);
        if !open {
            return (hashed, pending.into_iter().flatten().collect());
        }
        let Some(next) = pending.pop_front() else {
            match names.recv() {
                Ok(copied) => pending.push_back(copied),
                Err(_) => break,
            }
            continue;
        };
        let Some(path) = next else {
            continue;
        };
        let digest = loop {
            if crate::signals::stop().is_some() {
                return (hashed, Vec::new());
            }
            match stamped_digest(&top, &path, &mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    take(&mut pending, &mut open);
                    // rsync's receiver works behind the names it prints, in their order: a
                    // file not in place by its end, or when the next named one is (one that
                    // vanished, a hardlink made later), is not waited for.
                    let later = pending.iter().find_map(Option::as_ref);
                    if !open
                        || pending.iter().any(Option::is_none)
                        || later.is_some_and(|l| stamp_of(&top, l).is_some())
                    {
                        break None;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                done => break done.ok().flatten(),
            }
        };
        if let Some(h) = digest {
            hashed.insert(path, h);
        }
    }
    (hashed, Vec::new())
}

/// The digest of the regular file `path` beneath `top`, with its stamp, which was the same
/// before and after the read; None when it is no regular file or changed meanwhile.
fn stamped_digest(top: &DirFd, path: &Name, buf: &mut [u8]) -> std::io::Result<Option<Hashed>> {
    let f = manifest::open_beneath(top, path)?;
    let before = f.metadata()?;
    if !before.is_file() {
        return Ok(None);
    }
    let digest = pieces::digest(&f, buf)?;
    let stamp = Stamp::of(&before);
    Ok((Stamp::of(&f.metadata()?) == stamp).then_some(Hashed {
        stamp,
        digest,
        patched: None,
    }))
}

/// The digest of the copy's file `path` (beneath `top`) that `h` holds, brought up to date
/// if the second pass patched it (the pieces it wrote read again), provided the file still
/// has the stamp it had then; None when it changed otherwise or cannot be read.
fn still_hashed(top: &DirFd, path: &Name, h: Hashed, buf: &mut [u8]) -> Option<Known> {
    let f = manifest::open_beneath(top, path).ok()?;
    let now = Stamp::of(&f.metadata().ok()?);
    let digest = match h.patched {
        None if now == h.stamp => h.digest,
        Some((after, written)) if now == after => {
            pieces::patched(&f, &h.digest, h.stamp.size, now.size, &written, buf).ok()?
        }
        _ => return None,
    };
    Some(Known {
        size: now.size,
        mtime_ns: now.mtime_ns,
        digest,
    })
}

/// Files smaller than this are mapped when compared: their few pages cost little to fault in.
const PREMAP: u64 = 1 << 20;

/// The copies in `payload` of the files at `paths` (of [`PREMAP`] bytes or more), mapped with
/// their pages faulted in: the second pass compares them with the live files in the pause,
/// where faulting the pages in costs CPU time too (the comparison's fell from 0.72 to 0.62 CPU-s
/// on bench/create_live.sh's large shape). One that cannot be mapped is mapped when compared.
fn premap(payload: &Path, paths: &[PathBuf]) -> HashMap<Name, Mapped> {
    let Ok(copied) = DirFd::open(payload) else {
        return HashMap::new();
    };
    let map = |path: Name| {
        let (dir, name) = copied.parent_of(&path.0).ok()?;
        let file = dir
            .open_file(name, OFlags::RDONLY | OFlags::NONBLOCK, 0)
            .ok()?;
        let meta = file.metadata().ok()?;
        if !meta.is_file() || meta.len() < PREMAP {
            return None;
        }
        Some((path, Mapped::new(&file, meta.len(), true).ok()?))
    };
    paths
        .iter()
        .filter_map(|p| map(Name::from_path(p)))
        .collect()
}

/// rsync of every included path into `payload`; with `except`, quick-checked again with
/// `--delete`, leaving out the files `except` holds (the delta engine's part). With `copied`,
/// the path of every file rsync names is sent there.
fn copy(
    ctx: &ModeContext,
    payload: &Path,
    except: Option<&[manifest::Entry]>,
    copied: Option<&mpsc::Sender<Copied>>,
) -> Result<()> {
    let rsync = ctx.tool(RSYNC);
    for rel in &ctx.live.include {
        let src = ctx.live.path(rel);
        let dst = payload.join(rel);
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut extra: Vec<OsString> = Vec::new();
        let list = payload.with_file_name("second-pass-excluded");
        if let Some(except) = except {
            extra.push("--delete".into());
            let top = Name::from_path(rel);
            let mut patterns = Vec::new();
            for e in except {
                if let Some(below) = e.path.0.strip_prefix(top.0.as_slice())
                    && below.first() == Some(&b'/')
                {
                    patterns.extend(literal(below));
                    patterns.push(0);
                }
            }
            if !patterns.is_empty() {
                std::fs::write(&list, patterns)?;
                extra.push("--from0".into());
                let mut arg = OsString::from("--exclude-from=");
                arg.push(&list);
                extra.push(arg);
            }
        }
        let synced = sync(
            ctx,
            rsync,
            (&src, &dst, rel),
            &extra,
            &format!("copying {} into the snapshot", src.display()),
            copied,
        );
        let _ = std::fs::remove_file(&list);
        synced?;
    }
    Ok(())
}

/// An rsync filter pattern matching exactly the path `below` (`/node1/db`, anchored at the
/// transfer's root): wildcard characters are escaped, which rsync honours only in a pattern
/// holding one.
fn literal(below: &[u8]) -> Vec<u8> {
    let wild = below.iter().any(|b| b"*?[".contains(b));
    let mut out = Vec::with_capacity(below.len() + 1);
    for &b in below {
        if wild && b"*?[\\".contains(&b) {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

/// rsync `src` onto `dst`, the copies of the included path `rel`, with `extra` options,
/// telling `copied` of the files it names. For directories the trailing slash makes
/// rsync fill `dst` in place instead of creating `dst/<name>`.
fn sync(
    ctx: &ModeContext,
    rsync: &Found,
    (src, dst, rel): (&Path, &Path, &Path),
    extra: &[OsString],
    what: &str,
    copied: Option<&mpsc::Sender<Copied>>,
) -> Result<()> {
    let mut args: Vec<OsString> = PRESERVE.iter().map(OsString::from).collect();
    args.extend(extra.iter().cloned());
    let (mut s, mut d) = (src.as_os_str().to_owned(), dst.as_os_str().to_owned());
    let dir = src.is_dir();
    if dir {
        s.push("/");
        d.push("/");
    }
    if !ctx.observer.active() && copied.is_none() {
        args.push(s);
        args.push(d);
        return rsync.run(args, what).map(drop);
    }
    if ctx.observer.active() {
        args.push(PROGRESS.into());
    }
    args.push(NAMES.into());
    args.push(s);
    args.push(d);
    let mut watch = Watch {
        observer: ctx.observer,
        rel,
        dir,
        node: None,
        bytes: 0,
        copied,
    };
    let ran = rsync.run_reporting(args, what, &mut |line| watch.line(line));
    watch.named(None);
    ran.map(drop)
}

/// Reads rsync's [`PROGRESS`] and [`NAMES`] output into the progress bars and the first
/// pass's hashing.
struct Watch<'a> {
    observer: &'a dyn Observer,
    rel: &'a Path,
    /// Whether `rel` is a directory, the names relative to it (else its own name).
    dir: bool,
    /// The node of the file being transferred.
    node: Option<String>,
    /// Bytes transferred so far, as the last progress line said.
    bytes: u64,
    /// Told of each file rsync names.
    copied: Option<&'a mpsc::Sender<Copied>>,
}

impl Watch<'_> {
    fn line(&mut self, line: &str) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words[..] {
            [bytes, percent, rate, ..] if percent.ends_with('%') && rate.ends_with("/s") => {
                let Ok(bytes) = bytes.replace(',', "").parse::<u64>() else {
                    return;
                };
                self.observer
                    .wrote(self.node.as_deref(), 0, bytes.saturating_sub(self.bytes));
                self.bytes = self.bytes.max(bytes);
            }
            [] => {}
            _ => {
                self.node = node_of(self.rel, Some(Path::new(line)));
                if !line.ends_with('/') {
                    self.observer.wrote(self.node.as_deref(), 1, 0);
                }
                self.named(Some(line));
            }
        }
    }

    /// Tells `copied` of a file rsync names (directories are not hashed, nor names rsync
    /// escaped, `\#ooo`, which are not the file's own), or with None that rsync ended.
    fn named(&self, line: Option<&str>) {
        let Some(copied) = self.copied else {
            return;
        };
        let path = match line {
            Some(l) if l.ends_with('/') || l.contains("\\#") => return,
            Some(l) => {
                let mut path = Name::from_path(self.rel);
                if self.dir {
                    path.0.push(b'/');
                    path.0.extend_from_slice(l.as_bytes());
                }
                Some(path)
            }
            None => None,
        };
        // The hasher gone (it stops at Ctrl-C), the files are hashed after the unpause.
        let _ = copied.send(path);
    }
}

/// Fails ("damaged", nothing restored) unless every included path is in the payload: the
/// pre-restore check of the modes whose snapshot is a tree of files.
pub(super) fn check_payload(snapshot: &Snapshot) -> Result<()> {
    for rel in &snapshot.meta.include {
        let path = snapshot.payload().join(rel);
        if path.symlink_metadata().is_err() {
            return Err(Error::Damaged {
                snapshot: snapshot.meta.name.clone(),
                what: format!("{} is missing", path.display()),
                refused: true,
            }
            .into());
        }
    }
    Ok(())
}

/// `verify` of a snapshot that is a tree of files: the payload scanned (and every file hashed,
/// with `hash`) and compared with the manifest.
pub(super) fn read_back(snapshot: &Snapshot, expected: &Manifest, hash: bool) -> Result<Verified> {
    let payload = snapshot.payload();
    let stored = if hash {
        Manifest::capture(&payload, &snapshot.meta.include)?
    } else {
        Manifest::scan(&payload, &snapshot.meta.include)?
    };
    Ok(Verified {
        checked: if hash {
            format!(
                "every entry's metadata and every file's blake3 ({} entries)",
                stored.entries.len()
            )
        } else {
            format!(
                "every entry's metadata ({} entries; the manifest holds no content hashes)",
                stored.entries.len()
            )
        },
        problems: manifest::compare(expected, &stored)
            .iter()
            .map(|c| format!("{} differs from the manifest", c.described()))
            .collect(),
    })
}
