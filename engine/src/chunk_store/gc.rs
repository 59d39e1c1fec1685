//! Garbage collection of the chunk store: packs holding dead chunks are compacted
//! (live chunks copied into the current pack, the tree repointed and flushed, only
//! then the old pack removed); references to dead chunks are dropped, and inodes kept
//! in `kept/` that nothing names any more are freed (`refs`).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;

use super::{lock, ChunkStore, Dedup, GcReport, LiveAndDead, Location};
use crate::error::{Error, IoContext, Result};
use crate::hash::Hash;

impl ChunkStore {
    /// Remove every chunk not in `live`, compacting the packs that held them, and
    /// drop the references to dead chunks (freeing the kept inodes nothing needs).
    pub fn collect_garbage(&self, live: &HashSet<Hash>) -> Result<GcReport> {
        let mut report = self.collect_packs(live)?;
        self.collect_references(live, &mut report)?;
        Ok(report)
    }

    /// References to dead chunks go; an inode in `kept/` that no reference names is
    /// unlinked, and one whose referenced chunks are under half its size has them
    /// copied into the packs and is freed; an inode in the folder that no reference
    /// names is forgotten.
    fn collect_references(&self, live: &HashSet<Hash>, report: &mut GcReport) -> Result<()> {
        for (hash, location) in self.refs.all()? {
            if !live.contains(&hash) {
                self.refs.drop_ref(&hash, location)?;
                report.chunks_removed += 1;
            }
        }
        for (key, size) in self.refs.kept_homes() {
            let referenced: u64 = self
                .refs
                .refs_of(key)?
                .iter()
                .map(|(_, location)| location.len as u64)
                .sum();
            if referenced > 0 && referenced * 2 >= size {
                continue;
            }
            if referenced > 0 {
                self.copy_out(key)?;
            } else {
                self.refs.remove_inode(key)?;
            }
            self.refs.flush()?;
            let kept = self.refs.kept_path(key);
            match std::fs::remove_file(&kept) {
                Ok(()) => report.bytes_reclaimed += size.saturating_sub(referenced),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(error).at("remove", &kept),
            }
        }
        self.refs.forget_unreferenced_homes()?;
        Ok(())
    }

    fn collect_packs(&self, live: &HashSet<Hash>) -> Result<GcReport> {
        let mut writer = lock(&self.writer);
        self.sync_locked(&mut writer)?;
        // Chunks move and go: every lookup goes to the tree until this is over (the
        // copies' syncs below remember their new places again).
        self.recent_mut().clear();
        let mut by_pack: BTreeMap<u32, LiveAndDead> = BTreeMap::new();
        for item in self.locations.iter() {
            let (key, value) = item?;
            let (Some(hash), Some(location)) =
                (Hash::from_slice(&key), Location::from_bytes(&value))
            else {
                return Err(Error::Corrupt {
                    path: self.dir.clone(),
                    reason: "malformed chunk location".to_string(),
                });
            };
            let slot = by_pack.entry(location.pack).or_default();
            if live.contains(&hash) {
                slot.0.push((hash, location));
            } else {
                slot.1.push((hash, location));
            }
        }
        let mut report = GcReport::default();
        let mut doomed_packs = Vec::new();
        for (pack, (keep, dead)) in &by_pack {
            if dead.is_empty() {
                continue;
            }
            if *pack == writer.pack {
                let next = writer.pack + 1;
                *writer = Self::new_pack(&self.dir, next)?;
            }
            drop(writer);
            for (hash, _) in keep {
                let bytes = self.get(hash)?;
                self.insert(*hash, &bytes, Dedup::None)?;
            }
            writer = lock(&self.writer);
            for (hash, location) in dead {
                self.recent_mut().by_hash.remove(hash);
                if self.locations.remove(hash.0)?.is_some() {
                    self.stored_chunks.fetch_sub(1, Ordering::Relaxed);
                    self.stored_bytes
                        .fetch_sub(location.len as u64, Ordering::Relaxed);
                }
                report.chunks_removed += 1;
                report.bytes_reclaimed += location.len as u64;
            }
            report.packs_rewritten += 1;
            doomed_packs.push(*pack);
        }
        self.sync_locked(&mut writer)?;
        // Packs no location points at (never indexed because of a crash before sync).
        // Packs some location points at *now* (after the copies above, which may have
        // filled and rolled several new packs), plus the one being written.
        let mut referenced: HashSet<u32> = HashSet::from([writer.pack]);
        for item in self.locations.iter() {
            let (_, value) = item?;
            if let Some(location) = Location::from_bytes(&value) {
                referenced.insert(location.pack);
            }
        }
        doomed_packs.retain(|pack| !referenced.contains(pack));
        for entry in std::fs::read_dir(&self.dir).at("list", &self.dir)? {
            let entry = entry.at("list", &self.dir)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(number) = name
                .strip_prefix("pack-")
                .and_then(|rest| rest.strip_suffix(".pack"))
            {
                if let Ok(number) = number.parse::<u32>() {
                    if number != writer.pack && !referenced.contains(&number) {
                        doomed_packs.push(number);
                    }
                }
            }
        }
        self.locations.flush()?;
        self.sync.sync()?;
        let mut readers = lock(&self.readers);
        for pack in doomed_packs {
            readers.remove(&pack);
            let path = self.pack_path(pack);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    return Err(Error::Io {
                        op: "remove",
                        path,
                        source: error,
                    })
                }
            }
        }
        Ok(report)
    }
}
