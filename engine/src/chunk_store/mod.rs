//! Content: files cut into chunks (`chunking`) and the store that keeps them (packs,
//! references to the passive's own files, garbage collection).
//!
//! The chunk store: content-addressed, verified, packed, garbage-collected.
//!
//! Chunks are appended to pack files `data_dir/chunks/pack-NNNNNNNN.pack`, each record
//! `"SCK1" ‖ blake3 hash (32) ‖ u32le length ‖ bytes`; a sled tree maps a hash to its
//! (pack, offset, length). Small chunks therefore cost no file of their own (the
//! machine's small-file limit is its per-file kernel cost). Packs roll at
//! `PACK_TARGET_BYTES`; every open starts a new pack, so a torn tail left by a crash is
//! never appended to. The pack's pieces (its writer, the stored location, the
//! locations synced last) are in `pack.rs`.
//!
//! Write path, in order: the record is appended (buffered), `sync` writes the buffer,
//! fdatasyncs the pack, and only then inserts the locations into the sled tree; the
//! caller flushes sled with the events that name the chunks. So a location in the
//! tree always points at bytes that were on disk first. Every read re-hashes the bytes
//! and refuses a mismatch, naming the pack and offset.
//!
//! Garbage collection (`gc.rs`) copies the live chunks of any pack that holds dead
//! ones into the current pack, syncs, repoints the tree, flushes it, and only then
//! deletes the old pack.
//!
//! On a passive, large files' chunks may instead be *referenced* in the folder's file
//! that holds them (`refs.rs`), written there once through a staged file
//! (`stage.rs`; begun as a clone of the old version where the file system clones,
//! `clone.rs`) and patched there in place when a new version keeps most of them
//! (`patch.rs`): ARCHITECTURE.md, "The passive keeps content by reference".

pub mod chunking;
pub mod rechunk;

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use crate::error::{Error, IoContext, Result};
use crate::hash::Hash;

mod absorb;
mod clone;
mod gc;
mod pack;
mod patch;
pub(crate) mod refs;
mod replay_refs;
mod stage;

pub use absorb::{AbsorbStep, LostChunk};
use pack::{Location, PackWriter, RecentLocations};
pub use patch::{patch_candidates, PatchPlan};
pub use refs::{open_inode, InodeKey, RefTrees};
pub use stage::{ContentMode, Staged, BY_REF_MIN_BYTES};

pub(super) const RECORD_MAGIC: &[u8; 4] = b"SCK1";
pub(super) const RECORD_HEADER_BYTES: u64 = 4 + 32 + 4;
/// A pack is closed and a new one started once it passes this size.
pub const PACK_TARGET_BYTES: u64 = 256 << 20;
/// Writes are gathered in a buffer of this size before they reach the pack file.
const WRITE_BUFFER_BYTES: usize = 4 << 20;
/// Chunks at least this large skip the buffer: their bytes go straight to the pack
/// (one copy less of a large file's content).
const DIRECT_WRITE_BYTES: usize = 64 << 10;

/// Which stored copies of a chunk make `insert` skip it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dedup {
    /// Synced or pending.
    All,
    /// Pending only: the caller found it missing from the store a moment ago.
    Pending,
    /// None: write it again (garbage collection moving it).
    None,
}

/// A pack's chunks split into the ones to keep and the ones to drop.
type LiveAndDead = (Vec<(Hash, Location)>, Vec<(Hash, Location)>);

/// What a garbage collection did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    pub chunks_removed: u64,
    pub bytes_reclaimed: u64,
    pub packs_rewritten: u64,
}

/// The content-addressed store of chunks under `data_dir/chunks`.
pub struct ChunkStore {
    dir: PathBuf,
    locations: sled::Tree,
    /// Makes the trees' flushes durable (`crate::sled_sync`).
    sync: crate::sled_sync::SledSync,
    writer: Mutex<PackWriter>,
    readers: Mutex<HashMap<u32, Arc<File>>>,
    recent: RwLock<RecentLocations>,
    /// A pack is rolled once it passes this many bytes (`PACK_TARGET_BYTES`; tests
    /// lower it to exercise rolling).
    pack_target_bytes: AtomicU64,
    /// Synced chunks and their bytes, counted once at open and kept up to date.
    stored_chunks: AtomicU64,
    stored_bytes: AtomicU64,
    /// Chunks kept by reference in files (the passive's large files).
    refs: refs::Refs,
    staging: stage::Staging,
    /// Chunks lost before they were copied out of their files (`absorb.rs`).
    lost: absorb::Lost,
    /// Whether replay may patch a large file kept by reference in place (`patch.rs`).
    patch_in_place: std::sync::atomic::AtomicBool,
    /// Bytes of large files' new versions taken from their last version's chunks
    /// (`rechunk`) and from clones of the version they replace (`clone.rs`).
    reused_bytes: AtomicU64,
    cloned_bytes: AtomicU64,
}

fn pack_name(pack: u32) -> String {
    format!("pack-{pack:08}.pack")
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; the store's invariants
    // live on disk, so carrying on with the inner value is safe.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ChunkStore {
    /// Open (creating) the store in `dir`, with its locations in `locations` and its
    /// references in `references` (hash → inode range) and `inodes` (inode → home).
    pub fn open(
        dir: &Path,
        locations: sled::Tree,
        ref_trees: RefTrees,
        sync: crate::sled_sync::SledSync,
    ) -> Result<ChunkStore> {
        std::fs::create_dir_all(dir).at("create", dir)?;
        let mut highest = 0u32;
        for entry in std::fs::read_dir(dir).at("list", dir)? {
            let entry = entry.at("list", dir)?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(number) = name
                .strip_prefix("pack-")
                .and_then(|rest| rest.strip_suffix(".pack"))
            {
                if let Ok(number) = number.parse::<u32>() {
                    highest = highest.max(number);
                }
            }
        }
        let (mut stored_chunks, mut stored_bytes) = (0u64, 0u64);
        // Per pack: how many chunks the tree places there and where the last one ends.
        let mut needed: HashMap<u32, (u64, u64)> = HashMap::new();
        for item in locations.iter() {
            let (_, value) = item?;
            if let Some(location) = Location::from_bytes(&value) {
                stored_chunks += 1;
                stored_bytes += location.len as u64;
                let (count, end) = needed.entry(location.pack).or_default();
                *count += 1;
                *end = (*end).max(location.offset + location.len as u64);
            }
        }
        Self::check_packs(dir, &needed)?;
        // Above every pack on disk and every pack the tree names.
        let highest = needed.keys().copied().fold(highest, u32::max);
        let writer = Self::new_pack(dir, highest + 1)?;
        let refs = refs::Refs::open(dir, ref_trees, sync.clone())?;
        let lost = absorb::Lost::open(dir)?;
        Ok(ChunkStore {
            refs,
            lost,
            patch_in_place: std::sync::atomic::AtomicBool::new(false),
            staging: stage::Staging::default(),
            reused_bytes: AtomicU64::new(0),
            cloned_bytes: AtomicU64::new(0),
            pack_target_bytes: AtomicU64::new(PACK_TARGET_BYTES),
            stored_chunks: AtomicU64::new(stored_chunks),
            stored_bytes: AtomicU64::new(stored_bytes),
            dir: dir.to_path_buf(),
            locations,
            sync,
            writer: Mutex::new(writer),
            readers: Mutex::new(HashMap::new()),
            recent: RwLock::new(RecentLocations::default()),
        })
    }

    /// Every pack the tree names exists and is long enough: a removed or cut pack
    /// file (content the log names and peers may ask for) is found at open, naming the
    /// file, rather than at the first read.
    fn check_packs(dir: &Path, needed: &HashMap<u32, (u64, u64)>) -> Result<()> {
        let mut packs: Vec<_> = needed.iter().collect();
        packs.sort();
        for (pack, (count, end)) in packs {
            let path = dir.join(pack_name(*pack));
            let found = match std::fs::metadata(&path) {
                Ok(metadata) => metadata.len(),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    return Err(Error::Corrupt {
                        path,
                        reason: format!(
                            "the pack file is missing, but {count} stored chunks are in it; restore it, or move the data directory aside and let the node start again from its peer"
                        ),
                    })
                }
                Err(source) => {
                    return Err(Error::Io {
                        op: "stat",
                        path,
                        source,
                    })
                }
            };
            if found < *end {
                return Err(Error::Corrupt {
                    path,
                    reason: format!(
                        "the pack file has {found} bytes, but its {count} stored chunks reach byte {end}; restore it, or move the data directory aside and let the node start again from its peer"
                    ),
                });
            }
        }
        Ok(())
    }

    fn new_pack(dir: &Path, pack: u32) -> Result<PackWriter> {
        let path = dir.join(pack_name(pack));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .at("create", &path)?;
        let end = file.metadata().at("stat", &path)?.len();
        crate::fsutil::fsync_dir(dir)?;
        Ok(PackWriter {
            pack,
            file,
            end,
            buffer: Vec::with_capacity(WRITE_BUFFER_BYTES),
            pending: HashMap::new(),
        })
    }

    fn pack_path(&self, pack: u32) -> PathBuf {
        self.dir.join(pack_name(pack))
    }

    /// Whether a pack holds `hash` (synced or pending), whatever references say.
    fn in_packs(&self, hash: &Hash) -> Result<bool> {
        Ok(self.recent().by_hash.contains_key(hash)
            || self.locations.contains_key(hash.0)?
            || lock(&self.writer).pending.contains_key(hash))
    }

    fn recent(&self) -> std::sync::RwLockReadGuard<'_, RecentLocations> {
        self.recent
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn recent_mut(&self) -> std::sync::RwLockWriteGuard<'_, RecentLocations> {
        self.recent
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn stored_location(&self, hash: &Hash) -> Result<Option<Location>> {
        if let Some(location) = self.recent().by_hash.get(hash) {
            return Ok(Some(*location));
        }
        match self.locations.get(hash.0)? {
            None => Ok(None),
            Some(bytes) => Location::from_bytes(&bytes)
                .map(Some)
                .ok_or_else(|| Error::Corrupt {
                    path: self.dir.clone(),
                    reason: format!(
                        "chunk location of {hash} has {} bytes, expected 16",
                        bytes.len()
                    ),
                }),
        }
    }

    /// True when the store has the chunk (synced or pending).
    pub fn contains(&self, hash: &Hash) -> Result<bool> {
        // Synced chunks are found without the writer's lock, which a sync holds
        // through its fdatasync.
        if self.recent().by_hash.contains_key(hash)
            || self.locations.contains_key(hash.0)?
            || self.refs.lookup(hash)?.is_some()
        {
            return Ok(true);
        }
        let writer = lock(&self.writer);
        // Under the lock no sync is moving pending chunks into the tree: one of the
        // two has it, or the store does not.
        Ok(writer.pending.contains_key(hash) || self.locations.contains_key(hash.0)?)
    }

    /// The hashes of `wanted` the store lacks, in the order given, without duplicates.
    pub fn missing(&self, wanted: impl IntoIterator<Item = Hash>) -> Result<Vec<Hash>> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for hash in wanted {
            if seen.insert(hash) && !self.contains(&hash)? {
                out.push(hash);
            }
        }
        Ok(out)
    }

    /// Store `bytes`, returning their hash. Storing a chunk twice writes it once.
    pub fn put(&self, bytes: &[u8]) -> Result<Hash> {
        let hash = Hash::of(bytes);
        self.insert(hash, bytes, Dedup::All)?;
        Ok(hash)
    }

    /// Store bytes received from elsewhere under the hash they were announced with;
    /// bytes that do not hash to `expected` are refused and nothing is stored.
    pub fn put_verified(&self, expected: Hash, bytes: &[u8]) -> Result<()> {
        self.put_received(expected, bytes, Dedup::All)
    }

    /// `put_verified` for a chunk the caller found missing a moment ago and then
    /// fetched (a passive's pull, the only writer of its store): the tree of synced
    /// locations is not searched again (about a tenth of a small-file sync's CPU on the
    /// passive, all in sled lookups), only the pending chunks. Should it have been
    /// stored meanwhile after all, it is stored again: its location moves to the new
    /// copy, the old one is dead space until its pack is compacted — never a wrong or
    /// missing chunk.
    pub fn put_fetched(&self, expected: Hash, bytes: &[u8]) -> Result<()> {
        self.put_received(expected, bytes, Dedup::Pending)
    }

    fn put_received(&self, expected: Hash, bytes: &[u8], dedup: Dedup) -> Result<()> {
        let actual = Hash::of(bytes);
        if actual != expected {
            return Err(Error::ChunkMismatch {
                expected,
                actual,
                location: " (as received)".to_string(),
            });
        }
        if self.put_staged(expected, bytes)? {
            return Ok(());
        }
        self.insert(expected, bytes, dedup)
    }

    fn insert(&self, hash: Hash, bytes: &[u8], dedup: Dedup) -> Result<()> {
        if dedup == Dedup::All
            && (self.recent().by_hash.contains_key(&hash) || self.locations.contains_key(hash.0)?)
        {
            return Ok(());
        }
        let force = dedup == Dedup::None;
        let len = u32::try_from(bytes.len()).map_err(|_| Error::Corrupt {
            path: self.dir.clone(),
            reason: format!("chunk {hash} of {} bytes is too large", bytes.len()),
        })?;
        let mut writer = lock(&self.writer);
        if !force && writer.pending.contains_key(&hash) {
            return Ok(());
        }
        if writer.end >= self.pack_target_bytes.load(Ordering::Relaxed) {
            self.sync_locked(&mut writer)?;
            let next = writer.pack + 1;
            *writer = Self::new_pack(&self.dir, next)?;
        }
        let location = Location {
            pack: writer.pack,
            offset: writer.end + RECORD_HEADER_BYTES,
            len,
        };
        let path = self.pack_path(writer.pack);
        if bytes.len() >= DIRECT_WRITE_BYTES {
            writer.append_direct(&path, hash, bytes)?;
        } else {
            if writer.buffer.len() + bytes.len() + RECORD_HEADER_BYTES as usize > WRITE_BUFFER_BYTES
            {
                writer.flush_buffer(&path)?;
            }
            writer.append_header(hash, len);
            writer.buffer.extend_from_slice(bytes);
            writer.end += bytes.len() as u64;
        }
        writer.pending.insert(hash, location);
        Ok(())
    }

    /// Roll packs at `bytes` instead of `PACK_TARGET_BYTES` (for tests).
    #[doc(hidden)]
    pub fn set_pack_target_bytes(&self, bytes: u64) {
        self.pack_target_bytes.store(bytes, Ordering::Relaxed);
    }

    /// True when chunks were stored since the last `sync` (it would write and sync),
    /// or when a sync holds the writer now (it may leave some): never waits for one.
    pub fn has_unsynced(&self) -> bool {
        match self.writer.try_lock() {
            Ok(writer) => !(writer.pending.is_empty() && writer.buffer.is_empty()),
            Err(std::sync::TryLockError::WouldBlock) => true,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => {
                let writer = poisoned.into_inner();
                !(writer.pending.is_empty() && writer.buffer.is_empty())
            }
        }
    }

    /// Make every chunk stored so far durable and findable. Call before recording an
    /// event that names them.
    pub fn sync(&self) -> Result<()> {
        let mut writer = lock(&self.writer);
        self.sync_locked(&mut writer)
    }

    fn sync_locked(&self, writer: &mut PackWriter) -> Result<()> {
        if writer.pending.is_empty() && writer.buffer.is_empty() {
            return Ok(());
        }
        let path = self.pack_path(writer.pack);
        writer.flush_buffer(&path)?;
        crate::fsutil::sync_data(&writer.file, &path)?;
        // Into the tree first, then into `recent` under its lock at once: readers
        // (a passive's write threads) take that lock for every chunk, and held across
        // thousands of tree inserts it stalled them. A reader that finds a chunk in
        // neither waits for the writer's lock, which this sync holds to the end.
        let mut synced = Vec::with_capacity(writer.pending.len());
        for (hash, location) in writer.pending.drain() {
            if self
                .locations
                .insert(hash.0, &location.to_bytes())?
                .is_none()
            {
                self.stored_chunks.fetch_add(1, Ordering::Relaxed);
                self.stored_bytes
                    .fetch_add(location.len as u64, Ordering::Relaxed);
            }
            synced.push((hash, location));
        }
        let mut recent = self.recent_mut();
        for (hash, location) in synced {
            recent.remember(hash, location);
        }
        Ok(())
    }

    fn reader(&self, pack: u32) -> Result<Arc<File>> {
        let mut readers = lock(&self.readers);
        if let Some(file) = readers.get(&pack) {
            return Ok(file.clone());
        }
        let path = self.pack_path(pack);
        let file = Arc::new(File::open(&path).at("open", &path)?);
        readers.insert(pack, file.clone());
        Ok(file)
    }

    /// The chunk's bytes, verified against its hash.
    pub fn get(&self, hash: &Hash) -> Result<Vec<u8>> {
        if let Some(bytes) = self.read_referenced(hash)? {
            return Ok(bytes);
        }
        let (bytes, path, offset) = self.read(hash)?;
        let actual = Hash::of(&bytes);
        if actual != *hash {
            return Err(Error::ChunkMismatch {
                expected: *hash,
                actual,
                location: format!(" in {} at offset {offset}", path.display()),
            });
        }
        Ok(bytes)
    }

    /// The chunk's bytes, *not* hashed: only for a caller that checks them otherwise
    /// before anyone can see them (replay hashes the whole file it writes and refuses
    /// it, naming the bad chunk with `get`, when it does not add up).
    pub fn get_unverified(&self, hash: &Hash) -> Result<Vec<u8>> {
        if let Some(bytes) = self.read_referenced(hash)? {
            return Ok(bytes);
        }
        Ok(self.read(hash)?.0)
    }

    /// True when a pack has the chunk (synced).
    fn in_pack(&self, hash: &Hash) -> Result<bool> {
        Ok(self.recent().by_hash.contains_key(hash) || self.locations.contains_key(hash.0)?)
    }

    /// A chunk that is only referenced (no pack has it), verified; `None` when a pack
    /// has it or no reference names it.
    fn read_referenced(&self, hash: &Hash) -> Result<Option<Vec<u8>>> {
        if self.in_pack(hash)? {
            return Ok(None);
        }
        match self.refs.lookup(hash)? {
            Some(location) => match self.refs.read(hash, location) {
                // Moved out to a pack while it was read (a patch in place on another
                // thread): read from there.
                Err(Error::ChunkMissing { .. }) if self.in_pack(hash)? => Ok(None),
                other => other.map(Some),
            },
            None => Ok(None),
        }
    }

    /// The stored bytes of `hash`, with the pack and offset they came from.
    fn read(&self, hash: &Hash) -> Result<(Vec<u8>, PathBuf, u64)> {
        // A synced chunk is read without the writer's lock (a sync holds it through
        // its fdatasync); a pending one needs the buffer written out first.
        let location = match self.stored_location(hash)? {
            Some(location) => location,
            None => {
                let mut writer = lock(&self.writer);
                match writer.pending.get(hash).copied() {
                    Some(location) => {
                        let path = self.pack_path(writer.pack);
                        writer.flush_buffer(&path)?;
                        location
                    }
                    // Under the lock no sync is moving it into the tree.
                    None => self
                        .stored_location(hash)?
                        .ok_or(Error::ChunkMissing { hash: *hash })?,
                }
            }
        };
        let path = self.pack_path(location.pack);
        // A pack removed or cut short under a running node: corrupt data, named.
        let gone = |reason: &str| Error::Corrupt {
            path: path.clone(),
            reason: format!(
                "chunk {hash} is stored at offset {} ({} bytes) but {reason}",
                location.offset, location.len
            ),
        };
        let file = match self.reader(location.pack) {
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Err(gone("the pack file is missing"));
            }
            other => other?,
        };
        let mut bytes = vec![0u8; location.len as usize];
        match file.read_exact_at(&mut bytes, location.offset) {
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(gone("the pack file ends before it"));
            }
            other => other.at("read", &path)?,
        }
        Ok((bytes, path, location.offset))
    }

    /// Bytes of large files' new versions this store took from their last version's
    /// chunks (compared, `rechunk`) rather than cut and hashed again.
    pub fn reused_bytes(&self) -> u64 {
        self.reused_bytes.load(Ordering::Relaxed)
    }

    /// Bytes of staged files this store took from clones of the versions they
    /// replace (`clone.rs`) rather than wrote.
    pub fn cloned_bytes(&self) -> u64 {
        self.cloned_bytes.load(Ordering::Relaxed)
    }

    /// Number of chunks and their total bytes (synced chunks only).
    pub fn usage(&self) -> (u64, u64) {
        (
            self.stored_chunks.load(Ordering::Relaxed),
            self.stored_bytes.load(Ordering::Relaxed),
        )
    }

    /// Bytes the pack files (and the inodes moved into `kept/`) take on disk.
    pub fn disk_bytes(&self) -> Result<u64> {
        let mut total = 0;
        for dir in [&self.dir, &self.refs.kept_dir] {
            for entry in std::fs::read_dir(dir).at("list", dir)? {
                let entry = entry.at("list", dir)?;
                let metadata = entry.metadata().at("stat", entry.path())?;
                if metadata.is_file() {
                    total += metadata.len();
                }
            }
        }
        Ok(total)
    }

    /// Chunks kept by reference (committed): how many and their bytes.
    pub fn referenced_usage(&self) -> (u64, u64) {
        self.refs.usage()
    }
}
