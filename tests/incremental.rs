//! Incremental local storage (issue 16): in filesystem mode a snapshot's files identical to
//! the previous snapshot's are hardlinks to them, so a second snapshot after a suite costs
//! about what the suite changed; in reflink mode they are clones sharing extents with the
//! data and one another; deleting or pruning one snapshot never damages another.

mod common;

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::modes::Mode;
use common::{Env, assert_same_tree, treestate};

/// Bytes allocated under `dir`, each inode once (as the disk holds them).
fn allocated(dir: &Path) -> u64 {
    let mut seen = HashSet::new();
    walkdir::WalkDir::new(dir)
        .into_iter()
        .map(|e| e.unwrap().metadata().unwrap())
        .filter(|m| seen.insert((m.dev(), m.ino())))
        .map(|m| m.blocks() * 512)
        .sum()
}

/// Sizes of the regular files of snapshot `b` that snapshot `a` does not hold at the same
/// path with the same content, from their manifests.
fn changed_bytes(env: &Env, a: &str, b: &str) -> u64 {
    let files = |name: &str| -> HashMap<String, (String, u64)> {
        let text =
            std::fs::read_to_string(env.snapshots().join(name).join("manifest.jsonl")).unwrap();
        text.lines()
            .skip(1)
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|e| e["type"] == "file")
            .map(|e| {
                (
                    e["path"].to_string(),
                    (e["blake3"].to_string(), e["size"].as_u64().unwrap_or(0)),
                )
            })
            .collect()
    };
    let (old, new) = (files(a), files(b));
    new.iter()
        .filter(|(p, (hash, _))| old.get(*p).is_none_or(|(h, _)| h != hash))
        .map(|(_, (_, size))| size)
        .sum()
}

fn num(row: &serde_json::Value, key: &str) -> u64 {
    row[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in {row}"))
}

fn row<'a>(listing: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    listing["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("{name} in {listing}"))
}

#[test]
fn a_second_snapshot_stores_only_what_changed_and_each_survives_the_others_removal() {
    let env = Env::sample(3, 24 << 20);
    env.set("auto_cleanup", "false");
    env.run(&["create", "one"], 0);
    let store_one = allocated(&env.snapshots());
    env.suite(4);
    env.run(&["create", "two"], 0);
    let two_tree = treestate(&env.data());
    let growth = allocated(&env.snapshots()) - store_one;
    let changed = changed_bytes(&env, "one", "two");
    eprintln!("the second snapshot grew the store by {growth} bytes; the suite changed {changed}");
    assert!(changed > 0);
    assert!(
        growth * 2 <= changed * 3,
        "grew {growth}, changed {changed}"
    );
    // Less than a copy of its own: the unchanged files are the first snapshot's.
    let alone = allocated(&env.snapshots().join("two"));
    assert!(growth < alone, "grew {growth}, a copy takes {alone}");

    let listing = env.json(&["list"], 0);
    let (one, two) = (row(&listing, "one"), row(&listing, "two"));
    assert!(one["shared_bytes"].as_u64().unwrap() > 0, "{listing}");
    assert_eq!(one["shared_bytes"], two["shared_bytes"], "{listing}");
    assert!(two["own_bytes"].as_u64().unwrap() > 0, "{listing}");
    // Stored files still match their manifests, directory times included.
    env.run(&["verify", "one", "two"], 0);
    each_survives_the_others_removal(&env, &two_tree, &|listing| {
        // Its files are then its own.
        assert_eq!(row(listing, "two")["shared_bytes"], 0, "{listing}");
    });
}

/// Snapshots `one` and `two` (the live data is `two_tree`): deleting `one` leaves `two` whole
/// (`alone` checks `list` then), and pruning to the newest leaves that whole too.
fn each_survives_the_others_removal(env: &Env, two_tree: &str, alone: &dyn Fn(&serde_json::Value)) {
    env.run(&["delete", "one"], 0);
    env.run(&["verify", "two"], 0);
    alone(&env.json(&["list"], 0));
    env.suite(5);
    env.run(&["restore", "two"], 0);
    assert_same_tree(&treestate(&env.data()), two_tree);

    // Pruning keeps the newest; it shares with the pruned one and stays whole.
    env.suite(6);
    env.run(&["create", "three"], 0);
    let three_tree = treestate(&env.data());
    env.run(&["prune", "--keep", "1"], 0);
    assert!(!env.snapshots().join("two").exists());
    env.run(&["verify", "three"], 0);
    env.suite(7);
    env.run(&["restore", "three"], 0);
    assert_same_tree(&treestate(&env.data()), &three_tree);
}

/// Reflink snapshots share without links: each is a clone of the live data, so the files a
/// suite leaves alone are the same extents in the data and in every snapshot of them.
#[test]
fn reflink_snapshots_share_extents_and_each_survives_the_others_removal() {
    common::modes::require_root();
    let env = Mode::Reflink("xfs").env(3, 24 << 20);
    env.set("auto_cleanup", "false");
    env.run(&["create", "one"], 0);
    let listing = env.json(&["list"], 0);
    let one = row(&listing, "one");
    // Fresh clones: every data block is the live data's too.
    // (Its own: directories' blocks, and preallocated extents, which a clone does not carry
    // and the engine allocates again.)
    let (own, shared) = (num(one, "own_bytes"), num(one, "shared_bytes"));
    assert!(shared >= 20 << 20 && own * 10 < shared, "{listing}");

    env.suite(4);
    env.run(&["create", "two"], 0);
    let two_tree = treestate(&env.data());
    let listing = env.json(&["list"], 0);
    let (one, two) = (row(&listing, "one"), row(&listing, "two"));
    // The suite rewrote some of the data: one's old copies of those files are its own now.
    assert!(one["own_bytes"].as_u64().unwrap() > 0, "{listing}");
    assert!(
        two["shared_bytes"].as_u64().unwrap() >= 20 << 20,
        "{listing}"
    );
    env.run(&["verify", "one", "two"], 0);
    each_survives_the_others_removal(&env, &two_tree, &|listing| {
        // Still the live data's extents.
        assert!(
            row(listing, "two")["shared_bytes"].as_u64().unwrap() > 0,
            "{listing}"
        );
    });
}
