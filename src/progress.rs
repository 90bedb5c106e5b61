//! Progress bars on stderr for create and restore.
//!
//! Bars are drawn only when stderr is a terminal that can move its cursor (`TERM` set and not
//! `dumb`) and none of `-q`, `--json`, `--no-progress` is given. `NO_COLOR` takes only their
//! colours away, as it does the logs'. Everywhere else this module draws nothing and costs
//! nothing: the modes ask their observer whether it is active before they ask their tools for
//! progress output.
//!
//! The lower layers report to the [`Observer`] they are given; [`Terminal`] is the one that
//! draws. The modes feed it from what their tools print while they run (see
//! `modes::filesystem` and `modes::squashfs`) or from the delta engine's own work (`delta`):
//! bytes and files written per node, or the share of the work done. Log lines go through
//! [`LogWriter`], which lifts the bars, writes the line and draws them again, so neither tears
//! the other. When the operation ends its bars vanish, leaving the command's one summary line.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::observe::Observer;
use crate::tree::{Live, Totals, human_bytes, node_of};

struct Bars {
    multi: MultiProgress,
    enabled: bool,
    /// The operation on screen. One at a time: a command runs one create or restore at once.
    current: Mutex<Option<Drawn>>,
}

static BARS: OnceLock<Bars> = OnceLock::new();

fn bars() -> &'static Bars {
    BARS.get_or_init(|| Bars::new(false))
}

impl Bars {
    fn new(enabled: bool) -> Bars {
        let target = if enabled {
            ProgressDrawTarget::stderr_with_hz(10)
        } else {
            ProgressDrawTarget::hidden()
        };
        Bars {
            multi: MultiProgress::with_draw_target(target),
            enabled,
            current: Mutex::new(None),
        }
    }
}

/// Whether this invocation may draw bars: not when it was asked to keep quiet (`--quiet`,
/// `--json`, `--no-progress`), nor on anything but a terminal.
pub fn wanted(asked_quiet: bool) -> bool {
    !asked_quiet
        && std::io::stderr().is_terminal()
        && std::env::var("TERM").is_ok_and(|t| !t.is_empty() && t != "dumb")
}

/// Decides once, before the first log line, whether bars are drawn (see [`wanted`]).
pub fn init(enabled: bool) {
    let _ = BARS.set(Bars::new(enabled));
}

fn active() -> bool {
    bars().enabled
}

/// The writer of the log lines: each event is written whole, with the bars lifted meanwhile.
#[derive(Debug, Clone, Copy)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        bars()
            .multi
            .suspend(|| std::io::stderr().write_all(buf))
            .map(|()| buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// The bars as the lower layers' [`Observer`]: a create or restore on screen at a time,
/// cleared when it ends.
pub struct Terminal;

impl Observer for Terminal {
    /// True when bars are drawn; only then do the modes ask their tools for progress output.
    fn active(&self) -> bool {
        active()
    }

    /// Bars for copying the live data into a new snapshot: bytes and files in all, and per
    /// node. The totals are counted here, and only when bars are drawn.
    fn begin_create(&self, label: String, live: &Live) {
        start(|| {
            let (total, nodes) = planned(live);
            let main = bars()
                .multi
                .add(ProgressBar::new(total.bytes).with_prefix(label));
            spin(&main, "copying the data");
            let nodes = nodes
                .into_iter()
                .map(|(name, t)| {
                    let bar = bars().multi.add(
                        ProgressBar::new(t.bytes)
                            .with_style(style(NODE_COPY))
                            .with_prefix(name.clone()),
                    );
                    let node = Node {
                        bar,
                        files: 0,
                        files_total: Some(t.files),
                    };
                    node.show(true);
                    (name, node)
                })
                .collect();
            Drawn::new(main, true, total.files, nodes)
        });
    }

    /// Bars for restoring a snapshot of `bytes`: the share of the work done (entries checked,
    /// or blocks extracted), what was rewritten, and per node what was rewritten (a node
    /// appears once something in it is).
    fn begin_restore(&self, label: String, bytes: u64) {
        share_of(label, bytes, "restoring");
    }

    /// A bar for moving a snapshot of `bytes` to or from a remote (`push`, `pull`): the share
    /// done, and what is being done.
    fn begin_transfer(&self, label: String, bytes: u64, doing: &str) {
        share_of(label, bytes, doing);
    }

    fn end(&self) {
        let Some(drawn) = bars().current.lock().ok().and_then(|mut c| c.take()) else {
            return;
        };
        for node in drawn.nodes.values() {
            node.bar.finish_and_clear();
            bars().multi.remove(&node.bar);
        }
        drawn.main.finish_and_clear();
        bars().multi.remove(&drawn.main);
    }

    fn wrote(&self, node: Option<&str>, files: u64, bytes: u64) {
        with_drawn(|d| {
            d.files += files;
            d.bytes += bytes;
            if d.copy {
                d.main.inc(bytes);
            }
            if let Some(name) = node {
                let copy = d.copy;
                let node = d.nodes.entry(name.to_string()).or_insert_with(|| Node {
                    bar: bars().multi.add(
                        ProgressBar::new(0)
                            .with_style(style(NODE_REWRITE))
                            .with_prefix(name.to_string()),
                    ),
                    files: 0,
                    files_total: None,
                });
                node.files += files;
                node.bar.inc(bytes);
                node.show(copy);
            }
            d.show();
        });
    }

    fn share(&self, done: u64, total: u64) {
        with_drawn(|d| {
            if total > 0 {
                let len = d.main.length().unwrap_or(0);
                d.main
                    .set_position((len as u128 * done.min(total) as u128 / total as u128) as u64);
                d.show();
            }
        });
    }

    fn step(&self, what: &str) {
        with_drawn(|d| {
            d.numbers = false;
            spin(&d.main, what);
        });
    }
}

/// A bar of the share of the work done, spinning with `doing` until numbers arrive.
fn share_of(label: String, bytes: u64, doing: &str) {
    start(|| {
        let main = bars()
            .multi
            .add(ProgressBar::new(bytes.max(1)).with_prefix(label));
        spin(&main, doing);
        Drawn::new(main, false, 0, BTreeMap::new())
    });
}

fn start(draw: impl FnOnce() -> Drawn) {
    if active()
        && let Ok(mut current) = bars().current.lock()
    {
        *current = Some(draw());
    }
}

fn with_drawn(f: impl FnOnce(&mut Drawn)) {
    if !active() {
        return;
    }
    if let Ok(mut current) = bars().current.lock()
        && let Some(drawn) = current.as_mut()
    {
        f(drawn);
    }
}

struct Drawn {
    main: ProgressBar,
    /// The main bar shows numbers (else it spins, saying what goes on).
    numbers: bool,
    /// A create, whose bars count bytes written; a restore's count the share checked.
    copy: bool,
    files_total: u64,
    files: u64,
    bytes: u64,
    nodes: BTreeMap<String, Node>,
}

impl Drawn {
    fn new(
        main: ProgressBar,
        copy: bool,
        files_total: u64,
        nodes: BTreeMap<String, Node>,
    ) -> Drawn {
        Drawn {
            main,
            numbers: false,
            copy,
            files_total,
            files: 0,
            bytes: 0,
            nodes,
        }
    }

    fn show(&mut self) {
        if !self.numbers {
            self.numbers = true;
            self.main
                .set_style(style(if self.copy { MAIN_COPY } else { MAIN_RESTORE }));
        }
        if self.copy {
            self.main
                .set_message(format!("{}/{} files", self.files, self.files_total));
        } else if self.files > 0 {
            self.main.set_message(format!(
                " · rewrote {} files, {}",
                self.files,
                human_bytes(self.bytes)
            ));
        }
    }
}

struct Node {
    bar: ProgressBar,
    files: u64,
    files_total: Option<u64>,
}

impl Node {
    fn show(&self, copy: bool) {
        self.bar.set_message(match (copy, self.files_total) {
            (true, Some(total)) => format!("{}/{total} files", self.files),
            _ => format!(
                "rewrote {} files, {}",
                self.files,
                human_bytes(self.bar.position())
            ),
        });
    }
}

// The bars take what room the terminal leaves (wide_bar), so that no line wraps.
const MAIN_COPY: &str = "{spinner:.green} {prefix} {binary_bytes}/{binary_total_bytes} · {msg} · {binary_bytes_per_sec} · ETA {eta} [{wide_bar:.cyan/blue}]";
const MAIN_RESTORE: &str =
    "{spinner:.green} {prefix} {percent:>3}%{msg} · ETA {eta} [{wide_bar:.cyan/blue}]";
const MAIN_STEP: &str = "{spinner:.green} {prefix}: {msg} ({elapsed})";
const NODE_COPY: &str =
    "  {prefix:<16} {binary_bytes}/{binary_total_bytes} · {msg} [{wide_bar:.cyan/blue}]";
const NODE_REWRITE: &str = "  {prefix:<16} {msg}";

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .expect("valid progress template")
        .progress_chars("=> ")
}

/// The main bar as a spinner saying what is going on, until numbers arrive.
fn spin(bar: &ProgressBar, what: &str) {
    bar.set_style(style(MAIN_STEP));
    bar.set_message(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(100));
}

/// What a create will copy: in all, and per node directory.
fn planned(live: &Live) -> (Totals, Vec<(String, Totals)>) {
    let mut nodes: BTreeMap<String, Totals> = live
        .nodes()
        .into_iter()
        .map(|n| (n, Totals::default()))
        .collect();
    let mut total = Totals::default();
    for rel in &live.include {
        let root = live.path(rel);
        for entry in walkdir::WalkDir::new(&root).into_iter().flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            let t = Totals {
                files: u64::from(!meta.is_dir()),
                bytes: if meta.is_file() { meta.len() } else { 0 },
                allocated: 0,
            };
            total.add(t);
            if let Some(node) = node_of(rel, entry.path().strip_prefix(&root).ok())
                && let Some(n) = nodes.get_mut(&node)
            {
                n.add(t);
            }
        }
    }
    let mut nodes: Vec<_> = nodes.into_iter().collect();
    nodes.sort_by_key(|(n, _)| crate::tree::natural_key(n));
    (total, nodes)
}
