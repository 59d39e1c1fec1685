//! Sparse files (invariant 11, issue 17 item 6): capture finds holes with
//! `SEEK_DATA` / `SEEK_HOLE` and records them as zero-chunk references without
//! reading them; the passive leaves them as holes, so its disk use for the file is at
//! most the active's plus 64 KiB.

use std::path::Path;

use crate::support::{replicate, Node};

/// A sparse file (64 MiB, 8 KiB of data) stays sparse on the passive: its disk use
/// there is at most the active's plus 64 KiB.
#[test]
fn a_sparse_file_stays_sparse_on_the_passive() {
    use std::os::unix::fs::{FileExt, MetadataExt};
    let active = Node::new();
    let path = active.folder.join("sparse.img");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(64 << 20).unwrap();
    file.write_all_at(&[7u8; 4096], 1 << 20).unwrap();
    file.write_all_at(&[9u8; 4096], (64 << 20) - 4096).unwrap();
    file.sync_all().unwrap();
    drop(file);
    active.capture();
    let passive = Node::new();
    replicate(&active, &passive, 100);
    passive.assert_verified();
    let allocated = |path: &Path| std::fs::metadata(path).unwrap().blocks() * 512;
    let (theirs, ours) = (
        allocated(&path),
        allocated(&passive.folder.join("sparse.img")),
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        std::fs::read(passive.folder.join("sparse.img")).unwrap()
    );
    assert!(
        ours <= theirs + (64 << 10),
        "the passive allocates {ours} bytes for a file the active holds in {theirs}"
    );

    // A hole punched on the active (fallocate PUNCH_HOLE) reaches the passive alone.
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    // SAFETY: an open descriptor; the range lies inside the file.
    let punched = unsafe {
        libc::fallocate(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            1 << 20,
            4096,
        )
    };
    assert_eq!(punched, 0, "{}", std::io::Error::last_os_error());
    drop(file);
    assert!(
        !active.capture().is_empty(),
        "the punched hole was not recorded"
    );
    replicate(&active, &passive, 100);
    passive.assert_verified();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        std::fs::read(passive.folder.join("sparse.img")).unwrap()
    );
    let (theirs, ours) = (
        allocated(&path),
        allocated(&passive.folder.join("sparse.img")),
    );
    assert!(
        ours <= theirs + (64 << 10),
        "{ours} > {theirs} + 64 KiB after the punch"
    );
}

/// The bytes this thread has read through read(2)-like calls (`rchar`).
fn bytes_read_by_this_thread() -> u64 {
    let io = std::fs::read_to_string("/proc/thread-self/io").expect("/proc/thread-self/io");
    io.lines()
        .find_map(|line| line.strip_prefix("rchar: "))
        .and_then(|value| value.trim().parse().ok())
        .expect("rchar")
}

/// A 1 GiB file with 4 KiB of data: capture reads its data, not its holes (what this
/// thread reads is counted), the record adds up to the file's bytes, and the passive
/// holds it in at most the active's blocks plus 64 KiB.
#[test]
fn a_gibibyte_with_four_kibibytes_of_data_is_not_read_as_zeros() {
    use std::os::unix::fs::{FileExt, MetadataExt};
    let active = Node::new();
    let path = active.folder.join("big.img");
    let size = 1u64 << 30;
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(size).unwrap();
    file.write_all_at(&[5u8; 4096], 300 << 20).unwrap();
    file.sync_all().unwrap();
    drop(file);
    let probe = std::fs::File::open(&path).unwrap();
    if standin_engine::folder::read::sparse::layout(&probe, size)
        .unwrap()
        .is_none()
    {
        eprintln!("skipped: this file system does not report holes");
        return;
    }
    drop(probe);
    // The file is old enough to be read in place (not copied twice as a fresh one).
    std::thread::sleep(std::time::Duration::from_millis(200));

    let relative = standin_engine::RelPath::new("big.img").unwrap();
    let before = bytes_read_by_this_thread();
    let captured = standin_engine::folder::read::capture_file(
        &active.folder,
        &active.repository,
        &relative,
        None,
        None,
    )
    .unwrap();
    let read = bytes_read_by_this_thread() - before;
    assert!(
        read < 8 << 20,
        "capture read {read} bytes of a file holding 4 KiB of data"
    );
    let standin_engine::folder::read::Captured::Put(change) = captured else {
        panic!("not captured: {captured:?}");
    };
    let standin_engine::Change::File {
        size: recorded,
        chunks,
        ..
    } = *change
    else {
        panic!("not a file change");
    };
    assert_eq!(recorded, size);
    assert_eq!(
        chunks.iter().map(|chunk| chunk.len as u64).sum::<u64>(),
        size
    );
    let zero = standin_engine::folder::read::sparse::zero_chunk_hash(256 << 10);
    assert!(
        chunks.iter().filter(|chunk| chunk.hash == zero).count() >= 4000,
        "the holes are not zero-chunk references"
    );
    // The content hash (blake3 of every byte) is checked by the passive's replay
    // and verify; `cmp` compares the bytes.
    active.capture();
    let passive = Node::new();
    replicate(&active, &passive, 100);
    passive.assert_verified();
    let theirs = std::fs::metadata(&path).unwrap().blocks() * 512;
    let copy = passive.folder.join("big.img");
    let ours = std::fs::metadata(&copy).unwrap().blocks() * 512;
    assert!(
        ours <= theirs + (64 << 10),
        "the passive allocates {ours} bytes for a file the active holds in {theirs}"
    );
    let same = std::process::Command::new("cmp")
        .arg("-s")
        .arg(&path)
        .arg(&copy)
        .status()
        .expect("cmp");
    assert!(same.success(), "the passive's copy differs");
}
