//! Facts about directory trees on disk: sizes, node directories, writability, free space,
//! and the path relations that make a configuration unsafe.

use std::fs::{self, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rustix::io::Errno;
use serde::Serialize;

use crate::exit::{Code, fail};
use crate::sys;

/// Entry and byte counts of a tree.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Totals {
    /// Non-directory entries.
    pub files: u64,
    /// Apparent size of regular files.
    pub bytes: u64,
    /// Bytes allocated on disk.
    pub allocated: u64,
}

impl Totals {
    pub fn add(&mut self, other: Totals) {
        self.files += other.files;
        self.bytes += other.bytes;
        self.allocated += other.allocated;
    }
}

pub fn totals(root: &Path) -> Result<Totals> {
    let mut t = Totals::default();
    // A hardlinked file's blocks count once, as on disk.
    let mut linked = std::collections::HashSet::new();
    // An entry that vanishes during the walk (nodes writing during an unquiesced create) is
    // simply not counted: these totals are an estimate, and the copy says what vanished.
    let vanished = |e: &walkdir::Error| {
        e.io_error()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound)
    };
    for entry in walkdir::WalkDir::new(root) {
        let entry = match entry {
            Err(e) if vanished(&e) => continue,
            other => other.with_context(|| format!("cannot read {}", root.display()))?,
        };
        let meta = match entry.metadata() {
            Err(e) if vanished(&e) => continue,
            other => other.with_context(|| format!("cannot stat {}", entry.path().display()))?,
        };
        if meta.is_dir() || meta.nlink() == 1 || linked.insert((meta.dev(), meta.ino())) {
            t.allocated += meta.blocks() * 512;
        }
        if !meta.is_dir() {
            t.files += 1;
        }
        if meta.is_file() {
            t.bytes += meta.len();
        }
    }
    Ok(t)
}

/// A tree built in snapshots_dir beside a staging snapshot (whose size it must not count):
/// an extracted image that adopt packs again, the files a pull builds before its mode takes
/// them. Named after the staging directory, so that a crash leaves it to the same cleanup;
/// removed when dropped.
pub struct TreeBeside(pub PathBuf);

impl TreeBeside {
    pub fn new(staging: &Path) -> TreeBeside {
        let mut name = staging.as_os_str().to_owned();
        name.push(".tree");
        TreeBeside(PathBuf::from(name))
    }
}

impl Drop for TreeBeside {
    fn drop(&mut self) {
        if let Err(e) = remove_tree(&self.0) {
            tracing::warn!(path = %self.0.display(), error = %crate::exit::one_line(&e), "tree_left: remove it by hand");
        }
    }
}

/// `rm -rf` that first makes directories writable, so a snapshot holding read-only
/// directories (copied faithfully from the data) can still be removed.
/// Never follows a symlink: a link at `path` is removed itself, and the chmod pass opens
/// each directory with O_NOFOLLOW and changes it through that descriptor.
pub fn remove_tree(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Ok(m) if !m.is_dir() => {
            return fs::remove_file(path)
                .with_context(|| format!("cannot remove {}", path.display()));
        }
        _ => {}
    }
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            use std::os::unix::fs::PermissionsExt;
            let walk = walkdir::WalkDir::new(path).follow_root_links(false);
            for entry in walk.into_iter().flatten() {
                if entry.file_type().is_dir() {
                    let _ = OpenOptions::new()
                        .read(true)
                        .custom_flags(sys::NOFOLLOW | sys::DIRECTORY)
                        .open(entry.path())
                        .and_then(|d| d.set_permissions(fs::Permissions::from_mode(0o700)));
                }
            }
            fs::remove_dir_all(path).with_context(|| format!("cannot remove {}", path.display()))
        }
    }
}

/// Seconds rounded to milliseconds, for log fields and JSON (`seconds=0.412`).
pub fn seconds(elapsed: std::time::Duration) -> f64 {
    (elapsed.as_secs_f64() * 1000.0).round() / 1000.0
}

/// The live data a configuration points at.
#[derive(Debug, Clone)]
pub struct Live {
    pub cache_dir: PathBuf,
    /// Relative to cache_dir.
    pub include: Vec<PathBuf>,
}

/// The work directory a squashfs extract stages in (in cache_dir) and its file list start with
/// this and their process's pid.
pub const WORK_PREFIX: &str = ".stagesnap-extract-";

impl Live {
    /// Removes what extracts whose process died (SIGKILL) left in cache_dir, a copy of part
    /// of the data each. A leftover that cannot be removed is a warning.
    pub fn remove_stale_work_dirs(&self) {
        let Ok(entries) = std::fs::read_dir(&self.cache_dir) else {
            return;
        };
        for entry in entries.flatten() {
            if !left_by_dead_process(&entry.file_name().to_string_lossy(), WORK_PREFIX) {
                continue;
            }
            let stale = entry.path();
            let removed = if stale.is_dir() {
                remove_tree(&stale)
            } else {
                std::fs::remove_file(&stale).map_err(Into::into)
            };
            match removed {
                Ok(()) => {
                    tracing::info!(path = %stale.display(), "extract_leftover_removed: a stagesnap killed during a restore left it")
                }
                Err(e) => {
                    tracing::warn!(path = %stale.display(), error = %crate::exit::one_line(&e), "extract_leftover_left: remove it by hand")
                }
            }
        }
    }

    pub fn path(&self, rel: &Path) -> PathBuf {
        self.cache_dir.join(rel)
    }

    /// Fails (exit 2) unless cache_dir and every included path exist and are real
    /// directories or files, not symlinks (a symlinked include would be replaced, not
    /// filled), and hold only plain node directories (see [`Live::check_nodes`]).
    pub fn check_present(&self) -> Result<()> {
        if !self.cache_dir.is_dir() {
            return Err(fail(
                Code::Usage,
                format!(
                    "cache_dir {} does not exist; start the environment first or fix [paths] cache_dir",
                    self.cache_dir.display()
                ),
            ));
        }
        for rel in &self.include {
            let path = self.path(rel);
            match path.symlink_metadata() {
                Err(_) => {
                    return Err(fail(
                        Code::Usage,
                        format!(
                            "included path {} ({}) does not exist; start the environment first or fix include in [suite_isolation]",
                            rel.display(),
                            path.display()
                        ),
                    ));
                }
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(fail(
                        Code::Usage,
                        format!(
                            "included path {} is a symlink; include its target instead",
                            path.display()
                        ),
                    ));
                }
                Ok(_) => {}
            }
        }
        self.check_nodes()
    }

    /// Refuses a node directory that is a symlink, whose data lives elsewhere and would not
    /// be captured (only the link would), and any mount point below an included path (a
    /// bind mount or another filesystem, which st_dev alone misses for bind mounts of the
    /// same filesystem): a restore would empty and refill whatever is mounted there.
    fn check_nodes(&self) -> Result<()> {
        let refuse = |path: &Path, what: String| {
            Err(fail(
                Code::Usage,
                format!(
                    "{} {what}; stagesnap snapshots only plain directories below the included paths. Leave that node out of include or make it a plain directory",
                    path.display()
                ),
            ))
        };
        for rel in &self.include {
            let Ok(rd) = std::fs::read_dir(self.path(rel)) else {
                continue;
            };
            for entry in rd.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_symlink()) && entry.path().is_dir() {
                    let target = std::fs::read_link(entry.path()).unwrap_or_default();
                    return refuse(
                        &entry.path(),
                        format!(
                            "is a symlink to the directory {}: the node's data lives there and would not be captured",
                            target.display()
                        ),
                    );
                }
            }
        }
        let included: Vec<PathBuf> = self
            .include
            .iter()
            .map(|r| resolve(&self.path(r)))
            .collect();
        if let Some(mount) =
            mount_points().find(|m| included.iter().any(|inc| m.starts_with(inc) && m != inc))
        {
            return refuse(
                mount,
                "is a mount point: a restore would empty and refill the filesystem mounted there"
                    .into(),
            );
        }
        Ok(())
    }

    /// Node directories: the immediate subdirectories of included directories, as
    /// relative paths such as `data/node1`.
    pub fn nodes(&self) -> Vec<String> {
        let mut nodes = Vec::new();
        for rel in &self.include {
            let Ok(rd) = std::fs::read_dir(self.path(rel)) else {
                continue;
            };
            for entry in rd.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    nodes.push(rel.join(entry.file_name()).to_string_lossy().into_owned());
                }
            }
        }
        nodes.sort_by_key(|n| natural_key(n));
        nodes
    }

    pub fn totals(&self) -> Result<Totals> {
        let mut t = Totals::default();
        for rel in &self.include {
            t.add(totals(&self.path(rel))?);
        }
        Ok(t)
    }

    /// Refuses (exit 2) a snapshots_dir inside an included path (it would snapshot itself,
    /// and a restore would delete it) or an included path inside snapshots_dir, also where
    /// the two meet only through a bind mount: each is compared as the filesystem that holds
    /// it and its path inside that filesystem, which two names of one directory share.
    pub fn check_store_outside(&self, snapshots_dir: &Path) -> Result<()> {
        let store = resolve(snapshots_dir);
        let mounts = mounts();
        let store_at = located(&store, mounts);
        for rel in &self.include {
            let inc = resolve(&self.path(rel));
            let by_name = store.starts_with(&inc) || inc.starts_with(&store);
            let by_mount = match (&store_at, located(&inc, mounts)) {
                (Some((dev, s)), Some((inc_dev, i))) => {
                    *dev == inc_dev && (s.starts_with(&i) || i.starts_with(s))
                }
                _ => false,
            };
            if by_name || by_mount {
                let how = if by_name {
                    ""
                } else {
                    " through a mount (the two are one filesystem's directories)"
                };
                return Err(fail(
                    Code::Usage,
                    format!(
                        "snapshots_dir {} overlaps the included path {}{how}; a snapshot would capture itself and a restore would delete it. Move snapshots_dir outside cache_dir's included paths",
                        snapshots_dir.display(),
                        inc.display()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A mount in this process's mount namespace.
struct Mount {
    /// `major:minor` of the filesystem.
    dev: String,
    /// The directory of that filesystem mounted here (not `/` for a bind mount of one).
    root: PathBuf,
    point: PathBuf,
}

/// Every mount in this process's mount namespace, in mount order (none when /proc is not
/// mounted), read once: both checks that use it run at start, before stagesnap mounts
/// anything itself, and reading it costs a tenth of a restore that finds nothing to do.
fn mounts() -> &'static [Mount] {
    static MOUNTS: std::sync::OnceLock<Vec<Mount>> = std::sync::OnceLock::new();
    MOUNTS.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let path = |field: &str| PathBuf::from(std::ffi::OsStr::from_bytes(&unescape_octal(field)));
        text.lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.splitn(6, ' ').collect();
                Some(Mount {
                    dev: fields.get(2)?.to_string(),
                    root: path(fields.get(3)?),
                    point: path(fields.get(4)?),
                })
            })
            .collect()
    })
}

fn mount_points() -> impl Iterator<Item = &'static Path> {
    mounts().iter().map(|m| m.point.as_path())
}

/// The filesystem holding the canonical `path` and the path inside it, from the mount on the
/// longest mount point above it (the last one mounted there: it hides the others).
fn located(path: &Path, mounts: &[Mount]) -> Option<(String, PathBuf)> {
    let mount = mounts
        .iter()
        .filter(|m| path.starts_with(&m.point))
        .max_by_key(|m| m.point.components().count())?;
    let rest = path.strip_prefix(&mount.point).ok()?;
    Some((mount.dev.clone(), mount.root.join(rest)))
}

/// A mountinfo field with its `\ooo` escapes (space, tab, newline, backslash) decoded.
fn unescape_octal(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let code = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match code {
            Some(c) => {
                out.push(c);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    out
}

/// The node (`data/node1`) of a path below the included path `rel`, if it is inside one.
pub fn node_of(rel: &Path, below: Option<&Path>) -> Option<String> {
    let below = below?;
    let mut parts = below.components();
    let first = parts.next()?;
    // An entry directly in the included path belongs to no node.
    parts.next()?;
    Some(rel.join(first).to_string_lossy().into_owned())
}

/// `node2` before `node10`.
pub(crate) fn natural_key(s: &str) -> (String, u64) {
    let digits: String = s.chars().rev().take_while(char::is_ascii_digit).collect();
    let n = digits
        .chars()
        .rev()
        .collect::<String>()
        .parse()
        .unwrap_or(0);
    (s[..s.len() - digits.len()].to_string(), n)
}

/// Canonical path of the longest existing prefix, with the rest appended, so paths that
/// do not exist yet still compare correctly through symlinks.
pub fn resolve(path: &Path) -> PathBuf {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.file_name(), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_os_string());
                existing = parent.to_path_buf();
            }
            _ => break,
        }
    }
    let mut out = existing.canonicalize().unwrap_or(existing);
    for name in rest.iter().rev() {
        out.push(name);
    }
    out
}

/// Bytes available to this user on the filesystem holding `path` (or its nearest existing parent).
pub fn free_bytes(path: &Path) -> Result<u64> {
    let mut p = path;
    while !p.exists() {
        p = p.parent().unwrap_or(Path::new("/"));
    }
    sys::available_bytes(p).with_context(|| format!("statvfs {}", p.display()))
}

/// The names of the xattrs of `path` itself (not of a symlink's target); none where the
/// filesystem has no xattrs.
pub fn xattr_names(path: &Path) -> Result<Vec<Vec<u8>>> {
    let buf = match sys::xattr_names_of(path) {
        Ok(buf) => buf,
        Err(e) if Errno::from_io_error(&e) == Some(Errno::NOTSUP) => return Ok(Vec::new()),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot list xattrs of {}", path.display()));
        }
    };
    Ok(buf
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

/// The first path under `root` whose entries this user could not rewrite during a restore
/// (a directory it cannot write, or a file it does not own and so cannot restore metadata of).
pub fn first_unwritable(root: &Path) -> Option<PathBuf> {
    let euid = sys::euid();
    if euid == 0 {
        return None;
    }
    for entry in walkdir::WalkDir::new(root).into_iter() {
        let Ok(entry) = entry else {
            return Some(root.to_path_buf());
        };
        let Ok(meta) = entry.path().symlink_metadata() else {
            return Some(entry.path().to_path_buf());
        };
        if meta.uid() != euid || (meta.is_dir() && !sys::dir_writable(entry.path())) {
            return Some(entry.path().to_path_buf());
        }
    }
    None
}

/// Whether `name` (`<prefix><pid>`, maybe followed by `-…`) was made by a process that no
/// longer runs. Never without /proc, where every process would look gone.
pub fn left_by_dead_process(name: &str, prefix: &str) -> bool {
    let Some(pid) = name
        .strip_prefix(prefix)
        .and_then(|rest| rest.split('-').next())
    else {
        return false;
    };
    let proc = Path::new("/proc");
    pid.parse::<u32>().is_ok() && proc.join("self").exists() && !proc.join(pid).exists()
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_of_paths() {
        let data = Path::new("data");
        assert_eq!(
            node_of(data, Some(Path::new("node1/lib/x"))).as_deref(),
            Some("data/node1")
        );
        assert_eq!(node_of(data, Some(Path::new("top-file"))), None);
        assert_eq!(node_of(data, None), None);
    }

    #[test]
    fn nodes_sort_naturally() {
        let mut v = vec!["data/node10", "data/node2", "data/node1"];
        v.sort_by_key(|n| natural_key(n));
        assert_eq!(v, ["data/node1", "data/node2", "data/node10"]);
    }

    #[test]
    fn overlap_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("cache/data")).unwrap();
        let live = Live {
            cache_dir: dir.path().join("cache"),
            include: vec![PathBuf::from("data")],
        };
        assert!(
            live.check_store_outside(&dir.path().join("cache/data/snaps"))
                .is_err()
        );
        assert!(live.check_store_outside(&dir.path().join("cache")).is_err());
        assert!(live.check_store_outside(&dir.path().join("snaps")).is_ok());
        assert!(
            live.check_store_outside(&dir.path().join("cache/other"))
                .is_ok()
        );
    }

    #[test]
    fn a_path_is_located_by_the_last_and_longest_mount_above_it() {
        let mount = |dev: &str, root: &str, point: &str| Mount {
            dev: dev.into(),
            root: root.into(),
            point: point.into(),
        };
        let mounts = [
            mount("8:1", "/", "/"),
            mount("0:5", "/", "/srv"),
            mount("0:9", "/", "/srv"),
            mount("8:1", "/home/x/data/node2/lib", "/srv/snaps"),
        ];
        let at = |p: &str| located(Path::new(p), &mounts).unwrap();
        assert_eq!(
            at("/srv/snaps/a"),
            ("8:1".into(), "/home/x/data/node2/lib/a".into())
        );
        assert_eq!(at("/srv/other"), ("0:9".into(), "/other".into()));
        assert_eq!(at("/home/x"), ("8:1".into(), "/home/x".into()));
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_octal(r"/a\040b\134c\011"), b"/a b\\c\t");
        assert_eq!(unescape_octal(r"/plain\9"), br"/plain\9");
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
