//! The command line as users and CI pipelines meet it: config discovery and precedence,
//! `--json`, exit codes, locking, and bad input that must change nothing.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Env, assert_same_tree, json_of, refused, snapshot_names, treestate};
use predicates::prelude::PredicateBooleanExt;
use predicates::str::{contains, is_empty};

const MB: u64 = 1 << 20;

#[test]
fn invalid_names_are_usage_errors() {
    let env = Env::sample(1, MB / 4);
    env.run(&["create"], 0);
    for name in [
        "../x",
        "a/b",
        "",
        ".hidden",
        "-dash",
        "sp ace",
        "x/../../etc",
    ] {
        refused(&env, &["create", "--", name], 2, &["invalid snapshot name"]);
        refused(
            &env,
            &["restore", "--", name],
            2,
            &["invalid snapshot name"],
        );
        refused(&env, &["delete", "--", name], 2, &["invalid snapshot name"]);
    }
}

#[test]
fn config_errors_name_file_line_key_and_choices() {
    let env = Env::sample(1, MB / 4);
    let cfg = env.config();
    let cases: &[(&str, &[&str])] = &[
        (
            "[suite_isolation]\nmode = snapshot\n",
            &[
                "line 2",
                "mode = \"snapshot\"",
                "disabled, recreate, filesystem, squashfs, reflink",
            ],
        ),
        (
            "[suite_isolation]\nkeep_snapshot_count = -3\n",
            &["keep_snapshot_count = \"-3\"", "whole number"],
        ),
        (
            "[suite_isolation]\nsquashfs_compression = brotli\n",
            &["squashfs_compression", "none, gzip, lzo, xz"],
        ),
        (
            "[suite_isolation]\nauto_cleanup = maybe\n",
            &["auto_cleanup = \"maybe\"", "true, false"],
        ),
        (
            "[suite_isolation]\nmode = filesystem\nMODE = squashfs\n",
            &["line 3", "duplicate option"],
        ),
        ("[paths]\n[paths]\n", &["line 2", "duplicate section"]),
        ("[suite_isolation]\nthis line is broken\n", &["line 2"]),
        ("mode = filesystem\n", &["line 1", "section header"]),
        (
            "[suite_isolation]\nsnapshot_name = ../etc\n",
            &["snapshot_name", "invalid snapshot name"],
        ),
        (
            "[suite_isolation]\ninclude = ../outside\n",
            &["include", "below cache_dir"],
        ),
        (
            "[suite_isolation]\nsnapshots_dir = %(missing)s\n",
            &["snapshots_dir", "missing"],
        ),
    ];
    for (text, expect) in cases {
        // The case first, so its line numbers are the file's.
        fs::write(
            &cfg,
            format!("{text}\n[paths]\ncache_dir = ../testing/cache\n"),
        )
        .unwrap();
        let mut expect = expect.to_vec();
        expect.push("stage-env.cfg");
        refused(&env, &["create"], 2, &expect);
    }
}

#[test]
fn missing_and_unreadable_config() {
    let env = Env::sample(1, MB / 4);
    let dir = tempfile::tempdir().unwrap();
    env.cmd()
        .current_dir(dir.path())
        .arg("list")
        .assert()
        .code(2)
        .stderr(contains("no stage-env.cfg in").and(contains(dir.path().display().to_string())));

    refused(
        &env,
        &["--config", "/nonexistent/x.cfg", "list"],
        2,
        &["/nonexistent/x.cfg", "--config"],
    );
    if !common::is_root() {
        fs::set_permissions(env.config(), fs::Permissions::from_mode(0o000)).unwrap();
        refused(&env, &["list"], 2, &["cannot read config file"]);
    }
}

#[test]
fn config_is_found_in_parents_env_and_flag_with_precedence() {
    let env = Env::sample(1, MB / 4);
    // From a subdirectory: the nearest parent's stage-env.cfg.
    let sub = env.config().parent().unwrap().join("a/b");
    fs::create_dir_all(&sub).unwrap();
    let doc = json_of(
        &env.cmd()
            .current_dir(&sub)
            .args(["config", "--json"])
            .assert()
            .success(),
    );
    assert_eq!(doc["config_file"], env.config().display().to_string());

    // STAGESNAP_CONFIG from anywhere, and flag > env > file > default.
    let elsewhere = tempfile::tempdir().unwrap();
    env.set("keep_snapshot_count", "7");
    let text = fs::read_to_string(env.config()).unwrap();
    let without: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("snapshot_name"))
        .collect();
    fs::write(env.config(), without.join("\n")).unwrap();
    let doc = json_of(
        &env.cmd()
            .current_dir(elsewhere.path())
            .env("STAGESNAP_CONFIG", env.config())
            .env("STAGESNAP_MODE", "disabled")
            .env("STAGESNAP_AUTO_CLEANUP", "off")
            .args(["config", "--json", "--set", "auto_cleanup=yes"])
            .assert()
            .success(),
    );
    assert_eq!(doc["schema"], 1);
    let get = |key: &str| common::config_setting(&doc, key).clone();
    assert_eq!(get("mode")["value"], "disabled");
    assert_eq!(get("mode")["source"], "env STAGESNAP_MODE");
    assert_eq!(get("auto_cleanup")["value"], "true");
    assert_eq!(get("auto_cleanup")["source"], "flag --set");
    assert_eq!(get("keep_snapshot_count")["value"], "7");
    assert!(
        get("keep_snapshot_count")["source"]
            .as_str()
            .unwrap()
            .contains("stage-env.cfg:")
    );
    assert_eq!(get("snapshot_name")["source"], "default");
    // Relative paths in the file resolve against the file's folder, not the working directory.
    assert_eq!(get("cache_dir")["value"], env.cache().display().to_string());
}

#[test]
fn unknown_keys_warn_and_unrelated_sections_are_ignored() {
    let env = Env::sample(1, MB / 4);
    let mut text = fs::read_to_string(env.config()).unwrap();
    text.push_str("\n[release_build]\nurl = https://example.invalid:8080/a?b=%20c\nflags: -O2 # not a comment\n");
    fs::write(env.config(), text).unwrap();
    env.set("colour", "blue");
    env.assert(&["list"])
        .success()
        .stderr(contains("unknown_setting").and(contains("colour")));
}

#[test]
fn global_flags_go_before_or_after_the_subcommand() {
    let env = Env::sample(1, MB / 4);
    let cfg = env.config().display().to_string();
    let elsewhere = tempfile::tempdir().unwrap();
    for args in [
        vec!["--json", "-c", &cfg, "list"],
        vec!["list", "--config", &cfg, "--json"],
    ] {
        let doc = json_of(
            &env.cmd()
                .current_dir(elsewhere.path())
                .args(&args)
                .assert()
                .success(),
        );
        assert_eq!(doc["command"], "list");
    }
}

#[test]
fn every_command_prints_one_json_document_even_on_error() {
    let env = Env::sample(1, MB / 4);
    for (args, code) in [
        (vec!["create"], 0),
        (vec!["list"], 0),
        (vec!["restore"], 0),
        (vec!["doctor"], 0),
        (vec!["config"], 0),
        (vec!["prune", "--dry-run"], 0),
        (vec!["create", "x"], 0),
        (vec!["delete", "x"], 0),
        (vec!["delete", "x"], 4),
        (vec!["create", "../x"], 2),
    ] {
        let doc = env.json(&args, code);
        assert_eq!(doc["schema"], 1, "{args:?}");
        assert_eq!(doc["exit_code"], code, "{args:?}");
        if code != 0 {
            assert!(
                doc["error"]["message"].as_str().unwrap().len() > 10,
                "{doc}"
            );
        }
    }
}

#[test]
fn logs_are_key_value_events_on_stderr_and_quiet_silences_them() {
    let env = Env::sample(1, MB / 4);
    let (stdout, stderr) = env.run(&["create"], 0);
    assert!(stdout.starts_with("created clean_state"), "{stdout}");
    let event = stderr
        .lines()
        .find(|l| l.contains("snapshot_created"))
        .expect(&stderr);
    for field in ["name=clean_state", "mode=filesystem", "bytes=", "seconds="] {
        assert!(event.contains(field), "{event}");
    }
    env.assert(&["-q", "restore"]).success().stderr(is_empty());
    // A filesystem create runs rsync (its restore runs no tool): -v logs every tool run.
    env.assert(&["create", "--force", "-v"])
        .success()
        .stderr(contains("tool_run"));
}

#[test]
fn missing_live_paths_and_store_inside_data_are_refused() {
    let env = Env::sample(1, MB / 4);
    env.set("include", "data configs nothere");
    refused(
        &env,
        &["create"],
        2,
        &["included path nothere", "does not exist"],
    );
    env.set("include", "data");
    env.set("snapshots_dir", "../testing/cache/data/snaps");
    refused(&env, &["create"], 2, &["overlaps the included path"]);
    assert!(!env.data().join("snaps").exists());
    env.set("snapshots_dir", "../testing/snapshots");
    fs::rename(env.cache(), env.root.join("moved")).unwrap();
    env.assert(&["restore"])
        .code(2)
        .stderr(contains("cache_dir").and(contains("does not exist")));
}

#[test]
fn damaged_snapshots_are_named_and_not_restored() {
    let env = Env::sample(1, MB / 4);
    env.run(&["create", "good"], 0);
    for (name, damage) in [
        ("nometa", "remove"),
        ("truncated", "truncate"),
        ("future", "future"),
        ("nopayload", "payload"),
    ] {
        env.run(&["create", name], 0);
        let dir = env.snapshots().join(name);
        match damage {
            "remove" => fs::remove_file(dir.join("meta.json")).unwrap(),
            "truncate" => {
                let text = fs::read(dir.join("meta.json")).unwrap();
                fs::write(dir.join("meta.json"), &text[..text.len() / 2]).unwrap();
            }
            "future" => {
                let text = fs::read_to_string(dir.join("meta.json")).unwrap();
                fs::write(
                    dir.join("meta.json"),
                    text.replace("\"schema\": 1", "\"schema\": 99"),
                )
                .unwrap();
            }
            _ => fs::remove_dir_all(dir.join("payload/data")).unwrap(),
        }
    }
    env.suite(1);
    let expect: &[(&str, &str)] = &[
        ("nometa", "meta.json"),
        ("truncated", "not valid metadata"),
        ("future", "newer stagesnap"),
        ("nopayload", "is missing"),
    ];
    for (name, why) in expect {
        refused(&env, &["restore", name], 1, &[name, why]);
    }
    let listed = env.json(&["list"], 0);
    let names = snapshot_names(&listed);
    assert!(
        names.contains(&"good") && !names.contains(&"nometa") && !names.contains(&"future"),
        "{names:?}"
    );
    assert_eq!(
        listed["unreadable"].as_array().unwrap().len(),
        3,
        "{listed}"
    );
}

#[test]
fn missing_rsync_fails_fast_with_install_hint() {
    let env = Env::sample(1, MB / 4);
    let empty = tempfile::tempdir().unwrap();
    let before = treestate(&env.root);
    for args in [&["create"][..], &["restore"], &["delete", "x"], &["prune"]] {
        env.cmd()
            .env("PATH", empty.path())
            .args(args)
            .assert()
            .append_context("args", format!("{args:?}"))
            .code(3)
            .stderr(contains("error: filesystem mode selected but rsync is not installed.\nInstall rsync: sudo apt install rsync"));
    }
    env.cmd()
        .env("PATH", empty.path())
        .arg("doctor")
        .assert()
        .code(3);
    assert_same_tree(&treestate(&env.root), &before);
    // list and config only read, so they need no rsync.
    env.cmd()
        .env("PATH", empty.path())
        .arg("list")
        .assert()
        .success();
}

#[test]
fn doctor_reports_each_check() {
    let env = Env::sample(2, MB / 4);
    let doc = env.json(&["doctor"], 0);
    let checks: Vec<&str> = doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    for c in [
        "config",
        "mode",
        "rsync",
        "cache_dir",
        "include data",
        "writable data",
        "snapshots_dir",
        "free space",
    ] {
        assert!(checks.contains(&c), "{c} missing from {checks:?}");
    }
    let include = common::doctor_check(&doc, "include data");
    assert!(
        include["detail"]
            .as_str()
            .unwrap()
            .contains("data/node1 data/node2"),
        "{include}"
    );
    fs::remove_dir_all(env.data()).unwrap();
    let doc = env.json(&["doctor"], 1);
    assert_eq!(doc["ok"], false);
}

#[test]
fn disabled_mode_does_nothing() {
    let env = Env::sample(1, MB / 4);
    env.set("mode", "disabled");
    for cmd in ["create", "restore"] {
        env.assert(&[cmd])
            .success()
            .stderr(contains("suite_isolation_disabled"));
    }
    assert!(!env.snapshots().exists());
}

/// A second process waits for the lock and proceeds once it is released.
#[test]
fn a_second_process_waits_for_the_lock() {
    let env = Env::sample(1, MB / 4);
    env.run(&["create"], 0);
    let lock = env.snapshots().join(".lock");
    let released = env.root.join("released");
    // flock(1) takes the same kind of lock (flock(2)) as stagesnap does.
    let mut holder = Command::new("flock")
        .arg(&lock)
        .arg("sh")
        .arg("-c")
        .arg(format!("sleep 1.5; touch {}", released.display()))
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    env.assert(&["--lock-timeout", "30", "create", "after", "--json"])
        .success()
        .stderr(contains("lock_wait"));
    holder.wait().unwrap();
    let doc = env.json(&["list"], 0);
    let created: jiff::Timestamp = doc["snapshots"][0]["created_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let released_at: jiff::Timestamp = fs::metadata(&released)
        .unwrap()
        .modified()
        .unwrap()
        .try_into()
        .unwrap();
    assert!(
        created >= released_at,
        "created {created} before the lock was released at {released_at}"
    );
}

/// A holder that never finishes makes the next command fail with exit 5 naming it; once the
/// holder is killed, the lock is free without any manual step.
#[test]
fn lock_timeout_names_the_holder_and_a_dead_holder_frees_it() {
    let env = Env::sample(1, MB / 4);
    env.run(&["create"], 0);
    // The fault: an rsync that hangs, so a real stagesnap holds the lock.
    let path = env.fake_path(&[(
        "rsync",
        "case \"$1\" in --version) exec /usr/bin/rsync --version;; esac\nexec sleep 300",
    )]);
    let mut holder = env
        .std_cmd()
        .env("PATH", &path)
        .args(["create", "hung"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lock = env.snapshots().join(".lock");
    while !fs::read_to_string(&lock)
        .unwrap_or_default()
        .contains(&holder.id().to_string())
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    env.assert(&["--lock-timeout", "1", "restore"])
        .code(5)
        .stderr(contains(format!("pid {}", holder.id())).and(contains("create hung")));

    holder.kill().unwrap();
    holder.wait().unwrap();
    // The dead holder's staging directory is cleaned by the next create.
    env.run(&["--lock-timeout", "1", "create", "next"], 0);
    let names: Vec<_> = fs::read_dir(env.snapshots())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with(".staging")),
        "{names:?}"
    );
    assert!(!names.contains(&"hung".to_string()));
}

#[test]
fn delete_checks_every_name_before_removing_any() {
    let env = Env::sample(1, MB / 4);
    env.run(&["create", "a"], 0);
    env.run(&["create", "b"], 0);
    refused(
        &env,
        &["delete", "a", "nope", "b"],
        4,
        &["snapshot nope not found"],
    );
    let doc = env.json(&["delete", "a", "b"], 0);
    assert_eq!(doc["deleted"], serde_json::json!(["a", "b"]));
    assert_eq!(env.json(&["list"], 0)["snapshots"], serde_json::json!([]));
}
