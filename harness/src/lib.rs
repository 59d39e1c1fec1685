//! The one process harness of the integration tests (`tests/`) and the benchmarks
//! (`benches/`): real `standin serve` processes on 127.0.0.1, on free ports, in folders
//! the caller owns; every child is killed when its handle is dropped.
//!
//! - `spec`: `NodeSpec`, what a node is (name, role, peer, folders, ports, extra config
//!   lines, how it is started) — a builder instead of positional arguments; it writes
//!   the config and the pair's secret.
//! - `process`: `NodeProcess`, one started node: wait until it answers, kill, stop,
//!   signal, its metrics, the CLI against its config.
//! - `pair`: `PairSpec` and `Pair`: an active `alpha` and a passive `beta`, optionally
//!   naming each other (as deployed) and reached through a route (a fault proxy).
//! - `http`: free ports and a plain HTTP/1.1 GET, metrics parsed from text.
//! - `wait`: polling with a bound.
//! - `files`: a folder's tree with content hashes, seeded bytes.

mod files;
mod http;
mod pair;
mod process;
mod spec;
mod wait;

pub use files::{pseudo_random, tree};
pub use http::{free_port, http_get, metric_in};
pub use pair::{in_sync, Pair, PairSpec};
pub use process::NodeProcess;
pub use spec::{init_secret, standin_binary, NodeSpec};
pub use wait::{poll_for, wait_until, wait_within, LIMIT};

/// What the harness's fallible calls return (the benchmarks' errors box it; the tests
/// use the panicking forms).
pub type Error = Box<dyn std::error::Error + Send + Sync>;
