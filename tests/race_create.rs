//! A container swapping a directory for a symlink while `create` copies (issue 13): the
//! snapshot must never hold anything from outside the data directory. The copiers resolve
//! paths, so a lost race makes them read the symlink's target; the real tools cannot be made
//! to lose it on demand, so wrappers first on PATH reproduce its effect (the one use of a
//! fake tool here). Honest writes during an unquiesced create must still succeed.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{Env, texts, which};

const SECRET: &[u8] = b"TOPSECRET-host-only-7c1e4f";

/// A host directory outside the data directory, holding a secret.
fn outside(env: &Env) -> PathBuf {
    let dir = env.root.join("host-only");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("secret"), SECRET).unwrap();
    dir
}

/// An rsync that loses the race: `lib` is a symlink to the outside directory while it
/// copies, and it descends through it (as it does when the swap comes between its lstat of
/// `lib` and its opendir), then the swap is undone.
fn losing_rsync(env: &Env, lib: &Path, outside: &Path) -> String {
    let swap = "mv {lib} {stash} && ln -s {outside} {lib}";
    losing(
        env,
        "rsync --copy-dirlinks",
        lib,
        outside,
        swap,
        "rm {lib} && mv {stash} {lib}",
    )
}

/// A mksquashfs that loses the race: while it reads, `lib` was swapped away and what it finds
/// there is the outside directory (mksquashfs cannot be told to follow a symlink, so a bind
/// mount stands in for the one it would have read through), then the swap is undone.
fn losing_mksquashfs(env: &Env, lib: &Path, outside: &Path) -> String {
    let swap = "mv {lib} {stash} && mkdir {lib} && mount --bind {outside} {lib}";
    let undo = "umount {lib} && rmdir {lib} && mv {stash} {lib}";
    losing(env, "mksquashfs", lib, outside, swap, undo)
}

/// A PATH whose `tool` (its name and any flags of its own) runs the real one between the shell
/// commands `swap` and `undo`, in which `{lib}`, `{outside}` and `{stash}` stand for those
/// paths; it exits as the real one did.
fn losing(env: &Env, tool: &str, lib: &Path, outside: &Path, swap: &str, undo: &str) -> String {
    let stash = env.root.join("stash");
    let paths = |script: &str| {
        script
            .replace("{lib}", &lib.display().to_string())
            .replace("{outside}", &outside.display().to_string())
            .replace("{stash}", &stash.display().to_string())
    };
    let (name, flags) = tool.split_once(' ').unwrap_or((tool, ""));
    let real = which(name);
    env.fake_tool(
        name,
        &format!(
            "{}\n{} {flags} \"$@\"; rc=$?\n{}\nexit $rc",
            paths(swap),
            real.display(),
            paths(undo)
        ),
    )
}

/// Every file under the store, read whole: none holds the secret.
fn assert_secret_not_stored(env: &Env) {
    for entry in walkdir::WalkDir::new(env.snapshots()) {
        let entry = entry.unwrap();
        if entry.file_type().is_file() {
            let bytes = fs::read(entry.path()).unwrap();
            assert!(
                !bytes.windows(SECRET.len()).any(|w| w == SECRET),
                "the secret is in {}",
                entry.path().display()
            );
        }
    }
}

/// The create under a losing copier is refused (exit 1, naming the swapped path, saying to
/// quiesce); the store holds no trace of the secret, the earlier snapshot of that name is
/// intact and restores the data it had.
fn refused_when_copier_reads_outside(env: &Env, losing: fn(&Env, &Path, &Path) -> String) {
    let node = env.data().join("node1");
    let secret_dir = outside(env);
    env.run(&["create", "base"], 0);
    let before = common::treestate(&env.data());
    let listed_before = env.json(&["list"], 0);

    let path = losing(env, &node.join("lib"), &secret_dir);
    let (_, stderr) = texts(
        &env.cmd()
            .env("PATH", path)
            .args(["create", "base", "--force"])
            .assert()
            .code(1),
    );
    assert!(
        stderr.contains("data/node1/lib changed during the copy")
            && stderr.contains("quiesce = pause"),
        "{stderr}"
    );
    let errors = stderr.lines().filter(|l| l.starts_with("error:")).count();
    assert_eq!(errors, 1, "{stderr}");
    assert_secret_not_stored(env);
    assert_eq!(env.json(&["list"], 0), listed_before);

    env.suite(7);
    env.run(&["restore", "base"], 0);
    common::assert_same_tree(&common::treestate(&env.data()), &before);
}

#[test]
fn filesystem_create_refuses_a_copy_read_through_a_swapped_symlink() {
    let env = Env::sample(2, 1 << 20);
    env.set("mode", "filesystem");
    refused_when_copier_reads_outside(&env, losing_rsync);
}

#[test]
fn squashfs_create_refuses_an_image_read_through_a_swapped_directory() {
    if !common::is_root() {
        eprintln!("skipped: needs root for the bind mount");
        return;
    }
    let env = Env::sample(2, 1 << 20);
    env.set("mode", "squashfs");
    // Uncompressed, so the secret would show as plain bytes if it were stored.
    env.set("squashfs_compression", "none");
    refused_when_copier_reads_outside(&env, losing_mksquashfs);
}

/// Honest activity around the copy of an unquiesced create: a file appended to in a directory
/// that also gains an entry. What was copied is the start of what is live, so the create
/// succeeds; with `restores_copy`, its snapshot restores what was copied (a squashfs
/// manifest describes the live data after the copy, so there it restores that).
fn honest_append_succeeds(mode: &str, restores_copy: bool) {
    let env = Env::sample(2, 1 << 20);
    env.set("mode", mode);
    env.set("squashfs_compression", "none");
    let log_dir = env.data().join("node1/log");
    fs::create_dir_all(&log_dir).unwrap();
    let log = log_dir.join("node.log");
    fs::write(&log, b"first line\n").unwrap();

    let paused = env.paused(&["create", "live"], "create-after-copy");
    let copied = common::treestate(&env.data());
    let mut f = fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::io::Write::write_all(&mut f, b"second line\n").unwrap();
    fs::write(log_dir.join("node.log.1"), b"rotated\n").unwrap();
    paused.finish().success();

    env.run(&["restore", "live"], 0);
    if restores_copy {
        common::assert_same_tree(&common::treestate(&env.data()), &copied);
    }
}

#[test]
#[cfg_attr(not(feature = "test-hooks"), ignore = "needs --features test-hooks")]
fn filesystem_unquiesced_create_with_an_append_succeeds() {
    honest_append_succeeds("filesystem", true);
}

#[test]
#[cfg_attr(not(feature = "test-hooks"), ignore = "needs --features test-hooks")]
fn squashfs_unquiesced_create_with_an_append_succeeds() {
    honest_append_succeeds("squashfs", false);
}

/// A swap that comes before the copier looks at `lib` is no race: the copy holds the symlink
/// itself, never what it points to, and the create succeeds.
#[test]
#[cfg_attr(not(feature = "test-hooks"), ignore = "needs --features test-hooks")]
fn a_symlink_swapped_in_before_the_copy_is_stored_as_a_symlink() {
    let env = Env::sample(2, 1 << 20);
    env.set("mode", "filesystem");
    let lib = env.data().join("node1/lib");
    let secret_dir = outside(&env);
    let paused = env.paused(&["create", "swapped"], "create-before-copy");
    fs::rename(&lib, env.root.join("stash")).unwrap();
    std::os::unix::fs::symlink(&secret_dir, &lib).unwrap();
    paused.finish().success();
    let held = env.snapshots().join("swapped/payload/data/node1/lib");
    assert_eq!(fs::read_link(&held).unwrap(), secret_dir);
    assert_secret_not_stored(&env);
}

/// The real race, unforced: a thread exchanges `lib` with a symlink to the outside directory
/// (`renameat2(RENAME_EXCHANGE)`) as fast as it can while creates run. Each create either
/// succeeds or is refused, and no visible snapshot ever holds the secret.
#[test]
fn creates_during_an_exchange_loop_never_store_the_secret() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let env = Env::sample(2, 1 << 20);
    env.set("mode", "filesystem");
    let node = env.data().join("node1");
    std::os::unix::fs::symlink(outside(&env), node.join("lnk")).unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let (a, b) = (
                common::cstr(&node.join("lib")),
                common::cstr(&node.join("lnk")),
            );
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: valid C strings.
                unsafe {
                    libc::renameat2(
                        libc::AT_FDCWD,
                        a.as_ptr(),
                        libc::AT_FDCWD,
                        b.as_ptr(),
                        libc::RENAME_EXCHANGE,
                    )
                };
            }
        });
        for i in 0..8 {
            env.assert(&["create", &format!("race{i}")])
                .code(&[0, 1][..]);
            assert_secret_not_stored(&env);
        }
        stop.store(true, Ordering::Relaxed);
    });
}
