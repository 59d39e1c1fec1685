//! The active's side: keeping authority while the authority backs it, suspending
//! when it does not, resuming when it does again; and the rule that, with a witness
//! or a lease, a recently heard peer goes first.

use super::{Action, Hook, Role, RoleMachine};
use crate::role::authority::Decision;

impl RoleMachine {
    /// A tick while active: suspended when the authority no longer backs this node
    /// (with a witness or a lease, also when a later peer goes first).
    pub(super) fn active_tick(&mut self, now_ms: u64) -> Vec<Action> {
        let node = self.settings.node.clone();
        let later_peer = self
            .peer_blocks_taking()
            .filter(|_| self.peer.as_ref().is_some_and(|peer| !peer.active));
        let decision = match later_peer {
            Some(reason) => Decision::No(reason),
            None => self
                .authority
                .may_hold(now_ms, &node, self.epoch, self.peer_contact_ms),
        };
        match decision {
            Decision::No(reason) => self.suspend(reason),
            Decision::Yes => Vec::new(),
        }
    }

    /// A tick while suspended: resume when the authority backs this node again.
    pub(super) fn suspended_tick(&mut self, now_ms: u64) -> Vec<Action> {
        let node = self.settings.node.clone();
        match self
            .peer_blocks_taking()
            .map(Decision::No)
            .unwrap_or_else(|| self.authority.may_take(now_ms, &node, self.epoch))
        {
            Decision::Yes => self.resume(),
            Decision::No(_) => {
                if self.authority.needs_acquire() {
                    vec![Action::AcquireAuthority]
                } else {
                    Vec::new()
                }
            }
        }
    }

    /// The authority no longer backs this active: stop logins and capture.
    pub(crate) fn suspend(&mut self, reason: String) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.role == Role::Active {
            actions.extend([
                Action::CloseLogins,
                Action::StopCapture,
                Action::RunHook {
                    hook: Hook::OnDemote,
                    epoch: self.epoch,
                    old_active: Some(self.settings.node.clone()),
                },
            ]);
        }
        actions.push(Action::Alert {
            message: format!("suspended: {reason}; logins and capture stopped until the authority backs this node again"),
        });
        if self.authority.needs_acquire() {
            actions.push(Action::AcquireAuthority);
        }
        self.role = Role::Suspended { reason };
        self.last_refusal = None;
        actions
    }

    /// Backed again: resume as the authority, in a new epoch when the authority's
    /// floor (the etcd revision) moved past ours.
    pub(crate) fn resume(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        // Resume in a new epoch, above any seen (an etcd revision, a peer's promotion):
        // a peer may have promoted unseen while this node was suspended, and the
        // history that goes on from here must outrank the one it diverged from.
        let floor = self.authority.epoch_floor().max(self.highest_epoch_seen);
        if floor > self.epoch || self.authority.mode() != "peer" {
            let epoch = self.next_epoch(self.epoch.max(self.highest_epoch_seen).max(floor));
            self.epoch = epoch;
            self.highest_epoch_seen = epoch;
            actions.push(Action::RecordPromote { epoch });
        }
        self.role = Role::Active;
        self.epoch = self.epoch.max(1);
        actions.extend([
            Action::StartCapture,
            Action::OpenLogins,
            Action::RunHook {
                hook: Hook::OnPromote,
                epoch: self.epoch,
                old_active: None,
            },
            Action::Alert {
                message: format!(
                    "the authority backs this node: active in epoch {}",
                    self.epoch
                ),
            },
        ]);
        actions
    }

    /// With a witness or a lease, a node does not take authority while its peer,
    /// heard from within `failover_after_ms`, is active (it may be holding authority
    /// through the link) or holds a later epoch than ours (it was a later authority:
    /// it goes first). Peer-only mode keeps its start-up rule (the higher authority
    /// wins).
    pub(crate) fn peer_blocks_taking(&self) -> Option<String> {
        if self.authority.mode() == "peer" {
            return None;
        }
        let peer = self.peer.as_ref()?;
        let since_active = self.now_ms.saturating_sub(self.last_answer_ms);
        if peer.active && since_active < self.settings.timing.failover_after_ms() {
            return Some(format!(
                "{} answered as active {since_active} ms ago",
                peer.node
            ));
        }
        let since_contact = self.now_ms.saturating_sub(self.peer_contact_ms);
        // With a lease, the holder goes first (the peer cannot take the lease it
        // holds); its history is the one that goes on, the peer's later events are
        // quarantined when it rejoins.
        if peer.epoch > self.epoch
            && since_contact < self.settings.timing.failover_after_ms()
            && !self.authority.needs_acquire()
        {
            return Some(format!(
                "{} holds epoch {}, above this node's {}",
                peer.node, peer.epoch, self.epoch
            ));
        }
        None
    }

    /// An alert for a refusal, once per distinct reason.
    pub(crate) fn refusal(&mut self, message: String) -> Vec<Action> {
        if self.last_refusal.as_ref() == Some(&message) {
            return Vec::new();
        }
        self.last_refusal = Some(message.clone());
        vec![Action::Alert { message }]
    }
}
