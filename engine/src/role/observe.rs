//! What the peer shows and what it does to this node's role: the authority order
//! (a higher active makes this node step down and rejoin), two actives in one epoch
//! (fencing), and the start-up decision once the peer has answered or not.

use super::{Action, Hook, PeerView, Phase, Role, RoleMachine};
use crate::role::authority::Decision;

impl RoleMachine {
    pub(super) fn outranks_us(&self, peer: &PeerView) -> bool {
        (peer.active || peer.handing_over)
            && (peer.epoch, peer.node.as_str()) > (self.epoch, self.settings.node.as_str())
    }

    /// Note what the peer showed; returns actions when it changes our role.
    pub(super) fn observe(&mut self, peer: PeerView) -> Vec<Action> {
        self.highest_epoch_seen = self.highest_epoch_seen.max(peer.epoch);
        let same_epoch_two_actives = self.role == Role::Active
            && peer.active
            && peer.epoch == self.epoch
            && peer.node != self.settings.node;
        let outranked = self.outranks_us(&peer);
        self.peer = Some(peer.clone());
        if same_epoch_two_actives {
            return self.fence(format!(
                "{} is also active in epoch {}",
                peer.node, peer.epoch
            ));
        }
        match self.role {
            Role::Active | Role::HandingOver | Role::Suspended { .. } if outranked => {
                self.step_down(&peer)
            }
            Role::Starting if outranked => self.step_down(&peer),
            // With a lease, an active peer holds it: follow it, whatever the epochs
            // (later events of ours are quarantined by the rejoin).
            Role::Suspended { .. } if peer.active && self.authority.needs_acquire() => {
                self.step_down(&peer)
            }
            Role::Starting => self.take_configured_role(),
            Role::Passive if self.phase.final_pull_out() && (peer.active || peer.handing_over) => {
                // The active answered after all: no promotion.
                self.phase.end_final_pull();
                vec![Action::Alert {
                    message: format!("{} answered again; not promoting", peer.node),
                }]
            }
            _ => Vec::new(),
        }
    }

    pub(super) fn take_configured_role(&mut self) -> Vec<Action> {
        // Becoming active without a promotion is only right in a fresh pair or in an
        // epoch of our own; a log whose last epoch is the peer's means we were
        // following it: follow, and fail over only after `failover_after_ms`.
        // A node whose last epoch is its own was the last authority: it resumes.
        let fresh = self.epoch == 0;
        let own_epoch = !fresh && self.epoch % 2 == u64::from(self.settings.initial_active);
        if (fresh && self.settings.initial_active) || own_epoch {
            let decision = match self.peer_blocks_taking() {
                Some(reason) => Decision::No(reason),
                None => {
                    self.authority
                        .may_take(self.now_ms, &self.settings.node, self.epoch.max(1))
                }
            };
            match decision {
                Decision::Yes if self.authority.epoch_floor() <= self.epoch.max(1) => {
                    self.role = Role::Active;
                    self.phase = Phase::Settled;
                    self.epoch = self.epoch.max(1);
                    vec![Action::StartCapture, Action::OpenLogins]
                }
                Decision::Yes => {
                    self.role = Role::Suspended {
                        reason: "starting".to_string(),
                    };
                    self.phase = Phase::Settled;
                    self.resume()
                }
                Decision::No(reason) => {
                    // Suspended from the start: nothing to close, no hook to run.
                    self.epoch = self.epoch.max(1);
                    self.phase = Phase::Settled;
                    self.suspend(format!("waiting for the authority at start-up: {reason}"))
                }
            }
        } else {
            self.role = Role::Passive;
            vec![Action::StartPulling]
        }
    }

    pub(super) fn fence(&mut self, reason: String) -> Vec<Action> {
        let was_active = self.role == Role::Active;
        self.role = Role::Fenced {
            reason: reason.clone(),
        };
        self.phase = Phase::Settled;
        self.settle_take_over(false);
        let mut actions = Vec::new();
        if was_active {
            actions.extend([Action::CloseLogins, Action::StopCapture]);
        }
        actions.push(Action::StopPulling);
        if self.authority.needs_acquire() {
            // A fenced node must not keep the lease the peer needs to take over.
            self.authority.release(self.now_ms);
            actions.push(Action::ReleaseAuthority);
        }
        actions.push(Action::Alert {
            message: format!("fenced: {reason}; an operator must act (standin status)"),
        });
        actions
    }

    pub(super) fn step_down(&mut self, authority: &PeerView) -> Vec<Action> {
        let mut actions = Vec::new();
        if matches!(self.role, Role::Active | Role::HandingOver) {
            actions.extend([
                Action::CloseLogins,
                Action::StopCapture,
                Action::RunHook {
                    hook: Hook::OnDemote,
                    epoch: authority.epoch,
                    old_active: Some(self.settings.node.clone()),
                },
            ]);
        }
        actions.push(Action::StopPulling);
        actions.push(Action::StartRejoin {
            authority: authority.node.clone(),
        });
        if self.authority.needs_acquire() {
            self.authority.release(self.now_ms);
            actions.push(Action::ReleaseAuthority);
        }
        self.role = Role::Rejoining;
        self.phase = Phase::Settled;
        self.settle_take_over(false);
        actions
    }
}
