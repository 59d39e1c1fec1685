//! Events and chunks a passive must refuse — each with its own error — leaving its
//! folder and log exactly as they were.

use standin_engine::log::event::EventBody;
use standin_engine::replay::apply_batch;
use standin_engine::{Change, ChunkRef, Error, Event, Hash, RelPath};

use crate::support::{replicate, ship_chunks, snapshot, FakeActive, Node};

/// An active and a passive in sync, with a directory `d` holding a file.
fn pair() -> (Node, Node) {
    let active = Node::new();
    let passive = Node::new();
    std::fs::create_dir(active.folder.join("d")).unwrap();
    std::fs::write(active.folder.join("d/file"), b"original").unwrap();
    active.capture();
    replicate(&active, &passive, 10);
    (active, passive)
}

/// Bytes of an event whose path was `placeholder`, with the placeholder's bytes
/// replaced by `hostile` (same length) after encoding.
fn smuggle(placeholder: &str, hostile: &str) -> Vec<u8> {
    assert_eq!(placeholder.len(), hostile.len());
    let body = EventBody {
        seq: 1,
        epoch: 1,
        recorded_at_ms: 0,
        change: Change::Remove {
            path: RelPath::new(placeholder).unwrap(),
        },
        digest: Hash::ZERO,
    };
    let mut bytes = body.canonical_bytes();
    let at = bytes
        .windows(placeholder.len())
        .position(|window| window == placeholder.as_bytes())
        .unwrap();
    bytes[at..at + hostile.len()].copy_from_slice(hostile.as_bytes());
    bytes
}

#[test]
fn paths_that_leave_the_folder_are_refused_at_decode() {
    for (placeholder, hostile, reason) in [
        ("zetc/passwd", "/etc/passwd", "absolute path"),
        ("a/zz/zz/x", "a/../../x", "`..` component"),
        ("azb", "a\0b", "NUL byte"),
        ("azzb", "a//b", "empty component"),
    ] {
        let bytes = smuggle(placeholder, hostile);
        let prev = Hash::ZERO;
        let hash = standin_engine::log::event::chain_hash(&prev, &bytes);
        let error = Event::from_parts(prev, &bytes, hash).unwrap_err();
        assert!(
            matches!(error, Error::Decode { .. }),
            "{hostile:?}: {error}"
        );
        assert!(error.to_string().contains(reason), "{hostile:?}: {error}");
    }
    // And `../x` exactly, via a path of the same length.
    let bytes = smuggle("zz/x", "../x");
    let error = Event::from_parts(
        Hash::ZERO,
        &bytes,
        standin_engine::log::event::chain_hash(&Hash::ZERO, &bytes),
    )
    .unwrap_err();
    assert!(error.to_string().contains("`..`"), "{error}");
}

#[test]
fn a_path_through_a_logged_symlink_is_refused_and_nothing_applied() {
    let (_active, passive) = pair();
    let outside = tempfile::tempdir().unwrap();
    let before = snapshot(&passive.folder);
    let head = passive.repository.head();
    let mut fake = FakeActive::following(&passive.repository);
    let link = fake.seal(Change::Symlink {
        path: RelPath::new("link").unwrap(),
        target: outside.path().to_string_lossy().as_bytes().to_vec(),
    });
    let content = b"pwned";
    let hash = passive.repository.chunks().put(content).unwrap();
    let escape = fake.seal(Change::Put {
        path: RelPath::new("link/evil").unwrap(),
        mode: 0o644,
        mtime_ns: 0,
        size: content.len() as u64,
        content: Hash::of(content),
        chunks: vec![ChunkRef {
            hash,
            len: content.len() as u32,
        }],
    });
    let error = apply_batch(&passive.folder, &passive.repository, &[link, escape]).unwrap_err();
    assert!(
        matches!(&error, Error::Apply { seq, .. } if *seq == head.seq + 2),
        "{error}"
    );
    assert!(
        error.to_string().contains("parent link is a symlink"),
        "{error}"
    );
    assert_eq!(
        snapshot(&passive.folder),
        before,
        "the replica must be unchanged"
    );
    assert_eq!(passive.repository.head(), head);
    assert!(
        std::fs::read_dir(outside.path()).unwrap().next().is_none(),
        "nothing written outside"
    );
}

#[test]
fn a_symlink_planted_in_the_replica_is_not_followed() {
    let (active, passive) = pair();
    let outside = tempfile::tempdir().unwrap();
    // Someone replaced the replica's directory `d` by a link to elsewhere.
    std::fs::remove_dir_all(passive.folder.join("d")).unwrap();
    std::os::unix::fs::symlink(outside.path(), passive.folder.join("d")).unwrap();
    let before = snapshot(&passive.folder);
    std::fs::write(active.folder.join("d/new"), b"data").unwrap();
    let events = active.capture();
    ship_chunks(&active.repository, &passive.repository, &events);
    let error = apply_batch(&passive.folder, &passive.repository, &events).unwrap_err();
    assert!(matches!(error, Error::UnsafePath { .. }), "{error}");
    assert!(error.to_string().contains("symlink d"), "{error}");
    assert!(
        std::fs::read_dir(outside.path()).unwrap().next().is_none(),
        "nothing written outside"
    );
    // The batch also sets `d`'s time, so `d` is one of its paths: recovery puts it
    // back as the directory the log says it is (or leaves the replica as it was).
    let after = snapshot(&passive.folder);
    assert!(
        after == before || after.get("d").is_some_and(|entry| entry.0 == 'd'),
        "{after:?}"
    );
}

#[test]
fn a_chunk_that_does_not_match_its_hash_is_refused_on_receipt() {
    let (_, passive) = pair();
    let claimed = Hash::of(b"the real bytes");
    let chunks = passive.repository.chunks();
    // Inline with a batch, or fetched because it was missing: refused either way.
    for error in [
        chunks.put_verified(claimed, b"other bytes").unwrap_err(),
        chunks.put_fetched(claimed, b"other bytes").unwrap_err(),
    ] {
        assert!(
            matches!(error, Error::ChunkMismatch { expected, .. } if expected == claimed),
            "{error}"
        );
    }
    assert!(!chunks.contains(&claimed).unwrap());
    // A fetched chunk is written once, however often it arrives before a sync: the
    // packs grow by as much for one that came twice as for one that came once.
    let pack_bytes = || -> u64 {
        std::fs::read_dir(passive.data_dir.join("chunks"))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "pack"))
            .map(|path| std::fs::metadata(path).unwrap().len())
            .sum()
    };
    let start = pack_bytes();
    chunks.put_fetched(claimed, b"the real bytes").unwrap();
    chunks.sync().unwrap();
    let once = pack_bytes() - start;
    let other = Hash::of(b"the real bytez");
    chunks.put_fetched(other, b"the real bytez").unwrap();
    chunks.put_fetched(other, b"the real bytez").unwrap();
    chunks.sync().unwrap();
    assert_eq!(pack_bytes() - start - once, once);
    assert_eq!(chunks.get(&claimed).unwrap(), b"the real bytes");
    assert_eq!(chunks.get(&other).unwrap(), b"the real bytez");
}

/// Flip a byte of the stored chunk made of bytes 42 in `node`'s pack files.
fn damage_chunk_of_42s(node: &Node) {
    let mut flipped = false;
    for entry in std::fs::read_dir(node.data_dir.join("chunks")).unwrap() {
        let path = entry.unwrap().path();
        if !path.is_file() {
            continue;
        }
        let mut bytes = std::fs::read(&path).unwrap();
        if let Some(at) = bytes
            .windows(64)
            .position(|window| window.iter().all(|byte| *byte == 42))
        {
            bytes[at] = 43;
            std::fs::write(&path, bytes).unwrap();
            flipped = true;
        }
    }
    assert!(flipped, "no chunk of 42s in the packs");
}

/// Ship `events`' chunks to `passive`, damage its chunk of 42s, apply: the batch must
/// fail with a chunk mismatch and leave the folder and the head as they were.
fn apply_with_a_damaged_chunk(active: &Node, passive: &Node, events: &[Event]) -> Error {
    ship_chunks(&active.repository, &passive.repository, events);
    passive.repository.chunks().sync().unwrap();
    damage_chunk_of_42s(passive);
    let before = snapshot(&passive.folder);
    let head = passive.repository.head();
    let error = apply_batch(&passive.folder, &passive.repository, events).unwrap_err();
    assert!(matches!(error, Error::ChunkMismatch { .. }), "{error}");
    assert_eq!(snapshot(&passive.folder), before);
    assert_eq!(passive.repository.head(), head);
    error
}

#[test]
fn a_corrupted_stored_chunk_is_refused_on_read_and_nothing_applied() {
    let (active, passive) = pair();
    std::fs::write(active.folder.join("d/second"), vec![42u8; 5000]).unwrap();
    let events = active.capture();
    let error = apply_with_a_damaged_chunk(&active, &passive, &events);
    assert!(
        error.to_string().contains("pack-"),
        "names the pack: {error}"
    );
}

/// A batch of many files is written by several threads; one damaged chunk among them
/// still fails the batch with that chunk's error and leaves nothing of it behind.
#[test]
fn a_corrupted_chunk_in_a_batch_written_in_parallel_fails_it_whole() {
    let (active, passive) = pair();
    for dir in 0..5 {
        std::fs::create_dir(active.folder.join(format!("p{dir}"))).unwrap();
    }
    write_forty_files(&active.folder, 5, "file", true);
    let events = active.capture();
    let puts = events
        .iter()
        .filter(|event| matches!(event.body.change, Change::File { .. }))
        .count();
    assert_eq!(puts, 40);
    apply_with_a_damaged_chunk(&active, &passive, &events);
    // Without the damage the same batch applies whole.
    let fresh = Node::new();
    replicate(&active, &fresh, 100);
    fresh.assert_verified();
    assert_eq!(snapshot(&fresh.folder), snapshot(&active.folder));
}

/// Write `p{file % dirs}/f{file}` for 40 files, `"{label} {file}"` each; with
/// `damageable`, file 23 holds the 42s whose chunk `damage_chunk_of_42s` damages.
fn write_forty_files(folder: &std::path::Path, dirs: u32, label: &str, damageable: bool) {
    for file in 0..40u32 {
        let content = if damageable && file == 23 {
            vec![42u8; 5000]
        } else {
            format!("{label} {file}").into_bytes()
        };
        std::fs::write(folder.join(format!("p{}/f{file}", file % dirs)), content).unwrap();
    }
}

/// A file replaced by a batch is exchanged with its new version, and the old version
/// removed after the batch: none is left behind when the batch succeeds, when it also
/// renames the directory the old versions are in, or when it fails on a damaged chunk
/// (which also puts every old content back).
#[test]
fn replaced_files_leave_no_old_versions_behind() {
    let (active, passive) = pair();
    let write_all = |round: &str| write_forty_files(&active.folder, 4, round, round == "third");
    for dir in 0..4 {
        std::fs::create_dir(active.folder.join(format!("p{dir}"))).unwrap();
    }
    write_all("first");
    active.capture();
    replicate(&active, &passive, 1000);

    // One batch: every file rewritten.
    write_all("second");
    active.capture();
    replicate(&active, &passive, 1000);
    assert_eq!(snapshot(&passive.folder), snapshot(&active.folder));

    // One batch: every file rewritten, then one of their directories renamed.
    write_all("again");
    active.capture();
    std::fs::rename(active.folder.join("p1"), active.folder.join("q1")).unwrap();
    active
        .repository
        .record(
            1,
            vec![Change::Rename {
                from: RelPath::new("p1").unwrap(),
                to: RelPath::new("q1").unwrap(),
            }],
        )
        .unwrap();
    assert!(active.capture().is_empty());
    replicate(&active, &passive, 1000);
    passive.assert_verified();
    assert_eq!(snapshot(&passive.folder), snapshot(&active.folder));

    // Every file rewritten again, one with a chunk the passive then finds damaged.
    std::fs::rename(active.folder.join("q1"), active.folder.join("p1")).unwrap();
    active.capture();
    replicate(&active, &passive, 1000);
    write_all("third");
    let events = active.capture();
    apply_with_a_damaged_chunk(&active, &passive, &events);
}

/// What a crash left of standin's temporary files (an old version whose removal was
/// not yet on disk, a file half written) goes when the node starts; nothing else does.
#[test]
fn temporary_files_a_crash_left_are_removed_at_start() {
    let (active, passive) = pair();
    let folder = &passive.folder;
    std::fs::write(folder.join(".standin-tmp-1-1"), b"old version").unwrap();
    std::fs::write(folder.join("d/.standin-tmp-1-2"), b"half").unwrap();
    let token = String::from_utf8(standin_engine::path::temp_token()).unwrap();
    std::fs::write(folder.join(format!("d/.standin-tmp-{token}-7-8")), b"half").unwrap();
    std::fs::write(folder.join("d/.standin-tmpish"), b"a user's").unwrap();
    std::fs::write(folder.join("d/.standin-tmp-x"), b"a user's too").unwrap();
    standin_engine::replay::remove_temporary_files(folder).unwrap();
    let mut left = snapshot(folder);
    let users = left
        .remove("d/.standin-tmpish")
        .expect("not standin's: kept");
    assert_eq!(users.2, b"a user's");
    let users = left
        .remove("d/.standin-tmp-x")
        .expect("not standin's (no token): kept");
    assert_eq!(users.2, b"a user's too");
    assert_eq!(left, snapshot(&active.folder));
}

/// One path written twice in a batch, once small and once large (a growing log file
/// crossing 1 MiB): however the batch's files are dealt to write threads, the later
/// content is what ends on disk. (Small files went to a thread by directory, large
/// ones by path, so the older write could be renamed into place last.)
#[test]
fn a_path_written_twice_in_one_batch_ends_with_the_later_content() {
    let put = |node: &Node, path: &str, bytes: &[u8]| -> Change {
        let stored = standin_engine::chunk_store::chunking::store_content(
            bytes,
            node.repository.chunks(),
            std::path::Path::new(path),
        )
        .unwrap();
        Change::Put {
            path: RelPath::new(path).unwrap(),
            mode: 0o644,
            mtime_ns: 1_000_000_000,
            size: stored.size,
            content: stored.content,
            chunks: stored.chunks,
        }
    };
    for round in 0..12u8 {
        let small_last = round % 2 == 0;
        let active = Node::new();
        let passive = Node::new();
        let large: Vec<u8> = (0..2u32 << 20).map(|at| (at % 251) as u8 ^ round).collect();
        let small = vec![round; 100 << 10];
        let mut changes = vec![
            Change::Mkdir {
                path: RelPath::new("d1").unwrap(),
                mode: 0o755,
            },
            Change::Mkdir {
                path: RelPath::new("d2").unwrap(),
                mode: 0o755,
            },
        ];
        let (first, last) = if small_last {
            (&large, &small)
        } else {
            (&small, &large)
        };
        changes.push(put(&active, "log", first));
        changes.push(put(&active, "log", last));
        for file in 0..8 {
            let path = format!("d{}/f{file}", file % 2 + 1);
            changes.push(put(&active, &path, path.as_bytes()));
        }
        active.repository.record(1, changes).unwrap();
        replicate(&active, &passive, 100);
        let on_disk = std::fs::read(passive.folder.join("log")).unwrap();
        assert!(
            on_disk == *last,
            "round {round}: the replica holds the earlier write of `log`"
        );
        passive.assert_verified();
    }
}

#[test]
fn a_wrong_digest_is_refused_naming_seq_and_path() {
    let (_, passive) = pair();
    let before = snapshot(&passive.folder);
    let head = passive.repository.head();
    let mut fake = FakeActive::following(&passive.repository);
    let honest = fake.seal(Change::Mkdir {
        path: RelPath::new("d/sub").unwrap(),
        mode: 0o755,
    });
    let mut body = honest.body.clone();
    body.digest = Hash([1; 32]);
    let lying = Event::seal(honest.prev, body);
    let error = apply_batch(&passive.folder, &passive.repository, &[lying]).unwrap_err();
    match &error {
        Error::DigestMismatch { seq, path, .. } => {
            assert_eq!(*seq, head.seq + 1);
            assert_eq!(path, "d/sub");
        }
        other => panic!("expected a digest mismatch, got {other}"),
    }
    assert_eq!(snapshot(&passive.folder), before);
    assert_eq!(passive.repository.head(), head);
}

#[test]
fn a_broken_chain_or_gap_is_refused() {
    let (_, passive) = pair();
    let head = passive.repository.head();
    let mut fake = FakeActive::following(&passive.repository);
    let first = fake.seal(Change::Mkdir {
        path: RelPath::new("x").unwrap(),
        mode: 0o755,
    });
    let second = fake.seal(Change::Mkdir {
        path: RelPath::new("y").unwrap(),
        mode: 0o755,
    });
    let error = apply_batch(
        &passive.folder,
        &passive.repository,
        std::slice::from_ref(&second),
    )
    .unwrap_err();
    assert!(matches!(error, Error::BrokenChain { .. }), "gap: {error}");
    let mut forged = second.clone();
    forged.hash = Hash([9; 32]);
    let error = apply_batch(&passive.folder, &passive.repository, &[first, forged]).unwrap_err();
    assert!(
        matches!(error, Error::BrokenChain { .. }),
        "forged hash: {error}"
    );
    assert_eq!(passive.repository.head(), head);
    assert!(!passive.folder.join("x").exists());
}

#[test]
fn content_that_does_not_add_up_is_refused() {
    let (_, passive) = pair();
    let before = snapshot(&passive.folder);
    let mut fake = FakeActive::following(&passive.repository);
    let hash = passive.repository.chunks().put(b"abc").unwrap();
    let event = fake.seal(Change::Put {
        path: RelPath::new("d/liar").unwrap(),
        mode: 0o644,
        mtime_ns: 0,
        size: 3,
        content: Hash::of(b"xyz"),
        chunks: vec![ChunkRef { hash, len: 3 }],
    });
    let error = apply_batch(&passive.folder, &passive.repository, &[event]).unwrap_err();
    assert!(matches!(error, Error::ChunkMismatch { .. }), "{error}");
    assert_eq!(snapshot(&passive.folder), before);
}

/// Regression (review): a `SetMode` must not follow a symlink planted in the replica.
#[test]
fn set_mode_does_not_follow_a_planted_symlink() {
    use std::os::unix::fs::PermissionsExt;
    let (_, passive) = pair();
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("secret");
    std::fs::write(&target, b"x").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::remove_file(passive.folder.join("d/file")).unwrap();
    std::os::unix::fs::symlink(&target, passive.folder.join("d/file")).unwrap();
    let mut fake = FakeActive::following(&passive.repository);
    let chmod = fake.seal(Change::SetMode {
        path: RelPath::new("d/file").unwrap(),
        mode: 0o777,
    });
    let error = apply_batch(&passive.folder, &passive.repository, &[chmod]).unwrap_err();
    assert!(matches!(error, Error::UnsafePath { .. }), "{error}");
    assert_eq!(
        std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777,
        0o600
    );
}

/// Setuid and setgid bits are recorded with the owner (invariant 11: a faithful copy),
/// never in a format-1 `Put` (which has no owner): a peer that sends them so is
/// refused.
#[test]
fn setuid_bits_travel_with_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let (active, passive) = pair();
    std::fs::write(active.folder.join("d/tool"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        active.folder.join("d/tool"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    let events = active.capture();
    assert!(
        events.iter().any(
            |event| matches!(&event.body.change, Change::File { meta, .. } if meta.mode == 0o4755)
        ),
        "{events:?}"
    );
    let mut fake = FakeActive::following(&passive.repository);
    let hash = passive.repository.chunks().put(b"#!").unwrap();
    let hostile = fake.seal(Change::Put {
        path: RelPath::new("d/suid").unwrap(),
        mode: 0o4755,
        mtime_ns: 0,
        size: 2,
        content: Hash::of(b"#!"),
        chunks: vec![ChunkRef { hash, len: 2 }],
    });
    let error = apply_batch(&passive.folder, &passive.repository, &[hostile]).unwrap_err();
    assert!(error.to_string().contains("setuid"), "{error}");
    assert!(!passive.folder.join("d/suid").exists());
}

/// Regression (review): renaming a directory onto its own ancestor is refused up front
/// (it would otherwise delete the subtree and then fail on disk, forever).
#[test]
fn a_rename_onto_an_ancestor_is_refused() {
    let (_, passive) = pair();
    let mut fake = FakeActive::following(&passive.repository);
    let mkdir = fake.seal(Change::Mkdir {
        path: RelPath::new("d/c").unwrap(),
        mode: 0o755,
    });
    apply_batch(&passive.folder, &passive.repository, &[mkdir]).unwrap();
    let before = snapshot(&passive.folder);
    let mut fake = FakeActive::following(&passive.repository);
    let rename = fake.seal(Change::Rename {
        from: RelPath::new("d/c").unwrap(),
        to: RelPath::new("d").unwrap(),
    });
    let error = apply_batch(&passive.folder, &passive.repository, &[rename]).unwrap_err();
    assert!(error.to_string().contains("ancestor"), "{error}");
    assert_eq!(snapshot(&passive.folder), before);
}

/// Regression (review): an event too large to be read back is never recorded.
#[test]
fn an_event_too_large_to_read_back_is_not_recorded() {
    let node = crate::support::Node::new();
    let head = node.repository.head();
    let chunks = vec![
        ChunkRef {
            hash: Hash([3; 32]),
            len: 1
        };
        standin_engine::log::event::MAX_EVENT_BYTES / 36 + 1
    ];
    let size = chunks.len() as u64;
    let error = node
        .repository
        .record(
            1,
            vec![Change::Put {
                path: RelPath::new("huge").unwrap(),
                mode: 0o644,
                mtime_ns: 0,
                size,
                content: Hash::ZERO,
                chunks,
            }],
        )
        .unwrap_err();
    assert!(error.to_string().contains("more than"), "{error}");
    assert_eq!(node.repository.head(), head);
    assert!(node
        .repository
        .lock_index()
        .get(&RelPath::new("huge").unwrap())
        .is_none());
}
