//! Unit tests of `event`.

use super::*;

fn path(text: &str) -> RelPath {
    RelPath::new(text).unwrap()
}

fn body(change: Change) -> EventBody {
    EventBody {
        seq: 7,
        epoch: 2,
        recorded_at_ms: 1_700_000_000_000,
        change,
        digest: Hash([0xdd; 32]),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The common prefix of every golden body: version, seq 7, epoch 2, the time.
const HEAD: &str = "01070000000000000002000000000000000068e5cf8b010000";
const DIGEST: &str = "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd";

fn golden(change: Change, variant_and_fields: &str) {
    let bytes = body(change.clone()).canonical_bytes();
    assert_eq!(
        hex(&bytes),
        format!("{HEAD}{variant_and_fields}{DIGEST}"),
        "canonical bytes of {change:?} changed: that is a format change"
    );
    assert_eq!(
        EventBody::from_canonical_bytes(&bytes).unwrap(),
        body(change)
    );
}

#[test]
fn golden_put() {
    golden(
        Change::Put {
            path: path("a/b"),
            mode: 0o644,
            mtime_ns: 5,
            size: 3,
            content: Hash([0xcc; 32]),
            chunks: vec![ChunkRef {
                hash: Hash([0xee; 32]),
                len: 3,
            }],
        },
        concat!(
            "00000000", // variant 0: Put
            "0300000000000000",
            "612f62",           // path "a/b"
            "a4010000",         // mode 0o644
            "0500000000000000", // mtime_ns
            "0300000000000000", // size
            "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc",
            "0100000000000000", // one chunk
            "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee",
            "03000000",
        ),
    );
}

#[test]
fn golden_mkdir() {
    golden(
        Change::Mkdir {
            path: path("d"),
            mode: 0o755,
        },
        concat!("01000000", "0100000000000000", "64", "ed010000"),
    );
}

#[test]
fn golden_symlink() {
    golden(
        Change::Symlink {
            path: path("l"),
            target: b"t".to_vec(),
        },
        concat!(
            "02000000",
            "0100000000000000",
            "6c",
            "0100000000000000",
            "74"
        ),
    );
}

#[test]
fn golden_remove() {
    golden(
        Change::Remove { path: path("x") },
        concat!("03000000", "0100000000000000", "78"),
    );
}

#[test]
fn golden_rename() {
    golden(
        Change::Rename {
            from: path("x"),
            to: path("y"),
        },
        concat!(
            "04000000",
            "0100000000000000",
            "78",
            "0100000000000000",
            "79"
        ),
    );
}

#[test]
fn golden_set_mode() {
    golden(
        Change::SetMode {
            path: path("x"),
            mode: 0o600,
        },
        concat!("05000000", "0100000000000000", "78", "80010000"),
    );
}

#[test]
fn golden_promote() {
    golden(
        Change::Promote {
            node: "beta".to_string(),
        },
        concat!("06000000", "0400000000000000", "62657461"),
    );
}

#[test]
fn golden_group() {
    golden(Change::Group { events: 3 }, concat!("07000000", "03000000"));
}

fn meta() -> Meta {
    Meta {
        mode: 0o2755,
        uid: 1001,
        gid: 1002,
        user: "al".into(),
        group: "st".into(),
        mtime_ns: 5,
        xattrs: vec![crate::folder::meta::Xattr {
            name: b"user.a".to_vec(),
            value: b"v".to_vec(),
        }],
        names: vec![crate::folder::meta::IdName {
            group: false,
            id: 7,
            name: "x".into(),
        }],
        link: 9,
    }
}

/// The bytes of `meta()`.
const META: &str = concat!(
    "ed050000",         // mode 0o2755
    "e9030000",         // uid 1001
    "ea030000",         // gid 1002
    "0200000000000000", // user "al"
    "616c",
    "0200000000000000", // group "st"
    "7374",
    "0500000000000000", // mtime_ns
    "0100000000000000", // one xattr
    "0600000000000000",
    "757365722e61", // "user.a"
    "0100000000000000",
    "76",               // "v"
    "0100000000000000", // one name
    "00",               // a user
    "07000000",
    "0100000000000000",
    "78",               // "x"
    "0900000000000000", // link group 9
);

/// A format-2 body: the version byte is 2, the rest as `golden` checks.
fn golden_v2(change: Change, variant_and_fields: &str) {
    let bytes = body(change.clone()).canonical_bytes();
    let head = format!("02{}", &HEAD[2..]);
    assert_eq!(
        hex(&bytes),
        format!("{head}{variant_and_fields}{DIGEST}"),
        "canonical bytes of {change:?} changed: that is a format change"
    );
    assert_eq!(
        EventBody::from_canonical_bytes(&bytes).unwrap(),
        body(change)
    );
    // The same change labelled format 1 is refused (one change, one encoding).
    let mut relabelled = bytes.clone();
    relabelled[0] = 1;
    assert!(EventBody::from_canonical_bytes(&relabelled).is_err());
}

#[test]
fn golden_file() {
    golden_v2(
        Change::File {
            path: path("f"),
            meta: meta(),
            size: 3,
            content: Hash([0xcc; 32]),
            chunks: vec![ChunkRef {
                hash: Hash([0xee; 32]),
                len: 3,
            }],
        },
        &[
            "08000000",
            "010000000000000066",
            META,
            "0300000000000000",
            &"cc".repeat(32),
            "0100000000000000",
            &"ee".repeat(32),
            "03000000",
        ]
        .concat(),
    );
}

#[test]
fn golden_dir_link_and_set_meta() {
    golden_v2(
        Change::Dir {
            path: path("d"),
            meta: meta(),
        },
        &format!("09000000{}{META}", "010000000000000064"),
    );
    golden_v2(
        Change::Link {
            path: path("l"),
            target: b"t".to_vec(),
            meta: meta(),
        },
        &format!(
            "0a000000{}{}{META}",
            "01000000000000006c", "010000000000000074"
        ),
    );
    golden_v2(
        Change::SetMeta {
            path: path("x"),
            meta: meta(),
        },
        &format!("0b000000{}{META}", "010000000000000078"),
    );
}

/// Every format-1 change keeps version byte 1 (its bytes and hash unchanged), and
/// a format-1 change labelled 2 is refused.
#[test]
fn format_one_changes_keep_version_one() {
    let bytes = body(Change::Remove { path: path("x") }).canonical_bytes();
    assert_eq!(bytes[0], 1);
    let mut relabelled = bytes.clone();
    relabelled[0] = 2;
    assert!(EventBody::from_canonical_bytes(&relabelled).is_err());
}

#[test]
fn golden_chain_hash() {
    let event = Event::seal(Hash::ZERO, body(Change::Remove { path: path("x") }));
    let expected = chain_hash(&Hash::ZERO, &event.body.canonical_bytes());
    assert_eq!(event.hash, expected);
    // Pin the hash itself too: it is what two nodes compare.
    assert_eq!(
        event.hash.to_hex(),
        "99b190dc446aa6d693cf373e3e1a4f58a965cc3b9614c218399e92e224d56044"
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 2048, ..Default::default() })]

    /// Arbitrary bytes never panic the decoder, and whatever decodes re-encodes to
    /// the same bytes (the encoding is canonical).
    #[test]
    fn arbitrary_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
        if let Ok(body) = EventBody::from_canonical_bytes(&bytes) {
            proptest::prop_assert_eq!(body.canonical_bytes(), bytes);
        }
    }

    /// Mutating one byte of a valid body either fails to decode or changes the hash.
    #[test]
    fn one_flipped_byte_is_never_silent(at in 0usize..200, flip in 1u8..=255) {
        let event = Event::seal(Hash::ZERO, body(Change::Put {
            path: path("dir/file"),
            mode: 0o644,
            mtime_ns: 1,
            size: 3,
            content: Hash([1; 32]),
            chunks: vec![ChunkRef { hash: Hash([2; 32]), len: 3 }],
        }));
        let mut bytes = event.body.canonical_bytes();
        let at = at % bytes.len();
        bytes[at] ^= flip;
        proptest::prop_assert!(Event::from_parts(Hash::ZERO, &bytes, event.hash).is_err());
    }
}

#[test]
fn decoding_refuses_bad_bytes() {
    let good = body(Change::Remove { path: path("x") }).canonical_bytes();
    let mut wrong_version = good.clone();
    wrong_version[0] = 9;
    assert!(EventBody::from_canonical_bytes(&wrong_version).is_err());
    let mut trailing = good.clone();
    trailing.push(0);
    assert!(EventBody::from_canonical_bytes(&trailing).is_err());
    assert!(EventBody::from_canonical_bytes(&good[..good.len() - 1]).is_err());
    assert!(EventBody::from_canonical_bytes(&[]).is_err());
    // A `..` path smuggled into the bytes is refused at decode time.
    let mut escape = body(Change::Remove { path: path("xy") }).canonical_bytes();
    let at = escape
        .windows(2)
        .position(|window| window == b"xy")
        .unwrap();
    escape[at] = b'.';
    escape[at + 1] = b'.';
    let error = EventBody::from_canonical_bytes(&escape).unwrap_err();
    assert!(error.to_string().contains("`..`"), "{error}");
}
