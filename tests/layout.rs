//! The real stage-env layout (issue 14): the harness keeps its config in
//! `stage-env/config/stage-env.cfg`, among a dozen sections stagesnap does not read, and resolves
//! relative paths against `stage-env/` itself. Run from `stage-env/` or below with no flags,
//! stagesnap must find the config and use the harness's directories.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use assert_cmd::assert::{Assert, OutputAssertExt};
use common::{Env, assert_same_tree, texts, treestate};
use predicates::str::contains;

const MB: u64 = 1 << 20;

/// A config like the harness's own: its sections, URLs, `:` and `%` in values, comments, and
/// `[paths]`/`[suite_isolation]` as the real file has them.
const HARNESS_CONFIG: &str = r#"# Stage environment configuration
# Directory paths (relative to stage-env/)

[network]
name = stagenet
chain_id: 0x000000000000abcd
seed_nodes = 10.0.0.2:8079, 10.0.0.3:8079

[topology]
nodes = 3
root_nodes = 1
master_nodes: 2

[build]
source_url = https://gitlab.example.invalid/cellframe/node.git?ref=master
jobs = 4
cmake_flags = -DCMAKE_BUILD_TYPE=Debug -DBUILD_TESTS=ON

[logging]
level = debug
format = %%(asctime)s %%(levelname)s %%(message)s

[node_source]
type = docker
image = cellframe-node:latest

[docker]
compose_file = docker-compose.yml
network_name = stage-net
subnet = 172.28.0.0/16

[genesis]
token = STAGE
supply = 1000000000.0

[wallets]
count = 10
prefix = w_

[timeouts]
startup = 120
sync = 300

[monitoring]
enabled = false
url = http://127.0.0.1:9090/metrics

[reporting]
dir = ../testing/reports
junit = yes

[api]
rpc_url = http://localhost:8079/rpc?json=1&pretty=%%20

[testing]
parallel = no
markers = slow: smoke

[paths]
cache_dir = ../testing/cache

[suite_isolation]
mode = filesystem
squashfs_compression = none
auto_create_on_startup = true
snapshot_name = clean_state
auto_cleanup = true
keep_snapshot_count = 5
snapshots_dir = ../testing/snapshots
container_name = ssnap-layout-absent-{n}
"#;

/// A sample environment rearranged into the real layout: `<root>/stage-env/config/stage-env.cfg`
/// with the harness's config, the data in `<root>/testing/cache`.
fn real_layout() -> Env {
    let env = Env::sample(3, MB);
    fs::remove_file(env.config()).unwrap();
    let config_dir = env.root.join("stage-env/config");
    fs::create_dir_all(&config_dir).unwrap();
    fs::write(config_dir.join("stage-env.cfg"), HARNESS_CONFIG).unwrap();
    fs::write(config_dir.join("stage-env.cfg.default"), HARNESS_CONFIG).unwrap();
    env
}

fn stagesnap(cwd: &Path, args: &[&str]) -> Assert {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stagesnap"));
    cmd.current_dir(cwd).args(args).env("NO_COLOR", "1");
    for (k, _) in std::env::vars() {
        if k.starts_with("STAGESNAP_") {
            cmd.env_remove(k);
        }
    }
    cmd.assert()
        .append_context("stagesnap", format!("{args:?} in {}", cwd.display()))
}

fn ok(cwd: &Path, args: &[&str]) -> String {
    texts(&stagesnap(cwd, args).success()).0
}

#[test]
fn the_real_layout_works_from_stage_env_with_no_flags() {
    let env = real_layout();
    let base = env.root.join("stage-env");
    let clean = treestate(&env.data());

    let v: serde_json::Value = serde_json::from_str(&ok(&base, &["config", "--json"])).unwrap();
    assert_eq!(
        v["config_file"],
        base.join("config/stage-env.cfg").display().to_string()
    );
    assert_eq!(v["base_dir"], base.display().to_string());
    assert!(
        v["base_dir_source"].as_str().unwrap().contains("config/"),
        "{v}"
    );

    ok(&base, &["create"]);
    // In the harness's snapshots_dir (../testing/snapshots from stage-env/), nowhere else.
    assert!(
        env.root
            .join("testing/snapshots/clean_state/meta.json")
            .is_file()
    );
    // (Resolved against the config file's folder it would have been stage-env/testing/.)
    assert!(!base.join("testing").exists());

    env.suite(1);
    assert_ne!(treestate(&env.data()), clean);
    // From below the base folder too.
    let below = base.join("tests/suites");
    fs::create_dir_all(&below).unwrap();
    ok(&below, &["restore"]);
    assert_same_tree(&treestate(&env.data()), &clean);
    ok(&base.join("config"), &["status"]);
}

#[test]
fn a_config_folder_file_without_cache_dir_means_the_harness_default_cache() {
    let env = real_layout();
    let base = env.root.join("stage-env");
    let text = HARNESS_CONFIG.replace("[paths]\ncache_dir = ../testing/cache\n", "");
    fs::write(base.join("config/stage-env.cfg"), text).unwrap();
    let v: serde_json::Value = serde_json::from_str(&ok(&base, &["config", "--json"])).unwrap();
    let cache = common::config_setting(&v, "cache_dir");
    assert_eq!(cache["value"], base.join("cache").display().to_string());
    assert_eq!(cache["source"], "default");
    // Nothing there: the error names the path the harness would use.
    stagesnap(&base, &["create"])
        .code(2)
        .stderr(contains(base.join("cache").display().to_string()));
}

#[test]
fn base_dir_flag_and_environment_move_relative_paths() {
    let env = real_layout();
    // The config somewhere else entirely, pointed at with --config; the base folder given.
    let elsewhere = env.root.join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    let file = elsewhere.join("my.cfg");
    fs::copy(env.root.join("stage-env/config/stage-env.cfg"), &file).unwrap();
    let base = env.root.join("stage-env");
    let args = [
        "--config",
        file.to_str().unwrap(),
        "--base-dir",
        base.to_str().unwrap(),
        "create",
    ];
    ok(&env.root, &args);
    assert!(
        env.root
            .join("testing/snapshots/clean_state/meta.json")
            .is_file()
    );

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stagesnap"));
    let out = cmd
        .current_dir(&env.root)
        .args(["--config", file.to_str().unwrap(), "config", "--json"])
        .env("STAGESNAP_BASE_DIR", &base)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["base_dir"], base.display().to_string());
    assert_eq!(v["base_dir_source"], "STAGESNAP_BASE_DIR");
}
