//! The passive's in-place patch: a large file kept by reference whose new version
//! keeps most of its chunks at the same offsets (an append, a few changed pages, a
//! cut) is patched where it is — same inode, only the changed chunks written — and
//! every version the log names still reads back; a patch stopped half way, by an
//! error or a crash, is put back to the old version and then applied again.

use std::io::{BufRead, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use standin_engine::replay::{apply_batch, recover, StopPatch, STOP_PATCH};
use standin_engine::{Event, Repository};

use crate::byref::{kept_files, noise, pack_bytes, pair_with, replicate_by_ref};
use crate::support::{ship_chunks, Node};

const MIB: usize = 1 << 20;
const CHILD_ENV: &str = "STANDIN_PATCH_CRASH_CHILD";

fn inode(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

/// Write `bytes` to the active's `name`, capture, replicate by reference.
fn change(active: &Node, passive: &Node, name: &str, bytes: &[u8]) {
    std::fs::write(active.folder.join(name), bytes).unwrap();
    assert!(!active.capture().is_empty());
    replicate_by_ref(active, passive, 100);
}

/// A pair whose passive patches in place (`patch_in_place = true`).
fn patching_pair(files: &[(&str, Vec<u8>)]) -> (Node, Node) {
    let (active, passive) = pair_with(files);
    passive.repository.chunks().set_patch_in_place(true);
    (active, passive)
}

/// By default a passive never patches: a new version is written whole and renamed
/// into place (invariant 5: no reader sees half a file).
#[test]
fn by_default_a_large_file_is_written_anew_not_patched() {
    let mut content = noise(8 * MIB, 11);
    let (active, passive) = pair_with(&[("big.bin", content.clone())]);
    let target = passive.folder.join("big.bin");
    let first = inode(&target);
    content.extend(noise(MIB, 12));
    change(&active, &passive, "big.bin", &content);
    assert_ne!(inode(&target), first, "written anew");
    assert!(std::fs::read(&target).unwrap() == content);
    passive.assert_verified();
}

#[test]
fn appends_edits_and_cuts_of_a_large_file_are_patched_in_place() {
    let mut content = noise(8 * MIB, 21);
    let (active, passive) = patching_pair(&[("big.bin", content.clone())]);
    let target = passive.folder.join("big.bin");
    let first = inode(&target);
    let packed_before = pack_bytes(&passive.repository);

    content.extend(noise(MIB, 22));
    change(&active, &passive, "big.bin", &content);
    assert_eq!(inode(&target), first, "an append is patched in place");
    assert_eq!(std::fs::read(&target).unwrap(), content);

    content[4 * MIB..4 * MIB + 4096].copy_from_slice(&noise(4096, 23));
    change(&active, &passive, "big.bin", &content);
    assert_eq!(inode(&target), first, "an edit is patched in place");

    content.truncate(6 * MIB + 1234);
    change(&active, &passive, "big.bin", &content);
    assert_eq!(inode(&target), first, "a cut is patched in place");
    assert_eq!(std::fs::read(&target).unwrap(), content);
    assert_eq!(kept_files(&passive), 0, "the inode stayed home");
    passive.assert_verified();

    // The packs grew by about the changed chunks (each at most 256 KiB: the new ones
    // and the old ones they overwrote or cut off), not by whole versions.
    let grown = pack_bytes(&passive.repository) - packed_before;
    assert!(
        grown < (MIB + 3 * MIB + 8 * 256 * 1024) as u64,
        "packs grew by {grown} bytes"
    );
    // Every version the log holds reads back whole, also after a restart.
    assert_eq!(
        passive.versions_of("big.bin"),
        active.versions_of("big.bin")
    );
    let passive = passive.reopen();
    assert_eq!(
        passive.versions_of("big.bin"),
        active.versions_of("big.bin")
    );
    passive.assert_verified();
}

#[test]
fn a_file_rewritten_whole_is_written_as_a_new_file() {
    let (active, passive) = patching_pair(&[("big.bin", noise(4 * MIB, 31))]);
    let target = passive.folder.join("big.bin");
    let first = inode(&target);
    let content = noise(4 * MIB, 32);
    change(&active, &passive, "big.bin", &content);
    assert_ne!(
        inode(&target),
        first,
        "nothing in place to keep: a new file"
    );
    assert_eq!(std::fs::read(&target).unwrap(), content);
    passive.assert_verified();
    assert_eq!(
        passive.versions_of("big.bin"),
        active.versions_of("big.bin")
    );
}

/// A file written in two groups that one batch replays (a database recorded after
/// each transaction while the passive was behind): written once, its last version
/// patched in place; the earlier one still reads back from the log.
#[test]
fn a_file_written_twice_in_a_batch_is_patched_once_in_place() {
    let mut content = noise(8 * MIB, 61);
    let (active, passive) =
        patching_pair(&[("db/big.bin", content.clone()), ("db/note", b"0".to_vec())]);
    let target = passive.folder.join("db/big.bin");
    let first = inode(&target);
    for round in 0..2 {
        let at = (2 + 3 * round) * MIB;
        content[at..at + 4096].copy_from_slice(&noise(4096, 62 + round as u64));
        std::fs::write(active.folder.join("db/big.bin"), &content).unwrap();
        // Two files (rewritten where they are: the directory stays as it was), so
        // that each capture is a group with its mark.
        std::fs::write(active.folder.join("db/note"), round.to_string()).unwrap();
        let events = active.capture();
        assert!(
            events
                .iter()
                .any(|event| event.body.change.kind() == "group"),
            "a group: {:?}",
            events
                .iter()
                .map(|event| (event.body.change.kind(), event.body.change.describe_path()))
                .collect::<Vec<_>>()
        );
    }
    replicate_by_ref(&active, &passive, 100);
    assert_eq!(inode(&target), first, "patched in place");
    assert!(std::fs::read(&target).unwrap() == content);
    passive.assert_verified();
    assert_eq!(
        passive.versions_of("db/big.bin"),
        active.versions_of("db/big.bin")
    );
}

/// A file beside it created and removed (its directory's times move, recorded as a
/// change of the directory) does not stop a patch.
#[test]
fn a_file_whose_directory_changed_in_the_batch_is_patched_in_place() {
    let mut content = noise(8 * MIB, 71);
    let (active, passive) = patching_pair(&[("db/big.bin", content.clone())]);
    let target = passive.folder.join("db/big.bin");
    let first = inode(&target);
    std::fs::write(active.folder.join("db/journal"), b"a journal beside it").unwrap();
    assert!(!active.capture().is_empty());
    content[3 * MIB..3 * MIB + 4096].copy_from_slice(&noise(4096, 72));
    std::fs::write(active.folder.join("db/big.bin"), &content).unwrap();
    std::fs::remove_file(active.folder.join("db/journal")).unwrap();
    let events = active.capture();
    assert!(
        events
            .iter()
            .any(|event| event.body.change.kind() == "set-meta"
                && event.body.change.describe_path() == "db"),
        "the directory's change is in the batch: {:?}",
        events
            .iter()
            .map(|event| (event.body.change.kind(), event.body.change.describe_path()))
            .collect::<Vec<_>>()
    );
    replicate_by_ref(&active, &passive, 100);
    assert_eq!(inode(&target), first, "patched in place");
    assert!(std::fs::read(&target).unwrap() == content);
    assert!(!passive.folder.join("db/journal").exists());
    passive.assert_verified();
}

/// A file kept by reference that has a second name on the passive (a hard link the
/// batch does not touch) is never patched: the other name keeps the old version.
#[test]
fn a_file_with_another_name_is_written_anew_not_patched() {
    let old = noise(8 * MIB, 51);
    let (active, passive) = patching_pair(&[("big.bin", old.clone())]);
    let target = passive.folder.join("big.bin");
    std::fs::hard_link(active.folder.join("big.bin"), active.folder.join("z.bin")).unwrap();
    assert!(!active.capture().is_empty());
    replicate_by_ref(&active, &passive, 100);
    assert_eq!(
        inode(&target),
        inode(&passive.folder.join("z.bin")),
        "linked on the passive too"
    );
    // Replaced on the active (a new file renamed over it): the link is broken there.
    let mut new = old.clone();
    new[MIB..MIB + 4096].copy_from_slice(&noise(4096, 52));
    std::fs::write(active.folder.join("tmp.new"), &new).unwrap();
    std::fs::rename(active.folder.join("tmp.new"), active.folder.join("big.bin")).unwrap();
    assert!(!active.capture().is_empty());
    replicate_by_ref(&active, &passive, 100);
    assert!(std::fs::read(&target).unwrap() == new, "big.bin is new");
    assert!(
        std::fs::read(passive.folder.join("z.bin")).unwrap() == old,
        "z.bin keeps the old version"
    );
    passive.assert_verified();
}

/// A pair with an 8 MiB file replicated, and the batch of its next version (4 KiB
/// changed in three places, 1 MiB appended) shipped to the passive but not applied.
fn pending_patch() -> (Node, Node, Vec<Event>, Vec<u8>, Vec<u8>) {
    let old = noise(8 * MIB, 41);
    let (active, passive) = patching_pair(&[("big.bin", old.clone())]);
    let mut new = old.clone();
    for at in [MIB, 3 * MIB, 5 * MIB] {
        new[at..at + 4096].copy_from_slice(&noise(4096, at as u64));
    }
    new.extend(noise(MIB, 42));
    std::fs::write(active.folder.join("big.bin"), &new).unwrap();
    active.capture();
    let head = passive.repository.head();
    let batch = active
        .repository
        .log()
        .events_after(head.seq, &head.hash, 100)
        .unwrap();
    passive
        .repository
        .chunks()
        .stage(&passive.folder, &batch)
        .unwrap();
    ship_chunks(&active.repository, &passive.repository, &batch);
    (active, passive, batch, old, new)
}

/// After a stopped patch: the old version is back, every chunk of both versions reads,
/// and applying the batch again ends at the new version.
fn check_put_back_then_applied(
    active: &Node,
    passive: &Node,
    batch: &[Event],
    old: &[u8],
    new: &[u8],
) {
    let target = passive.folder.join("big.bin");
    assert!(
        std::fs::read(&target).unwrap() == old,
        "the old version is back"
    );
    passive.assert_verified();
    for event in active.all_events() {
        for chunk in event.body.change.chunks().unwrap_or_default() {
            passive
                .repository
                .chunks()
                .get(&chunk.hash)
                .unwrap_or_else(|error| panic!("seq {}: {error}", event.seq()));
        }
    }
    apply_batch(&passive.folder, &passive.repository, batch).unwrap();
    assert!(std::fs::read(&target).unwrap() == new, "the new version");
    passive.assert_verified();
    assert_eq!(
        passive.versions_of("big.bin"),
        active.versions_of("big.bin")
    );
}

#[test]
fn a_patch_stopped_by_an_error_is_put_back_and_applied_again() {
    let (active, passive, batch, old, new) = pending_patch();
    *STOP_PATCH.lock().unwrap() = Some(StopPatch {
        root: passive.folder.clone(),
        after_writes: 2,
        abort: false,
    });
    let failed = apply_batch(&passive.folder, &passive.repository, &batch);
    *STOP_PATCH.lock().unwrap() = None;
    let error = failed.expect_err("the patch was stopped");
    assert!(error.to_string().contains("half way"), "{error}");
    check_put_back_then_applied(&active, &passive, &batch, &old, &new);
}

#[test]
fn patch_crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let repository = Repository::open(&dir.join("data")).unwrap();
    repository.chunks().set_patch_in_place(true);
    let batch = crate::crash::read_events(&dir.join("batch.bin"));
    *STOP_PATCH.lock().unwrap() = Some(StopPatch {
        root: dir.join("folder"),
        after_writes: 2,
        abort: true,
    });
    println!("child applying");
    std::io::stdout().flush().unwrap();
    apply_batch(&dir.join("folder"), &repository, &batch).unwrap();
    println!("child applied: the patch never stopped");
}

#[test]
fn a_patch_stopped_by_a_crash_is_put_back_at_start_and_applied_again() {
    let (active, passive, batch, old, new) = pending_patch();
    // The passive's folder and data_dir, handed to a child process that crashes half
    // way through the patch.
    let dir = passive.data_dir.parent().unwrap().to_path_buf();
    assert_eq!(passive.folder, dir.join("folder"));
    assert_eq!(passive.data_dir, dir.join("data"));
    crate::crash::write_events(&dir.join("batch.bin"), &batch);
    passive.repository.chunks().sync().unwrap();
    passive.repository.flush().unwrap();
    let Node {
        _temp,
        folder,
        data_dir,
        repository,
    } = passive;
    drop(repository);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "patch::patch_crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let lines: Vec<String> = std::io::BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .collect();
    let status = child.wait().unwrap();
    assert!(
        lines.iter().any(|line| line.contains("child applying")),
        "{lines:?}"
    );
    assert!(!status.success(), "the child crashed: {lines:?}");
    let passive = Node {
        _temp,
        repository: std::sync::Arc::new(Repository::open(&data_dir).unwrap()),
        folder,
        data_dir,
    };
    passive.repository.chunks().set_patch_in_place(true);
    let left = std::fs::read(passive.folder.join("big.bin")).unwrap();
    assert!(
        left != old && left != new,
        "the crash left the file half patched"
    );
    recover(&passive.folder, &passive.repository).unwrap();
    check_put_back_then_applied(&active, &passive, &batch, &old, &new);
}

/// A byte changed by hand in a part of the file the new version keeps: the patch does
/// not add up, the chunk is found damaged (missing, never served wrong), the old
/// version is put back; with the chunk fetched again the next try ends right.
#[test]
fn a_patch_over_a_file_changed_by_hand_fails_then_succeeds_once_the_chunk_is_fetched_again() {
    let (active, passive, batch, _old, new) = pending_patch();
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(passive.folder.join("big.bin"))
            .unwrap();
        file.write_all_at(b"X", 2 * MIB as u64 + 10).unwrap();
    }
    let error = apply_batch(&passive.folder, &passive.repository, &batch)
        .expect_err("the patched file does not add up");
    assert!(
        matches!(error, standin_engine::Error::ChunkMissing { .. }),
        "{error}"
    );
    ship_chunks(&active.repository, &passive.repository, &batch);
    apply_batch(&passive.folder, &passive.repository, &batch).unwrap();
    assert!(std::fs::read(passive.folder.join("big.bin")).unwrap() == new);
    passive.assert_verified();
    assert_eq!(
        passive.versions_of("big.bin"),
        active.versions_of("big.bin")
    );
}
