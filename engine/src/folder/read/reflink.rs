//! Point-in-time copies of one file by reflink (Linux `FICLONE`): where the file
//! system shares extents (XFS with reflink, btrfs) a clone is taken atomically with
//! respect to `write(2)` and costs metadata, not a copy of the data — so capture reads
//! a version the file really had from the clone, however busy the file is
//! (invariant 10).
//!
//! The clone is an unnamed file (`O_TMPFILE`) in `data_dir/capture/`, gone with its
//! descriptor; it needs `data_dir` on the same file system as the folder. Where the
//! kernel refuses (ext4, another file system, no reflink support), the refusal is
//! remembered per (device, directory) so that each later file costs one lookup, and
//! capture falls back to stable reads.
//!
//! The passive uses `clone_into` too: a large file's new version is staged as a clone
//! of the version it replaces, so that only the chunks that changed are written.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// How many clones this process has taken.
static CLONES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many files this process has cloned for capture (`/metrics`).
pub fn clones() -> u64 {
    CLONES.load(std::sync::atomic::Ordering::Relaxed)
}

/// Whether clones from a device into a directory worked (`true`) or were refused.
static SUPPORT: Mutex<Option<HashMap<(u64, PathBuf), bool>>> = Mutex::new(None);

fn known(device: u64, dir: &Path) -> Option<bool> {
    let support = SUPPORT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    support
        .as_ref()
        .and_then(|map| map.get(&(device, dir.to_path_buf())).copied())
}

fn remember(device: u64, dir: &Path, works: bool) {
    let mut support = SUPPORT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    support
        .get_or_insert_with(HashMap::new)
        .insert((device, dir.to_path_buf()), works);
}

/// Whether a clone of a file on `device` into `dir` is known to be refused (a clone
/// that was never tried is not).
pub fn refused(device: u64, dir: &Path) -> bool {
    known(device, dir) == Some(false)
}

/// Whether an error of `FICLONE` means "this pair of file systems cannot clone" rather
/// than a failure of this one file.
fn means_unsupported(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::EXDEV | libc::EINVAL | libc::ENOTTY | libc::ENOSYS)
    )
}

/// Whether files of `folder` can be cloned into `dir` (`data_dir/capture`, or the
/// passive's staging directory), as `status` says: what earlier clones found, or else
/// what a clone of an empty probe file in `dir` finds (remembered like any clone).
/// Different file systems never clone.
pub fn clones_into(folder: &Path, dir: &Path) -> std::io::Result<bool> {
    let device = std::fs::metadata(folder)?.dev();
    std::fs::create_dir_all(dir)?;
    if std::fs::metadata(dir)?.dev() != device {
        return Ok(false);
    }
    if let Some(works) = known(device, dir) {
        return Ok(works);
    }
    let source = tempfile::tempfile_in(dir)?;
    let target = tempfile::tempfile_in(dir)?;
    clone_into(&source, &target, dir)
}

/// Clone `source` (an open regular file) into a new unnamed file in `dir`: the file's
/// content at one instant. `Ok(None)` when the file systems cannot clone (remembered);
/// `Err` when they can but this clone failed (a full disk, say).
pub fn clone_file(source: &File, dir: &Path) -> std::io::Result<Option<File>> {
    let device = source.metadata()?.dev();
    if refused(device, dir) {
        return Ok(None);
    }
    std::fs::create_dir_all(dir)?;
    let clone = tempfile::tempfile_in(dir)?;
    if !clone_into(source, &clone, dir)? {
        return Ok(None);
    }
    CLONES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(Some(clone))
}

/// Clone all of `source` into `target`, an empty file in `dir` (the replay of a large
/// file's new version starts from a clone of the old one: `chunk_store::stage`).
/// `Ok(false)` when the file systems cannot clone (remembered per device and
/// directory, so that each later file costs one lookup); `Err` when they can but this
/// clone failed (a full disk, say).
pub fn clone_into(source: &File, target: &File, dir: &Path) -> std::io::Result<bool> {
    let device = source.metadata()?.dev();
    if refused(device, dir) {
        return Ok(false);
    }
    // SAFETY: both descriptors are open for the duration of the call; FICLONE reads
    // only the source descriptor number passed as its argument.
    let status = unsafe { libc::ioctl(target.as_raw_fd(), libc::FICLONE, source.as_raw_fd()) };
    if status == 0 {
        if known(device, dir).is_none() {
            tracing::info!(dir = %dir.display(), "the file system clones files (reflink): busy files are copied, and large files' new versions begun, by clone");
            remember(device, dir, true);
        }
        return Ok(true);
    }
    let error = std::io::Error::last_os_error();
    if means_unsupported(&error) {
        tracing::debug!(%error, dir = %dir.display(), "no reflink here: copies are made by reading");
        remember(device, dir, false);
        return Ok(false);
    }
    Err(error)
}
