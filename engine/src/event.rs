//! Events: what one change of the folder looks like, and its canonical bytes.
//!
//! # Canonical encoding (format version 1)
//!
//! `canonical_bytes(body) = [FORMAT_VERSION] ‖ bincode2(body)` where the bincode
//! configuration is fixed: `standard()` with little-endian byte order and **fixed-width**
//! integers (`u32` is 4 bytes, `u64` 8, lengths are `u64`), enum variants as a `u32`
//! index in declaration order, `Vec`/byte strings as a `u64` length then the items,
//! `Option` as a `u8` tag. Never reorder or remove a variant or field: append new
//! variants at the end and bump `FORMAT_VERSION` for anything else. The golden tests
//! at the bottom of this file pin the exact bytes of one event of each kind.
//!
//! The chain: `hash = blake3(prev ‖ canonical_bytes(body))`, with `prev` of event 1
//! being `Hash::ZERO`.

use bincode::{Decode, Encode};

use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::path::RelPath;

/// The version byte in front of every canonical body.
pub const FORMAT_VERSION: u8 = 1;

/// Upper bound on one encoded event body (a `Put` of a 16 GiB file has ~260,000 chunk
/// references, ~10 MiB). Decoding hostile bytes never allocates more than this.
pub const MAX_EVENT_BYTES: usize = 64 << 20;

fn canonical_config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
}

fn decode_config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
        .with_limit::<MAX_EVENT_BYTES>()
}

/// One piece of a file's content: its blake3 hash and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode, serde::Serialize)]
pub struct ChunkRef {
    pub hash: Hash,
    pub len: u32,
}

/// What changed. Paths are relative to the server folder.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Change {
    /// A regular file now has this content (made of `chunks`, in order) and metadata.
    /// Replaces whatever was at `path`.
    Put {
        path: RelPath,
        mode: u32,
        mtime_ns: i64,
        size: u64,
        content: Hash,
        chunks: Vec<ChunkRef>,
    },
    /// A directory exists at `path`, with permission bits `mode`.
    Mkdir { path: RelPath, mode: u32 },
    /// A symbolic link at `path` points to `target` (stored as written, never followed).
    Symlink { path: RelPath, target: Vec<u8> },
    /// Whatever is at `path` is gone, with everything below it.
    Remove { path: RelPath },
    /// What was at `from` (with everything below it) is now at `to`, replacing `to`.
    Rename { from: RelPath, to: RelPath },
    /// The permission bits of the file or directory at `path` are now `mode`.
    SetMode { path: RelPath, mode: u32 },
    /// `node` became authoritative; the event's epoch is the new epoch.
    Promote { node: String },
    /// The next `events` events are one group: the changes of one capture (a cut of
    /// the folder at one instant). The folder is in a state it really had only at a
    /// group's end, so a passive promotes only there (invariant 10). Changes nothing.
    /// An event outside any group is a group of its own.
    Group { events: u32 },
}

impl Change {
    /// The paths this change touches, for journaling and error messages.
    pub fn paths(&self) -> Vec<&RelPath> {
        match self {
            Change::Put { path, .. }
            | Change::Mkdir { path, .. }
            | Change::Symlink { path, .. }
            | Change::Remove { path }
            | Change::SetMode { path, .. } => vec![path],
            Change::Rename { from, to } => vec![from, to],
            Change::Promote { .. } | Change::Group { .. } => vec![],
        }
    }

    /// The first path, or `-` for changes without one (for messages).
    pub fn describe_path(&self) -> String {
        match self {
            Change::Rename { from, to } => format!("{from} -> {to}"),
            _ => self
                .paths()
                .first()
                .map(|path| path.to_string())
                .unwrap_or_else(|| "-".to_string()),
        }
    }

    /// A short name of the kind of change.
    pub fn kind(&self) -> &'static str {
        match self {
            Change::Put { .. } => "put",
            Change::Mkdir { .. } => "mkdir",
            Change::Symlink { .. } => "symlink",
            Change::Remove { .. } => "remove",
            Change::Rename { .. } => "rename",
            Change::SetMode { .. } => "set-mode",
            Change::Promote { .. } => "promote",
            Change::Group { .. } => "group",
        }
    }
}

/// The hashed part of an event: everything but `prev` and `hash`.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct EventBody {
    pub seq: u64,
    pub epoch: u64,
    /// Wall-clock time the active recorded the change, milliseconds since the Unix epoch.
    pub recorded_at_ms: u64,
    pub change: Change,
    /// The folder digest after this change.
    pub digest: Hash,
}

impl EventBody {
    /// `[FORMAT_VERSION] ‖ bincode(body)` with the fixed configuration.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = vec![FORMAT_VERSION];
        // Encoding into a Vec cannot fail for these types: no map, no limit.
        bincode::encode_into_std_write(self, &mut out, canonical_config())
            .expect("encoding an event body into memory cannot fail");
        out
    }

    /// Decode canonical bytes, refusing an unknown version, trailing bytes and any
    /// invalid path.
    pub fn from_canonical_bytes(bytes: &[u8]) -> Result<EventBody> {
        let decode_error = |reason: String| Error::Decode {
            what: "event body".to_string(),
            reason,
        };
        let (version, rest) = bytes
            .split_first()
            .ok_or_else(|| decode_error("empty".to_string()))?;
        if *version != FORMAT_VERSION {
            return Err(decode_error(format!("unknown format version {version}")));
        }
        let (body, used): (EventBody, usize) = bincode::decode_from_slice(rest, decode_config())
            .map_err(|error| decode_error(error.to_string()))?;
        if used != rest.len() {
            return Err(decode_error(format!(
                "{} trailing bytes",
                rest.len() - used
            )));
        }
        Ok(body)
    }
}

/// A log entry: a body chained to its predecessor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub prev: Hash,
    pub body: EventBody,
    pub hash: Hash,
}

/// `blake3(prev ‖ canonical)`.
pub fn chain_hash(prev: &Hash, canonical: &[u8]) -> Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&prev.0);
    hasher.update(canonical);
    hasher.finalize().into()
}

impl Event {
    /// Seal `body` onto `prev`.
    pub fn seal(prev: Hash, body: EventBody) -> Event {
        let hash = chain_hash(&prev, &body.canonical_bytes());
        Event { prev, body, hash }
    }

    /// Rebuild an event from its parts as received or stored, checking that `hash`
    /// is what `prev` and the canonical bytes give.
    pub fn from_parts(prev: Hash, canonical: &[u8], hash: Hash) -> Result<Event> {
        let body = EventBody::from_canonical_bytes(canonical)?;
        let computed = chain_hash(&prev, canonical);
        if computed != hash {
            return Err(Error::BrokenChain {
                seq: body.seq,
                reason: format!("recorded hash {hash} but prev and body hash to {computed}"),
            });
        }
        Ok(Event { prev, body, hash })
    }

    pub fn seq(&self) -> u64 {
        self.body.seq
    }

    pub fn epoch(&self) -> u64 {
        self.body.epoch
    }

    /// Check that `self` directly follows an event with (`seq`, `hash`).
    pub fn check_follows(&self, seq: u64, hash: &Hash) -> Result<()> {
        if self.body.seq != seq + 1 {
            return Err(Error::BrokenChain {
                seq: self.body.seq,
                reason: format!("expected seq {} after seq {seq}", seq + 1),
            });
        }
        if self.prev != *hash {
            return Err(Error::BrokenChain {
                seq: self.body.seq,
                reason: format!("prev is {} but event {seq} has hash {hash}", self.prev),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
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
}
