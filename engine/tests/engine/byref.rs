//! The by-reference passive: large files written once (staged, renamed into place),
//! their chunks read through the folder's file and verified; a file changed by hand
//! makes its chunks missing, never wrong; replaced, removed and renamed files keep
//! what retained events name; garbage collection frees the rest.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use standin_engine::{Change, Event, Hash, Repository};

use crate::support::{ship_chunks, Node};

const MIB: usize = 1 << 20;

/// Deterministic bytes that do not compress or repeat.
pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// `replicate` as a by-reference passive does it: stage, fetch, apply.
pub fn replicate_by_ref(active: &Node, passive: &Node, batch: usize) {
    crate::support::replicate_with(active, passive, batch, true)
}

fn chunks_of(events: &[Event], path: &str) -> Vec<Hash> {
    events
        .iter()
        .filter_map(|event| match &event.body.change {
            Change::Put {
                path: put, chunks, ..
            }
            | Change::File {
                path: put, chunks, ..
            } if put.to_string() == path => {
                Some(chunks.iter().map(|chunk| chunk.hash).collect::<Vec<_>>())
            }
            _ => None,
        })
        .next_back()
        .unwrap_or_default()
}

/// Invariant 4: every chunk the log of `repository` names reads back, verified.
pub(crate) fn assert_every_logged_chunk_readable(repository: &Repository) {
    let logged = repository
        .log()
        .events_after(0, &Hash::ZERO, usize::MAX)
        .unwrap();
    for event in &logged {
        for chunk in event.body.change.chunks().unwrap_or(&[]) {
            repository
                .chunks()
                .get(&chunk.hash)
                .unwrap_or_else(|error| panic!("seq {} names a lost chunk: {error}", event.seq()));
        }
    }
}

pub(crate) fn pack_bytes(repository: &Repository) -> u64 {
    repository.chunks().usage().1
}

pub(crate) fn kept_files(node: &Node) -> usize {
    // Freed inodes' links go on the store's reaper thread: count once it is done.
    node.repository.chunks().wait_kept_freed();
    std::fs::read_dir(node.data_dir.join("chunks").join("kept"))
        .unwrap()
        .count()
}

fn staged_files(node: &Node) -> usize {
    std::fs::read_dir(node.data_dir.join("chunks").join("staging"))
        .unwrap()
        .count()
}

/// A pair whose active holds `files` (name, bytes), replicated by reference.
pub(crate) fn pair_with(files: &[(&str, Vec<u8>)]) -> (Node, Node) {
    let active = Node::new();
    let passive = Node::new();
    for (name, bytes) in files {
        let path = active.folder.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    active.capture();
    replicate_by_ref(&active, &passive, 100);
    (active, passive)
}

#[test]
fn large_files_are_written_once_and_read_through_the_folder() {
    let (active, passive) = pair_with(&[
        ("big/a.bin", noise(3 * MIB, 1)),
        ("big/b.bin", noise(2 * MIB + 12_345, 2)),
        ("small.txt", b"small files go through the packs".to_vec()),
    ]);
    passive.assert_verified();
    // Only the small file's content is in a pack; the rest is referenced.
    assert!(pack_bytes(&passive.repository) < 1024);
    let (count, bytes) = passive.repository.chunks().referenced_usage();
    assert!(count > 4, "{count} referenced chunks");
    assert_eq!(bytes, (5 * MIB + 12_345) as u64);
    assert_eq!(staged_files(&passive), 0);
    // Every chunk reads back, verified, as the active has it.
    let events = active.all_events();
    for path in ["big/a.bin", "big/b.bin", "small.txt"] {
        for hash in chunks_of(&events, path) {
            assert_eq!(
                passive.repository.chunks().get(&hash).unwrap(),
                active.repository.chunks().get(&hash).unwrap()
            );
        }
    }
    // And after a restart.
    let passive = passive.reopen();
    for hash in chunks_of(&events, "big/a.bin") {
        passive.repository.chunks().get(&hash).unwrap();
    }
}

#[test]
fn a_file_changed_by_hand_makes_its_chunks_missing_never_wrong() {
    let (active, passive) =
        pair_with(&[("a.bin", noise(3 * MIB, 3)), ("b.bin", noise(2 * MIB, 4))]);
    let events = active.all_events();
    let a = chunks_of(&events, "a.bin");
    // One byte changed in place, in a's first chunk.
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(passive.folder.join("a.bin"))
            .unwrap();
        file.write_all_at(b"X", 10).unwrap();
    }
    let store = passive.repository.chunks();
    match store.get(&a[0]) {
        Err(standin_engine::Error::ChunkMissing { hash }) => assert_eq!(hash, a[0]),
        other => panic!(
            "expected the chunk to be missing, got {:?}",
            other.map(|b| b.len())
        ),
    }
    assert!(
        !store.contains(&a[0]).unwrap(),
        "now missing: fetched again"
    );
    // The others are intact.
    for hash in &a[1..] {
        assert_eq!(
            store.get(hash).unwrap(),
            active.repository.chunks().get(hash).unwrap()
        );
    }
    // b replaced by hand with other bytes (the inode number may be reused): none of
    // its chunks is served.
    let b_path = passive.folder.join("b.bin");
    std::fs::remove_file(&b_path).unwrap();
    std::fs::write(&b_path, noise(2 * MIB, 99)).unwrap();
    for hash in chunks_of(&events, "b.bin") {
        assert!(matches!(
            store.get(&hash),
            Err(standin_engine::Error::ChunkMissing { .. })
        ));
    }
    // Fetched again, they are served.
    ship_chunks(&active.repository, &passive.repository, &events);
    for hash in chunks_of(&events, "b.bin").iter().chain(&a[..1]) {
        assert_eq!(
            store.get(hash).unwrap(),
            active.repository.chunks().get(hash).unwrap()
        );
    }
}

#[test]
fn a_removed_file_moves_into_data_dir_until_no_event_names_it() {
    let (active, passive) = pair_with(&[
        ("old.bin", noise(3 * MIB, 6)),
        ("keep.bin", noise(2 * MIB, 7)),
    ]);
    std::fs::remove_file(active.folder.join("old.bin")).unwrap();
    active.capture();
    replicate_by_ref(&active, &passive, 100);
    passive.assert_verified();
    assert_eq!(kept_files(&passive), 1, "the removed file's inode is kept");
    assert!(pack_bytes(&passive.repository) < 1024, "moved, not copied");
    assert_eq!(
        passive.versions_of("old.bin"),
        active.versions_of("old.bin")
    );
    // Once no retained event names it, garbage collection frees it.
    std::fs::write(active.folder.join("note"), b"one more event").unwrap();
    active.capture();
    replicate_by_ref(&active, &passive, 100);
    passive.repository.compact(0).unwrap();
    passive.repository.collect_garbage().unwrap();
    assert_eq!(kept_files(&passive), 0);
    passive.assert_verified();
    // keep.bin's chunks are still there, by reference.
    for hash in chunks_of(&active.all_events(), "keep.bin") {
        passive.repository.chunks().get(&hash).unwrap();
    }
}

/// A large file and then, in the same batch, a change of its directory's metadata
/// (its mtime moved as the file was created, a chmod): the directory is still where
/// it was, so the file is written once, by reference — not through the packs. (Found
/// on XFS by the rsync fidelity test: whether the clone path was taken depended on
/// whether the directory's event fell in the file's batch.)
#[test]
fn a_directory_changed_after_its_large_file_in_one_batch_keeps_it_by_reference() {
    let active = Node::new();
    let passive = Node::new();
    let dir = active.folder.join("tree");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("big.bin"), noise(3 * MIB, 11)).unwrap();
    active.capture();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
    let later = active.capture();
    assert!(
        later.iter().any(|event| event
            .body
            .change
            .paths()
            .iter()
            .any(|path| path.to_string() == "tree")),
        "the chmod is recorded after the file: {later:?}"
    );
    // Both captures in one batch.
    replicate_by_ref(&active, &passive, 100);
    passive.assert_verified();
    assert!(
        pack_bytes(&passive.repository) < 1024,
        "the 3 MiB file went through the packs ({} bytes)",
        pack_bytes(&passive.repository)
    );
    assert_eq!(
        passive.repository.chunks().referenced_usage().1,
        (3 * MIB) as u64
    );
}

#[test]
fn a_renamed_directory_keeps_its_files_references() {
    let (active, passive) = pair_with(&[("dir/a.bin", noise(3 * MIB, 8))]);
    let from = active.folder.join("dir");
    let to = active.folder.join("moved");
    std::fs::rename(&from, &to).unwrap();
    let relative = |path: &Path| standin_engine::RelPath::from_fs(&active.folder, path).unwrap();
    active
        .repository
        .record(
            1,
            vec![Change::Rename {
                from: relative(&from),
                to: relative(&to),
            }],
        )
        .unwrap();
    replicate_by_ref(&active, &passive, 100);
    passive.assert_verified();
    assert_eq!(
        kept_files(&passive),
        0,
        "the kept link went once the home moved"
    );
    let passive = passive.reopen();
    for hash in chunks_of(&active.all_events(), "dir/a.bin") {
        passive.repository.chunks().get(&hash).unwrap();
    }
    assert!(pack_bytes(&passive.repository) < 1024);
}

/// A file recorded again and again while the passive was behind (a busy database):
/// one batch holds several versions of it, and only the last is written (the earlier
/// would be renamed over at once) — yet every version's chunks stay readable on the
/// passive, for the log's sake (a passive promoted later serves them, verify reads them).
#[test]
fn versions_of_one_file_in_one_batch_keep_every_chunk_and_end_as_the_last() {
    let mut bytes = noise(4 * MIB, 1);
    let (active, passive) = pair_with(&[("app.db", bytes.clone()), ("note", b"0".to_vec())]);
    for round in 0..5u64 {
        let at = (round as usize * 700 * 1024) % (bytes.len() - 64 * 1024);
        bytes[at..at + 64 * 1024].copy_from_slice(&noise(64 * 1024, 100 + round));
        std::fs::write(active.folder.join("app.db"), &bytes).unwrap();
        std::fs::write(active.folder.join("note"), round.to_string()).unwrap();
        assert!(!active.capture().is_empty());
    }
    let batch = crate::support::events_to_pull(&active, &passive, 1_000);
    assert!(
        chunks_of(&batch, "app.db").len() > 1 && batch.len() >= 10,
        "one batch with the five versions of each file"
    );
    replicate_by_ref(&active, &passive, 1_000);
    assert_eq!(std::fs::read(passive.folder.join("app.db")).unwrap(), bytes);
    assert_eq!(std::fs::read(passive.folder.join("note")).unwrap(), b"4");
    let named: Vec<Hash> = batch
        .iter()
        .filter_map(|event| event.body.change.chunks())
        .flat_map(|chunks| chunks.iter().map(|chunk| chunk.hash))
        .collect();
    for hash in &named {
        passive
            .repository
            .chunks()
            .get(hash)
            .unwrap_or_else(|error| panic!("chunk {hash} of a version in the batch: {error}"));
    }
    passive.assert_verified();
}

/// Two batches in flight: the next batch's large file is staged and filled (its
/// chunks copied in from the previous batch's staged file) before the previous batch
/// commits. The previous batch's chunks must still be referenced where it put them
/// once it commits: a restart before the next batch commits finds every chunk its log
/// names. (On any file system: the chunk is copied in, or in place in a clone.)
#[test]
fn a_batch_committed_while_the_next_is_staged_keeps_its_references() {
    let active = Node::new();
    let passive = Node::new();
    std::fs::write(active.folder.join("seed.txt"), b"seed").unwrap();
    active.capture();
    replicate_by_ref(&active, &passive, 100);
    let mut bytes = noise(4 * MIB, 6);
    std::fs::write(active.folder.join("table.dat"), &bytes).unwrap();
    active.capture();
    bytes[3 * MIB..3 * MIB + 4096].copy_from_slice(&noise(4096, 7));
    std::fs::write(active.folder.join("table.dat"), &bytes).unwrap();
    active.capture();
    let events = crate::support::events_to_pull(&active, &passive, 100);
    let cut = events
        .iter()
        .rposition(|event| matches!(&event.body.change, Change::File { .. } | Change::Put { .. }))
        .unwrap();
    let first = events
        .iter()
        .position(|event| matches!(&event.body.change, Change::File { .. } | Change::Put { .. }))
        .unwrap();
    assert!(first < cut, "two versions of the file recorded");
    let (batch, next) = events.split_at(cut);
    let chunks = passive.repository.chunks();
    // The passive's pipeline: this batch staged and fetched; the next one staged and
    // fetched while this one applies; this one committed; then a restart.
    chunks.stage(&passive.folder, batch).unwrap();
    ship_chunks(&active.repository, &passive.repository, batch);
    chunks.stage(&passive.folder, next).unwrap();
    ship_chunks(&active.repository, &passive.repository, next);
    standin_engine::replay::apply_batch(&passive.folder, &passive.repository, batch).unwrap();
    let passive = passive.reopen();
    for event in batch {
        if let Some(chunks) = event.body.change.chunks() {
            for chunk in chunks {
                passive
                    .repository
                    .chunks()
                    .get(&chunk.hash)
                    .unwrap_or_else(|error| panic!("seq {}: {error}", event.seq()));
            }
        }
    }
    replicate_by_ref(&active, &passive, 100);
    passive.assert_verified();
}

/// Stage `batch` on `passive`, ship its chunks, put a file where the batch makes the
/// directory `x` (so a later part fails), apply in parts of one event, restart: every
/// chunk the passive's log names must still be readable.
fn a_failed_later_part_loses_no_chunk(active: &Node, passive: Node) -> usize {
    use standin_engine::replay::{apply_batch_with, ReplayOptions};
    let batch = crate::support::events_to_pull(active, &passive, 100);
    let staged = passive
        .repository
        .chunks()
        .stage(&passive.folder, &batch)
        .unwrap();
    ship_chunks(&active.repository, &passive.repository, &batch);
    std::fs::write(passive.folder.join("x"), b"in the way").unwrap();
    let options = ReplayOptions {
        commit_part_events: 1,
        ..ReplayOptions::default()
    };
    assert!(apply_batch_with(&passive.folder, &passive.repository, &batch, &options).is_err());
    assert!(
        passive.repository.head().seq > 0,
        "an earlier part committed"
    );
    assert_every_logged_chunk_readable(&passive.reopen().repository);
    staged
}

/// Two versions of a new file in one batch, the second sharing the first's fetched
/// chunks: staging the second would make it their only home while the first's part is
/// committed; the batch then fails in a later part and the node restarts. (Found by
/// review: the log named 43 chunks in no pack and no reference.)
#[test]
fn a_version_sharing_fetched_chunks_with_an_earlier_one_is_not_their_only_home() {
    let active = Node::new();
    let passive = Node::new();
    std::fs::create_dir(active.folder.join("d")).unwrap();
    let mut bytes = noise(3 * MIB, 21);
    std::fs::write(active.folder.join("d/p"), &bytes).unwrap();
    active.capture();
    std::fs::create_dir(active.folder.join("x")).unwrap();
    active.capture();
    bytes[3 * MIB - 100..].fill(7);
    std::fs::write(active.folder.join("d/p"), &bytes).unwrap();
    active.capture();
    assert_eq!(a_failed_later_part_loses_no_chunk(&active, passive), 0);
}

/// The same with a copy: a file, then another path with the same content (its
/// directory's time changed after it, which no longer stops staging), then the first
/// renamed away.
#[test]
fn a_copy_sharing_fetched_chunks_with_an_earlier_file_is_not_their_only_home() {
    let active = Node::new();
    let passive = Node::new();
    std::fs::create_dir(active.folder.join("d")).unwrap();
    let bytes = noise(3 * MIB, 22);
    std::fs::write(active.folder.join("d/a"), &bytes).unwrap();
    active.capture();
    std::fs::create_dir(active.folder.join("x")).unwrap();
    active.capture();
    std::fs::write(active.folder.join("d/b"), &bytes).unwrap();
    active.capture();
    std::fs::rename(active.folder.join("d/a"), active.folder.join("d/c")).unwrap();
    active.capture();
    a_failed_later_part_loses_no_chunk(&active, passive);
}

/// Two versions of one path in one batch, the second sharing no fetched chunk with the
/// first (it rewrote a wider range around the first's change): the second is staged — the two share the
/// active's inode number, and are not hard links of each other.
#[test]
fn a_later_version_of_a_path_in_the_same_batch_is_staged() {
    let mut bytes = noise(4 * MIB, 31);
    let (active, passive) = pair_with(&[("app.db", bytes.clone())]);
    // 64 KiB rewritten, then a range around it rewritten again: every chunk the
    // second version lacks holds bytes of its own.
    for (round, (at, len)) in [(MIB, 64 * 1024), (MIB - 256 * 1024, 768 * 1024)]
        .into_iter()
        .enumerate()
    {
        bytes[at..at + len].copy_from_slice(&noise(len, 40 + round as u64));
        std::fs::write(active.folder.join("app.db"), &bytes).unwrap();
        assert!(!active.capture().is_empty());
    }
    let batch = crate::support::events_to_pull(&active, &passive, 100);
    let staged = passive
        .repository
        .chunks()
        .stage(&passive.folder, &batch)
        .unwrap();
    assert_eq!(staged, 1, "the last version of app.db is staged");
    replicate_by_ref(&active, &passive, 100);
    assert_eq!(std::fs::read(passive.folder.join("app.db")).unwrap(), bytes);
    passive.assert_verified();
}

/// A chunk pending only in a staged file left by an earlier attempt counts as present,
/// so an earlier event of the retried batch (no longer staged: a later version of its
/// path joined the batch) names it while its only home is that later staged file: the
/// part is committed with the chunk copied into the packs, and a failure in a later
/// part then loses nothing. (Found by review: "seq 6 names a lost chunk".)
#[test]
fn a_retried_batch_copies_in_a_chunk_only_a_later_staged_file_holds() {
    use standin_engine::replay::{apply_batch, apply_batch_with, ReplayOptions};
    let active = Node::new();
    let passive = Node::new();
    std::fs::create_dir(active.folder.join("d")).unwrap();
    std::fs::write(active.folder.join("d/r"), b"small").unwrap();
    active.capture();
    replicate_by_ref(&active, &passive, 100);
    let v1 = noise(3 * MIB, 51);
    std::fs::write(active.folder.join("d/a"), &v1).unwrap();
    active.capture();
    std::fs::remove_file(active.folder.join("d/r")).unwrap();
    active.capture();
    // Fails on the passive, where a file is put in its way.
    std::fs::create_dir(active.folder.join("x")).unwrap();
    active.capture();
    let first_len = crate::support::events_to_pull(&active, &passive, 100).len();
    std::fs::write(active.folder.join("d/a"), noise(3 * MIB, 52)).unwrap();
    active.capture();
    std::fs::write(active.folder.join("d/b"), &v1).unwrap();
    active.capture();
    let all = crate::support::events_to_pull(&active, &passive, 100);
    let (first, second) = all.split_at(first_len);
    let chunks = passive.repository.chunks();
    // The service's first part: staged, fetched, applied; it fails after installing d/a.
    chunks.stage(&passive.folder, first).unwrap();
    ship_chunks(&active.repository, &passive.repository, first);
    std::fs::write(passive.folder.join("x"), b"in the way").unwrap();
    assert!(apply_batch(&passive.folder, &passive.repository, first).is_err());
    // Its second part was staged and fetched meanwhile: d/b alone holds v1's chunks.
    assert_eq!(chunks.stage(&passive.folder, second).unwrap(), 2);
    ship_chunks(&active.repository, &passive.repository, second);
    // The next pull: one batch, in which d/a's first version is not staged; it fails
    // again in a later part (recovery removed the obstacle; it is back).
    let batch = crate::support::events_to_pull(&active, &passive, 100);
    chunks.stage(&passive.folder, &batch).unwrap();
    ship_chunks(&active.repository, &passive.repository, &batch);
    std::fs::write(passive.folder.join("x"), b"in the way").unwrap();
    let options = ReplayOptions {
        commit_part_events: 1,
        ..ReplayOptions::default()
    };
    let head = passive.repository.head().seq;
    assert!(apply_batch_with(&passive.folder, &passive.repository, &batch, &options).is_err());
    assert!(passive.repository.head().seq > head, "d/a's part committed");
    assert_every_logged_chunk_readable(&passive.reopen().repository);
}

/// The next batch (staged and fetched while this one applies, as the service does)
/// holds a near-copy of this batch's new large file: its staged file takes over the
/// pending references of the shared chunks, and the places they took over are
/// committed with this batch's file — so nothing is copied into the packs for this
/// batch's commit. (Found by review: 8 MiB copied.)
#[test]
fn a_near_copy_in_the_next_batch_copies_nothing_into_the_packs() {
    let active = Node::new();
    let passive = Node::new();
    std::fs::write(active.folder.join("seed.txt"), b"seed").unwrap();
    active.capture();
    replicate_by_ref(&active, &passive, 100);
    let a = noise(8 * MIB, 61);
    std::fs::write(active.folder.join("a.img"), &a).unwrap();
    active.capture();
    let batch = crate::support::events_to_pull(&active, &passive, 100);
    let mut b = a.clone();
    b[8 * MIB - 100..].fill(9);
    std::fs::write(active.folder.join("b.img"), &b).unwrap();
    active.capture();
    let all = crate::support::events_to_pull(&active, &passive, 100);
    let next = &all[batch.len()..];
    let chunks = passive.repository.chunks();
    chunks.stage(&passive.folder, &batch).unwrap();
    ship_chunks(&active.repository, &passive.repository, &batch);
    chunks.stage(&passive.folder, next).unwrap();
    ship_chunks(&active.repository, &passive.repository, next);
    let before = pack_bytes(&passive.repository);
    standin_engine::replay::apply_batch(&passive.folder, &passive.repository, &batch).unwrap();
    let copied = pack_bytes(&passive.repository) - before;
    standin_engine::replay::apply_batch(&passive.folder, &passive.repository, next).unwrap();
    let passive = passive.reopen();
    passive.assert_verified();
    assert!(
        copied < MIB as u64,
        "{copied} bytes of a.img copied into the packs"
    );
}
