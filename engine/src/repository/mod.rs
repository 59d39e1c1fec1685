//! `Repository`: one node's `data_dir` — the event log, the chunk store and the folder
//! index — opened together and kept consistent.
//!
//! Layout of `data_dir`:
//!
//! ```text
//! db/           sled: trees `events` (the log), `index` (path -> entry),
//!               `chunk_locations` (hash -> pack, offset, length), `meta`
//! chunks/       pack files (see chunk_store)
//! quarantine/   events moved out of the log by a rejoin (see quarantine)
//! ```
//!
//! The log is the truth; the index is a cache of the state the log adds up to, saved
//! with the seq it reflects (`meta/index_seq`). On open, an index behind the log is
//! brought forward by re-applying the missing events, and an index that cannot be
//! reconciled is rebuilt from the whole log; either way its digest must equal the head
//! event's digest or the repository refuses to open.
//!
//! Write path of `record` (the active): chunks were stored while scanning; (1) the
//! chunk store is synced (packs fdatasync'd, locations inserted), (2) each change is
//! applied to the index and sealed into an event carrying the new digest, (3) the
//! events are appended and sled is flushed — only now can a reader see them —, (4) the
//! index entries are saved with the new `index_seq`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard};

use crate::chunk_store::{ChunkStore, GcReport};
use crate::error::{Error, Result};
use crate::folder::index::{Entry, FolderIndex};
use crate::hash::Hash;
use crate::log::{EventLog, Head};
use crate::path::RelPath;

const INDEX_SEQ_KEY: &[u8] = b"index_seq";
const BASE_INDEX_SEQ_KEY: &[u8] = b"base_index_seq";

/// One node's data directory.
pub struct Repository {
    data_dir: PathBuf,
    db: sled::Db,
    /// Makes `db`'s flushes durable (`crate::sled_sync`).
    sync: crate::sled_sync::SledSync,
    log: EventLog,
    chunks: ChunkStore,
    index_tree: sled::Tree,
    /// The index as of `meta/base_index_seq` (at or after the log's base): where a
    /// rebuild starts once old events have been compacted away.
    base_index_tree: sled::Tree,
    meta: sled::Tree,
    /// The index, and the lock every writer of the log holds.
    index: Mutex<FolderIndex>,
    /// See `content_guard`.
    content: RwLock<()>,
    /// When replay last saved the index (`fsutil::monotonic_ms`).
    index_saved_ms: std::sync::atomic::AtomicU64,
    /// How replay applies metadata (`MetaOptions`).
    numeric_ids: std::sync::atomic::AtomicBool,
    strip_setuid: std::sync::atomic::AtomicBool,
}

mod index_save;
pub(crate) mod open;
mod record;

use crate::folder::index::{decode_entry, encode_entry};
use crate::folder::meta::Meta;

impl Repository {
    /// Open (creating) the repository in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Repository> {
        std::fs::create_dir_all(data_dir).map_err(|source| Error::Io {
            op: "create",
            path: data_dir.to_path_buf(),
            source,
        })?;
        crate::path::register_temp_token(&open::temp_token(data_dir)?);
        let db = open::open_sled(&data_dir.join("db"))?;
        let sync = crate::sled_sync::SledSync::open(&data_dir.join("db"))?;
        let log = EventLog::open(&db, sync.clone())?;
        let mark = data_dir.join("log-head");
        if let Ok(text) = std::fs::read_to_string(&mark) {
            let mut words = text.split_whitespace();
            let seq = words.next().and_then(|word| word.parse::<u64>().ok());
            let hash = words.next().and_then(Hash::from_hex);
            if let (Some(seq), Some(hash)) = (seq, hash) {
                let head = log.head();
                let matches = match log.hash_at(seq) {
                    Ok(Some(found)) => found == hash,
                    Err(Error::Compacted { .. }) => true,
                    _ => false,
                };
                if seq > head.seq || !matches {
                    return Err(Error::Corrupt {
                        path: data_dir.join("db"),
                        reason: format!(
                            "this node's log had reached seq {seq} ({}) but now ends at seq {}: the log is damaged. \
                             Restore data_dir from a backup, or move it away and start with an empty one to copy the peer",
                            mark.display(),
                            head.seq
                        ),
                    });
                }
            }
        }
        log.set_head_mark(mark);
        let chunks = ChunkStore::open(
            &data_dir.join("chunks"),
            db.open_tree("chunk_locations")?,
            crate::chunk_store::RefTrees::open(&db)?,
            sync.clone(),
        )?;
        let index_tree = db.open_tree("index")?;
        let base_index_tree = db.open_tree("base_index")?;
        let meta = db.open_tree("meta")?;
        let repository = Repository {
            data_dir: data_dir.to_path_buf(),
            db,
            sync,
            log,
            chunks,
            index_tree,
            base_index_tree,
            meta,
            index: Mutex::new(FolderIndex::default()),
            content: RwLock::new(()),
            index_saved_ms: std::sync::atomic::AtomicU64::new(crate::fsutil::monotonic_ms()),
            numeric_ids: std::sync::atomic::AtomicBool::new(false),
            strip_setuid: std::sync::atomic::AtomicBool::new(false),
        };
        repository.reload_index()?;
        Ok(repository)
    }

    /// Load the saved index and bring it to the log head (rebuilding it from the log if
    /// it cannot be brought forward). Also used to undo in-memory changes after a
    /// failed batch.
    pub fn reload_index(&self) -> Result<()> {
        let mut guard = self.lock_index();
        self.reload_index_locked(&mut guard)
    }

    /// `reload_index` for a caller that already holds the index lock.
    pub(crate) fn reload_index_locked(&self, guard: &mut FolderIndex) -> Result<()> {
        let head = self.log.head();
        let saved_seq = self.saved_index_seq()?;
        let brought_forward = if saved_seq <= head.seq {
            let mut entries = Vec::new();
            for item in self.index_tree.iter() {
                let (path, bytes) = item?;
                entries.push(decode_entry(&path, &bytes)?);
            }
            let mut index = FolderIndex::from_entries(entries);
            match self.replay_into_index(&mut index, saved_seq, head.seq) {
                Ok(()) if index.digest() == head.digest => Some(index),
                Ok(()) | Err(Error::Apply { .. }) | Err(Error::Compacted { .. }) => None,
                Err(other) => return Err(other),
            }
        } else {
            None
        };
        let mut index = match brought_forward {
            Some(mut index) => {
                if saved_seq != head.seq {
                    self.save_index(&mut index, head.seq)?;
                }
                index
            }
            None => {
                tracing::warn!(
                    saved_seq,
                    head = head.seq,
                    "folder index does not match the log; rebuilding it from the log"
                );
                // From the index at the log's base (empty when nothing was compacted).
                let (mut rebuilt, base_seq) = self.load_base_index()?;
                self.replay_into_index(&mut rebuilt, base_seq, head.seq)?;
                self.save_all_index_entries(&rebuilt, head.seq)?;
                rebuilt
            }
        };
        if index.digest() != head.digest {
            return Err(Error::Corrupt {
                path: self.data_dir.join("db"),
                reason: format!(
                    "the folder index adds up to digest {} but the log head (seq {}) says {}",
                    index.digest(),
                    head.seq,
                    head.digest
                ),
            });
        }
        index.take_dirty();
        *guard = index;
        Ok(())
    }

    fn replay_into_index(&self, index: &mut FolderIndex, from_seq: u64, to_seq: u64) -> Result<()> {
        let mut tip = (from_seq, self.log.hash_at(from_seq)?.unwrap_or_default());
        while tip.0 < to_seq {
            let batch = self.log.events_after(tip.0, &tip.1, 4096)?;
            let Some(last) = batch.last() else { break };
            tip = (last.seq(), last.hash);
            for event in &batch {
                index
                    .apply(&event.body.change)
                    .map_err(|misfit| Error::Apply {
                        seq: event.seq(),
                        path: misfit.path.to_string(),
                        reason: misfit.reason,
                    })?;
            }
        }
        Ok(())
    }

    fn saved_index_seq(&self) -> Result<u64> {
        Ok(match self.meta.get(INDEX_SEQ_KEY)? {
            Some(bytes) => {
                u64::from_be_bytes(bytes.as_ref().try_into().map_err(|_| Error::Corrupt {
                    path: self.data_dir.join("db"),
                    reason: "meta/index_seq is not 8 bytes".to_string(),
                })?)
            }
            None => 0,
        })
    }

    /// Replace the saved index by `index`, as of `seq`.
    pub(crate) fn save_all_index_entries(&self, index: &FolderIndex, seq: u64) -> Result<()> {
        self.index_tree.clear()?;
        // In bounded batches, as `save_index` does.
        let mut batch = sled::Batch::default();
        let mut in_batch = 0;
        for (path, entry, meta) in index.iter_with_meta() {
            batch.insert(path.as_bytes(), encode_entry(entry, meta));
            in_batch += 1;
            if in_batch == index_save::SAVE_PART_ENTRIES {
                self.index_tree.apply_batch(std::mem::take(&mut batch))?;
                in_batch = 0;
            }
        }
        self.index_tree.apply_batch(batch)?;
        self.meta.insert(INDEX_SEQ_KEY, &seq.to_be_bytes())?;
        Ok(())
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn log(&self) -> &EventLog {
        &self.log
    }

    pub fn chunks(&self) -> &ChunkStore {
        &self.chunks
    }

    pub fn head(&self) -> Head {
        self.log.head()
    }

    /// The index, locked. Holding it keeps every writer out.
    pub fn lock_index(&self) -> MutexGuard<'_, FolderIndex> {
        self.index
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Flush everything to disk.
    pub fn flush(&self) -> Result<()> {
        self.flush_db()?;
        Ok(())
    }

    /// What makes this repository's sled flushes durable.
    pub fn sled_sync(&self) -> &crate::sled_sync::SledSync {
        &self.sync
    }

    /// sled's flush, made durable (`crate::sled_sync`).
    fn flush_db(&self) -> Result<()> {
        self.db.flush()?;
        self.sync.sync()
    }

    /// A small persistent note in the `meta` tree (used by replay's journal).
    pub(crate) fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.meta.get(key.as_bytes())?.map(|value| value.to_vec()))
    }

    /// Every note whose key starts with `prefix`, in key order.
    pub(crate) fn meta_scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let mut notes = Vec::new();
        for item in self.meta.scan_prefix(prefix.as_bytes()) {
            let (key, value) = item?;
            notes.push((String::from_utf8_lossy(&key).into_owned(), value.to_vec()));
        }
        Ok(notes)
    }

    pub(crate) fn meta_set(&self, key: &str, value: Option<&[u8]>) -> Result<()> {
        self.meta_set_unflushed(key, value)?;
        self.flush_db()?;
        Ok(())
    }

    /// `meta_set` without the flush: durable with the next flush of the store (for a
    /// note whose loss in a crash costs only some redundant work).
    pub(crate) fn meta_set_unflushed(&self, key: &str, value: Option<&[u8]>) -> Result<()> {
        match value {
            Some(value) => self.meta.insert(key.as_bytes(), value)?,
            None => self.meta.remove(key.as_bytes())?,
        };
        Ok(())
    }

    /// Every chunk a retained event, the index or the base index names.
    pub fn live_chunks(&self) -> Result<HashSet<Hash>> {
        let mut live: HashSet<Hash> = self.lock_index().chunk_hashes().collect();
        live.extend(self.load_base_index()?.0.chunk_hashes());
        let base = self.log.base();
        let mut tip = (base.seq, base.hash);
        loop {
            let batch = self.log.events_after(tip.0, &tip.1, 4096)?;
            let Some(last) = batch.last() else { break };
            tip = (last.seq(), last.hash);
            for event in &batch {
                if let Some(chunks) = event.body.change.chunks() {
                    live.extend(chunks.iter().map(|chunk| chunk.hash));
                }
            }
        }
        Ok(live)
    }

    /// The saved base index and the seq it is at.
    fn load_base_index(&self) -> Result<(FolderIndex, u64)> {
        let seq = match self.meta.get(BASE_INDEX_SEQ_KEY)? {
            Some(bytes) => {
                u64::from_be_bytes(bytes.as_ref().try_into().map_err(|_| Error::Corrupt {
                    path: self.data_dir.join("db"),
                    reason: "meta/base_index_seq is not 8 bytes".to_string(),
                })?)
            }
            None => 0,
        };
        let mut entries = Vec::new();
        for item in self.base_index_tree.iter() {
            let (path, bytes) = item?;
            entries.push(decode_entry(&path, &bytes)?);
        }
        let mut index = FolderIndex::from_entries(entries);
        index.take_dirty();
        Ok((index, seq))
    }

    pub(crate) fn save_base_index(&self, index: &FolderIndex, seq: u64) -> Result<()> {
        self.base_index_tree.clear()?;
        let mut batch = sled::Batch::default();
        for (path, entry, meta) in index.iter_with_meta() {
            batch.insert(path.as_bytes(), encode_entry(entry, meta));
        }
        self.base_index_tree.apply_batch(batch)?;
        self.meta.insert(BASE_INDEX_SEQ_KEY, &seq.to_be_bytes())?;
        self.flush_db()?;
        Ok(())
    }

    /// Compact the log, keeping the last `keep_events` events: the index at the new
    /// base is saved first (so rebuilds and quarantines still work), then the older
    /// events are removed. Returns how many were removed.
    pub fn compact(&self, keep_events: u64) -> Result<u64> {
        let mut index = self.lock_index();
        let head = self.log.head();
        // Replay saves the index only now and then; the events it has not saved yet
        // must outlive this compaction, or the next open would rebuild it from the base.
        self.save_index(&mut index, head.seq)?;
        let mut target = head.seq.saturating_sub(keep_events);
        // Never cut into a group the log ends inside: a promotion puts the log back to
        // where that group began, which must still be in the log.
        if let Some(start) = self.incomplete_group_start()? {
            target = target.min(start - 1);
        }
        if target <= self.log.base().seq {
            return Ok(0);
        }
        let (mut base_index, base_seq) = self.load_base_index()?;
        self.replay_into_index(&mut base_index, base_seq, target)?;
        self.save_base_index(&base_index, target)?;
        let removed = self.log.compact_through(target)?;
        tracing::info!(removed, base = target, "compacted the log");
        Ok(removed)
    }

    /// How this node applies recorded metadata (set from its configuration).
    pub fn set_meta_options(&self, options: crate::folder::meta::MetaOptions) {
        self.numeric_ids
            .store(options.numeric_ids, std::sync::atomic::Ordering::Relaxed);
        self.strip_setuid
            .store(options.strip_setuid, std::sync::atomic::Ordering::Relaxed);
    }

    /// See `set_meta_options`.
    pub fn meta_options(&self) -> crate::folder::meta::MetaOptions {
        crate::folder::meta::MetaOptions {
            numeric_ids: self.numeric_ids.load(std::sync::atomic::Ordering::Relaxed),
            strip_setuid: self.strip_setuid.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// The folder's state now: the head and every index entry (what a passive whose
    /// head was compacted away starts from).
    pub fn snapshot(&self) -> (Head, Vec<(RelPath, Entry, Option<Meta>)>) {
        let index = self.lock_index();
        let head = self.log.head();
        (
            head,
            index
                .iter_with_meta()
                .map(|(path, entry, meta)| (path.clone(), entry.clone(), meta.cloned()))
                .collect(),
        )
    }

    /// Held (shared) by anyone who stores chunks and then records or applies events
    /// naming them — capture's scan, the passive's fetch — so that garbage collection,
    /// which takes it exclusively, never removes a chunk stored for an event to come.
    pub fn content_guard(&self) -> RwLockReadGuard<'_, ()> {
        self.content
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Remove chunks that no retained event or index entry names.
    pub fn collect_garbage(&self) -> Result<GcReport> {
        let _no_content_in_flight = self
            .content
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let live = self.live_chunks()?;
        self.chunks.collect_garbage(&live)
    }
}
