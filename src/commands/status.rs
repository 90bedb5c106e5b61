//! `stagesnap status`: is the live data identical to a snapshot?

use anyhow::Result;
use serde::Serialize;

use super::{changes_table, compared, open};
use crate::cli::{GlobalArgs, StatusArgs};
use crate::exit::Code;
use crate::fingerprint::Checker;
use crate::manifest::{self, NodeSummary};
use crate::output::Report;
use crate::store::JournalRecord;

#[derive(Serialize)]
struct Status {
    name: String,
    identical: bool,
    /// A restore that was interrupted or failed: the data is in an unknown state.
    #[serde(skip_serializing_if = "Option::is_none")]
    unfinished_restore: Option<JournalRecord>,
    entries: usize,
    differences: usize,
    nodes: Vec<NodeSummary>,
    /// Files named by `fingerprint` changed since the snapshot was made: restore refuses it.
    stale: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stale_files: Vec<String>,
}

pub fn run(g: &GlobalArgs, args: &StatusArgs) -> Result<Report> {
    compared(status(g, args))
}

fn status(g: &GlobalArgs, args: &StatusArgs) -> Result<Report> {
    let session = open(g)?;
    let cfg = &session.cfg;
    let name = session.snapshot_named(args.name.as_deref())?;
    let live = cfg.live();
    live.check_present()?;
    let (store, lock) = session.store_to_compare()?;
    let unfinished = store.unfinished_restore(&lock)?;
    let snap = store.get(&name)?;
    let stale_files = Checker::default().changes(&snap.meta)?;
    let expected = crate::modes::manifest_to_compare(&snap, cfg, args.full)?;
    let now = manifest::scan_live(&live.cache_dir, &snap.meta.include, &expected, args.full)?;
    drop(lock);
    let changes = manifest::compare(&expected, &now);
    let nodes = manifest::summarize(&changes);

    let mut text = String::new();
    if let Some(j) = &unfinished {
        text.push_str(&format!(
            "{}\n",
            j.unknown_state(&cfg.settings.snapshot_name)
        ));
    }
    if !stale_files.is_empty() {
        text.push_str(&format!(
            "snapshot {name} is stale: files named by fingerprint changed since it was made: {}; restore refuses it without --allow-stale\n",
            stale_files.join(", ")
        ));
    }
    if changes.is_empty() && unfinished.is_some() {
        // Never "identical" beside an unfinished restore: only a restore that succeeds
        // vouches for the data again.
        text.push_str(&format!(
            "no differences from {name} found ({} entries), but that stays unconfirmed until a restore succeeds\n",
            now.entries.len()
        ));
    } else if changes.is_empty() {
        text.push_str(&format!(
            "live data is identical to {name} ({} entries)\n",
            now.entries.len()
        ));
    } else {
        text.push_str(&format!(
            "live data differs from {name}: {} entries in {} nodes\n{}see them with `stagesnap diff {name}`\n",
            changes.len(),
            nodes.len(),
            changes_table(&nodes)
        ));
    }
    let identical = changes.is_empty() && unfinished.is_none();
    let status = Status {
        name,
        identical,
        unfinished_restore: unfinished,
        entries: now.entries.len(),
        differences: changes.len(),
        nodes,
        stale: !stale_files.is_empty(),
        stale_files,
    };
    let report = Report::new("status", &status, text);
    Ok(if identical {
        report
    } else {
        report.with_code(Code::Failure)
    })
}
