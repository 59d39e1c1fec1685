//! The references of each inode, found without reading all of them: a sled tree
//! `ref_by_inode`, (device, inode, hash) → the reference, beside `chunk_refs` (hash →
//! reference), which stays the truth.
//!
//! Copying a replaced file's chunks out, planning a patch in place, freeing a kept
//! inode: each needs the references of one inode. Read from `chunk_refs` alone that is
//! a scan of every reference the passive holds — a few ms for one large file, but
//! seconds for each replaced file once the folder holds tens of GiB kept by reference.
//! This tree answers with a prefix scan of that inode's entries.
//!
//! It is kept a superset of `chunk_refs`: an entry is written before the reference it
//! indexes and removed after it (sled recovers a prefix of its writes, across trees),
//! and every entry read is checked against `chunk_refs`, so one left behind (a crash
//! between the two writes, a chunk moved within its inode) is skipped, never trusted.
//! Reads never remove anything — a reference being written on another thread could
//! look stale for a moment. `heal`, at every open, makes the two agree again whatever
//! a crash, or a run of a binary without this tree, left.

use crate::error::Result;
use crate::hash::Hash;

use super::{key_bytes, InodeKey, RefLoc};

/// The index's key of `hash` referenced in inode `key`.
fn entry_key(key: InodeKey, hash: &Hash) -> [u8; 48] {
    let mut out = [0u8; 48];
    out[..16].copy_from_slice(&key_bytes(key));
    out[16..].copy_from_slice(&hash.0);
    out
}

/// The `ref_by_inode` tree.
pub(super) struct ByInode {
    tree: sled::Tree,
}

impl ByInode {
    pub fn new(tree: sled::Tree) -> ByInode {
        ByInode { tree }
    }

    /// Before `hash` is referenced at `location` in `chunk_refs`.
    pub fn note(&self, hash: &Hash, location: RefLoc) -> Result<()> {
        self.tree
            .insert(entry_key(location.key, hash), &location.to_bytes())?;
        Ok(())
    }

    /// After `hash` stopped being referenced at `location` in `chunk_refs`.
    pub fn forget(&self, hash: &Hash, location: RefLoc) -> Result<()> {
        let key = entry_key(location.key, hash);
        let expected = location.to_bytes();
        // Only that reference: another one of the same chunk in the same inode (at
        // another offset) may have been noted since.
        let _ = self
            .tree
            .compare_and_swap(key, Some(&expected[..]), None as Option<&[u8]>)?;
        Ok(())
    }

    /// The committed references of inode `key`: its entries that `chunk_refs` holds
    /// (`referenced` looks one up); the others are skipped (`heal` removes them).
    pub fn of(
        &self,
        key: InodeKey,
        referenced: impl Fn(&Hash) -> Result<Option<RefLoc>>,
    ) -> Result<Vec<(Hash, RefLoc)>> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(key_bytes(key)) {
            let (entry, value) = item?;
            let (Some(hash), Some(location)) = (
                Hash::from_slice(entry.get(16..).unwrap_or_default()),
                RefLoc::from_bytes(&value),
            ) else {
                continue;
            };
            if location.key == key && referenced(&hash)? == Some(location) {
                out.push((hash, location));
            }
        }
        Ok(out)
    }

    /// Make the index agree with `refs` (`chunk_refs`): entries it lacks are added,
    /// entries no reference backs are removed; two passes, no copy of either tree in
    /// memory. Returns how many entries changed (none after a clean stop).
    pub fn heal(&self, refs: &sled::Tree) -> Result<u64> {
        let mut changed = 0u64;
        for item in refs.iter() {
            let (hash, value) = item?;
            let (Some(hash), Some(location)) =
                (Hash::from_slice(&hash), RefLoc::from_bytes(&value))
            else {
                continue;
            };
            let entry = entry_key(location.key, &hash);
            if self.tree.get(entry)?.as_deref() != Some(&value[..]) {
                self.tree.insert(entry, &value[..])?;
                changed += 1;
            }
        }
        for item in self.tree.iter() {
            let (entry, value) = item?;
            let backed = entry.len() == 48
                && refs.get(&entry[16..])?.as_deref() == Some(&value[..])
                && RefLoc::from_bytes(&value)
                    .is_some_and(|location| key_bytes(location.key)[..] == entry[..16]);
            if !backed {
                self.tree.remove(entry)?;
                changed += 1;
            }
        }
        Ok(changed)
    }

    pub fn flush(&self) -> Result<()> {
        self.tree.flush()?;
        Ok(())
    }
}
