//! The delta engine: brings a tree to a manifest in place, touching only what differs.
//!
//! Restores of `filesystem` (source: the snapshot's copy), `squashfs` (source: the image, read
//! by stagesnap's own reader or through a loop mount) and `reflink` (source: the snapshot's
//! clones), and `reflink`'s create (an empty payload brought to the live data's scan), all go
//! through [`Delta::apply`]:
//!
//! 1. one walk of the tree (`lstat` and xattrs of every entry, nodes in parallel) compared with
//!    the manifest: type, size, mtime to the nanosecond, mode, owner, xattrs, symlink target,
//!    device numbers, hardlink group, holes;
//! 2. per node, on every core: extras removed (deepest first), then what is missing created
//!    and what differs repaired. A regular file that changed in place is compared with the
//!    source in 128 KiB chunks and only the 4 KiB pages that differ are written back (reads are
//!    ~10x cheaper than writes here, and a suite rewrites a few database pages, not whole
//!    files), a large file in 16 MiB ranges on every core at once; with [`Content::Clone`] it
//!    is cloned again instead. Other files are copied or cloned under a temporary name in
//!    their directory and renamed over, keeping holes;
//! 3. hardlinks, then directories' metadata (deepest first, as creating and removing entries
//!    moves their mtimes).
//!
//! Every change goes through a descriptor of the directory it is in, opened beneath the root
//! without following a symlink in any component (`crate::sys`): a container that swaps a
//! directory for a symlink meanwhile makes the operation fail, never act elsewhere. Sources are
//! read the same way beneath their own root.
//!
//! Directories that exist in the manifest are never removed, renamed or replaced, so the
//! included paths and the node directories keep their inodes (containers' bind mounts). The
//! source supplies only file content; every attribute comes from the manifest, so a source
//! that cannot hold them (a squashfs image's whole-second mtimes) restores exactly too.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use rustix::fs::{FallocateFlags, FileType, OFlags};
use rustix::io::Errno;

use crate::exit::{Code, Error, fail};
use crate::manifest::pieces::{self, PIECE};
use crate::manifest::{self, ChangeCode, Entry, Kind, Manifest, Name, Xattr, walk};
use crate::observe::Observer;
use crate::signals;
use crate::sys::{self, DirFd};
use blake3::hazmat::ChainingValue;

/// How file content is brought over from the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// Copied; a file changed in place is compared with the source and repaired page by page.
    Copy,
    /// Copied from a source that is slow to read (a squashfs image: every read decompresses,
    /// and through a mount also goes through the loop device). A file changed in place is
    /// hashed piece by piece against the manifest's piece digests first, and only the pieces
    /// that differ are read from the source and repaired page by page.
    CopyByPieces,
    /// Reflink clones (FICLONE): the source and the tree are on one filesystem.
    Clone,
}

/// Where the target's file content is read from.
pub trait Source: Sync {
    /// The content of the target's regular file `want`, checked to be `want.size` bytes.
    fn open(&self, want: &Entry) -> Result<Box<dyn SourceFile + '_>>;
}

/// One file's content in a [`Source`], read by offset.
pub trait SourceFile {
    /// Fills `buf` with the bytes at `pos`.
    fn fill(&self, buf: &mut [u8], pos: u64) -> std::io::Result<()>;
    /// Where data starts at or after `pos` (lseek SEEK_DATA); None when only holes follow.
    fn next_data(&self, pos: u64) -> std::io::Result<Option<u64>>;
    /// Where a hole starts at or after `pos` (lseek SEEK_HOLE: the end is one).
    fn next_hole(&self, pos: u64) -> std::io::Result<Option<u64>>;
    /// The open file holding the content, for the kernel's copies and clones.
    fn file(&self) -> Option<&File> {
        None
    }
}

impl SourceFile for File {
    fn fill(&self, buf: &mut [u8], pos: u64) -> std::io::Result<()> {
        self.read_exact_at(buf, pos)
    }

    fn next_data(&self, pos: u64) -> std::io::Result<Option<u64>> {
        sys::next_data(self, pos)
    }

    fn next_hole(&self, pos: u64) -> std::io::Result<Option<u64>> {
        sys::next_hole(self, pos)
    }

    fn file(&self) -> Option<&File> {
        Some(self)
    }
}

/// A directory holding the target's files at the target's paths: a snapshot's copy or
/// clones, a mounted image, the live data itself (reflink's create). Files are opened beneath
/// it without following a symlink anywhere on their path: the tree is untrusted input.
pub struct Dir<'a> {
    root: &'a Path,
    fd: DirFd,
    /// The error for a file that is not where the manifest says: what that means differs.
    broken: fn(String) -> anyhow::Error,
}

impl<'a> Dir<'a> {
    /// A snapshot's tree, store input.
    pub fn snapshot(root: &'a Path) -> Result<Dir<'a>> {
        Self::open(root, |what| Error::DamagedPayload { what }.into())
    }

    /// The live data (reflink's create), which containers may change meanwhile.
    pub fn live(root: &'a Path) -> Result<Dir<'a>> {
        Self::open(root, |what| {
            fail(
                Code::Failure,
                format!(
                    "the live data changed during the snapshot: {what}; quiesce the nodes (quiesce = auto) or stop the network first"
                ),
            )
        })
    }

    fn open(root: &'a Path, broken: fn(String) -> anyhow::Error) -> Result<Dir<'a>> {
        let fd = DirFd::open(root).map_err(|e| Error::unreadable(root, e))?;
        Ok(Dir { root, fd, broken })
    }
}

impl Source for Dir<'_> {
    fn open(&self, want: &Entry) -> Result<Box<dyn SourceFile + '_>> {
        let path = self.root.join(OsStr::from_bytes(&want.path.0));
        let (dir, name) = sys::split(&want.path.0);
        let opened = self
            .fd
            .dir(dir)
            .and_then(|d| d.open_file(name, OFlags::RDONLY | OFlags::NONBLOCK, 0));
        let file = match opened {
            Err(e) if sys::swapped(&e) => {
                return Err((self.broken)(format!(
                    "{} is reached through a symlink or a non-directory ({e})",
                    path.display()
                )));
            }
            Err(e) => {
                return Err(Error::unreadable(&path, e));
            }
            Ok(file) => file,
        };
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err((self.broken)(format!(
                "{} is not a regular file",
                path.display()
            )));
        }
        // In the store that means damage; in the live data, that a node wrote meanwhile.
        if meta.len() != want.size {
            return Err((self.broken)(format!(
                "{} is {} bytes, its manifest says {}",
                path.display(),
                meta.len(),
                want.size
            )));
        }
        Ok(Box::new(file))
    }
}

/// Marks every regular file that both `target` and `tree` have as changed in content, so that
/// [`Delta::bring`] compares it page by page ([`Delta::recheck`]).
fn recheck(changes: &mut Vec<manifest::Change>, target: &Manifest, tree: &Manifest) {
    let mut seen: HashSet<Name> = HashSet::new();
    let both_files = |path: &Name| {
        find(&target.entries, path).is_some_and(|e| e.kind == Kind::File)
            && find(&tree.entries, path).is_some_and(|e| e.kind == Kind::File)
    };
    for c in changes.iter_mut() {
        seen.insert(c.path.clone());
        if both_files(&c.path) && !c.fields.contains(&"content") {
            c.fields.push("content");
            c.code = ChangeCode::Content;
        }
    }
    for e in &target.entries {
        if !seen.contains(&e.path) && both_files(&e.path) {
            changes.push(manifest::Change::content(&target.header.include, e));
        }
    }
    changes.sort_by(|a, b| a.path.cmp(&b.path));
}

/// A source file whose size is not the manifest's means a damaged snapshot.
pub fn check_size(what: &str, size: u64, want: &Entry) -> Result<()> {
    if size == want.size {
        return Ok(());
    }
    Err(Error::DamagedPayload {
        what: format!("{what} is {size} bytes, its manifest says {}", want.size),
    }
    .into())
}

/// One run of the engine.
pub struct Delta<'a> {
    /// What the tree must hold; paths relative to `root` and `source`.
    pub target: &'a Manifest,
    /// Holds the target's file content.
    pub source: &'a dyn Source,
    /// The tree brought to `target`.
    pub root: &'a Path,
    pub content: Content,
    /// Live files of the target's size are hashed and compared with the target's hashes too,
    /// so that bytes changed under an unchanged size and mtime are repaired.
    pub by_content: bool,
    /// Told of what is rewritten and how far the work is.
    pub observer: &'a dyn Observer,
    /// The tree is a copy of the source being brought up to date (create's second pass over
    /// files some process writes): every regular file of the target that the tree has is
    /// compared with the source page by page even when size and mtime agree (a write through a
    /// shared mapping leaves the mtime as it was), in place: the copy keeps its holes. The
    /// copy is the snapshot's, which only this process writes: it is read through mappings.
    pub recheck: bool,
    /// With `recheck`, the tree's files that are mapped already, by path (create maps them, and
    /// has their pages faulted in, while the nodes still run); the others are mapped when
    /// compared.
    pub mapped: Option<&'a HashMap<Name, sys::Mapped>>,
    /// Called once before the first change, when there is one, with the target's regular files
    /// whose content may be read from `source`: a source that must be made ready first (a
    /// squashfs extract) fetches them then.
    pub before_change: &'a (dyn Fn(&[&Entry]) -> Result<()> + Sync),
}

/// What [`Delta::apply`] did.
pub struct Outcome {
    pub stats: RestoreStats,
    /// The files repaired in place, each with the byte ranges written to it (sorted, apart).
    pub written: Vec<(Name, Vec<(u64, u64)>)>,
    /// The tree as the engine left it, as [`Manifest::scan`] would describe it: the walk's
    /// entries, with every entry it changed read again afterwards.
    pub tree: Manifest,
}

/// Granularity of the in-place comparison: the page size of the databases it is for.
const PAGE: usize = 4096;
const CHUNK: usize = 1 << 20;
/// What [`compare_write`] reads of each side at a time: both buffers stay in a core's cache
/// between the read and the comparison. A restore comparing the 14 rewritten files (2.3 GB) of
/// the large shape took 0.645 s with 128 KiB, 0.698 s with 1 MiB (means of 5, interleaved).
const COMPARE: usize = 128 << 10;
/// What one worker compares of a large file at a time, so that every core works on it.
const RANGE: u64 = 16 << 20;

impl Delta<'_> {
    pub fn apply(&self) -> Result<Outcome> {
        let include: Vec<PathBuf> = self
            .target
            .header
            .include
            .iter()
            .map(|n| PathBuf::from(OsStr::from_bytes(&n.0)))
            .collect();
        let top = DirFd::open(self.root).map_err(|e| {
            fail(
                Code::Failure,
                format!("cannot open {}: {e}", self.root.display()),
            )
        })?;
        let (entries, inodes) = walk::finish(walk::scan(self.root, &include)?);
        let mut live = Manifest {
            header: self.target.header.clone(),
            entries,
        };
        if self.by_content {
            live.hash(self.root, |e| {
                find(&self.target.entries, &e.path)
                    .is_some_and(|t| t.size == e.size && t.blake3.is_some())
            })?;
        }
        let mut changes = manifest::compare(self.target, &live);
        if self.recheck {
            recheck(&mut changes, self.target, &live);
        }
        // Tests swap directories for symlinks here, between the walk and the first change.
        crate::testhook::pause("delta-after-walk");
        if !changes.is_empty() {
            // A superset of what `bring` reads: every changed entry that is a regular file.
            let read: Vec<&Entry> = changes
                .iter()
                .filter_map(|c| find(&self.target.entries, &c.path))
                .filter(|want| want.kind == Kind::File)
                .collect();
            (self.before_change)(&read)?;
        }
        // The work, per node: nodes are independent, so they run in parallel.
        let mut units: BTreeMap<String, Vec<Job>> = BTreeMap::new();
        for c in &changes {
            let want = find(&self.target.entries, &c.path);
            let have = find(&live.entries, &c.path);
            units.entry(c.node.clone()).or_default().push(Job {
                code: c.code,
                fields: c.fields.clone(),
                want,
                have,
            });
        }
        let total = changes.len() as u64;
        let done = AtomicU64::new(0);
        let mut work = Work::default();
        for done_by_one in crate::parallel::each(
            units.into_iter().collect(),
            Work::default,
            |work, (node, jobs)| self.unit(&top, &node, &jobs, work, &done, total),
        )? {
            work.merge(done_by_one);
        }
        self.links(&top, &changes, &live, &mut work)?;
        self.directories(&top, &live, &mut work)?;
        drop(changes);
        let tree = self.observe(&top, live, inodes, &work)?;
        Ok(Outcome {
            stats: work.stats,
            written: work.written,
            tree,
        })
    }

    fn full(&self, path: &Name) -> PathBuf {
        self.root.join(OsStr::from_bytes(&path.0))
    }

    /// The directory holding `path`, opened beneath the root, and `path`'s last component.
    fn at<'p>(&self, top: &DirFd, path: &'p Name) -> Result<(DirFd, &'p [u8])> {
        let (dir, name) = sys::split(&path.0);
        let fd = top.dir(dir).map_err(|e| self.failed(e, path, "reach"))?;
        Ok((fd, name))
    }

    /// The error for `path`: the tree changed under the restore when a directory on the way
    /// turned into a symlink or a file, else `cannot <verb> <path>`.
    fn failed(&self, e: std::io::Error, path: &Name, verb: &str) -> anyhow::Error {
        let full = self.full(path);
        if sys::swapped(&e) {
            changed(&full)
        } else {
            anyhow::Error::new(e).context(format!("cannot {verb} {}", full.display()))
        }
    }

    /// One node's removals (deepest first), then its creations and repairs.
    fn unit(
        &self,
        top: &DirFd,
        node: &str,
        jobs: &[Job],
        work: &mut Work,
        done: &AtomicU64,
        total: u64,
    ) -> Result<()> {
        for job in jobs.iter().rev() {
            if let Some(have) = job.have
                && (job.code == ChangeCode::Added || job.code == ChangeCode::Type)
            {
                signals::check()?;
                let (dir, name) = self.at(top, &have.path)?;
                dir.remove(name, have.kind == Kind::Dir)
                    .map_err(|e| self.failed(e, &have.path, "remove"))?;
                work.stats.entries_deleted += 1;
                work.gone(&have.path);
            }
        }
        for job in jobs {
            signals::check()?;
            if let Some(want) = job.want {
                let (files, bytes) = self.bring(top, want, job, work)?;
                work.stats.files_rewritten += files;
                work.stats.bytes_rewritten += bytes;
                if files > 0 {
                    self.observer.wrote(Some(node), files, bytes);
                }
            }
            self.observer
                .share(done.fetch_add(1, Ordering::Relaxed) + 1, total);
        }
        Ok(())
    }

    /// Brings one entry of the target into place; returns the files and bytes it wrote.
    fn bring(&self, top: &DirFd, want: &Entry, job: &Job, work: &mut Work) -> Result<(u64, u64)> {
        let member = want.link.as_ref().is_some_and(|l| *l != want.path);
        if member {
            // Linked to its group's first path once every node is done (see `links`).
            return Ok((0, 0));
        }
        let have = job.have.filter(|_| job.code != ChangeCode::Type);
        if want.kind == Kind::Dir && have.is_some() {
            // Its attributes go back in `directories`, after its entries changed.
            return Ok((0, 0));
        }
        let (dir, name) = self.at(top, &want.path)?;
        let Some(have) = have else {
            let written = self.create(want, &dir, name)?;
            work.created(&want.path);
            if want.link.is_some() {
                work.relink.insert(want.path.clone());
            }
            self.settle(want, &dir, work)?;
            return Ok(((want.kind == Kind::File) as u64, written));
        };
        let content = job.fields.iter().any(|f| {
            matches!(
                *f,
                "size" | "content" | "target" | "rdev" | "holes" | "link"
            ) || (*f == "mtime" && want.kind == Kind::File)
        });
        if !content {
            self.fix_meta(&dir, want, have)?;
            work.touched.push(want.path.clone());
            return Ok((0, 0));
        }
        let in_place = want.kind == Kind::File
            && want.link.is_none()
            && have.link.is_none()
            // A copy being brought up to date keeps whatever holes it has: a file rebuilt
            // and renamed over would move its directory's mtime.
            && (self.recheck
                || (!job.fields.contains(&"holes")
                    // A dense file that became sparse gets its holes filled by a fresh copy.
                    && (want.sparse || !have.sparse)));
        let written = if in_place {
            self.repair(want, &dir, name, work)?
        } else {
            let tmp = temp_name();
            let written = self
                .create(want, &dir, &tmp)
                .and_then(|written| {
                    dir.rename(&tmp, &dir, name)
                        .map_err(|e| self.failed(e, &want.path, "move into place"))?;
                    Ok(written)
                })
                // Interrupted or failed, the half-built replacement goes with it.
                .inspect_err(|_| {
                    let _ = dir.remove(&tmp, false);
                })?;
            work.dirty(&want.path);
            if want.link.is_some() {
                work.relink.insert(want.path.clone());
            }
            written
        };
        self.settle(want, &dir, work)?;
        Ok(((want.kind == Kind::File) as u64, written))
    }

    /// Sets the metadata of an entry just written (in `dir`), from a fresh look at it.
    fn settle(&self, want: &Entry, dir: &DirFd, work: &mut Work) -> Result<()> {
        if want.kind != Kind::Dir {
            let (have, _) = walk::entry_in(dir, self.root, &want.path)?
                .ok_or_else(|| changed(&self.full(&want.path)))?;
            self.fix_meta(dir, want, &have)?;
        }
        work.touched.push(want.path.clone());
        Ok(())
    }

    /// Creates `want` as `name` in `dir` (its own name or a temporary one), which does not
    /// exist there; returns the bytes written or cloned.
    fn create(&self, want: &Entry, dir: &DirFd, name: &[u8]) -> Result<u64> {
        let made = |r: std::io::Result<()>| r.map_err(|e| self.failed(e, &want.path, "create"));
        match want.kind {
            Kind::File => return self.copy(want, dir, name),
            // Owner-only until `directories` gives it its own mode, last.
            Kind::Dir => made(dir.mkdir(name, 0o700))?,
            Kind::Symlink => {
                let target = want.target.as_ref().map_or(&[][..], |t| &t.0[..]);
                made(dir.symlink(target, name))?;
            }
            Kind::Fifo | Kind::Socket | Kind::Char | Kind::Block => {
                let kind = match want.kind {
                    Kind::Fifo => FileType::Fifo,
                    Kind::Socket => FileType::Socket,
                    Kind::Char => FileType::CharacterDevice,
                    _ => FileType::BlockDevice,
                };
                let [major, minor] = want.rdev.unwrap_or([0, 0]);
                made(dir.mknod(name, kind, 0o600, rustix::fs::makedev(major, minor)))?;
            }
        }
        Ok(0)
    }

    /// A new regular file `name` in `dir` with the source's content.
    fn copy(&self, want: &Entry, dir: &DirFd, name: &[u8]) -> Result<u64> {
        let src = self.source.open(want)?;
        let dst = dir
            .open_file(name, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL, 0o600)
            .map_err(|e| self.failed(e, &want.path, "create"))?;
        let full = self.full(&want.path);
        let what = || format!("cannot write {}", full.display());
        match self.content {
            Content::Clone => {
                clone(cloneable(&*src)?, &dst).with_context(what)?;
                allocate(&dst, want).with_context(what)?;
                Ok(want.size)
            }
            Content::Copy | Content::CopyByPieces if want.sparse => {
                let n = write_range(&*src, &Written::new(&dst), 0, want.size, true)
                    .with_context(what)?;
                dst.set_len(want.size).with_context(what)?;
                Ok(n)
            }
            Content::Copy | Content::CopyByPieces => {
                let n = copy_range(&*src, &dst, want.size).with_context(what)?;
                // copy_file_range clones where it can, holes included.
                allocate(&dst, want).with_context(what)?;
                Ok(n)
            }
        }
    }

    /// Brings an existing regular file's content back in place (its inode stays).
    fn repair(&self, want: &Entry, dir: &DirFd, name: &[u8], work: &mut Work) -> Result<u64> {
        let src = self.source.open(want)?;
        let file = dir
            .open_file(name, OFlags::RDWR | OFlags::NONBLOCK, 0)
            .map_err(|e| self.failed(e, &want.path, "open"))?;
        let dst = Written::new(&file);
        if !dst.metadata().is_ok_and(|m| m.is_file()) {
            // A fifo or device swapped in: never read or written as if it were the file.
            return Err(changed(&self.full(&want.path)));
        }
        let full = self.full(&want.path);
        let what = || format!("cannot repair {}", full.display());
        let old = match self.recheck {
            true => Old::Map(self.mapped.and_then(|m| m.get(&want.path))),
            false => Old::Read,
        };
        let written = match self.content {
            Content::Clone => {
                dst.set_len(0).with_context(what)?;
                dst.note(0, want.size);
                clone(cloneable(&*src)?, &dst).with_context(what)?;
                allocate(&dst, want).with_context(what)?;
                Ok(want.size)
            }
            Content::Copy => {
                patch(&*src, &dst, want.size, want.sparse, None, old, RANGE).with_context(what)
            }
            Content::CopyByPieces => {
                let digests = want
                    .pieces
                    .as_deref()
                    .and_then(pieces::parse)
                    .filter(|d| d.len() as u64 == want.size.div_ceil(PIECE as u64));
                patch(
                    &*src,
                    &dst,
                    want.size,
                    want.sparse,
                    digests.as_deref(),
                    old,
                    RANGE,
                )
                .with_context(what)
            }
        };
        work.written.push((want.path.clone(), dst.into_ranges()));
        written
    }

    /// Hardlinks: every member of a group whose first path was (re)created, or that differs
    /// itself, becomes a new name of that first path. After all nodes, as groups may span them.
    fn links(
        &self,
        top: &DirFd,
        changes: &[manifest::Change],
        live: &Manifest,
        work: &mut Work,
    ) -> Result<()> {
        let changed: HashSet<&Name> = changes.iter().map(|c| &c.path).collect();
        for want in &self.target.entries {
            let Some(first) = want.link.as_ref().filter(|l| **l != want.path) else {
                continue;
            };
            if !work.relink.contains(first) && !changed.contains(&want.path) {
                continue;
            }
            signals::check()?;
            let (dir, name) = self.at(top, &want.path)?;
            let have = find(&live.entries, &want.path).filter(|_| !work.removed(&want.path));
            if let Some(have) = have
                && have.link == want.link
                && !work.relink.contains(first)
                && have.kind == want.kind
            {
                self.fix_meta(&dir, want, have)?;
            } else {
                let tmp = temp_name();
                let (first_dir, first_name) = self.at(top, first)?;
                first_dir
                    .link(first_name, &dir, &tmp)
                    .map_err(|e| self.failed(e, &want.path, "link"))?;
                dir.rename(&tmp, &dir, name)
                    .inspect_err(|_| {
                        let _ = dir.remove(&tmp, false);
                    })
                    .map_err(|e| self.failed(e, &want.path, "move into place"))?;
                work.dirty(&want.path);
            }
            work.touched.push(want.path.clone());
            work.touched.push(first.clone());
        }
        Ok(())
    }

    /// Directories' metadata, deepest first: those that differ, were created, or had entries
    /// created or removed in them.
    fn directories(&self, top: &DirFd, live: &Manifest, work: &mut Work) -> Result<()> {
        let dirty: BTreeSet<Name> = work.dirty_dirs.iter().cloned().collect();
        let mut todo: BTreeSet<&Name> = dirty.iter().collect();
        for want in &self.target.entries {
            if want.kind == Kind::Dir
                && find(&live.entries, &want.path).is_none_or(|h| differ(want, h))
            {
                todo.insert(&want.path);
            }
        }
        for path in todo.into_iter().rev() {
            let Some(want) = find(&self.target.entries, path).filter(|w| w.kind == Kind::Dir)
            else {
                continue;
            };
            let (dir, _) = self.at(top, path)?;
            let (have, _) =
                walk::entry_in(&dir, self.root, path)?.ok_or_else(|| changed(&self.full(path)))?;
            self.fix_meta(&dir, want, &have)?;
            work.touched.push(path.clone());
        }
        Ok(())
    }

    /// The walk's entries with the removed ones dropped and the touched ones read again.
    fn observe(
        &self,
        top: &DirFd,
        live: Manifest,
        inodes: Vec<walk::Inode>,
        work: &Work,
    ) -> Result<Manifest> {
        if work.touched.is_empty() && work.deleted.is_empty() {
            return Ok(live);
        }
        let touched: BTreeSet<&Name> = work.touched.iter().collect();
        let mut entries: Vec<(Entry, walk::Inode)> = live
            .entries
            .into_iter()
            .zip(inodes)
            .filter(|(e, _)| !touched.contains(&e.path) && !work.removed(&e.path))
            .collect();
        for path in touched {
            let (dir, _) = self.at(top, path)?;
            if let Some(found) = walk::entry_in(&dir, self.root, path)? {
                entries.push(found);
            }
        }
        Ok(Manifest {
            header: live.header,
            entries: walk::finish(entries).0,
        })
    }

    /// Gives the entry `want` names in `dir` (whose attributes are `have`) the owner, xattrs,
    /// mode and mtime of `want`: owner first (chown clears setuid bits and capabilities), mode
    /// after the xattrs (an ACL sets mode bits), mtime last. All on the inode pinned once, so
    /// a name swapped meanwhile for a symlink is never followed.
    fn fix_meta(&self, dir: &DirFd, want: &Entry, have: &Entry) -> Result<()> {
        let (_, name) = sys::split(&want.path.0);
        let full = self.full(&want.path);
        let pinned = dir
            .pin(name)
            .map_err(|e| self.failed(e, &want.path, "open"))?;
        if pinned.kind != file_type(want.kind) {
            return Err(changed(&full));
        }
        let set = |r: std::io::Result<()>, what: &str| -> Result<()> {
            r.with_context(|| format!("cannot set the {what} of {}", full.display()))
        };
        let mut mode_at_risk = false;
        if (want.uid, want.gid) != (have.uid, have.gid) {
            set(pinned.chown(want.uid, want.gid), "owner")?;
            mode_at_risk = true;
        }
        if want.xattrs != have.xattrs {
            set_xattrs(&pinned, &full, &want.xattrs, &have.xattrs)?;
            mode_at_risk = true;
        }
        if want.kind != Kind::Symlink && (want.mode != have.mode || mode_at_risk) {
            set(pinned.chmod(want.mode), "mode")?;
        }
        if want.mtime_ns != have.mtime_ns {
            set(pinned.set_mtime(want.mtime_ns), "mtime")?;
        }
        Ok(())
    }
}

/// A directory on the way to `full` became a symlink or a file, or `full` another kind of
/// entry or a new one, after the walk: a process is writing in the tree.
fn changed(full: &Path) -> anyhow::Error {
    fail(
        Code::Failure,
        format!(
            "{}: the tree changed during the restore (an entry was replaced or added meanwhile, a symlink perhaps); nothing outside it was touched; stop what writes there and run restore again",
            full.display()
        ),
    )
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::Fifo,
        Kind::Socket => FileType::Socket,
        Kind::Char => FileType::CharacterDevice,
        Kind::Block => FileType::BlockDevice,
    }
}

/// One change to carry out.
struct Job<'a> {
    code: ChangeCode,
    fields: Vec<&'static str>,
    want: Option<&'a Entry>,
    have: Option<&'a Entry>,
}

/// What a thread did.
#[derive(Default)]
struct Work {
    stats: RestoreStats,
    /// Entries written, created or given new metadata: read again at the end.
    touched: Vec<Name>,
    deleted: HashSet<Name>,
    /// Directories in which entries were created or removed.
    dirty_dirs: Vec<Name>,
    /// Hardlink groups' first paths that are new inodes.
    relink: HashSet<Name>,
    /// See [`Outcome::written`].
    written: Vec<(Name, Vec<(u64, u64)>)>,
}

impl Work {
    fn merge(&mut self, other: Work) {
        self.stats.add(other.stats);
        self.touched.extend(other.touched);
        self.deleted.extend(other.deleted);
        self.dirty_dirs.extend(other.dirty_dirs);
        self.relink.extend(other.relink);
        self.written.extend(other.written);
    }

    fn dirty(&mut self, path: &Name) {
        if let Some(i) = path.0.iter().rposition(|&b| b == b'/') {
            self.dirty_dirs.push(Name(path.0[..i].to_vec()));
        }
    }

    fn gone(&mut self, path: &Name) {
        self.deleted.insert(path.clone());
        self.dirty(path);
    }

    fn created(&mut self, path: &Name) {
        self.deleted.remove(path);
        self.dirty(path);
    }

    /// Removed and not created again.
    fn removed(&self, path: &Name) -> bool {
        self.deleted.contains(path)
    }
}

fn find<'a>(entries: &'a [Entry], path: &Name) -> Option<&'a Entry> {
    entries
        .binary_search_by(|e| e.path.cmp(path))
        .ok()
        .map(|i| &entries[i])
}

/// Attributes a directory's final pass sets.
fn differ(want: &Entry, have: &Entry) -> bool {
    (want.mode, want.uid, want.gid, want.mtime_ns) != (have.mode, have.uid, have.gid, have.mtime_ns)
        || want.xattrs != have.xattrs
}

static TEMP: AtomicU64 = AtomicU64::new(0);

/// A name for building a replacement beside the entry it replaces; one a crash leaves behind
/// is an extra that the next restore removes.
fn temp_name() -> Vec<u8> {
    let n = TEMP.fetch_add(1, Ordering::Relaxed);
    format!(".stagesnap-{}-{n}.tmp", std::process::id()).into_bytes()
}

fn set_xattrs(pinned: &sys::Pinned, full: &Path, want: &[Xattr], have: &[Xattr]) -> Result<()> {
    for old in have
        .iter()
        .filter(|h| !want.iter().any(|w| w.name == h.name))
    {
        pinned.remove_xattr(&old.name.0).with_context(|| {
            format!(
                "cannot remove xattr {} of {}",
                old.name.display(),
                full.display()
            )
        })?;
    }
    for new in want.iter().filter(|w| !have.contains(w)) {
        let value = manifest::unhex(&new.value).ok_or_else(|| {
            fail(
                Code::Failure,
                format!("invalid xattr value {:?}", new.value),
            )
        })?;
        pinned.set_xattr(&new.name.0, &value).with_context(|| {
            format!(
                "cannot set xattr {} of {}",
                new.name.display(),
                full.display()
            )
        })?;
    }
    Ok(())
}

/// The file behind a source that is cloned from (reflink's sources are directories).
fn cloneable(src: &dyn SourceFile) -> Result<&File> {
    src.file().ok_or_else(|| {
        fail(
            Code::Failure,
            "cannot clone from a source that is not a file",
        )
    })
}

/// Makes `dst` share `src`'s blocks (FICLONE).
pub fn clone(src: &File, dst: &File) -> std::io::Result<()> {
    Ok(rustix::fs::ioctl_ficlone(dst, src)?)
}

/// A clone does not carry preallocated (unwritten) extents over: XFS maps them as holes. A
/// file that was not sparse gets its holes allocated again (as unwritten extents, reading as
/// zeros), so it is not sparse either.
fn allocate(dst: &File, want: &Entry) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    if want.sparse || dst.metadata()?.blocks() * 512 >= want.size {
        return Ok(());
    }
    // No flags: only allocates where there are holes.
    Ok(rustix::fs::fallocate(
        dst,
        FallocateFlags::empty(),
        0,
        want.size,
    )?)
}

/// Copies `len` bytes in the kernel (copy_file_range: no trip through user memory, and a
/// clone where the filesystem can), falling back to reads and writes across filesystems.
fn copy_range(src: &dyn SourceFile, dst: &File, len: u64) -> std::io::Result<u64> {
    let Some(file) = src.file() else {
        return write_range(src, &Written::new(dst), 0, len, false);
    };
    let mut done = 0u64;
    while done < len {
        let (mut off_in, mut off_out) = (done, done);
        let copied = rustix::fs::copy_file_range(
            file,
            Some(&mut off_in),
            dst,
            Some(&mut off_out),
            // Pieces of 64 MiB, so that Ctrl-C stops a large copy soon.
            (len - done).min(64 << 20) as usize,
        );
        match copied {
            Ok(0) => break,
            Ok(n) => {
                done += n as u64;
                signals::check_io()?;
            }
            Err(Errno::XDEV | Errno::NOSYS | Errno::INVAL | Errno::OPNOTSUPP) => {
                return Ok(done + write_range(src, &Written::new(dst), done, len, false)?);
            }
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(done)
}

/// Copies `[from, to)` of `src` into `dst` by reads and writes; with `sparse`, pages of zeros
/// are left unwritten (holes in a new file). Returns the bytes written.
fn write_range<S: SourceFile + ?Sized>(
    src: &S,
    dst: &Written,
    from: u64,
    to: u64,
    sparse: bool,
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut written = 0;
    let mut pos = from;
    while pos < to {
        let n = ((to - pos) as usize).min(CHUNK);
        src.fill(&mut buf[..n], pos)?;
        if sparse {
            for (start, end) in runs(&buf[..n], |page, _| page.iter().any(|&b| b != 0)) {
                dst.write_all_at(&buf[start..end], pos + start as u64)?;
                written += (end - start) as u64;
            }
        } else {
            dst.write_all_at(&buf[..n], pos)?;
            written += n as u64;
        }
        pos += n as u64;
        signals::check_io()?;
    }
    Ok(written)
}

/// Byte ranges of the runs of pages of `buf` for which `keep(page, index)` holds.
fn runs(buf: &[u8], keep: impl Fn(&[u8], usize) -> bool) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for (i, page) in buf.chunks(PAGE).enumerate() {
        if keep(page, i) {
            let (start, end) = (i * PAGE, i * PAGE + page.len());
            match out.last_mut() {
                Some(last) if last.1 == start => last.1 = end,
                _ => out.push((start, end)),
            }
        }
    }
    out
}

/// Makes `dst` equal to `src` (`len` bytes) in place: the source's data is compared chunk by
/// chunk and only differing pages are written; where the source has holes, data in a sparse
/// `dst` is punched out. With the target's piece digests, a piece of `dst` that hashes to its
/// digest is left alone without reading the source. Without them, a source that is a file is
/// compared in ranges of `range` bytes on every core at once. `old` says how the old content
/// of `dst` is read. Returns the bytes written.
fn patch(
    src: &dyn SourceFile,
    dst: &Written,
    len: u64,
    sparse: bool,
    digests: Option<&[ChainingValue]>,
    old: Old,
    range: u64,
) -> Result<u64> {
    let size = dst.metadata()?.len();
    // Bytes beyond the old end are new: written as they come (holes only for sparse files).
    let common = size.min(len);
    if size != len {
        dst.set_len(len)?;
    }
    // Only the old content is read through a mapping: no page read is past the end of the
    // file. One that cannot be mapped (a filesystem without mmap) is read into a buffer.
    let fresh;
    let mapped = match old {
        Old::Map(Some(mapped)) if mapped.size() == size => Some(mapped),
        Old::Map(_) if common > 0 => {
            fresh = sys::Mapped::new(dst, common, false).ok();
            fresh.as_ref()
        }
        Old::Map(_) | Old::Read => None,
    };
    // With the old content mapped (create's second pass), the source is mapped too: a live
    // file, which another process may truncate meanwhile, so guarded against SIGBUS.
    let live = match (old, src.file()) {
        (Old::Map(_), Some(file)) if len > 0 && digests.is_none() => {
            sys::Guarded::new(file, len).ok()
        }
        _ => None,
    };
    let patch = Patch {
        dst,
        common,
        sparse,
        old: mapped,
        new: live.as_ref(),
    };
    let Some(digests) = digests else {
        // A file is read at any offset from any thread.
        let Some(file) = src.file() else {
            return Ok(patch.range(src, 0, len)?);
        };
        // Listed back to front: the workers take them from the end, so the file is read in
        // order.
        let ranges: Vec<(u64, u64)> = split(len, range).into_iter().rev().collect();
        let written = crate::parallel::each(
            ranges,
            || 0,
            |written, (from, to)| {
                *written += patch.range(file, from, to)?;
                Ok(())
            },
        )?;
        return Ok(written.iter().sum());
    };
    let mut buf = vec![0u8; PIECE];
    let mut written = 0;
    for (index, digest) in digests.iter().enumerate() {
        let from = (index * PIECE) as u64;
        let to = (from + PIECE as u64).min(len);
        if to <= common {
            let n = (to - from) as usize;
            dst.read_exact_at(&mut buf[..n], from)?;
            signals::check_io()?;
            if pieces::value(&buf[..n], index as u64) == *digest {
                continue;
            }
        }
        written += patch.range(src, from, to)?;
    }
    Ok(written)
}

/// `[0, len)` cut into ranges of `range` bytes (a multiple of [`PAGE`], so that no page is
/// split between two), the last one shorter.
fn split(len: u64, range: u64) -> Vec<(u64, u64)> {
    (0..len.div_ceil(range))
        .map(|i| (i * range, ((i + 1) * range).min(len)))
        .collect()
}

/// How [`patch`] reads the old content of the file it brings up to date.
#[derive(Clone, Copy)]
enum Old<'a> {
    /// Into a buffer: other processes may write the file, or truncate it.
    Read,
    /// Through a mapping, as only this process writes the file (a snapshot's copy): the one
    /// given when it covers the file, else one made now.
    Map(Option<&'a sys::Mapped>),
}

/// One file that [`patch`] makes equal to its source.
struct Patch<'a> {
    dst: &'a Written<'a>,
    /// Where the old content of `dst` ended.
    common: u64,
    sparse: bool,
    /// The old content of `dst`, mapped, when only this process writes it.
    old: Option<&'a sys::Mapped>,
    /// The source's content, mapped.
    new: Option<&'a sys::Guarded>,
}

impl Patch<'_> {
    /// `[from, to)` of the file; returns the bytes written.
    fn range<S>(&self, src: &S, from: u64, to: u64) -> std::io::Result<u64>
    where
        S: SourceFile + ?Sized,
    {
        let (dst, common) = (self.dst, self.common);
        if !self.sparse {
            // A dense file keeps its blocks: the source's holes (rsync -S makes them in a copy
            // of runs of zeros) are zeros to compare with, not holes to punch.
            let old_end = common.clamp(from, to);
            return Ok(
                self.compare(src, from, old_end)? + write_range(src, dst, old_end, to, false)?
            );
        }
        let mut written = 0;
        let mut pos = from;
        while pos < to {
            let data = src.next_data(pos)?.unwrap_or(to).min(to);
            if data > pos {
                punch(dst, pos, data.min(common))?;
            }
            if data >= to {
                break;
            }
            let end = src.next_hole(data)?.unwrap_or(to).min(to);
            written += self.compare(src, data, end.min(common.max(data)))?;
            if end > common.max(data) {
                written += write_range(src, dst, common.max(data), end, true)?;
            }
            pos = end;
        }
        Ok(written)
    }

    /// Writes the pages of `[from, to)` (old content of `dst`) where `dst` differs from the
    /// source.
    fn compare<S>(&self, src: &S, from: u64, to: u64) -> std::io::Result<u64>
    where
        S: SourceFile + ?Sized,
    {
        let buffer = |mapped: bool| {
            if mapped {
                Vec::new()
            } else {
                vec![0u8; COMPARE]
            }
        };
        let mut new_buf = buffer(self.new.is_some());
        let mut buf = buffer(self.old.is_some());
        let mut written = 0;
        let mut pos = from;
        while pos < to {
            let n = ((to - pos) as usize).min(COMPARE);
            let new = match self.new {
                Some(live) => live.bytes(pos as usize, n),
                None => {
                    src.fill(&mut new_buf[..n], pos)?;
                    &new_buf[..n]
                }
            };
            let old = match self.old {
                Some(mapped) => mapped.bytes(pos as usize, n),
                None => {
                    self.dst.read_exact_at(&mut buf[..n], pos)?;
                    &buf[..n]
                }
            };
            let differ = if new == old {
                Vec::new()
            } else {
                // Found before any is written: the mapping shows the writes.
                runs(new, |page, i| page != &old[i * PAGE..i * PAGE + page.len()])
            };
            // Read by now: zeros that stand where the live file was cut (the guard put them
            // there) are never taken for its content.
            if self.new.is_some_and(sys::Guarded::torn) {
                return Err(std::io::Error::other(
                    "the file was truncated while it was compared",
                ));
            }
            for (start, end) in differ {
                self.dst
                    .write_all_at(&new[start..end], pos + start as u64)?;
                written += (end - start) as u64;
            }
            pos += n as u64;
            signals::check_io()?;
        }
        Ok(written)
    }
}
/// Makes `[from, to)` of `dst` a hole if it holds any data (zeros where the filesystem cannot
/// punch holes).
fn punch(dst: &Written, from: u64, to: u64) -> std::io::Result<()> {
    if to <= from || sys::next_data(dst, from)?.is_none_or(|d| d >= to) {
        return Ok(());
    }
    dst.note(from, to);
    let mode = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
    match rustix::fs::fallocate(dst.file, mode, from, to - from) {
        Ok(()) => return Ok(()),
        Err(Errno::OPNOTSUPP) => {}
        Err(e) => return Err(e.into()),
    }
    let zeros = vec![0u8; CHUNK];
    let mut pos = from;
    while pos < to {
        let n = ((to - pos) as usize).min(CHUNK);
        dst.write_all_at(&zeros[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}

/// A file the engine writes, and the byte ranges it wrote so far ([`Outcome::written`]), from
/// any thread. Reads go to the file itself.
struct Written<'a> {
    file: &'a File,
    ranges: std::sync::Mutex<Vec<(u64, u64)>>,
}

impl<'a> Written<'a> {
    fn new(file: &'a File) -> Written<'a> {
        Written {
            file,
            ranges: Default::default(),
        }
    }

    /// Notes `[from, to)` as written, before it is (a failed write may have written part).
    fn note(&self, from: u64, to: u64) {
        let mut ranges = self
            .ranges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match ranges.last_mut() {
            // Writes mostly come in order of offset: a neighbour merges at once.
            Some(last) if from >= last.0 && from <= last.1 => last.1 = last.1.max(to),
            _ => ranges.push((from, to)),
        }
    }

    /// The ranges written, sorted, overlapping and touching ones merged.
    fn into_ranges(self) -> Vec<(u64, u64)> {
        let mut ranges = self
            .ranges
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for (a, b) in ranges {
            match merged.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        merged
    }

    fn write_all_at(&self, buf: &[u8], pos: u64) -> std::io::Result<()> {
        self.note(pos, pos + buf.len() as u64);
        self.file.write_all_at(buf, pos)
    }

    /// Bytes cut off or added (as zeros) count as written.
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        let old = self.file.metadata()?.len();
        self.note(old.min(len), old.max(len));
        self.file.set_len(len)
    }
}

impl std::ops::Deref for Written<'_> {
    type Target = File;

    fn deref(&self) -> &File {
        self.file
    }
}

/// What a restore did, for the summary.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct RestoreStats {
    /// Files rewritten because they differed or were missing.
    pub files_rewritten: u64,
    pub bytes_rewritten: u64,
    /// Entries removed because the snapshot does not have them.
    pub entries_deleted: u64,
}

impl RestoreStats {
    pub fn add(&mut self, other: RestoreStats) {
        self.files_rewritten += other.files_rewritten;
        self.bytes_rewritten += other.bytes_rewritten;
        self.entries_deleted += other.entries_deleted;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    fn inode(path: &Path) -> u64 {
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).unwrap())
    }

    fn file_with(dir: &Path, name: &str, content: &[u8]) -> File {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap()
    }

    /// A copy whose file has the source's size and mtime but an older page: only a recheck
    /// finds it, and rewrites that page alone, in place.
    #[test]
    fn recheck_repairs_a_copy_that_size_and_mtime_call_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let (live, copy) = (dir.path().join("live"), dir.path().join("copy"));
        for root in [&live, &copy] {
            std::fs::create_dir_all(root.join("data/node1")).unwrap();
        }
        let new: Vec<u8> = (0..8 * PAGE).map(|i| (i % 249) as u8).collect();
        let mut old = new.clone();
        old[5 * PAGE + 1] ^= 0x55;
        let rel = "data/node1/mdbx.dat";
        std::fs::write(live.join(rel), &new).unwrap();
        std::fs::write(copy.join(rel), &old).unwrap();
        let ino = inode(&copy.join(rel));
        let when = std::fs::metadata(live.join(rel))
            .unwrap()
            .modified()
            .unwrap();
        let copied = std::fs::File::options()
            .write(true)
            .open(copy.join(rel))
            .unwrap();
        copied.set_modified(when).unwrap();
        let target = Manifest::scan(&live, &[PathBuf::from(rel)]).unwrap();
        let source = Dir::live(&live).unwrap();
        let run = |recheck| {
            Delta {
                target: &target,
                source: &source,
                root: &copy,
                content: Content::Copy,
                by_content: false,
                recheck,
                mapped: None,
                observer: &crate::observe::Unobserved,
                before_change: &|_| Ok(()),
            }
            .apply()
            .unwrap()
            .stats
        };
        assert_eq!(run(false).files_rewritten, 0);
        assert_eq!(std::fs::read(copy.join(rel)).unwrap(), old);
        let stats = run(true);
        assert_eq!(
            (stats.files_rewritten, stats.bytes_rewritten),
            (1, PAGE as u64)
        );
        assert_eq!(std::fs::read(copy.join(rel)).unwrap(), new);
        assert_eq!(inode(&copy.join(rel)), ino);
    }

    #[test]
    fn patch_writes_only_differing_pages_and_fixes_length() {
        let dir = tempfile::tempdir().unwrap();
        let mut want: Vec<u8> = (0..10 * PAGE).map(|i| (i % 251) as u8).collect();
        let mut have = want.clone();
        have[3 * PAGE + 7] ^= 0xff;
        have.extend_from_slice(b"appended by a suite");
        want[9 * PAGE] ^= 1;
        let src = file_with(dir.path(), "src", &want);
        let dst = file_with(dir.path(), "dst", &have);
        let tracked = Written::new(&dst);
        let len = want.len() as u64;
        let written = patch(&src, &tracked, len, false, None, Old::Read, RANGE).unwrap();
        assert_eq!(written, 2 * PAGE as u64);
        assert_eq!(std::fs::read(dir.path().join("dst")).unwrap(), want);
        // The two pages, and the tail cut off (touching the second, so merged with it).
        assert_eq!(
            tracked.into_ranges(),
            [
                (3 * PAGE as u64, 4 * PAGE as u64),
                (9 * PAGE as u64, 10 * PAGE as u64 + 19)
            ]
        );

        // Shorter than the source: the tail is written.
        let short = file_with(dir.path(), "short", &want[..PAGE + 10]);
        let tracked = Written::new(&short);
        patch(&src, &tracked, len, false, None, Old::Read, RANGE).unwrap();
        assert_eq!(std::fs::read(dir.path().join("short")).unwrap(), want);
        assert_eq!(
            tracked.into_ranges(),
            [(PAGE as u64 + 10, want.len() as u64)]
        );
    }

    #[test]
    fn patch_by_pieces_reads_the_source_only_where_a_piece_differs() {
        let dir = tempfile::tempdir().unwrap();
        let want: Vec<u8> = (0..3 * PIECE + PIECE / 2)
            .map(|i| (i % 251) as u8)
            .collect();
        let mut buf = vec![0u8; PIECE];
        let digest = pieces::digest(&want[..], &mut buf).unwrap();
        let digests = pieces::parse(&digest.pieces.unwrap()).unwrap();
        let mut have = want.clone();
        have[PIECE + 5] ^= 0xff;
        have.truncate(3 * PIECE + 100);
        // A source that is wrong where the live file is right: were piece 0 read from it, the
        // result would show it.
        let mut source = want.clone();
        source[10] ^= 0xff;
        let src = file_with(dir.path(), "src", &source);
        let dst = file_with(dir.path(), "dst", &have);
        let written = patch(
            &src,
            &Written::new(&dst),
            want.len() as u64,
            false,
            Some(&digests),
            Old::Read,
            RANGE,
        )
        .unwrap();
        assert_eq!(written, (PAGE + PIECE / 2 - 100) as u64);
        assert_eq!(std::fs::read(dir.path().join("dst")).unwrap(), want);
    }

    #[test]
    fn sparse_copies_keep_holes() {
        let dir = tempfile::tempdir().unwrap();
        let src_path = dir.path().join("sparse");
        let src = File::create(&src_path).unwrap();
        src.set_len(8 << 20).unwrap();
        src.write_all_at(b"island", 4 << 20).unwrap();
        drop(src);
        let src = File::open(&src_path).unwrap();
        let dst = File::create(dir.path().join("copy")).unwrap();
        let n = write_range(&src, &Written::new(&dst), 0, 8 << 20, true).unwrap();
        dst.set_len(8 << 20).unwrap();
        assert_eq!(n, PAGE as u64);
        assert_eq!(
            std::fs::read(dir.path().join("copy")).unwrap(),
            std::fs::read(&src_path).unwrap()
        );
        use std::os::unix::fs::MetadataExt;
        let meta = dst.metadata().unwrap();
        assert!(meta.blocks() * 512 < meta.len());
    }

    #[test]
    fn split_cuts_whole_ranges_and_a_shorter_last_one() {
        let r = 4 * PAGE as u64;
        assert_eq!(split(0, r), []);
        assert_eq!(split(r, r), [(0, r)]);
        assert_eq!(
            split(2 * r + 10, r),
            [(0, r), (r, 2 * r), (2 * r, 2 * r + 10)]
        );
    }

    /// For `how` 2, `dst` mapped beforehand, as create's second pass has its copy's files.
    fn premapped(how: usize, dst: &File) -> Option<sys::Mapped> {
        let size = dst.metadata().unwrap().len();
        (how == 2).then(|| sys::Mapped::new(dst, size, true).unwrap())
    }

    /// The ways [`patch`] reads the old content: by pread (0), through a mapping made then (1)
    /// or through one made beforehand (2, `pre`).
    fn old(how: usize, pre: &Option<sys::Mapped>) -> Old<'_> {
        match how {
            0 => Old::Read,
            _ => Old::Map(pre.as_ref()),
        }
    }

    /// [`patch`] in ranges of two pages, the copy read each way [`old`] names: pages
    /// that differ on either side of a range's boundary, in the last short page, and a copy
    /// shorter or longer than the source come out as the source, with only the differing
    /// pages written, in place.
    #[test]
    fn patch_in_ranges_finds_differences_at_their_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let range = 2 * PAGE as u64;
        let want: Vec<u8> = (0..9 * PAGE + 100).map(|i| (i % 251) as u8).collect();
        let src = file_with(dir.path(), "src", &want);
        for how in 0..3 {
            let mut have = want.clone();
            for at in [2 * PAGE - 1, 2 * PAGE, 6 * PAGE - 1, 9 * PAGE + 99] {
                have[at] ^= 0xff;
            }
            let dst = file_with(dir.path(), "dst", &have);
            let ino = inode(&dir.path().join("dst"));
            let len = want.len() as u64;
            let pre = premapped(how, &dst);
            let tracked = Written::new(&dst);
            let written = patch(&src, &tracked, len, false, None, old(how, &pre), range).unwrap();
            assert_eq!(written, (3 * PAGE + 100) as u64, "how: {how}");
            // Noted from both workers: the pages either side of the boundary merge.
            let page = PAGE as u64;
            assert_eq!(
                tracked.into_ranges(),
                [(page, 3 * page), (5 * page, 6 * page), (9 * page, len)]
            );
            assert_eq!(std::fs::read(dir.path().join("dst")).unwrap(), want);
            assert_eq!(inode(&dir.path().join("dst")), ino);

            // The file `name` holding `have`, patched from `src`: the bytes written.
            let patched = |name: &str, have: &[u8]| {
                let dst = file_with(dir.path(), name, have);
                let pre = premapped(how, &dst);
                let tracked = Written::new(&dst);
                patch(&src, &tracked, len, false, None, old(how, &pre), range).unwrap()
            };
            // Shorter: a page differs in the old part, the rest is new.
            let mut short = want[..3 * PAGE + 10].to_vec();
            short[PAGE] ^= 1;
            let written = patched("short", &short);
            assert_eq!(written, PAGE as u64 + len - (3 * PAGE + 10) as u64);
            assert_eq!(std::fs::read(dir.path().join("short")).unwrap(), want);

            // Longer: cut to the source's length, the pages before the end compared.
            let mut long = want.clone();
            long[4 * PAGE] ^= 1;
            long.extend_from_slice(&[7; 3 * PAGE]);
            assert_eq!(patched("long", &long), PAGE as u64);
            assert_eq!(std::fs::read(dir.path().join("long")).unwrap(), want);
        }
    }

    /// A live source cut shorter than the target says (between the scan and the comparison,
    /// by another process) fails the comparison, which a create answers by copying it again,
    /// instead of SIGBUS killing the process or its missing tail being taken for zeros.
    #[test]
    fn patch_fails_on_a_live_source_truncated_under_it() {
        let dir = tempfile::tempdir().unwrap();
        let len = 16 * PAGE as u64;
        let src = file_with(dir.path(), "live", &vec![5u8; 8 * PAGE]);
        let dst = file_with(dir.path(), "copy", &vec![5u8; 16 * PAGE]);
        let tracked = Written::new(&dst);
        let err = patch(
            &src,
            &tracked,
            len,
            false,
            None,
            Old::Map(None),
            4 * PAGE as u64,
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("truncated"), "{err:#}");
        assert_eq!(
            std::fs::read(dir.path().join("copy")).unwrap(),
            vec![5u8; 16 * PAGE]
        );
    }

    /// A sparse source compared in ranges: data where it has holes is punched out of the
    /// copy, islands across a range boundary are compared and written, and holes stay holes.
    #[test]
    fn patch_in_ranges_keeps_a_sparse_files_holes() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let range = 4 * PAGE as u64;
        let len = 64 * PAGE as u64;
        let src_path = dir.path().join("sparse");
        let src = File::create(&src_path).unwrap();
        src.set_len(len).unwrap();
        // An island across the boundary between the second and third ranges.
        src.write_all_at(&[1; 2 * PAGE], 7 * PAGE as u64).unwrap();
        src.write_all_at(b"tail", len - 4).unwrap();
        drop(src);
        let src = File::open(&src_path).unwrap();
        let want = std::fs::read(&src_path).unwrap();
        for how in 0..3 {
            // The copy, as it was: dense where the source now has holes, and one page of the
            // island older.
            let mut have = vec![3u8; len as usize];
            have[7 * PAGE..9 * PAGE].fill(1);
            have[8 * PAGE + 5] = 0;
            let dst = file_with(dir.path(), "copy", &have);
            let pre = premapped(how, &dst);
            patch(
                &src,
                &Written::new(&dst),
                len,
                true,
                None,
                old(how, &pre),
                range,
            )
            .unwrap();
            assert_eq!(std::fs::read(dir.path().join("copy")).unwrap(), want);
            let meta = dst.metadata().unwrap();
            assert!(meta.blocks() * 512 < meta.len() / 2, "how: {how}");
        }
    }

    #[test]
    fn runs_merge_neighbouring_pages() {
        let mut buf = vec![0u8; 5 * PAGE];
        buf[PAGE] = 1;
        buf[2 * PAGE + 1] = 1;
        buf[4 * PAGE] = 1;
        let r = runs(&buf, |p, _| p.iter().any(|&b| b != 0));
        assert_eq!(r, [(PAGE, 3 * PAGE), (4 * PAGE, 5 * PAGE)]);
    }
}
