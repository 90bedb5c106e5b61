//! List: the snapshots in the store, the stage-env harness's too.

use anyhow::Result;
use serde::Serialize;

use super::Session;
use crate::fingerprint::Checker;
use crate::legacy::{self, Format};
use crate::store::{Background, Unreadable};

/// The mode `list` shows for a snapshot the stage-env harness left.
pub const LEGACY: &str = "legacy";

/// One snapshot in `list --json`.
#[derive(Debug, Serialize)]
pub struct Row {
    pub name: String,
    pub mode: String,
    pub created_at: String,
    /// None for a legacy squashfs image, whose content is not read to list it.
    pub bytes: Option<u64>,
    pub stored_bytes: u64,
    /// Of stored_bytes, those no other snapshot shares (filesystem mode stores a file that
    /// did not change since the previous snapshot once, hardlinked) and those shared; None
    /// for a harness snapshot.
    pub own_bytes: Option<u64>,
    pub shared_bytes: Option<u64>,
    /// stored_bytes / bytes (compression shows below 1); None when the data is empty or unknown.
    pub ratio: Option<f64>,
    pub files: Option<u64>,
    pub pinned: bool,
    pub nodes: Vec<String>,
    /// Files named by `fingerprint` changed since it was made: restore refuses it.
    pub stale: bool,
    /// RFC 3339, UTC; None when never restored (or its usage file is unreadable).
    pub last_restored: Option<String>,
    /// Successful restores counted in its usage file.
    pub restores: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stale_files: Vec<String>,
    /// Set for a snapshot the stage-env harness left (mode `legacy`): `stagesnap adopt`
    /// makes it usable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub legacy: Option<LegacyRow>,
}

#[derive(Debug, Serialize)]
pub struct LegacyRow {
    /// filesystem (`NAME/`) or squashfs (`NAME.sqfs`).
    pub format: Format,
    /// The harness's files of the snapshot, relative to snapshots_dir.
    pub paths: Vec<String>,
}

/// `list --json`'s record.
#[derive(Debug, Serialize)]
pub struct Listing {
    pub snapshots_dir: String,
    pub snapshots: Vec<Row>,
    pub unreadable: Vec<Unreadable>,
    /// Snapshots a background create is still finishing, or failed to.
    pub background: Vec<BackgroundRow>,
}

/// A background create in `list --json`: the name and the [`Background`] state.
#[derive(Debug, Serialize)]
pub struct BackgroundRow {
    pub name: String,
    #[serde(flatten)]
    pub state: Background,
}

impl Session {
    /// Every snapshot, newest first, the harness's among them, and those that cannot be read.
    pub fn list(&self) -> Result<Listing> {
        let store = self.store();
        let (snapshots, unreadable) = store.list()?;
        for u in &unreadable {
            tracing::warn!(name = %u.name, "snapshot_unreadable: {}", u.problem);
        }
        let mut fingerprints = Checker::default();
        let mut rows: Vec<(jiff::Timestamp, Row)> = snapshots
            .iter()
            .map(|s| {
                let stale_files = fingerprints.changes(s.meta.fingerprint.as_ref())?;
                let usage = s.usage();
                let (own, shared) = crate::store::own_and_shared(s);
                let row = Row {
                    name: s.meta.name.clone(),
                    mode: s.meta.mode.name().to_string(),
                    created_at: s.meta.created_at.clone(),
                    bytes: Some(s.meta.bytes),
                    stored_bytes: s.meta.stored_bytes,
                    own_bytes: Some(own),
                    shared_bytes: Some(shared),
                    ratio: ratio(s.meta.stored_bytes, Some(s.meta.bytes)),
                    files: Some(s.meta.files),
                    pinned: s.meta.pinned,
                    nodes: s.meta.nodes.clone(),
                    stale: !stale_files.is_empty(),
                    stale_files,
                    last_restored: usage.as_ref().map(|u| u.last_restored.to_string()),
                    restores: usage.map_or(0, |u| u.restores),
                    legacy: None,
                };
                Ok((s.meta.created(), row))
            })
            .collect::<Result<_>>()?;
        let mut unreadable = unreadable;
        for l in legacy::scan(store.dir())? {
            let summary = match l.summary(store.dir()) {
                Ok(summary) => summary,
                // Deleted since the directory was read: list runs unlocked.
                Err(_) if l.path.symlink_metadata().is_err() => continue,
                Err(e) => {
                    let problem = crate::exit::one_line(&e);
                    tracing::warn!(name = %l.name, "snapshot_unreadable: {problem}");
                    unreadable.push(Unreadable {
                        name: l.name.clone(),
                        problem,
                    });
                    continue;
                }
            };
            let row = Row {
                name: l.name.clone(),
                mode: LEGACY.into(),
                created_at: summary.created.to_string(),
                bytes: summary.bytes,
                stored_bytes: summary.stored_bytes,
                own_bytes: None,
                shared_bytes: None,
                ratio: ratio(summary.stored_bytes, summary.bytes),
                files: summary.files,
                pinned: false,
                nodes: summary.nodes,
                stale: false,
                stale_files: vec![],
                last_restored: None,
                restores: 0,
                legacy: Some(LegacyRow {
                    format: l.format,
                    paths: summary.paths,
                }),
            };
            rows.push((summary.created, row));
        }
        // Newest first, as Store::list orders its own.
        rows.sort_by(|(a, ra), (b, rb)| b.cmp(a).then(ra.name.cmp(&rb.name)));
        Ok(Listing {
            snapshots_dir: store.dir().display().to_string(),
            snapshots: rows.into_iter().map(|(_, row)| row).collect(),
            unreadable,
            background: store
                .backgrounds()?
                .into_iter()
                .map(|(name, state)| BackgroundRow { name, state })
                .collect(),
        })
    }
}

/// stored / bytes, to three decimals; None when the data is empty or its size unknown.
fn ratio(stored: u64, bytes: Option<u64>) -> Option<f64> {
    let bytes = bytes.filter(|&b| b > 0)?;
    Some((stored as f64 / bytes as f64 * 1000.0).round() / 1000.0)
}
