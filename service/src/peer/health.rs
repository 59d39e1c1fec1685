//! What this node knows of its peer, from the heartbeats both ways: who it is, its
//! role and its log head as it last said them, when it was last heard from, and
//! whether it is `up`, `unreachable` (from the first failed heartbeat) or `down`
//! (silent for `failover_after_ms`). Pure: every input carries its time (monotonic
//! ms), so it is tested without waiting.

use standin_engine::Head;

/// The peer as this node sees it now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerState {
    /// Not asked yet, nothing heard.
    Unknown,
    /// Its last answer came, and no heartbeat to it failed since.
    Up,
    /// A heartbeat to it failed, and it has been silent for less than
    /// `failover_after_ms`.
    Unreachable,
    /// Silent for `failover_after_ms` or longer.
    Down,
}

impl PeerState {
    pub const ALL: [PeerState; 4] = [
        PeerState::Unknown,
        PeerState::Up,
        PeerState::Unreachable,
        PeerState::Down,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PeerState::Unknown => "unknown",
            PeerState::Up => "up",
            PeerState::Unreachable => "unreachable",
            PeerState::Down => "down",
        }
    }
}

/// The peer as it last described itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSelf {
    pub node: String,
    pub role: String,
    pub head: Head,
}

/// A change of the peer's state worth a log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: PeerState,
    pub to: PeerState,
    /// How long the peer had been silent (ms) when it changed.
    pub silent_ms: u64,
}

#[derive(Clone, Debug)]
pub struct PeerHealth {
    failover_after_ms: u64,
    /// When this node started watching (silence before any contact counts from here).
    started_ms: u64,
    last_contact_ms: Option<u64>,
    /// The first heartbeat to the peer that failed since its last answer.
    failing_since_ms: Option<u64>,
    /// Why the last heartbeat to the peer failed (while failing).
    last_failure: Option<String>,
    peer: Option<PeerSelf>,
    /// The state last reported by `transition`.
    reported: PeerState,
}

impl PeerHealth {
    pub fn new(failover_after_ms: u64, now_ms: u64) -> PeerHealth {
        PeerHealth {
            failover_after_ms,
            started_ms: now_ms,
            last_contact_ms: None,
            failing_since_ms: None,
            last_failure: None,
            peer: None,
            reported: PeerState::Unknown,
        }
    }

    fn contact(&mut self, now_ms: u64, peer: PeerSelf) {
        self.last_contact_ms = Some(self.last_contact_ms.unwrap_or(0).max(now_ms));
        self.peer = Some(peer);
    }

    /// A heartbeat to the peer was answered.
    pub fn answered(&mut self, now_ms: u64, peer: PeerSelf) {
        self.contact(now_ms, peer);
        self.failing_since_ms = None;
        self.last_failure = None;
    }

    /// A heartbeat from the peer reached this node. It shows the peer alive, but not
    /// that this node's calls reach it: a failing direction stays `unreachable`.
    pub fn seen(&mut self, now_ms: u64, peer: PeerSelf) {
        self.contact(now_ms, peer);
    }

    /// A heartbeat to the peer failed.
    pub fn failed(&mut self, now_ms: u64, why: String) {
        self.failing_since_ms.get_or_insert(now_ms);
        self.last_failure = Some(why);
    }

    /// How long the peer has been silent at `now_ms` (since the start when it was
    /// never heard from).
    pub fn silent_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.last_contact_ms.unwrap_or(self.started_ms))
    }

    pub fn state(&self, now_ms: u64) -> PeerState {
        let silent_ms = self.silent_ms(now_ms);
        let failing = self.failing_since_ms.is_some();
        if (failing || self.last_contact_ms.is_some()) && silent_ms >= self.failover_after_ms {
            PeerState::Down
        } else if failing {
            PeerState::Unreachable
        } else if self.last_contact_ms.is_some() {
            PeerState::Up
        } else {
            PeerState::Unknown
        }
    }

    /// The state at `now_ms`, if it changed since the last call (for a log line).
    pub fn transition(&mut self, now_ms: u64) -> Option<Transition> {
        let state = self.state(now_ms);
        if state == self.reported {
            return None;
        }
        let from = std::mem::replace(&mut self.reported, state);
        Some(Transition {
            from,
            to: state,
            silent_ms: self.silent_ms(now_ms),
        })
    }

    /// The peer as it last described itself, if it ever did.
    pub fn peer(&self) -> Option<&PeerSelf> {
        self.peer.as_ref()
    }

    /// Ms since the peer was last heard from, if it ever was.
    pub fn last_contact_ago_ms(&self, now_ms: u64) -> Option<u64> {
        self.last_contact_ms
            .map(|contact| now_ms.saturating_sub(contact))
    }

    pub fn last_failure(&self) -> Option<&str> {
        self.last_failure.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passive(seq: u64) -> PeerSelf {
        PeerSelf {
            node: "beta".to_string(),
            role: "passive".to_string(),
            head: Head { seq, ..Head::EMPTY },
        }
    }

    #[test]
    fn unreachable_at_the_first_failure_down_after_failover_after_ms_of_silence() {
        let mut health = PeerHealth::new(1500, 1000);
        assert_eq!(health.state(1000), PeerState::Unknown);
        health.answered(1100, passive(7));
        assert_eq!(health.state(1200), PeerState::Up);
        assert_eq!(health.peer().map(|peer| peer.head.seq), Some(7));
        health.failed(1300, "connection refused".to_string());
        assert_eq!(health.state(1300), PeerState::Unreachable);
        assert_eq!(health.last_failure(), Some("connection refused"));
        // Silent since 1100: down 1500 ms later, whatever the failures in between.
        health.failed(1400, "connection refused".to_string());
        assert_eq!(health.state(2599), PeerState::Unreachable);
        assert_eq!(health.state(2600), PeerState::Down);
        assert_eq!(health.last_contact_ago_ms(2600), Some(1500));
        // Its answer brings it back, with its new head.
        health.answered(2700, passive(9));
        assert_eq!(health.state(2700), PeerState::Up);
        assert_eq!(health.peer().map(|peer| peer.head.seq), Some(9));
        assert_eq!(health.last_failure(), None);
    }

    #[test]
    fn a_peer_heard_but_not_reached_stays_unreachable_and_never_down() {
        let mut health = PeerHealth::new(1500, 0);
        health.failed(100, "timed out".to_string());
        health.seen(200, passive(3));
        health.failed(300, "timed out".to_string());
        health.seen(1700, passive(4));
        assert_eq!(health.state(1800), PeerState::Unreachable);
        // A silent peer that was never heard from is down too.
        let mut never = PeerHealth::new(1500, 0);
        never.failed(100, "refused".to_string());
        assert_eq!(never.state(1499), PeerState::Unreachable);
        assert_eq!(never.state(1500), PeerState::Down);
        // Never asked, never heard: unknown, however long.
        assert_eq!(PeerHealth::new(1500, 0).state(60_000), PeerState::Unknown);
    }

    #[test]
    fn each_change_is_reported_once() {
        let mut health = PeerHealth::new(1000, 0);
        health.answered(10, passive(1));
        let up = health.transition(10).expect("up");
        assert_eq!((up.from, up.to), (PeerState::Unknown, PeerState::Up));
        assert_eq!(health.transition(20), None);
        health.failed(100, "refused".to_string());
        assert_eq!(
            health.transition(100).map(|change| change.to),
            Some(PeerState::Unreachable)
        );
        assert_eq!(health.transition(500), None);
        let down = health.transition(1010).expect("down");
        assert_eq!(
            (down.from, down.to),
            (PeerState::Unreachable, PeerState::Down)
        );
        assert_eq!(down.silent_ms, 1000);
        health.answered(2000, passive(2));
        let back = health.transition(2000).expect("back");
        assert_eq!((back.from, back.to), (PeerState::Down, PeerState::Up));
    }
}
