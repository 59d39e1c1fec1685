//! Unit tests of `authority`.

use super::*;
use crate::role::timing::{AuthorityTiming, Timing};

fn witness() -> WitnessQuorum {
    WitnessQuorum::new(WitnessSettings {
        agents: vec!["ts1".into(), "ts2".into(), "ts3".into()],
        timing: Timing::new(500, 5_000)
            .and_then(|timing| timing.with_authority(AuthorityTiming::Witness { window_ms: 3_000 }))
            .unwrap(),
    })
}

fn report(agent: &str, vote: Option<&str>) -> WitnessReport {
    WitnessReport {
        agent: agent.to_string(),
        reachable: Vec::new(),
        vote: vote.map(str::to_string),
        highest: None,
        echo: None,
    }
}

/// A vote that counts from `now_ms` (the node's answer it echoes was just sent).
fn vote(quorum: &mut WitnessQuorum, now_ms: u64, agent: &str, node: Option<&str>) {
    let mut report = report(agent, node);
    report.echo = Some((1, now_ms));
    quorum.observe(Evidence::AgentReport { now_ms, report });
}

#[test]
fn a_node_takes_authority_only_with_a_fresh_majority_of_votes() {
    let mut quorum = witness();
    vote(&mut quorum, 1_000, "ts1", Some("beta"));
    assert!(!quorum.may_promote(1_000, "beta").allowed(), "one of three");
    vote(&mut quorum, 1_100, "ts2", Some("alpha"));
    assert!(!quorum.may_promote(1_100, "beta").allowed());
    vote(&mut quorum, 1_200, "ts2", Some("beta"));
    assert!(quorum.may_promote(1_200, "beta").allowed());
    assert!(!quorum.may_take(1_200, "alpha", 1).allowed());
    assert!(
        !quorum.may_promote(4_001, "beta").allowed(),
        "ts1's vote is stale"
    );
}

#[test]
fn no_vote_counts_while_the_peers_voter_set_differs() {
    let mut quorum = witness();
    for agent in ["ts1", "ts2", "ts3"] {
        vote(&mut quorum, 1_000, agent, Some("alpha"));
    }
    assert!(quorum.may_take(1_000, "alpha", 1).allowed());
    quorum.observe(Evidence::VoterSets {
        now_ms: 1_000,
        disagreement: Some("the peer's voter set differs".to_string()),
    });
    for decision in [
        quorum.may_take(1_000, "alpha", 1),
        quorum.may_promote(1_000, "alpha"),
        quorum.may_take_since(1_000, "alpha", 1, 0),
        quorum.may_hold(4_000, "alpha", 1, 0),
    ] {
        assert!(
            matches!(&decision, Decision::No(why) if why.contains("witness authority refused")),
            "{decision:?}"
        );
    }
    // Holding through an answering peer needs no vote: still allowed.
    assert!(quorum.may_hold(1_000, "alpha", 1, 900).allowed());
    assert!(quorum.status(1_000, "alpha").summary.contains("REFUSED"));
    quorum.observe(Evidence::VoterSets {
        now_ms: 1_100,
        disagreement: None,
    });
    assert!(quorum.may_take(1_100, "alpha", 1).allowed());
}

#[test]
fn a_vote_counts_from_the_echoed_answer_not_from_its_late_arrival() {
    let mut quorum = witness();
    for agent in ["ts1", "ts2"] {
        let mut report = report(agent, Some("alpha"));
        report.echo = Some((1, 1_000));
        quorum.observe(Evidence::AgentReport {
            now_ms: 3_900,
            report,
        });
    }
    assert!(quorum.may_take(3_900, "alpha", 1).allowed(), "1 000 + W");
    assert!(
        !quorum.may_take(4_001, "alpha", 1).allowed(),
        "arrived late, expired"
    );
    let mut no_echo = report("ts3", Some("alpha"));
    no_echo.echo = None;
    quorum.observe(Evidence::AgentReport {
        now_ms: 4_000,
        report: no_echo,
    });
    assert!(
        !quorum.may_take(4_001, "alpha", 1).allowed(),
        "no echo, no vote"
    );
}

#[test]
fn unknown_agents_do_not_count() {
    let mut quorum = witness();
    for agent in ["intruder1", "intruder2", "ts1"] {
        vote(&mut quorum, 100, agent, Some("beta"));
    }
    assert!(!quorum.may_promote(100, "beta").allowed());
}

#[test]
fn an_active_holds_by_its_peer_or_a_majority() {
    let mut quorum = witness();
    assert!(
        quorum.may_hold(1_000, "alpha", 1, 0).allowed(),
        "peer answered"
    );
    assert!(!quorum.may_hold(2_600, "alpha", 1, 0).allowed());
    vote(&mut quorum, 2_000, "ts1", Some("alpha"));
    vote(&mut quorum, 2_000, "ts2", Some("alpha"));
    assert!(quorum.may_hold(2_600, "alpha", 1, 0).allowed());
    vote(&mut quorum, 2_500, "ts2", None);
    assert!(
        !quorum.may_hold(2_600, "alpha", 1, 0).allowed(),
        "ts2 cools down"
    );
}

#[test]
fn a_higher_authority_reported_by_an_agent_stops_the_active() {
    let mut quorum = witness();
    for agent in ["ts1", "ts2", "ts3"] {
        let mut report = report(agent, Some("alpha"));
        report.highest = Some((2, "beta".to_string()));
        quorum.observe(Evidence::AgentReport {
            now_ms: 100,
            report,
        });
    }
    assert!(!quorum.may_hold(100, "alpha", 1, 100).allowed());
    assert!(quorum.may_hold(100, "alpha", 3, 100).allowed());
}

#[test]
fn the_etcd_lease_is_given_up_before_its_ttl() {
    let mut lease = EtcdLease::new(
        &Timing::new(500, 5_000)
            .and_then(|timing| {
                timing.with_authority(AuthorityTiming::Etcd {
                    lease_ttl_ms: 4_000,
                })
            })
            .unwrap(),
    );
    assert!(!lease.may_take(0, "alpha", 0).allowed());
    lease.observe(Evidence::LeaseHeld {
        now_ms: 0,
        sent_ms: 0,
        revision: 7,
        valid_until_ms: 4_000,
    });
    assert_eq!(lease.epoch_floor(), 7);
    assert!(lease.may_hold(2_900, "alpha", 8, 0).allowed());
    assert!(
        !lease.may_hold(3_000, "alpha", 8, 0).allowed(),
        "margin TTL/4"
    );
    lease.observe(Evidence::LeaseLost {
        now_ms: 3_100,
        reason: "etcd unreachable".into(),
    });
    assert!(!lease.may_promote(3_100, "alpha").allowed());
    assert_eq!(lease.epoch_floor(), 7, "revisions only grow");
}

fn answer(node: &str, epoch: u64, active: bool) -> NodeAnswer {
    NodeAnswer {
        node: node.to_string(),
        epoch,
        active,
        suspended: false,
        eligible: true,
        window_ms: 1_000,
        instance: 7,
        time_ms: 0,
    }
}

#[test]
fn an_agent_votes_for_the_active_and_cools_down_before_changing_its_vote() {
    let addresses = vec!["http://a".to_string(), "http://b".to_string()];
    let mut agent = AgentWitness::new(0, &addresses);
    assert_eq!(
        agent.report_for("ts1", "http://b", 0).vote,
        None,
        "knows nobody"
    );
    agent.answered(0, "http://a", &answer("alpha", 1, true));
    agent.answered(0, "http://b", &answer("beta", 1, false));
    assert_eq!(
        agent.report_for("ts1", "http://b", 500).vote,
        None,
        "a starting agent waits 2W before its first vote"
    );
    agent.answered(1_900, "http://a", &answer("alpha", 1, true));
    agent.answered(1_900, "http://b", &answer("beta", 1, false));
    let report = agent.report_for("ts1", "http://b", 2_000);
    assert_eq!(report.vote.as_deref(), Some("alpha"));
    assert_eq!(report.highest, Some((1, "alpha".to_string())));
    // alpha stops answering; beta keeps answering.
    agent.answered(3_200, "http://b", &answer("beta", 1, false));
    assert_eq!(
        agent.report_for("ts1", "http://b", 3_200).vote,
        None,
        "alpha lost, but its vote was announced 1.2 s ago"
    );
    agent.answered(4_400, "http://b", &answer("beta", 1, false));
    assert_eq!(
        agent.report_for("ts1", "http://b", 4_500).vote.as_deref(),
        Some("beta")
    );
    agent.answered(4_600, "http://a", &answer("alpha", 1, false));
    assert_eq!(
        agent.report_for("ts1", "http://a", 4_700).vote.as_deref(),
        None,
        "alpha is back and the last authority, but beta's vote cools first"
    );
}
