//! Which files some process may be writing right now, read from `/proc` (stagesnap runs as
//! root, so it sees every process, containers' included): files open for writing
//! (`/proc/PID/fdinfo/FD` flags) and files mapped shared and writable (`/proc/PID/maps`), whose
//! pages can change without the mtime moving (mdbx's WRITEMAP). Files are named by device and
//! inode, stat'ed through `/proc/PID/fd/FD` and `/proc/PID/map_files/RANGE`: the path a
//! container's process sees is the one in its own mount namespace, not the host's.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// (st_dev, st_ino) of a regular file.
pub type FileId = (u64, u64);

const O_ACCMODE: u32 = 0o3;

/// The regular files open for writing or mapped shared-writable by any process but this one,
/// as far as `/proc` shows them: a process that ends or closes meanwhile is simply missed
/// (what it wrote shows in the file's size or mtime, or it still holds the file).
pub fn scan() -> HashSet<FileId> {
    let me = std::process::id().to_string();
    let mut found = HashSet::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return found;
    };
    for proc in procs.flatten() {
        let name = proc.file_name();
        let Some(pid) = name.to_str() else { continue };
        if pid == me || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let dir = proc.path();
        open_for_writing(&dir, &mut found);
        mapped_shared_writable(&dir, &mut found);
    }
    found
}

fn open_for_writing(proc: &Path, found: &mut HashSet<FileId>) {
    let Ok(fds) = fs::read_dir(proc.join("fd")) else {
        return;
    };
    for fd in fds.flatten() {
        // Sockets, pipes and anonymous inodes link to `type:[…]`, never to a path.
        if !fs::read_link(fd.path())
            .is_ok_and(|l| l.as_os_str().as_encoded_bytes().first() == Some(&b'/'))
        {
            continue;
        }
        let info = proc.join("fdinfo").join(fd.file_name());
        let writable = fs::read_to_string(info)
            .ok()
            .and_then(|text| flags(&text))
            .is_some_and(|f| f & O_ACCMODE != 0);
        if writable {
            add(&fd.path(), found);
        }
    }
}

fn mapped_shared_writable(proc: &Path, found: &mut HashSet<FileId>) {
    let Ok(maps) = fs::read_to_string(proc.join("maps")) else {
        return;
    };
    for line in maps.lines() {
        let mut fields = line.split_ascii_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let inode = fields.nth(2);
        if perms.as_bytes().get(1) == Some(&b'w')
            && perms.as_bytes().get(3) == Some(&b's')
            && inode.is_some_and(|i| i != "0")
        {
            add(&proc.join("map_files").join(range), found);
        }
    }
}

/// The `flags:` of an fdinfo file (octal).
fn flags(fdinfo: &str) -> Option<u32> {
    let value = fdinfo.lines().find_map(|l| l.strip_prefix("flags:"))?;
    u32::from_str_radix(value.trim(), 8).ok()
}

/// The file a `/proc` magic link leads to, if it is a regular file.
fn add(link: &Path, found: &mut HashSet<FileId>) {
    if let Ok(meta) = fs::metadata(link)
        && meta.is_file()
    {
        found.insert((meta.dev(), meta.ino()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn fdinfo_flags_are_octal() {
        assert_eq!(
            flags("pos:\t0\nflags:\t0100002\nmnt_id:\t29\n"),
            Some(0o100002)
        );
        assert_eq!(flags("pos:\t0\n"), None);
    }

    /// Files other processes hold open read-write, or mapped shared and writable with the
    /// descriptor closed, show; one held read-only, or mapped privately, does not.
    #[test]
    fn finds_files_other_processes_write_or_map_shared_writable() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| {
            let p = dir.path().join(name);
            fs::write(&p, vec![0u8; 4096]).unwrap();
            p
        };
        let (rw, ro, shared, private) = (path("rw"), path("ro"), path("shared"), path("private"));
        let ready = dir.path().join("ready");
        let hold = |program: &str, script: &str, args: &[&Path]| {
            let _ = fs::remove_file(&ready);
            let mut child = Command::new(program)
                .arg("-c")
                .arg(script)
                .args(args)
                .arg(&ready)
                .stdin(Stdio::null())
                .spawn()
                .unwrap();
            while !ready.exists() {
                assert!(child.try_wait().unwrap().is_none(), "{program} ended early");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            child
        };
        let holders = [
            hold(
                "sh",
                r#"exec 3<>"$0" 4<"$1"; : >"$2"; exec sleep 60"#,
                &[&rw, &ro],
            ),
            hold(
                "python3",
                // mmap through ctypes: Python's mmap module keeps a duplicate of the
                // descriptor open, which would show as open for writing.
                "import ctypes, os, sys, time\n\
                 libc = ctypes.CDLL(None)\n\
                 libc.mmap.restype = ctypes.c_void_p\n\
                 libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, \
                 ctypes.c_int, ctypes.c_int, ctypes.c_long]\n\
                 def m(p, flags):\n    fd = os.open(p, os.O_RDWR)\n    \
                 assert libc.mmap(None, 4096, 3, flags, fd, 0) != ctypes.c_void_p(-1).value\n    \
                 os.close(fd)\n\
                 m(sys.argv[1], 1); m(sys.argv[2], 2)\n\
                 open(sys.argv[3], 'w').close(); time.sleep(60)",
                &[&shared, &private],
            ),
        ];
        let found = scan();
        for mut holder in holders {
            holder.kill().unwrap();
            holder.wait().unwrap();
        }
        let id = |p: &Path| {
            let m = fs::metadata(p).unwrap();
            (m.dev(), m.ino())
        };
        assert!(found.contains(&id(&rw)));
        assert!(found.contains(&id(&shared)));
        assert!(!found.contains(&id(&ro)));
        assert!(!found.contains(&id(&private)));
    }
}
