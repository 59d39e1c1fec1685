//! What capture costs an application writing its SQLite database (issue 15): a writer
//! with Python's default 5 s busy timeout never sees `database is locked` because of
//! capture, in WAL and DELETE journal modes, on a real pair with
//! `replication_period = 0` (the active copies the database again and again while it
//! is written). The quick form uses a database of a few MiB for a few seconds; the
//! soak form one of `STANDIN_SOAK_DB_MIB` (default 1024) written for
//! `STANDIN_SOAK_WRITE_S` (default 60), and reports how long capture held SQLite's
//! lock (`standin_capture_sqlite_lock_seconds_max`, and the longest transaction the
//! writer saw), how long each copy took, and how stale the passive got. The soak is
//! meant for a release build (a debug build's SQLite and hashing are several times
//! slower):
//!
//! ```text
//! cargo test --release -p standin --test consistency -- --ignored --nocapture sqlite_lock
//! ```

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::{heavy, FailoverPair, LogReader};
use crate::support::{poll_for, NodeProcess};

const DATABASE: &str = "app.db";

/// Build a database of `argv[3]` MiB (1 MiB random blobs, one transaction) in journal
/// mode `argv[2]` at `argv[1]`.
const BUILD: &str = r#"
import sqlite3, sys
path, mode, mib = sys.argv[1], sys.argv[2], int(sys.argv[3])
con = sqlite3.connect(path, isolation_level=None)
con.execute("PRAGMA journal_mode=DELETE")
con.execute("PRAGMA synchronous=OFF")
con.execute("BEGIN")
con.execute("CREATE TABLE big(data BLOB NOT NULL)")
con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, payload BLOB NOT NULL)")
con.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
            "INSERT INTO big SELECT randomblob(1048576) FROM n", (mib,))
con.execute("COMMIT")
print(con.execute("PRAGMA journal_mode=" + mode).fetchone()[0])
con.close()
"#;

/// The application: Python's sqlite3 with its default busy timeout (5 s),
/// `synchronous=FULL`, 20 inserts a transaction, about 75 transactions a second, for
/// `argv[3]` seconds. Prints `c <last id> <unix ms> <µs the transaction took>` after
/// each COMMIT, `e <error>` for each failed transaction (then goes on), `done` at the
/// end.
const WRITER: &str = r#"
import os, sqlite3, sys, time
path, mode, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
con = sqlite3.connect(path, isolation_level=None)
con.execute("PRAGMA journal_mode=" + mode)
con.execute("PRAGMA synchronous=FULL")
last = con.execute("SELECT coalesce(max(id), 0) FROM t").fetchone()[0]
started = time.monotonic()
transactions = 0
while time.monotonic() - started < seconds:
    began = time.monotonic()
    try:
        con.execute("BEGIN")
        for i in range(1, 21):
            con.execute("INSERT INTO t(id, at_ms, payload) VALUES (?, ?, ?)",
                        (last + i, time.time_ns() // 1000000, os.urandom(300)))
        con.execute("COMMIT")
        last += 20
        print("c", last, time.time_ns() // 1000000, int((time.monotonic() - began) * 1e6), flush=True)
    except sqlite3.OperationalError as error:
        print("e", repr(error), flush=True)
        if con.in_transaction:
            con.execute("ROLLBACK")
    transactions += 1
    ahead = started + transactions / 75.0 - time.monotonic()
    if ahead > 0:
        time.sleep(ahead)
print("done", flush=True)
"#;

/// The passive's copy as its user would open it, without touching it: one JSON line
/// (`quick`: also `PRAGMA quick_check`).
const PROBE: &str = r#"
import json, sqlite3, sys, urllib.request
try:
    uri = "file:" + urllib.request.pathname2url(sys.argv[1]) + "?mode=ro&immutable=1"
    con = sqlite3.connect(uri, uri=True)
    check = [row[0] for row in con.execute("PRAGMA quick_check")] if sys.argv[2] == "quick" else ["ok"]
    count, top = con.execute("SELECT count(*), coalesce(max(id), 0) FROM t").fetchone()
    print(json.dumps({"ok": True, "check": check, "count": count, "max": top}))
except Exception as error:
    print(json.dumps({"ok": False, "error": repr(error)}))
"#;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_millis() as u64)
        .unwrap_or_default()
}

/// What the writer reported.
#[derive(Default)]
struct Written {
    /// (last id, unix ms) of each committed transaction.
    commits: Vec<(u64, u64)>,
    longest_transaction_us: u64,
    errors: Vec<String>,
    done: bool,
}

/// The Python writer (killed on drop) and a thread reading what it prints.
struct Writer {
    child: Child,
    written: Arc<Mutex<Written>>,
}

impl Writer {
    fn start(database: &Path, mode: &str, seconds: u64) -> Writer {
        let mut child = Command::new("python3")
            .args(["-c", WRITER])
            .arg(database)
            .arg(mode)
            .arg(seconds.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs");
        let written = Arc::new(Mutex::new(Written::default()));
        let shared = written.clone();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut written = shared.lock().unwrap();
                let words: Vec<&str> = line.split_whitespace().collect();
                match words.as_slice() {
                    ["c", id, at, took] => {
                        let number = |text: &str| text.parse::<u64>().unwrap_or_default();
                        written.commits.push((number(id), number(at)));
                        written.longest_transaction_us =
                            written.longest_transaction_us.max(number(took));
                    }
                    ["done"] => written.done = true,
                    _ => written.errors.push(line.clone()),
                }
            }
        });
        Writer { child, written }
    }

    fn done(&self) -> bool {
        self.written.lock().unwrap().done
    }

    fn last_committed(&self) -> u64 {
        let written = self.written.lock().unwrap();
        written
            .commits
            .last()
            .map(|(id, _)| *id)
            .unwrap_or_default()
    }

    /// How long the passive holding rows up to `max` has been behind at `now_ms`: since
    /// the first commit it lacks (0: it has them all).
    fn staleness_ms(&self, max: u64, now_ms: u64) -> u64 {
        let written = self.written.lock().unwrap();
        written
            .commits
            .iter()
            .find(|(id, _)| *id > max)
            .map(|(_, at)| now_ms.saturating_sub(*at))
            .unwrap_or(0)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python(script: &str, args: &[&str]) -> String {
    let output = Command::new("python3")
        .args(["-c", script])
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// The passive's database: (rows, max id), or why it cannot be read.
fn probe(database: &Path, quick_check: bool) -> Result<(u64, u64), String> {
    let path = database.to_string_lossy();
    let text = python(PROBE, &[&path, if quick_check { "quick" } else { "-" }]);
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    if value["ok"] != true {
        return Err(value["error"].as_str().unwrap_or_default().to_string());
    }
    if value["check"] != serde_json::json!(["ok"]) {
        return Err(format!("PRAGMA quick_check: {}", value["check"]));
    }
    Ok((
        value["count"].as_u64().unwrap_or_default(),
        value["max"].as_u64().unwrap_or_default(),
    ))
}

/// One copy of the database as alpha's debug log tells it (`sqlite::snapshot`, or in
/// WAL mode `sqlite::frames`: a read of the log, or of the whole database).
struct Copied {
    copy_ms: f64,
    lock_ms: Option<f64>,
    given_up: bool,
}

/// The copies of the database in alpha's log from byte `from` on.
fn copies_in_log(log: &Path, from: usize) -> Vec<Copied> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let field = |line: &str, key: &str| -> Option<f64> {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(key))
            .and_then(|value| value.parse().ok())
    };
    text.get(from..)
        .unwrap_or_default()
        .lines()
        .filter(|line| {
            (line.contains("database cop") || line.contains("database read"))
                && line.contains(DATABASE)
        })
        .map(|line| Copied {
            copy_ms: field(line, "copy_ms=").unwrap_or_default(),
            lock_ms: field(line, "lock_ms="),
            given_up: line.contains("given up"),
        })
        .collect()
}

fn log_len(node: &NodeProcess) -> usize {
    std::fs::metadata(&node.log)
        .map(|m| m.len() as usize)
        .unwrap_or(0)
}

/// The longest lock capture held, in ms (alpha's `/metrics`).
fn lock_metric_ms(node: &NodeProcess) -> f64 {
    node.metric("standin_capture_sqlite_lock_seconds_max")
        .unwrap_or(f64::NAN)
        * 1e3
}

/// Versions of WAL-mode databases alpha built, by what it read (its `/metrics`).
fn sqlite_reads(node: &NodeProcess) -> Vec<(&'static str, f64)> {
    ["whole", "frames", "across_restart"]
        .into_iter()
        .map(|read| {
            let name = format!("standin_capture_sqlite_reads_total{{read=\"{read}\"}}");
            (read, node.metric(&name).unwrap_or(f64::NAN))
        })
        .collect()
}

/// One run: a database of `mib` MiB in `mode`, in a pair with replication_period 0
/// (in `root`), written by the Python writer for `seconds`; panics when the writer
/// saw an error, when capture tried fewer than `min_copies` copies of the database
/// while it was written, or when the passive does not end with every committed row,
/// intact.
fn writer_beside_capture(
    test: &str,
    root: tempfile::TempDir,
    mode: &str,
    mib: u64,
    seconds: u64,
    min_copies: usize,
    limit: Duration,
) {
    let _heavy = heavy();
    // Built aside, then renamed into the folder: one complete database appears.
    let seed = root.path().join("seed.db");
    let built = Instant::now();
    let journal = python(BUILD, &[&seed.to_string_lossy(), mode, &mib.to_string()]);
    assert_eq!(journal.to_lowercase(), mode.to_lowercase());
    let size = std::fs::metadata(&seed).unwrap().len();
    eprintln!(
        "{test}: built a {} MiB database in {:.1} s",
        size >> 20,
        built.elapsed().as_secs_f64()
    );
    let pair = FailoverPair::start_in(
        root,
        0,
        &[(
            "STANDIN_LOG",
            "info,standin_engine::folder::read::sqlite=debug",
        )],
    );
    let (alpha, beta) = (&pair.alpha, &pair.beta);
    let database = alpha.folder.join(DATABASE);
    let replica = beta.folder.join(DATABASE);
    std::fs::rename(&seed, &database).unwrap();
    let placed = Instant::now();
    let in_beta = poll_for(limit, || probe(&replica, false).is_ok());
    assert!(
        in_beta,
        "{test}: the database did not reach beta within {limit:?}"
    );
    eprintln!(
        "{test}: the idle database was copied, recorded and replicated in {:.1} s; capture's longest lock so far {:.1} ms ({:?})",
        placed.elapsed().as_secs_f64(),
        lock_metric_ms(alpha),
        copies_in_log(&alpha.log, 0)
            .iter()
            .map(|copy| format!(
                "copy {:.0} ms, lock {:.1} ms",
                copy.copy_ms,
                copy.lock_ms.unwrap_or_default()
            ))
            .collect::<Vec<_>>()
    );

    let log_from = log_len(alpha);
    let mut log = LogReader::default();
    log.refresh(alpha);
    let puts_before = log.puts_of(DATABASE).count();
    let writer = Writer::start(&database, mode, seconds);
    let started = Instant::now();
    let (mut stale_most, mut stale_sum, mut samples) = (0u64, 0u64, 0u64);
    while !writer.done() && started.elapsed() < Duration::from_secs(seconds + 30) {
        std::thread::sleep(Duration::from_millis(500));
        if let Ok((_, max)) = probe(&replica, false) {
            let stale = writer.staleness_ms(max, now_ms());
            stale_most = stale_most.max(stale);
            stale_sum += stale;
            samples += 1;
        }
    }
    let lock_ms = lock_metric_ms(alpha);
    log.refresh(alpha);
    let during: Vec<u64> = log
        .puts_of(DATABASE)
        .skip(puts_before)
        .map(|event| event.recorded_at_ms)
        .collect();
    let copies = copies_in_log(&alpha.log, log_from);
    let taken: Vec<&Copied> = copies.iter().filter(|copy| !copy.given_up).collect();
    let given_up = copies.len() - taken.len();
    let (copy_most, copy_sum) = taken.iter().fold((0f64, 0f64), |(most, sum), copy| {
        (most.max(copy.copy_ms), sum + copy.copy_ms)
    });
    let copy_lock_most = copies
        .iter()
        .filter_map(|copy| copy.lock_ms)
        .fold(0f64, f64::max);
    let gaps: Vec<u64> = during.windows(2).map(|pair| pair[1] - pair[0]).collect();

    // Caught up once the writer stopped: every committed row, intact.
    let committed = writer.last_committed();
    let stopped = Instant::now();
    let mut last_seen = Err("not probed".to_string());
    let caught_up = poll_for(limit, || {
        last_seen = probe(&replica, false);
        matches!(last_seen, Ok((_, max)) if max == committed)
    });
    let catch_up = stopped.elapsed();
    // Idle now: the database is not read again (standin's own reads change SQLite's
    // `-shm`, which must not count as a change of the database).
    std::thread::sleep(Duration::from_millis(1_500));
    let idle_from = sqlite_reads(alpha);
    std::thread::sleep(Duration::from_millis(2_000));
    let reads = sqlite_reads(alpha);
    let written = writer.written.lock().unwrap();
    eprintln!(
        "{test}: journal_mode {mode}, {} MiB, {} transactions committed in {seconds} s; the writer's longest transaction {:.1} ms, errors {}; capture's longest lock (/metrics) {lock_ms:.1} ms; while writing: {} copies taken (each {:.0} ms on average, {:.0} ms at most, lock at most {copy_lock_most:.1} ms), {given_up} given up, {} versions recorded (gaps {:?} ms); the passive's staleness sampled every 0.5 s: {:.0} ms on average, {stale_most} ms at most; caught up {:.1} s after the writer stopped; versions by what capture read (/metrics): {reads:?}",
        size >> 20,
        written.commits.len(),
        written.longest_transaction_us as f64 / 1e3,
        written.errors.len(),
        taken.len(),
        copy_sum / taken.len().max(1) as f64,
        copy_most,
        during.len(),
        gaps,
        stale_sum as f64 / samples.max(1) as f64,
        catch_up.as_secs_f64(),
    );
    assert!(
        written.errors.is_empty(),
        "{test}: the writer failed {} times: {:?}",
        written.errors.len(),
        written.errors.iter().take(5).collect::<Vec<_>>()
    );
    assert!(written.done, "{test}: the writer did not finish");
    if mode == "WAL" {
        assert_eq!(
            idle_from, reads,
            "{test}: the idle database was read again (versions by what was read, 2 s apart)"
        );
        // The idle database was read whole when it appeared.
        assert!(
            reads[0].1 >= 1.0,
            "{test}: no whole read of the WAL-mode database counted in /metrics: {reads:?}"
        );
    }
    assert!(
        copies.len() >= min_copies,
        "{test}: capture tried {} copies of the database while it was written (at least {min_copies} expected)",
        copies.len()
    );
    assert!(
        caught_up,
        "{test}: the passive did not reach the last committed row {committed} within {limit:?} after the writer stopped: {last_seen:?}"
    );
    let (count, max) = probe(&replica, true)
        .unwrap_or_else(|error| panic!("{test}: the passive's database: {error}"));
    assert_eq!(
        (count, max),
        (committed, committed),
        "{test}: the passive's rows are not the committed ones"
    );
}

#[test]
fn a_writer_in_wal_mode_never_sees_database_is_locked_because_of_capture() {
    writer_beside_capture(
        "a_writer_in_wal_mode_never_sees_database_is_locked_because_of_capture",
        tempfile::tempdir().unwrap(),
        "WAL",
        4,
        4,
        2,
        Duration::from_secs(60),
    );
}

#[test]
fn a_writer_in_delete_mode_never_sees_database_is_locked_because_of_capture() {
    writer_beside_capture(
        "a_writer_in_delete_mode_never_sees_database_is_locked_because_of_capture",
        tempfile::tempdir().unwrap(),
        "DELETE",
        4,
        4,
        2,
        Duration::from_secs(60),
    );
}

/// The soak's size and duration (`STANDIN_SOAK_DB_MIB`, `STANDIN_SOAK_WRITE_S`).
fn soak_size() -> (u64, u64) {
    let number = |key: &str, default: u64| match std::env::var(key) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{key}={text:?} is not a number")),
        Err(_) => default,
    };
    (
        number("STANDIN_SOAK_DB_MIB", 1024),
        number("STANDIN_SOAK_WRITE_S", 60),
    )
}

/// Where a soak's pair lives: a temp dir beside the others (`STANDIN_SOAK_DIR`, else
/// the system's).
fn soak_root() -> tempfile::TempDir {
    match std::env::var_os("STANDIN_SOAK_DIR") {
        Some(dir) => tempfile::tempdir_in(PathBuf::from(dir)).unwrap(),
        None => tempfile::tempdir().unwrap(),
    }
}

#[test]
#[ignore = "soak: a 1 GiB database (STANDIN_SOAK_DB_MIB) written for 60 s (STANDIN_SOAK_WRITE_S)"]
fn sqlite_lock_soak_wal() {
    let (mib, seconds) = soak_size();
    writer_beside_capture(
        "sqlite_lock_soak_wal",
        soak_root(),
        "WAL",
        mib,
        seconds,
        1,
        Duration::from_secs(900),
    );
}

/// On a file system that cannot clone (ext4 here), the rollback-mode copy is split so
/// as never to hold the lock past `ROLLBACK_LOCK_BOUND`: a database this large is
/// recorded only once its writer pauses (copies given up while it writes).
#[test]
#[ignore = "soak: a 1 GiB database (STANDIN_SOAK_DB_MIB) written for 60 s (STANDIN_SOAK_WRITE_S)"]
fn sqlite_lock_soak_delete() {
    let (mib, seconds) = soak_size();
    writer_beside_capture(
        "sqlite_lock_soak_delete",
        soak_root(),
        "DELETE",
        mib,
        seconds,
        1,
        Duration::from_secs(900),
    );
}

/// The same on a loop-mounted XFS image (as root), where the database is cloned under
/// SQLite's shared lock.
#[test]
#[ignore = "soak: a 1 GiB database (STANDIN_SOAK_DB_MIB) written for 60 s (STANDIN_SOAK_WRITE_S), on XFS"]
fn sqlite_lock_soak_delete_on_xfs() {
    let (mib, seconds) = soak_size();
    // The database, two chunk stores and the passive's copy, with room to spare.
    let Some(xfs) = crate::xfs::xfs_of_or_skip(
        "sqlite_lock_soak_delete_on_xfs",
        (mib << 20) * 6 + (1 << 30),
    ) else {
        return;
    };
    writer_beside_capture(
        "sqlite_lock_soak_delete_on_xfs",
        tempfile::tempdir_in(&xfs.mount).unwrap(),
        "DELETE",
        mib,
        seconds,
        1,
        Duration::from_secs(900),
    );
}
