//! The switchover sub-protocol of the role machine: a planned hand-over of authority
//! from the active (A) to its passive peer (B) that loses nothing and, with a witness
//! quorum or an etcd lease, never lets both accept logins, whatever the messages'
//! transit time.
//!
//! # Protocol
//!
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
//!    aborts on its own after `switchover_patience_ms`.
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

use std::collections::VecDeque;

use serde::Serialize;

use crate::authority::Decision;
use crate::role::{switchover_patience_ms, Action, Role, RoleMachine};

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
    fn same_switchover(&self, other: &TakeOverRequest) -> bool {
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
    pending: Option<(TakeOverRequest, u64)>,
    done: Option<TakeOverRequest>,
    aborted: VecDeque<TakeOverRequest>,
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

    fn known(&self, request: &TakeOverRequest) -> bool {
        self.state(request) != TakeOverState::Pending
            || self
                .pending
                .as_ref()
                .is_some_and(|(pending, _)| pending.same_switchover(request))
    }

    fn abort(&mut self, request: TakeOverRequest) {
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

/// The old active's side while it hands over.
#[derive(Clone, Debug)]
pub(crate) struct HandingOver {
    pub(crate) request: TakeOverRequest,
    pub(crate) started_ms: u64,
    /// `Done` was answered (alerted once).
    pub(crate) done_seen: bool,
}

impl RoleMachine {
    /// The target's memory of take-over requests (the shell answers from it).
    pub fn take_over_memory(&self) -> &TakeOverMemory {
        &self.take_over
    }

    /// The operator asked this node for a switchover.
    pub(crate) fn start_switchover(&mut self) -> Vec<Action> {
        if self.role != Role::Active {
            return vec![Action::Alert {
                message: format!(
                    "a switchover starts on the active; this node is {}",
                    self.role.name()
                ),
            }];
        }
        let request = TakeOverRequest {
            from: self.settings.node.clone(),
            epoch: self.epoch,
            head_seq: self.head_seq,
            id: self.now_ms,
        };
        self.role = Role::HandingOver;
        self.handing = Some(HandingOver {
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
        actions
    }

    /// A tick while handing over: resume if the authority backs this node again (or,
    /// in peer mode, the peer stayed silent), else ask the peer again.
    pub(crate) fn handing_over_tick(&mut self, now_ms: u64) -> Vec<Action> {
        let Some(handing) = self.handing.clone() else {
            return Vec::new();
        };
        let elapsed = now_ms.saturating_sub(handing.started_ms);
        let patience = switchover_patience_ms(self.settings.failover_after_ms);
        let mut actions = Vec::new();
        if self.authority.mode() == "peer" {
            let silent = now_ms.saturating_sub(self.peer_contact_ms);
            if elapsed >= patience && silent >= self.settings.failover_after_ms {
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
                self.handing = None;
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
        self.handing = None;
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
        let Some(handing) = self.handing.as_mut() else {
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
        if self.epoch > request.epoch {
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
        } else if self.highest_epoch_seen > request.epoch {
            Some("a later epoch was seen")
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
        let patience = switchover_patience_ms(self.settings.failover_after_ms);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authority::{Evidence, WitnessQuorum, WitnessReport, WitnessSettings};
    use crate::role::{Command, Input, PeerView, RoleSettings};

    fn settings(node: &str, active: bool) -> RoleSettings {
        RoleSettings {
            node: node.to_string(),
            initial_active: active,
            preferred: active,
            auto_failback: false,
            failover_after_ms: 5_000,
        }
    }

    fn peer(node: &str, epoch: u64, active: bool) -> PeerView {
        PeerView {
            node: node.to_string(),
            epoch,
            active,
            handing_over: false,
            head_seq: 0,
        }
    }

    fn witness() -> Box<WitnessQuorum> {
        Box::new(WitnessQuorum::new(WitnessSettings {
            agents: vec!["ts1".into(), "ts2".into(), "ts3".into()],
            window_ms: 1_000,
            failover_after_ms: 5_000,
        }))
    }

    fn vote(machine: &mut RoleMachine, now_ms: u64, agent: &str, node: &str) {
        machine.step(Input::Authority(Evidence::AgentReport {
            now_ms,
            report: WitnessReport {
                agent: agent.to_string(),
                reachable: Vec::new(),
                vote: Some(node.to_string()),
                highest: None,
                echo: Some((1, now_ms)),
            },
        }));
    }

    /// An active `alpha` at epoch 1 with head 40, its passive peer answering.
    fn active(witness_mode: bool) -> RoleMachine {
        let mut machine = if witness_mode {
            RoleMachine::with_authority(settings("alpha", true), witness(), 1, 0)
        } else {
            RoleMachine::new(settings("alpha", true), 1, 0)
        };
        machine.start();
        if witness_mode {
            vote(&mut machine, 1, "ts1", "alpha");
            vote(&mut machine, 1, "ts2", "alpha");
        }
        machine.step(Input::HeartbeatAnswered {
            now_ms: 1,
            peer: peer("beta", 1, false),
        });
        assert_eq!(machine.role(), &Role::Active);
        machine.step(Input::Applied {
            epoch: 1,
            head_seq: 40,
        });
        machine
    }

    /// A passive `beta` following `alpha` at epoch 1, head 38.
    fn passive(witness_mode: bool) -> RoleMachine {
        let mut machine = if witness_mode {
            RoleMachine::with_authority(settings("beta", false), witness(), 1, 0)
        } else {
            RoleMachine::new(settings("beta", false), 1, 0)
        };
        machine.start();
        machine.step(Input::HeartbeatAnswered {
            now_ms: 10,
            peer: peer("alpha", 1, true),
        });
        machine.step(Input::Applied {
            epoch: 1,
            head_seq: 38,
        });
        machine
    }

    fn request_of(actions: &[Action]) -> TakeOverRequest {
        actions
            .iter()
            .find_map(|action| match action {
                Action::AskPeerToTakeOver(request) => Some(request.clone()),
                _ => None,
            })
            .expect("a take-over request")
    }

    fn promotes(actions: &[Action]) -> bool {
        actions
            .iter()
            .any(|action| matches!(action, Action::RecordPromote { .. }))
    }

    #[test]
    fn a_switchover_hands_over_at_the_exact_head() {
        let mut alpha = active(false);
        let actions = alpha.step(Input::Operator(Command::Switchover));
        assert_eq!(actions[..2], [Action::CloseLogins, Action::StopCapture]);
        let request = request_of(&actions);
        assert_eq!((request.epoch, request.head_seq), (1, 40));
        assert!(!alpha.accepts_logins());
        assert_eq!(alpha.role().name(), "handing-over");

        let mut beta = passive(false);
        assert_eq!(
            beta.step(Input::TakeOverRequested(request.clone())),
            vec![Action::PullTo { head_seq: 40 }]
        );
        assert_eq!(
            beta.take_over_memory().state(&request),
            TakeOverState::Pending
        );
        assert_eq!(beta.step(Input::CaughtUp { head_seq: 39 }), vec![]);
        let actions = beta.step(Input::CaughtUp { head_seq: 40 });
        assert!(
            actions.contains(&Action::RecordPromote { epoch: 2 }),
            "{actions:?}"
        );
        assert_eq!(beta.take_over_memory().state(&request), TakeOverState::Done);

        let actions = alpha.step(Input::TakeOverAnswered {
            id: request.id,
            state: TakeOverState::Done,
        });
        assert!(!alpha.accepts_logins(), "{actions:?}");
        let actions = alpha.step(Input::PeerSeen {
            now_ms: 5,
            peer: peer("beta", 2, true),
        });
        assert!(actions.contains(&Action::StartRejoin {
            authority: "beta".to_string()
        }));
    }

    #[test]
    fn the_old_active_resumes_on_the_peers_abort_and_never_on_a_timer_alone() {
        let mut alpha = active(false);
        let request = request_of(&alpha.step(Input::Operator(Command::Switchover)));
        // The peer answers (it is alive) but never takes over: no timer resumes.
        for now_ms in (100..60_000).step_by(500) {
            alpha.step(Input::HeartbeatAnswered {
                now_ms,
                peer: peer("beta", 1, false),
            });
            let actions = alpha.step(Input::Tick { now_ms });
            assert!(!alpha.accepts_logins(), "at {now_ms}: {actions:?}");
            assert!(actions.contains(&Action::AskPeerToTakeOver(request.clone())));
        }
        let actions = alpha.step(Input::TakeOverAnswered {
            id: request.id + 1,
            state: TakeOverState::Aborted,
        });
        assert_eq!(actions, vec![], "another switchover's answer");
        let actions = alpha.step(Input::TakeOverAnswered {
            id: request.id,
            state: TakeOverState::Aborted,
        });
        assert_eq!(actions[..2], [Action::StartCapture, Action::OpenLogins]);
        assert!(alpha.accepts_logins());
    }

    #[test]
    fn a_target_that_aborted_never_takes_over_for_that_request() {
        let mut beta = passive(false);
        let request = TakeOverRequest {
            from: "alpha".into(),
            epoch: 1,
            head_seq: 40,
            id: 7,
        };
        beta.step(Input::TakeOverRequested(request.clone()));
        let late = 10 + switchover_patience_ms(5_000) + 1;
        let actions = beta.step(Input::Tick { now_ms: late });
        assert!(!promotes(&actions), "{actions:?}");
        assert_eq!(
            beta.take_over_memory().state(&request),
            TakeOverState::Aborted
        );
        let actions = beta.step(Input::CaughtUp { head_seq: 40 });
        assert!(!promotes(&actions), "{actions:?}");
        // The same request again (a retry, or a copy delayed in transit).
        beta.step(Input::TakeOverRequested(request.clone()));
        let actions = beta.step(Input::Tick { now_ms: late + 100 });
        assert!(!promotes(&actions), "{actions:?}");
        assert_eq!(beta.role(), &Role::Passive);
    }

    #[test]
    fn a_stale_request_is_aborted() {
        let mut beta = passive(false);
        beta.step(Input::Applied {
            epoch: 1,
            head_seq: 45,
        });
        let request = TakeOverRequest {
            from: "alpha".into(),
            epoch: 1,
            head_seq: 40,
            id: 7,
        };
        let actions = beta.step(Input::TakeOverRequested(request.clone()));
        assert!(!promotes(&actions), "{actions:?}");
        assert_eq!(
            beta.take_over_memory().state(&request),
            TakeOverState::Aborted
        );
    }

    #[test]
    fn with_the_witness_the_target_takes_over_only_with_a_majority() {
        let mut beta = passive(true);
        let request = TakeOverRequest {
            from: "alpha".into(),
            epoch: 1,
            head_seq: 38,
            id: 7,
        };
        let actions = beta.step(Input::TakeOverRequested(request.clone()));
        assert!(!promotes(&actions), "caught up, but no votes: {actions:?}");
        vote(&mut beta, 2_000, "ts1", "beta");
        vote(&mut beta, 2_000, "ts3", "beta");
        let actions = beta.step(Input::Tick { now_ms: 2_000 });
        assert!(!promotes(&actions), "alpha was active 2 s ago: {actions:?}");
        beta.step(Input::HeartbeatAnswered {
            now_ms: 2_100,
            peer: peer("alpha", 1, false),
        });
        vote(&mut beta, 2_100, "ts1", "beta");
        vote(&mut beta, 2_100, "ts3", "beta");
        let actions = beta.step(Input::Tick { now_ms: 2_100 });
        assert!(promotes(&actions), "{actions:?}");
    }

    #[test]
    fn with_the_witness_the_old_active_resumes_on_votes_cast_after_it_stopped() {
        let mut alpha = active(true);
        vote(&mut alpha, 500, "ts1", "alpha");
        vote(&mut alpha, 500, "ts2", "alpha");
        let request = request_of(&alpha.step(Input::Operator(Command::Switchover)));
        let actions = alpha.step(Input::Tick { now_ms: 600 });
        assert!(!alpha.accepts_logins(), "old votes: {actions:?}");
        assert!(actions.contains(&Action::AskPeerToTakeOver(request)));
        vote(&mut alpha, 9_000, "ts1", "alpha");
        vote(&mut alpha, 9_000, "ts2", "alpha");
        let actions = alpha.step(Input::Tick { now_ms: 9_000 });
        assert!(alpha.accepts_logins(), "{actions:?}");
        assert!(promotes(&actions), "a new epoch: {actions:?}");
    }

    #[test]
    fn with_etcd_the_old_active_ignores_a_renewal_of_the_lease_it_gave_up() {
        use crate::authority::EtcdLease;
        let mut alpha = RoleMachine::with_authority(
            settings("alpha", true),
            Box::new(EtcdLease::new(4_000)),
            5,
            0,
        );
        alpha.start();
        alpha.step(Input::Authority(Evidence::LeaseHeld {
            now_ms: 1,
            sent_ms: 0,
            revision: 5,
            valid_until_ms: 4_001,
        }));
        alpha.step(Input::HeartbeatFailed { now_ms: 2 });
        assert_eq!(alpha.role(), &Role::Active);
        let actions = alpha.step(Input::Operator(Command::Switchover));
        assert!(actions.contains(&Action::ReleaseAuthority), "{actions:?}");
        alpha.step(Input::Authority(Evidence::LeaseHeld {
            now_ms: 100,
            sent_ms: 0,
            revision: 5,
            valid_until_ms: 4_100,
        }));
        alpha.step(Input::Tick { now_ms: 200 });
        assert!(
            !alpha.accepts_logins(),
            "a renewal in flight is not the lease"
        );
        alpha.step(Input::Authority(Evidence::LeaseHeld {
            now_ms: 300,
            sent_ms: 250,
            revision: 9,
            valid_until_ms: 4_300,
        }));
        let actions = alpha.step(Input::Tick { now_ms: 400 });
        assert!(alpha.accepts_logins(), "{actions:?}");
        assert!(
            actions.contains(&Action::RecordPromote { epoch: 11 }),
            "{actions:?}"
        );
    }
}
