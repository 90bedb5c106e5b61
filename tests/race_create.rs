//! A container swapping a directory for a symlink while `create` copies (issue 13): the
//! snapshot must never hold anything from outside the data directory. The copiers resolve
//! paths, so a lost race makes them read the symlink's target; the real tools cannot be made
//! to lose it on demand, so wrappers first on PATH reproduce its effect (the one use of a
//! fake tool here). Honest writes during an unquiesced create must still succeed.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{Env, Paused};

const SECRET: &[u8] = b"TOPSECRET-host-only-7c1e4f";

/// A host directory outside the data directory, holding a secret.
fn outside(env: &Env) -> PathBuf {
    let dir = env.root.join("host-only");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("secret"), SECRET).unwrap();
    dir
}

/// A directory of wrapper tools put first on PATH.
fn wrapper(env: &Env, program: &str, script: &str) -> PathBuf {
    let bin = env.root.join("bin");
    fs::create_dir_all(&bin).unwrap();
    let path = bin.join(program);
    fs::write(&path, script).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

fn real(program: &str) -> String {
    let out = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// An rsync that loses the race: `lib` is a symlink to the outside directory while it
/// copies, and it descends through it (as it does when the swap comes between its lstat of
/// `lib` and its opendir), then the swap is undone.
fn losing_rsync(env: &Env, lib: &Path, outside: &Path) -> PathBuf {
    let stash = env.root.join("stash");
    let (lib, outside, stash, rsync) = (
        lib.display(),
        outside.display(),
        stash.display(),
        real("rsync"),
    );
    wrapper(
        env,
        "rsync",
        &format!(
            "#!/bin/sh\ncase \"$1\" in --version) exec {rsync} \"$@\";; esac\n\
             mv {lib} {stash} && ln -s {outside} {lib}\n\
             {rsync} --copy-dirlinks \"$@\"; rc=$?\n\
             rm {lib} && mv {stash} {lib}\nexit $rc\n"
        ),
    )
}

/// A mksquashfs that loses the race: while it reads, `lib` was swapped away and what it finds
/// there is the outside directory (mksquashfs cannot be told to follow a symlink, so a bind
/// mount stands in for the one it would have read through), then the swap is undone.
fn losing_mksquashfs(env: &Env, lib: &Path, outside: &Path) -> PathBuf {
    let stash = env.root.join("stash");
    let (lib, outside, stash, mksquashfs) = (
        lib.display(),
        outside.display(),
        stash.display(),
        real("mksquashfs"),
    );
    wrapper(
        env,
        "mksquashfs",
        &format!(
            "#!/bin/sh\ncase \"$1\" in -version|-help) exec {mksquashfs} \"$@\";; esac\n\
             mv {lib} {stash} && mkdir {lib} && mount --bind {outside} {lib}\n\
             {mksquashfs} \"$@\"; rc=$?\n\
             umount {lib} && rmdir {lib} && mv {stash} {lib}\nexit $rc\n"
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

fn with_path(env: &Env, bin: &Path) -> std::process::Command {
    let mut cmd = env.std_cmd();
    cmd.env(
        "PATH",
        format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
    );
    cmd
}

/// The create under a losing copier is refused (exit 1, naming the swapped path, saying to
/// quiesce); the store holds no trace of the secret, the earlier snapshot of that name is
/// intact and restores the data it had.
fn refused_when_copier_reads_outside(env: &Env, losing: fn(&Env, &Path, &Path) -> PathBuf) {
    let node = env.data().join("node1");
    let secret_dir = outside(env);
    env.run(&["create", "base"], 0);
    let before = common::treestate(&env.data());
    let listed_before = env.json(&["list"], 0);

    let bin = losing(env, &node.join("lib"), &secret_dir);
    let out = with_path(env, &bin)
        .args(["create", "base", "--force"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
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

    let mut cmd = env.std_cmd();
    cmd.args(["create", "live"]);
    let paused = Paused::start(cmd, "create-after-copy");
    let copied = common::treestate(&env.data());
    let mut f = fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::io::Write::write_all(&mut f, b"second line\n").unwrap();
    fs::write(log_dir.join("node.log.1"), b"rotated\n").unwrap();
    let (code, _, stderr) = paused.finish();
    assert_eq!(code, 0, "{stderr}");

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
    let mut cmd = env.std_cmd();
    cmd.args(["create", "swapped"]);
    let paused = Paused::start(cmd, "create-before-copy");
    fs::rename(&lib, env.root.join("stash")).unwrap();
    std::os::unix::fs::symlink(&secret_dir, &lib).unwrap();
    let (code, _, stderr) = paused.finish();
    assert_eq!(code, 0, "{stderr}");
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
            let out = env
                .cmd()
                .args(["create", &format!("race{i}")])
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(matches!(out.status.code(), Some(0 | 1)), "{stderr}");
            assert_secret_not_stored(&env);
        }
        stop.store(true, Ordering::Relaxed);
    });
}
