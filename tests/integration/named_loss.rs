//! The named-loss report after a failover: a partition long enough for the passive to
//! take over, with writes on both sides; once it heals, `status` on both nodes (text
//! and `--json`) and `/metrics` say when, which epoch, what the new active knew of the
//! old one, and how many events the old active kept in quarantine, naming their
//! paths — until `standin failover-ack`, which clears it on both.

use std::time::Duration;

use crate::proxy::{partitionable_pair, Link};
use crate::support::{in_sync, status_json, wait_within};

#[test]
fn after_a_partition_both_nodes_name_what_was_kept_aside_until_acknowledged() {
    let root = tempfile::tempdir().unwrap();
    let (proxy, mut alpha, beta) = partitionable_pair(root.path());
    let long = Duration::from_secs(120);
    wait_within("alpha to be active", long, || alpha.is_active());
    std::fs::write(alpha.folder.join("shared.txt"), b"both have this").unwrap();
    wait_within("beta to follow", long, || in_sync(&alpha, &beta));
    for node in [&alpha, &beta] {
        assert!(
            status_json(node)["last_failover"].is_null(),
            "no failover yet"
        );
    }

    // Cut: alpha records alone, beta takes over and records too.
    proxy.set(Link::Partitioned);
    let head = alpha.head_seq();
    std::fs::write(alpha.folder.join("alone-1.txt"), b"only alpha").unwrap();
    std::fs::create_dir(alpha.folder.join("dir")).unwrap();
    std::fs::write(alpha.folder.join("dir/alone-2.txt"), b"only alpha too").unwrap();
    wait_within("beta to take over", long, || beta.is_active());
    std::fs::write(beta.folder.join("new.txt"), b"after the takeover").unwrap();
    wait_within("both sides to record", long, || {
        alpha.folder.join("dir/alone-2.txt").exists()
            && alpha.head_seq() > head + 1
            && beta.head_seq() > head + 1
    });
    // Let alpha's capture take the second file before the link heals.
    std::thread::sleep(Duration::from_millis(1500));
    proxy.heal();
    wait_within("alpha to rejoin and follow beta", long, || {
        beta.is_active() && !alpha.is_active() && in_sync(&beta, &alpha)
    });

    // Both nodes know the whole story (the halves meet through the heartbeats).
    let kept_on_alpha = status_json(&alpha)["quarantined_events"].as_u64().unwrap();
    assert!(kept_on_alpha >= 2, "alpha kept its writes aside");
    wait_within("both nodes to report the failover", long, || {
        [&alpha, &beta].iter().all(|node| {
            status_json(node)["last_failover"]["kept"]["events"].as_u64() == Some(kept_on_alpha)
        })
    });
    for node in [&alpha, &beta] {
        let status = status_json(node);
        let report = &status["last_failover"];
        assert_eq!(report["epoch"], 2, "{status}");
        assert_eq!(report["promoted_node"], "beta", "{status}");
        assert_eq!(report["old_active"], "alpha", "{status}");
        assert!(
            report["old_active_head_seq"].as_u64().unwrap() >= head,
            "{status}"
        );
        let summary = report["summary"].as_str().unwrap();
        assert!(
            summary.contains(" UTC, epoch 2: beta took over from alpha at its head ")
                && summary.contains(&format!(
                    "{kept_on_alpha} events kept in quarantine on alpha: "
                ))
                && summary.contains("alone-1.txt")
                && summary.contains("dir/alone-2.txt"),
            "{summary}"
        );
        assert!(
            !summary.contains("new.txt") && !summary.contains("events,"),
            "only alpha's paths, no group marker: {summary}"
        );
        // The table, on either node: a row for each column.
        let table = String::from_utf8_lossy(&node.cli(&["status"]).stdout).into_owned();
        eprintln!("status on {}:\n{table}", node.name);
        let row = table
            .lines()
            .find(|line| line.starts_with("last failover"))
            .unwrap_or_else(|| panic!("{table}"));
        assert_eq!(
            row.matches("kept in quarantine on alpha").count(),
            2,
            "{table}"
        );
        assert!(row.contains("standin failover-ack"), "{table}");
        assert_eq!(node.metric("standin_last_failover_epoch"), Some(2.0));
        assert_eq!(
            node.metric("standin_last_failover_kept_events"),
            Some(kept_on_alpha as f64)
        );
    }

    // Acknowledged on one node: cleared on both.
    let output = beta.cli(&["failover-ack", "--epoch", "2"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("acknowledged the failover of epoch 2"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    wait_within("both nodes to stop showing it", long, || {
        [&alpha, &beta].iter().all(|node| {
            status_json(node)["last_failover"].is_null()
                && node.metric("standin_last_failover_epoch") == Some(0.0)
        })
    });
    let table = String::from_utf8_lossy(&alpha.cli(&["status"]).stdout).into_owned();
    assert!(
        table
            .lines()
            .any(|line| line.starts_with("last failover") && !line.contains("epoch")),
        "{table}"
    );
    // Nothing left to acknowledge: refused.
    let again = alpha.cli(&["failover-ack"]);
    assert_eq!(again.status.code(), Some(3), "{again:?}");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("there is no failover to acknowledge"),
        "{again:?}"
    );
    // The acknowledgement is kept across a restart.
    alpha.stop();
    alpha.start();
    wait_within("alpha to follow again", long, || in_sync(&beta, &alpha));
    assert!(status_json(&alpha)["last_failover"].is_null());
}
