//! The engine's error type: one enum, each variant naming the seq, path or key at fault.

use std::path::PathBuf;

use crate::hash::Hash;

/// Everything the engine can fail with. Variants carry enough context for an operator
/// to find what is wrong without a debugger: the path, the seq, the hash.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file-system call failed; `path` is the file or directory it was about.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The embedded store (sled) failed.
    #[error("store: {0}")]
    Store(#[from] sled::Error),
    /// The log's event at `seq` has another hash than the caller's: the two histories
    /// split at or before `seq`.
    #[error("divergence at seq {seq}: our event has hash {ours}, the caller has {theirs}")]
    Divergence { seq: u64, ours: Hash, theirs: Hash },
    /// The caller asked for events after a seq this log has not reached.
    #[error("seq {seq} is beyond this log's head {head}")]
    BeyondHead { seq: u64, head: u64 },
    /// The caller asked for events after a seq that was compacted away.
    #[error("seq {seq} was compacted away; this log starts after seq {base}")]
    Compacted { seq: u64, base: u64 },
    /// A stored or received event does not link to its predecessor or does not hash to
    /// its recorded hash.
    #[error("broken chain at seq {seq}: {reason}")]
    BrokenChain { seq: u64, reason: String },
    /// Bytes that should hold an event (or another record) could not be decoded.
    #[error("cannot decode {what}: {reason}")]
    Decode { what: String, reason: String },
    /// A path in an event is not a safe relative path inside the folder.
    #[error("unsafe path {path:?}: {reason}")]
    UnsafePath { path: String, reason: String },
    /// Chunk bytes do not hash to the chunk's name.
    #[error("chunk {expected} does not match its content (content hashes to {actual}){location}")]
    ChunkMismatch {
        expected: Hash,
        actual: Hash,
        location: String,
    },
    /// A chunk an event names is not in the store.
    #[error("chunk {hash} is not in the chunk store")]
    ChunkMissing { hash: Hash },
    /// After applying event `seq` the folder digest is not the one the event carries.
    #[error(
        "digest mismatch after seq {seq} ({path}): event says {expected}, replica has {actual}"
    )]
    DigestMismatch {
        seq: u64,
        path: String,
        expected: Hash,
        actual: Hash,
    },
    /// An event cannot be applied to the replica in its current state.
    #[error("cannot apply seq {seq} ({path}): {reason}")]
    Apply {
        seq: u64,
        path: String,
        reason: String,
    },
    /// The data directory holds something that cannot be right.
    #[error("corrupt data at {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    /// The file watcher failed to start.
    #[error("watch {path}: {reason}")]
    Watch { path: PathBuf, reason: String },
}

impl Error {
    /// Whether this is a full disk (ENOSPC, or a quota: EDQUOT), from the file system
    /// or from the store.
    pub fn is_no_space(&self) -> bool {
        let io = match self {
            Error::Io { source, .. } => Some(source),
            Error::Store(sled::Error::Io(source)) => Some(source),
            _ => None,
        };
        io.and_then(std::io::Error::raw_os_error)
            .is_some_and(|code| code == libc::ENOSPC || code == libc::EDQUOT)
    }
}

impl Error {
    /// Whether a write could not be made durable: an `fsync`, `fdatasync` or `syncfs`
    /// failed (any error but EINVAL and EBADF, which some file systems give for a
    /// directory's fsync — PostgreSQL ignores exactly those), or sled failed on I/O
    /// other than a full disk (sled then refuses every later write). Retrying proves
    /// nothing (`crate::durability`): the node must stop and be restarted.
    pub fn is_durability_lost(&self) -> bool {
        match self {
            Error::Io {
                op: "fsync" | "fdatasync" | "syncfs",
                source,
                ..
            } => !matches!(source.raw_os_error(), Some(libc::EINVAL | libc::EBADF)),
            Error::Store(sled::Error::Io(source)) => {
                !matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
            }
            _ => false,
        }
    }
}

/// Shorthand used across the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attach an operation and a path to an I/O error.
pub(crate) trait IoContext<T> {
    fn at(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Io {
            op,
            path: path.into(),
            source,
        })
    }
}
