//! WAL-mode databases captured from their `-wal`, at a cost that grows with the pages
//! changed rather than with the database (invariant 10; issue 15 item 3).
//!
//! Capture keeps, per database, the last version it built: the log's generation
//! (`wal::Header`: salts and checksum), the position after the commit frame that
//! version ends at, and the content as page-aligned pieces (`pieces`). The next
//! capture of the same generation reads only the frames after that position: the
//! new version is the old one with the newest committed copy of each page laid over
//! it, and only the pieces those pages fall in are read back, rebuilt, stored and
//! hashed. No connection is opened then — a writer restarts the log by writing a new
//! header (new salts) *before* it overwrites any frame, so the header read again
//! after the frames proves none was overwritten while they were read.
//!
//! A busy writer's checkpoints restart the log often (SQLite's default: after about
//! 1,000 pages), so the next capture often finds a new generation. When it is the
//! very next one and has not yet reached the kept position, the rest of the old
//! generation is still on disk: it is read to its end, then the new generation over
//! it (`wal::since` says why that is the state the new generation continues from).
//!
//! Without such a version — the first capture, a log restarted twice, another
//! inode, a piece gone from the chunk store — the database is read whole (`whole`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::beneath::{moved, open_plain};
use super::pieces::Pieces;
use super::version::{identity, pages_by_piece, piece_with, Known};
use super::wal;
use super::whole::{read_up_to, whole, Whole};
use crate::chunk_store::chunking::Chunked;
use crate::chunk_store::ChunkStore;
use crate::error::{IoContext, Result};

/// The most committed pages an incremental capture holds in memory; beyond it, the
/// whole database is read.
const INCREMENTAL_BYTES_MAX: u64 = 64 << 20;

/// Databases whose last version is kept; beyond it the oldest entry goes.
const KNOWN_MAX: usize = 256;

/// What capture did with a WAL-mode database.
pub enum Outcome {
    /// Its content at a commit, stored.
    Version {
        chunked: Chunked,
        /// What was read to build it.
        read: Read,
        /// How long a read transaction was held (zero unless read whole).
        lock_held: Duration,
        /// Bytes read from the log and the database file.
        bytes_read: u64,
    },
    /// A writer kept its lock past the busy timeout, or restarted the log while it was
    /// read: try again later.
    Busy,
    /// This reading does not apply (another page size in the log than in the file, a
    /// log too large to hold): copy it with SQLite's backup.
    Fallback,
    /// SQLite would not open it.
    Refused(String),
}

/// What capture read to build a version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// The database file and its whole log, under a read transaction.
    Whole,
    /// Only the frames committed after the last version, in the same generation of
    /// the log.
    Frames,
    /// The rest of the last version's generation of the log, then the generation
    /// after it (the log restarted once since).
    AcrossRestart,
}

impl Read {
    /// Its name in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Read::Whole => "whole",
            Read::Frames => "frames",
            Read::AcrossRestart => "across_restart",
        }
    }

    pub const ALL: [Read; 3] = [Read::Whole, Read::Frames, Read::AcrossRestart];
}

static READS: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// Versions of WAL-mode databases this process has built, by what was read (in
/// `Read::ALL`'s order): an operator sees whether capture costs the changed pages or
/// the whole database.
pub fn reads() -> [u64; 3] {
    READS.each_ref().map(|count| count.load(Ordering::Relaxed))
}

static KNOWN: Mutex<BTreeMap<(PathBuf, PathBuf), Known>> = Mutex::new(BTreeMap::new());

fn known() -> std::sync::MutexGuard<'static, BTreeMap<(PathBuf, PathBuf), Known>> {
    KNOWN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The database at `full` (WAL mode, pages of `page_size`) at a commit, its pieces in
/// `store`; `data_dir` tells repositories apart.
pub fn capture(
    root: &Path,
    full: &Path,
    data_dir: &Path,
    store: &ChunkStore,
    page_size: u32,
) -> Result<Outcome> {
    let started = crate::clock::instant();
    let outcome = capture_untimed(root, full, data_dir, store, page_size)?;
    let copy_ms = started.elapsed().as_secs_f64() * 1e3;
    if let Outcome::Version { read, .. } = &outcome {
        READS[*read as usize].fetch_add(1, Ordering::Relaxed);
    }
    match &outcome {
        Outcome::Version {
            read,
            lock_held,
            bytes_read,
            ..
        } => tracing::debug!(
            path = %full.display(),
            copy_ms,
            lock_ms = lock_held.as_secs_f64() * 1e3,
            bytes_read,
            read = ?read,
            "database read at a commit"
        ),
        Outcome::Busy => {
            tracing::debug!(path = %full.display(), copy_ms, "database read given up")
        }
        Outcome::Fallback | Outcome::Refused(_) => {}
    }
    Ok(outcome)
}

fn capture_untimed(
    root: &Path,
    full: &Path,
    data_dir: &Path,
    store: &ChunkStore,
    page_size: u32,
) -> Result<Outcome> {
    let key = (data_dir.to_path_buf(), full.to_path_buf());
    let last = known().remove(&key);
    let wal_path = wal_path(full);
    if let Some(last) = last {
        if let Some((next, bytes_read, read)) = incremental(root, full, &wal_path, store, &last)? {
            let chunked = next.pieces.chunked();
            keep(key, next);
            return Ok(Outcome::Version {
                chunked,
                read,
                lock_held: Duration::ZERO,
                bytes_read,
            });
        }
    }
    let outcome = whole(root, full, &wal_path, store, page_size)?;
    Ok(match outcome {
        Whole::Read {
            known,
            lock_held,
            bytes_read,
            chunked,
        } => {
            if let Some(known) = known {
                keep(key, known);
            }
            Outcome::Version {
                chunked,
                read: Read::Whole,
                lock_held,
                bytes_read,
            }
        }
        Whole::Busy => Outcome::Busy,
        Whole::Fallback => Outcome::Fallback,
        Whole::Refused(reason) => Outcome::Refused(reason),
    })
}

fn keep(key: (PathBuf, PathBuf), version: Known) {
    let mut known = known();
    while known.len() >= KNOWN_MAX {
        known.pop_first();
    }
    known.insert(key, version);
}

fn wal_path(full: &Path) -> PathBuf {
    let mut name = full.as_os_str().to_os_string();
    name.push("-wal");
    PathBuf::from(name)
}

/// The next version from the frames committed after `last`'s position, and the bytes
/// read; `None` when it cannot be built that way (read the whole database then).
fn incremental(
    root: &Path,
    full: &Path,
    wal_path: &Path,
    store: &ChunkStore,
    last: &Known,
) -> Result<Option<(Known, u64, Read)>> {
    match std::fs::symlink_metadata(full) {
        Ok(metadata) if identity(&metadata) == last.identity => {}
        Ok(_) => return Ok(None),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error).at("stat", full),
    }
    let log = match open_plain(root, wal_path) {
        Ok(log) => log,
        // Gone, or moved under capture: the whole read decides.
        Err(error) if error.kind() == std::io::ErrorKind::NotFound || moved(&error) => {
            return Ok(None)
        }
        Err(error) => return Err(error).at("open", wal_path),
    };
    let Some(since) =
        wal::since(&log, &last.header, last.at, INCREMENTAL_BYTES_MAX).at("read", wal_path)?
    else {
        return Ok(None);
    };
    let read = match since.across {
        wal::Across::Frames => Read::Frames,
        wal::Across::Restart => {
            if !old_pages_in_file(root, full, last, &since)? {
                return Ok(None);
            }
            Read::AcrossRestart
        }
    };
    let Some(db_pages) = since.db_pages else {
        let mut next = last.clone();
        next.header = since.header;
        next.at = since.at;
        return Ok(Some((next, since.bytes_read, read)));
    };
    // Every piece kept as it is must still be in the store (the version may never have
    // been recorded, and its chunks collected since).
    if !store
        .missing(last.pieces.pieces.iter().map(|piece| piece.chunk.hash))?
        .is_empty()
    {
        return Ok(None);
    }
    let page_size = u64::from(last.header.page_size);
    let size = u64::from(db_pages) * page_size;
    let pages = pages_by_piece(&since.pages, db_pages, page_size);
    let old = &last.pieces;
    let count = Pieces::count_for(size);
    let mut pieces = Vec::with_capacity(count);
    let mut bytes_read = since.bytes_read;
    for index in 0..count {
        let len = Pieces::len_of(size, index);
        let kept = old
            .pieces
            .get(index)
            .filter(|_| Pieces::len_of(old.size, index) == len && !pages.contains_key(&index));
        if let Some(piece) = kept {
            pieces.push(piece.clone());
            continue;
        }
        let mut bytes = match old.pieces.get(index) {
            Some(piece) => store.get(&piece.chunk.hash)?,
            None => Vec::new(),
        };
        bytes_read += bytes.len() as u64;
        bytes.resize(len, 0);
        pieces.push(piece_with(
            store,
            index,
            &mut bytes,
            pages.get(&index),
            &since.pages,
            page_size,
        )?);
    }
    Ok(Some((
        Known {
            identity: last.identity,
            header: since.header,
            at: since.at,
            pieces: Pieces { size, pieces },
        },
        bytes_read,
        read,
    )))
}

/// Whether the database file holds every page of `since.from_old` as the old
/// generation of the log left it (`wal::since`): true when the old generation's last
/// commit read is the one SQLite committed, false when it is not — or when the file
/// changed since (a checkpoint of the new generation, another inode, a shorter file),
/// and the database is then read whole.
fn old_pages_in_file(root: &Path, full: &Path, last: &Known, since: &wal::Since) -> Result<bool> {
    // No SQLite connection of this process is open while this descriptor is.
    let _plain = super::plain_descriptor_guard();
    let file = match open_plain(root, full) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound || moved(&error) => {
            return Ok(false)
        }
        Err(error) => return Err(error).at("open", full),
    };
    if identity(&file.metadata().at("stat", full)?) != last.identity {
        return Ok(false);
    }
    let page_size = u64::from(last.header.page_size);
    let last_page = since.db_pages.unwrap_or(u32::MAX);
    let mut bytes = vec![0u8; page_size as usize];
    for page in since.from_old.iter().filter(|page| **page <= last_page) {
        let Some(expected) = since.pages.get(page) else {
            continue;
        };
        let read =
            read_up_to(&file, &mut bytes, u64::from(*page - 1) * page_size).at("read", full)?;
        if read != bytes.len() || bytes != *expected {
            tracing::debug!(path = %full.display(), page, "a page of the old log is not the database's: read whole");
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
#[path = "frames_tests.rs"]
mod tests;
