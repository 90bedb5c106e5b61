//! Fault injection: real stagesnap processes killed with SIGKILL at chosen points, stopped with
//! SIGINT and SIGTERM, run against filesystems that fill up, twenty at once on one store, held
//! up by stuck tools under `--timeout`, and fed bad input. Each test proves a promise of the
//! docs/guarantees.md. Faults come from real processes and signals; a fake tool on
//! PATH stands in only where the real one cannot be made to fail that way (stuck, ignoring
//! SIGTERM, dying half way). Runs as root (tmpfs and bind mounts, loop mounts, setpriv); one
//! test needs docker (scripts/setup.sh).

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use assert_cmd::assert::OutputAssertExt;
use common::docker::Net;
use common::{Env, Mount, assert_same_tree, entries, finish, refused, texts, treestate, which};
use predicates::prelude::PredicateBooleanExt;
use predicates::str::contains;

const MB: u64 = 1 << 20;
const GB: u64 = 1 << 30;
/// How long a condition may take to come true before a test gives up: a guard against
/// hanging on a loaded machine, never a measure of speed.
const PATIENCE: Duration = Duration::from_secs(300);

/// Polls `cond` until it holds.
#[track_caller]
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < PATIENCE, "gave up waiting until {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A process as /proc/PID/stat shows it.
struct Proc {
    pid: i32,
    comm: String,
    ppid: i32,
    pgrp: i32,
}

/// Every process still running (zombies are dead).
fn processes() -> Vec<Proc> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return vec![];
    };
    rd.filter_map(|e| {
        let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (head, rest) = stat.rsplit_once(')')?;
        let comm = head.split_once('(')?.1.to_string();
        let mut fields = rest.split_whitespace();
        let state = fields.next()?;
        let ppid = fields.next()?.parse().ok()?;
        let pgrp = fields.next()?.parse().ok()?;
        (state != "Z").then_some(Proc {
            pid,
            comm,
            ppid,
            pgrp,
        })
    })
    .collect()
}

/// The running child of `parent` named `program` with an argument containing `marker`.
fn child_named(parent: u32, program: &str, marker: &str) -> Option<i32> {
    processes()
        .into_iter()
        .filter(|p| p.ppid == parent as i32 && p.comm == program)
        .find(|p| {
            let args = fs::read(format!("/proc/{}/cmdline", p.pid)).unwrap_or_default();
            String::from_utf8_lossy(&args).contains(marker)
        })
        .map(|p| p.pid)
}

/// What a tool's command line holds when it writes a snapshot (not when it is asked for its
/// version or help).
const CREATING: &str = ".staging-";

/// Waits for stagesnap `parent` to run `program` with an argument containing `marker`; its
/// pid, which is also its process group.
fn wait_for_tool(parent: u32, program: &str, marker: &str) -> i32 {
    let mut pid = None;
    wait_until(&format!("stagesnap runs {program} ({marker})"), || {
        pid = child_named(parent, program, marker);
        pid.is_some()
    });
    pid.unwrap()
}

fn alive(pid: i32) -> bool {
    processes().iter().any(|p| p.pid == pid)
}

/// Whether any process of process group `pgrp` (a tool and whatever it started) runs.
fn group_alive(pgrp: i32) -> bool {
    processes().iter().any(|p| p.pgrp == pgrp)
}

fn kill(pid: u32, signal: libc::c_int) {
    // SAFETY: plain kill(2) on a child of this test.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, signal) }, 0);
}

#[track_caller]
fn one_error_line(stderr: &str) -> &str {
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "expected one error line:\n{stderr}");
    errors[0]
}

/// A file of `size` bytes that takes no space: copying, imaging or hashing it still reads
/// every byte, which keeps rsync and mksquashfs busy long enough to be caught at work.
fn sparse(path: &Path, size: u64) {
    fs::File::create(path).unwrap().set_len(size).unwrap();
}

/// A file of `size` bytes that are not zeros: a restore has to write every one of them, which
/// keeps it busy long enough to be caught at work.
fn dense(path: &Path, size: u64) {
    let mut f = fs::File::create(path).unwrap();
    for _ in 0..size / MB {
        f.write_all(&[0xa5; MB as usize]).unwrap();
    }
}

/// Waits until a restore is part way through writing `path` (`size` bytes) back.
fn wait_for_partial(path: &Path, size: u64) {
    wait_until("the restore writes the large file back", || {
        fs::metadata(path).is_ok_and(|m| m.len() < size)
    });
}

/// The entries of `dir` whose names start with `marker`.
fn temporaries(dir: &Path, marker: &str) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(marker))
        .collect()
}

/// `size` random bytes, which no compressor shrinks.
fn random_file(path: &Path, size: u64) {
    let mut data = Vec::new();
    fs::File::open("/dev/urandom")
        .unwrap()
        .take(size)
        .read_to_end(&mut data)
        .unwrap();
    fs::write(path, data).unwrap();
}

fn meta(store: &Path, name: &str) -> Vec<u8> {
    fs::read(store.join(name).join("meta.json")).unwrap()
}

/// The names `list` shows; it must find nothing unreadable.
fn listed(env: &Env) -> Vec<String> {
    let doc = env.json(&["list"], 0);
    assert_eq!(doc["unreadable"], serde_json::json!([]), "{doc}");
    doc["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Crashes during create

/// Where a create is killed.
#[derive(Debug, Clone, Copy)]
enum At {
    /// While the mode's tool (rsync, mksquashfs) writes the snapshot.
    InsideTool,
    /// After the tool is done, while the manifest is hashed, before the metadata is written.
    AfterTool,
}

/// SIGKILLs `stagesnap create --force NAME` at `at` while it captures a changed data set that
/// holds a large sparse file, then checks that nothing partial is listed or restorable, that
/// the previous clean_state is intact and restores exactly, that the tool died with stagesnap,
/// and that the next command takes the lock at once and removes what the crash left.
fn killed_create(mode: &str, tool: &str, at: At, name: &str) {
    let env = Env::sample(2, 2 * MB);
    env.set("mode", mode);
    env.set("squashfs_compression", "none");
    env.run(&["create"], 0);
    let clean = treestate(&env.data());
    let store = env.snapshots();
    let before = meta(&store, "clean_state");
    env.suite(1);
    sparse(&env.data().join("node1/aaa-big.sparse"), 4 * GB);

    let child = env.spawn(&["create", "--force", name], None);
    let pid = child.id();
    let group = wait_for_tool(pid, tool, CREATING);
    if let At::AfterTool = at {
        wait_until(&format!("{tool} is done"), || !alive(group));
    }
    kill(pid, libc::SIGKILL);
    finish(child).interrupted();
    wait_until(&format!("{tool} dies with stagesnap"), || {
        !group_alive(group)
    });
    assert!(
        entries(&store).iter().any(|n| n.starts_with(".staging-")),
        "the crash left no staging directory, so this test proves nothing: {:?}",
        entries(&store)
    );

    assert_eq!(listed(&env), ["clean_state"]);
    assert_eq!(meta(&store, "clean_state"), before);
    // The lock died with its holder (no waiting), and the next command cleans up.
    let (_, stderr) = if name == "clean_state" {
        env.run(&["--lock-timeout", "0", "restore"], 0)
    } else {
        let next = ["--lock-timeout", "0", "-s", "auto_create_on_startup=false"];
        let (out, err) = env.run(&[&next[..], &["restore", name]].concat(), 4);
        assert!(err.contains(&format!("snapshot {name} not found")), "{err}");
        env.run(&["restore"], 0);
        (out, err)
    };
    assert!(stderr.contains("leftover_removed"), "{stderr}");
    assert_same_tree(&treestate(&env.data()), &clean);
    assert_eq!(entries(&store), [".lock", "clean_state"]);
    env.run(&["verify", "--all"], 0);
}

#[test]
fn sigkill_inside_rsync_keeps_the_previous_snapshot() {
    killed_create("filesystem", "rsync", At::InsideTool, "clean_state");
}

#[test]
fn sigkill_after_the_copy_lists_nothing_partial() {
    killed_create("filesystem", "rsync", At::AfterTool, "other");
}

#[test]
fn sigkill_inside_mksquashfs_keeps_the_previous_snapshot() {
    killed_create("squashfs", "mksquashfs", At::InsideTool, "clean_state");
}

#[test]
fn sigkill_after_mksquashfs_lists_nothing_partial() {
    killed_create("squashfs", "mksquashfs", At::AfterTool, "other");
}

// ---------------------------------------------------------------------------------------------
// Crashes during restore

/// SIGKILLs a restore while it copies back a large file the suite deleted: `status` then
/// reports the interrupted restore, and the next restore completes it exactly (and, for the
/// mount restore, removes the mount the dead one left).
fn killed_restore(mode: &str) {
    let env = Env::sample(2, 2 * MB);
    env.set("mode", mode);
    env.set("squashfs_compression", "none");
    env.set("squashfs_restore", "mount");
    let big = env.data().join("node1/aaa-big.bin");
    dense(&big, 512 * MB);
    env.run(&["create"], 0);
    let clean = treestate(&env.data());
    env.suite(2);
    fs::remove_file(&big).unwrap();

    let child = env.spawn(&["restore"], None);
    let pid = child.id();
    wait_for_partial(&big, 512 * MB);
    kill(pid, libc::SIGKILL);
    finish(child).interrupted();

    env.assert(&["status"]).code(1).stdout(
        contains("data is in an unknown state: restore of clean_state was interrupted at")
            .and(contains(format!("(pid {pid} on ")))
            .and(contains("run `stagesnap restore`")),
    );
    env.run(&["restore"], 0);
    assert_same_tree(&treestate(&env.data()), &clean);
    env.assert(&["status"])
        .success()
        .stdout(contains("unknown state").not());
    assert!(
        mounts_of(pid).is_empty(),
        "the killed restore's mount is still there: {:?}",
        mounts_of(pid)
    );
}

/// The squashfs mount points of stagesnap process `pid`, in /proc/mounts or the temporary
/// directory.
fn mounts_of(pid: u32) -> Vec<String> {
    let marker = format!("stagesnap-mount-{pid}-");
    let mounted = fs::read_to_string("/proc/mounts").unwrap();
    let mut found: Vec<String> = mounted
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|p| p.contains(&marker))
        .map(String::from)
        .collect();
    found.extend(
        fs::read_dir(std::env::temp_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&marker)),
    );
    found
}

#[test]
fn sigkill_during_a_filesystem_restore_is_reported_and_completed_by_the_next() {
    killed_restore("filesystem");
}

#[test]
fn sigkill_during_a_squashfs_mount_restore_is_reported_and_completed_by_the_next() {
    killed_restore("squashfs");
}

// ---------------------------------------------------------------------------------------------
// SIGINT and SIGTERM

/// `signal` while rsync copies: exit 130 once rsync was stopped and waited for, the staging
/// directory gone, the previous snapshot as it was, the lock free at once.
fn stopped_create(signal: libc::c_int) {
    let env = Env::sample(2, 2 * MB);
    env.run(&["create"], 0);
    let store = env.snapshots();
    let before = meta(&store, "clean_state");
    sparse(&env.data().join("node1/aaa-big.sparse"), 4 * GB);

    let child = env.spawn(&["create", "--force"], None);
    let pid = child.id();
    let rsync = wait_for_tool(pid, "rsync", CREATING);
    kill(pid, signal);
    let (_, stderr) = texts(&finish(child).code(130));
    let error = one_error_line(&stderr);
    assert!(
        error.contains("interrupted while copying") && error.contains("rsync was stopped"),
        "{stderr}"
    );
    // Waited for, not left behind: gone the moment stagesnap is.
    assert!(!alive(rsync), "rsync outlived stagesnap");
    wait_until("rsync's own children end", || !group_alive(rsync));
    assert_eq!(entries(&store), [".lock", "clean_state"]);
    assert_eq!(meta(&store, "clean_state"), before);
    env.run(&["--lock-timeout", "0", "verify", "--all"], 0);
}

#[test]
fn sigint_during_create_stops_rsync_and_removes_the_partial_snapshot() {
    stopped_create(libc::SIGINT);
}

#[test]
fn sigterm_during_create_stops_rsync_and_removes_the_partial_snapshot() {
    stopped_create(libc::SIGTERM);
}

/// SIGTERM during a squashfs mount restore, while a file is rebuilt under a temporary name
/// (a hardlinked file the suite replaced): exit 130, the image unmounted and its mount point
/// removed, the temporary file gone, the failure recorded for `status`, and the next restore
/// exact.
#[test]
fn sigterm_during_a_mount_restore_unmounts_the_image_and_leaves_no_temporary_files() {
    let env = Env::sample(2, 2 * MB);
    env.set("mode", "squashfs");
    env.set("squashfs_compression", "none");
    env.set("squashfs_restore", "mount");
    let node1 = env.data().join("node1");
    let big = node1.join("aaa-big.bin");
    dense(&big, 512 * MB);
    fs::hard_link(&big, node1.join("aaa-big.link")).unwrap();
    env.run(&["create"], 0);
    let clean = treestate(&env.data());
    fs::remove_file(&big).unwrap();
    fs::write(&big, "the suite's own").unwrap();

    let child = env.spawn(&["restore"], None);
    let pid = child.id();
    let marker = format!(".stagesnap-{pid}-");
    wait_until("the restore rebuilds the large file", || {
        !temporaries(&node1, &marker).is_empty()
    });
    assert!(
        !mounts_of(pid).is_empty(),
        "it restores, but nothing is mounted"
    );
    kill(pid, libc::SIGTERM);
    let (_, stderr) = texts(&finish(child).code(130));
    one_error_line(&stderr);
    assert_eq!(mounts_of(pid), Vec::<String>::new());
    assert_eq!(temporaries(&node1, &marker), Vec::<String>::new());

    env.assert(&["status"]).code(1).stdout(
        contains("restore of clean_state failed (")
            .and(contains("interrupted; nothing more was changed)")),
    );
    env.run(&["--lock-timeout", "0", "restore"], 0);
    assert_same_tree(&treestate(&env.data()), &clean);
}

/// Signals while the node containers are quiesced: SIGTERM while they are paused for a
/// create's second pass, SIGINT while they are stopped for a restore. Either way they run
/// again afterwards, and the exit is 130.
#[test]
#[cfg_attr(not(feature = "test-hooks"), ignore = "needs --features test-hooks")]
fn signals_during_quiesced_operations_bring_the_containers_back() {
    let net = Net::start(2);
    let env = &net.env;
    env.set("quiesce", "pause");
    let big = env.data().join("node1/aaa-big.bin");
    let mut cmd = env.std_cmd();
    cmd.arg("create");
    let paused = common::Paused::start(cmd, "create-between-passes");
    // New since the first pass and written long ago: the paused second pass's rsync copies it.
    sparse(&big, 4 * GB);
    common::set_mtime(&big, 1_500_000_000, 0);
    let (child, _dir) = paused.release();
    let pid = child.id();
    wait_for_tool(pid, "rsync", "--delete");
    assert_eq!(net.states(), ["paused"; 2]);
    kill(pid, libc::SIGTERM);
    let (_, stderr) = texts(&finish(child).code(130));
    assert_eq!(net.states(), ["running"; 2], "{stderr}");
    assert_eq!(entries(&env.snapshots()), [".lock"]);

    fs::remove_file(&big).unwrap();
    dense(&big, 512 * MB);
    env.run(&["create"], 0);
    fs::remove_file(&big).unwrap();
    env.set("quiesce", "stop");
    let before = net.started_at();
    let child = env.spawn(&["restore"], None);
    wait_for_partial(&big, 512 * MB);
    // The restore writes once the nodes' processes are gone, which may be before docker has
    // torn the containers down and answered: docker's start times say they were restarted.
    kill(child.id(), libc::SIGINT);
    let (_, stderr) = texts(&finish(child).code(130));
    assert_eq!(net.states(), ["running"; 2], "{stderr}");
    for ((name, before), after) in net.names.iter().zip(before).zip(net.started_at()) {
        assert_ne!(before, after, "{name} was not restarted: {stderr}");
    }
}

/// The first Ctrl-C asks the tool to stop; a second one while stagesnap still waits for it
/// (the fault: a tool that ignores SIGTERM) ends stagesnap at once, without the cleanup the
/// first one started. The kernel then ends the tool, and the next command removes what was
/// left.
#[test]
fn a_second_ctrl_c_exits_at_once() {
    let env = Env::sample(1, MB);
    env.run(&["create"], 0);
    let asked = env.root.join("asked-to-stop");
    let path = env.fake_tool(
        "rsync",
        &format!(
            "trap 'touch {}' TERM\nwhile :; do sleep 0.1; done",
            asked.display()
        ),
    );
    let child = env.spawn(&["create", "--force"], Some(&path));
    let pid = child.id();
    let rsync = wait_for_tool(pid, "rsync", CREATING);
    kill(pid, libc::SIGINT);
    wait_until("stagesnap asks rsync to stop", || asked.exists());
    kill(pid, libc::SIGINT);
    let (_, stderr) = texts(&finish(child).code(130));
    assert!(
        !stderr.contains("error: "),
        "the second Ctrl-C waited for the cleanup:\n{stderr}"
    );
    wait_until("rsync dies with stagesnap", || !group_alive(rsync));
    assert!(
        entries(&env.snapshots())
            .iter()
            .any(|n| n.starts_with(".staging-")),
        "the staging directory was removed, so stagesnap did not exit at once"
    );
    env.assert(&["--lock-timeout", "0", "create", "--force"])
        .success()
        .stderr(contains("leftover_removed"));
    assert_eq!(entries(&env.snapshots()), [".lock", "clean_state"]);
}

// ---------------------------------------------------------------------------------------------
// Full disks

/// An environment whose snapshots_dir is a small tmpfs, holding a clean_state made before
/// the data grew past what it can hold. Returns the store, its mount and the clean tree.
fn small_store(env: &Env, size: &str) -> (PathBuf, Mount, String) {
    let (store, mount) = env.small_store(size);
    env.set("squashfs_compression", "none");
    env.run(&["create"], 0);
    (store, mount, treestate(&env.data()))
}

/// After a create that ran out of space: only the old snapshot, as it was, and it restores.
fn old_snapshot_intact(env: &Env, store: &Path, before: &[u8], clean: &str) {
    assert_eq!(entries(store), [".lock", "clean_state"]);
    assert_eq!(meta(store, "clean_state"), before);
    env.run(&["verify", "--all"], 0);
    env.run(&["restore"], 0);
    assert_same_tree(&treestate(&env.data()), clean);
}

/// Filesystem mode knows what a copy takes: a store without that much room is refused before
/// anything is written, naming the path, the space needed and the space free.
#[test]
fn a_store_without_room_is_refused_before_anything_is_written() {
    too_big_for_the_store(
        "filesystem",
        &[
            "not enough space in snapshots_dir {store} for snapshot clean_state: it needs about 7.",
            "nothing was changed",
        ],
    );
}

/// squashfs cannot know its image's size beforehand: mksquashfs runs into the full disk, and
/// the error says so with the most the snapshot can take.
#[test]
fn a_squashfs_image_that_does_not_fit_keeps_the_old_snapshot() {
    too_big_for_the_store(
        "squashfs",
        &[
            "snapshots_dir {store} ran out of space",
            "mksquashfs failed",
            "it needs up to 7.",
            "(the included data's size on disk)",
        ],
    );
}

/// A `create --force` of 6 MiB more data than a 5 MiB store holds, in `mode`: exit 1, one
/// error line holding each of `expect` (`{store}` stands for the store's path), and the old
/// snapshot intact.
fn too_big_for_the_store(mode: &str, expect: &[&str]) {
    let env = Env::sample(2, MB);
    env.set("mode", mode);
    let (store, _mount, clean) = small_store(&env, "5m");
    let before = meta(&store, "clean_state");
    random_file(&env.data().join("node2/big.bin"), 6 * MB);
    let (_, stderr) = env.run(&["create", "--force"], 1);
    let error = one_error_line(&stderr);
    for part in expect {
        let part = part.replace("{store}", &store.display().to_string());
        assert!(error.contains(&part), "{part:?} missing: {stderr}");
    }
    old_snapshot_intact(&env, &store, &before, &clean);
}

/// The store fills up while rsync copies (another process takes the room the check saw):
/// a clear error naming the path and the space needed, the partial copy removed, the old
/// snapshot intact.
#[test]
fn a_store_that_fills_up_during_the_copy_keeps_the_old_snapshot() {
    let env = Env::sample(2, MB);
    let (store, _mount, clean) = small_store(&env, "16m");
    let before = meta(&store, "clean_state");
    // rsync copies in name order: the slow sparse file first, then what needs room.
    sparse(&env.data().join("node1/aaa-big.sparse"), 2 * GB);
    random_file(&env.data().join("node2/zzz.bin"), 4 * MB);

    let child = env.spawn(&["create", "--force"], None);
    wait_for_tool(child.id(), "rsync", CREATING);
    let filler = store.join("filler");
    let mut f = fs::File::create(&filler).unwrap();
    while f.write_all(&[0u8; 65536]).is_ok() {}
    drop(f);
    let (_, stderr) = texts(&finish(child).code(1));
    let error = one_error_line(&stderr);
    assert!(
        error.contains(&format!(
            "snapshots_dir {} ran out of space while snapshot clean_state was created",
            store.display()
        )) && error.contains("No space left on device")
            && error.contains("it needs about 5.")
            && error.contains("The partial snapshot was removed"),
        "{stderr}"
    );
    fs::remove_file(&filler).unwrap();
    old_snapshot_intact(&env, &store, &before, &clean);
}

// ---------------------------------------------------------------------------------------------
// Concurrency

/// Twenty processes create, restore, delete, prune and list on one store at once, some timing
/// out on the lock: each one either completes or fails with the documented code and exactly
/// one error line; `list`, which takes no lock, never shows a half-written or half-deleted
/// snapshot while they run; afterwards every snapshot verifies and nothing is left over.
#[test]
fn twenty_processes_on_one_store_complete_or_fail_cleanly() {
    let env = Env::sample(2, MB);
    env.set("keep_snapshot_count", "3");
    for name in ["clean_state", "d0", "d1", "d2", "d3"] {
        env.run(&["create", name], 0);
    }
    let mut jobs: Vec<Vec<String>> = Vec::new();
    for i in 0..6 {
        jobs.push(vec![
            "create".into(),
            "--force".into(),
            format!("c{}", i % 3),
        ]);
    }
    for _ in 0..4 {
        jobs.push(vec!["restore".into()]);
    }
    for i in 0..4 {
        jobs.push(vec!["delete".into(), format!("d{i}")]);
    }
    for _ in 0..3 {
        jobs.push(vec!["prune".into()]);
    }
    for _ in 0..3 {
        jobs.push(vec!["list".into()]);
    }
    assert_eq!(jobs.len(), 20);

    let children: Vec<Child> = jobs
        .iter()
        .map(|args| {
            let mut all = vec!["--lock-timeout", "2"];
            all.extend(args.iter().map(String::as_str));
            env.spawn(&all, None)
        })
        .collect();
    let mut listings = 0;
    let mut running: Vec<Option<Child>> = children.into_iter().map(Some).collect();
    let mut results = vec![None; jobs.len()];
    while results.iter().any(Option::is_none) {
        // Meanwhile, as often as it can: every snapshot list shows is complete.
        let (stdout, _) = texts(&env.assert(&["list", "--json"]).success());
        let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(doc["unreadable"], serde_json::json!([]), "{doc}");
        listings += 1;
        for (i, slot) in running.iter_mut().enumerate() {
            if slot
                .as_mut()
                .is_some_and(|c| c.try_wait().unwrap().is_some())
            {
                results[i] = Some(slot.take().unwrap().wait_with_output().unwrap());
            }
        }
    }
    assert!(listings > 1);
    for (args, result) in jobs.iter().zip(results) {
        let allowed: &'static [i32] = match args[0].as_str() {
            "list" => &[0],
            // Auto-cleanup after a create or a prune may have removed it first.
            "delete" => &[0, 4, 5],
            _ => &[0, 5],
        };
        let out = result
            .unwrap()
            .assert()
            .append_context("args", format!("{args:?}"))
            .code(allowed);
        let (_, stderr) = texts(&out);
        let code = out.get_output().status.code();
        if code != Some(0) {
            let error = one_error_line(&stderr);
            if code == Some(5) {
                assert!(error.contains("is locked by pid"), "{stderr}");
            }
        }
    }
    env.run(&["verify", "--all"], 0);
    let leftovers: Vec<String> = entries(&env.snapshots())
        .into_iter()
        .filter(|n| n.starts_with('.') && n != ".lock")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

// ---------------------------------------------------------------------------------------------
// --timeout

/// A PATH whose `program` records its pid in `pidfile` and then hangs (`body` decides how it
/// takes SIGTERM).
fn stuck_tool(env: &Env, program: &str, pidfile: &Path, body: &str) -> String {
    env.fake_tool(program, &format!("echo $$ > {}\n{body}", pidfile.display()))
}

/// Waits for a stagesnap that `--timeout 5` has to stop while `program` hangs: exit 1, one
/// error line naming the timeout and the stopped tool, and the tool gone with it.
fn timed_out(child: Child, program: &str, pidfile: &Path) {
    let (_, stderr) = texts(&finish(child).code(1));
    let error = one_error_line(&stderr);
    assert!(
        error.contains("timed out after 5 s (--timeout 5) while")
            && error.contains(&format!("{program} was stopped"))
            && error.contains("raise --timeout"),
        "{stderr}"
    );
    let pid = fs::read_to_string(pidfile).unwrap().trim().parse().unwrap();
    assert!(!alive(pid), "the stuck {program} outlived stagesnap");
}

/// A stuck rsync under `--timeout`: the create stops it, exits 1 naming the timeout, and
/// cleans up as for Ctrl-C (no staging directory, the old snapshot as it was, the lock free).
#[test]
fn timeout_stops_a_stuck_rsync_and_cleans_up_as_for_ctrl_c() {
    let env = Env::sample(2, MB);
    env.run(&["create"], 0);
    let store = env.snapshots();
    let before = meta(&store, "clean_state");
    env.suite(1);
    let pidfile = env.root.join("rsync.pid");
    let path = stuck_tool(&env, "rsync", &pidfile, "exec sleep 3600");
    let create = env.spawn(&["--timeout", "5", "create", "--force"], Some(&path));
    timed_out(create, "rsync", &pidfile);
    assert_eq!(entries(&store), [".lock", "clean_state"]);
    assert_eq!(meta(&store, "clean_state"), before);
    env.run(&["--lock-timeout", "0", "verify", "--all"], 0);
}

/// A tool that ignores SIGTERM is killed once the grace period after it ends.
#[test]
fn timeout_kills_a_tool_that_ignores_sigterm() {
    let env = Env::sample(1, MB);
    env.run(&["create"], 0);
    let pidfile = env.root.join("rsync.pid");
    let path = stuck_tool(&env, "rsync", &pidfile, "trap '' TERM\nexec sleep 3600");
    let create = env.spawn(&["--timeout", "5", "create", "--force"], Some(&path));
    timed_out(create, "rsync", &pidfile);
    assert_eq!(entries(&env.snapshots()), [".lock", "clean_state"]);
}

/// Stuck squashfs tools under `--timeout`: a create leaves nothing; a restore that was
/// extracting is recorded for `status`, and the next restore completes it exactly.
#[test]
fn timeout_stops_stuck_squashfs_tools() {
    let env = Env::sample(2, MB);
    env.set("mode", "squashfs");
    env.set("squashfs_restore", "extract");
    let pidfile = env.root.join("tool.pid");
    let path = stuck_tool(&env, "mksquashfs", &pidfile, "exec sleep 3600");
    let create = env.spawn(&["--timeout", "5", "create"], Some(&path));
    timed_out(create, "mksquashfs", &pidfile);
    assert_eq!(entries(&env.snapshots()), [".lock"]);

    env.run(&["create"], 0);
    let clean = treestate(&env.data());
    env.suite(1);
    let dirty = treestate(&env.data());
    // `unsquashfs -s` checks the image before anything changes (the extract reads the image
    // itself); it hangs.
    let path = stuck_tool(&env, "unsquashfs", &pidfile, "exec sleep 3600");
    let restore = env.spawn(&["--timeout", "5", "restore"], Some(&path));
    timed_out(restore, "unsquashfs", &pidfile);
    assert_same_tree(&treestate(&env.data()), &dirty);
    env.run(&["--lock-timeout", "0", "restore"], 0);
    assert_same_tree(&treestate(&env.data()), &clean);
}

/// `--timeout` also bounds the wait for another process's lock.
#[test]
fn timeout_covers_waiting_for_the_lock() {
    let env = Env::sample(1, MB);
    env.run(&["create"], 0);
    let lock = env.snapshots().join(".lock");
    // flock(1) takes the same kind of lock (flock(2)) as stagesnap does; without forking,
    // so that killing it releases the lock.
    let mut holder = Command::new("flock")
        .arg("--no-fork")
        .arg(&lock)
        .args(["sleep", "3600"])
        .spawn()
        .unwrap();
    wait_until("flock holds the lock", || {
        !Command::new("flock")
            .args(["-n"])
            .arg(&lock)
            .arg("true")
            .status()
            .unwrap()
            .success()
    });
    let (_, stderr) = env.run(&["--timeout", "1", "--lock-timeout", "3600", "restore"], 1);
    let error = one_error_line(&stderr);
    assert!(
        error.contains("timed out after 1 s (--timeout 1); nothing more was changed"),
        "{stderr}"
    );
    holder.kill().unwrap();
    holder.wait().unwrap();
}

// ---------------------------------------------------------------------------------------------
// Bad input the other test files do not cover (see docs/guarantees.md)

/// Permission denied on the live data: a non-root user's restore of root-owned data stops
/// before changing anything, and its create of data it cannot read (the nodes' wallet
/// directories are root's alone) says where and leaves nothing behind.
#[test]
fn permission_denied_on_live_data_as_a_non_root_user() {
    let env = Env::sample(2, MB);
    env.run(&["create"], 0);
    env.suite(1);
    common::open_to_others(&env);
    let dirty = treestate(&env.data());
    let listing = common::listing(&env);

    let (_, stderr) = texts(&env.std_cmd_as_nobody().arg("restore").assert().code(1));
    let error = one_error_line(&stderr);
    assert!(
        error.contains(&format!("cannot restore: {}", env.data().display()))
            && error.contains("is not writable by this user")
            && error.contains("nothing was changed"),
        "{stderr}"
    );

    let (_, stderr) = texts(
        &env.std_cmd_as_nobody()
            .args(["create", "other"])
            .assert()
            .code(1),
    );
    let error = one_error_line(&stderr);
    assert!(
        error.contains(&format!("cannot read {}", env.data().display()))
            && error.contains("Permission denied"),
        "{stderr}"
    );
    assert_same_tree(&treestate(&env.data()), &dirty);
    assert_eq!(common::listing(&env), listing);
}

#[test]
fn an_unreadable_config_is_a_usage_error_for_a_non_root_user() {
    let env = Env::sample(1, MB);
    common::open_to_others(&env);
    fs::set_permissions(env.config(), fs::Permissions::from_mode(0o600)).unwrap();
    let (_, stderr) = texts(&env.std_cmd_as_nobody().arg("list").assert().code(2));
    let error = one_error_line(&stderr);
    assert!(
        error.contains("cannot read config file") && error.contains(env.config().to_str().unwrap()),
        "{stderr}"
    );
}

#[test]
fn a_missing_or_truncated_manifest_is_refused_and_changes_nothing() {
    let env = Env::sample(2, MB);
    env.run(&["create"], 0);
    let clean = treestate(&env.data());
    env.suite(1);
    let manifest = env.snapshots().join("clean_state/manifest.jsonl");
    let good = fs::read(&manifest).unwrap();
    fs::remove_file(&manifest).unwrap();
    refused(
        &env,
        &["restore"],
        1,
        &[
            "snapshot clean_state is damaged",
            "manifest.jsonl cannot be read",
        ],
    );
    env.run(&["verify"], 1);
    fs::write(&manifest, &good[..good.len() / 2]).unwrap();
    refused(
        &env,
        &["restore"],
        1,
        &[
            "snapshot clean_state is damaged",
            "does not match the digest",
        ],
    );
    env.run(&["verify"], 1);
    fs::write(&manifest, &good).unwrap();
    env.run(&["restore"], 0);
    assert_same_tree(&treestate(&env.data()), &clean);
}

/// A node directory that is a symlink (its data lives elsewhere and would not be captured) or
/// anything mounted below the data (a restore would empty and refill it) is refused, exit 2,
/// before anything changes; plain bind mounts of the same filesystem included.
#[test]
fn node_directories_that_are_symlinks_or_mount_points_are_refused() {
    let env = Env::sample(3, MB);
    env.run(&["create"], 0);
    let clean = treestate(&env.data());
    env.suite(1);
    let node2 = env.data().join("node2");
    let away = env.root.join("elsewhere/node2");
    fs::create_dir_all(away.parent().unwrap()).unwrap();
    fs::rename(&node2, &away).unwrap();
    symlink(&away, &node2).unwrap();
    for args in [&["create", "--force"][..], &["restore"]] {
        refused(
            &env,
            args,
            2,
            &[&format!(
                "{} is a symlink to the directory {}",
                node2.display(),
                away.display()
            )],
        );
    }
    fs::remove_file(&node2).unwrap();
    fs::rename(&away, &node2).unwrap();

    let node3 = env.data().join("node3");
    {
        let _tmpfs = Mount::tmpfs(&node3, "1m");
        for args in [&["create", "--force"][..], &["restore"]] {
            refused(
                &env,
                args,
                2,
                &[&format!("{} is a mount point", node3.display())],
            );
        }
    }
    let run = env.data().join("node1/run");
    {
        let _bind = Mount::bind(&env.root.join("elsewhere"), &run);
        refused(
            &env,
            &["restore"],
            2,
            &[&format!("{} is a mount point", run.display())],
        );
    }
    env.run(&["restore"], 0);
    assert_same_tree(&treestate(&env.data()), &clean);
}

/// rsync failing half way through a `create --force` (the fault: it copies, then reports a
/// failure as a full disk would): the error says so, the old snapshot stays.
#[test]
fn rsync_failing_half_way_keeps_the_old_snapshot() {
    failing_half_way(
        "filesystem",
        "rsync",
        "{real} \"$@\"\necho 'rsync: write failed: No space left on device (28)' >&2\nexit 11",
        &["No space left on device", "free space"],
    );
}

/// mksquashfs dying half way (the fault: it leaves a truncated image and fails): the error
/// names it, the old snapshot stays.
#[test]
fn mksquashfs_failing_half_way_keeps_the_old_snapshot() {
    failing_half_way(
        "squashfs",
        "mksquashfs",
        "{real} \"$@\" >/dev/null 2>&1\ntruncate -s 4096 \"$2\"\necho 'FATAL ERROR: simulated write error' >&2\nexit 1",
        &[
            "mksquashfs failed (exit 1) while building the squashfs image",
            "simulated write error",
        ],
    );
}

/// A `create --force` in `mode` whose `tool` is a fake running `body` (`{real}` stands for
/// the real tool): exit 1, one error line holding each of `expect`, no partial snapshot, and
/// the old one intact and restorable.
fn failing_half_way(mode: &str, tool: &str, body: &str, expect: &[&str]) {
    let env = Env::sample(2, MB);
    env.set("mode", mode);
    env.run(&["create"], 0);
    let clean = treestate(&env.data());
    let store = env.snapshots();
    let before = meta(&store, "clean_state");
    env.suite(1);
    let real = which(tool).display().to_string();
    let path = env.fake_tool(tool, &body.replace("{real}", &real));
    let (_, stderr) = texts(
        &env.cmd()
            .args(["create", "--force"])
            .env("PATH", &path)
            .assert()
            .code(1),
    );
    let error = one_error_line(&stderr);
    for part in expect {
        assert!(error.contains(part), "{part:?} missing: {stderr}");
    }
    assert_eq!(entries(&store), [".lock", "clean_state"]);
    assert_eq!(meta(&store, "clean_state"), before);
    env.run(&["restore"], 0);
    assert_same_tree(&treestate(&env.data()), &clean);
}

// ---------------------------------------------------------------------------------------------
// Data that cannot be a clean state

/// A data directory without node directories is refused (exit 2), by create and by the
/// auto-create of a restore, naming it.
#[test]
fn data_without_node_directories_is_not_snapshotted() {
    let env = Env::sample(2, MB);
    for e in fs::read_dir(env.data()).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            fs::remove_dir_all(path).unwrap();
        }
    }
    let expect = format!(
        "cannot create clean_state: no node directories in {}; a snapshot would hold no node state",
        env.data().display()
    );
    for cmd in ["create", "restore"] {
        refused(&env, &[cmd], 2, &[&expect, "Start the environment"]);
    }
    assert!(!env.snapshots().join("clean_state").exists());
}

/// rsync's exit 24 (files vanished while it copied) during an unquiesced create says that
/// the nodes are writing and points to `quiesce`, and is the only way they fail it. A thread
/// creates and removes files
/// without pause, so rsync lists files that are gone when it copies them; each attempt
/// that happens not to catch one is retried, up to a bound.
#[test]
fn files_vanishing_during_a_create_point_to_quiesce() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let env = Env::sample(1, MB);
    let churn = env.data().join("node1/churn");
    fs::create_dir(&churn).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (churn, stop) = (churn.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for k in 0..200 {
                    let _ = fs::write(churn.join(format!("f{k}")), b"x");
                }
                for k in 0..200 {
                    let _ = fs::remove_file(churn.join(format!("f{k}")));
                }
            }
        })
    };
    // A create under churn fails in rsync (exit 24, or 23 when a file vanished while rsync
    // read its attributes) or in create's capture check (entries replaced during the copy);
    // whichever, the one error line must point to quiesce. At least one must be rsync's.
    let mut vanished = None;
    for _ in 0..50 {
        let create = env.assert(&["create", "--force"]);
        if create.get_output().status.success() {
            continue;
        }
        let (_, stderr) = texts(&create.code(1));
        let error = one_error_line(&stderr);
        assert!(error.contains("quiesce"), "{stderr}");
        if error.contains("rsync failed (exit 2") {
            vanished = Some(error.to_string());
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let error = vanished.expect("no create in 50 saw rsync find a file vanished");
    assert!(
        error.contains("while copying")
            && error.contains("the nodes are writing to their data")
            && error.contains("quiesce = pause or stop in [suite_isolation]"),
        "{error}"
    );
}
