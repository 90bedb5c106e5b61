//! Delete: remove snapshots, also damaged ones.

use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use super::{Session, clean_leftovers};
use crate::legacy;
use crate::names::validate_name;

/// What a delete did: `delete --json`'s record.
#[derive(Debug, Serialize)]
pub struct Deleted {
    pub deleted: Vec<String>,
    /// Why each deleted name was not a complete snapshot, in the order of `deleted` (None
    /// for a complete one).
    #[serde(skip)]
    pub incomplete: Vec<Option<String>>,
}

impl Session {
    /// Deletes every snapshot of `names`, once each; nothing when one of them does not exist.
    pub fn delete(&self, names: &[String]) -> Result<Deleted> {
        for name in names {
            validate_name(name)?;
        }
        self.prepare_configured()?;
        let store = self.checked_store()?;
        // As create and restore do (see `Session::begin`): a snapshot being finished in the
        // background is waited for, without the lock.
        for name in names {
            store.await_background(name, self.lock_timeout)?;
        }
        let lock = store.lock(&format!("delete {}", names.join(" ")), self.lock_timeout)?;
        for name in names {
            store.await_background(name, Duration::ZERO)?;
        }
        clean_leftovers(&store, &lock)?;
        // Every name must exist before anything is removed: a typo changes nothing. One that
        // is not a complete snapshot goes too (that is how a damaged one is cleared), named
        // first.
        let mut found: Vec<(String, Option<String>)> = Vec::new();
        for name in names {
            if found.iter().any(|(n, _)| n == name) {
                continue;
            }
            // A harness snapshot is complete in its own way; anything else must be one of ours.
            let incomplete = if legacy::find(store.dir(), name).is_empty() {
                store.incomplete(name)?
            } else {
                None
            };
            found.push((name.clone(), incomplete));
        }
        for (name, incomplete) in &found {
            if let Some(why) = incomplete {
                tracing::warn!(name = %name, "snapshot_incomplete: {name} is not a complete snapshot ({why}); deleting it");
            }
            // Everything of that name: the stagesnap snapshot or the harness's directory, and
            // the harness's image, metadata and marker beside it.
            if store.exists(name) {
                store.delete(name, &lock)?;
            }
            legacy::remove_files(store.dir(), name, &lock)?;
            tracing::info!(name = %name, reason = "delete", "snapshot_deleted");
        }
        let (deleted, incomplete) = found.into_iter().unzip();
        Ok(Deleted {
            deleted,
            incomplete,
        })
    }
}
