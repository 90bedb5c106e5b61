//! Cleanup by age and by use: prune's --keep, --keep-within and --keep-used-within (and the
//! config keys auto_cleanup uses), each restore counted in the snapshot's usage file, which
//! is untrusted and skipped where it cannot be written.

mod common;

use std::fs;

use common::{Env, Mount, refused};
use jiff::{SignedDuration, Timestamp};
use predicates::prelude::PredicateBooleanExt;
use predicates::str::contains;
use serde_json::{Value, json};

const MB: u64 = 1 << 20;

fn hours_ago(h: i64) -> Timestamp {
    Timestamp::now() - SignedDuration::from_hours(h)
}

/// Sets snapshot `name`'s creation time in its meta.json (which nothing digests).
fn created(env: &Env, name: &str, at: Timestamp) {
    let path = env.snapshots().join(name).join("meta.json");
    let mut meta: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    meta["created_at"] = json!(at.to_string());
    fs::write(&path, serde_json::to_vec_pretty(&meta).unwrap()).unwrap();
}

fn usage_file(env: &Env, name: &str) -> std::path::PathBuf {
    env.snapshots().join(name).join("usage.json")
}

fn used(env: &Env, name: &str, at: Timestamp, restores: u64) {
    let usage = json!({"last_restored": at.to_string(), "restores": restores});
    fs::write(usage_file(env, name), usage.to_string()).unwrap();
}

fn read_usage(env: &Env, name: &str) -> Value {
    serde_json::from_slice(&fs::read(usage_file(env, name)).unwrap()).unwrap()
}

/// Four snapshots, newest first: d (2 h old), c (3 days), b (20 days), a (30 days, restored
/// 1 day ago). No snapshot_name snapshot, and auto_cleanup off.
fn four() -> Env {
    let env = Env::sample(1, MB / 4);
    env.set("auto_cleanup", "no");
    for (name, h) in [("a", 30 * 24), ("b", 20 * 24), ("c", 3 * 24), ("d", 2)] {
        env.run(&["create", name], 0);
        created(&env, name, hours_ago(h));
    }
    used(&env, "a", hours_ago(24), 3);
    env
}

/// What `prune ARGS --dry-run --json` would remove.
fn would_remove(env: &Env, args: &[&str]) -> Value {
    let mut all = vec!["prune", "--dry-run"];
    all.extend(args);
    env.json(&all, 0)["removed"].clone()
}

#[test]
fn each_rule_alone_and_together_keeps_what_it_says() {
    let env = four();
    assert_eq!(would_remove(&env, &["--keep", "1"]), json!(["c", "b", "a"]));
    assert_eq!(
        would_remove(&env, &["--keep", "0", "--keep-within", "7d"]),
        json!(["b", "a"])
    );
    assert_eq!(
        would_remove(&env, &["--keep", "0", "--keep-used-within", "2d"]),
        json!(["d", "c", "b"])
    );
    let all = [
        "--keep",
        "1",
        "--keep-within",
        "7d",
        "--keep-used-within",
        "2d",
    ];
    assert_eq!(would_remove(&env, &all), json!(["b"]));

    // The same rules from the config; a flag wins over its key.
    env.set("keep_snapshot_count", "1");
    env.set("keep_within", "7d");
    env.set("keep_used_within", "48h");
    assert_eq!(would_remove(&env, &[]), json!(["b"]));
    assert_eq!(would_remove(&env, &["--keep-within", "3w"]), json!([]));

    let (text, _) = env.run(&["prune", "--dry-run"], 0);
    assert_eq!(
        text,
        "keep d (newest 1, created within 7d)\n\
         keep c (created within 7d)\n\
         remove b (older than every rule)\n\
         keep a (restored within 48h)\n\
         would remove 1 of 4 snapshots\n"
    );
    assert!(env.snapshots().join("b").is_dir(), "--dry-run removed b");

    let pruned = env.json(&["prune"], 0);
    assert_eq!(pruned["removed"], json!(["b"]));
    assert_eq!(pruned["keep_within"], json!("7d"));
    assert_eq!(
        pruned["snapshots"][0],
        json!({"name": "d", "action": "keep", "reasons": ["newest 1", "created within 7d"]})
    );
    assert_eq!(
        pruned["snapshots"][2],
        json!({"name": "b", "action": "remove", "reasons": ["older than every rule"]})
    );
    assert!(!env.snapshots().join("b").exists());
}

/// Pinned and snapshot_name stay whatever the rules; a snapshot restored long ago is not
/// kept by --keep-used-within.
#[test]
fn pinned_and_snapshot_name_stay_and_old_use_does_not_count() {
    let env = four();
    env.run(&["create", "clean_state"], 0);
    env.run(&["create", "p", "--pin"], 0);
    for name in ["clean_state", "p"] {
        created(&env, name, hours_ago(90 * 24));
    }
    used(&env, "b", hours_ago(24 * 5), 1);
    env.assert(&[
        "prune",
        "--dry-run",
        "--keep",
        "0",
        "--keep-used-within",
        "2d",
    ])
    .success()
    .stdout(
        contains("keep p (pinned)\n")
            .and(contains("keep clean_state (snapshot_name)\n"))
            .and(contains("keep a (restored within 2d)\n"))
            .and(contains("remove b (older than every rule)\n")),
    );
}

#[test]
fn auto_cleanup_applies_keep_within() {
    let env = Env::sample(1, MB / 4);
    env.set("auto_cleanup", "no");
    for (name, h) in [("old", 10 * 24), ("recent", 24)] {
        env.run(&["create", name], 0);
        created(&env, name, hours_ago(h));
    }
    env.set("auto_cleanup", "yes");
    env.set("keep_snapshot_count", "0");
    env.set("keep_within", "7d");
    let out = env.json(&["create", "new"], 0);
    assert_eq!(out["pruned"], json!(["old"]), "{out}");
    assert!(env.snapshots().join("recent").is_dir());
}

#[test]
fn each_restore_counts_in_the_usage_file_and_list_shows_it() {
    let env = Env::sample(1, MB / 4);
    env.run(&["create"], 0);
    let row = |env: &Env| env.json(&["list"], 0)["snapshots"][0].clone();
    assert_eq!(row(&env)["last_restored"], Value::Null);
    assert_eq!(row(&env)["restores"], json!(0));

    env.run(&["restore"], 0);
    let first = read_usage(&env, "clean_state");
    assert_eq!(first["restores"], json!(1));

    // A restore that changes nothing counts too, and moves the time on.
    let long_ago = hours_ago(24 * 100);
    used(&env, "clean_state", long_ago, 41);
    env.run(&["restore"], 0);
    let usage = read_usage(&env, "clean_state");
    assert_eq!(usage["restores"], json!(42));
    let at: Timestamp = usage["last_restored"].as_str().unwrap().parse().unwrap();
    assert!(at > long_ago, "{usage}");
    assert_eq!(row(&env)["restores"], json!(42));
    assert_eq!(row(&env)["last_restored"], usage["last_restored"]);

    let (text, _) = env.run(&["list"], 0);
    let header = text.lines().next().unwrap();
    assert!(
        header.contains("LAST RESTORED") && header.ends_with("RESTORES"),
        "{text}"
    );
    assert!(text.lines().nth(1).unwrap().ends_with(" 42"), "{text}");
}

/// A usage file that is malformed, has a bad time or is a symlink is ignored: never
/// restored as far as list and prune know. The next restore writes a fresh one in its
/// place, and a link's target is left alone.
#[test]
fn a_malformed_or_linked_usage_file_is_ignored() {
    let env = four();
    fs::write(usage_file(&env, "b"), "{not json").unwrap();
    fs::write(
        usage_file(&env, "c"),
        json!({"last_restored": "yesterday", "restores": 5}).to_string(),
    )
    .unwrap();
    let elsewhere = env.root.join("usage-elsewhere.json");
    let fake = json!({"last_restored": Timestamp::now().to_string(), "restores": 7}).to_string();
    fs::write(&elsewhere, &fake).unwrap();
    std::os::unix::fs::symlink(&elsewhere, usage_file(&env, "d")).unwrap();

    let listing = env.json(&["list"], 0);
    for row in listing["snapshots"].as_array().unwrap() {
        if row["name"] != "a" {
            assert_eq!(row["last_restored"], Value::Null, "{row}");
            assert_eq!(row["restores"], json!(0), "{row}");
        }
    }
    assert_eq!(
        would_remove(&env, &["--keep", "0", "--keep-used-within", "2d"]),
        json!(["d", "c", "b"])
    );

    env.run(&["restore", "d"], 0);
    assert!(!usage_file(&env, "d").is_symlink());
    assert_eq!(read_usage(&env, "d")["restores"], json!(1));
    assert_eq!(fs::read_to_string(&elsewhere).unwrap(), fake);
    env.run(&["restore", "b"], 0);
    assert_eq!(read_usage(&env, "b")["restores"], json!(1));
}

/// A snapshot directory that cannot be written (here bind-mounted read-only over itself)
/// does not fail the restore: the count is skipped, logged at debug level only.
#[test]
fn a_read_only_snapshot_still_restores_without_counting() {
    let env = Env::sample(1, MB / 4);
    env.run(&["create"], 0);
    let snap = env.snapshots().join("clean_state");
    let _mount = Mount::bind(&snap, &snap);
    common::remount(&snap, "remount,bind,ro");
    env.assert(&["restore"])
        .success()
        .stderr(contains("usage_not_recorded").not());
    env.assert(&["restore", "-v"])
        .success()
        .stderr(contains("usage_not_recorded"));
    assert!(!usage_file(&env, "clean_state").exists());
    assert!(!snap.join("usage.json.tmp").exists());
}

/// A zero, unitless or garbled span is refused (exit 2) naming the flag or key and value,
/// before anything changes.
#[test]
fn bad_spans_are_refused_naming_the_flag_or_key() {
    let env = four();
    for (flag, value) in [
        ("--keep-within", "0d"),
        ("--keep-used-within", "7"),
        ("--keep-within", "1.5d"),
    ] {
        refused(&env, &["prune", flag, value], 2, &[flag, value]);
    }
    env.set("keep_used_within", "7");
    refused(
        &env,
        &["prune"],
        2,
        &["keep_used_within = \"7\"", "has no unit", "or none"],
    );
}
