//! Prune: remove the snapshots that no retention rule keeps.

use anyhow::Result;
use serde::Serialize;

use super::{Session, clean_leftovers};
use crate::retention::{self, Decision, Rules};
use crate::span::Span;

/// Rules given for this prune, each instead of its setting.
#[derive(Debug, Default, Clone, Copy)]
pub struct PruneOpts<'a> {
    pub keep: Option<u32>,
    pub keep_within: Option<&'a Span>,
    pub keep_used_within: Option<&'a Span>,
    /// Say what would go, remove nothing.
    pub dry_run: bool,
}

/// What a prune did: `prune --json`'s record.
#[derive(Debug, Serialize)]
pub struct Pruned {
    pub keep: u32,
    /// The spans in effect, as written; None when the rule is off.
    pub keep_within: Option<String>,
    pub keep_used_within: Option<String>,
    pub dry_run: bool,
    pub removed: Vec<String>,
    pub kept: Vec<String>,
    /// Every snapshot, newest first, with the rules that keep it or why it goes.
    pub snapshots: Vec<Decision>,
}

impl Session {
    pub fn prune(&self, opts: PruneOpts) -> Result<Pruned> {
        self.prepare_configured()?;
        let configured = Rules::configured(&self.cfg);
        let rules = Rules {
            keep_last: opts.keep.unwrap_or(configured.keep_last),
            keep_within: opts.keep_within.or(configured.keep_within),
            keep_used_within: opts.keep_used_within.or(configured.keep_used_within),
            ..configured
        };
        let store = self.checked_store()?;
        let lock = store.lock("prune", self.lock_timeout)?;
        if !opts.dry_run {
            clean_leftovers(&store, &lock)?;
        }
        let decisions = retention::prune(&store, &lock, &rules, opts.dry_run, "prune")?;
        let names = |remove: bool| -> Vec<String> {
            decisions
                .iter()
                .filter(|d| d.remove() == remove)
                .map(|d| d.name.clone())
                .collect()
        };
        Ok(Pruned {
            keep: rules.keep_last,
            keep_within: rules.keep_within.map(ToString::to_string),
            keep_used_within: rules.keep_used_within.map(ToString::to_string),
            dry_run: opts.dry_run,
            removed: names(true),
            kept: names(false),
            snapshots: decisions,
        })
    }
}
