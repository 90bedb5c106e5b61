//! `stagesnap restore`: bring the live data back to a snapshot, in place.

use anyhow::Result;

use super::{open, restore_report};
use crate::cli::{GlobalArgs, RestoreArgs};
use crate::ops::restore::RestoreOpts;
use crate::output::Report;

pub fn run(g: &GlobalArgs, args: &RestoreArgs) -> Result<Report> {
    let opts = RestoreOpts {
        verify: args.verify,
        allow_stale: args.allow_stale,
    };
    let restored = open(g)?.restore(args.name.as_deref(), opts)?;
    Ok(restore_report(&restored))
}
