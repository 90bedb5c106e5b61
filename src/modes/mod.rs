//! Snapshot modes. Each mode is one file implementing [`Mode`] plus one arm in
//! [`ModeKind`]; the commands never look inside a mode.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;

use crate::capture::{self, Held};
use crate::choices::ModeKind;
use crate::config::{Config, Spec};
use crate::delta::{Content, Delta, Dir, RestoreStats, Source};
use crate::docker::{Docker, Wait};
use crate::exit::{Code, fail};
use crate::manifest::{Entry, Kind, Known, Manifest, Name};
use crate::observe::{Observer, Unobserved};
use crate::store::{Journal, Snapshot};
use crate::tools::{Found, Tool};
use crate::tree::{Live, Totals};

mod filesystem;
pub mod recreate;
mod reflink;
pub mod squashfs;

/// A mode's row: adding a mode is its file, its row here and its name in [`ModeKind`]. The
/// row names the mode's own settings (defined in its file, which types them) and its
/// constructor, which gives the mode with those settings typed; the mode says everything
/// else about itself through [`Mode`] (its tools, settings check, doctor lines…).
struct Row {
    kind: ModeKind,
    settings: &'static [Spec],
    new: fn(&Config) -> Box<dyn Mode>,
}

const MODES: &[Row] = &[
    Row {
        kind: ModeKind::Recreate,
        settings: recreate::SETTINGS,
        new: |cfg| Box::new(recreate::Recreate::new(cfg)),
    },
    Row {
        kind: ModeKind::Filesystem,
        settings: &[],
        new: |_| Box::<filesystem::Filesystem>::default(),
    },
    Row {
        kind: ModeKind::Squashfs,
        settings: squashfs::SETTINGS,
        new: |cfg| Box::new(squashfs::Squashfs::new(cfg)),
    },
    Row {
        kind: ModeKind::Reflink,
        settings: &[],
        new: |_| Box::new(reflink::Reflink),
    },
];

/// Every mode's own settings, in registry order, for [`Config::load`] (below this layer, so
/// it is given them).
pub fn settings() -> Vec<&'static Spec> {
    MODES.iter().flat_map(|row| row.settings).collect()
}

/// The implementation of mode `kind`, with its settings from `cfg`.
pub fn implementation(kind: ModeKind, cfg: &Config) -> Box<dyn Mode> {
    let row = MODES
        .iter()
        .find(|row| row.kind == kind)
        .unwrap_or_else(|| panic!("mode {kind} has no row in MODES"));
    (row.new)(cfg)
}

/// Content a source must fetch before the delta engine reads it (see [`Delta::before_change`]).
type Fetch<'a> = &'a (dyn Fn(&[&Entry]) -> Result<()> + Sync);

/// The restore of the modes whose snapshot holds a tree of files (`source`): the delta engine
/// brings the live data to `target`, rewriting only what differs. `fetch` readies what it
/// will read, before the first change. Every restore of live data goes through here, after
/// the quiesced node containers have all stopped.
fn delta_restore(
    ctx: &ModeContext,
    target: &Manifest,
    source: &dyn Source,
    content: Content,
    fetch: Fetch,
) -> Result<Restoration> {
    ctx.containers.all_stopped()?;
    delta(ctx, target, source, content, fetch)
}

/// [`delta_restore`] of data no running node holds.
fn delta(
    ctx: &ModeContext,
    target: &Manifest,
    source: &dyn Source,
    content: Content,
    fetch: Fetch,
) -> Result<Restoration> {
    let outcome = Delta {
        target,
        source,
        root: &ctx.live.cache_dir,
        content,
        by_content: ctx.by_content,
        observer: ctx.observer,
        recheck: false,
        mapped: None,
        before_change: &|read| {
            fetch(read)?;
            ctx.changing()
        },
    }
    .apply()?;
    Ok(Restoration {
        stats: outcome.stats,
        seen: Some(outcome.tree),
    })
}

/// The snapshot's manifest to compare with, `by_content` for a check by content (`status
/// --full`, `diff --full`, `restore --verify full`): then a manifest without file hashes
/// (`reflink`'s create clones and never reads the data) gets them from the payload, the tree
/// of files its restore copies from.
pub fn manifest_to_compare(
    snapshot: &Snapshot,
    cfg: &Config,
    by_content: bool,
) -> Result<Manifest> {
    let mut manifest = stored_manifest(snapshot, cfg)?;
    if by_content
        && manifest
            .entries
            .iter()
            .any(|e| e.kind == Kind::File && e.blake3.is_none())
    {
        manifest.hash(&snapshot.payload(), |e| e.blake3.is_none())?;
    }
    Ok(manifest)
}

/// The snapshot's manifest (see [`Snapshot::manifest`]), which a mode that stores no data
/// does not have.
pub fn stored_manifest(snapshot: &Snapshot, cfg: &Config) -> Result<Manifest> {
    let allowed = cfg.allowed();
    snapshot.check_include(&allowed)?;
    if snapshot.meta.manifest.is_none()
        && !implementation(snapshot.meta.mode, cfg).writes_live_data()
    {
        return Err(fail(
            Code::Failure,
            format!(
                "snapshot {} ({} mode) stores no data, so there is nothing to compare or verify",
                snapshot.meta.name, snapshot.meta.mode
            ),
        ));
    }
    snapshot.manifest(&allowed)
}

/// What a restore brings the live data to: the snapshot's manifest or, for a snapshot made
/// before manifests, what a scan of `tree` (its content as files) finds.
fn target<'a>(
    snapshot: &Snapshot,
    manifest: Option<&'a Manifest>,
    tree: &Path,
) -> Result<Cow<'a, Manifest>> {
    match manifest {
        Some(m) => Ok(Cow::Borrowed(m)),
        None => Ok(Cow::Owned(Manifest::scan(tree, &snapshot.meta.include)?)),
    }
}

/// [`delta_restore`] from the snapshot's own payload tree, which needs no fetching
/// (`filesystem`'s copy, `reflink`'s clones). Each node whose container a quiesced restore
/// has stopped is restored at once, on every core, while the others still stop; the pass
/// over everything then finds those done.
fn payload_restore(
    ctx: &ModeContext,
    snapshot: &Snapshot,
    manifest: Option<&Manifest>,
    content: Content,
) -> Result<Restoration> {
    let payload = snapshot.payload();
    let target = target(snapshot, manifest, &payload)?;
    let source = Dir::snapshot(&payload)?;
    // Workers for nodes whose containers stopped, only while some are being stopped: a
    // restore that stops none would spawn threads for nothing.
    let workers = if ctx.containers.stopping() {
        crate::parallel::cores()
    } else {
        0
    };
    let early = crate::parallel::each(
        (0..workers).collect(),
        RestoreStats::default,
        |stats, _worker: usize| {
            while let Some(node) = ctx.containers.next_stopped()? {
                let started = std::time::Instant::now();
                if let Some(part) = node_part(&target, &node) {
                    stats.add(delta(ctx, &part, &source, content, &|_| Ok(()))?.stats);
                }
                tracing::debug!(node = %node, seconds = crate::tree::seconds(started.elapsed()), "node_restored_early");
            }
            Ok(())
        },
    )?;
    let mut done = delta_restore(ctx, &target, &source, content, &|_| Ok(()))?;
    for stats in early {
        done.stats.add(stats);
    }
    Ok(done)
}

/// The part of `target` in node directory `node` (`data/node1`), as a manifest of its own;
/// None when a hardlink ties it to a file elsewhere, which only the whole pass restores.
fn node_part(target: &Manifest, node: &str) -> Option<Manifest> {
    let inside = |path: &Name| {
        path.0
            .strip_prefix(node.as_bytes())
            .is_some_and(|rest| rest.is_empty() || rest[0] == b'/')
    };
    // A group's link names its first path, which may be this node's or another's.
    if target.entries.iter().any(|e| {
        e.link
            .as_ref()
            .is_some_and(|l| inside(l) != inside(&e.path))
    }) {
        return None;
    }
    let entries: Vec<Entry> = target
        .entries
        .iter()
        .filter(|e| inside(&e.path))
        .cloned()
        .collect();
    let mut header = target.header.clone();
    header.include = vec![Name(node.as_bytes().to_vec())];
    Some(Manifest { header, entries })
}

/// The node containers as the operation quiesces them, asked through this handle since the
/// quiesce is a policy of the layer above: which nodes' containers a restore has stopped so
/// far (their data may be restored at once), and a restart of containers.
pub trait Containers: Sync {
    /// Whether containers are being stopped right now: only then does
    /// [`Containers::next_stopped`] hand anything out.
    fn stopping(&self) -> bool;

    /// A node directory whose container has stopped and that no caller had yet, waiting for
    /// one; None once every container has stopped and every such node was handed out.
    fn next_stopped(&self) -> Result<Option<String>>;

    /// Waits until every container being stopped has stopped.
    fn all_stopped(&self) -> Result<()>;

    /// Stops the containers `names`, then starts them again and waits for them as `wait` says.
    fn restart(&self, docker: &Docker, names: Vec<String>, wait: Wait) -> Result<()>;
}

/// What a mode gets to work with.
pub struct ModeContext<'a> {
    pub cfg: &'a Config,
    pub live: &'a Live,
    /// The mode's tools, located, in the order of [`Mode::tools`].
    pub tools: &'a [Found],
    pub containers: &'a dyn Containers,
    /// A restore's journal, which [`ModeContext::changing`] writes.
    pub journal: Option<&'a Journal>,
    /// A restore that selects files by content (`restore --verify full`), so that it repairs
    /// bytes changed under an unchanged size and mtime, which its check would find.
    pub by_content: bool,
    /// Told of the work as it goes, for progress bars.
    pub observer: &'a dyn Observer,
}

impl<'a> ModeContext<'a> {
    /// The context of anything but a restore: no journal, no selection by content.
    pub fn new(
        cfg: &'a Config,
        live: &'a Live,
        tools: &'a [Found],
        containers: &'a dyn Containers,
    ) -> ModeContext<'a> {
        ModeContext {
            cfg,
            live,
            tools,
            containers,
            journal: None,
            by_content: false,
            observer: &Unobserved,
        }
    }

    /// The same context, telling `observer` of its work.
    pub fn observed(self, observer: &'a dyn Observer) -> ModeContext<'a> {
        ModeContext { observer, ..self }
    }

    /// To be called by a restore just before its first change to the live data (a restore
    /// that finds nothing to change never calls it, and so writes nothing).
    pub fn changing(&self) -> Result<()> {
        // Nodes restored side by side may all change first: the journal is written once.
        static FIRST: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = FIRST
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.journal.map_or(Ok(()), Journal::begin)?;
        crate::testhook::pause("restore_changing");
        Ok(())
    }

    pub fn tool(&self, tool: Tool) -> &Found {
        self.tools
            .iter()
            .find(|f| f.tool == tool)
            .unwrap_or_else(|| panic!("{} is not among the mode's tools", tool.program))
    }
}

/// [`Mode::take_tree`] of the modes whose payload is a tree of files: the pulled tree
/// becomes the payload by one rename (it lies in the store, on the payload's filesystem).
fn tree_as_payload(ctx: &ModeContext, payload: &Path) -> Result<serde_json::Value> {
    let tree = &ctx.live.cache_dir;
    std::fs::rename(tree, payload).map_err(|e| {
        anyhow::anyhow!(
            "cannot move {} to {} ({e}); nothing was changed",
            tree.display(),
            payload.display()
        )
    })?;
    Ok(serde_json::Value::Null)
}

/// What a restore did, and what it saw.
pub struct Restoration {
    pub stats: RestoreStats,
    /// The live data as the restore left it, when the mode looked at every entry (the delta
    /// engine does): the check against the manifest then needs no walk of its own.
    pub seen: Option<Manifest>,
}

impl From<RestoreStats> for Restoration {
    fn from(stats: RestoreStats) -> Restoration {
        Restoration { stats, seen: None }
    }
}

/// How a `stagesnap doctor` check came out, ordered by severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

/// A line a mode adds to `stagesnap doctor`.
#[derive(Debug)]
pub struct Finding {
    pub check: String,
    pub status: Status,
    pub detail: String,
    pub hint: String,
}

impl Finding {
    pub fn new(
        check: &str,
        status: Status,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) -> Finding {
        Finding {
            check: check.to_string(),
            status,
            detail: detail.into(),
            hint: hint.into(),
        }
    }
}

/// What [`Mode::verify_stored`] found.
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    /// What was checked, in words.
    pub checked: String,
    /// One line per problem; empty when the snapshot is intact.
    pub problems: Vec<String>,
}

pub trait Mode {
    fn kind(&self) -> ModeKind;

    /// External tools the mode needs; all are located before anything is touched.
    fn tools(&self) -> &'static [Tool];

    /// False for modes that never read or write the live data from the host (`recreate`
    /// works inside running containers): no quiescing, no host write-permission check.
    fn writes_live_data(&self) -> bool {
        true
    }

    /// Whether a restore restarts the node containers itself (`recreate` with
    /// `recreate_restart`), which the restore's report says.
    fn restarts_containers(&self) -> bool {
        false
    }

    /// Checks the mode's settings against this machine and the located tools, before
    /// anything is touched; a setting it cannot honour is a configuration error (exit 2).
    fn preflight(&self, _cfg: &Config, _tools: &[Found]) -> Result<()> {
        Ok(())
    }

    /// The mode's own lines for `stagesnap doctor`, once its tools are located.
    fn doctor(&self, _ctx: &ModeContext) -> Vec<Finding> {
        Vec::new()
    }

    /// Bytes the snapshot of data with these totals will take in the store, when the mode can
    /// tell before capturing, for create's free-space check; None when it cannot
    /// (compression), and then only a store that fills up mid-way is reported.
    fn space_needed(&self, _data: &Totals) -> Option<u64> {
        None
    }

    /// Whether the snapshot's manifest records every file's blake3 (reading all the data once
    /// more); false where that would cost far more than the capture itself (`reflink`).
    fn hashes_content(&self) -> bool {
        true
    }

    /// The first pass of a two-phase create, run before the node containers are quiesced:
    /// copies into `payload` what [`Mode::create`], quiesced, then only brings up to date.
    /// The default copies nothing: the whole capture happens quiesced.
    fn precopy(&self, _ctx: &ModeContext, _payload: &Path) -> Result<()> {
        Ok(())
    }

    /// Captures the live data into `payload` (an empty directory inside the staging
    /// snapshot, or what [`Mode::precopy`] put there). Returns mode-specific details for
    /// meta.json.
    fn create(&self, ctx: &ModeContext, payload: &Path) -> Result<serde_json::Value>;

    /// Checks that `snapshot` is complete and intact, before a restore touches anything.
    fn verify(&self, ctx: &ModeContext, snapshot: &Snapshot) -> Result<()>;

    /// The directory whose included paths hold exactly what [`Mode::create`] just captured
    /// into `payload`, for the snapshot's manifest. The default is the live data, which the
    /// quiesced create has not let change since.
    fn captured_tree(&self, ctx: &ModeContext, _payload: &Path) -> PathBuf {
        ctx.live.cache_dir.clone()
    }

    /// Digests of files of the captured tree the mode took while capturing (`filesystem`:
    /// as its first pass copied them), each for the file at the size and mtime it gives,
    /// which the mode vouches for; create hashes the others. Handed out once.
    fn known_digests(&self, _ctx: &ModeContext, _payload: &Path) -> Result<HashMap<Name, Known>> {
        Ok(HashMap::new())
    }

    /// Corrects the manifest of [`Mode::captured_tree`] where the capture changed an attribute
    /// that the live data had (`filesystem`: rsync -S's holes); the default changes nothing.
    fn describe_captured(&self, _ctx: &ModeContext, _manifest: &mut Manifest) -> Result<()> {
        Ok(())
    }

    /// What the snapshot just built in `payload` holds strictly beneath the directories
    /// `dirs`, for create's capture check ([`crate::capture`]). The default takes it from
    /// `manifest`, the scan of [`Mode::captured_tree`] (right for modes whose payload is that
    /// tree), hashing the files it has no hash for.
    fn held_beneath(
        &self,
        ctx: &ModeContext,
        payload: &Path,
        manifest: &Manifest,
        dirs: &[Name],
    ) -> Result<Vec<Held>> {
        let mut held = Manifest {
            header: manifest.header.clone(),
            entries: manifest
                .entries
                .iter()
                .filter(|e| dirs.iter().any(|d| capture::beneath(&e.path, d)))
                .cloned()
                .collect(),
        };
        held.hash(&self.captured_tree(ctx, payload), |e| e.blake3.is_none())?;
        Ok(held
            .entries
            .into_iter()
            .map(|e| Held {
                content: e.blake3.map(|b| (b, e.size)),
                path: e.path,
                kind: e.kind,
                target: e.target,
            })
            .collect())
    }

    /// `stagesnap verify`: reads the stored data back and checks it against the manifest
    /// (or whatever integrity record the mode keeps), after [`Mode::verify`] passed.
    fn verify_stored(
        &self,
        _ctx: &ModeContext,
        _snapshot: &Snapshot,
        _manifest: &Manifest,
    ) -> Result<Verified> {
        Ok(Verified {
            checked: format!(
                "the manifest and {} mode's pre-restore check of the payload",
                self.kind().name()
            ),
            problems: vec![],
        })
    }

    /// Whether a new snapshot's files identical to the previous snapshot's of this mode may
    /// become hardlinks to them (its payload is a tree of read-only copies).
    fn shares_identical_files(&self) -> bool {
        false
    }

    /// Whether a snapshot pulled from a remote can become one of this mode; exit 2 saying why
    /// not, checked before anything is downloaded.
    fn takes_pulled(&self) -> Result<()> {
        Ok(())
    }

    /// Makes `payload` (empty) this mode's snapshot of `ctx.live`, a tree of files that a
    /// pull built in the store; returns the mode's details for meta.json. The default
    /// captures it as [`Mode::create`] captures the live data (squashfs packs it into an
    /// image, with the configured compression).
    fn take_tree(&self, ctx: &ModeContext, payload: &Path) -> Result<serde_json::Value> {
        self.create(ctx, payload)
    }

    /// Calls `read` with `snapshot`'s files as the delta engine reads them (what `push`
    /// sends), once the payload passed the mode's integrity check; the default reads the
    /// payload's tree of files.
    fn with_files(
        &self,
        snapshot: &Snapshot,
        read: &mut dyn FnMut(&dyn Source) -> Result<()>,
    ) -> Result<()> {
        read(&Dir::snapshot(&snapshot.payload())?)
    }

    /// Brings the live data back to `snapshot`, in place: included directories and node
    /// directories keep their inodes. `manifest` is the snapshot's, already checked against
    /// its digest (None for snapshots made before manifests).
    fn restore(
        &self,
        ctx: &ModeContext,
        snapshot: &Snapshot,
        manifest: Option<&Manifest>,
    ) -> Result<Restoration>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_one_row_whose_mode_is_of_that_kind() {
        // Constructing each mode types its settings: one of another kind than its row's panics.
        let cfg = crate::config::load_text("", &[], &[], &settings()).unwrap();
        for &name in ModeKind::NAMES {
            let kind = ModeKind::from_name(name).unwrap();
            assert_eq!(MODES.iter().filter(|row| row.kind == kind).count(), 1);
            assert_eq!(implementation(kind, &cfg).kind(), kind);
        }
    }

    #[test]
    fn every_rows_settings_are_known_to_config() {
        let cfg = crate::config::load_text("", &[], &[], &settings()).unwrap();
        let listed: Vec<&str> = cfg.report().iter().map(|s| s.key).collect();
        let mut unique = listed.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), listed.len(), "a key twice: {listed:?}");
        for row in MODES {
            for spec in row.settings {
                assert!(listed.contains(&spec.key), "{} not listed", spec.key);
                let set = format!("{}={}", spec.key, spec.default);
                crate::config::load_text("", &[&set], &[], &settings()).unwrap();
            }
        }
    }

    #[test]
    fn a_node_part_holds_that_node_alone_and_none_with_a_hardlink_out() {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("data");
        for dir in ["node1/lib", "node10", "node2"] {
            std::fs::create_dir_all(data.join(dir)).unwrap();
        }
        std::fs::write(data.join("node1/lib/a"), b"a").unwrap();
        std::fs::write(data.join("node10/b"), b"b").unwrap();
        std::fs::write(data.join("node2/c"), b"c").unwrap();
        std::fs::hard_link(data.join("node2/c"), data.join("node2/d")).unwrap();
        let scan = || Manifest::scan(root.path(), &[PathBuf::from("data")]).unwrap();
        let paths = |m: &Manifest| -> Vec<String> {
            m.entries
                .iter()
                .map(|e| String::from_utf8_lossy(&e.path.0).into_owned())
                .collect()
        };
        let whole = scan();
        let part = node_part(&whole, "data/node1").unwrap();
        assert_eq!(
            paths(&part),
            ["data/node1", "data/node1/lib", "data/node1/lib/a"]
        );
        assert_eq!(part.header.include, [Name(b"data/node1".to_vec())]);
        // A hardlink within the node is the node's own business.
        assert_eq!(node_part(&whole, "data/node2").unwrap().entries.len(), 3);

        std::fs::hard_link(data.join("node1/lib/a"), data.join("node10/a")).unwrap();
        let whole = scan();
        assert!(node_part(&whole, "data/node1").is_none());
        assert!(node_part(&whole, "data/node10").is_none());
        assert!(node_part(&whole, "data/node2").is_some());
    }
}
