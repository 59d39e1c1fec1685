//! Crash safety of the by-reference passive: a child process stages, fetches (from a
//! store standing in for the active) and applies a history of large files written,
//! rewritten in place, renamed and removed, and is killed with SIGKILL at random
//! points. At the end the replica has the source's state and digest, and every chunk
//! a retained event names still reads back, verified. Run again on a loop-mounted XFS
//! image (as root), where rewritten files are staged as clones of their old versions.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use standin_engine::replay::{apply_fed, recover, Feed, ReplayOptions};
use standin_engine::{Event, Hash, Repository};

use crate::crash::{has_temporary_files, read_events, write_events};
use crate::support::{ship_chunks, snapshot, Node};

const CHILD_ENV: &str = "STANDIN_CRASH_BYREF_CHILD";

/// Apply every event after the replica's head as the passive's pull does: each batch
/// staged and its chunks fetched (while the batch before it is applied), then fed to
/// the running apply (`replay::Feed`), or to a new one once that has ended.
fn apply_all(folder: &Path, repository: &Repository, source: &Repository, events: &[Event]) {
    recover(folder, repository).unwrap();
    // Parts of two events: kills land between parts of one batch too.
    let options = ReplayOptions {
        commit_part_events: 2,
        ..ReplayOptions::default()
    };
    let fetch = |batch: &[Event]| {
        repository.chunks().stage(folder, batch).unwrap();
        ship_chunks(source, repository, batch);
    };
    loop {
        let head = repository.head().seq as usize;
        if head >= events.len() {
            return;
        }
        let mut batches = events[head..].chunks(4);
        let first = batches.next().unwrap_or_default();
        fetch(first);
        let feed = Feed::new(first.to_vec());
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for batch in batches {
                    fetch(batch);
                    if feed.offer(batch.to_vec()).is_err() {
                        break;
                    }
                }
            });
            apply_fed(folder, repository, &feed, &options).unwrap();
        });
    }
}

#[test]
fn crash_byref_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let repository = Repository::open(&dir.join("data")).unwrap();
    let source = Repository::open(&dir.join("source")).unwrap();
    let events = read_events(&dir.join("events.bin"));
    println!("child ready");
    std::io::stdout().flush().unwrap();
    apply_all(&dir.join("folder"), &repository, &source, &events);
}

fn content(len: usize, seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

#[test]
fn by_reference_replay_killed_at_random_points_converges() {
    killed_at_random_points_converges(None);
}

/// The same where the file system clones (a loop-mounted XFS image): the rewritten
/// files' new versions are staged as clones of their old ones.
#[test]
fn by_reference_replay_from_clones_killed_at_random_points_converges() {
    let Some(xfs) = crate::xfs::xfs_or_skip(
        "by_reference_replay_from_clones_killed_at_random_points_converges",
    ) else {
        return;
    };
    killed_at_random_points_converges(Some(&xfs.mount));
}

/// Kill a child applying the history at random points, then finish: the replica
/// converges. In `base` (a mounted file system) when given, else in temp dirs.
fn killed_at_random_points_converges(base: Option<&Path>) {
    let source = match base {
        Some(base) => Node::new_in(base),
        None => Node::new(),
    };
    let relative = |path: &Path| standin_engine::RelPath::from_fs(&source.folder, path).unwrap();
    for round in 0..6u32 {
        let dir = source.folder.join(format!("dir{round}"));
        std::fs::create_dir_all(&dir).unwrap();
        for index in 0..3u32 {
            std::fs::write(
                dir.join(format!("big{index}")),
                content((1 << 20) + 70_000 * index as usize, round * 10 + index),
            )
            .unwrap();
        }
        source.capture();
        if round > 0 {
            // Rewrite the previous round's first file in place (a few bytes), remove
            // its second, rename its directory.
            let previous = source.folder.join(format!("dir{}", round - 1));
            let path = previous.join("big0");
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[5_000..5_010].copy_from_slice(b"rewritten!");
            std::fs::write(&path, bytes).unwrap();
            std::fs::remove_file(previous.join("big1")).unwrap();
            source.capture();
            let to = source.folder.join(format!("moved{round}"));
            std::fs::rename(&previous, &to).unwrap();
            source
                .repository
                .record(
                    1,
                    vec![standin_engine::Change::Rename {
                        from: relative(&previous),
                        to: relative(&to),
                    }],
                )
                .unwrap();
        }
    }
    // One file written three times in a row, and a file made beside it between the
    // first two versions: the batches of four events then hold the first version with
    // its directory's time changed after it, and the last two versions together (the
    // last staged) — both staged since f8e5183, and killed in like the rest.
    let last = source.folder.join("last");
    std::fs::create_dir_all(&last).unwrap();
    for version in 0..3u32 {
        std::fs::write(last.join("db"), content((1 << 20) + 4096, 100 + version)).unwrap();
        if version == 1 {
            std::fs::write(last.join("beside"), b"made between two versions").unwrap();
        }
        source.capture();
    }
    let events = source
        .repository
        .log()
        .events_after(0, &Hash::ZERO, usize::MAX)
        .unwrap();

    let work = match base {
        Some(base) => tempfile::tempdir_in(base).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let folder = work.path().join("folder");
    std::fs::create_dir(&folder).unwrap();
    {
        let store = Repository::open(&work.path().join("source")).unwrap();
        ship_chunks(&source.repository, &store, &events);
        store.chunks().sync().unwrap();
        store.flush().unwrap();
        Repository::open(&work.path().join("data")).unwrap();
    }
    write_events(&work.path().join("events.bin"), &events);
    if base.is_some() {
        // Once uninterrupted, in this process: the history does take the clone path
        // here (what the children cloned is not seen from this process).
        let scratch = work.path().join("scratch");
        std::fs::create_dir_all(scratch.join("folder")).unwrap();
        let replica = Repository::open(&scratch.join("data")).unwrap();
        let store = Repository::open(&work.path().join("source")).unwrap();
        apply_all(&scratch.join("folder"), &replica, &store, &events);
        assert!(
            replica.chunks().cloned_bytes() > 0,
            "no rewritten file was staged from a clone"
        );
    }

    let mut seed: u64 = 0xb1ef;
    let mut kills_mid_run = 0;
    let total = events.len() as u64;
    for _ in 0..40 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash_byref::crash_byref_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, work.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            if line.unwrap().contains("child ready") {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis((seed >> 33) % 60));
        let _ = child.kill();
        let _ = child.wait();
        let head = match Repository::open(&work.path().join("data")) {
            Ok(replica) => {
                // Invariant 4 at every kill: each chunk the log names so far is in the
                // store (a pack or a committed reference), staged files being gone.
                crate::byref::assert_every_logged_chunk_readable(&replica);
                replica.head().seq
            }
            Err(error) => panic!("reopen after a kill: {error}"),
        };
        if head < total {
            kills_mid_run += 1;
        } else {
            break;
        }
    }
    assert!(
        kills_mid_run >= 3,
        "killed mid-run only {kills_mid_run} times"
    );

    let replica = Repository::open(&work.path().join("data")).unwrap();
    let store = Repository::open(&work.path().join("source")).unwrap();
    apply_all(&folder, &replica, &store, &events);
    assert_eq!(replica.head(), source.repository.head());
    assert!(!has_temporary_files(&folder), "temporary files left behind");
    assert_eq!(snapshot(&folder), snapshot(&source.folder));
    let report = standin_engine::folder::verify::verify_folder(&folder, &replica).unwrap();
    assert!(report.matches(), "{:?}", report.first_difference);
    let (referenced, _) = replica.chunks().referenced_usage();
    assert!(referenced > 0, "the replica keeps large files by reference");
    // Every version the log names is still there: by reference, kept, or copied out.
    for event in &events {
        if let Some(chunks) = event.body.change.chunks() {
            for chunk in chunks {
                replica
                    .chunks()
                    .get(&chunk.hash)
                    .unwrap_or_else(|error| panic!("seq {}: {error}", event.seq()));
            }
        }
    }
}
