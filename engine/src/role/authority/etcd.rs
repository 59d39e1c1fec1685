//! `EtcdLease`: the pure side of the etcd authority — what the shell last learnt of
//! the lease (held until when, at which revision), answered from, stepping down a
//! margin before the lease could run out.

use crate::role::timing::Timing;

use super::{Authority, AuthorityStatus, Decision, Evidence};

/// The etcd lease, as the shell last learnt it.
#[derive(Clone, Debug)]
pub struct EtcdLease {
    /// Step down this long before the lease could expire.
    margin_ms: u64,
    held: Option<(u64, u64)>,
    last_problem: Option<String>,
    highest_revision: u64,
    /// When this node last gave the lease up: a renewal sent before then (still in
    /// flight) must not make it held again.
    released_at_ms: Option<u64>,
}

impl EtcdLease {
    /// The lease as `timing` (in etcd mode) has it: its step-down margin.
    pub fn new(timing: &Timing) -> EtcdLease {
        debug_assert!(timing.etcd_lease_ttl_ms().is_some(), "{timing:?}");
        EtcdLease {
            margin_ms: timing.etcd_step_down_margin_ms().unwrap_or(0),
            held: None,
            last_problem: None,
            highest_revision: 0,
            released_at_ms: None,
        }
    }

    fn holds(&self, now_ms: u64) -> Decision {
        match self.held {
            Some((_, until)) if now_ms.saturating_add(self.margin_ms) < until => Decision::Yes,
            Some(_) => Decision::No("the etcd lease was not renewed in time".to_string()),
            None => Decision::No(
                self.last_problem
                    .clone()
                    .unwrap_or_else(|| "this node does not hold the etcd lease".to_string()),
            ),
        }
    }
}

impl Authority for EtcdLease {
    fn mode(&self) -> &'static str {
        "etcd"
    }

    fn observe(&mut self, evidence: Evidence) {
        match evidence {
            // A renewal sent before this node gave the lease up (still in flight
            // then): not the lease any more.
            Evidence::LeaseHeld { sent_ms, .. }
                if self.released_at_ms.is_some_and(|at| sent_ms <= at) => {}
            Evidence::LeaseHeld {
                revision,
                valid_until_ms,
                ..
            } => {
                self.highest_revision = self.highest_revision.max(revision);
                let until = self
                    .held
                    .map_or(valid_until_ms, |(_, old)| old.max(valid_until_ms));
                self.held = Some((revision, until));
                self.last_problem = None;
            }
            Evidence::LeaseLost { reason, .. } => {
                self.held = None;
                self.last_problem = Some(reason);
            }
            Evidence::AgentReport { .. } | Evidence::VoterSets { .. } => {}
        }
    }

    fn may_promote(&self, now_ms: u64, _node: &str) -> Decision {
        self.holds(now_ms)
    }

    fn may_take(&self, now_ms: u64, _node: &str, _epoch: u64) -> Decision {
        self.holds(now_ms)
    }

    fn may_hold(&self, now_ms: u64, _: &str, _: u64, _: u64) -> Decision {
        self.holds(now_ms)
    }

    fn release(&mut self, now_ms: u64) {
        self.held = None;
        self.released_at_ms = Some(now_ms);
        self.last_problem = Some("the etcd lease was given up".to_string());
    }

    fn epoch_floor(&self) -> u64 {
        self.held
            .map_or(self.highest_revision, |(revision, _)| revision)
    }

    fn needs_acquire(&self) -> bool {
        true
    }

    fn status(&self, now_ms: u64, _node: &str) -> AuthorityStatus {
        let summary = match self.held {
            Some((revision, until)) if now_ms < until => format!(
                "etcd lease held (revision {revision}), valid for {} ms more",
                until - now_ms
            ),
            _ => format!(
                "etcd lease not held: {}",
                self.last_problem.as_deref().unwrap_or("not acquired")
            ),
        };
        AuthorityStatus {
            mode: "etcd",
            summary,
        }
    }

    fn clone_box(&self) -> Box<dyn Authority> {
        Box::new(self.clone())
    }
}
