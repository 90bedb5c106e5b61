//! filesystem mode end to end: the built binary against real rsync on real trees.

mod common;

use std::fs;

use common::{Env, assert_same_tree, inode, snapshot_names, treestate};
use predicates::str::contains;

const MB: u64 = 1 << 20;

/// A database rewritten in place (a few pages, same size) costs only those pages: the file
/// keeps its inode and the restore writes two pages, not the file.
#[test]
fn a_file_changed_in_place_is_repaired_page_by_page() {
    let env = Env::sample(1, 8 * MB);
    let db = env.data().join("node1/lib/global_db/mdbx.dat");
    let before = treestate(&env.data());
    let ino = inode(&db);
    env.run(&["create"], 0);
    let f = fs::OpenOptions::new().write(true).open(&db).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[0xab; 100], 3 * 4096 + 10).unwrap();
    f.write_all_at(&[0xcd; 4096], 7 * 4096).unwrap();
    drop(f);

    let restored = env.json(&["restore"], 0);
    assert_eq!(restored["files_rewritten"], 1, "{restored}");
    assert_eq!(restored["bytes_rewritten"], 2 * 4096, "{restored}");
    assert_eq!(restored["entries_deleted"], 0, "{restored}");
    assert_same_tree(&treestate(&env.data()), &before);
    assert_eq!(inode(&db), ino, "the database was replaced, not repaired");
}

#[test]
fn missing_snapshot_is_auto_created_or_not_found() {
    let env = Env::sample(2, MB);
    env.assert(&["restore", "fresh"])
        .success()
        .stderr(contains("snapshot_missing"));
    assert!(env.snapshots().join("fresh/meta.json").is_file());

    env.set("auto_create_on_startup", "false");
    let before = treestate(&env.data());
    env.assert(&["restore", "other"])
        .code(4)
        .stderr(contains("snapshot other not found"));
    assert_same_tree(&treestate(&env.data()), &before);
    assert!(!env.snapshots().join("other").exists());
}

#[test]
fn create_refuses_existing_name_without_force_and_replaces_atomically_with_it() {
    let env = Env::sample(2, MB);
    env.run(&["create", "base"], 0);
    let first = treestate(&env.snapshots().join("base/payload"));
    env.assert(&["create", "base"])
        .code(1)
        .stderr(contains("--force"));
    assert_same_tree(&treestate(&env.snapshots().join("base/payload")), &first);

    env.suite(3);
    let dirty = treestate(&env.data());
    let out = env.json(&["create", "base", "--force"], 0);
    assert_eq!(out["replaced"], true);
    env.suite(4);
    env.run(&["restore", "base"], 0);
    assert_same_tree(&treestate(&env.data()), &dirty);
    let names: Vec<_> = fs::read_dir(env.snapshots())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| !n.starts_with(".staging") && !n.starts_with(".trash")),
        "{names:?}"
    );
}

#[test]
fn prune_keeps_newest_pinned_and_snapshot_name() {
    let env = Env::sample(1, MB / 2);
    env.set("auto_cleanup", "false");
    // Created in this order; names deliberately sort the other way.
    for name in ["zeta", "clean_state", "yank", "xray", "whisky"] {
        let pin = if name == "yank" {
            vec!["--pin"]
        } else {
            vec![]
        };
        let mut args = vec!["create", name];
        args.extend(pin);
        env.run(&args, 0);
    }
    let listed = env.json(&["list"], 0);
    let names = snapshot_names(&listed);
    assert_eq!(
        names,
        ["whisky", "xray", "yank", "clean_state", "zeta"],
        "list is newest first"
    );

    // Unpinned, newest first: whisky xray clean_state zeta. Keeping 1 leaves whisky; of the
    // rest, clean_state (snapshot_name) stays too; the pinned yank is never a candidate.
    let before = listed.clone();
    let dry = env.json(&["prune", "--keep", "1", "--dry-run"], 0);
    assert_eq!(dry["removed"], serde_json::json!(["xray", "zeta"]), "{dry}");
    assert_eq!(
        env.json(&["list"], 0)["snapshots"],
        before["snapshots"],
        "--dry-run changed the store"
    );

    let pruned = env.json(&["prune", "--keep", "1"], 0);
    assert_eq!(pruned["removed"], serde_json::json!(["xray", "zeta"]));
    let listed = env.json(&["list"], 0);
    let names = snapshot_names(&listed);
    assert_eq!(names, ["whisky", "yank", "clean_state"]);
}

#[test]
fn auto_cleanup_after_create_never_removes_the_new_one() {
    let env = Env::sample(1, MB / 2);
    env.set("keep_snapshot_count", "0");
    env.run(&["create"], 0);
    env.run(&["create", "one"], 0);
    let out = env.json(&["create", "two"], 0);
    // keep 0: "one" goes; clean_state (snapshot_name) and "two" (just made) stay.
    assert_eq!(out["pruned"], serde_json::json!(["one"]));
    let listed = env.json(&["list"], 0);
    let names = snapshot_names(&listed);
    assert_eq!(names, ["two", "clean_state"]);
}
