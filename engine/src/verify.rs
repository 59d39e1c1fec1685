//! Verify: recompute the folder digest from disk and compare it with the log head,
//! naming the first path where the folder and the index part ways.

use std::collections::BTreeMap;
use std::path::Path;

use crate::digest::{leaf, FolderDigest, LeafFields};
use crate::error::Result;
use crate::hash::Hash;
use crate::log::Head;
use crate::path::RelPath;
use crate::replay::hash_file;
use crate::repository::Repository;
use crate::scan::{walk, DiskEntry};

/// The first path where disk and index disagree.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Difference {
    pub path: String,
    /// What the index (the log head) says is there: `file`, `directory`, `symlink` or `nothing`.
    pub expected: String,
    /// What is on disk, in the same words.
    pub found: String,
}

/// The outcome of a verification.
#[derive(Clone, Debug, serde::Serialize)]
pub struct VerifyReport {
    pub head: Head,
    /// The digest recomputed from the files on disk.
    pub disk_digest: Hash,
    pub entries_checked: u64,
    /// `None` when the folder matches the head.
    pub first_difference: Option<Difference>,
}

impl VerifyReport {
    pub fn matches(&self) -> bool {
        self.first_difference.is_none() && self.disk_digest == self.head.digest
    }
}

/// The leaf of every entry on disk (reading every file), in path order.
pub fn disk_leaves(root: &Path) -> Result<BTreeMap<RelPath, (Hash, String)>> {
    let tree = walk(root, None)?;
    let mut out = BTreeMap::new();
    for (path, entry) in tree.entries {
        let (hash, description) = match &entry {
            DiskEntry::File { mode, size, .. } => {
                let content = hash_file(&path.under(root))?;
                (
                    leaf(
                        &path,
                        LeafFields::File {
                            mode: *mode,
                            size: *size,
                            content: &content,
                        },
                    ),
                    format!(
                        "file ({size} bytes, mode {mode:o}, content {})",
                        &content.to_hex()[..12]
                    ),
                )
            }
            DiskEntry::Dir { mode } => (
                leaf(&path, LeafFields::Dir { mode: *mode }),
                format!("directory (mode {mode:o})"),
            ),
            DiskEntry::Symlink { target } => (
                leaf(&path, LeafFields::Symlink { target }),
                format!("symlink to {}", String::from_utf8_lossy(target)),
            ),
        };
        out.insert(path, (hash, description));
    }
    Ok(out)
}

/// The folder digest recomputed from disk.
pub fn digest_from_disk(root: &Path) -> Result<Hash> {
    let mut digest = FolderDigest::default();
    for (hash, _) in disk_leaves(root)?.values() {
        digest.add(hash);
    }
    Ok(digest.to_hash())
}

/// Compare the folder on disk with the repository's head.
pub fn verify_folder(root: &Path, repository: &Repository) -> Result<VerifyReport> {
    let (head, expected): (Head, BTreeMap<RelPath, (Hash, String)>) = {
        let index = repository.lock_index();
        let expected = index
            .iter()
            .map(|(path, entry)| {
                let description = match entry {
                    crate::index::Entry::File {
                        mode,
                        size,
                        content,
                        ..
                    } => {
                        format!(
                            "file ({size} bytes, mode {mode:o}, content {})",
                            &content.to_hex()[..12]
                        )
                    }
                    crate::index::Entry::Dir { mode } => format!("directory (mode {mode:o})"),
                    crate::index::Entry::Symlink { target } => {
                        format!("symlink to {}", String::from_utf8_lossy(target))
                    }
                };
                (path.clone(), (entry.leaf(path), description))
            })
            .collect();
        (repository.head(), expected)
    };
    let found = disk_leaves(root)?;
    let mut digest = FolderDigest::default();
    for (hash, _) in found.values() {
        digest.add(hash);
    }
    let mut first_difference = None;
    let mut paths: Vec<&RelPath> = expected.keys().chain(found.keys()).collect();
    paths.sort();
    paths.dedup();
    for path in paths {
        let want = expected.get(path);
        let have = found.get(path);
        if want.map(|pair| pair.0) != have.map(|pair| pair.0) {
            first_difference = Some(Difference {
                path: path.to_string(),
                expected: want
                    .map(|pair| pair.1.clone())
                    .unwrap_or_else(|| "nothing".to_string()),
                found: have
                    .map(|pair| pair.1.clone())
                    .unwrap_or_else(|| "nothing".to_string()),
            });
            break;
        }
    }
    if first_difference.is_none() && digest.to_hash() != head.digest {
        // The index matches the disk but not the log head: the index is stale.
        first_difference = Some(Difference {
            path: "-".to_string(),
            expected: format!("digest {}", head.digest),
            found: format!("digest {}", digest.to_hash()),
        });
    }
    Ok(VerifyReport {
        head,
        disk_digest: digest.to_hash(),
        entries_checked: found.len() as u64,
        first_difference,
    })
}
