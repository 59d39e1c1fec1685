//! A part's durability point on the folder (step 4's first half): an fsync of each path
//! the part wrote and of the directories holding them, when the part is small and only
//! writes files and directories; else one `syncfs` of the folder's file system.
//!
//! `syncfs` makes a large batch durable in one call, but it also waits for every dirty
//! page of the file system, whoever wrote it: beside a busy application (a build, a
//! backup) one small change then waits tens or hundreds of ms for other people's data.
//! A part of a few files fsyncs just those (data and inode) and the directories whose
//! entries it changed (the renames into place): the same durability for what the log
//! will name, at the cost of its own bytes. Anything less plain (a removal, a rename,
//! a symlink, hard links to relink) keeps `syncfs`.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::{IoContext, Result};
use crate::fsutil::syncfs;
use crate::log::event::{Change, Event};
use crate::path::RelPath;

/// A part naming more paths than this is made durable by one `syncfs`.
const FSYNC_PATHS_MAX: usize = 64;

/// What a part needs fsynced: the paths it wrote (files, directories), and the
/// directories whose entries it changed (`None`: the folder's root).
struct Touched {
    paths: BTreeSet<RelPath>,
    dirs: BTreeSet<Option<RelPath>>,
}

/// Make the folder side of `part` durable (see the module's doc). `relinks`: the part
/// relinks hard-linked names (then `syncfs`).
pub(super) fn make_durable(root: &Path, part: &[Event], relinks: bool) -> Result<()> {
    match touched(part, relinks) {
        Some(touched) => fsync_touched(root, &touched),
        None => syncfs(root),
    }
}

/// The paths to fsync for `part`, or `None` when it is not plain enough (or too big).
fn touched(part: &[Event], relinks: bool) -> Option<Touched> {
    if relinks {
        return None;
    }
    let mut touched = Touched {
        paths: BTreeSet::new(),
        dirs: BTreeSet::new(),
    };
    for event in part {
        match &event.body.change {
            Change::Group { .. } | Change::Promote { .. } => {}
            Change::Put { path, .. }
            | Change::File { path, .. }
            | Change::Mkdir { path, .. }
            | Change::Dir { path, .. } => {
                touched.paths.insert(path.clone());
                touched.dirs.insert(path.parent());
            }
            // Metadata only: the inode itself (a symlink's is refused when opened, and
            // the part falls back to `syncfs`).
            Change::SetMode { path, .. } | Change::SetMeta { path, .. } => {
                touched.paths.insert(path.clone());
            }
            _ => return None,
        }
        if touched.paths.len() + touched.dirs.len() > FSYNC_PATHS_MAX {
            return None;
        }
    }
    Some(touched)
}

fn fsync_touched(root: &Path, touched: &Touched) -> Result<()> {
    for path in &touched.paths {
        let full = path.under(root);
        // Never through a symlink: a symlink (a SetMeta on one) cannot be fsynced by
        // itself, so the whole file system is.
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&full);
        match opened {
            Ok(file) => file.sync_all().at("fsync", &full)?,
            Err(error) if moved_on(&error) => return syncfs(root),
            Err(error) => return Err(error).at("open", &full),
        }
    }
    for dir in &touched.dirs {
        let full = match dir {
            Some(dir) => dir.under(root),
            None => root.to_path_buf(),
        };
        match File::open(&full) {
            Ok(file) => file.sync_all().at("fsync", &full)?,
            Err(error) if moved_on(&error) => return syncfs(root),
            Err(error) => return Err(error).at("open", &full),
        }
    }
    Ok(())
}

/// Whether opening a path the part wrote failed because it is no longer that path: a
/// symlink (a SetMeta on one cannot be fsynced by itself), or a later part of the
/// batch — whose writes overlap this part's commit — already renamed or removed it or
/// a parent. Then the whole file system is synced, which covers it wherever it is.
fn moved_on(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ELOOP) | Some(libc::ENOENT) | Some(libc::ENOTDIR)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::Hash;
    use crate::log::event::EventBody;

    fn event(change: Change) -> Event {
        let body = EventBody {
            epoch: 1,
            seq: 1,
            recorded_at_ms: 0,
            change,
            digest: Hash::ZERO,
        };
        Event::seal(Hash::ZERO, body)
    }

    fn path(text: &str) -> RelPath {
        RelPath::new(text).expect("a valid path")
    }

    #[test]
    fn a_few_files_are_fsynced_with_their_directories() {
        let part = vec![
            event(Change::Group { events: 2 }),
            event(Change::Mkdir {
                path: path("a"),
                mode: 0o755,
            }),
            event(Change::SetMode {
                path: path("a/b"),
                mode: 0o644,
            }),
        ];
        let touched = touched(&part, false).expect("plain enough");
        assert_eq!(
            touched
                .paths
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["a", "a/b"]
        );
        assert_eq!(touched.dirs.len(), 1);
        assert!(touched.dirs.contains(&None));
    }

    #[test]
    fn removals_renames_links_and_big_parts_use_syncfs() {
        for change in [
            Change::Remove { path: path("a") },
            Change::Rename {
                from: path("a"),
                to: path("b"),
            },
            Change::Symlink {
                path: path("a"),
                target: b"b".to_vec(),
            },
        ] {
            assert!(touched(&[event(change)], false).is_none());
        }
        let mkdir = |index: usize| {
            event(Change::Mkdir {
                path: path(&format!("d{index}")),
                mode: 0o755,
            })
        };
        assert!(touched(&[mkdir(0)], true).is_none(), "relinks");
        let many: Vec<Event> = (0..FSYNC_PATHS_MAX).map(mkdir).collect();
        assert!(touched(&many, false).is_none());
    }

    #[test]
    fn a_path_a_later_part_already_moved_is_covered_by_syncfs() {
        // Parts overlap: the next part's writes may rename a directory this part wrote
        // into before this part's commit fsyncs it.
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("moved")).unwrap();
        std::fs::write(root.path().join("moved/f"), b"x").unwrap();
        let part = vec![event(Change::Mkdir {
            path: path("dir0/f"),
            mode: 0o755,
        })];
        let touched = touched(&part, false).expect("plain enough");
        fsync_touched(root.path(), &touched).expect("falls back to syncfs");
        let gone = std::io::Error::from_raw_os_error(libc::EACCES);
        assert!(!moved_on(&gone), "other errors are errors");
    }
}
