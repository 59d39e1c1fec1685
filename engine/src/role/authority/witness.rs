//! `WitnessQuorum`: the terminal-server agents' votes as the third opinion — its
//! settings, the votes received and counted for the window from their echoed time, and
//! the answers (the argument why two nodes never hold at once is in `mod.rs`).

use std::collections::BTreeMap;

use crate::role::timing::Timing;

use super::{Authority, AuthorityStatus, Decision, Evidence, WitnessReport};

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
