//! Comparing one scope of the folder with the index: the changes that make the index
//! match the disk (removals first, then what is new or changed in path order), each
//! file read stably on a few threads (`capture_file`), metadata compared, the other
//! names of hard-linked files read too (`links`).

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::{drop_companions, walk, DiskEntry, RACY_WINDOW_MS};
use crate::error::{Error, Result};
use crate::folder::index::{Entry, FolderIndex};
use crate::folder::meta::Meta;
use crate::folder::read::{capture_file, Captured};
use crate::log::event::Change;
use crate::path::RelPath;
use crate::repository::Repository;

/// What comparing a scope found.
#[derive(Debug, Default)]
pub struct Diff {
    /// The changes that make the index match the disk.
    pub changes: Vec<Change>,
    /// Files that could not be read stably (written all through every try): left as
    /// the index has them, to be read again later.
    pub unstable: Vec<RelPath>,
    /// Names read outside the scope: the other names of hard-linked files it read.
    /// A change to one of them while the scope was read disturbs the read as much as
    /// a change inside it (capture's rounds, `capture::group`).
    pub read_outside: Vec<RelPath>,
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
            Some(index) => index.link_group(old.link).map_or(0, |group| group.len()),
            None => repository
                .lock_index()
                .link_group(old.link)
                .map_or(0, |group| group.len()),
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
                    disk_meta: Some(meta),
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
        // A name under a path this diff removes is gone with it (and its parent may now
        // be a symlink: reading through it would read outside what was recorded).
        let removed: Vec<&RelPath> = changes
            .iter()
            .filter_map(|change| match change {
                Change::Remove { path } => Some(path),
                _ => None,
            })
            .collect();
        crate::folder::links::other_names(&changes, index, &disk.linked)
            .into_iter()
            .filter(|path| !removed.iter().any(|gone| path.is_within(gone)))
            .map(|path| {
                let entry = index.get(&path).cloned();
                let meta = index.meta(&path).cloned();
                (path, entry, meta)
            })
            .collect::<Vec<_>>()
    };
    // A name that is still a link of a file just read takes what that read gave (one
    // instant of the file), rather than reading it again: a write between two reads
    // would give the names of one file two versions, a state no file had.
    let mut reused = Vec::new();
    let mut to_read = Vec::new();
    for other in &others {
        match same_file_change(root, &changes, &other.0) {
            Some(change) => {
                let (path, entry, meta) = other;
                if !already_recorded(&change, entry.as_ref(), meta.as_ref()) {
                    reused.push(at_path(change, path.clone()));
                }
            }
            None => to_read.push(other),
        }
    }
    changes.extend(reused);
    let more: Vec<Capture<'_>> = to_read
        .into_iter()
        .enumerate()
        .map(|(slot, (path, entry, meta))| Capture {
            slot,
            path,
            before: entry.as_ref(),
            old_meta: meta.as_ref(),
            disk_meta: None,
        })
        .collect();
    for (slot, captured) in capture_files(root, repository, &more, &unchanged)? {
        match captured {
            Captured::Put(change) => changes.push(*change),
            // Read again later, like any file written all through its reads.
            Captured::Unstable => unstable.push(more[slot].path.clone()),
            Captured::Same | Captured::Gone => {}
        }
    }
    let read_outside = others.into_iter().map(|(path, _, _)| path).collect();
    Ok(Diff {
        changes,
        unstable,
        read_outside,
    })
}

/// The change `changes` made for the file `other` (a path outside them) is a link of
/// now: its `File` whose link value is the inode found at `other`, looked
/// at beneath `root` through no symlink. `None` when another file (or nothing) is there.
fn same_file_change(root: &Path, changes: &[Change], other: &RelPath) -> Option<Change> {
    let file = crate::fsutil::open_beneath(
        root,
        other.as_bytes(),
        libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
    )
    .ok()?;
    let metadata = file.metadata().ok()?;
    if !metadata.is_file() {
        return None;
    }
    changes
        .iter()
        .rev()
        .find(|change| match change {
            // Not a `SetMeta`: the other name's content is then what the index holds
            // for it, which may be stale; it is read as before.
            Change::File { meta, .. } => meta.link != 0 && meta.link == metadata.ino(),
            _ => false,
        })
        .cloned()
}

/// `change` (a `File`) for the name `path`.
fn at_path(change: Change, path: RelPath) -> Change {
    match change {
        Change::File {
            meta,
            size,
            content,
            chunks,
            ..
        } => Change::File {
            path,
            meta,
            size,
            content,
            chunks,
        },
        other => other,
    }
}

/// Whether the index already holds what `change` would record at its other name
/// (`entry`, `meta`: the index's, for that name).
fn already_recorded(change: &Change, entry: Option<&Entry>, meta: Option<&Meta>) -> bool {
    match change {
        Change::File {
            meta: new, content, ..
        } => {
            matches!(entry, Some(Entry::File { content: old, .. }) if old == content)
                && meta == Some(new)
        }
        _ => false,
    }
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
    /// Its metadata as the walk just read it (its extended attributes are not read
    /// again).
    disk_meta: Option<&'a Meta>,
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
        let captured = capture_file(
            root,
            repository,
            capture.path,
            capture.disk_meta,
            capture.before,
        )
        .map_err(|error| (slot, error))?;
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
