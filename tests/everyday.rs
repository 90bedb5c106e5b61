//! Everyday use: `run` between suites, `--keep-failed`, the staleness guard, progress bars on
//! a terminal (and none elsewhere), completions and man pages, help texts, broken pipes.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use assert_cmd::assert::OutputAssertExt;
use clap::CommandFactory;
use common::{Env, assert_same_tree, finish, json_of, texts, treestate};
use predicates::prelude::PredicateBooleanExt;
use predicates::str::contains;
use serde_json::Value;

const MB: u64 = 1 << 20;

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_stagesnap"))
}

/// `sh -c SCRIPT` as the suite of `stagesnap run`.
fn suite(script: &str) -> Vec<String> {
    vec!["--".into(), "sh".into(), "-c".into(), script.into()]
}

fn run_args<'a>(before: &[&'a str], script: &'a [String]) -> Vec<&'a str> {
    let mut args = vec!["run"];
    args.extend(before);
    args.extend(script.iter().map(String::as_str));
    args
}

/// `stagesnap --json ARGS`: the flag goes first, since everything after `--` is the suite's.
fn json(env: &Env, args: &[&str], code: i32) -> Value {
    let mut all = vec!["--json"];
    all.extend(args);
    json_of(&env.assert(&all).code(code))
}

/// Whether `text` holds an SGR sequence (colour or style).
fn coloured(text: &str) -> bool {
    text.split("\x1b[").skip(1).any(|rest| {
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == ';'))
            .unwrap_or(rest.len());
        rest[end..].starts_with('m')
    })
}

#[test]
fn run_restores_then_returns_the_suites_exit_code() {
    let env = Env::sample(2, MB);
    let clean = treestate(&env.data());
    env.run(&["create"], 0);
    env.suite(3);
    // The suite sees the restored data: its exit code says whether it did.
    let marker = env.root.join("suite-ran");
    let check = suite(&format!("touch {}; exit 7", marker.display()));
    let (stdout, stderr) = env.run(&run_args(&[], &check), 7);
    assert!(marker.exists(), "the suite did not run");
    assert_same_tree(&treestate(&env.data()), &clean);
    assert!(
        stdout.starts_with("restored clean_state (filesystem mode)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("exited 7 after") && stdout.contains("restoring clean_state took"),
        "{stdout}"
    );
    assert!(stderr.contains("suite_finished exit_code=7"), "{stderr}");

    let doc = json(&env, &run_args(&[], &suite("exit 0")), 0);
    assert_eq!(doc["command"], "run");
    assert_eq!(doc["suite_exit_code"], 0);
    assert_eq!(doc["restore"]["name"], "clean_state");
    assert!(doc["restore_seconds"].as_f64().unwrap() >= 0.0);
    assert!(doc["suite_seconds"].as_f64().is_some());
    assert!(doc.get("kept").is_none());

    // A suite killed by a signal exits as a shell reports it: 128 + the signal.
    env.run(&run_args(&[], &suite("kill -TERM $$")), 128 + 15);
}

#[test]
fn run_does_not_start_the_suite_when_the_restore_fails() {
    let env = Env::sample(1, MB / 4);
    env.set("auto_create_on_startup", "false");
    let marker = env.root.join("suite-ran");
    let script = suite(&format!("touch {}", marker.display()));
    env.assert(&run_args(&["--snapshot", "missing"], &script))
        .code(4)
        .stderr(contains("snapshot missing not found"));
    assert!(
        !marker.exists(),
        "the suite ran although the restore failed"
    );
    let doc = json(&env, &run_args(&["--snapshot", "missing"], &script), 4);
    assert_eq!(doc["command"], "run");
    assert_eq!(doc["error"]["kind"], "not_found");
    assert!(!marker.exists());
    // A suite that cannot be started is a usage error.
    env.run(&["create"], 0);
    env.run(&["run", "--", "no-such-program-here"], 2);
}

#[test]
fn keep_failed_snapshots_what_the_suite_left_pinned() {
    let env = Env::sample(2, MB);
    env.run(&["create"], 0);
    let dirty = env.data().join("node1/left-by-suite");
    let failing = suite(&format!("echo dirty > {}; exit 1", dirty.display()));
    let doc = json(&env, &run_args(&["--keep-failed"], &failing), 1);
    let kept = doc["kept"]["name"]
        .as_str()
        .expect("a kept snapshot")
        .to_string();
    assert!(kept.starts_with("clean_state-failed-"), "{kept}");
    assert!(kept.ends_with('Z'), "{kept}");
    assert_eq!(doc["kept"]["pinned"], true);
    let listed = env.json(&["list"], 0);
    let row = listed["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == kept.as_str())
        .expect("kept snapshot listed")
        .clone();
    assert_eq!(row["pinned"], true);
    // It holds the suite's leftovers: the live data is still identical to it.
    assert!(dirty.exists());
    env.run(&["status", &kept], 0);
    // Pruning never removes it.
    env.run(&["prune", "--keep", "0"], 0);
    env.run(&["status", &kept], 0);

    // A passing suite keeps nothing.
    let before = env.json(&["list"], 0)["snapshots"]
        .as_array()
        .unwrap()
        .len();
    let doc = json(&env, &run_args(&["--keep-failed"], &suite("exit 0")), 0);
    assert!(doc.get("kept").is_none());
    assert_eq!(
        env.json(&["list"], 0)["snapshots"]
            .as_array()
            .unwrap()
            .len(),
        before
    );
}

#[test]
fn a_stale_snapshot_is_refused_unless_allowed_and_shown_by_list_and_status() {
    let env = Env::sample(2, MB);
    let dirty = env.create_then_suite(5);
    let cert = env.cache().join("certs/node1");
    let cert = fs::read_dir(&cert).unwrap().next().unwrap().unwrap().path();
    fs::write(&cert, b"regenerated by a new network start").unwrap();

    env.assert(&["restore"]).code(1).stderr(
        contains("snapshot clean_state is stale")
            .and(contains(format!("{} (changed)", cert.display())))
            .and(contains("--allow-stale")),
    );
    assert_same_tree(&treestate(&env.data()), &dirty);
    // run refuses it the same way, without starting the suite.
    let marker = env.root.join("suite-ran");
    let script = suite(&format!("touch {}", marker.display()));
    env.run(&run_args(&[], &script), 1);
    assert!(!marker.exists());

    let listed = env.json(&["list"], 0);
    let row = &listed["snapshots"][0];
    assert_eq!(row["stale"], true, "{listed}");
    assert!(
        row["stale_files"][0]
            .as_str()
            .unwrap()
            .contains("certs/node1"),
        "{listed}"
    );
    let (table, _) = env.run(&["list"], 0);
    assert!(table.lines().next().unwrap().contains("STALE"), "{table}");
    let status = env.json(&["status"], 1);
    assert_eq!(status["stale"], true, "{status}");

    env.assert(&["restore", "--allow-stale"])
        .success()
        .stderr(contains("snapshot_stale"));
    env.run(&run_args(&["--allow-stale"], &script), 0);
    assert!(marker.exists());

    // A fresh snapshot is not stale; a new config file is a change too.
    env.run(&["create", "--force"], 0);
    assert_eq!(env.json(&["list"], 0)["snapshots"][0]["stale"], false);
    fs::write(env.cache().join("configs/node2/extra.cfg"), b"x = 1\n").unwrap();
    env.assert(&["restore"])
        .code(1)
        .stderr(contains("extra.cfg (new)"));
    // `fingerprint = none` turns the guard off for snapshots made so.
    env.set("fingerprint", "none");
    env.run(&["create", "--force"], 0);
    fs::write(&cert, b"again").unwrap();
    env.run(&["restore"], 0);
}

#[test]
fn fingerprint_takes_paths_and_globs_relative_to_the_config_file() {
    let env = Env::sample(1, MB / 4);
    let folder = env.config().parent().unwrap().to_path_buf();
    fs::write(folder.join("docker-compose.yml"), b"services: {}\n").unwrap();
    env.set(
        "fingerprint",
        "docker-compose.yml ../testing/cache/configs/*/*.cfg",
    );
    env.run(&["create"], 0);
    let meta: Value =
        serde_json::from_slice(&fs::read(env.snapshots().join("clean_state/meta.json")).unwrap())
            .unwrap();
    let files = meta["fingerprint"]["files"].as_object().unwrap();
    assert!(
        files.keys().any(|k| k.ends_with("docker-compose.yml")),
        "{files:?}"
    );
    assert!(
        files.keys().any(|k| k.ends_with("cellframe-node.cfg")),
        "{files:?}"
    );
    // Certificates are not named, so they may change.
    let certs = env.cache().join("certs/node1");
    let cert = fs::read_dir(&certs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    fs::write(cert, b"new").unwrap();
    env.run(&["restore"], 0);
    fs::write(folder.join("docker-compose.yml"), b"services: {a: {}}\n").unwrap();
    env.assert(&["restore"])
        .code(1)
        .stderr(contains("docker-compose.yml (changed)"));
    env.set("fingerprint", "[unclosed");
    env.run(&["list"], 2);
}

#[test]
fn progress_bars_on_a_terminal_only() {
    let env = Env::sample(3, 24 * MB);
    let screen = env.on_terminal("create", &[]);
    assert!(
        screen.contains("create clean_state") && screen.contains(" files"),
        "no progress bar on the terminal:\n{screen}"
    );
    assert!(screen.contains("data/node2"), "no bar per node:\n{screen}");
    assert!(screen.contains("\x1b["), "no cursor movement:\n{screen}");
    assert!(
        screen.contains("created clean_state (filesystem mode)"),
        "{screen}"
    );
    env.suite(1);
    let screen = env.on_terminal("restore", &[("NO_COLOR", "1")]);
    assert!(screen.contains("restore clean_state"), "{screen}");
    assert!(!coloured(&screen), "NO_COLOR still coloured:\n{screen}");

    // Nothing of the kind where the bars are not wanted.
    for (args, vars) in [
        ("restore --no-progress", vec![("NO_COLOR", "1")]),
        ("-q restore", vec![("NO_COLOR", "1")]),
        ("restore --json", vec![("NO_COLOR", "1")]),
        ("restore", vec![("TERM", "dumb")]),
    ] {
        let screen = env.on_terminal(args, &vars);
        assert!(
            !screen.contains("% · ") && !screen.contains("\x1b[2K"),
            "stagesnap {args} drew a bar:\n{screen}"
        );
    }

    // stderr to a pipe or file: log lines and the summary, no control characters.
    env.suite(2);
    let (stdout, stderr) = env.run(&["restore"], 0);
    assert!(stdout.starts_with("restored clean_state"), "{stdout}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        !stderr.contains('\r') && !stderr.contains('\x1b'),
        "control characters on a non-terminal stderr:\n{stderr:?}"
    );
}

#[test]
fn every_command_has_a_purpose_and_an_example_in_its_help() {
    let cli = stagesnap::cli::Cli::command();
    let top = cli.get_after_help().unwrap().to_string();
    assert!(top.contains("Example: stagesnap"), "{top}");
    assert!(top.contains("130 interrupted"), "{top}");
    for sub in cli.get_subcommands() {
        let name = sub.get_name();
        let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
        assert!(
            !about.is_empty() && !about.contains('\n'),
            "{name}: no one-line purpose"
        );
        let help = sub
            .get_after_help()
            .map(|a| a.to_string())
            .unwrap_or_default();
        assert!(
            help.contains(&format!("Example: stagesnap {name}")),
            "{name}: no example in --help"
        );
    }
}

#[test]
fn committed_completions_and_man_pages_are_up_to_date() {
    let out = tempfile::tempdir().unwrap();
    Command::new(bin())
        .args(["generate-assets", "--out"])
        .arg(out.path())
        .assert()
        .success();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut stale = Vec::new();
    for dir in ["completions", "man"] {
        let fresh = files(&out.path().join(dir));
        let committed = files(&repo.join(dir));
        assert_eq!(
            fresh.keys().collect::<Vec<_>>(),
            committed.keys().collect::<Vec<_>>(),
            "{dir}/ holds other files than stagesnap generates"
        );
        for (name, bytes) in &fresh {
            if committed.get(name) != Some(bytes) {
                stale.push(format!("{dir}/{name}"));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "stale: {stale:?}; regenerate them with `cargo run -- generate-assets --out .` and commit them"
    );
    let man = fs::read_to_string(repo.join("man/stagesnap.1")).unwrap();
    assert!(man.contains("EXIT STATUS") && man.contains("130"), "{man}");
    assert!(repo.join("man/stagesnap-run.1").exists());
}

fn files(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                fs::read(&p).unwrap(),
            )
        })
        .collect()
}

/// What the bash completion offers for `line` (the word being completed is the last one).
fn bash_completes(env: &Env, words: &[&str]) -> Vec<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("completions/stagesnap.bash");
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let program = format!(
        "source '{}'\nCOMP_WORDS=({})\nCOMP_CWORD={}\n_stagesnap_names stagesnap '{}' '{}'\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display(),
        quoted.join(" "),
        words.len() - 1,
        words[words.len() - 1],
        words[words.len() - 2],
    );
    let path = format!(
        "{}:{}",
        bin().parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .arg("--norc")
        .arg("-c")
        .arg(program)
        .current_dir(env.config().parent().unwrap())
        .env("PATH", path)
        .assert()
        .success();
    let mut v: Vec<String> = texts(&out)
        .0
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

#[test]
fn bash_completion_offers_snapshot_names() {
    let env = Env::sample(1, MB / 4);
    env.run(&["create", "alpha"], 0);
    env.run(&["create", "beta"], 0);
    assert_eq!(
        bash_completes(&env, &["stagesnap", "restore", ""]),
        ["alpha", "beta"]
    );
    assert_eq!(
        bash_completes(&env, &["stagesnap", "delete", "alpha", "b"]),
        ["beta"]
    );
    assert_eq!(
        bash_completes(&env, &["stagesnap", "run", "--snapshot", "al"]),
        ["alpha"]
    );
    // Everything else is clap's own completion.
    assert_eq!(
        bash_completes(&env, &["stagesnap", "restore", "--verify", ""]),
        ["full", "metadata", "none"]
    );
    let commands = bash_completes(&env, &["stagesnap", "r"]);
    assert_eq!(commands, ["restore", "run"]);
    assert!(
        bash_completes(&env, &["stagesnap", "restore", "--allow"])
            .contains(&"--allow-stale".to_string())
    );
}

#[test]
fn a_closed_stdout_ends_quietly() {
    let env = Env::sample(1, MB / 4);
    for name in ["a", "b", "c"] {
        env.run(&["create", name], 0);
    }
    for args in [vec!["list"], vec!["list", "--json"], vec!["config"]] {
        let mut child = env
            .std_cmd()
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader is gone before stagesnap writes a byte.
        drop(child.stdout.take());
        finish(child)
            .append_context("args", format!("{args:?}"))
            .success()
            .stderr(contains("error").not().and(contains("panicked").not()));
    }
    // The same through a shell pipeline.
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "{} list | head -1 >/dev/null; echo ${{PIPESTATUS[0]}}",
            bin().display()
        ))
        .current_dir(env.config().parent().unwrap())
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("error"));
}

#[test]
fn signals_during_the_suite_are_the_suites_business() {
    let env = Env::sample(1, MB / 4);
    env.run(&["create"], 0);
    let ready = env.root.join("suite-ready");
    let script = format!(
        "trap 'exit 42' TERM; touch {}; while :; do sleep 0.05; done",
        ready.display()
    );
    let mut child = env
        .std_cmd()
        .args(["run", "--keep-failed", "--", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !ready.exists() {
        assert!(started.elapsed().as_secs() < 30, "the suite never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let pid = child.id() as libc::pid_t;
    // Ctrl-C reaches a terminal's whole process group; sent to stagesnap alone it is not
    // passed on, and stagesnap goes on waiting for the suite.
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGINT) };
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "stagesnap left its suite"
    );
    // SIGTERM is passed on; the suite's exit code is stagesnap's.
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    // An interrupted suite is not kept: it did not fail on its own.
    finish(child)
        .code(42)
        .stderr(contains("keep_failed_skipped"));
    assert_eq!(
        json(&env, &["list"], 0)["snapshots"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}
