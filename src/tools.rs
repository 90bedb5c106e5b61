//! The one layer through which external programs run: locating them, checking versions,
//! capturing stderr, honouring Ctrl-C, and turning failures into errors that say what
//! failed and what to do.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::exit::{Code, fail};
use crate::signals;

/// An external program stagesnap can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tool {
    pub program: &'static str,
    /// Debian package that provides it, for the install hint.
    pub package: &'static str,
    pub version_args: &'static [&'static str],
}

pub const RSYNC: Tool = Tool {
    program: "rsync",
    package: "rsync",
    version_args: &["--version"],
};

/// A located tool and its version.
#[derive(Debug, Clone)]
pub struct Found {
    pub tool: Tool,
    pub path: PathBuf,
    pub version: String,
}

impl Tool {
    /// The program's path on PATH, if any.
    pub fn locate(&self) -> Option<PathBuf> {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|dir| dir.join(self.program))
            .find(|p| is_executable(p))
    }

    /// Locates the tool and reads its version, or fails with exit 3 and an install hint.
    pub fn require(&self, mode: &str) -> Result<Found> {
        let Some(path) = self.locate() else {
            return Err(fail(
                Code::MissingDependency,
                format!(
                    "{mode} mode selected but {} is not installed.\nInstall {}: sudo apt install {}",
                    self.program, self.package, self.package
                ),
            ));
        };
        let out = std::process::Command::new(&path)
            .args(self.version_args)
            .output()
            .with_context(|| format!("cannot run {}", path.display()))?;
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        let version = parse_version(&text).ok_or_else(|| {
            fail(
                Code::MissingDependency,
                format!(
                    "{} does not report a version ({} {}); reinstall {}: sudo apt install --reinstall {}",
                    path.display(),
                    self.program,
                    self.version_args.join(" "),
                    self.package,
                    self.package
                ),
            )
        })?;
        Ok(Found {
            tool: *self,
            path,
            version,
        })
    }
}

impl Found {
    /// Runs the tool to completion with captured output. A non-zero exit becomes an error that
    /// names `what` and quotes the end of stderr; Ctrl-C stops the child and returns exit 130.
    pub fn run<I, S>(&self, args: I, what: &str) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        tracing::debug!(tool = self.tool.program, ?args, "tool_run");
        let handle = duct::cmd(&self.path, &args)
            .stdout_capture()
            .stderr_capture()
            .stdin_null()
            // Stable, parseable messages whatever the user's locale.
            .env("LC_ALL", "C")
            .unchecked()
            .start()
            .with_context(|| format!("cannot start {}", self.path.display()))?;
        let output = loop {
            if let Some(out) = handle.try_wait()? {
                break out.clone();
            }
            if signals::interrupted() {
                for pid in handle.pids() {
                    // SAFETY: plain kill(2) on our own child's pid.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
                }
                let _ = handle.wait();
                return Err(fail(
                    Code::Interrupted,
                    format!(
                        "interrupted while {what}; {} was stopped",
                        self.tool.program
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        };
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
        let hint = if stderr.contains("No space left on device") {
            "; free space or move snapshots_dir to a larger filesystem"
        } else {
            ""
        };
        fail(
            Code::Failure,
            format!(
                "{} failed ({status}) while {what}: {tail}{hint}",
                self.tool.program
            ),
        )
    }
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
