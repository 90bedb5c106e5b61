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
#[derive(Debug, Clone, PartialEq, Eq)]
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
        None => of(&[]),
        Some(only) if values.is_empty() => Digest {
            blake3: only.finalize().to_hex().to_string(),
            pieces: None,
        },
        Some(last) => {
            values.push(last.finalize_non_root());
            of(&values)
        }
    })
}

/// The digest of a file whose pieces have the chaining values `values`: two or more (for an
/// empty file, none).
fn of(values: &[ChainingValue]) -> Digest {
    if values.is_empty() {
        return Digest {
            blake3: blake3::hash(b"").to_hex().to_string(),
            pieces: None,
        };
    }
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

/// The digest of `file`, now `size` bytes, which had digest `old` at `old_size` bytes and
/// since then was written only in the byte ranges `written`: the pieces those touch (and
/// those from where the shorter of the two sizes ends) are read and hashed again, the others
/// keep their values. A file of one piece, before or after, is read whole.
pub fn patched(
    file: &std::fs::File,
    old: &Digest,
    old_size: u64,
    size: u64,
    written: &[(u64, u64)],
    buf: &mut [u8],
) -> std::io::Result<Digest> {
    use std::os::unix::fs::FileExt;
    let count = size.div_ceil(PIECE as u64);
    let kept = old
        .pieces
        .as_deref()
        .and_then(parse)
        .filter(|v| v.len() as u64 == old_size.div_ceil(PIECE as u64));
    let (Some(mut values), true) = (kept, count > 1) else {
        let mut from_start = file;
        std::io::Seek::seek(&mut from_start, std::io::SeekFrom::Start(0))?;
        return digest(from_start, buf);
    };
    let piece = PIECE as u64;
    let unchanged_below = old_size.min(size) / piece;
    values.resize(count as usize, [0; 32]);
    for (i, v) in values.iter_mut().enumerate() {
        let (start, end) = (i as u64 * piece, (i as u64 + 1) * piece);
        if i as u64 >= unchanged_below || written.iter().any(|&(a, b)| a < end && b > start) {
            let n = (size - start).min(piece) as usize;
            file.read_exact_at(&mut buf[..n], start)?;
            *v = value(&buf[..n], i as u64);
        }
    }
    Ok(of(&values))
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
    fn a_patched_digest_is_the_full_digest_of_the_file_as_it_is() {
        use std::io::Write;
        let mut buf = vec![0u8; PIECE];
        let data: Vec<u8> = (0..5 * PIECE + 77)
            .map(|i| (i * 13 + i / 999) as u8)
            .collect();
        let old = digest(&data[..], &mut buf).unwrap();
        let p = PIECE as u64;
        // (new size, ranges written): at a piece boundary, across one, grown, shrunk, shrunk
        // to one piece, grown from the last partial piece.
        let cases: &[(u64, &[(u64, u64)])] = &[
            (data.len() as u64, &[(2 * p - 4096, 2 * p)]),
            (data.len() as u64, &[(3 * p - 10, 3 * p + 10), (0, 1)]),
            (9 * p + 5, &[(data.len() as u64, 9 * p + 5)]),
            (2 * p + 3, &[]),
            (p - 1, &[]),
            (5 * p + 100, &[(5 * p + 77, 5 * p + 100)]),
        ];
        for &(size, written) in cases {
            let mut now = data.clone();
            now.resize(size as usize, 0);
            for &(a, b) in written {
                for i in a.min(size)..b.min(size) {
                    now[i as usize] = now[i as usize].wrapping_add(1 + (i % 7) as u8);
                }
            }
            let mut f = tempfile::tempfile().unwrap();
            f.write_all(&now).unwrap();
            let got = patched(&f, &old, data.len() as u64, size, written, &mut buf).unwrap();
            assert_eq!(
                got,
                digest(&now[..], &mut buf).unwrap(),
                "{size} {written:?}"
            );
        }
    }

    #[test]
    fn left_subtrees() {
        assert_eq!([2, 3, 4, 5, 8, 9].map(left_len), [1, 2, 2, 4, 4, 8]);
        assert!(parse("ab").is_none());
        assert!(parse(&"zz".repeat(32)).is_none());
    }
}
