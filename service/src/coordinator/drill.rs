//! A node's part of `standin drill`, the failover rehearsal that changes nothing: what
//! this node can say about a failover now from where it stands — its hooks (present
//! and executable, as `preflight` checks them at start), whether its authority could
//! decide (the witness agents reporting here and the voter sets agreeing; etcd
//! answering), how long a failover to it would take with its config
//! (`estimate`), and, given its peer's head, what its own log holds beyond it (on the
//! active: what a failover now would lose). The CLI (`cli/drill.rs`) asks both nodes
//! and judges the pair.

use crate::config::preflight::Level;
use crate::config::{AuthorityConfig, Config};
use crate::node::Node;

/// One finding of a drill: what was checked and what was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub level: Level,
    pub key: String,
    pub message: String,
}

impl Check {
    pub fn new(level: Level, key: impl Into<String>, message: impl Into<String>) -> Check {
        Check {
            level,
            key: key.into(),
            message: message.into(),
        }
    }
}

/// A node's drill answer.
#[derive(Clone, Debug, PartialEq)]
pub struct DrillAnswer {
    pub node: String,
    pub role: String,
    pub head_seq: u64,
    pub checks: Vec<Check>,
    pub estimate: FailoverEstimate,
    /// With the peer's head: the events after it here, and the age (s) of the oldest.
    pub beyond_peer: Option<(u64, f64)>,
}

/// How long a failover to a node would take, from the active's death to the node
/// accepting logins: at least `min_ms`, at most about `max_ms`, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailoverEstimate {
    pub min_ms: u64,
    pub max_ms: u64,
    pub explanation: String,
}

/// The failover time a node's config gives. The passive promotes once its heartbeats
/// have gone unanswered for `failover_after_ms` (seen at its next tick, every
/// `heartbeat_interval_ms`) and its authority agrees, after a last pull (at once when
/// the old active's port refuses; up to `max(failover_after_ms, 1 s)` when its address
/// is silent). The authority adds its own wait: the witness agents move their votes
/// only `window` after they lost the active and `2 × window` after they last voted
/// for it (then one report interval, `agent_interval_ms`, at most a third of the
/// window); an etcd lease held by the dead active expires between two thirds of its
/// TTL and its TTL after the last renewal (then a retry, at most every second).
pub fn estimate(config: &Config, agent_interval_ms: Option<u64>) -> FailoverEstimate {
    let silence = config.timing.failover_after_ms();
    let tick = config.timing.heartbeat_interval_ms();
    let last_pull = config.timing.final_pull_ms();
    let (authority_min, authority_max, authority_why) = match &config.authority {
        AuthorityConfig::Peer => (0, 0, String::new()),
        AuthorityConfig::Witness { window_ms, .. } => {
            let interval = agent_interval_ms
                .unwrap_or(window_ms / 3)
                .min(window_ms / 3);
            (
                3 * window_ms,
                3 * window_ms + 2 * interval,
                format!(
                    "; the witness agents move their votes {} ms after they lost the active (3 × witness_window_ms) and report every {interval} ms",
                    3 * window_ms
                ),
            )
        }
        AuthorityConfig::Etcd(etcd) => {
            let ttl_ms = etcd.lease_ttl_s * 1000;
            (
                ttl_ms * 2 / 3,
                ttl_ms + 1000,
                format!(
                    "; the dead active's etcd lease runs out {}–{ttl_ms} ms after its last renewal (etcd_lease_ttl_s), then a retry within 1 s",
                    ttl_ms * 2 / 3
                ),
            )
        }
    };
    let min_ms = silence.max(authority_min);
    let max_ms = (silence + tick).max(authority_max) + tick + last_pull;
    FailoverEstimate {
        min_ms,
        max_ms,
        explanation: format!(
            "{silence} ms of silence (failover_after_ms), seen within {tick} ms (heartbeat_interval_ms), a last pull of up to {last_pull} ms (at once when the old active's port refuses){authority_why}"
        ),
    }
}

/// The hooks as now configured (a SIGHUP reload may have replaced them): each present
/// and executable, or not set.
fn hook_checks(node: &Node) -> Vec<Check> {
    let hooks = node.hooks();
    [
        ("on_promote", hooks.on_promote),
        ("on_demote", hooks.on_demote),
    ]
    .into_iter()
    .map(|(key, command)| match command {
        None => Check::new(Level::Ok, key, "not set (nothing to run)"),
        Some(command) => {
            let finding = crate::config::preflight::check_hook(key, &command);
            Check::new(finding.level, key, finding.message)
        }
    })
    .collect()
}

/// Whether this node's authority could let it take over now.
async fn authority_checks(node: &Node) -> Vec<Check> {
    match &node.config.authority {
        AuthorityConfig::Peer => vec![Check::new(
            Level::Warn,
            "authority",
            "peer only: a failover needs nobody else's agreement, but on a cut link both nodes accept logins (use witness or etcd)",
        )],
        AuthorityConfig::Witness { agents, .. } => {
            let mut checks = Vec::new();
            match node.voter_sets.disagreement() {
                Some(why) => checks.push(Check::new(
                    Level::Fail,
                    "voter_set",
                    format!("{why}: no witness vote counts, no failover can happen"),
                )),
                None => checks.push(Check::new(
                    Level::Ok,
                    "voter_set",
                    "the same as the peer's as last announced (agents, keys, window)",
                )),
            }
            let now_ms = standin_engine::fsutil::now_ms();
            let reporting: Vec<String> = node
                .load_table
                .snapshot()
                .into_iter()
                .filter(|load| !load.is_down(now_ms) && agents.contains(&load.name))
                .map(|load| load.name)
                .collect();
            let quorum = agents.len() / 2 + 1;
            let silent: Vec<&str> = agents
                .iter()
                .filter(|agent| !reporting.contains(agent))
                .map(String::as_str)
                .collect();
            let level = if reporting.len() >= quorum {
                Level::Ok
            } else {
                Level::Fail
            };
            let mut message = format!(
                "{} of {} witness agents report to this node ({quorum} needed to take over)",
                reporting.len(),
                agents.len()
            );
            if !silent.is_empty() {
                message.push_str(&format!("; silent: {}", silent.join(", ")));
            }
            checks.push(Check::new(level, "witness_agents", message));
            checks
        }
        AuthorityConfig::Etcd(settings) => {
            let endpoints = settings.endpoints.join(",");
            vec![match crate::coordinator::etcd_authority::probe(settings).await {
                Ok(Some(holder)) => Check::new(
                    Level::Ok,
                    "etcd_endpoints",
                    format!(
                        "etcd at {endpoints} answers; the key {} is held by {holder}",
                        settings.key
                    ),
                ),
                Ok(None) => Check::new(
                    Level::Ok,
                    "etcd_endpoints",
                    format!(
                        "etcd at {endpoints} answers; the key {} is free",
                        settings.key
                    ),
                ),
                Err(why) => Check::new(Level::Fail, "etcd_endpoints", why),
            }]
        }
    }
}

impl Node {
    /// The events after `seq` in this node's log, and the age in seconds of the first
    /// of them (or, if it was compacted away, of the oldest kept) on this node's clock,
    /// which recorded it. (0, 0.0) when there are none.
    pub fn events_after(&self, seq: u64) -> (u64, f64) {
        let own = self.repository.head();
        let events = own.seq.saturating_sub(seq);
        if events == 0 {
            return (0, 0.0);
        }
        let log = self.repository.log();
        let first = (seq + 1).max(log.base().seq + 1);
        let recorded_at_ms = log
            .get(first)
            .ok()
            .flatten()
            .map_or(own.recorded_at_ms, |event| event.body.recorded_at_ms);
        let seconds =
            standin_engine::fsutil::now_ms().saturating_sub(recorded_at_ms) as f64 / 1000.0;
        (events, seconds)
    }

    /// This node's part of a drill; nothing is changed.
    pub async fn drill(&self, peer_head_seq: Option<u64>) -> DrillAnswer {
        let mut checks = hook_checks(self);
        checks.extend(authority_checks(self).await);
        let now_ms = standin_engine::fsutil::now_ms();
        let agent_interval_ms = self
            .load_table
            .snapshot()
            .iter()
            .filter(|load| !load.is_down(now_ms))
            .map(|load| load.interval_ms)
            .max();
        DrillAnswer {
            node: self.config.node_name.clone(),
            role: self.role().name().to_string(),
            head_seq: self.repository.head().seq,
            checks,
            estimate: estimate(&self.config, agent_interval_ms),
            beyond_peer: peer_head_seq.map(|seq| self.events_after(seq)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let folder = tempfile::tempdir().expect("a temp dir");
        let text = format!(
            "node_name = \"beta\"\nfolder = \"{}\"\ndata_dir = \"/var/lib/standin\"\nlisten = \"127.0.0.1:7600\"\nrole = \"passive\"\npeer_url = \"http://127.0.0.1:7601\"\nsecret_file = \"/etc/standin/pair.secret\"\nheartbeat_interval_ms = 500\nfailover_after_ms = 5000\n{extra}",
            folder.path().display()
        );
        Config::parse(&text, std::path::Path::new("beta.toml")).expect("a valid config")
    }

    #[test]
    fn a_peer_only_failover_takes_the_silence_then_a_tick_and_a_last_pull() {
        let estimate = estimate(&config(""), None);
        assert_eq!(estimate.min_ms, 5000);
        // Silence seen up to a tick late, the promotion at the next tick, a last pull.
        assert_eq!(estimate.max_ms, 5000 + 500 + 500 + 5000);
        assert!(estimate.explanation.contains("failover_after_ms"));
    }

    #[test]
    fn the_witness_and_the_lease_add_their_own_wait() {
        let witness = estimate(
            &config(
                "agent_secret_file = \"/etc/standin/agent.secret\"\nauthority = \"witness\"\nwitness_agents = [\"ts1\", \"ts2\", \"ts3\"]\nwitness_window_ms = 3000\n",
            ),
            Some(200),
        );
        assert_eq!(witness.min_ms, 9000);
        assert_eq!(witness.max_ms, 9000 + 400 + 500 + 5000);
        let etcd = estimate(
            &config("authority = \"etcd\"\netcd_endpoints = [\"http://127.0.0.1:2379\"]\netcd_lease_ttl_s = 12\n"),
            None,
        );
        assert_eq!(etcd.min_ms, 8000);
        assert_eq!(etcd.max_ms, 13_000 + 500 + 5000);
        assert!(etcd.explanation.contains("etcd_lease_ttl_s"));
    }
}
