//! The status page's rendering and judgements, without a node: hostile names escaped,
//! both nodes shown, one that does not answer shown without figures, the authority's
//! verdict from the engine's own summaries, content negotiation, the last promotion
//! found in a real log.

use standin_engine::role::authority::{
    Authority, EtcdLease, Evidence, PeerOnly, WitnessQuorum, WitnessReport, WitnessSettings,
};
use standin_engine::role::timing::{AuthorityTiming, Timing};
use standin_engine::{Change, RelPath, Repository};

use super::facts::{last_promotion, QuarantineFacts};
use super::judge::servers;
use super::*;
use crate::node::status::{NodeStatus, TerminalServerStatus};

const HOSTILE: &str = "<script>alert(\"x\")</script>' onmouseover='alert(1)&amp;";

fn server(name: &str, age_seconds: f64, down: bool) -> TerminalServerStatus {
    TerminalServerStatus {
        name: name.to_string(),
        address: format!("{name}.example:3389"),
        cpu_percent: 12.0,
        memory_percent: 34.0,
        sessions: 3,
        age_seconds,
        down,
    }
}

fn node(name: &str, role: &str, peer: &str) -> NodeStatus {
    NodeStatus {
        node: name.to_string(),
        role: role.to_string(),
        epoch: 3,
        head_seq: 42,
        head_hash: "ab".repeat(32),
        head_digest: "cd".repeat(32),
        peer_url: "http://127.0.0.1:7600".to_string(),
        peer_head_seq: Some(42),
        peer_node: peer.to_string(),
        peer_role: if role == "active" {
            "passive"
        } else {
            "active"
        }
        .to_string(),
        peer_state: "up".to_string(),
        peer_last_contact_seconds: Some(0.2),
        authority: "peer".to_string(),
        authority_summary: PeerOnly.status(0, name).summary,
        version: "1.2.3".to_string(),
        build: "abcdef".to_string(),
        terminal_servers: vec![server("ts1", 0.4, false), server("ts2", 0.3, false)],
        ..NodeStatus::default()
    }
}

fn answer(status: NodeStatus) -> Answer {
    Answer {
        url: format!("http://{}:7600", status.node),
        status: Some(status),
        unreachable: None,
    }
}

fn page(answers: &[Answer], local: &LocalFacts) -> String {
    render(&Page {
        answers,
        local,
        now_ms: 1_709_210_096_789,
    })
}

/// The text of every element `<article ... data-node="NAME"...>…</article>`.
fn card<'a>(html: &'a str, name: &str) -> &'a str {
    let attribute = html
        .find(&format!("data-node=\"{name}\""))
        .unwrap_or_else(|| panic!("no card for {name:?} in {html}"));
    let start = html[..attribute].rfind("<article").expect("an article");
    let end = html[start..].find("</article>").expect("card ends") + start;
    &html[start..end]
}

#[test]
fn both_nodes_side_by_side_with_agents_version_and_time() {
    let mut alpha = node("alpha", "active", "beta");
    alpha.peer_lag_events = Some(2);
    alpha.peer_lag_seconds = Some(1.5);
    let mut beta = node("beta", "passive", "alpha");
    beta.lag_events = 2;
    beta.lag_seconds = 1.25;
    beta.terminal_servers = vec![server("ts1", 0.5, false)];
    beta.content_mode = "by reference, begun as clones".to_string();
    let local = LocalFacts {
        node: "alpha".to_string(),
        last_promotion: Some(Promotion {
            node: "alpha".to_string(),
            epoch: 3,
            seq: 17,
            recorded_at_ms: 951_868_800_000,
            previous_epoch: Some(2),
            previous_node: Some("beta".to_string()),
        }),
        ..LocalFacts::default()
    };
    let html = page(&[answer(alpha), answer(beta)], &local);
    assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
    assert!(
        html.contains(&format!(
            "<meta http-equiv=\"refresh\" content=\"{REFRESH_S}\">"
        )),
        "{html}"
    );
    assert!(!html.contains("<script"), "no script: {html}");
    assert!(html.contains("2024-02-29 12:34:56 UTC"), "the time: {html}");
    let alpha = card(&html, "alpha");
    assert!(alpha.contains("role-active"), "{alpha}");
    assert!(
        alpha.contains("seq 42 <code>abababababab</code>"),
        "{alpha}"
    );
    assert!(alpha.contains("<dt>Its passive behind it</dt><dd>2 events, 1.5 s</dd>"));
    assert!(alpha.contains("beta (passive) at seq 42, last contact 0.2 s ago"));
    assert!(
        alpha.contains("1.2.3 (build <code>abcdef</code>)"),
        "{alpha}"
    );
    let beta = card(&html, "beta");
    assert!(beta.contains("role-passive"), "{beta}");
    assert!(
        beta.contains("<dt>Content</dt><dd>by reference, begun as clones</dd>"),
        "{beta}"
    );
    assert!(alpha.contains("<dt>Content</dt><dd>-</dd>"), "{alpha}");
    assert!(
        beta.contains("<dt>Behind its active</dt><dd>2 events, 1.2 s</dd>"),
        "{beta}"
    );
    // Both agents, each with its address; ts2 does not report to beta.
    for name in ["ts1", "ts2"] {
        assert!(html.contains(&format!("data-agent=\"{name}\"")), "{html}");
        assert!(html.contains(&format!("{name}.example:3389")), "{html}");
    }
    assert!(
        html.contains("terminal server ts2 does not report to beta"),
        "{html}"
    );
    assert!(
        html.contains(
            "<b>alpha</b> took over from <b>beta</b> (epoch 2) in epoch 3 at 2000-03-01 00:00:00 UTC"
        ),
        "{html}"
    );
    // Peer-only authority: said to be unsafe.
    assert!(
        html.contains("<span class=\"badge unsafe\">unsafe</span>"),
        "{html}"
    );
}

#[test]
fn hostile_names_are_escaped_everywhere() {
    let mut alpha = node(HOSTILE, HOSTILE, HOSTILE);
    alpha.peer_state = HOSTILE.to_string();
    alpha.head_hash = HOSTILE.to_string();
    alpha.folder = HOSTILE.to_string();
    alpha.last_error = HOSTILE.to_string();
    alpha.authority = HOSTILE.to_string();
    alpha.authority_summary = HOSTILE.to_string();
    alpha.version = HOSTILE.to_string();
    alpha.build = HOSTILE.to_string();
    alpha.unstable_files = vec![HOSTILE.to_string()];
    alpha.skipped_paths = vec![HOSTILE.to_string()];
    alpha.quarantined_events = 1;
    let mut hostile_server = server(HOSTILE, 1.0, true);
    hostile_server.address = HOSTILE.to_string();
    alpha.terminal_servers = vec![hostile_server];
    let unreachable = Answer {
        url: HOSTILE.to_string(),
        status: None,
        unreachable: Some(HOSTILE.to_string()),
    };
    let local = LocalFacts {
        node: HOSTILE.to_string(),
        quarantines: vec![QuarantineFacts {
            id: HOSTILE.to_string(),
            events: 1,
            common_seq: 1,
            quarantined_at_ms: 0,
            paths: vec![HOSTILE.to_string()],
        }],
        quarantine_count: 1,
        last_promotion: Some(Promotion {
            node: HOSTILE.to_string(),
            epoch: 2,
            seq: 2,
            recorded_at_ms: 0,
            previous_epoch: Some(1),
            previous_node: Some(HOSTILE.to_string()),
        }),
        problems: vec![HOSTILE.to_string()],
    };
    let html = page(&[answer(alpha), unreachable], &local);
    for raw in [
        "<script",
        "</script",
        "' onmouseover",
        "\" onmouseover",
        "\"x\"",
    ] {
        assert!(!html.contains(raw), "{raw:?} unescaped in {html}");
    }
    let escaped = escape(HOSTILE);
    assert_eq!(
        escaped,
        "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&#39; onmouseover=&#39;alert(1)&amp;amp;"
    );
    // Shown (escaped) many times over: names, addresses, paths, errors, the title.
    assert!(html.matches(&escaped).count() >= 15, "{html}");
    assert!(
        html.contains(&format!("<title>standin: {escaped} ")),
        "{html}"
    );
}

#[test]
fn a_node_that_does_not_answer_is_named_and_shows_no_figures() {
    let mut alpha = node("alpha", "active", "beta");
    alpha.peer_state = "down".to_string();
    alpha.peer_last_contact_seconds = Some(7.5);
    alpha.peer_lag_events = Some(5);
    alpha.peer_lag_seconds = Some(7.0);
    let beta = Answer {
        url: "http://beta:7600".to_string(),
        status: None,
        unreachable: Some("connection refused".to_string()),
    };
    let html = page(&[answer(alpha), beta], &LocalFacts::default());
    // Named as its peer last heard it, marked, with why and no figure.
    let beta = card(&html, "beta");
    assert!(beta.contains("class=\"node unreachable\""), "{beta}");
    assert!(beta.contains("<span class=\"name\">beta</span>"), "{beta}");
    assert!(beta.contains("http://beta:7600"), "{beta}");
    assert!(beta.contains("connection refused"), "{beta}");
    for figure in ["Epoch", "Head", "seq ", "Version"] {
        assert!(!beta.contains(figure), "no {figure} for beta: {beta}");
    }
    // alpha says it sees beta down, and how far behind it was left.
    let alpha = card(&html, "alpha");
    assert!(
        alpha.contains("<span class=\"badge down\">down</span>"),
        "{alpha}"
    );
    assert!(alpha.contains("<dd>5 events, 7.0 s</dd>"), "{alpha}");
    let warnings = warnings(
        &[
            answer(node("alpha", "active", "beta")),
            Answer {
                url: "http://beta:7600".to_string(),
                status: None,
                unreachable: Some("connection refused".to_string()),
            },
        ],
        &LocalFacts::default(),
    );
    assert!(
        warnings.iter().any(|warning| warning.severe
            && warning.text == "http://beta:7600 does not answer: connection refused"),
        "{warnings:?}"
    );
    assert!(
        html.contains("alpha sees its peer down, silent for 7.5 s"),
        "{html}"
    );
    // Its agents' last reports to beta are unknown, not missing.
    let pair = [
        answer(node("alpha", "active", "beta")),
        unreachable_answer(),
    ];
    let rows = servers(&pair);
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|row| row.per_node[1].is_none()));
}

fn unreachable_answer() -> Answer {
    Answer {
        url: "http://beta:7600".to_string(),
        status: None,
        unreachable: Some("timed out".to_string()),
    }
}

fn with_authority(name: &str, authority: &dyn Authority) -> Answer {
    let mut status = node(name, "active", "");
    status.authority = authority.mode().to_string();
    status.authority_summary = authority.status(10_000, name).summary;
    answer(status)
}

fn report(agent: &str, vote: &str) -> Evidence {
    Evidence::AgentReport {
        now_ms: 9_000,
        report: WitnessReport {
            agent: agent.to_string(),
            reachable: vec!["alpha".to_string(), "beta".to_string()],
            vote: Some(vote.to_string()),
            highest: None,
            echo: Some((1, 9_000)),
        },
    }
}

#[test]
fn the_authority_verdict_reads_the_engines_own_summaries() {
    let settings = WitnessSettings {
        agents: vec!["ts1".to_string(), "ts2".to_string(), "ts3".to_string()],
        timing: Timing::new(100, 1_500)
            .and_then(|timing| timing.with_authority(AuthorityTiming::Witness { window_ms: 3_000 }))
            .unwrap(),
    };
    let mut quorum = WitnessQuorum::new(settings.clone());
    let verdict = authority_verdict(&[with_authority("alpha", &quorum)]).unwrap();
    assert_eq!(verdict.decision, Decision::CannotDecide, "{verdict:?}");
    assert!(
        verdict.why.contains("alpha 0 of 3, 2 needed"),
        "{verdict:?}"
    );
    quorum.observe(report("ts1", "alpha"));
    quorum.observe(report("ts2", "alpha"));
    let verdict = authority_verdict(&[with_authority("alpha", &quorum)]).unwrap();
    assert_eq!(verdict.decision, Decision::Decides, "{verdict:?}");
    assert_eq!(verdict.why, "2 of 3 agents vote for alpha (2 needed)");
    quorum.observe(Evidence::VoterSets {
        now_ms: 9_500,
        disagreement: Some("the peer's voter set differs".to_string()),
    });
    let refused = [with_authority("alpha", &quorum)];
    let verdict = authority_verdict(&refused).unwrap();
    assert_eq!(verdict.decision, Decision::CannotDecide, "{verdict:?}");
    assert!(verdict.why.contains("REFUSED"), "{verdict:?}");
    assert!(warnings(&refused, &LocalFacts::default())
        .iter()
        .any(|warning| warning.severe && warning.text.contains("voter set differs")),);

    let mut lease = EtcdLease::new(
        &Timing::new(100, 1_500)
            .and_then(|timing| {
                timing.with_authority(AuthorityTiming::Etcd {
                    lease_ttl_ms: 6_000,
                })
            })
            .unwrap(),
    );
    let verdict = authority_verdict(&[with_authority("alpha", &lease)]).unwrap();
    assert_eq!(verdict.decision, Decision::CannotDecide, "{verdict:?}");
    lease.observe(Evidence::LeaseHeld {
        now_ms: 9_000,
        sent_ms: 9_000,
        revision: 7,
        valid_until_ms: 15_000,
    });
    let verdict = authority_verdict(&[with_authority("alpha", &lease)]).unwrap();
    assert_eq!(verdict.decision, Decision::Decides, "{verdict:?}");

    let verdict = authority_verdict(&[
        with_authority("alpha", &PeerOnly),
        with_authority("beta", &lease),
    ])
    .unwrap();
    assert_eq!(verdict.decision, Decision::CannotDecide);
    assert!(
        verdict.why.contains("different authority modes"),
        "{verdict:?}"
    );
    assert_eq!(
        authority_verdict(&[with_authority("alpha", &PeerOnly)])
            .unwrap()
            .decision,
        Decision::Unsafe
    );
}

#[test]
fn html_only_for_a_browser() {
    for (accept, html) in [
        (
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
            true,
        ),
        ("application/xhtml+xml", true),
        ("TEXT/HTML; charset=utf-8", true),
        ("*/*", false),
        ("", false),
        ("text/plain", false),
        ("text/html;q=0", false),
        ("text/plain, text/html;q=0.5", false),
        ("text/plain;q=0.5, text/html", true),
    ] {
        assert_eq!(wants_html(accept), html, "{accept:?}");
    }
}

#[test]
fn the_last_promotion_is_the_first_event_of_the_heads_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let repository = Repository::open(dir.path()).unwrap();
    let mkdir = |name: &str| Change::Mkdir {
        path: RelPath::new(name).unwrap(),
        mode: 0o755,
    };
    assert_eq!(last_promotion(repository.log()).unwrap(), None);
    for name in ["a", "b", "c"] {
        repository.record(1, vec![mkdir(name)]).unwrap();
    }
    // Epoch 1 began without a promotion (a first start).
    assert_eq!(last_promotion(repository.log()).unwrap(), None);
    repository
        .record(
            2,
            vec![Change::Promote {
                node: "beta".to_string(),
            }],
        )
        .unwrap();
    for name in ["d", "e", "f", "g", "h"] {
        repository.record(2, vec![mkdir(name)]).unwrap();
    }
    let promotion = last_promotion(repository.log()).unwrap().unwrap();
    assert_eq!(
        (promotion.node.as_str(), promotion.epoch, promotion.seq),
        ("beta", 2, 4)
    );
    // After epoch 1, which began without a promotion.
    assert_eq!(
        (promotion.previous_epoch, promotion.previous_node),
        (Some(1), None)
    );
    repository
        .record(
            3,
            vec![Change::Promote {
                node: "alpha".to_string(),
            }],
        )
        .unwrap();
    let promotion = last_promotion(repository.log()).unwrap().unwrap();
    assert_eq!(
        (promotion.node.as_str(), promotion.epoch, promotion.seq),
        ("alpha", 3, 10)
    );
    assert_eq!(promotion.previous_epoch, Some(2));
    assert_eq!(promotion.previous_node.as_deref(), Some("beta"));
    // A promotion at the log's start has nothing before it.
    let dir = tempfile::tempdir().unwrap();
    let fresh = Repository::open(dir.path()).unwrap();
    fresh
        .record(
            3,
            vec![Change::Promote {
                node: "alpha".to_string(),
            }],
        )
        .unwrap();
    fresh.record(3, vec![mkdir("a")]).unwrap();
    let promotion = last_promotion(fresh.log()).unwrap().unwrap();
    assert_eq!((promotion.seq, promotion.previous_epoch), (1, None));
}

#[test]
fn the_last_failover_is_a_warning_once_for_the_pair() {
    let report = crate::coordinator::failover_report::FailoverReport {
        epoch: 2,
        promoted_node: "beta".to_string(),
        promoted_at_ms: 1_796_000_000_000,
        old_active: "alpha".to_string(),
        ..Default::default()
    };
    let with_report = |name: &str, role: &str, peer: &str| {
        let mut status = node(name, role, peer);
        status.last_failover = Some(crate::node::status::LastFailover::of(report.clone()));
        answer(status)
    };
    let found = warnings(
        &[
            with_report("beta", "active", "alpha"),
            with_report("alpha", "passive", "beta"),
        ],
        &LocalFacts::default(),
    );
    let named: Vec<_> = found
        .iter()
        .filter(|warning| warning.text.starts_with("last failover: "))
        .collect();
    assert_eq!(named.len(), 1, "{found:?}");
    assert!(named[0].text.contains(&report.summary()), "{found:?}");
    assert!(named[0].severe);
}
