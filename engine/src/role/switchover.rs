//! The switchover sub-protocol of the role machine: a planned hand-over of authority
//! from the active (A) to its passive peer (B) that loses nothing and, with a witness
//! quorum or an etcd lease, never lets both accept logins, whatever the messages'
//! transit time.
//!
//! # Protocol
//!
//! 0. **The operator's switchover is checked before anything stops**
//!    ([`RoleMachine::switchover_readiness`]): the shell calls the peer first, and the
//!    switchover is refused (this node stays active, logins never close) unless the
//!    peer answers as a passive within a bound of this node's head. This spares an
//!    outage when the peer is down; it is not what makes the steps below safe.
//! 1. **A stops first.** On `switchover`, A closes logins, stops capture after a final
//!    capture, gives up the etcd lease (if any) and becomes `HandingOver`: it is no
//!    longer active, it answers heartbeats and agents as handing over (agents then
//!    vote for B, which ranks above it), and every tick it sends B a
//!    [`TakeOverRequest`] — its name, epoch, exact head and the switchover's id.
//!    Receiving the request is B's confirmation that A has stopped.
//! 2. **B takes authority only on that confirmation and once the authority says
//!    so.** B pulls to exactly that head, then promotes (epoch + 1): at once in peer
//!    mode; in witness mode only with a majority of the agents' votes and while A has
//!    not been seen active within `failover_after_ms` (as any other promotion); in etcd
//!    mode only once it holds the lease. A log already past the head, an epoch above
//!    the request's, or a role other than passive make the request stale: B aborts it.
//! 3. **B answers every request** with its state for that switchover: pending, done
//!    (it took over, or its log is already in a later epoch) or aborted. An abort is a
//!    promise: B never takes over for that request afterwards (it remembers it). B
//!    aborts on its own after `switchover_patience_ms` (`Timing`).
//! 4. **A resumes only when the authority backs it again, or (peer mode) B
//!    answered aborted** — a majority of agent votes cast after the switchover began,
//!    or an etcd lease taken anew (a renewal sent before A gave the lease up does not
//!    count) — each time in a new epoch. With a witness or a lease, B's abort only
//!    ends the hand-over: A is then `Suspended` and resumes as any suspended node (B
//!    may be failing over on its own by then, with the quorum). In peer mode, where
//!    no authority backs anyone, A resumes in its epoch on B's abort, or once
//!    `switchover_patience_ms` have passed and B has been silent for
//!    `failover_after_ms`: the cut-link case peer mode documents.
//!    A that sees B active in a higher epoch steps down and follows.
//!
//! There is no timer whose expiry makes A resume while B may still take over, so no
//! bound on transit time is assumed: in witness and etcd mode the two promotions are
//! separated by the quorum (one majority at a time) or the lease (one holder at a
//! time).

use crate::role::authority::Decision;
use crate::role::{Action, Phase, Refusal, Role, RoleMachine};

pub(crate) use crate::role::takeover::HandingOver;
pub use crate::role::takeover::{PeerProbe, TakeOverMemory, TakeOverRequest, TakeOverState};

impl RoleMachine {
    /// The target's memory of take-over requests (the shell answers from it).
    pub fn take_over_memory(&self) -> &TakeOverMemory {
        &self.take_over
    }

    /// Whether an operator's switchover may start now, judged before anything is
    /// stopped: this node active, and `probe` (a call to the peer made just now)
    /// showing a following passive at most `max_lag_events` behind `own_head_seq`.
    /// It is about availability (logins are not closed for a hand-over that cannot
    /// happen), not safety: the protocol above stays safe whatever the peer does
    /// after this check, and the tests start switchovers without it.
    pub fn switchover_readiness(
        &self,
        probe: &PeerProbe,
        own_head_seq: u64,
        max_lag_events: u64,
    ) -> Result<(), Refusal> {
        self.switchover_may_start()?;
        let nothing_stopped = "nothing was stopped; this node stays the active";
        match probe {
            PeerProbe::Unreachable { reason } => Err(Refusal(format!(
                "the passive cannot be reached ({reason}): {nothing_stopped}"
            ))),
            PeerProbe::Answered { node, role, .. } if role != Role::Passive.name() => {
                Err(Refusal(format!(
                    "the peer {node} is {role}, not a following passive: {nothing_stopped}"
                )))
            }
            PeerProbe::Answered { node, head_seq, .. }
                if own_head_seq.saturating_sub(*head_seq) > max_lag_events =>
            {
                Err(Refusal(format!(
                    "the passive {node} is {} events behind (at seq {head_seq}, this node at {own_head_seq}; a switchover allows {max_lag_events}): {nothing_stopped}; try again once it has caught up",
                    own_head_seq - head_seq
                )))
            }
            PeerProbe::Answered { .. } => Ok(()),
        }
    }

    fn switchover_may_start(&self) -> Result<(), Refusal> {
        if self.role == Role::Active {
            Ok(())
        } else {
            Err(Refusal(format!(
                "a switchover starts on the active; this node is {}",
                self.role.name()
            )))
        }
    }

    /// The operator asked this node for a switchover.
    pub(crate) fn start_switchover(&mut self) -> Result<Vec<Action>, Refusal> {
        self.switchover_may_start()?;
        let request = TakeOverRequest {
            from: self.settings.node.clone(),
            epoch: self.epoch,
            head_seq: self.head_seq,
            id: self.now_ms,
        };
        self.role = Role::HandingOver;
        self.phase = Phase::HandingOver(HandingOver {
            request: request.clone(),
            started_ms: self.now_ms,
            done_seen: false,
        });
        let mut actions = vec![Action::CloseLogins, Action::StopCapture];
        if self.authority.needs_acquire() {
            self.authority.release(self.now_ms);
            actions.push(Action::ReleaseAuthority);
        }
        actions.push(Action::AskPeerToTakeOver(request));
        Ok(actions)
    }

    /// A tick while handing over: resume if the authority backs this node again (or,
    /// in peer mode, the peer stayed silent), else ask the peer again.
    pub(crate) fn handing_over_tick(&mut self, now_ms: u64) -> Vec<Action> {
        let Phase::HandingOver(handing) = self.phase.clone() else {
            return Vec::new();
        };
        let elapsed = now_ms.saturating_sub(handing.started_ms);
        let patience = self.settings.timing.switchover_patience_ms();
        let mut actions = Vec::new();
        if self.authority.mode() == "peer" {
            let silent = now_ms.saturating_sub(self.peer_contact_ms);
            if elapsed >= patience && silent >= self.settings.timing.failover_after_ms() {
                return self.resume_after_switchover(format!(
                    "the peer has been silent for {silent} ms during the switchover"
                ));
            }
        } else {
            let decision = self
                .peer_blocks_taking()
                .map(Decision::No)
                .unwrap_or_else(|| {
                    self.authority.may_take_since(
                        now_ms,
                        &self.settings.node,
                        self.epoch,
                        handing.started_ms,
                    )
                });
            if decision.allowed() {
                self.phase = Phase::Settled;
                self.role = Role::Suspended {
                    reason: "handing over".to_string(),
                };
                let mut actions = vec![Action::Alert {
                    message: "the authority backs this node again during the switchover"
                        .to_string(),
                }];
                actions.extend(self.resume());
                return actions;
            }
            if self.authority.needs_acquire() && elapsed >= patience {
                // The peer had its chance to take the lease; compete for it again.
                actions.push(Action::AcquireAuthority);
            }
        }
        actions.push(Action::AskPeerToTakeOver(handing.request));
        actions
    }

    /// The switchover is off (the peer aborted; in peer mode, or the peer stayed
    /// silent): back to active in the same epoch in peer mode; with a witness or a
    /// lease, suspended until the authority backs this node — a peer's answer is no
    /// reason then: the peer may be promoting on its own by now.
    fn resume_after_switchover(&mut self, why: String) -> Vec<Action> {
        self.phase = Phase::Settled;
        if self.authority.mode() != "peer" {
            self.role = Role::Suspended {
                reason: "handing over".to_string(),
            };
            return self.suspend(format!(
                "{why}; resuming once the authority backs this node"
            ));
        }
        self.role = Role::Active;
        vec![
            Action::StartCapture,
            Action::OpenLogins,
            Action::Alert {
                message: format!("switchover abandoned ({why}); this node stays the authority"),
            },
        ]
    }

    /// The peer answered a take-over request.
    pub(crate) fn take_over_answered(&mut self, id: u64, state: TakeOverState) -> Vec<Action> {
        let Phase::HandingOver(handing) = &mut self.phase else {
            return Vec::new();
        };
        if handing.request.id != id {
            return Vec::new();
        }
        match state {
            TakeOverState::Pending => Vec::new(),
            TakeOverState::Done if handing.done_seen => Vec::new(),
            TakeOverState::Done => {
                handing.done_seen = true;
                vec![Action::Alert {
                    message: "the peer took over; following it once it is seen active".to_string(),
                }]
            }
            TakeOverState::Aborted => {
                self.resume_after_switchover("the peer aborted the take-over".to_string())
            }
        }
    }

    /// The old active asks this node to take over.
    pub(crate) fn take_over_requested(&mut self, request: TakeOverRequest) -> Vec<Action> {
        if self.take_over.known(&request) {
            return Vec::new();
        }
        if self.head_epoch > request.epoch {
            // This node's log is in a later epoch: it (or someone) took over since.
            self.take_over.done = Some(request);
            return Vec::new();
        }
        if matches!(
            self.role,
            Role::Active | Role::HandingOver | Role::Suspended { .. }
        ) {
            // Never "aborted" from a node that holds (or may resume) authority: the
            // old active would resume beside it.
            return vec![Action::Alert {
                message: format!("asked to take over while {}", self.role.name()),
            }];
        }
        if self.role != Role::Passive {
            let message = format!("asked to take over while {}; aborted", self.role.name());
            self.take_over.abort(request);
            return vec![Action::Alert { message }];
        }
        let stale = if self.head_seq > request.head_seq {
            Some("this node already holds events past the switchover's head")
        } else if self
            .peer
            .as_ref()
            .is_some_and(|peer| peer.node == request.from && peer.epoch > request.epoch)
        {
            Some("the old active is in a later epoch already")
        } else {
            None
        };
        if let Some(why) = stale {
            self.take_over.abort(request);
            return vec![Action::Alert {
                message: format!("a stale take-over request, aborted: {why}"),
            }];
        }
        if let Some((older, _)) = self.take_over.pending.take() {
            self.take_over.abort(older);
        }
        let head_seq = request.head_seq;
        self.take_over.pending = Some((request, self.now_ms));
        if self.head_seq >= head_seq {
            return self.try_take_over();
        }
        vec![Action::PullTo { head_seq }]
    }

    /// Take over for the pending request if caught up and the authority agrees.
    pub(crate) fn try_take_over(&mut self) -> Vec<Action> {
        let Some((request, received_ms)) = self.take_over.pending.clone() else {
            return Vec::new();
        };
        if self.role != Role::Passive {
            self.take_over.abort(request);
            return Vec::new();
        }
        let patience = self.settings.timing.switchover_patience_ms();
        let stale = if self.head_seq > request.head_seq {
            Some("the old active recorded past the switchover's head".to_string())
        } else if self.now_ms.saturating_sub(received_ms) > patience {
            Some(format!("not done within {patience} ms"))
        } else {
            None
        };
        if let Some(why) = stale {
            self.take_over.abort(request);
            return vec![Action::Alert {
                message: format!("switchover aborted: {why}; the old active resumes"),
            }];
        }
        if self.head_seq < request.head_seq {
            return Vec::new();
        }
        let decision = if self.authority.mode() == "peer" {
            Decision::Yes
        } else {
            self.peer_blocks_taking()
                .map(Decision::No)
                .unwrap_or_else(|| self.authority.may_promote(self.now_ms, &self.settings.node))
        };
        match decision {
            Decision::Yes => self.promote("switchover"),
            Decision::No(why) => {
                let mut actions = Vec::new();
                if self.authority.needs_acquire() {
                    actions.push(Action::AcquireAuthority);
                }
                actions.extend(self.refusal(format!(
                    "switchover: caught up, waiting for the authority ({why})"
                )));
                actions
            }
        }
    }

    /// A promotion answers a pending request as done; leaving the passive role
    /// aborts it.
    pub(crate) fn settle_take_over(&mut self, promoted: bool) {
        if let Some((request, _)) = self.take_over.pending.take() {
            if promoted {
                self.take_over.done = Some(request);
            } else {
                self.take_over.abort(request);
            }
        }
    }
}
