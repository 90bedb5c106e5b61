//! One module per subcommand. Each returns a [`Report`] or an error with an exit code.

use std::time::Duration;

use anyhow::Result;

use crate::cli::{Cli, Command, GlobalArgs};
use crate::config::{Config, Overrides};
use crate::docker::{self, Docker};
use crate::exit::{Code, fail, recode};
use crate::modes::{Mode, ModeKind};
use crate::output::Report;
use crate::quiesce::Op;
use crate::store::{Lock, Store, validate_name};
use crate::tools::Found;
use crate::tree::Live;

mod adopt;
mod complete_names;
mod config;
mod create;
mod delete;
mod diff;
mod doctor;
mod generate_assets;
mod list;
mod prune;
mod pull;
mod push;
mod restore;
mod run;
mod status;
mod verify;

pub fn run(cli: &Cli) -> Result<Report> {
    let g = &cli.global;
    crate::signals::arm(g.timeout);
    match &cli.command {
        Command::Create(args) => create::run(g, args),
        Command::Restore(args) => restore::run(g, args),
        Command::List(args) => list::run(g, args),
        Command::Delete(args) => delete::run(g, args),
        Command::Adopt(args) => adopt::run(g, args),
        Command::Prune(args) => prune::run(g, args),
        Command::Push(args) => push::run(g, args),
        Command::Pull(args) => pull::run(g, args),
        Command::Doctor => doctor::run(g),
        Command::Config => config::run(g),
        Command::Verify(args) => verify::run(g, args),
        Command::Status(args) => status::run(g, args),
        Command::Diff(args) => diff::run(g, args),
        Command::Run(args) => run::run(g, args),
        Command::GenerateAssets(args) => generate_assets::run(args),
        Command::CompleteNames => complete_names::run(g),
    }
}

/// The subcommand's name, for JSON error documents.
pub fn name(command: &Command) -> &'static str {
    match command {
        Command::Create(_) => "create",
        Command::Restore(_) => "restore",
        Command::List(_) => "list",
        Command::Delete(_) => "delete",
        Command::Adopt(_) => "adopt",
        Command::Prune(_) => "prune",
        Command::Push(_) => "push",
        Command::Pull(_) => "pull",
        Command::Doctor => "doctor",
        Command::Config => "config",
        Command::Verify(_) => "verify",
        Command::Status(_) => "status",
        Command::Diff(_) => "diff",
        Command::Run(_) => "run",
        Command::GenerateAssets(_) => "generate-assets",
        Command::CompleteNames => "complete-names",
    }
}

fn load_config(g: &GlobalArgs) -> Result<Config> {
    Config::load(&Overrides {
        config: g.config.clone(),
        base_dir: g.base_dir.clone(),
        set: g.set.clone(),
    })
}

/// The snapshot a command names, else `snapshot_name`, checked to be a valid name (exit 2).
fn snapshot_named(cfg: &Config, name: Option<&str>) -> Result<String> {
    let name = name.unwrap_or(&cfg.settings.snapshot_name).to_string();
    validate_name(&name)?;
    Ok(name)
}

fn store(cfg: &Config) -> Store {
    Store::new(&cfg.settings.snapshots_dir)
}

/// The configured store, refused (exit 2) when it overlaps the live data: every command
/// that locks the store checks this first, before it creates or locks anything.
fn checked_store(cfg: &Config) -> Result<Store> {
    Live::from_config(cfg).check_store_outside(&cfg.settings.snapshots_dir)?;
    Ok(store(cfg))
}

/// The store that status and diff compare with, under its shared lock. It must exist:
/// they only read, so they never create it.
fn store_to_compare(g: &GlobalArgs, cfg: &Config) -> Result<(Store, Lock)> {
    let store = checked_store(cfg)?;
    if !store.dir().is_dir() {
        return Err(fail(
            Code::CouldNotCompare,
            format!(
                "snapshots_dir {} does not exist, so there is no snapshot to compare with; fix snapshots_dir or make a snapshot with `stagesnap create`",
                store.dir().display()
            ),
        ));
    }
    let lock = store.lock_shared(lock_timeout(g))?;
    Ok((store, lock))
}

/// What status and diff return: a failure there means they could not compare (exit 7),
/// which a script must be able to tell from "they differ" (exit 1).
fn compared(result: Result<Report>) -> Result<Report> {
    result.map_err(|e| recode(e, Code::Failure, Code::CouldNotCompare))
}

fn lock_timeout(g: &GlobalArgs) -> Duration {
    Duration::from_secs(g.lock_timeout)
}

/// Per-node counts of changes, for `status` and `diff --stat`.
fn changes_table(nodes: &[crate::manifest::NodeSummary]) -> String {
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            vec![
                n.node.clone(),
                n.added.to_string(),
                n.removed.to_string(),
                n.modified.to_string(),
                n.metadata.to_string(),
                crate::tree::human_bytes(n.bytes),
            ]
        })
        .collect();
    crate::output::table(
        &["NODE", "ADDED", "REMOVED", "MODIFIED", "METADATA", "BYTES"],
        &rows,
    )
}

/// What create and restore hold once they may begin.
struct Session {
    cfg: Config,
    name: String,
    mode: Box<dyn Mode>,
    tools: Vec<Found>,
    docker: Option<Docker>,
    live: Live,
    store: Store,
    lock: Lock,
}

enum Begun {
    /// mode = disabled: nothing to do.
    Disabled {
        name: String,
        mode: ModeKind,
    },
    Ready(Box<Session>),
}

/// The steps create and restore share, in order, each of which may stop them before anything
/// changes: the configuration; the snapshot's name (`name`, else `snapshot_name`); the
/// configured mode with its tools (exit 3 when one is missing); docker when the
/// configuration needs it for `op`; the live data present and outside the store; the store
/// locked, and cleared of what crashed runs left there and beside the live data.
fn begin(g: &GlobalArgs, name: Option<&str>, op: Op) -> Result<Begun> {
    let cfg = load_config(g)?;
    let name = snapshot_named(&cfg, name)?;
    let (mode, tools) = prepare_configured(&cfg)?;
    if !mode.active() {
        tracing::info!(command = %op, "suite_isolation_disabled");
        return Ok(Begun::Disabled {
            name,
            mode: mode.kind(),
        });
    }
    let docker = docker_for(&cfg, mode.as_ref(), op == Op::Restore)?;
    let live = Live::from_config(&cfg);
    live.check_present()?;
    let store = checked_store(&cfg)?;
    let lock = store.lock(&format!("{op} {name}"), lock_timeout(g))?;
    store.clean_leftovers(&lock)?;
    live.remove_stale_work_dirs();
    Ok(Begun::Ready(Box::new(Session {
        cfg,
        name,
        mode,
        tools,
        docker,
        live,
        store,
        lock,
    })))
}

/// The docker client when this configuration needs one for a create (or, with `restore`, a
/// restore), checked before anything is touched: exit 3 when the CLI is missing or the
/// daemon does not answer.
fn docker_for(cfg: &Config, mode: &dyn Mode, restore: bool) -> Result<Option<Docker>> {
    docker::needed_by(cfg, mode, restore)
        .map(|why| Docker::connect(&why))
        .transpose()
}

/// [`prepare`] for the configured mode, whose settings are then checked against this
/// machine too (exit 2), still before anything is touched.
fn prepare_configured(cfg: &Config) -> Result<(Box<dyn Mode>, Vec<Found>)> {
    let (mode, tools) = prepare(cfg.settings.mode)?;
    mode.preflight(cfg, &tools)?;
    Ok((mode, tools))
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
