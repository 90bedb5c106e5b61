//! `stagesnap delete`: remove snapshots, also damaged ones.

use anyhow::Result;
use serde::Serialize;

use super::{checked_store, load_config, lock_timeout, prepare_configured};
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
    if args.remote {
        let remote = crate::remote::Remote::connect(&cfg.settings)?;
        crate::remote::delete(&remote, &args.names)?;
        let text: String = args
            .names
            .iter()
            .map(|n| format!("deleted {n} from {}\n", remote.url))
            .collect();
        let deleted = args.names.clone();
        return Ok(Report::new("delete", &Deleted { deleted }, text));
    }
    prepare_configured(&cfg)?;
    let store = checked_store(&cfg)?;
    let lock = store.lock(&format!("delete {}", args.names.join(" ")), lock_timeout(g))?;
    store.clean_leftovers(&lock)?;
    // Every name must exist before anything is removed: a typo changes nothing. One that is
    // not a complete snapshot goes too (that is how a damaged one is cleared), named first.
    let mut found = Vec::new();
    for name in &args.names {
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
    let mut text = String::new();
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
        match incomplete {
            Some(why) => text.push_str(&format!(
                "deleted {name}, which was not a complete snapshot ({why})\n"
            )),
            None => text.push_str(&format!("deleted {name}\n")),
        }
    }
    let deleted = found.into_iter().map(|(n, _)| n).collect();
    Ok(Report::new("delete", &Deleted { deleted }, text))
}
