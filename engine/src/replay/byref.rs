//! Replay's side of the by-reference passive (ARCHITECTURE.md, "The passive keeps
//! content by reference"): keeping the inodes that hold referenced chunks reachable
//! while a batch moves, replaces or removes them (a staged file is put in place by
//! `write::install`: completed, its hash checked, renamed; its chunks become
//! references to it).
//!
//! - `guard`: before a part writes anything, every referenced inode whose home the
//!   part may displace is hard-linked into `kept/` (one fsync of `kept/`), so the
//!   references resolve whatever happens next, a crash included.
//! - `settle`: after the apply (its batches in the log), each guarded inode still in the folder (perhaps
//!   renamed) gets its home back and loses the `kept/` link; one that left the folder
//!   stays in `kept/` (removed: moved, not copied) or, when little of it is still
//!   referenced (replaced by a new version that shares most chunks), has those chunks
//!   copied into the packs and is freed (its last link unlinked on the store's reaper
//!   thread, off the next batch's path).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::chunk_store::{open_inode, InodeKey};
use crate::error::{IoContext, Result};
use crate::log::event::{Change, Event};
use crate::path::RelPath;
use crate::repository::Repository;

/// A referenced inode linked into `kept/` while a batch may displace it.
pub(super) struct Guarded {
    key: InodeKey,
    home: PathBuf,
}

/// Link into `kept/` every referenced inode whose home `part` (or the relinking of
/// `link_groups`) may move, replace or remove; one fsync of `kept/` makes the links
/// durable before the part touches the folder.
pub(super) fn guard(
    root: &Path,
    repository: &Repository,
    part: &[Event],
    link_groups: &[Vec<RelPath>],
) -> Result<Vec<Guarded>> {
    let chunks = repository.chunks();
    if !chunks.has_referenced_homes() {
        return Ok(Vec::new());
    }
    let mut named: HashSet<PathBuf> = part
        .iter()
        .flat_map(|event| event.body.change.paths())
        .map(|path| path.under(root))
        .collect();
    named.extend(link_groups.iter().flatten().map(|path| path.under(root)));
    let named: Vec<PathBuf> = named.into_iter().collect();
    let started = crate::clock::instant();
    let mut guarded = Vec::new();
    // The homes at or under a named path (a named path is never `root` itself).
    for (key, home) in chunks.referenced_homes_at_or_under(&named) {
        if open_inode(&home, key).is_none() {
            continue;
        }
        let kept = chunks.kept_path(key);
        match std::fs::hard_link(&home, &kept) {
            Ok(()) => {}
            // It holds the inode alive, so it is this one.
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(error).at("link", &kept),
        }
        guarded.push(Guarded { key, home });
    }
    if !guarded.is_empty() {
        crate::fsutil::fsync_dir(chunks.kept_dir())?;
        tracing::debug!(
            guarded = guarded.len(),
            ms = started.elapsed().as_secs_f64() * 1e3,
            "linked the inodes a part may displace into kept/"
        );
    }
    Ok(guarded)
}

/// Before `restore_scope` writes the file at `full` anew (a recovery, a rewind): if it
/// is an inode kept by reference, link it into `kept/` (durably) and make that its
/// home, so that its references still resolve once the path holds another file.
/// (A batch's own writes are covered by `guard` instead.)
pub(super) fn keep_before_rewrite(repository: &Repository, full: &Path) -> Result<()> {
    let chunks = repository.chunks();
    let Some(key) = chunks.committed_home_at(full) else {
        return Ok(());
    };
    if open_inode(full, key).is_none() {
        return Ok(());
    }
    let kept = chunks.kept_path(key);
    match std::fs::hard_link(full, &kept) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(error) => return Err(error).at("link", &kept),
    }
    crate::fsutil::fsync_dir(chunks.kept_dir())?;
    chunks.set_home(key, kept)
}

/// The rename `event` makes, if it is one (for `settle`).
pub(super) fn rename(event: &Event) -> Option<(RelPath, RelPath)> {
    match &event.body.change {
        Change::Rename { from, to } => Some((from.clone(), to.clone())),
        _ => None,
    }
}

/// After a batch (applied, or failed and recovered; `renames` are the ones it
/// applied): give each guarded inode its home again, or keep it in `kept/`, or copy
/// out what is still referenced in it and free it.
pub(super) fn settle(
    root: &Path,
    repository: &Repository,
    guarded: Vec<Guarded>,
    renames: &[(RelPath, RelPath)],
) -> Result<()> {
    let chunks = repository.chunks();
    let started = crate::clock::instant();
    chunks.apply_deferred_refs()?;
    if guarded.is_empty() {
        return Ok(());
    }
    let deferred = started.elapsed();
    let count = guarded.len();
    let mut unlink = Vec::new();
    // Replaced by a version that shares most of them: what is left goes into the
    // packs, for all such inodes at once.
    let mut copy_out = Vec::new();
    for Guarded { key, home } in guarded {
        let mut now = home.clone();
        for (from, to) in renames {
            if let Ok(rest) = now.strip_prefix(from.under(root)) {
                now = if rest.as_os_str().is_empty() {
                    to.under(root)
                } else {
                    to.under(root).join(rest)
                };
            }
        }
        if open_inode(&now, key).is_some() {
            chunks.set_home(key, now)?;
            unlink.push(key);
            continue;
        }
        // Out of the folder: in `kept/` from now on.
        chunks.set_home(key, chunks.kept_path(key))?;
        let (size, referenced) = chunks.referenced_in(key)?;
        // (An inode guarded by two parts of the batch is here twice.)
        if referenced * 2 < size && !copy_out.iter().any(|(other, _)| *other == key) {
            copy_out.push((key, size));
        }
    }
    let homes = started.elapsed();
    let keys: Vec<InodeKey> = copy_out.iter().map(|(key, _)| *key).collect();
    let copied = if keys.is_empty() {
        Vec::new()
    } else {
        chunks.move_into_packs(&keys)?
    };
    let mut freed = Vec::with_capacity(copy_out.len());
    for ((key, size), copied) in copy_out.into_iter().zip(copied) {
        tracing::debug!(
            inode = key.1,
            size,
            copied,
            "a replaced file's chunks the new version lacks were copied out"
        );
        freed.push(key);
    }
    let copied_out = started.elapsed();
    repository.flush()?;
    let flushed = started.elapsed();
    // Forgotten, durably: their last links go on the reaper's thread (freeing the
    // blocks of many replaced files took the next batch's time).
    chunks.free_kept_later(&freed);
    // Still in the folder: only the extra link goes, which frees nothing.
    for key in unlink {
        let kept = chunks.kept_path(key);
        match std::fs::remove_file(&kept) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error).at("remove", &kept),
        }
    }
    let ms = |duration: std::time::Duration| duration.as_secs_f64() * 1e3;
    tracing::debug!(
        guarded = count,
        deferred_ms = ms(deferred),
        homes_ms = ms(homes - deferred),
        copy_out_ms = ms(copied_out - homes),
        flush_ms = ms(flushed - copied_out),
        unlink_ms = ms(started.elapsed() - flushed),
        freed_later = freed.len(),
        "settled the inodes kept by reference"
    );
    Ok(())
}
