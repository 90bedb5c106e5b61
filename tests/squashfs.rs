//! squashfs mode end to end: the built binary against the real squashfs-tools, a real loop
//! mount (the tests run as root; the mount tests say so and skip otherwise) and rsync.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use assert_cmd::assert::OutputAssertExt;
use common::modes::{Mode, require_root};
use common::{
    Env, Mount, assert_same_tree, cp_a, finish, json_of, largest_file, set_mtime, texts, treestate,
    which,
};
use predicates::prelude::PredicateBooleanExt;
use predicates::str::contains;

const MB: u64 = 1 << 20;

const STRATEGIES: [&str; 2] = ["extract", "mount"];

fn meta(env: &Env, name: &str) -> serde_json::Value {
    serde_json::from_slice(&fs::read(env.snapshots().join(name).join("meta.json")).unwrap())
        .unwrap()
}

fn image(env: &Env) -> PathBuf {
    env.snapshots().join("clean_state/payload/image.sqfs")
}

/// Mount points stagesnap made, from /proc/self/mountinfo.
fn stagesnap_mounts() -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.contains("stagesnap-mount-"))
        .map(String::from)
        .collect()
}

/// The image keeps whole seconds, so the mount restore compares whole seconds; a same-size
/// rewrite within the snapshot's second must still come back.
#[test]
fn same_second_rewrite_comes_back() {
    require_root();
    for strategy in STRATEGIES {
        let env = Mode::squashfs("lz4", strategy).env(1, MB);
        let file = env.data().join("node1/lib/ca/same-second.dcert");
        fs::write(&file, b"original").unwrap();
        set_mtime(&file, 1_700_000_000, 100);
        let before = treestate(&env.data());
        env.run(&["create"], 0);
        fs::write(&file, b"modified").unwrap();
        set_mtime(&file, 1_700_000_000, 900);
        env.run(&["restore"], 0);
        assert_eq!(fs::read(&file).unwrap(), b"original", "{strategy}");
        assert_same_tree(&treestate(&env.data()), &before);
    }
}

/// Restore refuses a damaged snapshot before touching anything: exit 1, live data as it was.
#[test]
fn damaged_images_are_refused_and_live_data_untouched() {
    let env = Mode::squashfs("gzip", "extract").env(2, 2 * MB);
    let dirty = env.create_then_suite(3);
    let good = fs::read(image(&env)).unwrap();

    // Truncated.
    fs::write(image(&env), &good[..good.len() - 4096]).unwrap();
    env.assert(&["restore"])
        .code(1)
        .stderr(contains("snapshot clean_state is damaged").and(contains("meta.json says")));
    assert_same_tree(&treestate(&env.data()), &dirty);

    // One bit flipped in the middle.
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x10;
    fs::write(image(&env), &flipped).unwrap();
    env.assert(&["restore"])
        .code(1)
        .stderr(contains("BLAKE3 digest").and(contains("nothing was restored")));
    assert_same_tree(&treestate(&env.data()), &dirty);

    // Size and digest vouch for it, but it is not a squashfs image: it must open too.
    let junk = vec![0x5au8; 8192];
    fs::write(image(&env), &junk).unwrap();
    let meta_path = env.snapshots().join("clean_state/meta.json");
    let mut m = meta(&env, "clean_state");
    m["payload"]["image"]["bytes"] = junk.len().into();
    m["payload"]["image"]["blake3"] = blake3::hash(&junk).to_hex().to_string().into();
    fs::write(&meta_path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    env.assert(&["restore"])
        .code(1)
        .stderr(contains("unsquashfs cannot open"));
    assert_same_tree(&treestate(&env.data()), &dirty);

    // Intact again: the same snapshot restores.
    fs::write(image(&env), &good).unwrap();
    m["payload"]["image"]["bytes"] = good.len().into();
    m["payload"]["image"]["blake3"] = blake3::hash(&good).to_hex().to_string().into();
    fs::write(&meta_path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    env.run(&["restore"], 0);
}

#[test]
fn missing_squashfs_tools_exit_3_with_the_install_hint() {
    let env = Mode::squashfs("none", "auto").env(1, MB / 2);
    let empty = env.root.join("empty-bin");
    fs::create_dir(&empty).unwrap();
    for command in ["create", "restore"] {
        env.cmd().arg(command).env("PATH", &empty).assert().code(3).stderr(contains("error: squashfs mode selected but mksquashfs is not installed.\nInstall squashfs-tools: sudo apt install squashfs-tools"));
    }
    // mksquashfs alone is not enough.
    symlink(which("mksquashfs"), empty.join("mksquashfs")).unwrap();
    env.cmd()
        .arg("create")
        .env("PATH", &empty)
        .assert()
        .code(3)
        .stderr(contains(
            "unsquashfs is not installed.\nInstall squashfs-tools",
        ));
    assert!(!env.snapshots().join("clean_state").exists());
}

/// A compressor the installed build lacks, or a level it does not take, is a configuration
/// error at start (exit 2) naming the setting; doctor lists what the build supports.
#[test]
fn settings_the_build_cannot_honour_are_config_errors() {
    let env = Mode::squashfs("zstd", "extract").env(1, MB / 2);
    let real = which("mksquashfs");
    let path = env.fake_path(
        &[(
            "mksquashfs",
            &format!(
                "case \"$1\" in -help) printf 'Compressors available:\\n\\tgzip (default)\\n\\tlzo\\n-b <size>\\n';; *) exec {} \"$@\";; esac",
                real.display()
            ),
        )],
    );
    env.cmd()
        .arg("create")
        .env("PATH", &path)
        .assert()
        .code(2)
        .stderr(
            contains("squashfs_compression = zstd (")
                .and(contains("stage-env.cfg"))
                .and(contains("was built without zstd; it supports gzip, lzo")),
        );
    assert!(!env.snapshots().join("clean_state").exists());

    let doc = json_of(
        &env.cmd()
            .args(["doctor", "--json"])
            .env("PATH", &path)
            .assert()
            .code(1),
    );
    let check = common::doctor_check(&doc, "squashfs settings");
    assert_eq!(check["status"], "fail", "{check}");
    assert!(
        check["detail"]
            .as_str()
            .unwrap()
            .contains("it supports gzip, lzo"),
        "{check}"
    );

    env.set("squashfs_level", "30");
    env.assert(&["create"])
        .code(2)
        .stderr(contains("squashfs_level = 30").and(contains("zstd takes levels 1-22")));
    env.set("squashfs_compression", "xz");
    env.set("squashfs_level", "5");
    env.assert(&["create"])
        .code(2)
        .stderr(contains("xz has no compression levels"));
    env.set("squashfs_level", "auto");
    env.set("squashfs_processors", "0");
    env.assert(&["create"])
        .code(2)
        .stderr(contains("squashfs_processors").and(contains("auto or a whole number >= 1")));
}

#[test]
fn doctor_says_which_strategy_and_why() {
    let env = Mode::squashfs("none", "auto").env(1, MB / 2);
    let strategy = |env: &Env| {
        let doc = env.json(&["doctor"], 0);
        let check = common::doctor_check(&doc, "squashfs restore");
        check["detail"].as_str().unwrap().to_string()
    };
    let auto = strategy(&env);
    assert!(
        auto.starts_with("extract") && auto.contains("auto: reads the image directly"),
        "{auto}"
    );
    require_root();
    env.set("squashfs_restore", "mount");
    let mount = strategy(&env);
    assert!(
        mount.starts_with("mount") && mount.contains("squashfs_restore = mount"),
        "{mount}"
    );
}

#[test]
fn list_shows_stored_size_and_ratio() {
    let env = Mode::squashfs("zstd", "auto").env(2, 2 * MB);
    env.run(&["create"], 0);
    let listed = env.json(&["list"], 0);
    let snap = &listed["snapshots"][0];
    let (bytes, stored) = (
        snap["bytes"].as_f64().unwrap(),
        snap["stored_bytes"].as_f64().unwrap(),
    );
    let ratio = snap["ratio"].as_f64().unwrap();
    assert!((ratio - stored / bytes).abs() < 0.001, "{snap}");
    assert!(ratio < 1.0, "the sample's logs compress: {snap}");
    let (table, _) = env.run(&["list"], 0);
    assert!(table.lines().next().unwrap().contains("RATIO"), "{table}");
    assert!(table.contains(&format!("{ratio:.2}")), "{table}");
}

/// Creating refuses data squashfs cannot store instead of silently dropping it.
#[test]
fn acls_are_refused_at_create() {
    require_root();
    let env = Mode::squashfs("none", "auto").env(1, MB / 2);
    let wallet = env.data().join("node1/lib/wallet");
    Command::new("setfacl")
        .args(["-m", "u:1234:rwx"])
        .arg(&wallet)
        .assert()
        .success();
    env.assert(&["create"]).code(1).stderr(
        contains(format!("cannot snapshot {}", wallet.display()))
            .and(contains("system.posix_acl_access"))
            .and(contains("mode = filesystem")),
    );
    assert!(!env.snapshots().join("clean_state").exists());
}

/// A failing mount (squashfs_restore = mount) is an error that changes nothing.
#[test]
fn a_failed_mount_changes_nothing() {
    require_root();
    let env = Mode::squashfs("lz4", "auto").env(2, MB);
    let dirty = env.create_then_suite(9);
    let path = env.fake_path(
        &[(
            "mount",
            "case \"$1\" in --version) echo 'mount from util-linux 2.38.1';; *) echo 'mount: permission denied' >&2; exit 32;; esac",
        )],
    );
    env.set("squashfs_restore", "mount");
    env.cmd()
        .arg("restore")
        .env("PATH", &path)
        .assert()
        .code(1)
        .stderr(contains("mount: permission denied").and(contains(
            "cannot loop-mount the snapshot's image, nothing was changed",
        )));
    assert_same_tree(&treestate(&env.data()), &dirty);
}

/// The image is unmounted and its mount point removed when the restore fails and on Ctrl-C,
/// even one that comes while `mount` is still running.
#[test]
fn mount_is_undone_on_failure_and_interrupt() {
    require_root();
    let env = Mode::squashfs("none", "mount").env(2, MB);
    env.run(&["create"], 0);
    env.suite(4);
    let restore = |path: Option<&str>| env.spawn(&["restore"], path);
    let undone = |marker: &str| {
        !stagesnap_mounts().iter().any(|m| m.contains(marker)) && leftovers(marker).is_empty()
    };

    // A file the suite changed that even root cannot rewrite: the copy from the mount fails.
    let db = env.data().join("node1/lib/global_db/mdbx.dat");
    let chattr = |flag: &str| {
        Command::new("chattr").arg(flag).arg(&db).assert().success();
    };
    chattr("+i");
    let child = restore(None);
    let marker = format!("stagesnap-mount-{}-", child.id());
    let failed = finish(child);
    chattr("-i");
    let (_, stderr) = texts(&failed.code(1).stderr(contains("mdbx.dat")));
    assert!(undone(&marker), "mount left after a failure: {stderr}");

    // A mount that takes its time: Ctrl-C arrives with the image mounted and `mount` running.
    let real = which("mount");
    let slow = env.fake_path(&[(
        "mount",
        &format!(
            "[ \"$1\" = --version ] && exec {real} --version\n{real} \"$@\" || exit $?\nsleep 60",
            real = real.display()
        ),
    )]);
    let child = restore(Some(&slow));
    let marker = format!("stagesnap-mount-{}-", child.id());
    let started = Instant::now();
    while !stagesnap_mounts().iter().any(|m| m.contains(&marker)) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the image was never mounted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let (_, stderr) = texts(&finish(child).code(130));
    assert!(undone(&marker), "mount left after Ctrl-C: {stderr}");

    env.run(&["restore"], 0);
}

/// Mount points named `marker` left in the temporary directory.
fn leftovers(marker: &str) -> Vec<PathBuf> {
    fs::read_dir(std::env::temp_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains(marker))
        .collect()
}

/// A non-root user restoring root-owned data is stopped before anything changes, told which
/// path it cannot write and what to do.
#[test]
fn non_root_restore_of_root_owned_data_fails_untouched() {
    require_root();
    let env = Mode::squashfs("none", "auto").env(1, MB);
    let dirty = env.create_then_suite(2);
    common::open_to_others(&env);
    env.std_cmd_as_nobody()
        .arg("restore")
        .assert()
        .code(1)
        .stderr(
            contains("is not writable by this user")
                .and(contains("nothing was changed"))
                .and(contains(env.data().display().to_string())),
        );
    assert_same_tree(&treestate(&env.data()), &dirty);
}

/// An extract reads the image in place, so it needs no room to stage files beside the data
/// (a 7 MiB tmpfs holding 4 MiB of it); only a snapshot made before manifests, extracted whole,
/// does, and without it is refused untouched. What a killed extract left in cache_dir is
/// removed by the next command; what a running process has there is left alone.
#[test]
fn extract_needs_no_room_beside_the_data_and_old_leftovers_go() {
    let env = Mode::squashfs("none", "extract").env(2, 2 * MB);
    env.run(&["create"], 0);
    let cache = env.cache();
    let original = env.root.join("cache-before-tmpfs");
    copy_tree(&cache, &original);
    {
        let _small = Mount::tmpfs(&cache, "7m");
        copy_tree(&original, &cache);
        let clean = treestate(&env.data());
        env.suite(2);
        env.run(&["restore"], 0);
        assert_same_tree(&treestate(&env.data()), &clean);

        // A snapshot made before manifests is extracted whole, staged beside the data: without
        // room for it, the restore refuses before changing anything.
        let meta_path = env.snapshots().join("clean_state/meta.json");
        let mut m = meta(&env, "clean_state");
        m.as_object_mut().unwrap().remove("manifest");
        fs::write(&meta_path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
        env.suite(3);
        let dirty = treestate(&env.data());
        env.assert(&["restore"]).code(1).stderr(
            contains(format!("are staged in {}, which has", cache.display()))
                .and(contains("nothing was changed")),
        );
        assert_same_tree(&treestate(&env.data()), &dirty);
    }

    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = cache.join(format!(".stagesnap-extract-{dead}"));
    let stale_list = cache.join(format!(".stagesnap-extract-{dead}-list"));
    let running = cache.join(format!(".stagesnap-extract-{}", std::process::id()));
    for dir in [&stale, &running] {
        fs::create_dir_all(dir.join("data/node1")).unwrap();
        fs::write(dir.join("data/node1/file"), b"half extracted").unwrap();
    }
    fs::write(&stale_list, b"data/node1/file\n").unwrap();
    env.run(&["create", "--force"], 0);
    assert!(
        !stale.exists() && !stale_list.exists(),
        "the dead extract's work directory stayed"
    );
    assert!(
        running.exists(),
        "a running process's work directory was removed"
    );
    fs::remove_dir_all(&running).unwrap();
    // The whole extract of a snapshot without a manifest removes its work directory too.
    let clean = treestate(&env.data());
    let mut m = meta(&env, "clean_state");
    m.as_object_mut().unwrap().remove("manifest");
    let meta_path = env.snapshots().join("clean_state/meta.json");
    fs::write(&meta_path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    env.suite(3);
    env.run(&["restore"], 0);
    assert_same_tree(&treestate(&env.data()), &clean);
    let left: Vec<String> = fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".stagesnap"))
        .collect();
    assert!(left.is_empty(), "extract left {left:?}");
}

/// What `from` holds, copied into `to`.
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    cp_a(&from.join("."), to);
}

/// Both strategies restore a large file changed in place by rewriting only the page that
/// changed, choosing it by the manifest's piece digests (reading the image only there), and
/// bring the file back exactly, holes included.
#[test]
fn large_files_are_repaired_piece_by_piece() {
    for strategy in ["mount", "extract"] {
        repairs_a_large_file_piece_by_piece(strategy);
    }
}

fn repairs_a_large_file_piece_by_piece(strategy: &'static str) {
    let env = Mode::squashfs("zstd", strategy).env(2, 8 * MB);
    env.run(&["create"], 0);
    let clean = treestate(&env.data());
    let largest = largest_file(&env.data());
    let size = fs::metadata(&largest).unwrap().len();
    assert!(size > MB, "{} is only {size} bytes", largest.display());
    // The digests sit beside the manifest (which every restore reads), vouched for by meta.json.
    let snapshot = env.snapshots().join("clean_state");
    let manifest = fs::read_to_string(snapshot.join("manifest.jsonl")).unwrap();
    let pieces = fs::read(snapshot.join("pieces.jsonl")).unwrap();
    assert!(!manifest.contains("\"pieces\"") && !pieces.is_empty());
    let f = fs::OpenOptions::new().write(true).open(&largest).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"suite", size / 2 + 1000).unwrap();
    drop(f);
    let dirty = treestate(&env.data());

    // Changed piece digests are refused before anything changes, as a changed manifest is.
    let mut bad = pieces.clone();
    let at = bad.iter().position(|&b| b == b'"').unwrap() + 1;
    bad[at] ^= 1;
    fs::write(snapshot.join("pieces.jsonl"), &bad).unwrap();
    let (_, stderr) = env.run(&["restore"], 1);
    assert!(
        stderr.contains("pieces.jsonl does not match the digest recorded in meta.json"),
        "{strategy}: {stderr}"
    );
    assert_same_tree(&treestate(&env.data()), &dirty);
    env.run(&["verify"], 1);
    fs::write(snapshot.join("pieces.jsonl"), &pieces).unwrap();

    let restored = env.json(&["restore"], 0);
    assert_eq!(restored["files_rewritten"], 1, "{strategy}: {restored}");
    assert!(
        restored["bytes_rewritten"].as_u64().unwrap() <= 4096,
        "{strategy}: {restored}"
    );
    assert_same_tree(&treestate(&env.data()), &clean);
}

/// An extract reads what differs straight from the image: no unsquashfs extraction, no
/// mount, nothing staged (unsquashfs only vouches that the image opens).
#[test]
fn extract_reads_the_image_itself() {
    let env = Mode::squashfs("zstd", "extract").env(2, MB);
    env.run(&["create"], 0);
    let clean = treestate(&env.data());
    env.suite(4);
    let (_, stderr) = env.run(&["-v", "restore"], 0);
    let runs: Vec<&str> = stderr.lines().filter(|l| l.contains("tool_run")).collect();
    assert!(
        runs.iter()
            .all(|l| l.contains(r#"tool="mksquashfs" args=["-help"]"#)
                || l.contains(r#"tool="unsquashfs" args=["-s","#)),
        "{runs:?}"
    );
    assert!(stagesnap_mounts().is_empty());
    assert_same_tree(&treestate(&env.data()), &clean);
}

/// The fixups file is read from the store, which is untrusted: a record naming a path above the
/// data directory, or one reached through a symlink the image put there, changes nothing
/// outside (no hole punched, no mtime set); the restore itself still succeeds.
#[test]
fn fixups_never_reach_outside_the_data_directory() {
    use std::os::unix::fs::MetadataExt;
    let env = Mode::squashfs("none", "extract").env(2, 64 << 10);
    let outside = env.cache().parent().unwrap().join("outside");
    fs::create_dir_all(&outside).unwrap();
    // Allocated zeros: what a hole record would punch, were it followed.
    fs::write(outside.join("zeros"), vec![0u8; 256 << 10]).unwrap();
    symlink(&outside, env.data().join("node1/link")).unwrap();
    env.run(&["create"], 0);
    let before = fs::metadata(outside.join("zeros")).unwrap();

    let dir = env.snapshots().join("clean_state");
    let mut m = meta(&env, "clean_state");
    m.as_object_mut().unwrap().remove("manifest");
    let fixups_path = dir.join("payload/fixups");
    let mut fixups = fs::read(&fixups_path).unwrap();
    for record in [
        "t1000000000 0 ../outside/zeros",
        "t1000000000 0 data/node1/link/zeros",
        "h0+262144 data/node1/link/zeros",
        "h0+262144 ../outside/zeros",
    ] {
        fixups.extend_from_slice(record.as_bytes());
        fixups.push(0);
    }
    fs::write(&fixups_path, &fixups).unwrap();
    // meta.json vouches for the edited file, as a forged store would.
    fn vouch(v: &mut serde_json::Value, blake3: &str, bytes: u64) {
        match v {
            serde_json::Value::Object(o) if o.get("file").is_some_and(|f| f == "fixups") => {
                o.insert("blake3".into(), blake3.into());
                o.insert("bytes".into(), bytes.into());
            }
            serde_json::Value::Object(o) => o.values_mut().for_each(|v| vouch(v, blake3, bytes)),
            _ => {}
        }
    }
    let digest = blake3::hash(&fixups).to_hex().to_string();
    vouch(&mut m, &digest, fixups.len() as u64);
    fs::write(
        dir.join("meta.json"),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();
    fs::remove_file(dir.join("manifest.jsonl")).unwrap();

    env.suite(3);
    env.assert(&["restore"]).success();
    let after = fs::metadata(outside.join("zeros")).unwrap();
    assert_eq!(
        (after.mtime(), after.mtime_nsec(), after.blocks()),
        (before.mtime(), before.mtime_nsec(), before.blocks()),
        "a file outside the data directory was changed by the fixups"
    );
}
