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
//!    (flushed; a later batch of the same apply: `replay_pending.N`) before the folder
//!    is touched.
//! 3. **Apply**: each file is written to a temporary name in its directory (content
//!    from verified chunks, hashed again while written and compared with the event),
//!    given its mode and mtime, and renamed into place (exchanged with the file it
//!    replaces, which is removed once the apply's last step 4 is done); no reader ever sees half a file —
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
//! One apply may take several batches (`apply_fed`, `Feed`): a batch handed to it
//! while its last part is being committed is checked, journaled (under a key of its
//! own beside the first batch's) and written meanwhile, and its parts are committed
//! after that one — so a stream of batches is not written one durability point at a
//! time. The old versions' removal, the directory times, the settling of inodes kept
//! by reference, the index save and the journal's clearing wait for the apply's end
//! (after at most `ReplayOptions::apply_events` events or two seconds of taking
//! batches; at once after a batch with a large file or an inode kept by reference).
//! `apply_batch` is an apply of one batch.
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
use crate::log::event::{Change, Event};
use crate::log::Head;
use crate::path::RelPath;
use crate::repository::Repository;

mod apply;
mod byref;
mod commit;
mod durable;
mod feed;
mod file;
mod patch;
mod snapshot;
mod write;
#[doc(hidden)]
pub use patch::{StopPatch, STOP_PATCH};
pub use snapshot::install_snapshot;

pub use apply::apply_fed;
pub use feed::Feed;

use file::{write_file, Attributes};
use write::write_symlink;

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
    /// An apply takes no further batch from its feed once it has taken this many
    /// events (its journal, the old versions it removes and the index save wait for
    /// its end).
    pub apply_events: usize,
    /// An apply takes no further batch from its feed after running this long (its
    /// journal, the old versions it removes and the index save wait for its end).
    pub take_batches_for: std::time::Duration,
}

impl Default for ReplayOptions {
    fn default() -> ReplayOptions {
        ReplayOptions {
            commit_part_events: 1024,
            apply_events: 16_384,
            take_batches_for: std::time::Duration::from_secs(2),
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
    apply_fed(root, repository, &Feed::only(events.to_vec()), options)
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

/// Where an apply's time went (for the debug log).
#[derive(Default)]
struct StepTimings {
    check: std::time::Duration,
    journal: std::time::Duration,
    write: std::time::Duration,
    syncfs: std::time::Duration,
    append: std::time::Duration,
    /// Writing the next part waited this long for the previous part's commit.
    waited: std::time::Duration,
}

/// Record (flushed) that `touched` may differ from the index until `recover` runs.
pub(crate) fn journal_touched(repository: &Repository, touched: &[RelPath]) -> Result<()> {
    journal_batch(repository, 0, touched)
}

/// The journal's key for an apply's `batch`th batch: the first is `PENDING_KEY`, the
/// next ones add theirs beside it (each batch's paths written once).
fn journal_key(batch: usize) -> String {
    match batch {
        0 => PENDING_KEY.to_string(),
        batch => format!("{PENDING_KEY}.{batch}"),
    }
}

/// Record (flushed) that the paths of an apply's `batch`th batch may differ from the
/// index until `recover` runs.
fn journal_batch(repository: &Repository, batch: usize, touched: &[RelPath]) -> Result<()> {
    let journal =
        bincode::encode_to_vec(touched, bincode_config()).expect("encoding paths cannot fail");
    repository.meta_set(&journal_key(batch), Some(&journal))
}

/// Clear (unflushed) the journal of an apply of `batches` batches: the later batches'
/// keys first, so that a crash keeps the first key as long as any.
fn clear_journal(repository: &Repository, batches: usize) -> Result<()> {
    for batch in (0..batches.max(1)).rev() {
        repository.meta_set_unflushed(&journal_key(batch), None)?;
    }
    Ok(())
}

/// Every path the journal lists (all its keys), or `None` when nothing is pending.
fn read_journal(repository: &Repository) -> Result<Option<(Vec<RelPath>, Vec<String>)>> {
    let prefix = format!("{PENDING_KEY}.");
    let mut keys = Vec::new();
    let mut touched = Vec::new();
    if let Some(journal) = repository.meta_get(PENDING_KEY)? {
        touched.extend(decode_journal(&journal)?);
        keys.push(PENDING_KEY.to_string());
    }
    for (key, journal) in repository.meta_scan_prefix(&prefix)? {
        touched.extend(decode_journal(&journal)?);
        keys.push(key);
    }
    Ok((!keys.is_empty()).then_some((touched, keys)))
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
    let Some((touched, keys)) = read_journal(repository)? else {
        return Ok(());
    };
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
    for key in keys.iter().rev() {
        repository.meta_set_unflushed(key, None)?;
    }
    repository.flush()?;
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
