//! Disk space on the passive: telling a full disk apart from other local failures, and
//! the reserve it keeps so that its log's store never meets a full disk.

use std::path::Path;

use standin_engine::Event;

/// Free space the passive keeps on the disks of its folder and data_dir: it stops
/// applying (a `no_space` pull error) before a batch would leave less. The log's store
/// (sled) cannot carry on after it meets a full disk while open, so it must not.
pub const RESERVE_BYTES: u64 = 16 << 20;

/// The log and index grow by about this much per event, at most.
const STORE_BYTES_PER_EVENT: u64 = 2048;

/// Whether a local failure is a full disk (ENOSPC, or a quota: EDQUOT): the engine's
/// own verdict, or, for errors it carries as text (an apply's reason), the OS error in
/// the text.
pub fn is_no_space(error: &standin_engine::Error) -> bool {
    if error.is_no_space() {
        return true;
    }
    let text = error.to_string();
    [libc::ENOSPC, libc::EDQUOT].iter().any(|code| {
        text.contains(&format!("(os error {code})")) || text.contains(&format!("code: {code},"))
    })
}

/// (file system id, bytes free to unprivileged writers) of the disk holding `path`.
fn disk_space(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: a zeroed plain struct, filled by statvfs from a valid C string.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)]
    Some((
        stat.f_fsid as u64,
        (stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64),
    ))
}

/// Whether `events` fit: their content goes into the chunk store and into the folder,
/// plus the log, and `RESERVE_BYTES` must stay free. The reason (path, free bytes,
/// need) when they do not. A disk whose space cannot be read is not refused.
/// (The fault suite turns the check off with `STANDIN_TEST_NO_SPACE_CHECK=1` to reach
/// the write paths' own handling of a full disk.)
pub fn check(folder: &Path, data_dir: &Path, events: &[Event]) -> Result<(), String> {
    if std::env::var_os("STANDIN_TEST_NO_SPACE_CHECK").is_some() {
        return Ok(());
    }
    let content: u64 = events
        .iter()
        .map(|event| event.body.change.content_size())
        .sum();
    let store = events.len() as u64 * STORE_BYTES_PER_EVENT;
    let (Some((data_disk, data_free)), Some((folder_disk, folder_free))) =
        (disk_space(data_dir), disk_space(folder))
    else {
        return Ok(());
    };
    let mut needs = vec![(data_dir, data_free, content.saturating_add(store))];
    if data_disk == folder_disk {
        needs[0].2 = needs[0].2.saturating_add(content);
    } else {
        needs.push((folder, folder_free, content));
    }
    for (path, free, need) in needs {
        if free < need.saturating_add(RESERVE_BYTES) {
            return Err(format!(
                "{}: {free} bytes free; the next {} events need about {need} and {RESERVE_BYTES} are kept in reserve",
                path.display(),
                events.len()
            ));
        }
    }
    Ok(())
}

/// Whether saving `paths` folder index entries (an idle passive's index save) leaves
/// `RESERVE_BYTES` free on the data_dir's disk; the reason when not.
pub fn check_index_save(data_dir: &Path, paths: usize) -> Result<(), String> {
    if std::env::var_os("STANDIN_TEST_NO_SPACE_CHECK").is_some() {
        return Ok(());
    }
    let Some((_, free)) = disk_space(data_dir) else {
        return Ok(());
    };
    let need = paths as u64 * STORE_BYTES_PER_EVENT;
    if free < need.saturating_add(RESERVE_BYTES) {
        return Err(format!(
            "{}: {free} bytes free; saving {paths} folder index entries needs about {need} and {RESERVE_BYTES} are kept in reserve",
            data_dir.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use standin_engine::Change;

    #[test]
    fn a_batch_larger_than_the_disk_is_refused_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let huge = standin_engine::Event::seal(
            standin_engine::Hash::ZERO,
            standin_engine::EventBody {
                seq: 1,
                epoch: 1,
                recorded_at_ms: 0,
                change: Change::Put {
                    path: standin_engine::RelPath::new("big").unwrap(),
                    mode: 0o644,
                    mtime_ns: 0,
                    size: u64::MAX / 4,
                    content: standin_engine::Hash::ZERO,
                    chunks: Vec::new(),
                },
                digest: standin_engine::Hash::ZERO,
            },
        );
        let reason = check(dir.path(), dir.path(), &[huge]).unwrap_err();
        assert!(
            reason.contains(&dir.path().display().to_string()),
            "{reason}"
        );
        assert!(check(dir.path(), dir.path(), &[]).is_ok());
    }

    #[test]
    fn full_disk_errors_are_told_apart() {
        let full = standin_engine::Error::Io {
            op: "write",
            path: "/x".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        };
        assert!(is_no_space(&full));
        let other = standin_engine::Error::Io {
            op: "write",
            path: "/x".into(),
            source: std::io::Error::from_raw_os_error(libc::EIO),
        };
        assert!(!is_no_space(&other));
        let carried = standin_engine::Error::Apply {
            seq: 1,
            path: "x".to_string(),
            reason: "write /x: No space left on device (os error 28)".to_string(),
        };
        assert!(is_no_space(&carried));
    }
}
