//! Snapshots that a background create (`create --background`) is still finishing:
//!
//! ```text
//! <snapshots_dir>/
//!   .finishing-<name>   flock'ed by the detached process that finishes <name>, for its whole
//!                       life; removed when it ends. Unlocked but present: it died.
//!   .failed-<name>      how the last background create of <name> failed; removed by the next
//!                       create of <name>
//! ```
//! The marker, not the store's lock, is what the finishing process holds, so commands on
//! other snapshots run meanwhile; those on `<name>` wait for it ([`Store::await_background`]),
//! and [`Store::clean_leftovers`] leaves its staging directory alone.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{Lock, Store, open_nofollow, read_nofollow, sync_dir, write_json_atomic};
use crate::exit::{Code, fail};

const FINISHING_PREFIX: &str = ".finishing-";
const FAILED_PREFIX: &str = ".failed-";

/// What `list`, `status` and `wait` learn of a background create of one snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Background {
    /// Still being finished, since `started` (RFC 3339, UTC).
    Finishing { started: String },
    /// It failed: the previous snapshot of that name, if any, is unchanged.
    Failed { code: i32, error: String },
    /// Its process died before it ended (killed, or the machine went down).
    Died { started: String },
}

impl Background {
    /// One line saying where the background create of `name` stands.
    pub fn describe(&self, name: &str) -> String {
        match self {
            Background::Finishing { started } => format!(
                "snapshot {name} is still being finished by a background create (started {started}); `stagesnap wait {name}` waits for it"
            ),
            Background::Failed { error, .. } => format!(
                "the background create of {name} failed: {error}; the previous {name}, if any, is unchanged"
            ),
            Background::Died { started } => format!(
                "the background create of {name} (started {started}) died before it finished; the previous {name}, if any, is unchanged. Create it again"
            ),
        }
    }

    /// The outcome as `wait` ends with it: Ok while it is still finishing.
    pub fn outcome(&self, name: &str) -> Result<()> {
        match self {
            Background::Finishing { .. } => Ok(()),
            Background::Failed { code, .. } => Err(fail(
                Code::from_i32(*code).unwrap_or(Code::Failure),
                self.describe(name),
            )),
            Background::Died { .. } => Err(fail(Code::Failure, self.describe(name))),
        }
    }
}

/// The marker of a snapshot being finished in the background, held (flock'ed) by the process
/// that finishes it; [`Finishing::end`] records the outcome.
pub struct Finishing {
    file: File,
    path: PathBuf,
    failed: PathBuf,
}

impl Store {
    fn finishing_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{FINISHING_PREFIX}{name}"))
    }

    fn failed_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{FAILED_PREFIX}{name}"))
    }

    /// Marks `name` as being finished in the background. The marker is locked before it
    /// appears, so nobody sees it unlocked (which would mean its process died).
    pub fn begin_background(&self, name: &str, _lock: &Lock) -> Result<Finishing> {
        let path = self.finishing_path(name);
        // Not a name `backgrounds` reads: a crash here leaves no marker.
        let tmp = self.dir.join(format!(".background-{name}.tmp"));
        let marker = Background::Finishing {
            started: jiff::Timestamp::now().to_string(),
        };
        write_json_atomic(&tmp, &marker)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(crate::sys::NOFOLLOW)
            .open(&tmp)
            .with_context(|| format!("cannot open {}", tmp.display()))?;
        file.lock()
            .with_context(|| format!("cannot lock {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("cannot create {}", path.display()))?;
        sync_dir(&self.dir)?;
        Ok(Finishing {
            file,
            path,
            failed: self.failed_path(name),
        })
    }

    /// Where a background create of `name` stands; None when there is none, or it succeeded.
    pub fn background(&self, name: &str) -> Result<Option<Background>> {
        let path = self.finishing_path(name);
        match open_nofollow(&path) {
            Ok(file) => {
                // From the file just opened, the one whose lock is tried below.
                let mut text = Vec::new();
                (&file)
                    .read_to_end(&mut text)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let started = match serde_json::from_slice(&text) {
                    Ok(Background::Finishing { started }) => started,
                    _ => "at an unknown time".into(),
                };
                match file.try_lock_shared() {
                    Err(fs::TryLockError::WouldBlock) => {
                        return Ok(Some(Background::Finishing { started }));
                    }
                    Err(fs::TryLockError::Error(e)) => {
                        return Err(e).with_context(|| format!("cannot lock {}", path.display()));
                    }
                    // Unlocked and still there: its process died. Gone since it was opened:
                    // it ended, and said how below.
                    Ok(()) if path.exists() => return Ok(Some(Background::Died { started })),
                    Ok(()) => {}
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
        let failed = self.failed_path(name);
        match read_nofollow(&failed) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .with_context(|| format!("cannot read {}", failed.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", failed.display())),
        }
    }

    /// Every snapshot a background create is finishing or failed to, by name.
    pub fn backgrounds(&self) -> Result<Vec<(String, Background)>> {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return Ok(vec![]);
        };
        let mut names: Vec<String> = rd
            .flatten()
            .filter_map(|e| {
                let entry = e.file_name().to_string_lossy().into_owned();
                let name = entry
                    .strip_prefix(FINISHING_PREFIX)
                    .or_else(|| entry.strip_prefix(FAILED_PREFIX))?;
                crate::names::validate_name(name)
                    .is_ok()
                    .then(|| name.to_string())
            })
            .collect();
        names.sort();
        names.dedup();
        let mut found = vec![];
        for name in names {
            if let Some(b) = self.background(&name)? {
                found.push((name, b));
            }
        }
        Ok(found)
    }

    /// Waits up to `timeout` while a background create is finishing `name` (exit 5 after
    /// that); then where it stands.
    pub fn await_background(&self, name: &str, timeout: Duration) -> Result<Option<Background>> {
        self.poll(timeout, "background_wait", || {
            Ok(match self.background(name)? {
                Some(Background::Finishing { .. }) => {
                    Err(format!("the background create of {name}"))
                }
                ended => Ok(ended),
            })
        })
    }

    /// Forgets how the last background create of `name` ended (a failure, or a dead
    /// process's marker), as a new create of it begins.
    pub fn forget_background(&self, name: &str, _lock: &Lock) -> Result<()> {
        for path in [self.finishing_path(name), self.failed_path(name)] {
            match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("cannot remove {}", path.display()));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Whether the staging directory `entry` (`.staging-<name>-<pid>`) is one a background
    /// create is still finishing.
    pub(super) fn staging_in_background(&self, entry: &str) -> bool {
        entry
            .strip_prefix(super::STAGING_PREFIX)
            .and_then(|rest| rest.rsplit_once('-'))
            .is_some_and(|(name, _)| {
                matches!(
                    self.background(name),
                    Ok(Some(Background::Finishing { .. }))
                )
            })
    }
}

impl Finishing {
    /// Records how the background create ended: on success the marker goes; on failure it
    /// becomes `.failed-<name>` holding the error. Rewritten in place and renamed, since a
    /// failure is often a full store, where a new file cannot be written. The lock goes with
    /// the file.
    pub fn end<T>(self, result: &Result<T>) -> Result<()> {
        if let Err(e) = result {
            let failed = Background::Failed {
                code: crate::exit::code_of(e).as_i32(),
                error: crate::exit::one_line(e),
            };
            let bytes = serde_json::to_vec(&failed)?;
            self.file
                .write_all_at(&bytes, 0)
                .and_then(|()| self.file.set_len(bytes.len() as u64))
                .and_then(|()| self.file.sync_all())
                .and_then(|()| fs::rename(&self.path, &self.failed))
                .with_context(|| format!("cannot record the failure in {}", self.path.display()))?;
        } else {
            fs::remove_file(&self.path)
                .with_context(|| format!("cannot remove {}", self.path.display()))?;
        }
        sync_dir(self.path.parent().unwrap_or(Path::new("/")))
    }
}
