//! Manifests: a lossless description of a captured tree (every entry's type, mode, owner,
//! mtime to the nanosecond, size, symlink target, hardlink group, xattrs and the blake3 hash
//! of every regular file), and the comparison of two of them that `restore`, `verify`,
//! `status` and `diff` report from.
//!
//! On disk a manifest is JSON lines: a header line, then one entry per line sorted by path
//! bytes. Paths are relative to cache_dir (`data/node1/lib/ca/node.dcert`); names that are
//! not UTF-8 are stored as `{"hex": "…"}`, so every name round-trips exactly.

use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::exit::{Code, Error, fail};
use crate::signals;

pub mod pieces;
pub mod walk;

crate::choices::choices! {
    /// How much of a restored tree `restore` checks against the manifest (`restore_verify`,
    /// `restore --verify`): metadata only, metadata and every file's hash, or nothing.
    pub enum VerifyLevel {
        Metadata = "metadata",
        Full = "full",
        None = "none",
    }
}

/// Version of the manifest format (the header's `stagesnap_manifest`). Readers refuse newer ones.
pub const FORMAT: u32 = 1;

/// A file or xattr name as raw bytes: Linux names need not be UTF-8.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Name(pub Vec<u8>);

impl Name {
    pub fn from_path(p: &Path) -> Name {
        Name(p.as_os_str().as_bytes().to_vec())
    }

    pub fn as_path(&self) -> &Path {
        Path::new(std::ffi::OsStr::from_bytes(&self.0))
    }

    /// For people: the name as is when it is plain text, else double-quoted with C escapes
    /// (`"a\nb"`, `"\xff"`), so one entry is always one line and distinct names stay distinct.
    pub fn display(&self) -> String {
        match std::str::from_utf8(&self.0) {
            Ok(s) if !s.chars().any(|c| c.is_control() || c == '"' || c == '\\') => s.to_string(),
            _ => {
                let mut out = String::from("\"");
                for chunk in self.0.utf8_chunks() {
                    for c in chunk.valid().chars() {
                        match c {
                            '\n' => out.push_str("\\n"),
                            '\t' => out.push_str("\\t"),
                            '"' => out.push_str("\\\""),
                            '\\' => out.push_str("\\\\"),
                            c if c.is_control() => {
                                let mut buf = [0; 4];
                                for b in c.encode_utf8(&mut buf).bytes() {
                                    out.push_str(&format!("\\x{b:02x}"));
                                }
                            }
                            c => out.push(c),
                        }
                    }
                    for b in chunk.invalid() {
                        out.push_str(&format!("\\x{b:02x}"));
                    }
                }
                out.push('"');
                out
            }
        }
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => s.serialize_str(text),
            Err(_) => {
                use serde::ser::SerializeMap;
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("hex", &hex(&self.0))?;
                m.end()
            }
        }
    }
}

// A visitor rather than an untagged enum, which buffers every value first: restores parse
// every path of the manifest, and that buffering was a third of their fixed cost.
impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Name;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a name as a string or as {\"hex\": \"…\"}")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Name, E> {
                Ok(Name(v.as_bytes().to_vec()))
            }

            fn visit_string<E: serde::de::Error>(self, v: String) -> std::result::Result<Name, E> {
                Ok(Name(v.into_bytes()))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Name, A::Error> {
                let mut found = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key != "hex" {
                        return Err(serde::de::Error::unknown_field(&key, &["hex"]));
                    }
                    let text: String = map.next_value()?;
                    found = Some(unhex(&text).ok_or_else(|| {
                        serde::de::Error::custom(format!("invalid hex name {text:?}"))
                    })?);
                }
                found
                    .map(Name)
                    .ok_or_else(|| serde::de::Error::missing_field("hex"))
            }
        }
        d.deserialize_any(Visit)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    Char,
    Block,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    pub name: Name,
    /// The value, hex.
    pub value: String,
}

/// One entry of a tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative to cache_dir.
    pub path: Name,
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Permission bits including setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Nanoseconds since the epoch (exact for years 1678 to 2262).
    pub mtime_ns: i64,
    /// Regular files only.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    /// Regular files' content hash, hex; absent in a live scan that did not need it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// Regular files of more than one 1 MiB piece, with their hash: each piece's BLAKE3
    /// chaining value, hex (see [`pieces`]). Stored beside the manifest, not in it (see
    /// [`Manifest::pieces_to_bytes`]): only mount restores read them.
    #[serde(skip)]
    pub pieces: Option<String>,
    /// Regular files with holes: fewer bytes allocated than their size.
    #[serde(default, skip_serializing_if = "is_false")]
    pub sparse: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Name>,
    /// Character and block devices: [major, minor].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdev: Option<[u32; 2]>,
    /// Sorted by name; POSIX ACLs are the `system.posix_acl_*` xattrs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<Xattr>,
    /// Hardlink group: the first path, in sorted order, of the entries in the tree that share
    /// this inode; the same for every member. Absent for an inode with one name in the tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<Name>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub stagesnap_manifest: u32,
    /// The included paths the entries lie under, relative to cache_dir.
    pub include: Vec<Name>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub header: Header,
    /// Sorted by path bytes.
    pub entries: Vec<Entry>,
}

#[derive(Serialize, Deserialize)]
struct PiecesLine {
    path: Name,
    pieces: String,
}

/// What hashing cost, for logs and the benchmark.
#[derive(Debug, Default, Clone, Copy)]
pub struct HashStats {
    pub files: u64,
    pub bytes: u64,
    pub seconds: f64,
}

/// A file's digest taken before its manifest entry was scanned, which holds for the entry
/// of this size and mtime (the one who took it vouches that nothing else changed since).
pub struct Known {
    pub size: u64,
    pub mtime_ns: i64,
    pub digest: pieces::Digest,
}

impl Manifest {
    /// Walks `root/<include>…` (never following symlinks) into a manifest without content
    /// hashes; [`Manifest::hash`] adds them.
    pub fn scan(root: &Path, include: &[PathBuf]) -> Result<Manifest> {
        Ok(Manifest {
            header: Header {
                stagesnap_manifest: FORMAT,
                include: include.iter().map(|p| Name::from_path(p)).collect(),
            },
            entries: walk::finish(walk::scan(root, include)?).0,
        })
    }

    /// [`Manifest::scan`] plus every regular file's hash: the manifest a snapshot stores.
    pub fn capture(root: &Path, include: &[PathBuf]) -> Result<Manifest> {
        let mut m = Manifest::scan(root, include)?;
        m.hash(root, |_| true)?;
        Ok(m)
    }

    /// Hashes the regular files `which` selects (the largest first, on every core: on a warm
    /// cache blake3 outruns one core's reads).
    pub fn hash(&mut self, root: &Path, which: impl Fn(&Entry) -> bool) -> Result<HashStats> {
        let started = Instant::now();
        let mut todo: Vec<usize> = (0..self.entries.len())
            .filter(|&i| self.entries[i].kind == Kind::File && which(&self.entries[i]))
            .collect();
        todo.sort_by_key(|&i| std::cmp::Reverse(self.entries[i].size));
        let paths: Vec<&Name> = todo.iter().map(|&i| &self.entries[i].path).collect();
        let hashes = hash_files(root, &paths)?;
        let mut stats = HashStats::default();
        for (i, digest) in todo.into_iter().zip(hashes) {
            stats.files += 1;
            stats.bytes += self.entries[i].size;
            self.entries[i].blake3 = Some(digest.blake3);
            self.entries[i].pieces = digest.pieces;
        }
        stats.seconds = started.elapsed().as_secs_f64();
        Ok(stats)
    }

    /// Gives the regular files not hashed yet the digest `known` holds for them at their
    /// size and mtime; returns how many got one.
    pub fn take_known(&mut self, mut known: std::collections::HashMap<Name, Known>) -> u64 {
        let mut taken = 0;
        for e in &mut self.entries {
            if e.kind != Kind::File || e.blake3.is_some() {
                continue;
            }
            if let Some(k) = known.remove(&e.path)
                && (k.size, k.mtime_ns) == (e.size, e.mtime_ns)
            {
                e.blake3 = Some(k.digest.blake3);
                e.pieces = k.digest.pieces;
                taken += 1;
            }
        }
        taken
    }

    /// Hashes the files whose content cannot be judged from size and mtime alone against
    /// `reference`: same size, different mtime (rsync's quick check, made exact). With `all`,
    /// every file. Files hashed already (by a restore by content) are not read again.
    pub fn hash_against(
        &mut self,
        root: &Path,
        reference: &Manifest,
        all: bool,
    ) -> Result<HashStats> {
        // Both sides are sorted by path: one merge, no map of either.
        let mut suspects = std::collections::HashSet::new();
        let mut refs = reference.entries.iter().peekable();
        for e in &self.entries {
            while refs.next_if(|r| r.path < e.path).is_some() {}
            let suspect = all
                || refs.peek().is_some_and(|r| {
                    r.path == e.path
                        && r.kind == Kind::File
                        && r.size == e.size
                        && r.mtime_ns != e.mtime_ns
                });
            if suspect {
                suspects.insert(e.path.clone());
            }
        }
        self.hash(root, |e| e.blake3.is_none() && suspects.contains(&e.path))
    }

    /// The manifest as stored: JSON lines.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec(&self.header).expect("header serializes");
        out.push(b'\n');
        for e in &self.entries {
            serde_json::to_writer(&mut out, e).expect("entry serializes");
            out.push(b'\n');
        }
        out
    }

    /// The piece digests of the entries that have them, one JSON line per entry (`path`,
    /// `pieces`); empty when none has. On the large sample they are most of the bytes a
    /// manifest would otherwise hold, and every restore reads the manifest.
    pub fn pieces_to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for e in self.entries.iter().filter(|e| e.pieces.is_some()) {
            serde_json::to_writer(
                &mut out,
                &PiecesLine {
                    path: e.path.clone(),
                    pieces: e.pieces.clone().unwrap_or_default(),
                },
            )
            .expect("pieces serialize");
            out.push(b'\n');
        }
        out
    }

    /// Gives the entries the piece digests that [`Manifest::pieces_to_bytes`] wrote.
    pub fn attach_pieces(&mut self, bytes: &[u8]) -> std::result::Result<(), String> {
        for (n, line) in bytes.split(|&b| b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let p: PiecesLine =
                serde_json::from_slice(line).map_err(|e| format!("line {}: {e}", n + 1))?;
            let i = self
                .entries
                .binary_search_by(|e| e.path.cmp(&p.path))
                .map_err(|_| format!("line {}: no such entry in the manifest", n + 1))?;
            self.entries[i].pieces = Some(p.pieces);
        }
        Ok(())
    }

    /// Parses [`Manifest::to_bytes`]; the error says which line is wrong.
    pub fn from_bytes(bytes: &[u8]) -> std::result::Result<Manifest, String> {
        let mut lines = bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty());
        let header: Header = serde_json::from_slice(lines.next().ok_or("it is empty")?)
            .map_err(|e| format!("line 1: {e}"))?;
        if header.stagesnap_manifest > FORMAT {
            return Err(format!(
                "format {} is newer than this stagesnap reads ({FORMAT}); upgrade stagesnap",
                header.stagesnap_manifest
            ));
        }
        let entries = lines
            .enumerate()
            .map(|(n, l)| serde_json::from_slice(l).map_err(|e| format!("line {}: {e}", n + 2)))
            .collect::<std::result::Result<Vec<Entry>, String>>()?;
        Ok(Manifest { header, entries })
    }

    /// Checks a manifest read from the store, which anyone who can write there can edit and
    /// vouch for again in meta.json, before anything acts on it: the restore walks, deletes and
    /// creates exactly what it describes. Entries must lie below the configured included
    /// paths (each present, as a directory or a file), be plain relative paths in strict
    /// order, each below a directory entry (never below a symlink or file), with hardlink
    /// groups inside the manifest and devices only where `allowed` permits them; and at
    /// least one node directory, as create refuses data without one, so a manifest emptied
    /// of them cannot wipe every node. The error names the first bad entry.
    pub fn check(&self, allowed: &Allowed) -> std::result::Result<(), String> {
        let include: Vec<Name> = allowed.include.iter().map(|p| Name::from_path(p)).collect();
        if self.header.include != include {
            let show = |names: &[Name]| {
                let v: Vec<String> = names.iter().map(Name::display).collect();
                v.join(" ")
            };
            return Err(format!(
                "its include ({}) is not the include its meta.json vouches for ({})",
                show(&self.header.include),
                show(&include)
            ));
        }
        let mut dirs: std::collections::HashSet<&[u8]> = std::collections::HashSet::new();
        let (mut roots, mut nodes) = (0, 0);
        for (i, e) in self.entries.iter().enumerate() {
            let bad = |why: &str| Err(format!("entry {} (line {}) {why}", e.path.display(), i + 2));
            let path = e.path.0.as_slice();
            if !plain_relative(path) {
                return bad(
                    "is not a plain relative path (no leading '/', no empty, '.' or '..' part)",
                );
            }
            if i > 0 && self.entries[i - 1].path >= e.path {
                return bad("is out of order or repeated");
            }
            let parent = path.iter().rposition(|&b| b == b'/').map(|at| &path[..at]);
            if include.contains(&e.path) {
                if !matches!(e.kind, Kind::Dir | Kind::File) {
                    return bad("is an included path but neither a directory nor a file");
                }
                roots += 1;
            } else if !parent.is_some_and(|p| dirs.contains(p)) {
                return bad("is not below a directory entry of an included path");
            } else if e.kind == Kind::Dir && include.iter().any(|r| Some(r.0.as_slice()) == parent)
            {
                nodes += 1;
            }
            if matches!(e.kind, Kind::Char | Kind::Block) && !allowed.devices {
                return bad("is a device; devices are restored only with restore_devices = true");
            }
            if let Some(link) = &e.link {
                // The group's first path in order, with the same type: never a directory, and
                // never anything outside the manifest.
                let leader = self.entries[..=i]
                    .binary_search_by(|x| x.path.cmp(link))
                    .ok()
                    .map(|at| &self.entries[at]);
                if !leader.is_some_and(|l| {
                    l.kind != Kind::Dir && l.kind == e.kind && l.link.as_ref() == Some(link)
                }) {
                    return bad(&format!(
                        "is hardlinked to {}, which is not an earlier entry of its kind in this snapshot",
                        link.display()
                    ));
                }
            }
            if e.kind == Kind::Dir {
                dirs.insert(path);
            }
        }
        if roots < include.len() {
            let missing = include
                .iter()
                .find(|r| self.entries.binary_search_by(|e| e.path.cmp(r)).is_err())
                .map_or_else(String::new, Name::display);
            return Err(format!("has no entry for the included path {missing}"));
        }
        if nodes == 0 {
            return Err(
                "holds no node directory: restoring it would delete every node directory".into(),
            );
        }
        Ok(())
    }

    /// Non-directory entries and the bytes of regular files.
    pub fn totals(&self) -> (u64, u64) {
        let files = self.entries.iter().filter(|e| e.kind != Kind::Dir).count() as u64;
        (files, self.entries.iter().map(|e| e.size).sum())
    }
}

/// What a manifest read from the store may hold here; see [`Manifest::check`].
pub struct Allowed<'a> {
    /// The included paths, relative to cache_dir: the configured ones, or (for the check of a
    /// manifest itself) the snapshot's own, once found to lie within them.
    pub include: &'a [PathBuf],
    /// `restore_devices`: whether block and character device entries may be restored.
    pub devices: bool,
}

/// A relative path of plain components: no leading `/`, no empty, `.` or `..` component, no NUL.
fn plain_relative(path: &[u8]) -> bool {
    path.split(|&b| b == b'/')
        .all(|c| !c.is_empty() && c != b"." && c != b".." && !c.contains(&0))
}

/// blake3 of each file below `root`, in order, on up to one thread per core.
fn hash_files(root: &Path, paths: &[&Name]) -> Result<Vec<pieces::Digest>> {
    let top = crate::sys::DirFd::open(root).map_err(|e| {
        fail(
            Code::Failure,
            format!("cannot open {}: {e}", root.display()),
        )
    })?;
    // Taken from the end of the queue: reversed, the files go in order.
    let jobs: Vec<usize> = (0..paths.len()).rev().collect();
    let per_thread = crate::parallel::each(
        jobs,
        || (vec![0u8; pieces::PIECE], Vec::new()),
        |(buf, hashed), i| {
            signals::check()?;
            hashed.push((i, hash_file(&top, root, paths[i], buf)?));
            Ok(())
        },
    )?;
    let mut hashed: Vec<(usize, pieces::Digest)> =
        per_thread.into_iter().flat_map(|(_, h)| h).collect();
    hashed.sort_unstable_by_key(|(i, _)| *i);
    Ok(hashed.into_iter().map(|(_, h)| h).collect())
}

/// Reads `path` beneath `top` (the tree at `root`) with [`open_beneath`].
fn hash_file(
    top: &crate::sys::DirFd,
    root: &Path,
    path: &Name,
    buf: &mut [u8],
) -> Result<pieces::Digest> {
    let unreadable = |e: std::io::Error| Error::unreadable(&root.join(path.as_path()), e);
    let f = open_beneath(top, path).map_err(unreadable)?;
    pieces::digest(f, buf).map_err(unreadable)
}

/// Opens `path` beneath `top` for reading without following a symlink in any component, so
/// a directory swapped for a symlink since the scan fails instead of leading the read
/// outside; O_NONBLOCK, so a file swapped for a fifo fails instead of blocking.
pub fn open_beneath(top: &crate::sys::DirFd, path: &Name) -> std::io::Result<File> {
    top.parent_of(&path.0).and_then(|(d, name)| {
        d.open_file(
            name,
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NONBLOCK,
            0,
        )
    })
}

/// What happened to an entry between two trees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChangeCode {
    Added,
    Removed,
    /// Content: a file's bytes, a symlink's target, a device's numbers.
    Content,
    /// Type: a file became a directory, and so on.
    Type,
    /// Metadata only: mode, owner, mtime, xattrs, hardlink group, holes.
    Meta,
}

impl ChangeCode {
    pub fn symbol(self) -> &'static str {
        match self {
            ChangeCode::Added => "+",
            ChangeCode::Removed => "-",
            ChangeCode::Content => "M",
            ChangeCode::Type => "T",
            ChangeCode::Meta => "U",
        }
    }
}

impl Serialize for ChangeCode {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.symbol())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub code: ChangeCode,
    /// `data/node1`, or the included path itself for entries outside any node directory.
    pub node: String,
    /// Relative to the node (`.` for the node directory itself).
    pub rel: Name,
    /// The full path, relative to cache_dir.
    pub path: Name,
    /// What differs: size, content, target, rdev, type, mode, uid, gid, mtime, xattrs, link, holes.
    pub fields: Vec<&'static str>,
    /// Bytes of the regular file involved (the new side's, or the old side's when removed).
    pub bytes: u64,
}

impl Change {
    /// `M data/node1 lib/global_db/mdbx.dat`.
    pub fn line(&self) -> String {
        let node = Name(self.node.clone().into_bytes()).display();
        let node = if node.contains(' ') {
            format!("\"{node}\"")
        } else {
            node
        };
        format!("{} {node} {}", self.code.symbol(), self.rel.display())
    }

    /// A change in the content of regular file `e` that its metadata does not show (the delta
    /// engine's recheck of files being written).
    pub fn content(include: &[Name], e: &Entry) -> Change {
        let (node, rel) = node_of(include, &e.path, false);
        Change {
            code: ChangeCode::Content,
            node,
            rel,
            path: e.path.clone(),
            fields: vec!["content"],
            bytes: e.size,
        }
    }

    /// The line with what differs, for error messages.
    pub fn described(&self) -> String {
        if self.fields.is_empty() {
            self.line()
        } else {
            format!("{} ({})", self.line(), self.fields.join(", "))
        }
    }
}

/// Every difference from `old` to `new`, in path order. Without a hash on both sides a file's
/// content is judged by its size.
pub fn compare(old: &Manifest, new: &Manifest) -> Vec<Change> {
    let include = &old.header.include;
    let mut out = Vec::new();
    let (mut a, mut b) = (old.entries.iter().peekable(), new.entries.iter().peekable());
    loop {
        let (code, fields, o, n) = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(o), Some(n)) if o.path == n.path => {
                let (o, n) = (a.next().unwrap(), b.next().unwrap());
                let fields = differences(o, n);
                let code = if o.kind != n.kind {
                    ChangeCode::Type
                } else if fields.iter().any(|f| CONTENT.contains(f)) {
                    ChangeCode::Content
                } else if !fields.is_empty() {
                    ChangeCode::Meta
                } else {
                    continue;
                };
                (code, fields, Some(o), Some(n))
            }
            (Some(o), n) if n.is_none_or(|n| o.path < n.path) => {
                (ChangeCode::Removed, vec![], a.next(), None)
            }
            _ => (ChangeCode::Added, vec![], None, b.next()),
        };
        let either = n.or(o).expect("one side has the entry");
        let (node, rel) = node_of(
            include,
            &either.path,
            o.or(n).is_some_and(|e| e.kind == Kind::Dir),
        );
        out.push(Change {
            code,
            node,
            rel,
            path: either.path.clone(),
            fields,
            bytes: either.size,
        });
    }
    out
}

const CONTENT: &[&str] = &["size", "content", "target", "rdev"];

fn differences(o: &Entry, n: &Entry) -> Vec<&'static str> {
    let mut f = Vec::new();
    if o.kind != n.kind {
        f.push("type");
    }
    if o.size != n.size {
        f.push("size");
    } else if let (Some(x), Some(y)) = (&o.blake3, &n.blake3)
        && x != y
    {
        f.push("content");
    }
    if o.target != n.target {
        f.push("target");
    }
    if o.rdev != n.rdev {
        f.push("rdev");
    }
    if o.mode != n.mode {
        f.push("mode");
    }
    if o.uid != n.uid {
        f.push("uid");
    }
    if o.gid != n.gid {
        f.push("gid");
    }
    if o.mtime_ns != n.mtime_ns {
        f.push("mtime");
    }
    if o.xattrs != n.xattrs {
        f.push("xattrs");
    }
    if o.link != n.link {
        f.push("link");
    }
    // Holes filled in cost disk, not correctness; holes appearing is `rsync -S` or `cp`
    // turning written zeros into holes, with the same content: not a difference.
    if o.sparse && !n.sparse && o.kind == Kind::File && n.kind == Kind::File {
        f.push("holes");
    }
    f
}

/// The node directory a path belongs to (`data/node1`) and the path below it.
fn node_of(include: &[Name], path: &Name, is_dir: bool) -> (String, Name) {
    for root in include {
        if *path == *root {
            return (
                String::from_utf8_lossy(&root.0).into_owned(),
                Name(b".".to_vec()),
            );
        }
        let Some(rest) = path
            .0
            .strip_prefix(root.0.as_slice())
            .and_then(|r| r.strip_prefix(b"/"))
        else {
            continue;
        };
        let root_text = String::from_utf8_lossy(&root.0);
        return match rest.iter().position(|&b| b == b'/') {
            Some(i) => (
                format!("{root_text}/{}", String::from_utf8_lossy(&rest[..i])),
                Name(rest[i + 1..].to_vec()),
            ),
            None if is_dir => (
                format!("{root_text}/{}", String::from_utf8_lossy(rest)),
                Name(b".".to_vec()),
            ),
            None => (root_text.into_owned(), Name(rest.to_vec())),
        };
    }
    (String::new(), path.clone())
}

/// Per-node counts of a list of changes, for `status` and `diff --stat`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NodeSummary {
    pub node: String,
    pub added: u64,
    pub removed: u64,
    /// Content or type changed.
    pub modified: u64,
    /// Metadata only.
    pub metadata: u64,
    /// Bytes of the regular files added, removed or modified.
    pub bytes: u64,
}

/// One summary per node that has changes, in node order (`node2` before `node10`).
pub fn summarize(changes: &[Change]) -> Vec<NodeSummary> {
    let mut by_node: Vec<NodeSummary> = Vec::new();
    for c in changes {
        let s = match by_node.iter_mut().position(|s| s.node == c.node) {
            Some(i) => &mut by_node[i],
            None => {
                by_node.push(NodeSummary {
                    node: c.node.clone(),
                    ..Default::default()
                });
                by_node.last_mut().expect("just pushed")
            }
        };
        match c.code {
            ChangeCode::Added => s.added += 1,
            ChangeCode::Removed => s.removed += 1,
            ChangeCode::Content | ChangeCode::Type => s.modified += 1,
            ChangeCode::Meta => s.metadata += 1,
        }
        if c.code != ChangeCode::Meta {
            s.bytes += c.bytes;
        }
    }
    by_node.sort_by_key(|s| crate::tree::natural_key(&s.node));
    by_node
}

/// A live scan of `include` below `root`, comparable with `reference`: hashes where size and
/// mtime cannot tell (or everywhere with `full`). Logs what it cost.
pub fn scan_live(
    root: &Path,
    include: &[PathBuf],
    reference: &Manifest,
    full: bool,
) -> Result<Manifest> {
    let started = Instant::now();
    let mut live = Manifest::scan(root, include)?;
    let hashed = live.hash_against(root, reference, full)?;
    tracing::debug!(
        entries = live.entries.len(),
        files_hashed = hashed.files,
        bytes_hashed = hashed.bytes,
        seconds = format!("{:.3}", started.elapsed().as_secs_f64()),
        "live_scanned"
    );
    Ok(live)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, size: u64, hash: &str) -> Entry {
        Entry {
            path: Name(path.as_bytes().to_vec()),
            kind: Kind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_ns: 1_000_000_000_500,
            size,
            blake3: Some(hash.into()),
            pieces: None,
            sparse: false,
            target: None,
            rdev: None,
            xattrs: vec![],
            link: None,
        }
    }

    fn dir(path: &str) -> Entry {
        Entry {
            kind: Kind::Dir,
            size: 0,
            blake3: None,
            pieces: None,
            ..file(path, 0, "")
        }
    }

    fn manifest(entries: Vec<Entry>) -> Manifest {
        Manifest {
            header: Header {
                stagesnap_manifest: FORMAT,
                include: vec![Name(b"data".to_vec())],
            },
            entries,
        }
    }

    #[test]
    fn names_round_trip_and_display_on_one_line() {
        for raw in [
            &b"plain"[..],
            b"with space",
            b"new\nline",
            b"\xff\xfe bad",
            b"back\\slash",
            b"",
        ] {
            let name = Name(raw.to_vec());
            let json = serde_json::to_string(&name).unwrap();
            assert_eq!(serde_json::from_str::<Name>(&json).unwrap(), name, "{json}");
            assert!(!name.display().contains('\n'));
        }
        assert_eq!(Name(b"a b".to_vec()).display(), "a b");
        assert_eq!(Name(b"a\nb".to_vec()).display(), "\"a\\nb\"");
        assert_eq!(Name(b"\xffx".to_vec()).display(), "\"\\xffx\"");
        assert_eq!(
            serde_json::to_string(&Name(b"\xff".to_vec())).unwrap(),
            r#"{"hex":"ff"}"#
        );
    }

    #[test]
    fn manifest_round_trips_through_bytes() {
        let mut e = file("data/node1/f", 3, "abc");
        e.xattrs = vec![Xattr {
            name: Name(b"user.x".to_vec()),
            value: "00ff".into(),
        }];
        e.link = Some(Name(b"data/node1/e".to_vec()));
        let m = manifest(vec![dir("data"), e]);
        assert_eq!(Manifest::from_bytes(&m.to_bytes()).unwrap(), m);
        assert!(Manifest::from_bytes(b"{\"stagesnap_manifest\":99,\"include\":[]}\n").is_err());
    }

    #[test]
    fn changes_have_codes_and_nodes() {
        let old = manifest(vec![
            dir("data"),
            dir("data/node1"),
            file("data/node1/content", 3, "a"),
            file("data/node1/gone", 1, "g"),
            file("data/node1/meta", 3, "m"),
            file("data/node1/same", 3, "s"),
            file("data/node1/type", 3, "t"),
            file("data/top", 1, "x"),
        ]);
        let mut content = file("data/node1/content", 3, "b");
        content.mtime_ns += 1;
        let mut meta = file("data/node1/meta", 3, "m");
        meta.mode = 0o600;
        let new = manifest(vec![
            dir("data"),
            dir("data/node1"),
            file("data/node1/added", 5, "n"),
            content,
            meta,
            file("data/node1/same", 3, "s"),
            dir("data/node1/type"),
            dir("data/node2"),
            file("data/top", 1, "x"),
        ]);
        let lines: Vec<String> = compare(&old, &new).iter().map(Change::line).collect();
        assert_eq!(
            lines,
            [
                "+ data/node1 added",
                "M data/node1 content",
                "- data/node1 gone",
                "U data/node1 meta",
                "T data/node1 type",
                "+ data/node2 .",
            ]
        );
        let summary = summarize(&compare(&old, &new));
        assert_eq!(summary[0].node, "data/node1");
        assert_eq!(
            (
                summary[0].added,
                summary[0].removed,
                summary[0].modified,
                summary[0].metadata
            ),
            (1, 1, 2, 1)
        );
        assert_eq!(summary[0].bytes, 5 + 3 + 1);
        assert!(compare(&old, &old).is_empty());
    }

    #[test]
    fn nanoseconds_count_and_only_filled_holes_do() {
        let a = file("data/f", 1, "h");
        let mut b = a.clone();
        b.mtime_ns += 1;
        assert_eq!(
            compare(&manifest(vec![a.clone()]), &manifest(vec![b]))[0].fields,
            ["mtime"]
        );
        let mut sparse = a.clone();
        sparse.sparse = true;
        assert!(compare(&manifest(vec![a.clone()]), &manifest(vec![sparse.clone()])).is_empty());
        assert_eq!(
            compare(&manifest(vec![sparse]), &manifest(vec![a]))[0].fields,
            ["holes"]
        );
    }

    #[test]
    fn stored_manifests_are_checked() {
        let include = [PathBuf::from("data")];
        let allowed = Allowed {
            include: &include,
            devices: false,
        };
        let good = vec![dir("data"), dir("data/n1"), file("data/n1/f", 1, "h")];
        assert_eq!(manifest(good.clone()).check(&allowed), Ok(()));
        let refused = |extra: Entry| {
            let mut entries = good.clone();
            entries.push(extra);
            manifest(entries).check(&allowed).unwrap_err()
        };
        for bad in [
            "data/n1/./x",
            "data/n1//x",
            "data/n1/x/",
            "data/n1/\0",
            "/data/n1/x",
        ] {
            let why = refused(file(bad, 1, "h"));
            assert!(why.contains("is not a plain relative path"), "{bad}: {why}");
        }
        let mut linked = file("data/n1/g", 1, "h");
        linked.link = Some(Name(b"data/n1".to_vec()));
        assert!(refused(linked).contains("is hardlinked to data/n1"));
        let mut group = good.clone();
        group[2].link = Some(Name(b"data/n1/f".to_vec()));
        let mut member = file("data/n1/g", 1, "h");
        member.link = Some(Name(b"data/n1/f".to_vec()));
        group.push(member);
        assert_eq!(manifest(group).check(&allowed), Ok(()));
    }

    #[test]
    fn nodes_of_paths() {
        let inc = [Name(b"data".to_vec())];
        let n = |p: &str, d| {
            let (node, rel) = node_of(&inc, &Name(p.as_bytes().to_vec()), d);
            (node, rel.display())
        };
        assert_eq!(n("data", true), ("data".into(), ".".into()));
        assert_eq!(n("data/node1", true), ("data/node1".into(), ".".into()));
        assert_eq!(n("data/README", false), ("data".into(), "README".into()));
        assert_eq!(
            n("data/node1/lib/x", false),
            ("data/node1".into(), "lib/x".into())
        );
    }
}
