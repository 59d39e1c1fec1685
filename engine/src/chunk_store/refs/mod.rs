//! References: chunks whose bytes are in a file standin wrote into the passive's folder
//! (or in that file's inode, moved into `kept/` once the folder no longer has it),
//! rather than in a pack — "The passive keeps content by reference" in
//! ARCHITECTURE.md.
//!
//! Two sled trees: `chunk_refs`, hash → (device, inode, offset, length), and
//! `ref_inodes`, (device, inode) → size and *home* (the absolute path the inode was
//! put at); a third, `ref_by_inode`, finds one inode's references (`by_inode.rs`;
//! what a reference is made of: `place.rs`). The inodes are also kept in memory (few:
//! large files only), together with the references not yet committed: those of
//! staged files and of files installed by a batch whose durability point has not
//! passed.
//!
//! Every read opens the home (never through a symlink; else the inode's `kept/`
//! link), checks device and inode number, reads the range and hashes it: a file
//! changed behind standin's back makes the chunk *missing* (its reference is
//! dropped), never wrong.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use crate::error::{Error, IoContext, Result};
use crate::hash::Hash;

mod by_inode;
mod forget;
mod homes;
mod kept;
mod place;

use place::key_bytes;
pub(crate) use place::{key_of, RefLoc};
pub use place::{open_inode, InodeKey, RefTrees};

/// Where an inode with references is, and how far its references are committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HomeState {
    /// A staged file being filled: not in the folder yet.
    Staged,
    /// Renamed into the folder by the event `seq`, whose part is not yet durable.
    Installed(u64),
    /// In the sled trees.
    Committed,
}

#[derive(Clone, Debug)]
pub(crate) struct Home {
    pub path: PathBuf,
    pub size: u64,
    pub state: HomeState,
}

/// The references of one store.
pub(crate) struct Refs {
    tree: sled::Tree,
    inodes: sled::Tree,
    by_inode: by_inode::ByInode,
    /// Makes the trees' flushes durable (`crate::sled_sync`).
    sync: crate::sled_sync::SledSync,
    homes: RwLock<homes::Homes>,
    opened: place::LastOpened,
    pending: RwLock<HashMap<Hash, RefLoc>>,
    /// Pending references whose place another file's reference took before they
    /// were committed (the next batch is staged while this one applies): each is
    /// committed with its own file, as if the batches had run one after the other.
    superseded: RwLock<Vec<(Hash, RefLoc)>>,
    /// Committed references that move a chunk already referenced elsewhere: applied
    /// only once the apply's batches are in the log (`apply_deferred`, at its end; an
    /// apply that wrote a large file takes no further batch), so that a crash before
    /// never leaves an old version's chunk pointing at a file `recover` removes.
    deferred: RwLock<Vec<(Hash, RefLoc)>>,
    pub kept_dir: PathBuf,
    /// Unlinks forgotten inodes' `kept/` links off the batch's path (`kept.rs`).
    pub(crate) reaper: kept::Reaper,
    pub staging_dir: PathBuf,
    count: AtomicU64,
    bytes: AtomicU64,
}

fn read_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Refs {
    /// Open the references of the store in `dir`; staged files a previous run left
    /// (nothing committed names them) are removed.
    pub fn open(dir: &Path, trees: RefTrees, sync: crate::sled_sync::SledSync) -> Result<Refs> {
        let RefTrees {
            references: tree,
            inodes,
            by_inode,
        } = trees;
        let kept_dir = dir.join("kept");
        let staging_dir = dir.join("staging");
        std::fs::create_dir_all(&kept_dir).at("create", &kept_dir)?;
        if staging_dir.exists() {
            std::fs::remove_dir_all(&staging_dir).at("remove", &staging_dir)?;
        }
        std::fs::create_dir_all(&staging_dir).at("create", &staging_dir)?;
        let mut homes = homes::Homes::default();
        for item in inodes.iter() {
            let (key, value) = item?;
            if key.len() != 16 || value.len() < 8 {
                return Err(Error::Corrupt {
                    path: dir.to_path_buf(),
                    reason: "malformed inode of a chunk reference".to_string(),
                });
            }
            let word = |at: usize| u64::from_be_bytes(key[at..at + 8].try_into().unwrap_or([0; 8]));
            let size = u64::from_le_bytes(value[..8].try_into().unwrap_or([0; 8]));
            let path = PathBuf::from(std::ffi::OsStr::from_bytes(&value[8..]));
            homes.insert(
                (word(0), word(8)),
                Home {
                    path,
                    size,
                    state: HomeState::Committed,
                },
            );
        }
        let swept = kept::sweep(&kept_dir, |key| homes.get(&key).is_some())?;
        if swept > 0 {
            tracing::info!(
                links = swept,
                dir = %kept_dir.display(),
                "removed replaced files nothing refers to any more (a stop came before their removal)"
            );
        }
        let (mut count, mut bytes) = (0u64, 0u64);
        for item in tree.iter() {
            let (_, value) = item?;
            if let Some(location) = RefLoc::from_bytes(&value) {
                count += 1;
                bytes += location.len as u64;
            }
        }
        let by_inode = by_inode::ByInode::new(by_inode);
        let healed = by_inode.heal(&tree)?;
        if healed > 0 {
            tracing::info!(
                entries = healed,
                "brought the index of references by file up to date"
            );
            by_inode.flush()?;
            sync.sync()?;
        }
        Ok(Refs {
            tree,
            inodes,
            by_inode,
            sync,
            homes: RwLock::new(homes),
            opened: place::LastOpened::default(),
            pending: RwLock::new(HashMap::new()),
            superseded: RwLock::new(Vec::new()),
            deferred: RwLock::new(Vec::new()),
            kept_dir,
            reaper: kept::Reaper::default(),
            staging_dir,
            count: AtomicU64::new(count),
            bytes: AtomicU64::new(bytes),
        })
    }

    /// The name of `key`'s link in `kept/`.
    pub fn kept_path(&self, key: InodeKey) -> PathBuf {
        self.kept_dir.join(format!("{}-{}", key.0, key.1))
    }

    /// The reference of `hash`, committed or pending.
    pub fn lookup(&self, hash: &Hash) -> Result<Option<RefLoc>> {
        if let Some(location) = read_lock(&self.pending).get(hash) {
            return Ok(Some(*location));
        }
        Ok(self
            .tree
            .get(hash.0)?
            .and_then(|bytes| RefLoc::from_bytes(&bytes)))
    }

    /// Of `hashes`, those whose only reference is pending in a file that the commit
    /// of events up to `seq` does not commit — a staged file not yet installed, or one
    /// installed by a later event — with that place: no committed reference holds
    /// them, and no reference the commit moves either (`superseded`).
    pub fn uncommittable(&self, hashes: &[Hash], seq: u64) -> Result<Vec<(Hash, RefLoc)>> {
        let committable = |location: &RefLoc| match self.home(location.key).map(|home| home.state) {
            Some(HomeState::Staged) => false,
            Some(HomeState::Installed(at)) => at <= seq,
            Some(HomeState::Committed) | None => true,
        };
        let moved: std::collections::HashSet<Hash> = read_lock(&self.superseded)
            .iter()
            .filter(|(_, location)| committable(location))
            .map(|(hash, _)| *hash)
            .collect();
        let mut out = Vec::new();
        for hash in hashes {
            let Some(location) = read_lock(&self.pending).get(hash).copied() else {
                continue;
            };
            if committable(&location) || moved.contains(hash) || self.tree.contains_key(hash.0)? {
                continue;
            }
            out.push((*hash, location));
        }
        Ok(out)
    }

    /// `hash` is (from now on) at `location`, until committed.
    pub fn add_pending(&self, hash: Hash, location: RefLoc) {
        if let Some(previous) = write_lock(&self.pending).insert(hash, location) {
            if previous.key != location.key {
                write_lock(&self.superseded).push((hash, previous));
            }
        }
    }

    pub fn register(&self, key: InodeKey, path: PathBuf, size: u64, state: HomeState) {
        write_lock(&self.homes).insert(key, Home { path, size, state });
    }

    pub fn home(&self, key: InodeKey) -> Option<Home> {
        read_lock(&self.homes).get(&key).cloned()
    }

    /// Every inode with references, not staged, whose home is one of `paths` or under
    /// one: a range of the index by path for each, however many inodes there are.
    pub fn homes_at_or_under(&self, paths: &[PathBuf]) -> Vec<(InodeKey, PathBuf)> {
        let homes = read_lock(&self.homes);
        let mut found: HashMap<InodeKey, PathBuf> = HashMap::new();
        for path in paths {
            for (key, home) in homes.at_or_under(path) {
                if home.state != HomeState::Staged {
                    found.entry(key).or_insert_with(|| home.path.clone());
                }
            }
        }
        found.into_iter().collect()
    }

    /// Whether any inode has references.
    pub fn has_homes(&self) -> bool {
        read_lock(&self.homes).iter().next().is_some()
    }

    /// The inode at `full` (not following a symlink), if it is a committed home whose
    /// home is `full`. (A replaced inode can still have `full` as its home for a while
    /// — between a crash and recovery — beside its successor there: the one on disk
    /// is the one meant.)
    pub fn committed_home_at(&self, full: &Path) -> Option<InodeKey> {
        let metadata = std::fs::symlink_metadata(full).ok()?;
        let key = (metadata.dev(), metadata.ino());
        let homes = read_lock(&self.homes);
        let home = homes.get(&key)?;
        (home.state == HomeState::Committed && home.path == full).then_some(key)
    }

    /// `key` now has `size` bytes (patched in place; durably with the next flush).
    pub fn set_size(&self, key: InodeKey, size: u64) -> Result<()> {
        let mut homes = write_lock(&self.homes);
        if let Some(home) = homes.update(&key, |home| home.size = size) {
            if home.state == HomeState::Committed {
                self.inodes.insert(key_bytes(key), home_value(home))?;
            }
        }
        Ok(())
    }

    /// Every inode whose home is `kept/` (moved out of the folder).
    pub fn kept_homes(&self) -> Vec<(InodeKey, u64)> {
        read_lock(&self.homes)
            .at_or_under(&self.kept_dir)
            .map(|(key, home)| (key, home.size))
            .collect()
    }

    /// Move `key`'s home to `path` (durably with the next flush when committed).
    pub fn set_home(&self, key: InodeKey, path: PathBuf) -> Result<()> {
        let mut homes = write_lock(&self.homes);
        if let Some(home) = homes.update(&key, |home| home.path = path) {
            if home.state == HomeState::Committed {
                self.inodes.insert(key_bytes(key), home_value(home))?;
            }
        }
        Ok(())
    }

    /// Forget `key` and every reference to it.
    pub fn remove_inode(&self, key: InodeKey) -> Result<()> {
        for (hash, location) in self.refs_of(key)? {
            self.drop_ref(&hash, location)?;
        }
        write_lock(&self.homes).remove(&key);
        self.opened.forget(key);
        self.inodes.remove(key_bytes(key))?;
        Ok(())
    }

    /// Commit the references of the inodes installed by events up to `seq`: the part
    /// holding them is durable (its `syncfs` has run); they are flushed with the log.
    pub fn commit(&self, seq: u64) -> Result<()> {
        let mut homes = write_lock(&self.homes);
        let committed: Vec<InodeKey> = homes
            .iter()
            .filter(|(_, home)| matches!(home.state, HomeState::Installed(at) if at <= seq))
            .map(|(key, _)| *key)
            .collect();
        for key in &committed {
            if let Some(home) = homes.update(key, |home| home.state = HomeState::Committed) {
                self.inodes.insert(key_bytes(*key), home_value(home))?;
            }
        }
        drop(homes);
        if committed.is_empty() {
            return Ok(());
        }
        let mut pending = write_lock(&self.pending);
        let mut moving: Vec<(Hash, RefLoc)> = pending
            .iter()
            .filter(|(_, location)| committed.contains(&location.key))
            .map(|(hash, location)| (*hash, *location))
            .collect();
        for (hash, _) in &moving {
            pending.remove(hash);
        }
        // Taken over by a later file first: committed here all the same, then moved to
        // that file when its own batch commits.
        write_lock(&self.superseded).retain(|(hash, location)| {
            let mine = committed.contains(&location.key);
            if mine {
                moving.insert(0, (*hash, *location));
            }
            !mine
        });
        for (hash, location) in moving {
            if self.tree.contains_key(hash.0)? {
                write_lock(&self.deferred).push((hash, location));
                continue;
            }
            self.by_inode.note(&hash, location)?;
            self.tree.insert(hash.0, &location.to_bytes())?;
            self.count.fetch_add(1, Ordering::Relaxed);
            self.bytes.fetch_add(location.len as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The batch is in the log: the references that move chunks to its files apply
    /// (those whose file is still in place).
    pub fn apply_deferred(&self) -> Result<()> {
        let deferred = std::mem::take(&mut *write_lock(&self.deferred));
        // Whether each file is still in place, looked at once per file.
        let mut in_place: HashMap<InodeKey, bool> = HashMap::new();
        for (hash, location) in deferred {
            let there = *in_place.entry(location.key).or_insert_with(|| {
                self.home(location.key)
                    .is_some_and(|home| open_inode(&home.path, location.key).is_some())
            });
            if !there {
                continue;
            }
            self.by_inode.note(&hash, location)?;
            if let Some(old) = self
                .tree
                .insert(hash.0, &location.to_bytes())?
                .as_deref()
                .and_then(RefLoc::from_bytes)
            {
                if old.key != location.key {
                    self.unindex(&hash, old)?;
                }
                self.bytes.fetch_sub(old.len as u64, Ordering::Relaxed);
            } else {
                self.count.fetch_add(1, Ordering::Relaxed);
            }
            self.bytes.fetch_add(location.len as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Every reference to `key` (committed or pending). The committed ones come from
    /// the index by inode: as many lookups as `key` has references, whatever the
    /// store holds elsewhere.
    pub fn refs_of(&self, key: InodeKey) -> Result<Vec<(Hash, RefLoc)>> {
        let mut out: Vec<(Hash, RefLoc)> = read_lock(&self.pending)
            .iter()
            .map(|(hash, location)| (*hash, *location))
            .chain(read_lock(&self.superseded).iter().copied())
            .filter(|(_, location)| location.key == key)
            .collect();
        out.extend(self.by_inode.of(key, |hash| self.committed(hash))?);
        Ok(out)
    }

    /// Remove the index entry of `hash` at `location` once `chunk_refs` no longer
    /// holds it there — unless another thread has meanwhile put it back (then its
    /// entry, which the removal may have taken, is written again).
    fn unindex(&self, hash: &Hash, location: RefLoc) -> Result<()> {
        self.by_inode.forget(hash, location)?;
        if self.committed(hash)? == Some(location) {
            self.by_inode.note(hash, location)?;
        }
        Ok(())
    }

    /// The committed reference of `hash`.
    fn committed(&self, hash: &Hash) -> Result<Option<RefLoc>> {
        Ok(self
            .tree
            .get(hash.0)?
            .and_then(|bytes| RefLoc::from_bytes(&bytes)))
    }

    /// The first committed references (in hash order) until their bytes reach
    /// `budget` (at least one, when there is any).
    pub fn first_committed(&self, budget: u64) -> Result<Vec<(Hash, RefLoc)>> {
        let mut out = Vec::new();
        let mut bytes = 0u64;
        for item in self.tree.iter() {
            if bytes >= budget {
                break;
            }
            let (hash, value) = item?;
            if let (Some(hash), Some(location)) =
                (Hash::from_slice(&hash), RefLoc::from_bytes(&value))
            {
                bytes += location.len as u64;
                out.push((hash, location));
            }
        }
        Ok(out)
    }

    /// Every committed reference.
    pub fn all(&self) -> Result<Vec<(Hash, RefLoc)>> {
        let mut out = Vec::new();
        for item in self.tree.iter() {
            let (hash, value) = item?;
            if let (Some(hash), Some(location)) =
                (Hash::from_slice(&hash), RefLoc::from_bytes(&value))
            {
                out.push((hash, location));
            }
        }
        Ok(out)
    }

    /// Drop the reference of `hash` if it is still `location`.
    pub fn drop_ref(&self, hash: &Hash, location: RefLoc) -> Result<()> {
        {
            // Locked in the order of `add_pending` and `commit`: pending, superseded.
            let mut pending = write_lock(&self.pending);
            let mut superseded = write_lock(&self.superseded);
            let before = superseded.len();
            superseded.retain(|entry| *entry != (*hash, location));
            if superseded.len() != before {
                return Ok(());
            }
            if pending.get(hash) == Some(&location) {
                pending.remove(hash);
                // The file it took the place of holds the chunk again.
                if let Some(at) = superseded.iter().rposition(|(other, _)| other == hash) {
                    let (_, previous) = superseded.remove(at);
                    pending.insert(*hash, previous);
                }
                return Ok(());
            }
        }
        let expected = location.to_bytes();
        if self
            .tree
            .compare_and_swap(hash.0, Some(&expected[..]), None as Option<&[u8]>)?
            .is_ok()
        {
            self.unindex(hash, location)?;
            self.count.fetch_sub(1, Ordering::Relaxed);
            self.bytes.fetch_sub(location.len as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The bytes of `hash` at `location`, verified; a reference that no longer holds
    /// (the file changed, moved or went) is dropped and the chunk reads as missing.
    pub fn read(&self, hash: &Hash, location: RefLoc) -> Result<Vec<u8>> {
        let home = self.home(location.key).map(|home| home.path);
        let candidates = home
            .into_iter()
            .chain(std::iter::once(self.kept_path(location.key)));
        for path in candidates {
            let Some(file) = self.opened.open(&path, location.key) else {
                continue;
            };
            let mut bytes = vec![0u8; location.len as usize];
            if file.read_exact_at(&mut bytes, location.offset).is_err() {
                continue;
            }
            if Hash::of(&bytes) == *hash {
                return Ok(bytes);
            }
            if self.lookup(hash)? != Some(location) {
                // Moved out meanwhile (a patch in place copies a chunk to the packs
                // and drops its reference before overwriting it): not damage.
                return Err(Error::ChunkMissing { hash: *hash });
            }
            tracing::warn!(
                chunk = %hash,
                path = %path.display(),
                offset = location.offset,
                "a chunk kept by reference no longer matches its file (changed by hand?); it counts as missing"
            );
            break;
        }
        self.drop_ref(hash, location)?;
        Err(Error::ChunkMissing { hash: *hash })
    }

    /// Committed references: how many, and their bytes.
    pub fn usage(&self) -> (u64, u64) {
        (
            self.count.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }

    /// Flush the trees (with the whole store).
    pub fn flush(&self) -> Result<()> {
        self.tree.flush()?;
        self.sync.sync()?;
        Ok(())
    }
}

fn home_value(home: &Home) -> Vec<u8> {
    let mut value = home.size.to_le_bytes().to_vec();
    value.extend_from_slice(home.path.as_os_str().as_bytes());
    value
}

#[cfg(test)]
mod tests;
