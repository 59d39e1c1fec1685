//! Makes a sled flush durable. sled 0.34's `flush` writes its log with
//! `sync_file_range` on Linux (spacejam/sled#1452): the pages reach the device, but
//! neither the device's volatile write cache nor the file's size is flushed, so what a
//! flush returned for can be lost to a power cut or a kernel crash — and values over a
//! segment's quarter ("blobs", files of their own in `blobs/`) are written with no sync
//! at all. standin promises more: an event is on disk before any peer can pull it
//! (DESIGN.md, invariant 2), a passive's journal before it writes the folder.
//! `SledSync::sync`, called after every flush that is such a promise, `fdatasync`s each
//! blob file written since the last call (and the directory that names it), then
//! sled's data file: one device cache flush more per durability point.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{IoContext, Result};

/// sled's files in one database directory, to make its flushes durable.
#[derive(Clone)]
pub struct SledSync(Arc<Inner>);

struct Inner {
    data_path: PathBuf,
    data: File,
    blobs_dir: PathBuf,
    /// Durability points made through this handle.
    count: AtomicU64,
    /// A sync failed: every later one fails too, until the node is restarted. Linux
    /// reports a failed write-back once per open file; a later fdatasync that returns
    /// 0 would claim durable what sat on the lost pages (fail-stop, as PostgreSQL
    /// does since its "fsyncgate").
    failed: std::sync::atomic::AtomicBool,
    /// Blob files already synced, by name, with the length they had then (one still
    /// being written when listed is synced again once longer; those sled removed are
    /// forgotten).
    synced_blobs: Mutex<HashMap<OsString, u64>>,
}

impl SledSync {
    /// For the sled database in `dir` (open: its data file `dir/db` exists). The
    /// names sled created are made durable now: its `conf` (written unsynced), and
    /// the directory entries of `dir` and of its parent.
    pub(crate) fn open(dir: &Path) -> Result<SledSync> {
        let data_path = dir.join("db");
        let data = File::open(&data_path).at("open", &data_path)?;
        let conf = dir.join("conf");
        match File::open(&conf) {
            Ok(file) => crate::fsutil::sync_data(&file, &conf)?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error).at("open", &conf),
        }
        crate::fsutil::fsync_dir(dir)?;
        if let Some(parent) = dir.parent() {
            crate::fsutil::fsync_dir(parent)?;
        }
        Ok(SledSync(Arc::new(Inner {
            data_path,
            data,
            blobs_dir: dir.join("blobs"),
            count: AtomicU64::new(0),
            failed: std::sync::atomic::AtomicBool::new(false),
            synced_blobs: Mutex::new(HashMap::new()),
        })))
    }

    /// Make durable what sled's last `flush` wrote (call it right after).
    pub(crate) fn sync(&self) -> Result<()> {
        if self.0.failed.load(Ordering::Relaxed) {
            return Err(std::io::Error::other(
                "an earlier fdatasync of this store failed: what it wrote may be lost; \
                 restart the node (it checks its log when it opens)",
            ))
            .at("fdatasync", &self.0.data_path);
        }
        let synced = self
            .sync_blobs()
            .and_then(|()| crate::fsutil::sync_data(&self.0.data, &self.0.data_path));
        if synced.is_err() {
            self.0.failed.store(true, Ordering::Relaxed);
        }
        synced?;
        self.0.count.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Durability points made through this handle (and its clones).
    pub fn count(&self) -> u64 {
        self.0.count.load(Ordering::Relaxed)
    }

    fn sync_blobs(&self) -> Result<()> {
        let dir = &self.0.blobs_dir;
        let listing = match std::fs::read_dir(dir) {
            Ok(listing) => listing,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(error).at("list", dir),
        };
        let mut synced = self
            .0
            .synced_blobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut present = HashMap::new();
        let mut new = false;
        for item in listing {
            let item = item.at("list", dir)?;
            let (name, path) = (item.file_name(), item.path());
            let len = match item.metadata() {
                Ok(metadata) => metadata.len(),
                // Removed by sled's blob GC meanwhile: nothing to keep.
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => return Err(error).at("stat", &path),
            };
            if synced.get(&name) != Some(&len) {
                match File::open(&path) {
                    Ok(file) => crate::fsutil::sync_data(&file, &path)?,
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(error) => return Err(error).at("open", &path),
                }
                new |= !synced.contains_key(&name);
            }
            present.insert(name, len);
        }
        if new {
            crate::fsutil::fsync_dir(dir)?;
        }
        *synced = present;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_durable_flush_syncs_the_data_file_and_each_blob_once_written() {
        let dir = tempfile::tempdir().unwrap();
        let db_dir = dir.path().join("db");
        let db = crate::repository::open::open_sled(&db_dir).unwrap();
        let sync = SledSync::open(&db_dir).unwrap();
        db.insert(b"small", &b"value"[..]).unwrap();
        db.flush().unwrap();
        sync.sync().unwrap();
        assert_eq!(sync.count(), 1);
        // A value over a quarter of a segment goes to a blob file of its own, which
        // sled writes without any sync.
        db.insert(b"large", vec![7u8; 300 << 10]).unwrap();
        db.flush().unwrap();
        sync.sync().unwrap();
        let blobs: Vec<_> = std::fs::read_dir(db_dir.join("blobs"))
            .unwrap()
            .map(|item| item.unwrap())
            .collect();
        assert!(
            !blobs.is_empty(),
            "no blob file: the test does not test blobs"
        );
        let synced = sync.0.synced_blobs.lock().unwrap().clone();
        for blob in blobs {
            assert_eq!(
                synced.get(&blob.file_name()),
                Some(&blob.metadata().unwrap().len()),
                "{} not synced",
                blob.path().display()
            );
        }
    }

    #[test]
    fn a_repository_flush_and_a_log_append_are_durable() {
        let dir = tempfile::tempdir().unwrap();
        let repository = crate::repository::Repository::open(dir.path()).unwrap();
        let count = || repository.sled_sync().count();
        let before = count();
        repository.flush().unwrap();
        assert_eq!(
            count(),
            before + 1,
            "Repository::flush did not sync sled's file"
        );
        let before = count();
        let path = crate::path::RelPath::top(b"dir").unwrap();
        let change = crate::log::event::Change::Mkdir { path, mode: 0o755 };
        repository.record(1, vec![change]).unwrap();
        assert!(
            count() > before,
            "the log's append did not sync sled's file"
        );
        let before = count();
        repository.meta_set("test-key", Some(b"value")).unwrap();
        assert_eq!(count(), before + 1, "meta_set did not sync sled's file");
    }

    #[test]
    fn after_a_failed_sync_every_later_one_fails() {
        let dir = tempfile::tempdir().unwrap();
        let db_dir = dir.path().join("db");
        let db = crate::repository::open::open_sled(&db_dir).unwrap();
        let sync = SledSync::open(&db_dir).unwrap();
        sync.sync().unwrap();
        // A blobs "directory" that cannot be listed fails the next sync ...
        let blobs = db_dir.join("blobs");
        let aside = db_dir.join("blobs.aside");
        std::fs::rename(&blobs, &aside).unwrap();
        std::fs::write(&blobs, b"not a directory").unwrap();
        db.insert(b"key", &b"value"[..]).unwrap();
        db.flush().unwrap();
        assert!(sync.sync().is_err());
        // ... and every one after, though the cause is gone: what the failed one was
        // to make durable may be lost.
        std::fs::remove_file(&blobs).unwrap();
        std::fs::rename(&aside, &blobs).unwrap();
        let error = sync.sync().unwrap_err().to_string();
        assert!(error.contains("restart the node"), "{error}");
        assert_eq!(sync.count(), 1);
    }
}
