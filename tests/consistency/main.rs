//! Consistency tests with real programs (issue 15, invariant 10 of the design): a
//! promoted copy must be one the applications could have left after a power cut, and
//! the log must hold changes in the order they happened. The oracles are the programs
//! themselves: `git fsck --full`, SQLite's `PRAGMA integrity_check` (through Python's
//! sqlite3, as a user would), a file whose every block names the pass that wrote it.
//!
//! Every test here runs real `standin serve` processes (temp dirs, free ports, every
//! child killed on drop) and is heavy, so they run one at a time (`common::heavy`). The
//! kill tests are seeded (`STANDIN_FAULT_SEED`, printed by each test). Each test has a
//! quick form for `cargo test` and an `#[ignore]` soak form sized by
//! `STANDIN_SOAK_RUNS`:
//!
//! ```text
//! cargo test -p standin --test consistency
//! STANDIN_SOAK_RUNS=40 cargo test -p standin --test consistency -- --ignored --nocapture
//! ```
//!
//! - `git`: a commit + gc + repack loop, the active SIGKILLed: `git fsck --full` on the
//!   promoted copy (also with the pair on a loop-mounted XFS image, as root).
//! - `sqlite`: inserts in transactions of 20, WAL and DELETE journal modes, the active
//!   SIGKILLed: the promoted database opens, passes `integrity_check` and holds a prefix
//!   of the committed rows (also on XFS, where the passive begins each new version of
//!   the database as a clone of the last: the test asserts it did).
//! - `sqlite_lock`: a writer with Python's default 5 s busy timeout beside capture
//!   (replication_period 0), WAL and DELETE: it never sees `database is locked`; the
//!   soak form on a 1 GiB database reports capture's lock time, each copy's time and
//!   the passive's staleness (also on a loop-mounted XFS image, as root).
//! - `rewrite`: a 16 MiB file rewritten in place by one `pwrite` a pass: every version
//!   the passive held is one pass.
//! - `order`: a link before a rename: the object is in the log before the ref.

mod common;
mod git;
mod order;
mod rewrite;
mod sqlite;
mod sqlite_lock;

// The integration target's helpers (nodes, pairs, the CLI, the seeded random source);
// this target uses only some of them.
#[allow(dead_code)]
#[path = "../integration/support.rs"]
mod support;

// The loop-mounted XFS image of the engine's reflink tests (one of its helpers is
// unused here).
#[allow(dead_code)]
#[path = "../../engine/tests/engine/xfs.rs"]
mod xfs;
