//! `AgentWitness`: the agent's side of the vote — what it knows of each node, which one
//! it votes for, and when a changed vote may be announced (`vote_cooling_ms`).

use std::collections::BTreeMap;

use super::{vote_cooling_ms, WitnessReport};

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
