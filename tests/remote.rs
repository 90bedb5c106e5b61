//! The shared snapshot store (issue 16), against a real S3 server started here: moto_server
//! (`moto[server]` from PyPI; scripts/setup.sh installs it) on a free localhost port, and
//! against a `file://` directory. A TCP proxy between stagesnap and the server stands for
//! the network, so that cutting it mid-transfer leaves the server, and what it holds, to
//! check afterwards.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use assert_cmd::assert::OutputAssertExt;
use common::modes::Mode;
use common::{Env, Paused, assert_same_tree, treestate};

/// moto_server: the one setup.sh installs, else the one on PATH.
fn moto_program() -> PathBuf {
    let installed = Path::new("/opt/stagesnap-moto/bin/moto_server");
    if installed.exists() {
        installed.to_path_buf()
    } else {
        PathBuf::from("moto_server")
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(port: u16, child: &mut Child) {
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "moto_server ended ({status}) before it listened; is moto[server] installed (scripts/setup.sh)?"
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "moto_server did not listen on port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A moto S3 server of its own, stopped when dropped.
struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    fn start() -> Moto {
        Self::start_with(&[])
    }

    /// With moto's own settings in its environment.
    fn start_with(vars: &[(&str, &str)]) -> Moto {
        let port = free_port();
        let mut child = Command::new(moto_program())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(vars.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server runs (scripts/setup.sh installs moto[server])");
        wait_listening(port, &mut child);
        Moto { child, port }
    }

    /// Creates `bucket` (moto accepts unsigned requests).
    fn bucket(&self, bucket: &str) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP relay to a server, which [`Proxy::cut`] breaks: open connections reset, new ones
/// refused. The network between a runner and its store.
struct Proxy {
    port: u16,
    stop: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn to(server: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (stop2, open2) = (stop.clone(), open.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let upstream = TcpStream::connect(("127.0.0.1", server)).unwrap();
                let mut list = open2.lock().unwrap();
                list.push(client.try_clone().unwrap());
                list.push(upstream.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), upstream.try_clone().unwrap()),
                    (upstream, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Write);
                    });
                }
            }
        });
        Proxy { port, stop, open }
    }

    fn cut(&self) {
        self.stop.store(true, Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        // The listener goes with its thread; wait until connecting fails.
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

const BUCKET: &str = "fleet-snapshots";

/// A sample environment whose remote is `s3://fleet-snapshots/ci` at `port`.
fn env_on(port: u16) -> Env {
    let env = Env::sample(3, 24 << 20);
    point_at(&env, port);
    env
}

fn point_at(env: &Env, port: u16) {
    env.set("remote", &format!("s3://{BUCKET}/ci"));
    env.set("remote_endpoint", &format!("http://127.0.0.1:{port}"));
}

/// stagesnap with S3 credentials in its environment (moto takes any).
fn cmd(env: &Env) -> Command {
    let mut cmd = env.std_cmd();
    cmd.env("AWS_ACCESS_KEY_ID", "stagesnap-test")
        .env("AWS_SECRET_ACCESS_KEY", "stagesnap-test-secret");
    cmd
}

fn run(env: &Env, args: &[&str], code: i32) -> (String, String) {
    common::texts(&cmd(env).args(args).assert().code(code))
}

fn json(env: &Env, args: &[&str], code: i32) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    common::json_of(&cmd(env).args(all).assert().code(code))
}

/// `stagesnap ARGS` started, stopped at pause point `point`.
fn paused(env: &Env, args: &[&str], point: &str) -> Paused {
    let mut c = cmd(env);
    c.args(args);
    Paused::start(c, point)
}

/// The exit code and stderr of a run whose outcome a test weighs against another's.
fn outcome(assert: &assert_cmd::assert::Assert) -> (i32, String) {
    let code = assert.get_output().status.code().unwrap_or(-1);
    (code, common::texts(assert).1)
}

fn num(doc: &serde_json::Value, key: &str) -> u64 {
    doc[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in {doc}"))
}

/// A new `file://` archive (gone with the directory) and its url.
fn archive() -> (tempfile::TempDir, String) {
    let archive = tempfile::tempdir().unwrap();
    let url = format!("file://{}", archive.path().display());
    (archive, url)
}

/// A sample runner of `nodes` nodes and `size` bytes whose remote is `url`.
fn runner_on(url: &str, nodes: u32, size: u64) -> Env {
    let env = Env::sample(nodes, size);
    env.set("remote", url);
    env
}

/// A `file://` archive (gone with the directory returned first), its url, and the tree of
/// `clean_state` that a sample runner of `nodes` nodes and `size` bytes pushed to it.
fn pushed_to_an_archive(nodes: u32, size: u64) -> (tempfile::TempDir, String, String) {
    let (archive, url) = archive();
    let a = runner_on(&url, nodes, size);
    run(&a, &["create"], 0);
    let clean = treestate(&a.data());
    run(&a, &["push"], 0);
    (archive, url, clean)
}

/// The store's entries, for "nothing changed".
fn store_listing(env: &Env) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(env.snapshots())
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n != ".lock")
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn a_snapshot_pushed_from_one_runner_restores_exactly_on_another() {
    let moto = Moto::start();
    moto.bucket(BUCKET);
    let a = env_on(moto.port);
    run(&a, &["create"], 0);
    let clean = treestate(&a.data());
    let first = json(&a, &["push"], 0);
    // Only repeats within the data (runs of zeros, copies) are sent once.
    assert!(num(&first, "pieces_uploaded") <= num(&first, "pieces"));
    assert!(num(&first, "pieces_uploaded") > 0);

    // Another runner: its own generated network, dirtied by a suite, and an empty store.
    let b = env_on(moto.port);
    b.suite(7);
    let listed = json(&b, &["list", "--remote"], 0);
    assert_eq!(listed["snapshots"][0]["name"], "clean_state");
    // The pushing runner is gone: nothing of its paths may matter (the staleness guard
    // compares its certs and configs with the same files here).
    drop(a);
    let pulled = json(&b, &["pull"], 0);
    assert_eq!(num(&pulled, "pieces_local"), 0, "{pulled}");
    assert!(num(&pulled, "bytes_downloaded") > 0);
    run(&b, &["restore"], 0);
    assert_same_tree(&treestate(&b.data()), &clean);
    run(&b, &["verify"], 0);

    // Again: nothing moves.
    let again = json(&b, &["pull"], 0);
    assert_eq!(again["up_to_date"], true);
}

#[test]
fn a_second_push_after_a_suite_moves_only_the_changed_pieces() {
    let moto = Moto::start();
    moto.bucket(BUCKET);
    let a = env_on(moto.port);
    run(&a, &["create"], 0);
    let first = json(&a, &["push"], 0);
    a.suite(3);
    run(&a, &["create", "after", "--force"], 0);
    let after = treestate(&a.data());
    let second = json(&a, &["push", "after"], 0);
    let (sent1, sent2) = (
        num(&first, "bytes_uploaded"),
        num(&second, "bytes_uploaded"),
    );
    // The suite appends logs (new content, sent whole) and rewrites 64 scattered pages per
    // node, each of which costs one 64 KiB piece.
    let pages = 3 * 64 * (64 << 10);
    let grown = num(&second, "bytes") - num(&first, "bytes");
    eprintln!("first push sent {sent1} bytes, the second {sent2} (grown by {grown})");
    assert!(sent2 <= grown + pages, "{second}");
    // What the manifests show unchanged since the first push is not even read (here the
    // suite's pages land in most 1 MiB regions of these small databases).
    assert!(
        num(&second, "bytes_read") < num(&second, "bytes"),
        "{second}"
    );
    assert_eq!(num(&first, "bytes_read"), num(&first, "bytes"));
    assert!(sent2 * 2 < sent1, "{first}\n{second}");

    // A runner that has the first pulls only what the suite changed.
    let b = env_on(moto.port);
    run(&b, &["pull"], 0);
    let pulled = json(&b, &["pull", "after"], 0);
    assert!(
        num(&pulled, "pieces_local") * 2 > num(&pulled, "pieces"),
        "{pulled}"
    );
    assert!(num(&pulled, "bytes_downloaded") < sent1 / 2, "{pulled}");
    run(&b, &["restore", "after"], 0);
    assert_same_tree(&treestate(&b.data()), &after);
}

#[test]
fn two_pushes_of_one_name_at_once_leave_one_whole_version() {
    let moto = Moto::start();
    moto.bucket(BUCKET);
    let a = env_on(moto.port);
    let b = env_on(moto.port);
    b.suite(11);
    run(&a, &["create"], 0);
    run(&b, &["create"], 0);
    let (tree_a, tree_b) = (treestate(&a.data()), treestate(&b.data()));
    // Both read the remote (no clean_state yet) and stop just before writing their snapshot.
    let first = paused(&a, &["push"], "remote_push_snapshot");
    let second = paused(&b, &["push"], "remote_push_snapshot");
    let (code1, err1) = outcome(&first.finish());
    let (code2, err2) = outcome(&second.finish());
    let mut codes = [code1, code2];
    codes.sort();
    assert_eq!(codes, [0, 1], "{err1}\n{err2}");
    let loser = if code1 == 1 { &err1 } else { &err2 };
    assert!(loser.contains("another push of clean_state"), "{loser}");
    let winner = if code1 == 0 { &tree_a } else { &tree_b };

    let c = env_on(moto.port);
    run(&c, &["pull"], 0);
    run(&c, &["restore"], 0);
    assert_same_tree(&treestate(&c.data()), winner);
}

#[test]
fn a_network_cut_mid_push_leaves_the_remote_version_whole() {
    let moto = Moto::start();
    moto.bucket(BUCKET);
    let proxy = Proxy::to(moto.port);
    let a = env_on(proxy.port);
    run(&a, &["create"], 0);
    let clean = treestate(&a.data());
    run(&a, &["push"], 0);
    a.suite(5);
    run(&a, &["create", "--force"], 0);
    let pushing = paused(&a, &["push"], "remote_push_pack");
    proxy.cut();
    let (_, err) = common::texts(&pushing.finish().code(1));
    assert!(err.contains(&format!("127.0.0.1:{}", proxy.port)), "{err}");
    assert!(
        err.contains("clean_state there is unchanged") || err.contains("unchanged"),
        "{err}"
    );

    // Straight to the server: the previous version, whole.
    let b = env_on(moto.port);
    run(&b, &["pull"], 0);
    run(&b, &["restore"], 0);
    assert_same_tree(&treestate(&b.data()), &clean);
}

#[test]
fn a_network_cut_mid_first_push_ends_it() {
    let moto = Moto::start();
    moto.bucket(BUCKET);
    let proxy = Proxy::to(moto.port);
    // Many more packs than the uploads in flight and the queue hold.
    let a = Env::sample(2, 256 << 20);
    point_at(&a, proxy.port);
    run(&a, &["create"], 0);
    let pushing = paused(&a, &["push"], "remote_push_pack");
    proxy.cut();
    let (_, err) = common::texts(&pushing.finish().code(1));
    assert!(err.contains(&format!("127.0.0.1:{}", proxy.port)), "{err}");
    point_at(&a, moto.port);
    let listed = json(&a, &["list", "--remote"], 0);
    assert_eq!(listed["snapshots"].as_array().unwrap().len(), 0, "{listed}");
}

#[test]
fn a_network_cut_mid_pull_changes_nothing_and_the_next_pull_fetches_the_rest() {
    let moto = Moto::start();
    moto.bucket(BUCKET);
    let a = Env::sample(3, 64 << 20);
    point_at(&a, moto.port);
    run(&a, &["create"], 0);
    let clean = treestate(&a.data());
    let pushed = json(&a, &["push"], 0);
    let packs = num(&pushed, "packs_uploaded");
    assert!(packs >= 3, "{pushed}");

    let proxy = Proxy::to(moto.port);
    let b = env_on(proxy.port);
    let before = store_listing(&b);
    let pulling = paused(&b, &["pull"], "remote_pull_pack");
    // The other downloads go on while one waits here; then the network goes.
    std::thread::sleep(Duration::from_millis(500));
    proxy.cut();
    let (_, err) = common::texts(&pulling.finish().code(1));
    assert!(err.contains(&format!("127.0.0.1:{}", proxy.port)), "{err}");
    let after: Vec<String> = store_listing(&b)
        .into_iter()
        .filter(|n| n != ".pulled")
        .collect();
    assert_eq!(after, before);
    run(&b, &["list"], 0);

    point_at(&b, moto.port);
    let resumed = json(&b, &["pull"], 0);
    let fetched = num(&resumed, "packs_downloaded");
    assert!(fetched >= 1 && fetched < packs, "{resumed}");
    run(&b, &["restore"], 0);
    assert_same_tree(&treestate(&b.data()), &clean);
}

#[test]
fn a_remote_that_is_not_there_is_one_line_and_exit_3() {
    let moto = Moto::start();
    moto.bucket(BUCKET);
    let env = env_on(moto.port);
    run(&env, &["create"], 0);

    env.set("remote", "s3://no-such-bucket/ci");
    let (_, err) = run(&env, &["push"], 3);
    assert!(
        err.contains("bucket no-such-bucket does not exist"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    point_at(&env, free_port());
    let (_, err) = run(&env, &["pull"], 3);
    assert!(
        err.contains("cannot be reached") && err.contains("s3://fleet-snapshots/ci"),
        "{err}"
    );
    // restore of a name missing here: the remote is needed, and not there.
    let (_, err) = run(&env, &["restore", "elsewhere"], 3);
    assert!(err.contains("cannot be reached"), "{err}");
    assert!(!env.snapshots().join("elsewhere").exists());

    let out = env
        .std_cmd()
        .args(["push"])
        .env_remove("AWS_ACCESS_KEY_ID")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("AWS_ACCESS_KEY_ID"));

    env.set("remote", "ftp://somewhere/x");
    let (_, err) = run(&env, &["list"], 2);
    assert!(err.contains("remote"), "{err}");
}

#[test]
fn a_file_remote_round_trips_and_restore_pulls_what_is_missing() {
    let (_archive, url, clean) = pushed_to_an_archive(3, 16 << 20);

    let b = Env::sample(3, 16 << 20);
    b.set("remote", &url);
    b.set("auto_create_on_startup", "false");
    b.suite(9);
    // Not here: restore pulls it first.
    let (_, err) = run(&b, &["restore"], 0);
    assert!(err.contains("snapshot_pulled"), "{err}");
    assert_same_tree(&treestate(&b.data()), &clean);

    // A name the remote does not have either: as before, not found.
    run(&b, &["restore", "nowhere"], 4);

    run(&b, &["delete", "--remote", "clean_state"], 0);
    let listed = json(&b, &["list", "--remote"], 0);
    assert_eq!(listed["snapshots"].as_array().unwrap().len(), 0);
    run(&b, &["delete", "--remote", "clean_state"], 4);
}

#[test]
fn a_damaged_pack_is_named_and_nothing_changes() {
    let (archive, url, _) = pushed_to_an_archive(2, 8 << 20);
    let pack = std::fs::read_dir(archive.path().join("packs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&pack).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&pack, bytes).unwrap();

    let b = runner_on(&url, 2, 8 << 20);
    let before = store_listing(&b);
    let (_, err) = run(&b, &["pull"], 1);
    let name = pack.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        err.contains(&name) && err.contains("does not match"),
        "{err}"
    );
    assert_eq!(store_listing(&b), before);
}

/// Sets the mtime of every object under `dir` of a file:// archive two hours back: older
/// than the prune's grace period.
fn age(archive: &Path, dir: &str) {
    let Ok(objects) = std::fs::read_dir(archive.join(dir)) else {
        return;
    };
    for object in objects {
        let file = std::fs::File::options()
            .write(true)
            .open(object.unwrap().path())
            .unwrap();
        file.set_modified(std::time::SystemTime::now() - Duration::from_secs(2 * 3600))
            .unwrap();
    }
}

fn count(archive: &Path, dir: &str) -> usize {
    std::fs::read_dir(archive.join(dir)).map_or(0, |d| d.count())
}

#[test]
fn remote_prune_keeps_the_newest_and_removes_only_unreferenced_old_packs() {
    let (archive, url) = archive();
    let a = runner_on(&url, 2, 8 << 20);
    run(&a, &["create", "one"], 0);
    run(&a, &["push", "one"], 0);
    a.suite(2);
    run(&a, &["create", "two"], 0);
    run(&a, &["push", "two"], 0);
    let packs = || count(archive.path(), "packs");
    let before = packs();

    let dry = json(&a, &["prune", "--remote", "--keep", "1", "--dry-run"], 0);
    assert_eq!(dry["removed"], serde_json::json!(["one"]));
    let pruned = json(&a, &["prune", "--remote", "--keep", "1"], 0);
    assert_eq!(pruned["removed"], serde_json::json!(["one"]));
    // Every pack is younger than the grace period: a push may still be using it.
    assert_eq!(
        (
            pruned["packs_removed"].as_u64(),
            pruned["packs_condemned"].as_u64()
        ),
        (Some(0), Some(0))
    );
    assert_eq!(packs(), before);

    // "two" is whole on the remote.
    let b = runner_on(&url, 2, 8 << 20);
    run(&b, &["pull", "two"], 0);
    run(&b, &["verify", "two"], 0);

    // Packs two hours old, "two" gone: the packs only it used are condemned, those "one"
    // shares stay; what a push cut off before its index left (a pack no index lists) goes.
    run(&a, &["push", "one"], 0);
    run(&a, &["delete", "--remote", "two"], 0);
    let orphan = archive.path().join("packs").join("0".repeat(64));
    std::fs::write(&orphan, b"left by a push that died").unwrap();
    age(archive.path(), "packs");
    let pruned = json(&a, &["prune", "--remote"], 0);
    assert_eq!(num(&pruned, "packs_removed"), 1, "{pruned}");
    assert!(num(&pruned, "packs_condemned") >= 1, "{pruned}");
    assert!(!orphan.exists());
    assert_eq!(
        packs(),
        before,
        "a condemned pack went before the grace period"
    );
    // A prune within the grace period removes nothing more; one after it removes them.
    let again = json(&a, &["prune", "--remote"], 0);
    assert_eq!(num(&again, "packs_removed"), 0, "{again}");
    age(archive.path(), "condemned");
    let swept = json(&a, &["prune", "--remote"], 0);
    assert_eq!(
        num(&swept, "packs_removed"),
        num(&pruned, "packs_condemned"),
        "{swept}"
    );
    assert!(packs() < before);
    assert_eq!(count(archive.path(), "condemned"), 0);
    let c = runner_on(&url, 2, 8 << 20);
    run(&c, &["pull", "one"], 0);
    run(&c, &["verify", "one"], 0);
}

/// A push that counted on packs a prune then finds unused publishes a whole snapshot: the
/// prune only condemns them, and the prune after the grace period keeps the ones it needs.
#[test]
fn a_prune_during_a_push_never_removes_what_the_push_refers_to() {
    let (archive, url) = archive();
    let a = runner_on(&url, 2, 8 << 20);
    run(&a, &["create", "one"], 0);
    let clean = treestate(&a.data());
    let first = json(&a, &["push", "one"], 0);
    run(&a, &["delete", "--remote", "one"], 0);
    age(archive.path(), "packs");
    // The push finds every piece there, checks its packs, and stops before publishing.
    let pushing = paused(&a, &["push", "one"], "remote_push_snapshot");
    let pruned = json(&a, &["prune", "--remote"], 0);
    assert!(num(&pruned, "packs_condemned") >= 1, "{pruned}");
    pushing.finish().success();
    age(archive.path(), "condemned");
    let swept = json(&a, &["prune", "--remote"], 0);
    assert_eq!(num(&swept, "packs_removed"), 0, "{swept}");
    let b = runner_on(&url, 2, 8 << 20);
    run(&b, &["pull", "one"], 0);
    run(&b, &["restore", "one"], 0);
    assert_same_tree(&treestate(&b.data()), &clean);
    // Condemned packs are reused by no later push: this one uploads their pieces again.
    run(&a, &["delete", "--remote", "one"], 0);
    json(&a, &["prune", "--remote"], 0);
    let pushed = json(&a, &["push", "one"], 0);
    assert_eq!(
        num(&pushed, "pieces_uploaded"),
        num(&first, "pieces_uploaded"),
        "{pushed}"
    );
}

/// A pack whose pieces are mostly unneeded is repacked: the needed ones are copied into a new
/// pack, and the old pack goes after the grace period, freeing the rest.
#[test]
fn remote_prune_repacks_mostly_unused_packs() {
    let (archive, url) = archive();
    let a = runner_on(&url, 2, 8 << 20);
    run(&a, &["create", "one"], 0);
    run(&a, &["push", "one"], 0);
    // Every file but the smallest gets new content: "one"'s pack is mostly unneeded by "two".
    let mut files: Vec<(u64, PathBuf)> = walkdir::WalkDir::new(a.data())
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file() && e.metadata().unwrap().len() > 0)
        .map(|e| (e.metadata().unwrap().len(), e.into_path()))
        .collect();
    files.sort();
    for (len, path) in &files[1..] {
        let fresh: Vec<u8> = (0..*len).map(|i| (i * 7 + len) as u8 ^ 0x5c).collect();
        std::fs::write(path, fresh).unwrap();
    }
    run(&a, &["create", "two"], 0);
    let clean = treestate(&a.data());
    run(&a, &["push", "two"], 0);
    run(&a, &["delete", "--remote", "one"], 0);
    let bytes = || -> u64 {
        std::fs::read_dir(archive.path().join("packs"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    };
    let before = bytes();
    age(archive.path(), "packs");
    let pruned = json(&a, &["prune", "--remote"], 0);
    assert!(num(&pruned, "packs_repacked") >= 1, "{pruned}");
    assert!(num(&pruned, "bytes_repacked") > 0, "{pruned}");
    age(archive.path(), "condemned");
    let swept = json(&a, &["prune", "--remote"], 0);
    assert!(num(&swept, "packs_removed") >= 1, "{swept}");
    assert!(bytes() < before, "{} of {before}", bytes());
    let b = runner_on(&url, 2, 8 << 20);
    run(&b, &["pull", "two"], 0);
    run(&b, &["restore", "two"], 0);
    assert_same_tree(&treestate(&b.data()), &clean);
}

#[test]
fn a_pack_removed_while_a_push_counts_on_it_fails_the_push_and_publishes_nothing() {
    let archive = tempfile::tempdir().unwrap();
    let url = format!("file://{}", archive.path().display());
    let a = Env::sample(2, 8 << 20);
    a.set("remote", &url);
    run(&a, &["create", "one"], 0);
    run(&a, &["push", "one"], 0);
    let first: Vec<PathBuf> = std::fs::read_dir(archive.path().join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    a.suite(2);
    run(&a, &["create", "two"], 0);
    // Past reading the indexes (it reuses the first push's packs for what the suite left
    // alone), uploading the pieces the suite changed: a prune removes the first's packs.
    let pushing = paused(&a, &["push", "two"], "remote_push_pack");
    for pack in &first {
        std::fs::remove_file(pack).unwrap();
    }
    let (_, err) = common::texts(&pushing.finish().code(1));
    assert!(err.contains("was removed meanwhile"), "{err}");
    let listed = json(&a, &["list", "--remote"], 0);
    assert_eq!(listed["snapshots"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["snapshots"][0]["name"], "one");
}

#[test]
fn credentials_the_server_refuses_are_one_line_and_exit_3() {
    // moto checks credentials against its IAM users after the first N requests (here the
    // bucket's creation); the test's keys belong to none.
    let moto = Moto::start_with(&[("INITIAL_NO_AUTH_ACTION_COUNT", "1")]);
    moto.bucket(BUCKET);
    let env = env_on(moto.port);
    run(&env, &["create"], 0);
    let (_, err) = run(&env, &["push"], 3);
    assert!(err.contains("refused the credentials"), "{err}");
    assert!(err.contains("s3://fleet-snapshots/ci"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    run(&env, &["list", "--remote"], 3);
}

#[test]
fn a_squashfs_snapshot_is_pushed_from_its_image() {
    let (_archive, url) = archive();
    let a = runner_on(&url, 2, 8 << 20);
    a.set("mode", "squashfs");
    a.set("squashfs_compression", "zstd");
    run(&a, &["create"], 0);
    let clean = treestate(&a.data());
    let pushed = json(&a, &["push"], 0);
    assert_eq!(num(&pushed, "bytes_read"), num(&pushed, "bytes"));

    let b = runner_on(&url, 2, 8 << 20);
    b.set("mode", "squashfs");
    b.suite(3);
    run(&b, &["pull"], 0);
    run(&b, &["restore"], 0);
    assert_same_tree(&treestate(&b.data()), &clean);
}

/// A snapshot pushed to a `file://` archive from a filesystem-mode runner, restored on a
/// runner of `mode` that does not have it: the pull builds it as that mode's snapshot.
fn restored_from_an_archive_in(mode: &Mode) {
    let (_archive, url, clean) = pushed_to_an_archive(2, 8 << 20);

    let b = mode.env(2, 8 << 20);
    b.set("remote", &url);
    b.set("auto_create_on_startup", "false");
    b.suite(5);
    let (_, err) = run(&b, &["restore"], 0);
    assert!(err.contains("snapshot_pulled"), "{}: {err}", mode.label());
    assert_same_tree(&treestate(&b.data()), &clean);
    let listed = json(&b, &["list"], 0);
    assert_eq!(
        listed["snapshots"][0]["mode"],
        mode.name(),
        "{}",
        mode.label()
    );
    let payload = b.snapshots().join("clean_state/payload");
    let mut held: Vec<String> = std::fs::read_dir(&payload)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    held.sort();
    match mode {
        // The image and its fixups; the pulled tree is gone.
        Mode::Squashfs { .. } => assert_eq!(held, ["fixups", "image.sqfs"]),
        _ => assert_eq!(held, ["data"], "{}", mode.label()),
    }
    assert!(!b.snapshots().read_dir().unwrap().any(|e| {
        let name = e.unwrap().file_name();
        name.to_string_lossy().ends_with(".tree")
    }));
    // The pulled snapshot is whole as its mode checks it, and restores again.
    run(&b, &["verify"], 0);
    b.suite(6);
    run(&b, &["restore"], 0);
    assert_same_tree(&treestate(&b.data()), &clean);
}

#[test]
fn a_snapshot_only_in_an_archive_is_restored_as_a_squashfs_snapshot() {
    restored_from_an_archive_in(&Mode::squashfs("zstd", "extract"));
}

#[test]
fn a_snapshot_only_in_an_archive_is_restored_as_a_reflink_snapshot() {
    common::modes::require_root();
    restored_from_an_archive_in(&Mode::Reflink("xfs"));
}

#[test]
fn recreate_and_disabled_refuse_to_pull_before_anything_moves() {
    let (_archive, url, _) = pushed_to_an_archive(2, 4 << 20);
    let b = Env::sample(2, 4 << 20);
    b.set("remote", &url);
    for (mode, says) in [
        ("recreate", "recreate mode keeps no data"),
        ("disabled", "mode = disabled"),
    ] {
        let set = format!("mode={mode}");
        let (_, err) = run(&b, &["-s", &set, "pull"], 2);
        assert!(err.contains(says), "{mode}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(store_listing(&b).is_empty(), "{mode}");
    }
}

#[test]
fn push_and_pull_draw_a_bar_on_a_terminal() {
    let (_archive, url) = archive();
    let a = runner_on(&url, 2, 8 << 20);
    run(&a, &["create"], 0);
    let screen = a.on_terminal("push", &[]);
    // The bar, however briefly (a small push ends before it shows a share).
    assert!(
        screen.contains("push clean_state") && screen.contains("\x1b[2K"),
        "{screen}"
    );
    assert!(screen.contains("pushed clean_state"), "{screen}");
    let b = runner_on(&url, 2, 8 << 20);
    let screen = b.on_terminal("pull", &[]);
    assert!(screen.contains("pull clean_state"), "{screen}");
    assert!(screen.contains("pulled clean_state"), "{screen}");
    // Not where bars are not wanted.
    let (_, stderr) = run(&b, &["pull"], 0);
    assert!(!stderr.contains('\x1b'), "{stderr:?}");
}
