//! reflink mode end to end, on XFS (reflink=1) and btrfs filesystems loop-mounted for each test,
//! and its refusals elsewhere. Exact fidelity of every kind of entry is tests/fidelity.rs's.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Env, LoopMount, assert_same_tree, dir_inodes, treestate};
use stage_sample::GenerateOptions;

const MB: u64 = 1 << 20;

fn env_on(mount: &LoopMount) -> Env {
    Env::with_options_in(
        &mount.mnt,
        GenerateOptions {
            nodes: 3,
            size: 24 * MB,
            mode: "reflink".into(),
            ..Default::default()
        },
    )
}

/// Whether `file` shares extents with another file (filefrag's `shared` flag).
fn shares_blocks(file: &Path) -> bool {
    let out = Command::new("filefrag")
        .arg("-v")
        .arg(file)
        .output()
        .unwrap();
    assert!(out.status.success(), "filefrag {}", file.display());
    String::from_utf8_lossy(&out.stdout).contains("shared")
}

fn round_trip(fs: &str) {
    let mount = LoopMount::new(fs);
    let env = env_on(&mount);
    let before = treestate(&env.data());
    let inodes = dir_inodes(&env.data());
    let created = env.json(&["create"], 0);
    assert_eq!(created["mode"], "reflink");
    let db = "data/node1/lib/global_db/mdbx.dat";
    let stored = env.snapshots().join("clean_state/payload").join(db);
    assert!(
        shares_blocks(&stored),
        "the snapshot's {db} is a copy, not a clone"
    );

    env.suite(7);
    assert_ne!(treestate(&env.data()), before, "the suite changed nothing");
    let restored = env.json(&["restore"], 0);
    assert_same_tree(&treestate(&env.data()), &before);
    assert_eq!(
        dir_inodes(&env.data()),
        inodes,
        "data/ or a node directory was replaced"
    );
    assert!(restored["files_rewritten"].as_u64().unwrap() > 0);
    assert!(restored["entries_deleted"].as_u64().unwrap() > 0);
    assert!(
        shares_blocks(&env.cache().join(db)),
        "the restored {db} does not share the snapshot's blocks"
    );

    let again = env.json(&["restore"], 0);
    assert_eq!(again["files_rewritten"], 0);
    assert_eq!(again["entries_deleted"], 0);
    env.run(&["status"], 0);
    env.run(&["verify"], 0);
}

#[test]
fn restore_after_suite_is_exact_on_xfs() {
    round_trip("xfs");
}

#[test]
fn restore_after_suite_is_exact_on_btrfs() {
    round_trip("btrfs");
}

#[test]
fn a_filesystem_without_reflinks_is_refused_and_doctor_says_which() {
    let env = Env::with_options(GenerateOptions {
        nodes: 2,
        size: MB,
        mode: "reflink".into(),
        ..Default::default()
    });
    let before = treestate(&env.data());
    let (_, stderr) = env.run(&["create"], 2);
    assert!(
        stderr.contains("reflink mode needs snapshots_dir and the data on one filesystem")
            && stderr.contains("the data on "),
        "{stderr}"
    );
    assert!(!env.snapshots().join("clean_state").exists());
    assert_same_tree(&treestate(&env.data()), &before);
    let (doctor, _) = env.run(&["doctor"], 1);
    let line = doctor
        .lines()
        .find(|l| l.contains("reflink") && l.starts_with("fail"))
        .unwrap_or_else(|| panic!("no failing reflink line:\n{doctor}"));
    assert!(line.contains(" is on "), "{line}");
}

#[test]
fn a_store_on_another_filesystem_is_refused() {
    let mount = LoopMount::new("xfs");
    let env = env_on(&mount);
    let elsewhere = tempfile::tempdir().unwrap();
    let store = elsewhere.path().join("snapshots");
    let set = format!("snapshots_dir={}", store.display());
    let (_, stderr) = env.run(&["-s", &set, "create"], 2);
    assert!(
        stderr.contains("the data on xfs") && stderr.contains("cross-device"),
        "{stderr}"
    );
    let (doctor, _) = env.run(&["-s", &set, "doctor"], 1);
    assert!(
        doctor
            .lines()
            .any(|l| l.starts_with("fail") && l.contains("the data on xfs")),
        "{doctor}"
    );

    // A good snapshot, then a store that moved away: restore refuses before touching anything.
    env.run(&["create"], 0);
    env.suite(3);
    let dirty = treestate(&env.data());
    let moved = elsewhere.path().join("moved");
    let copied = Command::new("cp")
        .arg("-a")
        .arg(env.snapshots())
        .arg(&moved)
        .status()
        .unwrap();
    assert!(copied.success());
    let set = format!("snapshots_dir={}", moved.display());
    let (_, stderr) = env.run(&["-s", &set, "restore"], 2);
    assert!(stderr.contains("reflink"), "{stderr}");
    assert_same_tree(&treestate(&env.data()), &dirty);
}
