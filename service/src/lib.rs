//! standin's service: the daemon (`standin serve`), its gRPC and HTTP servers, the
//! passive's pull loop and the command line.
//!
//! # Layout
//!
//! - `config`: the TOML config and its checks (exit 2 on a bad key).
//! - `preflight`: the checks of the files and places the config names, which
//!   `serve`, `check-config` and a SIGHUP reload run; `reload`: SIGHUP.
//! - `agent`: the terminal-server load reporter (`standin agent`).
//! - `agent_keys`: per-agent keys (files, MACs, fingerprints); `report_auth`: a
//!   node's check of signed reports (key, MAC, echo, replay); `voter_set`: the
//!   voter-set hash the heartbeats compare (witness refused while they differ).
//! - `secret`, `auth`: the pair's shared secret; bearer-token checks on every call.
//! - `convert`: wire (protobuf) types ↔ engine types; nothing else sees protobuf.
//! - `node`: a running node's shared state (`Node`, `Role`).
//! - `status`: `NodeStatus` and the metrics, computed from a node's state when asked.
//! - `replication_server`, `cluster_server`: the gRPC services.
//! - `coordinator`: the shell around the engine's role state machine (heartbeats,
//!   promotion, switchover, hooks); `rejoin`: common point, quarantine, rewind.
//! - `operator`: `promote` and `switchover` as the node answers them (refusals with
//!   the reason; the switchover's call to the peer first).
//! - `data_dir_lock`: one `serve` per data_dir, locked before any port is bound.
//! - `drill`: a node's part of `standin drill` (hooks, authority, failover time,
//!   what its log holds beyond its peer's head).
//! - `etcd_authority`: the etcd lease's I/O (`authority = "etcd"`).
//! - `failover_report`: the last failover's named-loss report (what the promoted node
//!   knew, what the old active kept in quarantine), exchanged in the heartbeats,
//!   shown until acknowledged.
//! - `passive`: `Puller` — `pull_once` and the loop that schedules it.
//! - `space`: a full disk told apart; the free-space reserve the passive keeps.
//! - `http`: `/healthz`, `/active`, `/passive`, `/metrics`, `/`.
//! - `page`: the status page at `/` (HTML for a browser, the text table otherwise).
//! - `logging`: stderr log output, the `STANDIN_LOG` filter and `--log-format`.
//! - `metrics`: Prometheus counters and gauges.
//! - `client`: channels to a node (the CLI's), endpoints.
//! - `peer`: the link to the peer — one per peer, reused connections, every call this
//!   node makes to it (heartbeat, pull, fetch, snapshot, take-over, switchover, the
//!   rejoin's probes), answered in engine types.
//! - `site`, `site_server`: the user site (users, apps, logins) and the Agent and
//!   Site gRPC services.
//! - `load_table`: terminal servers' reports, checked, expiring, bounded.
//! - `login_gate`, `throttle`: admission of password checks (bounded pool and queue,
//!   failure back-off per user and address).
//! - `serve`: wiring it all together for `standin serve`; `tasks`: its named
//!   long-running tasks, the first of which to end ends the node; `fault`: test-only
//!   hooks that make one fail (feature `fault-hooks`).
//! - `cli`: the `standin` command line (status, verify, log, init-secret, demo, and
//!   `generate man|completions` for packaging, in no help).

pub mod absorb;
pub mod agent;
pub mod agent_keys;
pub mod auth;
pub mod cli;
pub mod client;
pub mod cluster_server;
pub mod config;
pub mod convert;
pub mod coordinator;
pub mod data_dir_lock;
pub mod drill;
pub mod etcd_authority;
pub mod failover_report;
#[cfg(feature = "fault-hooks")]
pub mod fault;
pub mod http;
pub mod load_table;
pub mod logging;
pub mod login_gate;
pub mod metrics;
pub mod node;
pub mod operator;
pub mod page;
pub mod passive;
pub mod peer;
pub mod preflight;
pub mod rejoin;
pub mod reload;
pub mod replication_server;
pub mod report_auth;
pub mod secret;
pub mod serve;
pub mod site;
pub mod site_server;
pub mod space;
pub mod status;
pub mod tasks;
pub mod throttle;
pub mod voter_set;
