//! Hard-link groups in the index: which recorded paths share a link value, and the
//! digest leaf each group adds (`standin-links-v1`), kept as entries come and go.

use std::collections::BTreeMap;

use super::{Entry, FolderIndex};
use crate::folder::meta::Meta;
use crate::hash::Hash;
use crate::path::RelPath;

impl FolderIndex {
    /// Add (or, `add` false, remove) the digest leaves of the link groups of link value
    /// `link` (`digest::links_leaf`): its recorded files split by content, each group of
    /// two or more names.
    pub(super) fn add_links_leaves(&mut self, link: u64, add: bool) {
        if link == 0 {
            return;
        }
        let Some(paths) = self.links.get(&link) else {
            return;
        };
        if paths.len() < 2 {
            return;
        }
        let mut groups: BTreeMap<(u64, Hash), Vec<&RelPath>> = BTreeMap::new();
        for path in paths {
            if let Some(Entry::File { size, content, .. }) = self.entries.get(path) {
                groups.entry((*size, *content)).or_default().push(path);
            }
        }
        let leaves: Vec<Hash> = groups
            .values()
            .filter(|names| names.len() >= 2)
            .map(|names| crate::folder::digest::links_leaf(names.iter().copied()))
            .collect();
        for leaf in &leaves {
            if add {
                self.digest.add(leaf);
            } else {
                self.digest.remove(leaf);
            }
        }
    }

    /// The link values of `path`'s recorded metadata and of `meta` (0 for none).
    pub(super) fn links_of(&self, path: &RelPath, meta: Option<&Meta>) -> [u64; 2] {
        let old = self.metas.get(path).map_or(0, |old| old.link);
        let new = meta.map_or(0, |meta| meta.link);
        [old, if new == old { 0 } else { new }]
    }

    /// The recorded names of link value `link` in path order, if any (not for 0).
    pub fn link_group(&self, link: u64) -> Option<&[RelPath]> {
        if link == 0 {
            return None;
        }
        self.links.get(&link).map(Vec::as_slice)
    }

    /// The paths recorded with link group `link` (hard links of one file), in order.
    pub fn linked(&self, link: u64) -> Vec<RelPath> {
        if link == 0 {
            return Vec::new();
        }
        self.links
            .get(&link)
            .map(|paths| paths.to_vec())
            .unwrap_or_default()
    }

    pub(super) fn link_insert(&mut self, path: &RelPath, meta: &Meta) {
        if meta.link == 0 {
            return;
        }
        // Nearly every group is one name: a vector of exactly one, not a set's node.
        match self.links.get_mut(&meta.link) {
            Some(paths) => {
                if let Err(at) = paths.binary_search(path) {
                    paths.insert(at, path.clone());
                }
            }
            None => {
                self.links.insert(meta.link, vec![path.clone()]);
            }
        }
    }

    pub(super) fn link_remove(&mut self, path: &RelPath, meta: &Meta) {
        if let Some(paths) = self.links.get_mut(&meta.link) {
            if let Ok(at) = paths.binary_search(path) {
                paths.remove(at);
            }
            if paths.is_empty() {
                self.links.remove(&meta.link);
            }
        }
    }
}
