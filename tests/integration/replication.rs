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
    let pair = Pair::new("replication_period = 0", true);
    exercise(&pair);
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
    pair.beta.stop();
    assert!(
        pair.beta.log_text().contains("shutting down"),
        "{}",
        pair.beta.log_text()
    );
}
