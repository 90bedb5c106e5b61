//! Shared test harness: a generated stage environment in a temporary directory, the built
//! binary run against it, and an independent oracle of tree state (tests/tools/treestate.py).
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod docker;
pub mod modes;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use assert_cmd::assert::{Assert, OutputAssertExt};
use stage_sample::{self as sample, GenerateOptions, SuiteOptions};
use tempfile::TempDir;

pub struct Env {
    _dir: TempDir,
    pub root: PathBuf,
}

impl Env {
    /// A small generated environment (`nodes` nodes, about `size` bytes of data).
    pub fn sample(nodes: u32, size: u64) -> Env {
        Self::with_options(GenerateOptions {
            nodes,
            size,
            ..Default::default()
        })
    }

    pub fn with_options(opts: GenerateOptions) -> Env {
        Self::with_options_in(&std::env::temp_dir(), opts)
    }

    /// [`Env::with_options`] in a new folder inside `parent` (a loop-mounted filesystem).
    pub fn with_options_in(parent: &Path, opts: GenerateOptions) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("stagesnap-test-")
            .tempdir_in(parent)
            .unwrap();
        let root = dir.path().to_path_buf();
        sample::generate(&root, &opts).expect("generate sample environment");
        Env { _dir: dir, root }
    }

    pub fn config(&self) -> PathBuf {
        sample::config_path(&self.root)
    }

    pub fn cache(&self) -> PathBuf {
        sample::cache_dir(&self.root)
    }

    pub fn data(&self) -> PathBuf {
        self.cache().join("data")
    }

    pub fn snapshots(&self) -> PathBuf {
        self.root.join("testing/snapshots")
    }

    /// Sets `key = value` in [suite_isolation], replacing an existing line.
    pub fn set(&self, key: &str, value: &str) {
        let text = std::fs::read_to_string(self.config()).unwrap();
        let mut out = Vec::new();
        let mut section = String::new();
        let mut done = false;
        for line in text.lines() {
            let t = line.trim();
            if t.starts_with('[') {
                if section == "suite_isolation" && !done {
                    out.push(format!("{key} = {value}"));
                    done = true;
                }
                section = t.trim_matches(|c| c == '[' || c == ']').to_string();
            }
            let is_key = section == "suite_isolation"
                && t.split(['=', ':'])
                    .next()
                    .is_some_and(|k| k.trim().eq_ignore_ascii_case(key));
            if is_key {
                if !done {
                    out.push(format!("{key} = {value}"));
                    done = true;
                }
                continue;
            }
            out.push(line.to_string());
        }
        if !done {
            if section != "suite_isolation" {
                out.push("[suite_isolation]".into());
            }
            out.push(format!("{key} = {value}"));
        }
        std::fs::write(self.config(), out.join("\n") + "\n").unwrap();
    }

    /// The built stagesnap, run from the config's folder with no STAGESNAP_* leaking in.
    pub fn cmd(&self) -> assert_cmd::Command {
        assert_cmd::Command::from_std(self.std_cmd())
    }

    /// [`Env::cmd`] as a std Command, for tests that spawn it.
    pub fn std_cmd(&self) -> Command {
        self.prepared(Command::new(env!("CARGO_BIN_EXE_stagesnap")))
    }

    /// [`Env::std_cmd`] run as uid and gid 65534 with no supplementary groups; see
    /// [`open_to_others`].
    pub fn std_cmd_as_nobody(&self) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_stagesnap"));
        self.prepared(cmd)
    }

    /// [`Env::std_cmd`] in a pid namespace of its own (with its own /proc), where no other
    /// process is seen: root only.
    pub fn std_cmd_in_own_pid_namespace(&self) -> Command {
        let mut cmd = Command::new("unshare");
        cmd.args(["--pid", "--fork", "--mount-proc"])
            .arg(env!("CARGO_BIN_EXE_stagesnap"));
        self.prepared(cmd)
    }

    fn prepared(&self, mut cmd: Command) -> Command {
        cmd.current_dir(self.config().parent().unwrap());
        for (k, _) in std::env::vars() {
            if k.starts_with("STAGESNAP_") || k == "RUST_LOG" {
                cmd.env_remove(k);
            }
        }
        cmd.env("NO_COLOR", "1");
        cmd
    }

    /// stagesnap run with `args`, for assert_cmd's assertions on its exit code and output.
    pub fn assert(&self, args: &[&str]) -> Assert {
        self.cmd().args(args).assert()
    }

    /// Runs stagesnap with `args`, asserting the exit code; returns (stdout, stderr).
    pub fn run(&self, args: &[&str], code: i32) -> (String, String) {
        texts(&self.assert(args).code(code))
    }

    /// Like [`Env::run`] with `--json`, parsing stdout.
    pub fn json(&self, args: &[&str], code: i32) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        json_of(&self.assert(&all).code(code))
    }

    /// Runs stagesnap under `script`, on a pseudo-terminal of 120 columns; returns
    /// everything the terminal received.
    pub fn on_terminal(&self, args: &str, vars: &[(&str, &str)]) -> String {
        let log = self.root.join("terminal.log");
        let mut cmd = Command::new("script");
        cmd.arg("-qec")
            .arg(format!(
                "stty cols 120; {} {args}",
                env!("CARGO_BIN_EXE_stagesnap")
            ))
            .arg(&log)
            .current_dir(self.config().parent().unwrap())
            .env("TERM", "xterm-256color")
            .env_remove("NO_COLOR")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null());
        for (k, _) in std::env::vars() {
            if k.starts_with("STAGESNAP_") || k == "RUST_LOG" {
                cmd.env_remove(k);
            }
        }
        for (k, v) in vars {
            cmd.env(k, v);
        }
        cmd.assert()
            .append_context("on a terminal", format!("stagesnap {args}"))
            .success();
        String::from_utf8_lossy(&std::fs::read(log).unwrap()).into_owned()
    }

    /// stagesnap `args`, started in the background with its output captured, on `path` if
    /// given; [`finish`] waits for it.
    pub fn spawn(&self, args: &[&str], path: Option<&str>) -> std::process::Child {
        let mut cmd = self.std_cmd();
        cmd.args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        if let Some(path) = path {
            cmd.env("PATH", path);
        }
        cmd.spawn().unwrap()
    }

    /// stagesnap `args` stopped at pause point `point`: see [`Paused`].
    pub fn paused(&self, args: &[&str], point: &str) -> Paused {
        let mut cmd = self.std_cmd();
        cmd.args(args);
        Paused::start(cmd, point)
    }

    /// A PATH with `fakes` (program, shell script body) in front of the real one: a fake tool
    /// injects a fault the real one cannot be made to produce.
    pub fn fake_path(&self, fakes: &[(&str, &str)]) -> String {
        use std::os::unix::fs::PermissionsExt;
        let bin = self.root.join("fake-bin");
        std::fs::create_dir_all(&bin).unwrap();
        for (program, body) in fakes {
            let path = bin.join(program);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        format!("{}:{}", bin.display(), std::env::var("PATH").unwrap())
    }

    /// A PATH on which `program` is a shell script that answers version and help questions
    /// with the real tool's answer and otherwise runs `body`.
    pub fn fake_tool(&self, program: &str, body: &str) -> String {
        let real = which(program);
        self.fake_path(&[(
            program,
            &format!(
                "case \"$1\" in --version|-version|-help) exec {} \"$@\";; esac\n{body}",
                real.display()
            ),
        )])
    }

    /// A snapshot store of `size` on a tmpfs mounted at `<root>/small-store` for the test, set
    /// as snapshots_dir; hold the mount as long as the store is used.
    pub fn small_store(&self, size: &str) -> (PathBuf, Mount) {
        let store = self.root.join("small-store");
        let mount = Mount::tmpfs(&store, size);
        self.set("snapshots_dir", store.to_str().unwrap());
        (store, mount)
    }

    /// Creates clean_state, then runs a suite over the data; the tree the suite left.
    pub fn create_then_suite(&self, seed: u64) -> String {
        self.run(&["create"], 0);
        self.suite(seed);
        treestate(&self.data())
    }

    pub fn suite(&self, seed: u64) {
        sample::run_suite(
            &self.root,
            &SuiteOptions {
                seed,
                ..Default::default()
            },
        )
        .expect("suite");
    }
}

/// Waits for a spawned stagesnap; its outcome, for assert_cmd's assertions.
pub fn finish(child: std::process::Child) -> Assert {
    child.wait_with_output().unwrap().assert()
}

/// The stdout of an asserted run, parsed as one JSON document.
pub fn json_of(assert: &Assert) -> serde_json::Value {
    let (stdout, _) = texts(assert);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// The names in `dir`, sorted.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The largest regular file below `dir`.
pub fn largest_file(dir: &Path) -> PathBuf {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .max_by_key(|e| e.metadata().unwrap().len())
        .unwrap()
        .into_path()
}

/// `cp -a FROM TO`, which must succeed.
pub fn cp_a(from: &Path, to: &Path) {
    Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .assert()
        .success();
}

/// Where `program` is on PATH.
pub fn which(program: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} is not installed"))
}

/// The stdout and stderr of an asserted run, as text.
pub fn texts(assert: &Assert) -> (String, String) {
    let out = assert.get_output();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Canonical description of a tree (types, modes, owners, times, xattrs, hardlinks, sparseness,
/// content hashes), computed by python3, independently of the code under test.
pub fn treestate(path: &Path) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/treestate.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(path)
        .assert()
        .success();
    String::from_utf8(out.get_output().stdout.clone()).unwrap()
}

/// Asserts two [`treestate`] outputs are equal, reporting only the entries that differ.
#[track_caller]
pub fn assert_same_tree(actual: &str, expected: &str) {
    if actual == expected {
        return;
    }
    let a: serde_json::Map<String, serde_json::Value> = serde_json::from_str(actual).unwrap();
    let e: serde_json::Map<String, serde_json::Value> = serde_json::from_str(expected).unwrap();
    let mut diffs = Vec::new();
    for key in a.keys().chain(e.keys().filter(|k| !a.contains_key(*k))) {
        match (a.get(key), e.get(key)) {
            (Some(x), Some(y)) if x == y => {}
            (x, y) => diffs.push(format!(
                "{key}:\n  actual   {}\n  expected {}",
                show(x),
                show(y)
            )),
        }
    }
    panic!(
        "trees differ in {} entries:\n{}",
        diffs.len(),
        diffs[..diffs.len().min(15)].join("\n")
    );
}

fn show(v: Option<&serde_json::Value>) -> String {
    v.map_or("(absent)".into(), |v| v.to_string())
}

/// The setting `key` of a `stagesnap config --json` document (its value and source).
pub fn config_setting<'a>(doc: &'a serde_json::Value, key: &str) -> &'a serde_json::Value {
    named(doc, "settings", "key", key)
}

/// The check `name` of a `stagesnap doctor --json` document (its status and detail).
pub fn doctor_check<'a>(doc: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    named(doc, "checks", "check", name)
}

/// The element of the array `list` of `doc` whose `field` is `name`.
fn named<'a>(
    doc: &'a serde_json::Value,
    list: &str,
    field: &str,
    name: &str,
) -> &'a serde_json::Value {
    doc[list]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e[field] == name)
        .unwrap_or_else(|| panic!("no {field} {name} in {doc}"))
}

/// The snapshot names of a `stagesnap list --json` document, in its order (newest first).
pub fn snapshot_names(listing: &serde_json::Value) -> Vec<&str> {
    listing["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect()
}

pub fn inode(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

/// Inode numbers of `data/` and every node directory, to prove bind mounts stay valid.
pub fn dir_inodes(data: &Path) -> Vec<(PathBuf, u64)> {
    let mut v = vec![(data.to_path_buf(), inode(data))];
    for e in std::fs::read_dir(data).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            v.push((p.clone(), inode(&p)));
        }
    }
    v.sort();
    v
}

/// Runs `args` expecting `code`, a stderr containing every one of `expect`, and no change at
/// all to the live data or the snapshot store.
pub fn refused(env: &Env, args: &[&str], code: i32, expect: &[&str]) {
    let data = treestate(&env.data());
    let snaps = env.snapshots().exists().then(|| listing(env));
    let (_, stderr) = env.run(args, code);
    for e in expect {
        assert!(
            stderr.contains(e),
            "stagesnap {args:?}: stderr lacks {e:?}:\n{stderr}"
        );
    }
    let errors: Vec<_> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "expected one error line:\n{stderr}");
    assert_same_tree(&treestate(&env.data()), &data);
    if let Some(before) = snaps {
        assert_eq!(listing(env), before, "stagesnap {args:?} changed the store");
    }
}

/// Snapshot names and their metadata files, ignoring the lock file's holder record.
pub fn listing(env: &Env) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(env.snapshots())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap() != ".lock")
        .map(|p| {
            let meta = std::fs::read(p.join("meta.json")).unwrap_or_default();
            (p.file_name().unwrap().to_string_lossy().into_owned(), meta)
        })
        .collect();
    v.sort();
    v
}

/// Lets other users (uid 65534) reach the environment, the snapshot store and its lock,
/// without owning the data.
pub fn open_to_others(env: &Env) {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    for dir in env
        .root
        .ancestors()
        .take_while(|p| p.starts_with(std::env::temp_dir()) && *p != std::env::temp_dir())
    {
        mode(dir, 0o755);
    }
    if env.snapshots().exists() {
        mode(&env.snapshots(), 0o777);
        mode(&env.snapshots().join(".lock"), 0o666);
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A filesystem mounted for the life of a test (a tmpfs, or a bind mount), unmounted when
/// dropped, also when the test fails. Declare it after the `Env` it lies in, so it goes first.
pub struct Mount(PathBuf);

impl Mount {
    pub fn tmpfs(at: &Path, size: &str) -> Mount {
        Self::new(at, &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
    }

    pub fn bind(from: &Path, at: &Path) -> Mount {
        Self::new(at, &["--bind", from.to_str().unwrap()])
    }

    fn new(at: &Path, args: &[&str]) -> Mount {
        assert!(is_root(), "these tests mount filesystems: run them as root");
        std::fs::create_dir_all(at).unwrap();
        Command::new("mount").args(args).arg(at).assert().success();
        Mount(at.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A filesystem of type `fs` (`xfs` with reflink=1, or `btrfs`) made in a 320 MiB sparse
/// image and loop-mounted for one test; dropping it unmounts it and removes the image.
pub struct LoopMount {
    dir: TempDir,
    pub mnt: PathBuf,
}

impl LoopMount {
    pub fn new(fs: &str) -> LoopMount {
        assert!(
            is_root(),
            "loop mounts need root (scripts/test.sh runs the tests as root)"
        );
        let dir = tempfile::Builder::new()
            .prefix("stagesnap-loop-")
            .tempdir()
            .unwrap();
        let image = dir.path().join("image");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(320 << 20)
            .unwrap();
        let mkfs: &[&str] = match fs {
            "xfs" => &["mkfs.xfs", "-q", "-m", "reflink=1"],
            "btrfs" => &["mkfs.btrfs", "-q"],
            other => panic!("no loop filesystem {other}"),
        };
        Command::new(mkfs[0])
            .args(&mkfs[1..])
            .arg(&image)
            .assert()
            .success();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mnt)
            .assert()
            .success();
        LoopMount { dir, mnt }
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        // Lazily, so that a test failing with a file still open cannot leave it mounted.
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

pub fn cstr(p: &Path) -> std::ffi::CString {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// Sets an xattr on the entry itself (a symlink's, not its target's).
pub fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid C strings and a live buffer.
    let rc = unsafe {
        libc::lsetxattr(
            cstr(path).as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "setxattr {name} on {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// Sets the entry's own mtime (a symlink's, not its target's); atime is left alone.
pub fn set_mtime(path: &Path, sec: i64, nsec: i64) {
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
    ];
    // SAFETY: valid C string and a two-element array as utimensat requires.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            cstr(path).as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(
        rc,
        0,
        "utimensat {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// `mount -o OPTIONS AT` (as root), which must succeed: remounts a test mount read-only, say.
pub fn remount(at: &Path, options: &str) {
    Command::new("mount")
        .args(["-o", options])
        .arg(at)
        .assert()
        .success();
}

/// A stagesnap process stopped at a pause point of `src/testhook.rs` (needs the `test-hooks`
/// feature): [`Paused::start`] spawns `cmd` and waits until it reaches `point`; the test then
/// changes the tree and calls [`Paused::finish`].
pub struct Paused {
    dir: TempDir,
    point: String,
    child: std::process::Child,
}

impl Paused {
    pub fn start(mut cmd: Command, point: &str) -> Paused {
        let dir = tempfile::tempdir().unwrap();
        cmd.env(
            "STAGESNAP_TEST_PAUSE",
            format!("{point}:{}", dir.path().display()),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let paused = dir.path().join(format!("{point}.paused"));
        while !paused.exists() {
            if let Some(status) = child.try_wait().unwrap() {
                let out = child.wait_with_output().unwrap();
                panic!(
                    "stagesnap ended ({status}) before reaching pause point {point}; built without --features test-hooks?\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        Paused {
            dir,
            point: point.to_string(),
            child,
        }
    }

    /// SIGKILLs the process where it stopped.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// The paused process's id, for a test that signals it.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets the process go on without waiting for it; the pause point's directory must
    /// outlive the moment it sees the go-ahead.
    pub fn release(self) -> (std::process::Child, TempDir) {
        std::fs::write(self.dir.path().join(format!("{}.go", self.point)), b"").unwrap();
        (self.child, self.dir)
    }

    /// Lets the process go on; its outcome, for assert_cmd's assertions.
    pub fn finish(self) -> Assert {
        std::fs::write(self.dir.path().join(format!("{}.go", self.point)), b"").unwrap();
        self.child.wait_with_output().unwrap().assert()
    }
}
