//! `stagesnap delete`: remove snapshots.

use anyhow::Result;
use serde::Serialize;

use super::{load_config, lock_timeout, prepare_configured, store};
use crate::cli::{DeleteArgs, GlobalArgs};
use crate::legacy;
use crate::output::Report;
use crate::store::validate_name;

#[derive(Serialize)]
struct Deleted {
    deleted: Vec<String>,
}

pub fn run(g: &GlobalArgs, args: &DeleteArgs) -> Result<Report> {
    let cfg = load_config(g)?;
    for name in &args.names {
        validate_name(name)?;
    }
    prepare_configured(&cfg)?;
    let store = store(&cfg);
    let lock = store.lock(&format!("delete {}", args.names.join(" ")), lock_timeout(g))?;
    store.clean_leftovers(&lock)?;
    // Every name must exist before anything is removed: a typo changes nothing.
    for name in &args.names {
        if legacy::find(store.dir(), name).is_empty() {
            store.get(name)?;
        }
    }
    let mut deleted = Vec::new();
    for name in &args.names {
        if deleted.contains(name) {
            continue;
        }
        // Everything of that name: the stagesnap snapshot or the harness's directory, and
        // the harness's image, metadata and marker beside it.
        if store.exists(name) {
            store.delete(name, &lock)?;
        }
        legacy::remove_files(store.dir(), name, &lock)?;
        tracing::info!(name = %name, reason = "delete", "snapshot_deleted");
        deleted.push(name.clone());
    }
    let text = deleted.iter().map(|n| format!("deleted {n}\n")).collect();
    Ok(Report::new("delete", &Deleted { deleted }, text))
}
