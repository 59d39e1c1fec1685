//! SQLite databases captured through SQLite (invariant 10): a writer commits rows in
//! transactions of 20 while capture runs; every recorded version of the database
//! opens, passes `PRAGMA integrity_check` and holds whole transactions, a prefix of
//! the committed rows; the companions are never recorded; the writer (5 s busy
//! timeout, as Python's default) never sees `database is locked`; an idle database is
//! not recorded again by a rescan; `verify` on the live folder agrees.

use std::time::{Duration, Instant};

use rusqlite::Connection;
use standin_engine::Change;

use crate::support::Node;

const ROWS_PER_TRANSACTION: i64 = 20;

/// Insert rows in transactions for `seconds`; returns how many rows were committed.
pub fn write_rows(path: &std::path::Path, journal_mode: &str, seconds: u64) -> i64 {
    let connection = Connection::open(path).unwrap();
    connection.busy_timeout(Duration::from_secs(5)).unwrap();
    let mode: String = connection
        .query_row(
            &format!("PRAGMA journal_mode = {journal_mode}"),
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(mode.to_lowercase(), journal_mode.to_lowercase());
    connection
        .execute_batch(
            "PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, payload BLOB NOT NULL);
             CREATE INDEX IF NOT EXISTS t_payload ON t (payload);",
        )
        .unwrap();
    let started = Instant::now();
    let mut committed = 0i64;
    let mut connection = connection;
    while started.elapsed() < Duration::from_secs(seconds) {
        let transaction = connection
            .transaction()
            .unwrap_or_else(|error| panic!("begin after {committed} rows: {error}"));
        for _ in 0..ROWS_PER_TRANSACTION {
            committed += 1;
            transaction
                .execute(
                    "INSERT INTO t (id, payload) VALUES (?1, ?2)",
                    rusqlite::params![committed, vec![(committed % 251) as u8; 300]],
                )
                .unwrap_or_else(|error| panic!("insert {committed}: {error}"));
        }
        transaction
            .commit()
            .unwrap_or_else(|error| panic!("commit at {committed} rows: {error}"));
        std::thread::sleep(Duration::from_millis(2));
    }
    committed
}

fn recorded_paths(node: &Node) -> Vec<String> {
    node.all_events()
        .into_iter()
        .filter_map(|event| match event.body.change {
            Change::Put { path, .. } | Change::File { path, .. } => Some(path.to_string()),
            _ => None,
        })
        .collect()
}

/// Run a writer in `journal_mode` under capture in `node`'s folder and check every
/// recorded version (also run on a cloning file system, `reflink`); at least
/// `min_versions` are recorded while the writer runs.
pub fn a_live_database_is_recorded_at_transaction_boundaries_in(
    node: &Node,
    journal_mode: &str,
    min_versions: usize,
) {
    let capture = node.watch();
    let database = node.folder.join("app.db");
    let committed = write_rows(&database, journal_mode, 3);
    // The writer's connection is closed: in WAL mode that checkpoints into the file.
    node.settle();
    capture.stop();

    let versions = node.versions_of("app.db");
    assert!(
        versions.len() >= min_versions,
        "{} versions of the database",
        versions.len()
    );
    let scratch = tempfile::tempdir().unwrap();
    let mut previous = 0;
    for (number, bytes) in versions.iter().enumerate() {
        let copy = scratch.path().join(format!("v{number}.db"));
        std::fs::write(&copy, bytes).unwrap();
        let connection = Connection::open(&copy).unwrap();
        let check: String = connection
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .unwrap_or_else(|error| panic!("version {number} does not open: {error}"));
        assert_eq!(check, "ok", "version {number}");
        let (count, max): (i64, Option<i64>) = connection
            .query_row("SELECT count(*), max(id) FROM t", [], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .unwrap_or((0, None));
        assert_eq!(
            count,
            max.unwrap_or(0),
            "version {number}: the rows are a prefix"
        );
        assert_eq!(
            count % ROWS_PER_TRANSACTION,
            0,
            "version {number}: {count} rows is not a transaction boundary"
        );
        assert!(count >= previous, "version {number} went back in time");
        previous = count;
    }
    assert_eq!(
        previous, committed,
        "the last version holds every committed row"
    );
    for path in recorded_paths(node) {
        assert!(
            !path.ends_with("-wal") && !path.ends_with("-journal") && !path.ends_with("-shm"),
            "a companion was recorded: {path}"
        );
    }
    // An idle database is not recorded again by a rescan, and the live folder verifies.
    let before = node.repository.head().seq;
    assert!(
        standin_engine::folder::scan::reconcile(&node.folder, &node.repository, 1)
            .unwrap()
            .is_empty()
    );
    assert_eq!(node.repository.head().seq, before);
    let report =
        standin_engine::folder::verify::verify_live_folder(&node.folder, &node.repository).unwrap();
    assert!(report.matches(), "{:?}", report.first_difference);
}

#[test]
fn a_live_database_in_wal_mode_is_recorded_at_transaction_boundaries() {
    a_live_database_is_recorded_at_transaction_boundaries_in(&Node::new(), "wal", 2);
}

#[test]
fn a_live_database_in_rollback_mode_is_recorded_at_transaction_boundaries() {
    a_live_database_is_recorded_at_transaction_boundaries_in(&Node::new(), "delete", 2);
}

/// A passive that installs a database removes a `-wal` or `-journal` left beside it:
/// SQLite would otherwise apply pages of another instant to it.
#[test]
fn a_stale_companion_is_removed_before_a_database_goes_in_place() {
    use crate::support::replicate;
    let active = Node::new();
    let connection = Connection::open(active.folder.join("app.db")).unwrap();
    connection
        .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
        .unwrap();
    drop(connection);
    active.capture();
    let passive = Node::new();
    std::fs::write(passive.folder.join("app.db-wal"), b"stale pages").unwrap();
    std::fs::write(passive.folder.join("app.db-journal"), b"stale journal").unwrap();
    replicate(&active, &passive, 100);
    assert!(!passive.folder.join("app.db-wal").exists());
    assert!(!passive.folder.join("app.db-journal").exists());
    let connection = Connection::open(passive.folder.join("app.db")).unwrap();
    let x: i64 = connection
        .query_row("SELECT x FROM t", [], |row| row.get(0))
        .unwrap();
    assert_eq!(x, 1);
    passive.assert_verified();
}

/// Open a database copy that `snapshot` took (an unnamed file) under `path`.
fn open_copy(
    snapshot: standin_engine::folder::read::sqlite::Snapshot,
    path: &std::path::Path,
) -> Connection {
    let mut file = snapshot.file;
    std::io::Seek::rewind(&mut file).unwrap();
    let mut out = std::fs::File::create(path).unwrap();
    std::io::copy(&mut file, &mut out).unwrap();
    Connection::open(path).unwrap()
}

/// A rollback-mode copy that cannot be held under one lock (a bound of 5 ms here, 1 s
/// in capture) lets go of SQLite's shared lock between steps: an idle database is
/// still copied whole, and under a writer (5 s busy timeout, as Python's default)
/// every copy taken is a committed state, the others give up (`Busy`, tried again
/// later), and the writer never sees `database is locked`.
#[test]
fn a_rollback_mode_copy_split_to_bound_its_lock_is_a_committed_state() {
    use standin_engine::folder::read::sqlite::{snapshot_within, Taken};
    let bound = Duration::from_millis(5);
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("app.db");
    let connection = Connection::open(&database).unwrap();
    connection
        .execute_batch(
            "PRAGMA journal_mode = DELETE;
             CREATE TABLE big (data BLOB NOT NULL);
             CREATE TABLE t (id INTEGER PRIMARY KEY, payload BLOB NOT NULL);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 24)
             INSERT INTO big SELECT randomblob(1048576) FROM n;",
        )
        .unwrap();
    drop(connection);
    let take = || {
        let head = std::fs::read(&database).unwrap();
        snapshot_within(
            dir.path(),
            &database,
            dir.path(),
            &head[..20],
            head.len() as u64,
            bound,
        )
        .unwrap()
    };

    // Idle: copied whole although the copy takes longer than the bound.
    let copy = match take() {
        Taken::Copy(snapshot) => snapshot,
        Taken::Busy => panic!("an idle database gave up"),
        Taken::Refused(reason) => panic!("SQLite refused: {reason}"),
    };
    if copy.cloned {
        eprintln!("the file system clones: the split copy is not used here");
        return;
    }
    let check = open_copy(copy, &dir.path().join("idle.db"));
    let (integrity, blobs): (String, i64) = check
        .query_row(
            "SELECT (SELECT integrity_check FROM pragma_integrity_check), (SELECT count(*) FROM big)",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert_eq!((integrity.as_str(), blobs), ("ok", 24));

    // Under a writer that never pauses for long.
    let writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let (database, writing) = (database.clone(), writing.clone());
        std::thread::spawn(move || -> Result<(i64, Duration), String> {
            let mut connection = Connection::open(&database).map_err(|e| e.to_string())?;
            connection
                .busy_timeout(Duration::from_secs(5))
                .map_err(|e| e.to_string())?;
            let (mut committed, mut longest) = (0i64, Duration::ZERO);
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(3) {
                let began = Instant::now();
                let transaction = connection
                    .transaction()
                    .map_err(|e| format!("begin: {e}"))?;
                for _ in 0..ROWS_PER_TRANSACTION {
                    committed += 1;
                    transaction
                        .execute(
                            "INSERT INTO t (id, payload) VALUES (?1, randomblob(300))",
                            [committed],
                        )
                        .map_err(|e| format!("insert {committed}: {e}"))?;
                }
                transaction
                    .commit()
                    .map_err(|e| format!("commit at {committed}: {e}"))?;
                longest = longest.max(began.elapsed());
                std::thread::sleep(Duration::from_millis(1));
            }
            writing.store(false, std::sync::atomic::Ordering::SeqCst);
            Ok((committed, longest))
        })
    };
    let (mut copies, mut gave_up, mut longest_lock) = (0, 0, Duration::ZERO);
    while writing.load(std::sync::atomic::Ordering::SeqCst) {
        match take() {
            Taken::Copy(snapshot) => {
                longest_lock = longest_lock.max(snapshot.lock_held);
                let check = open_copy(snapshot, &dir.path().join(format!("copy{copies}.db")));
                let (integrity, count, max, blobs): (String, i64, i64, i64) = check
                    .query_row(
                        "SELECT (SELECT integrity_check FROM pragma_integrity_check),
                                (SELECT count(*) FROM t), (SELECT coalesce(max(id), 0) FROM t),
                                (SELECT count(*) FROM big)",
                        [],
                        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
                    )
                    .unwrap();
                assert_eq!(integrity, "ok", "copy {copies}");
                assert_eq!(count, max, "copy {copies}: the rows are a prefix");
                assert_eq!(
                    count % ROWS_PER_TRANSACTION,
                    0,
                    "copy {copies}: {count} rows"
                );
                assert_eq!(blobs, 24, "copy {copies}");
                copies += 1;
            }
            Taken::Busy => gave_up += 1,
            Taken::Refused(reason) => panic!("SQLite refused: {reason}"),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let (committed, longest_commit) = writer
        .join()
        .unwrap()
        .unwrap_or_else(|error| panic!("the writer failed: {error}"));
    eprintln!(
        "split copies under a writer: {copies} taken, {gave_up} gave up; {committed} rows committed, the longest transaction {longest_commit:?}; the longest lock of a copy taken {longest_lock:?}"
    );
    assert!(
        copies + gave_up > 0,
        "no copy was tried while the writer ran"
    );
}
