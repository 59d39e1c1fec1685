//! The server folder on disk and the state the log adds up to: the per-path `index`
//! and its `digest`; what a copy keeps besides content (`meta`: modes, owners and
//! groups by name, xattrs, ACLs — where ownership is replicated; `links`: hard links);
//! reading the disk (`scan`: walk and diff; `read`: one file as a version it had,
//! with `read::reflink` and `read::sqlite`); directory moves the watcher lost
//! (`moves`), paths not replicated (`skipped`), and `verify` (the digest from disk
//! against the log head). Capture (`crate::capture`) and replay (`crate::replay`)
//! are the two sides built on it.

pub mod digest;
pub mod index;
pub mod links;
pub mod meta;
pub mod moves;
pub mod read;
pub mod scan;
pub mod skipped;
pub mod verify;
