//! `stagesnap prune`: remove the snapshots that no retention rule keeps.

use anyhow::Result;

use super::open;
use crate::cli::{GlobalArgs, PruneArgs};
use crate::ops::prune::PruneOpts;
use crate::output::Report;
use crate::tree::human_bytes;

pub fn run(g: &GlobalArgs, args: &PruneArgs) -> Result<Report> {
    if args.remote {
        return remote(g, args);
    }
    let pruned = open(g)?.prune(PruneOpts {
        keep: args.keep,
        keep_within: args.keep_within.as_ref(),
        keep_used_within: args.keep_used_within.as_ref(),
        dry_run: args.dry_run,
    })?;
    let all = pruned.snapshots.len();
    let text = if all == 0 {
        "nothing to prune: no snapshots\n".to_string()
    } else {
        let lines: String = pruned.snapshots.iter().map(|d| d.line() + "\n").collect();
        let done = match (pruned.dry_run, pruned.removed.len()) {
            (true, n) => format!("would remove {n} of {all} snapshots\n"),
            (false, n) => format!("removed {n} of {all} snapshots\n"),
        };
        lines + &done
    };
    Ok(Report::new("prune", &pruned, text))
}

/// `prune --remote`.
fn remote(g: &GlobalArgs, args: &PruneArgs) -> Result<Report> {
    let (url, pruned) = open(g)?.remote_prune(args.keep, args.dry_run)?;
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    let mut text = format!(
        "{verb} {} of {} snapshots on {url} ({}), and {} unused packs ({})\n",
        pruned.removed.len(),
        pruned.removed.len() + pruned.kept.len(),
        if pruned.removed.is_empty() {
            "none".to_string()
        } else {
            pruned.removed.join(" ")
        },
        pruned.packs_removed,
        human_bytes(pruned.bytes_freed)
    );
    if pruned.packs_condemned > 0 {
        text += &format!(
            "{} {} packs ({}, {} of them repacked) that no snapshot needs; a prune an hour or more later removes them\n",
            if args.dry_run {
                "would condemn"
            } else {
                "condemned"
            },
            pruned.packs_condemned,
            human_bytes(pruned.bytes_condemned),
            pruned.packs_repacked
        );
    }
    Ok(Report::new("prune", &pruned, text))
}
