//! Exit codes and the error type that carries one to `main`.
//!
//! Inside the program errors are `anyhow::Error` with context; an [`Error`] or a [`Failure`]
//! anywhere in the chain decides the exit code. Anything without one is a plain failure (1).

use std::fmt;
use std::path::{Path, PathBuf};

/// The documented exit codes (README, man page). Later features reuse them; never renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Ok = 0,
    Failure = 1,
    Usage = 2,
    MissingDependency = 3,
    NotFound = 4,
    Locked = 5,
    Degraded = 6,
    /// status and diff could not tell whether the two sides differ.
    CouldNotCompare = 7,
    Interrupted = 130,
}

impl Code {
    /// Every code and what it means, as `--help` and the man page list them.
    pub const TABLE: &[(Code, &str)] = &[
        (Code::Ok, "ok"),
        (Code::Failure, "failure"),
        (Code::Usage, "usage or config error"),
        (Code::MissingDependency, "missing dependency"),
        (Code::NotFound, "snapshot not found"),
        (Code::Locked, "lock held"),
        (Code::Degraded, "restore degraded (a fallback ran)"),
        (
            Code::CouldNotCompare,
            "status or diff could not compare (a damaged snapshot, a missing store, unreadable data)",
        ),
        (Code::Interrupted, "interrupted"),
    ];

    pub fn as_i32(self) -> i32 {
        self as i32
    }

    /// The code numbered `n`, for one recorded on disk (a background create's failure).
    pub fn from_i32(n: i32) -> Option<Code> {
        Code::TABLE
            .iter()
            .map(|&(c, _)| c)
            .find(|c| c.as_i32() == n)
    }

    /// Stable machine-readable name used in `--json` error documents.
    pub fn kind(self) -> &'static str {
        match self {
            Code::Ok => "ok",
            Code::Failure => "failure",
            Code::Usage => "usage",
            Code::MissingDependency => "missing_dependency",
            Code::NotFound => "not_found",
            Code::Locked => "locked",
            Code::Degraded => "degraded",
            Code::CouldNotCompare => "could_not_compare",
            Code::Interrupted => "interrupted",
        }
    }
}

/// The commands whose exit codes [`Code::TABLE`] does not tell.
pub const EXCEPTIONS: &str = "status and diff exit 0 when the two sides are identical, 1 when they differ, and 7 (not 1) when they could not compare them; a snapshot that does not exist is 4, as everywhere. run exits with the suite's own exit code (128 + N when signal N ended it) once the restore succeeded.";

/// The exit codes in a paragraph, for `--help`.
pub fn help_text() -> String {
    let codes: Vec<String> = Code::TABLE
        .iter()
        .map(|(code, meaning)| format!("{} {meaning}", code.as_i32()))
        .collect();
    format!("Exit codes: {}.\n{EXCEPTIONS}", codes.join(", "))
}

/// The failures that several places report: each kind's message (what failed, on which
/// snapshot/path, and what to do) is written here once, and its exit code is [`Error::code`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A stored snapshot that cannot be used as it is. `refused`: a check before a restore
    /// found it, so the live data is untouched.
    #[error(
        "snapshot {snapshot} is damaged: {what}; {}delete it with `stagesnap delete {snapshot}` and create it again",
        if *.refused { "nothing was restored; " } else { "" }
    )]
    Damaged {
        snapshot: String,
        what: String,
        refused: bool,
    },
    /// A snapshot's payload found damaged while it is read, where its name is not at hand
    /// (the caller's context names the snapshot).
    #[error("the snapshot is damaged: {what}")]
    DamagedPayload { what: String },
    /// A file or directory that stagesnap needs could not be opened or read.
    #[error("cannot read {}: {error}", .path.display())]
    Unreadable { path: PathBuf, error: String },
    /// `also`: a further way out that only the caller knows, appended to the hint.
    #[error(
        "snapshot {snapshot} not found in {}; see `stagesnap list` or make it with `stagesnap create {snapshot}`{also}",
        .store.display()
    )]
    NotFound {
        snapshot: String,
        store: PathBuf,
        also: &'static str,
    },
    #[error(
        "snapshot store {} is locked by {holder}; waited {waited_secs} s. Try again later or raise --lock-timeout",
        .store.display()
    )]
    Locked {
        store: PathBuf,
        holder: String,
        waited_secs: u64,
    },
    #[error(
        "{needed_by} but {program} is not installed.\nInstall {product}: sudo apt install {package}"
    )]
    MissingTool {
        needed_by: String,
        program: &'static str,
        product: &'static str,
        package: &'static str,
    },
    /// A setting whose value is not valid (`raw`, None where the file's line could not be
    /// read as one), named as it was given.
    #[error("{}: {why}", setting_at(key, raw.as_deref(), origin))]
    Setting {
        key: &'static str,
        raw: Option<String>,
        origin: Origin,
        why: String,
    },
    /// A `--set` flag that is not `KEY=VALUE` of a known setting.
    #[error("--set {item:?}: {why}")]
    SetFlag { item: String, why: String },
    /// A path given by a flag or the environment (`how`) that is not there as `expected`.
    #[error("{what} {} (from {how}) does not exist or is not {expected}", .path.display())]
    GivenPath {
        what: &'static str,
        path: PathBuf,
        how: String,
        expected: &'static str,
    },
    /// A valid setting that this machine or its tools cannot honour.
    #[error("{key} = {raw} ({origin}): {why}")]
    Unusable {
        key: &'static str,
        raw: String,
        origin: Origin,
        why: String,
    },
}

/// A setting as it was given: `--set key="value"`, `config file F line N: [section] key =
/// "value"`…
fn setting_at(key: &str, raw: Option<&str>, origin: &Origin) -> String {
    let value = |sep: &str| raw.map(|r| format!("{sep}{r:?}")).unwrap_or_default();
    match origin {
        Origin::Flag => format!("--set {key}{}", value("=")),
        Origin::Env(var) => format!("environment {var}{}", value("=")),
        Origin::File {
            path,
            line,
            section,
        } => format!(
            "config file {} line {line}: [{section}] {key}{}",
            path.display(),
            value(" = ")
        ),
        Origin::Default => format!("default {key}{}", value(" = ")),
    }
}

/// Where a setting's value came from, which the errors about it name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Flag,
    Env(String),
    File {
        path: PathBuf,
        line: usize,
        section: String,
    },
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag => f.write_str("flag --set"),
            Origin::Env(var) => write!(f, "env {var}"),
            Origin::File {
                path,
                line,
                section,
            } => write!(f, "{}:{line} [{section}]", path.display()),
            Origin::Default => f.write_str("default"),
        }
    }
}

impl Error {
    /// [`Error::Unreadable`] as an `anyhow::Error`, for `map_err`.
    pub fn unreadable(path: &Path, error: impl fmt::Display) -> anyhow::Error {
        Error::Unreadable {
            path: path.to_path_buf(),
            error: error.to_string(),
        }
        .into()
    }

    pub fn code(&self) -> Code {
        match self {
            Error::Damaged { .. } | Error::DamagedPayload { .. } | Error::Unreadable { .. } => {
                Code::Failure
            }
            Error::NotFound { .. } => Code::NotFound,
            Error::Locked { .. } => Code::Locked,
            Error::MissingTool { .. } => Code::MissingDependency,
            Error::Setting { .. }
            | Error::Unusable { .. }
            | Error::SetFlag { .. }
            | Error::GivenPath { .. } => Code::Usage,
        }
    }
}

/// An error whose exit code is known, for the kinds that [`Error`] does not (yet) name. The
/// message is complete on its own (what failed, on which file/path/name, and what to do).
#[derive(Debug)]
pub struct Failure {
    pub code: Code,
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// Builds an `anyhow::Error` carrying `code`.
pub fn fail(code: Code, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Failure {
        code,
        message: message.into(),
    })
}

/// The exit code of an error: that of the first [`Error`] or [`Failure`] in its chain, also
/// one carried inside an `io::Error` (whose `source` skips what it carries), else 1.
pub fn code_of(err: &anyhow::Error) -> Code {
    fn known(e: &(dyn std::error::Error + 'static)) -> Option<Code> {
        e.downcast_ref::<Error>()
            .map(Error::code)
            .or_else(|| e.downcast_ref::<Failure>().map(|f| f.code))
    }
    err.chain()
        .find_map(|e| known(e).or_else(|| known(e.downcast_ref::<std::io::Error>()?.get_ref()?)))
        .unwrap_or(Code::Failure)
}

/// `err` with exit code `to` where it would have exited with `from`; its message unchanged.
pub fn recode(err: anyhow::Error, from: Code, to: Code) -> anyhow::Error {
    if code_of(&err) == from {
        fail(to, one_line(&err))
    } else {
        err
    }
}

/// `error: outer: inner: root`, the way anyhow chains read best on one line.
pub fn one_line(err: &anyhow::Error) -> String {
    let parts: Vec<String> = err.chain().map(|e| e.to_string()).collect();
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_of_an_error_kind_is_found_in_context_and_inside_an_io_error() {
        let locked = || Error::Locked {
            store: PathBuf::from("/store"),
            holder: "pid 7".into(),
            waited_secs: 3,
        };
        let plain = anyhow::Error::new(locked()).context("restore");
        assert_eq!(code_of(&plain), Code::Locked);
        let carried = anyhow::Error::new(std::io::Error::other(locked())).context("restore");
        assert_eq!(code_of(&carried), Code::Locked);
        assert_eq!(code_of(&anyhow::anyhow!("plain")), Code::Failure);
    }

    #[test]
    fn a_setting_error_names_the_value_where_it_was_given() {
        let setting = |raw: Option<&str>, origin| Error::Setting {
            key: "quiesce",
            raw: raw.map(str::to_string),
            origin,
            why: "not valid".into(),
        };
        let file = || Origin::File {
            path: PathBuf::from("/b/stage-env.cfg"),
            line: 4,
            section: "suite_isolation".into(),
        };
        for (error, said) in [
            (
                setting(Some("x"), Origin::Flag),
                "--set quiesce=\"x\": not valid",
            ),
            (
                setting(Some("x"), Origin::Env("STAGESNAP_QUIESCE".into())),
                "environment STAGESNAP_QUIESCE=\"x\": not valid",
            ),
            (
                setting(Some("x"), file()),
                "config file /b/stage-env.cfg line 4: [suite_isolation] quiesce = \"x\": not valid",
            ),
            (
                setting(None, file()),
                "config file /b/stage-env.cfg line 4: [suite_isolation] quiesce: not valid",
            ),
            (
                setting(Some("x"), Origin::Default),
                "default quiesce = \"x\": not valid",
            ),
        ] {
            assert_eq!(error.to_string(), said);
            assert_eq!(error.code(), Code::Usage);
        }
        let unusable = Error::Unusable {
            key: "squashfs_level",
            raw: "30".into(),
            origin: file(),
            why: "zstd takes levels 1-22".into(),
        };
        assert_eq!(
            unusable.to_string(),
            "squashfs_level = 30 (/b/stage-env.cfg:4 [suite_isolation]): zstd takes levels 1-22"
        );
        let flag = Error::SetFlag {
            item: "mode".into(),
            why: "expected KEY=VALUE".into(),
        };
        assert_eq!(flag.to_string(), "--set \"mode\": expected KEY=VALUE");
        let given = Error::GivenPath {
            what: "config file",
            path: PathBuf::from("/x.cfg"),
            how: "--config".into(),
            expected: "a file",
        };
        assert_eq!(
            given.to_string(),
            "config file /x.cfg (from --config) does not exist or is not a file"
        );
        assert_eq!((flag.code(), given.code()), (Code::Usage, Code::Usage));
    }
}
