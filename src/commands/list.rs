//! `stagesnap list`: snapshots, newest first.

use anyhow::Result;
use serde::Serialize;

use super::{load_config, store};
use crate::cli::GlobalArgs;
use crate::fingerprint::Checker;
use crate::output::{Report, table};
use crate::store::Unreadable;
use crate::tree::human_bytes;

#[derive(Serialize)]
struct Row {
    name: String,
    mode: String,
    created_at: String,
    bytes: u64,
    stored_bytes: u64,
    /// stored_bytes / bytes (compression shows below 1); None when the data is empty.
    ratio: Option<f64>,
    files: u64,
    pinned: bool,
    nodes: Vec<String>,
    /// Files named by `fingerprint` changed since it was made: restore refuses it.
    stale: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stale_files: Vec<String>,
}

#[derive(Serialize)]
struct Listing {
    snapshots_dir: String,
    snapshots: Vec<Row>,
    unreadable: Vec<Unreadable>,
}

pub fn run(g: &GlobalArgs) -> Result<Report> {
    let cfg = load_config(g)?;
    let store = store(&cfg);
    let (snapshots, unreadable) = store.list()?;
    for u in &unreadable {
        tracing::warn!(name = %u.name, "snapshot_unreadable: {}", u.problem);
    }
    let mut fingerprints = Checker::default();
    let rows: Vec<Row> = snapshots
        .iter()
        .map(|s| {
            let stale_files = fingerprints.changes(&s.meta)?;
            Ok(Row {
                name: s.meta.name.clone(),
                mode: s.meta.mode.clone(),
                created_at: s.meta.created_at.clone(),
                bytes: s.meta.bytes,
                stored_bytes: s.meta.stored_bytes,
                ratio: (s.meta.bytes > 0).then(|| {
                    (s.meta.stored_bytes as f64 / s.meta.bytes as f64 * 1000.0).round() / 1000.0
                }),
                files: s.meta.files,
                pinned: s.meta.pinned,
                nodes: s.meta.nodes.clone(),
                stale: !stale_files.is_empty(),
                stale_files,
            })
        })
        .collect::<Result<_>>()?;
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                r.mode.clone(),
                short_time(&r.created_at),
                human_bytes(r.bytes),
                human_bytes(r.stored_bytes),
                r.ratio.map_or("-".into(), |x| format!("{x:.2}")),
                r.files.to_string(),
                if r.pinned {
                    "yes".into()
                } else {
                    String::new()
                },
                if r.stale { "yes".into() } else { String::new() },
            ]
        })
        .collect();
    let text = if rows.is_empty() {
        format!("no snapshots in {}\n", store.dir().display())
    } else {
        table(
            &[
                "NAME",
                "MODE",
                "CREATED (UTC)",
                "SIZE",
                "STORED",
                "RATIO",
                "FILES",
                "PINNED",
                "STALE",
            ],
            &cells,
        )
    };
    let listing = Listing {
        snapshots_dir: store.dir().display().to_string(),
        snapshots: rows,
        unreadable,
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
