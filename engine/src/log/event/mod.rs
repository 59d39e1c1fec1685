//! Events: what one change of the folder looks like, and its canonical bytes.
//!
//! # Canonical encoding (format versions 1 and 2)
//!
//! `canonical_bytes(body) = [version] ‖ bincode2(body)` where the bincode
//! configuration is fixed: `standard()` with little-endian byte order and **fixed-width**
//! integers (`u32` is 4 bytes, `u64` 8, lengths are `u64`), enum variants as a `u32`
//! index in declaration order, `Vec`/byte strings as a `u64` length then the items,
//! `Option` as a `u8` tag. Never reorder or remove a variant or field: append new
//! variants at the end. The version byte is the change's (`Change::format_version`):
//! 2 for the changes that carry metadata (`File`, `Dir`, `Link`, `SetMeta`, variants
//! 8-11), 1 for every other — so an event recorded by an older release keeps its exact
//! bytes and hash, and an older release refuses a format-2 event by its version
//! rather than misreading it. The golden tests at the bottom of this file pin the
//! exact bytes of one event of each kind.
//!
//! The chain: `hash = blake3(prev ‖ canonical_bytes(body))`, with `prev` of event 1
//! being `Hash::ZERO`.

use bincode::{Decode, Encode};

use crate::error::{Error, Result};
use crate::folder::meta::Meta;
use crate::hash::Hash;
use crate::path::RelPath;

/// The version byte in front of every canonical body.
/// The newest format version: 2 adds the changes that carry metadata (`File`, `Dir`,
/// `Link`, `SetMeta`); every other change keeps version 1 and its bytes.
pub const FORMAT_VERSION: u8 = 2;

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
    /// A regular file now has this content and metadata (format 2: `Put` with all of
    /// the metadata — owner, every mode bit, extended attributes, ACLs).
    File {
        path: RelPath,
        meta: Meta,
        size: u64,
        content: Hash,
        chunks: Vec<ChunkRef>,
    },
    /// A directory exists at `path` with this metadata (format 2).
    Dir { path: RelPath, meta: Meta },
    /// A symbolic link at `path` points to `target`, with this metadata (format 2).
    Link {
        path: RelPath,
        target: Vec<u8>,
        meta: Meta,
    },
    /// The metadata of the entry at `path` is now `meta` (format 2: a `chown`,
    /// `chmod`, `setfacl`, `setfattr` or `touch`).
    SetMeta { path: RelPath, meta: Meta },
}

impl Change {
    /// The paths this change touches, for journaling and error messages.
    pub fn paths(&self) -> Vec<&RelPath> {
        match self {
            Change::Put { path, .. }
            | Change::Mkdir { path, .. }
            | Change::Symlink { path, .. }
            | Change::Remove { path }
            | Change::SetMode { path, .. }
            | Change::File { path, .. }
            | Change::Dir { path, .. }
            | Change::Link { path, .. }
            | Change::SetMeta { path, .. } => vec![path],
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
            Change::File { .. } => "file",
            Change::Dir { .. } => "dir",
            Change::Link { .. } => "link",
            Change::SetMeta { .. } => "set-meta",
        }
    }

    /// The format version of this change's event: 2 for the changes that carry
    /// metadata, 1 for the others (so an event of format 1 keeps its bytes).
    pub fn format_version(&self) -> u8 {
        match self {
            Change::File { .. }
            | Change::Dir { .. }
            | Change::Link { .. }
            | Change::SetMeta { .. } => 2,
            _ => 1,
        }
    }

    /// The metadata this change records, if it records any.
    pub fn meta(&self) -> Option<&Meta> {
        match self {
            Change::File { meta, .. }
            | Change::Dir { meta, .. }
            | Change::Link { meta, .. }
            | Change::SetMeta { meta, .. } => Some(meta),
            _ => None,
        }
    }

    /// The content this change puts in place: its chunks, in order.
    pub fn chunks(&self) -> Option<&[ChunkRef]> {
        match self {
            Change::Put { chunks, .. } | Change::File { chunks, .. } => Some(chunks),
            _ => None,
        }
    }

    /// The size of the content this change puts in place (0 for the others).
    pub fn content_size(&self) -> u64 {
        match self {
            Change::Put { size, .. } | Change::File { size, .. } => *size,
            _ => 0,
        }
    }

    /// What this change does besides its metadata, as the format-1 change it extends
    /// (`File` as a `Put` with the mode bits a `Put` carries, `Dir` as `Mkdir`, `Link`
    /// as `Symlink`); `None` for `SetMeta`, which is metadata only. A format-1 change
    /// is itself.
    pub fn base(&self) -> Option<std::borrow::Cow<'_, Change>> {
        use std::borrow::Cow;
        let legacy_mode = |meta: &Meta| meta.mode & crate::folder::meta::MODE_MASK;
        match self {
            Change::File {
                path,
                meta,
                size,
                content,
                chunks,
            } => Some(Cow::Owned(Change::Put {
                path: path.clone(),
                mode: legacy_mode(meta),
                mtime_ns: meta.mtime_ns,
                size: *size,
                content: *content,
                chunks: chunks.clone(),
            })),
            Change::Dir { path, meta } => Some(Cow::Owned(Change::Mkdir {
                path: path.clone(),
                mode: legacy_mode(meta),
            })),
            Change::Link { path, target, .. } => Some(Cow::Owned(Change::Symlink {
                path: path.clone(),
                target: target.clone(),
            })),
            Change::SetMeta { .. } => None,
            _ => Some(Cow::Borrowed(self)),
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
        let mut out = vec![self.change.format_version()];
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
        if *version == 0 || *version > FORMAT_VERSION {
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
        if body.change.format_version() != *version {
            // One change, one encoding: a format-1 change is never re-labelled.
            return Err(decode_error(format!(
                "a {} change in format version {version}",
                body.change.kind()
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
mod tests;
