//! What a remote holds, under its prefix:
//!
//! ```text
//! snapshots/<name>   one snapshot: zstd JSON of its meta.json, manifest, piece digests and,
//!                    for every regular file, the content digests of its pieces; written
//!                    last, so a snapshot is there whole or not at all
//! index/<blake3>     zstd JSON: for each pack a push wrote, where each of its pieces lies
//! packs/<blake3>     zstd-compressed pieces back to back; named by the blake3 of its bytes
//! condemned/<blake3> zstd JSON: packs a prune found unused (or repacked); a prune at least
//!                    an hour later removes those still unused, and pushes meanwhile reuse
//!                    none of their pieces
//! ```
//!
//! A piece is [`PIECE`] bytes of one file at a multiple of [`PIECE`], named by the blake3
//! of its content, so identical content anywhere (another file, node, snapshot or runner)
//! is stored once. Objects are named by their content digest, so one is never rewritten.

use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::manifest::Name;

/// Bytes per piece. A suite rewrites scattered 4 KiB database pages in place, which dirties
/// every piece it touches but shifts nothing, so fixed pieces at fixed offsets find all the
/// unchanged content (content-defined chunking pays only for insertions, which databases do
/// not make). 64 KiB keeps a dirtied page's cost at 16 pages where the manifests' 1 MiB
/// pieces would cost 256, while a 3 GB network is still only 49 152 pieces to index.
pub const PIECE: usize = 64 << 10;

/// A pack is uploaded once its compressed pieces reach this size: few requests for many
/// small pieces, and little to redo when a transfer fails. The last pack goes up after the
/// last piece is read, and a push that finds little changed mostly waits for it: 8 MiB
/// halves that wait of 16 MiB packs.
pub const PACK_TARGET: usize = 8 << 20;

/// Version of the objects' layout; readers refuse newer ones.
pub const FORMAT: u32 = 1;

pub const SNAPSHOTS: &str = "snapshots";
pub const INDEX: &str = "index";
pub const PACKS: &str = "packs";
pub const CONDEMNED: &str = "condemned";

pub type Digest = [u8; 32];

pub fn hex(d: &Digest) -> String {
    blake3::Hash::from_bytes(*d).to_hex().to_string()
}

pub fn parse_digest(text: &str) -> Option<Digest> {
    blake3::Hash::from_hex(text).ok().map(|h| *h.as_bytes())
}

/// A regular file's pieces, in order: 64 hex digits each.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Content {
    pub path: Name,
    pub pieces: String,
    /// The file's blake3 as its manifest says (hex), tying these pieces to that version of
    /// it; absent where the manifest holds none (reflink).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
}

impl Content {
    pub fn digests(&self) -> Option<Vec<Digest>> {
        if !self.pieces.len().is_multiple_of(64) {
            return None;
        }
        (0..self.pieces.len() / 64)
            .map(|i| parse_digest(self.pieces.get(i * 64..i * 64 + 64)?))
            .collect()
    }
}

/// `snapshots/<name>`.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotObject {
    pub format: u32,
    /// The pushed snapshot's meta.json.
    pub meta: serde_json::Value,
    /// manifest.jsonl, as stored.
    pub manifest: String,
    /// pieces.jsonl, as stored; empty when the snapshot has none.
    #[serde(default)]
    pub manifest_pieces: String,
    /// Every regular file with content, in manifest order.
    pub content: Vec<Content>,
}

/// Where one piece lies in a pack: its digest (hex), offset, compressed and plain length.
pub type Located = (String, u64, u32, u32);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PackEntry {
    pub id: String,
    pub pieces: Vec<Located>,
}

/// `index/<blake3>`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct IndexObject {
    pub format: u32,
    pub packs: Vec<PackEntry>,
}

/// `condemned/<blake3>`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct CondemnedObject {
    pub format: u32,
    pub packs: Vec<String>,
}

/// One piece in the remote.
#[derive(Debug, Clone)]
pub struct Location {
    pub pack: String,
    pub offset: u64,
    pub stored: u32,
    pub size: u32,
}

/// Every piece the remote's indexes list, by digest.
pub type Pieces = HashMap<Digest, Location>;

impl IndexObject {
    /// Adds this index's pieces to `pieces`, where a piece is listed twice keeping a location
    /// outside the `condemned` packs; the error names what is malformed.
    pub fn add_to(
        &self,
        pieces: &mut Pieces,
        condemned: &HashSet<String>,
    ) -> std::result::Result<(), String> {
        for pack in &self.packs {
            if parse_digest(&pack.id).is_none() {
                return Err(format!("pack id {:?} is not a digest", pack.id));
            }
            for (digest, offset, stored, size) in &pack.pieces {
                let d = parse_digest(digest)
                    .ok_or_else(|| format!("piece {digest:?} is not a digest"))?;
                if *size as usize > PIECE {
                    return Err(format!("piece {digest} is larger than a piece"));
                }
                let here = Location {
                    pack: pack.id.clone(),
                    offset: *offset,
                    stored: *stored,
                    size: *size,
                };
                match pieces.entry(d) {
                    Entry::Occupied(mut there) if condemned.contains(&there.get().pack) => {
                        there.insert(here);
                    }
                    Entry::Occupied(_) => {}
                    Entry::Vacant(slot) => {
                        slot.insert(here);
                    }
                }
            }
        }
        Ok(())
    }
}

/// JSON, zstd-compressed: how every object but a pack is stored. Level 1: on a snapshot
/// object of 20 000 files it compresses as well as level 3 in half the time, which a push
/// that finds little changed spends mostly here.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let json = serde_json::to_vec(value).expect("remote objects serialize");
    zstd::bulk::compress(&json, 1).expect("compressing in memory does not fail")
}

/// Objects larger than this are refused before they are decompressed: the remote is input.
const MAX_OBJECT: usize = 1 << 30;

pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> std::result::Result<T, String> {
    use std::io::Read;
    let mut json = Vec::new();
    zstd::stream::read::Decoder::new(bytes)
        .and_then(|d| d.take(MAX_OBJECT as u64 + 1).read_to_end(&mut json))
        .map_err(|e| format!("not zstd ({e})"))?;
    if json.len() > MAX_OBJECT {
        return Err("larger than 1 GiB once decompressed".into());
    }
    serde_json::from_slice(&json).map_err(|e| format!("not valid JSON of its kind ({e})"))
}

/// A piece's stored bytes back to its content, checked against its digest.
pub fn unpack(stored: &[u8], location: &Location, digest: &Digest) -> Result<Vec<u8>, String> {
    thread_local! {
        // One context per thread: making one per 64 KiB piece cost a tenth of a pull's time.
        static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { RefCell::new(None) };
    }
    let plain = DECOMPRESSOR
        .with_borrow_mut(|slot| {
            let decompressor = match slot {
                Some(d) => d,
                None => slot.insert(zstd::bulk::Decompressor::new()?),
            };
            decompressor.decompress(stored, location.size as usize)
        })
        .map_err(|e| format!("piece {} does not decompress ({e})", hex(digest)))?;
    if plain.len() != location.size as usize || blake3::hash(&plain).as_bytes() != digest {
        return Err(format!("piece {} does not match its digest", hex(digest)));
    }
    Ok(plain)
}

/// A piece's content as a pack stores it.
pub fn compress(plain: &[u8]) -> Vec<u8> {
    thread_local! {
        // One context per thread, as `unpack` keeps: making one per 64 KiB piece is wasted work.
        static COMPRESSOR: RefCell<zstd::bulk::Compressor<'static>> = RefCell::new(
            zstd::bulk::Compressor::new(1).expect("a zstd context needs only memory"),
        );
    }
    COMPRESSOR
        .with_borrow_mut(|compressor| compressor.compress(plain))
        .expect("compressing in memory does not fail")
}

/// Pieces collected into one pack before it is uploaded.
#[derive(Default)]
pub struct Packer {
    pub bytes: Vec<u8>,
    pub pieces: Vec<(Digest, u64, u32, u32)>,
}

impl Packer {
    /// Adds a piece of `size` bytes, [`compress`]ed to `stored`.
    pub fn add(&mut self, digest: Digest, stored: &[u8], size: usize) {
        self.pieces.push((
            digest,
            self.bytes.len() as u64,
            stored.len() as u32,
            size as u32,
        ));
        self.bytes.extend_from_slice(stored);
    }

    pub fn full(&self) -> bool {
        self.bytes.len() >= PACK_TARGET
    }

    /// The pack's bytes and its entry for the index.
    pub fn finish(self) -> (Vec<u8>, PackEntry) {
        let id = blake3::hash(&self.bytes).to_hex().to_string();
        let pieces = self
            .pieces
            .iter()
            .map(|(d, offset, stored, size)| (hex(d), *offset, *stored, *size))
            .collect();
        (self.bytes, PackEntry { id, pieces })
    }
}
