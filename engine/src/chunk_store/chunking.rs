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

/// Chunk `reader` to its end (FastCDC; a piece shorter than the minimum is one
/// chunk): every chunk put in `store`, appended to `chunks` and fed to `content`.
/// The bytes read.
pub fn chunk_into(
    reader: impl Read,
    store: &ChunkStore,
    what: &std::path::Path,
    content: &mut blake3::Hasher,
    chunks: &mut Vec<ChunkRef>,
) -> Result<u64> {
    let mut size = 0u64;
    for chunk in StreamCDC::new(reader, MIN_CHUNK_BYTES, AVG_CHUNK_BYTES, MAX_CHUNK_BYTES) {
        let chunk = chunk.map_err(|error| Error::Io {
            op: "read",
            path: what.to_path_buf(),
            source: error.into(),
        })?;
        content.update(&chunk.data);
        let hash = store.put(&chunk.data)?;
        size += chunk.data.len() as u64;
        chunks.push(ChunkRef {
            hash,
            len: chunk.data.len() as u32,
        });
    }
    Ok(size)
}
