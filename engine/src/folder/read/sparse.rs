//! Sparse files on the recording side (invariant 11): where a file's holes are
//! (`SEEK_DATA` / `SEEK_HOLE`), and its content stored without reading them.
//!
//! A hole is recorded with what the format already has: references to the all-zero
//! chunk of a length (at most `MAX_CHUNK_BYTES` each), whose hash is computed once per
//! length and never by reading the file. The data between holes is chunked as any
//! content is. The whole-content hash stays blake3 of every byte (holes fed to it from
//! a static buffer of zeros, never read), so a sparse file's record is the same content
//! as a dense one with the same bytes, and old events and digests keep their meaning.
//! The passive leaves whole zero blocks as holes when it writes (`replay::write`,
//! `chunk_store::stage`), so a sparse file stays sparse there.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::Mutex;

use crate::chunk_store::chunking::{chunk_into, Chunked, MAX_CHUNK_BYTES};
use crate::chunk_store::ChunkStore;
use crate::error::{IoContext, Result};
use crate::hash::Hash;
use crate::log::event::ChunkRef;

/// Zeros fed to hashers for holes (never read from a file).
static ZEROS: [u8; MAX_CHUNK_BYTES as usize] = [0; MAX_CHUNK_BYTES as usize];

/// The data ranges of a file with holes, in order: `(start, end)` byte offsets; what
/// lies between them (and after the last, up to `size`) reads as zeros.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub size: u64,
    pub data: Vec<(u64, u64)>,
}

impl Layout {
    /// Bytes in holes.
    pub fn hole_bytes(&self) -> u64 {
        self.size
            - self
                .data
                .iter()
                .map(|(start, end)| end - start)
                .sum::<u64>()
    }
}

/// Whether a stat says the file may have holes: fewer blocks allocated than its size
/// needs. (A file without holes is never asked for its layout: no extra system call.)
pub fn may_have_holes(metadata: &std::fs::Metadata) -> bool {
    metadata.is_file() && metadata.blocks().saturating_mul(512) < metadata.len()
}

/// The layout of `file` (of `size` bytes) when it has holes; `None` when it has none
/// or the file system does not say (then it is read as any other file). The file's
/// offset is left where it was.
pub fn layout(file: &File, size: u64) -> std::io::Result<Option<Layout>> {
    let fd = file.as_raw_fd();
    let seek = |offset: u64, whence: libc::c_int| -> std::io::Result<Option<u64>> {
        // SAFETY: lseek on a descriptor this function borrows; no memory is passed.
        let at = unsafe { libc::lseek(fd, offset as libc::off_t, whence) };
        if at < 0 {
            let error = std::io::Error::last_os_error();
            // ENXIO: no data (or hole) at or after `offset`.
            return match error.raw_os_error() {
                Some(libc::ENXIO) => Ok(None),
                _ => Err(error),
            };
        }
        Ok(Some(at as u64))
    };
    let Some(kept) = seek(0, libc::SEEK_CUR)? else {
        return Ok(None);
    };
    let found = (|| -> std::io::Result<Option<Layout>> {
        let mut data = Vec::new();
        let mut offset = 0u64;
        while offset < size {
            let start = match seek(offset, libc::SEEK_DATA) {
                Ok(Some(start)) if start < size => start,
                Ok(_) => break,
                // Not supported here: no layout.
                Err(error) if error.raw_os_error() == Some(libc::EINVAL) => return Ok(None),
                Err(error) => return Err(error),
            };
            let end = seek(start, libc::SEEK_HOLE)?.unwrap_or(size).min(size);
            if end <= start {
                break;
            }
            data.push((start, end));
            offset = end;
        }
        let layout = Layout { size, data };
        Ok((layout.hole_bytes() > 0).then_some(layout))
    })();
    seek(kept, libc::SEEK_SET)?;
    found
}

/// The hash of `len` zero bytes, computed once per length.
pub fn zero_chunk_hash(len: u32) -> Hash {
    static KNOWN: Mutex<Option<HashMap<u32, Hash>>> = Mutex::new(None);
    let mut known = KNOWN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    *known
        .get_or_insert_with(HashMap::new)
        .entry(len)
        .or_insert_with(|| Hash::of(&ZEROS[..len as usize]))
}

/// The chunks of a hole of `len` bytes: references to zero chunks (each in `store`),
/// the hole fed to `content` from `ZEROS`.
fn hole_chunks(
    len: u64,
    store: &ChunkStore,
    content: &mut blake3::Hasher,
    chunks: &mut Vec<ChunkRef>,
) -> Result<()> {
    let mut left = len;
    while left > 0 {
        let piece = left.min(MAX_CHUNK_BYTES as u64) as u32;
        let hash = zero_chunk_hash(piece);
        if !store.contains(&hash)? {
            store.put_verified(hash, &ZEROS[..piece as usize])?;
        }
        content.update(&ZEROS[..piece as usize]);
        chunks.push(ChunkRef { hash, len: piece });
        left -= piece as u64;
    }
    Ok(())
}

/// Reads `file` from `offset` to `end` with positional reads (the file's own offset
/// is not used).
struct RangeReader<'a> {
    file: &'a File,
    offset: u64,
    end: u64,
}

impl Read for RangeReader<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let want = (self.end - self.offset).min(buffer.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let read = self.file.read_at(&mut buffer[..want], self.offset)?;
        self.offset += read as u64;
        Ok(read)
    }
}

/// Store the content of `file` laid out as `layout`: its data ranges read and chunked,
/// its holes recorded as zero chunks without reading them. A range that ends early
/// (the file shrank) gives a shorter size, which the caller's stable-read check sees.
pub fn store_sparse(
    file: &File,
    layout: &Layout,
    store: &ChunkStore,
    what: &Path,
) -> Result<Chunked> {
    let mut content = blake3::Hasher::new();
    let mut chunks = Vec::new();
    let mut size = 0u64;
    for &(start, end) in &layout.data {
        if start > size {
            hole_chunks(start - size, store, &mut content, &mut chunks)?;
            size = start;
        }
        let reader = RangeReader {
            file,
            offset: start,
            end,
        };
        let read = chunk_into(reader, store, what, &mut content, &mut chunks)?;
        size += read;
        if read != end - start {
            // Shorter than the layout said: changed during the read.
            return Ok(Chunked {
                content: content.finalize().into(),
                size,
                chunks,
            });
        }
    }
    if layout.size > size {
        hole_chunks(layout.size - size, store, &mut content, &mut chunks)?;
        size = layout.size;
    }
    Ok(Chunked {
        content: content.finalize().into(),
        size,
        chunks,
    })
}

/// Store `file` (read from its start, whatever its offset): through its holes where
/// it has them (`store_sparse`), else as any content — compared with `previous` (a
/// large file's last version's chunks) where given (`read::store_against`).
pub fn store_file(
    file: &File,
    store: &ChunkStore,
    what: &Path,
    previous: Option<&[crate::log::event::ChunkRef]>,
) -> Result<Chunked> {
    let metadata = file.metadata().at("stat", what)?;
    if may_have_holes(&metadata) {
        if let Some(layout) = layout(file, metadata.len()).at("seek", what)? {
            return store_sparse(file, &layout, store, what);
        }
    }
    let reader = RangeReader {
        file,
        offset: 0,
        end: u64::MAX,
    };
    super::store_against(reader, store, what, previous)
}

/// blake3 of a file's bytes, its holes hashed as zeros without being read.
pub fn hash_file(file: &File, what: &Path) -> Result<Hash> {
    let metadata = file.metadata().at("stat", what)?;
    let mut hasher = blake3::Hasher::new();
    let layout = if may_have_holes(&metadata) {
        layout(file, metadata.len()).at("seek", what)?
    } else {
        None
    };
    let Some(layout) = layout else {
        hasher.update_reader(file).at("read", what)?;
        return Ok(hasher.finalize().into());
    };
    let zeros = |hasher: &mut blake3::Hasher, mut len: u64| {
        while len > 0 {
            let piece = len.min(ZEROS.len() as u64) as usize;
            hasher.update(&ZEROS[..piece]);
            len -= piece as u64;
        }
    };
    let mut at = 0u64;
    for &(start, end) in &layout.data {
        zeros(&mut hasher, start - at);
        let mut reader = RangeReader {
            file,
            offset: start,
            end,
        };
        let read = std::io::copy(&mut reader, &mut hasher).at("read", what)?;
        at = start + read;
        if at != end {
            // The file shrank meanwhile: hash what it held.
            return Ok(hasher.finalize().into());
        }
    }
    zeros(&mut hasher, layout.size - at);
    Ok(hasher.finalize().into())
}

/// Copy `file`'s data ranges into `into` (an empty file) at their offsets, leaving
/// its holes as holes, and size `into` as `file`. The bytes copied.
pub fn copy_data(file: &File, layout: &Layout, into: &File, what: &Path) -> Result<u64> {
    let mut copied = 0u64;
    let mut buffer = vec![0u8; 1 << 20];
    for &(start, end) in &layout.data {
        let mut offset = start;
        while offset < end {
            let want = ((end - offset) as usize).min(buffer.len());
            let read = file.read_at(&mut buffer[..want], offset).at("read", what)?;
            if read == 0 {
                return Ok(copied);
            }
            into.write_all_at(&buffer[..read], offset)
                .at("write", what)?;
            offset += read as u64;
            copied += read as u64;
        }
    }
    into.set_len(layout.size).at("truncate", what)?;
    Ok(copied + layout.hole_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_chunk_hash_is_the_hash_of_zeros() {
        for len in [1u32, 4096, MAX_CHUNK_BYTES] {
            assert_eq!(zero_chunk_hash(len), Hash::of(&vec![0u8; len as usize]));
        }
    }

    #[test]
    fn a_file_with_holes_is_stored_as_a_dense_one_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let repository = crate::repository::Repository::open(&dir.path().join("data")).unwrap();
        let store = repository.chunks();
        let path = dir.path().join("sparse");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let size = 8u64 << 20;
        file.set_len(size).unwrap();
        file.write_all_at(&[7u8; 5000], 1 << 20).unwrap();
        file.write_all_at(&[9u8; 100], size - 100).unwrap();
        file.sync_all().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let stored = store_file(&file, store, &path, None).unwrap();
        assert_eq!(stored.size, size);
        assert_eq!(stored.content, Hash::of(&bytes));
        assert_eq!(
            stored
                .chunks
                .iter()
                .map(|chunk| chunk.len as u64)
                .sum::<u64>(),
            size
        );
        let mut joined = Vec::new();
        for chunk in &stored.chunks {
            joined.extend(store.get(&chunk.hash).unwrap());
        }
        assert!(joined == bytes, "the chunks do not add up to the file");
        assert_eq!(hash_file(&file, &path).unwrap(), Hash::of(&bytes));
        // Where the file system reports holes, they were not chunked as data.
        if let Some(layout) = layout(&file, size).unwrap() {
            assert!(layout.hole_bytes() >= size - (1 << 20));
            let copy = tempfile::tempfile_in(dir.path()).unwrap();
            assert_eq!(copy_data(&file, &layout, &copy, &path).unwrap(), size);
            let mut again = Vec::new();
            (&copy).read_to_end(&mut again).unwrap();
            assert!(again == bytes, "the copy differs");
            assert!(copy.metadata().unwrap().blocks() * 512 < size / 2);
        }
    }
}
