//! The machine's states: the public `Role` (what a node is doing, as status shows
//! it), the `Phase` a role is in the middle of (the sub-states), and the record of
//! a promotion.

use serde::Serialize;

use super::takeover::HandingOver;

/// What a node is doing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum Role {
    /// Just started: asking the peer before taking a role.
    Starting,
    /// Authoritative: records changes, serves the log, accepts logins.
    Active,
    /// Was active, stopped logins and capture for a switchover: waits for the peer to
    /// take over (or to abort), or for the authority to back it again.
    #[serde(rename = "handing-over")]
    HandingOver,
    /// Follows the active.
    Passive,
    /// Learned it was superseded: quarantining what never replicated, rewinding its
    /// folder to the last common event, then following.
    Rejoining,
    /// Was active, but its authority (witness quorum, etcd lease) no longer backs it:
    /// logins and capture stopped; resumes when backed again, rejoins when a higher
    /// authority shows up.
    Suspended { reason: String },
    /// Refuses everything but status until an operator acts.
    Fenced { reason: String },
}

impl Role {
    pub fn name(&self) -> &'static str {
        match self {
            Role::Starting => "starting",
            Role::Active => "active",
            Role::HandingOver => "handing-over",
            Role::Passive => "passive",
            Role::Rejoining => "rejoining",
            Role::Suspended { .. } => "suspended",
            Role::Fenced { .. } => "fenced",
        }
    }
}

/// What a role is in the middle of, besides being that role: the sub-states a
/// passive (or a starting node) goes through towards a promotion and the old
/// active's side of a switchover. Which phase a role may be in is checked after every
/// step (`Phase::allowed_in`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Nothing under way.
    Settled,
    /// Passive (or starting): a promotion (a failover, an operator's) waiting for
    /// its final pull (`Action::FinalPull` sent, `Input::FinalPullDone` to come).
    FinalPull,
    /// Passive (or starting): a promotion (a switchover's, a forced one) waiting for
    /// the authority (the etcd lease), asked again every tick. `final_pull`: a final
    /// pull sent before is still out, and its end is one more chance to promote.
    AwaitingAuthority { reason: String, final_pull: bool },
    /// `Role::HandingOver`: the old active's side of a switchover.
    HandingOver(HandingOver),
}

impl Phase {
    /// Whether `role` may be in this phase.
    pub(crate) fn allowed_in(&self, role: &Role) -> bool {
        match self {
            Phase::Settled => *role != Role::HandingOver,
            Phase::FinalPull | Phase::AwaitingAuthority { .. } => {
                matches!(role, Role::Passive | Role::Starting)
            }
            Phase::HandingOver(_) => *role == Role::HandingOver,
        }
    }

    /// A final pull before a promotion is out.
    pub(crate) fn final_pull_out(&self) -> bool {
        matches!(
            self,
            Phase::FinalPull
                | Phase::AwaitingAuthority {
                    final_pull: true,
                    ..
                }
        )
    }

    /// A final pull was sent.
    pub(crate) fn start_final_pull(&mut self) {
        match self {
            Phase::Settled => *self = Phase::FinalPull,
            Phase::AwaitingAuthority { final_pull, .. } => *final_pull = true,
            Phase::FinalPull | Phase::HandingOver(_) => {}
        }
    }

    /// The final pull's promotion is off (done, refused, or the active answered).
    pub(crate) fn end_final_pull(&mut self) {
        match self {
            Phase::FinalPull => *self = Phase::Settled,
            Phase::AwaitingAuthority { final_pull, .. } => *final_pull = false,
            Phase::Settled | Phase::HandingOver(_) => {}
        }
    }

    /// The promotion waiting for the authority, if any (its reason).
    pub(crate) fn awaiting_authority(&self) -> Option<&str> {
        match self {
            Phase::AwaitingAuthority { reason, .. } => Some(reason),
            _ => None,
        }
    }

    /// A promotion for `reason` now waits for the authority (a final pull already
    /// out stays out).
    pub(crate) fn await_authority(&mut self, reason: &str) {
        let final_pull = self.final_pull_out();
        *self = Phase::AwaitingAuthority {
            reason: reason.to_string(),
            final_pull,
        };
    }
}

/// A promotion of this node from passive, as the shell may record it (a failover's
/// named-loss report).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Promotion {
    pub epoch: u64,
    /// A switchover's: taken at the old active's exact head, nothing lost.
    pub planned: bool,
    /// The peer, when it was last seen active.
    pub old_active: Option<String>,
}
