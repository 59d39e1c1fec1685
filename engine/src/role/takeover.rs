//! The switchover's state, as the role machine keeps it and the peers exchange it
//! (the protocol itself is `switchover`): what a call to the peer showed, the request
//! the old active sends, the target's answers and its memory of them, and the old
//! active's side while it hands over.

use std::collections::VecDeque;

use serde::Serialize;

/// What a call to the peer, made just before an operator's switchover, showed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerProbe {
    /// No answer (refused, timed out, or an error).
    Unreachable { reason: String },
    /// The peer answered: its name, role (`Role::name`), log head epoch and seq.
    Answered {
        node: String,
        role: String,
        epoch: u64,
        head_seq: u64,
    },
}

/// What the old active asks of its peer; also the switchover's identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TakeOverRequest {
    /// The old active.
    pub from: String,
    /// Its epoch when the switchover began.
    pub epoch: u64,
    /// Its head after the final capture: the target takes over at exactly this seq.
    pub head_seq: u64,
    /// The old active's clock when the switchover began (one per switchover).
    pub id: u64,
}

impl TakeOverRequest {
    pub(crate) fn same_switchover(&self, other: &TakeOverRequest) -> bool {
        self.from == other.from && self.epoch == other.epoch && self.id == other.id
    }
}

/// The target's answer to a take-over request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TakeOverState {
    /// Not decided yet (catching up, waiting for the authority, or not seen yet).
    Pending,
    /// Took over (or has a later epoch): the old active must not resume; it follows.
    Done,
    /// Will never take over for this request: the old active may resume.
    Aborted,
}

/// How many aborted requests a target remembers.
const REMEMBERED: usize = 32;

/// The target's memory of take-over requests (what it answers the old active).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TakeOverMemory {
    /// The request it is working on, and when it arrived.
    pub(crate) pending: Option<(TakeOverRequest, u64)>,
    pub(crate) done: Option<TakeOverRequest>,
    pub(crate) aborted: VecDeque<TakeOverRequest>,
}

impl TakeOverMemory {
    /// The answer to `request`.
    pub fn state(&self, request: &TakeOverRequest) -> TakeOverState {
        if self
            .done
            .as_ref()
            .is_some_and(|done| done.same_switchover(request))
        {
            TakeOverState::Done
        } else if self
            .aborted
            .iter()
            .any(|aborted| aborted.same_switchover(request))
        {
            TakeOverState::Aborted
        } else {
            TakeOverState::Pending
        }
    }

    pub(crate) fn known(&self, request: &TakeOverRequest) -> bool {
        self.state(request) != TakeOverState::Pending
            || self
                .pending
                .as_ref()
                .is_some_and(|(pending, _)| pending.same_switchover(request))
    }

    pub(crate) fn abort(&mut self, request: TakeOverRequest) {
        if self
            .pending
            .as_ref()
            .is_some_and(|(pending, _)| pending.same_switchover(&request))
        {
            self.pending = None;
        }
        if self.aborted.len() >= REMEMBERED {
            self.aborted.pop_front();
        }
        self.aborted.push_back(request);
    }

    /// A take-over is pending.
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }
}

/// The old active's side while it hands over (`Phase::HandingOver`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HandingOver {
    pub(crate) request: TakeOverRequest,
    pub(crate) started_ms: u64,
    /// `Done` was answered (alerted once).
    pub(crate) done_seen: bool,
}
