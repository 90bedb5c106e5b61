//! `stagesnap verify`: read stored snapshots back and check them against their manifests.

use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use super::open;
use crate::cli::{GlobalArgs, VerifyArgs};
use crate::exit::{Code, code_of, one_line};
use crate::modes::{ModeContext, Verified};
use crate::names::validate_name;
use crate::ops::prepare;
use crate::output::{Report, table};
use crate::store::Snapshot;
use crate::tree::Live;

#[derive(Serialize)]
struct Checked {
    name: String,
    mode: String,
    ok: bool,
    #[serde(flatten)]
    verified: Verified,
    seconds: f64,
}

/// Problems listed per snapshot in the text output; `--json` has them all.
const SHOWN: usize = 20;

pub fn run(g: &GlobalArgs, args: &VerifyArgs) -> Result<Report> {
    let session = open(g)?;
    let cfg = &session.cfg;
    let store = session.checked_store()?;
    let names = if args.all {
        vec![]
    } else if args.names.is_empty() {
        vec![cfg.settings.snapshot_name.clone()]
    } else {
        args.names.clone()
    };
    for name in &names {
        validate_name(name)?;
    }
    let _lock = store.lock_shared(session.lock_timeout)?;
    let mut results = Vec::new();
    let snapshots = if args.all {
        let (snapshots, unreadable) = store.list()?;
        results.extend(unreadable.into_iter().map(|u| Checked {
            name: u.name,
            mode: "unknown".into(),
            ok: false,
            verified: Verified {
                checked: "its metadata".into(),
                problems: vec![u.problem],
            },
            seconds: 0.0,
        }));
        snapshots
    } else {
        // Every name must exist before anything is read: exit 4 names the missing one.
        names
            .iter()
            .map(|n| store.get(n))
            .collect::<Result<Vec<_>>>()?
    };
    let live = cfg.live();
    for snap in &snapshots {
        let started = Instant::now();
        let verified = check(cfg, &live, snap).or_else(|e| {
            // What is wrong with this machine or this run, not with the snapshot.
            if matches!(code_of(&e), Code::MissingDependency | Code::Interrupted) {
                return Err(e);
            }
            Ok(Verified {
                checked: "its manifest".into(),
                problems: vec![one_line(&e)],
            })
        })?;
        tracing::info!(
            name = %snap.meta.name,
            problems = verified.problems.len(),
            seconds = crate::tree::seconds(started.elapsed()),
            "snapshot_verified"
        );
        results.push(Checked {
            name: snap.meta.name.clone(),
            mode: snap.meta.mode.clone(),
            ok: verified.problems.is_empty(),
            verified,
            seconds: crate::tree::seconds(started.elapsed()),
        });
    }
    let damaged = results.iter().filter(|r| !r.ok).count();
    let mut text = if results.is_empty() {
        format!("no snapshots in {}\n", store.dir().display())
    } else {
        let rows: Vec<Vec<String>> = results
            .iter()
            .map(|r| {
                vec![
                    r.name.clone(),
                    r.mode.clone(),
                    if r.ok {
                        "ok".into()
                    } else {
                        format!("DAMAGED ({} problems)", r.verified.problems.len())
                    },
                    r.verified.checked.clone(),
                ]
            })
            .collect();
        table(&["NAME", "MODE", "RESULT", "CHECKED"], &rows)
    };
    for r in results.iter().filter(|r| !r.ok) {
        text.push_str(&format!("\n{}:\n", r.name));
        for p in r.verified.problems.iter().take(SHOWN) {
            text.push_str(&format!("  {p}\n"));
        }
        if r.verified.problems.len() > SHOWN {
            text.push_str(&format!(
                "  … {} more (see --json)\n",
                r.verified.problems.len() - SHOWN
            ));
        }
    }
    if damaged > 0 {
        text.push_str(&format!(
            "\n{damaged} snapshot(s) damaged: delete them with `stagesnap delete NAME` and create them again\n"
        ));
    }
    #[derive(Serialize)]
    struct Listing {
        snapshots: Vec<Checked>,
    }
    let report = Report::new("verify", &Listing { snapshots: results }, text);
    Ok(if damaged > 0 {
        report.with_code(Code::Failure)
    } else {
        report
    })
}

/// The snapshot's manifest, its payload's presence, then the mode's read-back check.
fn check(cfg: &crate::config::Config, live: &Live, snap: &Snapshot) -> Result<Verified> {
    let kind = snap.mode()?;
    let (mode, tools) = prepare(kind)?;
    if !mode.writes_live_data() {
        return Ok(Verified {
            checked: format!("nothing: {} mode stores no data", kind.name()),
            problems: vec![],
        });
    }
    let manifest = snap.manifest_with_pieces(&cfg.allowed())?;
    let ctx = ModeContext::new(cfg, live, &tools, &crate::ops::Quiesced);
    mode.verify(&ctx, snap)?;
    mode.verify_stored(&ctx, snap, &manifest)
}
