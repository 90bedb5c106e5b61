//! Status and diff: compare the live data or a snapshot with a snapshot's manifest. They
//! only read; a failure means they could not compare (exit 7), which a script must be able
//! to tell from "they differ".

use anyhow::Result;
use serde::Serialize;

use super::Session;
use crate::exit::{Code, fail, recode};
use crate::fingerprint::Checker;
use crate::manifest::{self, Change, NodeSummary};
use crate::names::validate_name;
use crate::store::{Background, JournalRecord};

/// `status --json`'s record.
#[derive(Debug, Serialize)]
pub struct Status {
    pub name: String,
    pub identical: bool,
    /// A restore that was interrupted or failed: the data is in an unknown state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unfinished_restore: Option<JournalRecord>,
    pub entries: usize,
    pub differences: usize,
    pub nodes: Vec<NodeSummary>,
    /// Files named by `fingerprint` changed since the snapshot was made: restore refuses it.
    pub stale: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stale_files: Vec<String>,
    /// What the unfinished restore means and what to do, in words.
    #[serde(skip)]
    pub unknown_state: Option<String>,
    /// A background create of this name still finishing, or how its last one failed: the
    /// comparison is with the snapshot of that name in place now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub background: Option<Background>,
}

/// `diff --json`'s record.
#[derive(Debug, Serialize)]
pub struct Diff {
    pub from: String,
    /// A snapshot name, or "live".
    pub to: String,
    pub identical: bool,
    pub nodes: Vec<NodeSummary>,
    pub changes: Vec<Change>,
}

impl Session {
    /// Whether the live data is identical to snapshot `name` (else `snapshot_name`): its
    /// metadata, and with `full` every file's content.
    pub fn status(&self, name: Option<&str>, full: bool) -> Result<Status> {
        self.status_of(name, full).map_err(could_not_compare)
    }

    fn status_of(&self, name: Option<&str>, full: bool) -> Result<Status> {
        let cfg = &self.cfg;
        let name = self.snapshot_named(name)?;
        let live = cfg.live();
        live.check_present()?;
        let (store, lock) = self.store_to_compare()?;
        let unfinished = store.unfinished_restore(&lock)?;
        let background = store.background(&name)?;
        if let Some(b) = &background
            && !store.exists(&name)
        {
            return Err(fail(Code::CouldNotCompare, b.describe(&name)));
        }
        let snap = store.get(&name)?;
        let stale_files = Checker::default().changes(snap.meta.fingerprint.as_ref())?;
        let expected = crate::modes::manifest_to_compare(&snap, cfg, full)?;
        let now = manifest::scan_live(&live.cache_dir, &snap.meta.include, &expected, full)?;
        drop(lock);
        let changes = manifest::compare(&expected, &now);
        Ok(Status {
            name,
            // Never identical beside an unfinished restore: only a restore that succeeds
            // vouches for the data again.
            identical: changes.is_empty() && unfinished.is_none(),
            unknown_state: unfinished
                .as_ref()
                .map(|j| j.unknown_state(&cfg.settings.snapshot_name)),
            unfinished_restore: unfinished,
            entries: now.entries.len(),
            differences: changes.len(),
            nodes: manifest::summarize(&changes),
            stale: !stale_files.is_empty(),
            stale_files,
            background,
        })
    }

    /// What differs between snapshot `from` and snapshot `to`, or the live data when `to`
    /// is None (with `full`, by content too).
    pub fn diff(&self, from: &str, to: Option<&str>, full: bool) -> Result<Diff> {
        self.diff_of(from, to, full).map_err(could_not_compare)
    }

    fn diff_of(&self, from_name: &str, to: Option<&str>, full: bool) -> Result<Diff> {
        let cfg = &self.cfg;
        validate_name(from_name)?;
        if let Some(to) = to {
            validate_name(to)?;
            if full {
                return Err(fail(
                    Code::Usage,
                    "--full hashes the live data; between two snapshots every hash is already known, so leave it out",
                ));
            }
        }
        let (store, lock) = self.store_to_compare()?;
        let from = store.get(from_name)?;
        let old = crate::modes::manifest_to_compare(&from, cfg, full)?;
        let new = match to {
            Some(to) => crate::modes::stored_manifest(&store.get(to)?, cfg)?,
            None => {
                let live = cfg.live();
                live.check_present()?;
                manifest::scan_live(&live.cache_dir, &from.meta.include, &old, full)?
            }
        };
        drop(lock);
        let changes = manifest::compare(&old, &new);
        Ok(Diff {
            from: from_name.to_string(),
            to: to.unwrap_or("live").to_string(),
            identical: changes.is_empty(),
            nodes: manifest::summarize(&changes),
            changes,
        })
    }
}

/// A failure of status or diff, said as what it is: they could not compare (exit 7).
pub fn could_not_compare(e: anyhow::Error) -> anyhow::Error {
    recode(e, Code::Failure, Code::CouldNotCompare)
}
