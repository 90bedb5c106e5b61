//! Reads regular files' content straight from a squashfs image, without mounting it or running
//! unsquashfs, so a restore can fetch just the pieces of files that changed.
//!
//! [`Image::open`] indexes an image's regular files by path; [`Image::file`] gives one of them,
//! an [`ImageFile`] that reads bytes at any offset ([`ImageFile::read_exact_at`]) and finds its
//! holes ([`ImageFile::data_from`], [`ImageFile::hole_from`]). An image is shared between threads;
//! each thread reads through its own `ImageFile`.
//!
//! Supports what mksquashfs 4.x writes: squashfs 4.0, little-endian, every compressor (gzip,
//! lzma, lzo, xz, lz4, zstd) and uncompressed metadata, data and fragments (`-noI -noD -noF`),
//! block sizes from 4 KiB to 1 MiB, tail fragments, sparse blocks, and basic and extended file
//! inodes (xattrs, hard links, sparse files). Only regular files are indexed: directories are
//! walked, everything else (symlinks, devices, fifos, sockets, ownership, modes, xattrs) is
//! skipped. A damaged image gives an error, never a panic, and allocations stay bounded by what
//! the image actually holds.

#![warn(missing_docs)]

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::num::TryFromIntError;
use std::ops::Range;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Why an image cannot be opened: the file is unreadable, is not a squashfs 4.0 image, or is
/// damaged. The message names the image, then where the problem lies, outermost first.
#[derive(Debug)]
pub struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error(e.to_string())
    }
}

impl From<TryFromIntError> for Error {
    fn from(e: TryFromIntError) -> Error {
        Error(e.to_string())
    }
}

type Result<T, E = Error> = std::result::Result<T, E>;

/// Says where an error happened, in front of it: "outer: inner".
trait Context<T> {
    fn context(self, outer: impl fmt::Display) -> Result<T>;
    fn with_context<D: fmt::Display>(self, outer: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for Result<T, E> {
    fn context(self, outer: impl fmt::Display) -> Result<T> {
        self.with_context(|| outer)
    }

    fn with_context<D: fmt::Display>(self, outer: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| Error(format!("{}: {}", outer(), e.into().0)))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, outer: impl fmt::Display) -> Result<T> {
        self.with_context(|| outer)
    }

    fn with_context<D: fmt::Display>(self, outer: impl FnOnce() -> D) -> Result<T> {
        self.ok_or_else(|| Error(outer().to_string()))
    }
}

macro_rules! bail {
    ($($message:tt)*) => {
        return Err(Error(format!($($message)*)))
    };
}

const MAGIC: u32 = 0x7371_7368;
const SUPERBLOCK_LEN: usize = 96;
/// Metadata blocks (inode, directory and fragment tables) hold at most this many bytes.
const METADATA_BLOCK_LEN: usize = 8192;
const METADATA_STORED_UNCOMPRESSED: u16 = 1 << 15;
const DATA_STORED_UNCOMPRESSED: u32 = 1 << 24;
const DATA_STORED_LEN_MASK: u32 = DATA_STORED_UNCOMPRESSED - 1;
const NO_FRAGMENT: u32 = u32::MAX;
/// A table the image does not have (no xattrs, no NFS export table).
const ABSENT_TABLE: u64 = u64::MAX;
const FRAGMENT_ENTRY_LEN: usize = 16;
const MIN_BLOCK_SIZE: u32 = 4 << 10;
const MAX_BLOCK_SIZE: u32 = 1 << 20;
/// Fragment blocks the image keeps decompressed (2 MiB at the default block size): the small
/// files of one directory share a few, and threads restoring neighbouring files want the same
/// ones. Files read in path order hit it; in random order nearly every small file misses.
const CACHED_FRAGMENT_BLOCKS: usize = 16;
/// Bounds what a damaged lzma or xz header can make the decoder allocate; mksquashfs's
/// dictionaries are at most one block (1 MiB).
const LZMA_MEMORY_LIMIT: u64 = 64 << 20;

const DIRECTORY_INODE: u16 = 1;
const FILE_INODE: u16 = 2;
const EXTENDED_DIRECTORY_INODE: u16 = 8;
const EXTENDED_FILE_INODE: u16 = 9;

/// A squashfs image opened for reading regular files' content.
pub struct Image {
    path: PathBuf,
    file: File,
    compressor: Compressor,
    block_size: u32,
    fragments: Vec<StoredBlock>,
    files: HashMap<Box<[u8]>, FileInode>,
    /// Every file's data blocks, each file owning a range of them.
    blocks: Vec<StoredBlock>,
    /// The fragment blocks decompressed last, oldest first.
    fragment_cache: Mutex<VecDeque<(u32, Arc<Vec<u8>>)>>,
    /// Idle readers, so decompression contexts and buffers outlive each `ImageFile`.
    readers: Mutex<Vec<Reader>>,
}

/// One regular file of an image.
pub struct ImageFile<'a> {
    image: &'a Image,
    path: &'a [u8],
    inode: &'a FileInode,
    /// Taken from the image's pool on first use, given back on drop.
    reader: RefCell<Option<Reader>>,
}

struct FileInode {
    len: u64,
    /// Its data blocks in `Image::blocks`.
    blocks: Range<usize>,
    /// Where the tail lives: fragment block index and offset in that block.
    tail: Option<(u32, u32)>,
}

/// A data or fragment block as stored: its offset in the image and its size word.
#[derive(Clone, Copy)]
struct StoredBlock {
    start: u64,
    size_word: u32,
}

impl StoredBlock {
    /// A sparse block is all zeros and takes no space in the image.
    fn is_sparse(self) -> bool {
        self.size_word == 0
    }

    fn is_compressed(self) -> bool {
        self.size_word & DATA_STORED_UNCOMPRESSED == 0
    }

    fn stored_len(self) -> usize {
        (self.size_word & DATA_STORED_LEN_MASK) as usize
    }
}

/// What one thread needs to read blocks: a decompressor and scratch buffers.
struct Reader {
    decoder: Decoder,
    /// The stored bytes of the block being decompressed.
    stored: Vec<u8>,
    /// The last data block decompressed for a partial read, named by its start in the image.
    block: Vec<u8>,
    block_start: Option<u64>,
}

impl Reader {
    fn new(decoder: Decoder) -> Reader {
        Reader {
            decoder,
            stored: Vec::new(),
            block: Vec::new(),
            block_start: None,
        }
    }
}

impl Image {
    /// Reads the superblock, the fragment table, and indexes every regular file by its path:
    /// bytes relative to the image root, components joined by b'/', no leading slash. A
    /// symlink at `path` is refused, not followed.
    pub fn open(path: &Path) -> Result<Image> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .with_context(|| format!("cannot open squashfs image {}", path.display()))?;
        let superblock = Superblock::read(&file)
            .with_context(|| format!("{} is not a squashfs 4.0 image", path.display()))?;
        Image::index(path, file, &superblock)
            .with_context(|| format!("{} is damaged", path.display()))
    }

    /// The paths of every regular file, in no order.
    pub fn paths(&self) -> impl Iterator<Item = &[u8]> {
        self.files.keys().map(|k| &**k)
    }

    /// The regular file at `path`, or None.
    pub fn file(&self, path: &[u8]) -> Option<ImageFile<'_>> {
        let (path, inode) = self.files.get_key_value(path)?;
        Some(ImageFile {
            image: self,
            path,
            inode,
            reader: RefCell::new(None),
        })
    }

    fn index(path: &Path, file: File, superblock: &Superblock) -> Result<Image> {
        let file_len = file.metadata()?.len();
        if file_len < superblock.bytes_used {
            bail!(
                "it is truncated: {file_len} bytes, the superblock says {}",
                superblock.bytes_used
            );
        }
        let mut image = Image {
            path: path.to_owned(),
            file,
            compressor: superblock.compressor,
            block_size: superblock.block_size,
            fragments: Vec::new(),
            files: HashMap::new(),
            blocks: Vec::new(),
            fragment_cache: Mutex::new(VecDeque::new()),
            readers: Mutex::new(Vec::new()),
        };
        let end = superblock.bytes_used;
        let mut decoder = Decoder::new(superblock.compressor)?;

        let fragment_locations = image.read_fragment_locations(superblock)?;
        image.fragments = image.read_fragment_table(
            superblock.fragment_count,
            &fragment_locations,
            end,
            &mut decoder,
        )?;

        if !(superblock.inode_table < superblock.directory_table
            && superblock.directory_table <= end)
        {
            bail!("its inode and directory tables are out of order");
        }
        // The directory table runs up to whatever the image stores next: mksquashfs puts the
        // fragment table's metadata blocks there, or the next table's when there are none.
        let directory_end = [
            fragment_locations.first().copied(),
            Some(superblock.fragment_table),
            Some(superblock.export_table),
            Some(superblock.id_table),
            Some(superblock.xattr_table),
            Some(end),
        ]
        .into_iter()
        .flatten()
        .filter(|&start| start != ABSENT_TABLE && start >= superblock.directory_table)
        .min()
        .unwrap_or(end)
        .min(end);
        let inodes = MetadataTable::read(
            &image,
            "inode",
            superblock.inode_table..superblock.directory_table,
            &mut decoder,
        )?;
        let directories = MetadataTable::read(
            &image,
            "directory",
            superblock.directory_table..directory_end,
            &mut decoder,
        )?;
        image.walk(superblock.root_inode, &inodes, &directories, end)?;

        image.idle_readers().push(Reader::new(decoder));
        Ok(image)
    }

    /// The fragment table's index: where each of its metadata blocks is.
    fn read_fragment_locations(&self, superblock: &Superblock) -> Result<Vec<u64>> {
        if superblock.fragment_count == 0 {
            return Ok(Vec::new());
        }
        let entries_bytes = u64::from(superblock.fragment_count) * FRAGMENT_ENTRY_LEN as u64;
        let blocks = entries_bytes.div_ceil(METADATA_BLOCK_LEN as u64);
        let index_end = superblock
            .fragment_table
            .checked_add(blocks * 8)
            .filter(|&index_end| index_end <= superblock.bytes_used)
            .context("its fragment table lies outside the image")?;
        let index = self.read_region(superblock.fragment_table..index_end)?;
        Ok(index
            .chunks_exact(8)
            .map(|location| u64::from_le_bytes(location.try_into().expect("chunks of 8")))
            .collect())
    }

    fn read_fragment_table(
        &self,
        count: u32,
        locations: &[u64],
        end: u64,
        decoder: &mut Decoder,
    ) -> Result<Vec<StoredBlock>> {
        // Grown block by block rather than sized from the superblock's count, so a damaged count
        // cannot ask for more memory than the image's blocks decompress to.
        let mut entries_bytes = Vec::new();
        for &location in locations {
            let longest = (2 + METADATA_BLOCK_LEN) as u64;
            let stored_end = location.saturating_add(longest).min(end);
            if location >= stored_end {
                bail!("its fragment table points outside the image");
            }
            let stored = self.read_region(location..stored_end)?;
            unpack_metadata_block(&stored, decoder, &mut entries_bytes)
                .context("a fragment table block is unreadable")?;
        }
        let wanted = count as usize * FRAGMENT_ENTRY_LEN;
        let entries_bytes = entries_bytes
            .get(..wanted)
            .context("its fragment table is shorter than its fragment count")?;
        entries_bytes
            .chunks_exact(FRAGMENT_ENTRY_LEN)
            .enumerate()
            .map(|(index, entry)| {
                let mut entry = Cursor { bytes: entry };
                let fragment = StoredBlock {
                    start: entry.u64()?,
                    size_word: entry.u32()?,
                };
                self.check_stored_block(fragment, end)
                    .with_context(|| format!("fragment block {index}"))?;
                if fragment.is_sparse() {
                    bail!("fragment block {index} has no size");
                }
                Ok(fragment)
            })
            .collect()
    }

    /// Indexes every regular file below the root directory.
    fn walk(
        &mut self,
        root: u64,
        inodes: &MetadataTable,
        directories: &MetadataTable,
        end: u64,
    ) -> Result<()> {
        let root_position = inodes.position(root >> 16, (root & 0xFFFF) as usize)?;
        let root_listing = inodes
            .cursor_at(root_position)
            .and_then(|mut inode| read_directory_inode(&mut inode))
            .context("the root directory's inode is unreadable")?;
        // Directories cannot be hard-linked: a second visit means a loop.
        let mut visited = HashSet::from([root_position]);
        let mut pending = vec![(Vec::new(), root_listing)];
        while let Some((directory, listing)) = pending.pop() {
            let describe = || format!("directory /{}", String::from_utf8_lossy(&directory));
            let mut entries = directories
                .cursor(u64::from(listing.block), usize::from(listing.offset))
                .and_then(|mut cursor| cursor.take(listing.len))
                .map(|bytes| Cursor { bytes })
                .with_context(describe)?;
            while !entries.is_empty() {
                let count = entries.u32().with_context(describe)? as usize + 1;
                let inode_block = u64::from(entries.u32().with_context(describe)?);
                let _inode_number = entries.u32().with_context(describe)?;
                for _ in 0..count {
                    let entry = read_directory_entry(&mut entries).with_context(describe)?;
                    let mut path = directory.clone();
                    if !path.is_empty() {
                        path.push(b'/');
                    }
                    path.extend_from_slice(entry.name);
                    let describe_entry = || format!("/{}", String::from_utf8_lossy(&path));
                    let position = inodes
                        .position(inode_block, usize::from(entry.inode_offset))
                        .with_context(describe_entry)?;
                    match entry.kind {
                        DIRECTORY_INODE => {
                            if !visited.insert(position) {
                                bail!("{} is part of a directory loop", describe_entry());
                            }
                            let listing = inodes
                                .cursor_at(position)
                                .and_then(|mut inode| read_directory_inode(&mut inode))
                                .with_context(describe_entry)?;
                            pending.push((path, listing));
                        }
                        FILE_INODE => {
                            let file = inodes
                                .cursor_at(position)
                                .and_then(|mut inode| self.read_file_inode(&mut inode, end))
                                .with_context(describe_entry)?;
                            self.files.insert(path.into_boxed_slice(), file);
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads a basic or extended file inode, appending its data blocks to `self.blocks`.
    fn read_file_inode(&mut self, inode: &mut Cursor<'_>, end: u64) -> Result<FileInode> {
        let (blocks_start, len, fragment, fragment_offset) = match read_inode_header(inode)? {
            FILE_INODE => {
                let blocks_start = u64::from(inode.u32()?);
                let fragment = inode.u32()?;
                let fragment_offset = inode.u32()?;
                let len = u64::from(inode.u32()?);
                (blocks_start, len, fragment, fragment_offset)
            }
            EXTENDED_FILE_INODE => {
                let blocks_start = inode.u64()?;
                let len = inode.u64()?;
                let _sparse_bytes = inode.u64()?;
                let _link_count = inode.u32()?;
                let fragment = inode.u32()?;
                let fragment_offset = inode.u32()?;
                let _xattr = inode.u32()?;
                (blocks_start, len, fragment, fragment_offset)
            }
            other => bail!("its directory entry says file, its inode type is {other}"),
        };
        let block_size = u64::from(self.block_size);
        let (block_count, tail) = if fragment == NO_FRAGMENT {
            (len.div_ceil(block_size), None)
        } else {
            let tail_len = len % block_size;
            if fragment as usize >= self.fragments.len()
                || u64::from(fragment_offset) + tail_len > block_size
            {
                bail!("its tail fragment {fragment} (offset {fragment_offset}) does not exist");
            }
            (len / block_size, Some((fragment, fragment_offset)))
        };
        // The block list is read from the table before anything is allocated for it, so a
        // damaged length fails here.
        let size_words = usize::try_from(block_count)
            .ok()
            .and_then(|count| count.checked_mul(4))
            .context("its length is impossible")
            .and_then(|bytes| inode.take(bytes))
            .context("its block list runs past the end of the inode table")?;
        let first = self.blocks.len();
        let mut start = blocks_start;
        for size_word in size_words.chunks_exact(4) {
            let block = StoredBlock {
                start,
                size_word: u32::from_le_bytes(size_word.try_into().expect("chunks of 4")),
            };
            self.check_stored_block(block, end)?;
            self.blocks.push(block);
            start += block.stored_len() as u64;
        }
        Ok(FileInode {
            len,
            blocks: first..self.blocks.len(),
            tail,
        })
    }

    /// Checks a data or fragment block's size word and that it lies inside the image.
    fn check_stored_block(&self, block: StoredBlock, end: u64) -> Result<()> {
        let stored_len = block.stored_len();
        if block.size_word > DATA_STORED_UNCOMPRESSED | DATA_STORED_LEN_MASK
            || stored_len > self.block_size as usize
            || (stored_len == 0 && !block.is_sparse())
        {
            bail!("a block has the invalid size word {:#x}", block.size_word);
        }
        if block.start.saturating_add(stored_len as u64) > end {
            bail!("a block at byte {} lies outside the image", block.start);
        }
        Ok(())
    }

    fn read_region(&self, range: Range<u64>) -> Result<Vec<u8>> {
        let mut bytes = vec![0; usize::try_from(range.end - range.start)?];
        self.file
            .read_exact_at(&mut bytes, range.start)
            .with_context(|| format!("cannot read bytes {}..{}", range.start, range.end))?;
        Ok(bytes)
    }

    fn idle_readers(&self) -> MutexGuard<'_, Vec<Reader>> {
        self.readers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads a stored data or fragment block and decompresses it into the front of `out`,
    /// returning how many bytes it holds.
    fn unpack(
        &self,
        block: StoredBlock,
        decoder: &mut Decoder,
        stored: &mut Vec<u8>,
        out: &mut [u8],
    ) -> io::Result<usize> {
        let stored_len = block.stored_len();
        let read_error = |e: io::Error| {
            io::Error::new(
                e.kind(),
                format!(
                    "reading the block at byte {} of the image: {e}",
                    block.start
                ),
            )
        };
        if !block.is_compressed() {
            let out = out.get_mut(..stored_len).ok_or_else(|| {
                invalid_data(format!(
                    "the uncompressed block at byte {} is larger than a block",
                    block.start
                ))
            })?;
            self.file
                .read_exact_at(out, block.start)
                .map_err(read_error)?;
            return Ok(stored_len);
        }
        if stored.len() < stored_len {
            stored.resize(stored_len, 0);
        }
        let stored = &mut stored[..stored_len];
        self.file
            .read_exact_at(stored, block.start)
            .map_err(read_error)?;
        decoder.decompress(stored, out).map_err(|e| {
            invalid_data(format!(
                "{} decompression of the block at byte {} failed: {e}",
                self.compressor.name(),
                block.start
            ))
        })
    }

    /// The decompressed fragment block `index`, from the cache when it is there.
    fn fragment_block(&self, index: u32, reader: &mut Reader) -> io::Result<Arc<Vec<u8>>> {
        let cache = || {
            self.fragment_cache
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        };
        if let Some((_, block)) = cache().iter().find(|(cached, _)| *cached == index) {
            return Ok(Arc::clone(block));
        }
        let fragment = self.fragments[index as usize];
        let mut block = vec![0; self.block_size as usize];
        let len = self.unpack(
            fragment,
            &mut reader.decoder,
            &mut reader.stored,
            &mut block,
        )?;
        block.truncate(len);
        let block = Arc::new(block);
        let mut cache = cache();
        if cache.len() == CACHED_FRAGMENT_BLOCKS {
            cache.pop_front();
        }
        cache.push_back((index, Arc::clone(&block)));
        Ok(block)
    }
}

impl ImageFile<'_> {
    /// The file's length in bytes.
    #[expect(
        clippy::len_without_is_empty,
        reason = "a file's length is checked against a size, never for emptiness"
    )]
    pub fn len(&self) -> u64 {
        self.inode.len
    }

    /// Fills `buf` with the file's bytes at `pos`, like std's `FileExt::read_exact_at`: reading
    /// past the end is an `UnexpectedEof` error. Sparse blocks read as zeros; undecodable data
    /// is an `InvalidData` error.
    pub fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        if pos
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > self.len())
        {
            return Err(self.error(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "cannot read {} bytes at {pos}: the file has {}",
                    buf.len(),
                    self.len()
                ),
            )));
        }
        let mut slot = self.reader.borrow_mut();
        let reader = match &mut *slot {
            Some(reader) => reader,
            None => {
                let reader = match self.image.idle_readers().pop() {
                    Some(reader) => reader,
                    None => {
                        Reader::new(Decoder::new(self.image.compressor).map_err(|e| self.error(e))?)
                    }
                };
                slot.insert(reader)
            }
        };
        self.fill(buf, pos, reader).map_err(|e| self.error(e))
    }

    /// Like lseek's SEEK_DATA: the first offset at or after `pos` that is not in a sparse block,
    /// or None if only holes follow.
    pub fn data_from(&self, pos: u64) -> Option<u64> {
        if pos >= self.len() {
            return None;
        }
        let block_size = u64::from(self.image.block_size);
        let blocks = self.blocks();
        let first = usize::try_from(pos / block_size).unwrap_or(usize::MAX);
        if let Some(index) = (first..blocks.len()).find(|&index| !blocks[index].is_sparse()) {
            return Some(pos.max(index as u64 * block_size));
        }
        // Past the block list only the tail fragment is left, and it is data.
        let tail_start = blocks.len() as u64 * block_size;
        (tail_start < self.len()).then(|| pos.max(tail_start))
    }

    /// Like lseek's SEEK_HOLE: the first offset at or after `pos` in a sparse block, or `len()`,
    /// since the end counts as a hole (also when `pos` is past it).
    pub fn hole_from(&self, pos: u64) -> u64 {
        if pos >= self.len() {
            return self.len();
        }
        let block_size = u64::from(self.image.block_size);
        let blocks = self.blocks();
        let first = usize::try_from(pos / block_size).unwrap_or(usize::MAX);
        (first..blocks.len())
            .find(|&index| blocks[index].is_sparse())
            .map_or(self.len(), |index| pos.max(index as u64 * block_size))
    }

    fn blocks(&self) -> &[StoredBlock] {
        &self.image.blocks[self.inode.blocks.clone()]
    }

    fn fill(&self, mut buf: &mut [u8], mut pos: u64, reader: &mut Reader) -> io::Result<()> {
        let block_size = u64::from(self.image.block_size);
        let blocks = self.blocks();
        while !buf.is_empty() {
            let index = pos / block_size;
            let block_offset = index * block_size;
            let Some(&block) = usize::try_from(index).ok().and_then(|i| blocks.get(i)) else {
                let tail_start = blocks.len() as u64 * block_size;
                return self.fill_from_tail(buf, pos - tail_start, reader);
            };
            let block_len = block_size.min(self.len() - block_offset) as usize;
            let within = (pos - block_offset) as usize;
            let piece_len = (block_len - within).min(buf.len());
            let (piece, rest) = std::mem::take(&mut buf).split_at_mut(piece_len);
            if block.is_sparse() {
                piece.fill(0);
            } else if !block.is_compressed() {
                if block.stored_len() != block_len {
                    return Err(wrong_length(block, block.stored_len(), block_len));
                }
                self.image
                    .file
                    .read_exact_at(piece, block.start + within as u64)?;
            } else if piece_len == block_len {
                // A whole block: decompress straight into the caller's buffer.
                let len =
                    self.image
                        .unpack(block, &mut reader.decoder, &mut reader.stored, piece)?;
                if len != block_len {
                    return Err(wrong_length(block, len, block_len));
                }
            } else {
                if reader.block_start != Some(block.start) || reader.block.len() != block_len {
                    reader.block_start = None;
                    reader.block.resize(block_len, 0);
                    let len = self.image.unpack(
                        block,
                        &mut reader.decoder,
                        &mut reader.stored,
                        &mut reader.block,
                    )?;
                    if len != block_len {
                        return Err(wrong_length(block, len, block_len));
                    }
                    reader.block_start = Some(block.start);
                }
                piece.copy_from_slice(&reader.block[within..within + piece_len]);
            }
            buf = rest;
            pos += piece_len as u64;
        }
        Ok(())
    }

    /// Fills `buf` from the file's tail, starting `within` bytes into it.
    fn fill_from_tail(&self, buf: &mut [u8], within: u64, reader: &mut Reader) -> io::Result<()> {
        let (fragment, offset) = self
            .inode
            .tail
            .ok_or_else(|| invalid_data("its block list is shorter than its length".into()))?;
        let block = self.image.fragment_block(fragment, reader)?;
        let bytes = usize::try_from(within)
            .ok()
            .and_then(|within| within.checked_add(offset as usize))
            .and_then(|start| block.get(start..start.checked_add(buf.len())?))
            .ok_or_else(|| {
                invalid_data(format!(
                    "fragment block {fragment} ({} bytes) is shorter than the file's tail",
                    block.len()
                ))
            })?;
        buf.copy_from_slice(bytes);
        Ok(())
    }

    /// Names the image and the file in an error.
    fn error(&self, e: io::Error) -> io::Error {
        io::Error::new(
            e.kind(),
            format!(
                "{}: {}: {e}",
                self.image.path.display(),
                String::from_utf8_lossy(self.path)
            ),
        )
    }
}

impl Drop for ImageFile<'_> {
    fn drop(&mut self) {
        if let Some(reader) = self.reader.get_mut().take() {
            self.image.idle_readers().push(reader);
        }
    }
}

fn invalid_data(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn wrong_length(block: StoredBlock, len: usize, expected: usize) -> io::Error {
    invalid_data(format!(
        "the block at byte {} of the image holds {len} bytes, not {expected}",
        block.start
    ))
}

/// The superblock's fields this reader needs.
struct Superblock {
    compressor: Compressor,
    block_size: u32,
    fragment_count: u32,
    root_inode: u64,
    bytes_used: u64,
    id_table: u64,
    xattr_table: u64,
    inode_table: u64,
    directory_table: u64,
    fragment_table: u64,
    export_table: u64,
}

impl Superblock {
    // The compressor options block that may follow the superblock is never needed: every table
    // is found by its absolute offset, and no option changes how a block decompresses.
    fn read(file: &File) -> Result<Superblock> {
        let mut bytes = [0; SUPERBLOCK_LEN];
        file.read_exact_at(&mut bytes, 0)
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => Error("it is shorter than a superblock".into()),
                _ => Error(format!("cannot read its superblock: {e}")),
            })?;
        let mut fields = Cursor { bytes: &bytes };
        let magic = fields.u32()?;
        if magic != MAGIC {
            bail!("its magic number is {magic:#010x}, not {MAGIC:#010x}");
        }
        let _inode_count = fields.u32()?;
        let _modification_time = fields.u32()?;
        let block_size = fields.u32()?;
        let fragment_count = fields.u32()?;
        let compressor_id = fields.u16()?;
        let block_log = fields.u16()?;
        let _flags = fields.u16()?;
        let _id_count = fields.u16()?;
        let version = (fields.u16()?, fields.u16()?);
        if version != (4, 0) {
            bail!("it is squashfs version {}.{}", version.0, version.1);
        }
        let compressor = Compressor::from_id(compressor_id)
            .with_context(|| format!("its compressor id {compressor_id} is unknown"))?;
        if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size)
            || !block_size.is_power_of_two()
            || u32::from(block_log) != block_size.trailing_zeros()
        {
            bail!("its block size {block_size} (log {block_log}) is invalid");
        }
        Ok(Superblock {
            compressor,
            block_size,
            fragment_count,
            root_inode: fields.u64()?,
            bytes_used: fields.u64()?,
            id_table: fields.u64()?,
            xattr_table: fields.u64()?,
            inode_table: fields.u64()?,
            directory_table: fields.u64()?,
            fragment_table: fields.u64()?,
            export_table: fields.u64()?,
        })
    }
}

/// A metadata table (inodes or directories) decompressed whole. squashfs addresses its contents
/// by a metadata block's on-disk offset from the table's start plus an offset into that block's
/// decompressed bytes; records may continue into the next block.
struct MetadataTable {
    name: &'static str,
    bytes: Vec<u8>,
    /// Each block's on-disk offset from the table's start and where its bytes begin in `bytes`,
    /// ascending.
    blocks: Vec<(u64, usize)>,
}

impl MetadataTable {
    fn read(
        image: &Image,
        name: &'static str,
        range: Range<u64>,
        decoder: &mut Decoder,
    ) -> Result<MetadataTable> {
        let stored = image.read_region(range)?;
        let mut table = MetadataTable {
            name,
            bytes: Vec::new(),
            blocks: Vec::new(),
        };
        let mut at = 0;
        while at < stored.len() {
            table.blocks.push((at as u64, table.bytes.len()));
            at += unpack_metadata_block(&stored[at..], decoder, &mut table.bytes).with_context(
                || format!("the {name} table's block at offset {at} is unreadable"),
            )?;
        }
        Ok(table)
    }

    /// Where in `bytes` the record at (block, offset) starts.
    fn position(&self, block: u64, offset: usize) -> Result<usize> {
        self.blocks
            .binary_search_by_key(&block, |&(stored_at, _)| stored_at)
            .ok()
            .map(|index| self.blocks[index].1 + offset)
            .filter(|&position| position < self.bytes.len())
            .with_context(|| {
                format!(
                    "a reference to block {block} offset {offset} lies outside the {} table",
                    self.name
                )
            })
    }

    fn cursor(&self, block: u64, offset: usize) -> Result<Cursor<'_>> {
        self.cursor_at(self.position(block, offset)?)
    }

    fn cursor_at(&self, position: usize) -> Result<Cursor<'_>> {
        let bytes = self
            .bytes
            .get(position..)
            .with_context(|| format!("position {position} lies outside the {} table", self.name))?;
        Ok(Cursor { bytes })
    }
}

/// Decompresses the metadata block at the start of `stored`, appending its bytes to `out`;
/// returns how many bytes of `stored` it took.
fn unpack_metadata_block(stored: &[u8], decoder: &mut Decoder, out: &mut Vec<u8>) -> Result<usize> {
    let mut header = Cursor { bytes: stored };
    let size_word = header.u16()?;
    let stored_len = usize::from(size_word & !METADATA_STORED_UNCOMPRESSED);
    let body = header
        .take(stored_len)
        .context("it runs past the end of its table")?;
    if stored_len == 0 {
        bail!("it has no size");
    }
    if size_word & METADATA_STORED_UNCOMPRESSED != 0 {
        if stored_len > METADATA_BLOCK_LEN {
            bail!("it holds {stored_len} bytes, more than a metadata block");
        }
        out.extend_from_slice(body);
    } else {
        let start = out.len();
        out.resize(start + METADATA_BLOCK_LEN, 0);
        let len = decoder.decompress(body, &mut out[start..]).map_err(Error)?;
        out.truncate(start + len);
    }
    Ok(2 + stored_len)
}

/// Where a directory's listing is in the directory table.
struct Listing {
    block: u32,
    offset: u16,
    len: usize,
}

/// Reads the common inode header, returning the inode type.
fn read_inode_header(inode: &mut Cursor<'_>) -> Result<u16> {
    let kind = inode.u16()?;
    // Mode, uid and gid indexes, mtime, inode number: nothing a content reader needs.
    inode.take(14)?;
    Ok(kind)
}

fn read_directory_inode(inode: &mut Cursor<'_>) -> Result<Listing> {
    let (block, offset, size) = match read_inode_header(inode)? {
        DIRECTORY_INODE => {
            let block = inode.u32()?;
            let _link_count = inode.u32()?;
            let size = u32::from(inode.u16()?);
            let offset = inode.u16()?;
            (block, offset, size)
        }
        EXTENDED_DIRECTORY_INODE => {
            let _link_count = inode.u32()?;
            let size = inode.u32()?;
            let block = inode.u32()?;
            let _parent = inode.u32()?;
            let _index_count = inode.u16()?;
            let offset = inode.u16()?;
            (block, offset, size)
        }
        other => bail!("its directory entry says directory, its inode type is {other}"),
    };
    // The size counts 3 bytes for the "." and ".." entries the listing does not hold.
    let len = size
        .checked_sub(3)
        .context("its directory size is less than 3")?;
    Ok(Listing {
        block,
        offset,
        len: len as usize,
    })
}

struct DirectoryEntry<'a> {
    inode_offset: u16,
    kind: u16,
    name: &'a [u8],
}

fn read_directory_entry<'a>(entries: &mut Cursor<'a>) -> Result<DirectoryEntry<'a>> {
    let inode_offset = entries.u16()?;
    let _inode_number_delta = entries.u16()?;
    let kind = entries.u16()?;
    let name_len = usize::from(entries.u16()?) + 1;
    let name = entries.take(name_len)?;
    // A name that is not one path component would index a file under another's path.
    if name == b"." || name == b".." || name.iter().any(|&byte| byte == b'/' || byte == 0) {
        bail!("it has an entry named {:?}", String::from_utf8_lossy(name));
    }
    Ok(DirectoryEntry {
        inode_offset,
        kind,
        name,
    })
}

/// Reads little-endian fields from decompressed metadata, failing (not panicking) at its end.
struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8]> {
        if len > self.bytes.len() {
            bail!("a record runs past the end of its table");
        }
        let (head, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut array = [0; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

#[derive(Clone, Copy)]
enum Compressor {
    Gzip,
    Lzma,
    Lzo,
    Xz,
    Lz4,
    Zstd,
}

impl Compressor {
    fn from_id(id: u16) -> Option<Compressor> {
        Some(match id {
            1 => Compressor::Gzip,
            2 => Compressor::Lzma,
            3 => Compressor::Lzo,
            4 => Compressor::Xz,
            5 => Compressor::Lz4,
            6 => Compressor::Zstd,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Compressor::Gzip => "gzip",
            Compressor::Lzma => "lzma",
            Compressor::Lzo => "lzo",
            Compressor::Xz => "xz",
            Compressor::Lz4 => "lz4",
            Compressor::Zstd => "zstd",
        }
    }
}

/// One compressor's decompression state, kept across blocks where the library allows it (the
/// liblzma crate cannot re-initialise a decoder, so lzma and xz make one per block).
enum Decoder {
    /// A zlib stream.
    Gzip(flate2::Decompress),
    /// The legacy "LZMA alone" format.
    Lzma,
    Lzo,
    /// An .xz stream.
    Xz,
    /// A raw LZ4 block.
    Lz4,
    /// A zstd frame.
    Zstd(zstd::bulk::Decompressor<'static>),
}

impl Decoder {
    fn new(compressor: Compressor) -> io::Result<Decoder> {
        Ok(match compressor {
            Compressor::Gzip => Decoder::Gzip(flate2::Decompress::new(true)),
            Compressor::Lzma => Decoder::Lzma,
            Compressor::Lzo => Decoder::Lzo,
            Compressor::Xz => Decoder::Xz,
            Compressor::Lz4 => Decoder::Lz4,
            Compressor::Zstd => Decoder::Zstd(zstd::bulk::Decompressor::new()?),
        })
    }

    /// Decompresses all of `stored` into the front of `out`, returning how many bytes it made;
    /// output that does not fit is an error.
    fn decompress(&mut self, stored: &[u8], out: &mut [u8]) -> Result<usize, String> {
        match self {
            Decoder::Gzip(inflate) => {
                inflate.reset(true);
                match inflate.decompress(stored, out, flate2::FlushDecompress::Finish) {
                    Ok(flate2::Status::StreamEnd) => Ok(inflate.total_out() as usize),
                    Ok(_) => Err("the stream is truncated or longer than a block".into()),
                    Err(e) => Err(e.to_string()),
                }
            }
            Decoder::Lzma | Decoder::Xz => {
                let stream = match self {
                    Decoder::Xz => {
                        liblzma::stream::Stream::new_stream_decoder(LZMA_MEMORY_LIMIT, 0)
                    }
                    _ => liblzma::stream::Stream::new_lzma_decoder(LZMA_MEMORY_LIMIT),
                };
                decompress_lzma(stream.map_err(|e| e.to_string())?, stored, out)
            }
            Decoder::Lzo => lzo1x_decompress(stored, out).map_err(String::from),
            Decoder::Lz4 => {
                lz4_flex::block::decompress_into(stored, out).map_err(|e| e.to_string())
            }
            Decoder::Zstd(context) => context
                .decompress_to_buffer(stored, out)
                .map_err(|e| e.to_string()),
        }
    }
}

fn decompress_lzma(
    mut stream: liblzma::stream::Stream,
    stored: &[u8],
    out: &mut [u8],
) -> Result<usize, String> {
    loop {
        let (read, written) = (stream.total_in() as usize, stream.total_out() as usize);
        let status = stream
            .process(
                &stored[read..],
                &mut out[written..],
                liblzma::stream::Action::Finish,
            )
            .map_err(|e| e.to_string())?;
        if status == liblzma::stream::Status::StreamEnd {
            return Ok(stream.total_out() as usize);
        }
        if (stream.total_in() as usize, stream.total_out() as usize) == (read, written) {
            return Err("the stream is truncated or longer than a block".into());
        }
    }
}

/// Decompresses an LZO1X stream (every mksquashfs lzo algorithm writes one), returning the output
/// length. Written from the format description in the Linux kernel's
/// Documentation/staging/lzo.rst because the crates that decode it are GPL-licensed.
fn lzo1x_decompress(stored: &[u8], out: &mut [u8]) -> Result<usize, &'static str> {
    let mut input = LzoInput {
        bytes: stored,
        at: 0,
    };
    let mut written = 0;
    // How many literals the last instruction copied (4 standing for "4 or more"), which changes
    // what the next instruction 0..=15 means.
    let mut state = 0;
    if let Some(&first) = stored.first().filter(|&&first| first > 17) {
        input.at = 1;
        let count = usize::from(first - 17);
        copy_literals(&mut input, out, &mut written, count)?;
        state = count.min(4);
    }
    loop {
        let instruction = input.byte()?;
        let (distance, length, literals) = match instruction {
            64.. => {
                let high = usize::from(input.byte()?);
                let distance = (high << 3) + usize::from((instruction >> 2) & 7) + 1;
                let length = if instruction >= 128 {
                    5 + usize::from((instruction >> 5) & 3)
                } else {
                    3 + usize::from((instruction >> 5) & 1)
                };
                (distance, length, usize::from(instruction & 3))
            }
            32..=63 => {
                let length = 2 + input.length(instruction & 31, 31)?;
                let operand = input.le16()?;
                ((operand >> 2) + 1, length, operand & 3)
            }
            16..=31 => {
                let length = 2 + input.length(instruction & 7, 7)?;
                let operand = input.le16()?;
                let distance = 16384 + (usize::from(instruction & 8) << 11) + (operand >> 2);
                if distance == 16384 {
                    if input.at != stored.len() {
                        return Err("data follows the end of the stream");
                    }
                    return Ok(written);
                }
                (distance, length, operand & 3)
            }
            _ if state == 0 => {
                let count = 3 + input.length(instruction & 15, 15)?;
                copy_literals(&mut input, out, &mut written, count)?;
                state = 4;
                continue;
            }
            _ => {
                let high = usize::from(input.byte()?);
                let low = usize::from(instruction >> 2);
                match state {
                    4 => ((high << 2) + low + 2049, 3, usize::from(instruction & 3)),
                    _ => ((high << 2) + low + 1, 2, usize::from(instruction & 3)),
                }
            }
        };
        if distance > written {
            return Err("a match reaches before the start of the output");
        }
        let end = written
            .checked_add(length)
            .filter(|&end| end <= out.len())
            .ok_or("the output is longer than a block")?;
        if distance >= length {
            out.copy_within(written - distance..end - distance, written);
        } else {
            // Overlapping copies repeat the bytes just written, so they go one at a time.
            for at in written..end {
                out[at] = out[at - distance];
            }
        }
        written = end;
        copy_literals(&mut input, out, &mut written, literals)?;
        state = literals;
    }
}

struct LzoInput<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl LzoInput<'_> {
    fn byte(&mut self) -> Result<u8, &'static str> {
        let byte = *self.bytes.get(self.at).ok_or(TRUNCATED_LZO)?;
        self.at += 1;
        Ok(byte)
    }

    fn le16(&mut self) -> Result<usize, &'static str> {
        Ok(usize::from(self.byte()?) | usize::from(self.byte()?) << 8)
    }

    /// A length whose instruction bits are `field`: when zero, `max` plus 255 per zero byte that
    /// follows plus the first non-zero byte.
    fn length(&mut self, field: u8, max: usize) -> Result<usize, &'static str> {
        if field != 0 {
            return Ok(usize::from(field));
        }
        let mut zero_bytes = 0;
        loop {
            match self.byte()? {
                0 => zero_bytes += 1,
                last => return Ok(max + zero_bytes * 255 + usize::from(last)),
            }
        }
    }
}

const TRUNCATED_LZO: &str = "the stream is truncated";

fn copy_literals(
    input: &mut LzoInput<'_>,
    out: &mut [u8],
    written: &mut usize,
    count: usize,
) -> Result<(), &'static str> {
    let literals = input
        .bytes
        .get(input.at..input.at + count)
        .ok_or(TRUNCATED_LZO)?;
    out.get_mut(*written..*written + count)
        .ok_or("the output is longer than a block")?
        .copy_from_slice(literals);
    input.at += count;
    *written += count;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    use std::process::Command;

    const MIB: u64 = 1 << 20;
    const SPARSE_LEN: u64 = 4 * MIB;

    /// Deterministic content: text-like (compressible) or xorshift noise (incompressible).
    fn content(len: usize, seed: u64, noise: bool) -> Vec<u8> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut bytes = Vec::with_capacity(len + 64);
        while bytes.len() < len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            if noise {
                bytes.extend_from_slice(&state.to_le_bytes());
            } else {
                bytes.extend_from_slice(format!("line {} of {seed}\n", state % 50).as_bytes());
            }
        }
        bytes.truncate(len);
        bytes
    }

    fn write(root: &Path, relative: &[u8], bytes: &[u8]) {
        let path = root.join(OsStr::from_bytes(relative));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    /// A tree with every kind of entry and file layout the reader must handle; `many` small
    /// files in one directory span several metadata and fragment blocks.
    fn make_tree(root: &Path, many: usize) {
        write(root, b"empty", b"");
        write(root, b"small/a.txt", b"hello\n");
        write(root, b"small/b.bin", &content(3000, 1, false));
        write(root, b"one-block", &content(128 << 10, 2, false));
        write(
            root,
            b"multi-with-tail",
            &content((3 << 17) + 5000, 3, false),
        );
        write(root, b"noise", &content((5 << 17) + 777, 4, true));

        let sparse = File::create(root.join("sparse")).unwrap();
        sparse.set_len(SPARSE_LEN).unwrap();
        sparse.write_all_at(b"one mebibyte in", MIB).unwrap();
        sparse.write_all_at(b"the end", SPARSE_LEN - 10).unwrap();

        write(root, b"with-xattr", &content(10_000, 5, false));
        let set = Command::new("setfattr")
            .args(["-n", "user.x", "-v", "1"])
            .arg(root.join("with-xattr"))
            .status();
        if !set.is_ok_and(|status| status.success()) {
            eprintln!("skipping the xattr: setfattr failed");
        }

        write(root, b"links/original", &content(200_000, 6, false));
        std::fs::hard_link(root.join("links/original"), root.join("links/second")).unwrap();
        std::os::unix::fs::symlink("small/a.txt", root.join("symlink")).unwrap();
        let fifo = Command::new("mkfifo").arg(root.join("fifo")).status();
        assert!(fifo.unwrap().success());
        write(root, b"d1/d2/d3/deep.txt", b"deep down\n");
        std::fs::create_dir(root.join("empty-dir")).unwrap();
        for i in 0..many {
            let name = format!("many/file {i:04}");
            write(
                root,
                name.as_bytes(),
                &content(100 + i * 37 % 3000, i as u64, false),
            );
        }
        write(root, b"with space/a name with spaces", b"spaced\n");
        write(
            root,
            b"bytes-\xff\xfe/\x80\x81 odd",
            &content(70_000, 7, false),
        );
    }

    fn make_image(source: &Path, image: &Path, options: &[&str]) {
        let made = Command::new("/usr/bin/mksquashfs")
            .arg(source)
            .arg(image)
            .args(["-noappend", "-xattrs", "-quiet", "-no-progress"])
            .args(options)
            .output()
            .unwrap();
        assert!(
            made.status.success(),
            "mksquashfs {options:?}: {}",
            String::from_utf8_lossy(&made.stderr)
        );
    }

    /// The compressors this machine's mksquashfs lists in its help.
    fn listed_compressors() -> Vec<String> {
        let help = Command::new("/usr/bin/mksquashfs")
            .arg("-help")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&help.stdout) + String::from_utf8_lossy(&help.stderr);
        text.lines()
            .skip_while(|line| line.trim() != "Compressors available:")
            .skip(1)
            .take_while(|line| line.starts_with(char::is_whitespace))
            .filter_map(|line| line.split_whitespace().next().map(String::from))
            .collect()
    }

    fn regular_files(source: &Path) -> BTreeSet<Vec<u8>> {
        walkdir::WalkDir::new(source)
            .into_iter()
            .map(Result::unwrap)
            .filter(|entry| entry.file_type().is_file())
            .map(|entry| {
                let relative = entry.path().strip_prefix(source).unwrap();
                relative.as_os_str().as_bytes().to_vec()
            })
            .collect()
    }

    /// Checks that the image holds exactly the source's regular files, byte for byte, read whole
    /// and in odd pieces, and that the sparse file's holes are found.
    fn check_image(source: &Path, image_path: &Path, block_size: u64) {
        let image = Image::open(image_path).unwrap();
        assert_eq!(u64::from(image.block_size), block_size);
        let expected = regular_files(source);
        let indexed: BTreeSet<Vec<u8>> = image.files.keys().map(|path| path.to_vec()).collect();
        assert_eq!(indexed, expected);
        for path in &expected {
            let shown = String::from_utf8_lossy(path);
            let bytes = std::fs::read(source.join(OsStr::from_bytes(path))).unwrap();
            let file = image.file(path).unwrap();
            assert_eq!(file.len(), bytes.len() as u64, "{shown}");

            let mut whole = vec![0xAA; bytes.len()];
            file.read_exact_at(&mut whole, 0).unwrap();
            assert!(whole == bytes, "{shown} read whole differs");

            let mut pieces = vec![0xAA; bytes.len()];
            let mut pos = 0;
            let mut window = 3;
            while pos < bytes.len() {
                let len = window.min(bytes.len() - pos);
                file.read_exact_at(&mut pieces[pos..pos + len], pos as u64)
                    .unwrap();
                pos += len;
                window = 7000;
            }
            assert!(pieces == bytes, "{shown} read in pieces differs");

            let past_end = file.read_exact_at(&mut [0; 2], bytes.len().saturating_sub(1) as u64);
            assert_eq!(
                past_end.unwrap_err().kind(),
                io::ErrorKind::UnexpectedEof,
                "{shown}"
            );
            file.read_exact_at(&mut [], bytes.len() as u64).unwrap();
        }
        for not_regular in [
            &b""[..],
            b"symlink",
            b"fifo",
            b"d1",
            b"d1/d2",
            b"empty-dir",
            b"nope",
        ] {
            assert!(image.file(not_regular).is_none());
        }

        let sparse = image.file(b"sparse").unwrap();
        assert_eq!(sparse.hole_from(0), 0);
        assert_eq!(sparse.data_from(0), Some(MIB));
        assert_eq!(sparse.data_from(MIB + 5), Some(MIB + 5));
        assert_eq!(sparse.hole_from(MIB), MIB + block_size);
        assert_eq!(
            sparse.data_from(MIB + block_size),
            Some(SPARSE_LEN - block_size)
        );
        assert_eq!(sparse.hole_from(SPARSE_LEN - block_size), SPARSE_LEN);
        assert_eq!(sparse.data_from(SPARSE_LEN), None);
        assert_eq!(sparse.hole_from(SPARSE_LEN), SPARSE_LEN);
        let dense = image.file(b"multi-with-tail").unwrap();
        assert_eq!(dense.data_from(0), Some(0));
        assert_eq!(dense.data_from(dense.len() - 1), Some(dense.len() - 1));
        assert_eq!(dense.hole_from(0), dense.len());
        let empty = image.file(b"empty").unwrap();
        assert_eq!(
            (empty.len(), empty.data_from(0), empty.hole_from(0)),
            (0, None, 0)
        );
    }

    fn round_trip(options: &[&str], block_size: u64) {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        make_tree(&source, 1000);
        let image = dir.path().join("image.sqfs");
        make_image(&source, &image, options);
        check_image(&source, &image, block_size);
    }

    /// unsquashfs, the reference reader, as the oracle: what it extracts from an image of every
    /// listed compressor is what this reader reads, file for file and byte for byte.
    #[test]
    fn agrees_with_unsquashfs() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        make_tree(&source, 100);
        for compressor in listed_compressors() {
            let image = dir.path().join(format!("{compressor}.sqfs"));
            make_image(&source, &image, &["-comp", &compressor]);
            let extracted = dir.path().join(&compressor);
            let unsquashed = Command::new("/usr/bin/unsquashfs")
                .args(["-quiet", "-no-progress", "-d"])
                .arg(&extracted)
                .arg(&image)
                .output()
                .unwrap();
            assert!(
                unsquashed.status.success(),
                "unsquashfs {compressor}: {}",
                String::from_utf8_lossy(&unsquashed.stderr)
            );
            check_image(&extracted, &image, 128 << 10);
        }
    }

    const UNCOMPRESSED: [&str; 5] = ["-noI", "-noId", "-noD", "-noF", "-noX"];

    #[test]
    fn reads_every_listed_compressor_and_uncompressed() {
        let compressors = listed_compressors();
        for core in ["gzip", "lzo", "lz4", "xz", "zstd"] {
            assert!(
                compressors.iter().any(|c| c == core),
                "{core} not in {compressors:?}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        make_tree(&source, 1000);
        let image = dir.path().join("image.sqfs");
        for compressor in &compressors {
            make_image(&source, &image, &["-comp", compressor]);
            check_image(&source, &image, 128 << 10);
        }
        make_image(&source, &image, &UNCOMPRESSED);
        check_image(&source, &image, 128 << 10);
    }

    #[test]
    fn reads_compressor_options() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        make_tree(&source, 300);
        let image = dir.path().join("image.sqfs");
        for options in [
            &["-comp", "lzo", "-Xalgorithm", "lzo1x_1"][..],
            &["-comp", "lzo", "-Xalgorithm", "lzo1x_1_15", "-noI"],
            &["-comp", "lz4", "-Xhc"],
            &["-comp", "xz", "-Xbcj", "x86", "-Xdict-size", "50%"],
            &[
                "-comp",
                "gzip",
                "-Xcompression-level",
                "1",
                "-Xwindow-size",
                "9",
            ],
            &["-comp", "zstd", "-Xcompression-level", "19", "-noD"],
        ] {
            make_image(&source, &image, options);
            check_image(&source, &image, 128 << 10);
        }
    }

    #[test]
    fn reads_4k_blocks() {
        round_trip(&["-comp", "zstd", "-b", "4K"], 4 << 10);
    }

    #[test]
    fn reads_1m_blocks() {
        round_trip(&["-comp", "gzip", "-b", "1M"], MIB);
        // lzo's far matches (16 to 48 KiB back) are most frequent in large blocks.
        round_trip(&["-comp", "lzo", "-b", "1M"], MIB);
    }

    #[test]
    fn reads_without_fragments() {
        round_trip(&["-comp", "lz4", "-no-fragments"], 128 << 10);
    }

    #[test]
    fn reads_tails_of_large_files_from_fragments() {
        round_trip(
            &["-comp", "lzo", "-always-use-fragments", "-b", "64K"],
            64 << 10,
        );
    }

    #[test]
    fn is_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        fn sendable<T: Send>() {}
        shareable::<Image>();
        sendable::<ImageFile<'_>>();

        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        make_tree(&source, 400);
        let image_path = dir.path().join("image.sqfs");
        make_image(&source, &image_path, &["-comp", "zstd"]);
        let image = Image::open(&image_path).unwrap();
        let paths: Vec<Vec<u8>> = regular_files(&source).into_iter().collect();
        std::thread::scope(|scope| {
            for part in paths.chunks(paths.len() / 4 + 1) {
                let image = &image;
                let source = &source;
                scope.spawn(move || {
                    for path in part {
                        let file = image.file(path).unwrap();
                        let mut bytes = vec![0; file.len() as usize];
                        file.read_exact_at(&mut bytes, 0).unwrap();
                        let wanted = std::fs::read(source.join(OsStr::from_bytes(path))).unwrap();
                        assert!(bytes == wanted);
                    }
                });
            }
        });
    }

    #[test]
    fn rejects_what_is_not_a_squashfs_image() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("notes.txt");
        std::fs::write(
            &text,
            "not an image at all, but long enough to hold a superblock ".repeat(3),
        )
        .unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "hsqs").unwrap();
        for path in [&text, &short] {
            let message = format!("{:#}", Image::open(path).err().unwrap());
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(message.contains("is not a squashfs 4.0 image"), "{message}");
        }
        let missing = dir.path().join("missing");
        let message = format!("{:#}", Image::open(&missing).err().unwrap());
        assert!(
            message.contains(&missing.display().to_string()),
            "{message}"
        );
    }

    #[test]
    fn truncated_image_fails_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        make_tree(&source, 50);
        let image = dir.path().join("image.sqfs");
        make_image(&source, &image, &["-comp", "gzip"]);
        let bytes = std::fs::read(&image).unwrap();
        let truncated = dir.path().join("truncated.sqfs");
        for len in [bytes.len() / 2, bytes.len() - 5000, 200, 96, 10] {
            std::fs::write(&truncated, &bytes[..len]).unwrap();
            let message = format!("{:#}", Image::open(&truncated).err().unwrap());
            assert!(
                message.contains(&truncated.display().to_string()),
                "{message}"
            );
        }
    }

    /// The first compressed data block of `path` in the image.
    fn compressed_block(image: &Image, path: &[u8]) -> StoredBlock {
        let inode = &image.files[path];
        image.blocks[inode.blocks.clone()]
            .iter()
            .copied()
            .find(|block| !block.is_sparse() && block.is_compressed())
            .unwrap()
    }

    #[test]
    fn corrupt_data_block_is_an_error_or_wrong_data() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        make_tree(&source, 20);
        let wanted = std::fs::read(source.join("multi-with-tail")).unwrap();
        let image_path = dir.path().join("image.sqfs");
        let damaged = dir.path().join("damaged.sqfs");
        for compressor in listed_compressors() {
            make_image(&source, &image_path, &["-comp", &compressor]);
            let block = compressed_block(&Image::open(&image_path).unwrap(), b"multi-with-tail");
            let mut bytes = std::fs::read(&image_path).unwrap();
            for (at, garbage) in [
                (block.stored_len() / 2, 0x55),
                (block.stored_len() / 3, 0xFF),
            ] {
                bytes[block.start as usize + at] ^= garbage;
            }
            std::fs::write(&damaged, &bytes).unwrap();
            let image = Image::open(&damaged).unwrap();
            let file = image.file(b"multi-with-tail").unwrap();
            let mut read = vec![0; wanted.len()];
            match file.read_exact_at(&mut read, 0) {
                Ok(()) => assert!(read != wanted, "{compressor}: damage went unnoticed"),
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{compressor}: {e}");
                    assert!(e.to_string().contains("multi-with-tail"), "{e}");
                }
            }
            // A partial read of the damaged block goes through the scratch block instead.
            let _ = file.read_exact_at(&mut read[..100], 10);
            drop(file);
            // The next file gets the same pooled reader: a failure must not have spoilt it.
            for intact in [&b"one-block"[..], b"links/original", b"small/b.bin"] {
                let file = image.file(intact).unwrap();
                let mut read = vec![0; file.len() as usize];
                file.read_exact_at(&mut read, 0).unwrap();
                let wanted = std::fs::read(source.join(OsStr::from_bytes(intact))).unwrap();
                assert!(
                    read == wanted,
                    "{compressor}: {}",
                    String::from_utf8_lossy(intact)
                );
            }
        }
    }

    /// Flips bytes all over images of every compressor and reads everything: errors are fine,
    /// panics are not.
    #[test]
    fn random_damage_never_panics() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        make_tree(&source, 30);
        let paths = regular_files(&source);
        let image_path = dir.path().join("image.sqfs");
        let damaged = dir.path().join("damaged.sqfs");
        let mut variants: Vec<Vec<String>> = listed_compressors()
            .into_iter()
            .map(|compressor| vec!["-comp".into(), compressor])
            .collect();
        variants.push(
            UNCOMPRESSED
                .iter()
                .map(|option| option.to_string())
                .collect(),
        );
        let mut state = 0x1234_5678_9ABC_DEF1_u64;
        let mut random = move |below: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % below as u64) as usize
        };
        for variant in &variants {
            let options: Vec<&str> = variant.iter().map(String::as_str).collect();
            make_image(&source, &image_path, &options);
            let pristine = std::fs::read(&image_path).unwrap();
            let tables_start = u64::from_le_bytes(pristine[64..72].try_into().unwrap()) as usize;
            let used = u64::from_le_bytes(pristine[40..48].try_into().unwrap()) as usize;
            for round in 0..120 {
                let mut bytes = pristine.clone();
                // Half the rounds hit the metadata tables, the rest anywhere.
                let (from, to) = if round % 2 == 0 {
                    (tables_start, used)
                } else {
                    (0, used)
                };
                for _ in 0..1 + random(4) {
                    let at = from + random(to - from);
                    bytes[at] = random(256) as u8;
                }
                std::fs::write(&damaged, &bytes).unwrap();
                let Ok(image) = Image::open(&damaged) else {
                    continue;
                };
                for path in &paths {
                    if let Some(file) = image.file(path) {
                        let mut read = vec![0; file.len().min(8 * MIB) as usize];
                        let _ = file.read_exact_at(&mut read, 0);
                        let piece = read.len().min(5000) / 2;
                        let _ = file.read_exact_at(&mut read[..piece], 1);
                        let _ = (file.data_from(0), file.hole_from(0));
                    }
                }
            }
        }
    }

    #[test]
    fn lzo_rejects_malformed_streams() {
        let mut out = [0; 64];
        // A literal run, then a match reaching before the output's start.
        assert!(lzo1x_decompress(&[22, 1, 2, 3, 4, 5, 0x40, 0xFF], &mut out).is_err());
        // The end marker alone is an empty stream; anything after it is an error.
        assert_eq!(lzo1x_decompress(&[0x11, 0, 0], &mut out), Ok(0));
        assert!(lzo1x_decompress(&[0x11, 0, 0, 1], &mut out).is_err());
        // More output than fits.
        assert!(lzo1x_decompress(&[0; 3], &mut out).is_err());
        assert!(lzo1x_decompress(&[], &mut out).is_err());
        let mut small = [0; 3];
        assert!(lzo1x_decompress(&[22, 1, 2, 3, 4, 5, 0x11, 0, 0], &mut small).is_err());
        let mut fits = [0; 5];
        assert_eq!(
            lzo1x_decompress(&[22, 1, 2, 3, 4, 5, 0x11, 0, 0], &mut fits),
            Ok(5)
        );
        assert_eq!(fits, [1, 2, 3, 4, 5]);
    }
}
