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
        standin_engine::scan::reconcile(&node.folder, &node.repository, 1)
            .unwrap()
            .is_empty()
    );
    assert_eq!(node.repository.head().seq, before);
    let report =
        standin_engine::verify::verify_live_folder(&node.folder, &node.repository).unwrap();
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
