//! The engine's integration tests, one binary. Modules:
//!
//! - `byref`: the by-reference passive (large files written once, verified reads).
//! - `byref_clone`: the same where the file system clones: a new version begun as a clone of the old (SQLite integrity_check on the result).
//! - `byref_replace`: files kept by reference replaced by versions sharing most of their chunks: only what each lacks is copied out.
//! - `roundtrip`: property test — random folder operations captured and replayed.
//! - `chain`: tampering with the stored log is found when it is read.
//! - `crash`: replay killed at random points converges.
//! - `large_append`: an append written to sled in parts, cut short by a crash, is gone.
//! - `hostile`: events and chunks that must be refused, with the replica unchanged.
//! - `compaction`: log compaction, the base index and snapshots.
//! - `capture`: the watcher's debouncing, renames, removals and start-up reconcile.
//! - `consistency`: invariant 10 with writers running: whole versions, order kept.
//! - `programs`: invariant 10 at every group boundary, for random programs of creates,
//!   links, renames, removals and directory moves (proptest), and the ones it found.
//! - `fidelity`: invariant 11 — owners, modes, ACLs, xattrs, times and hard links as rsync keeps them.
//! - `skipped_paths`: invariant 11 — paths that cannot be replicated are named, the rest goes on.
//! - `simulation`: the seeded pair simulation (roles, faults, nothing lost).
//! - `quarantine_gc`: quarantining events and collecting garbage chunks.
//! - `reflink`: the clone path on a loop-mounted XFS image (as root; skips otherwise).
//! - `sparse`: holes found on capture, not read, left as holes on the passive.
//! - `sqlite`: live databases captured at transaction boundaries, companions kept out.

mod byref;
mod byref_clone;
mod byref_replace;
mod capture;
mod chain;
mod compaction;
mod consistency;
mod crash;
mod crash_byref;
mod fed;
mod fed_byref;
mod fed_times;
mod fidelity;
mod hostile;
mod large_append;
mod patch;
mod programs;
mod quarantine_gc;
mod reflink;
mod roundtrip;
mod simulation;
mod skipped_paths;
mod sparse;
mod sqlite;
mod support;
mod switchover;
mod xfs;
