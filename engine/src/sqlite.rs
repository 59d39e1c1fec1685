//! SQLite databases in the folder, captured through SQLite itself (invariant 10):
//! a database's bytes on disk are not a state it had — in WAL mode the newest pages
//! sit in the `-wal`, in rollback mode a commit rewrites pages in place — so a file
//! that starts with SQLite's header is copied with SQLite's online backup under a read
//! transaction, which is a committed state by construction.
//!
//! Rules that keep the application safe:
//! - the database is opened read-only: no recovery, no checkpoint, and a read-only
//!   connection is never the one whose close deletes the application's `-wal`;
//! - SQLite's locks are POSIX locks, which the kernel drops for the whole process when
//!   *any* descriptor of the file is closed. So no other descriptor of this process
//!   may be open on a folder file while a connection is: plain reads (capture, verify,
//!   hashing) hold `plain_descriptor_guard` (shared), a connection holds it exclusively;
//! - the companions (`-wal`, `-shm`, `-journal`) are never recorded beside a database
//!   (the backup folds them in); a passive removes stale companions before it puts a
//!   database in place (`replay`).
//!
//! The cost: the backup copies the whole database (all pages, one read transaction)
//! each time it is captured. In WAL mode the application's writers never wait for it;
//! in rollback mode a writer that wants to commit waits while the copy holds its shared
//! lock (`longest_lock` keeps the longest; `/metrics` shows it) — so where the file
//! system clones (`reflink`), a rollback-mode database is cloned under the shared lock
//! instead, which holds it for milliseconds whatever the size.

use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use crate::error::{IoContext, Result};
use crate::path::RelPath;

/// The first 16 bytes of every SQLite 3 database file.
pub const HEADER: &[u8; 16] = b"SQLite format 3\0";

/// A database file is at least its 100-byte header.
pub const MIN_DATABASE_BYTES: u64 = 100;

/// The files SQLite keeps beside a database `x`: `x-wal`, `x-shm`, `x-journal`.
pub const COMPANION_SUFFIXES: [&[u8]; 3] = [b"-wal", b"-shm", b"-journal"];

/// The largest database in rollback-journal mode that is copied through SQLite's
/// backup where the file system cannot clone: the copy holds a shared lock that makes
/// a committing writer wait (measured here: 4-8 s for 1 GiB, beyond a 5 s busy
/// timeout). A larger one is read as a plain file (stably: a committed state when no
/// commit overlapped the read). Where the file system clones, there is no limit.
pub const ROLLBACK_COPY_MAX_BYTES: u64 = 256 << 20;

/// How long a capture waits for a writer's lock before it tries again later.
const BUSY_TIMEOUT: Duration = Duration::from_millis(1_000);

static DESCRIPTORS: RwLock<()> = RwLock::new(());

/// The longest a copy has held its read transaction, in microseconds.
static LONGEST_LOCK_US: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The longest a database copy of this process held its read transaction (in
/// rollback mode, how long a committing writer may have waited for capture).
pub fn longest_lock() -> Duration {
    Duration::from_micros(LONGEST_LOCK_US.load(std::sync::atomic::Ordering::Relaxed))
}

/// Held while this process has a plain descriptor of a folder file open (see the
/// module's doc): shared among plain readers, exclusive to a SQLite connection.
pub fn plain_descriptor_guard() -> RwLockReadGuard<'static, ()> {
    DESCRIPTORS
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn connection_guard() -> RwLockWriteGuard<'static, ()> {
    DESCRIPTORS
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether `head` (a file's first bytes) is SQLite's header.
pub fn is_header(head: &[u8]) -> bool {
    head.starts_with(HEADER)
}

/// Whether the file at `full` is a SQLite database (by its header; never follows a
/// symlink). `false` when it cannot be read.
pub fn is_database(full: &Path) -> bool {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let _guard = plain_descriptor_guard();
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(full)
    else {
        return false;
    };
    let mut head = [0u8; 16];
    matches!(file.read_at(&mut head, 0), Ok(16)) && is_header(&head)
}

/// The database `path` is a companion of (`x` for `x-wal`), by name only.
pub fn companion_base(path: &RelPath) -> Option<RelPath> {
    let name = path.file_name();
    let stem = COMPANION_SUFFIXES
        .iter()
        .find_map(|suffix| name.strip_suffix(*suffix))?;
    if stem.is_empty() {
        return None;
    }
    match path.parent() {
        Some(parent) => parent.join(stem).ok(),
        None => RelPath::top(stem).ok(),
    }
}

/// Where the companions of the database at `full` would be.
pub fn companions(full: &Path) -> Vec<PathBuf> {
    COMPANION_SUFFIXES
        .iter()
        .map(|suffix| {
            let mut name = full.as_os_str().to_owned();
            name.push(std::ffi::OsStr::new(
                std::str::from_utf8(suffix).unwrap_or_default(),
            ));
            PathBuf::from(name)
        })
        .collect()
}

/// A committed state of a database, copied aside.
pub struct Snapshot {
    /// The copy (an unnamed file in `data_dir/capture/`, gone when dropped).
    pub file: std::fs::File,
    /// How long the copy held its read transaction on the application's database.
    pub lock_held: Duration,
    /// Taken by reflink (`FICLONE`) rather than by SQLite's backup.
    pub cloned: bool,
}

/// What `snapshot` got.
pub enum Taken {
    Copy(Snapshot),
    /// A writer held its lock for longer than the busy timeout: try again later.
    Busy,
    /// SQLite would not copy it (not a database after all, damaged, unreadable).
    Refused(String),
    /// Too large to copy under a lock that blocks writers, and the file system cannot
    /// clone: read it as a plain file (`ROLLBACK_COPY_MAX_BYTES`).
    Plain,
}

/// Copy the database at `full` (whose header is `head`, at least 20 bytes, and size
/// `size`) at a transaction boundary into `data_dir/capture/`:
/// - in rollback-journal mode, where the file system clones, by `FICLONE` under
///   SQLite's shared lock (which keeps any writer from changing the file): the lock is
///   held for the clone's metadata work, whatever the size;
/// - otherwise with SQLite's online backup (all pages in one step, one read
///   transaction), in rollback mode only up to `ROLLBACK_COPY_MAX_BYTES`.
pub fn snapshot(full: &Path, data_dir: &Path, head: &[u8], size: u64) -> Result<Taken> {
    let dir = data_dir.join("capture");
    std::fs::create_dir_all(&dir).at("create", &dir)?;
    let wal = head.get(18) == Some(&2);
    if !wal {
        if let Some(taken) = clone_under_lock(full, &dir)? {
            return Ok(taken);
        }
        if size > ROLLBACK_COPY_MAX_BYTES {
            return Ok(Taken::Plain);
        }
    }
    backup(full, &dir)
}

/// Record how long a copy held its lock; returns it.
fn held_since(started: Instant) -> Duration {
    let held = started.elapsed();
    LONGEST_LOCK_US.fetch_max(
        u64::try_from(held.as_micros()).unwrap_or(u64::MAX),
        std::sync::atomic::Ordering::Relaxed,
    );
    held
}

fn is_busy(error: &rusqlite::Error) -> bool {
    matches!(error, rusqlite::Error::SqliteFailure(code, _)
    if matches!(
        code.code,
        rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
    ))
}

/// A rollback-mode database cloned while a read transaction holds SQLite's shared
/// lock. `None` when the file systems cannot clone (the backup is used instead).
fn clone_under_lock(full: &Path, dir: &Path) -> Result<Option<Taken>> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let _exclusive = connection_guard();
    // Opened before the connection and closed after it: closing a descriptor while
    // the connection holds its POSIX locks would drop them.
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(full)
    {
        Ok(file) => file,
        Err(error) => return Ok(Some(Taken::Refused(error.to_string()))),
    };
    let device = file.metadata().at("stat", full)?.dev();
    if crate::reflink::refused(device, dir) {
        return Ok(None);
    }
    let refused = |error: rusqlite::Error| Ok(Some(Taken::Refused(error.to_string())));
    let source = match open_read_only(full) {
        Ok(source) => source,
        Err(error) => return refused(error),
    };
    if let Err(error) = source.execute_batch("BEGIN") {
        return refused(error);
    }
    // The first read takes the shared lock (and checks for a hot journal).
    if let Err(error) = source.query_row("SELECT count(*) FROM sqlite_master", [], |row| {
        row.get::<_, i64>(0)
    }) {
        return if is_busy(&error) {
            Ok(Some(Taken::Busy))
        } else {
            refused(error)
        };
    }
    let started = Instant::now();
    let cloned = crate::reflink::clone_file(&file, dir);
    let _ = source.execute_batch("COMMIT");
    let lock_held = held_since(started);
    drop(source);
    drop(file);
    match cloned {
        Ok(Some(clone)) => Ok(Some(Taken::Copy(Snapshot {
            file: clone,
            lock_held,
            cloned: true,
        }))),
        Ok(None) => Ok(None),
        Err(error) => Err(crate::error::Error::Io {
            op: "clone",
            path: full.to_path_buf(),
            source: error,
        }),
    }
}

/// A read-only connection to the application's database (no recovery, no
/// checkpoint; its close never removes the `-wal`), waiting `BUSY_TIMEOUT` for locks.
/// The caller holds `connection_guard`.
fn open_read_only(full: &Path) -> rusqlite::Result<rusqlite::Connection> {
    use rusqlite::{Connection, OpenFlags};
    let connection = Connection::open_with_flags(
        full,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    connection.busy_timeout(BUSY_TIMEOUT)?;
    Ok(connection)
}

/// Copy the database at `full` with SQLite's online backup into `dir`.
fn backup(full: &Path, dir: &Path) -> Result<Taken> {
    use rusqlite::{backup::StepResult, Connection};
    let copy = tempfile::Builder::new()
        .prefix("sqlite-")
        .tempfile_in(dir)
        .at("create", dir)?;
    let refused = |error: rusqlite::Error| Ok(Taken::Refused(error.to_string()));
    let _exclusive = connection_guard();
    let source = match open_read_only(full) {
        Ok(source) => source,
        Err(error) => return refused(error),
    };
    let mut destination = match Connection::open(copy.path()) {
        Ok(destination) => destination,
        Err(error) => return refused(error),
    };
    // The copy is scratch: no journal, no syncs (it is hashed and stored, then gone).
    if let Err(error) =
        destination.execute_batch("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;")
    {
        return refused(error);
    }
    let started = Instant::now();
    let outcome = {
        let backup = match rusqlite::backup::Backup::new(&source, &mut destination) {
            Ok(backup) => backup,
            Err(error) => return refused(error),
        };
        backup.step(-1)
    };
    let lock_held = held_since(started);
    drop(destination);
    // Closing the read-only connection neither checkpoints nor removes the `-wal`.
    drop(source);
    match outcome {
        Ok(StepResult::Done) => {
            // Unnamed from here: the copy goes with its descriptor.
            let file = copy.into_file();
            Ok(Taken::Copy(Snapshot {
                file,
                lock_held,
                cloned: false,
            }))
        }
        Ok(_) => Ok(Taken::Busy),
        Err(error) if is_busy(&error) => Ok(Taken::Busy),
        Err(error) => refused(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn companions_name_their_database() {
        let base = |text: &str| companion_base(&RelPath::new(text).unwrap()).map(|p| p.to_string());
        assert_eq!(base("db/app.db-wal").as_deref(), Some("db/app.db"));
        assert_eq!(base("app.db-journal").as_deref(), Some("app.db"));
        assert_eq!(base("x-shm").as_deref(), Some("x"));
        assert_eq!(base("-wal"), None);
        assert_eq!(base("app.db"), None);
        assert_eq!(
            companions(Path::new("/f/app.db")),
            vec![
                PathBuf::from("/f/app.db-wal"),
                PathBuf::from("/f/app.db-shm"),
                PathBuf::from("/f/app.db-journal")
            ]
        );
    }
}
