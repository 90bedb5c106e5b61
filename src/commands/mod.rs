//! One module per subcommand, each a thin adapter: its arguments become an operation's
//! options (`crate::ops`), the operation's outcome becomes a [`Report`] (its text, its JSON,
//! its exit code). No command module uses another; what two share is here.

use std::time::Duration;

use anyhow::Result;

use crate::cli::{Cli, Command, GlobalArgs};
use crate::config::{Config, Overrides};
use crate::ops::Session;
use crate::ops::create::Created;
use crate::ops::restore::Restored;
use crate::output::{Report, summary};
use crate::tree::human_bytes;

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
mod wait;

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
        Command::Wait(args) => wait::run(g, args),
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
        Command::Wait(_) => "wait",
        Command::Run(_) => "run",
        Command::GenerateAssets(_) => "generate-assets",
        Command::CompleteNames => "complete-names",
    }
}

fn overrides(g: &GlobalArgs) -> Overrides {
    Overrides {
        config: g.config.clone(),
        base_dir: g.base_dir.clone(),
        set: g.set.clone(),
    }
}

fn load_config(g: &GlobalArgs) -> Result<Config> {
    crate::ops::load_config(&overrides(g))
}

/// The session the command's operations run in: the configuration loaded once.
fn open(g: &GlobalArgs) -> Result<Session> {
    Session::open(
        &overrides(g),
        Duration::from_secs(g.lock_timeout),
        &crate::progress::Terminal,
    )
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

const DISABLED: &str = "suite isolation is disabled: nothing to do\n";

/// The report of a create, also `run --keep-failed`'s.
fn create_report(c: &Created) -> Report {
    if c.skipped {
        return Report::new("create", c, DISABLED.into());
    }
    let mut notes = String::new();
    if let Some(paused) = c.paused_seconds {
        notes.push_str(&format!(", nodes paused {paused:.2} s"));
    }
    if c.replaced {
        notes.push_str(", replacing the previous one");
    }
    if !c.pruned.is_empty() {
        notes.push_str(&format!(", pruned {} older snapshots", c.pruned.len()));
    }
    if c.background {
        let text = summary(
            &format!("captured {} ({} mode)", c.name, c.mode),
            c.covers_data.then_some((c.files, c.bytes)),
            c.seconds,
            &format!(
                "finishing in the background{notes}; `stagesnap wait {}` waits for it",
                c.name
            ),
        );
        return Report::new("create", c, text);
    }
    Report::new("create", c, created_line(c, "", &notes))
}

/// The summary line of a create (`how` says why, for an auto-create).
fn created_line(c: &Created, how: &str, notes: &str) -> String {
    summary(
        &format!("created {}{how} ({} mode)", c.name, c.mode),
        c.covers_data.then_some((c.files, c.bytes)),
        c.seconds,
        &format!("stored {}{notes}", human_bytes(c.stored_bytes)),
    )
}

/// The report of a restore, also `run`'s before its suite; exit 6 after a fallback.
fn restore_report(r: &Restored) -> Report {
    let restarted = if r.restarted {
        " and restarted them"
    } else {
        ""
    };
    let text = if r.skipped {
        DISABLED.into()
    } else if let Some(c) = &r.created {
        created_line(c, " from the current data, as it did not exist", "")
    } else if let Some(fallback) = &r.fallback {
        summary(
            &format!(
                "restoring {} failed ({}), so it fell back to recreate (restore_fallback)",
                r.name, fallback.error
            ),
            None,
            r.seconds,
            &format!(
                "removed {} entries in the node containers{restarted}; the data is NOT the snapshot's",
                r.stats.entries_deleted
            ),
        )
    } else if r.in_containers {
        summary(
            &format!("restored {} ({} mode)", r.name, r.mode),
            None,
            r.seconds,
            &format!(
                "removed {} entries in the node containers{restarted}",
                r.stats.entries_deleted
            ),
        )
    } else {
        summary(
            &format!("restored {} ({} mode)", r.name, r.mode),
            Some((r.files, r.bytes)),
            r.seconds,
            &format!(
                "rewrote {} files ({}), removed {} entries",
                r.stats.files_rewritten,
                human_bytes(r.stats.bytes_rewritten),
                r.stats.entries_deleted
            ),
        )
    };
    Report::new("restore", r, text).with_code(r.code())
}
