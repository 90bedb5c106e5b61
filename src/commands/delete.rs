//! `stagesnap delete`: remove snapshots, also damaged ones.

use anyhow::Result;

use super::open;
use crate::cli::{DeleteArgs, GlobalArgs};
use crate::output::Report;

pub fn run(g: &GlobalArgs, args: &DeleteArgs) -> Result<Report> {
    if args.remote {
        let d = open(g)?.remote_delete(&args.names)?;
        let text: String = d
            .deleted
            .iter()
            .map(|name| format!("deleted {name} from {}\n", d.remote))
            .collect();
        return Ok(Report::new("delete", &d, text));
    }
    let d = open(g)?.delete(&args.names)?;
    let text: String = d
        .deleted
        .iter()
        .zip(&d.incomplete)
        .map(|(name, incomplete)| match incomplete {
            Some(why) => format!("deleted {name}, which was not a complete snapshot ({why})\n"),
            None => format!("deleted {name}\n"),
        })
        .collect();
    Ok(Report::new("delete", &d, text))
}
