//! Issue 13, path races: a restore never writes, deletes or reads outside the data directory
//! and the snapshot, whatever a process in a node directory does to the tree meanwhile. The
//! restore is paused between its walk and its first change (`delta-after-walk`), the test
//! swaps a directory or file for a symlink to somewhere outside with RENAME_EXCHANGE (what a
//! racing process does), then lets it go.
//!
//! A swapped restore exits 1 naming the path and saying the tree changed (run restore again),
//! rather than going on: its plan came from a walk of a tree that is no longer there, and the
//! swapped-in symlink is itself inside the node directory, which the restore cannot silently
//! "fix" without acting on a tree it has not looked at.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use assert_cmd::assert::Assert;
use common::{Env, assert_same_tree, cp_a, texts, treestate};
use predicates::prelude::PredicateBooleanExt;
use predicates::str::contains;

const MB: u64 = 1 << 20;

/// Exchanges two names atomically, as a racing process would.
fn exchange(a: &Path, b: &Path) {
    // SAFETY: valid C strings.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            common::cstr(a).as_ptr(),
            libc::AT_FDCWD,
            common::cstr(b).as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    assert_eq!(rc, 0, "exchange: {}", std::io::Error::last_os_error());
}

/// Regular files below `dir`, sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = walkdir::WalkDir::new(dir)
        .into_iter()
        .map(|e| e.unwrap().into_path())
        .filter(|p| p.symlink_metadata().unwrap().is_file())
        .collect();
    out.sort();
    out
}

/// A snapshot of a one-node sample, taken; the live data as it was then.
fn snapshotted() -> (Env, String) {
    let env = Env::sample(1, MB / 2);
    env.run(&["create", "base"], 0);
    let data = treestate(&env.data());
    (env, data)
}

/// Runs `restore base` paused after its walk, swaps `entry` for a symlink to `target` (the
/// entry itself is left at `<root>/swap`), lets it go; returns its outcome.
fn restore_swapping(env: &Env, entry: &Path, target: &Path) -> Assert {
    let link = env.root.join("swap");
    std::os::unix::fs::symlink(target, &link).unwrap();
    let paused = env.paused(&["restore", "base"], "delta-after-walk");
    exchange(entry, &link);
    paused.finish()
}

/// The restore failed with one error line naming `path` (below cache_dir), saying the tree
/// changed.
#[track_caller]
fn refused_as_changed(env: &Env, restore: Assert, path: &Path) {
    let path = path.strip_prefix(env.cache()).unwrap().to_str().unwrap();
    let (_, stderr) = texts(&restore.code(1));
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "one error line:\n{stderr}");
    assert!(
        errors[0].contains(path)
            && errors[0].contains("changed during the restore")
            && errors[0].contains("run restore again"),
        "{stderr}"
    );
}

/// `lib` of node 1 is swapped for a symlink to a copy of itself outside the data directory
/// while the restore has removals, creations and repairs to do in it: the copy is left
/// alone, the restore stops, and the next restore brings the data back.
#[test]
#[cfg_attr(not(feature = "test-hooks"), ignore = "needs --features test-hooks")]
fn a_directory_swapped_for_a_symlink_is_never_followed() {
    let (env, clean) = snapshotted();
    let lib = env.data().join("node1/lib");
    let all = files(&lib);
    std::fs::write(lib.join("extra.tmp"), b"made by a suite").unwrap();
    std::fs::remove_file(&all[0]).unwrap();
    let mut changed = std::fs::read(&all[1]).unwrap();
    changed[0] ^= 0xff;
    std::fs::write(&all[1], &changed).unwrap();

    // The outside directory holds everything the restore would act on, had it followed.
    let outside = env.root.join("outside");
    std::fs::create_dir(&outside).unwrap();
    cp_a(&lib, &outside.join("lib"));
    let before = treestate(&outside);

    let restore = restore_swapping(&env, &lib, &outside.join("lib"));
    assert_same_tree(&treestate(&outside), &before);
    refused_as_changed(&env, restore, &lib);

    // As the message says: run it again (the symlink is then an entry to replace).
    env.run(&["restore", "base"], 0);
    assert_same_tree(&treestate(&outside), &before);
    assert_same_tree(&treestate(&env.data()), &clean);
}

/// A file the restore only creates, in a directory swapped for a symlink to an empty
/// outside directory: nothing appears there.
#[test]
#[cfg_attr(not(feature = "test-hooks"), ignore = "needs --features test-hooks")]
fn a_file_is_never_created_through_a_swapped_directory() {
    let (env, _) = snapshotted();
    let lib = env.data().join("node1/lib");
    let gone = files(&lib).remove(0);
    let dir = gone.parent().unwrap().to_path_buf();
    std::fs::remove_file(&gone).unwrap();
    let outside = env.root.join("outside");
    std::fs::create_dir(&outside).unwrap();

    let restore = restore_swapping(&env, &dir, &outside);
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    refused_as_changed(&env, restore, &dir);
}

/// A file whose mode the restore sets back, swapped for a symlink to an outside file: the
/// outside file keeps its mode (chmod follows symlinks; the restore must not).
#[test]
#[cfg_attr(not(feature = "test-hooks"), ignore = "needs --features test-hooks")]
fn metadata_is_never_set_through_a_symlink() {
    let (env, _) = snapshotted();
    let file = files(&env.data().join("node1/lib")).remove(0);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o604)).unwrap();
    let outside = env.root.join("outside");
    std::fs::write(&outside, b"not the restore's").unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o600)).unwrap();

    let restore = restore_swapping(&env, &file, &outside);
    let mode = std::fs::symlink_metadata(&outside)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o600, "{restore}");
    assert_eq!(std::fs::read(&outside).unwrap(), b"not the restore's");
    refused_as_changed(&env, restore, &file);
}

/// The snapshot's own `data/node1/lib` swapped for a symlink to an outside directory whose
/// files differ: the restore does not read through it, it refuses the snapshot as damaged.
#[test]
#[cfg_attr(not(feature = "test-hooks"), ignore = "needs --features test-hooks")]
fn the_snapshot_is_never_read_through_a_symlink() {
    let (env, _) = snapshotted();
    let lib = env.data().join("node1/lib");
    let all = files(&lib);
    std::fs::remove_file(&all[0]).unwrap();
    std::fs::write(&all[1], b"changed by a suite").unwrap();
    let stored = env.snapshots().join("base/payload/data/node1/lib");
    let outside = env.root.join("outside");
    std::fs::create_dir(&outside).unwrap();
    cp_a(&stored, &outside.join("lib"));
    // Same sizes, other bytes: a restore that read them would not notice by size.
    for f in files(&outside) {
        let len = std::fs::metadata(&f).unwrap().len() as usize;
        std::fs::write(&f, vec![b'X'; len]).unwrap();
    }
    let before = treestate(&outside);

    let restore = restore_swapping(&env, &stored, &outside.join("lib"));
    assert_same_tree(&treestate(&outside), &before);
    restore
        .code(1)
        .stderr(contains("the snapshot is damaged").and(contains("data/node1/lib")));
    for f in files(&lib) {
        assert!(
            std::fs::read(&f).unwrap().iter().any(|&b| b != b'X')
                || f.metadata().unwrap().len() == 0,
            "{} was read through the symlink",
            f.display()
        );
    }
}

/// A bounded real race besides the deterministic ones: a thread exchanges node 1's `lib` and
/// a symlink to an outside copy of it, back and forth without pause, during a series of
/// restores that each have removals, creations and repairs there. Whatever each restore
/// ends with, the outside copy never changes.
#[test]
fn a_racing_exchange_never_reaches_outside() {
    let (env, _) = snapshotted();
    let lib = env.data().join("node1/lib");
    let all = files(&lib);
    let outside = env.root.join("outside");
    std::fs::create_dir(&outside).unwrap();
    cp_a(&lib, &outside.join("lib"));
    std::fs::write(outside.join("lib/extra.tmp"), b"made by a suite").unwrap();
    let before = treestate(&outside);
    let link = env.root.join("swap");
    std::os::unix::fs::symlink(outside.join("lib"), &link).unwrap();
    for round in 0..12 {
        // Back to `lib` a directory and `link` the symlink, whatever the last round left (a
        // restore may have replaced either), then dirty `lib`.
        if lib.symlink_metadata().unwrap().is_symlink() {
            exchange(&lib, &link);
        }
        if !link.symlink_metadata().unwrap().is_symlink() {
            std::fs::remove_dir_all(&link).unwrap();
            std::os::unix::fs::symlink(outside.join("lib"), &link).unwrap();
        }
        std::fs::write(lib.join("extra.tmp"), b"made by a suite").unwrap();
        let _ = std::fs::remove_file(&all[0]);
        let _ = std::fs::write(&all[1], format!("round {round}"));
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // SAFETY: valid C strings; failures (a name gone meanwhile) are part of
                    // the race.
                    unsafe {
                        libc::renameat2(
                            libc::AT_FDCWD,
                            common::cstr(&lib).as_ptr(),
                            libc::AT_FDCWD,
                            common::cstr(&link).as_ptr(),
                            libc::RENAME_EXCHANGE,
                        )
                    };
                }
            });
            let restore = env.assert(&["restore", "base"]);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            restore.code(&[0, 1][..]);
        });
        assert_same_tree(&treestate(&outside), &before);
    }
}

/// The walk reads an entry's xattrs through the entry itself, not by its full path: swapped
/// between the listing and the values, the outside copy's (different) values are never read,
/// so `diff` (one walk, no change) never reports `tagged`'s xattrs as differing.
#[test]
#[cfg_attr(not(feature = "test-hooks"), ignore = "needs --features test-hooks")]
fn xattrs_are_never_read_through_a_swapped_directory() {
    let env = Env::sample(1, MB / 2);
    let lib = env.data().join("node1/lib");
    let file = lib.join("tagged");
    std::fs::write(&file, b"x").unwrap();
    common::set_xattr(&file, "user.origin", b"the data");
    env.run(&["create", "base"], 0);
    let outside = tempfile::tempdir().unwrap();
    let copy = outside.path().join("lib");
    cp_a(&lib, &copy);
    common::set_xattr(&copy.join("tagged"), "user.origin", b"outside");
    // Nothing else in the sample carries xattrs, so the walk's one pause is at `tagged`.
    let link = outside.path().join("link");
    std::os::unix::fs::symlink(&copy, &link).unwrap();

    let paused = env.paused(&["diff", "base"], "walk-xattrs-listed");
    // lib becomes the symlink to the copy (the real lib waits outside, as `link`).
    exchange(&lib, &link);
    let (stdout, stderr) = texts(&paused.finish());
    exchange(&lib, &link);
    assert!(
        !stdout.contains("tagged") && !stderr.contains("tagged"),
        "{stdout}{stderr}"
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b"x",
        "the data's file is as it was"
    );
}
