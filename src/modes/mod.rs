//! Snapshot modes. Each mode is one file implementing [`Mode`] plus one arm in
//! [`ModeKind`]; the commands never look inside a mode.

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::config::Config;
use crate::store::Snapshot;
use crate::tools::{Found, Tool};
use crate::tree::Live;

mod disabled;
mod filesystem;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModeKind {
    Disabled,
    Recreate,
    Filesystem,
    Squashfs,
}

impl ModeKind {
    /// Accepted spellings of `mode`, in the order the docs list them.
    pub const NAMES: &'static [&'static str] = &["disabled", "recreate", "filesystem", "squashfs"];

    pub fn from_name(name: &str) -> Option<ModeKind> {
        Some(match name {
            "disabled" => ModeKind::Disabled,
            "recreate" => ModeKind::Recreate,
            "filesystem" => ModeKind::Filesystem,
            "squashfs" => ModeKind::Squashfs,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            ModeKind::Disabled => "disabled",
            ModeKind::Recreate => "recreate",
            ModeKind::Filesystem => "filesystem",
            ModeKind::Squashfs => "squashfs",
        }
    }

    /// The implementation, or None for a mode this build does not have yet.
    pub fn implementation(self) -> Option<Box<dyn Mode>> {
        match self {
            ModeKind::Disabled => Some(Box::new(disabled::Disabled)),
            ModeKind::Filesystem => Some(Box::new(filesystem::Filesystem)),
            ModeKind::Recreate | ModeKind::Squashfs => None,
        }
    }
}

/// What a mode gets to work with.
pub struct ModeContext<'a> {
    pub cfg: &'a Config,
    pub live: &'a Live,
    /// The mode's tools, located and version-checked, in the order of [`Mode::tools`].
    pub tools: &'a [Found],
}

impl ModeContext<'_> {
    pub fn tool(&self, tool: Tool) -> &Found {
        self.tools
            .iter()
            .find(|f| f.tool == tool)
            .unwrap_or_else(|| panic!("{} is not among the mode's tools", tool.program))
    }
}

/// What a restore did, for the summary.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct RestoreStats {
    /// Files rewritten because they differed or were missing.
    pub files_rewritten: u64,
    pub bytes_rewritten: u64,
    /// Entries removed because the snapshot does not have them.
    pub entries_deleted: u64,
}

pub trait Mode {
    fn kind(&self) -> ModeKind;

    /// External tools the mode needs; all are located before anything is touched.
    fn tools(&self) -> &'static [Tool];

    /// False for modes that neither store nor restore data (`disabled`).
    fn active(&self) -> bool {
        true
    }

    /// Captures the live data into `payload` (an empty directory inside the staging
    /// snapshot). Returns mode-specific details for meta.json.
    fn create(&self, ctx: &ModeContext, payload: &Path) -> Result<serde_json::Value>;

    /// Checks that `snapshot` is complete and intact, before a restore touches anything.
    fn verify(&self, ctx: &ModeContext, snapshot: &Snapshot) -> Result<()>;

    /// Brings the live data back to `snapshot`, in place: included directories and node
    /// directories keep their inodes.
    fn restore(&self, ctx: &ModeContext, snapshot: &Snapshot) -> Result<RestoreStats>;
}
