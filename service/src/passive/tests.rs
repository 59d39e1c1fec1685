//! Unit tests of the passive's splitting and error attribution.

use standin_engine::Event;

use super::fetch::store_error;
use super::*;
use standin_engine::Change;

fn put_event(seq: u64, bytes: u32) -> Event {
    let chunks = (0..bytes.div_ceil(256 << 10))
        .map(|index| standin_engine::log::event::ChunkRef {
            hash: Hash::of(&(seq * 1000 + index as u64).to_le_bytes()),
            len: (bytes - index * (256 << 10)).min(256 << 10),
        })
        .collect();
    let change = Change::Put {
        path: standin_engine::RelPath::new(format!("f{seq}")).expect("a valid path"),
        mode: 0o644,
        mtime_ns: 0,
        size: bytes as u64,
        content: Hash::of(&seq.to_le_bytes()),
        chunks,
    };
    Event::seal(
        Hash::of(b"prev"),
        standin_engine::EventBody {
            seq,
            epoch: 1,
            recorded_at_ms: 0,
            change,
            digest: Hash::of(b"digest"),
        },
    )
}

#[test]
fn a_local_store_failure_is_not_blamed_on_the_active() {
    let mismatch = standin_engine::Error::ChunkMismatch {
        expected: Hash::of(b"a"),
        actual: Hash::of(b"b"),
        location: String::new(),
    };
    let data_dir = std::path::Path::new("/data");
    assert_eq!(store_error(mismatch, data_dir).kind(), "bad_data");
    let full = standin_engine::Error::Io {
        op: "write",
        path: "pack".into(),
        source: std::io::Error::from_raw_os_error(28),
    };
    assert_eq!(store_error(full, data_dir).kind(), "no_space");
    let broken = standin_engine::Error::Io {
        op: "write",
        path: "pack".into(),
        source: std::io::Error::from_raw_os_error(5),
    };
    assert_eq!(store_error(broken, data_dir).kind(), "apply");
    // A failed sync (even for a full disk) stops the node: retrying proves nothing.
    for code in [libc::EIO, libc::ENOSPC] {
        let lost = standin_engine::Error::Io {
            op: "fdatasync",
            path: "db/db".into(),
            source: std::io::Error::from_raw_os_error(code),
        };
        let error = store_error(lost, data_dir);
        assert_eq!(error.kind(), "durability");
        assert!(error.is_fatal());
        assert!(error.to_string().contains("restart the node"), "{error}");
    }
}

#[test]
fn batches_are_split_by_content_keeping_order_and_every_event() {
    let mib = 1 << 20;
    let sizes = [
        10 * mib,
        30 * mib,
        30 * mib,
        100 * mib,
        4096,
        4096,
        70 * mib,
    ];
    let events: Vec<Event> = sizes
        .iter()
        .enumerate()
        .map(|(index, size)| put_event(index as u64 + 1, *size))
        .collect();
    let parts = split_by_content(events, 64 << 20);
    let seqs: Vec<Vec<u64>> = parts
        .iter()
        .map(|part| part.iter().map(Event::seq).collect())
        .collect();
    assert_eq!(
        seqs,
        vec![vec![1, 2], vec![3], vec![4], vec![5, 6], vec![7]]
    );
    let small: Vec<Event> = (1..=1024).map(|seq| put_event(seq, 4096)).collect();
    assert_eq!(split_by_content(small, 64 << 20).len(), 1);
    assert!(split_by_content(Vec::new(), 64 << 20).is_empty());
}

/// Large files of which few chunks are missing make one part; with every chunk
/// missing the split is the content's.
#[test]
fn batches_are_split_by_the_bytes_still_to_fetch() {
    let mib = 1 << 20;
    let events: Vec<Event> = [100 * mib, 100 * mib, 4096, 70 * mib]
        .iter()
        .enumerate()
        .map(|(index, size)| put_event(index as u64 + 1, *size))
        .collect();
    let chunks_of = |event: &Event| match &event.body.change {
        Change::Put { chunks, .. } => chunks.iter().map(|chunk| chunk.hash).collect(),
        _ => Vec::new(),
    };
    // One chunk of the first file is missing: one part.
    let missing: std::collections::HashSet<Hash> = [chunks_of(&events[0])[0]].into_iter().collect();
    let parts = split_by_missing(events.clone(), 64 << 20, &missing);
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0].len(), 4);
    let all: std::collections::HashSet<Hash> = events.iter().flat_map(chunks_of).collect();
    let seqs: Vec<Vec<u64>> = split_by_missing(events, 64 << 20, &all)
        .iter()
        .map(|part| part.iter().map(Event::seq).collect())
        .collect();
    assert_eq!(seqs, vec![vec![1], vec![2], vec![3], vec![4]]);
}

#[test]
fn fetch_groups_are_bounded_in_bytes_and_count() {
    let big: Vec<(Hash, u32)> = (0..300u32)
        .map(|index| (Hash::of(&index.to_le_bytes()), 256 << 10))
        .collect();
    let groups = fetch_groups(&big);
    assert!(groups
        .iter()
        .all(|group| group.len() as u64 * (256 << 10) <= FETCH_GROUP_BYTES));
    assert_eq!(groups.iter().map(Vec::len).sum::<usize>(), 300);
    let small: Vec<(Hash, u32)> = (0..3000u32)
        .map(|index| (Hash::of(&index.to_le_bytes()), 4096))
        .collect();
    let groups = fetch_groups(&small);
    assert!(groups
        .iter()
        .all(|group| group.len() <= crate::servers::replication_server::MAX_FETCH_HASHES));
    assert_eq!(groups.len(), 3);
    assert!(fetch_groups(&[]).is_empty());
}

/// A batch split in parts takes its inline chunks with it: each goes to the first
/// part naming it (a part refuses chunks none of its events names: the pull failed
/// for ever when they all went to the first part), what no part names to the last.
#[test]
fn inline_chunks_go_with_the_first_part_that_names_them() {
    let events: Vec<Event> = (1..=6).map(|seq| put_event(seq, 300 << 10)).collect();
    let parts = parts::split_by_content(events, 700 << 10);
    assert_eq!(parts.len(), 3);
    let named = |part: &Vec<Event>| -> Vec<Hash> {
        parts::chunks_named(part)
            .into_iter()
            .map(|(hash, _)| hash)
            .collect()
    };
    let stray = Hash::of(b"named by no event");
    // Inline: one chunk of each part (the last part's first), one named twice
    // (in parts 1 and 2), and one no event names.
    let shared = named(&parts[0])[0];
    let mut inline: Vec<(Hash, u32)> = vec![
        (named(&parts[2])[0], 2),
        (named(&parts[1])[0], 1),
        (shared, 0),
        (stray, 9),
        (named(&parts[0])[1], 0),
    ];
    let mut twice = parts.clone();
    twice[1].push(parts[0][0].clone());
    inline.push((named(&parts[1])[1], 1));
    let shares = parts::share_inline(&twice, inline);
    assert_eq!(shares.len(), 3);
    for (index, share) in shares.iter().enumerate() {
        let names = named(&twice[index]);
        for (hash, part) in share {
            if *hash == stray {
                assert_eq!(index, 2, "a chunk no event names goes to the last part");
                continue;
            }
            assert_eq!(*part, index as u32, "{hash} went to part {index}");
            assert!(names.contains(hash), "part {index} does not name {hash}");
        }
    }
    assert_eq!(
        shares.iter().map(Vec::len).sum::<usize>(),
        6,
        "every chunk once"
    );
    assert!(
        shares[0].iter().any(|(hash, _)| *hash == shared),
        "named twice: the first part"
    );
}
