//! Split-brain protection with real processes: a pair in witness mode with three
//! agents. The pair link (both directions, through proxies of the test's own) is cut
//! while both nodes and the agents live: exactly one node answers `/active` 200
//! throughout. The active is killed: the passive takes over once the agents agree.
//! Reports from unknown agents or with a wrong secret do not count.

use std::time::{Duration, Instant};

use crate::proxy::{proxied_pair, Proxy};
use crate::site::{agent, AgentProcess};
use crate::support::{agent_secret, sample_authority, wait_until, NodeProcess, PairSpec};

struct WitnessPair {
    root: tempfile::TempDir,
    alpha: NodeProcess,
    beta: NodeProcess,
    agent_secret: std::path::PathBuf,
    /// alpha → beta and beta → alpha.
    to_beta: Proxy,
    to_alpha: Proxy,
}

impl WitnessPair {
    fn new() -> WitnessPair {
        let root = tempfile::tempdir().unwrap();
        let agent_secret = agent_secret(root.path());
        let extra = format!(
            "heartbeat_interval_ms = 100\nfailover_after_ms = 3000\nreplication_period = 0\nagent_secret_file = \"{}\"\nauthority = \"witness\"\nwitness_agents = [\"ts1\", \"ts2\", \"ts3\"]\nwitness_window_ms = 1500\n",
            agent_secret.display()
        );
        let (mut alpha, beta, [to_alpha, to_beta]) =
            proxied_pair(root.path(), PairSpec::new(&extra));
        alpha.start();
        WitnessPair {
            root,
            alpha,
            beta,
            agent_secret,
            to_beta,
            to_alpha,
        }
    }

    /// Agents reporting straight to both nodes (not through the proxies).
    fn agent(&self, name: &str) -> AgentProcess {
        let urls = format!(
            "http://127.0.0.1:{};http://127.0.0.1:{}",
            self.alpha.grpc, self.beta.grpc
        );
        agent(self.root.path(), name, 0, &urls, &self.agent_secret)
    }
}

/// Sample both nodes for `duration`; returns how many samples saw each active, and
/// panics if both were active at once (alpha, then beta, then alpha again all 200).
fn watch_authorities(pair: &WitnessPair, duration: Duration) -> (u32, u32, u32) {
    let started = Instant::now();
    let (mut alpha_only, mut beta_only, mut samples) = (0, 0, 0);
    while started.elapsed() < duration {
        let (a1, b, a2) = sample_authority(&pair.alpha, &pair.beta, started);
        samples += 1;
        if a1 && a2 && !b {
            alpha_only += 1;
        }
        if b && !a1 && !a2 {
            beta_only += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (alpha_only, beta_only, samples)
}

#[test]
fn with_the_pair_link_cut_exactly_one_node_is_active_and_the_passive_takes_over_once_agents_agree()
{
    let mut pair = WitnessPair::new();
    let _agents: Vec<AgentProcess> = ["ts1", "ts2", "ts3"]
        .iter()
        .map(|name| pair.agent(name))
        .collect();
    pair.beta.start();
    wait_until("alpha to be the authority", || pair.alpha.is_active());
    std::fs::write(pair.alpha.folder.join("before-cut.txt"), b"replicated").unwrap();
    wait_until("beta to replicate", || {
        pair.beta.folder.join("before-cut.txt").exists()
    });
    let status = pair.beta.cli(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("agent witness"), "{text}");

    // The pair link is cut both ways; the agents still reach both nodes.
    pair.to_alpha.cut();
    pair.to_beta.cut();
    let (alpha_only, beta_only, samples) = watch_authorities(&pair, Duration::from_secs(10));
    assert_eq!(
        alpha_only, samples,
        "alpha stays the only authority while the agents reach it ({beta_only} samples with beta active)"
    );
    assert!(
        pair.beta
            .log_text()
            .contains("no answer from the active, but not promoting"),
        "beta says why it does not promote"
    );

    // The link heals; then the active dies: the agents agree it is gone.
    pair.to_alpha.heal();
    pair.to_beta.heal();
    std::fs::write(pair.alpha.folder.join("after-heal.txt"), b"replicated too").unwrap();
    wait_until("beta to replicate after the heal", || {
        pair.beta.folder.join("after-heal.txt").exists()
    });
    let killed = Instant::now();
    pair.alpha.kill();
    while !pair.beta.is_active() {
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "beta did not take over; its log:\n{}",
            pair.beta.log_text()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    eprintln!("takeover after {:?}", killed.elapsed());
    assert!(pair.beta.folder.join("after-heal.txt").exists());
}

#[test]
fn reports_from_unknown_agents_or_with_a_wrong_secret_do_not_count() {
    let mut pair = WitnessPair::new();
    let wrong = pair.root.path().join("wrong.secret");
    std::fs::write(&wrong, "0123456789abcdef0123456789abcdef\n").unwrap();
    let urls = format!(
        "http://127.0.0.1:{};http://127.0.0.1:{}",
        pair.alpha.grpc, pair.beta.grpc
    );
    let _ts1 = pair.agent("ts1");
    let _intruder = pair.agent("intruder");
    let _ts2_wrong_secret = agent(pair.root.path(), "ts2", 0, &urls, &wrong);
    pair.beta.start();
    // One honest vote of three: alpha cannot even take authority.
    std::thread::sleep(Duration::from_secs(4));
    assert!(!pair.alpha.is_active(), "one vote of three is no majority");
    let status = pair.alpha.cli(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("suspended"),
        "{text}{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(
        pair.alpha.log_text().contains("not in witness_agents"),
        "the unknown agent is named in the log"
    );
    // A second honest agent makes the majority.
    let _ts2 = pair.agent("ts2");
    wait_until("alpha to be backed by two agents", || {
        pair.alpha.is_active()
    });
    assert!(!pair.beta.is_active());
}
