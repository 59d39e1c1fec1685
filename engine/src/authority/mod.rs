//! Who may be the authority: the `Authority` trait the role state machine consults
//! before a node takes, keeps or resumes authority, and its three implementations.
//! Pure, like the role machine: evidence (agent reports, etcd lease results) comes in
//! as values with the time it arrived, and the answers depend only on them.
//!
//! - [`PeerOnly`]: today's pair — a passive promotes when its peer has been silent
//!   for `failover_after_ms`. Two nodes alone cannot tell a dead peer from a cut
//!   link, so a cut link with both nodes alive gives two authorities (in different
//!   epochs) until the link heals: unsafe on a cut link, and `standin status` says so.
//! - [`WitnessQuorum`]: the terminal-server agents are the third opinion. Each agent
//!   votes for one node; a passive may promote only with the votes of a majority of
//!   the configured agents (they lost the active), and an active keeps authority only
//!   while its peer answers or a majority votes for it.
//! - [`EtcdLease`]: authority is a key held under an etcd lease; this side only
//!   tracks what the shell learnt (held until when, at which revision) and answers
//!   from it, stepping down `margin` before the lease's TTL could run out.
//!
//! # Why the witness quorum never lets two nodes accept logins at once
//!
//! Each agent votes for at most one node: the reachable node it ranks first (an
//! eligible one — not fenced, starting or rejoining; answering as active; else
//! suspended, waiting to resume; then the higher epoch; then the last authority it
//! saw). A report echoes the recipient's last answer to the agent (its run and its
//! clock); the recipient counts the vote for W = `window_ms` *from that echoed time*,
//! which is before the agent decided the vote, so a report that travels slowly only
//! counts for less (no bound on transit is assumed), and a vote echoing another run of
//! the node does not count. An agent that changes its vote announces the new one only
//! `2W` after it last announced another (and a starting agent, which cannot know what
//! it announced before, votes only `2W` after it started): by then no node counts its
//! old vote, even one checked a tick late (ticks are below W/2). So no agent's vote
//! counts at two nodes at once, and a majority of the configured agents backs at most
//! one node at any instant.
//!
//! This needs both nodes to count the same agents, and each vote to come from its
//! agent: the shell believes a report only when the agent's own key signed it (the
//! service's `report_auth`), and compares the nodes' voter sets over the heartbeats;
//! while they differ (`Evidence::VoterSets`), no vote counts here — authority can be
//! neither taken nor resumed, and is held only through an answering peer.
//!
//! Taking authority (promotion, start-up, resuming) needs that majority. Keeping it
//! needs the majority or an answer from the peer within `failover_after_ms / 2`
//! (`Timing::peer_answer_holds_ms`); and a
//! node that saw its peer active (or holding a later epoch) within
//! `failover_after_ms` does not take authority: the peer that keeps authority through
//! the link is the one the other side hears. Durations are measured by each process's
//! own monotonic clock (equal rates assumed, no synchronisation needed).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::timing::Timing;

/// Evidence the shell feeds the machine about its authority.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Evidence {
    /// A configured agent's report arrived here at `now_ms`.
    AgentReport { now_ms: u64, report: WitnessReport },
    /// etcd: this node holds the authority key under a lease that etcd keeps at least
    /// until `valid_until_ms` (local clock: when the request that renewed it was sent,
    /// plus the TTL etcd answered), taken at etcd `revision`.
    LeaseHeld {
        now_ms: u64,
        /// When the request that took or renewed the lease was sent (local clock).
        sent_ms: u64,
        revision: u64,
        valid_until_ms: u64,
    },
    /// etcd: the key is held by someone else, or the lease was lost or revoked.
    LeaseLost { now_ms: u64, reason: String },
    /// Whether the two nodes' voter sets (agents, their keys, the window) agree, as
    /// the heartbeats last showed: `Some(why)` while they differ. Two nodes counting
    /// different voters could each find a majority, so no vote counts meanwhile.
    VoterSets {
        now_ms: u64,
        disagreement: Option<String>,
    },
}

/// What an agent tells a node (the witness part of its load report).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WitnessReport {
    /// The agent's name (only configured names count).
    pub agent: String,
    /// The nodes the agent reached within the window (for the operator).
    pub reachable: Vec<String>,
    /// The node the agent votes for (`None` while it cools down after a change).
    pub vote: Option<String>,
    /// The highest `(epoch, node)` the agent has seen acting as the authority.
    pub highest: Option<(u64, String)>,
    /// The agent's side: the `(instance, time)` of the recipient's last answer, which
    /// the agent echoes. The node's side: the time on its own clock the vote counts
    /// from (the echoed time when the instance is this run's; `None`: the vote does
    /// not count).
    pub echo: Option<(u64, u64)>,
}

/// Whether something may happen, and if not why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Yes,
    No(String),
}

impl Decision {
    pub fn allowed(&self) -> bool {
        matches!(self, Decision::Yes)
    }
}

/// What `standin status` shows of the authority.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuthorityStatus {
    pub mode: &'static str,
    /// One line for the operator: what protects the pair, and what does not.
    pub summary: String,
}

/// The authority a role machine consults. Implementations are pure: no I/O, no clock.
pub trait Authority: Send + Sync + std::fmt::Debug {
    /// `peer`, `witness` or `etcd`.
    fn mode(&self) -> &'static str;
    /// Take in evidence.
    fn observe(&mut self, evidence: Evidence);
    /// May this passive promote now (its active peer silent)? `node` is this node.
    fn may_promote(&self, now_ms: u64, node: &str) -> Decision;
    /// May this node become or resume as the authority now (start-up, after a
    /// suspension)? Unlike `may_hold`, a peer's answer is no reason: the peer may be
    /// about to promote.
    fn may_take(&self, now_ms: u64, node: &str, epoch: u64) -> Decision;
    /// May this active keep authority? `peer_answered_ms`: when the peer last answered.
    fn may_hold(&self, now_ms: u64, node: &str, epoch: u64, peer_answered_ms: u64) -> Decision;
    /// `may_take`, on evidence given after `since_ms` only (an old active resuming
    /// during its switchover: witness votes cast for it before it stopped must not
    /// count).
    fn may_take_since(&self, now_ms: u64, node: &str, epoch: u64, since_ms: u64) -> Decision {
        let _ = since_ms;
        self.may_take(now_ms, node, epoch)
    }
    /// This node gave up what the authority needs (the etcd lease): hold nothing until
    /// it is acquired anew.
    fn release(&mut self, now_ms: u64) {
        let _ = now_ms;
    }
    /// The lowest epoch a promotion may take (etcd: the lease's revision).
    fn epoch_floor(&self) -> u64 {
        0
    }
    /// Whether the shell must acquire something (an etcd lease) before `may_*` can
    /// say yes.
    fn needs_acquire(&self) -> bool {
        false
    }
    fn status(&self, now_ms: u64, node: &str) -> AuthorityStatus;
    fn clone_box(&self) -> Box<dyn Authority>;
}

impl Clone for Box<dyn Authority> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}

/// Peer-only: the pair decides alone.
#[derive(Clone, Debug, Default)]
pub struct PeerOnly;

impl Authority for PeerOnly {
    fn mode(&self) -> &'static str {
        "peer"
    }
    fn observe(&mut self, _evidence: Evidence) {}
    fn may_promote(&self, _now_ms: u64, _node: &str) -> Decision {
        Decision::Yes
    }
    fn may_take(&self, _now_ms: u64, _node: &str, _epoch: u64) -> Decision {
        Decision::Yes
    }
    fn may_hold(&self, _: u64, _: &str, _: u64, _: u64) -> Decision {
        Decision::Yes
    }
    fn status(&self, _now_ms: u64, _node: &str) -> AuthorityStatus {
        AuthorityStatus {
            mode: "peer",
            summary: "peer only: UNSAFE on a cut link (use witness or etcd)".to_string(),
        }
    }
    fn clone_box(&self) -> Box<dyn Authority> {
        Box::new(self.clone())
    }
}

/// Settings of the agent-witness quorum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WitnessSettings {
    /// The agents whose reports count (by name). Non-empty.
    pub agents: Vec<String>,
    /// The pair's timing in witness mode: W (`witness_window_ms`), how long a report
    /// counts (agents must report at least every W/3), and how long a peer's answer
    /// lets an active hold (`Timing::peer_answer_holds_ms`).
    pub timing: Timing,
}

impl WitnessSettings {
    /// W: the timing's witness window (its default when the timing is not in witness
    /// mode).
    pub fn window_ms(&self) -> u64 {
        self.timing
            .witness_window_ms()
            .unwrap_or_else(|| self.timing.default_witness_window_ms())
    }

    /// How many agents make a majority.
    pub fn quorum(&self) -> usize {
        self.agents.len() / 2 + 1
    }
}

/// How long an agent waits after announcing a vote for one node before it announces
/// a vote for another.
pub fn vote_cooling_ms(window_ms: u64) -> u64 {
    2 * window_ms
}

#[derive(Clone, Debug)]
struct Received {
    at_ms: u64,
    report: WitnessReport,
}

/// The agent-witness quorum (see the module documentation for the argument).
#[derive(Clone, Debug)]
pub struct WitnessQuorum {
    settings: WitnessSettings,
    latest: BTreeMap<String, Received>,
    /// Why the peer's voter set differs from this node's, while it does.
    disagreement: Option<String>,
}

impl WitnessQuorum {
    pub fn new(settings: WitnessSettings) -> WitnessQuorum {
        WitnessQuorum {
            settings,
            latest: BTreeMap::new(),
            disagreement: None,
        }
    }

    pub fn settings(&self) -> &WitnessSettings {
        &self.settings
    }

    fn fresh(&self, now_ms: u64) -> impl Iterator<Item = (&String, &Received)> {
        let window = self.settings.window_ms();
        self.latest
            .iter()
            .filter(move |(_, received)| now_ms.saturating_sub(received.at_ms) <= window)
    }

    /// Agents whose fresh report votes for `node`.
    /// Counted from the echoed time of this node's own answer, not from arrival: a
    /// report delayed in transit does not make its vote count any later.
    fn votes_for(&self, now_ms: u64, node: &str) -> usize {
        self.votes_since(now_ms, node, 0)
    }

    /// Votes for `node` counted from `since_ms` or later.
    fn votes_since(&self, now_ms: u64, node: &str, since_ms: u64) -> usize {
        let window = self.settings.window_ms();
        self.latest
            .values()
            .filter(|received| received.report.vote.as_deref() == Some(node))
            .filter(|received| {
                received.report.echo.is_some_and(|(_, counted_from)| {
                    counted_from >= since_ms
                        && counted_from <= now_ms
                        && now_ms - counted_from <= window
                })
            })
            .count()
    }

    /// A higher authority a fresh agent report names.
    fn higher_reported(&self, now_ms: u64, node: &str, epoch: u64) -> Option<(u64, String)> {
        self.fresh(now_ms)
            .filter_map(|(_, received)| received.report.highest.clone())
            .filter(|(their_epoch, their_node)| {
                their_node != node && (*their_epoch, their_node.as_str()) > (epoch, node)
            })
            .max()
    }

    /// Witness authority refused while the nodes' voter sets differ.
    fn refused(&self) -> Option<Decision> {
        self.disagreement
            .as_ref()
            .map(|why| Decision::No(format!("witness authority refused: {why}")))
    }

    fn may_take_by_agents(&self, now_ms: u64, node: &str, epoch: u64) -> Decision {
        self.may_take_by_agents_since(now_ms, node, epoch, 0)
    }

    fn may_take_by_agents_since(
        &self,
        now_ms: u64,
        node: &str,
        epoch: u64,
        since_ms: u64,
    ) -> Decision {
        if let Some(refused) = self.refused() {
            return refused;
        }
        if let Some((their_epoch, their_node)) = self.higher_reported(now_ms, node, epoch) {
            return Decision::No(format!(
                "agents report {their_node} active in epoch {their_epoch}, above this node"
            ));
        }
        let votes = self.votes_since(now_ms, node, since_ms);
        let quorum = self.settings.quorum();
        if votes >= quorum {
            Decision::Yes
        } else {
            Decision::No(format!(
                "{votes} of {} agents vote for this node, {quorum} needed",
                self.settings.agents.len()
            ))
        }
    }
}

impl Authority for WitnessQuorum {
    fn mode(&self) -> &'static str {
        "witness"
    }

    fn observe(&mut self, evidence: Evidence) {
        match evidence {
            Evidence::AgentReport { now_ms, report }
                if self.settings.agents.contains(&report.agent) =>
            {
                self.latest.insert(
                    report.agent.clone(),
                    Received {
                        at_ms: now_ms,
                        report,
                    },
                );
            }
            Evidence::VoterSets { disagreement, .. } => self.disagreement = disagreement,
            _ => {}
        }
    }

    fn may_promote(&self, now_ms: u64, node: &str) -> Decision {
        if let Some(refused) = self.refused() {
            return refused;
        }
        // A promotion takes an epoch above every one seen: only the votes matter.
        let votes = self.votes_for(now_ms, node);
        let quorum = self.settings.quorum();
        if votes >= quorum {
            Decision::Yes
        } else {
            Decision::No(format!(
                "{votes} of {} agents vote for this node, {quorum} needed",
                self.settings.agents.len()
            ))
        }
    }

    fn may_take(&self, now_ms: u64, node: &str, epoch: u64) -> Decision {
        self.may_take_by_agents(now_ms, node, epoch)
    }

    fn may_take_since(&self, now_ms: u64, node: &str, epoch: u64, since_ms: u64) -> Decision {
        // Strictly after: an answer sent in the same millisecond may predate it.
        self.may_take_by_agents_since(now_ms, node, epoch, since_ms.saturating_add(1))
    }

    fn may_hold(&self, now_ms: u64, node: &str, epoch: u64, peer_answered_ms: u64) -> Decision {
        if let Some((their_epoch, their_node)) = self.higher_reported(now_ms, node, epoch) {
            return Decision::No(format!(
                "agents report {their_node} active in epoch {their_epoch}, above this node"
            ));
        }
        if now_ms.saturating_sub(peer_answered_ms) < self.settings.timing.peer_answer_holds_ms() {
            return Decision::Yes;
        }
        match self.may_take_by_agents(now_ms, node, epoch) {
            Decision::Yes => Decision::Yes,
            Decision::No(reason) => Decision::No(format!("the peer is silent and {reason}")),
        }
    }

    fn status(&self, now_ms: u64, node: &str) -> AuthorityStatus {
        let refused = self
            .disagreement
            .as_ref()
            .map(|why| format!("REFUSED, {why}; "))
            .unwrap_or_default();
        AuthorityStatus {
            mode: "witness",
            summary: format!(
                "agent witness: {refused}{} of {} votes for this node ({} needed), window {} ms",
                self.votes_for(now_ms, node),
                self.settings.agents.len(),
                self.settings.quorum(),
                self.settings.window_ms()
            ),
        }
    }

    fn clone_box(&self) -> Box<dyn Authority> {
        Box::new(self.clone())
    }
}

/// The etcd lease, as the shell last learnt it.
#[derive(Clone, Debug)]
pub struct EtcdLease {
    /// Step down this long before the lease could expire.
    margin_ms: u64,
    held: Option<(u64, u64)>,
    last_problem: Option<String>,
    highest_revision: u64,
    /// When this node last gave the lease up: a renewal sent before then (still in
    /// flight) must not make it held again.
    released_at_ms: Option<u64>,
}

impl EtcdLease {
    /// The lease as `timing` (in etcd mode) has it: its step-down margin.
    pub fn new(timing: &Timing) -> EtcdLease {
        debug_assert!(timing.etcd_lease_ttl_ms().is_some(), "{timing:?}");
        EtcdLease {
            margin_ms: timing.etcd_step_down_margin_ms().unwrap_or(0),
            held: None,
            last_problem: None,
            highest_revision: 0,
            released_at_ms: None,
        }
    }

    fn holds(&self, now_ms: u64) -> Decision {
        match self.held {
            Some((_, until)) if now_ms.saturating_add(self.margin_ms) < until => Decision::Yes,
            Some(_) => Decision::No("the etcd lease was not renewed in time".to_string()),
            None => Decision::No(
                self.last_problem
                    .clone()
                    .unwrap_or_else(|| "this node does not hold the etcd lease".to_string()),
            ),
        }
    }
}

impl Authority for EtcdLease {
    fn mode(&self) -> &'static str {
        "etcd"
    }

    fn observe(&mut self, evidence: Evidence) {
        match evidence {
            // A renewal sent before this node gave the lease up (still in flight
            // then): not the lease any more.
            Evidence::LeaseHeld { sent_ms, .. }
                if self.released_at_ms.is_some_and(|at| sent_ms <= at) => {}
            Evidence::LeaseHeld {
                revision,
                valid_until_ms,
                ..
            } => {
                self.highest_revision = self.highest_revision.max(revision);
                let until = self
                    .held
                    .map_or(valid_until_ms, |(_, old)| old.max(valid_until_ms));
                self.held = Some((revision, until));
                self.last_problem = None;
            }
            Evidence::LeaseLost { reason, .. } => {
                self.held = None;
                self.last_problem = Some(reason);
            }
            Evidence::AgentReport { .. } | Evidence::VoterSets { .. } => {}
        }
    }

    fn may_promote(&self, now_ms: u64, _node: &str) -> Decision {
        self.holds(now_ms)
    }

    fn may_take(&self, now_ms: u64, _node: &str, _epoch: u64) -> Decision {
        self.holds(now_ms)
    }

    fn may_hold(&self, now_ms: u64, _: &str, _: u64, _: u64) -> Decision {
        self.holds(now_ms)
    }

    fn release(&mut self, now_ms: u64) {
        self.held = None;
        self.released_at_ms = Some(now_ms);
        self.last_problem = Some("the etcd lease was given up".to_string());
    }

    fn epoch_floor(&self) -> u64 {
        self.held
            .map_or(self.highest_revision, |(revision, _)| revision)
    }

    fn needs_acquire(&self) -> bool {
        true
    }

    fn status(&self, now_ms: u64, _node: &str) -> AuthorityStatus {
        let summary = match self.held {
            Some((revision, until)) if now_ms < until => format!(
                "etcd lease held (revision {revision}), valid for {} ms more",
                until - now_ms
            ),
            _ => format!(
                "etcd lease not held: {}",
                self.last_problem.as_deref().unwrap_or("not acquired")
            ),
        };
        AuthorityStatus {
            mode: "etcd",
            summary,
        }
    }

    fn clone_box(&self) -> Box<dyn Authority> {
        Box::new(self.clone())
    }
}

/// What an agent knows of one node.
#[derive(Clone, Debug, Default)]
struct NodeSeen {
    name: Option<String>,
    last_ok_ms: Option<u64>,
    epoch: u64,
    active: bool,
    suspended: bool,
    eligible: bool,
    /// The node's run and clock in its last answer (echoed in the next report).
    echo: Option<(u64, u64)>,
}

/// How a node answered an agent's report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeAnswer {
    pub node: String,
    pub epoch: u64,
    pub active: bool,
    /// Suspended: an authority waiting to be backed again.
    pub suspended: bool,
    /// Could take authority (active, suspended or passive; not fenced, starting or
    /// rejoining): an agent votes for an ineligible node only if no other is reachable.
    pub eligible: bool,
    /// The node's witness window (0: not in witness mode).
    pub window_ms: u64,
    /// The node's run (random per process) and its monotonic clock when it answered.
    pub instance: u64,
    pub time_ms: u64,
}

/// The agent's side of the witness: which nodes it reached when, whom it votes for
/// and when it last announced a vote for whom, and the highest authority it has seen.
/// Pure: the agent feeds it results with times. Nodes are keyed by the address the
/// agent reports to (a node's name is known once it answered).
#[derive(Clone, Debug, Default)]
pub struct AgentWitness {
    /// When the agent started: it announces no vote for 2W after (it cannot know
    /// what a previous run of it announced).
    started_ms: u64,
    nodes: BTreeMap<String, NodeSeen>,
    /// Per node name: when a report last announced a vote for it.
    announced_ms: BTreeMap<String, u64>,
    highest: Option<(u64, String)>,
    /// The longest window a node asked for (0: none yet; no vote).
    window_ms: u64,
}

impl AgentWitness {
    /// A witness reporting to `addresses`, started at `now_ms`.
    pub fn new(now_ms: u64, addresses: &[String]) -> AgentWitness {
        AgentWitness {
            started_ms: now_ms,
            nodes: addresses
                .iter()
                .map(|address| (address.clone(), NodeSeen::default()))
                .collect(),
            ..AgentWitness::default()
        }
    }

    /// The window the nodes use (0 until one answered in witness mode).
    pub fn window_ms(&self) -> u64 {
        self.window_ms
    }

    /// A report to `address` succeeded: the answer came back at `now_ms`.
    pub fn answered(&mut self, now_ms: u64, address: &str, answer: &NodeAnswer) {
        self.nodes.insert(
            address.to_string(),
            NodeSeen {
                name: Some(answer.node.clone()),
                last_ok_ms: Some(now_ms),
                epoch: answer.epoch,
                active: answer.active,
                suspended: answer.suspended,
                eligible: answer.eligible,
                echo: Some((answer.instance, answer.time_ms)),
            },
        );
        self.window_ms = self.window_ms.max(answer.window_ms);
        if answer.active {
            let seen = (answer.epoch, answer.node.clone());
            if self.highest.as_ref().is_none_or(|highest| seen > *highest) {
                self.highest = Some(seen);
            }
        }
    }

    /// The reachable node this agent ranks first.
    fn preferred(&self, now_ms: u64) -> Option<String> {
        let highest = self.highest.as_ref().map(|(_, node)| node.as_str());
        self.nodes
            .values()
            .filter(|seen| {
                seen.last_ok_ms
                    .is_some_and(|at| now_ms.saturating_sub(at) < self.window_ms)
            })
            .filter_map(|seen| {
                let name = seen.name.as_deref()?;
                Some((
                    (
                        seen.eligible,
                        seen.active,
                        seen.suspended,
                        seen.epoch,
                        Some(name) == highest,
                    ),
                    name,
                ))
            })
            .max()
            .map(|(_, name)| name.to_string())
    }

    /// The witness part of a report to `recipient` (an address) sent at `now_ms`.
    pub fn report_for(&mut self, agent: &str, recipient: &str, now_ms: u64) -> WitnessReport {
        let reachable = self
            .nodes
            .values()
            .filter(|seen| {
                seen.last_ok_ms
                    .is_some_and(|at| now_ms.saturating_sub(at) < self.window_ms.max(1))
            })
            .filter_map(|seen| seen.name.clone())
            .collect();
        let cooling = vote_cooling_ms(self.window_ms);
        let vote = self.preferred(now_ms).filter(|vote| {
            now_ms.saturating_sub(self.started_ms) >= cooling
                && self
                    .announced_ms
                    .iter()
                    .all(|(other, at)| other == vote || now_ms.saturating_sub(*at) >= cooling)
        });
        if let Some(vote) = &vote {
            self.announced_ms.insert(vote.clone(), now_ms);
        }
        WitnessReport {
            agent: agent.to_string(),
            reachable,
            vote,
            highest: self.highest.clone(),
            echo: self.nodes.get(recipient).and_then(|seen| seen.echo),
        }
    }
}

#[cfg(test)]
mod tests;
