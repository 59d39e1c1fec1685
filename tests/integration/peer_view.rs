//! What each node sees of the other (issue 20): the active shows its passive's
//! applied head, lag, last contact and state — `unreachable` from the first failed
//! heartbeat, `down` after `failover_after_ms` of silence — in `status --json`, the
//! status page and `/metrics`, and logs when the passive goes and comes back.

use crate::support::{
    http_get, in_sync, status_json, wait_until, wait_within, NodeProcess, PairSpec,
};

const FAILOVER_AFTER_MS: u64 = 1500;

/// A pair that heartbeats each other every 100 ms and fails over after 1.5 s.
pub fn pair(root: &std::path::Path) -> (NodeProcess, NodeProcess) {
    let timing = format!(
        "heartbeat_interval_ms = 100\nfailover_after_ms = {FAILOVER_AFTER_MS}\nreplication_period = 0\n"
    );
    PairSpec::new(&timing).mutual().configure(root)
}

/// The value of the sample named exactly `sample` (with its labels) in `/metrics`.
fn sample(node: &NodeProcess, sample: &str) -> Option<f64> {
    let (_, body) = http_get(node.http, "/metrics")?;
    body.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}

fn peer_state_metric(node: &NodeProcess) -> Option<&'static str> {
    ["up", "unreachable", "down", "unknown"]
        .into_iter()
        .find(|state| {
            sample(node, &format!("standin_peer_state{{state=\"{state}\"}}")) == Some(1.0)
        })
}

#[test]
fn the_active_sees_its_passive_go_unreachable_then_down_and_come_back() {
    let root = tempfile::tempdir().unwrap();
    let (mut alpha, mut beta) = pair(root.path());
    alpha.start();
    beta.start();
    std::fs::write(alpha.folder.join("x"), b"x").unwrap();
    wait_until("beta to follow", || in_sync(&alpha, &beta));

    // alpha sees beta up, at its own head.
    wait_until("alpha to see beta up at its head", || {
        let json = status_json(&alpha);
        json["peer_state"] == "up"
            && json["peer_node"] == "beta"
            && json["peer_role"] == "passive"
            && json["peer_head_seq"] == alpha.head_seq()
            && json["peer_lag_events"] == 0
    });
    assert_eq!(sample(&alpha, "standin_peer_up"), Some(1.0));
    assert_eq!(peer_state_metric(&alpha), Some("up"));
    let (_, page) = http_get(alpha.http, "/").unwrap();
    assert!(page.contains("up (beta, passive), last contact"), "{page}");
    let beta_head = beta.head_seq();

    // beta dies; alpha records on.
    beta.kill();
    std::fs::write(alpha.folder.join("y"), b"y").unwrap();
    wait_until("alpha to record y", || alpha.head_seq() > beta_head);

    // Unreachable first, then down, in status and in /metrics.
    let mut seen = Vec::new();
    wait_within(
        "alpha to see beta down",
        std::time::Duration::from_millis(3 * FAILOVER_AFTER_MS),
        || {
            let state = peer_state_metric(&alpha).unwrap_or("none");
            if seen.last() != Some(&state) {
                seen.push(state);
            }
            state == "down"
        },
    );
    let after_up: Vec<&str> = seen
        .iter()
        .copied()
        .skip_while(|state| *state == "up")
        .collect();
    assert_eq!(after_up, ["unreachable", "down"], "{seen:?}");
    assert_eq!(sample(&alpha, "standin_peer_up"), Some(0.0));
    let json = status_json(&alpha);
    assert_eq!(json["peer_state"], "down", "{json}");
    // Its last known head, the lag that grew since, and the silence.
    assert_eq!(json["peer_head_seq"], beta_head, "{json}");
    assert_eq!(
        json["peer_lag_events"],
        alpha.head_seq() - beta_head,
        "{json}"
    );
    assert!(json["peer_lag_seconds"].as_f64().unwrap() >= 0.0, "{json}");
    assert!(
        json["peer_last_contact_seconds"].as_f64().unwrap() * 1000.0 >= FAILOVER_AFTER_MS as f64,
        "{json}"
    );
    assert!(sample(&alpha, "standin_peer_lag_events").unwrap() >= 1.0);
    assert!(
        sample(&alpha, "standin_peer_last_contact_seconds").unwrap() * 1000.0
            >= FAILOVER_AFTER_MS as f64
    );
    let table = String::from_utf8_lossy(&alpha.cli(&["status"]).stdout).into_owned();
    assert!(table.contains("down (beta, passive)"), "{table}");

    // beta comes back and catches up.
    beta.start();
    wait_until("alpha to see beta up and caught up", || {
        let json = status_json(&alpha);
        json["peer_state"] == "up" && json["peer_lag_events"] == 0
    });
    assert_eq!(sample(&alpha, "standin_peer_up"), Some(1.0));
    assert_eq!(sample(&alpha, "standin_peer_lag_seconds"), Some(0.0));
    let log = alpha.log_text();
    for line in [
        "the peer stopped answering",
        "the peer is down",
        "the peer answers again",
    ] {
        assert!(log.contains(line), "{line:?} not in alpha's log:\n{log}");
    }
}

/// `standin status` shows both nodes; one that does not answer is marked unreachable,
/// with no figures, and only the node asked not answering is a failure (exit 1).
#[test]
fn status_shows_the_pair_and_marks_the_node_that_does_not_answer() {
    let root = tempfile::tempdir().unwrap();
    let (mut alpha, mut beta) = pair(root.path());
    alpha.start();
    beta.start();
    std::fs::write(alpha.folder.join("x"), b"x").unwrap();
    wait_until("beta to follow", || in_sync(&alpha, &beta));

    let json = status_json(&alpha);
    assert_eq!(json["node"], "alpha", "{json}");
    assert_eq!(json["peer"]["node"], "beta", "{json}");
    assert_eq!(json["peer"]["role"], "passive", "{json}");
    assert!(json["peer"]["unreachable"].is_null(), "{json}");
    for node in [&json, &json["peer"]] {
        assert_eq!(node["version"], env!("CARGO_PKG_VERSION"), "{json}");
        assert!(!node["build"].as_str().unwrap().is_empty(), "{json}");
    }
    let output = alpha.cli(&["status"]);
    let table = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{table}");
    let row = |table: &str, label: &str| {
        table
            .lines()
            .find(|line| line.starts_with(&format!("{label} ")))
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(row(&table, "node"), "alpha beta", "{table}");
    assert_eq!(row(&table, "role"), "active passive", "{table}");
    let (_, page) = http_get(alpha.http, "/").unwrap();
    assert_eq!(row(&page, "node"), "alpha beta", "{page}");
    let (_, metrics) = http_get(alpha.http, "/metrics").unwrap();
    assert!(
        metrics.lines().any(|line| line.starts_with(&format!(
            "standin_build_info{{version=\"{}\",build=\"",
            env!("CARGO_PKG_VERSION")
        )) && line.ends_with("} 1")),
        "{metrics}"
    );
    // Named by --url alone: the peer is the one the node names.
    let secret = root.path().join("pair.secret");
    let output = std::process::Command::new(crate::support::standin())
        .args(["status", "--json", "--url"])
        .arg(format!("http://127.0.0.1:{}", beta.grpc))
        .arg("--secret-file")
        .arg(&secret)
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["node"], "beta", "{json}");
    assert_eq!(json["peer"]["node"], "alpha", "{json}");

    beta.kill();
    // alpha asked: it answers; beta is unreachable, with no figures.
    let output = alpha.cli(&["status", "--json"]);
    assert!(output.status.success());
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["role"], "active", "{json}");
    assert_eq!(
        json["peer"]["url"],
        format!("http://127.0.0.1:{}", beta.grpc),
        "{json}"
    );
    assert!(json["peer"]["unreachable"].is_string(), "{json}");
    for field in ["role", "head_seq", "epoch", "lag_events"] {
        assert!(json["peer"][field].is_null(), "no stale {field}: {json}");
    }
    let table = String::from_utf8_lossy(&alpha.cli(&["status"]).stdout).into_owned();
    assert!(
        row(&table, "role").starts_with("active UNREACHABLE: "),
        "{table}"
    );
    assert_eq!(row(&table, "epoch"), "1 -", "{table}");
    let (_, page) = http_get(alpha.http, "/").unwrap();
    assert!(
        row(&page, "role").starts_with("active UNREACHABLE: "),
        "{page}"
    );

    // beta asked: it does not answer (exit 1, named on stderr); alpha's column stands.
    let output = beta.cli(&["status"]);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let table = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("127.0.0.1:{}", beta.grpc)),
        "{stderr}"
    );
    assert!(row(&table, "role").starts_with("UNREACHABLE: "), "{table}");
    assert!(row(&table, "role").ends_with(" active"), "{table}");
    let json: serde_json::Value =
        serde_json::from_slice(&beta.cli(&["status", "--json"]).stdout).unwrap();
    assert!(json["unreachable"].is_string(), "{json}");
    assert!(json["role"].is_null(), "{json}");
    assert_eq!(json["peer"]["node"], "alpha", "{json}");
}
