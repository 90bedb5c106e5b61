//! The stage-env harness's own snapshots (issue 14): a legacy store built by hand as the
//! harness laid it out (`cp -a` copies of the node directories with a `.snapshot_metadata`
//! repr, a real mksquashfs image of them with its `.metadata`, markers, `.overlays/`), then
//! listed, deleted, refused by restore and adopted by the built binary.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use assert_cmd::assert::OutputAssertExt;
use common::{Env, assert_same_tree, entries, json_of, snapshot_names, treestate};
use predicates::prelude::PredicateBooleanExt;
use predicates::str::contains;

const MB: u64 = 1 << 20;

fn sh(program: &str, args: &[&Path]) {
    Command::new(program).args(args).assert().success();
}

fn node_dirs(env: &Env) -> Vec<PathBuf> {
    let mut nodes: Vec<PathBuf> = fs::read_dir(env.data())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    nodes.sort();
    nodes
}

fn repr(name: &str, mode: &str, env: &Env) -> String {
    let nodes: Vec<String> = node_dirs(env)
        .iter()
        .map(|p| format!("'{}'", p.file_name().unwrap().to_string_lossy()))
        .collect();
    format!(
        "{{'name': '{name}', 'created_at': '2025-01-02T03:04:05', 'mode': '{mode}', 'nodes': [{}]}}",
        nodes.join(", ")
    )
}

/// `snapshots/<name>/<node>/` copied with `cp -a`, its `.snapshot_metadata` and a marker,
/// as the harness left a filesystem snapshot; plus the harness's `.overlays/`.
fn legacy_dir(env: &Env, name: &str) -> PathBuf {
    let dir = env.snapshots().join(name);
    fs::create_dir_all(&dir).unwrap();
    for node in node_dirs(env) {
        sh("cp", &[Path::new("-a"), &node, &dir]);
    }
    fs::write(
        dir.join(".snapshot_metadata"),
        repr(name, "filesystem", env),
    )
    .unwrap();
    fs::write(env.snapshots().join(format!("{name}.marker")), "").unwrap();
    fs::create_dir_all(env.snapshots().join(".overlays/upper")).unwrap();
    dir
}

/// `snapshots/<name>.sqfs`, an image of the node directories made by the real mksquashfs
/// (rooted at them, as the harness made it), with its `.metadata` and a marker.
fn legacy_image(env: &Env, name: &str) -> PathBuf {
    fs::create_dir_all(env.snapshots()).unwrap();
    let image = env.snapshots().join(format!("{name}.sqfs"));
    let mut args: Vec<&Path> = vec![];
    let data = env.data();
    args.push(&data);
    args.push(&image);
    args.extend(["-noappend", "-no-progress", "-quiet"].map(Path::new));
    sh("mksquashfs", &args);
    fs::write(
        env.snapshots().join(format!("{name}.metadata")),
        repr(name, "squashfs", env),
    )
    .unwrap();
    fs::write(env.snapshots().join(format!("{name}.marker")), "").unwrap();
    image
}

/// Every entry of the store but the lock, as treestate sees it (content, modes, times).
fn store_state(env: &Env) -> String {
    let copy = tempfile::tempdir().unwrap();
    for entry in fs::read_dir(env.snapshots()).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() != ".lock" {
            sh("cp", &[Path::new("-a"), &path, copy.path()]);
        }
    }
    // The copy's root is new; the store's own mtime is not the snapshots'.
    let state: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(&treestate(copy.path())).unwrap();
    serde_json::to_string(
        &state
            .into_iter()
            .filter(|(k, _)| k != ".")
            .collect::<BTreeMap<_, _>>(),
    )
    .unwrap()
}

/// Inode of every regular file below `dir`, by path relative to it.
fn file_inodes(dir: &Path) -> BTreeMap<PathBuf, u64> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            (
                e.path().strip_prefix(dir).unwrap().to_path_buf(),
                e.metadata().unwrap().ino(),
            )
        })
        .collect()
}

#[test]
fn list_shows_legacy_snapshots_with_what_they_hold() {
    let env = Env::sample(2, MB);
    env.run(&["create", "fresh"], 0);
    legacy_dir(&env, "old_state");
    let image = legacy_image(&env, "old_image");
    let listing = json_of(
        &env.cmd()
            .args(["list", "--json"])
            .env("TZ", "UTC")
            .assert()
            .success(),
    );
    assert_eq!(listing["unreadable"], serde_json::json!([]));
    let names = snapshot_names(&listing);
    assert_eq!(names.len(), 3, "{listing}");
    let row = |name: &str| {
        listing["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap()
            .clone()
    };
    let dir = row("old_state");
    assert_eq!(dir["mode"], "legacy");
    assert_eq!(dir["legacy"]["format"], "filesystem");
    assert_eq!(
        dir["legacy"]["paths"],
        serde_json::json!(["old_state/", "old_state.marker"])
    );
    // The harness wrote local time without an offset; TZ=UTC makes it this instant.
    assert_eq!(dir["created_at"], "2025-01-02T03:04:05Z");
    assert_eq!(
        dir["nodes"],
        serde_json::json!(["data/node1", "data/node2"])
    );
    assert!(dir["files"].as_u64().unwrap() > 10);
    assert!(dir["bytes"].as_u64().unwrap() > MB / 2);
    let img = row("old_image");
    assert_eq!(img["mode"], "legacy");
    assert_eq!(img["legacy"]["format"], "squashfs");
    assert_eq!(
        img["legacy"]["paths"],
        serde_json::json!(["old_image.sqfs", "old_image.metadata", "old_image.marker"])
    );
    assert_eq!(
        img["nodes"],
        serde_json::json!(["data/node1", "data/node2"])
    );
    assert_eq!(img["bytes"], serde_json::Value::Null);
    assert_eq!(img["stored_bytes"], fs::metadata(&image).unwrap().len());
    // The stagesnap snapshot is the newest, the legacy ones are from 2025.
    assert_eq!(names[0], "fresh");
    assert_eq!(row("fresh")["mode"], "filesystem");

    env.assert(&["list"]).success().stdout(
        contains("legacy (filesystem)")
            .and(contains("legacy (squashfs)"))
            .and(contains("`stagesnap adopt ")),
    );
}

#[test]
fn delete_removes_legacy_snapshots_and_nothing_outside_them() {
    let env = Env::sample(2, MB);
    let dir = legacy_dir(&env, "old_state");
    legacy_image(&env, "old_image");
    // A link inside the legacy copy to a directory outside the store: deleting the
    // snapshot removes the link, never what it points to.
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("keep"), "x").unwrap();
    symlink(outside.path(), dir.join("node1/escape")).unwrap();

    env.run(&["delete", "old_state", "old_image"], 0);
    assert_eq!(entries(&env.snapshots()), [".lock", ".overlays"]);
    assert!(outside.path().join("keep").exists());
    env.run(&["delete", "old_state"], 4);
}

#[test]
fn restore_and_the_readers_of_a_legacy_name_say_to_adopt_it() {
    let env = Env::sample(2, MB);
    legacy_dir(&env, "old_state");
    legacy_image(&env, "old_image");
    let store = store_state(&env);
    let data = treestate(&env.data());
    for name in ["old_state", "old_image"] {
        // auto_create_on_startup is on: a missing snapshot would be created instead.
        // status and diff could not compare (7); restore and verify fail (1).
        for (args, code) in [
            (vec!["restore", name], 1),
            (vec!["verify", name], 1),
            (vec!["status", name], 7),
            (vec!["diff", name], 7),
        ] {
            let (_, stderr) = env.run(&args, code);
            assert!(
                stderr.contains(&format!(
                    "snapshot {name} was made by the stage-env harness"
                )) && stderr.contains(&format!("run `stagesnap adopt {name}` to use it")),
                "{args:?}: {stderr}"
            );
        }
    }
    assert_eq!(store_state(&env), store);
    assert_same_tree(&treestate(&env.data()), &data);
}

#[test]
fn adopting_a_filesystem_snapshot_moves_its_files_and_restores_exactly() {
    let env = Env::sample(2, 2 * MB);
    let before = treestate(&env.data());
    let legacy = legacy_dir(&env, "old_state");
    let mut inodes = file_inodes(&legacy);
    inodes.remove(Path::new(".snapshot_metadata"));
    let nodes: Vec<String> = ["node1", "node2"].map(String::from).to_vec();

    let adopted = env.json(&["adopt", "old_state"], 0);
    assert_eq!(adopted["format"], "filesystem");
    assert_eq!(adopted["mode"], "filesystem");
    assert_eq!(
        adopted["nodes"],
        serde_json::json!(["data/node1", "data/node2"])
    );
    assert_eq!(
        entries(&env.snapshots()),
        [".lock", ".overlays", "old_state"]
    );
    let snap = env.snapshots().join("old_state");
    assert_eq!(
        entries(&snap),
        ["manifest.jsonl", "meta.json", "payload", "pieces.jsonl"]
            .into_iter()
            .filter(|f| *f != "pieces.jsonl" || snap.join(f).exists())
            .collect::<Vec<_>>()
    );
    // Renamed, not copied: every file keeps its inode.
    let moved = file_inodes(&snap.join("payload/data"));
    assert_eq!(moved, inodes, "adopt copied the data");
    assert_eq!(entries(&snap.join("payload/data")), nodes);
    let meta: serde_json::Value =
        serde_json::from_slice(&fs::read(snap.join("meta.json")).unwrap()).unwrap();
    assert_eq!(meta["mode"], "filesystem");
    assert_eq!(
        meta["include"],
        serde_json::json!(["data/node1", "data/node2"])
    );

    env.run(&["verify", "old_state"], 0);
    env.suite(3);
    assert_ne!(treestate(&env.data()), before, "the suite changed nothing");
    env.run(&["restore", "old_state"], 0);
    assert_same_tree(&treestate(&env.data()), &before);
}

#[test]
fn adopting_a_squashfs_image_repacks_it_and_restores_exactly() {
    let env = Env::sample(2, 2 * MB);
    env.set("squashfs_compression", "gzip");
    let image = legacy_image(&env, "old_image");
    // What the image holds, extracted independently: squashfs keeps whole-second times.
    let oracle = tempfile::tempdir().unwrap();
    let extracted = oracle.path().join("x");
    sh(
        "unsquashfs",
        &[
            Path::new("-quiet"),
            Path::new("-no-progress"),
            Path::new("-d"),
            &extracted,
            &image,
        ],
    );
    let want: Vec<String> = ["node1", "node2"]
        .iter()
        .map(|n| treestate(&extracted.join(n)))
        .collect();

    let adopted = env.json(&["adopt", "old_image"], 0);
    assert_eq!(adopted["format"], "squashfs");
    assert_eq!(adopted["mode"], "squashfs");
    // The image stays only until the new snapshot is in place; nothing is left beside it.
    assert_eq!(entries(&env.snapshots()), [".lock", "old_image"]);
    let meta: serde_json::Value =
        serde_json::from_slice(&fs::read(env.snapshots().join("old_image/meta.json")).unwrap())
            .unwrap();
    assert_eq!(meta["payload"]["compression"], "gzip");

    env.run(&["verify", "old_image"], 0);
    env.suite(5);
    env.run(&["restore", "old_image"], 0);
    for (node, want) in ["node1", "node2"].iter().zip(&want) {
        assert_same_tree(&treestate(&env.data().join(node)), want);
    }
}

#[test]
fn an_interrupted_adopt_leaves_the_legacy_snapshot_as_it_was() {
    let env = Env::sample(2, MB);
    let legacy = legacy_dir(&env, "old_state");
    let store = store_state(&env);
    let inodes = file_inodes(&legacy);

    let paused = env.paused(&["adopt", "old_state"], "adopt-after-move");
    assert_eq!(entries(&legacy), [".snapshot_metadata", ".stagesnap-adopt"]);
    // SAFETY: plain kill(2) on our child.
    assert_eq!(unsafe { libc::kill(paused.pid() as i32, libc::SIGTERM) }, 0);
    paused.finish().code(130).stderr(contains(
        "adopting old_state failed; the stage-env snapshot",
    ));
    assert_eq!(store_state(&env), store);
    assert_eq!(file_inodes(&legacy), inodes);
}

#[test]
fn a_killed_adopt_is_undone_by_the_next_command_that_locks_the_store() {
    let env = Env::sample(2, MB);
    let legacy = legacy_dir(&env, "old_state");
    let store = store_state(&env);

    let paused = env.paused(&["adopt", "old_state"], "adopt-after-move");
    // SAFETY: plain kill(2) on our child.
    assert_eq!(unsafe { libc::kill(paused.pid() as i32, libc::SIGKILL) }, 0);
    paused.finish().interrupted();
    assert_eq!(entries(&legacy), [".snapshot_metadata", ".stagesnap-adopt"]);

    // Any command that clears the store's leftovers puts the node directories back first.
    env.run(&["prune"], 0);
    assert_eq!(store_state(&env), store);
    env.run(&["adopt", "old_state"], 0);
    env.run(&["verify", "old_state"], 0);
}

#[test]
fn adopt_refuses_what_it_cannot_take_and_changes_nothing() {
    let env = Env::sample(2, MB);
    fs::create_dir_all(env.snapshots()).unwrap();
    let refused = |args: &[&str], code: i32, expect: &str| {
        let store = store_state(&env);
        let (_, stderr) = env.run(args, code);
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
        assert_eq!(
            stderr.lines().filter(|l| l.starts_with("error: ")).count(),
            1,
            "{stderr}"
        );
        assert_eq!(store_state(&env), store, "{args:?} changed the store");
    };
    refused(&["adopt", "nothing"], 4, "no stage-env snapshot nothing in");

    // A node directory that is a link (to another legacy node, inside the store even).
    let dir = legacy_dir(&env, "linked");
    fs::remove_dir_all(dir.join("node2")).unwrap();
    symlink(dir.join("node1"), dir.join("node2")).unwrap();
    refused(
        &["adopt", "linked"],
        1,
        &format!("{} is a symlink", dir.join("node2").display()),
    );

    // Something that is no node directory.
    let dir = legacy_dir(&env, "mixed");
    fs::write(dir.join("notes.txt"), "x").unwrap();
    refused(
        &["adopt", "mixed"],
        1,
        &format!("{} is not a directory", dir.join("notes.txt").display()),
    );

    // Both formats under one name.
    legacy_dir(&env, "both");
    legacy_image(&env, "both");
    refused(&["adopt", "both"], 1, "left both");

    // An image linked from elsewhere.
    let outside = tempfile::tempdir().unwrap();
    let real = legacy_image(&env, "tmp");
    fs::rename(&real, outside.path().join("x.sqfs")).unwrap();
    symlink(
        outside.path().join("x.sqfs"),
        env.snapshots().join("far.sqfs"),
    )
    .unwrap();
    refused(
        &["adopt", "far"],
        1,
        "is a symlink, and stagesnap never follows links",
    );

    // An image beside a stagesnap snapshot of the same name: only with --force.
    env.run(&["create", "taken"], 0);
    legacy_image(&env, "taken");
    refused(&["adopt", "taken"], 1, "use --force");
    let adopted = env.json(&["adopt", "taken", "--force"], 0);
    assert_eq!(adopted["replaced"], true);
    assert_eq!(adopted["mode"], "squashfs");
    assert!(!env.snapshots().join("taken.sqfs").exists());
}

#[test]
fn completion_offers_legacy_names_once() {
    let env = Env::sample(1, MB);
    env.run(&["create", "both"], 0);
    legacy_image(&env, "both");
    legacy_dir(&env, "old_state");
    let (names, _) = env.run(&["complete-names"], 0);
    assert_eq!(names, "both\nold_state\n");
}

/// When the node directories cannot go back (the legacy directory was made immutable
/// meanwhile), the staging directory that holds them stays, and the next command that locks
/// the store moves them back before it clears leftovers.
#[test]
fn an_adopt_that_cannot_move_the_nodes_back_keeps_them_for_the_next_command() {
    let env = Env::sample(2, MB);
    let legacy = legacy_dir(&env, "old_state");
    let store = store_state(&env);
    let mut inodes = file_inodes(&legacy);

    let paused = env.paused(&["adopt", "old_state"], "adopt-after-move");
    sh("chattr", &[Path::new("+i"), &legacy]);
    // SAFETY: plain kill(2) on our child.
    assert_eq!(unsafe { libc::kill(paused.pid() as i32, libc::SIGTERM) }, 0);
    let adopt = paused.finish();
    sh("chattr", &[Path::new("-i"), &legacy]);
    adopt.code(130).stderr(
        contains("moving its node directories back failed too").and(contains(
            "`stagesnap adopt old_state` again) moves them back",
        )),
    );
    assert_eq!(entries(&legacy), [".snapshot_metadata", ".stagesnap-adopt"]);

    env.run(&["prune"], 0);
    assert_eq!(store_state(&env), store);
    env.run(&["adopt", "old_state"], 0);
    inodes.remove(Path::new(".snapshot_metadata"));
    let snap = env.snapshots().join("old_state/payload/data");
    assert_eq!(file_inodes(&snap), inodes, "the data was copied or lost");
}

/// A legacy directory another user cannot read is reported, not fatal to `list`.
#[test]
fn list_reports_a_legacy_snapshot_it_cannot_read_and_goes_on() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::sample(1, MB);
    let dir = legacy_dir(&env, "old_state");
    legacy_image(&env, "old_image");
    env.run(&["prune", "--dry-run"], 0); // makes the lock file open_to_others opens up
    common::open_to_others(&env);
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(dir.join("node1"), fs::Permissions::from_mode(0o700)).unwrap();
    let listing = json_of(
        &env.std_cmd_as_nobody()
            .args(["list", "--json"])
            .assert()
            .success(),
    );
    assert_eq!(snapshot_names(&listing), ["old_image"]);
    assert_eq!(listing["unreadable"][0]["name"], "old_state");
    let problem = listing["unreadable"][0]["problem"].as_str().unwrap();
    assert!(problem.contains("node1"), "{problem}");
}
