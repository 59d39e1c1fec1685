//! Replay's in-place patch of a large file kept by reference: a new version that keeps
//! most of the old one's chunks at the same offsets (an append, a few pages of a
//! database) is written where the old one is — only its other chunks — instead of as
//! a whole new file. The plan and the moving out of overwritten chunks are the chunk
//! store's (`chunk_store::patch`).
//!
//! Unlike a file put in place whole, a patched file is half old, half new while it is
//! written. That is safe because of what comes first and what comes after:
//! - before: the batch's journal names the path (step 2 of `apply_batch`), the inode is
//!   linked into `kept/` (`byref::guard`), and every chunk the patch overwrites or
//!   cuts off is copied into the packs, synced and flushed, its reference dropped;
//! - after: the whole file is hashed and must equal the event's content hash; the
//!   batch's durability point fsyncs it with the rest.
//!
//! A crash or an error in between leaves `recover` a path that does not match the
//! index: it writes the old version whole from the chunk store (the overwritten chunks
//! from the packs, the rest still in the patched inode, which stays in `kept/` while
//! references name it), and the batch is applied again.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::file::{remove_companions, Attributes};
use crate::error::{Error, IoContext, Result};
use crate::fsutil::system_time;
use crate::hash::Hash;
use crate::log::event::{ChunkRef, Event};
use crate::path::RelPath;
use crate::repository::Repository;

/// The seqs of the events of `events` the batch may patch in place
/// (`chunk_store::patch_candidates`), never one naming a path of a link group; none
/// unless the node allows patching in place.
pub(super) fn patchable(
    repository: &Repository,
    events: &[Event],
    link_groups: &[Vec<RelPath>],
) -> HashSet<u64> {
    if !repository.chunks().patches_in_place() {
        return HashSet::new();
    }
    let linked: HashSet<&RelPath> = link_groups.iter().flatten().collect();
    let candidates = crate::chunk_store::patch_candidates(events);
    events
        .iter()
        .filter(|event| candidates.contains(&event.seq()))
        .filter(|event| {
            !event
                .body
                .change
                .paths()
                .iter()
                .any(|path| linked.contains(path))
        })
        .map(|event| event.seq())
        .collect()
}

/// Patch the file at `path` into the version of `chunks` (`content`, `size` bytes) in
/// place, when the chunk store's plan allows; `Ok(false)` when it does not (or the file
/// at the path is not the inode planned for), and nothing was touched: the caller
/// writes the file whole.
pub(super) fn patch_in_place(
    root: &Path,
    repository: &Repository,
    path: &RelPath,
    attributes: Attributes<'_>,
    content: Hash,
    chunks: &[ChunkRef],
    size: u64,
) -> Result<bool> {
    let store = repository.chunks();
    let full = path.under(root);
    let Some(plan) = store.plan_patch(&full, chunks, size)? else {
        return Ok(false);
    };
    let opened = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&full);
    let Ok(mut file) = opened else {
        return Ok(false);
    };
    let metadata = file.metadata().at("stat", &full)?;
    if !metadata.is_file() || (metadata.dev(), metadata.ino()) != plan.key {
        return Ok(false);
    }
    // Another name of the inode in the folder (a hard link the batch does not touch)
    // must keep the old version: only the link `byref::guard` made in `kept/` may be
    // there besides the path.
    let kept_link = std::fs::symlink_metadata(store.kept_path(plan.key))
        .is_ok_and(|kept| (kept.dev(), kept.ino()) == plan.key);
    if metadata.nlink() > 1 + u64::from(kept_link) {
        return Ok(false);
    }
    let old_size = metadata.len();

    // A database's companions (`-wal`, `-journal`) belong to the old version: gone
    // before its pages are, so that no reader applies them to the new one.
    let mut head = [0u8; 16];
    let old_database =
        file.read_exact(&mut head).is_ok() && crate::folder::read::sqlite::is_header(&head);
    let new_database = match plan.writes.first() {
        Some((hash, 0, _)) => store
            .get_unverified(hash)
            .is_ok_and(|bytes| crate::folder::read::sqlite::is_header(&bytes)),
        _ => old_database,
    };
    if old_database || new_database {
        remove_companions(&full)?;
    }

    // What the old version loses: the ranges written, and what lies past the new end.
    let mut overwritten: Vec<(u64, u64)> = plan
        .writes
        .iter()
        .map(|(_, offset, len)| (*offset, offset + *len as u64))
        .collect();
    if old_size > size {
        overwritten.push((size, old_size));
    }
    let moved = store.move_out_ranges(plan.key, &overwritten)?;

    for (written, (hash, offset, _)) in plan.writes.iter().enumerate() {
        let bytes = store.get_unverified(hash)?;
        write_at_punching_zeros(&file, &bytes, *offset).at("write", &full)?;
        stop_here(root, written + 1).at("write", &full)?;
    }
    if old_size != size {
        file.set_len(size).at("truncate", &full)?;
    }
    file.rewind().at("seek", &full)?;
    let actual = crate::folder::read::sparse::hash_file(&file, &full)?;
    if actual != content {
        // Name the damaged chunk, if one is: every chunk of the version read again,
        // verified. One kept in place that no longer matches (the file was changed by
        // hand) then reads as missing, and is fetched again before the next try.
        for chunk in chunks {
            store.get(&chunk.hash)?;
        }
        return Err(Error::ChunkMismatch {
            expected: content,
            actual,
            location: format!(
                " (the file {path} patched in place does not add up to its content hash)"
            ),
        });
    }
    let mtime_ns = match attributes {
        Attributes::Legacy(mode, mtime_ns) => {
            file.set_permissions(std::fs::Permissions::from_mode(mode))
                .at("chmod", &full)?;
            mtime_ns
        }
        Attributes::Meta(meta) => {
            crate::folder::meta::apply_meta_to_file(&file, &full, meta, repository.meta_options())?;
            meta.mtime_ns
        }
    };
    file.set_modified(system_time(mtime_ns))
        .at("set mtime", &full)?;
    store.patched(plan.key, size)?;
    tracing::debug!(
        path = %path,
        size,
        written = plan.written_bytes(),
        kept = plan.kept_bytes,
        moved_out = moved,
        "patched in place"
    );
    Ok(true)
}

/// Tests only: where to stop a patch half way, as an error or a crash would.
#[doc(hidden)]
pub struct StopPatch {
    /// Only patches of files under this folder stop.
    pub root: std::path::PathBuf,
    /// After this many chunks are written.
    pub after_writes: usize,
    /// By aborting the process (a crash), else with an error.
    pub abort: bool,
}

/// Tests only: set to stop the next patches under a folder half way.
#[doc(hidden)]
pub static STOP_PATCH: std::sync::Mutex<Option<StopPatch>> = std::sync::Mutex::new(None);

fn stop_here(root: &Path, written: usize) -> std::io::Result<()> {
    let stop = STOP_PATCH
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    match &*stop {
        Some(stop) if stop.root == root && stop.after_writes == written => {
            if stop.abort {
                std::process::abort();
            }
            Err(std::io::Error::other("stopped half way (a test)"))
        }
        _ => Ok(()),
    }
}

/// The unit in which zeros become holes: a file-system block.
const BLOCK: u64 = 4096;

/// Write `bytes` at `offset` of an existing file, punching a hole for every whole
/// block of zeros (aligned in the file) instead of writing it, as a file written whole
/// leaves them (`file::write_leaving_holes`); where the file system cannot punch
/// holes, the zeros are written.
fn write_at_punching_zeros(file: &File, bytes: &[u8], offset: u64) -> std::io::Result<()> {
    let mut at = 0usize;
    let mut run = 0usize;
    while at < bytes.len() {
        let position = offset + at as u64;
        let block_end = ((position / BLOCK + 1) * BLOCK - position) as usize;
        let end = bytes.len().min(at + block_end);
        let piece = &bytes[at..end];
        if piece.len() as u64 == BLOCK
            && position.is_multiple_of(BLOCK)
            && piece.iter().all(|byte| *byte == 0)
            && punch_hole(file, position, BLOCK)
        {
            file.write_all_at(&bytes[run..at], offset + run as u64)?;
            run = end;
        }
        at = end;
    }
    file.write_all_at(&bytes[run..], offset + run as u64)
}

/// Deallocate `len` bytes at `offset` (they read as zeros); whether it was done.
fn punch_hole(file: &File, offset: u64, len: u64) -> bool {
    // SAFETY: fallocate on a descriptor this function borrows; no memory is passed.
    let done = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    done == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_blocks_written_over_data_become_holes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("f");
        std::fs::write(&path, vec![9u8; 6 * 4096]).expect("write");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open");
        let mut bytes = vec![7u8; 4 * 4096 + 10];
        bytes[4096 - 10..3 * 4096 - 10].fill(0);
        write_at_punching_zeros(&file, &bytes, 10).expect("write");
        let mut expected = vec![9u8; 6 * 4096];
        expected[10..10 + bytes.len()].copy_from_slice(&bytes);
        assert_eq!(std::fs::read(&path).expect("read"), expected);
        let allocated = std::fs::metadata(&path).expect("stat").blocks() * 512;
        assert!(
            allocated < expected.len() as u64,
            "{allocated} bytes allocated"
        );
    }
}
