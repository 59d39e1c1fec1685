//! standin's service: the daemon (`standin serve`), its gRPC and HTTP servers, the
//! passive's pull loop and the command line.
//!
//! # Layout
//!
//! - `config`: the TOML config and its checks (exit 2 on a bad key), and its
//!   `preflight` (the files and places it names).
//! - `wire`: how nodes talk — `secret`, `auth` (bearer tokens), `client` (channels,
//!   endpoints), `convert` (wire types <-> engine types).
//! - `peer`: the link to each peer — one per peer, reused connections, every call this
//!   node makes to it, answered in engine types (where a third node would plug in).
//! - `servers`: what a node answers — the gRPC services and `http` (with the status
//!   `page`).
//! - `node`: a running node — `Node`, `serve` and its `tasks`, `reload`, `status`,
//!   `metrics`, the `data_dir_lock`, `absorb`.
//! - `coordinator`: the shell around the engine's role machine — heartbeats, promotion,
//!   hooks; `operator`, `rejoin`, `failover_report`, `drill`, `etcd_authority`,
//!   `voter_set`.
//! - `passive`: `Puller` — `pull_once` and the loop that schedules it; `space`.
//! - `site`: the user site — logins (`login_gate`, `throttle`), terminal servers
//!   (`load_table`) and their `agent` (`agent_keys`, `report_auth`).
//! - `logging`: stderr logs, the `STANDIN_LOG` filter and `--log-format`.
//! - `cli`: the `standin` command line.

pub mod cli;
pub mod config;
pub mod coordinator;
pub mod logging;
pub mod node;
pub mod passive;
pub mod peer;
pub mod servers;
pub mod site;
pub mod wire;
