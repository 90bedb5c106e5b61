//! The system calls that keep every change beneath a root: a tree that containers write into
//! (or a snapshot's payload, store input) can swap any directory for a symlink at any moment,
//! so nothing here resolves a path by name from `/`. Directories are opened beneath a root
//! descriptor without following a symlink in any component, and each operation acts on the
//! last component through its directory's descriptor (`*at` calls that never follow it).
//!
//! It also holds the crate's other system calls that rustix does not give a plain safe form
//! or that several modules share (the walk's, the tools' process groups, the store's atomic
//! renames, sparse files and reflinks), so that no other module holds `unsafe` or libc.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use rustix::fs::{
    self as rfs, AtFlags, CWD, FallocateFlags, FileType, Mode, OFlags, RenameFlags, ResolveFlags,
    SeekFrom, Stat, Timestamps,
};
use rustix::io::Errno;
use rustix::process::{Pid, Signal};

/// An open directory that the operations below act in.
pub struct DirFd(OwnedFd);

/// Set once the kernel answered ENOSYS to openat2 (before Linux 5.6).
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

impl DirFd {
    /// The root of a tree (a configured path, trusted: symlinks in it are followed).
    pub fn open(path: &Path) -> io::Result<DirFd> {
        let fd = rfs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(DirFd(fd))
    }

    /// The directory `rel` (a manifest path, `/`-separated, empty for this one) beneath this
    /// one. A symlink or a non-directory in any component fails (ELOOP or ENOTDIR), as does a
    /// `.`, `..` or empty component (EINVAL): manifests never name those, so a path that does
    /// comes from a damaged one.
    pub fn dir(&self, rel: &[u8]) -> io::Result<DirFd> {
        if rel.is_empty() {
            return Ok(DirFd(rustix::io::fcntl_dupfd_cloexec(&self.0, 0)?));
        }
        let parts: Vec<&[u8]> = rel.split(|&b| b == b'/').collect();
        if let Some(bad) = parts.iter().find(|p| !plain(p)) {
            return Err(invalid(bad));
        }
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        if !NO_OPENAT2.load(Ordering::Relaxed) {
            let how =
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
            match rfs::openat2(&self.0, rel, flags, Mode::empty(), how) {
                Err(Errno::NOSYS) => NO_OPENAT2.store(true, Ordering::Relaxed),
                // Racing renames make the kernel give up rather than risk a wrong answer.
                Err(Errno::AGAIN) => {}
                done => return Ok(DirFd(done?)),
            }
        }
        // One component at a time, none followed: with `.` and `..` excluded above, each step
        // goes one level down from a descriptor already beneath the root.
        let mut at = rfs::openat(&self.0, parts[0], flags, Mode::empty())?;
        for part in &parts[1..] {
            at = rfs::openat(&at, *part, flags, Mode::empty())?;
        }
        Ok(DirFd(at))
    }

    /// The directory holding `path` (a manifest path) beneath this one, as [`DirFd::dir`]
    /// opens it, and `path`'s last component.
    pub fn parent_of<'p>(&self, path: &'p [u8]) -> io::Result<(DirFd, &'p [u8])> {
        let (dir, name) = split(path);
        Ok((self.dir(dir)?, name))
    }

    /// Opens the file `name` in this directory, never following a symlink there (ELOOP).
    pub fn open_file(&self, name: &[u8], flags: OFlags, mode: u32) -> io::Result<File> {
        let fd = rfs::openat(
            &self.0,
            checked(name)?,
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_bits_truncate(mode),
        )?;
        Ok(File::from(fd))
    }

    /// Pins the entry `name` (a symlink itself, not its target) for metadata changes: they act
    /// on this inode whatever happens to the name afterwards.
    pub fn pin(&self, name: &[u8]) -> io::Result<Pinned> {
        pin_at(self.0.as_fd(), name)
    }

    /// Removes `name` (an empty directory with `dir`); a symlink is removed, not followed.
    pub fn remove(&self, name: &[u8], dir: bool) -> io::Result<()> {
        let flags = if dir {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        Ok(rfs::unlinkat(&self.0, checked(name)?, flags)?)
    }

    pub fn mkdir(&self, name: &[u8], mode: u32) -> io::Result<()> {
        Ok(rfs::mkdirat(
            &self.0,
            checked(name)?,
            Mode::from_bits_truncate(mode),
        )?)
    }

    pub fn symlink(&self, target: &[u8], name: &[u8]) -> io::Result<()> {
        let target = CString::new(target).map_err(|_| invalid(target))?;
        Ok(rfs::symlinkat(&*target, &self.0, checked(name)?)?)
    }

    /// A fifo, socket or device node.
    pub fn mknod(&self, name: &[u8], kind: FileType, mode: u32, dev: u64) -> io::Result<()> {
        Ok(rfs::mknodat(
            &self.0,
            checked(name)?,
            kind,
            Mode::from_bits_truncate(mode),
            dev,
        )?)
    }

    /// Renames `from` here to `to` in `dir`, replacing what `to` names (a symlink there is
    /// replaced, not followed).
    pub fn rename(&self, from: &[u8], dir: &DirFd, to: &[u8]) -> io::Result<()> {
        Ok(rfs::renameat(
            &self.0,
            checked(from)?,
            &dir.0,
            checked(to)?,
        )?)
    }

    /// A new name `to` in `dir` for the inode `from` here (a symlink is linked, not followed).
    pub fn link(&self, from: &[u8], dir: &DirFd, to: &[u8]) -> io::Result<()> {
        Ok(rfs::linkat(
            &self.0,
            checked(from)?,
            &dir.0,
            checked(to)?,
            AtFlags::empty(),
        )?)
    }
}

impl AsFd for DirFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// An entry opened with `O_PATH | O_NOFOLLOW`, so a symlink is the link itself.
pub struct Pinned {
    fd: OwnedFd,
    pub kind: FileType,
}

impl Pinned {
    /// The entry's own status (fstat works on `O_PATH` descriptors).
    pub fn stat(&self) -> io::Result<Stat> {
        Ok(rfs::fstat(&self.fd)?)
    }

    pub fn chown(&self, uid: u32, gid: u32) -> io::Result<()> {
        let (uid, gid) = (
            rfs::Uid::from_raw_unchecked(uid),
            rfs::Gid::from_raw_unchecked(gid),
        );
        // The empty path with AT_EMPTY_PATH: the pinned inode itself.
        Ok(rfs::chownat(
            &self.fd,
            c"",
            Some(uid),
            Some(gid),
            AtFlags::EMPTY_PATH,
        )?)
    }

    /// fchmod refuses `O_PATH` descriptors; `/proc/self/fd/N` is a magic link to this very
    /// inode (no name in the tree is looked up), and a symlink's mode cannot be set (EOPNOTSUPP).
    pub fn chmod(&self, mode: u32) -> io::Result<()> {
        Ok(rfs::chmodat(
            CWD,
            &*self.proc(),
            Mode::from_bits_truncate(mode),
            AtFlags::empty(),
        )?)
    }

    /// Sets the mtime, leaving the atime alone.
    pub fn set_mtime(&self, ns: i64) -> io::Result<()> {
        Ok(rfs::utimensat(
            CWD,
            &*self.proc(),
            &mtime_only(ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000)),
            AtFlags::empty(),
        )?)
    }

    /// Xattrs go through `/proc/self/fd/N` too: f*xattr refuse `O_PATH` descriptors and the
    /// dirfd-relative `setxattrat` is Linux 6.13's; following the magic link reaches this
    /// inode, a symlink itself included (which carries only trusted. and security. xattrs).
    pub fn set_xattr(&self, name: &[u8], value: &[u8]) -> io::Result<()> {
        let name = CString::new(name).map_err(|_| invalid(name))?;
        Ok(rfs::setxattr(
            &*self.proc(),
            &*name,
            value,
            rfs::XattrFlags::empty(),
        )?)
    }

    /// The value of xattr `name` (through `/proc/self/fd/N`, as [`Pinned::set_xattr`]).
    pub fn xattr(&self, name: &[u8]) -> io::Result<Vec<u8>> {
        let name = CString::new(name).map_err(|_| invalid(name))?;
        let path = self.proc();
        sized(|buf| rfs::getxattr(&*path, &*name, buf))
    }

    /// The names of the xattrs, NUL-separated.
    pub fn xattr_names(&self) -> io::Result<Vec<u8>> {
        let path = self.proc();
        sized(|buf| rfs::listxattr(&*path, buf))
    }

    pub fn remove_xattr(&self, name: &[u8]) -> io::Result<()> {
        let name = CString::new(name).map_err(|_| invalid(name))?;
        Ok(rfs::removexattr(&*self.proc(), &*name)?)
    }

    fn proc(&self) -> CString {
        // Digits only: never fails.
        CString::new(format!("/proc/self/fd/{}", self.fd.as_raw_fd())).unwrap_or_default()
    }
}

/// Pins the entry `name` of the directory `at` (a [`DirFd`], or a walk's descriptor).
pub fn pin_at(at: BorrowedFd<'_>, name: &[u8]) -> io::Result<Pinned> {
    let fd = rfs::openat(
        at,
        checked(name)?,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let kind = FileType::from_raw_mode(rfs::fstat(&fd)?.st_mode);
    Ok(Pinned { fd, kind })
}

/// Calls a read into a buffer that grows while the kernel says it is too small (ERANGE);
/// xattr values and lists are at most 64 KiB (XATTR_SIZE_MAX, XATTR_LIST_MAX).
fn sized(f: impl Fn(&mut [u8]) -> rustix::io::Result<usize>) -> io::Result<Vec<u8>> {
    let mut len = 256;
    loop {
        let mut buf = vec![0u8; len];
        match f(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(Errno::RANGE) if len < 1 << 20 => len *= 4,
            Err(e) => return Err(e.into()),
        }
    }
}

/// A single name: not empty, `.` or `..`, no `/`.
fn plain(name: &[u8]) -> bool {
    !matches!(name, b"" | b"." | b"..") && !name.contains(&b'/')
}

fn checked(name: &[u8]) -> io::Result<CString> {
    if !plain(name) {
        return Err(invalid(name));
    }
    CString::new(name).map_err(|_| invalid(name))
}

fn invalid(name: &[u8]) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "{:?} is not a plain file name",
            String::from_utf8_lossy(name)
        ),
    )
}

/// Opens the directory `name` in `at` to read its entries, never through a symlink (ELOOP)
/// and never a non-directory (ENOTDIR).
pub fn open_dir_at(at: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(rfs::openat(at, name, flags, Mode::empty())?)
}

/// The names in the directory `dir`, without `.` and `..`, read with getdents64 on the
/// directory's own descriptor: readdir would need a duplicate of it (fdopendir takes over
/// what it gets) and four more syscalls per directory.
pub fn dir_names(dir: BorrowedFd<'_>) -> io::Result<Vec<CString>> {
    let mut buf = Vec::with_capacity(16 << 10);
    let mut entries = rfs::RawDir::new(dir, buf.spare_capacity_mut());
    let mut out = Vec::new();
    while let Some(entry) = entries.next() {
        let entry = entry?;
        let name = entry.file_name();
        if !matches!(name.to_bytes(), b"." | b"..") {
            out.push(name.to_owned());
        }
    }
    Ok(out)
}

/// The entry `name` in `at` itself (a symlink, not its target).
pub fn stat_at(at: BorrowedFd<'_>, name: &CStr) -> io::Result<Stat> {
    Ok(rfs::statat(at, name, AtFlags::SYMLINK_NOFOLLOW)?)
}

/// The target of the symlink `name` in `at`.
pub fn read_link_at(at: BorrowedFd<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    Ok(rfs::readlinkat(at, name, Vec::new())?.into_bytes())
}

/// Linux 6.13's `listxattrat` on x86_64, which rustix does not wrap yet.
const SYS_LISTXATTRAT: libc::c_long = 465;
/// Set once the kernel answered ENOSYS.
static NO_LISTXATTRAT: AtomicBool = AtomicBool::new(false);

/// The names of the xattrs of the entry `name` in `at` itself, NUL-separated, listed
/// relative to the directory (no path resolved again); None where the kernel (before 6.13)
/// or the architecture has no `listxattrat`, and the caller lists them another way.
pub fn xattr_names_at(at: BorrowedFd<'_>, name: &CStr) -> Option<io::Result<Vec<u8>>> {
    if !cfg!(target_arch = "x86_64") || NO_LISTXATTRAT.load(Ordering::Relaxed) {
        return None;
    }
    let nofollow = AtFlags::SYMLINK_NOFOLLOW.bits();
    let list = |buf: &mut [u8]| {
        // SAFETY: an open descriptor, a C string and a buffer of buf.len() writable bytes.
        let n = unsafe {
            libc::syscall(
                SYS_LISTXATTRAT,
                at.as_raw_fd(),
                name.as_ptr(),
                nofollow,
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        let errno = || Errno::from_io_error(&io::Error::last_os_error()).unwrap_or(Errno::IO);
        usize::try_from(n).map_err(|_| errno())
    };
    // `sized` starts small: most entries have no xattrs, and the walk is the whole cost of a
    // restore that finds nothing to do.
    match sized(list) {
        Err(e) if Errno::from_io_error(&e) == Some(Errno::NOSYS) => {
            NO_LISTXATTRAT.store(true, Ordering::Relaxed);
            None
        }
        listed => Some(listed),
    }
}

/// The names of the xattrs of `path` itself (a symlink, not its target), NUL-separated.
pub fn xattr_names_of(path: &Path) -> io::Result<Vec<u8>> {
    sized(|buf| rfs::llistxattr(path, buf))
}

/// Sets the mtime of `path` itself (a symlink, not its target), leaving its atime.
pub fn set_mtime_of(path: &Path, sec: i64, nsec: i64) -> io::Result<()> {
    Ok(rfs::utimensat(
        CWD,
        path,
        &mtime_only(sec, nsec),
        AtFlags::SYMLINK_NOFOLLOW,
    )?)
}

fn mtime_only(sec: i64, nsec: i64) -> Timestamps {
    Timestamps {
        last_access: rfs::Timespec {
            tv_sec: 0,
            tv_nsec: rfs::UTIME_OMIT,
        },
        last_modification: rfs::Timespec {
            tv_sec: sec,
            tv_nsec: nsec as _,
        },
    }
}

/// `OpenOptions::custom_flags` values: never through a symlink, a directory only, and
/// without waiting for a fifo's writer.
pub const NOFOLLOW: i32 = OFlags::NOFOLLOW.bits() as i32;
pub const DIRECTORY: i32 = OFlags::DIRECTORY.bits() as i32;
pub const NONBLOCK: i32 = OFlags::NONBLOCK.bits() as i32;

/// Renames `from` to `to` unless `to` exists (EEXIST); EINVAL where the filesystem cannot.
pub fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    Ok(rfs::renameat_with(
        CWD,
        from,
        CWD,
        to,
        RenameFlags::NOREPLACE,
    )?)
}

/// Swaps `a` and `b` in one step; EINVAL where the filesystem cannot, ENOENT when either
/// is missing.
pub fn rename_exchange(a: &Path, b: &Path) -> io::Result<()> {
    Ok(rfs::renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE)?)
}

/// Where the next data region of `file` at or after `offset` starts (SEEK_DATA); None when
/// only a hole follows.
pub fn next_data(file: &File, offset: u64) -> io::Result<Option<u64>> {
    seek_region(file, SeekFrom::Data(offset))
}

/// Where the next hole of `file` at or after `offset` starts (SEEK_HOLE; the end of the
/// file counts as one); None past the end.
pub fn next_hole(file: &File, offset: u64) -> io::Result<Option<u64>> {
    seek_region(file, SeekFrom::Hole(offset))
}

fn seek_region(file: &File, to: SeekFrom) -> io::Result<Option<u64>> {
    match rfs::seek(file, to) {
        Ok(pos) => Ok(Some(pos)),
        Err(Errno::NXIO) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Deallocates `len` bytes of `file` at `offset`, keeping its size; EOPNOTSUPP where the
/// filesystem cannot make holes.
pub fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let mode = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
    Ok(rfs::fallocate(file, mode, offset, len)?)
}

/// The first bytes of a file, mapped read-only and shared (reads go straight to the page
/// cache, with no copy into a buffer), unmapped when dropped. Only for files that no other
/// process writes or truncates (a snapshot's own copy in the store): touching a mapped page
/// past the end of a file truncated meanwhile raises SIGBUS, which kills the process.
pub struct Mapped {
    at: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: read-only memory, unmapped only by its owner's drop.
unsafe impl Send for Mapped {}
// SAFETY: as above; nothing is written through the mapping.
unsafe impl Sync for Mapped {}

impl Mapped {
    /// The first `len` bytes of `file` (at least one, and no more than it holds); with
    /// `fault_in`, every page is mapped at once rather than as it is first read.
    pub fn new(file: &File, len: u64, fault_in: bool) -> io::Result<Mapped> {
        let len = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        use rustix::mm::{MapFlags, ProtFlags, mmap};
        let mut flags = MapFlags::SHARED;
        if fault_in {
            flags |= MapFlags::POPULATE;
        }
        // SAFETY: a new mapping, placed by the kernel where nothing else is mapped.
        let at = unsafe { mmap(std::ptr::null_mut(), len, ProtFlags::READ, flags, file, 0) }?;
        let at = std::ptr::NonNull::new(at.cast()).ok_or(io::ErrorKind::InvalidData)?;
        Ok(Mapped { at, len })
    }

    /// How many bytes are mapped.
    pub fn size(&self) -> u64 {
        self.len as u64
    }

    /// The mapped bytes `[from, from + len)`. The file's own writes show in them: a slice is
    /// not to be kept across a write to the file.
    pub fn bytes(&self, from: usize, len: usize) -> &[u8] {
        assert!(from.checked_add(len).is_some_and(|end| end <= self.len));
        // SAFETY: within the mapping, which lives as long as `self`; readable, as mapped.
        unsafe { std::slice::from_raw_parts(self.at.as_ptr().add(from), len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, which no slice outlives (they borrow `self`).
        let _ = unsafe { rustix::mm::munmap(self.at.as_ptr().cast(), self.len) };
    }
}

/// A [`Mapped`] file that other processes may truncate (a live file): a page that a read
/// finds past the file's end, which raises SIGBUS, is replaced by a page of zeros (the handler
/// maps one over it) and the mapping is marked [`Guarded::torn`], so the reader learns that
/// the file changed instead of the process being killed.
pub struct Guarded {
    mapped: Mapped,
    slot: &'static GuardSlot,
}

/// One registered [`Guarded`] range, read by the SIGBUS handler.
struct GuardSlot {
    start: AtomicUsize,
    end: AtomicUsize,
    torn: AtomicBool,
}

/// How many guarded mappings may be live at once (one per file being compared, per worker).
const GUARD_SLOTS: usize = 64;

static GUARDS: [GuardSlot; GUARD_SLOTS] = [const {
    GuardSlot {
        start: AtomicUsize::new(0),
        end: AtomicUsize::new(0),
        torn: AtomicBool::new(false),
    }
}; GUARD_SLOTS];

static PAGE_SIZE: AtomicUsize = AtomicUsize::new(0);
/// Whether the SIGBUS handler is in place (its installation is tried once; a mapping is only
/// guarded while it is).
static GUARD_INSTALLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

impl Guarded {
    /// The first `len` bytes of `file`; fails when no guard slot is free (the caller reads
    /// the file instead).
    pub fn new(file: &File, len: u64) -> io::Result<Guarded> {
        if !*GUARD_INSTALLED.get_or_init(|| install_sigbus_guard().is_ok()) {
            return Err(io::Error::other(
                "the SIGBUS handler could not be installed",
            ));
        }
        let mapped = Mapped::new(file, len, false)?;
        let start = mapped.at.as_ptr() as usize;
        let slot = GUARDS
            .iter()
            .find(|s| {
                s.start
                    .compare_exchange(0, start, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            })
            .ok_or_else(|| io::Error::other("too many guarded mappings at once"))?;
        slot.torn.store(false, Ordering::Release);
        slot.end.store(start + mapped.len, Ordering::Release);
        Ok(Guarded { mapped, slot })
    }

    /// As [`Mapped::bytes`]; where the file no longer reaches, zeros.
    pub fn bytes(&self, from: usize, len: usize) -> &[u8] {
        self.mapped.bytes(from, len)
    }

    /// Whether a read met the end of the file (it was truncated while mapped).
    pub fn torn(&self) -> bool {
        self.slot.torn.load(Ordering::Acquire)
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        // Out of the handler's sight before the pages go (with `mapped`, after this).
        self.slot.end.store(0, Ordering::Release);
        self.slot.start.store(0, Ordering::Release);
    }
}

fn install_sigbus_guard() -> io::Result<()> {
    PAGE_SIZE.store(rustix::param::page_size(), Ordering::Release);
    // SAFETY: a zeroed sigaction is a valid starting point; the handler below only makes
    // async-signal-safe calls (mmap, signal) and reads atomics.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_sigbus as *const () as usize;
    action.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER;
    // SAFETY: as above.
    let mut previous: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: installs the handler for SIGBUS only; the one it replaces (Rust's own, which
    // reports a stack overflow) is kept for the faults that are not ours.
    if unsafe { libc::sigaction(libc::SIGBUS, &action, &mut previous) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let _ = PREVIOUS_SIGBUS.set(previous);
    Ok(())
}

/// The SIGBUS disposition before [`on_sigbus`], given back for a fault outside every guarded
/// mapping.
static PREVIOUS_SIGBUS: std::sync::OnceLock<libc::sigaction> = std::sync::OnceLock::new();

extern "C" fn on_sigbus(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    let page = PAGE_SIZE.load(Ordering::Acquire);
    for slot in &GUARDS {
        let (start, end) = (
            slot.start.load(Ordering::Acquire),
            slot.end.load(Ordering::Acquire),
        );
        if start <= addr && addr < end && page > 0 {
            // SAFETY: the page lies inside a guarded mapping this process made and has not
            // unmapped (its slot is cleared first); MAP_FIXED replaces it with zeros.
            let zeros = unsafe {
                libc::mmap(
                    (addr & !(page - 1)) as *mut libc::c_void,
                    page,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if zeros != libc::MAP_FAILED {
                slot.torn.store(true, Ordering::Release);
                return;
            }
        }
    }
    // Not a guarded page: the disposition before ours acts when the read is retried.
    match PREVIOUS_SIGBUS.get() {
        // SAFETY: restoring a disposition the kernel gave us.
        Some(previous) => unsafe {
            libc::sigaction(libc::SIGBUS, previous, std::ptr::null_mut());
        },
        // SAFETY: restoring the default disposition of SIGBUS.
        None => unsafe {
            libc::signal(libc::SIGBUS, libc::SIG_DFL);
        },
    }
}

/// The linux FIEMAP ioctl's request header (linux/fiemap.h), followed here by room for
/// [`EXTENTS`] extents.
#[repr(C)]
struct Fiemap {
    start: u64,
    length: u64,
    flags: u32,
    mapped_extents: u32,
    extent_count: u32,
    reserved: u32,
    extents: [FiemapExtent; EXTENTS],
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapExtent {
    logical: u64,
    physical: u64,
    length: u64,
    reserved64: [u64; 2],
    flags: u32,
    reserved: [u32; 3],
}

/// Extents asked for per call: most stored files have a few.
const EXTENTS: usize = 64;
/// _IOWR('f', 11, struct fiemap)
const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
const FIEMAP_EXTENT_LAST: u32 = 0x1;
const FIEMAP_EXTENT_SHARED: u32 = 0x2000;

/// Bytes of `file`'s extents that the filesystem marks shared with another file (reflink
/// clones); 0 when it cannot tell (no FIEMAP).
pub fn shared_extent_bytes(file: &File) -> u64 {
    let mut shared = 0;
    let mut start = 0;
    loop {
        let mut map = Fiemap {
            start,
            length: u64::MAX - start,
            flags: 0,
            mapped_extents: 0,
            extent_count: EXTENTS as u32,
            reserved: 0,
            extents: [FiemapExtent::default(); EXTENTS],
        };
        // SAFETY: an open descriptor and a fiemap header with room for extent_count extents.
        if unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP, &mut map) } != 0 {
            return shared;
        }
        let mapped = &map.extents[..(map.mapped_extents as usize).min(EXTENTS)];
        let Some(last) = mapped.last() else {
            return shared;
        };
        shared += mapped
            .iter()
            .filter(|e| e.flags & FIEMAP_EXTENT_SHARED != 0)
            .map(|e| e.length)
            .sum::<u64>();
        if last.flags & FIEMAP_EXTENT_LAST != 0 {
            return shared;
        }
        start = last.logical + last.length;
    }
}

/// The layout of the kernel's `struct file_clone_range`, FICLONERANGE's argument.
#[repr(C)]
struct FileCloneRange {
    src_fd: i64,
    src_offset: u64,
    src_length: u64,
    dest_offset: u64,
}

const FICLONERANGE: rustix::ioctl::Opcode =
    rustix::ioctl::opcode::write::<FileCloneRange>(0x94, 13);

/// Makes the first `len` bytes of `dst` share `src`'s (FICLONERANGE): rustix wraps only
/// the whole-file FICLONE.
pub fn clone_head(src: &File, dst: &File, len: u64) -> io::Result<()> {
    let range = FileCloneRange {
        src_fd: i64::from(src.as_raw_fd()),
        src_offset: 0,
        src_length: len,
        dest_offset: 0,
    };
    use rustix::ioctl::{Setter, ioctl};
    // SAFETY: FICLONERANGE's opcode with the struct it reads, on an open descriptor; the
    // kernel writes nothing back.
    Ok(unsafe { ioctl(dst, Setter::<FICLONERANGE, FileCloneRange>::new(range)) }?)
}

/// The type (statfs f_type, the magic number) of the filesystem holding `path`.
pub fn fs_magic(path: &Path) -> io::Result<u32> {
    Ok(rfs::statfs(path)?.f_type as u32)
}

/// Bytes available to this user on the filesystem holding `path`.
pub fn available_bytes(path: &Path) -> io::Result<u64> {
    let st = rfs::statvfs(path)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Whether this user may create, replace and delete entries in the directory `dir`.
pub fn dir_writable(dir: &Path) -> bool {
    rfs::access(dir, rfs::Access::WRITE_OK | rfs::Access::EXEC_OK).is_ok()
}

pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Has the kernel kill the process `cmd` spawns (SIGKILL) when the thread that spawned it
/// ends (PR_SET_PDEATHSIG), and the process kill itself when this one died before that
/// took effect.
pub fn die_with_this_process(cmd: &mut std::process::Command) {
    use rustix::process as p;
    use std::os::unix::process::CommandExt;
    let parent = Pid::from_raw(std::process::id() as i32);
    // SAFETY: the hook runs between fork and exec and makes only raw prctl, getppid, getpid
    // and kill system calls (no allocation, no lock), which are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            p::set_parent_process_death_signal(Some(Signal::KILL))?;
            if p::getppid() != parent {
                p::kill_process(p::getpid(), Signal::KILL)?;
            }
            Ok(())
        })
    };
}

/// Forks this process into a detached one that carries on alone: its own session (no
/// terminal's Ctrl-C reaches it), stdin, stdout and stderr on /dev/null (it records its
/// outcome in the store, and nobody reads its output), and the
/// lowest CPU priority (nice 19) and the idle I/O class, so that the tests running meanwhile
/// are not slowed. Returns in both: `false` in the caller, `true` in the detached process.
/// Only sound while no other thread holds a lock or is needed by the child: the child gets
/// only the calling thread, and a lock another one held would stay held in it.
pub fn fork_detached() -> io::Result<bool> {
    // SAFETY: the caller is single-threaded here (see above), so the child's memory is
    // consistent and it may run any code.
    match unsafe { libc::fork() } {
        -1 => return Err(io::Error::last_os_error()),
        0 => {}
        _ => return Ok(false),
    }
    rustix::process::setsid()?;
    let null = rfs::open("/dev/null", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())?;
    rustix::stdio::dup2_stdin(&null)?;
    rustix::stdio::dup2_stdout(&null)?;
    rustix::stdio::dup2_stderr(&null)?;
    rustix::process::setpriority_process(None, 19)?;
    // ioprio_set(IOPRIO_WHO_PROCESS, self, IOPRIO_PRIO_VALUE(IOPRIO_CLASS_IDLE, 0)); rustix
    // has no wrapper. A kernel without it only leaves the I/O at normal priority.
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    const IOPRIO_CLASS_IDLE: libc::c_long = 3;
    const IOPRIO_CLASS_SHIFT: libc::c_long = 13;
    // SAFETY: a plain system call on this process, with integer arguments.
    let _ = unsafe {
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            0 as libc::c_long,
            IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT,
        )
    };
    Ok(true)
}

/// Gives the calling thread the lowest CPU priority (nice 19; on Linux a thread's nice value
/// is its own): it then takes only the time no other work wants.
pub fn lowest_thread_priority() -> io::Result<()> {
    let tid = rustix::thread::gettid();
    Ok(rustix::process::setpriority_process(Some(tid), 19)?)
}

/// Sends `signal` to the process group that `leader` leads (our own child, not reaped yet).
pub fn signal_group(leader: u32, signal: Signal) -> io::Result<()> {
    match Pid::from_raw(leader as i32) {
        Some(pid) => Ok(rustix::process::kill_process_group(pid, signal)?),
        None => Err(io::ErrorKind::InvalidInput.into()),
    }
}

/// Passes the signal `sig` on to the process `pid`; one kill(2), async-signal-safe, for a
/// signal handler.
pub fn forward_signal(pid: i32, sig: i32) {
    if let (Some(pid), Some(sig)) = (Pid::from_raw(pid), Signal::from_named_raw(sig)) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// Whether an error from [`DirFd::dir`] or a `*at` call means the tree is not what its walk
/// (or manifest) said: a symlink or a non-directory where a directory was (ELOOP, ENOTDIR,
/// EXDEV), a directory where a file was (EISDIR), an entry where there was none (EEXIST).
pub fn swapped(e: &io::Error) -> bool {
    matches!(
        Errno::from_io_error(e),
        Some(Errno::LOOP | Errno::NOTDIR | Errno::XDEV | Errno::ISDIR | Errno::EXIST)
    )
}

/// A manifest path's directory (empty at the top) and last component.
pub fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guarded mapping of a file truncated under it reads zeros where the file no longer
    /// reaches, and says so, where an unguarded one would kill the process with SIGBUS.
    #[test]
    fn a_guarded_mapping_survives_its_file_being_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("live");
        std::fs::write(&path, vec![7u8; 1 << 20]).unwrap();
        let file = File::open(&path).unwrap();
        let guarded = Guarded::new(&file, 1 << 20).unwrap();
        assert_eq!(guarded.bytes(0, 4096), &[7u8; 4096][..]);
        assert!(!guarded.torn());
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(4096)
            .unwrap();
        assert_eq!(guarded.bytes(0, 4096), &[7u8; 4096][..]);
        assert!(!guarded.torn());
        assert!(guarded.bytes(8192, 1 << 16).iter().all(|&b| b == 0));
        assert!(guarded.torn());
        drop(guarded);
        // The slot is free again, and a new mapping starts whole.
        std::fs::write(&path, vec![1u8; 8192]).unwrap();
        let again = Guarded::new(&file, 8192).unwrap();
        assert_eq!(again.bytes(4096, 4096), &[1u8; 4096][..]);
        assert!(!again.torn());
    }

    /// The hand-written FICLONERANGE opcode (from its struct's size) is the kernel's.
    #[test]
    fn ficlonerange_is_the_kernels() {
        assert_eq!(u64::from(FICLONERANGE), libc::FICLONERANGE);
    }

    /// Both ways of opening beneath (openat2, and the per-component chain older kernels get)
    /// refuse a symlink in any component and `.`/`..`, and reach plain directories.
    #[test]
    fn dir_never_follows_a_symlink_in_any_component() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::os::unix::fs::symlink(root.join("a"), root.join("link")).unwrap();
        std::os::unix::fs::symlink("b", root.join("a/lnk")).unwrap();
        let top = DirFd::open(&root).unwrap();
        for chain in [false, true] {
            NO_OPENAT2.store(chain, Ordering::Relaxed);
            let b = top.dir(b"a/b").unwrap();
            b.mkdir(b"c", 0o700).unwrap();
            b.remove(b"c", true).unwrap();
            for through in [&b"link/b"[..], b"a/lnk", b"link"] {
                let e = top.dir(through).err().unwrap();
                assert!(swapped(&e), "{chain} {through:?}: {e}");
            }
            for bad in [&b"a/../a"[..], b"./a", b"a//b", b"a/"] {
                let e = top.dir(bad).err().unwrap();
                assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
            }
            assert!(top.remove(b"..", true).is_err());
        }
        NO_OPENAT2.store(false, Ordering::Relaxed);
    }
}
