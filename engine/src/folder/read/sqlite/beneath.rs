//! How capture opens a database's files: beneath the folder through no symlink
//! (`fsutil::open_beneath`), so a directory of the folder swapped for a symlink can
//! never make it read a database outside the folder; and how it tells a path that
//! moved under it (`moved`: try again later) from one that is gone.

use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A plain descriptor of `path`, a file inside the folder at `root`.
pub(super) fn open_plain(root: &Path, path: &Path) -> std::io::Result<File> {
    open(root, path, libc::O_NONBLOCK)
}

/// The (device, inode) the path `full` leads to now, beneath `root` through no
/// symlink. Through an `O_PATH` descriptor, whose close releases no POSIX lock: safe
/// while a connection holds locks on that inode.
pub(super) fn identity_now(root: &Path, full: &Path) -> std::io::Result<(u64, u64)> {
    identity_of(&open(root, full, libc::O_PATH)?)
}

/// The (device, inode) of an open file.
pub(super) fn identity_of(file: &File) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let metadata = file.metadata()?;
    Ok((metadata.dev(), metadata.ino()))
}

/// The path leads through a symlink now, or out of the folder, or through what is no
/// longer a directory: something moved under capture (a removed file answers
/// `NotFound` instead).
pub(super) fn moved(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ELOOP | libc::EXDEV | libc::ENOTDIR)
    )
}

fn open(root: &Path, path: &Path, flags: libc::c_int) -> std::io::Result<File> {
    let relative = path.strip_prefix(root).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not inside {}", path.display(), root.display()),
        )
    })?;
    crate::fsutil::open_beneath(root, relative.as_os_str().as_bytes(), flags)
}

#[cfg(test)]
mod tests {
    use super::super::frames::{capture, Outcome};
    use crate::repository::Repository;
    use rusqlite::Connection;

    /// A directory of the folder swapped for a symlink to a database elsewhere: capture
    /// reads nothing through it — neither the plain reads of a version, nor the header
    /// check, nor SQLite's backup — and takes it for a path that moved under it (read
    /// again later), not for a database SQLite refused (which is then read as a file).
    #[test]
    fn a_database_reached_through_a_symlinked_directory_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let (folder, outside) = (dir.path().join("folder"), dir.path().join("outside"));
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let repository = Repository::open(&dir.path().join("data")).unwrap();
        let writer = Connection::open(outside.join("app.db")).unwrap();
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL; CREATE TABLE secret (v);
                 INSERT INTO secret VALUES ('outside');",
            )
            .unwrap();
        std::os::unix::fs::symlink(&outside, folder.join("d")).unwrap();
        let db = folder.join("d/app.db");
        let (data_dir, chunks) = (repository.data_dir(), repository.chunks());
        let described = |outcome: &Outcome| match outcome {
            Outcome::Version { .. } => "a version",
            Outcome::Busy => "busy",
            Outcome::Refused(_) => "refused",
            Outcome::Fallback => "fallback",
        };
        let outcome = capture(&folder, &db, data_dir, chunks, 4096).unwrap();
        assert_eq!(described(&outcome), "busy", "through the symlink");
        assert!(!super::super::is_database(&folder, &db));
        let head = std::fs::read(outside.join("app.db")).unwrap();
        let taken = super::super::snapshot(&folder, &db, data_dir, &head[..20], 4096).unwrap();
        assert!(
            matches!(taken, super::super::Taken::Busy),
            "SQLite's backup was not refused as a moved path"
        );
        // The same database, with its own folder as the root, is read.
        let inside = outside.join("app.db");
        let outcome = capture(&outside, &inside, data_dir, chunks, 4096).unwrap();
        assert_eq!(described(&outcome), "a version");
        assert!(super::super::is_database(&outside, &inside));
    }
}
