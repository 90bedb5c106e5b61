//! Two-phase create under busy node containers on a real docker engine: the snapshot is
//! exactly the paused state, and a file rewritten in place between the passes with its
//! mtime put back is still caught. Needs a running dockerd and the local image
//! scripts/setup.sh builds; without them these tests fail rather than skip.

mod common;

use std::process::Command;

use common::docker::{DATA_PATH, Net};
use common::{Env, Paused};
use stage_sample::GenerateOptions;

const DB: &str = "lib/global_db/mdbx.dat";

/// A busy node: appends to its log and rewrites a random 4 KiB page of its database, over
/// and over, as fast as a 2 ms sleep lets it.
fn busy_node() -> String {
    format!(
        "cd {DATA_PATH} && pages=$(( $(stat -c %s {DB}) / 4096 )) && i=0 && while true; do \
         i=$((i+1)); echo \"line $i\" >> log/cellframe-node.log; \
         dd if=/dev/urandom of={DB} bs=4096 count=1 seek=$((RANDOM % pages)) conv=notrunc 2>/dev/null; \
         usleep 2000; done"
    )
}

fn sh(script: &str) {
    let status = Command::new("sh").arg("-c").arg(script).status().unwrap();
    assert!(status.success(), "{script}");
}

/// While `create` runs, every node keeps writing; the test takes `cp -a` of the data inside
/// the paused window (after the second pass), then restores the snapshot (containers
/// removed) and compares the result with that copy with the tree oracle.
#[test]
#[cfg_attr(not(feature = "test-hooks"), ignore = "needs --features test-hooks")]
fn the_snapshot_of_busy_nodes_is_exactly_their_paused_state() {
    const NODES: u32 = 4;
    let env = Env::with_options(GenerateOptions {
        nodes: NODES,
        size: 24 << 20,
        ..Default::default()
    });
    let net = Net::start_with(env, NODES, &busy_node());
    let env = &net.env;
    env.set("quiesce", "pause");
    env.set("auto_cleanup", "false");
    let paused_copy = env.root.join("paused-copy");

    let mut cmd = env.std_cmd();
    cmd.args(["create", "busy", "--json"]);
    let paused = Paused::start(cmd, "create-after-copy");
    assert_eq!(net.states(), vec!["paused"; NODES as usize]);
    sh(&format!(
        "cp -a '{}' '{}'",
        env.data().display(),
        paused_copy.display()
    ));
    let (stdout, stderr) = common::texts(&paused.finish().success());
    assert_eq!(net.states(), vec!["running"; NODES as usize]);
    let created: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(
        created["paused_seconds"].as_f64().unwrap() > 0.0,
        "{stdout}"
    );
    // The second pass compared the files the nodes were writing.
    let compared: u64 = stderr
        .split("second_pass_compared compared=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no second pass: {stderr}"))
        .parse()
        .unwrap();
    assert!(compared >= 2 * NODES as u64, "{stderr}");

    let mut rm = vec!["rm", "-f"];
    rm.extend(net.names.iter().map(String::as_str));
    common::docker::docker(&rm);
    env.run(&["restore", "busy"], 0);
    common::assert_same_tree(
        &common::treestate(&env.data()),
        &common::treestate(&paused_copy),
    );
}

/// A database page rewritten between the passes by a process that holds the file open,
/// its mtime put back: size and mtime match the first pass's copy, so only the content
/// comparison of files open for writing catches it. The holder is a container's process
/// (its path to the file is its own mount namespace's), paused during the second pass.
#[test]
#[cfg_attr(not(feature = "test-hooks"), ignore = "needs --features test-hooks")]
fn a_page_rewritten_with_its_mtime_put_back_between_the_passes_is_caught() {
    let env = Env::sample(1, 4 << 20);
    let db = env.data().join("node1").join(DB);
    // Old, so that the first pass does not count it as recently written.
    sh(&format!("touch -d 2020-01-01 '{}'", db.display()));
    let holder = format!("exec 3<>{DATA_PATH}/{DB}; exec sleep 600");
    let net = Net::start_with(env, 1, &holder);
    let env = &net.env;
    env.set("quiesce", "pause");

    let mut cmd = env.std_cmd();
    cmd.args(["create", "caught"]);
    let paused = Paused::start(cmd, "create-between-passes");
    let before = std::fs::metadata(&db).unwrap();
    sh(&format!(
        "dd if=/dev/urandom of='{0}' bs=4096 count=1 seek=3 conv=notrunc 2>/dev/null \
         && touch -d 2020-01-01 '{0}'",
        db.display()
    ));
    let after = std::fs::metadata(&db).unwrap();
    assert_eq!(
        (before.len(), before.modified().unwrap()),
        (after.len(), after.modified().unwrap())
    );
    let (_, stderr) = common::texts(&paused.finish().success());
    let held = env.snapshots().join("caught/payload/data/node1").join(DB);
    assert!(
        std::fs::read(&held).unwrap() == std::fs::read(&db).unwrap(),
        "the snapshot holds the first pass's page: {stderr}"
    );
}

/// Without quiescing, a node that writes on during the second pass's comparison (here: its
/// log grows between the scan of the files to compare and their reading) makes those files
/// be copied again whole, as a one-pass create would: the create succeeds with what it saw.
#[test]
#[cfg_attr(not(feature = "test-hooks"), ignore = "needs --features test-hooks")]
fn files_written_during_an_unquiesced_comparison_are_copied_again_whole() {
    let env = Env::sample(1, 1 << 20);
    env.set("quiesce", "none");
    let log = env.data().join("node1/log/cellframe-node.log");
    let mut cmd = env.std_cmd();
    cmd.args(["create", "unquiesced"]);
    // Freshly generated, so the log counts as recently written and is compared.
    let paused = Paused::start(cmd, "create-before-compare");
    sh(&format!("echo 'written meanwhile' >> '{}'", log.display()));
    let (_, stderr) = common::texts(&paused.finish().success());
    assert!(stderr.contains("second_pass_recopied"), "{stderr}");
    let held = env
        .snapshots()
        .join("unquiesced/payload/data/node1/log/cellframe-node.log");
    assert!(std::fs::read(held).unwrap() == std::fs::read(&log).unwrap());
    env.run(&["verify", "unquiesced"], 0);
}

/// The first pass hashes the copy as rsync makes it; the second pass changes some of those
/// files, and the manifest must still hold exactly the digests (and piece values) of the
/// copy as it ends: here a held-open file patched across a 1 MiB piece boundary with its
/// mtime put back, one that grows, one that shrinks (the delta engine's in-place work), and
/// one rewritten whole that rsync replaces.
#[test]
#[cfg_attr(not(feature = "test-hooks"), ignore = "needs --features test-hooks")]
fn digests_taken_during_the_first_pass_end_up_those_of_the_copy() {
    const MIB: usize = 1 << 20;
    let env = Env::sample(1, 1 << 20);
    env.set("quiesce", "none");
    let lib = env.data().join("node1/lib");
    let file = |name: &str, size: usize| {
        let path = lib.join(name);
        let bytes: Vec<u8> = (0..size).map(|i| (i * 31 + i / 4093) as u8).collect();
        std::fs::write(&path, bytes).unwrap();
        // Old, so that only being held open makes the patched ones suspects.
        sh(&format!("touch -d 2020-01-01 '{}'", path.display()));
        path
    };
    let boundary = file("boundary.dat", 4 * MIB);
    let grows = file("grows.dat", 3 * MIB + 100);
    let shrinks = file("shrinks.dat", 5 * MIB);
    let replaced = file("replaced.dat", 3 * MIB);
    let mut holder = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec 3<>'{}' 4<>'{}' 5<>'{}'; exec sleep 600",
            boundary.display(),
            grows.display(),
            shrinks.display()
        ))
        .spawn()
        .unwrap();

    let mut cmd = env.std_cmd();
    cmd.args(["create", "hashed"]);
    let paused = Paused::start(cmd, "create-between-passes");
    sh(&format!(
        "dd if=/dev/urandom of='{0}' bs=4096 count=2 seek=255 conv=notrunc 2>/dev/null \
         && dd if=/dev/urandom of='{0}' bs=4096 count=1 seek=767 conv=notrunc 2>/dev/null \
         && touch -d 2020-01-01 '{0}' \
         && head -c 2097157 /dev/urandom >> '{1}' \
         && truncate -s 1048586 '{2}' \
         && head -c 3145728 /dev/urandom > '{3}'",
        boundary.display(),
        grows.display(),
        shrinks.display(),
        replaced.display()
    ));
    let (_, stderr) = common::texts(&paused.finish().success());
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert!(!stderr.contains("second_pass_recopied"), "{stderr}");
    // The patched files kept their first-pass digests: after the unpause only the replaced
    // file (and nothing of the patched ones' size) was read whole again.
    let logged = |field: &str| -> u64 {
        stderr
            .split("captured_hashed ")
            .nth(1)
            .and_then(|rest| rest.split(&format!("{field}=")).nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no captured_hashed {field}: {stderr}"))
            .parse()
            .unwrap()
    };
    assert!(logged("known") >= 3, "{stderr}");
    assert!(logged("bytes") < 4 * MIB as u64, "{stderr}");

    let snapshot = env.snapshots().join("hashed");
    for path in [&boundary, &grows, &shrinks, &replaced] {
        let held = snapshot
            .join("payload")
            .join(path.strip_prefix(env.cache()).unwrap());
        assert!(std::fs::read(held).unwrap() == std::fs::read(path).unwrap());
    }
    assert_digests_are_the_payloads(&snapshot);
    env.run(&["verify", "hashed"], 0);
}

/// Every file of the snapshot's manifest has the blake3 of its payload copy and, beyond one
/// piece, the chaining values of its 1 MiB pieces (computed here with blake3's own API).
fn assert_digests_are_the_payloads(snapshot: &std::path::Path) {
    use blake3::hazmat::HasherExt;
    const PIECE: usize = 1 << 20;
    let lines = |name: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(snapshot.join(name))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let pieces: std::collections::HashMap<String, String> = lines("pieces.jsonl")
        .into_iter()
        .map(|l| {
            (
                l["path"].as_str().unwrap().to_string(),
                l["pieces"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut checked = 0;
    for entry in lines("manifest.jsonl")
        .iter()
        .filter(|e| e["type"] == "file")
    {
        let path = entry["path"].as_str().unwrap();
        let bytes = std::fs::read(snapshot.join("payload").join(path)).unwrap();
        assert_eq!(
            entry["blake3"].as_str(),
            Some(blake3::hash(&bytes).to_hex().as_str()),
            "{path}"
        );
        let values: String = if bytes.len() > PIECE {
            bytes
                .chunks(PIECE)
                .enumerate()
                .flat_map(|(i, piece)| {
                    blake3::Hasher::new()
                        .set_input_offset((i * PIECE) as u64)
                        .update(piece)
                        .finalize_non_root()
                })
                .map(|b| format!("{b:02x}"))
                .collect()
        } else {
            String::new()
        };
        assert_eq!(
            pieces.get(path).cloned().unwrap_or_default(),
            values,
            "{path}"
        );
        checked += 1;
    }
    assert!(checked > 4);
}
