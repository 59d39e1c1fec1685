//! Integration tests: real `standin` processes on 127.0.0.1, in temp dirs, on free
//! ports; every child is killed when its test ends. Modules:
//!
//! - `support`: the shared process harness (`standin-harness`: `NodeSpec`, `PairSpec`,
//!   nodes and pairs, HTTP and metrics) re-exported, and what only tests add.
//! - `replication`: what a pair replicates, verified on both sides.
//! - `restart`: a passive restarted in the middle of a catch-up.
//! - `by_reference`: a passive keeps large files by reference; promoted, it copies
//!   them into its chunk store in the background, so an in-place rewrite loses
//!   nothing a fresh passive then needs.
//! - `security`: the shared secret.
//! - `corruption`: corrupt content on the active.
//! - `disk_full`: the passive's disk fills up, and space returns.
//! - `site`: agents, the load table, logins and the client with a server list.
//! - `site_hostile`: hostile logins and agent reports (non-UTF-8, oversized, paths,
//!   NaN loads, huge addresses): refused without echo, leak or belief.
//! - `agent_keys`: per-agent keys: the `agent-key` commands, the forged-votes attack
//!   with the pair link cut, replayed and misnamed reports, differing voter sets.
//! - `snapshot`: a passive whose head was compacted away starts from a snapshot.
//! - `config`: bad configs refused with the key and exit status 2, by `serve` and
//!   by `check-config` alike.
//! - `check_config`: `check-config` on TLS files, a running node's lock, a taken
//!   port, `--peer`; SIGHUP on a running pair (reloads, never kills).
//! - `cli`: status, verify, log, init-secret, demo.
//! - `drill`: `standin drill` green on a healthy pair, red naming why with a hook
//!   missing, an agent reporting to one node only, the passive behind or killed.
//! - `failover`: takeover, rejoin with quarantine, switchover, promote.
//! - `lifecycle`: a node whose task ends (a server, the coordinator, …) ends, logins
//!   and capture first, and exits non-zero naming it (test-only fault hooks).
//! - `operator`: refused commands (exit 3 and the reason), a switchover refused with
//!   the passive down (logins never stop), `/healthz`, `/passive`, `/metrics` (and
//!   `promtool check metrics`), and messages that used to mislead.
//! - `named_loss`: after a partition with writes on both sides, the last failover's
//!   report on both nodes (status text and JSON, /metrics) until `failover-ack`.
//! - `faults`: seeded faults with a ledger: SIGKILLs of either node, link faults through
//!   the proxy, a partition with a takeover (soak forms under `--ignored`).
//! - `proxy`: the fault-injecting TCP proxy (drop, reset, delay, stall, partition).
//! - `hostile_peer`: a fake active that lies, against the passive's pull.
//! - `peer_view`: what each node sees of the other (the active of its passive: head,
//!   lag, unreachable then down, back), in status, `/` and `/metrics`.
//! - `status_page`: the HTML status page in headless Chromium (both nodes, both
//!   agents; skipped without `chromium`), the text table still for `curl`.
//! - `peer_link`: the peer link's reused connections, and one left stuck by a
//!   partition replaced after the call that found it.
//! - `split_brain`: the agent-witness quorum with a cut pair link and a dead active.
//! - `etcd`: the etcd lease with a real etcd: failover, an etcd outage, its return.
//! - `fidelity`: what `rsync -aHAXS` keeps (owners, modes, ACLs, xattrs, hard links,
//!   holes, times) kept by a real pair, judged by rsync — on the test's file system and
//!   on a loop-mounted XFS image with reflink (`xfs`, as root), where the passive
//!   stages large files from clones.

mod agent_keys;
mod by_reference;
mod check_config;
mod cli;
mod config;
mod corruption;
mod disk_full;
mod drill;
mod etcd;
mod failover;
mod faults;
mod fidelity;
mod hostile_peer;
mod lifecycle;
mod named_loss;
mod operator;
mod peer_link;
mod peer_view;
mod proxy;
mod replication;
mod restart;
mod security;
mod site;
mod site_hostile;
mod snapshot;
mod split_brain;
mod status_page;
mod support;

// The loop-mounted XFS image of the engine's reflink tests (for the fidelity test on
// a file system that clones; one of its helpers is unused here).
#[allow(dead_code)]
#[path = "../../engine/tests/engine/xfs.rs"]
mod xfs;
