//! `stagesnap prune`: remove the snapshots that no retention rule keeps.

use anyhow::Result;

use super::open;
use crate::cli::{GlobalArgs, PruneArgs};
use crate::ops::prune::PruneOpts;
use crate::output::Report;

pub fn run(g: &GlobalArgs, args: &PruneArgs) -> Result<Report> {
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
