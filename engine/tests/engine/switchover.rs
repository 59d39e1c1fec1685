//! The switchover sub-protocol (`standin_engine::role::switchover`), step by step.

use standin_engine::role::authority::{
    EtcdLease, Evidence, WitnessQuorum, WitnessReport, WitnessSettings,
};
use standin_engine::role::switchover::{PeerProbe, TakeOverRequest, TakeOverState};
use standin_engine::role::timing::{AuthorityTiming, Timing};
use standin_engine::role::{
    Action, Command, Input, PeerView, Refusal, Role, RoleMachine, RoleSettings,
};

/// The pair's timing in these tests (a tick every 100 ms, failover after 5 s), with
/// `authority`'s durations.
fn timing(authority: AuthorityTiming) -> Timing {
    Timing::new(100, 5_000)
        .and_then(|timing| timing.with_authority(authority))
        .unwrap()
}

fn settings(node: &str, active: bool) -> RoleSettings {
    RoleSettings {
        node: node.to_string(),
        initial_active: active,
        preferred: active,
        auto_failback: false,
        timing: timing(AuthorityTiming::Peer),
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
        timing: timing(AuthorityTiming::Witness { window_ms: 1_000 }),
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
    // Planned: no named-loss report for it.
    assert!(beta
        .last_promotion()
        .is_some_and(|promotion| promotion.planned && promotion.epoch == 2));

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
    let late = 10 + timing(AuthorityTiming::Peer).switchover_patience_ms() + 1;
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
    let mut alpha = RoleMachine::with_authority(
        settings("alpha", true),
        Box::new(EtcdLease::new(&timing(AuthorityTiming::Etcd {
            lease_ttl_ms: 4_000,
        }))),
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

fn answered(role: &str, head_seq: u64) -> PeerProbe {
    PeerProbe::Answered {
        node: "beta".into(),
        role: role.into(),
        epoch: 1,
        head_seq,
    }
}

#[test]
fn an_operators_switchover_is_refused_before_anything_stops_unless_the_passive_is_ready() {
    let alpha = active(false);
    let refused = |probe: PeerProbe| {
        let Err(Refusal(reason)) = alpha.switchover_readiness(&probe, 40, 100) else {
            panic!("{probe:?} should be refused");
        };
        assert!(reason.contains("nothing was stopped"), "{reason}");
        reason
    };
    let reason = refused(PeerProbe::Unreachable {
        reason: "connection refused".into(),
    });
    assert!(
        reason.contains("cannot be reached (connection refused)"),
        "{reason}"
    );
    assert!(refused(answered("rejoining", 40)).contains("beta is rejoining"));
    let Err(Refusal(reason)) = alpha.switchover_readiness(&answered("passive", 0), 40, 10) else {
        panic!("a passive 40 events behind, 10 allowed");
    };
    assert!(reason.contains("40 events behind"), "{reason}");
    assert_eq!(
        alpha.switchover_readiness(&answered("passive", 40), 40, 100),
        Ok(())
    );
    assert_eq!(
        alpha.switchover_readiness(&answered("passive", 0), 100, 100),
        Ok(())
    );
    // The check changed nothing.
    assert_eq!(alpha.role(), &Role::Active);
    assert!(alpha.accepts_logins());
}

#[test]
fn operator_commands_that_do_not_apply_are_refused_with_the_reason() {
    let mut alpha = active(false);
    let Err(Refusal(reason)) = alpha.operate(Command::Promote { force: false }) else {
        panic!("promote on the active is refused");
    };
    assert!(reason.contains("already the active"), "{reason}");
    assert_eq!(alpha.role(), &Role::Active);

    let mut beta = passive(false);
    let Err(Refusal(reason)) = beta.operate(Command::Switchover) else {
        panic!("switchover on the passive is refused");
    };
    assert!(
        reason.contains("starts on the active; this node is passive"),
        "{reason}"
    );
    assert!(beta
        .switchover_readiness(&answered("passive", 38), 38, 100)
        .is_err());
    let Err(Refusal(reason)) = beta.operate(Command::Promote { force: false }) else {
        panic!("promote while the active answers is refused");
    };
    assert!(reason.contains("the active (alpha) answers"), "{reason}");
    assert_eq!(beta.role(), &Role::Passive);
    // Forced, it is accepted.
    let actions = beta
        .operate(Command::Promote { force: true })
        .expect("a forced promotion");
    assert!(promotes(&actions), "{actions:?}");

    // A fenced node refuses every command but unfencing.
    beta.step(Input::IntegrityFailure {
        reason: "a broken chain".into(),
    });
    let Err(Refusal(reason)) = beta.operate(Command::Switchover) else {
        panic!("a fenced node refuses");
    };
    assert!(reason.contains("fenced (a broken chain)"), "{reason}");
    assert!(beta.operate(Command::Unfence).is_ok());
}
