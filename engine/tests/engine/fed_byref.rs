//! One apply fed several batches where content is kept by reference: a batch with a
//! large file (staged, patched, or an inode guarded) ends the apply, so the next batch
//! never meets references its settle has not finished (found by review: a patch over
//! chunks whose move to the new version was still deferred lost a chunk the log
//! names; a home recorded after a rename of the same apply was mapped through it).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use standin_engine::replay::{apply_fed, Feed, ReplayOptions};
use standin_engine::{Event, Repository};

use crate::byref::{assert_every_logged_chunk_readable, kept_files, noise, pair_with};
use crate::support::{ship_chunks, Node};

const MIB: usize = 1 << 20;

/// Apply `batches` through preloaded feeds, a new apply for the batches each one did
/// not take; returns how many applies it took.
pub(crate) fn apply_preloaded(
    folder: &Path,
    repository: &Repository,
    mut batches: Vec<Vec<Event>>,
    options: &ReplayOptions,
) -> standin_engine::Result<usize> {
    let mut applies = 0;
    while !batches.is_empty() {
        let feed = Feed::preloaded(batches);
        applies += 1;
        apply_fed(folder, repository, &feed, options)?;
        batches = feed.take_back();
    }
    Ok(applies)
}

/// What the passive's pull does before an apply: stage each batch's large files, then
/// fetch the chunks it still lacks.
fn stage_and_ship(active: &Node, passive: &Node, batches: &[&Vec<Event>]) {
    for batch in batches {
        passive
            .repository
            .chunks()
            .stage(&passive.folder, batch)
            .unwrap();
        ship_chunks(&active.repository, &passive.repository, batch);
    }
}

fn options() -> ReplayOptions {
    ReplayOptions {
        commit_part_events: 1,
        ..ReplayOptions::default()
    }
}

/// v2 of a large file shares its tail with v1 (the tail's references, moved to v2's
/// inode, are deferred until settle); v3, in the next batch, keeps v2's head and
/// rewrites the tail: patched in place over the deferred ranges.
#[test]
fn a_patch_in_the_next_batch_keeps_the_chunks_of_the_version_before() {
    let mut content = noise(8 * MIB, 71);
    let (active, passive) = pair_with(&[("big.bin", content.clone())]);
    passive.repository.chunks().set_patch_in_place(true);
    content[..6 * MIB].copy_from_slice(&noise(6 * MIB, 72));
    std::fs::write(active.folder.join("big.bin"), &content).unwrap();
    let first = active.capture();
    std::fs::write(active.folder.join("small"), b"x").unwrap();
    let mut second = active.capture();
    content[6 * MIB..].copy_from_slice(&noise(2 * MIB, 73));
    std::fs::write(active.folder.join("big.bin"), &content).unwrap();
    second.extend(active.capture());
    passive
        .repository
        .chunks()
        .stage(&passive.folder, &first)
        .unwrap();
    ship_chunks(&active.repository, &passive.repository, &first);
    ship_chunks(&active.repository, &passive.repository, &second);
    let applies = apply_preloaded(
        &passive.folder,
        &passive.repository,
        vec![first, second],
        &options(),
    )
    .unwrap();
    assert_eq!(applies, 2, "the large file ends the first apply");
    assert!(std::fs::read(passive.folder.join("big.bin")).unwrap() == content);
    assert_every_logged_chunk_readable(&passive.repository);
    let passive = passive.reopen();
    assert_every_logged_chunk_readable(&passive.repository);
}

/// As above, every batch staged before the apply starts (as the service stages a
/// batch before handing it over): v3 is not staged (a chunk it lacks is first named
/// by an earlier event of its batch, `a.bin`), so it is patched into v2's inode.
#[test]
fn a_patch_of_a_version_staged_in_the_batch_before_keeps_its_chunks() {
    let mut content = noise(8 * MIB, 71);
    let (active, passive) = pair_with(&[("big.bin", content.clone())]);
    passive.repository.chunks().set_patch_in_place(true);
    content[..6 * MIB].copy_from_slice(&noise(6 * MIB, 72));
    std::fs::write(active.folder.join("big.bin"), &content).unwrap();
    let first = active.capture();
    let tail = noise(2 * MIB, 73);
    content[6 * MIB..].copy_from_slice(&tail);
    std::fs::write(active.folder.join("a.bin"), &tail).unwrap();
    std::fs::write(active.folder.join("big.bin"), &content).unwrap();
    let second = active.capture();
    stage_and_ship(&active, &passive, &[&first, &second]);
    apply_preloaded(
        &passive.folder,
        &passive.repository,
        vec![first, second],
        &options(),
    )
    .unwrap();
    assert!(std::fs::read(passive.folder.join("big.bin")).unwrap() == content);
    assert_every_logged_chunk_readable(&passive.repository);
}

/// Batch 1 renames d -> e; batch 2 puts a large d/big (a new inode kept by reference);
/// batch 3 changes its mode (guarding it at d/big). It must stay at home, not be
/// mapped through batch 1's rename into `kept/`.
#[test]
fn a_file_kept_by_reference_after_a_rename_stays_at_home() {
    let (active, passive) = pair_with(&[("d/small", b"s".to_vec())]);
    std::fs::rename(active.folder.join("d"), active.folder.join("e")).unwrap();
    let first = active.capture();
    std::fs::create_dir(active.folder.join("d")).unwrap();
    std::fs::write(active.folder.join("d/big"), noise(3 * MIB, 81)).unwrap();
    let second = active.capture();
    std::fs::set_permissions(
        active.folder.join("d/big"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let third = active.capture();
    stage_and_ship(&active, &passive, &[&first, &second, &third]);
    apply_preloaded(
        &passive.folder,
        &passive.repository,
        vec![first, second, third],
        &options(),
    )
    .unwrap();
    let big = std::fs::metadata(passive.folder.join("d/big")).unwrap();
    passive.assert_verified();
    assert_eq!(kept_files(&passive), 0, "d/big is at home, not in kept/");
    assert_eq!(big.nlink(), 1);
}

/// A batch after one kept by reference fails to write (a file in the way): what was
/// committed stays, every chunk the log names reads back, and the rest applies later.
#[test]
fn a_failing_batch_after_one_kept_by_reference_loses_nothing() {
    let mut content = noise(8 * MIB, 91);
    let (active, passive) = pair_with(&[("big.bin", content.clone())]);
    content[..3 * MIB].copy_from_slice(&noise(3 * MIB, 92));
    std::fs::write(active.folder.join("big.bin"), &content).unwrap();
    let first = active.capture();
    std::fs::create_dir(active.folder.join("x")).unwrap();
    std::fs::write(active.folder.join("x/f"), noise(2 * MIB, 93)).unwrap();
    std::fs::rename(
        active.folder.join("big.bin"),
        active.folder.join("x/big.bin"),
    )
    .unwrap();
    let second = active.capture();
    stage_and_ship(&active, &passive, &[&first, &second]);
    std::fs::write(passive.folder.join("x"), b"in the way").unwrap();
    let head = passive.repository.head().seq;
    assert!(apply_preloaded(
        &passive.folder,
        &passive.repository,
        vec![first.clone(), second.clone()],
        &options(),
    )
    .is_err());
    assert!(passive.repository.head().seq >= head + first.len() as u64);
    passive.assert_verified();
    assert_every_logged_chunk_readable(&passive.repository);
    // (`recover` may already have removed it: the path is the batch's.)
    let _ = std::fs::remove_file(passive.folder.join("x"));
    let done = (passive.repository.head().seq - head) as usize - first.len();
    apply_preloaded(
        &passive.folder,
        &passive.repository,
        vec![second[done..].to_vec()],
        &options(),
    )
    .unwrap();
    assert!(std::fs::read(passive.folder.join("x/big.bin")).unwrap() == content);
    assert_every_logged_chunk_readable(&passive.repository);
    passive.assert_verified();
    let passive = passive.reopen();
    assert_every_logged_chunk_readable(&passive.repository);
}
