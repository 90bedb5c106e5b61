//! `squashfs`: a snapshot is one compressed, read-only squashfs image of the included paths
//! (`payload/image.sqfs`, laid out as they sit below cache_dir) plus `payload/fixups`, the
//! metadata squashfs cannot hold. A restore first proves both intact (sizes, BLAKE3 digests,
//! `unsquashfs -s`); then the delta engine brings the live data to the manifest, rewriting
//! only what differs and reading those pieces either straight from the image (`extract`,
//! through the [`sqfs_read`] crate) or through a loop mount of it (`mount`). Every attribute
//! comes from the manifest; the fixups go back only after a restore without one (snapshots
//! made before manifests, extracted whole by unsquashfs).

mod fixups;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sqfs_read::{Image, ImageFile};

use self::fixups::{Fixups, Time};
use super::{Finding, Mode, ModeContext, ModeKind, Restoration, Status, Verified};
use crate::capture::{self, Held};
use crate::choices::choices;
use crate::config::{Config, Kind as SettingKind, SECTION, Spec};
use crate::delta::{self, Content, Dir, Source, SourceFile};
use crate::exit::{Code, Error, code_of, fail, one_line};
use crate::manifest::{Entry, Kind, Manifest, Name};
use crate::signals;
use crate::store::Snapshot;
use crate::sys;
use crate::tools::{Found, Tool};
use crate::tree::{Live, WORK_PREFIX, human_bytes, left_by_dead_process, seconds};

const MKSQUASHFS: Tool = Tool {
    program: "mksquashfs",
    package: "squashfs-tools",
    product: "squashfs-tools",
    version_args: &["-version"],
    exit_hints: &[],
};

pub const UNSQUASHFS: Tool = Tool {
    program: "unsquashfs",
    package: "squashfs-tools",
    product: "squashfs-tools",
    version_args: &["-version"],
    exit_hints: &[],
};

/// mount and umount loop-mount squashfs images for the mount restore.
const MOUNT: Tool = Tool {
    program: "mount",
    package: "mount",
    product: "mount",
    version_args: &["--version"],
    exit_hints: &[],
};

const UMOUNT: Tool = Tool {
    program: "umount",
    package: "mount",
    product: "umount",
    version_args: &["--version"],
    exit_hints: &[],
};

choices! {
    /// `squashfs_compression`: the mksquashfs compressor, or none.
    enum SquashfsCompression {
        None = "none",
        Gzip = "gzip",
        Lzo = "lzo",
        Xz = "xz",
        Zstd = "zstd",
        Lz4 = "lz4",
    }
}

choices! {
    /// `squashfs_restore`: how a squashfs snapshot is read back.
    enum SquashfsRestore {
        Auto = "auto",
        Extract = "extract",
        Mount = "mount",
    }
}

const COMPRESSION: Spec = Spec {
    key: "squashfs_compression",
    section: SECTION,
    default: "none",
    kind: SettingKind::choice::<SquashfsCompression>(),
};

const LEVEL: Spec = Spec {
    key: "squashfs_level",
    section: SECTION,
    default: "auto",
    kind: SettingKind::CountOrAuto,
};

const PROCESSORS: Spec = Spec {
    key: "squashfs_processors",
    section: SECTION,
    default: "auto",
    kind: SettingKind::CountOrAuto,
};

const RESTORE: Spec = Spec {
    key: "squashfs_restore",
    section: SECTION,
    default: "auto",
    kind: SettingKind::choice::<SquashfsRestore>(),
};

/// The squashfs settings, in the order `stagesnap config` lists them.
pub const SETTINGS: &[Spec] = &[COMPRESSION, LEVEL, PROCESSORS, RESTORE];

/// The mode with its settings, typed once from the configuration.
pub struct Squashfs {
    compression: SquashfsCompression,
    /// None for `auto`.
    level: Option<u32>,
    /// None for `auto`.
    processors: Option<u32>,
    restore: SquashfsRestore,
}

impl Squashfs {
    pub fn new(cfg: &Config) -> Squashfs {
        Squashfs {
            compression: cfg.value(&COMPRESSION).choice(),
            level: cfg.value(&LEVEL).count_or_auto(),
            processors: cfg.value(&PROCESSORS).count_or_auto(),
            restore: cfg.value(&RESTORE).choice(),
        }
    }
}

const IMAGE: &str = "image.sqfs";
const FIXUPS: &str = "fixups";

/// meta.json's `payload` for a squashfs snapshot.
#[derive(Debug, Serialize, Deserialize)]
struct Payload {
    image: Stored,
    fixups: Stored,
    compression: String,
    /// The level given to the compressor; None for compressors without levels (and lzo's
    /// fast default algorithm).
    level: Option<u32>,
    mksquashfs_version: String,
    /// Entries with recorded mtimes and sparse files with recorded holes.
    fixup_entries: usize,
    sparse_files: usize,
}

/// A file of the payload and what it must look like.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    file: String,
    bytes: u64,
    blake3: String,
}

impl Stored {
    fn of(payload: &Path, file: &str) -> Result<Stored> {
        let (bytes, blake3) = digest(&payload.join(file))?;
        Ok(Stored {
            file: file.to_string(),
            bytes,
            blake3,
        })
    }

    /// Fails (exit 1, "damaged") unless the file has the recorded size, and is no symlink
    /// (the store is untrusted input: a link would have the image read from elsewhere).
    fn check_size(&self, snapshot: &Snapshot) -> Result<()> {
        let path = snapshot.payload().join(&self.file);
        let size = match path.symlink_metadata() {
            Ok(m) if m.is_symlink() => {
                return Err(damaged(
                    snapshot,
                    format!("{} is a symlink", path.display()),
                ));
            }
            Ok(m) => m.len(),
            Err(e) => {
                return Err(damaged(
                    snapshot,
                    format!("cannot read {}: {e}", path.display()),
                ));
            }
        };
        if size != self.bytes {
            return Err(damaged(
                snapshot,
                format!(
                    "{} is {size} bytes, meta.json says {}",
                    path.display(),
                    self.bytes
                ),
            ));
        }
        Ok(())
    }

    /// Fails (exit 1, "damaged") unless the file has the recorded size and digest.
    fn check_digest(&self, snapshot: &Snapshot) -> Result<()> {
        self.check_size(snapshot)?;
        let path = snapshot.payload().join(&self.file);
        let started = Instant::now();
        let (bytes, blake3) = digest(&path)?;
        tracing::debug!(path = %path.display(), bytes, seconds = seconds(started.elapsed()), "squashfs_digest_checked");
        if blake3 != self.blake3 {
            return Err(damaged(
                snapshot,
                format!(
                    "the BLAKE3 digest of {} does not match meta.json (the file changed after it was written)",
                    path.display()
                ),
            ));
        }
        Ok(())
    }
}

fn damaged(snapshot: &Snapshot, what: String) -> anyhow::Error {
    Error::Damaged {
        snapshot: snapshot.meta.name.clone(),
        what,
        refused: true,
    }
    .into()
}

/// Size and BLAKE3 digest (hex) of a file. Memory-mapped and hashed on every core: every
/// restore reads the whole image first, and one core's hashing was a fifth of an extract.
fn digest(path: &Path) -> Result<(u64, String)> {
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_mmap_rayon(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    signals::check()?;
    Ok((hasher.count(), hasher.finalize().to_hex().to_string()))
}

impl Payload {
    fn of(snapshot: &Snapshot) -> Result<Payload> {
        serde_json::from_value(snapshot.meta.payload.clone()).map_err(|e| {
            Error::Damaged {
                snapshot: snapshot.meta.name.clone(),
                what: format!("meta.json has no valid squashfs payload ({e})"),
                refused: false,
            }
            .into()
        })
    }
}

/// The compression settings, as mksquashfs arguments.
struct Compression {
    name: SquashfsCompression,
    level: Option<u32>,
}

impl Compression {
    fn of(mode: &Squashfs) -> Compression {
        let name = mode.compression;
        // Defaults chosen for create time: zstd's own default (15) is ~20x slower than 3 for
        // the same ratio on this data, gzip 9 barely beats 6.
        let default = match name {
            SquashfsCompression::Gzip => Some(6),
            SquashfsCompression::Zstd => Some(3),
            _ => None,
        };
        Compression {
            name,
            level: mode.level.or(default),
        }
    }

    /// The levels a compressor accepts; None when it has none.
    fn levels(name: SquashfsCompression) -> Option<std::ops::RangeInclusive<u32>> {
        match name {
            SquashfsCompression::Gzip | SquashfsCompression::Lzo => Some(1..=9),
            SquashfsCompression::Zstd => Some(1..=22),
            _ => None,
        }
    }

    fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = match self.name {
            // Really uncompressed: mksquashfs has no `-comp none`.
            SquashfsCompression::None => {
                return ["-noI", "-noD", "-noF", "-noX"].map(String::from).to_vec();
            }
            name => vec!["-comp".into(), name.name().into()],
        };
        if self.name == SquashfsCompression::Lzo {
            // lzo1x_999 (mksquashfs's default, the only one with levels) builds ~30x slower
            // than lzo1x_1 for 4% smaller images; it is used only when a level is asked for.
            let algorithm = if self.level.is_some() {
                "lzo1x_999"
            } else {
                "lzo1x_1"
            };
            args.extend(["-Xalgorithm".into(), algorithm.into()]);
        }
        if let Some(level) = self.level {
            args.extend(["-Xcompression-level".into(), level.to_string()]);
        }
        args
    }
}

/// The compressors the installed mksquashfs was built with, from its help text (the list
/// under "Compressors available").
fn compressors(mksquashfs: &Found) -> Result<Vec<String>> {
    let out = mksquashfs.run(["-help"], "listing the compressors mksquashfs supports")?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Ok(parse_compressors(&text))
}

fn parse_compressors(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.contains("Compressors available"))
        .skip(1)
        .map(|l| l.trim().trim_end_matches("(default)").trim())
        .take_while(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_alphanumeric()))
        .map(str::to_string)
        .collect()
}

/// Checks the squashfs settings against this machine (exit 2 naming the setting): the
/// compressor must be in the installed build, the level in its range, and
/// `squashfs_restore = mount` possible here.
fn check_settings(mode: &Squashfs, cfg: &Config, mksquashfs: &Found) -> Result<String> {
    let comp = Compression::of(mode);
    let supported = compressors(mksquashfs)?;
    if supported.is_empty() {
        // A help text of an unknown shape: mksquashfs itself will refuse a missing compressor.
        tracing::warn!(mksquashfs = %mksquashfs.path.display(), "squashfs_compressors_unknown: mksquashfs -help lists no compressors, so squashfs_compression is not checked");
    } else if comp.name != SquashfsCompression::None
        && !supported.iter().any(|c| c == comp.name.name())
    {
        return Err(cfg.unusable(
            &COMPRESSION,
            format!(
                "the installed mksquashfs {} ({}) was built without {}; it supports {}. Choose one of those, or none",
                mksquashfs.version()?,
                mksquashfs.path.display(),
                comp.name,
                supported.join(", ")
            ),
        ));
    }
    if let Some(level) = mode.level {
        match Compression::levels(comp.name) {
            None => {
                return Err(cfg.unusable(
                    &LEVEL,
                    format!(
                        "{} has no compression levels (gzip and lzo take 1-9, zstd 1-22); set squashfs_level = auto",
                        comp.name
                    ),
                ));
            }
            Some(range) if !range.contains(&level) => {
                return Err(cfg.unusable(
                    &LEVEL,
                    format!(
                        "{} takes levels {}-{}",
                        comp.name,
                        range.start(),
                        range.end()
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    if mode.restore == SquashfsRestore::Mount
        && let Some(why) = mount_blocker()
    {
        return Err(cfg.unusable(
            &RESTORE,
            format!(
                "a loop mount is not possible here: {why}. Set squashfs_restore = auto or extract"
            ),
        ));
    }
    Ok(format!(
        "this mksquashfs supports {}; squashfs_compression = {}{}",
        supported.join(", "),
        comp.name,
        comp.level
            .map(|l| format!(", level {l}"))
            .unwrap_or_default()
    ))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strategy {
    Extract,
    Mount,
}

impl Strategy {
    fn name(self) -> &'static str {
        match self {
            Strategy::Extract => "extract",
            Strategy::Mount => "mount",
        }
    }
}

/// Why this process cannot loop-mount an image, or None when it can.
fn mount_blocker() -> Option<String> {
    if sys::euid() != 0 {
        return Some("mounting needs root and this process is not root".into());
    }
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !filesystems
        .lines()
        .any(|l| l.split_whitespace().last() == Some("squashfs"))
    {
        return Some("the kernel has no squashfs support (not in /proc/filesystems; try `modprobe squashfs`)".into());
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
    {
        return Some(format!(
            "loop devices are not usable (/dev/loop-control: {e})"
        ));
    }
    [MOUNT, UMOUNT]
        .iter()
        .find(|t| t.locate().is_none())
        .map(|t| format!("{} is not installed (package {})", t.program, t.package))
}

/// The strategy `squashfs_restore` selects here, and why.
fn strategy(restore: SquashfsRestore) -> (Strategy, String) {
    match restore {
        SquashfsRestore::Extract => (Strategy::Extract, "squashfs_restore = extract".into()),
        SquashfsRestore::Mount => (Strategy::Mount, "squashfs_restore = mount".into()),
        // Reading the image directly is faster than through a loop mount (bench/), and
        // needs no root.
        SquashfsRestore::Auto => (
            Strategy::Extract,
            "auto: reads the image directly, faster than through a loop mount".into(),
        ),
    }
}

impl Mode for Squashfs {
    fn kind(&self) -> ModeKind {
        ModeKind::Squashfs
    }

    fn tools(&self) -> &'static [Tool] {
        &[MKSQUASHFS, UNSQUASHFS]
    }

    fn preflight(&self, cfg: &Config, tools: &[Found]) -> Result<()> {
        let mksquashfs = tools
            .iter()
            .find(|f| f.tool == MKSQUASHFS)
            .expect("located by prepare");
        check_settings(self, cfg, mksquashfs).map(drop)
    }

    fn doctor(&self, ctx: &ModeContext) -> Vec<Finding> {
        let compression = match check_settings(self, ctx.cfg, ctx.tool(MKSQUASHFS)) {
            Ok(detail) => Finding::new("squashfs settings", Status::Ok, detail, ""),
            Err(e) => Finding::new(
                "squashfs settings",
                Status::Fail,
                one_line(&e),
                "fix the setting it names",
            ),
        };
        let (strategy, why) = strategy(self.restore);
        let blocked = (strategy == Strategy::Mount).then(mount_blocker).flatten();
        let restore = match blocked {
            Some(blocker) => Finding::new(
                "squashfs restore",
                Status::Fail,
                format!("mount ({why}), but {blocker}"),
                "set squashfs_restore = auto or extract",
            ),
            None => Finding::new(
                "squashfs restore",
                Status::Ok,
                format!(
                    "{} ({why})",
                    match strategy {
                        Strategy::Mount => "mount: only what differs is rewritten",
                        Strategy::Extract =>
                            "extract: only what differs is read from the image and rewritten",
                    }
                ),
                "",
            ),
        };
        vec![compression, restore]
    }

    fn create(&self, ctx: &ModeContext, payload: &Path) -> Result<serde_json::Value> {
        let mksquashfs = ctx.tool(MKSQUASHFS);
        let live = ctx.live;
        let fixups = Fixups::capture(live)?;
        fixups.write(&payload.join(FIXUPS))?;
        signals::check()?;

        let image = payload.join(IMAGE);
        let comp = Compression::of(self);
        // The image root is cache_dir, so the image holds `data/...` as it sits there;
        // everything beside the included paths is excluded.
        let mut args: Vec<OsString> = vec![live.cache_dir.clone().into(), image.clone().into()];
        args.extend(
            [
                "-noappend",
                "-no-progress",
                "-quiet",
                "-exit-on-error",
                "-xattrs",
            ]
            .map(OsString::from),
        );
        if let Some(n) = self.processors {
            args.extend(["-processors".into(), n.to_string().into()]);
        }
        args.extend(comp.args().into_iter().map(OsString::from));
        let excluded = excluded(live)?;
        if !excluded.is_empty() {
            args.push("-e".into());
            args.extend(excluded.into_iter().map(OsString::from));
        }
        let started = Instant::now();
        mksquashfs.run(
            args,
            &format!(
                "building the squashfs image of {}",
                live.cache_dir.display()
            ),
        )?;
        let built = started.elapsed();
        signals::check()?;
        let stored = Payload {
            image: Stored::of(payload, IMAGE)?,
            fixups: Stored::of(payload, FIXUPS)?,
            compression: comp.name.name().to_string(),
            level: comp.level,
            mksquashfs_version: mksquashfs.version()?.to_string(),
            fixup_entries: fixups.entries(),
            sparse_files: fixups.sparse_files(),
        };
        tracing::info!(
            compression = %comp.name.name(),
            level = %comp.level.map_or("-".into(), |l| l.to_string()),
            image_bytes = stored.image.bytes,
            mksquashfs_seconds = seconds(built),
            digest_seconds = seconds(started.elapsed() - built),
            "squashfs_image_built"
        );
        Ok(serde_json::to_value(stored)?)
    }

    /// The image's regular files (the only entries it indexes), read back and hashed.
    fn held_beneath(
        &self,
        _: &ModeContext,
        payload: &Path,
        _: &Manifest,
        dirs: &[Name],
    ) -> Result<Vec<Held>> {
        let image = Image::open(&payload.join(IMAGE))?;
        let mut held = Vec::new();
        for path in image.paths() {
            let name = Name(path.to_vec());
            let Some(file) = image
                .file(path)
                .filter(|_| dirs.iter().any(|d| capture::beneath(&name, d)))
            else {
                continue;
            };
            let mut hasher = blake3::Hasher::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut pos = 0;
            while pos < file.len() {
                let n = (file.len() - pos).min(buf.len() as u64) as usize;
                file.read_exact_at(&mut buf[..n], pos)?;
                hasher.update(&buf[..n]);
                pos += n as u64;
            }
            held.push(Held {
                path: name,
                kind: Kind::File,
                target: None,
                content: Some((hasher.finalize().to_hex().to_string(), file.len())),
            });
        }
        Ok(held)
    }

    fn verify(&self, ctx: &ModeContext, snapshot: &Snapshot) -> Result<()> {
        // The image's digest (reading all of it) is checked by the restore itself, beside
        // the extraction or before mounting, and by `stagesnap verify`.
        let payload = Payload::of(snapshot)?;
        payload.image.check_size(snapshot)?;
        payload.fixups.check_digest(snapshot)?;
        let image = snapshot.payload().join(&payload.image.file);
        ctx.tool(UNSQUASHFS)
            .run([OsString::from("-s"), image.clone().into()], &format!("opening {}", image.display()))
            .map_err(|e| {
                fail(
                    Code::Failure,
                    format!(
                        "snapshot {} cannot be restored: unsquashfs cannot open {} ({}); nothing was restored",
                        snapshot.meta.name,
                        image.display(),
                        one_line(&e)
                    ),
                )
            })?;
        Ok(())
    }

    fn verify_stored(
        &self,
        _: &ModeContext,
        snapshot: &Snapshot,
        _: &Manifest,
    ) -> Result<Verified> {
        let payload = Payload::of(snapshot)?;
        let problems = match payload.image.check_digest(snapshot) {
            Ok(()) => vec![],
            Err(e) if code_of(&e) == Code::Interrupted => return Err(e),
            Err(e) => vec![one_line(&e)],
        };
        Ok(Verified {
            checked: "the manifest, the fixups and the image's size and BLAKE3 digest".into(),
            problems,
        })
    }

    /// The image's files, read straight from it once its digest holds.
    fn with_files(
        &self,
        snapshot: &Snapshot,
        read: &mut dyn FnMut(&dyn Source) -> Result<()>,
    ) -> Result<()> {
        let payload = Payload::of(snapshot)?;
        payload.image.check_digest(snapshot)?;
        let image = snapshot.payload().join(&payload.image.file);
        let source = ImageSource {
            path: &image,
            opened: OnceLock::from(Image::open(&image)?),
        };
        read(&source)
    }

    fn restore(
        &self,
        ctx: &ModeContext,
        snapshot: &Snapshot,
        manifest: Option<&Manifest>,
    ) -> Result<Restoration> {
        let payload = Payload::of(snapshot)?;
        let image = snapshot.payload().join(&payload.image.file);
        // The delta engine takes every attribute from the manifest; only a snapshot without
        // one gets its attributes from the image and so needs the fixups (read before
        // anything changes).
        let fixups = manifest
            .is_none()
            .then(|| Fixups::read(&snapshot.payload().join(&payload.fixups.file)))
            .transpose()?;
        let (strategy, why) = strategy(self.restore);
        tracing::info!(strategy = %strategy.name(), reason = %why, "squashfs_restore_strategy");
        let done = match strategy {
            Strategy::Extract => {
                extract(ctx, snapshot, &payload, &image, manifest, self.processors)?
            }
            Strategy::Mount => by_mount(ctx, snapshot, &payload, &image, manifest)?,
        };
        let Some(fixups) = fixups else {
            return Ok(done);
        };
        let applied = fixups.apply(&ctx.live.cache_dir)?;
        tracing::debug!(
            times = applied.times,
            holed_files = applied.holed_files,
            "squashfs_fixups_applied"
        );
        Ok(done.stats.into())
    }
}

/// The entries of cache_dir (and of directories on the way to a nested included path) that
/// are not included, as absolute paths for `mksquashfs -e`.
fn excluded(live: &Live) -> Result<Vec<PathBuf>> {
    let mut keep = BTreeSet::new();
    for rel in &live.include {
        keep.extend(
            rel.ancestors()
                .filter(|a| !a.as_os_str().is_empty())
                .map(|a| live.path(a)),
        );
    }
    let mut out = Vec::new();
    for dir in ancestors(&live.cache_dir, &live.include) {
        let rd =
            std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?;
        for entry in rd {
            let path = entry?.path();
            if !keep.contains(&path) {
                out.push(path);
            }
        }
    }
    Ok(out)
}

/// cache_dir and the directories between it and the included paths, whose other entries
/// the image leaves out.
fn ancestors(cache_dir: &Path, include: &[PathBuf]) -> BTreeSet<PathBuf> {
    include
        .iter()
        .flat_map(|rel| rel.ancestors().skip(1).map(|a| cache_dir.join(a)))
        .collect()
}

/// `extract`: the delta engine walks the live data against the manifest and reads what
/// differs straight from the image ([`image`]), piece by piece as the mount strategy does:
/// no mount, no unsquashfs, nothing staged. Before the first change the image's digest is
/// checked (while its index is read on the other core). Without a manifest (older
/// snapshots) unsquashfs extracts the whole image into a work directory, which is scanned.
fn extract(
    ctx: &ModeContext,
    snapshot: &Snapshot,
    payload: &Payload,
    image: &Path,
    manifest: Option<&Manifest>,
    processors: Option<u32>,
) -> Result<Restoration> {
    let Some(manifest) = manifest else {
        return extract_whole(ctx, snapshot, payload, image, processors);
    };
    let target = with_pieces(snapshot, manifest)?;
    let source = ImageSource {
        path: image,
        opened: OnceLock::new(),
    };
    let open = |_: &[&Entry]| -> Result<()> {
        std::thread::scope(|s| {
            let opening = s.spawn(|| Image::open(image));
            let checked = payload.image.check_digest(snapshot);
            let opened = opening
                .join()
                .expect("reading the image's index does not panic");
            // A damaged image is the news, whatever the index made of it.
            checked?;
            let _ = source.opened.set(opened?);
            Ok(())
        })
    };
    super::delta_restore(ctx, &target, &source, Content::CopyByPieces, &open)
}

/// The manifest with its piece digests, which let the engine read only the pieces of a
/// large file that differ from a source that is slow to read (an image).
fn with_pieces(snapshot: &Snapshot, manifest: &Manifest) -> Result<Manifest> {
    let mut with = manifest.clone();
    snapshot.attach_pieces(&mut with)?;
    Ok(with)
}

/// The image as the delta engine's source, once its digest holds.
struct ImageSource<'a> {
    path: &'a Path,
    opened: OnceLock<Image>,
}

impl Source for ImageSource<'_> {
    fn open(&self, want: &Entry) -> Result<Box<dyn SourceFile + '_>> {
        let image = self
            .opened
            .get()
            .expect("the engine reads only after its before-change hook opened the image");
        let what = format!("{} in {}", want.path.display(), self.path.display());
        let file = image
            .file(&want.path.0)
            .ok_or_else(|| Error::DamagedPayload {
                what: format!("{what} is missing"),
            })?;
        delta::check_size(&what, file.len(), want)?;
        Ok(Box::new(file))
    }
}

impl SourceFile for ImageFile<'_> {
    fn fill(&self, buf: &mut [u8], pos: u64) -> std::io::Result<()> {
        self.read_exact_at(buf, pos)
    }

    fn next_data(&self, pos: u64) -> std::io::Result<Option<u64>> {
        Ok(self.data_from(pos))
    }

    fn next_hole(&self, pos: u64) -> std::io::Result<Option<u64>> {
        Ok(Some(self.hole_from(pos)))
    }
}

/// An extract of a snapshot made before manifests: unsquashfs extracts the included paths
/// into a work directory while the image's digest is checked, and the engine brings the
/// live data to what it finds there.
fn extract_whole(
    ctx: &ModeContext,
    snapshot: &Snapshot,
    payload: &Payload,
    image: &Path,
    processors: Option<u32>,
) -> Result<Restoration> {
    let work = WorkDir::new(&ctx.live.cache_dir)?;
    let free = crate::tree::free_bytes(&ctx.live.cache_dir)?;
    if free < snapshot.meta.bytes {
        return Err(fail(
            Code::Failure,
            format!(
                "cannot restore {} by extracting: its files ({}) are staged in {}, which has {} free; nothing was changed. Free some space, or set squashfs_restore = mount",
                snapshot.meta.name,
                human_bytes(snapshot.meta.bytes),
                ctx.live.cache_dir.display(),
                human_bytes(free)
            ),
        ));
    }
    std::thread::scope(|s| {
        let extracting = s.spawn(|| unsquash(ctx, snapshot, image, &work.dir, processors));
        let checked = payload.image.check_digest(snapshot);
        let extracted = extracting.join().expect("the extraction does not panic");
        // A damaged image is the news, whatever the extraction made of it.
        checked.and(extracted)
    })?;
    let target = super::target(snapshot, None, &work.dir)?;
    super::delta_restore(
        ctx,
        &target,
        &Dir::snapshot(&work.dir)?,
        Content::Copy,
        &|_| Ok(()),
    )
}

/// Runs unsquashfs for the included paths into `dest`.
/// `processors` is `squashfs_processors` (None for `auto`).
fn unsquash(
    ctx: &ModeContext,
    snapshot: &Snapshot,
    image: &Path,
    dest: &Path,
    processors: Option<u32>,
) -> Result<()> {
    let mut args: Vec<OsString> = ["-quiet", "-force", "-strict-errors", "-no-wildcards"]
        .map(OsString::from)
        .to_vec();
    if !ctx.observer.active() {
        args.push("-no-progress".into());
    }
    if let Some(n) = processors {
        args.extend(["-processors".into(), n.to_string().into()]);
    }
    args.extend(["-dest".into(), dest.into(), image.into()]);
    args.extend(snapshot.meta.include.iter().map(OsString::from));
    // unsquashfs's own progress bar (`[==|  ] 2341/2991  78%`, in blocks) drives ours.
    ctx.tool(UNSQUASHFS)
        .run_reporting(
            args,
            &format!(
                "extracting snapshot {} into {}",
                snapshot.meta.name,
                dest.display()
            ),
            &mut |line| {
                if let Some((done, total)) = blocks_done(line) {
                    ctx.observer.share(done, total);
                }
            },
        )
        .map(drop)
}

/// An extract's work directory in cache_dir (beside the included paths, so that the walk of
/// the live data never meets it). Dropped (after success, an error or Ctrl-C), it goes, and
/// cache_dir gets back the mtime it had.
struct WorkDir {
    dir: PathBuf,
    parent: (PathBuf, Time),
}

impl WorkDir {
    fn new(cache_dir: &Path) -> Result<WorkDir> {
        let meta = cache_dir
            .symlink_metadata()
            .with_context(|| format!("cannot stat {}", cache_dir.display()))?;
        let name = format!("{WORK_PREFIX}{}", std::process::id());
        let work = WorkDir {
            dir: cache_dir.join(&name),
            parent: (cache_dir.to_path_buf(), Time::of(&meta)),
        };
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&work.dir)
            .with_context(|| format!("cannot create {}", work.dir.display()))?;
        Ok(work)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = crate::tree::remove_tree(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %one_line(&e), "squashfs_work_dir_left: remove it by hand");
        }
        let (parent, mtime) = &self.parent;
        if let Err(e) = set_mtime(parent, *mtime) {
            tracing::warn!(dir = %parent.display(), error = %one_line(&e), "squashfs_mtime_not_restored");
        }
    }
}

/// `(2341, 2991)` from unsquashfs's progress line `[==…|   ] 2341/2991  78%`.
fn blocks_done(line: &str) -> Option<(u64, u64)> {
    let (done, total) = line
        .rsplit_once(']')?
        .1
        .split_whitespace()
        .next()?
        .split_once('/')?;
    Some((done.parse().ok()?, total.parse().ok()?))
}

/// `mount`: loop-mounts the image read-only and lets the delta engine bring the live data to
/// the manifest from it, as filesystem mode does, so only what the suite changed is rewritten.
fn by_mount(
    ctx: &ModeContext,
    snapshot: &Snapshot,
    payload: &Payload,
    image: &Path,
    manifest: Option<&Manifest>,
) -> Result<Restoration> {
    payload.image.check_digest(snapshot)?;
    let need = "the squashfs mount restore was chosen";
    let [mount, umount] = [MOUNT, UMOUNT].map(|t| t.require_for(need));
    let (mount, umount) = (mount?, umount?);
    let with_pieces = manifest.map(|m| with_pieces(snapshot, m)).transpose()?;
    let mounted = Mounted::new(image, &mount, &umount).context(
        "cannot loop-mount the snapshot's image, nothing was changed (squashfs_restore = extract restores without mounting)",
    )?;
    let target = super::target(snapshot, with_pieces.as_ref(), &mounted.dir)?;
    let source = Dir::snapshot(&mounted.dir)?;
    super::delta_restore(ctx, &target, &source, Content::CopyByPieces, &|_| Ok(()))
}

/// A read-only loop mount of an image in a private temporary directory. Dropping it (after
/// success, an error or Ctrl-C) unmounts it and removes the directory.
struct Mounted<'a> {
    dir: PathBuf,
    umount: &'a Found,
}

const MOUNT_PREFIX: &str = "stagesnap-mount-";

impl<'a> Mounted<'a> {
    fn new(image: &Path, mount: &Found, umount: &'a Found) -> Result<Mounted<'a>> {
        unmount_stale(umount);
        let dir = std::env::temp_dir().join(format!(
            "{MOUNT_PREFIX}{}-{}",
            std::process::id(),
            jiff::Timestamp::now().as_nanosecond()
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create mount point {}", dir.display()))?;
        // Made before mounting, so that a mount cut short by Ctrl-C is still undone.
        let guard = Mounted { dir, umount };
        let mut args: Vec<OsString> = ["-t", "squashfs", "-o", "ro,loop,nodev,nosuid,noexec"]
            .map(OsString::from)
            .to_vec();
        args.extend([image.into(), guard.dir.clone().into()]);
        mount.run(args, &format!("mounting {}", image.display()))?;
        tracing::debug!(image = %image.display(), dir = %guard.dir.display(), "squashfs_mounted");
        Ok(guard)
    }

    fn is_mounted(&self) -> bool {
        let dev = |p: &Path| p.symlink_metadata().map(|m| m.dev()).ok();
        dev(&self.dir) != self.dir.parent().and_then(dev)
    }
}

/// Unmounts and removes the mount points of stagesnap processes that died without doing it
/// (killed with SIGKILL mid-restore): nothing else ever would, and each holds a loop device.
fn unmount_stale(umount: &Found) {
    let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in rd.flatten() {
        if !left_by_dead_process(&entry.file_name().to_string_lossy(), MOUNT_PREFIX) {
            continue;
        }
        let stale = Mounted {
            dir: entry.path(),
            umount,
        };
        tracing::info!(dir = %stale.dir.display(), mounted = stale.is_mounted(), "squashfs_stale_mount_removed: a stagesnap killed during a restore left it");
        // Dropping it unmounts it and removes the mount point, as for our own.
        drop(stale);
    }
}

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        if self.is_mounted() {
            // run_to_end: the Ctrl-C that may have brought us here must not stop the unmount.
            if let Err(e) = self
                .umount
                .run_to_end([&self.dir], &format!("unmounting {}", self.dir.display()))
            {
                tracing::warn!(dir = %self.dir.display(), error = %one_line(&e), "squashfs_umount_failed: unmount it by hand: umount {}", self.dir.display());
                return;
            }
            tracing::debug!(dir = %self.dir.display(), "squashfs_unmounted");
        }
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "squashfs_mount_point_left");
        }
    }
}

/// Sets the mtime of `path` itself (not a symlink's target), leaving its atime.
fn set_mtime(path: &Path, t: Time) -> Result<()> {
    sys::set_mtime_of(path, t.sec, t.nsec)
        .with_context(|| format!("cannot set the mtime of {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_typed_from_their_own_keys() {
        let text = "[suite_isolation]\nsquashfs_restore = mount\nsquashfs_compression = zstd\nsquashfs_level = 7\n";
        let cfg = crate::config::load_text(text, &[], &[], &super::super::settings()).unwrap();
        let s = Squashfs::new(&cfg);
        assert_eq!(s.restore, SquashfsRestore::Mount);
        assert_eq!(s.compression, SquashfsCompression::Zstd);
        assert_eq!((s.level, s.processors), (Some(7), None));
    }

    #[test]
    fn compressors_from_help() {
        let help = "-comp <comp>\t\tselect <comp> compression\n\t\t\tCompressors available:\n\t\t\t\tgzip (default)\n\t\t\t\tlzo\n\t\t\t\tzstd\n-b <block_size>\t\tset data block\n";
        assert_eq!(parse_compressors(help), ["gzip", "lzo", "zstd"]);
        assert!(parse_compressors("no list here").is_empty());
    }

    #[test]
    fn unsquashfs_progress() {
        let line = "[===============/          ] 2341/2991  78%";
        assert_eq!(blocks_done(line), Some((2341, 2991)));
        assert_eq!(blocks_done("created 6 files"), None);
    }

    #[test]
    fn compression_arguments() {
        let args = |name, level| {
            let name = SquashfsCompression::from_name(name).unwrap();
            Compression { name, level }.args().join(" ")
        };
        assert_eq!(args("none", None), "-noI -noD -noF -noX");
        assert_eq!(args("zstd", Some(3)), "-comp zstd -Xcompression-level 3");
        assert_eq!(args("lzo", None), "-comp lzo -Xalgorithm lzo1x_1");
        assert_eq!(
            args("lzo", Some(9)),
            "-comp lzo -Xalgorithm lzo1x_999 -Xcompression-level 9"
        );
        assert_eq!(args("xz", None), "-comp xz");
    }
}
