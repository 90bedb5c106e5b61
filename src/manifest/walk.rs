//! The tree walk behind [`Manifest::scan`]: every entry is reached through its directory's
//! descriptor (`fstatat`, `listxattrat`, `readlinkat`), never by resolving a full path again,
//! and the top-level directories of each included path (the nodes) are walked on every core.
//! On a 52,000-entry tree this costs about what `find -printf` does; resolving full paths for
//! `llistxattr` alone cost as much again.

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};

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

fn open_dir(at: RawFd, name: &CStr, full: &Path) -> Result<OwnedFd> {
    // SAFETY: a valid C string; the descriptor returned is owned below.
    let fd = unsafe {
        libc::openat(
            at,
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot read {}", full.display()));
    }
    // SAFETY: fd was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The names in a directory, without `.` and `..`, read with getdents64 on the directory's
/// own descriptor: readdir would need a duplicate of it (fdopendir takes over what it gets)
/// and four more syscalls per directory.
fn names(dir: &Dir) -> Result<Vec<CString>> {
    const BUF: usize = 16 << 10;
    // Never read before the kernel wrote it: only the bytes getdents64 returns are looked at.
    let mut buf: Vec<u8> = Vec::with_capacity(BUF);
    let mut out = Vec::new();
    loop {
        // SAFETY: a directory descriptor we own and a buffer of BUF writable bytes.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                dir.fd.as_raw_fd(),
                buf.as_mut_ptr(),
                BUF,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return Err(Error::unreadable(&dir.full, e));
        }
        if n == 0 {
            return Ok(out);
        }
        // SAFETY: the kernel initialised the first n bytes.
        let records = unsafe { std::slice::from_raw_parts(buf.as_ptr(), n as usize) };
        let mut at = 0;
        // struct linux_dirent64: d_ino u64, d_off i64, d_reclen u16, d_type u8, d_name.
        while let Some(record) = records
            .get(at + 16..at + 18)
            .map(|len| u16::from_ne_bytes([len[0], len[1]]) as usize)
            .and_then(|len| records.get(at..at + len))
        {
            if record.len() <= 19 {
                break;
            }
            let name = &record[19..];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            if !matches!(name, b"." | b"..") {
                out.push(cstring(name)?);
            }
            at += record.len();
        }
    }
}

fn stat_at(at: RawFd, name: &CStr, full: &Path) -> Result<libc::stat> {
    // SAFETY: zeroed stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out-parameter.
    if unsafe { libc::fstatat(at, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot stat {}", full.display()));
    }
    Ok(st)
}

fn kind_of(mode: libc::mode_t) -> Kind {
    match mode & libc::S_IFMT {
        libc::S_IFREG => Kind::File,
        libc::S_IFDIR => Kind::Dir,
        libc::S_IFLNK => Kind::Symlink,
        libc::S_IFIFO => Kind::Fifo,
        libc::S_IFSOCK => Kind::Socket,
        libc::S_IFCHR => Kind::Char,
        _ => Kind::Block,
    }
}

/// The entry `name` in the directory `at` (whose path is `full`'s parent), named `path` in
/// the manifest.
/// None when it is gone by the time it is looked at: a walk of live data that nodes write
/// to describes it as it is, and an entry removed meanwhile is not part of that.
fn entry_at(at: RawFd, name: &CStr, full: &Path, path: Name) -> Result<Option<Found>> {
    match entry_at_or_gone(at, name, full, path) {
        Err(e) if gone(&e) => Ok(None),
        found => found.map(Some),
    }
}

/// Whether an error is ENOENT: the entry was removed after its directory was read.
fn gone(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::ENOENT))
    })
}

fn entry_at_or_gone(at: RawFd, name: &CStr, full: &Path, path: Name) -> Result<Found> {
    let st = stat_at(at, name, full)?;
    let kind = kind_of(st.st_mode);
    let target = if kind == Kind::Symlink {
        let t = sized(|buf, len| {
            // SAFETY: valid C string and a buffer of `len` bytes (len > 0 here).
            unsafe { libc::readlinkat(at, name.as_ptr(), buf.cast(), len) }
        })
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
        .then(|| [libc::major(st.st_rdev), libc::minor(st.st_rdev)]);
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
            .saturating_add(st.st_mtime_nsec),
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
            .saturating_add(st.st_ctime_nsec),
    );
    Ok((entry, inode, stamp))
}

/// `readlinkat` and the like: calls `f(buf, len)` with a growing buffer until the result
/// fits (readlink gives no size first).
fn sized(f: impl Fn(*mut u8, usize) -> isize) -> std::io::Result<Vec<u8>> {
    let mut len = 256;
    loop {
        let mut buf = vec![0u8; len];
        let n = f(buf.as_mut_ptr(), len);
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if (n as usize) < len {
            buf.truncate(n as usize);
            return Ok(buf);
        }
        len *= 4;
    }
}

/// Linux 6.13's `listxattrat`; older kernels answer ENOSYS and the path is used instead.
const SYS_LISTXATTRAT: libc::c_long = 465;
static NO_LISTXATTRAT: AtomicBool = AtomicBool::new(false);

/// The entry's own xattrs, sorted by name. Listed relative to its directory where the kernel
/// can (listxattrat, Linux 6.13); values, and lists on older kernels, through the entry
/// pinned without following it: never by a full path, which a swapped directory could lead
/// outside the tree.
fn xattrs_at(at: RawFd, name: &CStr, full: &Path) -> Result<Vec<Xattr>> {
    let pinned = std::cell::OnceCell::new();
    let pin = || -> std::io::Result<&sys::Pinned> {
        if let Some(p) = pinned.get() {
            return Ok(p);
        }
        // SAFETY: `at` is the walk's open directory descriptor for this call.
        let dir = unsafe { std::os::fd::BorrowedFd::borrow_raw(at) };
        let p = sys::pin_at(dir, name.to_bytes())?;
        Ok(pinned.get_or_init(|| p))
    };
    // One call with a small buffer: most entries have no xattrs, and the walk is the whole
    // cost of a restore that finds nothing to do.
    let list_at = |buf: *mut u8, len: usize| -> isize {
        // SAFETY: valid descriptor, C string and buffer of `len` bytes.
        unsafe {
            libc::syscall(
                SYS_LISTXATTRAT,
                at,
                name.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
                buf,
                len,
            ) as isize
        }
    };
    let listed = if cfg!(target_arch = "x86_64") && !NO_LISTXATTRAT.load(Ordering::Relaxed) {
        let mut small = [0u8; 256];
        let n = list_at(small.as_mut_ptr(), small.len());
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            _ if n >= 0 => Some(Ok(small[..n as usize].to_vec())),
            Some(libc::ENOSYS) => {
                NO_LISTXATTRAT.store(true, Ordering::Relaxed);
                None
            }
            Some(libc::ERANGE) => Some(probe(list_at)),
            _ => Some(Err(e)),
        }
    } else {
        None
    };
    let names = match listed {
        Some(names) => names,
        None => pin().and_then(|p| p.xattr_names()),
    };
    let names = match names {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(vec![]),
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
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
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

/// Runs a size-probing syscall (`f(null, 0)` returns the size) until the value fits.
fn probe(f: impl Fn(*mut u8, usize) -> isize) -> std::io::Result<Vec<u8>> {
    loop {
        let n = f(std::ptr::null_mut(), 0);
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut buf = vec![0u8; n as usize];
        let got = f(buf.as_mut_ptr(), buf.len());
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(buf);
        }
        let err = std::io::Error::last_os_error();
        // ERANGE: the value grew between the two calls.
        if err.raw_os_error() != Some(libc::ERANGE) {
            return Err(err);
        }
    }
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
        let Some(found) = entry_at(dir.fd.as_raw_fd(), &name, &full, Name(rel.clone()))? else {
            continue;
        };
        let is_dir = found.0.kind == Kind::Dir;
        out.push(found);
        if is_dir {
            match open_dir(dir.fd.as_raw_fd(), &name, &full) {
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
    // SAFETY: zeroed stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor, C string and out-parameter.
    if unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            cname.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    } != 0
    {
        return Ok(None);
    }
    entry_at(dir.as_raw_fd(), &cname, &full, path.clone())
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
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
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
            fd: open_dir(parent.as_raw_fd(), &cstring(name)?, &full)?,
            full: full.clone(),
            rel: rel.as_os_str().as_bytes().to_vec(),
        };
        for name in names(&top)? {
            let rel = join(&top.rel, name.to_bytes());
            let full = full.join(OsStr::from_bytes(name.to_bytes()));
            let Some(found) = entry_at(top.fd.as_raw_fd(), &name, &full, Name(rel.clone()))? else {
                continue;
            };
            if found.0.kind == Kind::Dir {
                match open_dir(top.fd.as_raw_fd(), &name, &full) {
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
            fd: open_dir(libc::AT_FDCWD, &root, tmp.path()).unwrap(),
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
