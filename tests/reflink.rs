//! reflink mode end to end, on XFS (reflink=1) and btrfs filesystems loop-mounted for each test,
//! and its refusals elsewhere. Exact fidelity of every kind of entry is tests/fidelity.rs's.

mod common;

use std::process::Command;

use common::modes::Mode;
use common::{Env, assert_same_tree, treestate};
use stage_sample::GenerateOptions;

const MB: u64 = 1 << 20;

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
    let env = Mode::Reflink("xfs").env(3, 24 * MB);
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
