//! The snapshot store as untrusted input and as a filesystem that can be read-only, full or
//! mounted from the live data: symlinks inside it are never followed, a store overlapping
//! the data is refused by every command, a full store is named, readers work on a
//! read-only store, and status and diff tell "could not compare" (exit 7) from "differs".

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;

use common::{Env, Mount, assert_same_tree, entries, refused, treestate};
use predicates::str::contains;

const MB: u64 = 1 << 20;
const COULD_NOT_COMPARE: i32 = 7;

/// A file outside the store that a planted symlink points at, with its content.
fn victim(env: &Env) -> (std::path::PathBuf, &'static [u8]) {
    let path = env.root.join("victim");
    let content: &[u8] = b"not stagesnap's\n";
    fs::write(&path, content).unwrap();
    (path, content)
}

fn dirty(env: &Env) {
    fs::write(env.data().join("node1/dirty.txt"), b"changed by a suite\n").unwrap();
}

#[test]
fn a_symlink_at_the_lock_file_is_never_followed() {
    let env = Env::sample(1, MB / 4);
    env.run(&["create"], 0);
    let (victim, content) = victim(&env);
    let lock = env.snapshots().join(".lock");
    fs::remove_file(&lock).unwrap();
    symlink(&victim, &lock).unwrap();
    for (args, code) in [
        (&["status"][..], COULD_NOT_COMPARE),
        (&["create", "--force"], 1),
        (&["verify"], 1),
    ] {
        let (_, stderr) = env.run(args, code);
        assert!(
            stderr.contains(&format!("lock file {} is a symlink", lock.display())),
            "{args:?}: {stderr}"
        );
        assert_eq!(fs::read(&victim).unwrap(), content, "{args:?}");
    }
}

#[test]
fn a_symlink_at_the_journal_temp_file_is_removed_not_followed() {
    let env = Env::sample(1, MB / 4);
    env.run(&["create"], 0);
    let clean = treestate(&env.data());
    let (victim, content) = victim(&env);
    let tmp = env.snapshots().join(".restore-journal.json.tmp");
    symlink(&victim, &tmp).unwrap();
    dirty(&env);
    env.run(&["restore"], 0);
    assert_same_tree(&treestate(&env.data()), &clean);
    assert_eq!(fs::read(&victim).unwrap(), content);
    assert!(tmp.symlink_metadata().is_err(), "the planted link is gone");
    assert!(!env.snapshots().join(".restore-journal").exists());
}

/// A snapshot directory (or its metadata) that is a symlink is never used: restore, verify,
/// diff and status refuse it naming it, list shows it as unreadable, and delete removes the
/// link, never its target.
#[test]
fn a_symlinked_snapshot_is_refused_and_delete_removes_only_the_link() {
    let env = Env::sample(1, MB / 4);
    env.run(&["create", "linked"], 0);
    env.run(&["create", "metalink"], 0);
    let elsewhere = env.root.join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    let link = env.snapshots().join("linked");
    fs::rename(&link, elsewhere.join("linked")).unwrap();
    symlink(elsewhere.join("linked"), &link).unwrap();
    let meta = env.snapshots().join("metalink/meta.json");
    fs::rename(&meta, elsewhere.join("meta.json")).unwrap();
    symlink(elsewhere.join("meta.json"), &meta).unwrap();
    dirty(&env);

    let named = format!("{} is a symlink", link.display());
    refused(&env, &["restore", "linked"], 1, &[&named]);
    refused(&env, &["verify", "linked"], 1, &[&named]);
    refused(&env, &["diff", "linked"], COULD_NOT_COMPARE, &[&named]);
    refused(&env, &["status", "linked"], COULD_NOT_COMPARE, &[&named]);
    refused(
        &env,
        &["restore", "metalink"],
        1,
        &[&meta.display().to_string()],
    );
    let listing = env.json(&["list"], 0);
    let mut unreadable: Vec<&str> = listing["unreadable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    unreadable.sort();
    assert_eq!(unreadable, ["linked", "metalink"], "{listing}");

    env.run(&["delete", "linked"], 0);
    assert!(link.symlink_metadata().is_err(), "the link is removed");
    assert!(
        elsewhere.join("linked/meta.json").is_file(),
        "its target is not"
    );
}

/// A snapshots_dir bind-mounted from inside the data has a path outside it: every command
/// that locks the store refuses it (exit 2) before creating or locking anything there
/// (`refused` checks the data is unchanged: no `.lock`, no staging directory).
#[test]
fn a_store_bind_mounted_from_the_data_is_refused_by_every_command() {
    let env = Env::sample(1, MB / 4);
    env.run(&["create"], 0);
    fs::remove_dir_all(env.snapshots()).unwrap();
    let inside = env.data().join("node1/lib");
    let _mount = Mount::bind(&inside, &env.snapshots());
    let both = [
        format!("snapshots_dir {}", env.snapshots().display()),
        format!("overlaps the included path {}", env.data().display()),
    ];
    let expect = [both[0].as_str(), both[1].as_str(), "Move snapshots_dir"];
    for args in [
        &["create"][..],
        &["restore"],
        &["status"],
        &["verify"],
        &["diff", "clean_state"],
        &["delete", "clean_state"],
        &["prune"],
        &["adopt", "clean_state"],
    ] {
        refused(&env, args, 2, &expect);
    }
}

/// The store fills up before a restore can write its journal: the error names the journal
/// and what needs room, no temporary file is left, and the live data is unchanged.
#[test]
fn a_full_store_fails_the_restore_naming_the_journal_and_leaves_nothing() {
    let env = Env::sample(1, MB / 4);
    let (store, _mount) = env.small_store("4m");
    env.run(&["create"], 0);
    let mut filler = fs::File::create(store.join(".filler")).unwrap();
    while filler.write_all(&[0u8; 65536]).is_ok() {}
    drop(filler);
    dirty(&env);
    let dirty_tree = treestate(&env.data());

    let (_, stderr) = env.run(&["restore"], 1);
    let journal = store.join(".restore-journal");
    assert!(
        stderr.contains(&format!("cannot write {}", journal.display()))
            && stderr.contains(&format!(
                "the store needs free space in {}",
                store.display()
            ))
            && stderr.contains("the live data is unchanged"),
        "{stderr}"
    );
    assert_same_tree(&treestate(&env.data()), &dirty_tree);
    assert_eq!(entries(&store), [".filler", ".lock", "clean_state"]);
}

/// list, status, verify and diff only read the store: they work when it is read-only, with
/// its lock file (taken shared) or without one (none taken), and never write the holder
/// record.
#[test]
fn readers_work_on_a_read_only_store() {
    let env = Env::sample(1, MB / 4);
    let (store, _mount) = env.small_store("16m");
    env.run(&["create"], 0);
    let lock = store.join(".lock");
    let holder = fs::read(&lock).unwrap();
    let readers = |env: &Env| {
        env.run(&["list"], 0);
        env.run(&["status"], 0);
        env.run(&["verify"], 0);
        env.run(&["diff", "clean_state"], 0);
    };
    readers(&env);
    assert_eq!(
        fs::read(&lock).unwrap(),
        holder,
        "readers write no holder record"
    );

    common::remount(&store, "remount,ro");
    readers(&env);
    common::remount(&store, "remount,rw");
    fs::remove_file(&lock).unwrap();
    common::remount(&store, "remount,ro");
    readers(&env);
    assert!(!lock.exists());
}

/// Readers share the lock: one held shared does not stop status, and stops a writer, which
/// does not name the last writer (gone) as the holder.
#[test]
fn readers_share_the_lock_and_a_writer_waits_for_them() {
    let env = Env::sample(1, MB / 4);
    env.run(&["create"], 0);
    let held = fs::File::open(env.snapshots().join(".lock")).unwrap();
    held.lock_shared().unwrap();
    env.run(&["status", "--lock-timeout", "0"], 0);
    env.assert(&["create", "--force", "--lock-timeout", "0"])
        .code(5)
        .stderr(contains("is locked by another stagesnap process"));
}

/// status and diff exit 0 when identical, 1 when the data differs, 7 when they could not
/// compare (a damaged snapshot, a missing store), and 4 for a snapshot that does not exist.
#[test]
fn status_and_diff_tell_could_not_compare_from_differs() {
    let env = Env::sample(1, MB / 4);
    env.run(&["create"], 0);
    env.run(&["create", "other"], 0);
    env.run(&["status"], 0);
    env.run(&["diff", "clean_state"], 0);
    dirty(&env);
    env.run(&["status"], 1);
    env.run(&["diff", "clean_state"], 1);

    let manifest = env.snapshots().join("clean_state/manifest.jsonl");
    fs::OpenOptions::new()
        .append(true)
        .open(&manifest)
        .unwrap()
        .write_all(b"garbage\n")
        .unwrap();
    for args in [
        &["status"][..],
        &["diff", "clean_state"],
        &["diff", "other", "clean_state"],
    ] {
        env.assert(args)
            .code(COULD_NOT_COMPARE)
            .stderr(contains("snapshot clean_state is damaged"));
    }
    let doc = env.json(&["status"], COULD_NOT_COMPARE);
    assert_eq!(doc["error"]["kind"], "could_not_compare", "{doc}");
    env.run(&["status", "missing"], 4);
    env.run(&["diff", "missing"], 4);

    let gone = env.root.join("no-store");
    env.set("snapshots_dir", gone.to_str().unwrap());
    for args in [&["status"][..], &["diff", "clean_state"]] {
        env.assert(args)
            .code(COULD_NOT_COMPARE)
            .stderr(contains(format!(
                "snapshots_dir {} does not exist",
                gone.display()
            )));
    }
    assert!(!gone.exists(), "status and diff never create the store");
}

/// A squashfs image replaced by a symlink (to an intact copy) is damaged: restore refuses it
/// before anything changes, and verify says so.
#[test]
fn a_symlinked_squashfs_image_is_refused() {
    let env = Env::sample(1, MB / 4);
    env.set("mode", "squashfs");
    env.run(&["create"], 0);
    let payload = env.snapshots().join("clean_state/payload");
    let image = fs::read_dir(&payload)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| fs::read(p).is_ok_and(|b| b.starts_with(b"hsqs")))
        .expect("an image in the payload");
    let copy = env.root.join("image-copy");
    fs::rename(&image, &copy).unwrap();
    symlink(&copy, &image).unwrap();
    dirty(&env);
    let named = format!("{} is a symlink", image.display());
    refused(&env, &["restore"], 1, &[&named]);
    env.assert(&["verify"]).code(1).stdout(contains(&named));
}
