//! The passive keeps large files' content by reference (in the folder's files), and a
//! promoted passive copies that content into its chunk store in the background: an
//! application rewriting a large file in place after the promotion loses nothing a
//! fresh passive then needs.

use std::os::unix::fs::FileExt;

use crate::support::{
    http_get, poll_for, pseudo_random, tree, wait_until, NodeProcess, Pair, LIMIT,
};

const TIMING: &str =
    "heartbeat_interval_ms = 100\nfailover_after_ms = 1500\nreplication_period = 0\n";

fn is_active(node: &NodeProcess) -> bool {
    http_get(node.http, "/active").is_some_and(|(status, _)| status == 200)
}

fn status_json(node: &NodeProcess) -> serde_json::Value {
    let output = node.cli(&["status", "--json"]);
    assert!(
        output.status.success(),
        "status on {}: {}",
        node.name,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn a_promoted_passive_copies_referenced_content_in_and_a_fresh_passive_gets_every_version() {
    let mut pair = Pair::with_extra(TIMING, TIMING, true);
    // Large files (kept by reference on beta) and a small one (in its packs).
    let large = [("big-a.bin", 68 << 20, 1), ("big-b.bin", 5 << 20, 2)];
    for (name, size, seed) in large {
        std::fs::write(pair.alpha.folder.join(name), pseudo_random(size, seed)).unwrap();
    }
    std::fs::write(pair.alpha.folder.join("small.txt"), b"small").unwrap();
    pair.wait_in_sync();
    let kept = status_json(&pair.beta);
    let by_reference = kept["by_reference_bytes"].as_u64().unwrap();
    assert!(
        by_reference >= (73 << 20) * 9 / 10,
        "beta keeps the large files by reference: {kept}"
    );
    assert_eq!(
        pair.beta.metric("standin_bytes_by_reference"),
        Some(by_reference as f64)
    );
    let text = String::from_utf8_lossy(&pair.beta.cli(&["status"]).stdout).into_owned();
    assert!(text.contains("by reference"), "{text}");
    // The "content" row says how each keeps content (DESIGN: "say which in status").
    let content = kept["content_mode"].as_str().unwrap_or_default();
    assert!(content.starts_with("by reference"), "{kept}");
    let shown = status_json(&pair.alpha);
    let content = shown["content_mode"].as_str().unwrap_or_default();
    assert!(
        content.starts_with("chunk store; busy files read"),
        "{shown}"
    );

    // alpha dies; beta takes over and its applications start at once.
    pair.alpha.kill();
    wait_until("beta to take over", || is_active(&pair.beta));
    let head_at_promotion = pair.beta.head_seq();

    // The background copy ends with nothing left by reference, nothing lost.
    wait_until("beta to copy its referenced chunks in", || {
        pair.beta.metric("standin_chunks_by_reference") == Some(0.0)
            && pair
                .beta
                .log_text()
                .contains("every chunk kept by reference is now in the chunk store")
    });
    let status = status_json(&pair.beta);
    assert_eq!(status["role"], "active");
    assert_eq!(status["by_reference_chunks"].as_u64(), Some(0), "{status}");
    assert_eq!(
        status["lost_by_reference_chunks"].as_u64(),
        Some(0),
        "{status}"
    );
    assert!(
        status["chunk_bytes"].as_u64().unwrap() >= by_reference,
        "the packs now hold the content: {status}"
    );

    // An application rewrites the start of a large file in place (same inode).
    let path = pair.beta.folder.join("big-a.bin");
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&pseudo_random(2 << 20, 99), 0).unwrap();
    file.sync_all().unwrap();
    drop(file);
    wait_until("beta to record the rewrite", || {
        pair.beta.head_seq() > head_at_promotion
    });

    // A fresh passive follows beta from the start: it needs the old version too.
    let mut gamma = NodeProcess::configure(
        pair.root.path(),
        "gamma",
        "passive",
        Some(pair.beta.grpc),
        TIMING,
    );
    gamma.start();
    let matched = poll_for(LIMIT, || {
        let head = pair.beta.head_seq();
        head == gamma.head_seq() && tree(&pair.beta.folder) == tree(&gamma.folder)
    });
    assert!(
        matched,
        "gamma did not catch up with beta; its log:\n{}",
        gamma.log_text()
    );
    let output = gamma.cli(&["verify"]);
    assert!(
        output.status.success(),
        "verify on gamma: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !gamma.log_text().contains("is not in the chunk store"),
        "gamma was never told a chunk is missing:\n{}",
        gamma.log_text()
    );
    assert_eq!(
        pair.beta.metric("standin_chunks_lost_by_reference"),
        Some(0.0)
    );
}
