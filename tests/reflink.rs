//! reflink mode end to end, on XFS (reflink=1) and btrfs filesystems loop-mounted for each test,
//! and its refusals elsewhere. Exact fidelity of every kind of entry is tests/fidelity.rs's.

mod common;

use common::modes::Mode;
use common::{Env, assert_same_tree, cp_a, treestate};
use predicates::prelude::PredicateBooleanExt;
use predicates::str::contains;
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
    env.assert(&["create"]).code(2).stderr(
        contains("reflink mode needs snapshots_dir and the data on one filesystem")
            .and(contains("the data on ")),
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
    env.assert(&["-s", &set, "create"])
        .code(2)
        .stderr(contains("the data on xfs").and(contains("cross-device")));
    let (doctor, _) = env.run(&["-s", &set, "doctor"], 1);
    assert!(
        doctor
            .lines()
            .any(|l| l.starts_with("fail") && l.contains("the data on xfs")),
        "{doctor}"
    );

    // A good snapshot, then a store that moved away: restore refuses before touching anything.
    let dirty = env.create_then_suite(3);
    let moved = elsewhere.path().join("moved");
    cp_a(&env.snapshots(), &moved);
    let set = format!("snapshots_dir={}", moved.display());
    env.assert(&["-s", &set, "restore"])
        .code(2)
        .stderr(contains("reflink"));
    assert_same_tree(&treestate(&env.data()), &dirty);
}
