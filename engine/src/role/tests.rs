//! Unit tests of `role`.

use super::*;

fn settings(node: &str, active: bool) -> RoleSettings {
    RoleSettings {
        node: node.to_string(),
        initial_active: active,
        preferred: active,
        auto_failback: false,
        timing: crate::role::timing::Timing::new(500, 5_000).unwrap(),
    }
}

/// The default pair timing with an etcd lease of `ttl_ms`.
fn lease_timing(ttl_ms: u64) -> crate::role::timing::Timing {
    crate::role::timing::Timing::new(500, 5_000)
        .and_then(|timing| {
            timing.with_authority(crate::role::timing::AuthorityTiming::Etcd {
                lease_ttl_ms: ttl_ms,
            })
        })
        .unwrap()
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

/// A passive following `alpha` at epoch 1, started at t = 0.
fn following_passive() -> RoleMachine {
    let mut machine = RoleMachine::new(settings("beta", false), 1, 0);
    assert_eq!(machine.start(), vec![Action::SendHeartbeat]);
    let actions = machine.step(Input::HeartbeatAnswered {
        now_ms: 10,
        peer: peer("alpha", 1, true),
    });
    assert_eq!(actions, vec![Action::StartPulling]);
    assert_eq!(machine.role(), &Role::Passive);
    machine
}

#[test]
fn a_passive_promotes_only_after_failover_after_ms_of_silence() {
    let mut machine = following_passive();
    for now_ms in [500, 1_000, 4_999] {
        assert_eq!(
            machine.step(Input::HeartbeatFailed { now_ms }),
            vec![],
            "at {now_ms}: no new heartbeat until the next tick"
        );
    }
    let actions = machine.step(Input::Tick { now_ms: 5_010 });
    assert!(actions.contains(&Action::FinalPull), "{actions:?}");
    assert_eq!(
        machine.role(),
        &Role::Passive,
        "not yet: the final pull comes first"
    );
    let actions = machine.step(Input::FinalPullDone);
    assert_eq!(
        actions[..5],
        [
            Action::StopPulling,
            Action::RecordPromote { epoch: 2 },
            Action::StartCapture,
            Action::OpenLogins,
            Action::RunHook {
                hook: Hook::OnPromote,
                epoch: 2,
                old_active: Some("alpha".to_string())
            },
        ]
    );
    assert_eq!(machine.role(), &Role::Active);
    assert!(machine.accepts_logins());
    assert_eq!(machine.epoch(), 2);
    // A failover, for the shell's named-loss report.
    assert_eq!(
        machine.last_promotion(),
        Some(&Promotion {
            epoch: 2,
            planned: false,
            old_active: Some("alpha".to_string())
        })
    );
}

#[test]
fn an_answer_before_the_final_pull_ends_cancels_the_promotion() {
    let mut machine = following_passive();
    machine.step(Input::Tick { now_ms: 6_000 });
    let actions = machine.step(Input::HeartbeatAnswered {
        now_ms: 6_100,
        peer: peer("alpha", 1, true),
    });
    assert!(
        matches!(actions.as_slice(), [Action::Alert { .. }]),
        "{actions:?}"
    );
    assert_eq!(machine.step(Input::FinalPullDone), vec![]);
    assert_eq!(machine.role(), &Role::Passive);
    assert!(!machine.accepts_logins());
}

#[test]
fn an_active_that_sees_a_higher_authority_steps_down_at_once() {
    let mut machine = RoleMachine::new(settings("alpha", true), 1, 0);
    machine.start();
    assert_eq!(
        machine.step(Input::HeartbeatFailed { now_ms: 100 }),
        vec![Action::StartCapture, Action::OpenLogins]
    );
    assert!(machine.accepts_logins());
    let actions = machine.step(Input::PeerSeen {
        now_ms: 200,
        peer: peer("beta", 2, true),
    });
    assert_eq!(
        actions,
        vec![
            Action::CloseLogins,
            Action::StopCapture,
            Action::RunHook {
                hook: Hook::OnDemote,
                epoch: 2,
                old_active: Some("alpha".to_string())
            },
            Action::StopPulling,
            Action::StartRejoin {
                authority: "beta".to_string()
            },
        ]
    );
    assert_eq!(machine.role(), &Role::Rejoining);
    assert!(!machine.accepts_logins());
    assert_eq!(machine.step(Input::RejoinDone), vec![Action::StartPulling]);
    assert_eq!(machine.role(), &Role::Passive);
}

#[test]
fn a_returning_old_active_asks_first_and_rejoins() {
    let mut machine = RoleMachine::new(settings("alpha", true), 1, 0);
    assert_eq!(machine.start(), vec![Action::SendHeartbeat]);
    let actions = machine.step(Input::HeartbeatAnswered {
        now_ms: 10,
        peer: peer("beta", 2, true),
    });
    assert_eq!(
        actions,
        vec![
            Action::StopPulling,
            Action::StartRejoin {
                authority: "beta".to_string()
            }
        ]
    );
    assert!(
        !actions.contains(&Action::StartCapture),
        "never records in the old epoch"
    );
}

#[test]
fn two_actives_in_one_epoch_fence_the_node_until_an_operator_acts() {
    let mut machine = RoleMachine::new(settings("beta", true), 3, 0);
    machine.start();
    machine.step(Input::HeartbeatFailed { now_ms: 1 });
    let actions = machine.step(Input::PeerSeen {
        now_ms: 2,
        peer: peer("alpha", 3, true),
    });
    assert_eq!(
        actions[..3],
        [
            Action::CloseLogins,
            Action::StopCapture,
            Action::StopPulling
        ]
    );
    assert!(matches!(machine.role(), Role::Fenced { reason } if reason.contains("alpha")));
    assert_eq!(
        machine.step(Input::Tick { now_ms: 100_000 }),
        vec![],
        "fenced: nothing but status"
    );
    assert_eq!(
        machine.step(Input::Operator(Command::Promote { force: true })),
        vec![]
    );
    let actions = machine.step(Input::Operator(Command::Unfence));
    assert_eq!(actions.last(), Some(&Action::SendHeartbeat));
    assert_eq!(machine.role(), &Role::Starting);
}

#[test]
fn a_diverged_passive_rejoins() {
    let mut machine = following_passive();
    let actions = machine.step(Input::Diverged {
        authority: "alpha".to_string(),
    });
    assert_eq!(
        actions,
        vec![
            Action::StopPulling,
            Action::StartRejoin {
                authority: "alpha".to_string()
            }
        ]
    );
    assert_eq!(machine.role(), &Role::Rejoining);
}

#[test]
fn an_integrity_failure_fences_any_role() {
    let mut machine = following_passive();
    let actions = machine.step(Input::IntegrityFailure {
        reason: "digest mismatch after seq 7 (a/b)".to_string(),
    });
    assert!(actions.contains(&Action::StopPulling));
    assert!(matches!(machine.role(), Role::Fenced { reason } if reason.contains("seq 7")));
    assert_eq!(
        machine.step(Input::Tick { now_ms: 60_000 }),
        vec![],
        "a fenced passive never promotes"
    );
}

#[test]
fn promote_without_force_is_refused_while_the_active_answers() {
    let mut machine = following_passive();
    let actions = machine.step(Input::Operator(Command::Promote { force: false }));
    assert!(
        matches!(actions.as_slice(), [Action::Alert { message }] if message.contains("switchover"))
    );
    assert_eq!(machine.role(), &Role::Passive);
    let actions = machine.step(Input::Operator(Command::Promote { force: true }));
    assert!(matches!(&actions[0], Action::Alert { message } if message.contains("quarantined")));
    assert!(actions.contains(&Action::RecordPromote { epoch: 2 }));
    assert_eq!(machine.role(), &Role::Active);
}

#[test]
fn the_preferred_node_asks_for_failback_once_caught_up() {
    let mut machine = RoleMachine::new(
        RoleSettings {
            auto_failback: true,
            preferred: true,
            ..settings("alpha", false)
        },
        2,
        0,
    );
    machine.start();
    machine.step(Input::HeartbeatAnswered {
        now_ms: 1,
        peer: peer("beta", 2, true),
    });
    // A node that starts under a higher authority always rejoins first (finding the
    // common point is quick when there is nothing to quarantine).
    assert_eq!(machine.role(), &Role::Rejoining);
    assert_eq!(machine.step(Input::RejoinDone), vec![Action::StartPulling]);
    assert_eq!(machine.role(), &Role::Passive);
    assert_eq!(
        machine.step(Input::CaughtUp { head_seq: 10 }),
        vec![Action::RequestSwitchover]
    );
    assert_eq!(
        machine.step(Input::CaughtUp { head_seq: 11 }),
        vec![],
        "asked once"
    );
}

#[test]
fn a_promotion_takes_an_epoch_above_every_epoch_seen() {
    let mut machine = following_passive();
    machine.step(Input::PeerSeen {
        now_ms: 20,
        peer: peer("alpha", 7, false),
    });
    machine.step(Input::Tick { now_ms: 10_000 });
    let actions = machine.step(Input::FinalPullDone);
    assert!(
        actions.contains(&Action::RecordPromote { epoch: 8 }),
        "{actions:?}"
    );
}

#[test]
fn with_an_etcd_lease_a_passive_promotes_only_once_it_holds_it_above_the_revision() {
    use crate::role::authority::{EtcdLease, Evidence};
    let mut machine = RoleMachine::with_authority(
        settings("beta", false),
        Box::new(EtcdLease::new(&lease_timing(4_000))),
        1,
        0,
    );
    machine.start();
    machine.step(Input::HeartbeatAnswered {
        now_ms: 10,
        peer: peer("alpha", 1, true),
    });
    let actions = machine.step(Input::Tick { now_ms: 6_000 });
    assert!(actions.contains(&Action::AcquireAuthority), "{actions:?}");
    assert!(
        !actions.contains(&Action::FinalPull),
        "no lease, no promotion"
    );
    machine.step(Input::Authority(Evidence::LeaseHeld {
        now_ms: 6_100,
        sent_ms: 6_000,
        revision: 41,
        valid_until_ms: 10_100,
    }));
    let actions = machine.step(Input::Tick { now_ms: 6_200 });
    assert!(actions.contains(&Action::FinalPull), "{actions:?}");
    let actions = machine.step(Input::FinalPullDone);
    assert!(
        actions.contains(&Action::RecordPromote { epoch: 42 }),
        "the next even epoch above revision 41: {actions:?}"
    );
    // No renewal: it steps down a quarter of the TTL before the lease could end.
    assert!(machine.accepts_logins());
    let actions = machine.step(Input::Tick { now_ms: 9_200 });
    assert!(actions.contains(&Action::CloseLogins), "{actions:?}");
    assert!(!machine.accepts_logins());
    assert!(matches!(machine.role(), Role::Suspended { .. }));
}
