//! The tree walk behind [`Manifest::scan`]: every entry is reached through its directory's
//! descriptor (`fstatat`, `listxattrat`, `readlinkat`), never by resolving a full path again,
//! and the top-level directories of each included path (the nodes) are walked on every core.
//! On a 52,000-entry tree this costs about what `find -printf` does; resolving full paths for
//! `llistxattr` alone cost as much again.

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rustix::fs::FileType;
use rustix::io::Errno;

use super::{Entry, Kind, Name, Xattr, hex};
use crate::exit::Error;
use crate::signals;
use crate::sys::{self, DirFd};

/// (st_dev, st_ino) of a non-directory with more than one name, for hardlink groups.
pub type Inode = Option<(u64, u64)>;

/// (st_ino, st_ctime in ns) of any entry: which inode sits at a path, and when it last
/// changed. A rename, create or unlink in a directory sets its ctime to the clock, which a
/// container cannot set (create's capture check, [`crate::capture`]).
pub type Stamp = (u64, i64);

type Found = (Entry, Inode, Stamp);

/// An open directory and where it is.
struct Dir {
    fd: OwnedFd,
    /// Absolute, for messages and the xattr fallback.
    full: PathBuf,
    /// Relative to the scan's root, as manifests name entries.
    rel: Vec<u8>,
}

fn cstring(bytes: &[u8]) -> Result<CString> {
    CString::new(bytes).context("a name contains a NUL byte")
}

fn open_dir(at: BorrowedFd<'_>, name: &CStr, full: &Path) -> Result<OwnedFd> {
    sys::open_dir_at(at, name).with_context(|| format!("cannot read {}", full.display()))
}

/// The names in a directory, without `.` and `..`.
fn names(dir: &Dir) -> Result<Vec<CString>> {
    sys::dir_names(dir.fd.as_fd()).map_err(|e| Error::unreadable(&dir.full, e))
}

fn kind_of(mode: u32) -> Kind {
    match FileType::from_raw_mode(mode) {
        FileType::RegularFile => Kind::File,
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Symlink,
        FileType::Fifo => Kind::Fifo,
        FileType::Socket => Kind::Socket,
        FileType::CharacterDevice => Kind::Char,
        _ => Kind::Block,
    }
}

/// The entry `name` in the directory `at` (whose path is `full`'s parent), named `path` in
/// the manifest.
/// None when it is gone by the time it is looked at: a walk of live data that nodes write
/// to describes it as it is, and an entry removed meanwhile is not part of that.
fn entry_at(at: BorrowedFd<'_>, name: &CStr, full: &Path, path: Name) -> Result<Option<Found>> {
    match entry_at_or_gone(at, name, full, path) {
        Err(e) if gone(&e) => Ok(None),
        found => found.map(Some),
    }
}

/// Whether an error is ENOENT: the entry was removed after its directory was read.
fn gone(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| Errno::from_io_error(io) == Some(Errno::NOENT))
    })
}

fn entry_at_or_gone(at: BorrowedFd<'_>, name: &CStr, full: &Path, path: Name) -> Result<Found> {
    let st = sys::stat_at(at, name).with_context(|| format!("cannot stat {}", full.display()))?;
    let kind = kind_of(st.st_mode);
    let target = if kind == Kind::Symlink {
        let t = sys::read_link_at(at, name)
            .with_context(|| format!("cannot read symlink {}", full.display()))?;
        Some(Name(t))
    } else {
        None
    };
    let size = if kind == Kind::File {
        st.st_size as u64
    } else {
        0
    };
    let rdev = matches!(kind, Kind::Char | Kind::Block)
        .then(|| [rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev)]);
    let inode = (kind != Kind::Dir && st.st_nlink > 1).then_some((st.st_dev, st.st_ino));
    let entry = Entry {
        path,
        kind,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime_ns: st
            .st_mtime
            .saturating_mul(1_000_000_000)
            .saturating_add(st.st_mtime_nsec as i64),
        size,
        blake3: None,
        pieces: None,
        sparse: kind == Kind::File && (st.st_blocks as u64).saturating_mul(512) < size,
        target,
        rdev,
        xattrs: xattrs_at(at, name, full)?,
        link: None,
    };
    let stamp = (
        st.st_ino,
        st.st_ctime
            .saturating_mul(1_000_000_000)
            .saturating_add(st.st_ctime_nsec as i64),
    );
    Ok((entry, inode, stamp))
}

/// The entry's own xattrs, sorted by name. Listed relative to its directory where the kernel
/// can (listxattrat, Linux 6.13); values, and lists on older kernels, through the entry
/// pinned without following it: never by a full path, which a swapped directory could lead
/// outside the tree.
fn xattrs_at(at: BorrowedFd<'_>, name: &CStr, full: &Path) -> Result<Vec<Xattr>> {
    let pinned = std::cell::OnceCell::new();
    let pin = || -> std::io::Result<&sys::Pinned> {
        if let Some(p) = pinned.get() {
            return Ok(p);
        }
        let p = sys::pin_at(at, name.to_bytes())?;
        Ok(pinned.get_or_init(|| p))
    };
    let names = match sys::xattr_names_at(at, name) {
        Some(names) => names,
        None => pin().and_then(|p| p.xattr_names()),
    };
    let names = match names {
        Ok(names) => names,
        Err(e) if Errno::from_io_error(&e) == Some(Errno::NOTSUP) => return Ok(vec![]),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot list xattrs of {}", full.display()));
        }
    };
    // Tests swap the entry's directory for a symlink here, between the list and the values.
    if !names.is_empty() {
        crate::testhook::pause("walk-xattrs-listed");
    }
    let mut out = Vec::new();
    for xname in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        match pin().and_then(|p| p.xattr(xname)) {
            Ok(v) => out.push(Xattr {
                name: Name(xname.to_vec()),
                value: hex(&v),
            }),
            // Removed between list and get.
            Err(e) if Errno::from_io_error(&e) == Some(Errno::NODATA) => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "cannot read xattr {} of {}",
                        String::from_utf8_lossy(xname),
                        full.display()
                    )
                });
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn join(rel: &[u8], name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rel.len() + 1 + name.len());
    out.extend_from_slice(rel);
    out.push(b'/');
    out.extend_from_slice(name);
    out
}

/// Every entry below `dir` (not `dir` itself), depth first.
fn walk(dir: &Dir, out: &mut Vec<Found>) -> Result<()> {
    signals::check()?;
    for name in names(dir)? {
        let rel = join(&dir.rel, name.to_bytes());
        let full = dir.full.join(OsStr::from_bytes(name.to_bytes()));
        let Some(found) = entry_at(dir.fd.as_fd(), &name, &full, Name(rel.clone()))? else {
            continue;
        };
        let is_dir = found.0.kind == Kind::Dir;
        out.push(found);
        if is_dir {
            match open_dir(dir.fd.as_fd(), &name, &full) {
                Ok(fd) => walk(&Dir { fd, full, rel }, out)?,
                // Removed since its stat: it is empty as far as this walk can tell.
                Err(e) if gone(&e) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// The entry `path` (a manifest path beneath `root`) in `dir`, the directory holding it;
/// None when it does not exist.
pub fn entry_in(dir: &DirFd, root: &Path, path: &Name) -> Result<Option<(Entry, Inode)>> {
    Ok(stamped_entry_in(dir, root, path)?.map(|(e, i, _)| (e, i)))
}

fn stamped_entry_in(dir: &DirFd, root: &Path, path: &Name) -> Result<Option<Found>> {
    let full = root.join(OsStr::from_bytes(&path.0));
    let cname = cstring(sys::split(&path.0).1)?;
    if sys::stat_at(dir.as_fd(), &cname).is_err() {
        return Ok(None);
    }
    entry_at(dir.as_fd(), &cname, &full, path.clone())
}

/// Every entry of `root/<include>…` (none for a missing one), unsorted, with the inodes of multiply linked ones; the
/// nodes (directories directly in an included directory) are walked in parallel.
pub fn scan(root: &Path, include: &[PathBuf]) -> Result<Vec<(Entry, Inode)>> {
    Ok(scan_stamped(root, include)?
        .into_iter()
        .map(|(e, i, _)| (e, i))
        .collect())
}

/// [`scan`] with every entry's [`Stamp`].
pub fn scan_stamped(root: &Path, include: &[PathBuf]) -> Result<Vec<Found>> {
    let mut out = Vec::new();
    let mut units: Vec<Dir> = Vec::new();
    let at_root = DirFd::open(root).map_err(|e| Error::unreadable(root, e))?;
    for rel in include {
        let full = root.join(rel);
        let path = Name::from_path(rel);
        let (parent, name) = sys::split(&path.0);
        // Beneath the root without following symlinks, as the engine acts on what this finds.
        let parent = match at_root.dir(parent) {
            Ok(dir) => dir,
            // A missing included path has no entries (the commands check the live ones first).
            Err(e) if Errno::from_io_error(&e) == Some(Errno::NOENT) => continue,
            Err(e) => {
                return Err(Error::unreadable(&full, e));
            }
        };
        let Some(found) = stamped_entry_in(&parent, root, &path)? else {
            continue;
        };
        let is_dir = found.0.kind == Kind::Dir;
        out.push(found);
        if !is_dir {
            continue;
        }
        let top = Dir {
            fd: open_dir(parent.as_fd(), &cstring(name)?, &full)?,
            full: full.clone(),
            rel: rel.as_os_str().as_bytes().to_vec(),
        };
        for name in names(&top)? {
            let rel = join(&top.rel, name.to_bytes());
            let full = full.join(OsStr::from_bytes(name.to_bytes()));
            let Some(found) = entry_at(top.fd.as_fd(), &name, &full, Name(rel.clone()))? else {
                continue;
            };
            if found.0.kind == Kind::Dir {
                match open_dir(top.fd.as_fd(), &name, &full) {
                    Ok(fd) => units.push(Dir { fd, full, rel }),
                    Err(e) if gone(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            out.push(found);
        }
    }
    for mine in crate::parallel::each(units, Vec::new, |mine, dir| walk(&dir, mine))? {
        out.extend(mine);
    }
    Ok(out)
}

/// Sorts entries by path and fills in their hardlink groups; the inodes stay beside them.
pub fn finish(mut scanned: Vec<(Entry, Inode)>) -> (Vec<Entry>, Vec<Inode>) {
    scanned.sort_by(|a, b| a.0.path.cmp(&b.0.path));
    let mut first: HashMap<(u64, u64), Name> = HashMap::new();
    let mut count: HashMap<(u64, u64), usize> = HashMap::new();
    for (e, inode) in &scanned {
        if let Some(key) = inode {
            first.entry(*key).or_insert_with(|| e.path.clone());
            *count.entry(*key).or_default() += 1;
        }
    }
    scanned
        .into_iter()
        .map(|(mut e, inode)| {
            if let Some(key) = inode
                && count[&key] > 1
            {
                e.link = Some(first[&key].clone());
            }
            (e, inode)
        })
        .unzip()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names come back whole over several getdents64 calls (more records than one buffer
    /// holds), odd bytes included, without `.` and `..`.
    #[test]
    fn names_reads_large_directories_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let mut want: Vec<Vec<u8>> = (0..3000)
            .map(|i| format!("entry-with-a-long-name-to-fill-the-buffer-{i:05}").into_bytes())
            .collect();
        want.push(b"\xff\xfe not utf-8".to_vec());
        for name in &want {
            std::fs::write(tmp.path().join(OsStr::from_bytes(name)), b"").unwrap();
        }
        let root = CString::new(tmp.path().as_os_str().as_bytes()).unwrap();
        let dir = Dir {
            fd: open_dir(rustix::fs::CWD, &root, tmp.path()).unwrap(),
            full: tmp.path().to_path_buf(),
            rel: Vec::new(),
        };
        let mut got: Vec<Vec<u8>> = names(&dir)
            .unwrap()
            .into_iter()
            .map(CString::into_bytes)
            .collect();
        got.sort();
        want.sort();
        assert_eq!(got, want);
    }
}
