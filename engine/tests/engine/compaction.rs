//! Log compaction and snapshots: old events go, the state they built stays, and a
//! replica whose head was compacted away starts again from a verified snapshot.

use standin_engine::log::quarantine::{quarantine_after, rewind_folder};
use standin_engine::{Error, Hash};

use crate::support::{replicate, snapshot, Node};

fn ship_entries(
    from: &Node,
    to: &Node,
    entries: &[(
        standin_engine::RelPath,
        standin_engine::Entry,
        Option<standin_engine::Meta>,
    )],
) {
    for (_, entry, _) in entries {
        if let standin_engine::Entry::File { chunks, .. } = entry {
            for chunk in chunks {
                if !to.repository.chunks().contains(&chunk.hash).unwrap() {
                    to.repository
                        .chunks()
                        .put_verified(
                            chunk.hash,
                            &from.repository.chunks().get(&chunk.hash).unwrap(),
                        )
                        .unwrap();
                }
            }
        }
    }
}

fn active_with_history() -> Node {
    let node = Node::new();
    std::fs::create_dir(node.folder.join("d")).unwrap();
    for round in 0..5 {
        for index in 0..10 {
            std::fs::write(
                node.folder.join(format!("d/f{index}")),
                format!("round {round} file {index} {}", "x".repeat(round * 100)),
            )
            .unwrap();
        }
        node.capture();
    }
    node
}

#[test]
fn compaction_keeps_the_state_and_refuses_reads_before_the_base() {
    let node = active_with_history();
    let head = node.repository.head();
    let removed = node.repository.compact(10).unwrap();
    assert_eq!(removed, head.seq - 10);
    let base = node.repository.log().base();
    assert_eq!(base.seq, head.seq - 10);
    assert_eq!(node.repository.head(), head);
    let error = node
        .repository
        .log()
        .events_after(0, &Hash::ZERO, 10)
        .unwrap_err();
    assert!(matches!(error, Error::Compacted { .. }), "{error}");
    assert_eq!(
        node.repository
            .log()
            .events_after(base.seq, &base.hash, 100)
            .unwrap()
            .len(),
        10
    );
    node.assert_verified();
    // Reopening works from the compacted log, and garbage collection keeps what the
    // index and the retained events name.
    let node = node.reopen();
    node.assert_verified();
    node.repository.collect_garbage().unwrap();
    for hash in node.repository.live_chunks().unwrap() {
        node.repository.chunks().get(&hash).unwrap();
    }
    assert_eq!(node.repository.log().check_chain().unwrap(), head.seq);
}

#[test]
fn a_quarantine_after_the_base_still_rewinds_the_folder() {
    let node = active_with_history();
    node.repository.compact(20).unwrap();
    let common = node.repository.head();
    let tree = snapshot(&node.folder);
    std::fs::write(node.folder.join("d/f3"), b"late").unwrap();
    std::fs::remove_file(node.folder.join("d/f4")).unwrap();
    node.capture();
    quarantine_after(&node.repository, common.seq)
        .unwrap()
        .unwrap();
    rewind_folder(&node.folder, &node.repository).unwrap();
    assert_eq!(snapshot(&node.folder), tree);
    node.assert_verified();
    let base = node.repository.log().base().seq;
    let error = quarantine_after(&node.repository, base - 1).unwrap_err();
    assert!(matches!(error, Error::Compacted { .. }), "{error}");
}

#[test]
fn a_replica_behind_the_base_starts_again_from_a_snapshot() {
    let active = active_with_history();
    let passive = Node::new();
    replicate(&active, &passive, 7);
    // The passive falls behind; meanwhile the active compacts past the passive's head.
    std::fs::write(active.folder.join("d/new"), b"after the passive stopped").unwrap();
    std::fs::remove_file(active.folder.join("d/f0")).unwrap();
    active.capture();
    std::fs::write(passive.folder.join("stray"), b"not in any log").unwrap();
    active.repository.compact(1).unwrap();
    let passive_head = passive.repository.head();
    assert!(matches!(
        active
            .repository
            .log()
            .events_after(passive_head.seq, &passive_head.hash, 10),
        Err(Error::Compacted { .. })
    ));

    let (head, entries) = active.repository.snapshot();
    ship_entries(&active, &passive, &entries);
    // A snapshot that does not add up to its head's digest is refused, nothing changed.
    let before = snapshot(&passive.folder);
    let mut forged = entries.clone();
    forged.pop();
    let error = standin_engine::replay::install_snapshot(
        &passive.repository,
        &passive.folder,
        head,
        forged,
    )
    .unwrap_err();
    assert!(matches!(error, Error::DigestMismatch { .. }), "{error}");
    assert_eq!(snapshot(&passive.folder), before);

    standin_engine::replay::install_snapshot(&passive.repository, &passive.folder, head, entries)
        .unwrap();
    assert_eq!(passive.repository.head(), head);
    assert_eq!(snapshot(&passive.folder), snapshot(&active.folder));
    passive.assert_verified();
    // And it follows the log from there.
    std::fs::write(active.folder.join("d/later"), b"later").unwrap();
    active.capture();
    replicate(&active, &passive, 10);
    assert_eq!(snapshot(&passive.folder), snapshot(&active.folder));
    passive.assert_verified();
    let passive = passive.reopen();
    passive.assert_verified();
}

/// Hard-link groups add leaves to the folder digest (`standin-links-v1`); they are
/// derived from the entries, so every way an index is rebuilt must find the same
/// ones: a reopen from the saved index, from an older saved index brought forward by
/// the log, from the base index after compaction, a snapshot, and a replica that
/// replays the log one event a batch. Each would refuse to open, or stop, otherwise.
#[test]
fn link_groups_add_up_the_same_after_every_reload() {
    use std::os::unix::fs::FileExt;
    let link = |from: &str, to: &str, node: &Node| {
        std::fs::hard_link(node.folder.join(from), node.folder.join(to)).unwrap()
    };
    let build = |linked: bool| {
        let node = Node::new();
        std::fs::create_dir(node.folder.join("sub")).unwrap();
        std::fs::write(node.folder.join("a"), b"first version").unwrap();
        std::fs::write(node.folder.join("d"), b"another file").unwrap();
        std::fs::write(node.folder.join("alone"), b"one name").unwrap();
        if linked {
            link("a", "b", &node);
            link("a", "sub/c", &node);
            link("d", "e", &node);
        } else {
            std::fs::write(node.folder.join("b"), b"first version").unwrap();
            std::fs::write(node.folder.join("sub/c"), b"first version").unwrap();
            std::fs::write(node.folder.join("e"), b"another file").unwrap();
        }
        node.capture();
        node
    };
    // The same bytes and metadata unlinked: only the link leaves tell them apart.
    let unlinked = build(false);
    let active = build(true);
    assert_ne!(
        active.repository.head().digest,
        unlinked.repository.head().digest
    );
    let passive = Node::new();
    replicate(&active, &passive, 1);

    // Written in place through one name; saved, then reopened.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(active.folder.join("b"))
        .unwrap();
    file.write_all_at(b"SECOND", 0).unwrap();
    drop(file);
    active.capture();
    active.repository.save_index_if_dirty().unwrap();
    let head = active.repository.head();
    let active = active.reopen();
    assert_eq!(active.repository.head(), head);
    assert_eq!(active.repository.lock_index().digest(), head.digest);
    active.assert_verified();

    // Changed after the last save: the saved index is brought forward by the log.
    std::fs::remove_file(active.folder.join("e")).unwrap();
    link("alone", "e", &active);
    active.capture();
    let head = active.repository.head();
    let active = active.reopen();
    assert_eq!(active.repository.lock_index().digest(), head.digest);
    active.assert_verified();

    // A replica one event a batch, reopened.
    replicate(&active, &passive, 1);
    assert_eq!(passive.repository.head(), head);
    passive.assert_verified();
    let passive = passive.reopen();
    assert_eq!(passive.repository.lock_index().digest(), head.digest);
    passive.assert_verified();

    // Compacted: the base index is saved and reopened from; a replica starts from a
    // snapshot.
    active.repository.compact(1).unwrap();
    let active = active.reopen();
    assert_eq!(active.repository.lock_index().digest(), head.digest);
    active.assert_verified();
    let fresh = Node::new();
    let (snapshot_head, entries) = active.repository.snapshot();
    ship_entries(&active, &fresh, &entries);
    standin_engine::replay::install_snapshot(
        &fresh.repository,
        &fresh.folder,
        snapshot_head,
        entries,
    )
    .unwrap();
    assert_eq!(fresh.repository.head().digest, head.digest);
    let fresh = fresh.reopen();
    assert_eq!(fresh.repository.lock_index().digest(), head.digest);
}
