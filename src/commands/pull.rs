//! `stagesnap pull`: copy a snapshot from the configured remote into the store (see
//! [`crate::remote`]).

use anyhow::Result;

use super::open;
use crate::cli::{GlobalArgs, PullArgs};
use crate::output::Report;
use crate::tree::human_bytes;

pub fn run(g: &GlobalArgs, args: &PullArgs) -> Result<Report> {
    let p = open(g)?.pull(args.name.as_deref(), args.force)?;
    let text = if p.up_to_date {
        format!("{} is up to date with {}\n", p.name, p.remote)
    } else {
        format!(
            "pulled {} from {}: {} pieces of {}, {} held here already: received {} in {} packs in {:.2} s\n",
            p.name,
            p.remote,
            p.pieces,
            human_bytes(p.bytes),
            p.pieces_local,
            human_bytes(p.bytes_downloaded),
            p.packs_downloaded,
            p.seconds
        )
    };
    Ok(Report::new("pull", &p, text))
}
