//! Command-line types (clap derive). No logic here.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

const AFTER_HELP: &str = "\
Exit codes: 0 ok, 1 failure, 2 usage or config error, 3 missing dependency,
4 snapshot not found, 5 lock held, 6 restore degraded (a fallback ran), 130 interrupted.";

#[derive(Debug, Parser)]
#[command(
    name = "stagesnap",
    version,
    about = "Snapshot the clean state of a docker test network once; restore it before every suite",
    after_help = AFTER_HELP
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// Flags accepted before or after the subcommand.
#[derive(Debug, Args, Clone, Default)]
pub struct GlobalArgs {
    /// Config file [default: $STAGESNAP_CONFIG, else stage-env.cfg in this or the nearest parent directory]
    #[arg(short, long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Override a [suite_isolation] setting (or cache_dir) for this run; repeatable
    #[arg(short = 's', long = "set", global = true, value_name = "KEY=VALUE")]
    pub set: Vec<String>,

    /// Print one JSON document to stdout instead of text
    #[arg(long, global = true)]
    pub json: bool,

    /// More log output on stderr (-v debug, -vv trace); RUST_LOG overrides
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Only errors on stderr
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// Seconds to wait for another stagesnap holding the store's lock
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = 60)]
    pub lock_timeout: u64,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Snapshot the live data
    #[command(after_help = "Example: stagesnap create clean_state --force")]
    Create(CreateArgs),

    /// Bring the live data back to a snapshot, in place
    #[command(after_help = "Example: stagesnap restore clean_state")]
    Restore(RestoreArgs),

    /// List snapshots, newest first
    #[command(after_help = "Example: stagesnap list --json")]
    List,

    /// Remove snapshots
    #[command(after_help = "Example: stagesnap delete old_state other_state")]
    Delete(DeleteArgs),

    /// Remove the oldest unpinned snapshots beyond a count
    #[command(after_help = "Example: stagesnap prune --keep 3 --dry-run")]
    Prune(PruneArgs),

    /// Check that the configured mode can run here, and say why not
    #[command(after_help = "Example: stagesnap doctor")]
    Doctor,

    /// Show every effective setting and where it came from
    #[command(after_help = "Example: stagesnap config --json")]
    Config,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Snapshot name [default: snapshot_name from the config]
    pub name: Option<String>,

    /// Replace an existing snapshot of that name (the old one stays usable until the new one is complete)
    #[arg(long)]
    pub force: bool,

    /// Protect the snapshot from pruning
    #[arg(long)]
    pub pin: bool,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Snapshot name [default: snapshot_name from the config]
    pub name: Option<String>,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Snapshots to remove
    #[arg(required = true)]
    pub names: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// How many snapshots to keep [default: keep_snapshot_count from the config]
    #[arg(long, value_name = "N")]
    pub keep: Option<u32>,

    /// Only list what would be removed
    #[arg(long)]
    pub dry_run: bool,
}
