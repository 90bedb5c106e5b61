//! What stagesnap says is true: no input makes it panic, `status` right after `create` says
//! identical, a full check repairs what it finds, and checks it did not make are not claimed.

mod common;

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use common::{Env, LoopMount};
use predicates::str::contains;
use stage_sample::GenerateOptions;
use stagesnap::ini::Ini;
use stagesnap::output::table;

/// A small seeded generator (xorshift64*): the same cases on every run, no extra crate.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }

    /// A string of `n` pieces, biased towards what INI and tables treat specially.
    fn text(&mut self, n: usize) -> String {
        const PIECES: &[&str] = &[
            "[", "]", "=", ":", "%", "%%", "%(", ")s", "%(a)s", "%(b)s", "%(x)s", "\n", "\r",
            "\r\n", " ", "\t", "#", ";", "\u{feff}", "a", "b", "x", "DEFAULT", "[a]", "[b]",
            "a = ", "b: ", "é", "中", "🦀", "\u{301}", "\0", "\u{7f}",
        ];
        let mut s = String::new();
        for _ in 0..n {
            match self.below(40) {
                0 => s.push_str(&"v".repeat(70_000)),
                1 => s.push(char::from_u32(self.below(0x11_0000) as u32).unwrap_or('?')),
                _ => s.push_str(self.pick(PIECES)),
            }
        }
        s
    }
}

#[test]
fn no_ini_text_makes_the_reader_panic() {
    let mut g = Gen(0x5eed_1234_abcd_0001);
    for _ in 0..4000 {
        let n = g.below(60);
        let text = g.text(n);
        let Ok(ini) = Ini::parse(&text) else {
            continue;
        };
        for section in ini.sections().into_iter().chain(["DEFAULT"]) {
            for key in ini.keys(section) {
                let _ = ini.get(section, key);
                let _ = ini.get_raw(section, key);
            }
        }
    }
}

#[test]
fn interpolation_nesting_past_its_limit_is_an_error_not_a_crash() {
    // Each value refers twice to the next: deep and wide at once.
    let mut text = String::from("[s]\n");
    for i in 0..40 {
        text.push_str(&format!("k{i} = %(k{})s%(k{})s\n", i + 1, i + 1));
    }
    text.push_str("k40 = end\nloop = %(loop)s\n");
    let ini = Ini::parse(&text).unwrap();
    assert!(ini.get("s", "k0").unwrap().is_err());
    assert!(ini.get("s", "loop").unwrap().is_err());
    assert_eq!(ini.get("s", "k35").unwrap().unwrap().text, "end".repeat(32));
}

#[test]
fn no_cells_make_the_table_printer_panic() {
    let mut g = Gen(0x5eed_1234_abcd_0002);
    for _ in 0..2000 {
        let headers: Vec<String> = (0..g.below(5)).map(|_| g.text(2)).collect();
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        let rows: Vec<Vec<String>> = (0..g.below(4))
            .map(|_| (0..g.below(6)).map(|_| g.text(3)).collect())
            .collect();
        let out = table(&headers, &rows);
        assert!(out.ends_with('\n') || headers.is_empty() && rows.is_empty());
    }
}

#[test]
fn table_columns_line_up_past_65535_characters() {
    let long = "é".repeat(70_000);
    let out = table(
        &["A", "B"],
        &[vec![long.clone(), "x".into()], vec!["y".into(), "z".into()]],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[1], format!("{long}  x"));
    assert_eq!(lines[2].chars().count(), 70_000 + 3);
}

#[test]
fn config_shows_a_value_of_70000_characters() {
    let env = Env::sample(1, 64 << 10);
    let long = "p".repeat(70_000);
    env.set("fingerprint", &long);
    let (text, _) = env.run(&["config"], 0);
    assert!(text.contains(&format!("{long}  ")), "the column is padded");
    let doc = env.json(&["config"], 0);
    let fingerprint = common::config_setting(&doc, "fingerprint");
    // Shown as an absolute path; no assert_eq!, whose message would print it.
    assert!(fingerprint["value"].as_str().unwrap().ends_with(&long));
}

const KB: u64 = 1 << 10;

fn allocated(path: &Path) -> u64 {
    fs::metadata(path).unwrap().blocks() * 512
}

/// 512 KiB written in full, 256 KiB of it zeros (an mdbx file's free pages; a whole squashfs
/// block among them): dense.
fn write_dense(path: &Path) -> Vec<u8> {
    let mut bytes = vec![0x5a; 512 * KB as usize];
    bytes[128 * KB as usize..384 * KB as usize].fill(0);
    fs::write(path, &bytes).unwrap();
    assert!(
        allocated(path) >= 512 * KB,
        "the test's dense file is dense"
    );
    bytes
}

/// 1 MiB with data only in its first and sixth 64 KiB: sparse.
fn write_sparse(path: &Path) -> Vec<u8> {
    let f = fs::File::create(path).unwrap();
    f.set_len(1 << 20).unwrap();
    let mut bytes = vec![0u8; 1 << 20];
    for at in [0, 320 * KB] {
        f.write_all_at(&[0xa5; 64 * KB as usize], at).unwrap();
        bytes[at as usize..(at + 64 * KB) as usize].fill(0xa5);
    }
    assert!(
        allocated(path) < 1 << 20,
        "the test's sparse file is sparse"
    );
    bytes
}

#[test]
fn filesystem_snapshots_keep_dense_files_dense_and_sparse_files_sparse() {
    sparseness_round_trips(&Env::sample(2, 256 << 10), "filesystem");
}

/// mksquashfs stores blocks of zeros as holes too.
#[test]
fn squashfs_snapshots_keep_dense_files_dense_and_sparse_files_sparse() {
    sparseness_round_trips(&Env::sample(2, 256 << 10), "squashfs");
}

/// On XFS, copy_file_range clones, and a clone of the copy has the copy's holes.
#[test]
fn filesystem_snapshots_keep_dense_files_dense_on_xfs() {
    let xfs = LoopMount::new("xfs");
    sparseness_round_trips(
        &Env::with_options_in(
            &xfs.mnt,
            GenerateOptions {
                nodes: 2,
                size: 256 << 10,
                ..Default::default()
            },
        ),
        "filesystem",
    );
}

fn sparseness_round_trips(env: &Env, mode: &str) {
    env.set("mode", mode);
    let (dense, sparse) = (
        env.data().join("node1/dense.db"),
        env.data().join("node1/sparse.db"),
    );
    let dense_bytes = write_dense(&dense);
    let sparse_bytes = write_sparse(&sparse);
    env.run(&["create", "base"], 0);

    // The copy's holes are rsync -S's, not the data's: nothing differs and nothing is written.
    assert_eq!(env.json(&["status", "base"], 0)["identical"], true);
    let restored = env.json(&["restore", "base"], 0);
    assert_eq!(restored["files_rewritten"], 0, "{restored}");
    assert_eq!(restored["bytes_rewritten"], 0, "{restored}");

    // A suite rewrites a page of each, then the restore repairs them in place.
    for path in [&dense, &sparse] {
        let f = fs::OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(&[0xee; 4096], 4096).unwrap();
    }
    env.run(&["restore", "base"], 0);
    assert!(fs::read(&dense).unwrap() == dense_bytes && fs::read(&sparse).unwrap() == sparse_bytes);
    assert!(allocated(&dense) >= 512 * KB, "the dense file stayed dense");
    assert!(
        allocated(&sparse) < 1 << 20,
        "the sparse file stayed sparse"
    );

    // Deleted, both come back as they were: the dense one written in full.
    fs::remove_file(&dense).unwrap();
    fs::remove_file(&sparse).unwrap();
    env.run(&["restore", "base"], 0);
    assert!(fs::read(&dense).unwrap() == dense_bytes && fs::read(&sparse).unwrap() == sparse_bytes);
    assert!(
        allocated(&dense) >= 512 * KB,
        "the dense file came back dense"
    );
    assert!(
        allocated(&sparse) < 1 << 20,
        "the sparse file came back sparse"
    );
    assert_eq!(env.json(&["status", "base"], 0)["identical"], true);
}

/// The largest regular file below node1 and its bytes.
fn some_file(env: &Env) -> (PathBuf, Vec<u8>) {
    let path = common::largest_file(&env.data().join("node1"));
    let bytes = fs::read(&path).unwrap();
    assert!(bytes.len() > 4096);
    (path, bytes)
}

/// Flips a byte in the middle of `path`, keeping its size and mtime to the nanosecond.
fn change_bytes_quietly(path: &Path) {
    let st = fs::metadata(path).unwrap();
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let at = st.len() / 2;
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[!b[0]], at).unwrap();
    drop(f);
    common::set_mtime(path, st.mtime(), st.mtime_nsec());
}

/// A check by content finds bytes changed under the same size and mtime, and a restore by
/// content repairs them: `restore --verify full` succeeds, and so does `run` with
/// `restore_verify = full`, which otherwise refused every time.
fn full_verify_repairs(env: &Env) {
    env.run(&["create", "base"], 0);
    let (path, bytes) = some_file(env);

    change_bytes_quietly(&path);
    assert_eq!(
        env.json(&["status", "base"], 0)["identical"],
        true,
        "metadata cannot tell"
    );
    let status = env.json(&["status", "base", "--full"], 1);
    assert_eq!(status["differences"], 1, "{status}");
    let restored = env.json(&["restore", "base", "--verify", "full"], 0);
    assert_eq!(restored["files_rewritten"], 1, "{restored}");
    assert!(fs::read(&path).unwrap() == bytes, "repaired");
    assert_eq!(
        env.json(&["status", "base", "--full"], 0)["identical"],
        true
    );

    change_bytes_quietly(&path);
    env.set("restore_verify", "full");
    env.run(&["run", "--snapshot", "base", "--", "true"], 0);
    assert!(fs::read(&path).unwrap() == bytes, "repaired by run");
}

#[test]
fn filesystem_full_verify_repairs_what_it_finds() {
    let env = Env::sample(2, 256 << 10);
    env.set("mode", "filesystem");
    full_verify_repairs(&env);
}

#[test]
fn squashfs_full_verify_repairs_what_it_finds() {
    let env = Env::sample(2, 256 << 10);
    env.set("mode", "squashfs");
    full_verify_repairs(&env);
}

/// reflink's manifest holds no hashes: a check by content hashes the snapshot's clones, so
/// `status --full` does not say identical without having compared the bytes.
#[test]
fn reflink_full_checks_compare_content() {
    let xfs = LoopMount::new("xfs");
    let env = Env::with_options_in(
        &xfs.mnt,
        GenerateOptions {
            nodes: 2,
            size: 256 << 10,
            ..Default::default()
        },
    );
    env.set("mode", "reflink");
    full_verify_repairs(&env);
}

/// A sample whose `fingerprint` setting is `pattern` (`{certs}` standing for its certs
/// folder), with `files` files in certs/ and a symlink there back to certs/ itself.
fn fingerprinted(files: usize, pattern: &str) -> Env {
    let env = Env::sample(1, 64 << 10);
    let certs = env.cache().join("certs");
    fs::create_dir_all(&certs).unwrap();
    for i in 0..files {
        fs::write(certs.join(format!("{i}.pem")), i.to_string()).unwrap();
    }
    std::os::unix::fs::symlink(".", certs.join("loop")).unwrap();
    env.set(
        "fingerprint",
        &pattern.replace("{certs}", &certs.display().to_string()),
    );
    env
}

fn fingerprinted_files(env: &Env, name: &str) -> usize {
    let meta: serde_json::Value =
        serde_json::from_slice(&fs::read(env.snapshots().join(name).join("meta.json")).unwrap())
            .unwrap();
    meta["fingerprint"]["files"].as_object().unwrap().len()
}

#[test]
fn fingerprint_patterns_do_not_follow_symlinked_directories() {
    let env = fingerprinted(50, "{certs}/** {certs}/*.pem {certs}");
    let files = walkdir::WalkDir::new(env.cache().join("certs"))
        .into_iter()
        .filter(|e| e.as_ref().unwrap().file_type().is_file())
        .count();
    assert!(files >= 50);
    env.run(&["create", "base"], 0);
    assert_eq!(fingerprinted_files(&env, "base"), files);
}

#[test]
fn a_fingerprint_pattern_past_10000_files_is_refused_by_name() {
    let env = fingerprinted(10_001, "{certs}/*.pem");
    let (_, stderr) = env.run(&["create", "base"], 2);
    let pattern = format!("{}/*.pem", env.cache().join("certs").display());
    assert!(
        stderr.contains(&format!(
            "fingerprint pattern {pattern} names more than 10000 files"
        )),
        "{stderr}"
    );
    assert!(
        !env.snapshots().join("base").exists(),
        "nothing was created"
    );
}

#[test]
fn sigterm_stops_a_fingerprint_expansion() {
    let env = fingerprinted(50, "{certs}/**");
    let paused = env.paused(&["create", "base"], "fingerprint_walk");
    // SAFETY: plain kill(2) on a child of this test.
    assert_eq!(unsafe { libc::kill(paused.pid() as i32, libc::SIGTERM) }, 0);
    paused.finish().code(130);
    assert!(
        !env.snapshots().join("base").exists(),
        "nothing was created"
    );
}

#[test]
fn timeout_stops_a_fingerprint_expansion() {
    let env = fingerprinted(50, "{certs}/**");
    let paused = env.paused(&["--timeout", "1", "create", "base"], "fingerprint_walk");
    // Past the deadline while the walk is held, so the walk's next step is past it.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    paused
        .finish()
        .code(1)
        .stderr(contains("timed out after 1 s"));
}
