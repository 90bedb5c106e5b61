//! One module per subcommand. Each returns a [`Report`] or an error with an exit code.

use std::time::Duration;

use anyhow::Result;

use crate::cli::{Cli, Command, GlobalArgs};
use crate::config::{Config, Overrides};
use crate::exit::{Code, fail};
use crate::modes::{Mode, ModeKind};
use crate::output::Report;
use crate::store::Store;
use crate::tools::Found;

mod config;
mod create;
mod delete;
mod doctor;
mod list;
mod prune;
mod restore;

pub fn run(cli: &Cli) -> Result<Report> {
    let g = &cli.global;
    match &cli.command {
        Command::Create(args) => create::run(g, args),
        Command::Restore(args) => restore::run(g, args),
        Command::List => list::run(g),
        Command::Delete(args) => delete::run(g, args),
        Command::Prune(args) => prune::run(g, args),
        Command::Doctor => doctor::run(g),
        Command::Config => config::run(g),
    }
}

/// The subcommand's name, for JSON error documents.
pub fn name(command: &Command) -> &'static str {
    match command {
        Command::Create(_) => "create",
        Command::Restore(_) => "restore",
        Command::List => "list",
        Command::Delete(_) => "delete",
        Command::Prune(_) => "prune",
        Command::Doctor => "doctor",
        Command::Config => "config",
    }
}

fn load_config(g: &GlobalArgs) -> Result<Config> {
    Config::load(&Overrides {
        config: g.config.clone(),
        set: g.set.clone(),
    })
}

fn store(cfg: &Config) -> Store {
    Store::new(cfg.snapshots_dir())
}

fn lock_timeout(g: &GlobalArgs) -> Duration {
    Duration::from_secs(g.lock_timeout)
}

/// The mode's implementation with its tools located: the dependency check every command
/// that touches snapshots or live data runs before anything else (exit 3).
fn prepare(kind: ModeKind) -> Result<(Box<dyn Mode>, Vec<Found>)> {
    let mode = kind.implementation().ok_or_else(|| {
        fail(
            Code::Usage,
            format!("mode {} is not available in this version of stagesnap; choose filesystem or disabled", kind.name()),
        )
    })?;
    let tools = mode
        .tools()
        .iter()
        .map(|t| t.require(kind.name()))
        .collect::<Result<Vec<_>>>()?;
    Ok((mode, tools))
}
