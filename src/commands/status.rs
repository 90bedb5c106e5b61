//! `stagesnap status`: is the live data identical to a snapshot?

use anyhow::Result;

use super::{changes_table, open};
use crate::cli::{GlobalArgs, StatusArgs};
use crate::exit::Code;
use crate::ops::compare::could_not_compare;
use crate::output::Report;

pub fn run(g: &GlobalArgs, args: &StatusArgs) -> Result<Report> {
    let session = open(g).map_err(could_not_compare)?;
    let s = session.status(args.name.as_deref(), args.full)?;
    let name = &s.name;
    let mut text = String::new();
    if let Some(background) = &s.background {
        text.push_str(&format!("{}\n", background.describe(name)));
    }
    if let Some(unknown) = &s.unknown_state {
        text.push_str(&format!("{unknown}\n"));
    }
    if s.stale {
        text.push_str(&format!(
            "snapshot {name} is stale: files named by fingerprint changed since it was made: {}; restore refuses it without --allow-stale\n",
            s.stale_files.join(", ")
        ));
    }
    if s.differences == 0 && s.unfinished_restore.is_some() {
        text.push_str(&format!(
            "no differences from {name} found ({} entries), but that stays unconfirmed until a restore succeeds\n",
            s.entries
        ));
    } else if s.differences == 0 {
        text.push_str(&format!(
            "live data is identical to {name} ({} entries)\n",
            s.entries
        ));
    } else {
        text.push_str(&format!(
            "live data differs from {name}: {} entries in {} nodes\n{}see them with `stagesnap diff {name}`\n",
            s.differences,
            s.nodes.len(),
            changes_table(&s.nodes)
        ));
    }
    let report = Report::new("status", &s, text);
    Ok(if s.identical {
        report
    } else {
        report.with_code(Code::Failure)
    })
}
