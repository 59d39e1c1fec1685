//! Large appends written to sled in bounded parts, and still atomic.
//!
//! sled 0.34 copies a tree node (up to 17 entries) for every insert and frees the
//! old copy only once no thread holds the epoch guard it was replaced under, and
//! `Tree::apply_batch` holds one guard for the whole batch: a batch of N inserts keeps
//! about N node copies alive until it ends. The start-up capture of 20,000 small files
//! is one group, one append: as one sled batch it held about 100 MB of such copies.
//! Events are stored in runs (`runs.rs`: up to 64 events a sled value), and an append
//! of more than `PART_RUNS` runs is written in parts of that many, each its own sled
//! batch, and the `appending` mark in `log_base` makes the parts one again:
//!
//! 1. the mark — the head seq before the append — is inserted,
//! 2. the parts are applied,
//! 3. the mark is removed, then sled is flushed (once, as for a single batch).
//!
//! sled recovers its writes in order, stopping at the first torn one, so after a
//! crash either the mark is absent (nothing of the append is there, or all of it) or
//! it is there with a prefix of the parts. `EventLog::open` then removes the events
//! after the mark's seq: no reader saw them (the head moves only after the flush), so
//! an append stays all-or-nothing (invariant 2) however it was split.

use crate::error::{Error, Result};

/// Runs per sled batch (up to 256 events): the node copies one part keeps alive are
/// about this many, and a part is still large enough that sled's per-batch cost does
/// not show.
pub(super) const PART_RUNS: usize = 4;

/// Keys removed per sled batch when an interrupted append is undone.
const REMOVALS_PER_BATCH: usize = 256;

/// In the `log_base` tree while an append of several parts is being written: the head
/// seq before it (8 bytes, big-endian).
pub(super) const APPENDING_KEY: &[u8] = b"appending";

/// Insert `records` (key, value: the runs) into `events`, in parts of `PART_RUNS`
/// with the `appending` mark around them when there are more than one; `before` is
/// the head seq the records follow. Not flushed: the caller flushes once.
pub(super) fn write(
    events: &sled::Tree,
    log_base: &sled::Tree,
    before: u64,
    records: impl ExactSizeIterator<Item = ([u8; 8], Vec<u8>)>,
) -> Result<()> {
    write_parts(events, log_base, before, records, usize::MAX)
}

/// `write`, stopping after `parts` parts (as a crash would): for tests.
pub(super) fn write_parts(
    events: &sled::Tree,
    log_base: &sled::Tree,
    before: u64,
    records: impl ExactSizeIterator<Item = ([u8; 8], Vec<u8>)>,
    parts: usize,
) -> Result<()> {
    let split = records.len() > PART_RUNS;
    if split {
        log_base.insert(APPENDING_KEY, &before.to_be_bytes())?;
    }
    let mut part = sled::Batch::default();
    let mut in_part = 0;
    let mut written = 0;
    for (key, value) in records {
        part.insert(&key, value);
        in_part += 1;
        if in_part == PART_RUNS {
            if written == parts {
                return Ok(());
            }
            events.apply_batch(std::mem::take(&mut part))?;
            written += 1;
            in_part = 0;
        }
    }
    if in_part > 0 {
        if written == parts {
            return Ok(());
        }
        events.apply_batch(part)?;
    }
    if split {
        log_base.remove(APPENDING_KEY)?;
    }
    Ok(())
}

/// At open: when an append of several parts was cut short by a crash, remove what
/// it left (the events after the mark's seq) and the mark. Returns how many events
/// were removed.
pub(super) fn undo_interrupted(
    db: &sled::Db,
    sync: &crate::sled_sync::SledSync,
    events: &sled::Tree,
    log_base: &sled::Tree,
) -> Result<usize> {
    let Some(mark) = log_base.get(APPENDING_KEY)? else {
        return Ok(0);
    };
    let before = mark
        .as_ref()
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| Error::BrokenChain {
            seq: 0,
            reason: format!("the stored append mark is {} bytes, expected 8", mark.len()),
        })?;
    let mut removed = 0;
    let mut batch = sled::Batch::default();
    for item in events.range(super::codec::key(before.saturating_add(1))..) {
        let (stored_key, _) = item?;
        batch.remove(stored_key);
        removed += 1;
        if removed % REMOVALS_PER_BATCH == 0 {
            events.apply_batch(std::mem::take(&mut batch))?;
        }
    }
    events.apply_batch(batch)?;
    log_base.remove(APPENDING_KEY)?;
    db.flush()?;
    sync.sync()?;
    Ok(removed)
}
