//! `disabled`: suite isolation is off; create and restore succeed without doing anything.

use std::path::Path;

use anyhow::Result;

use super::{Mode, ModeContext, ModeKind, Restoration, RestoreStats};
use crate::manifest::Manifest;
use crate::store::Snapshot;
use crate::tools::Tool;

pub struct Disabled;

impl Mode for Disabled {
    fn kind(&self) -> ModeKind {
        ModeKind::Disabled
    }

    fn tools(&self) -> &'static [Tool] {
        &[]
    }

    fn active(&self) -> bool {
        false
    }

    fn create(&self, _: &ModeContext, _: &Path) -> Result<serde_json::Value> {
        Ok(serde_json::Value::Null)
    }

    fn verify(&self, _: &ModeContext, _: &Snapshot) -> Result<()> {
        Ok(())
    }

    fn restore(&self, _: &ModeContext, _: &Snapshot, _: Option<&Manifest>) -> Result<Restoration> {
        Ok(RestoreStats::default().into())
    }
}
