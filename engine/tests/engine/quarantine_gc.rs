//! Quarantine keeps what never replicated; garbage collection removes only what no
//! retained event or index entry names.

use standin_engine::log::quarantine::{list_quarantines, quarantine_after, rewind_folder};
use standin_engine::{Hash, Repository};

use crate::support::{replicate, snapshot, Node};

#[test]
fn events_after_the_common_point_go_to_quarantine_with_their_content() {
    let active = Node::new();
    std::fs::create_dir(active.folder.join("records")).unwrap();
    std::fs::write(active.folder.join("records/kept"), b"replicated").unwrap();
    active.capture();
    let common = active.repository.head();
    let replicated_tree = snapshot(&active.folder);

    // Changes the passive never received.
    std::fs::write(active.folder.join("records/late"), b"never replicated").unwrap();
    std::fs::write(active.folder.join("records/kept"), b"edited late").unwrap();
    std::fs::create_dir(active.folder.join("newdir")).unwrap();
    let late = active.capture();
    // One group: its `Group` event, three changes, and the new time of `records`.
    assert_eq!(late.len(), 5, "{late:?}");

    let quarantined = quarantine_after(&active.repository, common.seq)
        .unwrap()
        .unwrap();
    assert_eq!(active.repository.head(), common);
    assert_eq!(quarantined.manifest.events.len(), 5);
    assert_eq!(quarantined.manifest.common_seq, common.seq);
    let late_put = quarantined
        .manifest
        .events
        .iter()
        .find(|event| event.path == "records/late")
        .unwrap();
    assert_eq!(late_put.kind, "file");
    assert_eq!(late_put.size, Some(16));
    let kept = std::fs::read(quarantined.dir.join(late_put.file.as_ref().unwrap())).unwrap();
    assert_eq!(kept, b"never replicated");
    let manifest_text = std::fs::read_to_string(quarantined.dir.join("manifest.json")).unwrap();
    assert!(
        manifest_text.contains("\"records/late\""),
        "readable manifest"
    );

    // A crash between the quarantine and the rewind: the next start finishes it.
    let active = active.reopen();
    standin_engine::replay::recover(&active.folder, &active.repository).unwrap();
    rewind_folder(&active.folder, &active.repository).unwrap();
    assert_eq!(
        snapshot(&active.folder),
        replicated_tree,
        "folder back at the common point"
    );
    active.assert_verified();

    let listed = list_quarantines(&active.data_dir).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].1, quarantined.manifest);

    // After the quarantine, the node follows like any passive.
    let passive = Node::new();
    replicate(&active, &passive, 3);
    passive.assert_verified();
}

#[test]
fn garbage_collection_keeps_named_chunks_and_removes_the_rest() {
    let node = Node::new();
    let keep: Vec<u8> = (0..200_000u32).map(|index| (index % 241) as u8).collect();
    std::fs::write(node.folder.join("keep"), &keep).unwrap();
    node.capture();
    let common = node.repository.head().seq;
    let doomed: Vec<u8> = (0..200_000u32).map(|index| (index % 239) as u8).collect();
    std::fs::write(node.folder.join("doomed"), &doomed).unwrap();
    node.capture();
    // An orphan chunk, as a crash between storing and recording would leave.
    let orphan = node.repository.chunks().put(b"orphan chunk").unwrap();
    node.repository.chunks().sync().unwrap();

    let before = node.repository.chunks().usage();
    let report = node.repository.collect_garbage().unwrap();
    assert_eq!(
        report.chunks_removed, 1,
        "only the orphan: everything else is named by the log"
    );
    assert!(!node.repository.chunks().contains(&orphan).unwrap());

    quarantine_after(&node.repository, common).unwrap().unwrap();
    rewind_folder(&node.folder, &node.repository).unwrap();
    let report = node.repository.collect_garbage().unwrap();
    assert!(
        report.chunks_removed >= 1,
        "the quarantined file's chunks are collected: {report:?}"
    );
    let after = node.repository.chunks().usage();
    assert!(after.1 < before.1);

    // What remains is intact and still replicates.
    let passive = Node::new();
    replicate(&node, &passive, 10);
    passive.assert_verified();
    assert_eq!(std::fs::read(passive.folder.join("keep")).unwrap(), keep);
    // Reopen: the store is still consistent with the log.
    drop(passive);
    let node = node.reopen();
    let live = node.repository.live_chunks().unwrap();
    for hash in &live {
        assert!(node.repository.chunks().get(hash).is_ok(), "{hash}");
    }
    assert_ne!(node.repository.head().hash, Hash::ZERO);
}

/// Regression (review): copying live chunks can fill and roll several new packs; the
/// collection must not delete a pack it has just filled.
#[test]
fn garbage_collection_that_rolls_packs_keeps_every_live_chunk() {
    let node = Node::new();
    let store = node.repository.chunks();
    store.set_pack_target_bytes(64 * 1024);
    let (mut live, mut dead) = (std::collections::HashSet::new(), Vec::new());
    for index in 0..200u32 {
        let bytes: Vec<u8> = (0..9_000u32)
            .map(|at| ((at * 7 + index * 13) % 251) as u8)
            .collect();
        let hash = store.put(&bytes).unwrap();
        if index % 3 != 0 {
            live.insert(hash);
        } else {
            dead.push(hash);
        }
    }
    store.sync().unwrap();
    let report = store.collect_garbage(&live).unwrap();
    assert!(report.packs_rewritten >= 2, "{report:?}");
    for hash in &live {
        store
            .get(hash)
            .unwrap_or_else(|error| panic!("live chunk {hash} lost: {error}"));
    }
    assert_eq!(store.usage().0, live.len() as u64);
    // Gone means gone, from memory too (the store remembers chunks just synced).
    for hash in &dead {
        assert!(
            !store.contains(hash).unwrap(),
            "dead chunk {hash} still found"
        );
    }
}

/// Regression (review): events recorded while a quarantine runs are never lost — the
/// quarantine holds the writers' lock, so each event is either in the log or moved to
/// the quarantine.
#[test]
fn events_recorded_during_a_quarantine_are_never_lost() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let node = Node::new();
    std::fs::write(node.folder.join("base"), b"base").unwrap();
    node.capture();
    let common = node.repository.head().seq;
    for index in 0..20 {
        std::fs::write(node.folder.join(format!("early{index}")), b"x").unwrap();
    }
    node.capture();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let repository = node.repository.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut acknowledged = Vec::new();
            let mut index = 0;
            while !stop.load(Ordering::Relaxed) {
                let path = standin_engine::RelPath::new(format!("dir{index}")).unwrap();
                if let Ok(events) =
                    repository.record(1, vec![standin_engine::Change::Mkdir { path, mode: 0o755 }])
                {
                    acknowledged.extend(events.iter().map(|event| event.hash));
                }
                index += 1;
            }
            acknowledged
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(20));
    let quarantined = quarantine_after(&node.repository, common).unwrap().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    stop.store(true, Ordering::Relaxed);
    let acknowledged = writer.join().unwrap();
    let in_log: std::collections::HashSet<Hash> = node
        .repository
        .log()
        .events_after(0, &Hash::ZERO, usize::MAX)
        .unwrap()
        .iter()
        .map(|event| event.hash)
        .collect();
    let in_quarantine: std::collections::HashSet<Hash> = quarantined
        .manifest
        .events
        .iter()
        .map(|event| event.event_hash)
        .collect();
    for hash in &acknowledged {
        assert!(
            in_log.contains(hash) || in_quarantine.contains(hash),
            "acknowledged event {hash} lost"
        );
    }
    assert!(!acknowledged.is_empty());
}

/// Changes in a folder that the log does not know (written after the last capture)
/// are kept aside with their content, and the folder goes back to the index's state.
#[test]
fn unrecorded_changes_are_kept_aside() {
    let active = Node::new();
    std::fs::create_dir(active.folder.join("d")).unwrap();
    std::fs::write(active.folder.join("d/known"), b"recorded").unwrap();
    active.capture();
    let recorded = snapshot(&active.folder);
    std::fs::write(
        active.folder.join("d/known"),
        b"changed after the last capture",
    )
    .unwrap();
    std::fs::create_dir(active.folder.join("late")).unwrap();
    std::fs::write(
        active.folder.join("late/new"),
        b"written after the last capture",
    )
    .unwrap();
    let kept =
        standin_engine::log::quarantine::quarantine_unrecorded(&active.folder, &active.repository)
            .unwrap();
    assert_eq!(kept, 2);
    assert_eq!(snapshot(&active.folder), recorded);
    active.assert_verified();
    let listed = list_quarantines(&active.data_dir).unwrap();
    let (dir, manifest) = listed.last().unwrap();
    assert!(manifest
        .events
        .iter()
        .all(|event| event.kind == "unrecorded"));
    assert_eq!(
        std::fs::read(dir.join("files/late/new")).unwrap(),
        b"written after the last capture"
    );
    assert_eq!(
        std::fs::read(dir.join("files/d/known")).unwrap(),
        b"changed after the last capture"
    );
    assert_eq!(
        standin_engine::log::quarantine::quarantine_unrecorded(&active.folder, &active.repository)
            .unwrap(),
        0
    );
}

/// A pack file removed or cut short while the node was down is found at open, naming
/// the file; a pack removed under an open store is refused at read as corrupt data.
#[test]
fn a_removed_or_short_pack_is_found_at_open_and_at_read() {
    let node = Node::new();
    std::fs::write(node.folder.join("a"), vec![0x11u8; 5000]).unwrap();
    node.capture();
    let node = node.reopen();
    std::fs::write(node.folder.join("b"), vec![0x22u8; 5000]).unwrap();
    node.capture();
    let hash = Hash::of(&vec![0x22u8; 5000]);
    assert!(node.repository.chunks().contains(&hash).unwrap());
    let pack = node.data_dir.join("chunks").join("pack-00000002.pack");
    assert!(pack.exists());
    let saved = std::fs::read(&pack).unwrap();

    // Removed under the open store (before anything read it): corrupt, with the path.
    std::fs::remove_file(&pack).unwrap();
    let error = node
        .repository
        .chunks()
        .get(&hash)
        .err()
        .map(|error| error.to_string())
        .unwrap_or_default();
    assert!(
        error.contains("the pack file is missing") && error.contains("pack-00000002.pack"),
        "{error}"
    );
    let (data_dir, temp) = (node.data_dir.clone(), node._temp);
    drop(node.repository);
    let error = Repository::open(&data_dir).err().unwrap().to_string();
    assert!(
        error.contains("pack-00000002.pack") && error.contains("missing"),
        "{error}"
    );
    // Cut short: found too.
    std::fs::write(&pack, &saved[..saved.len() - 1]).unwrap();
    let error = Repository::open(&data_dir).err().unwrap().to_string();
    assert!(error.contains("the pack file has"), "{error}");
    // Whole again: opens, and no new pack took the old one's number.
    std::fs::write(&pack, &saved).unwrap();
    let repository = Repository::open(&data_dir).unwrap();
    assert_eq!(repository.chunks().get(&hash).unwrap(), vec![0x22u8; 5000]);
    drop(temp);
}
