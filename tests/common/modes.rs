//! The data-carrying modes as table rows, so that a scenario is written once and run in each:
//! a row makes its environment (reflink's on an XFS or btrfs image loop-mounted for the test)
//! and says what only its mode can show.

use std::ops::Deref;
use std::path::Path;
use std::process::Command;

use assert_cmd::assert::OutputAssertExt;
use stage_sample::GenerateOptions;

use super::{Env, LoopMount, is_root};

pub enum Mode {
    Filesystem,
    /// squashfs with a compressor (`squashfs_compression`) and a restore strategy
    /// (`squashfs_restore`).
    Squashfs {
        compression: String,
        strategy: &'static str,
    },
    /// reflink on a loop-mounted filesystem: `xfs` (reflink=1) or `btrfs`.
    Reflink(&'static str),
}

/// An environment in a row's mode; the loop mount it lies on, if any, goes after it.
pub struct ModeEnv {
    pub env: Env,
    _mount: Option<LoopMount>,
}

impl Deref for ModeEnv {
    type Target = Env;
    fn deref(&self) -> &Env {
        &self.env
    }
}

impl Mode {
    pub fn squashfs(compression: &str, strategy: &'static str) -> Mode {
        Mode::Squashfs {
            compression: compression.to_string(),
            strategy,
        }
    }

    /// The `mode` setting.
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Filesystem => "filesystem",
            Mode::Squashfs { .. } => "squashfs",
            Mode::Reflink(_) => "reflink",
        }
    }

    /// The row in a failure message: `squashfs zstd/mount`, `reflink on xfs`.
    pub fn label(&self) -> String {
        match self {
            Mode::Filesystem => "filesystem".into(),
            Mode::Squashfs {
                compression,
                strategy,
            } => format!("squashfs {compression}/{strategy}"),
            Mode::Reflink(fs) => format!("reflink on {fs}"),
        }
    }

    /// Whether the mode stores POSIX ACLs: squashfs images keep only user., trusted. and
    /// security. xattrs (and squashfs mode refuses a tree with ACLs rather than drop them).
    pub fn keeps_acls(&self) -> bool {
        !matches!(self, Mode::Squashfs { .. })
    }

    /// A generated environment of `nodes` nodes and about `size` bytes, set to this mode.
    pub fn env(&self, nodes: u32, size: u64) -> ModeEnv {
        let opts = GenerateOptions {
            nodes,
            size,
            ..Default::default()
        };
        let (env, mount) = match self {
            Mode::Reflink(fs) => {
                let mount = LoopMount::new(fs);
                (Env::with_options_in(&mount.mnt, opts), Some(mount))
            }
            _ => (Env::with_options(opts), None),
        };
        env.set("mode", self.name());
        if let Mode::Squashfs {
            compression,
            strategy,
        } = self
        {
            env.set("squashfs_compression", compression);
            env.set("squashfs_restore", strategy);
        }
        ModeEnv { env, _mount: mount }
    }
}

/// Loop mounts, owners and trusted xattrs need root: the tests fail rather than skip without it.
pub fn require_root() {
    assert!(
        is_root(),
        "these tests mount images and set owners: run them as root (scripts/test.sh does)"
    );
}

/// The compressors the installed mksquashfs lists in its help, read independently of stagesnap.
pub fn supported_compressors() -> Vec<String> {
    let out = Command::new("mksquashfs")
        .arg("-help")
        .output()
        .expect("mksquashfs runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let mut lines = text
        .lines()
        .skip_while(|l| !l.contains("Compressors available"))
        .skip(1);
    let mut found = Vec::new();
    while let Some(word) = lines
        .next()
        .map(|l| l.trim().trim_end_matches("(default)").trim())
    {
        if word.is_empty() || word.starts_with('-') {
            break;
        }
        found.push(word.to_string());
    }
    assert!(
        found.contains(&"gzip".to_string()),
        "no compressor list in mksquashfs -help:\n{text}"
    );
    ["gzip", "lzo", "xz", "zstd", "lz4"]
        .into_iter()
        .filter(|c| found.iter().any(|f| f == c))
        .map(String::from)
        .collect()
}

/// Whether `file` shares extents with another file (filefrag's `shared` flag).
pub fn shares_blocks(file: &Path) -> bool {
    let out = Command::new("filefrag")
        .arg("-v")
        .arg(file)
        .assert()
        .success();
    String::from_utf8_lossy(&out.get_output().stdout).contains("shared")
}
