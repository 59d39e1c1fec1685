//! Replay: apply events to a replica folder, atomically, verified, crash-safe.
//!
//! `apply_batch` runs in four steps:
//!
//! 1. **Check** (nothing touched yet): every event continues the chain from the head
//!    and hashes to its recorded hash; every change fits the index (parents are
//!    directories, so no path runs through a symlink the log created); after each
//!    change the index's digest equals the digest the event carries; every chunk named
//!    is in the chunk store. A failure here leaves the folder and the log unchanged.
//! 2. **Journal**: the paths the batch touches are written to `meta/replay_pending`
//!    (flushed) before the folder is touched.
//! 3. **Apply**: each file is written to a temporary name in its directory (content
//!    from verified chunks, hashed again while written and compared with the event),
//!    given its mode and mtime, and renamed into place (exchanged with the file it
//!    replaces, which is removed after step 4); no reader ever sees half a file —
//!    unless the node allows patching in place (`patch_in_place`, off by default): then
//!    a large file kept by reference whose new version keeps most of it in place is
//!    patched where it is (`patch`: the chunks it overwrites are copied out first, and
//!    the whole file is hashed after).
//!    Every parent on disk is checked to be a real directory, not a symlink.
//! 4. **Durability point**: one `syncfs` of the folder's file system (a small part of
//!    plain files and directories: an fsync of each and of their directories,
//!    `durable`), then the chunk
//!    store is synced, the events are appended to the log (flushed), the index saved
//!    (only when much of it or long unsaved: else `Repository::save_index_if_dirty`
//!    when the passive is idle) and the journal cleared (durable with the next flush).
//!    Only now has the applied seq moved.
//!
//! A batch of more than `ReplayOptions::commit_part_events` events runs steps 3 and 4 in parts, in
//! order: while one part's durability point runs on another thread, the next part's
//! files are written; a part is appended to the log only after its own files are on
//! disk. The journal covers the whole batch until its end.
//!
//! If step 3 fails, or the process dies anywhere after step 2, `recover` puts every
//! journaled path back to the state the index holds at the log head (which is the
//! pre-batch state unless step 4's append completed) and removes temporary files;
//! applying the batch again then ends where an uninterrupted run would have.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::error::{Error, IoContext, Result};
use crate::folder::index::Entry;
use crate::folder::scan::disk::{stat_disk, walk, DiskEntry};
use crate::fsutil::syncfs;
use crate::hash::Hash;
use crate::log::event::{chain_hash, Change, Event};
use crate::log::Head;
use crate::path::RelPath;
use crate::repository::Repository;

mod byref;
mod commit;
mod durable;
mod file;
mod patch;
mod snapshot;
mod write;
#[doc(hidden)]
pub use patch::{StopPatch, STOP_PATCH};
pub use snapshot::install_snapshot;

use commit::write_and_commit_in_parts;

use file::{write_file, Attributes};
use write::{write_symlink, Displaced, Finishing};

const PENDING_KEY: &str = "replay_pending";

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
}

/// How `apply_batch_with` writes and commits a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayOptions {
    /// A batch of more events than this is written and made durable in parts of about
    /// this many, each part's durability point overlapping the next part's writes.
    pub commit_part_events: usize,
}

impl Default for ReplayOptions {
    fn default() -> ReplayOptions {
        ReplayOptions {
            commit_part_events: 1024,
        }
    }
}

/// Apply `events` (which must follow the repository's head) to the replica `root`.
pub fn apply_batch(root: &Path, repository: &Repository, events: &[Event]) -> Result<Head> {
    apply_batch_with(root, repository, events, &ReplayOptions::default())
}

/// `apply_batch` with `options` (the tests commit in smaller parts).
pub fn apply_batch_with(
    root: &Path,
    repository: &Repository,
    events: &[Event],
    options: &ReplayOptions,
) -> Result<Head> {
    recover(root, repository)?;
    if events.is_empty() {
        return Ok(repository.head());
    }
    let started = crate::clock::instant();
    let mut index = repository.lock_index();
    let head = repository.head();

    // Step 1: check everything before touching anything.
    let checked = (|| -> Result<()> {
        let mut tip = (head.seq, head.hash, head.epoch);
        for event in events {
            let recomputed = chain_hash(&event.prev, &event.body.canonical_bytes());
            if recomputed != event.hash {
                return Err(Error::BrokenChain {
                    seq: event.seq(),
                    reason: format!(
                        "recorded hash {} but prev and body hash to {recomputed}",
                        event.hash
                    ),
                });
            }
            event.check_follows(tip.0, &tip.1)?;
            if event.epoch() < tip.2 {
                return Err(Error::BrokenChain {
                    seq: event.seq(),
                    reason: format!(
                        "epoch {} is below the previous event's epoch {}",
                        event.epoch(),
                        tip.2
                    ),
                });
            }
            tip = (event.seq(), event.hash, event.epoch());
            let change = &event.body.change;
            index.apply(change).map_err(|misfit| Error::Apply {
                seq: event.seq(),
                path: misfit.path.to_string(),
                reason: misfit.reason,
            })?;
            if index.digest() != event.body.digest {
                return Err(Error::DigestMismatch {
                    seq: event.seq(),
                    path: change.describe_path(),
                    expected: event.body.digest,
                    actual: index.digest(),
                });
            }
            if let Some(chunks) = change.chunks() {
                if let Some(missing) = repository
                    .chunks()
                    .missing(chunks.iter().map(|chunk| chunk.hash))?
                    .first()
                {
                    return Err(Error::ChunkMissing { hash: *missing });
                }
            }
        }
        Ok(())
    })();
    if let Err(error) = checked {
        // Still under the lock: nobody may see the index ahead of the log.
        repository.reload_index_locked(&mut index)?;
        return Err(error);
    }

    let checked_at = started.elapsed();
    // Step 2: journal the touched paths.
    let touched: Vec<RelPath> = events
        .iter()
        .flat_map(|event| event.body.change.paths().into_iter().cloned())
        .collect();
    journal_touched(repository, &touched)?;
    let journaled_at = started.elapsed();

    // Steps 3 and 4, a part at a time: each part's durability point runs while the
    // next part's files are written.
    let mut timings = StepTimings::default();
    let displaced = Displaced::default();
    let finishing = {
        let changes: Vec<&Change> = events.iter().map(|event| &event.body.change).collect();
        let link_groups = crate::folder::links::groups_touched(&index, &changes);
        let linked: Vec<&RelPath> = link_groups.iter().flatten().collect();
        Finishing {
            dir_times: directory_times(&index, events, &linked),
            link_groups,
        }
    };
    let patchable = patch::patchable(repository, events, &finishing.link_groups);
    let mut guarded = Vec::new();
    let durable = write_and_commit_in_parts(
        root,
        repository,
        events,
        options.commit_part_events.max(1),
        &mut timings,
        &displaced,
        &finishing,
        &mut guarded,
        &patchable,
    );
    // The old versions of replaced files go once the batch is in the log (or failed);
    // removing them moved their directories' times, which are set again.
    let all_removed = displaced.remove_all();
    if durable.is_ok() {
        if let Err(error) = finishing.set_directory_times(root) {
            tracing::warn!(%error, "could not set a directory's recorded time again");
        }
    }
    if let Err(error) = durable {
        repository.chunks().forget_uncommitted();
        repository.reload_index_locked(&mut index)?;
        drop(index);
        if let Err(recovery) = recover(root, repository) {
            tracing::error!(%recovery, "could not put the replica back after a failed batch; will retry");
        }
        if let Err(settling) = byref::settle(root, repository, guarded, &[]) {
            tracing::warn!(%settling, "could not settle the files kept by reference after a failed batch");
        }
        return Err(error);
    }
    // The inodes the batch moved or replaced: home again, kept, or copied out.
    if let Err(error) = byref::settle(root, repository, guarded, &byref::renames(events)) {
        tracing::warn!(%error, "could not settle the files kept by reference; the next garbage collection will");
    }
    let last = events.last().map(|event| event.seq()).unwrap_or(head.seq);
    let committed_at = started.elapsed();
    repository.save_index_when_due(&mut index, last, events.len())?;
    let index_saved_at = started.elapsed();
    drop(index);
    // Not flushed: it becomes durable with the next flush (the next batch's journal or
    // append). A crash before that leaves the journal of a batch that completed, and
    // `recover` then finds every path it names already as the index says (the batch
    // is in the log): redundant checks, the same end state. An old version that could
    // not be removed keeps the journal, so that the next `recover` removes it.
    if all_removed {
        repository.meta_set_unflushed(PENDING_KEY, None)?;
    }
    tracing::debug!(
        events = events.len(),
        check_ms = checked_at.as_secs_f64() * 1e3,
        journal_ms = (journaled_at - checked_at).as_secs_f64() * 1e3,
        write_ms = timings.write.as_secs_f64() * 1e3,
        syncfs_ms = timings.syncfs.as_secs_f64() * 1e3,
        append_ms = timings.append.as_secs_f64() * 1e3,
        waited_for_commit_ms = timings.waited.as_secs_f64() * 1e3,
        index_ms = (index_saved_at - committed_at).as_secs_f64() * 1e3,
        total_ms = started.elapsed().as_secs_f64() * 1e3,
        "batch applied"
    );
    Ok(repository.head())
}

/// The recorded times of the directories `events` (and the relinking of `linked`)
/// change or write into, from `index` (the state after them): set once their contents
/// are written.
fn directory_times(
    index: &crate::folder::index::FolderIndex,
    events: &[Event],
    linked: &[&RelPath],
) -> Vec<(RelPath, i64)> {
    let mut dirs: std::collections::BTreeSet<RelPath> = std::collections::BTreeSet::new();
    let paths = events
        .iter()
        .flat_map(|event| event.body.change.paths())
        .chain(linked.iter().copied());
    for path in paths {
        dirs.insert(path.clone());
        if let Some(parent) = path.parent() {
            dirs.insert(parent);
        }
    }
    // A directory written into before a later rename of the batch moved it is only
    // under its new path now: every directory a rename moved.
    for event in events {
        if let Change::Rename { to, .. } = &event.body.change {
            for (path, entry) in index.subtree(to) {
                if entry.is_dir() {
                    dirs.insert(path.clone());
                }
            }
        }
    }
    dirs.into_iter()
        .filter(|dir| matches!(index.get(dir), Some(Entry::Dir { .. })))
        .filter_map(|dir| {
            let mtime_ns = index.meta(&dir)?.mtime_ns;
            Some((dir, mtime_ns))
        })
        .collect()
}

/// Where a batch's time went (for the debug log).
#[derive(Default)]
struct StepTimings {
    write: std::time::Duration,
    syncfs: std::time::Duration,
    append: std::time::Duration,
    /// Writing the next part waited this long for the previous part's commit.
    waited: std::time::Duration,
}

/// Record (flushed) that `touched` may differ from the index until `recover` runs.
pub(crate) fn journal_touched(repository: &Repository, touched: &[RelPath]) -> Result<()> {
    let journal =
        bincode::encode_to_vec(touched, bincode_config()).expect("encoding paths cannot fail");
    repository.meta_set(PENDING_KEY, Some(&journal))
}

/// The paths a journal lists (read back from this node's own store, but a damaged
/// store must give an error, never a panic or an unbounded allocation).
fn decode_journal(journal: &[u8]) -> Result<Vec<RelPath>> {
    let (touched, _): (Vec<RelPath>, usize) = bincode::decode_from_slice(
        journal,
        bincode::config::standard()
            .with_little_endian()
            .with_fixed_int_encoding()
            .with_limit::<{ crate::log::event::MAX_EVENT_BYTES }>(),
    )
    .map_err(|error| Error::Decode {
        what: "replay journal".to_string(),
        reason: error.to_string(),
    })?;
    Ok(touched)
}

/// If a batch was interrupted, put every path it touched back to the index's state at
/// the log head and remove temporary files. A no-op when nothing is pending.
pub fn recover(root: &Path, repository: &Repository) -> Result<()> {
    restore_journaled(root, repository, true)
}

/// Put the paths journaled by `journal_touched` back to the index's state: the last
/// step of a rewind to the common point (a rejoin's quarantine) or of a snapshot's
/// install, which journal what they will touch first. Said as what it is, not as an
/// interruption (`recover` is for those).
pub fn restore_touched(root: &Path, repository: &Repository) -> Result<()> {
    restore_journaled(root, repository, false)
}

fn restore_journaled(root: &Path, repository: &Repository, interrupted: bool) -> Result<()> {
    let Some(journal) = repository.meta_get(PENDING_KEY)? else {
        return Ok(());
    };
    let touched = decode_journal(&journal)?;
    if interrupted {
        tracing::warn!(
            paths = touched.len(),
            "an interrupted batch left the replica unfinished; restoring it"
        );
    } else {
        tracing::info!(
            paths = touched.len(),
            "putting the paths it touched back to the recorded state"
        );
    }
    let scopes = {
        let index = repository.lock_index();
        crate::folder::scan::disk::cover(&index, None, touched)
    };
    for scope in &scopes {
        restore_scope(root, repository, scope)?;
    }
    remove_temporary_files(root)?;
    syncfs(root)?;
    repository.chunks().drop_unreachable_refs()?;
    repository.meta_set(PENDING_KEY, None)?;
    Ok(())
}

/// Make `scope` on disk exactly what the index says (used by recovery, and by the
/// rejoin to put a folder back to a common point).
pub fn restore_scope(root: &Path, repository: &Repository, scope: &RelPath) -> Result<()> {
    let (wanted, metas): (
        Vec<(RelPath, Entry)>,
        Vec<Option<crate::folder::meta::Meta>>,
    ) = {
        let index = repository.lock_index();
        index
            .subtree(scope)
            .map(|(path, entry)| ((path.clone(), entry.clone()), index.meta(path).cloned()))
            .unzip()
    };
    // Never walk, delete or write through a symlink planted above the scope.
    check_parents_on_disk(root, scope, 0, &mut HashSet::new())?;
    let disk = walk(root, Some(scope))?;
    let wanted_paths: HashSet<&RelPath> = wanted.iter().map(|(path, _)| path).collect();
    for (path, on_disk) in disk.entries.iter().rev() {
        let keep = wanted
            .binary_search_by(|(candidate, _)| candidate.cmp(path))
            .ok()
            .map(|at| &wanted[at].1)
            .is_some_and(|entry| same_kind(on_disk, entry));
        if !keep || !wanted_paths.contains(path) {
            remove_any(&path.under(root))?;
        }
    }
    let mut safe_dirs = HashSet::new();
    for ((path, entry), meta) in wanted.iter().zip(&metas) {
        // Every entry's parents on disk are real directories (created above it in path
        // order), never a symlink planted or left there.
        check_parents_on_disk(root, path, 0, &mut safe_dirs)?;
        let full = path.under(root);
        match entry {
            Entry::Dir { mode } => {
                if stat_disk(&full)?.is_none() {
                    std::fs::create_dir(&full).at("create directory", &full)?;
                }
                set_mode(&full, *mode)?;
            }
            Entry::Symlink { target } => {
                let current = stat_disk(&full)?;
                if current
                    != Some(DiskEntry::Symlink {
                        target: target.clone(),
                    })
                {
                    write_symlink(root, path, target)?;
                }
            }
            Entry::File {
                mode,
                mtime_ns,
                size,
                content,
                chunks,
            } => {
                let intact = match stat_disk(&full)? {
                    Some(DiskEntry::File {
                        size: disk_size, ..
                    }) if disk_size == *size => hash_file(&full)? == *content,
                    _ => false,
                };
                let attributes = match meta {
                    Some(meta) => Attributes::Meta(meta),
                    None => Attributes::Legacy(*mode, *mtime_ns),
                };
                if intact {
                    set_mode(&full, *mode)?;
                    continue;
                }
                byref::keep_before_rewrite(repository, &full)?;
                if let Some(old) = write_file(root, repository, path, attributes, *content, chunks)?
                {
                    remove_any(&old)?;
                }
            }
        }
    }
    // The recorded metadata, then the times (a directory's after everything in it).
    let options = repository.meta_options();
    for ((path, entry), meta) in wanted.iter().zip(&metas).rev() {
        let Some(meta) = meta else { continue };
        let full = path.under(root);
        let symlink = matches!(entry, Entry::Symlink { .. });
        crate::folder::meta::apply_meta(&full, meta, symlink, options)?;
        crate::folder::meta::set_mtime(&full, meta.mtime_ns)?;
    }
    // Hard links: the names of one file within the scope (one link value, the same
    // recorded content) are one file again.
    let mut groups: std::collections::BTreeMap<(u64, Hash), Vec<RelPath>> = Default::default();
    for ((path, entry), meta) in wanted.iter().zip(&metas) {
        if let (Entry::File { content, .. }, Some(meta)) = (entry, meta) {
            if meta.link != 0 {
                groups
                    .entry((meta.link, *content))
                    .or_default()
                    .push(path.clone());
            }
        }
    }
    for group in groups.values().filter(|group| group.len() > 1) {
        crate::folder::links::relink(root, group)?;
    }
    Ok(())
}

fn same_kind(on_disk: &DiskEntry, entry: &Entry) -> bool {
    matches!(
        (on_disk, entry),
        (DiskEntry::File { .. }, Entry::File { .. })
            | (DiskEntry::Dir { .. }, Entry::Dir { .. })
            | (DiskEntry::Symlink { .. }, Entry::Symlink { .. })
    )
}

/// blake3 of a file's bytes (its holes not read: `sparse::hash_file`).
pub fn hash_file(full: &Path) -> Result<Hash> {
    let file = File::open(full).at("open", full)?;
    crate::folder::read::sparse::hash_file(&file, full)
}

pub(super) fn remove_any(full: &Path) -> Result<()> {
    let result = match std::fs::symlink_metadata(full) {
        Ok(metadata) if metadata.is_dir() => std::fs::remove_dir_all(full),
        Ok(_) => std::fs::remove_file(full),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    };
    result.at("remove", full)
}

/// Remove every temporary file standin left in the folder: a crash can leave a file
/// being written, or the old version of a replaced one whose removal was not yet on
/// disk (the journal that would have named it was). Run when a node starts.
pub fn remove_temporary_files(root: &Path) -> Result<()> {
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(listing) = std::fs::read_dir(&dir) else {
            continue;
        };
        for item in listing {
            let item = item.at("list", &dir)?;
            let kind = item.file_type().at("stat", item.path())?;
            if crate::path::is_temporary_name(item.file_name().as_bytes()) {
                remove_any(&item.path())?;
            } else if kind.is_dir() {
                dirs.push(item.path());
            }
        }
    }
    Ok(())
}

/// chmod, refusing a symlink (which `chmod` would follow out of the folder).
pub(super) fn set_mode(full: &Path, mode: u32) -> Result<()> {
    let metadata = std::fs::symlink_metadata(full).at("stat", full)?;
    if metadata.file_type().is_symlink() {
        return Err(Error::UnsafePath {
            path: full.display().to_string(),
            reason:
                "a symlink is in the replica where a file or directory should be; not following it"
                    .to_string(),
        });
    }
    std::fs::set_permissions(full, std::fs::Permissions::from_mode(mode)).at("chmod", full)
}

/// Refuse to touch `path` if any of its parents on disk is not a real directory
/// (a symlink planted in the replica could otherwise lead the write outside).
pub(super) fn check_parents_on_disk(
    root: &Path,
    path: &RelPath,
    seq: u64,
    safe_dirs: &mut HashSet<RelPath>,
) -> Result<()> {
    for ancestor in path.ancestors() {
        if safe_dirs.contains(&ancestor) {
            continue;
        }
        let full = ancestor.under(root);
        match std::fs::symlink_metadata(&full) {
            Ok(metadata) if metadata.file_type().is_dir() => {
                safe_dirs.insert(ancestor);
            }
            Ok(metadata) if metadata.file_type().is_symlink() => {
                return Err(Error::UnsafePath {
                    path: path.to_string(),
                    reason: format!(
                        "seq {seq}: passes through the symlink {ancestor} in the replica"
                    ),
                })
            }
            Ok(_) => {
                return Err(Error::Apply {
                    seq,
                    path: path.to_string(),
                    reason: format!("{ancestor} is not a directory"),
                })
            }
            Err(error) => {
                return Err(Error::Apply {
                    seq,
                    path: path.to_string(),
                    reason: format!("parent {ancestor}: {error}"),
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
