//! `stagesnap adopt`: turn a snapshot the stage-env harness left into a stagesnap snapshot.

use anyhow::Result;

use super::open;
use crate::cli::{AdoptArgs, GlobalArgs};
use crate::output::{Report, summary};
use crate::tree::human_bytes;

pub fn run(g: &GlobalArgs, args: &AdoptArgs) -> Result<Report> {
    let a = open(g)?.adopt(args.name.as_deref(), args.force)?;
    let text = summary(
        &format!(
            "adopted {} ({} from the stage-env harness, now {} mode)",
            a.name,
            a.format.name(),
            a.mode
        ),
        Some((a.files, a.bytes)),
        a.seconds,
        &format!(
            "{} nodes, stored {}{}",
            a.nodes.len(),
            human_bytes(a.stored_bytes),
            if a.replaced {
                ", replacing the previous one"
            } else {
                ""
            }
        ),
    );
    Ok(Report::new("adopt", &a, text))
}
