//! standin's engine: everything that records and replays the changes of a server
//! folder. No networking here — the service crate carries events and chunks between
//! nodes.
//!
//! # Layout
//!
//! - [`event`]: `Change`, `Event`, the canonical encoding and the hash chain.
//! - [`log`]: `EventLog`, the append-only log in sled; durable before visible.
//! - [`chunking`] and [`chunk_store`]: FastCDC chunks, stored in verified pack files.
//! - [`index`] and [`digest`]: the per-path state the log adds up to, and its
//!   O(1)-per-entry folder digest.
//! - [`repository`]: a node's `data_dir` (log + chunks + index) and the active's
//!   write path, `Repository::record`.
//! - [`scan`] and [`capture`]: turning the folder on disk into changes; watching it.
//! - [`replay`]: the passive's atomic, verified, crash-safe `apply_batch`.
//! - [`verify`]: recompute the digest from disk and compare with the log head.
//! - [`quarantine`]: moving unreplicated events aside, never dropping them.
//! - [`path`]: `RelPath`, a path that cannot leave the folder.
//! - [`clock`]: the engine's only reads of the time.
//! - [`role`]: the pure role state machine (active, passive, rejoining, suspended,
//!   fenced).
//! - [`authority`]: who may be the authority — peer only, the agent-witness quorum,
//!   an etcd lease — consulted by the role machine.
//! - [`timing`]: `Timing`, every duration the pair works with, derived from the
//!   configured ones with their relations checked in one place.

pub mod authority;
pub mod capture;
pub mod chunk_store;
pub mod chunking;
pub mod clock;
pub mod digest;
pub mod error;
pub mod event;
pub mod fsutil;
pub mod hash;
pub mod index;
pub mod links;
pub mod log;
pub mod meta;
pub mod moves;
pub mod path;
pub mod quarantine;
pub mod read;
pub mod reflink;
pub mod replay;
pub mod repository;
pub mod role;
pub mod scan;
pub mod skipped;
pub mod sparse;
pub mod sqlite;
pub mod switchover;
pub mod timing;
pub mod verify;

pub use capture::{Capture, CaptureOptions, CaptureStats};
pub use chunk_store::ChunkStore;
pub use error::{Error, Result};
pub use event::{Change, ChunkRef, Event, EventBody};
pub use hash::Hash;
pub use index::{Entry, FolderIndex};
pub use log::{EventLog, Head};
pub use meta::Meta;
pub use path::RelPath;
pub use repository::Repository;
