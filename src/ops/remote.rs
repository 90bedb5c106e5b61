//! The remote store's operations on a session: push, pull (also restore's auto-pull), and
//! list, delete and prune on the remote (see [`crate::remote`]).

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use super::{Session, clean_leftovers};
use crate::exit::{Code, code_of, fail};
use crate::modes::{self, Mode, ModeContext};
use crate::names::validate_name;
use crate::observe::Watched;
use crate::remote::{self, Here, Listed, Pruned, Pulled, Pushed, Remote};
use crate::store::{Lock, Store};
use crate::tools::Found;
use crate::tree::Live;

/// `list --remote --json`'s record.
#[derive(Debug, Serialize)]
pub struct RemoteListing {
    pub remote: String,
    pub snapshots: Vec<Listed>,
}

/// `delete --remote --json`'s record.
#[derive(Debug, Serialize)]
pub struct RemoteDeleted {
    pub remote: String,
    pub deleted: Vec<String>,
}

/// Where a pull puts its snapshot: the locked store, in the configured mode (tools located).
pub(super) struct PullInto<'a> {
    pub store: &'a Store,
    pub lock: &'a Lock,
    pub mode: &'a dyn Mode,
    pub tools: &'a [Found],
}

impl Session {
    fn remote(&self) -> Result<Remote> {
        Remote::connect(&self.cfg.settings)
    }

    /// Pushes snapshot `name` (else `snapshot_name`) to the configured remote.
    pub fn push(&self, name: Option<&str>) -> Result<Pushed> {
        let name = self.snapshot_named(name)?;
        let remote = self.remote()?;
        let store = self.store();
        let _lock = store.lock_shared(self.lock_timeout)?;
        let snapshot = store.get(&name)?;
        let mode = modes::implementation(snapshot.meta.mode, &self.cfg);
        let _watched = Watched::transfer(
            self.observer,
            format!("push {name}"),
            snapshot.meta.bytes,
            "checking the snapshot",
        );
        let mut pushed = None;
        mode.with_files(&snapshot, &mut |source| {
            pushed = Some(remote::push(
                &store,
                &snapshot,
                &self.cfg.allowed(),
                source,
                &remote,
                &|done, total| self.observer.share(done, total),
            )?);
            Ok(())
        })?;
        Ok(pushed.expect("with_files calls back once"))
    }

    /// Pulls snapshot `name` (else `snapshot_name`) from the configured remote into the store;
    /// `force` replaces a local snapshot of that name that differs.
    pub fn pull(&self, name: Option<&str>, force: bool) -> Result<Pulled> {
        let name = self.snapshot_named(name)?;
        let Some((mode, tools)) = self.prepare_configured()? else {
            return Err(fail(
                Code::Usage,
                "mode = disabled: a pulled snapshot needs a mode to be stored in; set mode = filesystem, squashfs or reflink",
            ));
        };
        mode.takes_pulled()?;
        let remote = self.remote()?;
        let store = self.checked_store()?;
        let lock = store.lock(&format!("pull {name}"), self.lock_timeout)?;
        clean_leftovers(&store, &lock)?;
        let into = PullInto {
            store: &store,
            lock: &lock,
            mode: mode.as_ref(),
            tools: &tools,
        };
        self.pull_into(&into, &name, &remote, force)
    }

    /// Pulls `name` into `into.store` as a snapshot of the configured mode `into.mode`.
    fn pull_into(
        &self,
        into: &PullInto,
        name: &str,
        remote: &Remote,
        force: bool,
    ) -> Result<Pulled> {
        let _watched = Watched::transfer(
            self.observer,
            format!("pull {name}"),
            100,
            "reading the remote",
        );
        let include = self.cfg.live().include;
        let take_tree = |tree: &Path, payload: &Path| {
            let live = Live {
                cache_dir: tree.to_path_buf(),
                include: include.clone(),
            };
            let ctx = ModeContext::new(&self.cfg, &live, into.tools, &super::Quiesced);
            into.mode.take_tree(&ctx, payload)
        };
        let here = Here {
            allowed: self.cfg.allowed(),
            cache_dir: &self.cfg.settings.cache_dir,
            mode: into.mode.kind(),
            take_tree: &take_tree,
        };
        remote::pull(
            into.store,
            into.lock,
            name,
            &here,
            remote,
            force,
            &|done, total| self.observer.share(done, total),
        )
    }

    /// Restore's first step for a snapshot missing here: pulls it when a remote is configured
    /// and `auto_pull` is on. None when it is off or the remote has no such snapshot (then
    /// auto-create applies); exit 3 naming the remote when it does not answer.
    pub(super) fn auto_pull(&self, into: &PullInto, name: &str) -> Result<Option<Pulled>> {
        let settings = &self.cfg.settings;
        if settings.remote.is_none() || !settings.auto_pull {
            return Ok(None);
        }
        into.mode.takes_pulled()?;
        let remote = self.remote()?;
        match self.pull_into(into, name, &remote, false) {
            Ok(pulled) => {
                tracing::info!(
                    name = %name,
                    remote = %pulled.remote,
                    bytes = pulled.bytes_downloaded,
                    "snapshot_pulled"
                );
                Ok(Some(pulled))
            }
            Err(e) if code_of(&e) == Code::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The snapshots on the configured remote.
    pub fn remote_list(&self) -> Result<RemoteListing> {
        let remote = self.remote()?;
        Ok(RemoteListing {
            snapshots: remote::list(&remote)?,
            remote: remote.url.to_string(),
        })
    }

    /// Deletes snapshots `names` from the configured remote (their pieces stay until a
    /// remote prune finds them unreferenced).
    pub fn remote_delete(&self, names: &[String]) -> Result<RemoteDeleted> {
        for name in names {
            validate_name(name)?;
        }
        let remote = self.remote()?;
        remote::delete(&remote, names)?;
        Ok(RemoteDeleted {
            remote: remote.url.to_string(),
            deleted: names.to_vec(),
        })
    }

    /// Keeps the newest `keep` (else `keep_snapshot_count`) snapshots and `snapshot_name` on
    /// the remote, and removes the packs nothing refers to.
    pub fn remote_prune(&self, keep: Option<u32>, dry_run: bool) -> Result<(String, Pruned)> {
        let remote = self.remote()?;
        let keep = keep.unwrap_or(self.cfg.settings.keep_snapshot_count);
        let pruned = remote::prune(
            &remote,
            keep as usize,
            &self.cfg.settings.snapshot_name,
            dry_run,
        )?;
        Ok((remote.url.to_string(), pruned))
    }
}
