//! The staleness guard. Snapshotting data/ alone is not enough when the data must stay
//! consistent with files beside it: a network started again gets new node certificates and
//! configs, and data restored from before would not match them. `create` records the blake3 of
//! every file the `fingerprint` setting names; `restore` refuses a snapshot whose files changed
//! since (exit 1, naming them) unless `--allow-stale`; `list` and `status` show it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use walkdir::WalkDir;

use crate::config::{Config, FilePatterns};
use crate::exit::{Code, fail};
use crate::signals;

/// What a snapshot's fingerprinted files looked like when it was made.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Fingerprint {
    /// Absolute paths or globs as resolved at create: a later check expands these same ones,
    /// whatever the setting says by then.
    pub patterns: Vec<String>,
    /// Every regular file they matched (below a matched directory too), by absolute path: its
    /// blake3 in hex, or `stat:SIZE:MTIME_NS` for a file this user could not read.
    pub files: BTreeMap<PathBuf, String>,
}

impl Fingerprint {
    /// The fingerprint of what `cfg` names now; None when it names nothing (`none`, or `auto`
    /// without certs/ or configs/ in cache_dir).
    pub fn capture(cfg: &Config) -> Result<Option<Fingerprint>> {
        let patterns = patterns(cfg);
        if patterns.is_empty() {
            return Ok(None);
        }
        let files = digests(&patterns)?;
        Ok(Some(Fingerprint { patterns, files }))
    }
}

impl Fingerprint {
    /// The same fingerprint for a copy of the environment at `to` (another runner's
    /// cache_dir): patterns and files below `from`, the cache_dir it was made in, move there;
    /// the digests stay, so the guard still compares content.
    pub fn rebased(&self, from: &Path, to: &Path) -> Fingerprint {
        let (old, new) = (
            glob::Pattern::escape(&from.to_string_lossy()),
            glob::Pattern::escape(&to.to_string_lossy()),
        );
        let moved = |p: &Path| match p.strip_prefix(from) {
            Ok(rest) => to.join(rest),
            Err(_) => p.to_path_buf(),
        };
        Fingerprint {
            patterns: self
                .patterns
                .iter()
                .map(|p| match p.strip_prefix(&old) {
                    Some(rest) if rest.is_empty() || rest.starts_with('/') => {
                        format!("{new}{rest}")
                    }
                    _ => p.clone(),
                })
                .collect(),
            files: self
                .files
                .iter()
                .map(|(p, d)| (moved(p), d.clone()))
                .collect(),
        }
    }
}

/// The patterns the `fingerprint` setting stands for.
fn patterns(cfg: &Config) -> Vec<String> {
    match &cfg.settings.fingerprint {
        FilePatterns::Listed(patterns) => patterns.clone(),
        FilePatterns::Auto => ["certs", "configs"]
            .iter()
            .map(|d| cfg.settings.cache_dir.join(d))
            .filter(|p| p.is_dir())
            .map(|p| glob::Pattern::escape(&p.to_string_lossy()))
            .collect(),
        FilePatterns::None => Vec::new(),
    }
}

/// Compares snapshots with the files now, hashing each set of patterns once (a listing's
/// snapshots mostly share theirs).
#[derive(Default)]
pub struct Checker {
    now: HashMap<Vec<String>, BTreeMap<PathBuf, String>>,
}

impl Checker {
    /// The fingerprinted files that changed since a snapshot recorded `then`, one per entry
    /// as `PATH (changed|new|removed)`; empty when none did or it recorded none.
    pub fn changes(&mut self, then: Option<&Fingerprint>) -> Result<Vec<String>> {
        let Some(then) = then else {
            return Ok(Vec::new());
        };
        if !self.now.contains_key(&then.patterns) {
            let now = digests(&then.patterns)?;
            self.now.insert(then.patterns.clone(), now);
        }
        let now = &self.now[&then.patterns];
        let mut out: Vec<String> = then
            .files
            .iter()
            .filter_map(|(path, digest)| match now.get(path) {
                None => Some(format!("{} (removed)", path.display())),
                Some(d) if d != digest => Some(format!("{} (changed)", path.display())),
                Some(_) => None,
            })
            .collect();
        out.extend(
            now.keys()
                .filter(|p| !then.files.contains_key(*p))
                .map(|p| format!("{} (new)", p.display())),
        );
        Ok(out)
    }
}

/// Refuses (exit 1) to restore snapshot `name`, which recorded `then`, when it is stale,
/// unless `allow`, which only warns.
pub fn guard(name: &str, then: Option<&Fingerprint>, allow: bool) -> Result<()> {
    let changes = Checker::default().changes(then)?;
    if changes.is_empty() {
        return Ok(());
    }
    let files = listed(&changes);
    if allow {
        tracing::warn!(name = %name, files = changes.len(), "snapshot_stale: restoring {name} anyway (--allow-stale), although files named by fingerprint changed since it was made: {files}");
        return Ok(());
    }
    Err(fail(
        Code::Failure,
        format!(
            "snapshot {name} is stale: files named by fingerprint changed since it was made: {files}; its data may not match them, so nothing was restored. Recreate it with `stagesnap create {name} --force`, or restore it anyway with --allow-stale"
        ),
    ))
}

/// The first few changes on one line.
fn listed(changes: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut text = changes
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if changes.len() > SHOWN {
        text.push_str(&format!(" and {} more files", changes.len() - SHOWN));
    }
    text
}

/// Every regular file the patterns match, or that lies below a directory they match.
fn digests(patterns: &[String]) -> Result<BTreeMap<PathBuf, String>> {
    let mut out = BTreeMap::new();
    for pattern in patterns {
        for path in expand(pattern)? {
            signals::check()?;
            let digest = digest(&path);
            out.insert(path, digest);
        }
    }
    Ok(out)
}

/// More files than a pattern of certificates and configs can mean: past this, the pattern is
/// a mistake (`/usr/**`) and is refused rather than hashed for minutes.
pub const MAX_FILES: usize = 10_000;

/// The regular files `pattern` names: those it matches, and those below directories it
/// matches. The walk starts at the pattern's literal leading components (resolved as the
/// system does, symlinks included), but never follows a symlinked directory that it meets
/// itself: a link back up (`data -> .`) would repeat the tree without end. It stops past
/// [`MAX_FILES`] and heeds signals and `--timeout` at every entry.
fn expand(pattern: &str) -> Result<BTreeSet<PathBuf>> {
    let trimmed = match pattern.trim_end_matches('/') {
        "" => "/",
        t => t,
    };
    let matcher = glob::Pattern::new(trimmed).map_err(|e| {
        fail(
            Code::Usage,
            format!("fingerprint pattern {pattern} is not a valid glob: {e}"),
        )
    })?;
    let options = glob::MatchOptions {
        require_literal_separator: true,
        ..glob::MatchOptions::new()
    };
    let (base, depth) = walk_bounds(trimmed);
    let dirs_only = trimmed.ends_with("/**");
    let too_many = || {
        fail(
            Code::Usage,
            format!(
                "fingerprint pattern {pattern} names more than {MAX_FILES} files; the fingerprint setting is for the certificate and config files beside the data: name those"
            ),
        )
    };
    let mut files = BTreeSet::new();
    let mut add = |path: PathBuf| {
        files.insert(path);
        if files.len() > MAX_FILES {
            Err(too_many())
        } else {
            Ok(())
        }
    };
    let mut walk = WalkDir::new(base).max_depth(depth).into_iter();
    while let Some(entry) = walk.next() {
        signals::check()?;
        crate::testhook::pause("fingerprint_walk");
        let Ok(entry) = entry else { continue };
        // A relative pattern's walk starts at `.`, which the pattern does not spell.
        let path = entry.path().strip_prefix("./").unwrap_or(entry.path());
        if !matcher.matches_path_with(path, options) {
            continue;
        }
        let kind = entry.file_type();
        // As with glob, a trailing `**` matches directories only: the files a snapshot
        // recorded then are the files it is checked against now.
        let file = kind.is_file() || kind.is_symlink() && entry.path().is_file();
        if file && !dirs_only {
            add(entry.into_path())?;
        } else if kind.is_dir() {
            // Everything below is named: walked here, not again by the outer walk.
            walk.skip_current_dir();
            for below in WalkDir::new(entry.path()).min_depth(1) {
                signals::check()?;
                let Ok(below) = below else { continue };
                if below.file_type().is_file() {
                    add(below.into_path())?;
                }
            }
        }
    }
    Ok(files)
}

/// Where the walk for `pattern` starts (its literal leading components) and how deep it goes
/// (its remaining components; no limit with `**`).
fn walk_bounds(pattern: &str) -> (&str, usize) {
    let wild = |c: &str| c.contains(['*', '?', '[']);
    let components: Vec<&str> = pattern.split('/').collect();
    let literal = components.iter().take_while(|c| !wild(c)).count();
    if literal == components.len() {
        return (pattern, 0);
    }
    let base_len: usize = components[..literal].iter().map(|c| c.len() + 1).sum();
    let base = match &pattern[..base_len.saturating_sub(1)] {
        "" if pattern.starts_with('/') => "/",
        "" => ".",
        b => b,
    };
    let rest = &components[literal..];
    let depth = if rest.iter().any(|c| c.contains("**")) {
        usize::MAX
    } else {
        rest.len()
    };
    (base, depth)
}

/// A file's blake3, or its size and mtime when it cannot be read (certificates are often
/// readable by root only), which still tells a regenerated file from the old one.
fn digest(path: &Path) -> String {
    let hashed = std::fs::File::open(path).and_then(|mut f| {
        // Certificates and configs are small: read whole and hashed in one call, as the
        // streaming reader zeroes a 64 KiB buffer for every file (a third of the check).
        let len = f.metadata()?.len();
        if len <= 1 << 20 {
            let mut bytes = Vec::with_capacity(len as usize);
            std::io::Read::read_to_end(&mut f, &mut bytes)?;
            return Ok(blake3::hash(&bytes).to_hex().to_string());
        }
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(f)?;
        Ok(hasher.finalize().to_hex().to_string())
    });
    hashed.unwrap_or_else(|_| {
        use std::os::unix::fs::MetadataExt;
        match path.symlink_metadata() {
            Ok(m) => format!(
                "stat:{}:{}",
                m.len(),
                m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128
            ),
            Err(e) => format!("unreadable: {e}"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without symlinks, the walk names what `glob` and a walk below its matches named.
    #[test]
    fn expansion_names_what_glob_named() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for file in [
            "a/x.pem",
            "a/b/x.pem",
            "a/b/c/y.key",
            "d/x.pem",
            ".hidden/x.pem",
            "top",
        ] {
            let path = root.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, file).unwrap();
        }
        let r = root.display();
        for pattern in [
            format!("{r}"),
            format!("{r}/"),
            format!("{r}/a"),
            format!("{r}/*"),
            format!("{r}/*/x.pem"),
            format!("{r}/**"),
            format!("{r}/**/x.pem"),
            format!("{r}/a/**/x.pem"),
            format!("{r}/a/**/*.key"),
            format!("{r}/[ad]/b"),
            format!("{r}/?op"),
            format!("{r}/none/**"),
        ] {
            let mut globbed = BTreeSet::new();
            for found in glob::glob(&pattern).unwrap().flatten() {
                for e in WalkDir::new(&found).into_iter().flatten() {
                    if e.file_type().is_file() {
                        globbed.insert(e.into_path());
                    }
                }
            }
            assert_eq!(expand(&pattern).unwrap(), globbed, "{pattern}");
        }
    }
}
