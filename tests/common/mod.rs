//! Shared test harness: a generated stage environment in a temporary directory, the built
//! binary run against it, and an independent oracle of tree state (tests/tools/treestate.py).
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use stagesnap::sample::{self, GenerateOptions, SuiteOptions};
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
        let dir = tempfile::Builder::new()
            .prefix("stagesnap-test-")
            .tempdir()
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
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_stagesnap"));
        cmd.current_dir(self.config().parent().unwrap());
        for (k, _) in std::env::vars() {
            if k.starts_with("STAGESNAP_") || k == "RUST_LOG" {
                cmd.env_remove(k);
            }
        }
        cmd.env("NO_COLOR", "1");
        cmd
    }

    /// Runs stagesnap with `args`, asserting the exit code; returns (stdout, stderr).
    pub fn run(&self, args: &[&str], code: i32) -> (String, String) {
        let out = self.cmd().args(args).output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert_eq!(
            out.status.code(),
            Some(code),
            "stagesnap {args:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        );
        (stdout, stderr)
    }

    /// Like [`Env::run`] with `--json`, parsing stdout.
    pub fn json(&self, args: &[&str], code: i32) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        let (stdout, _) = self.run(&all, code);
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
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

/// Canonical description of a tree (types, modes, owners, times, xattrs, hardlinks, sparseness,
/// content hashes), computed by python3, independently of the code under test.
pub fn treestate(path: &Path) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/treestate.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(path)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "treestate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
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

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
