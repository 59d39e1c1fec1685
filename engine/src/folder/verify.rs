//! Verify: recompute the folder digest from disk and compare it with the log head,
//! naming the first path where the folder and the index part ways.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::Result;
use crate::folder::digest::{leaf, FolderDigest, LeafFields};
use crate::folder::meta::Meta;
use crate::folder::scan::disk::{walk, DiskEntry};
use crate::hash::Hash;
use crate::log::Head;
use crate::path::RelPath;
use crate::replay::hash_file;
use crate::repository::Repository;

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
    /// Live SQLite databases whose bytes were not compared (see `verify_live_folder`).
    pub live_databases: Vec<String>,
}

impl VerifyReport {
    pub fn matches(&self) -> bool {
        self.first_difference.is_none() && self.disk_digest == self.head.digest
    }
}

/// What a path holds, kept to describe it in a `Difference` (only then formatted: a
/// description per entry costs a fifth of a verify of many small files).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    File { mode: u32, size: u64, content: Hash },
    Dir { mode: u32 },
    Symlink { target: Vec<u8> },
}

impl Seen {
    /// The fields its digest leaf covers.
    pub fn leaf_fields(&self) -> LeafFields<'_> {
        match self {
            Seen::File {
                mode,
                size,
                content,
            } => LeafFields::File {
                mode: *mode,
                size: *size,
                content,
            },
            Seen::Dir { mode } => LeafFields::Dir { mode: *mode },
            Seen::Symlink { target } => LeafFields::Symlink { target },
        }
    }

    /// `file (4096 bytes, mode 644, content 0123456789ab)`, `directory (mode 755)`, ...
    pub fn describe(&self) -> String {
        match self {
            Seen::File {
                mode,
                size,
                content,
            } => format!(
                "file ({size} bytes, mode {mode:o}, content {})",
                &content.to_hex()[..12]
            ),
            Seen::Dir { mode } => format!("directory (mode {mode:o})"),
            Seen::Symlink { target } => {
                format!("symlink to {}", String::from_utf8_lossy(target))
            }
        }
    }
}

/// The leaf of every entry on disk (reading every file), in path order.
pub fn disk_leaves(root: &Path) -> Result<BTreeMap<RelPath, (Hash, Seen)>> {
    Ok(disk_leaves_and_metas(root)?.0)
}

/// Each entry's leaf and what it holds, by path.
type Leaves = BTreeMap<RelPath, (Hash, Seen)>;

/// `disk_leaves`, and each entry's metadata as on disk.
fn disk_leaves_and_metas(root: &Path) -> Result<(Leaves, BTreeMap<RelPath, Meta>)> {
    let mut tree = walk(root, None)?;
    let metas = std::mem::take(&mut tree.metas);
    // A database's companions are never recorded (see `sqlite`).
    crate::folder::scan::disk::drop_companions(root, &mut tree.entries);
    let entries: Vec<(RelPath, DiskEntry)> = tree.entries.into_iter().collect();
    let contents = hash_files(root, &entries)?;
    let mut out = BTreeMap::new();
    for ((path, entry), content) in entries.into_iter().zip(contents) {
        let (hash, seen) = match entry {
            DiskEntry::File { mode, size, .. } => {
                let content = content.unwrap_or_default();
                (
                    leaf(
                        &path,
                        LeafFields::File {
                            mode,
                            size,
                            content: &content,
                        },
                    ),
                    Seen::File {
                        mode,
                        size,
                        content,
                    },
                )
            }
            DiskEntry::Dir { mode } => (leaf(&path, LeafFields::Dir { mode }), Seen::Dir { mode }),
            DiskEntry::Symlink { target } => (
                leaf(&path, LeafFields::Symlink { target: &target }),
                Seen::Symlink { target },
            ),
        };
        out.insert(path, (hash, seen));
    }
    Ok((out, metas))
}

/// The content hash of every file among `entries` (`None` for the others), in order.
/// Reading small files is the kernel's per-file cost, so the files are shared out
/// among a few threads (as many as there are cores, at most 4).
fn hash_files(root: &Path, entries: &[(RelPath, DiskEntry)]) -> Result<Vec<Option<Hash>>> {
    let hash_one = |(path, entry): &(RelPath, DiskEntry)| -> Result<Option<Hash>> {
        match entry {
            DiskEntry::File { .. } => {
                let _plain = crate::folder::read::sqlite::plain_descriptor_guard();
                hash_file(&path.under(root)).map(Some)
            }
            _ => Ok(None),
        }
    };
    let threads = std::thread::available_parallelism()
        .map(|count| count.get())
        .unwrap_or(1)
        .min(4);
    if threads < 2 || entries.len() < 256 {
        return entries.iter().map(hash_one).collect();
    }
    let share = entries.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = entries
            .chunks(share)
            .map(|part| scope.spawn(move || part.iter().map(hash_one).collect::<Result<Vec<_>>>()))
            .collect();
        let mut out = Vec::with_capacity(entries.len());
        for worker in workers {
            out.extend(worker.join().expect("a hashing thread panicked")?);
        }
        Ok(out)
    })
}

/// Compare the folder on disk with the repository's head.
pub fn verify_folder(root: &Path, repository: &Repository) -> Result<VerifyReport> {
    verify(root, repository, false)
}

/// `verify_folder` on a node whose applications are running (the active): a SQLite
/// database is recorded as a committed state taken through SQLite, which is not the
/// bytes on disk (newer pages sit in its `-wal`, later commits changed it), so a file
/// that is a database where the index holds a file counts as that file, and is named
/// in `live_databases`. Every other path is compared as `verify_folder` does; a
/// passive's databases are compared byte for byte.
pub fn verify_live_folder(root: &Path, repository: &Repository) -> Result<VerifyReport> {
    verify(root, repository, true)
}

fn verify(root: &Path, repository: &Repository, live: bool) -> Result<VerifyReport> {
    let (head, expected, expected_metas) = {
        let index = repository.lock_index();
        let metas: BTreeMap<RelPath, (Meta, bool)> = index
            .iter_with_meta()
            .filter_map(|(path, entry, meta)| {
                let symlink = matches!(entry, crate::folder::index::Entry::Symlink { .. });
                Some((path.clone(), (meta?.clone(), symlink)))
            })
            .collect();
        let expected = index
            .iter()
            .map(|(path, entry)| {
                let seen = match entry {
                    crate::folder::index::Entry::File {
                        mode,
                        size,
                        content,
                        ..
                    } => Seen::File {
                        mode: *mode,
                        size: *size,
                        content: *content,
                    },
                    crate::folder::index::Entry::Dir { mode } => Seen::Dir { mode: *mode },
                    crate::folder::index::Entry::Symlink { target } => Seen::Symlink {
                        target: target.clone(),
                    },
                };
                (path.clone(), (entry.leaf(path), seen))
            })
            .collect::<BTreeMap<RelPath, (Hash, Seen)>>();
        (repository.head(), expected, metas)
    };
    let (mut found, disk_metas) = disk_leaves_and_metas(root)?;
    let mut live_databases = Vec::new();
    if live {
        for (path, (want_hash, want_seen)) in &expected {
            let Some((have_hash, have_seen)) = found.get_mut(path) else {
                continue;
            };
            if have_hash != want_hash
                && matches!(
                    (&*have_seen, want_seen),
                    (Seen::File { .. }, Seen::File { .. })
                )
                && crate::folder::read::sqlite::is_database(root, &path.under(root))
            {
                *have_hash = *want_hash;
                *have_seen = want_seen.clone();
                live_databases.push(path.to_string());
            }
        }
    }
    let mut digest = FolderDigest::default();
    for (hash, _) in found.values() {
        digest.add(hash);
    }
    // The metadata of the entries that have it recorded, as this node applies it.
    let options = repository.meta_options();
    let mut meta_difference = None;
    for (path, (recorded, symlink)) in &expected_metas {
        let Some(mut disk) = disk_metas.get(path).cloned() else {
            continue;
        };
        let Some((plain, seen)) = found.get(path) else {
            continue;
        };
        crate::folder::meta::align_to_record(&mut disk, recorded, options);
        // Recorded with its metadata: one leaf for both (`digest::leaf_with_meta`).
        digest.remove(plain);
        digest.add(&crate::folder::digest::leaf_with_meta(
            path,
            seen.leaf_fields(),
            &disk,
        ));
        let have = disk.leaf(path, !symlink);
        if meta_difference.is_none() && have != recorded.leaf(path, !symlink) {
            meta_difference = Some(Difference {
                path: path.to_string(),
                expected: recorded.describe(),
                found: disk.describe(),
            });
        }
    }
    // Hard links: the disk's groups (one inode) among the files recorded with their
    // metadata, one leaf each (`digest::links_leaf`), as the index has its groups.
    let mut by_inode: BTreeMap<u64, Vec<&RelPath>> = BTreeMap::new();
    for path in expected_metas.keys() {
        if let (Some(disk), Some((_, Seen::File { .. }))) = (disk_metas.get(path), found.get(path))
        {
            if disk.link != 0 {
                by_inode.entry(disk.link).or_default().push(path);
            }
        }
    }
    for names in by_inode.values().filter(|names| names.len() >= 2) {
        digest.add(&crate::folder::digest::links_leaf(names.iter().copied()));
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
                    .map(|pair| pair.1.describe())
                    .unwrap_or_else(|| "nothing".to_string()),
                found: have
                    .map(|pair| pair.1.describe())
                    .unwrap_or_else(|| "nothing".to_string()),
            });
            break;
        }
    }
    if first_difference.is_none() {
        first_difference = meta_difference;
    }
    if first_difference.is_none() {
        // Hard links: the recorded names of one file (one link value and the same
        // content: a link value from another node's numbering can repeat) are one
        // file on disk.
        let recorded: BTreeMap<RelPath, Meta> = expected_metas
            .iter()
            .filter_map(|(path, (meta, _))| {
                let Some((_, Seen::File { content, .. })) = expected.get(path) else {
                    return None;
                };
                let mut keyed = meta.clone();
                if keyed.link != 0 {
                    let mut hasher = blake3::Hasher::new();
                    hasher.update(&keyed.link.to_le_bytes());
                    hasher.update(&content.0);
                    let digest = hasher.finalize();
                    let bytes: [u8; 8] = digest.as_bytes()[..8].try_into().unwrap_or([1; 8]);
                    keyed.link = u64::from_le_bytes(bytes).max(1);
                }
                Some((path.clone(), keyed))
            })
            .collect();
        if let Some((path, expected, found)) =
            crate::folder::links::partition_difference(&recorded, &disk_metas)
        {
            first_difference = Some(Difference {
                path: path.to_string(),
                expected,
                found,
            });
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
        live_databases,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn disk_leaves_hash_every_file_in_order_across_threads() {
        let root = tempfile::tempdir().unwrap();
        // More than the threshold at which the files are shared out among threads.
        for dir in 0..3 {
            std::fs::create_dir(root.path().join(format!("d{dir}"))).unwrap();
            for file in 0..150 {
                let path = root.path().join(format!("d{dir}/f{file}"));
                std::fs::write(&path, format!("content {dir} {file}")).unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
            }
        }
        std::os::unix::fs::symlink("d0/f0", root.path().join("link")).unwrap();
        let leaves = disk_leaves(root.path()).unwrap();
        assert_eq!(leaves.len(), 3 + 450 + 1);
        for (path, (_, seen)) in &leaves {
            let full = path.under(root.path());
            match seen {
                Seen::File {
                    mode,
                    size,
                    content,
                } => {
                    assert_eq!(*content, hash_file(&full).unwrap(), "{path}");
                    assert_eq!(*size, std::fs::metadata(&full).unwrap().len());
                    assert_eq!(*mode & 0o777, 0o640);
                    assert!(seen
                        .describe()
                        .starts_with(&format!("file ({size} bytes, mode ")));
                }
                Seen::Dir { .. } => assert!(seen.describe().starts_with("directory (mode ")),
                Seen::Symlink { .. } => assert_eq!(seen.describe(), "symlink to d0/f0"),
            }
        }
        // Each leaf is the one its own fields give (the hash lines up with its path).
        for (path, (hash, seen)) in &leaves {
            assert_eq!(*hash, leaf(path, seen.leaf_fields()), "{path}");
        }
    }
}
