//! Content-defined chunking of a file's bytes (FastCDC 2020).
//!
//! Sizes: minimum 16 KiB, average 64 KiB, maximum 256 KiB. A file smaller than the
//! minimum is one chunk. Cut points depend on the content, so an edit in the middle of
//! a large file changes only the chunks around it and only those are shipped. Reading
//! streams through a buffer of at most `MAX_CHUNK_BYTES`: no whole file is held in memory.

use std::io::Read;

use fastcdc::v2020::StreamCDC;

use crate::chunk_store::ChunkStore;
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::log::event::ChunkRef;

pub const MIN_CHUNK_BYTES: u32 = 16 * 1024;
pub const AVG_CHUNK_BYTES: u32 = 64 * 1024;
pub const MAX_CHUNK_BYTES: u32 = 256 * 1024;

/// A file's content as stored: its whole-content hash, size and chunks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunked {
    pub content: Hash,
    pub size: u64,
    pub chunks: Vec<ChunkRef>,
}

/// Read `reader` to its end, put every chunk in `store`, and describe the content.
/// `what` names the source in errors.
pub fn store_content(
    reader: impl Read,
    store: &ChunkStore,
    what: &std::path::Path,
) -> Result<Chunked> {
    let mut reader = reader;
    let mut content = blake3::Hasher::new();
    let mut chunks = Vec::new();
    let mut size = 0u64;

    // Small files: one read, one chunk, no chunker set-up.
    let mut head = Vec::with_capacity(MIN_CHUNK_BYTES as usize);
    (&mut reader)
        .take(MIN_CHUNK_BYTES as u64)
        .read_to_end(&mut head)
        .map_err(|source| Error::Io {
            op: "read",
            path: what.to_path_buf(),
            source,
        })?;
    if head.len() < MIN_CHUNK_BYTES as usize {
        content.update(&head);
        if !head.is_empty() {
            let hash = store.put(&head)?;
            chunks.push(ChunkRef {
                hash,
                len: head.len() as u32,
            });
        }
        return Ok(Chunked {
            content: content.finalize().into(),
            size: head.len() as u64,
            chunks,
        });
    }

    let stream = std::io::Cursor::new(head).chain(reader);
    size += chunk_into(stream, store, what, &mut content, &mut chunks)?;
    Ok(Chunked {
        content: content.finalize().into(),
        size,
        chunks,
    })
}

/// Chunks cut before the rest are hashed and stored on a thread of their own: a
/// file of more than about 1 MiB (with 64 KiB chunks on average).
const PIPELINE_AFTER_CHUNKS: usize = 16;
/// Chunks cut but not yet hashed, at most (each at most `MAX_CHUNK_BYTES`).
const PIPELINE_DEPTH: usize = 8;

/// Chunk `reader` to its end (FastCDC; a piece shorter than the minimum is one
/// chunk): every chunk put in `store`, appended to `chunks` and fed to `content`.
/// The bytes read. Past the first `PIPELINE_AFTER_CHUNKS` chunks, reading and cutting
/// go on here while another thread hashes and stores the chunks already cut, in
/// order (on this machine a large file's capture is about half reading and cutting,
/// a quarter hashing).
pub fn chunk_into(
    reader: impl Read,
    store: &ChunkStore,
    what: &std::path::Path,
    content: &mut blake3::Hasher,
    chunks: &mut Vec<ChunkRef>,
) -> Result<u64> {
    let read_error = |error: fastcdc::v2020::Error| Error::Io {
        op: "read",
        path: what.to_path_buf(),
        source: error.into(),
    };
    let take = |data: &[u8], content: &mut blake3::Hasher, chunks: &mut Vec<ChunkRef>| {
        content.update(data);
        let hash = store.put(data)?;
        chunks.push(ChunkRef {
            hash,
            len: data.len() as u32,
        });
        Ok::<u64, Error>(data.len() as u64)
    };
    let mut cut = StreamCDC::new(reader, MIN_CHUNK_BYTES, AVG_CHUNK_BYTES, MAX_CHUNK_BYTES);
    let mut size = 0u64;
    for _ in 0..PIPELINE_AFTER_CHUNKS {
        match cut.next() {
            Some(chunk) => size += take(&chunk.map_err(read_error)?.data, content, chunks)?,
            None => return Ok(size),
        }
    }
    std::thread::scope(|scope| {
        let (sender, receiver) = std::sync::mpsc::sync_channel::<Vec<u8>>(PIPELINE_DEPTH);
        let worker = scope.spawn(move || {
            let mut taken = 0u64;
            for data in receiver {
                taken += take(&data, content, chunks)?;
            }
            Ok::<u64, Error>(taken)
        });
        let mut failed = None;
        for chunk in cut {
            match chunk {
                // A closed channel: the worker failed; its error is returned below.
                Ok(chunk) => {
                    if sender.send(chunk.data).is_err() {
                        break;
                    }
                }
                Err(error) => {
                    failed = Some(read_error(error));
                    break;
                }
            }
        }
        drop(sender);
        let taken = worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        match failed {
            Some(error) => Err(error),
            None => Ok(size + taken),
        }
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::hash::Hash;

    /// Deterministic bytes that are not all alike (so FastCDC finds cut points).
    pub(crate) fn bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    #[test]
    fn a_large_content_chunked_on_two_threads_is_what_one_thread_cuts() {
        let dir = tempfile::tempdir().unwrap();
        let repository = crate::repository::Repository::open(dir.path()).unwrap();
        for len in [10_000, 900_000, 5 << 20] {
            let data = bytes(len, len as u64);
            let stored = store_content(data.as_slice(), repository.chunks(), dir.path()).unwrap();
            let expected: Vec<ChunkRef> = StreamCDC::new(
                data.as_slice(),
                MIN_CHUNK_BYTES,
                AVG_CHUNK_BYTES,
                MAX_CHUNK_BYTES,
            )
            .map(|chunk| {
                let chunk = chunk.unwrap();
                ChunkRef {
                    hash: Hash::of(&chunk.data),
                    len: chunk.data.len() as u32,
                }
            })
            .collect();
            assert_eq!(stored.size, len as u64);
            assert_eq!(stored.content, Hash::of(&data), "{len} bytes");
            assert_eq!(stored.chunks, expected, "{len} bytes");
            if len > 1 << 20 {
                assert!(expected.len() > PIPELINE_AFTER_CHUNKS, "the pipeline ran");
            }
            for chunk in &stored.chunks {
                assert_eq!(
                    repository.chunks().get(&chunk.hash).unwrap().len(),
                    chunk.len as usize
                );
            }
        }
    }

    /// Fails after `left` bytes.
    struct Failing {
        data: Vec<u8>,
        at: usize,
        left: usize,
    }

    impl Read for Failing {
        fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
            if self.left == 0 {
                return Err(std::io::Error::other("the disk went away"));
            }
            let count = buffer.len().min(self.left).min(self.data.len() - self.at);
            buffer[..count].copy_from_slice(&self.data[self.at..self.at + count]);
            self.at += count;
            self.left -= count;
            Ok(count)
        }
    }

    #[test]
    fn a_read_error_past_the_first_chunks_is_returned() {
        let dir = tempfile::tempdir().unwrap();
        let repository = crate::repository::Repository::open(dir.path()).unwrap();
        let reader = Failing {
            data: bytes(8 << 20, 7),
            at: 0,
            left: 4 << 20,
        };
        let error = store_content(reader, repository.chunks(), dir.path()).unwrap_err();
        assert!(error.to_string().contains("the disk went away"), "{error}");
    }
}
