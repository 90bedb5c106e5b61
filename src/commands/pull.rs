//! `stagesnap pull`: copy a snapshot from the configured remote into the store (see
//! [`crate::remote`]); also restore's auto-pull.

use anyhow::Result;

use super::{checked_store, load_config, lock_timeout, snapshot_named};
use crate::cli::{GlobalArgs, PullArgs};
use crate::config::Config;
use crate::exit::{Code, code_of};
use crate::output::Report;
use crate::progress;
use crate::remote::{self, Pulled, Remote};
use crate::store::{Lock, Store};
use crate::tree::human_bytes;

pub fn run(g: &GlobalArgs, args: &PullArgs) -> Result<Report> {
    let cfg = load_config(g)?;
    let name = snapshot_named(&cfg, args.name.as_deref())?;
    let remote = Remote::connect(&cfg.settings)?;
    let store = checked_store(&cfg)?;
    let lock = store.lock(&format!("pull {name}"), lock_timeout(g))?;
    store.clean_leftovers(&lock)?;
    let pulled = pull(&store, &lock, &name, &cfg, &remote, args.force)?;
    let text = summary(&pulled);
    Ok(Report::new("pull", &pulled, text))
}

/// [`remote::pull`] into this configuration's environment, with a progress bar.
fn pull(
    store: &Store,
    lock: &Lock,
    name: &str,
    cfg: &Config,
    remote: &Remote,
    force: bool,
) -> Result<Pulled> {
    let _bars = progress::Operation::transfer(format!("pull {name}"), 100, "reading the remote");
    let here = remote::Here {
        allowed: cfg.allowed(),
        cache_dir: &cfg.settings.cache_dir,
    };
    remote::pull(store, lock, name, &here, remote, force, &progress::share)
}

fn summary(p: &Pulled) -> String {
    if p.up_to_date {
        return format!("{} is up to date with {}\n", p.name, p.remote);
    }
    format!(
        "pulled {} from {}: {} pieces of {}, {} held here already: received {} in {} packs in {:.2} s\n",
        p.name,
        p.remote,
        p.pieces,
        human_bytes(p.bytes),
        p.pieces_local,
        human_bytes(p.bytes_downloaded),
        p.packs_downloaded,
        p.seconds
    )
}

/// Restore's first step for a snapshot missing here: pulls it when a remote is configured
/// and `auto_pull` is on. None when it is off or the remote has no such snapshot (then
/// auto-create applies); exit 3 naming the remote when it does not answer.
pub fn auto_pull(cfg: &Config, store: &Store, lock: &Lock, name: &str) -> Result<Option<Pulled>> {
    if cfg.settings.remote.is_none() || !cfg.settings.auto_pull {
        return Ok(None);
    }
    let remote = Remote::connect(&cfg.settings)?;
    match pull(store, lock, name, cfg, &remote, false) {
        Ok(pulled) => {
            tracing::info!(name = %name, "snapshot_pulled: {}", summary(&pulled).trim_end());
            Ok(Some(pulled))
        }
        Err(e) if code_of(&e) == Code::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}
