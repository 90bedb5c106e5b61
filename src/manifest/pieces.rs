//! File digests built from 1 MiB pieces. A file of more than one piece records, beside its
//! BLAKE3 hash, the chaining value of each piece: the pieces are subtrees of BLAKE3's own
//! tree, so the whole-file hash is merged from them at no extra cost, and a restore can tell
//! which pieces of a large file a suite changed by hashing the live file alone, reading only
//! those pieces from a snapshot that is slow to read (a mounted squashfs image).

use std::io::Read;

use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root,
};

/// Bytes per piece: a power-of-two number of BLAKE3 chunks, so that every piece is a subtree.
pub const PIECE: usize = 1 << 20;

/// A file's digest: its BLAKE3 hash (hex) and, for a file of two pieces or more, the
/// chaining value of each piece (hex, 64 digits per piece).
pub struct Digest {
    pub blake3: String,
    pub pieces: Option<String>,
}

/// The chaining value of piece `index`, whose bytes are `bytes` (PIECE of them, or fewer
/// for the last), in a file of more than one piece.
pub fn value(bytes: &[u8], index: u64) -> ChainingValue {
    blake3::Hasher::new()
        .set_input_offset(index * PIECE as u64)
        .update(bytes)
        .finalize_non_root()
}

/// The pieces' values from their manifest form; None when malformed.
pub fn parse(hex: &str) -> Option<Vec<ChainingValue>> {
    if !hex.len().is_multiple_of(64) {
        return None;
    }
    (0..hex.len() / 64)
        .map(|i| {
            let mut v = [0u8; 32];
            for (j, byte) in v.iter_mut().enumerate() {
                *byte =
                    u8::from_str_radix(hex.get(i * 64 + 2 * j..i * 64 + 2 * j + 2)?, 16).ok()?;
            }
            Some(v)
        })
        .collect()
}

/// Reads `source` to its end in `buf` (at least PIECE bytes) and returns its digest.
pub fn digest(mut source: impl Read, buf: &mut [u8]) -> std::io::Result<Digest> {
    let buf = &mut buf[..PIECE];
    let mut values: Vec<ChainingValue> = Vec::new();
    // The latest piece, finalized once it is known whether it is the only one (the root).
    let mut latest: Option<blake3::Hasher> = None;
    let mut index = 0u64;
    loop {
        let n = fill(&mut source, buf)?;
        if n == 0 {
            break;
        }
        if let Some(done) = latest.take() {
            values.push(done.finalize_non_root());
        }
        let mut hasher = blake3::Hasher::new();
        hasher
            .set_input_offset(index * PIECE as u64)
            .update(&buf[..n]);
        latest = Some(hasher);
        index += 1;
        if n < PIECE {
            break;
        }
    }
    Ok(match latest {
        None => Digest {
            blake3: blake3::hash(b"").to_hex().to_string(),
            pieces: None,
        },
        Some(only) if values.is_empty() => Digest {
            blake3: only.finalize().to_hex().to_string(),
            pieces: None,
        },
        Some(last) => {
            values.push(last.finalize_non_root());
            let (left, right) = values.split_at(left_len(values.len()));
            let root = merge_subtrees_root(&subtree(left), &subtree(right), Mode::Hash);
            Digest {
                blake3: root.to_hex().to_string(),
                pieces: Some(
                    values
                        .iter()
                        .flatten()
                        .map(|b| format!("{b:02x}"))
                        .collect(),
                ),
            }
        }
    })
}

/// Reads until `buf` is full or the source ends; returns the bytes read.
fn fill(source: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match source.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Pieces in the left subtree of `n` (two or more): BLAKE3's tree is left-full, its left
/// subtree the largest power of two below the whole.
fn left_len(n: usize) -> usize {
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// The chaining value of the (non-root) subtree over `values`.
fn subtree(values: &[ChainingValue]) -> ChainingValue {
    if values.len() == 1 {
        return values[0];
    }
    let (left, right) = values.split_at(left_len(values.len()));
    merge_subtrees_non_root(&subtree(left), &subtree(right), Mode::Hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_blake3_and_pieces_are_its_subtrees() {
        let mut buf = vec![0u8; PIECE];
        for size in [
            0,
            1,
            PIECE - 1,
            PIECE,
            PIECE + 1,
            2 * PIECE,
            3 * PIECE + 5,
            4 * PIECE,
            5 * PIECE + PIECE / 2,
            8 * PIECE + 1,
        ] {
            let data: Vec<u8> = (0..size).map(|i| (i * 7 + i / 4093) as u8).collect();
            let d = digest(&data[..], &mut buf).unwrap();
            assert_eq!(d.blake3, blake3::hash(&data).to_hex().to_string(), "{size}");
            let pieces = d.pieces.as_deref().map(|p| parse(p).unwrap());
            assert_eq!(pieces.is_some(), size > PIECE, "{size}");
            for (i, v) in pieces.unwrap_or_default().iter().enumerate() {
                let end = ((i + 1) * PIECE).min(size);
                assert_eq!(
                    *v,
                    value(&data[i * PIECE..end], i as u64),
                    "{size} piece {i}"
                );
            }
        }
    }

    #[test]
    fn left_subtrees() {
        assert_eq!([2, 3, 4, 5, 8, 9].map(left_len), [1, 2, 2, 4, 4, 8]);
        assert!(parse("ab").is_none());
        assert!(parse(&"zz".repeat(32)).is_none());
    }
}
