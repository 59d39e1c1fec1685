//! Paths of the folder that standin cannot replicate — a socket, FIFO or device, a
//! path too long for the kernel's path calls, a directory it cannot list or watch —
//! each named once in a warning (not on every scan), kept in a list that `status`
//! shows and `/metrics` counts, and skipped while everything else replicates
//! (invariant 11: one bad path never stops capture).
//!
//! The list is process-wide and keyed by full path, so nodes of one process (tests)
//! each see their own folder's entries (`under`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

static SKIPPED: Mutex<BTreeMap<PathBuf, String>> = Mutex::new(BTreeMap::new());

/// How many entries the list holds (read without the lock on the common path).
static COUNT: AtomicUsize = AtomicUsize::new(0);

fn list() -> std::sync::MutexGuard<'static, BTreeMap<PathBuf, String>> {
    SKIPPED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Name `full` as not replicated for `reason`: warned the first time only.
pub fn note(full: &Path, reason: &str) {
    let mut skipped = list();
    if skipped.get(full).map(String::as_str) == Some(reason) {
        return;
    }
    tracing::warn!(path = %full.display(), reason, "not replicated: skipping this path (named in status)");
    skipped.insert(full.to_path_buf(), reason.to_string());
    COUNT.store(skipped.len(), Ordering::Relaxed);
}

/// `full` is replicated again (it was removed, or became a file standin can read).
pub fn forget(full: &Path) {
    if COUNT.load(Ordering::Relaxed) == 0 {
        return;
    }
    let mut skipped = list();
    if skipped.remove(full).is_some() {
        tracing::info!(path = %full.display(), "replicated again");
        COUNT.store(skipped.len(), Ordering::Relaxed);
    }
}

/// The skipped paths under `root`, relative to it, each with its reason (a path
/// that is gone leaves the list here).
pub fn under(root: &Path) -> Vec<(String, String)> {
    if COUNT.load(Ordering::Relaxed) == 0 {
        return Vec::new();
    }
    let mut skipped = list();
    skipped.retain(|full, _| {
        !std::fs::symlink_metadata(full)
            .is_err_and(|error| error.kind() == std::io::ErrorKind::NotFound)
    });
    COUNT.store(skipped.len(), Ordering::Relaxed);
    skipped
        .iter()
        .filter_map(|(full, reason)| {
            let relative = full.strip_prefix(root).ok()?;
            Some((relative.to_string_lossy().into_owned(), reason.clone()))
        })
        .collect()
}

/// Why an I/O error means this one path cannot be replicated (rather than a failure
/// of the folder as a whole), if it does.
pub fn path_problem(error: &std::io::Error) -> Option<&'static str> {
    match error.raw_os_error() {
        Some(libc::ENAMETOOLONG) => Some("the path is too long for the kernel's path calls"),
        Some(libc::EACCES) | Some(libc::EPERM) => Some("permission denied"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_listed_once_under_its_root_until_forgotten_or_gone() {
        let temp = tempfile::tempdir().unwrap();
        let root = temp.path();
        std::fs::write(root.join("fifo"), b"").unwrap();
        std::fs::write(root.join("gone"), b"").unwrap();
        note(&root.join("fifo"), "a FIFO");
        note(&root.join("fifo"), "a FIFO");
        note(&root.join("gone"), "a FIFO");
        std::fs::remove_file(root.join("gone")).unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        note(elsewhere.path(), "a FIFO");
        assert_eq!(
            under(root),
            vec![("fifo".to_string(), "a FIFO".to_string())]
        );
        forget(&root.join("fifo"));
        assert!(under(root).is_empty());
        forget(elsewhere.path());
    }
}
