//! Which snapshots a prune keeps, and why: by count, by age and by use. A snapshot stays if
//! any rule keeps it (restic's semantics).

use std::fmt;

use anyhow::Result;
use serde::Serialize;

use crate::config::Config;
use crate::span::Span;
use crate::store::{Lock, Snapshot, Store};

/// The retention rules of one prune.
#[derive(Debug, Clone)]
pub struct Rules<'a> {
    /// The newest `keep_last` unpinned snapshots stay.
    pub keep_last: u32,
    /// Snapshots created within this span of now stay.
    pub keep_within: Option<&'a Span>,
    /// Snapshots restored within this span of now stay.
    pub keep_used_within: Option<&'a Span>,
    /// The configured snapshot_name, kept whatever the rules.
    pub snapshot_name: &'a str,
    /// The snapshot an auto_cleanup runs after, kept whatever the rules.
    pub just_made: Option<&'a str>,
}

/// Why a snapshot stays, or that it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    Pinned,
    SnapshotName,
    JustMade,
    Newest(u32),
    CreatedWithin(Span),
    RestoredWithin(Span),
    /// No rule keeps it.
    Expired,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Pinned => f.write_str("pinned"),
            Reason::SnapshotName => f.write_str("snapshot_name"),
            Reason::JustMade => f.write_str("just made"),
            Reason::Newest(n) => write!(f, "newest {n}"),
            Reason::CreatedWithin(d) => write!(f, "created within {d}"),
            Reason::RestoredWithin(d) => write!(f, "restored within {d}"),
            Reason::Expired => f.write_str("older than every rule"),
        }
    }
}

impl Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One snapshot's fate.
#[derive(Debug, Serialize)]
pub struct Decision {
    pub name: String,
    /// `keep` or `remove`.
    pub action: &'static str,
    pub reasons: Vec<Reason>,
}

impl Decision {
    pub fn remove(&self) -> bool {
        self.action == "remove"
    }

    /// `keep NAME (newest 5, created within 7d)`.
    pub fn line(&self) -> String {
        let reasons: Vec<String> = self.reasons.iter().map(Reason::to_string).collect();
        format!("{} {} ({})", self.action, self.name, reasons.join(", "))
    }
}

impl<'a> Rules<'a> {
    /// The rules the configuration sets, for a prune of no snapshot just made.
    pub fn configured(cfg: &'a Config) -> Rules<'a> {
        Rules {
            keep_last: cfg.settings.keep_snapshot_count,
            keep_within: cfg.settings.keep_within.as_ref(),
            keep_used_within: cfg.settings.keep_used_within.as_ref(),
            snapshot_name: &cfg.settings.snapshot_name,
            just_made: None,
        }
    }
}

/// Decides every snapshot's fate under `rules` now and, unless `dry_run`, removes those no
/// rule keeps; `why` names the command in the log.
pub fn prune(
    store: &Store,
    lock: &Lock,
    rules: &Rules,
    dry_run: bool,
    why: &str,
) -> Result<Vec<Decision>> {
    let (snapshots, _) = store.list()?;
    let decisions = plan(&snapshots, rules, jiff::Timestamp::now(), |s| {
        s.usage().map(|u| u.last_restored)
    });
    if !dry_run {
        for d in decisions.iter().filter(|d| d.remove()) {
            store.delete(&d.name, lock)?;
            tracing::info!(name = %d.name, reason = why, "snapshot_deleted");
        }
    }
    Ok(decisions)
}

/// Every snapshot's fate under `rules` at `now`. `snapshots` must be newest first, as
/// [`crate::store::Store::list`] returns them; `last_restored` gives a snapshot's last
/// restore, None when unknown (never restored, or its usage file unreadable).
pub fn plan(
    snapshots: &[Snapshot],
    rules: &Rules,
    now: jiff::Timestamp,
    last_restored: impl Fn(&Snapshot) -> Option<jiff::Timestamp>,
) -> Vec<Decision> {
    // A time in the future (a clock set back) counts as within.
    let within = |t: jiff::Timestamp, span: &Span| {
        now.duration_since(t).as_secs_f64() <= span.duration.as_secs_f64()
    };
    let mut unpinned = 0u32;
    snapshots
        .iter()
        .map(|s| {
            let mut reasons = Vec::new();
            if s.meta.pinned {
                reasons.push(Reason::Pinned);
            } else {
                unpinned += 1;
                if unpinned <= rules.keep_last {
                    reasons.push(Reason::Newest(rules.keep_last));
                }
            }
            if s.meta.name == rules.snapshot_name {
                reasons.push(Reason::SnapshotName);
            }
            if rules.just_made == Some(s.meta.name.as_str()) {
                reasons.push(Reason::JustMade);
            }
            if let Some(span) = rules.keep_within
                && within(s.meta.created(), span)
            {
                reasons.push(Reason::CreatedWithin(span.clone()));
            }
            if let Some(span) = rules.keep_used_within
                && last_restored(s).is_some_and(|t| within(t, span))
            {
                reasons.push(Reason::RestoredWithin(span.clone()));
            }
            let action = if reasons.is_empty() {
                reasons.push(Reason::Expired);
                "remove"
            } else {
                "keep"
            };
            Decision {
                name: s.meta.name.clone(),
                action,
                reasons,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use super::*;
    use crate::span::parse_span;
    use crate::store::{Meta, SCHEMA};

    fn snap(name: &str, ts: &str, pinned: bool) -> Snapshot {
        Snapshot {
            dir: PathBuf::from(name),
            meta: Meta {
                schema: SCHEMA,
                name: name.into(),
                mode: crate::choices::ModeKind::Filesystem,
                created_at: ts.into(),
                stagesnap_version: "0".into(),
                tools: BTreeMap::new(),
                cache_dir: PathBuf::new(),
                include: vec![],
                nodes: vec![],
                files: 0,
                bytes: 0,
                stored_bytes: 0,
                pinned,
                payload: serde_json::Value::Null,
                manifest: None,
                fingerprint: None,
            },
        }
    }

    fn rules(keep_last: u32) -> Rules<'static> {
        Rules {
            keep_last,
            keep_within: None,
            keep_used_within: None,
            snapshot_name: "clean_state",
            just_made: None,
        }
    }

    /// The names `plan` removes, and each decision's line.
    fn run(list: &[Snapshot], rules: &Rules, used: &[(&str, &str)]) -> (Vec<String>, Vec<String>) {
        let now: jiff::Timestamp = "2026-01-10T00:00:00Z".parse().unwrap();
        let decisions = plan(list, rules, now, |s| {
            used.iter()
                .find(|(n, _)| *n == s.meta.name)
                .map(|(_, t)| t.parse().unwrap())
        });
        let removed = decisions
            .iter()
            .filter(|d| d.remove())
            .map(|d| d.name.clone())
            .collect();
        (removed, decisions.iter().map(Decision::line).collect())
    }

    // Newest first, and names deliberately not in time order.
    fn five() -> Vec<Snapshot> {
        vec![
            snap("a", "2026-01-09T00:00:00Z", false),
            snap("z", "2026-01-08T00:00:00Z", true),
            snap("m", "2026-01-07T00:00:00Z", false),
            snap("clean_state", "2026-01-06T00:00:00Z", false),
            snap("b", "2026-01-01T00:00:00Z", false),
        ]
    }

    #[test]
    fn keep_last_counts_unpinned_newest_and_spares_pinned_snapshot_name_and_just_made() {
        let list = five();
        assert_eq!(run(&list, &rules(1), &[]).0, ["m", "b"]);
        let just_made = Rules {
            just_made: Some("a"),
            ..rules(0)
        };
        let (removed, lines) = run(&list, &just_made, &[]);
        assert_eq!(removed, ["m", "b"]);
        assert_eq!(
            lines,
            [
                "keep a (just made)",
                "keep z (pinned)",
                "remove m (older than every rule)",
                "keep clean_state (snapshot_name)",
                "remove b (older than every rule)",
            ]
        );
        assert!(run(&list, &rules(5), &[]).0.is_empty());
    }

    #[test]
    fn any_rule_keeps_a_snapshot() {
        let list = five();
        let week = parse_span("7d").unwrap();
        let day = parse_span("1d").unwrap();
        let all = Rules {
            keep_within: Some(&week),
            keep_used_within: Some(&day),
            ..rules(1)
        };
        // b is old but was restored 12 hours ago; m is within the week; a is the newest.
        let used = [("b", "2026-01-09T12:00:00Z"), ("m", "2026-01-01T00:00:00Z")];
        let (removed, lines) = run(&list, &all, &used);
        assert!(removed.is_empty(), "{lines:?}");
        assert_eq!(lines[0], "keep a (newest 1, created within 7d)");
        assert_eq!(lines[2], "keep m (created within 7d)");
        assert_eq!(lines[4], "keep b (restored within 1d)");
        // Without the use rule, b goes; without the age rule, m goes too.
        let age = Rules {
            keep_used_within: None,
            ..all.clone()
        };
        assert_eq!(run(&list, &age, &used).0, ["b"]);
        let used_only = Rules {
            keep_within: None,
            ..all
        };
        assert_eq!(run(&list, &used_only, &used).0, ["m"]);
    }
}
