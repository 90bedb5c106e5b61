//! The snapshot store is input, not truth: a snapshot edited by anyone who can write to the
//! store (and vouched for again in meta.json) is refused before anything is touched.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{Env, assert_same_tree, refused, treestate};
use predicates::prelude::PredicateBooleanExt;
use predicates::str::contains;
use serde_json::{Value, json};
use tempfile::TempDir;

const KB: u64 = 1024;

/// A sample environment with snapshot clean_state, the data then dirtied by a suite (so a
/// restore has work to do), and a canary directory outside both with a file in it.
fn setup() -> (Env, TempDir) {
    let env = Env::sample(2, 256 * KB);
    env.run(&["create"], 0);
    env.suite(1);
    let canary = tempfile::Builder::new()
        .prefix("stagesnap-canary-")
        .tempdir()
        .unwrap();
    fs::write(canary.path().join("keep"), b"outside the data").unwrap();
    (env, canary)
}

fn snapshot(env: &Env) -> PathBuf {
    env.snapshots().join("clean_state")
}

/// Rewrites clean_state's manifest with `edit` (header, entries) and vouches for it again
/// in meta.json, as anyone who can write to the store can.
fn tamper(env: &Env, edit: impl FnOnce(&mut Value, &mut Vec<Value>)) {
    let dir = snapshot(env);
    let text = fs::read_to_string(dir.join("manifest.jsonl")).unwrap();
    let mut lines = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap());
    let mut header = lines.next().unwrap();
    let mut entries: Vec<Value> = lines.collect();
    edit(&mut header, &mut entries);
    let mut out = String::new();
    for v in std::iter::once(&header).chain(&entries) {
        out.push_str(&v.to_string());
        out.push('\n');
    }
    fs::write(dir.join("manifest.jsonl"), &out).unwrap();
    let meta_path = dir.join("meta.json");
    let mut meta: Value = serde_json::from_slice(&fs::read(&meta_path).unwrap()).unwrap();
    meta["manifest"]["blake3"] = json!(blake3::hash(out.as_bytes()).to_hex().to_string());
    meta["manifest"]["entries"] = json!(entries.len());
    fs::write(&meta_path, serde_json::to_vec_pretty(&meta).unwrap()).unwrap();
}

/// Inserts `entry` in path order.
fn insert(entries: &mut Vec<Value>, entry: Value) {
    let path = entry["path"].as_str().unwrap().to_string();
    let at = entries
        .iter()
        .position(|e| e["path"].as_str().unwrap() > path.as_str())
        .unwrap_or(entries.len());
    entries.insert(at, entry);
}

fn entry(path: &str, kind: &str, mode: u32) -> Value {
    json!({"path": path, "type": kind, "mode": mode, "uid": 0, "gid": 0, "mtime_ns": 1_700_000_000_000_000_000i64})
}

/// `restore` exits 1 (and `status` and `diff`, which read the same manifest, 7: they could
/// not compare) naming the snapshot and every one of `expect`; `verify` reports it; neither
/// the live data, the store nor `canary` changes.
fn refused_everywhere(env: &Env, canary: &Path, expect: &[&str]) {
    let outside = treestate(canary);
    let mut all = vec![
        "snapshot clean_state is damaged",
        "manifest.jsonl is refused",
    ];
    all.extend(expect);
    for (args, code) in [
        (&["restore"][..], 1),
        (&["status"], 7),
        (&["diff", "clean_state"], 7),
    ] {
        refused(env, args, code, &all);
        assert_same_tree(&treestate(canary), &outside);
    }
    // verify reports a damaged snapshot in its table rather than as an error.
    let (stdout, _) = env.run(&["verify"], 1);
    for e in &all {
        assert!(stdout.contains(e), "verify lacks {e:?}:\n{stdout}");
    }
}

#[test]
fn an_absolute_path_is_refused() {
    let (env, canary) = setup();
    let abs = canary.path().join("made");
    tamper(&env, |_, entries| {
        entries.insert(0, entry(abs.to_str().unwrap(), "dir", 0o755))
    });
    refused_everywhere(
        &env,
        canary.path(),
        &[&format!(
            "entry {} (line 2) is not a plain relative path",
            abs.display()
        )],
    );
    assert!(!abs.exists());
}

#[test]
fn an_include_outside_cache_dir_is_refused() {
    let (env, canary) = setup();
    // From cache_dir up to / and down to the canary.
    let up = "../".repeat(env.cache().components().count() - 1);
    let outside = format!("{up}{}", canary.path().strip_prefix("/").unwrap().display());
    tamper(&env, |header, _| {
        header["include"] = json!(["data", outside])
    });
    refused_everywhere(
        &env,
        canary.path(),
        &[&format!(
            "its include (data {outside}) is not the include its meta.json vouches for (data)"
        )],
    );
    // meta.json's include is not trusted either.
    let meta_path = snapshot(&env).join("meta.json");
    let mut meta: Value = serde_json::from_slice(&fs::read(&meta_path).unwrap()).unwrap();
    meta["include"] = json!(["data", outside]);
    fs::write(&meta_path, serde_json::to_vec_pretty(&meta).unwrap()).unwrap();
    refused(
        &env,
        &["restore"],
        1,
        &[&format!(
            "snapshot clean_state was made with include = data {outside}, which is not within the configuration's include = data"
        )],
    );
    assert!(canary.path().join("keep").exists());
    // Nor included paths inside each other, which a restore would walk twice.
    meta["include"] = json!(["data", "data/node1"]);
    fs::write(&meta_path, serde_json::to_vec_pretty(&meta).unwrap()).unwrap();
    refused(
        &env,
        &["restore"],
        1,
        &["include = data data/node1, which is not within"],
    );
}

#[test]
fn an_include_inside_the_configured_one_is_accepted_only_as_vouched_for() {
    let (env, canary) = setup();
    // A snapshot of one node (as an adopted harness snapshot is) restores that node only.
    let meta_path = snapshot(&env).join("meta.json");
    let mut meta: Value = serde_json::from_slice(&fs::read(&meta_path).unwrap()).unwrap();
    meta["include"] = json!(["data/node1"]);
    fs::write(&meta_path, serde_json::to_vec_pretty(&meta).unwrap()).unwrap();
    // The manifest still says data: it must say what meta.json vouches for.
    refused_everywhere(
        &env,
        canary.path(),
        &["its include (data) is not the include its meta.json vouches for (data/node1)"],
    );
}

#[test]
fn an_entry_below_a_symlink_is_refused() {
    let (env, canary) = setup();
    let payload = snapshot(&env).join("payload/data/node1");
    // The attacker plants the setuid file in the payload too.
    fs::create_dir(payload.join("evil")).unwrap();
    fs::write(payload.join("evil/suid"), b"#!/bin/sh\n").unwrap();
    tamper(&env, |_, entries| {
        let mut link = entry("data/node1/evil", "symlink", 0o777);
        link["target"] = json!(canary.path());
        insert(entries, link);
        let mut suid = entry("data/node1/evil/suid", "file", 0o4755);
        suid["size"] = json!(10);
        suid["blake3"] = json!(blake3::hash(b"#!/bin/sh\n").to_hex().to_string());
        insert(entries, suid);
    });
    refused_everywhere(
        &env,
        canary.path(),
        &[
            "entry data/node1/evil/suid (line",
            "is not below a directory entry",
        ],
    );
    assert!(!canary.path().join("suid").exists());
}

#[test]
fn a_hardlink_to_an_outside_file_is_refused() {
    let (env, canary) = setup();
    let outside = canary.path().join("keep");
    tamper(&env, |_, entries| {
        let mut linked = entry("data/node1/stolen", "file", 0o644);
        linked["size"] = json!(16);
        linked["link"] = json!(outside);
        insert(entries, linked);
    });
    refused_everywhere(
        &env,
        canary.path(),
        &[
            "entry data/node1/stolen (line",
            &format!(
                "is hardlinked to {}, which is not an earlier entry",
                outside.display()
            ),
        ],
    );
}

#[test]
fn entries_out_of_order_are_refused() {
    let (env, canary) = setup();
    tamper(&env, |_, entries| {
        // node1's entries moved after node2's: a merge would see node1 as missing.
        let node1: Vec<Value> = entries
            .iter()
            .filter(|e| e["path"].as_str().unwrap().starts_with("data/node1"))
            .cloned()
            .collect();
        entries.retain(|e| !e["path"].as_str().unwrap().starts_with("data/node1"));
        entries.extend(node1);
    });
    refused_everywhere(
        &env,
        canary.path(),
        &["entry data/node1 (line", "is out of order or repeated"],
    );
}

#[test]
fn a_manifest_without_node_directories_is_refused() {
    let (env, canary) = setup();
    tamper(&env, |_, entries| entries.clear());
    refused_everywhere(
        &env,
        canary.path(),
        &["has no entry for the included path data"],
    );
    tamper(&env, |_, entries| entries.push(entry("data", "dir", 0o755)));
    refused_everywhere(
        &env,
        canary.path(),
        &["holds no node directory: restoring it would delete every node directory"],
    );
}

#[test]
fn a_device_is_refused_by_default() {
    let (env, canary) = setup();
    tamper(&env, |_, entries| {
        let mut dev = entry("data/node1/disk", "block", 0o660);
        dev["rdev"] = json!([8, 0]);
        insert(entries, dev);
    });
    refused_everywhere(
        &env,
        canary.path(),
        &[
            "entry data/node1/disk (line",
            "is a device; devices are restored only with restore_devices = true",
        ],
    );
    assert!(!env.data().join("node1/disk").exists());
}

/// A character device captured from the data is restored with `restore_devices = true`,
/// and refused without it.
#[test]
fn restore_devices_lets_a_captured_device_through() {
    let env = Env::sample(2, 256 * KB);
    let dev = env.data().join("node1/null");
    let c = common::cstr(&dev);
    // SAFETY: a valid C string; mknod creates /dev/null's numbers (1, 3) there.
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
    assert_eq!(rc, 0, "mknod: {}", std::io::Error::last_os_error());
    env.run(&["create"], 0);
    let clean = treestate(&env.data());
    fs::remove_file(&dev).unwrap();
    refused(
        &env,
        &["restore"],
        1,
        &["entry data/node1/null (line", "restore_devices = true"],
    );
    env.set("restore_devices", "true");
    env.run(&["restore"], 0);
    assert_same_tree(&treestate(&env.data()), &clean);
}

/// A restore killed once it began changing the data leaves the data in an unknown state:
/// `status` never calls it identical, and `create` refuses to replace the clean snapshot
/// with it unless told `--allow-interrupted`.
#[test]
#[cfg_attr(not(feature = "test-hooks"), ignore = "needs --features test-hooks")]
fn a_killed_restore_keeps_create_from_replacing_the_clean_snapshot() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::sample(2, 256 * KB);
    let file = env.data().join("node1/marker");
    fs::write(&file, b"x").unwrap();
    env.run(&["create"], 0);
    let clean = treestate(&env.data());
    let m = fs::metadata(&file).unwrap();
    common::set_mtime(&file, 1_000_000_000, 0);

    // Killed just as it starts changing; the one change it had to make is undone, so the
    // data matches the snapshot while the journal still says it is in an unknown state.
    let paused = env.paused(&["restore"], "restore_changing");
    common::set_mtime(&file, m.mtime(), m.mtime_nsec());
    paused.kill();
    env.assert(&["status"])
        .code(1)
        .stdout(contains("was interrupted").and(contains("identical").not()));

    env.suite(1);
    refused(
        &env,
        &["create", "--force"],
        1,
        &[
            "cannot create clean_state: data is in an unknown state: restore of clean_state was interrupted",
            "run `stagesnap restore` first, or snapshot the data as it is with `stagesnap create clean_state --force --allow-interrupted`",
        ],
    );
    env.run(&["create", "other", "--allow-interrupted"], 0);
    env.run(&["restore"], 0);
    assert_same_tree(&treestate(&env.data()), &clean);
    env.assert(&["status"])
        .success()
        .stdout(contains("identical"));
}

type Damage = &'static dyn Fn(&Path);

/// Each kind of damage to meta.json makes the snapshot unusable with an error that says to
/// delete it, and `delete` then removes it (naming it), leaving the other snapshot alone.
#[test]
fn delete_removes_a_damaged_snapshot() {
    let env = Env::sample(2, 256 * KB);
    env.run(&["create"], 0);
    let damages: [(&str, Damage); 4] = [
        ("missing", &|meta| fs::remove_file(meta).unwrap()),
        ("truncated", &|meta| {
            let text = fs::read(meta).unwrap();
            fs::write(meta, &text[..text.len() / 2]).unwrap();
        }),
        ("newer schema", &|meta| {
            let text = fs::read_to_string(meta).unwrap();
            fs::write(meta, text.replacen("\"schema\": 1", "\"schema\": 99", 1)).unwrap();
        }),
        ("wrong layout", &|meta| {
            fs::write(meta, b"{\"schema\": 1}").unwrap()
        }),
    ];
    for (what, damage) in damages {
        env.run(&["create", "broken"], 0);
        damage(&env.snapshots().join("broken/meta.json"));
        let (_, stderr) = env.run(&["restore", "broken"], 1);
        assert!(
            stderr.contains("snapshot broken") && stderr.contains("stagesnap delete broken")
                || stderr.contains("upgrade stagesnap"),
            "{what}: {stderr}"
        );
        let (stdout, stderr) = env.run(&["delete", "broken"], 0);
        assert!(
            stdout.contains("deleted broken, which was not a complete snapshot (")
                && stderr.contains("snapshot_incomplete"),
            "{what}: {stdout}{stderr}"
        );
        assert!(!env.snapshots().join("broken").exists(), "{what}");
        assert_eq!(
            common::snapshot_names(&env.json(&["list"], 0)),
            ["clean_state"]
        );
    }
    env.run(&["delete", "broken"], 4);
}

/// A symlink in the store with a snapshot's name goes itself; the directory it points to,
/// outside the store, is not touched.
#[test]
fn delete_removes_a_symlink_in_the_store_but_not_its_target() {
    let env = Env::sample(1, 64 * KB);
    env.run(&["create"], 0);
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("meta.json"), b"{}").unwrap();
    let before = treestate(outside.path());
    std::os::unix::fs::symlink(outside.path(), env.snapshots().join("elsewhere")).unwrap();
    env.assert(&["delete", "elsewhere"])
        .success()
        .stdout(contains("is a symlink, not a snapshot directory"));
    assert!(
        env.snapshots()
            .join("elsewhere")
            .symlink_metadata()
            .is_err()
    );
    assert_same_tree(&treestate(outside.path()), &before);
}

/// meta.json's mode is a kind this stagesnap knows: one made by another stagesnap (or
/// edited) is refused by name before anything is touched, and list says why.
#[test]
fn an_unknown_mode_is_refused_by_name() {
    let (env, _canary) = setup();
    let dirty = treestate(&env.data());
    let meta_path = snapshot(&env).join("meta.json");
    let mut meta: Value = serde_json::from_slice(&fs::read(&meta_path).unwrap()).unwrap();
    meta["mode"] = json!("zfs");
    fs::write(&meta_path, serde_json::to_vec_pretty(&meta).unwrap()).unwrap();
    env.assert(&["restore"]).code(1).stderr(
        contains("snapshot clean_state has unknown mode \"zfs\"")
            .and(contains("made by another stagesnap")),
    );
    assert_same_tree(&treestate(&env.data()), &dirty);
    let listed = env.json(&["list"], 0);
    assert!(
        listed["unreadable"].to_string().contains("unknown mode"),
        "{listed}"
    );
}
