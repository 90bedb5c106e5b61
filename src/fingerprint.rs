//! The staleness guard. Snapshotting data/ alone is not enough when the data must stay
//! consistent with files beside it: a network started again gets new node certificates and
//! configs, and data restored from before would not match them. `create` records the blake3 of
//! every file the `fingerprint` setting names; `restore` refuses a snapshot whose files changed
//! since (exit 1, naming them) unless `--allow-stale`; `list` and `status` show it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::config::{Config, Value};
use crate::exit::{Code, fail};
use crate::store::{Meta, Snapshot};

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

/// The patterns the `fingerprint` setting stands for.
fn patterns(cfg: &Config) -> Vec<String> {
    match &cfg.setting("fingerprint").value {
        Value::List(patterns) => patterns.clone(),
        Value::Text(auto) if auto == "auto" => ["certs", "configs"]
            .iter()
            .map(|d| cfg.cache_dir().join(d))
            .filter(|p| p.is_dir())
            .map(|p| glob::Pattern::escape(&p.to_string_lossy()))
            .collect(),
        _ => Vec::new(),
    }
}

/// Compares snapshots with the files now, hashing each set of patterns once (a listing's
/// snapshots mostly share theirs).
#[derive(Default)]
pub struct Checker {
    now: HashMap<Vec<String>, BTreeMap<PathBuf, String>>,
}

impl Checker {
    /// The fingerprinted files that changed since the snapshot was made, one per entry as
    /// `PATH (changed|new|removed)`; empty when none did or it recorded none.
    pub fn changes(&mut self, meta: &Meta) -> Result<Vec<String>> {
        let Some(then) = &meta.fingerprint else {
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

/// Refuses (exit 1) to restore a stale snapshot unless `allow`, which only warns.
pub fn guard(snap: &Snapshot, allow: bool) -> Result<()> {
    let changes = Checker::default().changes(&snap.meta)?;
    if changes.is_empty() {
        return Ok(());
    }
    let name = &snap.meta.name;
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
        let matches = glob::glob(pattern).map_err(|e| {
            fail(
                Code::Usage,
                format!("fingerprint pattern {pattern} is not a valid glob: {e}"),
            )
        })?;
        for found in matches.flatten() {
            for entry in walkdir::WalkDir::new(&found).into_iter().flatten() {
                if entry.file_type().is_file() {
                    out.insert(entry.path().to_path_buf(), digest(entry.path()));
                }
            }
        }
    }
    Ok(out)
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
