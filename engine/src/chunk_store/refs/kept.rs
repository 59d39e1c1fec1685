//! The links in `kept/` that no reference needs any more: the ones a replaced inode
//! leaves once its chunks are copied out and it is forgotten, unlinked off the batch's
//! path (`Reaper`), and the ones a crash left behind, swept when the store opens
//! (`sweep`).
//!
//! Unlinking a replaced large file's last link frees its blocks: ext4 took 76–136 ms
//! for the 37–279 inodes a batch of edits replaced (benches/results/edits.md), time
//! the next batch spent waiting. Such an inode is forgotten (its references dropped,
//! flushed) before it is handed over, and its only link is in `kept/`: no home in the
//! folder leads to it, so no guard can link it again, and its inode number cannot be
//! given to another file until the unlink. A crash before the unlink leaves the link
//! with no inode entry; `sweep` removes it at the next open.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::InodeKey;
use crate::error::{IoContext, Result};

/// The inode a `kept/` link's name stands for (`dev-ino`), if it is one of ours.
pub(super) fn key_of_name(name: &str) -> Option<InodeKey> {
    let (dev, ino) = name.split_once('-')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// Remove every link in `kept_dir` whose inode `known` does not name (forgotten before
/// a crash took the unlink). Returns how many went; one that cannot be removed is
/// named in a warning and left.
pub(super) fn sweep(kept_dir: &Path, known: impl Fn(InodeKey) -> bool) -> Result<u64> {
    let mut removed = 0;
    for entry in std::fs::read_dir(kept_dir).at("list", kept_dir)? {
        let entry = entry.at("list", kept_dir)?;
        let name = entry.file_name();
        let Some(key) = name.to_str().and_then(key_of_name) else {
            continue;
        };
        if known(key) {
            continue;
        }
        let path = entry.path();
        match std::fs::remove_file(&path) {
            Ok(()) => removed += 1,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            // It only holds space: the node starts, and says so.
            Err(error) => tracing::warn!(
                path = %path.display(),
                %error,
                "could not remove a replaced file nothing refers to any more"
            ),
        }
    }
    Ok(removed)
}

/// Unlinks forgotten inodes' `kept/` links on a thread of its own: one batch's links
/// a thread, each joined before the next starts, so the space of replaced files is
/// never more than one batch behind (a nearly full disk) and a batch never waits for
/// its own.
#[derive(Default)]
pub(crate) struct Reaper {
    running: Mutex<Option<JoinHandle<()>>>,
}

impl Reaper {
    /// Unlink `links` (each the last link of a forgotten inode) soon, not now, once the
    /// links handed over before are unlinked. Where no thread can be started, now.
    pub fn unlink(&self, links: Vec<PathBuf>) {
        if links.is_empty() {
            return;
        }
        let mut running = self
            .running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        join(running.take());
        let links = Arc::new(links);
        let theirs = links.clone();
        match std::thread::Builder::new()
            .name("standin-reaper".to_string())
            .spawn(move || unlink_all(&theirs))
        {
            Ok(thread) => *running = Some(thread),
            Err(_) => unlink_all(&links),
        }
    }

    /// Wait until every link handed over so far is unlinked.
    pub fn wait(&self) {
        join(
            self.running
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take(),
        );
    }
}

/// A thread that panicked unlinked what it could; the rest waits for the next open's
/// `sweep`.
fn join(thread: Option<JoinHandle<()>>) {
    if let Some(thread) = thread {
        let _ = thread.join();
    }
}

impl Drop for Reaper {
    /// The links handed over are unlinked before the store goes: a store opened again
    /// in the same process must not find the last one's still being unlinked (its
    /// sweep could free an inode number the old thread's unlink then hits again).
    fn drop(&mut self) {
        self.wait();
    }
}

/// A link that cannot be removed stays until the next open's `sweep`: nothing names
/// its inode, so it only holds space.
fn unlink_all(links: &[PathBuf]) {
    for link in links {
        match std::fs::remove_file(link) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => tracing::warn!(
                path = %link.display(),
                %error,
                "could not free a replaced file kept by reference; it is removed at the next start"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{key_of_name, sweep, Reaper};

    #[test]
    fn a_link_is_named_by_its_device_and_inode() {
        assert_eq!(key_of_name("2049-131073"), Some((2049, 131073)));
        assert_eq!(key_of_name("2049"), None);
        assert_eq!(key_of_name("x-1"), None);
        assert_eq!(key_of_name(".tmp-1-2"), None);
    }

    #[test]
    fn the_sweep_removes_only_links_of_inodes_nothing_names() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["1-10", "1-11", "other"] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        // One that cannot be removed as a file: named in a warning, the open goes on.
        std::fs::create_dir(dir.path().join("1-12")).unwrap();
        let removed = sweep(dir.path(), |key| key == (1, 10)).unwrap();
        assert_eq!(removed, 1);
        assert!(dir.path().join("1-12").exists());
        assert!(dir.path().join("1-10").exists(), "named: kept");
        assert!(!dir.path().join("1-11").exists(), "forgotten: removed");
        assert!(dir.path().join("other").exists(), "not ours: left alone");
    }

    #[test]
    fn the_reaper_unlinks_what_it_is_handed_and_says_when_it_is_done() {
        let dir = tempfile::tempdir().unwrap();
        let links: Vec<_> = (0..50)
            .map(|at| {
                let path = dir.path().join(format!("1-{at}"));
                std::fs::write(&path, b"x").unwrap();
                path
            })
            .collect();
        let reaper = Reaper::default();
        reaper.unlink(links[..25].to_vec());
        reaper.unlink(links[25..].to_vec());
        reaper.unlink(vec![dir.path().join("gone-already")]);
        reaper.wait();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_reaper_dropped_has_unlinked_everything_it_was_handed() {
        let dir = tempfile::tempdir().unwrap();
        let reaper = Reaper::default();
        for at in 0..20 {
            let path = dir.path().join(format!("1-{at}"));
            std::fs::write(&path, vec![0u8; 1 << 16]).unwrap();
            reaper.unlink(vec![path]);
        }
        drop(reaper);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
