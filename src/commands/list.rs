//! `stagesnap list`: snapshots, newest first.

use anyhow::Result;

use super::open;
use crate::cli::{GlobalArgs, ListArgs};
use crate::ops::list::LEGACY;
use crate::output::{Report, table};
use crate::tree::human_bytes;

pub fn run(g: &GlobalArgs, args: &ListArgs) -> Result<Report> {
    if args.remote {
        return remote(g);
    }
    let listing = open(g)?.list()?;
    let rows = &listing.snapshots;
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                match &r.legacy {
                    Some(l) => format!("{LEGACY} ({})", l.format.name()),
                    None => r.mode.clone(),
                },
                short_time(&r.created_at),
                r.bytes.map_or("-".into(), human_bytes),
                human_bytes(r.stored_bytes),
                r.shared_bytes.map_or("-".into(), human_bytes),
                r.ratio.map_or("-".into(), |x| format!("{x:.2}")),
                r.files.map_or("-".into(), |n| n.to_string()),
                if r.pinned {
                    "yes".into()
                } else {
                    String::new()
                },
                if r.stale { "yes".into() } else { String::new() },
                r.last_restored.as_deref().map_or("-".into(), short_time),
                r.restores.to_string(),
            ]
        })
        .collect();
    let mut text = if rows.is_empty() {
        format!("no snapshots in {}\n", listing.snapshots_dir)
    } else {
        table(
            &[
                "NAME",
                "MODE",
                "CREATED (UTC)",
                "SIZE",
                "STORED",
                "SHARED",
                "RATIO",
                "FILES",
                "PINNED",
                "STALE",
                "LAST RESTORED",
                "RESTORES",
            ],
            &cells,
        )
    };
    for b in &listing.background {
        text.push_str(&format!("{}\n", b.state.describe(&b.name)));
    }
    if let Some(r) = rows.iter().find(|r| r.legacy.is_some()) {
        text.push_str(&format!(
            "{LEGACY}: made by the stage-env harness; `stagesnap adopt {}` makes one usable\n",
            r.name
        ));
    }
    Ok(Report::new("list", &listing, text))
}

/// `list --remote`.
fn remote(g: &GlobalArgs) -> Result<Report> {
    let listing = open(g)?.remote_list()?;
    let rows: Vec<Vec<String>> = listing
        .snapshots
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.mode.to_string(),
                s.created_at.clone(),
                s.files.to_string(),
                human_bytes(s.bytes),
                if s.pinned { "yes" } else { "" }.into(),
            ]
        })
        .collect();
    let text = if rows.is_empty() {
        format!("no snapshots on {}\n", listing.remote)
    } else {
        table(
            &["NAME", "MODE", "CREATED", "FILES", "BYTES", "PINNED"],
            &rows,
        )
    };
    Ok(Report::new("list", &listing, text))
}

/// `2026-11-26 13:05:09` from an RFC 3339 timestamp.
fn short_time(rfc3339: &str) -> String {
    rfc3339
        .parse::<jiff::Timestamp>()
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|_| rfc3339.to_string())
}
