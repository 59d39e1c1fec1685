//! When and how the folder index is saved to sled: the entries replay and recording
//! changed are written as of a log seq, at a time chosen so that the save holds up
//! as little as possible (`index_save_due`).

use super::{encode_entry, Repository, INDEX_SEQ_KEY};
use crate::error::Result;
use crate::folder::index::FolderIndex;

/// Replay and recording save the index once this many paths changed, or this long
/// after its last save, and otherwise leave it to `save_index_if_dirty` when the
/// passive or capture is idle:
/// the log holds every change meanwhile, and an open replays the events after the
/// saved seq. (A save per batch cost a fifth of a small-file catch-up; the 20,000
/// paths a catch-up leaves cost 50-80 ms, once, to the next change if saved then.)
///
/// A node that keeps up (small batches or groups: a passive streaming, capture of a
/// steady trickle) saves sooner, once `STREAMING_INDEX_SAVE_PATHS` changed: the save
/// runs under the index lock, so what it holds up is the next change, and 10 s of
/// changes at 1,000/s (10,000 entries) held one for 130 ms — the lag benchmark's
/// p99. Catching up (large batches) still defers to idle, where the cost is nobody's.
const INDEX_SAVE_PATHS: usize = 65_536;
const INDEX_SAVE_INTERVAL_MS: u64 = 10_000;
const STREAMING_INDEX_SAVE_PATHS: usize = 1_024;
/// A batch or group of at most this many events is "keeping up".
const STREAMING_BATCH_EVENTS: usize = 64;
/// Index entries per sled batch when the index is saved.
pub(super) const SAVE_PART_ENTRIES: usize = 256;

/// Whether the index should be saved now: `dirty` entries unsaved, `since_save_ms`
/// since the last save, after a batch or group of `batch_events` events.
fn index_save_due(dirty: usize, since_save_ms: u64, batch_events: usize) -> bool {
    dirty >= INDEX_SAVE_PATHS
        || since_save_ms >= INDEX_SAVE_INTERVAL_MS
        || (batch_events <= STREAMING_BATCH_EVENTS && dirty >= STREAMING_INDEX_SAVE_PATHS)
}

impl Repository {
    /// `save_index` when `index_save_due` says so after a batch or group of
    /// `batch_events`; until then the changes stay marked in `index`.
    pub(crate) fn save_index_when_due(
        &self,
        index: &mut FolderIndex,
        seq: u64,
        batch_events: usize,
    ) -> Result<()> {
        use std::sync::atomic::Ordering;
        let now = crate::fsutil::monotonic_ms();
        let last = self.index_saved_ms.load(Ordering::Relaxed);
        if !index_save_due(index.dirty_len(), now.saturating_sub(last), batch_events) {
            return Ok(());
        }
        self.save_index(index, seq)?;
        self.index_saved_ms.store(now, Ordering::Relaxed);
        Ok(())
    }

    /// How many index entries replay or recording changed and has not saved yet.
    pub fn unsaved_index_paths(&self) -> usize {
        self.lock_index().dirty_len()
    }

    /// Save the index entries replay or recording changed and has not saved yet, if any
    /// (as of the log head), and flush the store: for a passive with nothing to apply
    /// for a moment, which has just checked the disk's free space, or an idle capture (sled's own background
    /// flush could meet a disk filled meanwhile). Returns how many entries.
    pub fn save_index_if_dirty(&self) -> Result<usize> {
        let mut index = self.lock_index();
        let dirty = index.dirty_len();
        if dirty > 0 {
            // Under the index lock the index matches the log head.
            self.save_index(&mut index, self.log.head().seq)?;
            self.flush_db()?;
            self.index_saved_ms.store(
                crate::fsutil::monotonic_ms(),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        Ok(dirty)
    }

    /// Save the entries changed since the last save, as of `seq`: in sled batches of
    /// at most `SAVE_PART_ENTRIES` (one batch of a whole folder's 20,000 entries held
    /// about 100 MB until it was applied: sled frees the nodes a batch replaces only
    /// once it is done), then the seq. A save cut short by a crash leaves entries newer
    /// than the saved seq; opening replays the log over them and, unless that ends at
    /// the head's digest, rebuilds the index from the log (`reload_index_locked`).
    pub(crate) fn save_index(&self, index: &mut FolderIndex, seq: u64) -> Result<()> {
        let dirty: Vec<_> = index.take_dirty().into_iter().collect();
        for part in dirty.chunks(SAVE_PART_ENTRIES) {
            let mut batch = sled::Batch::default();
            for path in part {
                match index.get(path) {
                    Some(entry) => {
                        batch.insert(path.as_bytes(), encode_entry(entry, index.meta(path)))
                    }
                    None => batch.remove(path.as_bytes()),
                }
            }
            self.index_tree.apply_batch(batch)?;
        }
        self.meta.insert(INDEX_SEQ_KEY, &seq.to_be_bytes())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_keeping_up_saves_small_and_a_catch_up_defers() {
        // Streaming: small batches save once a thousand-odd paths changed, so the
        // save that holds up the next change stays small.
        assert!(!index_save_due(STREAMING_INDEX_SAVE_PATHS - 1, 0, 1));
        assert!(index_save_due(STREAMING_INDEX_SAVE_PATHS, 0, 1));
        // Catching up: large batches leave it to idle, the interval or the cap.
        assert!(!index_save_due(20_000, 0, 1_024));
        assert!(index_save_due(INDEX_SAVE_PATHS, 0, 1_024));
        assert!(index_save_due(1, INDEX_SAVE_INTERVAL_MS, 1_024));
    }
}
