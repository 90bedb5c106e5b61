//! The one layer through which external programs run: locating them, checking versions,
//! capturing stderr, honouring Ctrl-C and `--timeout`, and turning failures into errors that
//! say what failed and what to do.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rustix::process::Signal;

use crate::exit::{Code, Error, fail};
use crate::signals;
use crate::sys;

/// An external program stagesnap can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tool {
    pub program: &'static str,
    /// Debian package that provides it, for the install hint.
    pub package: &'static str,
    /// What the install hint tells people to install: the program (`docker`), or the suite
    /// of tools it comes in (`squashfs-tools`).
    pub product: &'static str,
    pub version_args: &'static [&'static str],
    /// What an exit code of the tool means for stagesnap and what to do, where its own
    /// message does not say.
    /// What to tell people when the tool exits with a code (and its stderr holds a text; ""
    /// for any): (code, text, hint).
    pub exit_hints: &'static [(i32, &'static str, &'static str)],
}

pub const DOCKER: Tool = Tool {
    program: "docker",
    package: "docker.io",
    product: "docker",
    version_args: &["--version"],
    exit_hints: &[],
};

/// A located tool. Its version is read on first use (see [`Found::version`]): locating is a
/// PATH lookup, but running `rsync --version` costs more than a whole restore that finds
/// nothing to do, which never runs rsync.
#[derive(Debug, Clone)]
pub struct Found {
    pub tool: Tool,
    pub path: PathBuf,
    version: std::sync::OnceLock<String>,
}

impl Tool {
    /// The program's path on PATH, if any.
    pub fn locate(&self) -> Option<PathBuf> {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|dir| dir.join(self.program))
            .find(|p| is_executable(p))
    }

    /// Locates the tool, or fails with exit 3 and an install hint.
    pub fn require(&self, mode: &str) -> Result<Found> {
        self.require_for(&format!("{mode} mode selected"))
    }

    /// [`Tool::require`] for a need other than a mode's, e.g. `quiesce = pause is set`.
    pub fn require_for(&self, needed_by: &str) -> Result<Found> {
        let Some(path) = self.locate() else {
            return Err(Error::MissingTool {
                needed_by: needed_by.to_string(),
                program: self.program,
                product: self.product,
                package: self.package,
            }
            .into());
        };
        Ok(Found {
            tool: *self,
            path,
            version: std::sync::OnceLock::new(),
        })
    }
}

impl Found {
    /// The version the tool reports, read once; a tool that reports none is a broken install
    /// (exit 3). Every run checks it first, so a broken tool fails before its first real use.
    pub fn version(&self) -> Result<&str> {
        if let Some(v) = self.version.get() {
            return Ok(v);
        }
        let tool = &self.tool;
        let out = std::process::Command::new(&self.path)
            .args(tool.version_args)
            .output()
            .with_context(|| format!("cannot run {}", self.path.display()))?;
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        let version = parse_version(&text).ok_or_else(|| {
            fail(
                Code::MissingDependency,
                format!(
                    "{} does not report a version ({} {}); reinstall {}: sudo apt install --reinstall {}",
                    self.path.display(),
                    tool.program,
                    tool.version_args.join(" "),
                    tool.package,
                    tool.package
                ),
            )
        })?;
        Ok(self.version.get_or_init(|| version))
    }

    /// "3.2.7 at /usr/bin/rsync", for doctor.
    pub fn describe(&self) -> Result<String> {
        Ok(format!("{} at {}", self.version()?, self.path.display()))
    }

    /// Runs the tool to completion with captured output. A non-zero exit becomes an error that
    /// names `what` and quotes the end of stderr. Ctrl-C stops the child and returns exit 130,
    /// an expired `--timeout` stops it and returns exit 1; a child that ignores SIGTERM is
    /// killed after [`STOP_GRACE`].
    pub fn run<I, S>(&self, args: I, what: &str) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.exec(args.into_iter().map(Into::into).collect(), what, true, None)
    }

    /// [`Found::run`] that also hands every line of the tool's stdout to `on_line` as it
    /// comes (a line ends at `\n` or `\r`, as progress lines do), for the progress bars.
    pub fn run_reporting<I, S>(
        &self,
        args: I,
        what: &str,
        on_line: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.exec(
            args.into_iter().map(Into::into).collect(),
            what,
            true,
            Some(on_line),
        )
    }

    /// [`Found::run`] that finishes even after Ctrl-C or `--timeout`: for undoing (unpausing or
    /// starting containers again), which what triggered the undo must not cut short.
    pub fn run_to_end<I, S>(&self, args: I, what: &str) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.exec(
            args.into_iter().map(Into::into).collect(),
            what,
            false,
            None,
        )
    }

    fn exec(
        &self,
        args: Vec<OsString>,
        what: &str,
        stoppable: bool,
        on_line: Option<&mut (dyn FnMut(&str) + Send)>,
    ) -> Result<Output> {
        self.version()?;
        tracing::debug!(tool = self.tool.program, ?args, "tool_run");
        let handle = duct::cmd(&self.path, &args)
            .stderr_capture()
            .stdin_null()
            // Stable, parseable messages whatever the user's locale.
            .env("LC_ALL", "C")
            // mksquashfs clamps every file time to SOURCE_DATE_EPOCH when it is set.
            .env_remove("SOURCE_DATE_EPOCH")
            .before_spawn(|cmd| {
                tie_to_this_process(cmd);
                Ok(())
            })
            .unchecked()
            .reader()
            .with_context(|| format!("cannot start {}", self.path.display()))?;
        // stdout is read on a thread of its own, so the tool never blocks on a full pipe
        // while this one watches for Ctrl-C and --timeout.
        let (finished, stdout) = std::thread::scope(|s| {
            let reader = s.spawn(|| read_stdout(&handle, on_line));
            // Why the tool was stopped, and when; then whether it had to be killed.
            let mut stopping: Option<(signals::Stop, Instant)> = None;
            let mut killed = false;
            let mut polls = 0u32;
            let finished = loop {
                match handle.try_wait() {
                    Ok(Some(out)) => break Ok(out.clone()),
                    Ok(None) => match stopping {
                        None if stoppable => {
                            if let Some(why) = signals::stop() {
                                signal_groups(&handle, Signal::TERM);
                                stopping = Some((why, Instant::now()));
                            }
                        }
                        Some((_, since)) if !killed && since.elapsed() >= STOP_GRACE => {
                            signal_groups(&handle, Signal::KILL);
                            killed = true;
                        }
                        _ => {}
                    },
                    Err(e) => {
                        // Nothing will wait for the tool any more: end it, or the reader
                        // waits for its stdout forever.
                        signal_groups(&handle, Signal::KILL);
                        break Err(e);
                    }
                }
                // Most runs (mount, `unsquashfs -s`, docker inspect) end within milliseconds:
                // poll finely at first, so that waiting does not cost more than the run.
                polls += 1;
                std::thread::sleep(Duration::from_millis(if polls < 100 { 1 } else { 10 }));
            };
            let stdout = reader.join().expect("stdout reader does not panic");
            (finished.map(|out| (out, stopping)), stdout)
        });
        let (mut output, stopping) =
            finished.with_context(|| format!("cannot wait for {}", self.path.display()))?;
        if let Some((why, _)) = stopping {
            return Err(why.error(&format!(" while {what}; {} was stopped", self.tool.program)));
        }
        output.stdout =
            stdout.with_context(|| format!("cannot read the output of {}", self.tool.program))?;
        if !output.status.success() {
            return Err(self.failure(&output, what));
        }
        Ok(output)
    }

    fn failure(&self, output: &Output, what: &str) -> anyhow::Error {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = tail[tail.len().saturating_sub(3)..].join(" | ");
        let status = match output.status.code() {
            Some(c) => format!("exit {c}"),
            None => "killed by a signal".to_string(),
        };
        let hint = self
            .tool
            .exit_hints
            .iter()
            .find(|(code, text, _)| output.status.code() == Some(*code) && stderr.contains(text))
            .map_or(String::new(), |(_, _, hint)| format!("; {hint}"));
        fail(
            Code::Failure,
            format!(
                "{} failed ({status}) while {what}: {tail}{hint}",
                self.tool.program
            ),
        )
    }
}

/// How long a tool asked to stop (SIGTERM) gets before it is killed, as `docker stop` waits.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Makes a tool about to be spawned the leader of its own process group, so that stopping
/// the group also stops whatever the tool started (rsync's receiver, a script's children)
/// and a terminal's Ctrl-C reaches stagesnap alone, which then stops the tool in order;
/// and has the kernel kill it when stagesnap dies, so that a stagesnap killed with SIGKILL
/// leaves no rsync or mksquashfs writing into the store or the live data. (The kernel does so
/// when the spawning *thread* ends: [`Found::exec`] waits for the tool on that thread.)
fn tie_to_this_process(cmd: &mut std::process::Command) {
    cmd.process_group(0);
    sys::die_with_this_process(cmd);
}

/// Sends `signal` to the process group of every process the handle started.
fn signal_groups(handle: &duct::ReaderHandle, signal: Signal) {
    for pid in handle.pids() {
        // A group already gone has nothing left to stop.
        let _ = sys::signal_group(pid, signal);
    }
}

/// All of a tool's stdout, handing each line to `on_line` on the way.
fn read_stdout(
    mut reader: impl std::io::Read,
    mut on_line: Option<&mut (dyn FnMut(&str) + Send)>,
) -> std::io::Result<Vec<u8>> {
    let mut all = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut line_start = 0;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(all),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        all.extend_from_slice(&buf[..n]);
        if let Some(f) = on_line.as_mut() {
            while let Some(len) = all[line_start..]
                .iter()
                .position(|&b| b == b'\n' || b == b'\r')
            {
                f(&String::from_utf8_lossy(&all[line_start..line_start + len]));
                line_start += len + 1;
            }
        }
    }
}

/// Runs the test suite `argv` on the terminal's stdin, stdout and stderr and waits for it;
/// signals meanwhile are its business (see [`signals::forward_to`]). A command that cannot
/// be started is a usage error (exit 2).
pub fn run_suite(argv: &[OsString]) -> Result<std::process::ExitStatus> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| fail(Code::Usage, "no suite command given; put it after `--`"))?;
    tracing::debug!(?argv, "suite_run");
    let mut child = std::process::Command::new(program)
        .args(args)
        .spawn()
        .map_err(|e| {
            fail(
                Code::Usage,
                format!(
                    "cannot start the suite command {}: {e}; check its name and PATH",
                    program.to_string_lossy()
                ),
            )
        })?;
    let _forwarding = signals::forward_to(child.id());
    child
        .wait()
        .with_context(|| format!("cannot wait for {}", program.to_string_lossy()))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The first `N.N[.N…]` token in a version banner.
fn parse_version(text: &str) -> Option<String> {
    text.split(|c: char| c.is_whitespace() || c == ',' || c == '(' || c == ')')
        .map(|w| w.trim_start_matches('v'))
        .find(|w| {
            let mut parts = w.split('.');
            w.contains('.')
                && parts
                    .all(|p| !p.is_empty() && p.chars().next().is_some_and(|c| c.is_ascii_digit()))
        })
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::parse_version;

    #[test]
    fn versions_from_banners() {
        assert_eq!(
            parse_version("rsync  version 3.2.7  protocol version 31\nCopyright"),
            Some("3.2.7".into())
        );
        assert_eq!(
            parse_version("mksquashfs version 4.5.1 (2022/03/17)\ncopyright"),
            Some("4.5.1".into())
        );
        assert_eq!(
            parse_version("Docker version 20.10.24+dfsg1, build 297e128"),
            Some("20.10.24+dfsg1".into())
        );
        assert_eq!(parse_version("no version here"), None);
    }
}
