//! The folder digest: one hash of the whole folder state, updated in O(1) per entry.
//!
//! # Scheme
//!
//! Every entry of the folder (file, directory or symlink; the root itself is not an
//! entry) has a *leaf*:
//!
//! ```text
//! leaf = blake3("standin-leaf-v1" ‖ u64le(len(path)) ‖ path ‖ kind ‖ fields)
//!   file:    kind 1 ‖ u32le(mode) ‖ u64le(size) ‖ content hash (blake3 of the bytes)
//!   dir:     kind 2 ‖ u32le(mode)
//!   symlink: kind 3 ‖ u64le(len(target)) ‖ target
//! ```
//!
//! An entry recorded with its metadata (format 2, `Meta`) has one leaf for both:
//!
//! ```text
//! leaf = blake3("standin-leaf-v2" ‖ u64le(len(path)) ‖ path ‖ kind ‖ fields ‖ meta)
//!   meta: u32le(mode, 0 for a symlink) ‖ owner ‖ group ‖ u64le(count) ‖ xattrs
//!   (see `Meta::feed`: each id as its name where it has one; not the time, not the
//!   link value)
//! ```
//!
//! Files recorded with their metadata that are hard links of one file (one link
//! group: `Meta::link`, split by content as `links` does) add one more leaf per group
//! of two or more names, so two folders whose names are linked differently differ:
//!
//! ```text
//! links leaf = blake3("standin-links-v1" ‖ u64le(count) ‖ (u64le(len(path)) ‖ path)…)
//!   the group's paths in order
//! ```
//!
//! (An entry recorded without metadata — a previous release's — has no link group:
//! such a folder's digest is what it was.)
//!
//! The digest is the sum of all leaves as 256-bit little-endian integers, modulo
//! 2^256 (an additive multiset hash, AdHash). Adding an entry adds its leaf, removing
//! subtracts it, changing it does both, so a `Put`, `Mkdir`, `SetMode` or `Symlink`
//! costs O(1); a `Remove` or `Rename` of a directory costs O(entries below it). The
//! same sum recomputed from disk by a full walk must give the same value.
//! Modification times are not part of the digest: they are replicated, but a copy
//! with other mtimes holds the same data.

use crate::folder::meta::Meta;
use crate::hash::Hash;
use crate::path::RelPath;

/// What kind of entry, with the fields the digest covers.
#[derive(Clone, Copy, Debug)]
pub enum LeafFields<'a> {
    File {
        mode: u32,
        size: u64,
        content: &'a Hash,
    },
    Dir {
        mode: u32,
    },
    Symlink {
        target: &'a [u8],
    },
}

/// The leaf hash of one entry.
pub fn leaf(path: &RelPath, fields: LeafFields<'_>) -> Hash {
    let hasher = start(b"standin-leaf-v1", path, fields);
    hasher.finalize().into()
}

/// The leaf hash of one entry recorded with its metadata: one hash for both.
pub fn leaf_with_meta(path: &RelPath, fields: LeafFields<'_>, meta: &Meta) -> Hash {
    let mut hasher = start(b"standin-leaf-v2", path, fields);
    meta.feed(&mut hasher, !matches!(fields, LeafFields::Symlink { .. }));
    hasher.finalize().into()
}

/// The leaf of one hard-link group: `names` (two or more, in order) are one file.
pub fn links_leaf<'a>(names: impl ExactSizeIterator<Item = &'a RelPath>) -> Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"standin-links-v1");
    hasher.update(&(names.len() as u64).to_le_bytes());
    for name in names {
        hasher.update(&(name.as_bytes().len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
    }
    hasher.finalize().into()
}

/// A hasher fed with `label`, `path` and the entry's own fields.
fn start(label: &[u8], path: &RelPath, fields: LeafFields<'_>) -> blake3::Hasher {
    let mut hasher = blake3::Hasher::new();
    hasher.update(label);
    hasher.update(&(path.as_bytes().len() as u64).to_le_bytes());
    hasher.update(path.as_bytes());
    match fields {
        LeafFields::File {
            mode,
            size,
            content,
        } => {
            hasher.update(&[1]);
            hasher.update(&mode.to_le_bytes());
            hasher.update(&size.to_le_bytes());
            hasher.update(&content.0);
        }
        LeafFields::Dir { mode } => {
            hasher.update(&[2]);
            hasher.update(&mode.to_le_bytes());
        }
        LeafFields::Symlink { target } => {
            hasher.update(&[3]);
            hasher.update(&(target.len() as u64).to_le_bytes());
            hasher.update(target);
        }
    }
    hasher
}

/// The running sum of leaves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FolderDigest([u64; 4]);

impl FolderDigest {
    /// Add a leaf (an entry appeared).
    pub fn add(&mut self, leaf: &Hash) {
        let other = limbs(leaf);
        let mut carry = false;
        for (mine, theirs) in self.0.iter_mut().zip(other) {
            let (sum, overflow_a) = mine.overflowing_add(theirs);
            let (sum, overflow_b) = sum.overflowing_add(carry as u64);
            *mine = sum;
            carry = overflow_a || overflow_b;
        }
    }

    /// Subtract a leaf (an entry disappeared).
    pub fn remove(&mut self, leaf: &Hash) {
        let other = limbs(leaf);
        let mut borrow = false;
        for (mine, theirs) in self.0.iter_mut().zip(other) {
            let (difference, underflow_a) = mine.overflowing_sub(theirs);
            let (difference, underflow_b) = difference.overflowing_sub(borrow as u64);
            *mine = difference;
            borrow = underflow_a || underflow_b;
        }
    }

    /// The digest as a hash value (little-endian bytes of the sum).
    pub fn to_hash(&self) -> Hash {
        let mut out = [0u8; 32];
        for (index, limb) in self.0.iter().enumerate() {
            out[index * 8..index * 8 + 8].copy_from_slice(&limb.to_le_bytes());
        }
        Hash(out)
    }

    /// Rebuild from a stored hash value.
    pub fn from_hash(hash: &Hash) -> FolderDigest {
        FolderDigest(limbs(hash))
    }
}

fn limbs(hash: &Hash) -> [u64; 4] {
    let mut out = [0u64; 4];
    for (index, limb) in out.iter_mut().enumerate() {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&hash.0[index * 8..index * 8 + 8]);
        *limb = u64::from_le_bytes(bytes);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_does_not_matter_and_removal_undoes_addition() {
        let leaves: Vec<Hash> = (0u8..20).map(|byte| Hash::of(&[byte])).collect();
        let mut forward = FolderDigest::default();
        leaves.iter().for_each(|leaf| forward.add(leaf));
        let mut backward = FolderDigest::default();
        leaves.iter().rev().for_each(|leaf| backward.add(leaf));
        assert_eq!(forward, backward);
        for leaf in &leaves {
            forward.remove(leaf);
        }
        assert_eq!(forward, FolderDigest::default());
        assert_eq!(FolderDigest::from_hash(&backward.to_hash()), backward);
    }

    #[test]
    fn a_links_leaf_depends_on_the_names() {
        let [a, b, c] = ["a", "b", "c"].map(|name| RelPath::new(name).unwrap());
        let ab = links_leaf([&a, &b].into_iter());
        assert_ne!(ab, links_leaf([&a, &c].into_iter()));
        assert_ne!(ab, links_leaf([&a, &b, &c].into_iter()));
        assert_eq!(ab, links_leaf([&a, &b].into_iter()));
    }

    #[test]
    fn carries_propagate() {
        let mut digest = FolderDigest([u64::MAX, u64::MAX, 0, 0]);
        digest.add(&Hash({
            let mut one = [0u8; 32];
            one[0] = 1;
            one
        }));
        assert_eq!(digest, FolderDigest([0, 0, 1, 0]));
    }

    #[test]
    fn leaf_depends_on_every_field() {
        let path = RelPath::new("a").unwrap();
        let content = Hash::of(b"x");
        let base = leaf(
            &path,
            LeafFields::File {
                mode: 0o644,
                size: 1,
                content: &content,
            },
        );
        assert_ne!(
            base,
            leaf(
                &path,
                LeafFields::File {
                    mode: 0o600,
                    size: 1,
                    content: &content
                }
            )
        );
        assert_ne!(
            base,
            leaf(
                &path,
                LeafFields::File {
                    mode: 0o644,
                    size: 2,
                    content: &content
                }
            )
        );
        assert_ne!(
            base,
            leaf(
                &RelPath::new("b").unwrap(),
                LeafFields::File {
                    mode: 0o644,
                    size: 1,
                    content: &content
                }
            )
        );
        assert_ne!(
            leaf(&path, LeafFields::Dir { mode: 0o755 }),
            leaf(&path, LeafFields::Dir { mode: 0o700 })
        );
    }
}
