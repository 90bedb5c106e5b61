//! `stagesnap create`: snapshot the live data, atomically.

use anyhow::Result;

use super::{create_report, open};
use crate::cli::{CreateArgs, GlobalArgs};
use crate::ops::create::CreateOpts;
use crate::output::Report;

pub fn run(g: &GlobalArgs, args: &CreateArgs) -> Result<Report> {
    let opts = CreateOpts {
        force: args.force,
        pin: args.pin,
        allow_interrupted: args.allow_interrupted,
        background: args.background,
    };
    let created = open(g)?.create(args.name.as_deref(), opts)?;
    Ok(create_report(&created))
}
