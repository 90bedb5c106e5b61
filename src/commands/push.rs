//! `stagesnap push`: copy a snapshot to the configured remote (see [`crate::remote`]).

use anyhow::Result;

use super::{load_config, lock_timeout, snapshot_named, store};
use crate::cli::{GlobalArgs, PushArgs};
use crate::exit::{Code, fail};
use crate::modes::ModeKind;
use crate::output::Report;
use crate::progress;
use crate::remote::{self, Remote};
use crate::tree::human_bytes;

pub fn run(g: &GlobalArgs, args: &PushArgs) -> Result<Report> {
    let cfg = load_config(g)?;
    let name = snapshot_named(&cfg, args.name.as_deref())?;
    let remote = Remote::connect(&cfg.settings)?;
    let store = store(&cfg);
    let _lock = store.lock_shared(lock_timeout(g))?;
    let snapshot = store.get(&name)?;
    let mode = ModeKind::of(&snapshot)?.implementation().ok_or_else(|| {
        fail(
            Code::Usage,
            format!("snapshot {name} is of a mode this stagesnap does not have"),
        )
    })?;
    let _bars = progress::Operation::transfer(
        format!("push {name}"),
        snapshot.meta.bytes,
        "checking the snapshot",
    );
    let mut pushed = None;
    mode.with_files(&snapshot, &mut |source| {
        pushed = Some(remote::push(
            &store,
            &snapshot,
            &cfg.allowed(),
            source,
            &remote,
            &progress::share,
        )?);
        Ok(())
    })?;
    let pushed = pushed.expect("with_files calls back once");
    let text = format!(
        "pushed {name} to {}: {} pieces of {} ({} read), {} new: sent {} in {} packs in {:.2} s\n",
        pushed.remote,
        pushed.pieces,
        human_bytes(pushed.bytes),
        human_bytes(pushed.bytes_read),
        pushed.pieces_uploaded,
        human_bytes(pushed.bytes_uploaded),
        pushed.packs_uploaded,
        pushed.seconds
    );
    Ok(Report::new("push", &pushed, text))
}
