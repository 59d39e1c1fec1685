//! Hard links (invariant 11): the names of one file are recorded with one link group
//! (`Meta::link`, the file's inode number on the recording node).
//!
//! - capture: a file written through one name changed under every name, so the other
//!   names of each file a diff read are read too (`other_names`) and recorded in the
//!   same group;
//! - replay: after a batch's files are written (each name its own copy for a moment),
//!   the names of each link group it touched are linked to the group's first name
//!   (`relink`), so the passive holds one file under every name;
//! - verify: the paths of each recorded group are one file on disk, and no two paths
//!   of different groups are (`partition_difference`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::error::{IoContext, Result};
use crate::folder::index::{Entry, FolderIndex};
use crate::folder::meta::Meta;
use crate::log::event::Change;
use crate::path::RelPath;

/// The names, other than those `changes` already record, of the files `changes`
/// record: from the index's link groups and the disk's (`disk_linked`, a walk's names
/// of each file with more than one link).
pub fn other_names(
    changes: &[Change],
    index: &FolderIndex,
    disk_linked: &HashMap<u64, Vec<RelPath>>,
) -> Vec<RelPath> {
    let mut out: BTreeSet<RelPath> = BTreeSet::new();
    for change in changes {
        let (Change::File { path, meta, .. } | Change::SetMeta { path, meta }) = change else {
            continue;
        };
        if meta.link == 0 {
            continue;
        }
        // The group recorded under the file's inode number now, and the one recorded
        // for its path: after a failover (or a copy put in place) the names of one
        // file are recorded under the other node's number.
        let recorded_before = index
            .meta(path)
            .map(|old| old.link)
            .filter(|link| *link != meta.link)
            .and_then(|link| index.link_group(link));
        let recorded = index
            .link_group(meta.link)
            .into_iter()
            .chain(recorded_before)
            .flatten();
        let from_disk = disk_linked.get(&meta.link).into_iter().flatten();
        for other in recorded.chain(from_disk) {
            if other != path && !out.contains(other) {
                out.insert(other.clone());
            }
        }
    }
    if out.is_empty() {
        return Vec::new();
    }
    let recorded: HashSet<&RelPath> = changes.iter().flat_map(|change| change.paths()).collect();
    out.into_iter()
        .filter(|path| !recorded.contains(path))
        .collect()
}

/// The link groups of more than one file that `changes` touch, as the index (after
/// them) holds them: each a list of paths, first name first. Only names whose
/// recorded content is the same are one group: a link value is an inode number,
/// which another node's numbering (after a failover) can repeat for an unrelated file
/// until that file is recorded again.
pub fn groups_touched(index: &FolderIndex, changes: &[&Change]) -> Vec<Vec<RelPath>> {
    let mut seen: BTreeSet<u64> = BTreeSet::new();
    let mut out = Vec::new();
    for change in changes {
        let (Change::File { meta, .. } | Change::SetMeta { meta, .. }) = change else {
            continue;
        };
        if meta.link == 0 || !seen.insert(meta.link) {
            continue;
        }
        out.extend(same_content_groups(index, index.linked(meta.link)));
    }
    out
}

/// `names` (one link value) split by recorded content: each group of more than one
/// file, first name first.
pub fn same_content_groups(index: &FolderIndex, names: Vec<RelPath>) -> Vec<Vec<RelPath>> {
    let mut by_content: BTreeMap<(u64, crate::hash::Hash), Vec<RelPath>> = BTreeMap::new();
    for path in names {
        if let Some(Entry::File { size, content, .. }) = index.get(&path) {
            by_content.entry((*size, *content)).or_default().push(path);
        }
    }
    by_content
        .into_values()
        .filter(|group| group.len() > 1)
        .collect()
}

/// Make every name of `group` (paths under `root`) the same file as its first name:
/// each other name that is a separate file is replaced, atomically, by a hard link.
/// The index says their content is the same; a name missing on disk is left.
pub fn relink(root: &Path, group: &[RelPath]) -> Result<()> {
    let Some((first, others)) = group.split_first() else {
        return Ok(());
    };
    let leader = first.under(root);
    let Ok(leader_meta) = std::fs::symlink_metadata(&leader) else {
        return Ok(());
    };
    if !leader_meta.is_file() {
        return Ok(());
    }
    for other in others {
        let full = other.under(root);
        match std::fs::symlink_metadata(&full) {
            Ok(meta) if meta.is_file() && meta.ino() != leader_meta.ino() => {}
            _ => continue,
        }
        let temporary = match other.parent() {
            Some(parent) => parent.join(&crate::fsutil::temp_name())?.under(root),
            None => RelPath::top(&crate::fsutil::temp_name())?.under(root),
        };
        std::fs::hard_link(&leader, &temporary).at("link", &temporary)?;
        if let Err(error) = std::fs::rename(&temporary, &full) {
            let _ = std::fs::remove_file(&temporary);
            return Err(error).at("rename into place", &full);
        }
    }
    Ok(())
}

/// The first path whose hard links on disk (`disk`, a walk's metadata: `link` is the
/// inode) are not what the index records: `(path, expected, found)` in words.
pub fn partition_difference(
    recorded: &BTreeMap<RelPath, Meta>,
    disk: &BTreeMap<RelPath, Meta>,
) -> Option<(RelPath, String, String)> {
    // Each path's group, named by its first path, on each side.
    let first_of = |metas: &BTreeMap<RelPath, Meta>| -> HashMap<u64, RelPath> {
        let mut first: HashMap<u64, RelPath> = HashMap::new();
        for (path, meta) in metas {
            if meta.link != 0 && recorded.contains_key(path) && disk.contains_key(path) {
                first.entry(meta.link).or_insert_with(|| path.clone());
            }
        }
        first
    };
    let (recorded_first, disk_first) = (first_of(recorded), first_of(disk));
    let describe = |first: Option<&RelPath>, path: &RelPath| match first {
        Some(first) if first != path => format!("a hard link of {first}"),
        _ => "a file of its own (or the first of its names)".to_string(),
    };
    for (path, meta) in recorded {
        let Some(on_disk) = disk.get(path) else {
            continue;
        };
        if meta.link == 0 || on_disk.link == 0 {
            continue;
        }
        let want = recorded_first.get(&meta.link);
        let have = disk_first.get(&on_disk.link);
        if want != have {
            return Some((path.clone(), describe(want, path), describe(have, path)));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::Hash;
    use crate::log::event::ChunkRef;

    fn file(path: &str, text: &[u8], link: u64) -> Change {
        Change::File {
            path: RelPath::new(path).unwrap(),
            meta: Meta {
                mode: 0o644,
                link,
                ..Meta::default()
            },
            size: text.len() as u64,
            content: Hash::of(text),
            chunks: vec![ChunkRef {
                hash: Hash::of(text),
                len: text.len() as u32,
            }],
        }
    }

    /// One link value with two contents (another node's inode numbers repeating a
    /// value) is never one group: relinking would put one file's content under the
    /// other's name.
    #[test]
    fn only_names_with_the_same_content_are_one_group() {
        let mut index = FolderIndex::default();
        let changes = [
            file("a", b"shared", 7),
            file("b", b"shared", 7),
            file("c", b"unrelated", 7),
            file("d", b"alone", 8),
        ];
        for change in &changes {
            index.apply(change).unwrap();
        }
        let touched: Vec<&Change> = changes.iter().collect();
        let groups = groups_touched(&index, &touched);
        assert_eq!(
            groups,
            vec![vec![RelPath::new("a").unwrap(), RelPath::new("b").unwrap()]]
        );
    }
}
