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
//!    replaces, which is removed after step 4); no reader ever sees half a file.
//!    Every parent on disk is checked to be a real directory, not a symlink.
//! 4. **Durability point**: one `syncfs` of the folder's file system, then the chunk
//!    store is synced, the events are appended to the log (flushed), the index saved
//!    (only when much of it or long unsaved: else `Repository::save_index_if_dirty`
//!    when the passive is idle) and the journal cleared (durable with the next flush).
//!    Only now has the applied seq moved.
//!
//! A batch of more than `COMMIT_PART_EVENTS` events runs steps 3 and 4 in parts, in
//! order: while one part's durability point runs on another thread, the next part's
//! files are written; a part is appended to the log only after its own files are on
//! disk. The journal covers the whole batch until its end.
//!
//! If step 3 fails, or the process dies anywhere after step 2, `recover` puts every
//! journaled path back to the state the index holds at the log head (which is the
//! pre-batch state unless step 4's append completed) and removes temporary files;
//! applying the batch again then ends where an uninterrupted run would have.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Seek, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::event::{chain_hash, Change, ChunkRef, Event};
use crate::fsutil::{syncfs, system_time, temp_name};
use crate::hash::Hash;
use crate::index::Entry;
use crate::log::Head;
use crate::path::RelPath;
use crate::repository::Repository;
use crate::scan::{stat_disk, walk, DiskEntry};

const PENDING_KEY: &str = "replay_pending";

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
}

/// Apply `events` (which must follow the repository's head) to the replica `root`.
pub fn apply_batch(root: &Path, repository: &Repository, events: &[Event]) -> Result<Head> {
    recover(root, repository)?;
    if events.is_empty() {
        return Ok(repository.head());
    }
    let started = std::time::Instant::now();
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
    let dir_times = directory_times(&index, events);
    let durable = write_and_commit_in_parts(
        root,
        repository,
        events,
        &mut timings,
        &displaced,
        &dir_times,
    );
    // The old versions of replaced files go once the batch is in the log (or failed).
    let all_removed = displaced.remove_all();
    if let Err(error) = durable {
        repository.reload_index_locked(&mut index)?;
        drop(index);
        if let Err(recovery) = recover(root, repository) {
            tracing::error!(%recovery, "could not put the replica back after a failed batch; will retry");
        }
        return Err(error);
    }
    let last = events.last().map(|event| event.seq()).unwrap_or(head.seq);
    let committed_at = started.elapsed();
    repository.save_index_when_due(&mut index, last)?;
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

/// The recorded times of the directories `events` change or write into, from `index`
/// (the state after them): set once their contents are written.
fn directory_times(index: &crate::index::FolderIndex, events: &[Event]) -> Vec<(RelPath, i64)> {
    let mut dirs: std::collections::BTreeSet<RelPath> = std::collections::BTreeSet::new();
    for event in events {
        for path in event.body.change.paths() {
            dirs.insert(path.clone());
            if let Some(parent) = path.parent() {
                dirs.insert(parent);
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

/// A batch of more events than this is written and made durable in parts of about
/// this many, each part's durability point overlapping the next part's writes.
static COMMIT_PART_EVENTS: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(1024);

/// Commit batches in parts of `events` instead of 1,024 (for tests).
#[doc(hidden)]
pub fn set_commit_part_events(events: usize) {
    COMMIT_PART_EVENTS.store(events.max(1), std::sync::atomic::Ordering::Relaxed);
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

/// Steps 3 and 4 for checked and journaled `events`: write a part's files, then make
/// that part durable (`syncfs`, the chunk store synced, the part appended to the log)
/// on another thread while the next part's files are written. Parts are committed in
/// order, each only after its own files are on disk, so the log never gets ahead of
/// the folder; the journal (all of the batch's paths) stays until the end, so a crash
/// or an error anywhere leaves `recover` to put every path back to the log head.
fn write_and_commit_in_parts(
    root: &Path,
    repository: &Repository,
    events: &[Event],
    timings: &mut StepTimings,
    displaced: &Displaced,
    dir_times: &[(RelPath, i64)],
) -> Result<()> {
    let commit = |part: &[Event]| -> Result<(std::time::Duration, std::time::Duration)> {
        let started = std::time::Instant::now();
        syncfs(root)?;
        let synced = started.elapsed();
        repository.chunks().sync()?;
        repository.log().append(part)?;
        Ok((synced, started.elapsed() - synced))
    };
    let part_events = COMMIT_PART_EVENTS.load(std::sync::atomic::Ordering::Relaxed);
    let parts = events.len().div_ceil(part_events).max(1);
    let part_len = events.len().div_ceil(parts).max(1);
    std::thread::scope(|scope| {
        let mut committing: Option<std::thread::ScopedJoinHandle<'_, _>> = None;
        let wait_for = |committing: &mut Option<std::thread::ScopedJoinHandle<'_, _>>,
                        timings: &mut StepTimings|
         -> Result<()> {
            if let Some(handle) = committing.take() {
                let waited = std::time::Instant::now();
                let joined: Result<(std::time::Duration, std::time::Duration)> = match handle.join()
                {
                    Ok(result) => result,
                    Err(panic) => std::panic::resume_unwind(panic),
                };
                timings.waited += waited.elapsed();
                let (synced, appended) = joined?;
                timings.syncfs += synced;
                timings.append += appended;
            }
            Ok(())
        };
        let mut parts = events.chunks(part_len).peekable();
        while let Some(part) = parts.next() {
            let writing = std::time::Instant::now();
            let written = apply_changes(root, repository, part, displaced, dir_times);
            timings.write += writing.elapsed();
            // The previous part is committed (or failed) before this one may be.
            let previous = wait_for(&mut committing, timings);
            written?;
            previous?;
            if parts.peek().is_some() {
                committing = Some(scope.spawn(move || commit(part)));
            } else {
                let (synced, appended) = commit(part)?;
                timings.syncfs += synced;
                timings.append += appended;
            }
        }
        wait_for(&mut committing, timings)
    })
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
            .with_limit::<{ crate::event::MAX_EVENT_BYTES }>(),
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
    let Some(journal) = repository.meta_get(PENDING_KEY)? else {
        return Ok(());
    };
    let touched = decode_journal(&journal)?;
    tracing::warn!(
        paths = touched.len(),
        "an interrupted batch left the replica unfinished; restoring it"
    );
    let scopes = {
        let index = repository.lock_index();
        crate::scan::cover(&index, None, touched)
    };
    for scope in &scopes {
        restore_scope(root, repository, scope)?;
    }
    remove_temporary_files(root)?;
    syncfs(root)?;
    repository.meta_set(PENDING_KEY, None)?;
    Ok(())
}

/// Make `scope` on disk exactly what the index says (used by recovery, and by the
/// rejoin to put a folder back to a common point).
pub fn restore_scope(root: &Path, repository: &Repository, scope: &RelPath) -> Result<()> {
    let (wanted, metas): (Vec<(RelPath, Entry)>, Vec<Option<crate::meta::Meta>>) = {
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
                } else if let Some(old) =
                    write_file(root, repository, path, attributes, *content, chunks)?
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
        crate::meta::apply_meta(&full, meta, symlink, options)?;
        crate::meta::set_mtime(&full, meta.mtime_ns)?;
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

/// blake3 of a file's bytes.
pub fn hash_file(full: &Path) -> Result<Hash> {
    let file = File::open(full).at("open", full)?;
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(file).at("read", full)?;
    Ok(hasher.finalize().into())
}

fn remove_any(full: &Path) -> Result<()> {
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
            if item
                .file_name()
                .as_bytes()
                .starts_with(crate::path::TEMP_PREFIX)
            {
                remove_any(&item.path())?;
            } else if kind.is_dir() {
                dirs.push(item.path());
            }
        }
    }
    Ok(())
}

/// chmod, refusing a symlink (which `chmod` would follow out of the folder).
fn set_mode(full: &Path, mode: u32) -> Result<()> {
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
fn check_parents_on_disk(
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

/// Most threads that write one batch's files.
const WRITE_THREADS_MAX: usize = 4;
/// Fewer puts than this in a row are written on the calling thread (unless two are
/// of large files).
const PARALLEL_MIN_PUTS: usize = 8;
/// A file at least this large goes to a write thread by its path, whatever its
/// directory.
const LARGE_FILE_BYTES: u64 = 1 << 20;
/// The work of writing a file, beside its bytes, counted as this many bytes when
/// files are dealt to write threads.
const PER_FILE_WORK_BYTES: u64 = 64 << 10;

/// Apply `events` in order, except that the files of a run of puts are written by
/// several threads, a directory to a thread: such files are independent (every parent
/// exists and was checked first), and the per-file kernel cost that bounds a
/// small-file sync is then paid on every core. A directory created within the run is
/// created at once, before the run's files (a file's parent always comes before it in
/// the log); any other change ends the run. On an error the first failing event's
/// error (in seq order) is returned; the journal covers whatever was written.
fn apply_changes(
    root: &Path,
    repository: &Repository,
    events: &[Event],
    displaced: &Displaced,
    dir_times: &[(RelPath, i64)],
) -> Result<()> {
    let threads = std::thread::available_parallelism()
        .map(|count| count.get())
        .unwrap_or(1)
        .min(WRITE_THREADS_MAX);
    let mut safe_dirs = HashSet::new();
    let mut puts: Vec<&Event> = Vec::new();
    let mut put_paths: HashSet<&RelPath> = HashSet::new();
    for event in events {
        match &event.body.change {
            Change::Put { path, .. } | Change::File { path, .. } if threads > 1 => {
                puts.push(event);
                put_paths.insert(path);
                continue;
            }
            Change::Mkdir { path, .. } | Change::Dir { path, .. } if !put_paths.contains(path) => {}
            _ => {
                write_puts(root, repository, &puts, &mut safe_dirs, threads, displaced)?;
                puts.clear();
                put_paths.clear();
                // A rename or removal may move or remove their directories.
                let _ = displaced.remove_all();
            }
        }
        apply_change(root, repository, event, &mut safe_dirs, displaced)?;
    }
    write_puts(root, repository, &puts, &mut safe_dirs, threads, displaced)?;
    // Directory times last: writing into a directory moves its mtime.
    for (path, mtime_ns) in dir_times {
        match crate::meta::set_mtime(&path.under(root), *mtime_ns) {
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            other => other?,
        }
    }
    Ok(())
}

/// Write the files of `puts` (all `Change::Put`, in log order): on up to `threads`
/// threads when they are many and in several directories (threads writing into one
/// directory only wait on its lock), else in order on this one.
fn write_puts(
    root: &Path,
    repository: &Repository,
    puts: &[&Event],
    safe_dirs: &mut HashSet<RelPath>,
    threads: usize,
    displaced: &Displaced,
) -> Result<()> {
    let mut parents = HashSet::new();
    for event in puts {
        for path in event.body.change.paths() {
            check_parents_on_disk(root, path, event.seq(), safe_dirs)?;
            parents.insert(path.parent());
        }
    }
    let large = |event: &Event| event.body.change.content_size() >= LARGE_FILE_BYTES;
    let large_files = puts.iter().filter(|event| large(event)).count();
    if (puts.len() < PARALLEL_MIN_PUTS || parents.len() < 2) && large_files < 2 {
        return puts
            .iter()
            .try_for_each(|event| apply_put(root, repository, event, displaced));
    }
    // Small files go to a thread by directory, large ones by path (their cost is
    // bytes, not the directory's lock); a new directory or large file goes to the
    // thread with the least work so far (bytes, plus a per-file cost).
    let mut lanes: Vec<Vec<&Event>> = vec![Vec::new(); threads];
    let mut work = vec![0u64; threads];
    let mut lane_of_dir: HashMap<Option<RelPath>, usize> = HashMap::new();
    // A path written twice in the run stays on one thread, in log order, whatever its
    // sizes (else the older content could be renamed into place last).
    let mut lane_of_path: HashMap<&RelPath, usize> = HashMap::new();
    for event in puts {
        let (path, size) = match &event.body.change {
            Change::Put { path, size, .. } | Change::File { path, size, .. } => (path, *size),
            _ => continue,
        };
        let least = (0..threads).min_by_key(|lane| work[*lane]).unwrap_or(0);
        let lane = match lane_of_path.get(path) {
            Some(lane) => *lane,
            None if large(event) => least,
            None => *lane_of_dir.entry(path.parent()).or_insert(least),
        };
        lane_of_path.insert(path, lane);
        work[lane] += size + PER_FILE_WORK_BYTES;
        lanes[lane].push(event);
    }
    let write_lane = |lane: &[&Event]| -> std::result::Result<(), (u64, Error)> {
        lane.iter().try_for_each(|event| {
            apply_put(root, repository, event, displaced).map_err(|error| (event.seq(), error))
        })
    };
    let mut failures: Vec<(u64, Error)> = std::thread::scope(|scope| {
        let (first, rest) = lanes.split_first().expect("at least one lane");
        let workers: Vec<_> = rest
            .iter()
            .filter(|lane| !lane.is_empty())
            .map(|lane| scope.spawn(|| write_lane(lane)))
            .collect();
        let mut failures: Vec<(u64, Error)> = write_lane(first).err().into_iter().collect();
        for worker in workers {
            match worker.join() {
                Ok(Ok(())) => {}
                Ok(Err(failure)) => failures.push(failure),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        failures
    });
    failures.sort_by_key(|(seq, _)| *seq);
    match failures.into_iter().next() {
        Some((_, error)) => Err(error),
        None => Ok(()),
    }
}

/// Write the file a `Put` or `File` event names (its parents already checked).
fn apply_put(
    root: &Path,
    repository: &Repository,
    event: &Event,
    displaced: &Displaced,
) -> Result<()> {
    let (path, attributes, content, chunks) = match &event.body.change {
        Change::Put {
            path,
            mode,
            mtime_ns,
            content,
            chunks,
            ..
        } => (path, Attributes::Legacy(*mode, *mtime_ns), content, chunks),
        Change::File {
            path,
            meta,
            content,
            chunks,
            ..
        } => (path, Attributes::Meta(meta), content, chunks),
        _ => return Ok(()),
    };
    match write_file(root, repository, path, attributes, *content, chunks) {
        Ok(Some(old)) => {
            displaced.add(old);
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(
            error @ (Error::ChunkMismatch { .. } | Error::ChunkMissing { .. } | Error::Io { .. }),
        ) => Err(error),
        Err(other) => Err(Error::Apply {
            seq: event.seq(),
            path: path.to_string(),
            reason: other.to_string(),
        }),
    }
}

fn apply_change(
    root: &Path,
    repository: &Repository,
    event: &Event,
    safe_dirs: &mut HashSet<RelPath>,
    displaced: &Displaced,
) -> Result<()> {
    let seq = event.seq();
    for path in event.body.change.paths() {
        check_parents_on_disk(root, path, seq, safe_dirs)?;
    }
    let options = repository.meta_options();
    match &event.body.change {
        Change::Put { .. } | Change::File { .. } => apply_put(root, repository, event, displaced),
        Change::Dir { path, meta } => {
            let full = path.under(root);
            match stat_disk(&full)? {
                Some(DiskEntry::Dir { .. }) => {}
                None => std::fs::create_dir(&full).at("create directory", &full)?,
                Some(_) => {
                    return Err(Error::Apply {
                        seq,
                        path: path.to_string(),
                        reason: "something else is in the way".to_string(),
                    })
                }
            }
            // Its time is set after the batch's changes below it (`dir_times`).
            crate::meta::apply_meta(&full, meta, false, options).map(|_| ())
        }
        Change::Link { path, target, meta } => {
            write_symlink(root, path, target)?;
            let full = path.under(root);
            crate::meta::apply_meta(&full, meta, true, options)?;
            crate::meta::set_mtime(&full, meta.mtime_ns)
        }
        Change::SetMeta { path, meta } => {
            let full = path.under(root);
            let metadata = std::fs::symlink_metadata(&full).at("stat", &full)?;
            let symlink = metadata.file_type().is_symlink();
            crate::meta::apply_meta(&full, meta, symlink, options)?;
            if metadata.is_dir() {
                Ok(())
            } else {
                crate::meta::set_mtime(&full, meta.mtime_ns)
            }
        }
        Change::Mkdir { path, mode } => {
            let full = path.under(root);
            match stat_disk(&full)? {
                Some(DiskEntry::Dir { .. }) => {}
                None => std::fs::create_dir(&full).at("create directory", &full)?,
                Some(_) => {
                    return Err(Error::Apply {
                        seq,
                        path: path.to_string(),
                        reason: "something else is in the way".to_string(),
                    })
                }
            }
            set_mode(&full, *mode)
        }
        Change::Symlink { path, target } => write_symlink(root, path, target),
        Change::Remove { path } => remove_any(&path.under(root)),
        Change::Rename { from, to } => {
            safe_dirs.clear();
            let source = from.under(root);
            let destination = to.under(root);
            if std::fs::symlink_metadata(&source).is_err() {
                return Err(Error::Apply {
                    seq,
                    path: from.to_string(),
                    reason: "nothing to rename in the replica".to_string(),
                });
            }
            if let Ok(metadata) = std::fs::symlink_metadata(&destination) {
                if metadata.is_dir() {
                    remove_any(&destination)?;
                }
            }
            std::fs::rename(&source, &destination).at("rename", &source)
        }
        Change::SetMode { path, mode } => set_mode(&path.under(root), *mode),
        Change::Promote { .. } | Change::Group { .. } => Ok(()),
    }
    .inspect(|()| {
        if matches!(event.body.change, Change::Remove { .. }) {
            safe_dirs.clear();
        }
    })
}

/// Write a file from its chunks to a temporary name beside it, check its content hash,
/// set mode and mtime, and put it in place (`fsutil::replace_file`). Returns where the
/// file it replaced now is, if it was kept for the caller to remove.
fn write_file(
    root: &Path,
    repository: &Repository,
    path: &RelPath,
    attributes: Attributes<'_>,
    content: Hash,
    chunks: &[ChunkRef],
) -> Result<Option<PathBuf>> {
    let destination = path.under(root);
    let temporary = match path.parent() {
        Some(parent) => parent.join(&temp_name())?.under(root),
        None => RelPath::top(&temp_name())?.under(root),
    };
    let written = (|| -> Result<bool> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&temporary)
            .at("create", &temporary)?;
        let mut hasher = blake3::Hasher::new();
        let mut written = 0u64;
        let mut kicked = 0u64;
        let mut database = false;
        let mut holes = false;
        for chunk in chunks {
            // Not hashed chunk by chunk: the whole file is hashed below, and a file
            // that does not add up is never renamed into place.
            let bytes = repository.chunks().get_unverified(&chunk.hash)?;
            if written == 0 {
                database = crate::sqlite::is_header(&bytes);
            }
            hasher.update(&bytes);
            holes |= write_leaving_holes(&mut file, &bytes, written).at("write", &temporary)?;
            written += bytes.len() as u64;
            // Large files: start write-back as we go, so the batch's syncfs is short.
            if written - kicked >= crate::fsutil::WRITEBACK_STEP_BYTES {
                crate::fsutil::start_writeback(&file, kicked, written - kicked);
                kicked = written;
            }
        }
        if holes {
            file.set_len(written).at("truncate", &temporary)?;
        }
        let actual: Hash = hasher.finalize().into();
        if actual != content {
            // Name the damaged chunk, if one is.
            for chunk in chunks {
                repository.chunks().get(&chunk.hash)?;
            }
            return Err(Error::ChunkMismatch {
                expected: content,
                actual,
                location: format!(" (the chunks of {path} do not add up to its content hash)"),
            });
        }
        let mtime_ns = match attributes {
            Attributes::Legacy(mode, mtime_ns) => {
                file.set_permissions(std::fs::Permissions::from_mode(mode))
                    .at("chmod", &temporary)?;
                mtime_ns
            }
            Attributes::Meta(meta) => {
                crate::meta::apply_meta(&temporary, meta, false, repository.meta_options())?;
                meta.mtime_ns
            }
        };
        file.set_modified(system_time(mtime_ns))
            .at("set mtime", &temporary)?;
        Ok(database)
    })();
    let database = match written {
        Ok(database) => database,
        Err(error) => {
            let _ = std::fs::remove_file(&temporary);
            return Err(error);
        }
    };
    if database {
        // A `-wal` or `-journal` left beside it belongs to another instant: SQLite
        // would apply it to this database. (Never recorded: see `sqlite`.)
        for companion in crate::sqlite::companions(&destination) {
            match std::fs::symlink_metadata(&companion) {
                Ok(metadata) if !metadata.is_dir() => {
                    std::fs::remove_file(&companion).at("remove", &companion)?
                }
                _ => {}
            }
        }
    }
    Ok(crate::fsutil::replace_file(&temporary, &destination)?.then_some(temporary))
}

/// The unit in which zeros are left as holes: a file-system block.
const SPARSE_BLOCK: u64 = 4096;

/// Write `bytes` at the file's position (`offset`), leaving every whole block of
/// zeros (aligned in the file) as a hole: a sparse file stays sparse, as `rsync -S`
/// keeps it. The caller sizes the file at the end. Whether a hole was left.
fn write_leaving_holes(file: &mut File, bytes: &[u8], offset: u64) -> std::io::Result<bool> {
    let mut holes = false;
    // Bytes from `run` to `at` are still to write, in one call.
    let mut run = 0usize;
    let mut at = 0usize;
    while at < bytes.len() {
        let position = offset + at as u64;
        let block_end = (position / SPARSE_BLOCK + 1) * SPARSE_BLOCK;
        let end = bytes.len().min(at + (block_end - position) as usize);
        let piece = &bytes[at..end];
        let whole_block =
            position.is_multiple_of(SPARSE_BLOCK) && piece.len() as u64 == SPARSE_BLOCK;
        if whole_block && piece.iter().all(|byte| *byte == 0) {
            file.write_all(&bytes[run..at])?;
            file.seek(std::io::SeekFrom::Current(piece.len() as i64))?;
            holes = true;
            run = end;
        }
        at = end;
    }
    file.write_all(&bytes[run..])?;
    Ok(holes)
}

/// The metadata a written file gets: a format-1 `Put`'s mode and mtime, or all of it.
#[derive(Clone, Copy)]
enum Attributes<'a> {
    Legacy(u32, i64),
    Meta(&'a crate::meta::Meta),
}

/// The old versions of files a batch replaced, each left at a temporary name beside
/// the new one by `fsutil::replace_file`: removed once the batch is in the log, so
/// that freeing them (the costly part of replacing a file) is not between a change
/// and its being applied. Removed earlier when the batch renames or removes anything
/// (which could move their directory). Left behind by a crash, they are temporary
/// files: ignored by scans, removed when the node starts (`remove_temporary_files`).
#[derive(Default)]
struct Displaced {
    paths: std::sync::Mutex<Vec<PathBuf>>,
    /// One could not be removed.
    left_behind: std::sync::atomic::AtomicBool,
}

impl Displaced {
    fn add(&self, path: PathBuf) {
        self.paths
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(path);
    }

    /// Remove them all, on up to `WRITE_THREADS_MAX` threads when they are many.
    /// Whether every one so far went: a failure is logged (the file is a temporary
    /// one, and the batch is not worse for it), and the caller keeps the journal so
    /// that `recover` removes it.
    fn remove_all(&self) -> bool {
        use std::sync::atomic::Ordering;
        let paths = std::mem::take(
            &mut *self
                .paths
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        let remove = |paths: &[PathBuf]| {
            for path in paths {
                if let Err(error) = std::fs::remove_file(path) {
                    tracing::warn!(path = %path.display(), %error, "could not remove the old version of a replaced file");
                    self.left_behind.store(true, Ordering::Relaxed);
                }
            }
        };
        if paths.len() < PARALLEL_MIN_PUTS {
            remove(&paths);
        } else {
            let per_thread = paths.len().div_ceil(WRITE_THREADS_MAX);
            std::thread::scope(|scope| {
                for part in paths.chunks(per_thread) {
                    scope.spawn(|| remove(part));
                }
            });
        }
        !self.left_behind.load(Ordering::Relaxed)
    }
}

fn write_symlink(root: &Path, path: &RelPath, target: &[u8]) -> Result<()> {
    let destination = path.under(root);
    let temporary = match path.parent() {
        Some(parent) => parent.join(&temp_name())?.under(root),
        None => RelPath::top(&temp_name())?.under(root),
    };
    std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &temporary)
        .at("symlink", &temporary)?;
    std::fs::rename(&temporary, &destination).at("rename into place", &destination)
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 1024, ..Default::default() })]

        /// A damaged journal is an error, never a panic; a sound one reads back whole.
        #[test]
        fn arbitrary_journal_bytes_decode_or_fail_cleanly(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
        ) {
            if let Ok(touched) = decode_journal(&bytes) {
                let again = bincode::encode_to_vec(&touched, bincode_config()).unwrap();
                proptest::prop_assert_eq!(decode_journal(&again).unwrap(), touched);
            }
        }
    }

    #[test]
    fn a_journal_with_a_huge_length_is_refused() {
        let mut bytes = u64::MAX.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, b'a']);
        assert!(decode_journal(&bytes).is_err());
        let paths = vec![RelPath::new("a/b").unwrap(), RelPath::new("c").unwrap()];
        let encoded = bincode::encode_to_vec(&paths, bincode_config()).unwrap();
        assert_eq!(decode_journal(&encoded).unwrap(), paths);
    }
}
