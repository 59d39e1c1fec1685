//! A WAL-mode database read whole (`frames` says when): its file, with every
//! committed frame of its log laid over it, under one read transaction. That is a
//! committed state because a checkpoint copies into the file only frames at or
//! before the oldest reader's snapshot, which is at or before the last commit frame
//! read; pages in no frame are not written at all while the transaction lasts. The
//! file is read through a descriptor opened before the connection and closed after
//! it, so no close drops SQLite's locks (see the module `sqlite`). This costs one
//! read and hash of the database, and writes only the pieces that changed.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use super::beneath::{identity_now, moved, open_plain};
use super::pieces::{Pieces, PIECE_BYTES};
use super::version::{identity, pages_by_piece, piece_with, Known};
use super::wal::{self, Position};
use crate::chunk_store::chunking::Chunked;
use crate::chunk_store::ChunkStore;
use crate::error::{IoContext, Result};

/// The most pages of the log a whole read holds in memory (SQLite's default checkpoint
/// keeps the log near 4 MiB); beyond it the caller copies the database with SQLite's
/// backup instead.
const WHOLE_WAL_BYTES_MAX: u64 = 64 << 20;

pub(super) enum Whole {
    Read {
        known: Option<Known>,
        chunked: Chunked,
        lock_held: Duration,
        bytes_read: u64,
    },
    Busy,
    Fallback,
    Refused(String),
}

/// Read the whole database under a read transaction (see the module's doc).
pub(super) fn whole(
    root: &Path,
    full: &Path,
    wal_path: &Path,
    store: &ChunkStore,
    page_size: u32,
) -> Result<Whole> {
    let _exclusive = super::connection_guard();
    // Opened before the connection and closed after it (declared first, dropped last).
    let file = match open_plain(root, full) {
        Ok(file) => file,
        Err(error) if moved(&error) => return Ok(Whole::Busy),
        Err(error) => return Ok(Whole::Refused(format!("cannot open: {error}"))),
    };
    let metadata = file.metadata().at("stat", full)?;
    let connection = match super::open_read_only(full) {
        Ok(connection) => connection,
        Err(error) => return Ok(Whole::Refused(error.to_string())),
    };
    let started = crate::clock::instant();
    let begun = connection
        .execute_batch("BEGIN")
        .and_then(|()| connection.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(())));
    if let Err(error) = begun {
        return Ok(if super::is_busy(&error) {
            Whole::Busy
        } else {
            Whole::Refused(error.to_string())
        });
    }
    // The log is opened under the read transaction: while it lasts, no connection can
    // remove the log (that takes an exclusive lock on the database) or start it anew
    // past frames the snapshot uses. SQLite takes no lock on the `-wal`, so this
    // descriptor may close before the connection does.
    let log = match open_plain(root, wal_path) {
        Ok(log) => Some(log),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        // Not "no log": the path moved under capture (read again later).
        Err(error) if moved(&error) => return Ok(Whole::Busy),
        Err(error) => return Err(error).at("open", wal_path),
    };
    // The connection opened the database by its path: it must still lead to the file
    // read here, or the read transaction may be another file's (a swap and back in
    // between is the case left open: README, "Guarantees").
    if !matches!(identity_now(root, full), Ok(now) if now == identity(&metadata)) {
        return Ok(Whole::Busy);
    }
    let read = read_whole(
        full,
        &file,
        metadata,
        wal_path,
        log.as_ref(),
        store,
        page_size,
    );
    let lock_held = super::held_since(started);
    drop(connection);
    drop(log);
    drop(file);
    Ok(match read? {
        WholeRead::Done {
            known,
            chunked,
            bytes_read,
        } => Whole::Read {
            known,
            chunked,
            lock_held,
            bytes_read,
        },
        WholeRead::Restarted => Whole::Busy,
        WholeRead::Fallback => Whole::Fallback,
    })
}

enum WholeRead {
    Done {
        known: Option<Known>,
        chunked: Chunked,
        bytes_read: u64,
    },
    /// The log restarted while it was read.
    Restarted,
    /// Another page size, or a log too large to hold: SQLite's backup instead.
    Fallback,
}

/// The database file with every committed frame of the log over it, under the
/// caller's read transaction.
fn read_whole(
    full: &Path,
    file: &File,
    metadata: std::fs::Metadata,
    wal_path: &Path,
    log: Option<&File>,
    store: &ChunkStore,
    page_size: u32,
) -> Result<WholeRead> {
    let header = match log {
        Some(log) => wal::read_header(log).at("read", wal_path)?,
        None => None,
    };
    let mut committed = wal::Committed::default();
    if let (Some(log), Some(header)) = (log, header) {
        if header.page_size != page_size {
            return Ok(WholeRead::Fallback);
        }
        let start = Position {
            frame: 0,
            checksum: header.checksum,
        };
        committed = match wal::read_committed(log, &header, start, WHOLE_WAL_BYTES_MAX)
            .at("read", wal_path)?
        {
            Ok(committed) => committed,
            Err(_) => return Ok(WholeRead::Fallback),
        };
        if wal::read_header(log).at("read", wal_path)? != Some(header) {
            return Ok(WholeRead::Restarted);
        }
    }
    let page_bytes = u64::from(page_size);
    let db_pages = match committed.end {
        Some(_) => committed.db_pages,
        None => pages_in_file(file, metadata.len(), page_bytes).at("read", full)?,
    };
    let size = u64::from(db_pages) * page_bytes;
    let by_piece = pages_by_piece(&committed.pages, db_pages, page_bytes);
    let mut pieces = Vec::with_capacity(Pieces::count_for(size));
    let mut bytes_read = committed.bytes_read;
    let mut bytes = Vec::with_capacity(PIECE_BYTES as usize);
    for index in 0..Pieces::count_for(size) {
        bytes.clear();
        bytes.resize(Pieces::len_of(size, index), 0);
        let start = index as u64 * PIECE_BYTES;
        let on_disk = metadata.len().saturating_sub(start).min(bytes.len() as u64) as usize;
        bytes_read += read_up_to(file, &mut bytes[..on_disk], start).at("read", full)? as u64;
        pieces.push(piece_with(
            store,
            index,
            &mut bytes,
            by_piece.get(&index),
            &committed.pages,
            page_bytes,
        )?);
    }
    let pieces = Pieces { size, pieces };
    let chunked = pieces.chunked();
    let known = header.map(|header| Known {
        identity: identity(&metadata),
        header,
        at: committed.end.unwrap_or(Position {
            frame: 0,
            checksum: header.checksum,
        }),
        pieces,
    });
    Ok(WholeRead::Done {
        known,
        chunked,
        bytes_read,
    })
}

/// Read into `bytes` from `at` until they are full or the file ends (the rest stays
/// zero): a checkpoint may truncate the file to the size at the oldest reader's
/// snapshot while it is read, and any page past that end in a later commit is in a
/// frame, laid over these bytes.
pub(super) fn read_up_to(file: &File, bytes: &mut [u8], at: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < bytes.len() {
        match file.read_at(&mut bytes[done..], at + done as u64) {
            Ok(0) => break,
            Ok(count) => done += count,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(done)
}

/// The database's size in pages as its header on disk says (valid when its change
/// counter matches the "version valid for" field, as SQLite checks), else the file's.
fn pages_in_file(file: &File, len: u64, page_size: u64) -> std::io::Result<u32> {
    let mut header = [0u8; 100];
    let from_file = u32::try_from(len / page_size).unwrap_or(u32::MAX);
    if len < 100 {
        return Ok(from_file);
    }
    file.read_exact_at(&mut header, 0)?;
    let word = |at: usize| {
        u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let in_header = word(28);
    Ok(if in_header != 0 && word(24) == word(92) {
        in_header
    } else {
        from_file
    })
}
