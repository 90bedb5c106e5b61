//! `stagesnap diff`: what differs between two snapshots, or a snapshot and the live data.

use anyhow::Result;

use super::{changes_table, open};
use crate::cli::{DiffArgs, GlobalArgs};
use crate::exit::Code;
use crate::ops::compare::could_not_compare;
use crate::output::Report;

pub fn run(g: &GlobalArgs, args: &DiffArgs) -> Result<Report> {
    let session = open(g).map_err(could_not_compare)?;
    let d = session.diff(&args.from, args.to.as_deref(), args.full)?;
    let text = if d.identical {
        String::new()
    } else if args.stat {
        format!(
            "{}{} entries differ\n",
            changes_table(&d.nodes),
            d.changes.len()
        )
    } else {
        d.changes.iter().map(|c| c.line() + "\n").collect()
    };
    let report = Report::new("diff", &d, text);
    Ok(if d.identical {
        report
    } else {
        report.with_code(Code::Failure)
    })
}
