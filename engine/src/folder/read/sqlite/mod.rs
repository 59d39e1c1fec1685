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
//! The cost: in WAL mode, a database is read from its `-wal` (`frames`): only the
//! frames committed since its last version are read, and only the page-aligned pieces
//! they change are rebuilt; the whole database is read (not copied) once per
//! generation of its log, under one read transaction, which never makes a writer
//! wait. Where that reading does not apply (a log too large to hold), and in rollback
//! mode, the online backup copies the whole database each time it is captured. In
//! rollback mode a writer that wants to commit waits while a
//! reader holds SQLite's shared lock, so capture never holds it for longer than
//! `ROLLBACK_LOCK_BOUND` in one go (`longest_lock` keeps the longest; `/metrics` shows
//! it): where the file system clones (`reflink`), the database is cloned under the
//! lock, which takes milliseconds whatever the size; elsewhere the backup copies it
//! in steps, under one lock while that fits in the bound, then with the lock taken
//! and let go at each step — SQLite restarts a backup whose source changed between
//! steps, and capture then gives up (`Taken::Busy`: named unstable, tried again). So
//! a large rollback-mode database on a file system that cannot clone is recorded only
//! when its writers leave it alone for as long as a copy takes.

use std::os::raw::c_int;
use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use crate::error::{IoContext, Result};
use crate::path::RelPath;
use beneath::{moved, open_plain};

mod beneath;
pub mod frames;
mod pieces;
mod version;
pub mod wal;
mod whole;

/// The first 16 bytes of every SQLite 3 database file.
pub const HEADER: &[u8; 16] = b"SQLite format 3\0";

/// A database file is at least its 100-byte header.
pub const MIN_DATABASE_BYTES: u64 = 100;

/// The files SQLite keeps beside a database `x`: `x-wal`, `x-shm`, `x-journal`.
pub const COMPANION_SUFFIXES: [&[u8]; 3] = [b"-wal", b"-shm", b"-journal"];

/// The longest capture holds SQLite's shared lock on a rollback-mode database in one
/// go (a committing writer waits that long at most, plus one step): well under the
/// 5 s busy timeout of Python's sqlite3. The whole copy under one lock took 4-8 s for
/// 1 GiB here, which is why the copy of a larger database is split.
pub const ROLLBACK_LOCK_BOUND: Duration = Duration::from_millis(1_000);

/// The bytes one backup step copies in rollback mode (the lock is checked, or let go,
/// between steps): tens of milliseconds.
const STEP_BYTES: u64 = 4 << 20;

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

/// Whether the file at `full`, inside the folder at `root`, is a SQLite database (by
/// its header; opened beneath the root through no symlink). `false` when it cannot be
/// read.
pub fn is_database(root: &Path, full: &Path) -> bool {
    use std::os::unix::fs::FileExt;
    let _guard = plain_descriptor_guard();
    let Ok(file) = open_plain(root, full) else {
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

/// The database whose content a change of `path` may have changed: `x` for `x-wal`
/// and `x-journal`. Not for `x-shm`: SQLite's wal-index changes whenever any
/// connection reads (its read marks), standin's own included, so following it would
/// read an idle database again and again; every commit in WAL mode writes the `-wal`,
/// and every checkpoint the database itself.
pub fn written_with(path: &RelPath) -> Option<RelPath> {
    if path.file_name().ends_with(b"-shm") {
        return None;
    }
    companion_base(path)
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
    /// A writer held its lock for longer than the busy timeout, or (rollback mode) a
    /// commit changed the database between two steps of a copy that could not be
    /// held under one lock: try again later.
    Busy,
    /// SQLite would not copy it (not a database after all, damaged, unreadable).
    Refused(String),
}

/// Copy the database at `full` (whose header is `head`, at least 20 bytes) at a
/// transaction boundary into `data_dir/capture/`:
/// - in WAL mode with SQLite's online backup, all pages in one read transaction;
/// - in rollback-journal mode, where the file system clones, by `FICLONE` under
///   SQLite's shared lock (which keeps any writer from changing the file): the lock is
///   held for the clone's metadata work, whatever the size;
/// - otherwise with the online backup in steps, never holding the shared lock for
///   longer than `ROLLBACK_LOCK_BOUND` in one go (see the module's doc).
pub fn snapshot(
    root: &Path,
    full: &Path,
    data_dir: &Path,
    head: &[u8],
    size: u64,
) -> Result<Taken> {
    let started = crate::clock::instant();
    let taken = snapshot_within(root, full, data_dir, head, size, ROLLBACK_LOCK_BOUND)?;
    let copy_ms = started.elapsed().as_secs_f64() * 1e3;
    match &taken {
        Taken::Copy(snapshot) => tracing::debug!(
            path = %full.display(),
            size,
            copy_ms,
            lock_ms = snapshot.lock_held.as_secs_f64() * 1e3,
            cloned = snapshot.cloned,
            "database copied"
        ),
        Taken::Busy => {
            tracing::debug!(path = %full.display(), size, copy_ms, "database copy given up")
        }
        Taken::Refused(_) => {}
    }
    Ok(taken)
}

/// The page size of a WAL-mode database whose header is `head` (at least 20 bytes),
/// `None` for a rollback-mode one.
pub fn wal_page_size(head: &[u8]) -> Option<u32> {
    (head.get(18) == Some(&2)).then(|| page_size(head) as u32)
}

/// The page size a database header `head` names (SQLite stores 65,536 as 1).
fn page_size(head: &[u8]) -> u64 {
    match head.get(16..18) {
        Some(&[high, low]) => match u64::from(u16::from_be_bytes([high, low])) {
            1 => 65_536,
            size if size >= 512 => size,
            _ => 4_096,
        },
        _ => 4_096,
    }
}

/// `snapshot` with another bound on the shared lock in rollback mode (tests use a
/// small one to split the copy of a small database).
pub fn snapshot_within(
    root: &Path,
    full: &Path,
    data_dir: &Path,
    head: &[u8],
    size: u64,
    bound: Duration,
) -> Result<Taken> {
    let dir = data_dir.join("capture");
    std::fs::create_dir_all(&dir).at("create", &dir)?;
    let page_size = page_size(head);
    let wal = head.get(18) == Some(&2);
    if wal {
        return backup(root, full, &dir, page_size, None);
    }
    if let Some(taken) = clone_under_lock(root, full, &dir)? {
        return Ok(taken);
    }
    backup(
        root,
        full,
        &dir,
        page_size,
        Some(Steps {
            bound,
            pages: c_int::try_from((STEP_BYTES / page_size).max(1)).unwrap_or(c_int::MAX),
            size,
        }),
    )
}

/// How a rollback-mode backup is split (see the module's doc).
#[derive(Clone, Copy)]
struct Steps {
    /// The longest the shared lock is held in one go.
    bound: Duration,
    /// Pages a step copies.
    pages: c_int,
    /// The database's size when capture chose it.
    size: u64,
}

/// The rate at which this process last copied a database, in bytes a second (0: not
/// yet known): a rollback-mode copy that would not fit in the bound at that rate is
/// not begun under one lock (a busy writer would wait the whole bound at every try).
static COPY_RATE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Note the rate of a copy: `bytes` in `took` of copying (the pauses between steps
/// left out).
fn note_rate(bytes: u64, took: Duration) {
    if took >= Duration::from_millis(5) {
        let rate = ((bytes as f64 / took.as_secs_f64()) as u64).max(1);
        COPY_RATE.store(rate, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Whether a copy of `bytes` is expected to fit under one lock of `bound`.
fn fits(bytes: u64, bound: Duration) -> bool {
    match COPY_RATE.load(std::sync::atomic::Ordering::Relaxed) {
        0 => true,
        rate => (bytes as f64 / rate as f64) <= bound.as_secs_f64(),
    }
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
fn clone_under_lock(root: &Path, full: &Path, dir: &Path) -> Result<Option<Taken>> {
    use std::os::unix::fs::MetadataExt;
    let _exclusive = connection_guard();
    // Opened before the connection and closed after it: closing a descriptor while
    // the connection holds its POSIX locks would drop them.
    let file = match open_plain(root, full) {
        Ok(file) => file,
        Err(error) if moved(&error) => return Ok(Some(Taken::Busy)),
        Err(error) => return Ok(Some(Taken::Refused(error.to_string()))),
    };
    let device = file.metadata().at("stat", full)?.dev();
    if crate::folder::read::reflink::refused(device, dir) {
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
    let started = crate::clock::instant();
    let cloned = crate::folder::read::reflink::clone_file(&file, dir);
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

/// Copy the database at `full` with SQLite's online backup into `dir`: in one step
/// under one read transaction (`steps` = None, WAL mode), or split (rollback mode).
fn backup(
    root: &Path,
    full: &Path,
    dir: &Path,
    page_size: u64,
    steps: Option<Steps>,
) -> Result<Taken> {
    use rusqlite::Connection;
    let copy = tempfile::Builder::new()
        .prefix("sqlite-")
        .tempfile_in(dir)
        .at("create", dir)?;
    let refused = |error: rusqlite::Error| Ok(Taken::Refused(error.to_string()));
    let _exclusive = connection_guard();
    // SQLite opens the database by its path: first the path must lead to a file inside
    // the folder through no symlink, and lead to the same file once the copy is made
    // (a swap and back in between is the case left open: README, "Guarantees"). Held
    // open until the connection is closed, as in `whole`: closing a descriptor while
    // the connection holds its POSIX locks would drop them.
    let file = match open_plain(root, full) {
        Ok(file) => file,
        Err(error) if moved(&error) => return Ok(Taken::Busy),
        Err(error) => return Ok(Taken::Refused(format!("cannot open: {error}"))),
    };
    let before = beneath::identity_of(&file).at("stat", full)?;
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
    let outcome = {
        let backup = match rusqlite::backup::Backup::new(&source, &mut destination) {
            Ok(backup) => backup,
            Err(error) => return refused(error),
        };
        match steps {
            None => {
                let started = crate::clock::instant();
                let outcome = backup.step(-1);
                let held = held_since(started);
                if let Ok(rusqlite::backup::StepResult::Done) = outcome {
                    note_rate(copied_bytes(&backup, page_size), held);
                }
                outcome.map(|step| (step, held))
            }
            Some(steps) => in_steps(&source, &backup, page_size, steps),
        }
    };
    drop(destination);
    let same = matches!(beneath::identity_now(root, full), Ok(now) if now == before);
    // Closing the read-only connection neither checkpoints nor removes the `-wal`.
    drop(source);
    drop(file);
    if !same {
        return Ok(Taken::Busy);
    }
    match outcome {
        Ok((rusqlite::backup::StepResult::Done, lock_held)) => {
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

/// The bytes a backup has copied so far (pages of `page_size`).
fn copied_bytes(backup: &rusqlite::backup::Backup<'_, '_>, page_size: u64) -> u64 {
    let progress = backup.progress();
    let pages = u64::try_from(progress.pagecount.saturating_sub(progress.remaining)).unwrap_or(0);
    pages * page_size
}

/// A rollback-mode backup in steps: under one read transaction (SQLite's shared lock)
/// while the copy is expected to fit in `steps.bound` and until the bound is spent;
/// then each step takes and lets go of the lock itself, and a step that finds the
/// database changed since the last one (SQLite restarts the copy then) gives up:
/// `More` is returned for "not done, try again later". The longest single hold of the
/// lock comes back with `Done`.
fn in_steps(
    source: &rusqlite::Connection,
    backup: &rusqlite::backup::Backup<'_, '_>,
    page_size: u64,
    steps: Steps,
) -> rusqlite::Result<(rusqlite::backup::StepResult, Duration)> {
    use rusqlite::backup::StepResult;
    // The longest hold of the lock, and the time spent copying (for the rate).
    let (mut longest, mut copying) = (Duration::ZERO, Duration::ZERO);
    if fits(steps.size, steps.bound) {
        source.execute_batch("BEGIN")?;
        // The first read takes the shared lock (and checks for a hot journal).
        let locked = match source.query_row("SELECT count(*) FROM sqlite_master", [], |row| {
            row.get::<_, i64>(0)
        }) {
            Ok(_) => crate::clock::instant(),
            Err(error) => {
                let _ = source.execute_batch("COMMIT");
                return Err(error);
            }
        };
        let outcome = loop {
            match backup.step(steps.pages) {
                Ok(StepResult::More) if locked.elapsed() < steps.bound => continue,
                other => break other,
            }
        };
        let _ = source.execute_batch("COMMIT");
        longest = held_since(locked);
        copying = longest;
        note_rate(copied_bytes(backup, page_size), longest);
        match outcome? {
            StepResult::More => {}
            done_or_busy => return Ok((done_or_busy, longest)),
        }
    }
    // The lock is let go between steps from here: a commit in between makes SQLite
    // restart the copy from its first page, which shows as fewer pages copied.
    loop {
        let before = copied_bytes(backup, page_size);
        let started = crate::clock::instant();
        let step = backup.step(steps.pages)?;
        let held = held_since(started);
        longest = longest.max(held);
        copying += held;
        match step {
            StepResult::Done => {
                // A whole copy, made of steps that may have waited for a writer's
                // lock: its rate, the pauses between steps left out.
                note_rate(copied_bytes(backup, page_size), copying);
                return Ok((StepResult::Done, longest));
            }
            StepResult::More => {
                let after = copied_bytes(backup, page_size);
                if after != before + u64::try_from(steps.pages).unwrap_or(0) * page_size {
                    return Ok((StepResult::More, longest));
                }
            }
            busy_or_locked => return Ok((busy_or_locked, longest)),
        }
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
        let written =
            |text: &str| written_with(&RelPath::new(text).unwrap()).map(|p| p.to_string());
        assert_eq!(written("db/app.db-wal").as_deref(), Some("db/app.db"));
        assert_eq!(written("app.db-journal").as_deref(), Some("app.db"));
        assert_eq!(written("app.db-shm"), None);
        assert_eq!(written("app.db"), None);
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
