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
//!
//! Files: `mod.rs` (the trait and the evidence), `peer.rs`, `witness.rs` and `etcd.rs`
//! (the three authorities), `agent.rs` (`AgentWitness`, the agent's side of the vote).

mod agent;
mod etcd;
mod peer;
mod witness;

use serde::Serialize;

pub use agent::{AgentWitness, NodeAnswer};
pub use etcd::EtcdLease;
pub use peer::PeerOnly;
pub use witness::{vote_cooling_ms, WitnessQuorum, WitnessSettings};

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

#[cfg(test)]
mod tests;
