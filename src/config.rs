//! Finding, reading and validating the configuration.
//!
//! Every setting resolves with the precedence `--set` flag > `STAGESNAP_<KEY>` > file > default,
//! and remembers where its value came from so `stagesnap config` can say so and every
//! validation error can name the file, line, section, key and value involved.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::exit::{Code, Error, Origin, fail};
use crate::ini::Ini;
use crate::manifest::VerifyLevel;
use crate::names::validate_name;
use crate::span::Span;
use crate::tree::Live;

pub const SECTION: &str = "suite_isolation";
pub const PATHS_SECTION: &str = "paths";
pub const FILE_NAME: &str = "stage-env.cfg";
pub const CONFIG_ENV: &str = "STAGESNAP_CONFIG";
pub const BASE_DIR_ENV: &str = "STAGESNAP_BASE_DIR";
/// The stage-env harness keeps its config in `<base>/config/`.
const CONFIG_FOLDER: &str = "config";

use crate::choices::{Choice, ModeKind, choices};

/// `mode`: suite isolation off (`disabled`, where create and restore do nothing), or the
/// mode it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    Disabled,
    Mode(ModeKind),
}

impl Choice for Isolation {
    const NAMES: &'static [&'static str] = &MODE_NAMES;

    fn from_name(name: &str) -> Option<Isolation> {
        match name {
            DISABLED => Some(Isolation::Disabled),
            _ => ModeKind::from_name(name).map(Isolation::Mode),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Isolation::Disabled => DISABLED,
            Isolation::Mode(kind) => kind.name(),
        }
    }
}

const DISABLED: &str = "disabled";

/// `disabled` and then every mode's name.
const MODE_NAMES: [&str; ModeKind::NAMES.len() + 1] = {
    let mut names = [DISABLED; ModeKind::NAMES.len() + 1];
    let mut i = 0;
    while i < ModeKind::NAMES.len() {
        names[i + 1] = ModeKind::NAMES[i];
        i += 1;
    }
    names
};

choices! {
    /// `quiesce`: what happens to running node containers around create and restore.
    pub enum Quiesce {
        Auto = "auto",
        None = "none",
        Pause = "pause",
        Stop = "stop",
    }
}

choices! {
    /// `restore_stop`: how a restore stops running node containers.
    pub enum RestoreStop {
        Kill = "kill",
        Stop = "stop",
    }
}

choices! {
    /// `restore_fallback`: what a failed restore does next.
    pub enum RestoreFallback {
        None = "none",
        Recreate = "recreate",
    }
}

/// The one spelling of a choice `name` (already trimmed and lowercased) stands for.
fn canonical<T: Choice>(name: &str) -> Option<&'static str> {
    T::from_name(name).map(T::name)
}

/// What a setting's value must look like.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// One of `names`; `canonical` goes through the setting's enum.
    Choice {
        names: &'static [&'static str],
        canonical: fn(&str) -> Option<&'static str>,
    },
    Bool,
    Count,
    /// `auto` or a whole number >= 1.
    CountOrAuto,
    /// `none`, or a span such as `36h` or `7d` ([`crate::span::parse_span`]).
    DurationOrNone,
    Name,
    Path,
    /// Space-separated relative paths below cache_dir.
    RelPaths,
    /// A container name with `{node}` (node directory name) and/or `{n}` (its number).
    ContainerTemplate,
    /// Space-separated `node:container` pairs.
    ContainerMap,
    /// An absolute path inside a container.
    ContainerPath,
    /// Space-separated shell glob patterns relative to a directory inside a container.
    Globs,
    /// `auto`, `none`, or space-separated paths or globs on this machine (relative ones
    /// relative to the base folder).
    FilePatterns,
    /// Empty, `s3://BUCKET[/PREFIX]` or `file:///ABSOLUTE/PATH` ([`RemoteUrl`]).
    RemoteUrl,
    /// Empty, or an `http://` or `https://` URL.
    EndpointUrl,
    /// Empty, or an S3 region name (`eu-west-1`).
    Region,
}

impl Kind {
    /// The kind of a setting whose typed value is `T`.
    pub const fn choice<T: Choice>() -> Kind {
        Kind::Choice {
            names: T::NAMES,
            canonical: canonical::<T>,
        }
    }
}

/// One row of the settings table: adding a setting is adding a row, to [`SPECS`] for one
/// of config's own, to a mode's file (and its registry row) for one only that mode reads.
#[derive(Debug)]
pub struct Spec {
    pub key: &'static str,
    pub section: &'static str,
    pub default: &'static str,
    pub kind: Kind,
}

/// `mode`, which the modes' own settings follow (see [`Config::load`]).
static MODE: Spec = Spec {
    key: "mode",
    section: SECTION,
    default: "filesystem",
    kind: Kind::choice::<Isolation>(),
};

/// The settings beside `mode` that are no single mode's.
const SPECS: &[Spec] = &[
    Spec {
        key: "auto_create_on_startup",
        section: SECTION,
        default: "true",
        kind: Kind::Bool,
    },
    Spec {
        key: "snapshot_name",
        section: SECTION,
        default: "clean_state",
        kind: Kind::Name,
    },
    Spec {
        key: "auto_cleanup",
        section: SECTION,
        default: "true",
        kind: Kind::Bool,
    },
    Spec {
        key: "keep_snapshot_count",
        section: SECTION,
        default: "5",
        kind: Kind::Count,
    },
    Spec {
        key: "keep_within",
        section: SECTION,
        default: "none",
        kind: Kind::DurationOrNone,
    },
    Spec {
        key: "keep_used_within",
        section: SECTION,
        default: "none",
        kind: Kind::DurationOrNone,
    },
    Spec {
        key: "snapshots_dir",
        section: SECTION,
        default: "../testing/snapshots",
        kind: Kind::Path,
    },
    Spec {
        key: "include",
        section: SECTION,
        default: "data",
        kind: Kind::RelPaths,
    },
    Spec {
        key: "container_name",
        section: SECTION,
        default: "cellframe-stage-node-{n}",
        kind: Kind::ContainerTemplate,
    },
    Spec {
        key: "containers",
        section: SECTION,
        default: "",
        kind: Kind::ContainerMap,
    },
    Spec {
        key: "container_data_path",
        section: SECTION,
        default: "/opt/cellframe-node/var",
        kind: Kind::ContainerPath,
    },
    Spec {
        key: "quiesce",
        section: SECTION,
        default: "auto",
        kind: Kind::choice::<Quiesce>(),
    },
    Spec {
        key: "restore_stop",
        section: SECTION,
        default: "kill",
        kind: Kind::choice::<RestoreStop>(),
    },
    Spec {
        key: "wait_healthy",
        section: SECTION,
        default: "false",
        kind: Kind::Bool,
    },
    Spec {
        key: "start_timeout",
        section: SECTION,
        default: "60",
        kind: Kind::Count,
    },
    Spec {
        key: "restore_fallback",
        section: SECTION,
        default: "none",
        kind: Kind::choice::<RestoreFallback>(),
    },
    Spec {
        key: "restore_verify",
        section: SECTION,
        default: "metadata",
        kind: Kind::choice::<VerifyLevel>(),
    },
    Spec {
        key: "restore_devices",
        section: SECTION,
        default: "false",
        kind: Kind::Bool,
    },
    Spec {
        key: "fingerprint",
        section: SECTION,
        default: "auto",
        kind: Kind::FilePatterns,
    },
    Spec {
        key: "remote",
        section: SECTION,
        default: "",
        kind: Kind::RemoteUrl,
    },
    Spec {
        key: "remote_endpoint",
        section: SECTION,
        default: "",
        kind: Kind::EndpointUrl,
    },
    Spec {
        key: "remote_region",
        section: SECTION,
        default: "",
        kind: Kind::Region,
    },
    Spec {
        key: "auto_pull",
        section: SECTION,
        default: "true",
        kind: Kind::Bool,
    },
    Spec {
        key: "cache_dir",
        section: PATHS_SECTION,
        // The stage-env harness's own default when [paths] has no cache_dir.
        default: "cache",
        kind: Kind::Path,
    },
];

/// A validated value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Text(String),
    Bool(bool),
    Count(u32),
    Span(crate::span::Span),
    Path(PathBuf),
    Paths(Vec<PathBuf>),
    List(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct Setting {
    pub raw: String,
    pub value: Value,
    pub source: Origin,
}

#[derive(Debug, Serialize)]
pub struct SettingReport {
    pub key: &'static str,
    pub section: &'static str,
    pub value: String,
    pub source: String,
}

/// The effective configuration.
#[derive(Debug)]
pub struct Config {
    /// The config file used.
    pub file: PathBuf,
    /// How the file was found (flag, env, search).
    pub file_source: String,
    /// The stage-env base folder, against which relative paths from the file resolve.
    pub base: PathBuf,
    /// Why `base` is that folder.
    pub base_source: String,
    /// config's own values, typed; a mode types its own (see [`Config::value`]).
    pub settings: Settings,
    /// Every setting's row: `mode`, the modes' own, then the rest ([`Config::load`]).
    specs: Vec<&'static Spec>,
    /// Every value as given, with its source, by key.
    values: BTreeMap<&'static str, Setting>,
}

/// `fingerprint`: the files a snapshot must stay consistent with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilePatterns {
    /// certs/ and configs/ in cache_dir, those that exist.
    Auto,
    None,
    /// Absolute paths or globs.
    Listed(Vec<String>),
}

/// Every setting's value, typed: built once when the config loads, so no use can misspell a
/// key or mistake a value's kind.
#[derive(Debug, Clone)]
pub struct Settings {
    pub mode: Isolation,
    pub auto_create_on_startup: bool,
    pub snapshot_name: String,
    pub auto_cleanup: bool,
    pub keep_snapshot_count: u32,
    /// None for `none`.
    pub keep_within: Option<Span>,
    /// None for `none`.
    pub keep_used_within: Option<Span>,
    pub snapshots_dir: PathBuf,
    /// Relative to cache_dir.
    pub include: Vec<PathBuf>,
    pub container_name: String,
    /// `node:container` pairs.
    pub containers: Vec<String>,
    pub container_data_path: String,
    pub quiesce: Quiesce,
    pub restore_stop: RestoreStop,
    pub wait_healthy: bool,
    pub start_timeout: u32,
    pub restore_fallback: RestoreFallback,
    pub restore_verify: VerifyLevel,
    pub restore_devices: bool,
    pub fingerprint: FilePatterns,
    /// None when no remote is configured.
    pub remote: Option<RemoteUrl>,
    /// None for the service's own endpoint.
    pub remote_endpoint: Option<String>,
    /// None for the environment's or the default region.
    pub remote_region: Option<String>,
    pub auto_pull: bool,
    pub cache_dir: PathBuf,
}

/// `remote`: where pushed snapshots are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteUrl {
    /// A bucket of an S3-compatible service, and the key prefix inside it ("" for none).
    S3 { bucket: String, prefix: String },
    /// A directory (a shared or network filesystem, or a local archive).
    File(PathBuf),
}

impl RemoteUrl {
    /// Parses `s3://BUCKET[/PREFIX]` or `file:///PATH`; the error says what is wrong.
    pub fn parse(text: &str) -> std::result::Result<RemoteUrl, String> {
        if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let bucket_ok = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                })
                && bucket.as_bytes()[0].is_ascii_alphanumeric();
            if !bucket_ok {
                return Err(format!(
                    "{bucket:?} is not an S3 bucket name (3-63 lowercase letters, digits, '-' or '.')"
                ));
            }
            let prefix = prefix.trim_matches('/');
            if prefix
                .split('/')
                .any(|part| matches!(part, "." | "..") || (part.is_empty() && !prefix.is_empty()))
            {
                return Err(format!("prefix {prefix:?} has an empty, '.' or '..' part"));
            }
            return Ok(RemoteUrl::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
            });
        }
        if let Some(path) = text.strip_prefix("file://") {
            let p = Path::new(path);
            if !p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
                return Err("a file:// remote needs an absolute path without '..', e.g. file:///mnt/snapshots".into());
            }
            return Ok(RemoteUrl::File(normalize(p)));
        }
        Err("not s3://BUCKET/PREFIX or file:///PATH".into())
    }
}

impl std::fmt::Display for RemoteUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RemoteUrl::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            RemoteUrl::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            RemoteUrl::File(path) => write!(f, "file://{}", path.display()),
        }
    }
}

impl Settings {
    /// Types the validated values. A key or kind here that does not match SPECS panics on
    /// every load, so any test catches it.
    fn new(values: &BTreeMap<&'static str, Setting>) -> Settings {
        let value = |key: &'static str| Typed {
            key,
            value: &setting(values, key).value,
        };
        Settings {
            mode: value("mode").choice(),
            auto_create_on_startup: value("auto_create_on_startup").flag(),
            snapshot_name: value("snapshot_name").text(),
            auto_cleanup: value("auto_cleanup").flag(),
            keep_snapshot_count: value("keep_snapshot_count").count(),
            keep_within: value("keep_within").span_or_none(),
            keep_used_within: value("keep_used_within").span_or_none(),
            snapshots_dir: value("snapshots_dir").path(),
            include: value("include").paths(),
            container_name: value("container_name").text(),
            containers: value("containers").list(),
            container_data_path: value("container_data_path").text(),
            quiesce: value("quiesce").choice(),
            restore_stop: value("restore_stop").choice(),
            wait_healthy: value("wait_healthy").flag(),
            start_timeout: value("start_timeout").count(),
            restore_fallback: value("restore_fallback").choice(),
            restore_verify: value("restore_verify").choice(),
            restore_devices: value("restore_devices").flag(),
            fingerprint: value("fingerprint").file_patterns(),
            remote: Some(value("remote").text())
                .filter(|t| !t.is_empty())
                .map(|t| RemoteUrl::parse(&t).expect("validated")),
            remote_endpoint: Some(value("remote_endpoint").text()).filter(|t| !t.is_empty()),
            remote_region: Some(value("remote_region").text()).filter(|t| !t.is_empty()),
            auto_pull: value("auto_pull").flag(),
            cache_dir: value("cache_dir").path(),
        }
    }
}

/// A validated value, typed by the code that knows its spec's [`Kind`]: config's own settings
/// in [`Settings::new`], a mode's in that mode. A kind that does not match the spec panics
/// on every load, so any test catches it.
pub struct Typed<'a> {
    key: &'static str,
    value: &'a Value,
}

impl Typed<'_> {
    fn wrong(&self, what: &str) -> ! {
        panic!("setting {} is not {what}: {:?}", self.key, self.value)
    }

    pub fn text(&self) -> String {
        match self.value {
            Value::Text(s) => s.clone(),
            _ => self.wrong("text"),
        }
    }

    pub fn flag(&self) -> bool {
        match self.value {
            Value::Bool(b) => *b,
            _ => self.wrong("a boolean"),
        }
    }

    pub fn count(&self) -> u32 {
        match self.value {
            Value::Count(n) => *n,
            _ => self.wrong("a count"),
        }
    }

    /// None for `auto`.
    pub fn count_or_auto(&self) -> Option<u32> {
        match self.value {
            Value::Count(n) => Some(*n),
            Value::Text(auto) if auto == "auto" => None,
            _ => self.wrong("a count or auto"),
        }
    }

    /// None for `none`.
    pub fn span_or_none(&self) -> Option<Span> {
        match self.value {
            Value::Span(span) => Some(span.clone()),
            Value::Text(none) if none == "none" => None,
            _ => self.wrong("a span or none"),
        }
    }

    pub fn path(&self) -> PathBuf {
        match self.value {
            Value::Path(p) => p.clone(),
            _ => self.wrong("a path"),
        }
    }

    pub fn paths(&self) -> Vec<PathBuf> {
        match self.value {
            Value::Paths(p) => p.clone(),
            _ => self.wrong("a path list"),
        }
    }

    pub fn list(&self) -> Vec<String> {
        match self.value {
            Value::List(items) => items.clone(),
            _ => self.wrong("a list"),
        }
    }

    pub fn file_patterns(&self) -> FilePatterns {
        match self.value {
            Value::List(patterns) => FilePatterns::Listed(patterns.clone()),
            Value::Text(auto) if auto == "auto" => FilePatterns::Auto,
            Value::Text(none) if none == "none" => FilePatterns::None,
            _ => self.wrong("file patterns"),
        }
    }

    /// A choice validated by [`Kind::choice`], typed.
    pub fn choice<T: Choice>(&self) -> T {
        T::from_name(&self.text()).unwrap_or_else(|| {
            panic!(
                "{} = {:?} was validated against {:?}",
                self.key,
                self.value,
                T::NAMES
            )
        })
    }
}

fn setting<'a>(values: &'a BTreeMap<&'static str, Setting>, key: &str) -> &'a Setting {
    values
        .get(key)
        .unwrap_or_else(|| panic!("setting {key} was not loaded: not in SPECS nor a mode's row"))
}

/// Command-line inputs that influence configuration.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub base_dir: Option<PathBuf>,
    pub set: Vec<String>,
}

impl Config {
    /// The live data this configuration points at.
    pub fn live(&self) -> Live {
        Live {
            cache_dir: self.settings.cache_dir.clone(),
            include: self.settings.include.clone(),
        }
    }

    /// What a snapshot read from the store may hold under this configuration.
    pub fn allowed(&self) -> crate::manifest::Allowed<'_> {
        crate::manifest::Allowed {
            include: &self.settings.include,
            devices: self.settings.restore_devices,
        }
    }

    /// Finds, reads and validates the configuration. Errors carry exit code 2. The modes,
    /// above this layer, own their settings and pass their rows in `modes`; each is
    /// validated, reported and refused as an unknown `--set` key like config's own, and
    /// follows `mode` in `stagesnap config`.
    pub fn load(overrides: &Overrides, modes: &[&'static Spec]) -> Result<Config> {
        let cwd = std::env::current_dir().context("cannot read the current directory")?;
        let env: BTreeMap<String, String> = std::env::vars().collect();
        Self::load_from(overrides, &cwd, &env, modes)
    }

    /// [`Config::load`] with the working directory and environment given, for tests.
    pub fn load_from(
        overrides: &Overrides,
        cwd: &Path,
        env: &BTreeMap<String, String>,
        modes: &[&'static Spec],
    ) -> Result<Config> {
        let specs: Vec<&'static Spec> = std::iter::once(&MODE)
            .chain(modes.iter().copied())
            .chain(SPECS)
            .collect();
        let (file, file_source) = locate(overrides, cwd, env)?;
        let text = std::fs::read(&file).map_err(|e| {
            fail(
                Code::Usage,
                format!("cannot read config file {}: {e}", file.display()),
            )
        })?;
        let text = String::from_utf8(text).map_err(|_| {
            fail(
                Code::Usage,
                format!("config file {} is not valid UTF-8", file.display()),
            )
        })?;
        let ini = Ini::parse(&text).map_err(|e| {
            let at = e.line.map(|l| format!(" line {l}")).unwrap_or_default();
            fail(
                Code::Usage,
                format!(
                    "config file {}{at}: {}; fix the file or pass another with --config",
                    file.display(),
                    e.message
                ),
            )
        })?;
        let (base, base_source) = base_folder(overrides, &file, cwd, env)?;
        let flags = parse_set_flags(&overrides.set, &specs)?;
        warn_unknown_keys(&ini, &file, &specs);

        let mut values = BTreeMap::new();
        for &spec in &specs {
            let (raw, source) = if let Some(v) = flags.get(spec.key) {
                (v.clone(), Origin::Flag)
            } else if let Some(v) = env.get(&env_var(spec.key)) {
                (v.clone(), Origin::Env(env_var(spec.key)))
            } else if let Some(found) = ini.get(spec.section, spec.key) {
                let found = found.map_err(|e| Error::Setting {
                    key: spec.key,
                    raw: None,
                    origin: Origin::File {
                        path: file.clone(),
                        line: e.line.unwrap_or(0),
                        section: spec.section.to_string(),
                    },
                    why: e.message,
                })?;
                let source = Origin::File {
                    path: file.clone(),
                    line: found.line,
                    section: found.section.to_string(),
                };
                (found.text, source)
            } else {
                (spec.default.to_string(), Origin::Default)
            };
            // Relative paths from the file (or defaults) are relative to the base folder, as
            // the harness resolves them; from the command line or environment, to the working
            // directory.
            let rel_base = match source {
                Origin::Flag | Origin::Env(_) => cwd,
                _ => &base,
            };
            let value = validate(spec, &raw, rel_base).map_err(|why| Error::Setting {
                key: spec.key,
                raw: Some(raw.clone()),
                origin: source.clone(),
                why,
            })?;
            values.insert(spec.key, Setting { raw, value, source });
        }
        Ok(Config {
            file,
            file_source,
            base,
            base_source,
            settings: Settings::new(&values),
            specs,
            values,
        })
    }

    /// The validated value of `spec`, a row passed to [`Config::load`]: taking the row, not
    /// its key, so that a misspelt setting does not compile.
    pub fn value(&self, spec: &Spec) -> Typed<'_> {
        Typed {
            key: spec.key,
            value: &self.setting(spec.key).value,
        }
    }

    /// A setting's raw value and source, for messages that name where a value came from.
    pub fn setting(&self, key: &str) -> &Setting {
        setting(&self.values, key)
    }

    /// The error of a setting that is valid but cannot be honoured here (exit 2), naming its
    /// value and where that came from.
    pub fn unusable(&self, spec: &Spec, why: String) -> anyhow::Error {
        let s = self.setting(spec.key);
        Error::Unusable {
            key: spec.key,
            raw: s.raw.trim().to_string(),
            origin: s.source.clone(),
            why,
        }
        .into()
    }

    /// Every setting in table order, for `stagesnap config`.
    pub fn report(&self) -> Vec<SettingReport> {
        self.specs
            .iter()
            .map(|spec| {
                let s = self.setting(spec.key);
                SettingReport {
                    key: spec.key,
                    section: spec.section,
                    value: display_value(&s.value),
                    source: s.source.to_string(),
                }
            })
            .collect()
    }
}

fn display_value(v: &Value) -> String {
    match v {
        Value::Text(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Count(n) => n.to_string(),
        Value::Span(span) => span.to_string(),
        Value::Path(p) => p.display().to_string(),
        Value::Paths(ps) => ps
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" "),
        Value::List(items) => items.join(" "),
    }
}

pub fn env_var(key: &str) -> String {
    format!("STAGESNAP_{}", key.to_ascii_uppercase())
}

fn locate(
    overrides: &Overrides,
    cwd: &Path,
    env: &BTreeMap<String, String>,
) -> Result<(PathBuf, String)> {
    let given = match (&overrides.config, env.get(CONFIG_ENV)) {
        (Some(p), _) => Some((p.clone(), "--config")),
        (None, Some(p)) if !p.is_empty() => Some((PathBuf::from(p), CONFIG_ENV)),
        _ => None,
    };
    if let Some((path, how)) = given {
        let path = cwd.join(path);
        if !path.is_file() {
            return Err(Error::GivenPath {
                what: "config file",
                path,
                how: how.to_string(),
                expected: "a file",
            }
            .into());
        }
        return Ok((path, how.to_string()));
    }
    // The harness's layout puts the file in `<base>/config/`; a folder's own file wins.
    for dir in cwd.ancestors() {
        for candidate in [dir.join(FILE_NAME), dir.join(CONFIG_FOLDER).join(FILE_NAME)] {
            if candidate.is_file() {
                return Ok((candidate, "found by search".to_string()));
            }
        }
    }
    Err(fail(
        Code::Usage,
        format!(
            "no {FILE_NAME} in {} or any parent directory (nor {CONFIG_FOLDER}/{FILE_NAME} in one); pass --config FILE or set {CONFIG_ENV}",
            cwd.display()
        ),
    ))
}

/// The stage-env base folder: `--base-dir`, else `STAGESNAP_BASE_DIR`, else the folder holding
/// `config/` when the file sits in a folder named `config` (the harness's layout), else the
/// file's own folder. Returns it with the reason, for `stagesnap config`.
fn base_folder(
    overrides: &Overrides,
    file: &Path,
    cwd: &Path,
    env: &BTreeMap<String, String>,
) -> Result<(PathBuf, String)> {
    let given = match (&overrides.base_dir, env.get(BASE_DIR_ENV)) {
        (Some(p), _) => Some((p.clone(), "--base-dir".to_string())),
        (None, Some(p)) if !p.is_empty() => Some((PathBuf::from(p), BASE_DIR_ENV.to_string())),
        _ => None,
    };
    if let Some((dir, how)) = given {
        let dir = normalize(&cwd.join(dir));
        if !dir.is_dir() {
            return Err(Error::GivenPath {
                what: "base folder",
                path: dir,
                how,
                expected: "a directory",
            }
            .into());
        }
        return Ok((dir, how));
    }
    let folder = file.parent().unwrap_or(Path::new("/"));
    match folder.parent() {
        Some(base) if folder.file_name().is_some_and(|n| n == CONFIG_FOLDER) => Ok((
            base.to_path_buf(),
            format!("the folder holding {CONFIG_FOLDER}/, where the config file is"),
        )),
        _ => Ok((folder.to_path_buf(), "the config file's folder".to_string())),
    }
}

fn parse_set_flags(set: &[String], specs: &[&Spec]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for item in set {
        let flag = |why: String| Error::SetFlag {
            item: item.clone(),
            why,
        };
        let Some((key, value)) = item.split_once('=') else {
            return Err(flag("expected KEY=VALUE, e.g. --set mode=squashfs".into()).into());
        };
        let key = key.trim().to_ascii_lowercase();
        if !specs.iter().any(|s| s.key == key) {
            return Err(flag(format!(
                "unknown setting {key:?}; valid: {}",
                known_keys(specs)
            ))
            .into());
        }
        out.insert(key, value.trim().to_string());
    }
    Ok(out)
}

fn known_keys(specs: &[&Spec]) -> String {
    specs.iter().map(|s| s.key).collect::<Vec<_>>().join(", ")
}

fn warn_unknown_keys(ini: &Ini, file: &Path, specs: &[&Spec]) {
    for (key, line) in ini.own_keys(SECTION) {
        if !specs.iter().any(|s| s.section == SECTION && s.key == key) {
            tracing::warn!(
                file = %file.display(),
                line,
                key = %key,
                "unknown_setting: [{SECTION}] {key} is not a stagesnap setting and is ignored"
            );
        }
    }
}

fn validate(spec: &Spec, raw: &str, base: &Path) -> std::result::Result<Value, String> {
    match spec.kind {
        Kind::Choice { names, canonical } => canonical(&raw.trim().to_ascii_lowercase())
            .map(|name| Value::Text(name.to_string()))
            .ok_or_else(|| {
                format!(
                    "not a valid {}; choose one of: {}",
                    spec.key,
                    names.join(", ")
                )
            }),
        Kind::Bool => crate::ini::parse_bool(raw)
            .map(Value::Bool)
            .ok_or_else(|| "not a boolean; use one of: true, false, yes, no, on, off, 1, 0".into()),
        Kind::Count => raw
            .trim()
            .parse::<u32>()
            .map(Value::Count)
            .map_err(|_| "not a whole number >= 0".into()),
        Kind::CountOrAuto => match raw.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Value::Text("auto".into())),
            n => n
                .parse::<u32>()
                .ok()
                .filter(|&n| n >= 1)
                .map(Value::Count)
                .ok_or_else(|| "not auto or a whole number >= 1".into()),
        },
        Kind::DurationOrNone => match raw.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(Value::Text("none".into())),
            text => crate::span::parse_span(text)
                .map(Value::Span)
                .map_err(|why| format!("{why}; or none")),
        },
        Kind::Name => validate_name(raw)
            .map(|()| Value::Text(raw.to_string()))
            .map_err(|e| e.to_string()),
        Kind::Path => {
            if raw.trim().is_empty() {
                return Err("empty path; give a directory".into());
            }
            Ok(Value::Path(normalize(&base.join(raw.trim()))))
        }
        Kind::RelPaths => {
            let paths: Vec<PathBuf> = raw.split_whitespace().map(PathBuf::from).collect();
            if paths.is_empty() {
                return Err("no paths; give at least one path below cache_dir, e.g. data".into());
            }
            for p in &paths {
                let below = p
                    .components()
                    .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
                if !below || normalize(p).as_os_str().is_empty() {
                    return Err(format!(
                        "{} is not a relative path below cache_dir (no leading /, no ..)",
                        p.display()
                    ));
                }
            }
            let mut normalized: Vec<PathBuf> = paths.iter().map(|p| normalize(p)).collect();
            normalized.sort();
            normalized.dedup();
            for pair in normalized.windows(2) {
                if pair[1].starts_with(&pair[0]) {
                    return Err(format!(
                        "{} is inside {}; list each path once",
                        pair[1].display(),
                        pair[0].display()
                    ));
                }
            }
            Ok(Value::Paths(normalized))
        }
        Kind::ContainerTemplate => {
            let template = raw.trim();
            if !template.contains("{node}") && !template.contains("{n}") {
                return Err("needs {node} (the node directory's name) or {n} (its number), e.g. cellframe-stage-node-{n}".into());
            }
            let sample = render(template, "node1")?;
            if !valid_name(&sample) {
                return Err(format!(
                    "gives container names like {sample:?}; only {{node}} and {{n}} may stand in braces, the rest must be letters, digits, '_', '.' or '-'"
                ));
            }
            Ok(Value::Text(template.to_string()))
        }
        Kind::ContainerMap => {
            let mut nodes = Vec::new();
            for item in raw.split_whitespace() {
                let (node, name) = item.split_once(':').unwrap_or((item, ""));
                if node.is_empty() || node.contains('/') || !valid_name(name) {
                    return Err(format!(
                        "{item:?} is not NODE:CONTAINER, e.g. node1:cellframe-stage-node-1"
                    ));
                }
                if nodes.contains(&node) {
                    return Err(format!("node {node} is listed twice"));
                }
                nodes.push(node);
            }
            Ok(Value::List(
                raw.split_whitespace().map(str::to_string).collect(),
            ))
        }
        Kind::RemoteUrl => match raw.trim() {
            "" => Ok(Value::Text(String::new())),
            url => RemoteUrl::parse(url).map(|_| Value::Text(url.to_string())),
        },
        Kind::EndpointUrl => match raw.trim() {
            url if url.is_empty()
                || ((url.starts_with("http://") || url.starts_with("https://"))
                    && !url.contains(char::is_whitespace)) =>
            {
                Ok(Value::Text(url.to_string()))
            }
            _ => Err("not an http:// or https:// URL, e.g. http://127.0.0.1:9000".into()),
        },
        Kind::Region => match raw.trim() {
            region
                if region
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') =>
            {
                Ok(Value::Text(region.to_string()))
            }
            _ => Err("not a region name, e.g. eu-west-1".into()),
        },
        Kind::ContainerPath => {
            let path = raw.trim();
            if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
                return Err(
                    "not an absolute path inside the container, e.g. /opt/cellframe-node/var"
                        .into(),
                );
            }
            Ok(Value::Text(path.to_string()))
        }
        Kind::FilePatterns => {
            let words: Vec<&str> = raw.split_whitespace().collect();
            if let [word @ ("auto" | "none")] = words[..] {
                return Ok(Value::Text(word.to_string()));
            }
            if words.is_empty() {
                return Err("empty; give paths or globs, auto, or none".into());
            }
            words
                .iter()
                .map(|w| {
                    let path = normalize(&base.join(w)).to_string_lossy().into_owned();
                    glob::Pattern::new(&path)
                        .map(|_| path)
                        .map_err(|e| format!("{w} is not a valid glob: {e}"))
                })
                .collect::<std::result::Result<_, _>>()
                .map(Value::List)
        }
        Kind::Globs => {
            let patterns: Vec<String> = raw.split_whitespace().map(str::to_string).collect();
            if patterns.is_empty() {
                return Err("no patterns; give at least one, e.g. log/*.log".into());
            }
            if let Some(bad) = patterns
                .iter()
                .find(|p| p.starts_with('/') || p.split('/').any(|c| c == ".."))
            {
                return Err(format!(
                    "{bad} is not a pattern relative to container_data_path (no leading /, no ..)"
                ));
            }
            Ok(Value::List(patterns))
        }
    }
}

/// Docker's rule for container names (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`).
pub fn valid_name(name: &str) -> bool {
    name.as_bytes()
        .first()
        .is_some_and(u8::is_ascii_alphanumeric)
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// `template` with `{node}` replaced by the node directory's name and `{n}` by its trailing number.
pub fn render(template: &str, node: &str) -> Result<String, String> {
    let digits = node.len() - node.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let n = &node[node.len() - digits..];
    if n.is_empty() && template.contains("{n}") {
        return Err(format!(
            "node directory {node} has no number for {{n}}; use {{node}} or list containers = {node}:NAME"
        ));
    }
    Ok(template.replace("{node}", node).replace("{n}", n))
}

/// Lexical normalization (`a/./b/../c` → `a/c`) without touching the filesystem,
/// so settings can name paths that do not exist yet.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// The configuration of a file holding `text`, with `--set` flags `set`, environment `env`
/// and the modes' settings `modes`: for the tests of config and of the modes.
#[cfg(test)]
pub fn load_text(
    text: &str,
    set: &[&str],
    env: &[(&str, &str)],
    modes: &[&'static Spec],
) -> Result<Config> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(FILE_NAME), text).unwrap();
    let overrides = Overrides {
        config: None,
        base_dir: None,
        set: set.iter().map(|s| s.to_string()).collect(),
    };
    let env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    // Loading is lexical once the file is read, so the directory may go afterwards.
    Config::load_from(&overrides, dir.path(), &env, modes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With the modes' settings, as the product loads it.
    fn load(text: &str, set: &[&str], env: &[(&str, &str)]) -> Result<Config> {
        load_text(text, set, env, &crate::modes::settings())
    }

    #[test]
    fn defaults_apply_without_section() {
        let cfg = load("[network]\nurl = http://x:1/%z\n", &[], &[]).unwrap();
        assert_eq!(cfg.settings.mode, Isolation::Mode(ModeKind::Filesystem));
        assert_eq!(cfg.settings.snapshot_name, "clean_state");
        assert_eq!(cfg.settings.keep_snapshot_count, 5);
        assert!(cfg.settings.snapshots_dir.ends_with("testing/snapshots"));
        assert!(!cfg.settings.snapshots_dir.to_string_lossy().contains(".."));
        assert_eq!(cfg.settings.include, &[PathBuf::from("data")]);
        assert_eq!(cfg.setting("mode").source, Origin::Default);
    }

    #[test]
    fn precedence_flag_env_file_default() {
        let text =
            "[suite_isolation]\nmode = squashfs\nkeep_snapshot_count = 3\nauto_cleanup = no\n";
        let cfg = load(
            text,
            &["mode=disabled"],
            &[
                ("STAGESNAP_MODE", "recreate"),
                ("STAGESNAP_KEEP_SNAPSHOT_COUNT", "9"),
            ],
        )
        .unwrap();
        assert_eq!(cfg.settings.mode, Isolation::Disabled);
        assert_eq!(cfg.setting("mode").source, Origin::Flag);
        assert_eq!(cfg.settings.keep_snapshot_count, 9);
        assert!(matches!(
            cfg.setting("keep_snapshot_count").source,
            Origin::Env(_)
        ));
        assert!(!cfg.settings.auto_cleanup);
        assert!(matches!(
            cfg.setting("auto_cleanup").source,
            Origin::File { line: 4, .. }
        ));
    }

    #[test]
    fn invalid_values_name_everything() {
        let err = load("[suite_isolation]\n\nmode = snapshot\n", &[], &[]).unwrap_err();
        let msg = crate::exit::one_line(&err);
        assert_eq!(crate::exit::code_of(&err), Code::Usage);
        for part in [
            "stage-env.cfg line 3",
            "[suite_isolation] mode = \"snapshot\"",
            "disabled, recreate, filesystem, squashfs, reflink",
        ] {
            assert!(msg.contains(part), "{msg}");
        }
        let err = load("[suite_isolation]\nkeep_snapshot_count = -1\n", &[], &[]).unwrap_err();
        assert!(crate::exit::one_line(&err).contains("keep_snapshot_count = \"-1\""));
        let err = load(
            "[suite_isolation]\nsquashfs_compression = brotli\n",
            &[],
            &[],
        )
        .unwrap_err();
        assert!(crate::exit::one_line(&err).contains("none, gzip, lzo, xz"));
    }

    #[test]
    fn choice_rows_round_trip_through_their_enums() {
        let mut rows = 0;
        for spec in load("", &[], &[]).unwrap().specs {
            let Kind::Choice { names, canonical } = spec.kind else {
                continue;
            };
            rows += 1;
            for &name in names.iter().chain([&spec.default]) {
                assert_eq!(canonical(name), Some(name), "{}", spec.key);
            }
            assert_eq!(canonical("no such choice"), None, "{}", spec.key);
        }
        assert_eq!(rows, 7);
    }

    #[test]
    fn settings_are_typed_from_their_own_keys() {
        let text = "[suite_isolation]\nquiesce = Stop\nrestore_stop = stop\nrestore_fallback = recreate\nrestore_verify = full\nkeep_within = 7d\nfingerprint = none\n";
        let cfg = load(text, &[], &[]).unwrap();
        let s = &cfg.settings;
        assert_eq!(s.quiesce, Quiesce::Stop);
        assert_eq!(cfg.setting("quiesce").raw, "Stop");
        assert_eq!(s.restore_stop, RestoreStop::Stop);
        assert_eq!(s.restore_fallback, RestoreFallback::Recreate);
        assert_eq!(s.restore_verify, VerifyLevel::Full);
        assert!(s.keep_within.is_some() && s.keep_used_within.is_none());
        assert_eq!(s.fingerprint, FilePatterns::None);
    }

    #[test]
    fn include_must_stay_below_cache_dir() {
        for bad in ["../x", "/abs", "data data/node1", ""] {
            let text = format!("[suite_isolation]\ninclude = {bad}\n");
            assert!(load(&text, &[], &[]).is_err(), "{bad:?} accepted");
        }
        let cfg = load(
            "[suite_isolation]\ninclude = data ./certs configs\n",
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(cfg.settings.include.len(), 3);
    }

    #[test]
    fn unknown_set_key_is_usage_error() {
        let err = load("[suite_isolation]\n", &["colour=blue"], &[]).unwrap_err();
        assert_eq!(crate::exit::code_of(&err), Code::Usage);
    }

    #[test]
    fn container_settings_are_checked() {
        let cfg = load(
            "[suite_isolation]\ncontainers = node1:a node2:b-2\n",
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(cfg.settings.containers, ["node1:a", "node2:b-2"]);
        assert_eq!(cfg.settings.container_data_path, "/opt/cellframe-node/var");
        for bad in [
            "container_name = fixed-name",
            "container_name = node-{id}",
            "container_name = bad name {n}",
            "containers = node1",
            "containers = node1:a node1:b",
            "containers = node1:a/b",
            "container_data_path = relative/var",
            "container_data_path = /opt/../etc",
            "recreate_paths = /etc/*",
            "recreate_paths = ../x",
            "quiesce = freeze",
            "restore_fallback = filesystem",
        ] {
            let err = load(&format!("[suite_isolation]\n{bad}\n"), &[], &[]).unwrap_err();
            assert_eq!(crate::exit::code_of(&err), Code::Usage, "{bad}");
        }
    }

    fn tree(files: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for f in files {
            let path = dir.path().join(f);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "[paths]\n").unwrap();
        }
        dir
    }

    fn load_in(cwd: &Path, base_dir: Option<&str>, env: &[(&str, &str)]) -> Result<Config> {
        let overrides = Overrides {
            base_dir: base_dir.map(PathBuf::from),
            ..Overrides::default()
        };
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load_from(&overrides, cwd, &env, &crate::modes::settings())
    }

    #[test]
    fn search_finds_the_harness_layout_upward_and_a_folders_own_file_first() {
        let dir = tree(&[
            "stage-env/config/stage-env.cfg",
            "own/stage-env.cfg",
            "own/config/stage-env.cfg",
        ]);
        let root = dir.path();
        std::fs::create_dir_all(root.join("stage-env/tests/deep")).unwrap();
        for cwd in ["stage-env", "stage-env/tests/deep", "stage-env/config"] {
            let cfg = load_in(&root.join(cwd), None, &[]).unwrap();
            assert_eq!(
                cfg.file,
                root.join("stage-env/config/stage-env.cfg"),
                "{cwd}"
            );
            assert_eq!(cfg.base, root.join("stage-env"), "{cwd}");
            assert!(
                cfg.base_source.contains("holding config/"),
                "{}",
                cfg.base_source
            );
            // The harness's defaults and its relative paths: against the base folder.
            assert_eq!(cfg.settings.cache_dir, root.join("stage-env/cache"));
            assert_eq!(cfg.settings.snapshots_dir, root.join("testing/snapshots"));
        }
        let cfg = load_in(&root.join("own"), None, &[]).unwrap();
        assert_eq!(cfg.file, root.join("own/stage-env.cfg"));
        assert_eq!(cfg.base, root.join("own"));
        assert_eq!(cfg.base_source, "the config file's folder");
    }

    #[test]
    fn base_folder_from_flag_or_environment() {
        let dir = tree(&["a/stage-env.cfg", "elsewhere/x"]);
        let root = dir.path();
        let env = [(BASE_DIR_ENV, "../elsewhere")];
        let cfg = load_in(&root.join("a"), None, &env).unwrap();
        assert_eq!(cfg.base, root.join("elsewhere"));
        assert_eq!(cfg.base_source, BASE_DIR_ENV);
        assert_eq!(cfg.settings.cache_dir, root.join("elsewhere/cache"));
        let cfg = load_in(&root.join("a"), Some(root.to_str().unwrap()), &env).unwrap();
        assert_eq!(
            (cfg.base.as_path(), cfg.base_source.as_str()),
            (root, "--base-dir")
        );
        let err = load_in(&root.join("a"), Some("missing"), &[]).unwrap_err();
        assert_eq!(crate::exit::code_of(&err), Code::Usage);
        assert!(crate::exit::one_line(&err).contains("missing (from --base-dir) does not exist"));
    }

    #[test]
    fn names_from_templates() {
        assert_eq!(
            render("cellframe-stage-node-{n}", "node12").unwrap(),
            "cellframe-stage-node-12"
        );
        assert_eq!(render("net_{node}", "node3").unwrap(), "net_node3");
        assert!(render("x-{n}", "master").is_err());
        assert_eq!(render("x-{node}", "master").unwrap(), "x-master");
    }

    #[test]
    fn docker_name_rule() {
        for ok in ["a", "cellframe-stage-node-1", "A_b.c-9"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "-a", "a b", "a/b", "a{n}", "a:b"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
