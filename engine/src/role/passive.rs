//! The passive's side: failing over after `failover_after_ms` of silence (a final
//! pull first), an operator's promotion, a promotion waiting for the authority, the
//! preferred node's failback request, and the promotion itself (the next epoch of
//! this node's own parity).

use super::{Action, Hook, Phase, Promotion, Refusal, Role, RoleMachine};
use crate::role::authority::Decision;

impl RoleMachine {
    /// A tick while passive: a pending switchover first, then a promotion waiting for
    /// the authority, else a failover once the active has been silent for
    /// `failover_after_ms`.
    pub(super) fn passive_tick(&mut self, now_ms: u64) -> Vec<Action> {
        let node = self.settings.node.clone();
        let mut actions = Vec::new();
        if self.take_over.is_pending() {
            return self.try_take_over();
        }
        if let Some(reason) = self.phase.awaiting_authority().map(str::to_string) {
            if self.authority.may_promote(now_ms, &node).allowed() {
                actions.extend(self.promote(&reason));
            } else {
                actions.push(Action::AcquireAuthority);
            }
            return actions;
        }
        let silent_ms = now_ms.saturating_sub(self.last_answer_ms);
        if !self.phase.final_pull_out() && silent_ms >= self.settings.timing.failover_after_ms() {
            match self.authority.may_promote(now_ms, &node) {
                Decision::Yes => {
                    self.phase.start_final_pull();
                    self.last_refusal = None;
                    actions.push(Action::Alert {
                        message: format!(
                            "no answer from the active for {silent_ms} ms; a last pull, then promotion"
                        ),
                    });
                    actions.push(Action::FinalPull);
                }
                Decision::No(why) => {
                    if self.authority.needs_acquire() {
                        actions.push(Action::AcquireAuthority);
                    }
                    actions.extend(self.refusal(format!(
                        "no answer from the active, but not promoting: {why}"
                    )));
                }
            }
        }
        actions
    }

    /// The last pull before a promotion has finished.
    pub(super) fn final_pull_done(&mut self) -> Vec<Action> {
        if self.role == Role::Passive && self.phase.final_pull_out() {
            // Asked again: the evidence may have changed during the pull.
            match self.authority.may_promote(self.now_ms, &self.settings.node) {
                Decision::Yes => self.promote("the active stopped answering"),
                Decision::No(why) => {
                    self.phase.end_final_pull();
                    vec![Action::Alert {
                        message: format!("not promoting after the final pull: {why}"),
                    }]
                }
            }
        } else {
            Vec::new()
        }
    }

    pub(super) fn caught_up(&mut self, head_seq: u64) -> Vec<Action> {
        self.head_seq = self.head_seq.max(head_seq);
        if self.role != Role::Passive {
            return Vec::new();
        }
        if self.take_over.is_pending() {
            return self.try_take_over();
        }
        let peer_active = self.peer.as_ref().is_some_and(|peer| peer.active);
        if self.settings.preferred
            && self.settings.auto_failback
            && peer_active
            && !self.failback_requested
        {
            self.failback_requested = true;
            return vec![Action::RequestSwitchover];
        }
        Vec::new()
    }

    pub(super) fn promote_command(&mut self, force: bool) -> Result<Vec<Action>, Refusal> {
        match self.role {
            Role::Passive | Role::Starting | Role::Suspended { .. } => {
                if force {
                    let mut actions = vec![Action::Alert {
                        message: "forced promotion: if the old active is still recording, its changes since the last pull will be quarantined when it rejoins".to_string(),
                    }];
                    actions.extend(self.promote_if_authorized("forced by the operator", true));
                    Ok(actions)
                } else if matches!(self.role, Role::Suspended { .. }) {
                    Err(Refusal("this node is suspended: it resumes when the authority backs it; `promote --force` overrides the witness quorum".to_string()))
                } else if self.peer.as_ref().is_some_and(|peer| peer.active)
                    && !self.phase.final_pull_out()
                {
                    Err(Refusal(format!(
                        "the active ({}) answers: use `standin switchover` on it (or `promote --force` if you know it is dead)",
                        self.peer.as_ref().map(|peer| peer.node.as_str()).unwrap_or("the peer")
                    )))
                } else {
                    self.phase.start_final_pull();
                    Ok(vec![Action::FinalPull])
                }
            }
            Role::Active => Err(Refusal(format!(
                "this node is already the active (epoch {}): nothing to promote",
                self.epoch
            ))),
            _ => Err(Refusal(format!(
                "cannot promote while {}",
                self.role.name()
            ))),
        }
    }

    /// Promote if the authority agrees (a switchover or a forced promotion skips the
    /// witness quorum, never the etcd lease); otherwise wait for it.
    pub(super) fn promote_if_authorized(&mut self, reason: &str, skip_quorum: bool) -> Vec<Action> {
        let decision = if skip_quorum && !self.authority.needs_acquire() {
            Decision::Yes
        } else {
            self.authority.may_promote(self.now_ms, &self.settings.node)
        };
        match decision {
            Decision::Yes => self.promote(reason),
            Decision::No(why) => {
                if self.authority.needs_acquire() {
                    // Only a passive (or starting) node comes back to it; a suspended
                    // one resumes when the authority backs it.
                    if matches!(self.role, Role::Passive | Role::Starting) {
                        self.phase.await_authority(reason);
                    }
                    vec![
                        Action::AcquireAuthority,
                        Action::Alert {
                            message: format!("{reason}: waiting for the authority ({why})"),
                        },
                    ]
                } else {
                    vec![Action::Alert {
                        message: format!("{reason}: not promoting ({why})"),
                    }]
                }
            }
        }
    }

    /// The next epoch above `above` that is this node's to take. Epochs are split
    /// between the two nodes — odd for the node configured active, even for the one
    /// configured passive — so two nodes that promote themselves without hearing from
    /// each other (a cut link) never take the same epoch.
    pub(super) fn next_epoch(&self, above: u64) -> u64 {
        let parity = u64::from(self.settings.initial_active);
        let candidate = above + 1;
        if candidate % 2 == parity {
            candidate
        } else {
            candidate + 1
        }
    }

    pub(crate) fn promote(&mut self, reason: &str) -> Vec<Action> {
        let epoch = self.next_epoch(
            self.epoch
                .max(self.highest_epoch_seen)
                .max(self.authority.epoch_floor()),
        );
        let old_active = self
            .peer
            .as_ref()
            .filter(|peer| peer.active)
            .map(|peer| peer.node.clone());
        self.last_promotion = Some(Promotion {
            epoch,
            // A pending take-over request: this is a switchover's promotion.
            planned: self.take_over.is_pending(),
            old_active: old_active.clone(),
        });
        self.role = Role::Active;
        self.epoch = epoch;
        self.highest_epoch_seen = epoch;
        self.phase = Phase::Settled;
        self.settle_take_over(true);
        vec![
            Action::StopPulling,
            Action::RecordPromote { epoch },
            Action::StartCapture,
            Action::OpenLogins,
            Action::RunHook {
                hook: Hook::OnPromote,
                epoch,
                old_active,
            },
            Action::Alert {
                message: format!("promoted to active in epoch {epoch}: {reason}"),
            },
        ]
    }
}
