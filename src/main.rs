use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use stagesnap::cli::Cli;
use stagesnap::{commands, exit, output, progress, signals};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let g = &cli.global;
    progress::init(progress::wanted(
        g.quiet || g.json || g.no_progress || cli.command.detaches(),
    ));
    init_logging(&cli);
    let result = signals::install().and_then(|()| commands::run(&cli));
    let code = match result {
        Ok(report) => {
            output::print(&report, cli.global.json);
            report.exit_status()
        }
        Err(err) => {
            let code = exit::code_of(&err);
            eprintln!("error: {}", exit::one_line(&err));
            if cli.global.json {
                output::print_error(commands::name(&cli.command), &err, code);
            }
            code.as_i32() as u8
        }
    };
    ExitCode::from(code)
}

/// Logs go to stderr as `LEVEL event key=value…`, around any progress bars; RUST_LOG wins
/// over -v/-q.
fn init_logging(cli: &Cli) {
    let level = match (cli.global.quiet, cli.global.verbose) {
        (true, _) => "error",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let color = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none()
        && std::env::var("TERM").map_or(true, |t| t != "dumb");
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("stagesnap={level}")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| progress::LogWriter)
        .with_ansi(color)
        .with_target(false)
        .without_time()
        .init();
}
