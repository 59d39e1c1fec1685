//! What a pair replicates: files, nested directories, a 50 MiB file, a delete and a
//! rename, with `standin verify` passing on both nodes.

use crate::support::{pseudo_random, tree, wait_until, Pair};

fn exercise(pair: &Pair) {
    let source = &pair.alpha.folder;
    std::fs::create_dir_all(source.join("users/archive/2026")).unwrap();
    std::fs::write(source.join("users/alice.toml"), "name = \"alice\"\n").unwrap();
    std::fs::write(
        source.join("users/archive/2026/old.toml"),
        "name = \"old\"\n",
    )
    .unwrap();
    std::fs::create_dir(source.join("empty")).unwrap();
    std::fs::write(source.join("big.bin"), pseudo_random(50 << 20, 1)).unwrap();
    pair.wait_in_sync();
    assert_eq!(tree(source), tree(&pair.beta.folder));

    std::fs::remove_file(source.join("users/archive/2026/old.toml")).unwrap();
    std::fs::rename(
        source.join("users/alice.toml"),
        source.join("users/alice-renamed.toml"),
    )
    .unwrap();
    std::fs::rename(source.join("users/archive"), source.join("archive")).unwrap();
    wait_until("the delete and renames to reach beta", || {
        pair.beta.folder.join("users/alice-renamed.toml").exists()
            && pair.beta.folder.join("archive/2026").is_dir()
            && !pair.beta.folder.join("users/archive").exists()
    });
    pair.wait_in_sync();
    assert_eq!(tree(source), tree(&pair.beta.folder));
    pair.assert_verified();
}

#[test]
fn a_continuously_streaming_pair_replicates_everything() {
    let mut pair = Pair::new("replication_period = 0", true);
    exercise(&pair);
    // The active stops promptly even with a passive's stream open to it.
    // The active stops on SIGTERM even with a passive's stream open to it (it used to
    // wait for that stream forever and had to be killed).
    assert!(
        pair.alpha.stop(),
        "the active did not stop cleanly on SIGTERM"
    );
}

#[test]
fn a_periodic_pair_replicates_everything() {
    let pair = Pair::new("replication_period = 1", true);
    exercise(&pair);
    // /active tells which node is authoritative.
    assert_eq!(
        crate::support::http_get(pair.alpha.http, "/active")
            .unwrap()
            .0,
        200
    );
    let (status, body) = crate::support::http_get(pair.beta.http, "/active").unwrap();
    assert_eq!(status, 503);
    assert!(
        body.contains(&format!("127.0.0.1:{}", pair.alpha.grpc)),
        "{body}"
    );
    // The metrics say what was replicated.
    assert!(pair.beta.metric("standin_events_replicated_total").unwrap() >= 5.0);
    assert!(pair.beta.metric("standin_bytes_replicated_total").unwrap() >= (50 << 20) as f64);
    assert_eq!(pair.beta.metric("standin_lag_events").unwrap(), 0.0);

    // A clean stop (SIGTERM) ends with a final capture and a flush.
    let mut pair = pair;
    assert!(pair.beta.stop(), "the passive stops cleanly on SIGTERM");
    assert!(
        pair.beta.log_text().contains("shutting down"),
        "{}",
        pair.beta.log_text()
    );
}

/// A passive whose history is not the active's (it recorded on its own) gets a
/// divergence answer: it rejoins — its own events go to quarantine (with their
/// content), its folder goes back to the common point — and then follows the active.
#[test]
fn a_divergent_passive_quarantines_its_own_events_and_follows() {
    let root = tempfile::tempdir().unwrap();
    let mut alpha =
        crate::support::NodeProcess::configure(root.path(), "alpha", "active", None, "");
    // beta first runs as an active of its own and records a different history.
    let mut beta = crate::support::NodeProcess::configure(root.path(), "beta", "active", None, "");
    std::fs::write(beta.folder.join("own.txt"), b"beta's own change").unwrap();
    beta.start();
    wait_until("beta to record its own change", || beta.head_seq() >= 1);
    beta.stop();
    alpha.start();
    std::fs::write(alpha.folder.join("alpha.txt"), b"alpha's change").unwrap();
    std::fs::write(alpha.folder.join("alpha2.txt"), b"another").unwrap();
    wait_until("alpha to record", || alpha.head_seq() >= 2);
    // Now beta follows alpha.
    let config = std::fs::read_to_string(&beta.config).unwrap().replace(
        "role = \"active\"",
        &format!(
            "role = \"passive\"\npeer_url = \"http://127.0.0.1:{}\"\nreplication_period = 1",
            alpha.grpc
        ),
    );
    std::fs::write(&beta.config, config).unwrap();
    beta.start();
    wait_until("beta to follow alpha", || {
        beta.folder.join("alpha2.txt").exists() && beta.head_seq() == alpha.head_seq()
    });
    assert!(
        !beta.folder.join("own.txt").exists(),
        "beta's folder went back to the common point"
    );
    let output = beta.cli(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(status["quarantined_events"].as_u64(), Some(1), "{status}");
    let quarantined = std::fs::read_dir(beta.data_dir.join("quarantine"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(
        std::fs::read(quarantined.join("files/1/own.txt")).unwrap(),
        b"beta's own change",
        "nothing lost"
    );
    assert!(
        beta.log_text().contains("quarantine"),
        "{}",
        beta.log_text()
    );
    let output = beta.cli(&["verify"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}
