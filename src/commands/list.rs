//! `stagesnap list`: snapshots, newest first.

use anyhow::Result;
use serde::Serialize;

use super::{load_config, store};
use crate::cli::{GlobalArgs, ListArgs};
use crate::config::Config;
use crate::fingerprint::Checker;
use crate::legacy::{self, Format};
use crate::output::{Report, table};
use crate::store::Unreadable;
use crate::tree::human_bytes;

#[derive(Serialize)]
struct Row {
    name: String,
    mode: String,
    created_at: String,
    /// None for a legacy squashfs image, whose content is not read to list it.
    bytes: Option<u64>,
    stored_bytes: u64,
    /// Of stored_bytes, those no other snapshot shares (filesystem mode stores a file that
    /// did not change since the previous snapshot once, hardlinked) and those shared; None
    /// for a harness snapshot.
    own_bytes: Option<u64>,
    shared_bytes: Option<u64>,
    /// stored_bytes / bytes (compression shows below 1); None when the data is empty or unknown.
    ratio: Option<f64>,
    files: Option<u64>,
    pinned: bool,
    nodes: Vec<String>,
    /// Files named by `fingerprint` changed since it was made: restore refuses it.
    stale: bool,
    /// RFC 3339, UTC; None when never restored (or its usage file is unreadable).
    last_restored: Option<String>,
    /// Successful restores counted in its usage file.
    restores: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stale_files: Vec<String>,
    /// Set for a snapshot the stage-env harness left (mode `legacy`): `stagesnap adopt`
    /// makes it usable.
    #[serde(skip_serializing_if = "Option::is_none")]
    legacy: Option<LegacyRow>,
}

#[derive(Serialize)]
struct LegacyRow {
    /// filesystem (`NAME/`) or squashfs (`NAME.sqfs`).
    format: Format,
    /// The harness's files of the snapshot, relative to snapshots_dir.
    paths: Vec<String>,
}

#[derive(Serialize)]
struct Listing {
    snapshots_dir: String,
    snapshots: Vec<Row>,
    unreadable: Vec<Unreadable>,
}

pub fn run(g: &GlobalArgs, args: &ListArgs) -> Result<Report> {
    let cfg = load_config(g)?;
    if args.remote {
        return remote(&cfg);
    }
    let store = store(&cfg);
    let (snapshots, unreadable) = store.list()?;
    for u in &unreadable {
        tracing::warn!(name = %u.name, "snapshot_unreadable: {}", u.problem);
    }
    let mut fingerprints = Checker::default();
    let mut rows: Vec<(jiff::Timestamp, Row)> = snapshots
        .iter()
        .map(|s| {
            let stale_files = fingerprints.changes(&s.meta)?;
            let usage = s.usage();
            let (own, shared) = crate::store::own_and_shared(s);
            let row = Row {
                name: s.meta.name.clone(),
                mode: s.meta.mode.clone(),
                created_at: s.meta.created_at.clone(),
                bytes: Some(s.meta.bytes),
                stored_bytes: s.meta.stored_bytes,
                own_bytes: Some(own),
                shared_bytes: Some(shared),
                ratio: ratio(s.meta.stored_bytes, Some(s.meta.bytes)),
                files: Some(s.meta.files),
                pinned: s.meta.pinned,
                nodes: s.meta.nodes.clone(),
                stale: !stale_files.is_empty(),
                stale_files,
                last_restored: usage.as_ref().map(|u| u.last_restored.to_string()),
                restores: usage.map_or(0, |u| u.restores),
                legacy: None,
            };
            Ok((s.meta.created(), row))
        })
        .collect::<Result<_>>()?;
    let mut unreadable = unreadable;
    for l in legacy::scan(store.dir())? {
        let summary = match l.summary(store.dir()) {
            Ok(summary) => summary,
            // Deleted since the directory was read: list runs unlocked.
            Err(_) if l.path.symlink_metadata().is_err() => continue,
            Err(e) => {
                let problem = crate::exit::one_line(&e);
                tracing::warn!(name = %l.name, "snapshot_unreadable: {problem}");
                unreadable.push(Unreadable {
                    name: l.name.clone(),
                    problem,
                });
                continue;
            }
        };
        let row = Row {
            name: l.name.clone(),
            mode: LEGACY.into(),
            created_at: summary.created.to_string(),
            bytes: summary.bytes,
            stored_bytes: summary.stored_bytes,
            own_bytes: None,
            shared_bytes: None,
            ratio: ratio(summary.stored_bytes, summary.bytes),
            files: summary.files,
            pinned: false,
            nodes: summary.nodes,
            stale: false,
            stale_files: vec![],
            last_restored: None,
            restores: 0,
            legacy: Some(LegacyRow {
                format: l.format,
                paths: summary.paths,
            }),
        };
        rows.push((summary.created, row));
    }
    // Newest first, as Store::list orders its own.
    rows.sort_by(|(a, ra), (b, rb)| b.cmp(a).then(ra.name.cmp(&rb.name)));
    let rows: Vec<Row> = rows.into_iter().map(|(_, row)| row).collect();
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
        format!("no snapshots in {}\n", store.dir().display())
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
    if let Some(r) = rows.iter().find(|r| r.legacy.is_some()) {
        text.push_str(&format!(
            "{LEGACY}: made by the stage-env harness; `stagesnap adopt {}` makes one usable\n",
            r.name
        ));
    }
    let listing = Listing {
        snapshots_dir: store.dir().display().to_string(),
        snapshots: rows,
        unreadable,
    };
    Ok(Report::new("list", &listing, text))
}

/// The mode `list` shows for a snapshot the stage-env harness left.
const LEGACY: &str = "legacy";

/// stored / bytes, to three decimals; None when the data is empty or its size unknown.
fn ratio(stored: u64, bytes: Option<u64>) -> Option<f64> {
    let bytes = bytes.filter(|&b| b > 0)?;
    Some((stored as f64 / bytes as f64 * 1000.0).round() / 1000.0)
}

/// `2026-11-26 13:05:09` from an RFC 3339 timestamp.
fn short_time(rfc3339: &str) -> String {
    rfc3339
        .parse::<jiff::Timestamp>()
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|_| rfc3339.to_string())
}

#[derive(Serialize)]
struct RemoteListing {
    remote: String,
    snapshots: Vec<crate::remote::Listed>,
}

/// `list --remote`.
fn remote(cfg: &Config) -> Result<Report> {
    let remote = crate::remote::Remote::connect(&cfg.settings)?;
    let snapshots = crate::remote::list(&remote)?;
    let rows: Vec<Vec<String>> = snapshots
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.mode.clone(),
                s.created_at.clone(),
                s.files.to_string(),
                human_bytes(s.bytes),
                if s.pinned { "yes" } else { "" }.into(),
            ]
        })
        .collect();
    let text = if snapshots.is_empty() {
        format!("no snapshots on {}\n", remote.url)
    } else {
        table(
            &["NAME", "MODE", "CREATED", "FILES", "BYTES", "PINNED"],
            &rows,
        )
    };
    let listing = RemoteListing {
        remote: remote.url.to_string(),
        snapshots,
    };
    Ok(Report::new("list", &listing, text))
}
