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

/// Why a harness call failed: what it was doing, with the node's log when there is
/// one (the benchmarks box it; the tests use the panicking forms).
#[derive(Debug)]
pub struct Error(String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<String> for Error {
    fn from(message: String) -> Error {
        Error(message)
    }
}

impl From<std::io::Error> for Error {
    fn from(error: std::io::Error) -> Error {
        Error(error.to_string())
    }
}
