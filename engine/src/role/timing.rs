//! The pair's timing: every duration the role machine, the authority and the
//! service's shell (config checks, node, coordinator, peer link, operator commands)
//! work with, derived here from the configured ones — `heartbeat_interval_ms`,
//! `failover_after_ms`, and the authority's `witness_window_ms` or
//! `etcd_lease_ttl_s` — with the relations between them checked in one place
//! ([`Timing::new`], [`Timing::with_authority`]). A `Timing` that exists satisfies
//! them; nothing else in the tree multiplies or divides a configured duration.

/// The authority's own durations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthorityTiming {
    /// The pair alone: no duration of its own.
    Peer,
    /// The agent witness: W, how long an agent's vote counts.
    Witness { window_ms: u64 },
    /// The etcd lease: its TTL.
    Etcd { lease_ttl_ms: u64 },
}

/// A relation between the configured durations that does not hold: the config key
/// to blame and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct TimingError {
    pub key: &'static str,
    pub reason: String,
}

/// The pair's durations, checked; every derived duration is a method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    heartbeat_interval_ms: u64,
    failover_after_ms: u64,
    authority: AuthorityTiming,
}

/// The shortest a switchover's target keeps trying (`switchover_patience_ms`).
const MIN_SWITCHOVER_PATIENCE_MS: u64 = 10_000;
/// The shortest bound on the final pull before a promotion.
const MIN_FINAL_PULL_MS: u64 = 1_000;
/// What the operator's `promote` allows beyond the final pull (recording the
/// promotion, the next tick).
const PROMOTE_SLACK_MS: u64 = 2_000;
/// What the peer link's failback call allows beyond the switchover it waits for.
const SWITCHOVER_CALL_SLACK_MS: u64 = 10_000;
/// The peer link's shortest per-call deadline is twice this.
const MIN_CALL_BASE_MS: u64 = 200;

impl Timing {
    /// The pair's timing in peer mode: `heartbeat_interval_ms` at least 1 and
    /// `failover_after_ms` above it (a passive must miss at least one heartbeat).
    pub fn new(heartbeat_interval_ms: u64, failover_after_ms: u64) -> Result<Timing, TimingError> {
        if heartbeat_interval_ms == 0 {
            return Err(TimingError {
                key: "heartbeat_interval_ms",
                reason: "must be at least 1".to_string(),
            });
        }
        if failover_after_ms <= heartbeat_interval_ms {
            return Err(TimingError {
                key: "failover_after_ms",
                reason: format!("{failover_after_ms} must be more than heartbeat_interval_ms ({heartbeat_interval_ms})"),
            });
        }
        Ok(Timing {
            heartbeat_interval_ms,
            failover_after_ms,
            authority: AuthorityTiming::Peer,
        }
        .asserted())
    }

    /// This timing with the authority's durations: a witness window above twice the
    /// heartbeat interval (an active checks its quorum every heartbeat), an etcd
    /// lease whose quarter (the step-down margin) is above the heartbeat interval.
    pub fn with_authority(self, authority: AuthorityTiming) -> Result<Timing, TimingError> {
        let heartbeat_interval_ms = self.heartbeat_interval_ms;
        match authority {
            AuthorityTiming::Peer => {}
            AuthorityTiming::Witness { window_ms } => {
                if window_ms < 2 * heartbeat_interval_ms + 1 {
                    return Err(TimingError {
                        key: "witness_window_ms",
                        reason: format!("{window_ms} must be more than twice heartbeat_interval_ms ({heartbeat_interval_ms}): an active checks its quorum every heartbeat"),
                    });
                }
            }
            AuthorityTiming::Etcd { lease_ttl_ms } => {
                if lease_ttl_ms / 4 <= heartbeat_interval_ms {
                    return Err(TimingError {
                        key: "etcd_lease_ttl_s",
                        reason: format!("a quarter of it ({} ms, the step-down margin) must be more than heartbeat_interval_ms ({heartbeat_interval_ms})", lease_ttl_ms / 4),
                    });
                }
            }
        }
        Ok(Timing { authority, ..self }.asserted())
    }

    /// The relations every derived duration keeps (checked in debug builds).
    fn asserted(self) -> Timing {
        debug_assert!(self.heartbeat_interval_ms >= 1);
        debug_assert!(self.failover_after_ms > self.heartbeat_interval_ms);
        debug_assert!(self.switchover_patience_ms() >= self.failover_after_ms);
        debug_assert!(self.peer_answer_holds_ms() < self.failover_after_ms);
        debug_assert!(self.final_pull_ms() >= self.failover_after_ms);
        debug_assert!(self.promote_wait_ms() > self.final_pull_ms());
        debug_assert!(self.switchover_wait_ms() > self.switchover_patience_ms());
        debug_assert!(self.peer_switchover_call_ms() > self.switchover_wait_ms());
        debug_assert!(self.peer_call_ms() > self.heartbeat_interval_ms);
        if let Some(margin_ms) = self.etcd_step_down_margin_ms() {
            debug_assert!(margin_ms > self.heartbeat_interval_ms);
        }
        if let Some(window_ms) = self.witness_window_ms() {
            debug_assert!(window_ms > 2 * self.heartbeat_interval_ms);
        }
        self
    }

    /// How often a node ticks: heartbeats, the role machine's checks.
    pub fn heartbeat_interval_ms(&self) -> u64 {
        self.heartbeat_interval_ms
    }

    /// Silence after which a passive fails over (and the peer counts as down); a peer
    /// heard from within it blocks taking authority in witness and etcd mode.
    pub fn failover_after_ms(&self) -> u64 {
        self.failover_after_ms
    }

    pub fn authority(&self) -> AuthorityTiming {
        self.authority
    }

    /// The witness window W when configured, else the one witness mode takes by
    /// default (half of `failover_after_ms`).
    pub fn witness_window_ms(&self) -> Option<u64> {
        match self.authority {
            AuthorityTiming::Witness { window_ms } => Some(window_ms),
            _ => None,
        }
    }

    /// The witness window when `witness_window_ms` is not set.
    pub fn default_witness_window_ms(&self) -> u64 {
        self.failover_after_ms / 2
    }

    pub fn etcd_lease_ttl_ms(&self) -> Option<u64> {
        match self.authority {
            AuthorityTiming::Etcd { lease_ttl_ms } => Some(lease_ttl_ms),
            _ => None,
        }
    }

    /// An etcd lease holder steps down this long before its lease could run out.
    pub fn etcd_step_down_margin_ms(&self) -> Option<u64> {
        self.etcd_lease_ttl_ms().map(|ttl_ms| ttl_ms / 4)
    }

    /// How long a switchover's target tries to take over before it aborts (and, in
    /// peer mode, how long the old active waits for a silent peer before it resumes).
    pub fn switchover_patience_ms(&self) -> u64 {
        (self.failover_after_ms * 3).max(MIN_SWITCHOVER_PATIENCE_MS)
    }

    /// With a witness, an active keeps authority while its peer answered within this.
    pub fn peer_answer_holds_ms(&self) -> u64 {
        self.failover_after_ms / 2
    }

    /// The bound on the last pull before a promotion.
    pub fn final_pull_ms(&self) -> u64 {
        self.failover_after_ms.max(MIN_FINAL_PULL_MS)
    }

    /// How long the operator's `promote` waits for the node to be active: the final
    /// pull, a little more, and with etcd the lease's TTL (the dead active's lease
    /// may take that long to become free).
    pub fn promote_wait_ms(&self) -> u64 {
        self.final_pull_ms() + PROMOTE_SLACK_MS + self.etcd_lease_ttl_ms().unwrap_or(0)
    }

    /// How long the operator's `switchover` follows the hand-over: the target's
    /// patience, the silence of a peer-mode resume, and a few ticks.
    pub fn switchover_wait_ms(&self) -> u64 {
        self.switchover_patience_ms() + self.failover_after_ms + 4 * self.heartbeat_interval_ms
    }

    /// The peer link's deadline for a control call (heartbeat, take-over).
    pub fn peer_call_ms(&self) -> u64 {
        self.heartbeat_interval_ms.max(MIN_CALL_BASE_MS) * 2
    }

    /// The peer link's deadline for a failback request, which waits for the whole
    /// switchover on the other node.
    pub fn peer_switchover_call_ms(&self) -> u64 {
        self.switchover_wait_ms() + SWITCHOVER_CALL_SLACK_MS
    }

    /// How long `/active` keeps answering 200 after the role machine last published
    /// its role: unbounded in peer mode; half the witness window (a vote's life);
    /// an eighth of the etcd lease's TTL (within its step-down margin).
    pub fn logins_grace_ms(&self) -> u64 {
        match self.authority {
            AuthorityTiming::Peer => u64::MAX,
            AuthorityTiming::Witness { window_ms } => window_ms / 2,
            AuthorityTiming::Etcd { lease_ttl_ms } => lease_ttl_ms / 8,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every derived duration, pinned: the values each was computed with in its own
    /// file before they all moved here.
    fn derived(timing: &Timing) -> [u64; 11] {
        [
            timing.failover_after_ms(),
            timing.default_witness_window_ms(),
            timing.switchover_patience_ms(),
            timing.peer_answer_holds_ms(),
            timing.final_pull_ms(),
            timing.promote_wait_ms(),
            timing.switchover_wait_ms(),
            timing.peer_call_ms(),
            timing.peer_switchover_call_ms(),
            timing.logins_grace_ms(),
            timing.etcd_step_down_margin_ms().unwrap_or(0),
        ]
    }

    #[test]
    fn the_default_config_derives_what_it_always_did() {
        // heartbeat_interval_ms = 500, failover_after_ms = 5000 (the defaults).
        let timing = Timing::new(500, 5_000).unwrap();
        assert_eq!(
            derived(&timing),
            [
                5_000,
                2_500,
                15_000,
                2_500,
                5_000,
                7_000,
                22_000,
                1_000,
                32_000,
                u64::MAX,
                0
            ]
        );
        // The default witness window; the default etcd TTL (10 s).
        let witness = timing
            .with_authority(AuthorityTiming::Witness { window_ms: 2_500 })
            .unwrap();
        assert_eq!(witness.logins_grace_ms(), 1_250);
        assert_eq!(witness.witness_window_ms(), Some(2_500));
        let etcd = timing
            .with_authority(AuthorityTiming::Etcd {
                lease_ttl_ms: 10_000,
            })
            .unwrap();
        assert_eq!(
            derived(&etcd),
            [5_000, 2_500, 15_000, 2_500, 5_000, 17_000, 22_000, 1_000, 32_000, 1_250, 2_500]
        );
    }

    #[test]
    fn a_fast_config_derives_what_it_always_did() {
        // The integration tests' timing: heartbeat_interval_ms = 100,
        // failover_after_ms = 1500; the floors of patience and the call deadline.
        let timing = Timing::new(100, 1_500).unwrap();
        assert_eq!(
            derived(&timing),
            [
                1_500,
                750,
                10_000,
                750,
                1_500,
                3_500,
                11_900,
                400,
                21_900,
                u64::MAX,
                0
            ]
        );
        let etcd = timing
            .with_authority(AuthorityTiming::Etcd {
                lease_ttl_ms: 3_000,
            })
            .unwrap();
        assert_eq!(etcd.etcd_step_down_margin_ms(), Some(750));
        assert_eq!(etcd.logins_grace_ms(), 375);
        assert_eq!(etcd.promote_wait_ms(), 6_500);
        // A slow one: heartbeat_interval_ms = 3000, failover_after_ms = 9000.
        let slow = Timing::new(3_000, 9_000).unwrap();
        assert_eq!(
            derived(&slow),
            [
                9_000,
                4_500,
                27_000,
                4_500,
                9_000,
                11_000,
                48_000,
                6_000,
                58_000,
                u64::MAX,
                0
            ]
        );
        // A failover below a second: the final pull's floor.
        assert_eq!(Timing::new(50, 600).unwrap().final_pull_ms(), 1_000);
    }

    #[test]
    fn the_relations_name_the_key_that_breaks_them() {
        assert_eq!(
            Timing::new(0, 5_000).unwrap_err().key,
            "heartbeat_interval_ms"
        );
        assert_eq!(Timing::new(500, 500).unwrap_err().key, "failover_after_ms");
        let timing = Timing::new(500, 5_000).unwrap();
        let window = timing.with_authority(AuthorityTiming::Witness { window_ms: 1_000 });
        assert_eq!(window.unwrap_err().key, "witness_window_ms");
        assert!(timing
            .with_authority(AuthorityTiming::Witness { window_ms: 1_001 })
            .is_ok());
        let lease = timing.with_authority(AuthorityTiming::Etcd {
            lease_ttl_ms: 2_000,
        });
        assert_eq!(lease.unwrap_err().key, "etcd_lease_ttl_s");
        assert!(timing
            .with_authority(AuthorityTiming::Etcd {
                lease_ttl_ms: 3_000
            })
            .is_ok());
    }
}
