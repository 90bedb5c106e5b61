//! `create --background` and `stagesnap wait`: the create returns once the data is captured,
//! a detached process finishes the snapshot, and the commands on that snapshot wait for it
//! while those on others do not. The detached process stops at the test-hooks pause point
//! `background-finish` (build with `--features test-hooks`), so each test holds it there.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::modes::Mode;
use common::{Env, assert_same_tree, texts, treestate};
use tempfile::TempDir;

const MB: u64 = 1 << 20;
const POINT: &str = "background-finish";

/// A `create --background ARGS` whose detached process is held at its pause point.
struct Held {
    dir: TempDir,
    /// The foreground create's output: it ended while the detached process was held.
    output: Output,
}

impl Held {
    fn start(env: &Env, args: &[&str]) -> Held {
        let dir = tempfile::tempdir().unwrap();
        let output = env
            .std_cmd()
            .args(["create", "--background"])
            .args(args)
            .env(
                "STAGESNAP_TEST_PAUSE",
                format!("{POINT}:{}", dir.path().display()),
            )
            .output()
            .unwrap();
        let paused = dir.path().join(format!("{POINT}.paused"));
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        // The foreground returned, and the detached process reaches the point on its own.
        while !paused.exists() {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        Held { dir, output }
    }

    fn release(&self) {
        fs::write(self.dir.path().join(format!("{POINT}.go")), b"").unwrap();
    }

    /// SIGKILLs the detached process where it is held (found by the pause point in its
    /// environment, which only it has), and waits until it is gone.
    fn kill(&self) {
        let spec = format!(
            "STAGESNAP_TEST_PAUSE={POINT}:{}\0",
            self.dir.path().display()
        );
        let pid = fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                fs::read(p.join("environ"))
                    .is_ok_and(|env| env.windows(spec.len()).any(|w| w == spec.as_bytes()))
            })
            .expect("the detached process");
        let pid = pid.file_name().unwrap().to_str().unwrap().to_string();
        let killed = std::process::Command::new("kill")
            .args(["-9", &pid])
            .status()
            .unwrap();
        assert!(killed.success());
        let stat = PathBuf::from("/proc").join(&pid).join("stat");
        // Gone, or a zombie (its parent is init, which reaps it in its own time).
        while fs::read_to_string(&stat).is_ok_and(|s| !s.contains(") Z ")) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

fn meta(store: &Path, name: &str) -> Vec<u8> {
    fs::read(store.join(name).join("meta.json")).unwrap()
}

/// Whether the spawned command is still running a while after it started: it waits.
fn still_waiting(child: &mut std::process::Child) -> bool {
    std::thread::sleep(std::time::Duration::from_millis(300));
    child.try_wait().unwrap().is_none()
}

#[test]
fn a_background_create_returns_before_it_is_finished_and_wait_ends_with_it() {
    let env = Env::sample(2, MB);
    env.run(&["create"], 0);
    let old = meta(&env.snapshots(), "clean_state");
    env.suite(3);
    let captured = treestate(&env.data());

    let held = Held::start(&env, &["--force", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&held.output.stdout).unwrap();
    assert_eq!(doc["background"], true, "{doc}");
    assert!(doc.get("paused_seconds").is_some(), "{doc}");
    // Held before the finish: the old snapshot is still the one in place.
    assert_eq!(meta(&env.snapshots(), "clean_state"), old);
    let (listing, _) = env.run(&["list"], 0);
    assert!(
        listing.contains("snapshot clean_state is still being finished by a background create"),
        "{listing}"
    );
    let doc = env.json(&["list"], 0);
    assert_eq!(doc["background"][0]["name"], "clean_state", "{doc}");
    assert_eq!(doc["background"][0]["state"], "finishing", "{doc}");
    let (status, _) = env.run(&["status"], 1);
    assert!(status.contains("is still being finished"), "{status}");

    let mut wait = env.spawn(&["wait"], None);
    assert!(still_waiting(&mut wait));
    held.release();
    let (out, _) = texts(&common::finish(wait).code(0));
    assert_eq!(out, "snapshot clean_state is complete\n");
    assert_ne!(meta(&env.snapshots(), "clean_state"), old);
    env.run(&["verify", "clean_state"], 0);
    let doc = env.json(&["list"], 0);
    assert_eq!(doc["background"], serde_json::json!([]), "{doc}");
    env.suite(4);
    env.run(&["restore"], 0);
    assert_same_tree(&treestate(&env.data()), &captured);
}

#[test]
fn a_restore_of_a_snapshot_being_finished_waits_for_it() {
    let env = Env::sample(2, MB);
    env.run(&["create"], 0);
    env.suite(3);
    let captured = treestate(&env.data());
    let held = Held::start(&env, &["--force"]);
    let out = String::from_utf8_lossy(&held.output.stdout);
    assert!(out.contains("finishing in the background"), "{out}");
    env.suite(4);

    // Restoring the snapshot in place now would bring back the old data.
    let mut restore = env.spawn(&["restore"], None);
    assert!(still_waiting(&mut restore));
    held.release();
    common::finish(restore).code(0);
    assert_same_tree(&treestate(&env.data()), &captured);
}

#[test]
fn commands_on_other_snapshots_run_while_one_is_finished() {
    let env = Env::sample(2, MB);
    env.run(&["create"], 0);
    let held = Held::start(&env, &["other"]);
    env.run(&["--lock-timeout", "0", "create", "third"], 0);
    env.run(&["--lock-timeout", "0", "delete", "clean_state"], 0);
    // Its own name waits, here no longer than the lock timeout: exit 5.
    let (_, err) = env.run(&["--lock-timeout", "0", "delete", "other"], 5);
    assert!(err.contains("the background create of other"), "{err}");
    held.release();
    env.run(&["wait", "other"], 0);
    env.run(&["verify", "other", "third"], 0);
}

/// Fills the filesystem of `dir` with a file, until it has no room left.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = fs::File::create(&path).unwrap();
    let block = vec![7u8; 64 * 1024];
    while file.write_all(&block).is_ok() {}
    path
}

#[test]
fn a_background_create_that_fails_keeps_the_old_snapshot_and_says_why() {
    let env = Env::sample(2, MB);
    let (store, _mount) = env.small_store("16m");
    env.run(&["create"], 0);
    let clean = treestate(&env.data());
    let old = meta(&store, "clean_state");
    env.suite(3);

    let held = Held::start(&env, &["--force"]);
    let filler = fill(&store);
    held.release();
    let (out, err) = env.run(&["wait"], 1);
    assert_eq!(out, "");
    let error = err.lines().find(|l| l.starts_with("error: ")).unwrap();
    assert!(
        error.contains("the background create of clean_state failed: snapshots_dir")
            && error.contains("ran out of space"),
        "{err}"
    );
    fs::remove_file(filler).unwrap();

    let (listing, _) = env.run(&["list"], 0);
    assert!(
        listing.contains("the background create of clean_state failed"),
        "{listing}"
    );
    let doc = env.json(&["list"], 0);
    assert_eq!(doc["background"][0]["state"], "failed", "{doc}");
    assert_eq!(doc["background"][0]["code"], 1, "{doc}");
    let (status, _) = env.run(&["status"], 1);
    assert!(
        status.contains("the background create of clean_state failed"),
        "{status}"
    );
    // The old snapshot, whole; no half of the new one anywhere.
    assert_eq!(meta(&store, "clean_state"), old);
    let names: Vec<String> = common::entries(&store);
    assert_eq!(names, [".failed-clean_state", ".lock", "clean_state"]);
    env.run(&["verify", "--all"], 0);
    env.run(&["restore"], 0);
    assert_same_tree(&treestate(&env.data()), &clean);
    // The next create of that name forgets the failure.
    env.run(&["create", "--force"], 0);
    assert_eq!(env.json(&["list"], 0)["background"], serde_json::json!([]));
}

/// The detached process finishes what each data-carrying mode captured (squashfs hashes its
/// image on every core before the fork, reflink clones): a snapshot that verifies and restores
/// the captured tree exactly.
#[test]
fn every_mode_finishes_in_the_background() {
    common::modes::require_root();
    for mode in [
        Mode::Filesystem,
        Mode::squashfs("zstd", "extract"),
        Mode::Reflink("xfs"),
    ] {
        let env = mode.env(2, MB);
        env.suite(3);
        let captured = treestate(&env.data());
        env.run(&["create", "--background"], 0);
        env.run(&["wait"], 0);
        env.run(&["verify", "clean_state"], 0);
        env.suite(4);
        env.run(&["restore"], 0);
        assert_same_tree(&treestate(&env.data()), &captured);
    }
}

/// A detached process killed half way: `wait`, `list` and `status` say it died, the previous
/// snapshot is whole, and the next create of that name clears what it left.
#[test]
fn a_killed_background_create_is_reported_and_cleared_by_the_next_create() {
    let env = Env::sample(2, MB);
    env.run(&["create"], 0);
    let old = meta(&env.snapshots(), "clean_state");
    env.suite(3);
    let held = Held::start(&env, &["--force"]);
    held.kill();

    let (_, err) = env.run(&["wait"], 1);
    assert!(
        err.contains("error: the background create of clean_state (started ")
            && err.contains("died before it finished"),
        "{err}"
    );
    let (listing, _) = env.run(&["list"], 0);
    assert!(listing.contains("died before it finished"), "{listing}");
    assert_eq!(meta(&env.snapshots(), "clean_state"), old);
    env.run(&["verify", "--all"], 0);
    env.run(&["create", "--force"], 0);
    assert_eq!(common::entries(&env.snapshots()), [".lock", "clean_state"]);
    assert_eq!(env.json(&["list"], 0)["background"], serde_json::json!([]));
}
