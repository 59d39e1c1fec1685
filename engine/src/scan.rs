//! Scanning: compare the folder on disk with the index and turn the differences into
//! changes, storing the content of new and changed files in the chunk store.
//!
//! A scan covers a *scope*: the whole folder, or one path and everything below it.
//! Symlinks are read as links and never followed; sockets, FIFOs and devices are
//! skipped with a warning; replay's temporary files are ignored. A directory that
//! cannot be read is reported and its index entries are left alone — an unreadable
//! directory is not a removed one.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::error::{Error, IoContext, Result};
use crate::event::Change;
use crate::fsutil::mtime_ns;
use crate::index::{Entry, FolderIndex};
use crate::meta::Meta;
use crate::path::RelPath;
pub use crate::read::{capture_file, Captured};
use crate::repository::Repository;

/// Permission bits kept for files and directories: read/write/execute and the sticky
/// bit. Setuid and setgid are never recorded: owners are not replicated, so on the
/// other node such a file would run as whoever runs standin (root, usually).
pub const MODE_MASK: u32 = 0o1777;

/// A file whose mtime is this recent is re-read even when size and mtime match.
pub const RACY_WINDOW_MS: u64 = 2_000;

/// What a scan saw at a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskEntry {
    File { mode: u32, size: u64, mtime_ns: i64 },
    Dir { mode: u32 },
    Symlink { target: Vec<u8> },
}

impl DiskEntry {
    fn same_kind(&self, entry: &Entry) -> bool {
        matches!(
            (self, entry),
            (DiskEntry::File { .. }, Entry::File { .. })
                | (DiskEntry::Dir { .. }, Entry::Dir { .. })
                | (DiskEntry::Symlink { .. }, Entry::Symlink { .. })
        )
    }
}

/// Read what is at `full` without following a symlink. `None` when nothing is there
/// or it is a special file (skipped with a warning).
pub fn stat_disk(full: &Path) -> Result<Option<DiskEntry>> {
    Ok(stat_disk_with(full, false)?.map(|(entry, _)| entry))
}

/// `stat_disk`, with the entry's metadata (owner, every mode bit, extended attributes,
/// ACLs, mtime) when `with_meta`.
pub fn stat_disk_with(full: &Path, with_meta: bool) -> Result<Option<(DiskEntry, Option<Meta>)>> {
    let metadata = match std::fs::symlink_metadata(full) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            crate::skipped::forget(full);
            return Ok(None);
        }
        Err(error) => {
            return Err(Error::Io {
                op: "stat",
                path: full.to_path_buf(),
                source: error,
            })
        }
    };
    let kind = metadata.file_type();
    let entry = if kind.is_symlink() {
        match std::fs::read_link(full) {
            Ok(target) => Some(DiskEntry::Symlink {
                target: target.as_os_str().as_bytes().to_vec(),
            }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => {
                return Err(Error::Io {
                    op: "readlink",
                    path: full.to_path_buf(),
                    source: error,
                })
            }
        }
    } else if kind.is_dir() {
        Some(DiskEntry::Dir {
            mode: metadata.mode() & MODE_MASK,
        })
    } else if kind.is_file() {
        crate::skipped::forget(full);
        Some(DiskEntry::File {
            mode: metadata.mode() & MODE_MASK,
            size: metadata.len(),
            mtime_ns: mtime_ns(&metadata),
        })
    } else {
        crate::skipped::note(full, "a socket, FIFO or device file");
        None
    };
    Ok(entry.map(|entry| (entry, with_meta.then(|| Meta::read(full, &metadata)))))
}

/// `stat_disk` of `path` for a walk: a path that alone cannot be read (too long for
/// the kernel's path calls, permission denied) is named (`skipped`) and counted as
/// unreadable — its recorded state stands — and the walk goes on.
fn stat_or_skip(root: &Path, path: &RelPath, tree: &mut DiskTree) -> Result<Option<DiskEntry>> {
    let full = path.under(root);
    match stat_disk_with(&full, true) {
        Ok(Some((entry, meta))) => {
            if let Some(meta) = meta {
                tree.metas.insert(path.clone(), meta);
            }
            Ok(Some(entry))
        }
        Ok(None) => Ok(None),
        Err(Error::Io { source, .. }) if crate::skipped::path_problem(&source).is_some() => {
            crate::skipped::note(
                &full,
                crate::skipped::path_problem(&source).unwrap_or_default(),
            );
            tree.unreadable.push(path.clone());
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

/// Everything on disk in a scope, and the paths that could not be read (a directory
/// that cannot be listed, or a path that cannot be looked at): their recorded state
/// stands.
pub struct DiskTree {
    pub entries: BTreeMap<RelPath, DiskEntry>,
    pub unreadable: Vec<RelPath>,
    /// Each entry's metadata (owner, every mode bit, xattrs, ACLs, mtime).
    pub metas: BTreeMap<RelPath, Meta>,
}

/// Walk `scope` (the whole folder when `None`) under `root`.
pub fn walk(root: &Path, scope: Option<&RelPath>) -> Result<DiskTree> {
    let mut tree = DiskTree {
        entries: BTreeMap::new(),
        unreadable: Vec::new(),
        metas: BTreeMap::new(),
    };
    let mut pending_dirs: Vec<Option<RelPath>> = Vec::new();
    match scope {
        None => pending_dirs.push(None),
        Some(path) => match stat_or_skip(root, path, &mut tree)? {
            Some(entry) => {
                let is_dir = matches!(entry, DiskEntry::Dir { .. });
                tree.entries.insert(path.clone(), entry);
                if is_dir {
                    pending_dirs.push(Some(path.clone()));
                }
            }
            None => return Ok(tree),
        },
    }
    while let Some(dir) = pending_dirs.pop() {
        let full = match &dir {
            Some(path) => path.under(root),
            None => root.to_path_buf(),
        };
        let listing = match std::fs::read_dir(&full) {
            Ok(listing) => {
                crate::skipped::forget(&full);
                listing
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => {
                if let Some(path) = dir {
                    crate::skipped::note(
                        &full,
                        &format!(
                            "cannot list the directory ({error}); its entries stay as recorded"
                        ),
                    );
                    tree.unreadable.push(path);
                } else {
                    return Err(Error::Io {
                        op: "list",
                        path: full,
                        source: error,
                    });
                }
                continue;
            }
        };
        for item in listing {
            let item = item.at("list", &full)?;
            let name = item.file_name();
            let path = match &dir {
                Some(parent) => parent.join(name.as_bytes()),
                None => RelPath::top(name.as_bytes()),
            };
            let Ok(path) = path else { continue };
            if path.is_temporary() {
                continue;
            }
            let Some(entry) = stat_or_skip(root, &path, &mut tree)? else {
                continue;
            };
            if matches!(entry, DiskEntry::Dir { .. }) {
                pending_dirs.push(Some(path.clone()));
            }
            tree.entries.insert(path, entry);
        }
    }
    Ok(tree)
}

/// Leave out of `entries` the companions (`-wal`, `-shm`, `-journal`) of SQLite
/// databases: a database is captured through SQLite, which folds them in, and a
/// companion shipped beside a database of another instant would corrupt it.
pub fn drop_companions(root: &Path, entries: &mut BTreeMap<RelPath, DiskEntry>) {
    let candidates: Vec<(RelPath, RelPath)> = entries
        .keys()
        .filter_map(|path| crate::sqlite::companion_base(path).map(|base| (path.clone(), base)))
        .collect();
    for (companion, base) in candidates {
        if crate::sqlite::is_database(&base.under(root)) {
            entries.remove(&companion);
        }
    }
}

/// The smallest set of scopes covering `paths`, each widened to start at a path whose
/// parent is a directory in the index (so that new parents get their `Mkdir`) and, when
/// `root` is given, whose parent still exists on disk (so that a removed tree is one
/// `Remove`).
pub fn cover(
    index: &FolderIndex,
    root: Option<&Path>,
    paths: impl IntoIterator<Item = RelPath>,
) -> Vec<RelPath> {
    let mut scopes: Vec<RelPath> = paths
        .into_iter()
        .map(|mut path| {
            while let Some(parent) = path.parent() {
                let parent_on_disk =
                    root.is_none_or(|root| std::fs::symlink_metadata(parent.under(root)).is_ok());
                if matches!(index.get(&parent), Some(Entry::Dir { .. })) && parent_on_disk {
                    break;
                }
                path = parent;
            }
            path
        })
        .collect();
    scopes.sort();
    let mut out: Vec<RelPath> = Vec::with_capacity(scopes.len());
    for scope in scopes {
        if out.last().is_some_and(|kept| scope.is_within(kept)) {
            continue;
        }
        out.push(scope);
    }
    out
}

/// What comparing a scope found.
#[derive(Debug, Default)]
pub struct Diff {
    /// The changes that make the index match the disk.
    pub changes: Vec<Change>,
    /// Files that could not be read stably (written all through every try): left as
    /// the index has them, to be read again later.
    pub unstable: Vec<RelPath>,
}

/// Compare `scope` on disk with `base` (the repository's index when `None`) and return
/// the changes that make the index match the disk. Content of new and changed files is
/// put in the chunk store (not yet synced: `Repository::record` syncs it before the
/// events are written). The caller should hold `Repository::content_guard` until the
/// changes are recorded.
pub fn diff_scope(
    root: &Path,
    repository: &Repository,
    base: Option<&FolderIndex>,
    scope: Option<&RelPath>,
) -> Result<Diff> {
    let mut disk = walk(root, scope)?;
    drop_companions(root, &mut disk.entries);
    let subtree = |index: &FolderIndex| -> BTreeMap<RelPath, Entry> {
        match scope {
            None => index
                .iter()
                .map(|(path, entry)| (path.clone(), entry.clone()))
                .collect(),
            Some(path) => index
                .subtree(path)
                .map(|(path, entry)| (path.clone(), entry.clone()))
                .collect(),
        }
    };
    let (indexed, indexed_meta) = {
        let from = |index: &FolderIndex| {
            let entries = subtree(index);
            let metas: BTreeMap<RelPath, Meta> = entries
                .keys()
                .filter_map(|path| Some((path.clone(), index.meta(path)?.clone())))
                .collect();
            (entries, metas)
        };
        match base {
            Some(index) => from(index),
            None => from(&repository.lock_index()),
        }
    };
    // A file's link group is its inode number: after a failover (another node's
    // inodes) or a copy put in place, it differs from the record while no hard link
    // is involved on either side — that is no change.
    let unchanged = |old: Option<&Meta>, new: &Meta, path: &RelPath| -> bool {
        let Some(old) = old else { return false };
        if old == new {
            return true;
        }
        if old.link == new.link || old.link == 0 || new.link == 0 {
            return false;
        }
        let same_otherwise = Meta {
            link: new.link,
            ..old.clone()
        } == *new;
        let recorded_names = match base {
            Some(index) => index.linked(old.link).len(),
            None => repository.lock_index().linked(old.link).len(),
        };
        same_otherwise
            && recorded_names <= 1
            && std::fs::symlink_metadata(path.under(root))
                .is_ok_and(|metadata| metadata.nlink() == 1)
    };
    let mut changes: Vec<Option<Change>> = Vec::new();
    let mut captures: Vec<Capture<'_>> = Vec::new();
    let racy_after_ns = crate::fsutil::now_ms().saturating_sub(RACY_WINDOW_MS) as i64 * 1_000_000;

    // Removals first: gone from disk, or replaced by another kind of entry.
    let mut removed: HashSet<RelPath> = HashSet::new();
    let under_removed = |removed: &HashSet<RelPath>, path: &RelPath| {
        removed.contains(path)
            || path
                .ancestors()
                .iter()
                .any(|ancestor| removed.contains(ancestor))
    };
    for (path, entry) in &indexed {
        if disk
            .unreadable
            .iter()
            .any(|unreadable| path.is_within(unreadable))
        {
            continue;
        }
        let gone = match disk.entries.get(path) {
            None => true,
            Some(on_disk) => !on_disk.same_kind(entry),
        };
        if gone && !under_removed(&removed, path) {
            removed.insert(path.clone());
            changes.push(Some(Change::Remove { path: path.clone() }));
        }
    }
    let still_indexed = |path: &RelPath| -> Option<&Entry> {
        if under_removed(&removed, path) {
            None
        } else {
            indexed.get(path)
        }
    };

    for (path, on_disk) in &disk.entries {
        let before = still_indexed(path);
        let old_meta = before.and_then(|_| indexed_meta.get(path));
        let Some(meta) = disk.metas.get(path) else {
            continue;
        };
        let set_meta = || {
            Some(Change::SetMeta {
                path: path.clone(),
                meta: meta.clone(),
            })
        };
        match on_disk {
            DiskEntry::Dir { .. } => match before {
                // A directory's link (its inode) only helps recognize a move: another
                // node's inode numbers after a failover are no change.
                Some(Entry::Dir { .. })
                    if old_meta.is_some_and(|old| {
                        Meta {
                            link: meta.link,
                            ..old.clone()
                        } == *meta
                    }) => {}
                Some(Entry::Dir { .. }) => changes.push(set_meta()),
                _ => changes.push(Some(Change::Dir {
                    path: path.clone(),
                    meta: meta.clone(),
                })),
            },
            DiskEntry::Symlink { target } => match before {
                Some(Entry::Symlink { target: old }) if old == target => {
                    if old_meta != Some(meta) {
                        changes.push(set_meta());
                    }
                }
                _ => changes.push(Some(Change::Link {
                    path: path.clone(),
                    target: target.clone(),
                    meta: meta.clone(),
                })),
            },
            DiskEntry::File { size, mtime_ns, .. } => {
                if let Some(Entry::File {
                    size: old_size,
                    mtime_ns: old_mtime,
                    ..
                }) = before
                {
                    // Same size and mtime means unchanged, unless the mtime is so recent
                    // that a second write in the same clock tick could hide behind it
                    // (git's "racily clean" case): then the content is compared.
                    if old_size == size && old_mtime == mtime_ns && *mtime_ns < racy_after_ns {
                        if !unchanged(old_meta, meta, path) {
                            changes.push(set_meta());
                        }
                        continue;
                    }
                }
                // Read later, several files at once (below).
                changes.push(None);
                captures.push(Capture {
                    slot: changes.len() - 1,
                    path,
                    before,
                    old_meta,
                });
            }
        }
    }
    let mut unstable = Vec::new();
    for (slot, captured) in capture_files(root, repository, &captures, &unchanged)? {
        match captured {
            Captured::Put(change) => changes[slot] = Some(*change),
            Captured::Same | Captured::Gone => {}
            Captured::Unstable => {
                // `captures` is in slot order.
                if let Ok(at) = captures.binary_search_by_key(&slot, |capture| capture.slot) {
                    unstable.push(captures[at].path.clone());
                }
            }
        }
    }
    let mut changes: Vec<Change> = changes.into_iter().flatten().collect();
    // A file written through one name changed under every name: read the others too.
    let others = {
        let guard;
        let index = match base {
            Some(index) => index,
            None => {
                guard = repository.lock_index();
                &*guard
            }
        };
        crate::links::other_names(&changes, index, &disk.metas)
            .into_iter()
            .map(|path| {
                let entry = index.get(&path).cloned();
                let meta = index.meta(&path).cloned();
                (path, entry, meta)
            })
            .collect::<Vec<_>>()
    };
    let more: Vec<Capture<'_>> = others
        .iter()
        .enumerate()
        .map(|(slot, (path, entry, meta))| Capture {
            slot,
            path,
            before: entry.as_ref(),
            old_meta: meta.as_ref(),
        })
        .collect();
    for (_, captured) in capture_files(root, repository, &more, &unchanged)? {
        if let Captured::Put(change) = captured {
            changes.push(*change);
        }
    }
    Ok(Diff { changes, unstable })
}

/// Files read (chunked, hashed, stored) at once while a scope is compared.
const CAPTURE_THREADS_MAX: usize = 4;

/// A file to read while a scope is compared: its slot in the list of changes, and
/// what the index holds for it.
struct Capture<'a> {
    slot: usize,
    path: &'a RelPath,
    before: Option<&'a Entry>,
    old_meta: Option<&'a Meta>,
}

/// Capture the files of `captures`, on several threads when there are several;
/// returns what each slot's file gave: `Same` where its content, mtime and metadata
/// are what the index holds, a `SetMeta` where only the metadata moved.
/// On an error, the first failing file's (in the given order) is returned.
fn capture_files(
    root: &Path,
    repository: &Repository,
    captures: &[Capture<'_>],
    unchanged: &(dyn Fn(Option<&Meta>, &Meta, &RelPath) -> bool + Sync),
) -> Result<Vec<(usize, Captured)>> {
    let capture_one = |capture: &Capture<'_>| {
        let slot = capture.slot;
        let captured =
            capture_file(root, repository, capture.path).map_err(|error| (slot, error))?;
        let change = match (captured, capture.before) {
            (
                Captured::Put(change),
                Some(Entry::File {
                    mtime_ns: old_mtime,
                    content: old_content,
                    ..
                }),
            ) => match *change {
                Change::File {
                    path,
                    meta,
                    content,
                    ..
                } if meta.mtime_ns == *old_mtime && content == *old_content => {
                    if unchanged(capture.old_meta, &meta, capture.path) {
                        Captured::Same
                    } else {
                        Captured::Put(Box::new(Change::SetMeta { path, meta }))
                    }
                }
                other => Captured::Put(Box::new(other)),
            },
            (captured, _) => captured,
        };
        Ok((slot, change))
    };
    let threads = std::thread::available_parallelism()
        .map(|count| count.get())
        .unwrap_or(1)
        .min(CAPTURE_THREADS_MAX)
        .min(captures.len());
    if threads <= 1 {
        return captures
            .iter()
            .map(capture_one)
            .collect::<std::result::Result<_, _>>()
            .map_err(|(_, error)| error);
    }
    // Files are dealt to threads in turn, so large and small ones spread evenly.
    type Lane = std::result::Result<Vec<(usize, Captured)>, (usize, Error)>;
    let lane = |first: usize| -> Lane {
        captures
            .iter()
            .skip(first)
            .step_by(threads)
            .map(capture_one)
            .collect()
    };
    let lanes: Vec<Lane> = std::thread::scope(|scope| {
        let workers: Vec<_> = (1..threads)
            .map(|first| scope.spawn(move || lane(first)))
            .collect();
        let mut lanes = vec![lane(0)];
        for worker in workers {
            lanes.push(match worker.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            });
        }
        lanes
    });
    let mut out = Vec::with_capacity(captures.len());
    let mut first_error: Option<(usize, Error)> = None;
    for result in lanes {
        match result {
            Ok(done) => out.extend(done),
            Err((slot, error)) => {
                if first_error.as_ref().is_none_or(|(first, _)| slot < *first) {
                    first_error = Some((slot, error));
                }
            }
        }
    }
    match first_error {
        Some((_, error)) => Err(error),
        None => Ok(out),
    }
}

/// Scan `scopes` (`None` is the whole folder) and record the differences in `epoch`
/// as one group. Returns the events recorded; files that could not be read stably are
/// named in a warning and left as the index has them (capture reads them again).
pub fn record_scopes(
    root: &Path,
    repository: &Repository,
    epoch: u64,
    scopes: &[Option<RelPath>],
) -> Result<Vec<crate::event::Event>> {
    let _guard = repository.content_guard();
    let mut changes = Vec::new();
    for scope in scopes {
        let diff = diff_scope(root, repository, None, scope.as_ref())?;
        for path in &diff.unstable {
            tracing::warn!(%path, "the file was written during every read; keeping its last recorded version");
        }
        changes.extend(diff.changes);
    }
    let changes = crate::moves::fold_moves(changes, &repository.lock_index());
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    repository.record(epoch, changes)
}

/// Compare the whole folder with the index and record every difference (a one-off
/// reconcile outside a running capture: tools, tests, benchmarks).
pub fn reconcile(
    root: &Path,
    repository: &Repository,
    epoch: u64,
) -> Result<Vec<crate::event::Event>> {
    record_scopes(root, repository, epoch, &[None])
}
