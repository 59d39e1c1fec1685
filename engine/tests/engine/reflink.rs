//! The reflink path of capture (invariant 10) on a file system that clones: a
//! loop-mounted XFS image, made when the test runs as root with `mkfs.xfs` at hand
//! (`.ci/run` installs xfsprogs). Each test skips, saying why, when that is not
//! possible, and unmounts on drop.
//!
//! On a cloning file system a busy file is read from a clone (an atomic point-in-time
//! copy) rather than copied between writes, and recorded as whole passes; a
//! rollback-mode database is cloned under SQLite's shared lock.

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::Node;
use crate::xfs::xfs_or_skip;

const BLOCK: usize = 4096;

/// A 16 MiB file rewritten in place by one `pwrite` per pass with no pause at all:
/// capture reads it from clones, every recorded version is one pass, at least 3 passes
/// are recorded, and no read is given up as unstable.
#[test]
fn a_file_rewritten_without_pause_is_recorded_from_clones() {
    let Some(xfs) = xfs_or_skip("a_file_rewritten_without_pause_is_recorded_from_clones") else {
        return;
    };
    let node = Node::new_in(&xfs.mount);
    let size: usize = 16 << 20;
    let path = node.folder.join("table.dat");
    std::fs::write(&path, vec![0u8; size]).unwrap();
    let clones_before = standin_engine::folder::read::reflink::clones();
    let capture = node.watch();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let path = path.clone();
        std::thread::spawn(move || {
            let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            let started = Instant::now();
            let mut pass: u32 = 0;
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(4) {
                pass += 1;
                let mut buffer = vec![0u8; size];
                for word in buffer.chunks_mut(4) {
                    word.copy_from_slice(&pass.to_le_bytes());
                }
                file.write_all_at(&buffer, 0).unwrap();
            }
            pass
        })
    };
    let passes = writer.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    node.settle();
    let unstable = capture.stats().unstable_reads.load(Ordering::Relaxed);
    capture.stop();
    let mut passes_seen = std::collections::BTreeSet::new();
    for (number, version) in node.versions_of("table.dat").iter().enumerate() {
        assert_eq!(version.len(), size);
        let stamps: std::collections::BTreeSet<u32> = version
            .chunks(BLOCK)
            .map(|block| u32::from_le_bytes(block[..4].try_into().unwrap()))
            .collect();
        assert_eq!(
            stamps.len(),
            1,
            "version {number} of the file mixes passes {stamps:?}: a state it never had"
        );
        passes_seen.extend(stamps);
    }
    eprintln!(
        "{passes} passes written, {} recorded, {} clones, {unstable} unstable reads",
        passes_seen.len(),
        standin_engine::folder::read::reflink::clones() - clones_before
    );
    assert!(
        standin_engine::folder::read::reflink::clones() > clones_before,
        "capture never cloned on XFS"
    );
    assert!(
        passes_seen.len() >= 3,
        "only passes {passes_seen:?} of {passes} were recorded"
    );
    assert_eq!(
        unstable, 0,
        "a read was given up although the file system clones"
    );
    node.assert_verified();
}

/// A rollback-mode database under a writer is captured by clone under SQLite's shared
/// lock: the same checks as on any file system (integrity, prefix of transactions, no
/// companion recorded, the writer never sees `database is locked`), and clones taken.
/// A large file recorded before and changed a little is read from a clone against its
/// last version's chunks (`rechunk`), not cut and hashed again whole: the record is
/// exactly a fresh chunking's.
#[test]
fn a_large_file_read_from_a_clone_is_compared_with_its_last_version() {
    let Some(xfs) = xfs_or_skip("a_large_file_read_from_a_clone_is_compared_with_its_last_version")
    else {
        return;
    };
    let node = Node::new_in(&xfs.mount);
    let path = node.folder.join("big.bin");
    let mut data = crate::byref::noise(24 << 20, 1);
    std::fs::write(&path, &data).unwrap();
    node.capture();
    data[12 << 20..(12 << 20) + 4096].copy_from_slice(&crate::byref::noise(4096, 2));
    data.extend_from_slice(&crate::byref::noise(1 << 20, 3));
    std::fs::write(&path, &data).unwrap();
    let clones = standin_engine::folder::read::reflink::clones();
    let reused = node.repository.chunks().reused_bytes();
    let events = node.capture();
    assert!(
        standin_engine::folder::read::reflink::clones() > clones,
        "the file was not read from a clone"
    );
    let reused = node.repository.chunks().reused_bytes() - reused;
    assert!(
        reused >= 20 << 20,
        "only {reused} bytes compared with the last version's chunks"
    );
    crate::support::assert_recorded_as_fresh(&node, &events, &data, &path);
    node.assert_verified();
}

#[test]
fn a_rollback_mode_database_is_cloned_under_its_shared_lock() {
    let Some(xfs) = xfs_or_skip("a_rollback_mode_database_is_cloned_under_its_shared_lock") else {
        return;
    };
    let node = Node::new_in(&xfs.mount);
    let clones_before = standin_engine::folder::read::reflink::clones();
    // At least one version while the writer runs: a loop device under load commits
    // slowly (the explicit snapshot below checks the clone path itself).
    crate::sqlite::a_live_database_is_recorded_at_transaction_boundaries_in(&node, "delete", 1);
    assert!(
        standin_engine::folder::read::reflink::clones() > clones_before,
        "the database was never cloned on XFS"
    );
    let full = node.folder.join("app.db");
    let head = std::fs::read(&full).unwrap();
    match standin_engine::folder::read::sqlite::snapshot(
        &node.folder,
        &full,
        &node.data_dir,
        &head[..20],
        head.len() as u64,
    )
    .unwrap()
    {
        standin_engine::folder::read::sqlite::Taken::Copy(snapshot) => {
            assert!(
                snapshot.cloned,
                "a rollback-mode database on XFS was not cloned"
            )
        }
        _ => panic!("an idle database could not be copied"),
    }
}
