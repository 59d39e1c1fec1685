//! Re-chunking a large file against its previous version (issue 22, item 4): where
//! the file still holds a recorded chunk's bytes at the same offset, that chunk is
//! taken as it is — compared byte for byte with the stored copy, neither cut nor
//! hashed again — and only the ranges that changed are cut and hashed.
//!
//! The result is exactly what `chunking::store_content` gives for the same bytes (the
//! tests hold it to that). FastCDC decides each cut from the bytes since the previous
//! cut and how many follow it, at most `MAX_CHUNK_BYTES` of them. So when the new file
//! has a cut at offset X where an old chunk [X, Y) began, holds the same bytes over
//! [X, Y), and both the old and the new file go on for at least `MAX_CHUNK_BYTES` past
//! X, the new cut after X is Y, as the old one was. Comparing starts at offset 0 (a
//! cut in every file) and resumes wherever a cut made anew lands on an old chunk's
//! start (an edit that keeps the file's length, or past the region an edit moved).
//!
//! Why comparing is as safe as hashing: a chunk is reused only when the file holds,
//! byte for byte, the stored bytes, which were hashed when they were stored; a stored
//! chunk that cannot be read, or differs, is simply cut anew. The whole-content hash
//! is still computed over every byte. After `GIVE_UP_CHUNKS` chunks cut without
//! meeting an old start (bytes inserted or removed: every later offset moved), the
//! rest goes to `chunking::chunk_into`, which cuts and hashes on two threads.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use fastcdc::v2020::FastCDC;

use super::chunking::{chunk_into, Chunked, AVG_CHUNK_BYTES, MAX_CHUNK_BYTES, MIN_CHUNK_BYTES};
use super::ChunkStore;
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::log::event::ChunkRef;

/// Chunks cut in a row without meeting an old chunk's start before the rest is
/// handed to the two-thread chunker.
const GIVE_UP_CHUNKS: usize = 16;

/// Bytes read ahead (several chunks per `read`).
const WINDOW_BYTES: usize = 4 << 20;

/// What re-chunking a file against its previous version gave.
#[derive(Debug)]
pub struct Rechunked {
    pub chunked: Chunked,
    /// Bytes taken from the previous version's chunks (compared, not cut or hashed
    /// on their own).
    pub reused_bytes: u64,
}

/// Read `reader` to its end like `chunking::store_content`, reusing the chunks of
/// `previous` (the file's last recorded chunks, in order) wherever the file still
/// holds them at the same offsets. `what` names the source in errors.
pub fn store_content_since(
    reader: impl Read,
    store: &ChunkStore,
    what: &Path,
    previous: &[ChunkRef],
) -> Result<Rechunked> {
    let read_error = |source: std::io::Error| Error::Io {
        op: "read",
        path: what.to_path_buf(),
        source,
    };
    let max = MAX_CHUNK_BYTES as usize;
    // Where each old chunk began, and the old file's size.
    let mut starts = HashMap::with_capacity(previous.len());
    let mut old_size = 0u64;
    for (index, chunk) in previous.iter().enumerate() {
        starts.insert(old_size, index);
        old_size += u64::from(chunk.len);
    }
    let mut window = Window::new(reader);
    let mut content = blake3::Hasher::new();
    let mut chunks = Vec::new();
    let (mut offset, mut reused_bytes) = (0u64, 0u64);
    // The old chunk to compare next, when comparing.
    let mut comparing = (!previous.is_empty()).then_some(0usize);
    let mut cut_in_a_row = 0usize;
    loop {
        let available = window.fill(max).map_err(read_error)?;
        if available.is_empty() {
            break;
        }
        if let Some(index) = comparing {
            let old = &previous[index];
            let len = old.len as usize;
            let reusable = available.len() >= max
                && old_size.saturating_sub(offset) >= max as u64
                && len <= available.len()
                && store
                    .get_unverified(&old.hash)
                    .is_ok_and(|stored| stored.as_slice() == &available[..len]);
            if reusable {
                content.update(&available[..len]);
                chunks.push(*old);
                window.consume(len);
                offset += len as u64;
                reused_bytes += len as u64;
                comparing = Some(index + 1).filter(|next| *next < previous.len());
                continue;
            }
            comparing = None;
        }
        // Cut anew, exactly as the stream chunker would here: it sees at most `max`
        // bytes ahead.
        let ahead = available.len().min(max);
        let (_, cut) = FastCDC::new(
            &available[..ahead],
            MIN_CHUNK_BYTES,
            AVG_CHUNK_BYTES,
            MAX_CHUNK_BYTES,
        )
        .cut(0, ahead);
        let data = &available[..cut];
        content.update(data);
        let hash: Hash = store.put(data)?;
        chunks.push(ChunkRef {
            hash,
            len: cut as u32,
        });
        window.consume(cut);
        offset += cut as u64;
        match starts.get(&offset) {
            Some(index) => {
                comparing = Some(*index);
                cut_in_a_row = 0;
            }
            None => cut_in_a_row += 1,
        }
        if cut_in_a_row >= GIVE_UP_CHUNKS {
            offset += chunk_into(window.into_rest(), store, what, &mut content, &mut chunks)?;
            break;
        }
    }
    store
        .reused_bytes
        .fetch_add(reused_bytes, std::sync::atomic::Ordering::Relaxed);
    Ok(Rechunked {
        chunked: Chunked {
            content: content.finalize().into(),
            size: offset,
            chunks,
        },
        reused_bytes,
    })
}

/// A reader's bytes read ahead in large reads; consumed from the front.
struct Window<R> {
    reader: R,
    buffer: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
}

impl<R: Read> Window<R> {
    fn new(reader: R) -> Window<R> {
        Window {
            reader,
            buffer: vec![0; WINDOW_BYTES],
            start: 0,
            end: 0,
            eof: false,
        }
    }

    /// At least `want` bytes ahead (fewer only at the end of the reader).
    fn fill(&mut self, want: usize) -> std::io::Result<&[u8]> {
        if self.end - self.start < want && !self.eof {
            if self.start + want > self.buffer.len() {
                self.buffer.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            while self.end - self.start < want && !self.eof {
                match self.reader.read(&mut self.buffer[self.end..]) {
                    Ok(0) => self.eof = true,
                    Ok(count) => self.end += count,
                    Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(error) => return Err(error),
                }
            }
        }
        Ok(&self.buffer[self.start..self.end])
    }

    fn consume(&mut self, count: usize) {
        self.start += count;
    }

    /// The bytes not consumed, then the rest of the reader.
    fn into_rest(mut self) -> impl Read {
        self.buffer.truncate(self.end);
        let mut ahead = std::io::Cursor::new(self.buffer);
        ahead.set_position(self.start as u64);
        ahead.chain(self.reader)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk_store::chunking::store_content;
    use crate::chunk_store::chunking::tests::bytes;

    /// Re-chunk `new` against `old`'s chunks: it must be exactly what chunking `new`
    /// from scratch gives. Returns the bytes cut anew.
    fn rechunk(old: &[u8], new: &[u8]) -> u64 {
        let dir = tempfile::tempdir().unwrap();
        let repository = crate::repository::Repository::open(dir.path()).unwrap();
        let store = repository.chunks();
        let before = store_content(old, store, dir.path()).unwrap();
        let again = store_content_since(new, store, dir.path(), &before.chunks).unwrap();
        let fresh = store_content(new, store, dir.path()).unwrap();
        assert_eq!(again.chunked, fresh, "re-chunked against the old version");
        for chunk in &again.chunked.chunks {
            assert_eq!(store.get(&chunk.hash).unwrap().len(), chunk.len as usize);
        }
        again.chunked.size - again.reused_bytes
    }

    const MAX: u64 = MAX_CHUNK_BYTES as u64;

    #[test]
    fn an_unchanged_file_is_compared_not_cut_but_for_its_tail() {
        let old = bytes(6 << 20, 1);
        assert!(rechunk(&old, &old) <= 2 * MAX);
    }

    #[test]
    fn an_append_cuts_only_the_old_tail_and_what_was_added() {
        let old = bytes(6 << 20, 2);
        let mut new = old.clone();
        new.extend_from_slice(&bytes(1 << 20, 3));
        assert!(rechunk(&old, &new) <= (1 << 20) + 2 * MAX);
    }

    #[test]
    fn an_edit_in_place_cuts_only_around_it() {
        let old = bytes(6 << 20, 4);
        let mut new = old.clone();
        new[3 << 20..(3 << 20) + 4096].copy_from_slice(&bytes(4096, 5));
        assert!(rechunk(&old, &new) <= 4096 + 4 * MAX);
    }

    #[test]
    fn insertions_removals_and_new_content_come_out_as_a_fresh_chunking() {
        let old = bytes(6 << 20, 6);
        let mut inserted = old.clone();
        inserted.splice(2 << 20..2 << 20, bytes(100, 7));
        rechunk(&old, &inserted);
        let mut removed = old.clone();
        removed.drain(1 << 20..(1 << 20) + 333);
        rechunk(&old, &removed);
        let mut prepended = bytes(10, 8);
        prepended.extend_from_slice(&old);
        rechunk(&old, &prepended);
        rechunk(&old, &old[..old.len() / 2]);
        rechunk(&old, &old[..(MIN_CHUNK_BYTES as usize) - 1]);
        rechunk(&old, &[]);
        assert_eq!(rechunk(&old, &bytes(6 << 20, 9)), 6 << 20);
    }

    #[test]
    fn a_stored_chunk_that_cannot_be_read_is_cut_anew() {
        let dir = tempfile::tempdir().unwrap();
        let repository = crate::repository::Repository::open(dir.path()).unwrap();
        let store = repository.chunks();
        let data = bytes(4 << 20, 10);
        let mut before = store_content(data.as_slice(), store, dir.path()).unwrap();
        // The store does not have the fifth chunk under this hash.
        before.chunks[4].hash = Hash::of(b"not stored");
        let again =
            store_content_since(data.as_slice(), store, dir.path(), &before.chunks).unwrap();
        assert_eq!(
            again.chunked,
            store_content(data.as_slice(), store, dir.path()).unwrap()
        );
        assert!(again.reused_bytes > 0);
    }
}
