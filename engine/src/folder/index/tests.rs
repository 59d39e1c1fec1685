//! Unit tests of `index`.

use super::*;

fn path(text: &str) -> RelPath {
    RelPath::new(text).unwrap()
}

#[test]
fn rename_moves_a_subtree_and_digest_follows() {
    let mut index = FolderIndex::default();
    index
        .apply(&Change::Mkdir {
            path: path("a"),
            mode: 0o755,
        })
        .unwrap();
    index
        .apply(&Change::Symlink {
            path: path("a/l"),
            target: b"x".to_vec(),
        })
        .unwrap();
    index
        .apply(&Change::Rename {
            from: path("a"),
            to: path("b"),
        })
        .unwrap();
    assert!(index.get(&path("a/l")).is_none());
    assert!(index.get(&path("b/l")).is_some());
    let rebuilt = FolderIndex::from_entries(
        index
            .iter()
            .map(|(key, value)| (key.clone(), value.clone(), None)),
    );
    assert_eq!(rebuilt.digest(), index.digest());
}

#[test]
fn misfits_are_refused_without_change() {
    let mut index = FolderIndex::default();
    let before = index.digest();
    assert!(index
        .apply(&Change::Mkdir {
            path: path("a/b"),
            mode: 0o755
        })
        .is_err());
    assert!(index.apply(&Change::Remove { path: path("a") }).is_err());
    assert_eq!(index.digest(), before);
    index
        .apply(&Change::Mkdir {
            path: path("a"),
            mode: 0o755,
        })
        .unwrap();
    assert!(index
        .apply(&Change::Rename {
            from: path("a"),
            to: path("a/b")
        })
        .is_err());
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 1024, ..Default::default() })]

    /// Entries come from disk (the index, the compaction base) and from a peer's
    /// snapshot: arbitrary bytes decode or fail cleanly, and what decodes encodes
    /// back to the same bytes.
    #[test]
    fn arbitrary_entry_bytes_decode_or_fail_cleanly(
        name in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..12),
        bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
    ) {
        if let Ok((decoded, entry, meta)) = decode_entry(&name, &bytes) {
            proptest::prop_assert_eq!(decoded.as_bytes(), name.as_slice());
            proptest::prop_assert_eq!(encode_entry(&entry, meta.as_ref()), bytes);
        }
    }

    /// A sound entry with flipped bytes is refused or decodes to another sound
    /// entry, never a panic.
    #[test]
    fn flipped_entry_bytes_fail_cleanly(at in 0usize..200, mask in 1u8..=255) {
        let entry = Entry::File {
            mode: 0o644,
            size: 5,
            mtime_ns: 7,
            content: Hash::of(b"hello"),
            chunks: vec![crate::ChunkRef { hash: Hash::of(b"hello"), len: 5 }],
        };
        let meta = Meta { mode: 0o2755, uid: 1001, gid: 1002, user: "alice".into(), group: "staff".into(), mtime_ns: 7, xattrs: Vec::new(), names: Vec::new(), link: 0 };
        let mut bytes = encode_entry(&entry, if at % 2 == 0 { Some(&meta) } else { None });
        let at = at % bytes.len();
        bytes[at] ^= mask;
        let _ = decode_entry(b"f", &bytes);
    }
}

/// The digest covers hard-link groups: the same files linked otherwise give another
/// digest, a group's leaf follows its names, and a rebuild gives the same value.
#[test]
fn the_digest_covers_link_groups() {
    let file = |name: &str, link: u64, content: &[u8]| Change::File {
        path: path(name),
        meta: Meta {
            mode: 0o644,
            uid: 0,
            gid: 0,
            user: "root".into(),
            group: "root".into(),
            mtime_ns: 1,
            xattrs: Vec::new(),
            names: Vec::new(),
            link,
        },
        size: content.len() as u64,
        content: Hash::of(content),
        chunks: vec![crate::ChunkRef {
            hash: Hash::of(content),
            len: content.len() as u32,
        }],
    };
    let build = |changes: &[Change]| {
        let mut index = FolderIndex::default();
        for change in changes {
            index.apply(change).unwrap();
        }
        index
    };
    let linked = build(&[file("a", 7, b"x"), file("b", 7, b"x"), file("c", 9, b"x")]);
    let other = build(&[file("a", 7, b"x"), file("b", 8, b"x"), file("c", 8, b"x")]);
    let none = build(&[file("a", 7, b"x"), file("b", 8, b"x"), file("c", 9, b"x")]);
    assert_ne!(linked.digest(), other.digest());
    assert_ne!(linked.digest(), none.digest());
    assert_ne!(other.digest(), none.digest());
    // Regrouped by later changes, each index has the same digest as one built so.
    let mut regrouped = linked.clone();
    regrouped.apply(&file("a", 3, b"x")).unwrap();
    regrouped.apply(&file("b", 8, b"x")).unwrap();
    regrouped.apply(&file("c", 8, b"x")).unwrap();
    regrouped.apply(&file("a", 7, b"x")).unwrap();
    assert_eq!(regrouped.digest(), other.digest());
    // Names of one link value with different content are not one group.
    let mut split = linked.clone();
    split.apply(&file("b", 7, b"y")).unwrap();
    let apart = build(&[file("a", 7, b"x"), file("b", 8, b"y"), file("c", 9, b"x")]);
    assert_eq!(split.digest(), apart.digest());
    split.apply(&Change::Remove { path: path("b") }).unwrap();
    split.apply(&Change::Remove { path: path("a") }).unwrap();
    assert_eq!(split.digest(), build(&[file("c", 9, b"x")]).digest());
    for index in [&linked, &other, &none, &regrouped] {
        let rebuilt = FolderIndex::from_entries(
            index
                .iter()
                .map(|(key, value)| (key.clone(), value.clone(), index.meta(key).cloned())),
        );
        assert_eq!(rebuilt.digest(), index.digest());
    }
}
