//! Step 3 of `apply_batch`: writing a batch's changes into the folder — files (one
//! at a time: `file.rs`) on several threads for runs of files in several directories; directories, symlinks, renames,
//! removals and metadata changes in log order; directory times last. `Displaced`
//! keeps the old versions of replaced files until the batch is in the log.

use std::collections::{HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::file::{install, write_file, Attributes};
use super::patch::patch_in_place;
use super::{check_parents_on_disk, remove_any, set_mode};
use crate::error::{Error, IoContext, Result};
use crate::folder::scan::disk::{stat_disk, DiskEntry};
use crate::fsutil::temp_name;
use crate::log::event::{Change, Event};
use crate::path::RelPath;
use crate::repository::Repository;

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
/// the log); a group's mark is passed over; any other change ends the run. On an error the first failing event's
/// error (in seq order) is returned; the journal covers whatever was written.
pub(super) fn apply_changes(
    root: &Path,
    repository: &Repository,
    events: &[Event],
    displaced: &Displaced,
    finishing: &Finishing,
    patchable: &HashSet<u64>,
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
            // A group's opening mark touches nothing: the run goes on (a file recorded
            // in each of several groups is then written once, or patched).
            Change::Group { .. } => continue,
            _ => {
                write_puts(
                    root,
                    repository,
                    &puts,
                    &mut safe_dirs,
                    threads,
                    displaced,
                    patchable,
                )?;
                puts.clear();
                put_paths.clear();
                // A rename or removal may move or remove their directories.
                let _ = displaced.remove_all();
            }
        }
        apply_change(
            root,
            repository,
            event,
            &mut safe_dirs,
            displaced,
            patchable,
        )?;
    }
    write_puts(
        root,
        repository,
        &puts,
        &mut safe_dirs,
        threads,
        displaced,
        patchable,
    )?;
    finishing.finish(root)
}

/// What a batch does after its changes are written (each part of it, again): link
/// the names of each link group it touched, then set the recorded times of the
/// directories it wrote into (writing into a directory moves its mtime).
pub(super) struct Finishing {
    pub dir_times: Vec<(RelPath, i64)>,
    pub link_groups: Vec<Vec<RelPath>>,
}

impl Finishing {
    fn finish(&self, root: &Path) -> Result<()> {
        for group in &self.link_groups {
            crate::folder::links::relink(root, group)?;
        }
        self.set_directory_times(root)
    }

    /// Set the recorded times of the batch's directories (again).
    fn set_directory_times(&self, root: &Path) -> Result<()> {
        set_directory_times(root, &self.dir_times)
    }
}

/// Set each directory's recorded time, where the replica holds a directory at that
/// path reached through directories only: a part may end before a later part (or
/// batch) makes the disk what the list was computed for — a symlink where the
/// directory will be, a file in its place — and a time is never set through a
/// symlink (outside the folder) nor on what is not the directory. Whatever is skipped
/// is set by the finish that follows the change making it a directory.
pub(super) fn set_directory_times(root: &Path, dir_times: &[(RelPath, i64)]) -> Result<()> {
    let mut directories: HashSet<RelPath> = HashSet::new();
    let mut is_directory = |path: &RelPath| -> bool {
        if directories.contains(path) {
            return true;
        }
        let found = std::fs::symlink_metadata(path.under(root))
            .is_ok_and(|metadata| metadata.file_type().is_dir());
        if found {
            directories.insert(path.clone());
        }
        found
    };
    for (path, mtime_ns) in dir_times {
        if !path.ancestors().iter().all(&mut is_directory) || !is_directory(path) {
            tracing::debug!(%path, "not a directory on the replica yet: its time is set later");
            continue;
        }
        match crate::folder::meta::set_mtime(&path.under(root), *mtime_ns) {
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
    patchable: &HashSet<u64>,
) -> Result<()> {
    // A path written more than once in this run of writes (a busy file recorded again
    // and again while this passive was behind: a database after each transaction) is
    // written once, with its last version — the earlier ones would only be renamed
    // over. Their content stays in the chunk store for the log's sake (a staged one
    // goes to the packs with its part: `discard_staged_through`).
    let mut last_write: HashMap<&RelPath, u64> = HashMap::new();
    for event in puts {
        if let Change::Put { path, .. } | Change::File { path, .. } = &event.body.change {
            last_write.insert(path, event.seq());
        }
    }
    let superseded = |event: &&Event| match &event.body.change {
        Change::Put { path, .. } | Change::File { path, .. } => last_write
            .get(path)
            .is_some_and(|last| *last != event.seq()),
        _ => false,
    };
    let kept: Vec<&Event> = puts
        .iter()
        .filter(|event| !superseded(event))
        .copied()
        .collect();
    let puts = kept.as_slice();
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
            .try_for_each(|event| apply_put(root, repository, event, displaced, patchable));
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
            apply_put(root, repository, event, displaced, patchable)
                .map_err(|error| (event.seq(), error))
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

/// Write the file a `Put` or `File` event names (its parents already checked): its
/// staged file installed, or the file there patched in place (for the `patchable`
/// events, when the chunk store's plan allows: `patch`), or written whole.
fn apply_put(
    root: &Path,
    repository: &Repository,
    event: &Event,
    displaced: &Displaced,
    patchable: &HashSet<u64>,
) -> Result<()> {
    let (path, attributes, content, chunks, size) = match &event.body.change {
        Change::Put {
            path,
            mode,
            mtime_ns,
            content,
            chunks,
            size,
        } => (
            path,
            Attributes::Legacy(*mode, *mtime_ns),
            content,
            chunks,
            *size,
        ),
        Change::File {
            path,
            meta,
            content,
            chunks,
            size,
        } => (path, Attributes::Meta(meta), content, chunks, *size),
        _ => return Ok(()),
    };
    let written = match repository.chunks().take_staged(event.seq(), *content) {
        Some(staged) => {
            let installed = install(root, repository, path, attributes, &staged, event.seq());
            if installed.is_err() {
                // Its chunks go to the packs, so that the batch can be tried again.
                if let Err(error) = repository.chunks().discard_staged(&staged) {
                    tracing::warn!(%error, "could not give up a staged file");
                }
            }
            installed
        }
        None if patchable.contains(&event.seq()) => {
            match patch_in_place(root, repository, path, attributes, *content, chunks, size) {
                Ok(true) => Ok(None),
                Ok(false) => write_file(root, repository, path, attributes, *content, chunks),
                Err(error) => Err(error),
            }
        }
        None => write_file(root, repository, path, attributes, *content, chunks),
    };
    match written {
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
    patchable: &HashSet<u64>,
) -> Result<()> {
    let seq = event.seq();
    for path in event.body.change.paths() {
        check_parents_on_disk(root, path, seq, safe_dirs)?;
    }
    let options = repository.meta_options();
    match &event.body.change {
        Change::Put { .. } | Change::File { .. } => {
            apply_put(root, repository, event, displaced, patchable)
        }
        Change::Dir { path, meta } => {
            let full = ensure_directory(root, path, seq)?;
            // Its time is set after the batch's changes below it (`dir_times`).
            crate::folder::meta::apply_meta(&full, meta, false, options).map(|_| ())
        }
        Change::Link { path, target, meta } => {
            write_symlink(root, path, target)?;
            let full = path.under(root);
            crate::folder::meta::apply_meta(&full, meta, true, options)?;
            crate::folder::meta::set_mtime(&full, meta.mtime_ns)
        }
        Change::SetMeta { path, meta } => {
            let full = path.under(root);
            let metadata = std::fs::symlink_metadata(&full).at("stat", &full)?;
            let symlink = metadata.file_type().is_symlink();
            crate::folder::meta::apply_meta(&full, meta, symlink, options)?;
            if metadata.is_dir() {
                Ok(())
            } else {
                crate::folder::meta::set_mtime(&full, meta.mtime_ns)
            }
        }
        Change::Mkdir { path, mode } => set_mode(&ensure_directory(root, path, seq)?, *mode),
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

/// Make `path` a directory (already one, or created); where it lives on disk.
fn ensure_directory(root: &Path, path: &RelPath, seq: u64) -> Result<PathBuf> {
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
    Ok(full)
}

/// The old versions of files a batch replaced, each left at a temporary name beside
/// the new one by `fsutil::replace_file`: removed once the batch is in the log, so
/// that freeing them (the costly part of replacing a file) is not between a change
/// and its being applied. Removed earlier when the batch renames or removes anything
/// (which could move their directory). Left behind by a crash, they are temporary
/// files: ignored by scans, removed when the node starts (`remove_temporary_files`).
#[derive(Default)]
pub(super) struct Displaced {
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
    pub(super) fn remove_all(&self) -> bool {
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

pub(super) fn write_symlink(root: &Path, path: &RelPath, target: &[u8]) -> Result<()> {
    let destination = path.under(root);
    let temporary = match path.parent() {
        Some(parent) => parent.join(&temp_name())?.under(root),
        None => RelPath::top(&temp_name())?.under(root),
    };
    std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &temporary)
        .at("symlink", &temporary)?;
    std::fs::rename(&temporary, &destination).at("rename into place", &destination)
}
