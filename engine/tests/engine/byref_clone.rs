//! The by-reference passive on a file system that clones (a loop-mounted XFS image,
//! `xfs`; skips where that cannot be made): a large file's new version is staged as
//! a clone of the version it replaces, so only the chunks that changed are written.
//! The replica holds exactly the new bytes (the changed ranges emptied first, zeros
//! included), a reader holding the old version still reads it whole (invariant 5),
//! and the passive's packs do not grow by the file's size.

use std::io::Read;

use standin_engine::chunk_store::ContentMode;

use crate::byref::{noise, pack_bytes, replicate_by_ref};
use crate::support::{ship_chunks, Node};
use crate::xfs::xfs_of_or_skip;

const MIB: usize = 1 << 20;

/// `status` names how the passive keeps content: by reference with clones here, and
/// copied into the chunk store for a folder on another file system.
#[test]
fn the_content_mode_says_new_versions_are_begun_as_clones() {
    let Some(xfs) = xfs_of_or_skip(
        "the_content_mode_says_new_versions_are_begun_as_clones",
        512 << 20,
    ) else {
        return;
    };
    let passive = Node::new_in(&xfs.mount);
    assert_eq!(
        passive
            .repository
            .chunks()
            .content_mode(&passive.folder)
            .unwrap(),
        ContentMode::ByReference {
            clones: true,
            patch_in_place: false
        }
    );
    let elsewhere = Node::new();
    assert_eq!(
        passive
            .repository
            .chunks()
            .content_mode(&elsewhere.folder)
            .unwrap(),
        ContentMode::Copied
    );
}

#[test]
fn a_changed_large_file_is_staged_from_a_clone_of_its_old_version() {
    let Some(xfs) = xfs_of_or_skip(
        "a_changed_large_file_is_staged_from_a_clone_of_its_old_version",
        512 << 20,
    ) else {
        return;
    };
    let active = Node::new_in(&xfs.mount);
    let passive = Node::new_in(&xfs.mount);
    let size = 16 * MIB;
    let mut bytes = noise(size, 1);
    std::fs::write(active.folder.join("table.dat"), &bytes).unwrap();
    active.capture();
    replicate_by_ref(&active, &passive, 100);
    let old = bytes.clone();
    // A reader of the replica holds the old version open across the change.
    let mut reader = std::fs::File::open(passive.folder.join("table.dat")).unwrap();

    // 4 KiB rewritten in the middle, 64 KiB zeroed further on, 1 MiB appended.
    bytes[8 * MIB..8 * MIB + 4096].copy_from_slice(&noise(4096, 2));
    bytes[12 * MIB..12 * MIB + 65536].fill(0);
    bytes.extend(noise(MIB, 3));
    std::fs::write(active.folder.join("table.dat"), &bytes).unwrap();
    active.capture();
    let cloned_before = passive.repository.chunks().cloned_bytes();
    let packs_before = pack_bytes(&passive.repository);
    replicate_by_ref(&active, &passive, 100);

    assert!(
        std::fs::read(passive.folder.join("table.dat")).unwrap() == bytes,
        "the replica does not hold the new version's bytes"
    );
    let cloned = passive.repository.chunks().cloned_bytes() - cloned_before;
    // Only the chunks around the two changes and the last one (the append) differ:
    // each at most 256 KiB, so at least 15 MiB of the 16 are in place.
    assert!(
        cloned >= 15 * MIB as u64 && cloned <= size as u64,
        "{cloned} bytes taken from the clone, expected at least 15 MiB of {size}"
    );
    let mut held = Vec::new();
    reader.read_to_end(&mut held).unwrap();
    assert!(held == old, "the reader's open version changed");
    // The replaced version keeps only the chunks the new one lacks, copied out.
    let grown = pack_bytes(&passive.repository) - packs_before;
    assert!(
        grown < 2 * MIB as u64,
        "the passive's packs grew by {grown} bytes for a change of about 1 MiB"
    );
    passive.assert_verified();
}

/// The passive's old version changed by hand (same inode, same size): the clone holds
/// the damage, the new version does not add up, and the chunk taken from it counts as
/// missing from then on — fetched on the next try, which converges. Never a wrong file.
#[test]
fn a_damaged_old_version_is_not_cloned_into_the_new_one_twice() {
    let Some(xfs) = xfs_of_or_skip(
        "a_damaged_old_version_is_not_cloned_into_the_new_one_twice",
        512 << 20,
    ) else {
        return;
    };
    let active = Node::new_in(&xfs.mount);
    let passive = Node::new_in(&xfs.mount);
    let mut bytes = noise(8 * MIB, 4);
    std::fs::write(active.folder.join("table.dat"), &bytes).unwrap();
    active.capture();
    replicate_by_ref(&active, &passive, 100);
    // By hand, on the passive: 100 bytes of the old version overwritten in place.
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(passive.folder.join("table.dat"))
            .unwrap();
        file.write_all_at(&[0xAA; 100], 2 * MIB as u64).unwrap();
    }
    bytes[6 * MIB..6 * MIB + 4096].copy_from_slice(&noise(4096, 5));
    std::fs::write(active.folder.join("table.dat"), &bytes).unwrap();
    active.capture();

    let mut failures = 0;
    loop {
        let events = crate::support::events_to_pull(&active, &passive, 100);
        if events.is_empty() {
            break;
        }
        passive
            .repository
            .chunks()
            .stage(&passive.folder, &events)
            .unwrap();
        ship_chunks(&active.repository, &passive.repository, &events);
        if let Err(error) =
            standin_engine::replay::apply_batch(&passive.folder, &passive.repository, &events)
        {
            failures += 1;
            assert!(failures < 2, "the batch failed again: {error}");
        }
    }
    assert_eq!(failures, 1, "the damaged clone was not refused once");
    assert!(
        std::fs::read(passive.folder.join("table.dat")).unwrap() == bytes,
        "the replica does not hold the new version's bytes"
    );
    passive.assert_verified();
}

/// What a user runs against it: a SQLite database of several MiB, changed by SQLite
/// itself and replicated through a clone of its old version, opens on the passive and
/// passes SQLite's own `PRAGMA integrity_check`, holding every row.
#[test]
fn a_database_staged_from_a_clone_passes_sqlite_integrity_check() {
    let Some(xfs) = xfs_of_or_skip(
        "a_database_staged_from_a_clone_passes_sqlite_integrity_check",
        512 << 20,
    ) else {
        return;
    };
    let active = Node::new_in(&xfs.mount);
    let passive = Node::new_in(&xfs.mount);
    let path = active.folder.join("app.db");
    let insert = |from: i64, to: i64| {
        let db = rusqlite::Connection::open(&path).unwrap();
        db.execute_batch("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v BLOB)")
            .unwrap();
        let tx = db.unchecked_transaction().unwrap();
        for id in from..to {
            tx.execute(
                "INSERT INTO t VALUES (?1, ?2)",
                rusqlite::params![id, noise(1000, id as u64)],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    };
    insert(0, 8000);
    active.capture();
    replicate_by_ref(&active, &passive, 100);
    let cloned = passive.repository.chunks().cloned_bytes();
    // Rows added and some changed in the middle: most pages stay where they were.
    insert(8000, 8200);
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute("UPDATE t SET v = zeroblob(1000) WHERE id % 97 = 0", [])
        .unwrap();
    active.capture();
    replicate_by_ref(&active, &passive, 100);
    assert!(
        passive.repository.chunks().cloned_bytes() > cloned,
        "the new version was not staged from a clone"
    );
    let copy = rusqlite::Connection::open_with_flags(
        passive.folder.join("app.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let (check, rows): (String, i64) = copy
        .query_row(
            "SELECT (SELECT integrity_check FROM pragma_integrity_check), (SELECT count(*) FROM t)",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert_eq!((check.as_str(), rows), ("ok", 8200));
    passive.assert_verified();
}
