//! The operations: what the commands do, as typed calls on a [`Session`] opened from one
//! [`Config`] (`create`, `restore`, …), each returning a typed outcome that serializes as the
//! command's `--json` record. The policies around the modes live here: the quiesce of the node
//! containers, the restore's fallback, its journal and check, the staleness guard, the
//! clean-up after a create. The commands above only turn arguments into options and outcomes
//! into reports.

use std::time::Duration;

use anyhow::Result;

use crate::choices::ModeKind;
use crate::config::{Config, Isolation, Overrides, Quiesce, RestoreFallback};
use crate::docker::{Docker, Wait};
use crate::exit::{Code, fail};
use crate::modes::{Containers, Mode};
use crate::names::validate_name;
use crate::observe::Observer;
use crate::quiesce::Op;
use crate::store::{Lock, Store};
use crate::tools::{DOCKER, Found};
use crate::tree::Live;

pub mod adopt;
pub mod compare;
pub mod create;
pub mod delete;
pub mod list;
pub mod prune;
pub mod remote;
pub mod restore;
pub mod verify;

/// Finds, reads and validates the configuration, with every mode's own settings (exit 2
/// when it is not valid).
pub fn load_config(overrides: &Overrides) -> Result<Config> {
    Config::load(overrides, &crate::modes::settings())
}

/// One configuration, loaded once, and how long its operations wait for the store's lock.
pub struct Session {
    pub cfg: Config,
    pub lock_timeout: Duration,
    /// Told what creates and restores do, for progress bars.
    pub observer: &'static dyn Observer,
}

/// A mode with its tools located.
pub type Prepared = (Box<dyn Mode>, Vec<Found>);

impl Session {
    /// Loads the configuration (exit 2 when it is not valid).
    pub fn open(
        overrides: &Overrides,
        lock_timeout: Duration,
        observer: &'static dyn Observer,
    ) -> Result<Session> {
        Ok(Session {
            cfg: load_config(overrides)?,
            lock_timeout,
            observer,
        })
    }

    /// The snapshot an operation names, else `snapshot_name`, checked to be a valid name
    /// (exit 2).
    pub fn snapshot_named(&self, name: Option<&str>) -> Result<String> {
        let name = name.unwrap_or(&self.cfg.settings.snapshot_name).to_string();
        validate_name(&name)?;
        Ok(name)
    }

    pub fn store(&self) -> Store {
        Store::new(&self.cfg.settings.snapshots_dir)
    }

    /// The configured store, refused (exit 2) when it overlaps the live data: every
    /// operation that locks the store checks this first, before it creates or locks anything.
    pub fn checked_store(&self) -> Result<Store> {
        self.cfg
            .live()
            .check_store_outside(&self.cfg.settings.snapshots_dir)?;
        Ok(self.store())
    }

    /// The store that status and diff compare with, under its shared lock. It must exist:
    /// they only read, so they never create it.
    pub fn store_to_compare(&self) -> Result<(Store, Lock)> {
        let store = self.checked_store()?;
        if !store.dir().is_dir() {
            return Err(fail(
                Code::CouldNotCompare,
                format!(
                    "snapshots_dir {} does not exist, so there is no snapshot to compare with; fix snapshots_dir or make a snapshot with `stagesnap create`",
                    store.dir().display()
                ),
            ));
        }
        let lock = store.lock_shared(self.lock_timeout)?;
        Ok((store, lock))
    }

    /// [`prepare`] for the configured mode, whose settings are then checked against this
    /// machine too (exit 2), still before anything is touched; None when suite isolation is
    /// disabled.
    pub fn prepare_configured(&self) -> Result<Option<Prepared>> {
        let Isolation::Mode(kind) = self.cfg.settings.mode else {
            return Ok(None);
        };
        let (mode, tools) = prepare(kind, &self.cfg)?;
        mode.preflight(&self.cfg, &tools)?;
        Ok(Some((mode, tools)))
    }

    /// The steps create and restore share, in order, each of which may stop them before
    /// anything changes: the snapshot's name (`name`, else `snapshot_name`); the configured
    /// mode with its tools (exit 3 when one is missing); docker when the configuration needs
    /// it for `op`; the live data present and outside the store; the store locked, and
    /// cleared of what crashed runs left there and beside the live data.
    fn begin(&self, name: Option<&str>, op: Op) -> Result<Begun<'_>> {
        let name = self.snapshot_named(name)?;
        let Some((mode, tools)) = self.prepare_configured()? else {
            tracing::info!(command = %op, "suite_isolation_disabled");
            return Ok(Begun::Disabled { name });
        };
        let docker = docker_for(&self.cfg, mode.as_ref(), op == Op::Restore)?;
        let live = self.cfg.live();
        live.check_present()?;
        let store = self.checked_store()?;
        // A background create still finishing this snapshot: waited for without the lock,
        // which it takes to clean up when done, then refused if another began meanwhile.
        store.await_background(&name, self.lock_timeout)?;
        let lock = store.lock(&format!("{op} {name}"), self.lock_timeout)?;
        store.await_background(&name, Duration::ZERO)?;
        clean_leftovers(&store, &lock)?;
        live.remove_stale_work_dirs();
        Ok(Begun::Ready(Box::new(Ready {
            cfg: &self.cfg,
            name,
            mode,
            tools,
            docker,
            live,
            store,
            lock,
        })))
    }
}

/// What every operation that writes the store does first, under its lock: puts back the
/// harness snapshot an interrupted adopt was moving (see [`crate::legacy::recover`]; first, so
/// that the staging directory it moved into is emptied of the legacy data before it is
/// removed), then clears what crashed runs left (see [`Store::clean_leftovers`]).
fn clean_leftovers(store: &Store, lock: &Lock) -> Result<()> {
    crate::legacy::recover(store.dir(), lock)?;
    store.clean_leftovers(lock)?;
    Ok(())
}

/// What create and restore hold once they may begin.
struct Ready<'a> {
    cfg: &'a Config,
    name: String,
    mode: Box<dyn Mode>,
    tools: Vec<Found>,
    docker: Option<Docker>,
    live: Live,
    store: Store,
    lock: Lock,
}

enum Begun<'a> {
    /// mode = disabled: nothing to do.
    Disabled {
        name: String,
    },
    Ready(Box<Ready<'a>>),
}

/// The node containers as [`crate::quiesce`] holds them, for the modes (see [`Containers`]).
pub struct Quiesced;

impl Containers for Quiesced {
    fn stopping(&self) -> bool {
        crate::quiesce::stopping()
    }

    fn next_stopped(&self) -> Result<Option<String>> {
        crate::quiesce::next_stopped()
    }

    fn all_stopped(&self) -> Result<()> {
        crate::quiesce::all_stopped()
    }

    fn restart(&self, docker: &Docker, names: Vec<String>, wait: Wait) -> Result<()> {
        crate::quiesce::Held::stop(docker, names, wait)?.end()
    }
}

/// Why this configuration needs docker for a create (or, with `restore`, a restore):
/// `recreate mode selected`, `quiesce = stop is set`…; None when it does not.
pub fn docker_needed_by(cfg: &Config, mode: &dyn Mode, restore: bool) -> Option<String> {
    if mode.tools().contains(&DOCKER) {
        Some(format!("{} mode selected", mode.kind().name()))
    } else if matches!(cfg.settings.quiesce, Quiesce::Pause | Quiesce::Stop) {
        Some(format!("quiesce = {} is set", cfg.settings.quiesce.name()))
    } else if restore && cfg.settings.restore_fallback != RestoreFallback::None {
        Some(format!(
            "restore_fallback = {} is set",
            cfg.settings.restore_fallback.name()
        ))
    } else {
        None
    }
}

/// The docker client when this configuration needs one for a create (or, with `restore`, a
/// restore), checked before anything is touched: exit 3 when the CLI is missing or the
/// daemon does not answer.
fn docker_for(cfg: &Config, mode: &dyn Mode, restore: bool) -> Result<Option<Docker>> {
    docker_needed_by(cfg, mode, restore)
        .map(|why| Docker::connect(&why))
        .transpose()
}

/// The mode's implementation with its tools located: the dependency check every operation
/// that touches snapshots or live data runs before anything else (exit 3).
pub fn prepare(kind: ModeKind, cfg: &Config) -> Result<Prepared> {
    let mode = crate::modes::implementation(kind, cfg);
    let tools = mode
        .tools()
        .iter()
        .map(|t| t.require(kind.name()))
        .collect::<Result<Vec<_>>>()?;
    Ok((mode, tools))
}
