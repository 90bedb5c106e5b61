//! `stagesnap wait`: until a background create ends, with its outcome.

use anyhow::Result;

use super::open;
use crate::cli::{GlobalArgs, WaitArgs};
use crate::output::Report;

pub fn run(g: &GlobalArgs, args: &WaitArgs) -> Result<Report> {
    let waited = open(g)?.wait(args.name.as_deref())?;
    let text = format!("snapshot {} is complete\n", waited.name);
    Ok(Report::new("wait", &waited, text))
}
