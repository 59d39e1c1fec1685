//! The pack format's pieces: where a chunk is in a pack (`Location`, as stored in the
//! sled tree), the pack being appended to (`PackWriter`, its buffer and its chunks not
//! yet synced), and the locations synced last, kept in memory (`RecentLocations`).

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::Write;
use std::path::Path;

use super::{RECORD_HEADER_BYTES, RECORD_MAGIC};
use crate::error::{Error, Result};
use crate::hash::Hash;

/// How many of the chunks synced last keep their locations in memory.
const RECENT_LOCATIONS: usize = 65_536;

/// Where a chunk's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Location {
    pub pack: u32,
    /// Offset of the chunk's bytes (after the record header).
    pub offset: u64,
    pub len: u32,
}

impl Location {
    pub fn to_bytes(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..4].copy_from_slice(&self.pack.to_le_bytes());
        out[4..12].copy_from_slice(&self.offset.to_le_bytes());
        out[12..].copy_from_slice(&self.len.to_le_bytes());
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Location> {
        if bytes.len() != 16 {
            return None;
        }
        Some(Location {
            pack: u32::from_le_bytes(bytes[..4].try_into().ok()?),
            offset: u64::from_le_bytes(bytes[4..12].try_into().ok()?),
            len: u32::from_le_bytes(bytes[12..].try_into().ok()?),
        })
    }
}

/// The locations of the chunks synced last: a passive's apply checks and reads the
/// chunks it has just fetched, and finds them here rather than in the sled tree (two
/// lookups a small file, ~5% of a small-file sync's CPU). The tree stays the truth:
/// entries are added after it took them, and dropped whenever chunks move or go.
#[derive(Default)]
pub(super) struct RecentLocations {
    pub by_hash: HashMap<Hash, Location>,
    /// Oldest first; a hash synced twice may be here twice (the older one then only
    /// drops its entry early: a lookup in the tree instead).
    order: VecDeque<Hash>,
}

impl RecentLocations {
    pub fn remember(&mut self, hash: Hash, location: Location) {
        if self.order.len() >= RECENT_LOCATIONS {
            if let Some(oldest) = self.order.pop_front() {
                self.by_hash.remove(&oldest);
            }
        }
        self.by_hash.insert(hash, location);
        self.order.push_back(hash);
    }

    pub fn clear(&mut self) {
        self.by_hash.clear();
        self.order.clear();
    }
}

pub(super) struct PackWriter {
    pub pack: u32,
    pub file: File,
    /// Bytes in the pack file plus bytes in `buffer`.
    pub end: u64,
    pub buffer: Vec<u8>,
    /// Chunks written since the last `sync`, not yet in the sled tree.
    pub pending: HashMap<Hash, Location>,
}

impl PackWriter {
    /// A record's header, into the buffer.
    pub fn append_header(&mut self, hash: Hash, len: u32) {
        self.buffer.extend_from_slice(RECORD_MAGIC);
        self.buffer.extend_from_slice(&hash.0);
        self.buffer.extend_from_slice(&len.to_le_bytes());
        self.end += RECORD_HEADER_BYTES;
    }

    /// A whole record, its bytes written from `bytes` rather than copied into the
    /// buffer first. On a failed write the record is not stored (the caller does not
    /// record its location) and the next one goes after whatever the file holds.
    pub fn append_direct(&mut self, path: &Path, hash: Hash, bytes: &[u8]) -> Result<()> {
        // `bytes.len()` fits a u32: the caller checked.
        self.append_header(hash, bytes.len() as u32);
        self.flush_buffer(path)?;
        if let Err(source) = self.file.write_all(bytes) {
            return Err(self.write_failed(path, source));
        }
        crate::fsutil::start_writeback(&self.file, self.end, bytes.len() as u64);
        self.end += bytes.len() as u64;
        Ok(())
    }

    /// After a failed write: the next record goes after whatever the file now holds
    /// (a new pack when its length is unknown). Returns the error to report.
    fn write_failed(&mut self, path: &Path, source: std::io::Error) -> Error {
        self.end = self
            .file
            .metadata()
            .map(|metadata| metadata.len())
            .unwrap_or(u64::MAX);
        Error::Io {
            op: "write",
            path: path.to_path_buf(),
            source,
        }
    }

    pub fn flush_buffer(&mut self, path: &Path) -> Result<()> {
        if !self.buffer.is_empty() {
            let written = self.buffer.len() as u64;
            if let Err(source) = self.file.write_all(&self.buffer) {
                // A failed write (a full disk) may have left part of the buffer in the
                // file. Its chunks are dropped (never synced, so nothing names them;
                // the caller stores them again), and the next record goes after
                // whatever the file now holds, so every location stays exact. Should
                // the file's length be unknown, the next insert starts a new pack.
                let before = self.end - written;
                self.pending.retain(|_, location| location.offset < before);
                self.buffer.clear();
                return Err(self.write_failed(path, source));
            }
            // Start writing these pages back now, so that the fdatasync at `sync` finds
            // little left to do and disk and CPU work overlap.
            crate::fsutil::start_writeback(&self.file, self.end - written, written);
            self.buffer.clear();
        }
        Ok(())
    }
}
