//! `stagesnap push`: copy a snapshot to the configured remote (see [`crate::remote`]).

use anyhow::Result;

use super::{load_config, lock_timeout, snapshot_named, store};
use crate::cli::{GlobalArgs, PushArgs};
use crate::delta::Dir;
use crate::exit::{Code, fail};
use crate::modes::ModeKind;
use crate::output::Report;
use crate::remote::{self, Remote};
use crate::tree::human_bytes;

pub fn run(g: &GlobalArgs, args: &PushArgs) -> Result<Report> {
    let cfg = load_config(g)?;
    let name = snapshot_named(&cfg, args.name.as_deref())?;
    let remote = Remote::connect(&cfg.settings)?;
    let store = store(&cfg);
    let _lock = store.lock_shared(lock_timeout(g))?;
    let snapshot = store.get(&name)?;
    // The modes whose payload is the tree of files itself.
    let kind = ModeKind::of(&snapshot)?;
    if !matches!(kind, ModeKind::Filesystem | ModeKind::Reflink) {
        return Err(fail(
            Code::Usage,
            format!(
                "snapshot {name} is a {} snapshot; push takes filesystem and reflink snapshots (make one with `stagesnap --set mode=filesystem create {name}-push`)",
                kind.name()
            ),
        ));
    }
    let payload = snapshot.payload();
    let source = Dir::snapshot(&payload)?;
    let pushed = remote::push(&store, &snapshot, &cfg.allowed(), &source, &remote)?;
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
