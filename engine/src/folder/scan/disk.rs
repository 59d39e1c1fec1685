//! What is on disk: one path read without following a symlink (`stat_disk`), a
//! scope walked (`walk`), and the scopes that cover a set of paths (`cover`). Scan,
//! replay, verify and quarantine read the folder through these; nothing here
//! records or writes.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::error::{Error, IoContext, Result};
use crate::folder::index::{Entry, FolderIndex};
use crate::folder::meta::{Meta, MODE_MASK};
use crate::fsutil::mtime_ns;
use crate::path::RelPath;

/// What a scan saw at a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskEntry {
    File { mode: u32, size: u64, mtime_ns: i64 },
    Dir { mode: u32 },
    Symlink { target: Vec<u8> },
}

impl DiskEntry {
    pub(crate) fn same_kind(&self, entry: &Entry) -> bool {
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
    Ok(stat_disk_with(full, false)?.map(|(entry, _, _)| entry))
}

/// `stat_disk`, with the entry's metadata (owner, every mode bit, extended attributes,
/// ACLs, mtime) when `with_meta`, and its number of links.
pub fn stat_disk_with(
    full: &Path,
    with_meta: bool,
) -> Result<Option<(DiskEntry, Option<Meta>, u64)>> {
    let metadata = match std::fs::symlink_metadata(full) {
        Ok(metadata) => metadata,
        // Not a directory: one of its ancestors is no longer one (a file in its place).
        Err(error)
            if error.kind() == std::io::ErrorKind::NotFound
                || error.kind() == std::io::ErrorKind::NotADirectory =>
        {
            crate::folder::skipped::forget(full);
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
        crate::folder::skipped::forget(full);
        Some(DiskEntry::File {
            mode: metadata.mode() & MODE_MASK,
            size: metadata.len(),
            mtime_ns: mtime_ns(&metadata),
        })
    } else {
        crate::folder::skipped::note(full, "a socket, FIFO or device file");
        None
    };
    Ok(entry.map(|entry| {
        (
            entry,
            with_meta.then(|| Meta::read(full, &metadata)),
            metadata.nlink(),
        )
    }))
}

/// `stat_disk` of `path` for a walk: a path that alone cannot be read (too long for
/// the kernel's path calls, permission denied) is named (`skipped`) and counted as
/// unreadable — its recorded state stands — and the walk goes on.
fn stat_or_skip(root: &Path, path: &RelPath, tree: &mut DiskTree) -> Result<Option<DiskEntry>> {
    let full = path.under(root);
    match stat_disk_with(&full, true) {
        Ok(Some((entry, meta, links))) => {
            if let Some(meta) = meta {
                if links > 1 && matches!(entry, DiskEntry::File { .. }) {
                    tree.linked.entry(meta.link).or_default().push(path.clone());
                }
                tree.metas.insert(path.clone(), meta);
            }
            Ok(Some(entry))
        }
        Ok(None) => Ok(None),
        Err(Error::Io { source, .. })
            if crate::folder::skipped::path_problem(&source).is_some() =>
        {
            crate::folder::skipped::note(
                &full,
                crate::folder::skipped::path_problem(&source).unwrap_or_default(),
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
    /// The files with more than one name (hard links), by link value: the names the
    /// walk found of each.
    pub linked: std::collections::HashMap<u64, Vec<RelPath>>,
}

/// Walk `scope` (the whole folder when `None`) under `root`.
pub fn walk(root: &Path, scope: Option<&RelPath>) -> Result<DiskTree> {
    let mut tree = DiskTree {
        entries: BTreeMap::new(),
        unreadable: Vec::new(),
        metas: BTreeMap::new(),
        linked: std::collections::HashMap::new(),
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
                crate::folder::skipped::forget(&full);
                listing
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => {
                if let Some(path) = dir {
                    crate::folder::skipped::note(
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
        .filter_map(|path| {
            crate::folder::read::sqlite::companion_base(path).map(|base| (path.clone(), base))
        })
        .collect();
    for (companion, base) in candidates {
        if crate::folder::read::sqlite::is_database(root, &base.under(root)) {
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
