//! Containers on a real docker engine: quiescing, recreate mode, the restore fallback and the
//! docker checks, the way users run a stage network. Needs a running dockerd and the local
//! image scripts/setup.sh builds; without them these tests fail rather than skip.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use assert_cmd::assert::OutputAssertExt;
use common::docker::{DATA_PATH, Net, docker};
use common::{Env, texts, which};
use predicates::BoxPredicate;
use predicates::prelude::{PredicateBooleanExt, PredicateBoxExt};
use predicates::str::contains;

const MB: u64 = 1 << 20;
const LOG: &str = "./log/cellframe-node.log";

fn sh(script: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .env("LC_ALL", "C")
        .assert()
        .success();
    texts(&out).0
}

/// `path  md5` of every regular file below the current directory, sorted by path; the same
/// script runs on the host and in the containers' busybox.
const HASH_FILES: &str = "find . -type f | LC_ALL=C sort | while read -r f; do md5sum \"$f\"; done";

fn without_log(listing: &str) -> String {
    listing
        .lines()
        .filter(|l| !l.ends_with(LOG))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

/// The end-to-end flow with quiesce = pause for create and quiesce = stop (graceful) for
/// restore.
#[test]
fn containers_see_exactly_the_snapshot_after_pause_create_and_stop_restore() {
    end_to_end(true);
}

/// The same with the default configuration (quiesce = auto, restore_stop = kill), which
/// pauses for create, kills for restore and starts no container before every node is
/// restored.
#[test]
fn by_default_create_pauses_and_restore_kills_restores_then_starts_the_containers() {
    end_to_end(false);
}

/// Text holding each of `events` for each of `names` (`{name}` in an event stands for it).
fn for_each(names: &[String], events: &[&str]) -> BoxPredicate<str> {
    let mut all = predicates::constant::always().boxed();
    for name in names {
        for event in events {
            all = all.and(contains(event.replace("{name}", name))).boxed();
        }
    }
    all
}

/// Snapshot the running network with the nodes paused, let a suite change data inside the
/// containers, restore with the nodes stopped, and check from inside each container that it
/// sees exactly the snapshot's files. `explicit`: quiesce and restore_stop set, else defaults.
fn end_to_end(explicit: bool) {
    let net = Net::start(3);
    let env = &net.env;
    if explicit {
        env.set("quiesce", "pause");
    }
    env.assert(&["create"]).success().stderr(for_each(
        &net.names,
        &[
            "container_paused name={name} ",
            "container_unpaused name={name} ",
        ],
    ));
    assert_eq!(net.states(), ["running"; 3]);

    // What each node's snapshot holds, hashed on the host side.
    let snapshot: Vec<String> = (0..3)
        .map(|n| {
            sh(&format!(
                "cd '{}' && {HASH_FILES}",
                net.snapshot_node("clean_state", n).display()
            ))
        })
        .collect();
    let snapshot_logs: Vec<Vec<u8>> = (0..3)
        .map(|n| std::fs::read(net.snapshot_node("clean_state", n).join(LOG)).unwrap())
        .collect();

    // The suite: wallets added, database pages rewritten in place, a certificate deleted,
    // a chain cell grown, a new directory, all by the node containers themselves.
    for name in &net.names {
        net.exec(
            name,
            "echo suite > lib/wallet/suite.dwallet \
             && dd if=/dev/urandom of=lib/global_db/mdbx.dat bs=4096 count=2 seek=1 conv=notrunc 2>/dev/null \
             && rm lib/ca/validator-*.dcert \
             && echo block >> lib/network/stagenet/main/0.dchaincell \
             && mkdir -p lib/extra && echo new > lib/extra/file",
        );
    }
    for (i, name) in net.names.iter().enumerate() {
        assert_ne!(
            without_log(&net.exec(name, HASH_FILES)),
            without_log(&snapshot[i])
        );
    }

    let verb = if explicit {
        env.set("quiesce", "stop");
        env.set("restore_stop", "stop");
        "stop"
    } else {
        "kill"
    };
    let before = net.started_at();
    // Quiesced, so no warning about running containers.
    env.assert(&["restore"])
        .success()
        .stderr(for_each(
            &net.names,
            &[
                &format!("container_stopped name={{name}} verb=\"{verb}\" "),
                "container_started name={name} ",
            ],
        ))
        .stderr(contains("containers_running").not());
    assert_eq!(net.states(), ["running"; 3]);
    let after = net.started_at();
    for i in 0..3 {
        assert_ne!(before[i], after[i], "{} was not restarted", net.names[i]);
    }
    // No node started before the last change of the restore, to any node: the host's clock
    // stamps both. (The log is left out: the restarted nodes append to it.)
    let last_change: f64 = sh(&format!(
        "find '{}' ! -name cellframe-node.log -printf '%C@\\n' | sort -g | tail -1",
        env.data().display()
    ))
    .trim()
    .parse()
    .unwrap();
    for (name, at) in net.names.iter().zip(&after) {
        let started: f64 = sh(&format!("date -d '{at}' +%s.%N"))
            .trim()
            .parse()
            .unwrap();
        assert!(
            started > last_change,
            "{name} started at {at}, before the restore's last change ({last_change})"
        );
    }

    // The nodes log again from their restart on, so the log is the snapshot's followed by
    // new ticks only: that also proves they write into the restored file.
    std::thread::sleep(Duration::from_millis(500));
    for (i, name) in net.names.iter().enumerate() {
        assert_eq!(
            without_log(&net.exec(name, HASH_FILES)),
            without_log(&snapshot[i]),
            "{name}"
        );
        let seen = docker(&[
            "exec",
            name,
            "cat",
            &format!("{DATA_PATH}/log/cellframe-node.log"),
        ])
        .into_bytes();
        assert!(
            seen.starts_with(&snapshot_logs[i]),
            "{name}: the log is not the snapshot's"
        );
        let since = String::from_utf8(seen[snapshot_logs[i].len()..].to_vec()).unwrap();
        assert!(
            !since.is_empty() && since.lines().all(|l| l == "tick"),
            "{name}: {since:?}"
        );
    }
}

/// Does `path` (`./lib/...`, as find prints it) match the default recreate_paths
/// (`lib/wallet/*.dwallet lib/global_db/* lib/network/*/*/* log/*.log`)?
fn default_recreate_match(path: &str) -> bool {
    let parts: Vec<&str> = path.trim_start_matches("./").split('/').collect();
    match parts.as_slice() {
        ["lib", "wallet", f] => f.ends_with(".dwallet"),
        ["lib", "global_db", _] => true,
        ["lib", "network", _, _, _] => true,
        ["log", f] => f.ends_with(".log"),
        _ => false,
    }
}

#[test]
fn recreate_removes_exactly_recreate_paths_and_restarts() {
    let net = Net::start(2);
    let env = &net.env;
    env.set("mode", "recreate");
    // Quiescing does not apply to recreate, which needs the containers running.
    env.set("quiesce", "stop");
    let created = env.json(&["create"], 0);
    assert_eq!(created["mode"], "recreate");
    let payload = env.snapshots().join("clean_state/payload");
    assert_eq!(
        std::fs::read_dir(&payload).unwrap().count(),
        0,
        "recreate stored data"
    );

    // What a suite leaves: matches (also with a space and a subdirectory) and near misses.
    for name in &net.names {
        net.exec(
            name,
            "echo w > 'lib/wallet/with space.dwallet' && echo k > lib/wallet/notes.txt \
             && mkdir -p lib/global_db/sub && echo x > lib/global_db/sub/x \
             && echo o > log/other.txt && echo c > lib/ca/extra.dcert",
        );
    }
    let listings: Vec<String> = net
        .names
        .iter()
        .map(|n| net.exec(n, "find . | LC_ALL=C sort"))
        .collect();
    let ca: Vec<String> = net
        .names
        .iter()
        .map(|n| net.exec(n, "md5sum lib/ca/*"))
        .collect();
    let before = net.started_at();

    let (stdout, log) = env.run(&["restore", "--json"], 0);
    let restored: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(log.contains("quiesce_skipped"), "{log}");
    assert_eq!(net.states(), ["running"; 2]);
    let after = net.started_at();
    let mut removed = 0;
    for (i, name) in net.names.iter().enumerate() {
        assert_ne!(before[i], after[i], "{name} was not restarted");
        let expected: Vec<&str> = listings[i]
            .lines()
            .filter(|p| {
                // Gone: what matches, and everything inside it.
                let parents = std::iter::successors(Some(Path::new(*p)), |p| p.parent());
                !parents
                    .map(|p| p.to_str().unwrap())
                    .any(default_recreate_match)
            })
            .collect();
        removed += listings[i]
            .lines()
            .filter(|p| default_recreate_match(p))
            .count();
        // The restarted node writes a fresh log, with ticks only.
        let seen = net.exec(name, "find . | LC_ALL=C sort");
        let seen: Vec<&str> = seen.lines().filter(|p| *p != LOG).collect();
        assert_eq!(seen, expected, "{name}");
        let log = net.exec(name, "cat log/cellframe-node.log 2>/dev/null || true");
        assert!(
            log.lines().all(|l| l == "tick"),
            "{name}: the old log survived"
        );
        assert_eq!(
            net.exec(name, "md5sum lib/ca/*"),
            ca[i],
            "{name}: lib/ca changed"
        );
    }
    assert_eq!(restored["entries_deleted"], removed as u64);
}

#[test]
fn recreate_fails_clearly_on_a_stopped_container_and_cleans_nothing() {
    let net = Net::start(2);
    let env = &net.env;
    env.set("mode", "recreate");
    env.run(&["create"], 0);
    let stopped = &net.names[1];
    docker(&["stop", stopped]);
    net.exec(&net.names[0], "echo w > lib/wallet/suite.dwallet");
    let listing = net.exec(&net.names[0], "find lib | LC_ALL=C sort");

    env.assert(&["restore"]).code(1).stderr(
        contains(format!(
            "container {stopped} (node data/node2) is exited, not running"
        ))
        .and(contains("nothing was cleaned")),
    );
    assert_eq!(net.exec(&net.names[0], "find lib | LC_ALL=C sort"), listing);
    assert_eq!(net.states(), ["running", "exited"]);
}

#[test]
fn failed_restore_falls_back_to_recreate_and_exits_6() {
    let net = Net::start(2);
    let env = &net.env;
    env.set("restore_fallback", "recreate");
    env.run(&["create"], 0);
    // A damaged snapshot: the check before the restore fails.
    std::fs::remove_dir_all(env.snapshots().join("clean_state/payload/data")).unwrap();
    for name in &net.names {
        net.exec(name, "echo w > lib/wallet/suite.dwallet");
    }

    let (stdout, stderr) = env.run(&["restore", "--json"], 6);
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(doc["exit_code"], 6);
    assert_eq!(doc["fallback"]["method"], "recreate");
    assert!(
        doc["fallback"]["error"]
            .as_str()
            .unwrap()
            .contains("damaged"),
        "{doc}"
    );
    assert!(doc["entries_deleted"].as_u64().unwrap() > 0, "{doc}");
    assert!(stderr.contains("restore_fallback"), "{stderr}");
    for name in &net.names {
        assert_eq!(
            net.exec(name, "ls lib/wallet"),
            "",
            "{name} was not cleaned"
        );
    }
    assert_eq!(net.states(), ["running"; 2]);

    env.assert(&["restore"])
        .code(6)
        .stdout(contains("fell back to recreate").and(contains("NOT the snapshot's")));
}

/// Makes `path` immutable (`chattr +i`) until dropped: even root then cannot replace or
/// rewrite it, a fault the restore really meets.
struct Immutable(std::path::PathBuf);

impl Immutable {
    fn new(path: std::path::PathBuf) -> Immutable {
        sh(&format!("chattr +i '{}'", path.display()));
        Immutable(path)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

#[test]
fn quiesced_containers_run_again_after_a_failed_restore_and_others_stay_as_they_were() {
    let net = Net::start(3);
    let env = &net.env;
    env.run(&["create"], 0);
    docker(&["stop", &net.names[2]]);
    // The fault: a file the suite changed that the restore cannot rewrite.
    let stuck = env.data().join("node1/lib/global_db/mdbx.lck");
    std::fs::write(&stuck, b"changed by the suite").unwrap();
    let _immutable = Immutable::new(stuck);
    for how in ["stop", "pause"] {
        env.set("quiesce", how);
        let restore = env
            .assert(&["restore"])
            .append_context("quiesce", how)
            .code(1)
            .stderr(contains("mdbx.lck"));
        let (_, stderr) = texts(&restore);
        for event in ["container_stopped", "container_paused", "container_started"] {
            let touched = format!("{event} name={} ", net.names[2]);
            assert!(
                !stderr.contains(&touched),
                "{how} touched the stopped container: {stderr}"
            );
        }
        assert_eq!(
            net.states(),
            ["running", "running", "exited"],
            "quiesce = {how}"
        );
        if how == "pause" {
            assert!(
                stderr.contains("quiesce_pause_restore"),
                "no warning about open files: {stderr}"
            );
        }
    }
}

#[test]
fn ctrl_c_during_a_quiesced_restore_starts_the_containers_again() {
    let net = Net::start(2);
    let env = &net.env;
    env.set("mode", "squashfs");
    env.set("squashfs_restore", "mount");
    env.run(&["create"], 0);
    env.set("quiesce", "stop");
    // The delay: a `mount` that waits before mounting, so Ctrl-C lands mid-restore.
    let real = which("mount");
    let path = env.fake_path(&[("mount", &format!("sleep 5\nexec {} \"$@\"", real.display()))]);
    let mut child = env.spawn(&["restore"], Some(&path));
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    while count(&seen, "container_stopped") < net.names.len() {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "stagesnap ended early: {seen}"
        );
        seen.push_str(&line);
    }
    assert_eq!(net.states(), ["exited"; 2]);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert_eq!(status.code(), Some(130), "{seen}{rest}");
    assert_eq!(net.states(), ["running"; 2], "{seen}{rest}");
}

/// A PATH with rsync but no docker.
fn path_without_docker(dir: &Path) -> String {
    std::os::unix::fs::symlink(sh("command -v rsync").trim(), dir.join("rsync")).unwrap();
    dir.display().to_string()
}

#[test]
fn every_setting_that_needs_docker_fails_fast_without_the_cli() {
    let env = Env::sample(2, MB);
    let bin = tempfile::tempdir().unwrap();
    let path = path_without_docker(bin.path());
    for (key, value, command) in [
        ("mode", "recreate", "create"),
        ("quiesce", "pause", "create"),
        ("quiesce", "stop", "restore"),
        ("restore_fallback", "recreate", "restore"),
    ] {
        env.cmd()
            .env("PATH", &path)
            .args(["--set", &format!("{key}={value}"), command])
            .assert()
            .code(3)
            .stderr(contains("Install docker: sudo apt install docker.io"));
    }
    assert!(
        !env.snapshots().join("clean_state").exists(),
        "something was created"
    );
    // Plain filesystem use never needs docker.
    env.cmd()
        .env("PATH", &path)
        .arg("create")
        .assert()
        .success();
}

#[test]
fn an_unreachable_daemon_is_exit_3_naming_the_socket() {
    let env = Env::sample(2, MB);
    for (key, value, command) in [
        ("mode", "recreate", "restore"),
        ("quiesce", "stop", "create"),
        ("restore_fallback", "recreate", "restore"),
        ("quiesce", "pause", "doctor"),
    ] {
        let (stdout, stderr) = texts(
            &env.cmd()
                .env("DOCKER_HOST", "unix:///nonexistent.sock")
                .args(["--set", &format!("{key}={value}"), command])
                .assert()
                .code(3),
        );
        let all = stdout + &stderr;
        assert!(
            all.contains("unix:///nonexistent.sock") && all.contains("daemon must be running"),
            "{all}"
        );
    }
}

/// The quiet probe behind quiesce = auto (and the warning of quiesce = none) gives up at once
/// when nothing listens at the daemon's unix socket: starting the docker CLI, which could not
/// reach a daemon either, cost ~25 ms of every create and restore.
#[test]
fn no_daemon_at_the_socket_means_no_docker_cli_run() {
    let env = Env::sample(2, MB);
    env.run(&["create"], 0);
    let restore_log = |docker_host: &str| {
        let restore = env
            .cmd()
            .env("DOCKER_HOST", docker_host)
            .args(["-v", "restore"])
            .assert()
            .success();
        texts(&restore).1
    };
    let stderr = restore_log("unix:///nonexistent.sock");
    assert!(
        !stderr.contains(r#"tool="docker""#) && !stderr.contains("docker_unavailable"),
        "{stderr}"
    );
    // A DOCKER_HOST that is no unix socket is still asked of the CLI.
    let stderr = restore_log("tcp://127.0.0.1:1");
    assert!(stderr.contains(r#"tool="docker""#), "{stderr}");
}

#[test]
fn disabled_mode_does_nothing_and_needs_no_docker() {
    let net = Net::start(1);
    let env = &net.env;
    env.set("mode", "disabled");
    env.set("quiesce", "stop");
    let bin = tempfile::tempdir().unwrap();
    let path = path_without_docker(bin.path());
    let before = net.started_at();
    for command in ["create", "restore"] {
        env.cmd()
            .env("PATH", &path)
            .arg(command)
            .assert()
            .success()
            .stderr(contains("suite_isolation_disabled"));
    }
    assert_eq!(net.started_at(), before);
    assert!(!env.snapshots().join("clean_state").exists());
}

#[test]
fn running_containers_without_quiescing_are_warned_about_once() {
    let net = Net::start(2);
    let env = &net.env;
    env.set("quiesce", "none");
    // The nodes keep logging through the unquiesced restore, which its check would rightly catch.
    env.set("restore_verify", "none");
    for command in ["create", "restore"] {
        let (_, stderr) = env.run(&[command], 0);
        assert_eq!(count(&stderr, "containers_running"), 1, "{stderr}");
        assert!(stderr.contains(&net.names.join(" ")), "{stderr}");
    }
}

#[test]
fn doctor_reports_docker_and_every_container() {
    let net = Net::start(2);
    let env = &net.env;
    env.set("mode", "recreate");
    let doc = env.json(&["doctor"], 0);
    let find = |name: &str| common::doctor_check(&doc, name);
    assert_eq!(find("docker")["status"], "ok");
    assert_eq!(find("docker daemon")["status"], "ok");
    for name in &net.names {
        let c = find(&format!("container {name}"));
        assert_eq!(c["status"], "ok");
        assert!(
            c["detail"]
                .as_str()
                .unwrap()
                .contains("running; mounts it at"),
            "{c}"
        );
    }

    docker(&["stop", &net.names[0]]);
    let doc = env.json(&["doctor"], 1);
    let c = common::doctor_check(&doc, &format!("container {}", net.names[0]));
    assert_eq!(c["status"], "fail", "{c}");
    assert!(c["detail"].as_str().unwrap().contains("exited"), "{c}");
}

/// The seconds since the epoch of a docker timestamp (`StartedAt`, `FinishedAt`).
fn docker_time(name: &str, field: &str) -> f64 {
    let at = docker(&[
        "inspect",
        "--format",
        &format!("{{{{.State.{field}}}}}"),
        name,
    ]);
    sh(&format!("date -d '{}' +%s.%N", at.trim()))
        .trim()
        .parse()
        .unwrap()
}

/// The seconds since the epoch now, on the clock that stamps files and containers.
fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn ctime(path: &Path) -> f64 {
    sh(&format!("stat -c %.9Z '{}'", path.display()))
        .trim()
        .parse()
        .unwrap()
}

/// A restore begins with the nodes whose containers have stopped while another one still
/// stops (here one whose stop signal the node ignores, so `docker stop` waits out its 3 s
/// timeout), and starts no container before that last node is restored too.
#[test]
fn restore_begins_with_the_stopped_nodes_and_starts_none_before_all_are_restored() {
    let net = Net::start(2);
    let env = &net.env;
    net.run(1, &["--stop-signal", "SIGWINCH", "--stop-timeout", "3"]);
    env.set("restore_stop", "stop");
    env.run(&["create"], 0);
    let changed: Vec<_> = (1..=2)
        .map(|n| env.data().join(format!("node{n}/lib/global_db/mdbx.dat")))
        .collect();
    for file in &changed {
        std::fs::write(file, b"changed by the suite").unwrap();
    }
    let asked = now();
    let (_, log) = env.run(&["restore"], 0);
    let slow_stopped = docker_time(&net.names[1], "FinishedAt");
    assert!(
        ctime(&changed[0]) < slow_stopped,
        "node1 was not restored while {} still stopped: {log}",
        net.names[1]
    );
    // Its processes ignore the stop signal, so they live 3 s from the stop on, and the stop
    // comes after `asked`. (Docker stamps FinishedAt once it has torn the container down,
    // which may well be after node2 was restored: its processes were gone before.)
    let last_change = ctime(&changed[1]);
    assert!(last_change > asked + 3.0, "{log}");
    for name in &net.names {
        assert!(
            docker_time(name, "StartedAt") > last_change,
            "{name}: {log}"
        );
    }
    assert_eq!(net.states(), ["running"; 2]);
}

/// A node container that cannot start again after the restore (a second bind mount whose
/// source is gone) fails it with exit 1 naming that container, once the data is restored and
/// the other containers run again.
#[test]
fn a_container_that_cannot_start_again_is_named_and_the_others_run() {
    let net = Net::start(3);
    let env = &net.env;
    let extra = tempfile::tempdir().unwrap();
    let mount = format!("type=bind,src={},dst=/extra", extra.path().display());
    net.run(1, &["--mount", &mount]);
    env.run(&["create"], 0);
    std::fs::write(env.data().join("node2/lib/wallet/suite.dwallet"), b"suite").unwrap();
    drop(extra);
    let (_, stderr) = texts(&env.assert(&["restore"]).code(1));
    let error = stderr.lines().last().unwrap();
    assert!(
        error.contains("restore done, but")
            && error.contains(&format!("container {} did not start again", net.names[1]))
            && error.contains("bind source path does not exist"),
        "{stderr}"
    );
    assert!(
        !error.contains(&net.names[0]) && !error.contains(&net.names[2]),
        "{stderr}"
    );
    assert_eq!(net.states(), ["running", "exited", "running"]);
    assert!(!env.data().join("node2/lib/wallet/suite.dwallet").exists());
}

/// wait_healthy = true: the restore returns once every container with a HEALTHCHECK is
/// healthy (docker 20.10 runs the first probe only after one interval, so an unawaited
/// container still reports `starting`); one that never gets healthy fails it after
/// start_timeout, named.
#[test]
fn wait_healthy_waits_for_the_healthcheck_within_start_timeout() {
    let net = Net::start(2);
    let env = &net.env;
    env.set("wait_healthy", "true");
    let probe = |name: &str| {
        docker(&["inspect", "--format", "{{.State.Health.Status}}", name])
            .trim()
            .to_string()
    };
    let healthcheck = |cmd: &str| {
        [
            "--health-cmd",
            cmd,
            "--health-interval",
            "2s",
            "--health-retries",
            "1",
        ]
        .map(str::to_string)
    };
    let passing = healthcheck("true");
    net.run(0, &passing.iter().map(String::as_str).collect::<Vec<_>>());
    env.run(&["create"], 0);
    let (_, log) = env.run(&["restore"], 0);
    assert_eq!(probe(&net.names[0]), "healthy", "{log}");
    assert!(
        log.contains(&format!(
            "container_running name={} health=\"healthy\"",
            net.names[0]
        )),
        "{log}"
    );
    assert_eq!(net.states(), ["running"; 2]);

    let failing = healthcheck("false");
    net.run(1, &failing.iter().map(String::as_str).collect::<Vec<_>>());
    env.set("start_timeout", "5");
    env.cmd().arg("restore").assert().code(1).stderr(
        contains(format!(
            "container {} is not running and healthy 5 s after docker start",
            net.names[1]
        ))
        .and(contains("raise start_timeout")),
    );
    assert_eq!(net.states(), ["running"; 2]);
}

/// A node that writes as fast as it can until it is killed, each write naming its run and
/// counting: `lib/global_db/mdbx.dat` rewritten in place and a line appended to the log. Run
/// again (after a restore, its container's own `/restarted` there), it only logs, slowly.
const WRITER: &str = "cd /opt/cellframe-node/var && id=$(cat /proc/sys/kernel/random/uuid) && n=0 \
    && if [ -e /restarted ]; then while true; do echo \"$id\" >> log/cellframe-node.log; sleep 0.2; done; fi \
    && touch /restarted \
    && while true; do n=$((n+1)); echo \"$id $n\" >> log/cellframe-node.log; echo \"$id $n\" 1<> lib/global_db/mdbx.dat; done";

/// Restores under three [`WRITER`] nodes, stagesnap run by `cmd` with `-v`, and checks that
/// not one write of a killed node landed after the restore: once the containers run again,
/// each sees exactly the snapshot and its log is the snapshot's followed by lines of its new
/// run only. Returns the restore's log.
fn restore_under_writers(cmd: impl FnOnce(&Env) -> Command) -> String {
    let net = Net::running(3, WRITER);
    let env = &net.env;
    env.run(&["create"], 0);
    let snapshot: Vec<(String, Vec<u8>)> = (0..3)
        .map(|n| {
            let dir = net.snapshot_node("clean_state", n);
            let files = sh(&format!("cd '{}' && {HASH_FILES}", dir.display()));
            (files, std::fs::read(dir.join(LOG)).unwrap())
        })
        .collect();
    let out = cmd(env).args(["-v", "restore"]).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    assert_eq!(net.states(), ["running"; 3], "{log}");
    std::thread::sleep(Duration::from_millis(500));
    for (name, (files, snapshot_log)) in net.names.iter().zip(&snapshot) {
        assert_eq!(
            without_log(&net.exec(name, HASH_FILES)),
            without_log(files),
            "{name}: a write of the killed node landed after the restore\n{log}"
        );
        let killed_run = String::from_utf8_lossy(snapshot_log)
            .lines()
            .last()
            .and_then(|l| l.split(' ').next())
            .unwrap()
            .to_string();
        let seen = std::fs::read(
            env.data()
                .join(format!("node{}", name.rsplit('-').next().unwrap()))
                .join(LOG),
        )
        .unwrap();
        assert!(
            seen.starts_with(snapshot_log),
            "{name}: the log is not the snapshot's\n{log}"
        );
        let since = String::from_utf8_lossy(&seen[snapshot_log.len()..]).into_owned();
        assert!(
            !since.is_empty() && since.lines().all(|l| !l.starts_with(&killed_run)),
            "{name}: the killed run {killed_run} logged after the restore: {since:?}\n{log}"
        );
    }
    log
}

/// On this machine the restore finds each container's cgroup and counts a killed node as
/// stopped once the cgroup is empty, before docker answers the kill.
#[test]
fn a_killed_node_is_restored_once_its_cgroup_is_empty_and_none_of_its_writes_lands_after() {
    let log = restore_under_writers(Env::std_cmd);
    assert_eq!(count(&log, "stop_watched"), 3, "{log}");
    assert_eq!(count(&log, "watch=\"cgroup\""), 3, "{log}");
    assert_eq!(count(&log, "container_processes_gone"), 3, "{log}");
}

/// Where the containers' processes cannot be seen (here stagesnap runs in a pid namespace of
/// its own), a killed node counts as stopped once docker says so, with the same result.
#[test]
fn without_the_cgroup_a_killed_node_is_restored_once_docker_answers() {
    assert!(common::is_root(), "unshare --pid needs root");
    let log = restore_under_writers(Env::std_cmd_in_own_pid_namespace);
    assert_eq!(count(&log, "watch=\"daemon\""), 3, "{log}");
    assert_eq!(count(&log, "container_processes_gone"), 0, "{log}");
}
