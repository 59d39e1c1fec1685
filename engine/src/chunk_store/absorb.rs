//! Absorbing references: once a node that kept chunks by reference becomes active,
//! its applications may rewrite the folder's files in place, so every chunk kept by
//! reference (`refs.rs`) is copied into the packs, a bounded step at a time
//! (`absorb_references`), each read verified, and its reference dropped once the
//! pack holds it. The service runs the steps in the background while capture runs
//! (promotion never waits for them); references left by a restart are simply found
//! again and the copy goes on.
//!
//! Invariant 4 asks the active's chunk store to hold every chunk a retained event
//! names. A promoted node meets it once the copy is done; before that, a chunk whose
//! file an application rewrote in place (or replaced) before the copy reached it no
//! longer reads back. Such a chunk is *lost on this node*: never served wrong (a
//! peer asking for it is told it is missing), and never dropped silently — each is
//! appended to `chunks/lost-by-reference` (hash, bytes, the file it was in), counted
//! in `status` and `/metrics`, and logged with the file's path. Only a copy of it
//! elsewhere (the old active's packs) can bring it back.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{ChunkStore, Dedup};
use crate::error::{Error, IoContext, Result};
use crate::hash::Hash;

/// The record of chunks lost before they were absorbed: `chunks/lost-by-reference`.
const LOST_FILE: &str = "lost-by-reference";

/// What one step of absorbing did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AbsorbStep {
    /// Chunks copied into the packs (or found there already) and their bytes.
    pub absorbed_chunks: u64,
    pub absorbed_bytes: u64,
    /// Chunks that no longer read back from their file: lost on this node.
    pub lost: Vec<LostChunk>,
}

/// A chunk lost before it was copied into the packs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LostChunk {
    pub hash: Hash,
    pub len: u32,
    /// The file that held it (its home when the copy found it changed).
    pub path: PathBuf,
}

/// The lost chunks recorded so far (counted from the record at open).
pub(super) struct Lost {
    path: PathBuf,
    chunks: AtomicU64,
    bytes: AtomicU64,
}

impl Lost {
    pub fn open(dir: &Path) -> Result<Lost> {
        let path = dir.join(LOST_FILE);
        let (mut chunks, mut bytes) = (0u64, 0u64);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                for line in text.lines() {
                    let mut words = line.split(' ');
                    if let (Some(_), Some(len)) = (words.next(), words.next()) {
                        chunks += 1;
                        bytes += len.parse::<u64>().unwrap_or(0);
                    }
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error).at("read", &path),
        }
        Ok(Lost {
            path,
            chunks: AtomicU64::new(chunks),
            bytes: AtomicU64::new(bytes),
        })
    }

    /// Append `lost` to the record, durably (one line each: hash, bytes, path).
    fn record(&self, lost: &[LostChunk]) -> Result<()> {
        if lost.is_empty() {
            return Ok(());
        }
        let mut text = String::new();
        for chunk in lost {
            text.push_str(&format!(
                "{} {} {}\n",
                chunk.hash,
                chunk.len,
                chunk.path.display()
            ));
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .at("open", &self.path)?;
        file.write_all(text.as_bytes()).at("write", &self.path)?;
        crate::fsutil::sync_data(&file, &self.path)?;
        self.chunks.fetch_add(lost.len() as u64, Ordering::Relaxed);
        self.bytes.fetch_add(
            lost.iter().map(|chunk| chunk.len as u64).sum(),
            Ordering::Relaxed,
        );
        Ok(())
    }
}

impl ChunkStore {
    /// Copy referenced chunks, about `budget` bytes of them, into the packs: each is
    /// read from its file and verified, the packs are synced and their locations
    /// flushed, and only then are the references dropped (a pack location wins over
    /// a reference, so a crash anywhere leaves every chunk readable, at worst copied
    /// twice). A chunk that no longer reads back is recorded as lost. Once no
    /// reference is left, the inodes that held them are forgotten (and their `kept/`
    /// links removed). The caller holds the repository's content guard.
    pub fn absorb_references(&self, budget: u64) -> Result<AbsorbStep> {
        let mut batch = self.refs.first_committed(budget.max(1))?;
        let mut step = AbsorbStep::default();
        if batch.is_empty() {
            return Ok(step);
        }
        // Read each file in order.
        batch.sort_by_key(|(_, location)| (location.key, location.offset));
        let mut absorbed = Vec::with_capacity(batch.len());
        for (hash, location) in batch {
            if !self.in_pack(&hash)? {
                match self.refs.read(&hash, location) {
                    Ok(bytes) => self.insert(hash, &bytes, Dedup::All)?,
                    Err(Error::ChunkMissing { .. }) => {
                        // `read` dropped the reference.
                        let path = self
                            .refs
                            .home(location.key)
                            .map_or_else(|| self.refs.kept_path(location.key), |home| home.path);
                        step.lost.push(LostChunk {
                            hash,
                            len: location.len,
                            path,
                        });
                        continue;
                    }
                    Err(error) => return Err(error),
                }
            }
            step.absorbed_chunks += 1;
            step.absorbed_bytes += location.len as u64;
            absorbed.push((hash, location));
        }
        self.sync()?;
        self.locations.flush()?;
        self.sync.sync()?;
        for (hash, location) in &absorbed {
            self.refs.drop_ref(hash, *location)?;
        }
        self.lost.record(&step.lost)?;
        if self.refs.usage().0 == 0 {
            self.release_absorbed_inodes()?;
        }
        self.refs.flush()?;
        Ok(step)
    }

    /// No reference is left: forget every committed inode, unlinking those in `kept/`.
    fn release_absorbed_inodes(&self) -> Result<()> {
        self.refs.forget_unreferenced_homes()?;
        for (key, _) in self.refs.kept_homes() {
            if !self.refs.refs_of(key)?.is_empty() {
                continue;
            }
            self.refs.remove_inode(key)?;
            self.refs.flush()?;
            let kept = self.refs.kept_path(key);
            match std::fs::remove_file(&kept) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(error).at("remove", &kept),
            }
        }
        Ok(())
    }

    /// Chunks recorded lost before they were absorbed (since the store was made):
    /// how many, and their bytes.
    pub fn lost_by_reference(&self) -> (u64, u64) {
        (
            self.lost.chunks.load(Ordering::Relaxed),
            self.lost.bytes.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk_store::refs::{HomeState, RefLoc, RefTrees};

    fn store(dir: &Path) -> ChunkStore {
        // Reopened in the same process: sled lets go of its lock from a background
        // thread, which `open_sled` waits for.
        let db = crate::repository::open::open_sled(&dir.join("db")).unwrap();
        ChunkStore::open(
            &dir.join("chunks"),
            db.open_tree("chunk_locations").unwrap(),
            RefTrees::open(&db).unwrap(),
            crate::sled_sync::SledSync::open(&dir.join("db")).unwrap(),
        )
        .unwrap()
    }

    /// A file in `folder` whose two halves are committed references.
    fn referenced_file(
        store: &ChunkStore,
        folder: &Path,
        name: &str,
        seed: u8,
    ) -> (PathBuf, [(Hash, Vec<u8>); 2]) {
        let path = folder.join(name);
        let halves = [vec![seed; 3000], vec![seed.wrapping_add(1); 5000]];
        std::fs::write(&path, [halves[0].clone(), halves[1].clone()].concat()).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let key = super::super::refs::key_of(&file, &path).unwrap();
        store
            .refs
            .register(key, path.clone(), 8000, HomeState::Installed(1));
        let hashes = [Hash::of(&halves[0]), Hash::of(&halves[1])];
        store.refs.add_pending(
            hashes[0],
            RefLoc {
                key,
                offset: 0,
                len: 3000,
            },
        );
        store.refs.add_pending(
            hashes[1],
            RefLoc {
                key,
                offset: 3000,
                len: 5000,
            },
        );
        store.refs.commit(1).unwrap();
        let [first, second] = halves;
        (path, [(hashes[0], first), (hashes[1], second)])
    }

    #[test]
    fn absorbed_chunks_move_into_the_packs_and_their_references_go() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("folder");
        std::fs::create_dir_all(&folder).unwrap();
        let store = store(dir.path());
        let (_, chunks) = referenced_file(&store, &folder, "big", 7);
        assert_eq!(store.referenced_usage(), (2, 8000));
        // A budget smaller than one chunk still makes progress.
        let first = store.absorb_references(1).unwrap();
        assert_eq!(first.absorbed_chunks, 1);
        assert_eq!(store.referenced_usage().0, 1);
        // A restart in between: the reference left is found again and the copy goes on.
        drop(store);
        let store = super::tests::store(dir.path());
        assert_eq!(store.referenced_usage().0, 1);
        let second = store.absorb_references(1 << 20).unwrap();
        assert_eq!(second.absorbed_chunks, 1);
        assert!(second.lost.is_empty());
        assert_eq!(store.referenced_usage(), (0, 0));
        for (hash, bytes) in &chunks {
            assert!(store.in_pack(hash).unwrap());
            assert_eq!(&store.get(hash).unwrap(), bytes);
        }
        // Nothing left to do.
        assert_eq!(
            store.absorb_references(1 << 20).unwrap(),
            AbsorbStep::default()
        );
    }

    #[test]
    fn a_chunk_rewritten_in_place_before_it_was_absorbed_is_recorded_lost() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("folder");
        std::fs::create_dir_all(&folder).unwrap();
        let store = store(dir.path());
        let (path, chunks) = referenced_file(&store, &folder, "big", 9);
        // An application rewrites the second half in place.
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, &[0xEE; 5000], 3000).unwrap();
        let step = store.absorb_references(1 << 20).unwrap();
        assert_eq!(step.absorbed_chunks, 1);
        assert_eq!(
            step.lost,
            vec![LostChunk {
                hash: chunks[1].0,
                len: 5000,
                path: path.clone()
            }]
        );
        assert_eq!(store.get(&chunks[0].0).unwrap(), chunks[0].1);
        assert!(matches!(
            store.get(&chunks[1].0),
            Err(Error::ChunkMissing { .. })
        ));
        assert_eq!(store.lost_by_reference(), (1, 5000));
        drop(store);
        // The record survives a restart.
        let store = super::tests::store(dir.path());
        assert_eq!(store.lost_by_reference(), (1, 5000));
        assert_eq!(store.referenced_usage(), (0, 0));
    }
}
