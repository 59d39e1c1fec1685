//! `PeerOnly`: the pair decides alone — a passive promotes when its peer has been
//! silent for `failover_after_ms` (unsafe on a cut link; see the module above).

use super::{Authority, AuthorityStatus, Decision, Evidence};

/// Peer-only: the pair decides alone.
#[derive(Clone, Debug, Default)]
pub struct PeerOnly;

impl Authority for PeerOnly {
    fn mode(&self) -> &'static str {
        "peer"
    }
    fn observe(&mut self, _evidence: Evidence) {}
    fn may_promote(&self, _now_ms: u64, _node: &str) -> Decision {
        Decision::Yes
    }
    fn may_take(&self, _now_ms: u64, _node: &str, _epoch: u64) -> Decision {
        Decision::Yes
    }
    fn may_hold(&self, _: u64, _: &str, _: u64, _: u64) -> Decision {
        Decision::Yes
    }
    fn status(&self, _now_ms: u64, _node: &str) -> AuthorityStatus {
        AuthorityStatus {
            mode: "peer",
            summary: "peer only: UNSAFE on a cut link (use witness or etcd)".to_string(),
        }
    }
    fn clone_box(&self) -> Box<dyn Authority> {
        Box::new(self.clone())
    }
}
