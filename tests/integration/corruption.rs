//! Corrupt content on the active is never applied: the active refuses to serve a chunk
//! that does not match its hash, the passive reports it and keeps its folder unchanged.

use crate::support::{wait_until, Pair};

#[test]
fn a_corrupted_chunk_is_refused_and_reported_with_the_folder_unchanged() {
    let mut pair = Pair::new("replication_period = 1", false);
    pair.alpha.start();
    std::fs::write(pair.alpha.folder.join("good.txt"), b"fine").unwrap();
    let marker = vec![0x5au8; 3000];
    std::fs::write(pair.alpha.folder.join("victim.bin"), &marker).unwrap();
    wait_until("alpha to record both files", || pair.alpha.head_seq() >= 2);

    // Flip one byte of the victim's chunk in alpha's pack files.
    let mut flipped = false;
    for entry in std::fs::read_dir(pair.alpha.data_dir.join("chunks")).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        if let Some(at) = bytes
            .windows(marker.len())
            .position(|window| window == marker.as_slice())
        {
            bytes[at + 100] ^= 0xff;
            std::fs::write(&path, bytes).unwrap();
            flipped = true;
        }
    }
    assert!(flipped, "found the victim's chunk");

    pair.beta.start();
    wait_until("beta to report the corrupt chunk", || {
        let output = pair.beta.cli(&["status", "--json"]);
        String::from_utf8_lossy(&output.stdout).contains("does not match its content")
    });
    assert!(pair.beta.metric("standin_pull_errors_total").unwrap_or(0.0) >= 1.0);
    assert!(
        !pair.beta.folder.join("victim.bin").exists(),
        "the corrupt file was not applied"
    );
    assert_eq!(
        pair.beta.head_seq(),
        0,
        "nothing of the failed batch was applied"
    );
    assert!(
        pair.alpha
            .log_text()
            .contains("refusing to serve corrupt data"),
        "{}",
        pair.alpha.log_text()
    );
    let output = pair.beta.cli(&["verify"]);
    assert!(
        output.status.success(),
        "beta's folder still matches its own log"
    );
}

/// A damaged log file (sled can come back short or empty from one without an error)
/// is found at start: the node refuses to start, naming the data directory, instead of
/// silently recording the folder again as a new history.
#[test]
fn a_truncated_log_is_found_at_start() {
    let mut pair = Pair::new("replication_period = 1", false);
    for index in 0..30 {
        std::fs::write(
            pair.alpha.folder.join(format!("r{index}")),
            format!("record {index}"),
        )
        .unwrap();
    }
    pair.alpha.start();
    wait_until("alpha to record", || pair.alpha.head_seq() >= 30);
    pair.alpha.stop();
    let db = pair.alpha.data_dir.join("db").join("db");
    let size = std::fs::metadata(&db).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&db)
        .unwrap()
        .set_len(size / 2)
        .unwrap();
    let output = std::process::Command::new(crate::support::standin())
        .args(["serve", "--config"])
        .arg(&pair.alpha.config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("the log is damaged")
            && stderr.contains(&pair.alpha.data_dir.display().to_string()),
        "{stderr}"
    );
}
