//! Command-line types (clap derive). No logic here.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};

use crate::manifest::VerifyLevel;

#[derive(Debug, Parser)]
#[command(
    name = "stagesnap",
    version,
    about = "Snapshot the clean state of a docker test network once; restore it before every suite",
    after_help = format!(
        "Example: stagesnap create --force && stagesnap run --keep-failed -- pytest tests/\n\n{}",
        crate::exit::help_text()
    )
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
    /// Config file [default: $STAGESNAP_CONFIG, else stage-env.cfg or config/stage-env.cfg in this or the nearest parent directory]
    #[arg(short, long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// The stage-env base folder that relative paths in the config file resolve against [default: $STAGESNAP_BASE_DIR, else the folder holding config/ for a file in config/, else the config file's folder]
    #[arg(long, global = true, value_name = "DIR")]
    pub base_dir: Option<PathBuf>,

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

    /// No progress bars (they are only drawn when stderr is a terminal, and never with -q or --json)
    #[arg(long, global = true)]
    pub no_progress: bool,

    /// Seconds to wait for another stagesnap holding the store's lock
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = 60)]
    pub lock_timeout: u64,

    /// Give up after this many seconds (exit 1), cleaning up as for Ctrl-C; `run` does not count the suite [default: no limit]
    #[arg(long, global = true, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: Option<u64>,
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
    List(ListArgs),

    /// Remove snapshots
    #[command(after_help = "Example: stagesnap delete old_state other_state")]
    Delete(DeleteArgs),

    /// Turn a snapshot the stage-env harness left into a stagesnap snapshot (see `list`)
    #[command(after_help = "Example: stagesnap adopt clean_state")]
    Adopt(AdoptArgs),

    /// Remove the oldest unpinned snapshots beyond a count
    #[command(after_help = "Example: stagesnap prune --keep 3 --dry-run")]
    Prune(PruneArgs),

    /// Copy a snapshot to the configured remote, sending only the pieces it lacks
    #[command(after_help = "Example: stagesnap push clean_state")]
    Push(PushArgs),

    /// Copy a snapshot from the configured remote, fetching only the pieces not held here
    #[command(after_help = "Example: stagesnap pull clean_state")]
    Pull(PullArgs),

    /// Check that the configured mode can run here, and say why not
    #[command(after_help = "Example: stagesnap doctor")]
    Doctor,

    /// Show every effective setting and where it came from
    #[command(after_help = "Example: stagesnap config --json")]
    Config,

    /// Check stored snapshots against their manifests (every file's hash)
    #[command(after_help = "Example: stagesnap verify --all")]
    Verify(VerifyArgs),

    /// Is the live data identical to a snapshot? Exit 0 if so, 1 with a summary per node if not, 7 if it could not tell
    #[command(after_help = "Example: stagesnap status clean_state")]
    Status(StatusArgs),

    /// List what differs between two snapshots, or a snapshot and the live data. Exit 0 if nothing, 1 if something, 7 if it could not compare
    #[command(after_help = "Example: stagesnap diff clean_state --stat")]
    Diff(DiffArgs),

    /// Wait until a background create (`create --background`) of a snapshot ends; exit with its outcome
    #[command(after_help = "Example: stagesnap wait clean_state")]
    Wait(WaitArgs),

    /// Restore a snapshot, run a test suite on it, and exit with the suite's exit code
    #[command(after_help = "Example: stagesnap run --keep-failed -- pytest -x tests/")]
    Run(RunArgs),

    /// Write the shell completions and man pages into a directory (they are committed)
    #[command(hide = true, after_help = "Example: stagesnap generate-assets --out .")]
    GenerateAssets(AssetsArgs),

    /// Print the snapshot names, one per line, for shell completion
    #[command(hide = true, after_help = "Example: stagesnap complete-names")]
    CompleteNames,
}

impl Command {
    /// Whether the command may fork a detached process (`create --background`), which is
    /// only sound with no other thread running, so no progress bar ticking.
    pub fn detaches(&self) -> bool {
        matches!(self, Command::Create(args) if args.background)
    }
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

    /// Snapshot the data even though a restore was interrupted or failed, leaving it in an unknown state
    #[arg(long)]
    pub allow_interrupted: bool,

    /// Return once the data is captured and the nodes run again; a detached low-priority process finishes the snapshot (see `stagesnap wait`)
    #[arg(long)]
    pub background: bool,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Snapshot name [default: snapshot_name from the config]
    pub name: Option<String>,

    /// Check the restored data against the manifest: metadata (sizes, modes, owners, times,
    /// links, xattrs), full (also every file's hash) or none [default: restore_verify]
    #[arg(long, value_name = "LEVEL", value_parser = verify_level())]
    pub verify: Option<VerifyLevel>,

    /// Restore even if files named by `fingerprint` changed since the snapshot was made
    #[arg(long)]
    pub allow_stale: bool,
}

/// `--verify`'s values are `restore_verify`'s, listed in help as possible values.
fn verify_level() -> impl TypedValueParser<Value = VerifyLevel> {
    PossibleValuesParser::new(VerifyLevel::NAMES)
        .map(|name| VerifyLevel::from_name(&name).expect("one of VerifyLevel::NAMES"))
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Snapshot to restore before the suite [default: snapshot_name from the config]
    #[arg(long, value_name = "NAME")]
    pub snapshot: Option<String>,

    /// When the suite fails, snapshot the data it left as NAME-failed-<UTC time>, pinned
    #[arg(long)]
    pub keep_failed: bool,

    /// Restore even if files named by `fingerprint` changed since the snapshot was made
    #[arg(long)]
    pub allow_stale: bool,

    /// The suite: a program and its arguments, after `--`
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct AssetsArgs {
    /// Directory that receives completions/ and man/
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Snapshots to check [default: snapshot_name from the config]
    #[arg(conflicts_with = "all")]
    pub names: Vec<String>,

    /// Check every snapshot in the store
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Snapshot name [default: snapshot_name from the config]
    pub name: Option<String>,

    /// Hash every live file instead of only those whose size and mtime cannot tell
    #[arg(long)]
    pub full: bool,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Snapshot name [default: snapshot_name from the config]
    pub name: Option<String>,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The old side: a snapshot
    pub from: String,

    /// The new side: another snapshot [default: the live data]
    pub to: Option<String>,

    /// Counts and bytes per node instead of one line per entry
    #[arg(long)]
    pub stat: bool,

    /// Hash every live file instead of only those whose size and mtime cannot tell
    #[arg(long)]
    pub full: bool,
}

#[derive(Debug, Args)]
pub struct AdoptArgs {
    /// The stage-env snapshot (`NAME/` or `NAME.sqfs` in snapshots_dir) [default: snapshot_name from the config]
    pub name: Option<String>,

    /// Replace a stagesnap snapshot of the same name
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Snapshots to remove
    #[arg(required = true)]
    pub names: Vec<String>,

    /// Remove them from the configured remote instead (their pieces go at its prunes)
    #[arg(long)]
    pub remote: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// List the configured remote's snapshots instead
    #[arg(long)]
    pub remote: bool,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// Snapshot name [default: snapshot_name from the config]
    pub name: Option<String>,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Snapshot name [default: snapshot_name from the config]
    pub name: Option<String>,

    /// Replace a different local snapshot of that name
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// How many snapshots to keep [default: keep_snapshot_count from the config]
    #[arg(long, value_name = "N")]
    pub keep: Option<u32>,

    /// Also keep snapshots created within DURATION, e.g. 36h, 7d, 2w [default: keep_within from the config]
    #[arg(long, value_name = "DURATION", value_parser = crate::span::parse_span)]
    pub keep_within: Option<crate::span::Span>,

    /// Also keep snapshots restored within DURATION, e.g. 2d [default: keep_used_within from the config]
    #[arg(long, value_name = "DURATION", value_parser = crate::span::parse_span)]
    pub keep_used_within: Option<crate::span::Span>,

    /// Only say, for every snapshot, which rule keeps or removes it
    #[arg(long)]
    pub dry_run: bool,

    /// Prune the configured remote instead: keep the newest N (and pinned ones), condemn the
    /// packs no snapshot there needs (older than an hour), remove those condemned an hour ago
    #[arg(long, conflicts_with_all = ["keep_within", "keep_used_within"])]
    pub remote: bool,
}
