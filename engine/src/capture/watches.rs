//! Putting inotify watches on a tree without letting one directory stop capture.
//!
//! notify's recursive watch walks the whole tree and gives up at the first directory
//! it cannot watch — a path longer than the kernel takes (`PATH_MAX`), the inotify
//! watch limit — leaving the rest unwatched, and returns an error. So when it fails,
//! the tree is watched around the problem: every subtree with no over-long directory
//! in it gets a recursive watch (notify then follows its renames and new
//! subdirectories), the directories above an over-long one get a watch of their own
//! (capture watches their new subdirectories itself), and each directory that cannot
//! be watched is named once (`skipped`, listed in `status`); the periodic rescan covers
//! what the watcher misses.

use std::collections::HashSet;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use notify::{RecursiveMode, Watcher};

/// The longest path, in bytes, that the kernel's path calls take (with its NUL).
const PATH_MAX: usize = libc::PATH_MAX as usize;

/// Watch `dir` and everything below it, as much of it as can be watched. `Ok(true)`
/// when every directory is watched; `Ok(false)` when some could not be (named in
/// `skipped`); `Err` only when `dir` itself cannot be watched.
pub(super) fn watch_tree(watcher: &mut dyn Watcher, dir: &Path) -> notify::Result<bool> {
    let error = match watcher.watch(dir, RecursiveMode::Recursive) {
        Ok(()) => return Ok(true),
        Err(error) => error,
    };
    tracing::warn!(%error, dir = %dir.display(), "cannot watch the whole tree at once; watching around the directories that cannot be watched");
    let tainted = above_overlong(dir);
    if !tainted.contains(dir) {
        // No over-long directory: the watch limit, say. What could be watched is;
        // name the directory and let the rescans cover it.
        crate::folder::skipped::note(
            dir,
            &format!("not every directory below could be watched ({error}); changes there are found by the periodic rescan"),
        );
        return Ok(false);
    }
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    watch_around(watcher, dir, &tainted);
    Ok(false)
}

/// Below `dir` (already watched on its own), a recursive watch for each clean subtree
/// and a single watch for each directory above an over-long one.
fn watch_around(watcher: &mut dyn Watcher, dir: &Path, tainted: &HashSet<PathBuf>) {
    let Ok(listing) = std::fs::read_dir(dir) else {
        return;
    };
    for item in listing.flatten() {
        if !item.file_type().is_ok_and(|kind| kind.is_dir()) {
            continue;
        }
        let child = item.path();
        if overlong(&child) {
            crate::folder::skipped::note(
                &child,
                "the directory's path is too long for inotify (PATH_MAX): not watched; its changes are not replicated",
            );
            continue;
        }
        let (mode, below) = if tainted.contains(&child) {
            (RecursiveMode::NonRecursive, true)
        } else {
            (RecursiveMode::Recursive, false)
        };
        if let Err(error) = watcher.watch(&child, mode) {
            crate::folder::skipped::note(
                &child,
                &format!(
                    "cannot be watched ({error}); changes there are found by the periodic rescan"
                ),
            );
            continue;
        }
        if below {
            watch_around(watcher, &child, tainted);
        }
    }
}

fn overlong(path: &Path) -> bool {
    path.as_os_str().as_bytes().len() >= PATH_MAX
}

/// The directories at or below `root` that have an over-long directory below them.
fn above_overlong(root: &Path) -> HashSet<PathBuf> {
    let mut tainted = HashSet::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(listing) = std::fs::read_dir(&dir) else {
            continue;
        };
        for item in listing.flatten() {
            if !item.file_type().is_ok_and(|kind| kind.is_dir()) {
                continue;
            }
            let child = item.path();
            if overlong(&child) {
                let mut above = Some(dir.as_path());
                while let Some(path) = above {
                    if !tainted.insert(path.to_path_buf()) || path == root {
                        break;
                    }
                    above = path.parent();
                }
            } else {
                pending.push(child);
            }
        }
    }
    tainted
}
