//! Scanning: compare the folder on disk with the index and turn the differences into
//! changes, storing the content of new and changed files in the chunk store.
//!
//! A scan covers a *scope*: the whole folder, or one path and everything below it.
//! Symlinks are read as links and never followed; sockets, FIFOs and devices are
//! skipped with a warning; replay's temporary files are ignored. A directory that
//! cannot be read is reported and its index entries are left alone — an unreadable
//! directory is not a removed one.

use std::path::Path;

use crate::error::Result;
use crate::folder::index::{Entry, FolderIndex};
use crate::folder::meta::Meta;
pub use crate::folder::read::{capture_file, Captured};
use crate::path::RelPath;

mod diff;
pub mod disk;

pub use disk::{cover, drop_companions, stat_disk, stat_disk_with, walk, DiskEntry, DiskTree};

use crate::repository::Repository;
pub use diff::{diff_scope, Diff};

/// A file whose mtime is this recent is re-read even when size and mtime match.
pub const RACY_WINDOW_MS: u64 = 2_000;

/// Scan `scopes` (`None` is the whole folder) and record the differences in `epoch`
/// as one group. Returns the events recorded; files that could not be read stably are
/// named in a warning and left as the index has them (capture reads them again).
pub fn record_scopes(
    root: &Path,
    repository: &Repository,
    epoch: u64,
    scopes: &[Option<RelPath>],
) -> Result<Vec<crate::log::event::Event>> {
    let _guard = repository.content_guard();
    let mut changes = Vec::new();
    for scope in scopes {
        let diff = diff_scope(root, repository, None, scope.as_ref())?;
        for path in &diff.unstable {
            tracing::warn!(%path, "the file was written during every read; keeping its last recorded version");
        }
        changes.extend(diff.changes);
    }
    changes.extend(parent_times(root, repository, None, scopes, &changes));
    let changes = crate::folder::moves::fold_moves(changes, &repository.lock_index());
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    repository.record(epoch, changes)
}

/// The directories holding `scopes` whose metadata moved since it was recorded: an
/// entry created, removed or renamed in a directory gives it a new mtime, which no
/// event of the directory's own reports (inotify names the entry), so each scope's
/// parent is looked at after its scan and recorded as a `SetMeta` when it differs
/// (not for a link value alone: another node's inode numbers are no change).
///
/// Compared with `base` (the repository's index when `None`).
pub fn parent_times(
    root: &Path,
    repository: &Repository,
    base: Option<&FolderIndex>,
    scopes: &[Option<RelPath>],
    changes: &[crate::log::event::Change],
) -> Vec<crate::log::event::Change> {
    let parents: std::collections::BTreeSet<RelPath> = scopes
        .iter()
        .flatten()
        .filter_map(RelPath::parent)
        .filter(|parent| {
            !changes
                .iter()
                .any(|change| change.paths().contains(&parent))
        })
        .collect();
    let mut out = Vec::new();
    for parent in parents {
        // A parent that cannot be looked at keeps its recorded metadata (the walk
        // names such paths).
        let Ok(Some((DiskEntry::Dir { .. }, Some(meta), _))) =
            stat_disk_with(&parent.under(root), true)
        else {
            continue;
        };
        let guard;
        let index = match base {
            Some(index) => index,
            None => {
                guard = repository.lock_index();
                &*guard
            }
        };
        if !matches!(index.get(&parent), Some(Entry::Dir { .. })) {
            continue;
        }
        let recorded = index.meta(&parent).map(|old| Meta {
            link: meta.link,
            ..old.clone()
        });
        if recorded.as_ref() != Some(&meta) {
            out.push(crate::log::event::Change::SetMeta { path: parent, meta });
        }
    }
    out
}

/// Compare the whole folder with the index and record every difference (a one-off
/// reconcile outside a running capture: tools, tests, benchmarks).
pub fn reconcile(
    root: &Path,
    repository: &Repository,
    epoch: u64,
) -> Result<Vec<crate::log::event::Event>> {
    record_scopes(root, repository, epoch, &[None])
}
