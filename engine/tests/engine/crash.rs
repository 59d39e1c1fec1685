//! Crash safety of replay: a child process applies a long run of events and is killed
//! with SIGKILL at random points; after each kill the replica is reopened and the
//! child started again. At the end the replica has the source's digest, passes
//! verification, and holds no temporary file.
//!
//! The child is this same test binary, re-run with `STANDIN_CRASH_CHILD` set.

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use standin_engine::replay::{apply_batch_with, apply_fed, recover, Feed, ReplayOptions};
use standin_engine::{Event, Hash, Repository};

use crate::support::{ship_chunks, snapshot, Node};

const CHILD_ENV: &str = "STANDIN_CRASH_CHILD";
/// Set in a child: apply in batches of this many events, committed in parts of 7.
const BATCH_ENV: &str = "STANDIN_CRASH_BATCH";
/// Set in a child: each apply is fed the next batches while it runs.
const FED_ENV: &str = "STANDIN_CRASH_FED";

pub(crate) fn write_events(path: &Path, events: &[Event]) {
    let mut file = std::fs::File::create(path).unwrap();
    for event in events {
        let canonical = event.body.canonical_bytes();
        file.write_all(&(canonical.len() as u32).to_le_bytes())
            .unwrap();
        file.write_all(&event.prev.0).unwrap();
        file.write_all(&event.hash.0).unwrap();
        file.write_all(&canonical).unwrap();
    }
}

pub(crate) fn read_events(path: &Path) -> Vec<Event> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    let mut events = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let prev = Hash::from_slice(&bytes[at + 4..at + 36]).unwrap();
        let hash = Hash::from_slice(&bytes[at + 36..at + 68]).unwrap();
        events.push(Event::from_parts(prev, &bytes[at + 68..at + 68 + len], hash).unwrap());
        at += 68 + len;
    }
    events
}

/// Apply every event after the replica's head, in batches of `batch` (committed in
/// parts as `options` says), until done.
fn apply_all(
    folder: &Path,
    repository: &Repository,
    events: &[Event],
    batch: usize,
    options: &ReplayOptions,
) {
    recover(folder, repository).unwrap();
    loop {
        let head = repository.head().seq as usize;
        if head >= events.len() {
            return;
        }
        let end = (head + batch).min(events.len());
        apply_batch_with(folder, repository, &events[head..end], options).unwrap();
    }
}

/// `apply_all`, but each apply fed batches of `batch` while it runs (`replay::Feed`),
/// as the passive's pull does: a kill then also lands while one batch is written and
/// the one before it committed.
fn apply_all_fed(
    folder: &Path,
    repository: &Repository,
    events: &[Event],
    batch: usize,
    options: &ReplayOptions,
) {
    loop {
        let head = repository.head().seq as usize;
        if head >= events.len() {
            return;
        }
        let mut batches = events[head..].chunks(batch).map(|batch| batch.to_vec());
        let feed = Feed::new(batches.next().unwrap_or_default());
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for batch in batches {
                    if feed.offer(batch).is_err() {
                        break;
                    }
                }
            });
            apply_fed(folder, repository, &feed, options).unwrap();
        });
    }
}

/// The child's body; a no-op in a normal test run.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let repository = Repository::open(&dir.join("data")).unwrap();
    let events = read_events(&dir.join("events.bin"));
    // Small batches, or larger ones committed in parts (each part's durability point
    // overlapping the next part's writes): the kill lands in either.
    let (batch, options) = match std::env::var(BATCH_ENV)
        .ok()
        .and_then(|value| value.parse().ok())
    {
        Some(batch) => (
            batch,
            ReplayOptions {
                commit_part_events: 7,
                ..ReplayOptions::default()
            },
        ),
        None => (3, ReplayOptions::default()),
    };
    let fed = std::env::var(FED_ENV).is_ok();
    // Tell the parent the slow start-up is over: the kill should land in the replay.
    println!("child ready");
    std::io::stdout().flush().unwrap();
    if fed {
        apply_all_fed(&dir.join("folder"), &repository, &events, batch, &options);
    } else {
        apply_all(&dir.join("folder"), &repository, &events, batch, &options);
    }
}

pub(crate) fn has_temporary_files(root: &Path) -> bool {
    snapshot(root).keys().any(|path| {
        standin_engine::path::is_temporary_name(path.rsplit('/').next().unwrap_or("").as_bytes())
    })
}

#[test]
fn replay_killed_at_random_points_converges() {
    // A source with a varied history: files large and small, directories, renames of
    // files and directories, removals and rewrites.
    let source = Node::new();
    for round in 0..12u32 {
        let dir = source.folder.join(format!("dir{}", round % 3));
        std::fs::create_dir_all(&dir).unwrap();
        for index in 0..40u32 {
            let size = if index % 13 == 0 {
                300_000
            } else {
                1_000 + (index * 97 % 5000) as usize
            };
            let bytes: Vec<u8> = (0..size)
                .map(|at| ((at as u32 * 31 + index + round) % 251) as u8)
                .collect();
            std::fs::write(dir.join(format!("file{index}")), bytes).unwrap();
        }
        source.capture();
        let from = source.folder.join(format!("dir{}", round % 3));
        let to = source.folder.join(format!("moved{round}"));
        std::fs::rename(&from, &to).unwrap();
        let relative =
            |path: &Path| standin_engine::RelPath::from_fs(&source.folder, path).unwrap();
        source
            .repository
            .record(
                1,
                vec![standin_engine::Change::Rename {
                    from: relative(&from),
                    to: relative(&to),
                }],
            )
            .unwrap();
        std::fs::remove_file(to.join("file3")).unwrap();
        std::fs::write(to.join("file4"), format!("rewritten in round {round}")).unwrap();
        source.capture();
    }
    let events = source
        .repository
        .log()
        .events_after(0, &Hash::ZERO, usize::MAX)
        .unwrap();
    assert!(events.len() > 250, "a long history: {}", events.len());

    let work = tempfile::tempdir().unwrap();
    let folder = work.path().join("folder");
    std::fs::create_dir(&folder).unwrap();
    {
        let replica = Repository::open(&work.path().join("data")).unwrap();
        ship_chunks(&source.repository, &replica, &events);
        replica.chunks().sync().unwrap();
        replica.flush().unwrap();
    }
    write_events(&work.path().join("events.bin"), &events);

    // Deterministic "random" kill times, spread over the run.
    let mut seed: u64 = 0x5eed;
    let mut kills_mid_run = 0;
    let total = events.len() as u64;
    for iteration in 0..80 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay_ms = (seed >> 33) % 40;
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash::crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, work.path())
            .env(BATCH_ENV, if iteration % 4 < 2 { "" } else { "40" })
            .env(
                if iteration % 4 == 3 {
                    FED_ENV
                } else {
                    "STANDIN_CRASH_UNUSED"
                },
                "1",
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        // Every other child is killed at any point from its start (so also while sled
        // opens and recovers); the others once start-up is over, inside the replay.
        if iteration % 2 == 1 {
            std::thread::sleep(Duration::from_millis(5 + (seed >> 40) % 120));
        } else {
            let mut lines = std::io::BufReader::new(stdout).lines();
            for line in lines.by_ref() {
                if line.unwrap().contains("child ready") {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(delay_ms));
        }
        let _ = child.kill();
        let _ = child.wait();
        let head = match Repository::open(&work.path().join("data")) {
            Ok(replica) => replica.head().seq,
            Err(error) => panic!("reopen after a kill at {delay_ms} ms: {error}"),
        };
        if head < total {
            kills_mid_run += 1;
        } else {
            break;
        }
    }
    eprintln!("{kills_mid_run} kills before the replica reached seq {total}");
    assert!(
        kills_mid_run >= 5,
        "the children must be killed mid-run: {kills_mid_run}"
    );

    let replica = Repository::open(&work.path().join("data")).unwrap();
    apply_all(&folder, &replica, &events, 3, &ReplayOptions::default());
    assert_eq!(replica.head(), source.repository.head());
    assert!(!has_temporary_files(&folder), "temporary files left behind");
    assert_eq!(snapshot(&folder), snapshot(&source.folder));
    let report = standin_engine::folder::verify::verify_folder(&folder, &replica).unwrap();
    assert!(report.matches(), "{:?}", report.first_difference);
}

/// Regression: sled 0.34.7 refused to open a database where a process had been killed
/// while writing a snapshot (`snap.<lsn>.generating`). Found by the test above.
#[test]
fn a_half_written_sled_snapshot_does_not_stop_the_open() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    {
        let repository = Repository::open(&data).unwrap();
        repository.flush().unwrap();
    }
    std::fs::write(
        data.join("db").join("snap.FFFFFFFFFFFFFFFF.generating"),
        b"torn",
    )
    .unwrap();
    let repository = Repository::open(&data)
        .unwrap_or_else(|error| panic!("open after a torn snapshot: {error}"));
    assert_eq!(repository.head().seq, 0);
}
