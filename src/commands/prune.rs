//! `stagesnap prune`: remove the snapshots that no retention rule keeps.

use anyhow::Result;
use serde::Serialize;

use super::{checked_store, load_config, lock_timeout, prepare_configured};
use crate::cli::{GlobalArgs, PruneArgs};
use crate::output::Report;
use crate::retention::{self, Decision, Rules};

#[derive(Serialize)]
struct Pruned {
    keep: u32,
    /// The spans in effect, as written; None when the rule is off.
    keep_within: Option<String>,
    keep_used_within: Option<String>,
    dry_run: bool,
    removed: Vec<String>,
    kept: Vec<String>,
    /// Every snapshot, newest first, with the rules that keep it or why it goes.
    snapshots: Vec<Decision>,
}

pub fn run(g: &GlobalArgs, args: &PruneArgs) -> Result<Report> {
    let cfg = load_config(g)?;
    if args.remote {
        return remote(&cfg, args);
    }
    prepare_configured(&cfg)?;
    let configured = Rules::configured(&cfg);
    let rules = Rules {
        keep_last: args.keep.unwrap_or(configured.keep_last),
        keep_within: args.keep_within.as_ref().or(configured.keep_within),
        keep_used_within: args
            .keep_used_within
            .as_ref()
            .or(configured.keep_used_within),
        ..configured
    };
    let store = checked_store(&cfg)?;
    let lock = store.lock("prune", lock_timeout(g))?;
    if !args.dry_run {
        store.clean_leftovers(&lock)?;
    }
    let decisions = retention::prune(&store, &lock, &rules, args.dry_run, "prune")?;
    let names = |remove: bool| -> Vec<String> {
        decisions
            .iter()
            .filter(|d| d.remove() == remove)
            .map(|d| d.name.clone())
            .collect()
    };
    let (removed, kept) = (names(true), names(false));
    let text = if decisions.is_empty() {
        "nothing to prune: no snapshots\n".to_string()
    } else {
        let lines: String = decisions.iter().map(|d| d.line() + "\n").collect();
        let done = match (args.dry_run, removed.len()) {
            (true, n) => format!("would remove {n} of {} snapshots\n", decisions.len()),
            (false, n) => format!("removed {n} of {} snapshots\n", decisions.len()),
        };
        lines + &done
    };
    let pruned = Pruned {
        keep: rules.keep_last,
        keep_within: rules.keep_within.map(ToString::to_string),
        keep_used_within: rules.keep_used_within.map(ToString::to_string),
        dry_run: args.dry_run,
        removed,
        kept,
        snapshots: decisions,
    };
    Ok(Report::new("prune", &pruned, text))
}

/// `prune --remote`.
fn remote(cfg: &crate::config::Config, args: &PruneArgs) -> Result<Report> {
    let remote = crate::remote::Remote::connect(&cfg.settings)?;
    let keep = args.keep.unwrap_or(cfg.settings.keep_snapshot_count);
    let pruned = crate::remote::prune(
        &remote,
        keep as usize,
        &cfg.settings.snapshot_name,
        args.dry_run,
    )?;
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    let text = format!(
        "{verb} {} of {} snapshots on {} ({}), and {} unused packs ({})\n",
        pruned.removed.len(),
        pruned.removed.len() + pruned.kept.len(),
        remote.url,
        if pruned.removed.is_empty() {
            "none".to_string()
        } else {
            pruned.removed.join(" ")
        },
        pruned.packs_removed,
        crate::tree::human_bytes(pruned.bytes_freed)
    );
    Ok(Report::new("prune", &pruned, text))
}
