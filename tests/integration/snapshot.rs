//! A passive whose head was compacted away on the active starts again from a snapshot
//! and then follows the log.

use crate::support::{tree, wait_until, Pair};

#[test]
fn a_passive_behind_the_compacted_log_bootstraps_from_a_snapshot() {
    let compaction = "log_retention_events = 5\ncompaction_interval_s = 1\n";
    let mut pair = Pair::with_extra(
        compaction,
        &format!("replication_period = 0\n{compaction}"),
        false,
    );
    pair.alpha.start();
    std::fs::create_dir(pair.alpha.folder.join("records")).unwrap();
    for index in 0..40 {
        std::fs::write(
            pair.alpha.folder.join(format!("records/r{index:02}")),
            format!("record {index}\n"),
        )
        .unwrap();
    }
    wait_until("alpha to record and compact", || {
        pair.alpha.head_seq() >= 41
            && pair.alpha.metric("standin_log_base_seq").unwrap_or(0.0) as u64 >= 30
    });
    // Something the passive has that the active's state does not: the snapshot removes it.
    std::fs::write(pair.beta.folder.join("stray.txt"), b"left over").unwrap();
    pair.beta.start();
    pair.wait_in_sync();
    assert!(!pair.beta.folder.join("stray.txt").exists());
    assert!(
        pair.beta.log_text().contains("snapshot"),
        "{}",
        pair.beta.log_text()
    );
    // From there it follows the log.
    std::fs::write(
        pair.alpha.folder.join("records/after"),
        b"after the snapshot",
    )
    .unwrap();
    pair.wait_in_sync();
    assert_eq!(tree(&pair.alpha.folder), tree(&pair.beta.folder));
    pair.assert_verified();
    let output = pair.alpha.cli(&["log", "--after", "0"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("compacted away"));
}
