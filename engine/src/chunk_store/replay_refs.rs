//! What replay needs of the passive's references when a batch may move or replace the
//! files holding them (`replay::byref`): where inodes live, their `kept/` links, the
//! deferred moves, copying a replaced inode's chunks out (`refs/` keeps them), and
//! the chunks a part is about to name that only an uncommitted file holds.

use std::path::{Path, PathBuf};

use super::refs::InodeKey;
use super::Dedup;
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::log::event::Event;

impl super::ChunkStore {
    /// The inodes with references (committed or installed) whose home is one of
    /// `paths` or under one.
    pub fn referenced_homes_at_or_under(&self, paths: &[PathBuf]) -> Vec<(InodeKey, PathBuf)> {
        self.refs.homes_at_or_under(paths)
    }

    /// Whether any inode has references (staged ones included).
    pub fn has_referenced_homes(&self) -> bool {
        self.refs.has_homes()
    }

    /// The directory of inodes moved out of the folder.
    pub fn kept_dir(&self) -> &Path {
        &self.refs.kept_dir
    }

    /// `key`'s link in `kept/`.
    pub fn kept_path(&self, key: InodeKey) -> PathBuf {
        self.refs.kept_path(key)
    }

    /// Before the part `part` (its files installed) is committed: each chunk it names
    /// whose only home is a file this commit does not commit — a staged file of a
    /// later part, or one the batch will not install — is copied into the packs
    /// (verified; durable with the part's `sync`). A failure or restart before that
    /// file is installed would otherwise leave the log naming a chunk in no pack and
    /// no committed reference (staged files are removed at open). Returns the bytes
    /// copied; usually none.
    pub fn secure_named_by(&self, part: &[Event]) -> Result<u64> {
        let Some(last) = part.last().map(Event::seq) else {
            return Ok(0);
        };
        let mut seen = std::collections::HashSet::new();
        let named: Vec<Hash> = part
            .iter()
            .flat_map(|event| event.body.change.chunks().unwrap_or(&[]))
            .map(|chunk| chunk.hash)
            .filter(|hash| seen.insert(*hash))
            .collect();
        let mut copied = 0u64;
        for (hash, location) in self.refs.uncommittable(&named, last)? {
            if self.in_packs(&hash)? {
                continue;
            }
            let bytes = match self.refs.read(&hash, location) {
                Ok(bytes) => bytes,
                // That reference no longer holds (dropped by the read): fine if the
                // chunk now has a home this commit keeps.
                Err(Error::ChunkMissing { .. })
                    if self.refs.uncommittable(&[hash], last)?.is_empty() =>
                {
                    continue
                }
                Err(error) => return Err(error),
            };
            self.insert(hash, &bytes, Dedup::All)?;
            copied += bytes.len() as u64;
        }
        if copied > 0 {
            tracing::debug!(
                bytes = copied,
                through = last,
                "copied into the packs chunks a part names that only a later staged file held"
            );
        }
        Ok(copied)
    }

    /// A batch is in the log: apply its deferred references (`Refs::apply_deferred`).
    pub fn apply_deferred_refs(&self) -> Result<()> {
        self.refs.apply_deferred()
    }

    /// After a recovery: forget references to inodes that are gone.
    pub fn drop_unreachable_refs(&self) -> Result<()> {
        self.refs.drop_unreachable()
    }

    /// `key` now lives at `path`.
    pub fn set_home(&self, key: InodeKey, path: PathBuf) -> Result<()> {
        self.refs.set_home(key, path)
    }

    /// The size of `key` and the bytes still referenced in it.
    pub fn referenced_in(&self, key: InodeKey) -> Result<(u64, u64)> {
        let size = self.refs.home(key).map_or(0, |home| home.size);
        let referenced = self
            .refs
            .refs_of(key)?
            .iter()
            .map(|(_, location)| location.len as u64)
            .sum();
        Ok((size, referenced))
    }

    /// Copy the chunks referenced in each of `keys` into the packs and forget them
    /// (see `copy_out_all`: one sync for all); the caller flushes before freeing the
    /// inodes. The bytes copied from each, in order.
    pub fn move_into_packs(&self, keys: &[InodeKey]) -> Result<Vec<u64>> {
        self.copy_out_all(keys)
    }

    /// Free the forgotten inodes `keys` (moved into the packs, the forget flushed) by
    /// unlinking their `kept/` links on the store's reaper thread, off the caller's
    /// path (`refs/kept.rs`).
    pub fn free_kept_later(&self, keys: &[InodeKey]) {
        let links = keys.iter().map(|key| self.refs.kept_path(*key)).collect();
        self.refs.reaper.unlink(links);
    }

    /// Wait until every inode handed to `free_kept_later` is freed.
    pub fn wait_kept_freed(&self) {
        self.refs.reaper.wait();
    }
}
