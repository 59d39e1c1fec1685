//! The folder index: one entry per path, the state the log's events add up to.
//!
//! The index is a pure function of the log: `FolderIndex::apply` is the one place that
//! says what each `Change` does to the folder's state, and it is used by the active
//! when it records, by the passive when it replays, and to rebuild the index from the
//! log after a crash. It lives in memory (an ordered map, so subtrees are key ranges) and
//! is persisted to a sled tree at the seq it was last saved at. The maps are persistent
//! ones (`imbl`): a copy shares every node with the original until one of them changes
//! it, so a copy costs O(1), and a change O(log n), whatever the folder's size —
//! capture reads a group's later rounds against a copy with the group's changes so far.

use std::collections::BTreeSet;

use imbl::{OrdMap, OrdSet};

use bincode::{Decode, Encode};

use crate::folder::digest::{leaf, FolderDigest, LeafFields};
use crate::folder::meta::Meta;
use crate::hash::Hash;
use crate::log::event::{Change, ChunkRef};
use crate::path::RelPath;

mod links;

/// The leaf of `entry` at `path` in the folder digest, with its metadata when it was
/// recorded with it (one hash for both: `digest::leaf_with_meta`).
pub fn leaf_of(path: &RelPath, entry: &Entry, meta: Option<&Meta>) -> Hash {
    match meta {
        Some(meta) => crate::folder::digest::leaf_with_meta(path, entry.leaf_fields(), meta),
        None => entry.leaf(path),
    }
}

/// The state of one path.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Entry {
    File {
        mode: u32,
        mtime_ns: i64,
        size: u64,
        content: Hash,
        chunks: Vec<ChunkRef>,
    },
    Dir {
        mode: u32,
    },
    Symlink {
        target: Vec<u8>,
    },
}

impl Entry {
    /// The entry's leaf in the folder digest.
    pub fn leaf(&self, path: &RelPath) -> Hash {
        leaf(path, self.leaf_fields())
    }

    pub fn leaf_fields(&self) -> LeafFields<'_> {
        match self {
            Entry::File {
                mode,
                size,
                content,
                ..
            } => LeafFields::File {
                mode: *mode,
                size: *size,
                content,
            },
            Entry::Dir { mode } => LeafFields::Dir { mode: *mode },
            Entry::Symlink { target } => LeafFields::Symlink { target },
        }
    }

    pub fn is_dir(&self) -> bool {
        matches!(self, Entry::Dir { .. })
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Entry::File { .. } => "file",
            Entry::Dir { .. } => "directory",
            Entry::Symlink { .. } => "symlink",
        }
    }
}

fn entry_config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
        .with_limit::<{ crate::log::event::MAX_EVENT_BYTES }>()
}

/// An entry's bytes (the index's storage format, and how snapshots carry entries):
/// bincode 2, little-endian, fixed-width integers, like events — the entry, then its
/// metadata when it has any (an entry stored by a release that kept no metadata is the
/// entry alone, and still decodes).
pub fn encode_entry(entry: &Entry, meta: Option<&Meta>) -> Vec<u8> {
    let config = bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding();
    let mut bytes = bincode::encode_to_vec(entry, config)
        .expect("encoding an index entry into memory cannot fail");
    if let Some(meta) = meta {
        bincode::encode_into_std_write(meta, &mut bytes, config)
            .expect("encoding metadata into memory cannot fail");
    }
    bytes
}

/// Decode a stored or received entry (and its metadata, if it has any) for `path`,
/// checking the path and refusing trailing bytes.
pub fn decode_entry(
    path: &[u8],
    bytes: &[u8],
) -> crate::error::Result<(RelPath, Entry, Option<Meta>)> {
    let relpath = RelPath::new(path.to_vec())?;
    let decode_error = |reason: String| crate::error::Error::Decode {
        what: format!("index entry {relpath}"),
        reason,
    };
    let (entry, used) = bincode::decode_from_slice::<Entry, _>(bytes, entry_config())
        .map_err(|error| decode_error(error.to_string()))?;
    if used == bytes.len() {
        return Ok((relpath, entry, None));
    }
    let (meta, more) = bincode::decode_from_slice::<Meta, _>(&bytes[used..], entry_config())
        .map_err(|error| decode_error(format!("metadata: {error}")))?;
    if used + more != bytes.len() {
        return Err(decode_error(format!(
            "{} trailing bytes",
            bytes.len() - used - more
        )));
    }
    if meta.mode & !crate::folder::meta::ALL_MODE_BITS != 0 {
        return Err(decode_error(format!(
            "mode {:o} has file-type bits",
            meta.mode
        )));
    }
    Ok((relpath, entry, Some(meta)))
}

/// Why a change does not fit the index (the replay turns this into an error with a seq).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Misfit {
    pub path: RelPath,
    pub reason: String,
}

/// Entries by path, the running digest, and which paths changed since the last save.
#[derive(Clone, Debug, Default)]
pub struct FolderIndex {
    entries: OrdMap<RelPath, Entry>,
    /// The metadata of each entry that has it recorded (format 2; an entry recorded by
    /// a release that kept none has none until its next change).
    metas: OrdMap<RelPath, Meta>,
    /// The paths of each link group (`Meta::link`) with more than zero members, sorted.
    links: imbl::HashMap<u64, Vec<RelPath>>,
    digest: FolderDigest,
    dirty: OrdSet<RelPath>,
}

impl FolderIndex {
    /// An index built from saved entries; the digest is recomputed from them.
    pub fn from_entries(
        entries: impl IntoIterator<Item = (RelPath, Entry, Option<Meta>)>,
    ) -> FolderIndex {
        let mut index = FolderIndex::default();
        for (path, entry, meta) in entries {
            index.digest.add(&leaf_of(&path, &entry, meta.as_ref()));
            if let Some(meta) = meta {
                index.link_insert(&path, &meta);
                index.metas.insert(path.clone(), meta);
            }
            index.entries.insert(path, entry);
        }
        let links: Vec<u64> = index.links.keys().copied().collect();
        for link in links {
            index.add_links_leaves(link, true);
        }
        index
    }

    pub fn get(&self, path: &RelPath) -> Option<&Entry> {
        self.entries.get(path)
    }

    /// The metadata recorded for `path`, if any (see `metas`).
    pub fn meta(&self, path: &RelPath) -> Option<&Meta> {
        self.metas.get(path)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn digest(&self) -> Hash {
        self.digest.to_hash()
    }

    /// Every entry, in path order.
    pub fn iter(&self) -> impl Iterator<Item = (&RelPath, &Entry)> {
        self.entries.iter()
    }

    /// Every entry with its metadata (if recorded), in path order.
    pub fn iter_with_meta(&self) -> impl Iterator<Item = (&RelPath, &Entry, Option<&Meta>)> {
        self.entries
            .iter()
            .map(|(path, entry)| (path, entry, self.metas.get(path)))
    }

    /// The entry at `path` and everything below it, in path order.
    pub fn subtree<'a>(
        &'a self,
        path: &RelPath,
    ) -> impl Iterator<Item = (&'a RelPath, &'a Entry)> + 'a {
        let (low, high) = path.descendants_range();
        self.entries
            .get_key_value(path)
            .into_iter()
            .chain(self.entries.range(low..high))
    }

    /// How many paths changed since the last `take_dirty`.
    pub fn dirty_len(&self) -> usize {
        self.dirty.len()
    }

    /// Take the set of paths changed since the last call (for persisting).
    pub fn take_dirty(&mut self) -> BTreeSet<RelPath> {
        std::mem::take(&mut self.dirty).into_iter().collect()
    }

    /// Check that `path`'s parent is a directory in the index (top-level is fine).
    fn check_parent(&self, path: &RelPath) -> Result<(), Misfit> {
        let Some(parent) = path.parent() else {
            return Ok(());
        };
        match self.entries.get(&parent) {
            Some(Entry::Dir { .. }) => Ok(()),
            Some(other) => Err(misfit(
                path,
                format!("parent {parent} is a {}", other.kind()),
            )),
            None => Err(misfit(path, format!("parent {parent} does not exist"))),
        }
    }

    /// Put `entry` (with `meta`, or none) at `path`, replacing what was there.
    fn set(&mut self, path: RelPath, entry: Entry, meta: Option<Meta>) {
        let links = self.links_of(&path, meta.as_ref());
        for link in links {
            self.add_links_leaves(link, false);
        }
        if let Some(old) = self.entries.get(&path) {
            let old_meta = self.metas.remove(&path);
            self.digest.remove(&leaf_of(&path, old, old_meta.as_ref()));
            if let Some(old_meta) = old_meta {
                self.link_remove(&path, &old_meta);
            }
        }
        self.digest.add(&leaf_of(&path, &entry, meta.as_ref()));
        if let Some(meta) = meta {
            self.link_insert(&path, &meta);
            self.metas.insert(path.clone(), meta);
        }
        self.dirty.insert(path.clone());
        self.entries.insert(path, entry);
        for link in links {
            self.add_links_leaves(link, true);
        }
    }

    fn remove_subtree(&mut self, path: &RelPath) -> Vec<(RelPath, Entry, Option<Meta>)> {
        let doomed: Vec<RelPath> = self.subtree(path).map(|(key, _)| key.clone()).collect();
        let mut removed = Vec::with_capacity(doomed.len());
        for key in doomed {
            let [link, _] = self.links_of(&key, None);
            self.add_links_leaves(link, false);
            if let Some(entry) = self.entries.remove(&key) {
                let meta = self.metas.remove(&key);
                self.digest.remove(&leaf_of(&key, &entry, meta.as_ref()));
                if let Some(meta) = &meta {
                    self.link_remove(&key, meta);
                }
                self.dirty.insert(key.clone());
                removed.push((key, entry, meta));
            }
            self.add_links_leaves(link, true);
        }
        removed
    }

    /// Check that `change` fits the current state, without changing anything.
    pub fn check(&self, change: &Change) -> Result<(), Misfit> {
        if let Some(meta) = change.meta() {
            let path = change.paths()[0];
            if meta.mode & !crate::folder::meta::ALL_MODE_BITS != 0 {
                return Err(misfit(
                    path,
                    format!("mode {:o} has file-type bits", meta.mode),
                ));
            }
        }
        let Some(base) = change.base() else {
            // `SetMeta`.
            let path = change.paths()[0];
            return match self.entries.get(path) {
                Some(_) => Ok(()),
                None => Err(misfit(path, "nothing to set the metadata of".to_string())),
            };
        };
        self.check_base(base.as_ref())
    }

    /// `check` for a format-1 change.
    fn check_base(&self, change: &Change) -> Result<(), Misfit> {
        if let Change::Put { path, mode, .. }
        | Change::Mkdir { path, mode }
        | Change::SetMode { path, mode } = change
        {
            if mode & !crate::folder::meta::MODE_MASK != 0 {
                return Err(misfit(path, format!("mode {mode:o} has bits standin never records (setuid, setgid or file type)")));
            }
        }
        match change {
            Change::Put {
                path, size, chunks, ..
            } => {
                self.check_parent(path)?;
                if let Some(Entry::Dir { .. }) = self.entries.get(path) {
                    return Err(misfit(path, "a directory is in the way".to_string()));
                }
                let total: u64 = chunks.iter().map(|chunk| chunk.len as u64).sum();
                if total != *size {
                    return Err(misfit(
                        path,
                        format!("chunks add up to {total} bytes, size says {size}"),
                    ));
                }
                Ok(())
            }
            Change::Mkdir { path, .. } => {
                self.check_parent(path)?;
                match self.entries.get(path) {
                    Some(Entry::Dir { .. }) | None => Ok(()),
                    Some(other) => Err(misfit(path, format!("a {} is in the way", other.kind()))),
                }
            }
            Change::Symlink { path, target } => {
                self.check_parent(path)?;
                if target.is_empty() || target.contains(&0) {
                    return Err(misfit(
                        path,
                        "empty or NUL-containing symlink target".to_string(),
                    ));
                }
                match self.entries.get(path) {
                    Some(Entry::Dir { .. }) => {
                        Err(misfit(path, "a directory is in the way".to_string()))
                    }
                    _ => Ok(()),
                }
            }
            Change::Remove { path } => match self.entries.get(path) {
                Some(_) => Ok(()),
                None => Err(misfit(path, "nothing to remove".to_string())),
            },
            Change::Rename { from, to } => {
                let Some(source) = self.entries.get(from) else {
                    return Err(misfit(from, "nothing to rename".to_string()));
                };
                if to.is_within(from) {
                    return Err(misfit(to, format!("cannot move {from} inside itself")));
                }
                if from.is_within(to) {
                    return Err(misfit(
                        to,
                        format!("cannot move {from} onto its own ancestor"),
                    ));
                }
                self.check_parent(to)?;
                match (source.is_dir(), self.entries.get(to)) {
                    (false, Some(Entry::Dir { .. })) => {
                        Err(misfit(to, "a directory is in the way".to_string()))
                    }
                    (true, Some(other)) if !other.is_dir() => {
                        Err(misfit(to, format!("a {} is in the way", other.kind())))
                    }
                    _ => Ok(()),
                }
            }
            Change::SetMode { path, .. } => match self.entries.get(path) {
                Some(Entry::Symlink { .. }) => {
                    Err(misfit(path, "a symlink has no mode".to_string()))
                }
                Some(_) => Ok(()),
                None => Err(misfit(path, "nothing to change the mode of".to_string())),
            },
            Change::Promote { .. } | Change::Group { .. } => Ok(()),
            Change::File { .. }
            | Change::Dir { .. }
            | Change::Link { .. }
            | Change::SetMeta { .. } => {
                unreachable!("`base` is a format-1 change")
            }
        }
    }

    /// Apply `change`, after checking it fits.
    pub fn apply(&mut self, change: &Change) -> Result<(), Misfit> {
        self.check(change)?;
        if let Change::File {
            path,
            meta,
            size,
            content,
            chunks,
        } = change
        {
            // The common case, without building its format-1 view first.
            let entry = Entry::File {
                mode: meta.mode & crate::folder::meta::MODE_MASK,
                mtime_ns: meta.mtime_ns,
                size: *size,
                content: *content,
                chunks: chunks.clone(),
            };
            self.set(path.clone(), entry, Some(meta.clone()));
            return Ok(());
        }
        let meta = change.meta().cloned();
        let Some(base) = change.base() else {
            // `SetMeta`: the entry stays, its metadata is replaced.
            let path = change.paths()[0].clone();
            let mut entry = self.entries[&path].clone();
            if let Some(meta) = &meta {
                // The entry's own fields follow (the format-1 view of the same entry).
                let legacy_mode = meta.mode & crate::folder::meta::MODE_MASK;
                match &mut entry {
                    Entry::File { mode, mtime_ns, .. } => {
                        *mode = legacy_mode;
                        *mtime_ns = meta.mtime_ns;
                    }
                    Entry::Dir { mode } => *mode = legacy_mode,
                    Entry::Symlink { .. } => {}
                }
            }
            self.set(path, entry, meta);
            return Ok(());
        };
        match base.as_ref() {
            Change::Put {
                path,
                mode,
                mtime_ns,
                size,
                content,
                chunks,
            } => {
                self.set(
                    path.clone(),
                    Entry::File {
                        mode: *mode,
                        mtime_ns: *mtime_ns,
                        size: *size,
                        content: *content,
                        chunks: chunks.clone(),
                    },
                    meta,
                );
            }
            Change::Mkdir { path, mode } => {
                self.set(path.clone(), Entry::Dir { mode: *mode }, meta)
            }
            Change::Symlink { path, target } => self.set(
                path.clone(),
                Entry::Symlink {
                    target: target.clone(),
                },
                meta,
            ),
            Change::Remove { path } => {
                self.remove_subtree(path);
            }
            Change::Rename { from, to } => {
                self.remove_subtree(to);
                for (path, entry, meta) in self.remove_subtree(from) {
                    self.set(path.rebase(from, to), entry, meta);
                }
            }
            Change::SetMode { path, mode } => {
                let mut entry = self.entries[path].clone();
                match &mut entry {
                    Entry::File { mode: old, .. } | Entry::Dir { mode: old } => *old = *mode,
                    Entry::Symlink { .. } => unreachable!("checked above"),
                }
                // A format-1 mode change: what else the entry had is not known.
                self.set(path.clone(), entry, None);
            }
            Change::Promote { .. } | Change::Group { .. } => {}
            Change::File { .. }
            | Change::Dir { .. }
            | Change::Link { .. }
            | Change::SetMeta { .. } => {
                unreachable!("`base` is a format-1 change")
            }
        }
        Ok(())
    }

    /// Every chunk an entry names.
    pub fn chunk_hashes(&self) -> impl Iterator<Item = Hash> + '_ {
        self.entries.values().flat_map(|entry| match entry {
            Entry::File { chunks, .. } => chunks.iter().map(|chunk| chunk.hash).collect::<Vec<_>>(),
            _ => Vec::new(),
        })
    }
}

fn misfit(path: &RelPath, reason: String) -> Misfit {
    Misfit {
        path: path.clone(),
        reason,
    }
}

#[cfg(test)]
mod tests;
