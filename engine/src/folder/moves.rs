//! A directory moved where the watcher could not follow it (into a directory created
//! just before, whose watch was not yet in place): a diff then sees its old path gone
//! and a new tree appear. Recognized by the directory's inode (`Meta::link`), the move
//! is recorded as one `Rename` plus the differences inside it — not as a removal and a
//! new copy of every file under it.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::folder::index::{Entry, FolderIndex};
use crate::log::event::Change;
use crate::path::RelPath;

/// `changes` (a diff against `index`) with each removed directory that reappears as a
/// new directory with the same inode folded into a `Rename`.
pub fn fold_moves(changes: Vec<Change>, index: &FolderIndex) -> Vec<Change> {
    let mut removed: HashMap<u64, RelPath> = HashMap::new();
    for change in &changes {
        if let Change::Remove { path } = change {
            if let (Some(Entry::Dir { .. }), Some(meta)) = (index.get(path), index.meta(path)) {
                if meta.link != 0 {
                    removed.insert(meta.link, path.clone());
                }
            }
        }
    }
    if removed.is_empty() {
        return changes;
    }
    // New path → old path, for each move found.
    let mut moves: HashMap<RelPath, RelPath> = HashMap::new();
    for change in &changes {
        if let Change::Dir { path, meta } = change {
            if index.get(path).is_some() {
                continue;
            }
            if let Some(from) = removed.get(&meta.link) {
                if !path.is_within(from) && !from.is_within(path) {
                    moves.insert(path.clone(), from.clone());
                }
            }
        }
    }
    if moves.is_empty() {
        return changes;
    }
    let moved_from: HashSet<RelPath> = moves.values().cloned().collect();
    // A change at or below a moved directory's old path that the diff puts before the
    // move (something new in its place: `mv x y; ln -s elsewhere x`) waits for it: it
    // would otherwise find the directory still there.
    let mut waiting: HashMap<RelPath, Vec<Change>> = moved_from
        .iter()
        .map(|from| (from.clone(), Vec::new()))
        .collect();
    // Where `path` was before its move, if it lies in a moved directory.
    let old_path = |path: &RelPath| -> Option<RelPath> {
        path.ancestors()
            .into_iter()
            .chain(std::iter::once(path.clone()))
            .find_map(|ancestor| {
                let from = moves.get(&ancestor)?;
                Some(path.rebase(&ancestor, from))
            })
    };
    let present: HashSet<RelPath> = changes
        .iter()
        .flat_map(|change| change.paths())
        .cloned()
        .collect();
    let mut out = Vec::with_capacity(changes.len());
    let mut queue: VecDeque<Change> = changes.into();
    while let Some(change) = queue.pop_front() {
        if let Change::Remove { path } = &change {
            if moved_from.contains(path) {
                continue;
            }
        }
        let before_its_move = change.paths().into_iter().find_map(|path| {
            moved_from
                .iter()
                .find(|from| path.is_within(from) && waiting.contains_key(*from))
        });
        if let Some(from) = before_its_move {
            if let Some(held) = waiting.get_mut(from) {
                held.push(change);
            }
            continue;
        }
        match &change {
            Change::Dir { path, meta } if moves.contains_key(path) => {
                let from = moves[path].clone();
                out.push(Change::Rename {
                    from: from.clone(),
                    to: path.clone(),
                });
                if index.meta(&from) != Some(meta) {
                    out.push(Change::SetMeta {
                        path: path.clone(),
                        meta: meta.clone(),
                    });
                }
                if let Some(held) = waiting.remove(&from) {
                    for (at, change) in held.into_iter().enumerate() {
                        queue.insert(at, change);
                    }
                }
            }
            Change::File {
                path,
                meta,
                content,
                ..
            } => match old_path(path) {
                Some(old) => match index.get(&old) {
                    Some(Entry::File {
                        content: recorded, ..
                    }) if recorded == content => {
                        if index.meta(&old) != Some(meta) {
                            out.push(Change::SetMeta {
                                path: path.clone(),
                                meta: meta.clone(),
                            });
                        }
                    }
                    _ => out.push(change),
                },
                None => out.push(change),
            },
            Change::Dir { path, meta } => match old_path(path) {
                Some(old) if matches!(index.get(&old), Some(Entry::Dir { .. })) => {
                    if index.meta(&old) != Some(meta) {
                        out.push(Change::SetMeta {
                            path: path.clone(),
                            meta: meta.clone(),
                        });
                    }
                }
                _ => out.push(change),
            },
            Change::Link { path, target, meta } => match old_path(path) {
                Some(old) => match index.get(&old) {
                    Some(Entry::Symlink { target: recorded }) if recorded == target => {
                        if index.meta(&old) != Some(meta) {
                            out.push(Change::SetMeta {
                                path: path.clone(),
                                meta: meta.clone(),
                            });
                        }
                    }
                    _ => out.push(change),
                },
                None => out.push(change),
            },
            _ => out.push(change),
        }
    }
    // Every move was emitted, so nothing waits; kept rather than lost if one did.
    let mut left: Vec<(RelPath, Vec<Change>)> = waiting.into_iter().collect();
    left.sort_by(|a, b| a.0.cmp(&b.0));
    out.extend(left.into_iter().flat_map(|(_, held)| held));
    // What the moved directories held and no longer do.
    for (to, from) in &moves {
        let mut gone: Vec<RelPath> = Vec::new();
        for (old, _) in index.subtree(from) {
            let new = old.rebase(from, to);
            if present.contains(&new) || gone.iter().any(|above| new.is_within(above)) {
                continue;
            }
            gone.push(new);
        }
        out.extend(gone.into_iter().map(|path| Change::Remove { path }));
    }
    out
}
