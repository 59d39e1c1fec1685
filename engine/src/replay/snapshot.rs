//! A snapshot installed in place of a node's state (a passive too far behind for the
//! log, a fresh node): its entries checked as every change is, the log restarted from
//! its head, and the folder made to match crash-safely through replay's journal.

use std::path::Path;

use crate::error::{Error, Result};
use crate::folder::index::{Entry, FolderIndex};
use crate::folder::meta::Meta;
use crate::hash::Hash;
use crate::log::event::Change;
use crate::log::Head;
use crate::path::RelPath;
use crate::repository::Repository;

/// Replace this node's state with a snapshot taken at `head` on the active: the
/// entries must add up to `head.digest` and their chunks must be in the store. The
/// log restarts from `head`; the folder `root` is made to match, crash-safely (the
/// touched paths are journaled first, so `replay::recover` finishes the job).
pub fn install_snapshot(
    repository: &Repository,
    root: &Path,
    head: Head,
    entries: Vec<(RelPath, Entry, Option<Meta>)>,
) -> Result<()> {
    // Build the index through the same checks every change passes (parents are
    // directories, no duplicates, modes in range): a snapshot whose digest adds up
    // is not enough — the sender chose the digest.
    let mut entries = entries;
    entries.sort_by(|left, right| left.0.cmp(&right.0));
    let mut index = FolderIndex::default();
    for (path, entry, meta) in entries {
        if index.get(&path).is_some() {
            return Err(Error::Apply {
                seq: head.seq,
                path: path.to_string(),
                reason: "listed twice in the snapshot".to_string(),
            });
        }
        let change = match (entry, meta) {
            (Entry::Dir { .. }, Some(meta)) => Change::Dir { path, meta },
            (Entry::Symlink { target }, Some(meta)) => Change::Link { path, target, meta },
            (
                Entry::File {
                    size,
                    content,
                    chunks,
                    ..
                },
                Some(meta),
            ) => Change::File {
                path,
                meta,
                size,
                content,
                chunks,
            },
            (Entry::Dir { mode }, None) => Change::Mkdir { path, mode },
            (Entry::Symlink { target }, None) => Change::Symlink { path, target },
            (
                Entry::File {
                    mode,
                    mtime_ns,
                    size,
                    content,
                    chunks,
                },
                None,
            ) => Change::Put {
                path,
                mode,
                mtime_ns,
                size,
                content,
                chunks,
            },
        };
        index.apply(&change).map_err(|misfit| Error::Apply {
            seq: head.seq,
            path: misfit.path.to_string(),
            reason: format!("snapshot: {}", misfit.reason),
        })?;
    }
    index.take_dirty();
    if index.digest() != head.digest {
        return Err(Error::DigestMismatch {
            seq: head.seq,
            path: "(snapshot)".to_string(),
            expected: head.digest,
            actual: index.digest(),
        });
    }
    let wanted: Vec<Hash> = index.chunk_hashes().collect();
    if let Some(missing) = repository.chunks().missing(wanted)?.first() {
        return Err(Error::ChunkMissing { hash: *missing });
    }
    repository.chunks().sync()?;
    let mut guard = repository.lock_index();
    let mut touched: Vec<RelPath> = index
        .iter()
        .map(|(path, _)| path)
        .filter(|path| path.parent().is_none())
        .cloned()
        .collect();
    for item in std::fs::read_dir(root).map_err(|source| Error::Io {
        op: "list",
        path: root.to_path_buf(),
        source,
    })? {
        let item = item.map_err(|source| Error::Io {
            op: "list",
            path: root.to_path_buf(),
            source,
        })?;
        if let Ok(path) = RelPath::top(std::os::unix::ffi::OsStrExt::as_bytes(
            item.file_name().as_os_str(),
        )) {
            touched.push(path);
        }
    }
    super::journal_touched(repository, &touched)?;
    repository.save_all_index_entries(&index, head.seq)?;
    repository.save_base_index(&index, head.seq)?;
    repository.log().reset_to(head)?;
    *guard = index;
    drop(guard);
    super::restore_touched(root, repository)?;
    tracing::info!(seq = head.seq, "installed a snapshot");
    Ok(())
}
