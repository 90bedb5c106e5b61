//! What a squashfs image cannot hold, kept beside it in `payload/fixups` and put back after
//! a restore from the image alone (an extract; the mount restore takes every attribute from the
//! snapshot's manifest instead). squashfs stores mtimes as unsigned 32-bit seconds (no nanoseconds, nothing
//! before 1970 or after 2106), and unsquashfs leaves a hole only where a whole 128 KiB block
//! is zero. So the file lists every entry's exact mtime and every sparse file's holes.
//!
//! Format: NUL-terminated records (paths are raw bytes, relative to cache_dir): a header
//! `stagesnap-fixups 1`, then `t<sec> <nsec> <path>` and `h<offset>+<length>,… <path>`.

use std::fs::{File, Metadata};
use std::io::{BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rustix::fs::{OFlags, Stat};
use rustix::io::Errno;

use crate::exit::{Code, fail};
use crate::sys::{self, DirFd, Pinned};
use crate::tree::{Live, xattr_names};

const HEADER: &[u8] = b"stagesnap-fixups 1";
/// xattr namespaces squashfs stores; mksquashfs drops any other (POSIX ACLs are `system.*`)
/// with only a warning.
const STORABLE_XATTRS: &[&[u8]] = &[b"user.", b"trusted.", b"security."];

/// A modification time to the nanosecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Time {
    pub sec: i64,
    pub nsec: i64,
}

impl Time {
    pub fn of(meta: &Metadata) -> Time {
        Time {
            sec: meta.mtime(),
            nsec: meta.mtime_nsec(),
        }
    }

    fn of_stat(stat: &Stat) -> Time {
        Time {
            sec: stat.st_mtime,
            nsec: stat.st_mtime_nsec as i64,
        }
    }

    /// The time as the image keeps it, and so as unsquashfs and a mount show it.
    fn in_image(self) -> Time {
        Time {
            sec: i64::from(self.sec as u32),
            nsec: 0,
        }
    }
}

/// What [`Fixups::apply`] changed.
#[derive(Debug, Default)]
pub struct Applied {
    pub times: u64,
    pub holed_files: u64,
}

#[derive(Debug, Default, PartialEq)]
pub struct Fixups {
    times: Vec<(PathBuf, Time)>,
    /// Sparse files and their holes as (offset, length).
    holes: Vec<(PathBuf, Vec<(u64, u64)>)>,
}

impl Fixups {
    /// Records the included paths' mtimes and holes. Fails, naming the entry, when one has
    /// an xattr squashfs cannot store: dropping it silently would break "restores exactly".
    pub fn capture(live: &Live) -> Result<Fixups> {
        let mut out = Fixups::default();
        for rel in &live.include {
            let root = live.path(rel);
            for entry in walkdir::WalkDir::new(&root) {
                let entry = entry.with_context(|| format!("cannot read {}", root.display()))?;
                let path = entry.path();
                let meta = entry
                    .metadata()
                    .with_context(|| format!("cannot stat {}", path.display()))?;
                if let Some(name) = unstorable_xattr(path)? {
                    return Err(fail(
                        Code::Failure,
                        format!(
                            "cannot snapshot {}: it has the extended attribute {name}, which squashfs images cannot store (only user.*, trusted.* and security.*; POSIX ACLs are system.*). Use mode = filesystem, or remove it (setfacl -b / setfattr -x)",
                            path.display()
                        ),
                    ));
                }
                let rel = path.strip_prefix(&live.cache_dir)?.to_path_buf();
                if meta.is_file() && meta.blocks() * 512 < meta.len() {
                    out.holes.push((rel.clone(), hole_map(path, meta.len())?));
                }
                out.times.push((rel, Time::of(&meta)));
            }
        }
        Ok(out)
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let file =
            File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        w.write_all(HEADER)?;
        w.write_all(b"\0")?;
        for (rel, t) in &self.times {
            write!(w, "t{} {} ", t.sec, t.nsec)?;
            w.write_all(rel.as_os_str().as_bytes())?;
            w.write_all(b"\0")?;
        }
        for (rel, holes) in &self.holes {
            let ranges: Vec<String> = holes.iter().map(|(o, l)| format!("{o}+{l}")).collect();
            write!(w, "h{} ", ranges.join(","))?;
            w.write_all(rel.as_os_str().as_bytes())?;
            w.write_all(b"\0")?;
        }
        w.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .with_context(|| format!("cannot write {}", path.display()))
    }

    pub fn read(path: &Path) -> Result<Fixups> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        parse(&bytes).with_context(|| format!("{} is not a fixups file", path.display()))
    }

    /// Puts back holes, then exact mtimes. A time goes back only where the entry's mtime falls
    /// in the second the image holds (the restore wrote it, or left a directory it
    /// changed within that second), and a hole only where the file holds zeros: an entry
    /// that changed while the snapshot was taken is left as the image has it. Each entry is
    /// resolved beneath cache_dir without following a symlink (the restored tree came from
    /// the image, untrusted); one that is not there that way is left alone.
    pub fn apply(&self, cache_dir: &Path) -> Result<Applied> {
        let root = DirFd::open(cache_dir)
            .with_context(|| format!("cannot open {}", cache_dir.display()))?;
        let mut applied = Applied::default();
        // Holes first: punching one changes the file's mtime, which is then put back.
        for (rel, holes) in &self.holes {
            let Ok((dir, name)) = root.parent_of(rel.as_os_str().as_bytes()) else {
                continue;
            };
            if punch(&dir, name, &cache_dir.join(rel), holes)? {
                applied.holed_files += 1;
            }
        }
        for (rel, recorded) in &self.times {
            let Ok(entry) = root
                .parent_of(rel.as_os_str().as_bytes())
                .and_then(|(dir, name)| dir.pin(name))
            else {
                continue;
            };
            let live = Time::of_stat(&entry.stat()?);
            if live != *recorded && live.sec == recorded.in_image().sec {
                set_mtime(&entry, *recorded, &cache_dir.join(rel))?;
                applied.times += 1;
            }
        }
        Ok(applied)
    }

    pub fn entries(&self) -> usize {
        self.times.len()
    }

    pub fn sparse_files(&self) -> usize {
        self.holes.len()
    }
}

fn parse(bytes: &[u8]) -> Result<Fixups> {
    let mut records = bytes.split(|&b| b == 0);
    if records.next() != Some(HEADER) {
        bail!(
            "it does not start with {:?}",
            String::from_utf8_lossy(HEADER)
        );
    }
    let mut out = Fixups::default();
    for record in records.filter(|r| !r.is_empty()) {
        let (kind, rest) = record.split_at(1);
        let fields = if kind == b"t" { 3 } else { 2 };
        let parts: Vec<&[u8]> = rest.splitn(fields, |&b| b == b' ').collect();
        let text = |i: usize| -> Result<&str> {
            Ok(std::str::from_utf8(parts.get(i).context("short record")?)?)
        };
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(
            parts.last().context("empty record")?,
        ));
        match kind {
            b"t" => out.times.push((
                path,
                Time {
                    sec: text(0)?.parse()?,
                    nsec: text(1)?.parse()?,
                },
            )),
            b"h" => {
                let mut holes = Vec::new();
                for range in text(0)?.split(',') {
                    let (o, l) = range.split_once('+').context("bad hole range")?;
                    holes.push((o.parse()?, l.parse()?));
                }
                out.holes.push((path, holes));
            }
            _ => bail!("unknown record kind {:?}", String::from_utf8_lossy(kind)),
        }
    }
    Ok(out)
}

/// The first xattr of `path` (not of a symlink's target) outside [`STORABLE_XATTRS`].
fn unstorable_xattr(path: &Path) -> Result<Option<String>> {
    Ok(xattr_names(path)?
        .into_iter()
        .find(|n| !STORABLE_XATTRS.iter().any(|p| n.starts_with(p)))
        .map(|n| String::from_utf8_lossy(&n).into_owned()))
}

/// The holes of a sparse file, as the filesystem reports them (SEEK_HOLE/SEEK_DATA).
fn hole_map(path: &Path, size: u64) -> Result<Vec<(u64, u64)>> {
    let file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut holes = Vec::new();
    let mut pos = 0;
    while let Some(hole) = sys::next_hole(&file, pos)?.filter(|&h| h < size) {
        let data = sys::next_data(&file, hole)?.unwrap_or(size).min(size);
        holes.push((hole, data - hole));
        pos = data;
    }
    Ok(holes)
}

/// Punches the recorded holes of the regular file `name` in `dir` (`path` for messages) that
/// hold zeros but are allocated (unsquashfs wrote them out), keeping the file's mtime. True
/// when it punched any.
fn punch(dir: &DirFd, name: &[u8], path: &Path, holes: &[(u64, u64)]) -> Result<bool> {
    let Ok(file) = dir.open_file(name, OFlags::RDWR | OFlags::NONBLOCK, 0) else {
        return Ok(false);
    };
    let meta = file
        .metadata()
        .with_context(|| format!("cannot stat {}", path.display()))?;
    if !meta.is_file() {
        // A fifo or device there: never read or written as if it were the file.
        return Ok(false);
    }
    let mut punched = false;
    for &(offset, len) in holes {
        let end = offset.saturating_add(len).min(meta.len());
        if end <= offset || !allocated_zeros(&file, offset, end)? {
            continue;
        }
        if let Err(err) = sys::punch_hole(&file, offset, end - offset) {
            if Errno::from_io_error(&err) == Some(Errno::OPNOTSUPP) {
                // The filesystem cannot make holes: the content is right all the same.
                break;
            }
            return Err(err).with_context(|| format!("cannot punch a hole in {}", path.display()));
        }
        punched = true;
    }
    if punched {
        set_mtime(&dir.pin(name)?, Time::of(&meta), path)?;
    }
    Ok(punched)
}

/// Sets the mtime of a pinned entry (`path` for messages).
fn set_mtime(entry: &Pinned, t: Time, path: &Path) -> Result<()> {
    let ns = t
        .sec
        .checked_mul(1_000_000_000)
        .and_then(|s| s.checked_add(t.nsec))
        .with_context(|| format!("the mtime recorded for {} is out of range", path.display()))?;
    entry
        .set_mtime(ns)
        .with_context(|| format!("cannot set the mtime of {}", path.display()))
}

/// True when `[start, end)` of `file` has allocated blocks and they all hold zeros.
fn allocated_zeros(file: &File, start: u64, end: u64) -> Result<bool> {
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = start;
    let mut allocated = false;
    while let Some(data) = sys::next_data(file, pos)?.filter(|&d| d < end) {
        let stop = sys::next_hole(file, data)?.unwrap_or(end).min(end);
        let mut at = data;
        while at < stop {
            let n = ((stop - at) as usize).min(buf.len());
            file.read_exact_at(&mut buf[..n], at)?;
            if buf[..n].iter().any(|&b| b != 0) {
                return Ok(false);
            }
            at += n as u64;
        }
        allocated = true;
        pos = stop;
    }
    Ok(allocated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_odd_paths_and_times() {
        let fixups = Fixups {
            times: vec![
                (PathBuf::from("data/a b/c"), Time { sec: 1, nsec: 2 }),
                (
                    PathBuf::from(std::ffi::OsStr::from_bytes(b"data/\xff\n")),
                    Time {
                        sec: -315_619_200,
                        nsec: 999_999_999,
                    },
                ),
            ],
            holes: vec![(
                PathBuf::from("data/db"),
                vec![(4096, 8192), (1 << 20, 4096)],
            )],
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fixups");
        fixups.write(&path).unwrap();
        assert_eq!(Fixups::read(&path).unwrap(), fixups);
        std::fs::write(&path, b"something else\0").unwrap();
        assert!(Fixups::read(&path).is_err());
    }

    #[test]
    fn image_times_are_unsigned_whole_seconds() {
        let t = Time {
            sec: 1_735_689_600,
            nsec: 5,
        };
        assert_eq!(
            t.in_image(),
            Time {
                sec: 1_735_689_600,
                nsec: 0
            }
        );
        // 1960 wraps around as mksquashfs stores it.
        let old = Time {
            sec: -315_619_200,
            nsec: 0,
        };
        assert_eq!(old.in_image().sec, 3_979_348_096);
    }
}
