//! The cgroup of a process tree, to learn the moment none of its processes is left: a killed
//! container's processes are gone well before the docker daemon has torn the container down
//! (its network and mounts) and answers the kill. Both cgroup versions: v2 (`cgroup.events`
//! says `populated 0`, descendants included) and v1 (no `cgroup.procs` lists a process, in
//! the group or below it).

use std::io;
use std::path::{Path, PathBuf};

/// Where cgroup hierarchies are mounted: v2 alone at the top, or beside v1 under `unified`.
const ROOT: &str = "/sys/fs/cgroup";

#[derive(Debug)]
pub struct Cgroup {
    dir: PathBuf,
    v2: bool,
}

impl Cgroup {
    /// The cgroup of process `pid` if its path names `owner` (a container's id: the group is
    /// the container's own, not one it shares) and the group found under [`ROOT`] does hold
    /// `pid`. None otherwise: another pid namespace, another mount layout, a process gone.
    pub fn of(pid: u32, owner: &str) -> Option<Cgroup> {
        let listed = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        // v2 first: one file says it for the whole subtree.
        let mut lines: Vec<(bool, &str, &str)> = listed
            .lines()
            .filter_map(|l| {
                let mut f = l.splitn(3, ':');
                let (hierarchy, controllers, path) = (f.next()?, f.next()?, f.next()?);
                let v2 = hierarchy == "0" && controllers.is_empty();
                Some((v2, controllers, path.trim_start_matches('/')))
            })
            .filter(|(_, _, path)| path.contains(owner))
            .collect();
        lines.sort_by_key(|(v2, ..)| !v2);
        lines.into_iter().find_map(|(v2, controllers, path)| {
            let mounts = if v2 {
                vec![PathBuf::from(ROOT), Path::new(ROOT).join("unified")]
            } else {
                vec![Path::new(ROOT).join(controllers.trim_start_matches("name="))]
            };
            mounts.into_iter().find_map(|mount| {
                let group = Cgroup {
                    dir: mount.join(path),
                    v2,
                };
                let holds = procs(&group.dir).ok()?.contains(&pid);
                (holds && (!v2 || group.dir.join("cgroup.events").exists())).then_some(group)
            })
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether any process is left in the group or below it; a group removed has none.
    pub fn populated(&self) -> io::Result<bool> {
        let found = if self.v2 {
            std::fs::read_to_string(self.dir.join("cgroup.events")).map(|events| {
                events
                    .lines()
                    .any(|l| l.split_whitespace().eq(["populated", "1"]))
            })
        } else {
            populated_v1(&self.dir)
        };
        match found {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            other => other,
        }
    }
}

/// The processes `cgroup.procs` lists in `dir` (not below it).
fn procs(dir: &Path) -> io::Result<Vec<u32>> {
    Ok(std::fs::read_to_string(dir.join("cgroup.procs"))?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect())
}

/// v1 has no `populated` flag: a process anywhere in the subtree keeps it populated.
fn populated_v1(dir: &Path) -> io::Result<bool> {
    if !procs(dir)?.is_empty() {
        return Ok(true);
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() && populated_v1(&entry.path())? {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This test's own process: found only under a name its cgroup path holds.
    #[test]
    fn a_group_is_found_only_when_its_path_names_the_owner() {
        assert!(Cgroup::of(std::process::id(), "no-such-container-id").is_none());
        assert!(Cgroup::of(u32::MAX, "").is_none());
    }
}
