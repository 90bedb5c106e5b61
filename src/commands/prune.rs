//! `stagesnap prune`: remove the oldest unpinned snapshots beyond a count.

use anyhow::Result;
use serde::Serialize;

use super::{checked_store, load_config, lock_timeout, prepare_configured};
use crate::cli::{GlobalArgs, PruneArgs};
use crate::output::Report;
use crate::store::prune_plan;

#[derive(Serialize)]
struct Pruned {
    keep: u32,
    dry_run: bool,
    removed: Vec<String>,
    kept: Vec<String>,
}

pub fn run(g: &GlobalArgs, args: &PruneArgs) -> Result<Report> {
    let cfg = load_config(g)?;
    prepare_configured(&cfg)?;
    let keep = args
        .keep
        .unwrap_or_else(|| cfg.count("keep_snapshot_count"));
    let store = checked_store(&cfg)?;
    let lock = store.lock("prune", lock_timeout(g))?;
    if !args.dry_run {
        store.clean_leftovers(&lock)?;
    }
    let (snapshots, _) = store.list()?;
    let plan: Vec<String> = prune_plan(&snapshots, keep, &[cfg.snapshot_name()])
        .iter()
        .map(|s| s.meta.name.clone())
        .collect();
    if !args.dry_run {
        for name in &plan {
            store.delete(name, &lock)?;
            tracing::info!(name = %name, reason = "prune", "snapshot_deleted");
        }
    }
    let kept: Vec<String> = snapshots
        .iter()
        .map(|s| s.meta.name.clone())
        .filter(|n| !plan.contains(n))
        .collect();
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    let text = if plan.is_empty() {
        format!(
            "nothing to prune: {} snapshots, keeping {keep}\n",
            snapshots.len()
        )
    } else {
        plan.iter().map(|n| format!("{verb} {n}\n")).collect()
    };
    let pruned = Pruned {
        keep,
        dry_run: args.dry_run,
        removed: plan,
        kept,
    };
    Ok(Report::new("prune", &pruned, text))
}
