//! The sample generator and simulated suite, checked against `tests/tools/treestate.py`
//! (an independent oracle) and Python's configparser (the config's real reader).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use assert_cmd::assert::{Assert, OutputAssertExt};
use predicates::str::contains;
use serde_json::Value;
use stage_sample::{
    self as sample, ChangeKind, GenerateOptions, Refusal, Shape, SuiteOptions, SuiteSummary,
    cache_dir, config_path, generate, run_suite,
};
use tempfile::TempDir;

/// 2025-01-01T00:00:00Z in ns: the generator backdates certificates, wallets and configs
/// before it, and writes everything else "now".
const PAST_NS: i64 = 1_735_689_600_000_000_000;

type Manifest = BTreeMap<String, Value>;

fn opts(nodes: u32, size: &str) -> GenerateOptions {
    GenerateOptions {
        nodes,
        size: sample::parse_size(size).unwrap(),
        ..GenerateOptions::default()
    }
}

fn treestate(dir: &Path, content: bool) -> Manifest {
    // The oracle is shared with the stagesnap tests, at the workspace root.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/tools/treestate.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script).arg(dir);
    if !content {
        cmd.arg("--no-content");
    }
    let out = cmd.assert().success();
    serde_json::from_slice(&out.get_output().stdout).expect("treestate prints JSON")
}

fn without_mtimes(m: &Manifest) -> Manifest {
    let mut m = m.clone();
    for rec in m.values_mut() {
        rec.as_object_mut().unwrap().remove("mtime_ns");
    }
    m
}

fn mtime_ns(rec: &Value) -> i64 {
    rec["mtime_ns"].as_i64().unwrap()
}

/// Added, removed and changed paths between two manifests; directories whose only change is
/// their mtime (entries were added or removed inside) are not counted as changed.
fn diff(before: &Manifest, after: &Manifest) -> [BTreeSet<String>; 3] {
    let added = after
        .keys()
        .filter(|k| !before.contains_key(*k))
        .cloned()
        .collect();
    let removed = before
        .keys()
        .filter(|k| !after.contains_key(*k))
        .cloned()
        .collect();
    let changed = before
        .iter()
        .filter_map(|(k, b)| {
            let a = after.get(k)?;
            let differs = if b["type"] == "dir" {
                let strip = |v: &Value| {
                    let mut v = v.clone();
                    v.as_object_mut().unwrap().remove("mtime_ns");
                    v
                };
                strip(a) != strip(b)
            } else {
                a != b
            };
            differs.then(|| k.clone())
        })
        .collect();
    [added, removed, changed]
}

/// The visible difference must be exactly what the suite reported.
fn assert_diff_matches_report(before: &Manifest, after: &Manifest, report: &SuiteSummary) {
    let mut expected: [BTreeSet<String>; 3] = Default::default();
    for c in &report.changes {
        let slot = match c.kind {
            ChangeKind::Added | ChangeKind::DirAdded => 0,
            ChangeKind::Deleted | ChangeKind::DirRemoved => 1,
            ChangeKind::Modified | ChangeKind::ModeChanged => 2,
        };
        expected[slot].insert(c.path.to_str().unwrap().to_owned());
    }
    let actual = diff(before, after);
    for (i, what) in ["added", "removed", "changed"].iter().enumerate() {
        assert_eq!(
            actual[i], expected[i],
            "{what} paths differ from the suite's report"
        );
    }
}

fn count_ext(dir: &Path, ext: &str) -> usize {
    fs::read_dir(dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension() == Some(OsStr::new(ext)))
        .count()
}

#[test]
fn parse_size_accepts_binary_suffixes() {
    assert_eq!(sample::parse_size("4096"), Ok(4096));
    assert_eq!(sample::parse_size("512k"), Ok(512 << 10));
    assert_eq!(sample::parse_size("20M"), Ok(20 << 20));
    assert_eq!(sample::parse_size("3G"), Ok(3 << 30));
    assert_eq!(sample::parse_size("1T"), Ok(1 << 40));
    for bad in ["", "M", "12Q", "-1", "1.5G", "99999999999T"] {
        assert!(
            sample::parse_size(bad).is_err(),
            "{bad:?} should be rejected"
        );
    }
}

#[test]
fn generate_builds_the_stage_layout() {
    let tmp = TempDir::new().unwrap();
    let root = tmp.path();
    let summary = generate(root, &opts(3, "20M")).unwrap();
    assert_eq!(summary.nodes, 3);
    let target = 20u64 << 20;
    assert!(
        summary.data_bytes > target * 9 / 10 && summary.data_bytes < target * 11 / 10,
        "data/ holds {} bytes for a 20M target",
        summary.data_bytes
    );
    assert!(config_path(root).is_file());

    let cache = cache_dir(root);
    let state = treestate(&cache, false);
    for n in 1..=3 {
        let node = cache.join(format!("data/node{n}"));
        let lib = node.join("lib");
        let rel = |p: &str| format!("data/node{n}/{p}");

        let certs = count_ext(&lib.join("ca"), "dcert");
        assert!((2..=3).contains(&certs), "node{n} has {certs} certificates");
        // certs/nodeN must agree with the node's own lib/ca.
        let shared = fs::read_dir(cache.join(format!("certs/node{n}")))
            .unwrap()
            .collect::<Vec<_>>();
        assert_eq!(shared.len(), 2);
        for entry in shared {
            let entry = entry.unwrap();
            assert_eq!(
                fs::read(entry.path()).unwrap(),
                fs::read(lib.join("ca").join(entry.file_name())).unwrap()
            );
        }
        assert!(
            cache
                .join(format!("configs/node{n}/cellframe-node.cfg"))
                .is_file()
        );

        assert_eq!(count_ext(&lib.join("wallet"), "dwallet"), 2);
        for entry in fs::read_dir(lib.join("wallet")).unwrap() {
            assert_eq!(entry.unwrap().metadata().unwrap().mode() & 0o777, 0o600);
        }

        let dat = fs::metadata(lib.join("global_db/mdbx.dat")).unwrap();
        assert_eq!(dat.len() % sample::PAGE, 0);
        assert!(
            dat.blocks() * 512 < dat.len(),
            "node{n} mdbx.dat is not sparse"
        );
        assert_eq!(state[&rel("lib/global_db/mdbx.dat")]["sparse"], true);
        assert!(lib.join("global_db/mdbx.lck").is_file());
        for chain in ["main", "zerochain"] {
            let cell = lib.join(format!("network/{}/{chain}/0.dchaincell", sample::NETWORK));
            assert!(fs::metadata(cell).unwrap().len() > 0);
        }

        let log = fs::read_to_string(node.join("log/cellframe-node.log")).unwrap();
        assert!(log.len() > 1 << 20 && log.lines().all(|l| l.starts_with('[')));
        let pid = fs::read_to_string(node.join("run/cellframe-node.pid")).unwrap();
        assert!(pid.trim().parse::<u32>().unwrap() > 0);
        assert!(
            fs::symlink_metadata(node.join("run/node_cli"))
                .unwrap()
                .file_type()
                .is_socket()
        );
        assert_eq!(state[&rel("run/node_cli")]["type"], "socket");

        // Database bytes are random: every byte value near its expected share of 1 MiB.
        let bytes = fs::read(lib.join("global_db/mdbx.dat")).unwrap();
        let mut hist = [0u32; 256];
        for &b in &bytes[..1 << 20] {
            hist[b as usize] += 1;
        }
        assert!(
            hist.iter().all(|&c| (3000..5200).contains(&c)),
            "mdbx.dat looks compressible"
        );
    }

    // Certificates, wallets and configs predate the run, with nanoseconds; live files are new.
    let ca = &state["data/node1/lib/ca/node-addr-1.dcert"];
    assert!(mtime_ns(ca) < PAST_NS);
    assert!(
        state
            .values()
            .filter(|r| mtime_ns(r) < PAST_NS)
            .any(|r| mtime_ns(r) % 1_000_000_000 != 0)
    );
    assert!(mtime_ns(&state["data/node1/lib/global_db/mdbx.dat"]) > PAST_NS);
    assert!(
        mtime_ns(&state["data/node1/lib/ca"]) < PAST_NS,
        "lib/ca directory should be backdated"
    );
}

#[test]
fn config_parses_with_configparser() {
    let tmp = TempDir::new().unwrap();
    let o = GenerateOptions {
        mode: "squashfs".into(),
        ..opts(2, "4M")
    };
    generate(tmp.path(), &o).unwrap();
    let script = r#"
import configparser, json, sys
cp = configparser.ConfigParser()
with open(sys.argv[1]) as f:
    cp.read_file(f)
si = cp["suite_isolation"]
print(json.dumps({
    "suite_isolation": dict(si),
    "auto_cleanup": si.getboolean("auto_cleanup"),
    "auto_create_on_startup": si.getboolean("auto_create_on_startup"),
    "keep": si.getint("keep_snapshot_count"),
    "cache_dir": cp["paths"]["cache_dir"],
    "url": cp["network"]["bootstrap_url"],
    "public_nodes": cp["network"]["public_nodes"],
    "log_dir": cp["logging"]["log_dir"],
    "sections": cp.sections(),
}))
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(config_path(tmp.path()))
        .assert()
        .success();
    let v: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let si = &v["suite_isolation"];
    assert_eq!(si["mode"], "squashfs");
    assert_eq!(si["snapshot_name"], "clean_state");
    assert_eq!(si["snapshots_dir"], "../testing/snapshots");
    assert_eq!(si["squashfs_compression"], "none");
    assert_eq!(si["include"], "data");
    assert_eq!(v["auto_cleanup"], true);
    assert_eq!(v["auto_create_on_startup"], true);
    assert_eq!(v["keep"], 5);
    assert_eq!(v["cache_dir"], "../testing/cache");
    assert!(
        v["url"].as_str().unwrap().contains(":8079/")
            && v["url"].as_str().unwrap().ends_with("%2Fjson")
    );
    assert_eq!(v["public_nodes"], "node1,\nnode2");
    assert_eq!(v["log_dir"], "../testing/logs/harness");
    for section in ["network", "topology", "logging", "paths", "suite_isolation"] {
        assert!(
            v["sections"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s == section),
            "missing [{section}]"
        );
    }
    // The relative cache_dir resolves to where the node data was written.
    assert!(
        config_path(tmp.path())
            .parent()
            .unwrap()
            .join("../testing/cache/data/node2")
            .is_dir()
    );
}

#[test]
fn generation_is_deterministic_per_seed() {
    let (a, b, c) = (
        TempDir::new().unwrap(),
        TempDir::new().unwrap(),
        TempDir::new().unwrap(),
    );
    generate(a.path(), &opts(3, "8M")).unwrap();
    generate(b.path(), &opts(3, "8M")).unwrap();
    generate(
        c.path(),
        &GenerateOptions {
            seed: 7,
            ..opts(3, "8M")
        },
    )
    .unwrap();
    let (sa, sb, sc) = (
        treestate(a.path(), true),
        treestate(b.path(), true),
        treestate(c.path(), true),
    );
    assert_eq!(without_mtimes(&sa), without_mtimes(&sb));
    // Backdated timestamps come from the seed too.
    for (path, rec) in &sa {
        if mtime_ns(rec) < PAST_NS {
            assert_eq!(rec["mtime_ns"], sb[path]["mtime_ns"], "{path}");
        }
    }
    let db = "testing/cache/data/node1/lib/global_db/mdbx.dat";
    assert_ne!(
        sa[db]["sha256"], sc[db]["sha256"],
        "another seed must give other content"
    );
}

#[test]
fn suite_changes_match_its_report() {
    let tmp = TempDir::new().unwrap();
    generate(tmp.path(), &opts(3, "20M")).unwrap();
    let cache = cache_dir(tmp.path());
    let before = treestate(&cache, true);
    let report = run_suite(tmp.path(), &SuiteOptions::default()).unwrap();
    let after = treestate(&cache, true);
    assert_diff_matches_report(&before, &after, &report);

    let mut log_growth = 0;
    for n in 1..=3 {
        let p = |s: &str| format!("data/node{n}/{s}");
        let grown = |s: &str| {
            after[&p(s)]["size"].as_u64().unwrap() - before[&p(s)]["size"].as_u64().unwrap()
        };
        log_growth += grown("log/cellframe-node.log");
        assert!(
            grown(&format!(
                "lib/network/{}/main/0.dchaincell",
                sample::NETWORK
            )) > 0
        );
        let dat = p("lib/global_db/mdbx.dat");
        assert_eq!(
            after[&dat]["size"], before[&dat]["size"],
            "pages are rewritten in place"
        );
        assert_ne!(after[&dat]["sha256"], before[&dat]["sha256"]);
        let lck = p("lib/global_db/mdbx.lck");
        assert_ne!(after[&lck]["sha256"], before[&lck]["sha256"]);
        let wallet_dir = p("lib/wallet/");
        let new_wallets = report
            .changes
            .iter()
            .filter(|c| c.kind == ChangeKind::Added && c.path.starts_with(&wallet_dir))
            .count();
        assert!(
            (1..=2).contains(&new_wallets),
            "node{n} got {new_wallets} new wallets"
        );
    }
    assert!(
        (1 << 20..16 << 20).contains(&log_growth),
        "logs grew by {log_growth} bytes"
    );

    let with_ext = |kind: ChangeKind, ext: &str| {
        report
            .changes
            .iter()
            .filter(|c| c.kind == kind && c.path.extension() == Some(OsStr::new(ext)))
            .count()
    };
    assert_eq!(with_ext(ChangeKind::Added, "dcert"), 1);
    assert_eq!(with_ext(ChangeKind::Deleted, "dwallet"), 1);
    assert_eq!(report.count(ChangeKind::DirAdded), 1);
    let chmodded: Vec<&PathBuf> = report
        .changes
        .iter()
        .filter(|c| c.kind == ChangeKind::ModeChanged)
        .map(|c| &c.path)
        .collect();
    assert_eq!(chmodded.len(), 1);
    let key = chmodded[0].to_str().unwrap();
    assert_ne!(after[key]["mode"], before[key]["mode"]);
    assert_eq!(after[key]["sha256"], before[key]["sha256"]);
    assert!(report.bytes_written > 1 << 20);
    assert!(report.to_string().starts_with("suite: "));
}

#[test]
fn suite_is_deterministic_per_seed() {
    let (a, b) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    for dir in [&a, &b] {
        generate(dir.path(), &opts(2, "6M")).unwrap();
        run_suite(
            dir.path(),
            &SuiteOptions {
                seed: 9,
                intensity: 2,
            },
        )
        .unwrap();
    }
    assert_eq!(
        without_mtimes(&treestate(a.path(), true)),
        without_mtimes(&treestate(b.path(), true))
    );
}

#[test]
fn small_shape_makes_many_small_files_and_the_suite_churns_them() {
    let tmp = TempDir::new().unwrap();
    let o = GenerateOptions {
        shape: Shape::Small,
        files: 3000,
        ..opts(3, "12M")
    };
    let summary = generate(tmp.path(), &o).unwrap();
    let cache = cache_dir(tmp.path());
    let before = treestate(&cache, true);
    let small: Vec<&Value> = before
        .iter()
        .filter(|(k, _)| k.contains("/pages/") || k.contains("/cells/"))
        .map(|(_, v)| v)
        .collect();
    let files: Vec<&&Value> = small.iter().filter(|v| v["type"] == "file").collect();
    assert_eq!(files.len(), 3000);
    let bytes: u64 = files.iter().map(|v| v["size"].as_u64().unwrap()).sum();
    assert!(
        (3000..6000).contains(&(bytes / 3000)),
        "average small file is {} bytes",
        bytes / 3000
    );
    let target = 12u64 << 20;
    assert!(summary.data_bytes > target * 9 / 10 && summary.data_bytes < target * 6 / 5);
    assert!(summary.files >= 3000 && summary.files < 3100);

    let report = run_suite(tmp.path(), &SuiteOptions::default()).unwrap();
    let after = treestate(&cache, true);
    assert_diff_matches_report(&before, &after, &report);
    let in_store = |kind: ChangeKind| {
        report.changes.iter().any(|c| {
            let p = c.path.to_str().unwrap();
            c.kind == kind && (p.contains("/pages/") || p.contains("/cells/"))
        })
    };
    for kind in [
        ChangeKind::Added,
        ChangeKind::Modified,
        ChangeKind::Deleted,
        ChangeKind::DirRemoved,
    ] {
        assert!(in_store(kind), "no {kind:?} among the small files");
    }
}

#[test]
fn generate_refuses_to_overwrite_and_rejects_bad_options() {
    let tmp = TempDir::new().unwrap();
    fs::create_dir_all(tmp.path().join("testing/leftover")).unwrap();
    let err = generate(tmp.path(), &opts(1, "1M")).unwrap_err();
    assert!(err.is::<Refusal>(), "{err:#}");
    assert!(
        !config_path(tmp.path()).exists(),
        "a refused run must write nothing"
    );

    let tmp = TempDir::new().unwrap();
    fs::create_dir_all(tmp.path().join("testing")).unwrap();
    generate(tmp.path(), &opts(1, "1M")).expect("an empty testing/ is fine");
    fs::remove_dir_all(tmp.path().join("testing")).unwrap();
    assert!(
        generate(tmp.path(), &opts(1, "1M"))
            .unwrap_err()
            .is::<Refusal>(),
        "existing stage-env.cfg"
    );

    for bad in [
        GenerateOptions {
            nodes: 0,
            ..opts(1, "1M")
        },
        GenerateOptions {
            size: 0,
            ..opts(1, "1M")
        },
        GenerateOptions {
            mode: "filesystem\n[x]".into(),
            ..opts(1, "1M")
        },
        GenerateOptions {
            shape: Shape::Small,
            files: 0,
            ..opts(1, "1M")
        },
    ] {
        let tmp = TempDir::new().unwrap();
        assert!(
            generate(tmp.path(), &bad).unwrap_err().is::<Refusal>(),
            "{bad:?}"
        );
    }
    let tmp = TempDir::new().unwrap();
    assert!(
        run_suite(tmp.path(), &SuiteOptions::default()).is_err(),
        "suite needs a generated tree"
    );
}

#[test]
fn socket_is_created_under_a_root_too_deep_for_sun_path() {
    let tmp = TempDir::new().unwrap();
    let root = tmp.path().join("a-rather-long-directory-name-".repeat(4));
    let summary = generate(&root, &opts(1, "1M")).unwrap();
    let socket = cache_dir(&root).join("data/node1/run/node_cli");
    assert!(socket.as_os_str().as_bytes().len() > 108);
    assert!(
        fs::symlink_metadata(socket)
            .unwrap()
            .file_type()
            .is_socket()
    );
    assert_eq!(summary.nodes, 1);
}

fn stage_sample(args: &[&OsStr]) -> Assert {
    Command::new(env!("CARGO_BIN_EXE_stage-sample"))
        .args(args)
        .assert()
}

fn stdout(run: &Assert) -> String {
    String::from_utf8(run.get_output().stdout.clone()).unwrap()
}

#[test]
fn cli_generates_dirties_and_refuses() {
    let tmp = TempDir::new().unwrap();
    let root = tmp.path().as_os_str();
    // One line each on stdout: what was generated, what the suite did.
    for (args, first) in [
        (
            &[
                "generate".as_ref(),
                root,
                "--nodes=2".as_ref(),
                "--size=4M".as_ref(),
                "--seed=5".as_ref(),
            ][..],
            "generated 2 nodes",
        ),
        (
            &["suite".as_ref(), root, "--intensity=2".as_ref()],
            "suite: ",
        ),
    ] {
        let stdout = stdout(&stage_sample(args).success());
        assert_eq!(stdout.lines().count(), 1);
        assert!(stdout.starts_with(first), "{stdout}");
    }

    stage_sample(&["generate".as_ref(), root])
        .code(2)
        .stderr(contains("not empty"));
    stage_sample(&["generate".as_ref(), root, "--size=12Q".as_ref()]).code(2);

    let help = stdout(&stage_sample(&["--help".as_ref()]));
    assert!(
        help.contains("generate") && help.contains("suite"),
        "{help}"
    );
}

#[test]
fn treestate_records_every_entry_kind() {
    let tmp = TempDir::new().unwrap();
    let d = tmp.path();
    fs::write(d.join("a"), b"hello").unwrap();
    fs::create_dir(d.join("sub")).unwrap();
    fs::hard_link(d.join("a"), d.join("sub/b")).unwrap();
    std::os::unix::fs::symlink("a", d.join("link")).unwrap();
    fs::write(d.join(OsStr::from_bytes(b"bad\xffname")), b"x").unwrap();
    let sparse = fs::File::create(d.join("sparse")).unwrap();
    sparse.set_len(1 << 20).unwrap();
    drop(std::os::unix::net::UnixListener::bind(d.join("sock")).unwrap());
    let fifo = std::ffi::CString::new(d.join("fifo").as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }, 0);
    let path = std::ffi::CString::new(d.join("a").as_os_str().as_bytes()).unwrap();
    let (name, value) = (c"user.stagesnap", b"v1");
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let rc = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    let xattrs_supported = rc == 0;

    let s = treestate(d, true);
    assert_eq!(s["."]["type"], "dir");
    assert_eq!(s["a"]["type"], "file");
    assert_eq!(s["a"]["size"], 5);
    assert_eq!(
        s["a"]["sha256"],
        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    );
    assert_eq!(s["a"]["hardlink"], "a");
    assert_eq!(s["sub/b"]["hardlink"], "a");
    assert_eq!(s["link"]["type"], "symlink");
    assert_eq!(s["link"]["target"], "a");
    assert!(s["link"].get("hardlink").is_none());
    assert_eq!(s["bad\\xffname"]["size"], 1);
    assert_eq!(s["sparse"]["sparse"], true);
    assert_eq!(s["a"]["sparse"], false);
    assert_eq!(s["sock"]["type"], "socket");
    assert_eq!(s["fifo"]["type"], "fifo");
    assert_eq!(s["fifo"]["mode"], 0o640);
    assert!(s["sub"].get("hardlink").is_none());
    assert!(
        s.values()
            .all(|r| r.get("mtime_ns").is_some() && r.get("ino").is_none())
    );
    if xattrs_supported {
        assert_eq!(s["a"]["xattrs"]["user.stagesnap"], "7631");
        assert_eq!(s["sub/b"]["xattrs"]["user.stagesnap"], "7631");
    }
    let bare = treestate(d, false);
    assert!(bare["a"].get("sha256").is_none() && bare["a"]["size"] == 5);
}
