//! `stagesnap push`: copy a snapshot to the configured remote (see [`crate::remote`]).

use anyhow::Result;

use super::open;
use crate::cli::{GlobalArgs, PushArgs};
use crate::output::Report;
use crate::tree::human_bytes;

pub fn run(g: &GlobalArgs, args: &PushArgs) -> Result<Report> {
    let pushed = open(g)?.push(args.name.as_deref())?;
    let text = format!(
        "pushed {} to {}: {} pieces of {} ({} read), {} new: sent {} in {} packs in {:.2} s\n",
        pushed.name,
        pushed.remote,
        pushed.pieces,
        human_bytes(pushed.bytes),
        human_bytes(pushed.bytes_read),
        pushed.pieces_uploaded,
        human_bytes(pushed.bytes_uploaded),
        pushed.packs_uploaded,
        pushed.seconds
    );
    Ok(Report::new("push", &pushed, text))
}
