//! SQLite under SIGKILL of the active, as the issue found it: Python's sqlite3,
//! `synchronous=FULL`, 20 inserts a transaction (about 1,500 rows a second), journal
//! modes WAL and DELETE. The active is killed at a seeded random moment once the
//! database is in its log; the promoted copy must exist, pass `PRAGMA integrity_check`
//! and hold a prefix of the committed rows (ids 1..=max, count = max id). The rows lost
//! (committed on the active, not on the promoted copy) are reported.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::common::{heavy, soak_runs, wait_for_put_in_log, FailoverPair};
use crate::support::{wait_within, FaultRng, LIMIT};

const DATABASE: &str = "app.db";

/// The writer: argv = database, journal mode. Prints the last id of each committed
/// transaction, after COMMIT returned.
const WRITER: &str = r#"
import os, sqlite3, sys, time
path, mode = sys.argv[1], sys.argv[2]
con = sqlite3.connect(path, isolation_level=None)
con.execute("PRAGMA journal_mode=" + mode)
con.execute("PRAGMA synchronous=FULL")
con.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
last = 0
started = time.monotonic()
transactions = 0
while True:
    con.execute("BEGIN")
    for _ in range(20):
        last += 1
        con.execute("INSERT INTO t(id, payload) VALUES (?, ?)", (last, os.urandom(300)))
    con.execute("COMMIT")
    print(last, flush=True)
    transactions += 1
    # About 75 transactions (1,500 rows) a second, as in the issue's reports.
    ahead = started + transactions / 75.0 - time.monotonic()
    if ahead > 0:
        time.sleep(ahead)
"#;

/// The check, as a user of the promoted copy would open it: one JSON line.
const CHECK: &str = r#"
import json, sqlite3, sys
try:
    con = sqlite3.connect(sys.argv[1])
    integrity = [row[0] for row in con.execute("PRAGMA integrity_check")]
    tables = [row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    count, top = (0, 0)
    if "t" in tables:
        count, top = con.execute("SELECT count(*), coalesce(max(id), 0) FROM t").fetchone()
    mode = con.execute("PRAGMA journal_mode").fetchone()[0]
    print(json.dumps({"ok": True, "integrity": integrity, "count": count, "max": top, "journal_mode": mode}))
except Exception as error:
    print(json.dumps({"ok": False, "error": repr(error)}))
"#;

/// The Python writer; killed on drop. A thread follows its output: the last committed id.
struct SqliteWriter {
    child: Child,
    committed: Arc<AtomicU64>,
    started: Instant,
}

impl SqliteWriter {
    fn start(database: &Path, mode: &str) -> SqliteWriter {
        let mut child = Command::new("python3")
            .args(["-c", WRITER])
            .arg(database)
            .arg(mode)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs");
        let committed = Arc::new(AtomicU64::new(0));
        let last = committed.clone();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(id) = line.trim().parse() {
                    last.store(id, Ordering::SeqCst);
                }
            }
        });
        SqliteWriter {
            child,
            committed,
            started: Instant::now(),
        }
    }

    fn committed(&self) -> u64 {
        self.committed.load(Ordering::SeqCst)
    }

    /// Whether the writer is still running (it exits only on an error).
    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for SqliteWriter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Copy the promoted database with its companions (not `-shm`, which SQLite rebuilds)
/// into `into`, and open the copy there.
fn check_promoted(folder: &Path, into: &Path) -> Result<(u64, String), String> {
    let source = folder.join(DATABASE);
    if !source.exists() {
        let names: Vec<String> = std::fs::read_dir(folder)
            .map(|items| {
                items
                    .flatten()
                    .map(|item| item.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        return Err(format!(
            "the promoted folder has no {DATABASE} (it holds {names:?})"
        ));
    }
    std::fs::create_dir_all(into).unwrap();
    let mut companions = Vec::new();
    for suffix in ["", "-wal", "-journal"] {
        let from = folder.join(format!("{DATABASE}{suffix}"));
        if let Ok(metadata) = std::fs::metadata(&from) {
            std::fs::copy(&from, into.join(format!("{DATABASE}{suffix}"))).unwrap();
            companions.push(format!("{DATABASE}{suffix} ({} bytes)", metadata.len()));
        }
    }
    let output = Command::new("python3")
        .args(["-c", CHECK])
        .arg(into.join(DATABASE))
        .output()
        .expect("python3 runs");
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).map_err(|_| {
        format!(
            "the check printed no result: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    let companions = companions.join(", ");
    if result["ok"] != true {
        return Err(format!(
            "the promoted database does not open [{companions}]: {}",
            result["error"].as_str().unwrap_or_default()
        ));
    }
    let integrity: Vec<&str> = result["integrity"]
        .as_array()
        .map(|rows| rows.iter().filter_map(|row| row.as_str()).collect())
        .unwrap_or_default();
    if integrity != ["ok"] {
        let first: Vec<&str> = integrity.iter().take(8).copied().collect();
        return Err(format!(
            "PRAGMA integrity_check on the promoted database [{companions}]: {}",
            first.join("; ")
        ));
    }
    let (count, max) = (
        result["count"].as_u64().unwrap_or_default(),
        result["max"].as_u64().unwrap_or_default(),
    );
    if count != max {
        return Err(format!(
            "the promoted database [{companions}] holds {count} rows with ids up to {max}: not a prefix of the committed rows"
        ));
    }
    Ok((max, companions))
}

/// The staleness bound of the soak forms, opt-in: `STANDIN_SOAK_MAX_LOST_S` (seconds
/// of committed writing a promoted copy may lack; the issue's bound is
/// max_capture_delay_ms plus the replication lag). Unset: reported only.
fn max_lost_seconds() -> Option<f64> {
    std::env::var("STANDIN_SOAK_MAX_LOST_S").ok().map(|text| {
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("STANDIN_SOAK_MAX_LOST_S={text:?} is not a number"))
    })
}

/// `runs` kills in `mode`, alternating replication_period 0 and 1 (starting with
/// `first_period`); panics naming every promoted copy that is missing or corrupt (and,
/// with `bound`, every one that lost more than `bound` seconds of committed writing).
fn inserts_under_sigkill(
    test: &str,
    base: Option<&Path>,
    mode: &str,
    runs: usize,
    first_period: usize,
    kill_after_ms: (u64, u64),
    bound: Option<f64>,
) -> f64 {
    let _heavy = heavy();
    let mut rng = FaultRng::for_test(test);
    let mut failures = Vec::new();
    let (mut opened, mut lost_total, mut lost_most) = (0usize, 0i64, 0f64);
    let mut cloned = 0f64;
    for run in 0..runs {
        let period = ((run + first_period) % 2) as u32;
        let mut pair = FailoverPair::start_on(base, period);
        let mut writer = SqliteWriter::start(&pair.alpha.folder.join(DATABASE), mode);
        wait_for_put_in_log(&pair.alpha, "the database in alpha's log", |path| {
            path == DATABASE
        });
        // And replicated, so that a missing database on the promoted copy is a failure.
        wait_for_put_in_log(&pair.beta, "the database in beta's log", |path| {
            path == DATABASE
        });
        if base.is_some() {
            // On XFS the clone path is the point: the database passes 1 MiB (its new
            // versions are then kept by reference, each begun as a clone of the last)
            // before the kill's delay starts, whatever this machine's writing rate.
            let database = pair.alpha.folder.join(DATABASE);
            wait_within("the database past 1.5 MiB on the active", LIMIT, || {
                std::fs::metadata(&database).is_ok_and(|meta| meta.len() >= 3 << 19)
            });
        }
        let delay = rng.millis(kill_after_ms.0, kill_after_ms.1);
        std::thread::sleep(delay);
        assert!(
            writer.running(),
            "the writer stopped on the active's folder"
        );
        let committed = writer.committed();
        let writing = writer.started.elapsed().as_secs_f64();
        pair.kill_active_and_wait_for_promotion();
        drop(writer);

        if base.is_some() {
            cloned += pair
                .beta
                .metric("standin_replay_cloned_bytes_total")
                .unwrap_or(0.0);
        }
        let check_dir = pair.root().join("check");
        let outcome = check_promoted(&pair.beta.folder, &check_dir);
        let rate = committed as f64 / writing.max(0.001);
        match &outcome {
            Ok((max, companions)) => {
                let lost = committed as i64 - *max as i64;
                let lost_seconds = lost as f64 / rate.max(1.0);
                opened += 1;
                lost_total += lost;
                lost_most = lost_most.max(lost_seconds);
                eprintln!(
                    "{test} run {run}: journal_mode {mode}, replication_period {period}, killed {} ms after the database was logged: {committed} rows committed by then, the promoted copy [{companions}] holds 1..={max}: {lost} committed rows lost ({lost_seconds:.2} s of writing at {rate:.0} rows/s)",
                    delay.as_millis(),
                );
                if let Some(bound) = bound.filter(|bound| lost_seconds > *bound) {
                    failures.push(format!(
                        "run {run} (journal_mode {mode}, replication_period {period}): the promoted copy lacks {lost_seconds:.2} s of committed rows ({lost} rows), more than {bound} s"
                    ));
                }
            }
            Err(error) => {
                eprintln!(
                    "{test} run {run}: journal_mode {mode}, replication_period {period}, killed {} ms after the database was logged, {committed} rows committed by then: {error}",
                    delay.as_millis()
                );
                failures.push(format!(
                    "run {run} (journal_mode {mode}, replication_period {period}, killed {} ms after the database was logged, {committed} rows committed): {error}",
                    delay.as_millis()
                ));
            }
        }
        drop(pair);
    }
    if opened > 0 {
        eprintln!(
            "{test}: the promoted copies that opened lost {:.0} committed rows on average, {lost_most:.2} s of writing at most",
            lost_total as f64 / opened as f64
        );
    }
    if base.is_some() {
        eprintln!("{test}: the passives took {cloned} bytes of new versions from clones");
    }
    assert!(
        failures.is_empty(),
        "{} of {runs} promoted databases ({mode}) are missing, corrupt or too stale:\n{}",
        failures.len(),
        failures.join("\n")
    );
    cloned
}

#[test]
fn a_promoted_sqlite_database_in_wal_mode_is_a_committed_prefix() {
    inserts_under_sigkill(
        "a_promoted_sqlite_database_in_wal_mode_is_a_committed_prefix",
        None,
        "WAL",
        1,
        0,
        (500, 5_000),
        None,
    );
}

#[test]
fn a_promoted_sqlite_database_in_delete_mode_is_a_committed_prefix() {
    inserts_under_sigkill(
        "a_promoted_sqlite_database_in_delete_mode_is_a_committed_prefix",
        None,
        "DELETE",
        1,
        1,
        (500, 5_000),
        None,
    );
}

#[test]
#[ignore = "soak: STANDIN_SOAK_RUNS kills (default 40)"]
fn a_promoted_sqlite_database_in_wal_mode_is_a_committed_prefix_soak() {
    inserts_under_sigkill(
        "a_promoted_sqlite_database_in_wal_mode_is_a_committed_prefix_soak",
        None,
        "WAL",
        soak_runs(40),
        0,
        (200, 9_000),
        max_lost_seconds(),
    );
}

#[test]
#[ignore = "soak: STANDIN_SOAK_RUNS kills (default 40)"]
fn a_promoted_sqlite_database_in_delete_mode_is_a_committed_prefix_soak() {
    inserts_under_sigkill(
        "a_promoted_sqlite_database_in_delete_mode_is_a_committed_prefix_soak",
        None,
        "DELETE",
        soak_runs(40),
        0,
        (200, 9_000),
        max_lost_seconds(),
    );
}

/// The same on a loop-mounted XFS image with reflink (as root; skipped elsewhere):
/// the active reads the database from clones taken under SQLite's lock, and the
/// passive begins each new version of it (1 MiB or more) as a clone of the last.
/// Killed once the database has passed 1.5 MiB (later than on ext4).
#[test]
fn a_promoted_sqlite_database_on_xfs_is_a_committed_prefix() {
    let test = "a_promoted_sqlite_database_on_xfs_is_a_committed_prefix";
    let Some(xfs) = crate::xfs::xfs_of_or_skip(test, 1 << 30) else {
        return;
    };
    let mut cloned = 0.0;
    for (mode, first_period) in [("DELETE", 0), ("WAL", 1)] {
        cloned += inserts_under_sigkill(
            test,
            Some(&xfs.mount),
            mode,
            1,
            first_period,
            (1_000, 3_000),
            None,
        );
    }
    assert!(
        cloned > 0.0,
        "no new version of the database was begun as a clone: the clone path was not tested"
    );
}
