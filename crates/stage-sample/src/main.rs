//! `stage-sample`: make and dirty sample stage environments for testing stagesnap.
//! All logic lives in the `stage_sample` library; this only parses arguments and maps errors to exit
//! codes (2 for refused requests, like clap's usage errors; 1 for failures).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use stage_sample::{self as sample, GenerateOptions, Refusal, Shape, SuiteOptions};

#[derive(Parser)]
#[command(
    name = "stage-sample",
    version,
    about = "Generate and dirty sample stage environments for testing stagesnap"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a sample stage environment (stage-env.cfg, node data, certs, configs) under ROOT
    Generate {
        /// Folder to create the environment in; ROOT/testing must be absent or empty
        root: PathBuf,
        /// Number of nodes
        #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=1000))]
        nodes: u32,
        /// Total size of data/ across nodes, with optional K/M/G/T suffix
        #[arg(long, default_value = "200M", value_parser = sample::parse_size)]
        size: u64,
        /// A few large files per node, or tens of thousands of small ones
        #[arg(long, value_enum, default_value_t = Shape::Large)]
        shape: Shape,
        /// Number of small files across nodes (for --shape small)
        #[arg(long, default_value_t = 50_000)]
        files: u64,
        /// Seed of the generated content
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Value written to [suite_isolation] mode in stage-env.cfg
        #[arg(long, default_value = "filesystem")]
        mode: String,
    },
    /// Dirty a generated environment in place the way a test suite does
    Suite {
        /// Folder given to `generate`
        root: PathBuf,
        /// Seed of the changes
        #[arg(long, default_value_t = 2)]
        seed: u64,
        /// Multiplier for the amount of change
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        intensity: u32,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Generate {
            root,
            nodes,
            size,
            shape,
            files,
            seed,
            mode,
        } => {
            let opts = GenerateOptions {
                nodes,
                size,
                shape,
                files,
                seed,
                mode,
            };
            sample::generate(&root, &opts).map(|s| s.to_string())
        }
        Command::Suite {
            root,
            seed,
            intensity,
        } => sample::run_suite(&root, &SuiteOptions { seed, intensity }).map(|s| s.to_string()),
    };
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("stage-sample: error: {e:#}");
            ExitCode::from(if e.is::<Refusal>() { 2 } else { 1 })
        }
    }
}
