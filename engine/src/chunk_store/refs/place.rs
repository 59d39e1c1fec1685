//! What a reference is made of: an inode's identity (`InodeKey`) and a range of it
//! (`RefLoc`), their encodings in the sled trees (`RefTrees`), and opening an inode at
//! a path only if it is still that inode.

use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::error::{IoContext, Result};

/// A file's identity: device and inode number.
pub type InodeKey = (u64, u64);

/// Where a referenced chunk is: a range of an inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RefLoc {
    pub key: InodeKey,
    pub offset: u64,
    pub len: u32,
}

impl RefLoc {
    pub(super) fn to_bytes(self) -> [u8; 28] {
        let mut out = [0u8; 28];
        out[..8].copy_from_slice(&self.key.0.to_le_bytes());
        out[8..16].copy_from_slice(&self.key.1.to_le_bytes());
        out[16..24].copy_from_slice(&self.offset.to_le_bytes());
        out[24..].copy_from_slice(&self.len.to_le_bytes());
        out
    }

    pub(super) fn from_bytes(bytes: &[u8]) -> Option<RefLoc> {
        if bytes.len() != 28 {
            return None;
        }
        let word = |at: usize| bytes[at..at + 8].try_into().ok().map(u64::from_le_bytes);
        Some(RefLoc {
            key: (word(0)?, word(8)?),
            offset: word(16)?,
            len: u32::from_le_bytes(bytes[24..].try_into().ok()?),
        })
    }
}

pub(super) fn key_bytes(key: InodeKey) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&key.0.to_be_bytes());
    out[8..].copy_from_slice(&key.1.to_be_bytes());
    out
}

/// The sled trees the references are kept in.
pub struct RefTrees {
    pub references: sled::Tree,
    pub inodes: sled::Tree,
    pub by_inode: sled::Tree,
}

impl RefTrees {
    /// The trees of the store whose database is `db`.
    pub fn open(db: &sled::Db) -> Result<RefTrees> {
        Ok(RefTrees {
            references: db.open_tree("chunk_refs")?,
            inodes: db.open_tree("ref_inodes")?,
            by_inode: db.open_tree("ref_by_inode")?,
        })
    }
}

/// `path` opened for reading if it is the inode `key` (never through a symlink).
pub fn open_inode(path: &Path, key: InodeKey) -> Option<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    let metadata = file.metadata().ok()?;
    (metadata.is_file() && metadata.dev() == key.0 && metadata.ino() == key.1).then_some(file)
}

/// The identity of an open file.
pub(crate) fn key_of(file: &File, path: &Path) -> Result<InodeKey> {
    let metadata = file.metadata().at("stat", path)?;
    Ok((metadata.dev(), metadata.ino()))
}

/// The inode read last, kept open: a large file's chunks are read one after another
/// (staging a new version, copying chunks out), and opening its home for each one cost
/// three system calls a chunk where one `lstat` shows the home still holds that inode.
#[derive(Default)]
pub(super) struct LastOpened {
    last: std::sync::Mutex<Option<(InodeKey, std::path::PathBuf, std::sync::Arc<File>)>>,
}

impl LastOpened {
    /// `open_inode(path, key)`, with the same answer: `None` unless `path` (never
    /// through a symlink) is the inode `key` now.
    pub fn open(&self, path: &Path, key: InodeKey) -> Option<std::sync::Arc<File>> {
        let lock = || {
            self.last
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        };
        let cached = lock()
            .as_ref()
            .filter(|(cached_key, cached_path, _)| *cached_key == key && cached_path == path)
            .map(|(_, _, file)| file.clone());
        if let Some(file) = cached {
            let metadata = std::fs::symlink_metadata(path).ok()?;
            return (metadata.is_file() && (metadata.dev(), metadata.ino()) == key).then_some(file);
        }
        let file = std::sync::Arc::new(open_inode(path, key)?);
        *lock() = Some((key, path.to_path_buf(), file.clone()));
        Some(file)
    }

    /// Let go of `key` if it is the one kept open (it is being forgotten: the file may
    /// be unlinked next, and an open descriptor would keep its space).
    pub fn forget(&self, key: InodeKey) {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if last.as_ref().is_some_and(|(cached, _, _)| *cached == key) {
            *last = None;
        }
    }
}
