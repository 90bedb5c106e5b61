//! Verify: read stored snapshots back and check them against their manifests.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use super::{Quiesced, Session, prepare};
use crate::config::Config;
use crate::exit::{Code, code_of, one_line};
use crate::modes::{ModeContext, Verified};
use crate::names::validate_name;
use crate::store::Snapshot;
use crate::tree::Live;

/// What a verify found: `verify --json`'s record.
#[derive(Debug, Serialize)]
pub struct Verification {
    pub snapshots: Vec<Checked>,
    /// The store looked in.
    #[serde(skip)]
    pub store: PathBuf,
}

#[derive(Debug, Serialize)]
pub struct Checked {
    pub name: String,
    pub mode: String,
    pub ok: bool,
    #[serde(flatten)]
    pub verified: Verified,
    pub seconds: f64,
}

impl Session {
    /// Checks the snapshots `names` (none: `snapshot_name`), or with `all` every snapshot,
    /// also the unreadable ones; a damaged snapshot is a result, not an error.
    pub fn verify(&self, names: &[String], all: bool) -> Result<Verification> {
        let cfg = &self.cfg;
        let store = self.checked_store()?;
        let names = if all {
            vec![]
        } else if names.is_empty() {
            vec![cfg.settings.snapshot_name.clone()]
        } else {
            names.to_vec()
        };
        for name in &names {
            validate_name(name)?;
        }
        let _lock = store.lock_shared(self.lock_timeout)?;
        let mut results = Vec::new();
        let snapshots = if all {
            let (snapshots, unreadable) = store.list()?;
            results.extend(unreadable.into_iter().map(|u| Checked {
                name: u.name,
                mode: "unknown".into(),
                ok: false,
                verified: Verified {
                    checked: "its metadata".into(),
                    problems: vec![u.problem],
                },
                seconds: 0.0,
            }));
            snapshots
        } else {
            // Every name must exist before anything is read: exit 4 names the missing one.
            names
                .iter()
                .map(|n| store.get(n))
                .collect::<Result<Vec<_>>>()?
        };
        let live = cfg.live();
        for snap in &snapshots {
            let started = Instant::now();
            let verified = check(cfg, &live, snap).or_else(|e| {
                // What is wrong with this machine or this run, not with the snapshot.
                if matches!(code_of(&e), Code::MissingDependency | Code::Interrupted) {
                    return Err(e);
                }
                Ok(Verified {
                    checked: "its manifest".into(),
                    problems: vec![one_line(&e)],
                })
            })?;
            tracing::info!(
                name = %snap.meta.name,
                problems = verified.problems.len(),
                seconds = crate::tree::seconds(started.elapsed()),
                "snapshot_verified"
            );
            results.push(Checked {
                name: snap.meta.name.clone(),
                mode: snap.meta.mode.name().to_string(),
                ok: verified.problems.is_empty(),
                verified,
                seconds: crate::tree::seconds(started.elapsed()),
            });
        }
        Ok(Verification {
            snapshots: results,
            store: store.dir().to_path_buf(),
        })
    }
}

/// The snapshot's manifest, its payload's presence, then the mode's read-back check.
fn check(cfg: &Config, live: &Live, snap: &Snapshot) -> Result<Verified> {
    let kind = snap.meta.mode;
    let (mode, tools) = prepare(kind, cfg)?;
    if !mode.writes_live_data() {
        return Ok(Verified {
            checked: format!("nothing: {} mode stores no data", kind.name()),
            problems: vec![],
        });
    }
    let manifest = snap.manifest_with_pieces(&cfg.allowed())?;
    let ctx = ModeContext::new(cfg, live, &tools, &Quiesced);
    mode.verify(&ctx, snap)?;
    mode.verify_stored(&ctx, snap, &manifest)
}
