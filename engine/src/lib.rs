//! standin's engine: everything that records and replays the changes of a server
//! folder. No networking here — the service crate carries events and chunks between
//! nodes.
//!
//! # Layout
//!
//! - [`log`]: the history — `event` (`Change`, `Event`, the canonical encoding, the
//!   hash chain), `EventLog` (append-only in sled; durable before visible) and
//!   `quarantine` (events moved aside, never dropped).
//! - [`chunk_store`]: content — FastCDC `chunking` and the verified pack files.
//! - [`folder`]: the server folder on disk and the state the log adds up to — `index`
//!   and `digest`; `meta` (modes, owners, xattrs, ACLs) and `links`; `scan` and `read`
//!   (with `reflink`, `sqlite`); `moves`, `skipped`; `verify`.
//! - [`repository`]: a node's `data_dir` (log + chunks + index) and the active's
//!   write path, `Repository::record`.
//! - [`capture`]: the active's side — watching the folder (`debounce`), recording groups.
//! - [`replay`]: the passive's side — the atomic, verified, crash-safe `apply_batch`.
//! - [`role`]: who is authoritative, pure — the role machine, the `switchover`, the
//!   `authority` it consults (peer, witness, etcd) and `timing`.
//! - [`path`]: `RelPath`, a path that cannot leave the folder; [`hash`]; [`error`];
//!   [`clock`]: the engine's only reads of the time; [`fsutil`]; [`sled_sync`]: sled's
//!   flushes made durable; [`durability`]: the fail-stop latch every sync goes
//!   through; [`fault`]: test-only fault hooks.

pub mod capture;
pub mod chunk_store;
pub mod clock;
pub mod durability;
pub mod error;
pub mod fault;
pub mod folder;
pub mod fsutil;
pub mod hash;
pub mod log;
pub mod path;
pub mod replay;
pub mod repository;
pub mod role;
pub mod sled_sync;

pub use capture::{Capture, CaptureOptions, CaptureStats};
pub use chunk_store::ChunkStore;
pub use error::{Error, Result};
pub use folder::index::{Entry, FolderIndex};
pub use folder::meta::Meta;
pub use hash::Hash;
pub use log::event::{Change, ChunkRef, Event, EventBody};
pub use log::{EventLog, Head};
pub use path::RelPath;
pub use repository::Repository;
