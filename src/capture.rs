//! create's proof that a snapshot holds nothing from outside the live data.
//!
//! rsync and mksquashfs resolve paths: a container that swaps a directory for a symlink
//! (`renameat2(RENAME_EXCHANGE)`) between the copier's lstat and its open makes it read the
//! symlink's target, anywhere on the host. The copiers cannot be told not to, so the create
//! checks afterwards, before the snapshot becomes visible:
//!
//! 1. [`Watch::start`] records every live entry's kind, inode and ctime, then waits until
//!    the clock has moved past the newest directory ctime, so that any later rename, create or
//!    unlink in a directory gives it a ctime it did not have.
//! 2. [`Watch::changes`] records them again after the copy. A swap during the copy needs a
//!    change in the swapped entry's directory, and a swap back (or the symlink left in place)
//!    another: that directory's ctime differs, or a path changed kind. The ctime is the
//!    kernel's clock, which a container (no CAP_SYS_TIME) cannot set.
//! 3. Beneath each such directory [`check`] compares what the snapshot holds with the live
//!    data, read without following any symlink: every regular file held must be the start of
//!    the live file at its path (an honest append only adds to the end), every other entry
//!    must exist live with its kind (and symlink target). Content read from outside can only
//!    pass by being bytes the container already has.

use std::collections::HashMap;
use std::io::Read;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use rustix::fs::OFlags;

use crate::exit::{Code, Error, fail};
use crate::manifest::walk::{self, Stamp};
use crate::manifest::{Kind, Name};
use crate::sys::DirFd;
use crate::tree::Live;

/// How far past a directory's ctime the clock must be before the copy starts: more than a
/// coarse clock tick (ctimes come from the tick-granular clock, 10 ms at HZ=100), or more than
/// a second on a filesystem that stores whole seconds.
const FINE_MARGIN: Duration = Duration::from_millis(20);
const WHOLE_SECOND_MARGIN: Duration = Duration::from_millis(2020);

/// One live entry as a walk saw it.
struct Seen {
    kind: Kind,
    target: Option<Name>,
    stamp: Stamp,
}

type Walk = HashMap<Name, Seen>;

fn walk(live: &Live) -> Result<Walk> {
    let started = std::time::Instant::now();
    let seen: Walk = walk::scan_stamped(&live.cache_dir, &live.include)?
        .into_iter()
        .map(|(e, _, stamp)| {
            let seen = Seen {
                kind: e.kind,
                target: e.target,
                stamp,
            };
            (e.path, seen)
        })
        .collect();
    tracing::debug!(
        entries = seen.len(),
        seconds = crate::tree::seconds(started.elapsed()),
        "capture_walked"
    );
    Ok(seen)
}

/// The live data as it was before the copy.
pub struct Watch {
    before: Walk,
}

impl Watch {
    /// Records the live entries and waits (at most a tick, unless a directory changed in the
    /// last moments) until a change to any directory would show in its ctime.
    pub fn start(live: &Live) -> Result<Watch> {
        let before = walk(live)?;
        let ctimes: Vec<i64> = before
            .values()
            .filter(|s| s.kind == Kind::Dir)
            .map(|s| s.stamp.1)
            .collect();
        let margin = if ctimes.iter().all(|c| c % 1_000_000_000 == 0) {
            WHOLE_SECOND_MARGIN
        } else {
            FINE_MARGIN
        };
        if let Some(&newest) = ctimes.iter().max() {
            let due = UNIX_EPOCH + Duration::from_nanos(newest.max(0) as u64) + margin;
            // Bounded by the margin: a ctime ahead of the clock means the clock was set back.
            if let Ok(wait) = due.duration_since(SystemTime::now()) {
                std::thread::sleep(wait.min(margin));
            }
        }
        Ok(Watch { before })
    }

    /// Walks the live data again, after the copy. A directory is suspect (its entries may
    /// have been swapped during the copy) when its inode or ctime changed, it appeared or
    /// went, or it holds a path that changed kind.
    pub fn changes(self, live: &Live) -> Result<Changes> {
        let after = walk(live)?;
        let mut dirs: Vec<Name> = Vec::new();
        for (path, seen) in self.before.iter().chain(after.iter()) {
            let (b, a) = (self.before.get(path), after.get(path));
            let same =
                matches!((b, a), (Some(b), Some(a)) if b.kind == a.kind && b.stamp == a.stamp);
            if same || (seen.kind != Kind::Dir && b.map(|b| b.kind) == a.map(|a| a.kind)) {
                continue;
            }
            dirs.push(if seen.kind == Kind::Dir {
                path.clone()
            } else {
                parent(path)
            });
        }
        dirs.sort();
        dirs.dedup();
        let mut outer: Vec<Name> = Vec::new();
        for dir in dirs {
            if !outer.iter().any(|o| beneath(&dir, o)) {
                outer.push(dir);
            }
        }
        if let Some(first) = outer.first() {
            tracing::debug!(directories = outer.len(), first = %first.display(), "capture_changed_during_copy");
        }
        Ok(Changes {
            suspects: outer,
            after,
        })
    }
}

/// What changed in the live data while it was copied.
pub struct Changes {
    /// The suspect directories, outermost only, sorted.
    pub suspects: Vec<Name>,
    /// The live entries as the walk after the copy saw them.
    after: Walk,
}

fn parent(path: &Name) -> Name {
    let cut = path.0.iter().rposition(|&b| b == b'/').unwrap_or(0);
    Name(path.0[..cut].to_vec())
}

/// Whether `path` lies strictly beneath the directory `dir`.
pub fn beneath(path: &Name, dir: &Name) -> bool {
    path.0.len() > dir.0.len() && path.0.starts_with(&dir.0) && path.0[dir.0.len()] == b'/'
}

/// An entry as the snapshot holds it.
pub struct Held {
    pub path: Name,
    pub kind: Kind,
    pub target: Option<Name>,
    /// Regular files: the BLAKE3 (hex) of the content held, and its length.
    pub content: Option<(String, u64)>,
}

/// Fails (exit 1, nothing made visible) unless every entry held beneath a suspect directory
/// matches the live data there (see the module docs). `tool` is the copier, for the message.
pub fn check(live: &Live, changes: &Changes, held: &[Held], tool: &str) -> Result<()> {
    let root = DirFd::open(&live.cache_dir).map_err(|e| Error::unreadable(&live.cache_dir, e))?;
    for h in held {
        let Some(dir) = changes.suspects.iter().find(|d| beneath(&h.path, d)) else {
            continue;
        };
        let seen = changes.after.get(&h.path);
        let matches = match &h.content {
            // Only a regular file is opened: opening a device node can act on the device.
            Some((blake3, len)) => {
                seen.is_some_and(|s| s.kind == Kind::File)
                    && live_prefix(&root, &h.path, *len)?.as_deref() == Some(blake3)
            }
            None => seen.is_some_and(|s| s.kind == h.kind && s.target == h.target),
        };
        if !matches {
            // The directory entry through which it was read: `data/node1/lib` for
            // `data/node1/lib/x` when data/node1 changed.
            let rest = &h.path.0[dir.0.len() + 1..];
            let first = rest.split(|&b| b == b'/').next().unwrap_or(rest);
            let mut named = dir.0.clone();
            named.push(b'/');
            named.extend_from_slice(first);
            return Err(fail(
                Code::Failure,
                format!(
                    "{} changed during the copy (entries renamed or replaced while {tool} read them; {} as copied is not in the live data); nothing was stored. Quiesce the nodes (quiesce = pause) and create again",
                    Name(named).display(),
                    h.path.display()
                ),
            ));
        }
    }
    Ok(())
}

/// The BLAKE3 (hex) of the first `len` bytes of the live regular file `path`, reached
/// without following a symlink; None when there is no such file or it is shorter.
fn live_prefix(root: &DirFd, path: &Name, len: u64) -> Result<Option<String>> {
    let opened = root
        .parent_of(&path.0)
        .and_then(|(d, name)| d.open_file(name, OFlags::RDONLY | OFlags::NONBLOCK, 0));
    let Ok(file) = opened else {
        return Ok(None);
    };
    if !file.metadata()?.is_file() {
        return Ok(None);
    }
    let mut hasher = blake3::Hasher::new();
    let read = std::io::copy(&mut (&file).take(len), &mut hasher)?;
    Ok((read == len).then(|| hasher.finalize().to_hex().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> (tempfile::TempDir, Live) {
        let tmp = tempfile::tempdir().unwrap();
        let node = tmp.path().join("data/node1");
        std::fs::create_dir_all(node.join("lib/sub")).unwrap();
        std::fs::write(node.join("lib/sub/x"), b"x").unwrap();
        std::fs::write(node.join("log"), b"line\n").unwrap();
        let live = Live {
            cache_dir: tmp.path().to_path_buf(),
            include: vec!["data".into()],
        };
        (tmp, live)
    }

    fn names(dirs: &[Name]) -> Vec<String> {
        dirs.iter().map(Name::display).collect()
    }

    /// An append changes no directory: nothing to compare.
    #[test]
    fn appending_leaves_no_suspects() {
        let (tmp, live) = tree();
        let watch = Watch::start(&live).unwrap();
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(tmp.path().join("data/node1/log"))
            .unwrap();
        std::io::Write::write_all(&mut log, b"more\n").unwrap();
        assert!(watch.changes(&live).unwrap().suspects.is_empty());
    }

    /// A directory swapped for a symlink and back leaves every name and inode as it was; the
    /// directory holding it is still caught, by its ctime, and only the outermost is named.
    #[test]
    fn a_swap_and_back_is_caught_by_the_ctime() {
        let (tmp, live) = tree();
        let node = tmp.path().join("data/node1");
        let watch = Watch::start(&live).unwrap();
        std::fs::rename(node.join("lib"), tmp.path().join("stash")).unwrap();
        std::os::unix::fs::symlink("/etc", node.join("lib")).unwrap();
        std::fs::remove_file(node.join("lib")).unwrap();
        std::fs::rename(tmp.path().join("stash"), node.join("lib")).unwrap();
        assert_eq!(
            names(&watch.changes(&live).unwrap().suspects),
            ["data/node1"]
        );
    }

    /// A symlink left where a directory was is a change of kind.
    #[test]
    fn a_swap_left_in_place_is_caught() {
        let (tmp, live) = tree();
        let sub = tmp.path().join("data/node1/lib/sub");
        let watch = Watch::start(&live).unwrap();
        std::fs::rename(&sub, tmp.path().join("stash")).unwrap();
        std::os::unix::fs::symlink("/etc", &sub).unwrap();
        assert_eq!(
            names(&watch.changes(&live).unwrap().suspects),
            ["data/node1/lib"]
        );
    }

    #[test]
    fn beneath_is_strict_and_by_component() {
        let n = |s: &str| Name(s.as_bytes().to_vec());
        assert!(beneath(&n("data/node1/lib"), &n("data/node1")));
        assert!(!beneath(&n("data/node1"), &n("data/node1")));
        assert!(!beneath(&n("data/node10/lib"), &n("data/node1")));
    }
}
