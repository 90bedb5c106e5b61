//! Exact fidelity, one table row per data-carrying mode: a tree holding every kind of entry and
//! metadata is snapshotted, scrambled, restored, and compared with the state of the original
//! taken by tests/tools/treestate.py, which shares no code with stagesnap.
//!
//! Decisions the table encodes:
//! - unix sockets are recreated as socket inodes (rsync -D and squashfs both keep them); a
//!   socket carries no state, the node binds a fresh one when it starts;
//! - mtimes are compared to the nanosecond in every row. squashfs images hold whole seconds
//!   only, and squashfs mode restores the nanoseconds from its fixups file, so it needs no
//!   exception; a mode that could not would have to declare one here;
//! - reflink rows run on XFS (reflink=1) and btrfs images each test makes and loop-mounts;
//! - a mode that cannot store POSIX ACLs (squashfs keeps only user., trusted. and security.
//!   xattrs, and refuses to snapshot a tree with ACLs rather than drop them) gets a tree
//!   without them. That is the only exception, stated here rather than hidden in the oracle.

mod common;

use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Env, LoopMount, assert_same_tree, cstr, is_root, set_mtime, set_xattr, treestate};
use stage_sample::GenerateOptions;

const MB: u64 = 1 << 20;

struct Row {
    mode: &'static str,
    /// Further settings for the row.
    set: &'static [(&'static str, &'static str)],
    /// Whether the mode stores POSIX ACLs (`system.posix_acl_*` xattrs).
    acls: bool,
    /// The filesystem the environment lives on: a loop-mounted one, or the temp dir's.
    fs: Option<&'static str>,
}

const FILESYSTEM: Row = Row {
    mode: "filesystem",
    set: &[],
    acls: true,
    fs: None,
};

/// squashfs images hold no system.* xattrs.
const SQUASHFS: Row = Row {
    mode: "squashfs",
    set: &[("squashfs_compression", "none")],
    acls: false,
    fs: None,
};

const REFLINK_XFS: Row = Row {
    mode: "reflink",
    set: &[],
    acls: true,
    fs: Some("xfs"),
};

const REFLINK_BTRFS: Row = Row {
    mode: "reflink",
    set: &[],
    acls: true,
    fs: Some("btrfs"),
};

#[test]
fn filesystem_mode_is_exact() {
    fidelity(&FILESYSTEM);
}

#[test]
fn squashfs_mode_is_exact_without_acls() {
    fidelity(&SQUASHFS);
}

#[test]
fn reflink_mode_is_exact_on_xfs() {
    fidelity(&REFLINK_XFS);
}

#[test]
fn reflink_mode_is_exact_on_btrfs() {
    fidelity(&REFLINK_BTRFS);
}

fn fidelity(row: &Row) {
    assert!(
        is_root(),
        "the fidelity test sets owners and devices: run it as root (scripts/test.sh does)"
    );
    let mount = row.fs.map(LoopMount::new);
    let opts = GenerateOptions {
        nodes: 2,
        size: 2 * MB,
        ..Default::default()
    };
    let env = match &mount {
        Some(m) => Env::with_options_in(&m.mnt, opts),
        None => Env::with_options(opts),
    };
    env.set("mode", row.mode);
    for (k, v) in row.set {
        env.set(k, v);
    }
    let root = env.data().join("node1/fidelity");
    build(&root, row.acls);
    let original = treestate(&env.data());

    env.run(&["create"], 0);
    env.run(&["status"], 0);

    scramble(&root);
    assert_ne!(
        treestate(&env.data()),
        original,
        "the scramble changed nothing"
    );
    let (diff, _) = env.run(&["diff", "clean_state"], 1);
    for expected in [
        "M data/node1 fidelity/plain",
        "- data/node1 fidelity/empty-dir",
        "T data/node1 fidelity/fifo",
        "U data/node1 fidelity/setgid-sticky",
        "+ data/node1 fidelity/added",
        "- data/node1 \"fidelity/\\xff\\xfe-not-utf8\"",
    ] {
        assert!(
            diff.lines().any(|l| l == expected),
            "diff lacks {expected:?}:\n{diff}"
        );
    }
    env.run(&["status"], 1);

    env.run(&["restore", "--verify", "full"], 0);
    assert_same_tree(&treestate(&env.data()), &original);
    env.run(&["status"], 0);
    env.run(&["verify"], 0);
}

/// Every kind of entry and metadata the issue lists, with explicit nanosecond mtimes.
fn build(root: &Path, acls: bool) {
    let p = |rel: &str| root.join(rel);
    fs::create_dir_all(p("empty-dir/deeper")).unwrap();
    fs::write(p("plain"), b"plain content").unwrap();
    fs::write(p("empty-file"), b"").unwrap();
    let sparse = fs::File::create(p("sparse")).unwrap();
    sparse.set_len(32 * MB).unwrap();
    std::os::unix::fs::FileExt::write_at(&sparse, b"island in the hole", 16 * MB).unwrap();
    drop(sparse);
    fs::create_dir(p("links")).unwrap();
    fs::write(p("linked-a"), b"one inode, three names").unwrap();
    fs::hard_link(p("linked-a"), p("linked-b")).unwrap();
    fs::hard_link(p("linked-a"), p("links/linked-c")).unwrap();
    symlink("plain", p("rel-link")).unwrap();
    symlink("../fidelity/links", p("links/rel-dir-link")).unwrap();
    symlink("/etc/hostname", p("abs-link")).unwrap();
    symlink("does/not/exist", p("dangling-link")).unwrap();
    mkfifo(&p("fifo"));
    drop(std::os::unix::net::UnixListener::bind(p("node_cli")).unwrap());
    fs::write(p("setuid"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(p("setuid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::write(p("private"), b"secret").unwrap();
    fs::set_permissions(p("private"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::create_dir(p("setgid-sticky")).unwrap();
    fs::set_permissions(p("setgid-sticky"), fs::Permissions::from_mode(0o3775)).unwrap();
    fs::create_dir(p("locked")).unwrap();
    fs::write(p("locked/inside"), b"x").unwrap();
    fs::set_permissions(p("locked"), fs::Permissions::from_mode(0o500)).unwrap();
    fs::write(p("name with spaces"), b"spaces").unwrap();
    fs::write(p("new\nline"), b"newline").unwrap();
    fs::write(root.join(bytes_name(b"\xff\xfe-not-utf8")), b"bytes").unwrap();
    let mut deep = root.join("deep");
    for i in 0..64 {
        deep.push(format!("level{i}"));
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("bottom"), b"deep").unwrap();

    set_xattr(&p("plain"), "user.origin", b"node1");
    set_xattr(&p("plain"), "user.binary", b"\x00\xff\x01");
    set_xattr(&p("setgid-sticky"), "user.dir", b"d");
    if acls {
        sh(&format!(
            "setfacl -m u:1234:rw,g:5678:r {}",
            quote(&p("private"))
        ));
        sh(&format!(
            "setfacl -d -m u:1234:rwx {}",
            quote(&p("setgid-sticky"))
        ));
    }
    lchown(p("plain"), Some(1234), Some(5678)).unwrap();
    lchown(p("rel-link"), Some(4321), Some(8765)).unwrap();
    lchown(p("fifo"), Some(1000), Some(1000)).unwrap();
    lchown(p("setgid-sticky"), Some(2000), Some(3000)).unwrap();
    lchown(p("linked-a"), Some(77), Some(88)).unwrap();

    // Children before parents, so setting a child's time does not move its parent's.
    let entries: Vec<PathBuf> = walkdir::WalkDir::new(root)
        .contents_first(true)
        .into_iter()
        .map(|e| e.unwrap().into_path())
        .collect();
    for (i, path) in entries.iter().enumerate() {
        set_mtime(path, 1_600_000_000 + i as i64, 123_456_789 + i as i64);
    }
}

/// A suite's worth of damage to every kind.
fn scramble(root: &Path) {
    let p = |rel: &str| root.join(rel);
    fs::write(p("plain"), b"changed content, another size").unwrap();
    fs::write(p("empty-file"), b"not empty now").unwrap();
    fs::write(p("sparse"), b"no longer sparse").unwrap();
    fs::remove_file(p("linked-b")).unwrap();
    fs::write(p("linked-b"), b"one inode, three names").unwrap();
    fs::remove_file(p("rel-link")).unwrap();
    symlink("elsewhere", p("rel-link")).unwrap();
    fs::remove_file(p("dangling-link")).unwrap();
    lchown(p("abs-link"), Some(99), Some(99)).unwrap();
    fs::remove_file(p("fifo")).unwrap();
    fs::write(p("fifo"), b"a file where the fifo was").unwrap();
    fs::remove_file(p("node_cli")).unwrap();
    fs::set_permissions(p("setuid"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(p("setgid-sticky"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(p("locked"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(p("locked/added-inside"), b"y").unwrap();
    fs::remove_dir_all(p("empty-dir")).unwrap();
    sh(&format!("setfacl -b {}", quote(&p("private"))));
    lchown(p("linked-a"), Some(0), Some(0)).unwrap();
    fs::rename(p("new\nline"), p("renamed")).unwrap();
    fs::remove_file(root.join(bytes_name(b"\xff\xfe-not-utf8"))).unwrap();
    sh(&format!("setfattr -x user.origin {}", quote(&p("plain"))));
    set_mtime(&p("name with spaces"), 1_600_000_000, 1);
    fs::write(p("added"), b"new").unwrap();
    let deep: PathBuf = (0..64).map(|i| format!("level{i}")).collect();
    fs::remove_file(root.join("deep").join(&deep).join("bottom")).unwrap();
}

fn bytes_name(b: &[u8]) -> PathBuf {
    PathBuf::from(std::ffi::OsString::from_vec(b.to_vec()))
}

fn mkfifo(p: &Path) {
    // SAFETY: valid C string.
    assert_eq!(unsafe { libc::mkfifo(cstr(p).as_ptr(), 0o640) }, 0);
}

fn quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

fn sh(script: &str) {
    let status = Command::new("sh").arg("-c").arg(script).status().unwrap();
    assert!(status.success(), "{script}");
}
