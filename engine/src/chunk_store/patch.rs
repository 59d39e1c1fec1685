//! The chunk store's half of the passive's in-place patch (`replay::patch` writes the
//! file): which large files a batch may patch where they are instead of writing a
//! whole new version, what of the new version is already in place, and moving the
//! chunks a patch overwrites out of the file into the packs first.
//!
//! A file kept by reference (ARCHITECTURE.md, "The passive keeps content by
//! reference") holds the chunks of its version at their offsets. A new version that
//! keeps most of them at the same offsets (an append, pages rewritten in a database)
//! is patched: only its other chunks are written — when the node allows it
//! (`set_patch_in_place`, the `patch_in_place` key): a reader may see the file half
//! patched, as with `rsync --inplace`. The chunks the patch overwrites (or
//! cuts off) may still be named by retained events, so they are copied into the
//! packs, synced, and their references dropped before the first byte is overwritten.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::Ordering;

use super::refs::InodeKey;
use super::{ChunkStore, Dedup};
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::log::event::{Change, ChunkRef, Event};

/// A new version's share of bytes already in place (at the same offsets) must reach
/// this fraction for it to be patched rather than written whole.
const PATCH_MIN_KEPT_SHARE: f64 = 0.5;

/// What patching one file to a new version writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatchPlan {
    /// The file's inode, a committed home of references.
    pub key: InodeKey,
    /// The chunks of the new version not already in place: (hash, offset, length), in
    /// file order.
    pub writes: Vec<(Hash, u64, u32)>,
    /// Bytes of the new version already in place.
    pub kept_bytes: u64,
}

impl PatchPlan {
    /// Bytes the patch writes.
    pub fn written_bytes(&self) -> u64 {
        self.writes.iter().map(|(_, _, len)| *len as u64).sum()
    }
}

/// The Put/File events of `events` that may be patched in place: large; the last
/// write of their path in the batch, with no other kind of event naming it or a path
/// below it, and none but metadata changes naming a parent of it (a directory's times
/// move whenever a file beside it comes or goes); with no hard-link companion in the
/// batch. (Whether one is patched depends on the file it finds:
/// `ChunkStore::plan_patch`, and `replay::patch`, which also refuses a file with
/// another name.)
pub fn patch_candidates(events: &[Event]) -> HashSet<u64> {
    let is_write = |change: &Change| matches!(change, Change::Put { .. } | Change::File { .. });
    // For each path: its last write, and whether any event not a write names it.
    let mut last_write: HashMap<&[u8], u64> = HashMap::new();
    let mut named_otherwise: HashSet<&[u8]> = HashSet::new();
    let mut named: HashSet<&[u8]> = HashSet::new();
    let mut moved: HashSet<&[u8]> = HashSet::new();
    // The paths of each link group (a path written twice has one value twice).
    let mut links: HashMap<u64, HashSet<&[u8]>> = HashMap::new();
    for event in events {
        let change = &event.body.change;
        if let Change::File { meta, .. } = change {
            if let Some(path) = change.paths().first() {
                links.entry(meta.link).or_default().insert(path.as_bytes());
            }
        }
        for path in change.paths() {
            named.insert(path.as_bytes());
            if is_write(change) {
                last_write.insert(path.as_bytes(), event.seq());
            } else {
                named_otherwise.insert(path.as_bytes());
                if !matches!(change, Change::SetMeta { .. } | Change::SetMode { .. }) {
                    moved.insert(path.as_bytes());
                }
            }
        }
    }
    let mut out = HashSet::new();
    for event in events {
        let change = &event.body.change;
        let (Change::Put { path, size, .. } | Change::File { path, size, .. }) = change else {
            continue;
        };
        if *size < super::BY_REF_MIN_BYTES {
            continue;
        }
        let linked = matches!(change, Change::File { meta, .. } if links.get(&meta.link).is_some_and(|paths| paths.len() > 1));
        let last = last_write.get(path.as_bytes()) == Some(&event.seq())
            && !named_otherwise.contains(path.as_bytes());
        let ancestors = path
            .ancestors()
            .iter()
            .any(|ancestor| moved.contains(ancestor.as_bytes()));
        let below = {
            let mut prefix = path.as_bytes().to_vec();
            prefix.push(b'/');
            named.iter().any(|other| other.starts_with(&prefix))
        };
        if last && !linked && !ancestors && !below {
            out.insert(event.seq());
        }
    }
    out
}

impl ChunkStore {
    /// Let replay patch large files kept by reference in place (off by default: a
    /// reader of the passive's folder may then see such a file half patched, which
    /// DESIGN.md's invariant 5 rules out; a crash is put back all the same).
    pub fn set_patch_in_place(&self, on: bool) {
        self.patch_in_place.store(on, Ordering::Relaxed);
    }

    /// See `set_patch_in_place`.
    pub fn patches_in_place(&self) -> bool {
        self.patch_in_place.load(Ordering::Relaxed)
    }

    /// How to patch the file at `full` (in the passive's folder) into the version of
    /// `chunks` (`size` bytes): `None` when it is not a committed file kept by
    /// reference, or when less than half of the new version is in it at the same
    /// offsets already (then it is written whole).
    pub fn plan_patch(
        &self,
        full: &Path,
        chunks: &[ChunkRef],
        size: u64,
    ) -> Result<Option<PatchPlan>> {
        if size == 0 || chunks.iter().map(|chunk| chunk.len as u64).sum::<u64>() != size {
            return Ok(None);
        }
        let Some(key) = self.refs.committed_home_at(full) else {
            return Ok(None);
        };
        // What the inode holds where, by its references.
        let held: HashMap<u64, (Hash, u32)> = self
            .refs
            .refs_of(key)?
            .into_iter()
            .map(|(hash, location)| (location.offset, (hash, location.len)))
            .collect();
        let mut writes = Vec::new();
        let mut kept_bytes = 0u64;
        let mut offset = 0u64;
        for chunk in chunks {
            if held.get(&offset) == Some(&(chunk.hash, chunk.len)) {
                kept_bytes += chunk.len as u64;
            } else {
                writes.push((chunk.hash, offset, chunk.len));
            }
            offset += chunk.len as u64;
        }
        if (kept_bytes as f64) < PATCH_MIN_KEPT_SHARE * size as f64 {
            return Ok(None);
        }
        Ok(Some(PatchPlan {
            key,
            writes,
            kept_bytes,
        }))
    }

    /// Before a patch overwrites `ranges` of inode `key` (byte ranges, start to end):
    /// copy every chunk referenced in them into the packs (verified; one that no
    /// longer matches its file is lost already and skipped), make the copies durable
    /// in the packs, and drop those references (durably with the caller's next
    /// flush; a dropped reference that a crash brings back is harmless: a pack
    /// location wins over a reference). Returns the bytes copied.
    pub fn move_out_ranges(&self, key: InodeKey, ranges: &[(u64, u64)]) -> Result<u64> {
        let overlaps = |offset: u64, len: u32| {
            let end = offset + len as u64;
            ranges
                .iter()
                .any(|(start, stop)| offset < *stop && *start < end)
        };
        let moving: Vec<_> = self
            .refs
            .refs_of(key)?
            .into_iter()
            .filter(|(_, location)| overlaps(location.offset, location.len))
            .collect();
        let mut copied = 0u64;
        for (hash, location) in &moving {
            if self.in_pack(hash)? {
                continue;
            }
            match self.refs.read(hash, *location) {
                Ok(bytes) => {
                    self.insert(*hash, &bytes, Dedup::All)?;
                    copied += bytes.len() as u64;
                }
                Err(Error::ChunkMissing { .. }) => {}
                Err(error) => return Err(error),
            }
        }
        // The copies durable and findable before a reference goes: the tree of pack
        // locations flushed (a reference dropped without its copy would leave the
        // chunk nowhere).
        self.sync()?;
        self.refs.flush()?;
        for (hash, location) in moving {
            self.refs.drop_ref(&hash, location)?;
        }
        Ok(copied)
    }

    /// The inode kept by reference whose home is `full` (committed), if any.
    pub fn committed_home_at(&self, full: &Path) -> Option<InodeKey> {
        self.refs.committed_home_at(full)
    }

    /// Inode `key` was patched to `size` bytes.
    pub fn patched(&self, key: InodeKey, size: u64) -> Result<()> {
        self.refs.set_size(key, size)
    }
}
