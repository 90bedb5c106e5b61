//! Sample stage environments for tests and benchmarks.
//!
//! [`generate`] builds a tree shaped like a real stage-env cache (per-node data with an MDBX
//! database, chain cells, a debug log, wallets, certificates and a unix socket, plus `certs/`,
//! `configs/` and a `stage-env.cfg`); [`run_suite`] dirties it in place the way a test suite
//! does. Content and choices are deterministic per seed; only the modification times of files a
//! running node would just have written are "now".
//!
//! Layout under ROOT (fixed, matching the generated config):
//! `stage-env/stage-env.cfg`, `testing/cache/{data,certs,configs}/nodeN`.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use walkdir::WalkDir;

/// Name of the network whose chains every node carries (`lib/network/<NETWORK>/...`).
pub const NETWORK: &str = "stagenet";
/// MDBX page size: the suite rewrites whole pages, as the database does.
pub const PAGE: u64 = 4096;
/// Large files are written in blocks of this size, each refilled from the PRNG.
const BLOCK: usize = 1 << 20;
/// The suite's rewrites need enough pages to land on distinct ones.
const MIN_DB_PAGES: u64 = 64;
/// 2025-01-01T00:00:00Z: certificates, wallets and configs predate any suite run.
const PAST: i64 = 1_735_689_600;
/// The generator's log lines start here (2025-11-01), the suite's ten days later.
const LOG_START: i64 = 1_761_955_200;
/// Log bytes one suite run appends across all nodes, per unit of intensity.
const SUITE_LOG_BYTES: u64 = 4 << 20;
/// Database pages one suite run rewrites per node, per unit of intensity.
const SUITE_DB_PAGES: u64 = 64;

/// Shape of the generated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// A few large files per node (the Cellframe stage network).
    Large,
    /// Tens of thousands of small files (other stacks' paged stores), plus a small skeleton.
    Small,
}

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub nodes: u32,
    /// Target total size of `data/` in bytes.
    pub size: u64,
    pub shape: Shape,
    /// Number of small files across all nodes (`Shape::Small` only).
    pub files: u64,
    pub seed: u64,
    /// Written verbatim as `[suite_isolation] mode`, so invalid modes can be tested too.
    pub mode: String,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            nodes: 7,
            size: 200 << 20,
            shape: Shape::Large,
            files: 50_000,
            seed: 1,
            mode: "filesystem".into(),
        }
    }
}

/// What [`generate`] produced (counted from disk afterwards).
#[derive(Debug, Clone)]
pub struct Summary {
    pub root: PathBuf,
    pub nodes: u32,
    /// Non-directory entries under `testing/cache`.
    pub files: u64,
    /// Directories under `testing/cache`, itself included.
    pub dirs: u64,
    /// Apparent size of the regular files under `data/`.
    pub data_bytes: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "generated {} nodes under {}: {} files, {} dirs, {} in data/",
            self.nodes,
            self.root.display(),
            self.files,
            self.dirs,
            human(self.data_bytes)
        )
    }
}

#[derive(Debug, Clone)]
pub struct SuiteOptions {
    pub seed: u64,
    /// Multiplies the amount of change (log bytes, pages, small files); at least 1.
    pub intensity: u32,
}

impl Default for SuiteOptions {
    fn default() -> Self {
        SuiteOptions {
            seed: 2,
            intensity: 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
    ModeChanged,
    DirAdded,
    DirRemoved,
}

/// One change a suite made; `path` is relative to `ROOT/testing/cache`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub kind: ChangeKind,
    pub path: PathBuf,
}

/// Every change [`run_suite`] made, in order, so tests can check a restore against it.
#[derive(Debug, Clone, Default)]
pub struct SuiteSummary {
    pub changes: Vec<Change>,
    pub bytes_written: u64,
}

impl SuiteSummary {
    pub fn count(&self, kind: ChangeKind) -> usize {
        self.changes.iter().filter(|c| c.kind == kind).count()
    }
}

impl fmt::Display for SuiteSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ChangeKind::*;
        write!(
            f,
            "suite: {} files added, {} modified, {} deleted, {} mode changes, {} dirs added, \
             {} dirs removed, {} written",
            self.count(Added),
            self.count(Modified),
            self.count(Deleted),
            self.count(ModeChanged),
            self.count(DirAdded),
            self.count(DirRemoved),
            human(self.bytes_written)
        )
    }
}

/// A request refused before touching anything (bad option, would overwrite an environment).
/// The CLI exits 2 on it.
#[derive(Debug)]
pub struct Refusal(pub String);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refusal {}

fn refuse(msg: String) -> anyhow::Error {
    Refusal(msg).into()
}

pub fn config_path(root: &Path) -> PathBuf {
    root.join("stage-env").join("stage-env.cfg")
}

pub fn cache_dir(root: &Path) -> PathBuf {
    root.join("testing").join("cache")
}

/// Parses a byte count with an optional binary K/M/G/T suffix ("200M", "3g", "4096").
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, shift) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("unknown size suffix in {s:?} (use K, M, G or T)")),
            };
            (&s[..i], shift)
        }
        _ => (s, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid size {s:?} (expected a number with optional K/M/G/T)"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

fn human(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// splitmix64: tiny and fast; each (seed, stream) pair gives an independent reproducible stream.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64, stream: u64) -> Self {
        let mut r = Rng(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        r.next();
        r
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-enough value in `0..n` (modulo bias is irrelevant for test data); `n > 0`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        let mut words = buf.chunks_exact_mut(8);
        for w in &mut words {
            w.copy_from_slice(&self.next().to_le_bytes());
        }
        let rest = words.into_remainder();
        if !rest.is_empty() {
            let last = self.next().to_le_bytes();
            rest.copy_from_slice(&last[..rest.len()]);
        }
    }
}

/// Incompressible bytes: a 1 MiB block refilled from the PRNG as it is consumed, so every
/// byte is fresh (no dedup or compression shortcut) yet generation runs at GB/s.
struct Noise {
    rng: Rng,
    block: Vec<u8>,
    pos: usize,
}

impl Noise {
    fn new(rng: Rng) -> Self {
        Noise {
            rng,
            block: vec![0; BLOCK],
            pos: BLOCK,
        }
    }

    fn take(&mut self, max: u64) -> &[u8] {
        if self.pos == self.block.len() {
            self.rng.fill(&mut self.block);
            self.pos = 0;
        }
        let n = (self.block.len() - self.pos).min(usize::try_from(max).unwrap_or(usize::MAX));
        let start = self.pos;
        self.pos += n;
        &self.block[start..start + n]
    }

    fn vec(&mut self, n: u64) -> Vec<u8> {
        let mut v = Vec::with_capacity(n as usize);
        while (v.len() as u64) < n {
            let chunk = self.take(n - v.len() as u64);
            v.extend_from_slice(chunk);
        }
        v
    }

    fn write_at(&mut self, file: &File, mut offset: u64, mut n: u64) -> io::Result<()> {
        while n > 0 {
            let chunk = self.take(n);
            file.write_all_at(chunk, offset)?;
            offset += chunk.len() as u64;
            n -= chunk.len() as u64;
        }
        Ok(())
    }
}

const LOG_MESSAGES: &[&[u8]] = &[
    b"[INF] [chain_net] Synchronization with node finished, last atom hash ",
    b"[DBG] [dap_stream] Packet received on channel 'C' type 0x11, payload hash ",
    b"[INF] [chain_cs_esbocs] Round complete, candidate accepted with hash ",
    b"[DBG] [global_db] Applied record to group 'stagenet.nodes.list', hash ",
    b"[WRN] [dap_client] Uplink connection timed out, retrying; session ",
    b"[INF] [wallet] Balance changed by incoming transaction ",
    b"[DBG] [dap_chain_ledger] Token emission verified, emission hash ",
];

/// Debug-log text in cellframe-node's format, built without `fmt` to keep up with disk speed.
struct LogText {
    rng: Rng,
    secs: i64,
}

impl LogText {
    fn fill(&mut self, buf: &mut Vec<u8>, limit: usize) {
        while buf.len() < limit {
            self.line(buf);
        }
    }

    fn line(&mut self, buf: &mut Vec<u8>) {
        self.secs += self.rng.below(3) as i64;
        let (y, m, d) = civil(self.secs.div_euclid(86_400));
        let t = self.secs.rem_euclid(86_400);
        buf.push(b'[');
        for (v, sep) in [
            (m, b'/'),
            (d, b'/'),
            (y.rem_euclid(100), b'-'),
            (t / 3600, b':'),
            (t / 60 % 60, b':'),
            (t % 60, b']'),
        ] {
            buf.extend_from_slice(&[b'0' + (v / 10) as u8, b'0' + (v % 10) as u8, sep]);
        }
        buf.push(b' ');
        let msg = LOG_MESSAGES[self.rng.below(LOG_MESSAGES.len() as u64) as usize];
        buf.extend_from_slice(msg);
        buf.extend_from_slice(b"0x");
        for _ in 0..2 {
            let v = self.rng.next();
            for i in (0..16).rev() {
                buf.push(b"0123456789ABCDEF"[(v >> (i * 4)) as usize & 0xF]);
            }
        }
        buf.push(b'\n');
    }

    /// Writes about `n` bytes of whole lines to `out`; returns the exact count.
    fn write(&mut self, out: &mut impl Write, n: u64) -> io::Result<u64> {
        let mut buf = Vec::with_capacity(BLOCK + 256);
        let mut written = 0;
        while written < n {
            buf.clear();
            self.fill(&mut buf, (n - written).min(BLOCK as u64) as usize);
            out.write_all(&buf)?;
            written += buf.len() as u64;
        }
        Ok(written)
    }
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's civil_from_days).
fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Sets atime and mtime of `path` itself (not a symlink's target); works on sockets too,
/// which cannot be opened.
fn set_mtime(path: &Path, secs: i64, nsecs: i64) -> Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .with_context(|| format!("path contains NUL: {}", path.display()))?;
    let ts = libc::timespec {
        tv_sec: secs,
        tv_nsec: nsecs,
    };
    // SAFETY: `c` is a valid NUL-terminated path and `times` points to two timespecs.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            [ts, ts].as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("setting mtime of {}", path.display()));
    }
    Ok(())
}

/// A timestamp weeks to months before [`PAST`], with nanoseconds so second-truncating
/// copies show up.
fn backdate(path: &Path, rng: &mut Rng) -> Result<()> {
    let secs = PAST - rng.below(120 * 86_400) as i64;
    set_mtime(path, secs, rng.below(1_000_000_000) as i64)
}

fn mkdir(path: &Path) -> Result<()> {
    fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))
}

fn write_file(path: &Path, content: &[u8]) -> Result<()> {
    fs::write(path, content).with_context(|| format!("writing {}", path.display()))
}

fn chmod(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {:o} {}", mode, path.display()))
}

/// Creates a unix socket file, as the node's CLI server leaves behind. `sun_path` holds only
/// 108 bytes, so a deep path is bound through `/proc/self/fd` of its directory instead.
fn make_socket(path: &Path) -> Result<()> {
    let bound = if path.as_os_str().len() < 108 {
        UnixListener::bind(path)
    } else {
        let dir = path.parent().context("socket path has no parent")?;
        let name = path.file_name().context("socket path has no name")?;
        let dir = File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
        let mut short = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        short.push(name);
        UnixListener::bind(short)
    };
    drop(bound.with_context(|| format!("binding unix socket {}", path.display()))?);
    Ok(())
}

fn stage_env_cfg(opts: &GenerateOptions) -> String {
    let validators: Vec<String> = (1..=opts.nodes.min(3))
        .map(|n| format!("node{n}"))
        .collect();
    format!(
        r#"# stage-env.cfg: sample configuration written by `stage-sample generate`
# (seed {seed}, {nodes} nodes). Read with Python's configparser: `key = value` or
# `key: value`, full-line comments only, `%%` is a literal percent sign.

[network]
name = {net}
; Bootstrap URL of the seed nodes; ':' and '%' in values must survive parsing.
bootstrap_url = http://seed.stage.local:8079/bootstrap?net={net}&fmt=%%2Fjson
rpc_listen: 0.0.0.0:8081
public_nodes = node1,
    node2

[topology]
node_count = {nodes}
validators = {validators}
root_nodes = node1
layout: mesh

[build]
image = cellframe-node:stage
compose_project = cellframe-stage

[logging]
base_dir = ../testing/logs
log_dir = %(base_dir)s/harness
format = [%%(asctime)s] %%(levelname)s %%(message)s
level = debug

[paths]
# Everything the nodes write lives here; data/nodeN is bind-mounted read-write into
# container cellframe-stage-node-N at /opt/cellframe-node/var.
cache_dir = ../testing/cache

[suite_isolation]
# How the state is reset between suites: disabled | recreate | filesystem | squashfs | reflink
mode = {mode}
# Name of the snapshot taken of the clean network
snapshot_name = clean_state
# Where snapshots are kept, relative to this file's folder
snapshots_dir = ../testing/snapshots
# How many snapshots to keep; older ones are removed
keep_snapshot_count = 5
# Take the snapshot when the network first starts
auto_create_on_startup = true
# Remove the snapshot when the session ends
auto_cleanup = true
# For mode = squashfs: none | gzip | lzo | xz
squashfs_compression = none
# Subdirectories of cache_dir captured by a snapshot
include = data
"#,
        seed = opts.seed,
        nodes = opts.nodes,
        net = NETWORK,
        validators = validators.join(", "),
        mode = opts.mode,
    )
}

fn node_cfg(n: u32, addr: &str) -> String {
    format!(
        "# cellframe-node.cfg for node{n} (generated at network start)\n\
         [general]\n\
         debug_mode=true\n\
         auto_online=true\n\
         node_addr={addr}\n\
         \n\
         [server]\n\
         enabled=true\n\
         listen_address=0.0.0.0:{port}\n\
         \n\
         [cli-server]\n\
         enabled=true\n\
         listen_unix_socket_path=/opt/cellframe-node/var/run/node_cli\n\
         \n\
         [resources]\n\
         ca_folders=[/opt/cellframe-node/var/lib/ca]\n\
         wallets_path=/opt/cellframe-node/var/lib/wallet\n\
         log_file=/opt/cellframe-node/var/log/cellframe-node.log\n",
        port = 8079 + n
    )
}

/// Byte and file budget of one node.
struct NodePlan {
    db: u64,
    log: u64,
    main_chain: u64,
    zero_chain: u64,
    small_files: u64,
    small_bytes: u64,
}

/// Splits the size over nodes with a ±15% per-node spread (real nodes differ), keeping the
/// total; the skeleton takes 45% database, 35% log, 18% chains (all of it for the large shape,
/// a tenth for the small one, whose bulk is the small files).
fn plan(opts: &GenerateOptions) -> Vec<NodePlan> {
    let mut rng = Rng::new(opts.seed, 0xA11C);
    let weights: Vec<u64> = (0..opts.nodes).map(|_| rng.between(85, 115)).collect();
    let total_w: u64 = weights.iter().sum();
    let share =
        |bytes: u64, w: u64| (u128::from(bytes) * u128::from(w) / u128::from(total_w)) as u64;
    let skeleton = match opts.shape {
        Shape::Large => opts.size,
        Shape::Small => opts.size / 10,
    };
    let small = opts.size - skeleton;
    let nodes = u64::from(opts.nodes);
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| NodePlan {
            db: share(skeleton / 100 * 45, w),
            log: share(skeleton / 100 * 35, w),
            main_chain: share(skeleton / 100 * 12, w),
            zero_chain: share(skeleton / 100 * 6, w),
            small_files: match opts.shape {
                Shape::Large => 0,
                Shape::Small => opts.files / nodes + u64::from((i as u64) < opts.files % nodes),
            },
            small_bytes: share(small, w),
        })
        .collect()
}

fn validate(opts: &GenerateOptions) -> Result<()> {
    if opts.nodes == 0 {
        return Err(refuse("--nodes must be at least 1".into()));
    }
    if opts.size == 0 {
        return Err(refuse("--size must be greater than 0".into()));
    }
    if opts.shape == Shape::Small && opts.files == 0 {
        return Err(refuse(
            "--files must be at least 1 for --shape small".into(),
        ));
    }
    if opts.mode.is_empty() || opts.mode.contains(['\n', '\r']) {
        return Err(refuse(format!(
            "--mode must be a non-empty single line, got {:?}",
            opts.mode
        )));
    }
    Ok(())
}

/// Creates a sample stage environment under `root`. Refuses (with [`Refusal`]) when
/// `root/testing` has entries or `stage-env.cfg` already exists, so it never overwrites one.
pub fn generate(root: &Path, opts: &GenerateOptions) -> Result<Summary> {
    validate(opts)?;
    let testing = root.join("testing");
    let occupied = match fs::read_dir(&testing) {
        Ok(mut entries) => entries.next().is_some(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(e).with_context(|| format!("reading {}", testing.display())),
    };
    if occupied {
        return Err(refuse(format!(
            "{} is not empty; refusing to generate into an existing environment",
            testing.display()
        )));
    }
    let cfg = config_path(root);
    if fs::symlink_metadata(&cfg).is_ok() {
        return Err(refuse(format!(
            "{} already exists; refusing to overwrite it",
            cfg.display()
        )));
    }

    let mut meta = Rng::new(opts.seed, 0xC0F);
    mkdir(cfg.parent().expect("config path has a parent"))?;
    write_file(&cfg, stage_env_cfg(opts).as_bytes())?;
    backdate(&cfg, &mut meta)?;

    let cache = cache_dir(root);
    for (i, plan) in plan(opts).iter().enumerate() {
        generate_node(&cache, i as u32 + 1, plan, opts.seed)?;
    }
    // Last, because creating the node folders inside updated these.
    for dir in ["certs", "configs"] {
        backdate(&cache.join(dir), &mut meta)?;
    }
    summarize(root, opts.nodes)
}

fn generate_node(cache: &Path, n: u32, plan: &NodePlan, seed: u64) -> Result<()> {
    let stream = u64::from(n) << 8;
    let mut noise = Noise::new(Rng::new(seed, stream | 1));
    let mut meta = Rng::new(seed, stream | 2);
    let node = cache.join("data").join(format!("node{n}"));
    let lib = node.join("lib");
    let ca = lib.join("ca");
    let wallet = lib.join("wallet");
    let db = lib.join("global_db");
    let net = lib.join("network").join(NETWORK);
    let certs = cache.join("certs").join(format!("node{n}"));
    let configs = cache.join("configs").join(format!("node{n}"));
    for dir in [
        &ca,
        &wallet,
        &db,
        &net.join("main"),
        &net.join("zerochain"),
        &certs,
        &configs,
    ] {
        mkdir(dir)?;
    }
    mkdir(&node.join("log"))?;
    mkdir(&node.join("run"))?;

    // Node and validator certificates also sit in certs/nodeN, as the network start leaves
    // them; some nodes hold a third (master) certificate.
    let mut cert_names = vec![
        format!("node-addr-{n}.dcert"),
        format!("validator-{n}.dcert"),
    ];
    if meta.below(2) == 0 {
        cert_names.push(format!("{NETWORK}.master.{n}.dcert"));
    }
    for (i, name) in cert_names.iter().enumerate() {
        let mut body = b"DCERT\x01".to_vec();
        let len = meta.between(600, 1500);
        body.extend(noise.vec(len));
        write_file(&ca.join(name), &body)?;
        backdate(&ca.join(name), &mut meta)?;
        if i < 2 {
            write_file(&certs.join(name), &body)?;
            backdate(&certs.join(name), &mut meta)?;
        }
    }
    for name in [format!("node{n}.dwallet"), format!("validator{n}.dwallet")] {
        let path = wallet.join(name);
        let len = meta.between(500, 900);
        write_file(&path, &noise.vec(len))?;
        chmod(&path, 0o600)?;
        backdate(&path, &mut meta)?;
    }
    chmod(&wallet, 0o700)?;
    let addr = format!(
        "{:04X}::{:04X}::{:04X}::{:04X}",
        0xAAAA,
        meta.below(0x10000),
        0,
        n
    );
    let cfg = configs.join("cellframe-node.cfg");
    write_file(&cfg, node_cfg(n, &addr).as_bytes())?;
    backdate(&cfg, &mut meta)?;

    write_db(&db.join("mdbx.dat"), plan.db, &mut noise)?;
    write_file(&db.join("mdbx.lck"), &noise.vec(8192))?;
    for (chain, size) in [("main", plan.main_chain), ("zerochain", plan.zero_chain)] {
        let path = net.join(chain).join("0.dchaincell");
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        noise
            .write_at(&file, 0, size.max(1024))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let log_path = node.join("log").join("cellframe-node.log");
    let mut log = LogText {
        rng: Rng::new(seed, stream | 3),
        secs: LOG_START,
    };
    let mut file =
        File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    log.write(&mut file, plan.log)
        .with_context(|| format!("writing {}", log_path.display()))?;
    write_file(
        &node.join("run").join("cellframe-node.pid"),
        format!("{}\n", meta.between(100, 32_000)).as_bytes(),
    )?;
    make_socket(&node.join("run").join("node_cli"))?;

    if plan.small_files > 0 {
        write_small_files(&lib, plan, &mut noise, &mut meta)?;
    }
    // Last, because writing the files inside updated these.
    for dir in [&ca, &wallet, &certs, &configs] {
        backdate(dir, &mut meta)?;
    }
    Ok(())
}

/// Writes an MDBX-like database of whole pages with a hole of unwritten pages in the middle,
/// so the file is sparse as a grown-then-compacted database is.
fn write_db(path: &Path, size: u64, noise: &mut Noise) -> Result<()> {
    let pages = (size / PAGE).max(MIN_DB_PAGES);
    let hole_start = pages / 2;
    let hole_end = hole_start + pages / 8;
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    noise
        .write_at(&file, 0, hole_start * PAGE)
        .and_then(|()| noise.write_at(&file, hole_end * PAGE, (pages - hole_end) * PAGE))
        .with_context(|| format!("writing {}", path.display()))
}

/// Small-file store: half as pages in a two-level fan-out under `global_db/pages`, half as
/// cells under `network/<net>/cells`, about 32 files per leaf directory, sizes ±50% around
/// the average.
fn write_small_files(lib: &Path, plan: &NodePlan, noise: &mut Noise, meta: &mut Rng) -> Result<()> {
    let avg = (plan.small_bytes / plan.small_files).max(64);
    let pages = plan.small_files / 2;
    let cells = plan.small_files - pages;
    let leaves = pages.div_ceil(32).max(1);
    let l1 = leaves.min(16);
    let l2 = leaves.div_ceil(l1);
    let page_dir = |i: u64| {
        lib.join("global_db")
            .join("pages")
            .join(format!("{:02x}", i % l1))
            .join(format!("{:02x}", i / l1 % l2))
    };
    let cell_leaves = cells.div_ceil(32).max(1);
    let cell_dir = |i: u64| {
        lib.join("network")
            .join(NETWORK)
            .join("cells")
            .join(format!("{:03}", i % cell_leaves))
    };
    for i in 0..pages.min(l1 * l2) {
        mkdir(&page_dir(i))?;
    }
    for i in 0..cells.min(cell_leaves) {
        mkdir(&cell_dir(i))?;
    }
    let files = (0..pages)
        .map(|i| page_dir(i).join(format!("{i:06}.page")))
        .chain((0..cells).map(|i| cell_dir(i).join(format!("{i:06}.dcell"))));
    for path in files {
        let len = avg / 2 + meta.below(avg + 1);
        write_file(&path, &noise.vec(len))?;
        backdate(&path, meta)?;
    }
    Ok(())
}

fn summarize(root: &Path, nodes: u32) -> Result<Summary> {
    let cache = cache_dir(root);
    let data = cache.join("data");
    let mut s = Summary {
        root: root.to_path_buf(),
        nodes,
        files: 0,
        dirs: 0,
        data_bytes: 0,
    };
    for entry in WalkDir::new(&cache) {
        let entry = entry.with_context(|| format!("walking {}", cache.display()))?;
        let ft = entry.file_type();
        if ft.is_dir() {
            s.dirs += 1;
            continue;
        }
        s.files += 1;
        if ft.is_file() && entry.path().starts_with(&data) {
            s.data_bytes += entry.metadata()?.len();
        }
    }
    Ok(s)
}

/// `data/nodeN` directories, ordered by N.
fn node_dirs(data: &Path) -> Result<Vec<PathBuf>> {
    let mut nodes = Vec::new();
    for entry in fs::read_dir(data).with_context(|| format!("reading {}", data.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let n = name
            .to_str()
            .and_then(|s| s.strip_prefix("node"))
            .and_then(|s| s.parse::<u32>().ok());
        if let Some(n) = n
            && entry.file_type()?.is_dir()
        {
            nodes.push((n, entry.path()));
        }
    }
    nodes.sort();
    Ok(nodes.into_iter().map(|(_, p)| p).collect())
}

/// Entries of `dir` matching `keep`, sorted by name (an absent dir has none).
fn sorted_entries(dir: &Path, keep: impl Fn(&fs::DirEntry) -> bool) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        if keep(&entry) {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

fn has_ext(ext: &'static str) -> impl Fn(&fs::DirEntry) -> bool {
    move |e| e.path().extension().is_some_and(|x| x == ext)
}

/// Small files of a node (pages and cells of the small shape), sorted.
fn small_files(node: &Path) -> Result<Vec<PathBuf>> {
    let lib = node.join("lib");
    let mut roots = vec![lib.join("global_db").join("pages")];
    for net in sorted_entries(&lib.join("network"), |_| true)? {
        roots.push(net.join("cells"));
    }
    let mut files = Vec::new();
    for root in roots.iter().filter(|r| r.is_dir()) {
        for entry in WalkDir::new(root).sort_by_file_name() {
            let entry = entry.with_context(|| format!("walking {}", root.display()))?;
            if entry.file_type().is_file() {
                files.push(entry.into_path());
            }
        }
    }
    Ok(files)
}

struct Suite {
    cache: PathBuf,
    rng: Rng,
    noise: Noise,
    log: LogText,
    intensity: u64,
    summary: SuiteSummary,
}

impl Suite {
    fn record(&mut self, kind: ChangeKind, path: &Path) {
        let path = path.strip_prefix(&self.cache).unwrap_or(path).to_path_buf();
        self.summary.changes.push(Change { kind, path });
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        (!items.is_empty()).then(|| &items[self.rng.below(items.len() as u64) as usize])
    }

    fn write_new(&mut self, path: &Path, len: u64) -> Result<()> {
        let kind = if path.exists() {
            ChangeKind::Modified
        } else {
            ChangeKind::Added
        };
        let body = self.noise.vec(len);
        write_file(path, &body)?;
        self.summary.bytes_written += len;
        self.record(kind, path);
        Ok(())
    }

    fn append(&mut self, path: &Path, len: u64) -> Result<()> {
        let body = self.noise.vec(len);
        let mut file = OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        file.write_all(&body)
            .with_context(|| format!("appending to {}", path.display()))?;
        self.summary.bytes_written += len;
        self.record(ChangeKind::Modified, path);
        Ok(())
    }

    /// Changes that hit one node each. They run before the per-node activity so no path is
    /// both created and removed in one run (keeping `changes` equal to the visible diff).
    fn one_offs(&mut self, nodes: &[PathBuf]) -> Result<()> {
        let node = self.pick(nodes).expect("nodes is not empty").clone();
        if let Some(cert) = sorted_entries(&node.join("lib").join("ca"), has_ext("dcert"))?.first()
        {
            let mode = fs::symlink_metadata(cert)?.permissions().mode() & 0o7777;
            chmod(
                cert,
                if mode & 0o077 != 0 {
                    mode & 0o700
                } else {
                    0o644
                },
            )?;
            self.record(ChangeKind::ModeChanged, cert);
        }

        let node = self.pick(nodes).expect("nodes is not empty").clone();
        let wallets = sorted_entries(&node.join("lib").join("wallet"), has_ext("dwallet"))?;
        if let Some(victim) = self.pick(&wallets) {
            fs::remove_file(victim).with_context(|| format!("removing {}", victim.display()))?;
            self.record(ChangeKind::Deleted, victim);
        }

        let with_small: Vec<PathBuf> = nodes
            .iter()
            .filter(|n| n.join("lib").join("global_db").join("pages").is_dir())
            .cloned()
            .collect();
        if let Some(node) = self.pick(&with_small).cloned() {
            let mut leaves: Vec<PathBuf> = small_files(&node)?
                .iter()
                .filter_map(|f| f.parent().map(Path::to_path_buf))
                .collect();
            leaves.dedup();
            if let Some(leaf) = self.pick(&leaves).cloned() {
                for file in sorted_entries(&leaf, |_| true)? {
                    fs::remove_file(&file)
                        .with_context(|| format!("removing {}", file.display()))?;
                    self.record(ChangeKind::Deleted, &file);
                }
                fs::remove_dir(&leaf).with_context(|| format!("removing {}", leaf.display()))?;
                self.record(ChangeKind::DirRemoved, &leaf);
            }
        }

        let node = self.pick(nodes).expect("nodes is not empty").clone();
        let cert = node
            .join("lib")
            .join("ca")
            .join(format!("suite-{:08x}.dcert", self.rng.next() as u32));
        let len = self.rng.between(600, 1500);
        self.write_new(&cert, len)?;

        // A chain fork: a new directory holding a new cell.
        let node = self.pick(nodes).expect("nodes is not empty").clone();
        let fork = node
            .join("lib")
            .join("network")
            .join(NETWORK)
            .join(format!("fork-{:08x}", self.rng.next() as u32));
        if !fork.exists() {
            mkdir(&fork)?;
            self.record(ChangeKind::DirAdded, &fork);
        }
        let len = self.rng.between(4096, 65_536);
        self.write_new(&fork.join("0.dchaincell"), len)
    }

    fn node_activity(&mut self, node: &Path, log_bytes: u64) -> Result<()> {
        let log = node.join("log").join("cellframe-node.log");
        let existed = log.exists();
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        self.summary.bytes_written += self
            .log
            .write(&mut file, log_bytes)
            .with_context(|| format!("appending to {}", log.display()))?;
        self.record(
            if existed {
                ChangeKind::Modified
            } else {
                ChangeKind::Added
            },
            &log,
        );

        let db = node.join("lib").join("global_db");
        let dat = db.join("mdbx.dat");
        if dat.exists() {
            let file = OpenOptions::new()
                .write(true)
                .open(&dat)
                .with_context(|| format!("opening {}", dat.display()))?;
            let pages = file.metadata()?.len() / PAGE;
            if pages > 0 {
                for _ in 0..SUITE_DB_PAGES * self.intensity {
                    let page = self.rng.below(pages);
                    self.noise
                        .write_at(&file, page * PAGE, PAGE)
                        .with_context(|| format!("writing {}", dat.display()))?;
                    self.summary.bytes_written += PAGE;
                }
                self.record(ChangeKind::Modified, &dat);
            }
        }
        let lck = db.join("mdbx.lck");
        if lck.exists() {
            let file = OpenOptions::new()
                .write(true)
                .open(&lck)
                .with_context(|| format!("opening {}", lck.display()))?;
            self.noise
                .write_at(&file, 0, 256)
                .with_context(|| format!("writing {}", lck.display()))?;
            self.summary.bytes_written += 256;
            self.record(ChangeKind::Modified, &lck);
        }

        for net in sorted_entries(&node.join("lib").join("network"), |_| true)? {
            let cell = net.join("main").join("0.dchaincell");
            if cell.exists() {
                let len = self.rng.between(16 << 10, 64 << 10) * self.intensity;
                self.append(&cell, len)?;
            }
        }

        for _ in 0..self.rng.between(1, 2) {
            let path = node
                .join("lib")
                .join("wallet")
                .join(format!("suite-{:08x}.dwallet", self.rng.next() as u32));
            let len = self.rng.between(500, 900);
            self.write_new(&path, len)?;
            chmod(&path, 0o600)?;
        }

        self.small_file_churn(node)
    }

    /// Rewrites ~1% of the small files (new sizes), deletes half as many and adds half as many
    /// next to existing ones.
    fn small_file_churn(&mut self, node: &Path) -> Result<()> {
        let files = small_files(node)?;
        if files.is_empty() {
            return Ok(());
        }
        let k =
            ((files.len() as u64 / 100).max(1) * self.intensity).min(files.len() as u64) as usize;
        let deletes = (k / 2).min(files.len() - k);
        // Partial Fisher-Yates: distinct files for the rewrites and the deletions.
        let mut order: Vec<usize> = (0..files.len()).collect();
        for i in 0..k + deletes {
            let j = i + self.rng.below((files.len() - i) as u64) as usize;
            order.swap(i, j);
        }
        for &i in &order[..k] {
            let old = fs::metadata(&files[i])?.len().max(2);
            let len = old / 2 + self.rng.below(old + 1);
            self.write_new(&files[i], len)?;
        }
        for &i in &order[k..k + deletes] {
            fs::remove_file(&files[i])
                .with_context(|| format!("removing {}", files[i].display()))?;
            self.record(ChangeKind::Deleted, &files[i]);
        }
        for _ in 0..k.div_ceil(2) {
            let sibling = &files[order[self.rng.below(k as u64) as usize]];
            let ext = sibling
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or("page");
            let path = sibling.with_file_name(format!("new-{:08x}.{ext}", self.rng.next() as u32));
            let len = fs::metadata(sibling)?.len().max(64);
            self.write_new(&path, len)?;
        }
        Ok(())
    }
}

/// Dirties the environment under `root` in place as a test suite does: log appends, in-place
/// database page rewrites, chain appends, new and deleted wallets, a new certificate, a new
/// directory, a mode change, and churn among the small files of a small-shape tree.
pub fn run_suite(root: &Path, opts: &SuiteOptions) -> Result<SuiteSummary> {
    if opts.intensity == 0 {
        return Err(refuse("--intensity must be at least 1".into()));
    }
    let cache = cache_dir(root);
    let nodes = node_dirs(&cache.join("data"))?;
    if nodes.is_empty() {
        bail!(
            "no node directories under {}; run `stage-sample generate` first",
            cache.join("data").display()
        );
    }
    let mut suite = Suite {
        cache,
        rng: Rng::new(opts.seed, 0x5017E),
        noise: Noise::new(Rng::new(opts.seed, 0x5017F)),
        log: LogText {
            rng: Rng::new(opts.seed, 0x50180),
            secs: LOG_START + 10 * 86_400,
        },
        intensity: u64::from(opts.intensity),
        summary: SuiteSummary::default(),
    };
    suite.one_offs(&nodes)?;
    let log_bytes = SUITE_LOG_BYTES * suite.intensity / nodes.len() as u64;
    for node in &nodes {
        suite.node_activity(node, log_bytes)?;
    }
    Ok(suite.summary)
}
