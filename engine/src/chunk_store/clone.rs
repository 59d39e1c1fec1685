//! Staging from a clone: where the file system clones (XFS with reflink, btrfs), a new
//! version of a file kept by reference starts as a clone (`FICLONE`) of the version it
//! replaces (`clone_current`). The chunks at the same offsets in both are then in
//! place — shared with the old inode, not written again — and only the others are
//! written (`stage::write_chunk`: each range emptied first, the clone holding the
//! old bytes there). Every byte is still read back and hashed in file order before
//! the file is put in place. An old version changed by hand makes the new one not
//! add up: the batch fails, and recovery, which hashes the path's file against the
//! index and rewrites it from verified chunks, finds the damaged chunk missing (its
//! reference dropped), so it is fetched and the next try converges. The old version
//! stays a separate inode, so invariant 5 holds: a reader of the replica sees the old
//! file or the new one, whole.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use super::refs::RefLoc;
use super::ChunkStore;
use crate::error::{IoContext, Result};
use crate::hash::Hash;

impl ChunkStore {
    /// Where the file system clones: begin the staged `file` (at `path`) as a clone of
    /// the version at `current` it replaces, when that version is kept by reference
    /// and holds some of the new version's chunks (`placed`) at the same offsets.
    /// For each of `placed`, the old version's reference when it is in place (none
    /// when no clone was made).
    pub(super) fn clone_current(
        &self,
        file: &File,
        path: &Path,
        current: &Path,
        placed: &[(Hash, u32, u64)],
    ) -> Result<Vec<Option<RefLoc>>> {
        let none = || Ok(vec![None; placed.len()]);
        let source = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(current)
        {
            Ok(source) => source,
            Err(_) => return none(),
        };
        let metadata = match source.metadata() {
            Ok(metadata) if metadata.is_file() => metadata,
            _ => return none(),
        };
        if crate::folder::read::reflink::refused(metadata.dev(), &self.refs.staging_dir) {
            return none();
        }
        // In place: the store's reference for the chunk is this inode, at this offset.
        let key = (metadata.dev(), metadata.ino());
        let mut in_place = Vec::with_capacity(placed.len());
        for (hash, len, offset) in placed {
            let location = self.refs.lookup(hash)?;
            in_place.push(location.filter(|location| {
                location.key == key && location.offset == *offset && location.len == *len
            }));
        }
        if in_place.iter().all(Option::is_none) {
            return none();
        }
        match crate::folder::read::reflink::clone_into(&source, file, &self.refs.staging_dir) {
            Ok(true) => {}
            Ok(false) => {
                // Refused before anything was shared, as XFS and btrfs do; emptied all
                // the same, since the file is then filled as a sparse one.
                file.set_len(0).at("truncate", path)?;
                return none();
            }
            Err(error) => {
                tracing::debug!(%error, path = %current.display(), "could not clone the version a staged file replaces; writing the new one whole");
                file.set_len(0).at("truncate", path)?;
                return none();
            }
        }
        let bytes: u64 = placed
            .iter()
            .zip(&in_place)
            .filter(|(_, here)| here.is_some())
            .map(|((_, len, _), _)| *len as u64)
            .sum();
        self.cloned_bytes
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        Ok(in_place)
    }
}
