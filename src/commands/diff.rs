//! `stagesnap diff`: what differs between two snapshots, or a snapshot and the live data.

use anyhow::Result;
use serde::Serialize;

use super::{changes_table, compared, open};
use crate::cli::{DiffArgs, GlobalArgs};
use crate::exit::{Code, fail};
use crate::manifest::{self, Change, NodeSummary};
use crate::names::validate_name;
use crate::output::Report;

#[derive(Serialize)]
struct Diff {
    from: String,
    /// A snapshot name, or "live".
    to: String,
    identical: bool,
    nodes: Vec<NodeSummary>,
    changes: Vec<Change>,
}

pub fn run(g: &GlobalArgs, args: &DiffArgs) -> Result<Report> {
    compared(diff(g, args))
}

fn diff(g: &GlobalArgs, args: &DiffArgs) -> Result<Report> {
    let session = open(g)?;
    let cfg = &session.cfg;
    validate_name(&args.from)?;
    if let Some(to) = &args.to {
        validate_name(to)?;
        if args.full {
            return Err(fail(
                Code::Usage,
                "--full hashes the live data; between two snapshots every hash is already known, so leave it out",
            ));
        }
    }
    let (store, lock) = session.store_to_compare()?;
    let from = store.get(&args.from)?;
    let old = crate::modes::manifest_to_compare(&from, cfg, args.full)?;
    let new = match &args.to {
        Some(to) => crate::modes::stored_manifest(&store.get(to)?, cfg)?,
        None => {
            let live = cfg.live();
            live.check_present()?;
            manifest::scan_live(&live.cache_dir, &from.meta.include, &old, args.full)?
        }
    };
    drop(lock);
    let changes = manifest::compare(&old, &new);
    let nodes = manifest::summarize(&changes);
    let text = if changes.is_empty() {
        String::new()
    } else if args.stat {
        format!(
            "{}{} entries differ\n",
            changes_table(&nodes),
            changes.len()
        )
    } else {
        changes.iter().map(|c| c.line() + "\n").collect()
    };
    let identical = changes.is_empty();
    let diff = Diff {
        from: args.from.clone(),
        to: args.to.clone().unwrap_or_else(|| "live".into()),
        identical,
        nodes,
        changes,
    };
    let report = Report::new("diff", &diff, text);
    Ok(if identical {
        report
    } else {
        report.with_code(Code::Failure)
    })
}
