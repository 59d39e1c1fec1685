//! Versions read from the `-wal` are committed states: SQLite itself opens each one,
//! passes `integrity_check`, and holds the rows committed up to some commit.

use super::*;
use crate::folder::read::sqlite::wal::Position;
use crate::hash::Hash;
use crate::repository::Repository;
use rusqlite::Connection;

struct Fixture {
    _dir: tempfile::TempDir,
    folder: PathBuf,
    repository: Repository,
    writer: Connection,
}

impl Fixture {
    /// A WAL database with a table, written by a connection held open.
    fn new(autocheckpoint: u32) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("folder");
        std::fs::create_dir_all(&folder).unwrap();
        let repository = Repository::open(&dir.path().join("data")).unwrap();
        let writer = Connection::open(folder.join("app.db")).unwrap();
        writer
            .execute_batch(&format!(
                "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = {autocheckpoint};
                 CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB);"
            ))
            .unwrap();
        Fixture {
            _dir: dir,
            folder,
            repository,
            writer,
        }
    }

    fn db(&self) -> PathBuf {
        self.folder.join("app.db")
    }

    fn insert(&self, from: i64, count: i64, bytes: usize) {
        self.writer.execute_batch("BEGIN").unwrap();
        for id in from..from + count {
            self.writer
                .execute(
                    "INSERT INTO t VALUES (?1, randomblob(?2))",
                    (id, bytes as i64),
                )
                .unwrap();
        }
        self.writer.execute_batch("COMMIT").unwrap();
    }

    fn outcome(&self) -> Outcome {
        capture(
            &self.folder,
            &self.db(),
            self.repository.data_dir(),
            self.repository.chunks(),
            4096,
        )
        .unwrap()
    }

    fn capture(&self) -> (Chunked, bool, u64) {
        let (chunked, read, bytes_read) = self.capture_read();
        (chunked, read != Read::Whole, bytes_read)
    }

    /// A version, what was read to build it, and the bytes read.
    fn capture_read(&self) -> (Chunked, Read, u64) {
        match self.outcome() {
            Outcome::Version {
                chunked,
                read,
                bytes_read,
                ..
            } => (chunked, read, bytes_read),
            Outcome::Busy => panic!("busy"),
            Outcome::Fallback => panic!("fallback"),
            Outcome::Refused(reason) => panic!("refused: {reason}"),
        }
    }

    /// Put the version together from its chunks, check its hash, open it with SQLite:
    /// its row count (the database must pass `integrity_check`).
    fn rows_of(&self, chunked: &Chunked) -> i64 {
        let mut bytes = Vec::new();
        for chunk in &chunked.chunks {
            bytes.extend(self.repository.chunks().get(&chunk.hash).unwrap());
        }
        assert_eq!(bytes.len() as u64, chunked.size);
        assert_eq!(Hash::of(&bytes), chunked.content, "the merged hash");
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("copy.db");
        std::fs::write(&copy, &bytes).unwrap();
        let connection = Connection::open(&copy).unwrap();
        let check: String = connection
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        connection
            .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .unwrap()
    }
}

#[test]
fn a_version_read_whole_then_from_new_frames_is_each_time_a_committed_state() {
    let fixture = Fixture::new(0);
    fixture.insert(0, 50, 3_000);
    let (first, incremental, _) = fixture.capture();
    assert!(!incremental, "the first capture reads the database whole");
    assert_eq!(fixture.rows_of(&first), 50);
    for round in 1..4 {
        fixture.insert(round * 100, 20, 3_000);
        let (next, incremental, _) = fixture.capture();
        assert!(incremental, "round {round}: read from the new frames");
        assert_eq!(fixture.rows_of(&next), 50 + round * 20);
        // The same content as a whole read of the same state.
        forget_all_of(&fixture);
        let (whole, incremental, _) = fixture.capture();
        assert!(!incremental);
        assert_eq!(whole, next, "round {round}");
    }
    // Nothing new: the same version, read from nothing but the log's end.
    let (again, incremental, _) = fixture.capture();
    assert!(incremental);
    assert_eq!(fixture.rows_of(&again), 110);
}

/// Forget this fixture's kept version only (other tests run beside it).
fn forget_all_of(fixture: &Fixture) {
    known().remove(&(fixture.repository.data_dir().to_path_buf(), fixture.db()));
}

/// The old generation ends at the end of the file here: it may have been cut there,
/// so the rest of it is not trusted to be whole.
#[test]
fn a_restarted_log_is_read_whole_again() {
    let fixture = Fixture::new(0);
    fixture.insert(0, 30, 2_000);
    fixture.capture();
    fixture.insert(100, 10, 2_000);
    fixture
        .writer
        .execute_batch("PRAGMA wal_checkpoint(RESTART);")
        .unwrap();
    fixture.insert(200, 5, 2_000);
    let (version, incremental, _) = fixture.capture();
    assert!(!incremental, "a new generation of the log");
    assert_eq!(fixture.rows_of(&version), 45);
    fixture.insert(300, 5, 2_000);
    let (version, incremental, _) = fixture.capture();
    assert!(incremental);
    assert_eq!(fixture.rows_of(&version), 50);
}

impl Fixture {
    /// Copy the whole log into the database (no reader holds it back): the next write
    /// restarts the log with the next generation's salts.
    fn checkpoint(&self) {
        let (busy, log, copied): (i64, i64, i64) = self
            .writer
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })
            .unwrap();
        assert_eq!((busy, log), (0, copied), "the whole log checkpointed");
    }

    /// Frames in the log file as it is now.
    fn frames_on_disk(&self) -> u64 {
        let len = std::fs::metadata(wal_path(&self.db())).unwrap().len();
        (len - wal::HEADER_BYTES) / (wal::FRAME_HEADER_BYTES + 4096)
    }

    /// A version read whole, now, of the same state: what a version read otherwise
    /// must equal.
    fn whole_again(&self) -> Chunked {
        forget_all_of(self);
        let (whole, read, _) = self.capture_read();
        assert_eq!(read, Read::Whole);
        whole
    }
}

/// A long first generation, so the second ends before the end of the file.
fn second_generation_with_a_version() -> Fixture {
    let fixture = Fixture::new(0);
    fixture.insert(0, 200, 3_000);
    fixture.checkpoint();
    fixture.insert(1_000, 40, 3_000);
    let (first, read, _) = fixture.capture_read();
    assert_eq!(read, Read::Whole);
    assert_eq!(fixture.rows_of(&first), 240);
    fixture
}

#[test]
fn the_rest_of_the_old_generation_then_the_new_one_make_the_next_version() {
    let fixture = second_generation_with_a_version();
    // Committed after the version, in the old generation, in two transactions.
    fixture.insert(2_000, 20, 3_000);
    fixture.insert(3_000, 10, 3_000);
    fixture.checkpoint();
    // The new generation, shorter than the position the version was read at.
    fixture.insert(4_000, 5, 3_000);
    let (next, read, bytes_read) = fixture.capture_read();
    assert_eq!(read, Read::AcrossRestart);
    assert_eq!(fixture.rows_of(&next), 275);
    assert!(
        bytes_read < next.size / 2,
        "{bytes_read} bytes read of {}",
        next.size
    );
    assert_eq!(fixture.whole_again(), next);
    // And the new generation goes on from there.
    fixture.insert(5_000, 5, 3_000);
    let (after, read, _) = fixture.capture_read();
    assert_eq!(read, Read::Frames);
    assert_eq!(fixture.rows_of(&after), 280);
    // Nothing committed in either generation since the version: the same content.
    fixture.checkpoint();
    fixture
        .writer
        .execute_batch("BEGIN; CREATE TABLE u (x); ROLLBACK;")
        .unwrap();
    let (same, _, _) = fixture.capture_read();
    assert_eq!(same, after);
}

/// A commit frame after the old generation's last commit that SQLite never took as a
/// commit (its writer died or failed before updating the `-shm`): the log alone looks
/// the same, the database file does not hold its page, so the database is read whole.
#[test]
fn a_commit_frame_sqlite_never_committed_is_not_taken_across_a_restart() {
    use std::os::unix::fs::FileExt;
    let fixture = second_generation_with_a_version();
    fixture.insert(2_000, 20, 3_000);
    let log = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(wal_path(&fixture.db()))
        .unwrap();
    let header = wal::read_header(&log).unwrap().unwrap();
    let start = Position {
        frame: 0,
        checksum: header.checksum,
    };
    let end = wal::read_committed(&log, &header, start, u64::MAX)
        .unwrap()
        .unwrap()
        .end
        .unwrap();
    let frame_bytes = wal::FRAME_HEADER_BYTES as usize + 4096;
    let offset = |frame: u32| wal::HEADER_BYTES + u64::from(frame - 1) * frame_bytes as u64;
    // The last committed frame again, its page changed, chained after it.
    let mut phantom = vec![0u8; frame_bytes];
    log.read_exact_at(&mut phantom, offset(end.frame)).unwrap();
    let page_at = wal::FRAME_HEADER_BYTES as usize;
    for byte in &mut phantom[page_at + 2_000..page_at + 2_100] {
        *byte ^= 0x5a;
    }
    let sum = wal::checksum(header.big_endian, &phantom[..8], end.checksum);
    let sum = wal::checksum(header.big_endian, &phantom[page_at..], sum);
    phantom[16..20].copy_from_slice(&sum[0].to_be_bytes());
    phantom[20..24].copy_from_slice(&sum[1].to_be_bytes());
    log.write_all_at(&phantom, offset(end.frame + 1)).unwrap();
    // SQLite checkpoints its commits only; the next write restarts the log.
    fixture.checkpoint();
    fixture.insert(3_000, 5, 3_000);
    let (next, read, _) = fixture.capture_read();
    assert_eq!(read, Read::Whole, "a frame never committed was taken");
    assert_eq!(fixture.rows_of(&next), 265);
    assert_eq!(fixture.whole_again(), next);
}

#[test]
fn an_old_generation_cut_short_by_journal_size_limit_is_read_whole() {
    let fixture = second_generation_with_a_version();
    fixture.insert(2_000, 60, 3_000);
    let frames = fixture.frames_on_disk();
    // The next generation's first commit cuts the file to 80 frames: past the
    // version's position, before the old generation's last commit.
    let limit = wal::HEADER_BYTES + 80 * (wal::FRAME_HEADER_BYTES + 4096);
    fixture
        .writer
        .execute_batch(&format!("PRAGMA journal_size_limit = {limit};"))
        .unwrap();
    fixture.checkpoint();
    fixture.insert(3_000, 5, 3_000);
    assert!(
        fixture.frames_on_disk() < frames,
        "the log was cut from {frames} frames"
    );
    let (next, read, _) = fixture.capture_read();
    assert_eq!(read, Read::Whole, "the rest of the old generation is gone");
    assert_eq!(fixture.rows_of(&next), 305);
}

#[test]
fn a_log_restarted_twice_or_past_the_position_is_read_whole() {
    let fixture = second_generation_with_a_version();
    // Two restarts since the version.
    fixture.insert(2_000, 5, 3_000);
    fixture.checkpoint();
    fixture.insert(2_500, 5, 3_000);
    fixture.checkpoint();
    fixture.insert(2_900, 5, 3_000);
    let (next, read, _) = fixture.capture_read();
    assert_eq!(read, Read::Whole, "two restarts");
    assert_eq!(fixture.rows_of(&next), 255);
    // A version well inside a generation, then one restart whose new generation
    // writes past the position that version was read at.
    fixture.insert(3_000, 60, 3_000);
    let (next, read, _) = fixture.capture_read();
    assert_eq!(read, Read::Frames);
    assert_eq!(fixture.rows_of(&next), 315);
    fixture.insert(4_000, 5, 3_000);
    fixture.checkpoint();
    fixture.insert(5_000, 100, 3_000);
    let (next, read, _) = fixture.capture_read();
    assert_eq!(read, Read::Whole, "the new generation is past the position");
    assert_eq!(fixture.rows_of(&next), 420);
}

#[test]
fn an_incremental_capture_reads_what_changed_not_the_database() {
    let fixture = Fixture::new(0);
    // About 16 MiB, checkpointed into the file so the log starts small.
    for batch in 0..16 {
        fixture.insert(batch * 1_000, 250, 4_000);
    }
    fixture
        .writer
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    // The log starts a new generation with the next commit: read whole once.
    fixture.insert(20_000, 1, 10);
    let (whole, incremental, read) = fixture.capture();
    assert!(!incremental);
    assert!(whole.size > 15 << 20, "{} bytes", whole.size);
    assert!(read >= whole.size, "read {read} of {}", whole.size);
    fixture
        .writer
        .execute("UPDATE t SET v = randomblob(100) WHERE id = 7", [])
        .unwrap();
    let (next, incremental, read) = fixture.capture();
    assert!(incremental);
    assert!(read < 1 << 20, "an incremental capture read {read} bytes");
    assert_eq!(fixture.rows_of(&next), 4_001);
    let changed = next
        .chunks
        .iter()
        .zip(&whole.chunks)
        .filter(|(new, old)| new != old)
        .count();
    assert!(changed <= 4, "{changed} pieces changed for one row");
}

#[test]
fn versions_taken_beside_a_busy_writer_with_checkpoints_are_committed_states() {
    // A bounded writer (so a slow machine checks the same amount of work), with
    // checkpoints every 100 pages restarting the log under capture's feet: versions
    // are read whole, from new frames and across restarts, each a committed state.
    const TRANSACTIONS: i64 = 400;
    let fixture = Fixture::new(100);
    fixture.insert(0, 1, 10);
    let db = fixture.db();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The writer keeps at most a few transactions ahead of the versions taken, so that
    // versions fall between checkpoints however slow the machine (under load, a free
    // writer finished with no version taken across a restart).
    let taken = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    let writer = {
        let done = done.clone();
        let taken = taken.clone();
        std::thread::spawn(move || {
            let connection = Connection::open(&db).unwrap();
            connection.busy_timeout(Duration::from_secs(5)).unwrap();
            // The setting is the connection's own (the fixture's does not carry over).
            connection
                .execute_batch("PRAGMA wal_autocheckpoint = 100;")
                .unwrap();
            for transaction in 0..TRANSACTIONS {
                let paced = crate::clock::instant();
                while taken.load(std::sync::atomic::Ordering::Relaxed) < transaction / 3
                    && paced.elapsed() < Duration::from_secs(5)
                {
                    std::thread::sleep(Duration::from_micros(200));
                }
                connection.execute_batch("BEGIN").unwrap();
                for row in 0..5 {
                    connection
                        .execute(
                            "INSERT INTO t VALUES (?1, randomblob(1500))",
                            [1 + transaction * 5 + row],
                        )
                        .unwrap();
                }
                connection.execute_batch("COMMIT").unwrap();
                std::thread::sleep(Duration::from_micros(500));
            }
            done.store(true, std::sync::atomic::Ordering::Relaxed);
        })
    };
    let (mut rows, mut kinds) = (0, [0u32; 3]);
    loop {
        let finished = done.load(std::sync::atomic::Ordering::Relaxed);
        let version = match fixture.outcome() {
            Outcome::Version { chunked, read, .. } => {
                kinds[read as usize] += 1;
                chunked
            }
            Outcome::Busy => continue,
            Outcome::Fallback => panic!("fallback"),
            Outcome::Refused(reason) => panic!("refused: {reason}"),
        };
        taken.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now = fixture.rows_of(&version);
        assert!(now >= rows, "went back from {rows} rows to {now}");
        assert_eq!((now - 1) % 5, 0, "{now} rows: a transaction taken in part");
        rows = now;
        if finished {
            break;
        }
    }
    writer.join().unwrap();
    assert_eq!(
        rows,
        1 + TRANSACTIONS * 5,
        "the last version holds every row"
    );
    println!("versions read whole, from frames, across a restart: {kinds:?}");
    assert!(
        kinds[0] >= 1 && kinds[1] > 0 && kinds[2] > 0,
        "versions read whole, from frames, across a restart: {kinds:?}"
    );
}

/// The cost of one capture of a large WAL-mode database after one small transaction:
/// SQLite's backup (what every capture cost before) against a read of the new frames.
/// `STANDIN_SOAK_DIR` (a file system with room) and `STANDIN_SOAK_MIB` (default 1024):
/// `cargo test --release -p standin-engine --lib -- --ignored --nocapture wal_capture_cost`
#[test]
#[ignore]
fn wal_capture_cost() {
    let root = std::env::var_os("STANDIN_SOAK_DIR").map(PathBuf::from);
    let mib: i64 = std::env::var("STANDIN_SOAK_MIB")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(1024);
    let dir = match &root {
        Some(root) => tempfile::tempdir_in(root).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let folder = dir.path().join("folder");
    std::fs::create_dir_all(&folder).unwrap();
    let repository = Repository::open(&dir.path().join("data")).unwrap();
    let db = folder.join("app.db");
    let writer = Connection::open(&db).unwrap();
    writer
        .execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB);",
        )
        .unwrap();
    for batch in 0..mib {
        writer.execute_batch("BEGIN").unwrap();
        for row in 0..256 {
            writer
                .execute(
                    "INSERT INTO t VALUES (?1, randomblob(4000))",
                    [batch * 256 + row],
                )
                .unwrap();
        }
        writer.execute_batch("COMMIT").unwrap();
    }
    writer
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    let size = std::fs::metadata(&db).unwrap().len();
    let commit = |id: i64| {
        writer.execute_batch("BEGIN").unwrap();
        for row in 0..20 {
            writer
                .execute(
                    "UPDATE t SET v = randomblob(4000) WHERE id = ?1",
                    [(id * 7_919 + row * 104_729) % (mib * 256)],
                )
                .unwrap();
        }
        writer.execute_batch("COMMIT").unwrap();
    };
    let run = |label: &str| {
        let started = crate::clock::instant();
        let outcome = capture(
            &folder,
            &db,
            repository.data_dir(),
            repository.chunks(),
            4096,
        )
        .unwrap();
        let took = started.elapsed();
        let Outcome::Version {
            read,
            bytes_read,
            lock_held,
            ..
        } = outcome
        else {
            panic!("{label}: not a version");
        };
        println!(
            "{label}: {:.1} ms, {bytes_read} bytes read, read transaction {:.1} ms, {read:?}",
            took.as_secs_f64() * 1e3,
            lock_held.as_secs_f64() * 1e3
        );
        (read != Read::Whole, bytes_read)
    };
    println!("database: {size} bytes");
    commit(1);
    run("first capture (whole read)");
    for id in 2..7 {
        commit(id);
        let (incremental, bytes_read) = run("after one 20-row transaction");
        assert!(incremental && bytes_read < size / 16);
    }
    commit(99);
    let started = crate::clock::instant();
    let super::super::Taken::Copy(snapshot) = super::super::snapshot(
        &folder,
        &db,
        repository.data_dir(),
        b"SQLite format 3\0\x10\x00\x02\x02",
        size,
    )
    .unwrap() else {
        panic!("the backup was not taken");
    };
    let copied = started.elapsed();
    let stored =
        crate::chunk_store::chunking::store_content(&snapshot.file, repository.chunks(), &db)
            .unwrap();
    println!(
        "SQLite's backup (every capture before): copy {:.1} ms, copy and store {:.1} ms, {} bytes",
        copied.as_secs_f64() * 1e3,
        started.elapsed().as_secs_f64() * 1e3,
        stored.size
    );
}
