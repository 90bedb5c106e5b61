//! Manifests end to end: `verify`, `status`, `diff`, the check at the end of every restore,
//! and the journal that makes an interrupted restore visible.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::{Env, assert_same_tree, largest_file, treestate};
use predicates::prelude::PredicateBooleanExt;
use predicates::str::contains;

const MB: u64 = 1 << 20;

/// Flips one byte in place and puts the mtime back: only a hash can tell.
fn flip_byte_keeping_mtime(path: &Path) {
    let mtime = fs::metadata(path).unwrap().modified().unwrap();
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, 100).unwrap();
    f.write_all_at(&[b[0] ^ 0xff], 100).unwrap();
    f.set_modified(mtime).unwrap();
}

#[test]
fn create_stores_a_manifest_that_verify_checks_file_by_file() {
    let env = Env::sample(2, 4 * MB);
    env.run(&["create"], 0);
    env.run(&["create", "second"], 0);
    let meta: serde_json::Value =
        serde_json::from_slice(&fs::read(env.snapshots().join("clean_state/meta.json")).unwrap())
            .unwrap();
    assert_eq!(
        meta["manifest"]["blake3"].as_str().unwrap().len(),
        64,
        "{meta}"
    );
    assert!(env.snapshots().join("clean_state/manifest.jsonl").is_file());

    let ok = env.json(&["verify", "--all"], 0);
    assert_eq!(ok["snapshots"].as_array().unwrap().len(), 2, "{ok}");
    assert!(
        ok["snapshots"][0]["checked"]
            .as_str()
            .unwrap()
            .contains("blake3"),
        "{ok}"
    );

    // Silent corruption of the stored copy: same size, same mtime, one byte flipped.
    let node1 = env.snapshots().join("clean_state/payload/data/node1");
    let victim = largest_file(&node1);
    flip_byte_keeping_mtime(&victim);
    let rel = victim.strip_prefix(&node1).unwrap().display().to_string();
    env.assert(&["verify", "clean_state"])
        .code(1)
        .stdout(contains("DAMAGED").and(contains(format!(
            "M data/node1 {rel} (content) differs from the manifest"
        ))));
    // "second" stores that unchanged file as the same inode (filesystem snapshots share
    // identical files), so the flipped byte is in both, and verify says so of each.
    env.assert(&["verify", "second"])
        .code(1)
        .stdout(contains(format!("M data/node1 {rel} (content)")));
    let all = env.json(&["verify", "--all"], 1);
    let bad: Vec<_> = all["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["ok"] == false)
        .collect();
    assert_eq!(bad.len(), 2, "{all}");

    // A tampered manifest is caught by its digest in meta.json.
    let manifest = env.snapshots().join("second/manifest.jsonl");
    let mut text = fs::read(&manifest).unwrap();
    text.extend_from_slice(b"\n");
    fs::write(&manifest, text).unwrap();
    env.assert(&["verify", "second"])
        .code(1)
        .stdout(contains("does not match the digest recorded in meta.json"));

    env.run(&["verify", "nothere"], 4);
    env.run(&["verify", "--all", "second"], 2);
}

#[test]
fn status_and_diff_show_what_a_suite_changed_per_node() {
    let env = Env::sample(3, 4 * MB);
    env.run(&["create"], 0);
    env.assert(&["status"])
        .success()
        .stdout(contains("identical to clean_state"));
    let (stdout, _) = env.run(&["diff", "clean_state"], 0);
    assert_eq!(stdout, "");

    env.suite(11);
    let status = env.json(&["status"], 1);
    assert_eq!(status["identical"], false);
    let nodes = status["nodes"].as_array().unwrap();
    assert!(!nodes.is_empty(), "{status}");
    assert!(
        nodes
            .iter()
            .all(|n| n["node"].as_str().unwrap().starts_with("data")),
        "{status}"
    );
    env.assert(&["status"]).code(1).stdout(
        contains("NODE")
            .and(contains("MODIFIED"))
            .and(contains("diff clean_state")),
    );

    let (lines, _) = env.run(&["diff", "clean_state"], 1);
    for line in lines.lines() {
        let mut parts = line.splitn(3, ' ');
        let (code, node) = (parts.next().unwrap(), parts.next().unwrap());
        assert!(["+", "-", "M", "T", "U"].contains(&code), "{line}");
        assert!(node.starts_with("data"), "{line}");
        assert!(parts.next().is_some(), "{line}");
    }
    assert!(
        lines.lines().any(|l| l.starts_with("M ")),
        "a suite rewrites files:\n{lines}"
    );
    let diff = env.json(&["diff", "clean_state"], 1);
    assert_eq!(
        diff["changes"].as_array().unwrap().len(),
        lines.lines().count()
    );
    env.assert(&["diff", "clean_state", "--stat"])
        .code(1)
        .stdout(contains("BYTES").and(contains("entries differ")));

    // Snapshot against snapshot gives the same answer as snapshot against live data.
    env.run(&["create", "dirty"], 0);
    let (between, _) = env.run(&["diff", "clean_state", "dirty"], 1);
    assert_eq!(between, lines);
    env.run(&["diff", "dirty", "dirty"], 0);
    env.run(&["diff", "clean_state", "dirty", "--full"], 2);
    env.run(&["diff", "missing"], 4);
    env.run(&["status", "missing"], 4);

    env.run(&["restore"], 0);
    env.run(&["status"], 0);
    env.run(&["status", "dirty"], 1);
}

#[test]
fn restore_fails_when_the_result_differs_from_the_manifest() {
    let env = Env::sample(2, 2 * MB);
    env.run(&["create"], 0);
    env.suite(3);
    // The fault: bit rot in the stored copy of a file the suite changed, with its mtime
    // kept, so only the content check after the restore can notice.
    let rotten = env
        .snapshots()
        .join("clean_state/payload/data/node1/lib/global_db/mdbx.dat");
    flip_byte_keeping_mtime(&rotten);

    env.assert(&["restore", "--verify", "full"])
        .code(1)
        .stderr(contains("did not reproduce the snapshot").and(contains("data/node1")));
    env.assert(&["status"]).code(1).stdout(contains(
        "data is in an unknown state: restore of clean_state failed",
    ));
    let (stdout, stderr) = env.run(&["verify"], 1);
    assert!(stdout.contains("mdbx.dat"), "{stdout}{stderr}");

    flip_byte_keeping_mtime(&rotten);
    env.run(&["verify"], 0);
    // The next suite rewrites the file again, so the restore sees it changed and repairs it.
    env.suite(5);
    env.run(&["restore", "--verify", "full"], 0);
    env.run(&["status", "--full"], 0);
    env.run(&["restore", "--verify", "none"], 0);
    env.run(&["restore", "--verify", "sometimes"], 2);
}

#[test]
fn interrupted_restore_is_reported_until_a_restore_succeeds() {
    let env = Env::sample(2, 2 * MB);
    env.set("mode", "squashfs");
    env.set("squashfs_restore", "mount");
    env.run(&["create"], 0);
    env.suite(4);
    // The restore dies as if the machine lost power after it changed the data: the `umount`
    // it runs at the end kills it (a death before the first change leaves no journal: the
    // data is then just the suite's, which status reports as differing).
    let path = env.fake_path(&[("umount", "kill -9 $PPID\nsleep 1")]);
    env.cmd()
        .args(["restore"])
        .env("PATH", &path)
        .assert()
        .interrupted();

    env.assert(&["status"]).code(1).stdout(
        contains("data is in an unknown state: restore of clean_state was interrupted at")
            .and(contains("run `stagesnap restore`")),
    );
    let status = env.json(&["status"], 1);
    assert_eq!(
        status["unfinished_restore"]["snapshot"], "clean_state",
        "{status}"
    );
    env.run(&["restore"], 0);
    env.assert(&["status"])
        .success()
        .stdout(contains("unknown state").not());
}

/// rsync's quick check (size and mtime) cannot see a same-size rewrite that kept its mtime;
/// the metadata check cannot either; `--verify full` finds it, and so repairs it.
#[test]
fn full_verification_repairs_what_size_and_mtime_cannot_see() {
    let env = Env::sample(2, 2 * MB);
    env.run(&["create"], 0);
    let victim = largest_file(&env.data());
    flip_byte_keeping_mtime(&victim);
    // A metadata restore neither sees nor repairs it; a check by content sees it, and a
    // restore by content (full verify) repairs it.
    env.run(&["restore"], 0);
    env.assert(&["status", "--full"])
        .code(1)
        .stdout(contains("MODIFIED"));
    env.run(&["restore", "--verify", "full"], 0);
    env.run(&["status", "--full"], 0);
    flip_byte_keeping_mtime(&victim);
    env.run(&["-s", "restore_verify=full", "restore"], 0);
    env.run(&["status", "--full"], 0);
}

#[test]
fn snapshots_without_a_manifest_still_restore_and_say_what_to_do() {
    let env = Env::sample(2, MB);
    env.run(&["create"], 0);
    let dir = env.snapshots().join("clean_state");
    let meta_path = dir.join("meta.json");
    let mut meta: serde_json::Value =
        serde_json::from_slice(&fs::read(&meta_path).unwrap()).unwrap();
    meta.as_object_mut().unwrap().remove("manifest");
    fs::write(&meta_path, serde_json::to_vec_pretty(&meta).unwrap()).unwrap();
    fs::remove_file(dir.join("manifest.jsonl")).unwrap();

    let clean = treestate(&env.data());
    env.suite(5);
    env.assert(&["restore"])
        .success()
        .stderr(contains("has no manifest").and(contains("create clean_state --force")));
    assert_same_tree(&treestate(&env.data()), &clean);
    env.assert(&["status"])
        .code(7)
        .stderr(contains("snapshot clean_state has no manifest"));
    env.assert(&["verify"])
        .code(1)
        .stdout(contains("has no manifest"));
    env.run(&["create", "--force"], 0);
    env.run(&["status"], 0);
}

/// A restore that finds the data as the snapshot has it changes nothing, in the data or in the
/// store: no journal is written (only a restore that changes something needs one).
#[test]
fn restore_with_nothing_to_do_writes_nothing() {
    let env = Env::sample(2, MB);
    env.run(&["create"], 0);
    env.suite(2);
    env.run(&["restore"], 0);
    let mtime = |p: &Path| fs::symlink_metadata(p).unwrap().modified().unwrap();
    let store_before = mtime(&env.snapshots());
    let before = treestate(&env.data());
    let done = env.json(&["restore"], 0);
    assert_eq!(done["files_rewritten"], 0, "{done}");
    assert_eq!(done["entries_deleted"], 0, "{done}");
    assert_eq!(
        mtime(&env.snapshots()),
        store_before,
        "the store's entries changed"
    );
    assert_same_tree(&treestate(&env.data()), &before);
}
