//! Property: any sequence of folder operations, captured (in several batches, with
//! renames recorded as renames) and replayed into an empty folder, gives the same tree
//! and the same digest.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use proptest::prelude::*;
use standin_engine::{Change, RelPath};

use crate::support::{replicate, snapshot, Node};

#[derive(Clone, Debug)]
enum Operation {
    Create {
        dir: u8,
        name: u8,
        size: usize,
        seed: u8,
    },
    Overwrite {
        target: u8,
        size: usize,
        seed: u8,
    },
    Append {
        target: u8,
        size: usize,
    },
    Truncate {
        target: u8,
        to: usize,
    },
    Mkdir {
        dir: u8,
        name: u8,
    },
    Remove {
        target: u8,
    },
    Rename {
        target: u8,
        dir: u8,
        name: u8,
    },
    Chmod {
        target: u8,
        mode: u32,
    },
    Symlink {
        dir: u8,
        name: u8,
        target: u8,
    },
    /// Give an entry to another owner (as root; nothing otherwise).
    Chown {
        target: u8,
        owner: u32,
    },
    SetXattr {
        target: u8,
        value: u8,
    },
    HardLink {
        target: u8,
        dir: u8,
        name: u8,
    },
    /// Set an entry's mtime (a symlink's own).
    Touch {
        target: u8,
        seconds: u32,
    },
    Capture,
}

fn operation() -> impl Strategy<Value = Operation> {
    // Sizes straddle the small-file limit (16 KiB) and reach several chunks.
    let size = prop_oneof![0usize..64, 1000usize..20_000, 60_000usize..400_000];
    prop_oneof![
        4 => (any::<u8>(), any::<u8>(), size.clone(), any::<u8>())
            .prop_map(|(dir, name, size, seed)| Operation::Create { dir, name, size, seed }),
        2 => (any::<u8>(), size.clone(), any::<u8>()).prop_map(|(target, size, seed)| Operation::Overwrite { target, size, seed }),
        2 => (any::<u8>(), 1usize..5000).prop_map(|(target, size)| Operation::Append { target, size }),
        1 => (any::<u8>(), 0usize..100).prop_map(|(target, to)| Operation::Truncate { target, to }),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(dir, name)| Operation::Mkdir { dir, name }),
        1 => any::<u8>().prop_map(|target| Operation::Remove { target }),
        2 => (any::<u8>(), any::<u8>(), any::<u8>()).prop_map(|(target, dir, name)| Operation::Rename { target, dir, name }),
        1 => (any::<u8>(), prop::sample::select(vec![0o644u32, 0o600, 0o755, 0o640, 0o700]))
            .prop_map(|(target, mode)| Operation::Chmod { target, mode }),
        1 => (any::<u8>(), any::<u8>(), any::<u8>()).prop_map(|(dir, name, target)| Operation::Symlink { dir, name, target }),
        1 => (any::<u8>(), prop::sample::select(vec![0u32, 1001, 1002, 65534]))
            .prop_map(|(target, owner)| Operation::Chown { target, owner }),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(target, value)| Operation::SetXattr { target, value }),
        1 => (any::<u8>(), any::<u8>(), any::<u8>()).prop_map(|(target, dir, name)| Operation::HardLink { target, dir, name }),
        1 => (any::<u8>(), 1_000_000_000u32..1_700_000_000).prop_map(|(target, seconds)| Operation::Touch { target, seconds }),
        2 => Just(Operation::Capture),
    ]
}

/// Every path in the folder, sorted, optionally only directories.
fn entries(root: &Path, dirs_only: bool) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for item in std::fs::read_dir(&dir).unwrap() {
            let path = item.unwrap().path();
            let metadata = std::fs::symlink_metadata(&path).unwrap();
            if metadata.is_dir() {
                stack.push(path.clone());
            }
            if !dirs_only || metadata.is_dir() {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn pick<T: Clone>(items: &[T], selector: u8) -> Option<T> {
    if items.is_empty() {
        None
    } else {
        Some(items[selector as usize % items.len()].clone())
    }
}

fn directory(root: &Path, selector: u8) -> std::path::PathBuf {
    let mut dirs = entries(root, true);
    dirs.push(root.to_path_buf());
    pick(&dirs, selector).unwrap()
}

fn content(size: usize, seed: u8) -> Vec<u8> {
    // Mostly varied bytes, so chunk boundaries are content-defined.
    (0..size)
        .map(|index| (index as u32).wrapping_mul(2654435761).to_le_bytes()[1] ^ seed)
        .collect()
}

fn is_file(path: &Path) -> bool {
    std::fs::symlink_metadata(path)
        .map(|metadata| metadata.is_file())
        .unwrap_or(false)
}

fn run(node: &Node, operation: &Operation) {
    let root = &node.folder;
    let files: Vec<_> = entries(root, false)
        .into_iter()
        .filter(|path| is_file(path))
        .collect();
    let everything = entries(root, false);
    match operation {
        Operation::Create {
            dir,
            name,
            size,
            seed,
        } => {
            let path = directory(root, *dir).join(format!("f{}", name % 16));
            if !path.exists() {
                std::fs::write(path, content(*size, *seed)).unwrap();
            }
        }
        Operation::Overwrite { target, size, seed } => {
            if let Some(path) = pick(&files, *target) {
                std::fs::write(path, content(*size, *seed)).unwrap();
            }
        }
        Operation::Append { target, size } => {
            if let Some(path) = pick(&files, *target) {
                use std::io::Write;
                let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
                file.write_all(&content(*size, 7)).unwrap();
            }
        }
        Operation::Truncate { target, to } => {
            if let Some(path) = pick(&files, *target) {
                let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
                file.set_len(*to as u64).unwrap();
            }
        }
        Operation::Mkdir { dir, name } => {
            let path = directory(root, *dir).join(format!("d{}", name % 8));
            if !path.exists() {
                std::fs::create_dir(path).unwrap();
            }
        }
        Operation::Remove { target } => {
            if let Some(path) = pick(&everything, *target) {
                let metadata = std::fs::symlink_metadata(&path).unwrap();
                if metadata.is_dir() {
                    std::fs::remove_dir_all(path).unwrap();
                } else {
                    std::fs::remove_file(path).unwrap();
                }
            }
        }
        Operation::Rename { target, dir, name } => {
            let Some(from) = pick(&everything, *target) else {
                return;
            };
            let to = directory(root, *dir).join(format!("r{}", name % 8));
            if to.starts_with(&from) || std::fs::symlink_metadata(&to).is_ok() {
                return;
            }
            // Record everything first so the index knows `from`, then record the
            // rename itself as the watcher's rename hint would.
            node.capture();
            std::fs::rename(&from, &to).unwrap();
            let relative = |path: &Path| RelPath::from_fs(root, path).unwrap();
            node.repository
                .record(
                    1,
                    vec![Change::Rename {
                        from: relative(&from),
                        to: relative(&to),
                    }],
                )
                .unwrap();
        }
        Operation::Chmod { target, mode } => {
            if let Some(path) = pick(&everything, *target) {
                if !std::fs::symlink_metadata(&path)
                    .unwrap()
                    .file_type()
                    .is_symlink()
                {
                    let mode = if path.is_dir() { mode | 0o700 } else { *mode };
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
                }
            }
        }
        Operation::Symlink { dir, name, target } => {
            let path = directory(root, *dir).join(format!("l{}", name % 4));
            if std::fs::symlink_metadata(&path).is_err() {
                let target = ["f1", "../elsewhere", "/etc/passwd", "d0/f2"][*target as usize % 4];
                std::os::unix::fs::symlink(target, path).unwrap();
            }
        }
        Operation::Chown { target, owner } => {
            if let Some(path) = pick(&everything, *target) {
                if standin_engine::folder::meta::can_chown() {
                    std::os::unix::fs::lchown(path, Some(*owner), Some(*owner)).unwrap();
                }
            }
        }
        Operation::SetXattr { target, value } => {
            if let Some(path) = pick(&files, *target) {
                xattr::set(path, "user.tag", &[b'v', *value]).unwrap();
            }
        }
        Operation::HardLink { target, dir, name } => {
            if let Some(path) = pick(&files, *target) {
                let link = directory(root, *dir).join(format!("h{}", name % 4));
                if std::fs::symlink_metadata(&link).is_err() {
                    std::fs::hard_link(path, link).unwrap();
                }
            }
        }
        Operation::Touch { target, seconds } => {
            if let Some(path) = pick(&everything, *target) {
                standin_engine::folder::meta::set_mtime(&path, *seconds as i64 * 1_000_000_000)
                    .unwrap();
            }
        }
        Operation::Capture => {
            node.capture();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn captured_and_replayed_folders_are_identical(operations in prop::collection::vec(operation(), 1..40), batch in 1usize..8) {
        let active = Node::new();
        let passive = Node::new();
        for operation in &operations {
            run(&active, operation);
        }
        active.capture();
        replicate(&active, &passive, batch);
        prop_assert_eq!(snapshot(&active.folder), snapshot(&passive.folder));
        // Owners, xattrs, times and hard links too (invariant 11).
        prop_assert_eq!(crate::fidelity::walk_all(&active.folder), crate::fidelity::walk_all(&passive.folder));
        prop_assert_eq!(crate::fidelity::link_groups(&active.folder), crate::fidelity::link_groups(&passive.folder));
        active.assert_verified();
        passive.assert_verified();
        prop_assert_eq!(active.repository.head(), passive.repository.head());
    }
}

/// A second capture of an unchanged folder records nothing; replaying into a reopened
/// repository resumes where it stopped.
#[test]
fn unchanged_folder_records_nothing_and_reopen_resumes() {
    let active = Node::new();
    std::fs::create_dir_all(active.folder.join("a/b")).unwrap();
    std::fs::write(active.folder.join("a/b/c"), b"hello").unwrap();
    // One group: its `Group` event, two directories and a file.
    assert_eq!(active.capture().len(), 4);
    // Within the "racily clean" window the content is compared, and found equal.
    assert!(active.capture().is_empty());
    let active = active.reopen();
    assert!(active.capture().is_empty());
    let passive = Node::new();
    replicate(&active, &passive, 1);
    let passive = passive.reopen();
    std::fs::write(active.folder.join("a/b/d"), b"more").unwrap();
    active.capture();
    replicate(&active, &passive, 10);
    passive.assert_verified();
    assert_eq!(snapshot(&active.folder), snapshot(&passive.folder));
}

/// Replay leaves most index saves to an idle moment: `save_index_if_dirty` then saves
/// what the batches changed, once; a reopened passive resumes from it.
#[test]
fn an_idle_passive_saves_the_index_replay_left_unsaved() {
    let active = Node::new();
    std::fs::create_dir(active.folder.join("d")).unwrap();
    std::fs::write(active.folder.join("d/first"), b"1").unwrap();
    active.capture();
    let passive = Node::new();
    replicate(&active, &passive, 10);
    passive.repository.save_index_if_dirty().unwrap();
    for name in ["second", "third"] {
        std::fs::write(active.folder.join("d").join(name), name).unwrap();
    }
    active.capture();
    replicate(&active, &passive, 10);
    // Three paths changed since the last save (within replay's 10 s): two files and
    // the time of their directory.
    assert_eq!(passive.repository.save_index_if_dirty().unwrap(), 3);
    assert_eq!(passive.repository.save_index_if_dirty().unwrap(), 0);
    let passive = passive.reopen();
    passive.assert_verified();
    assert_eq!(snapshot(&active.folder), snapshot(&passive.folder));
}
