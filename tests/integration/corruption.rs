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
        if !path.is_file() {
            continue;
        }
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

/// The pack file holding `marker` in `node`'s chunk store.
fn pack_holding(node: &crate::support::NodeProcess, marker: &[u8]) -> std::path::PathBuf {
    std::fs::read_dir(node.data_dir.join("chunks"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| {
            std::fs::read(path)
                .is_ok_and(|bytes| bytes.windows(marker.len()).any(|window| window == marker))
        })
        .expect("a pack holds the marker")
}

/// A chunk removed from the data directory of a stopped node (its pack file deleted)
/// is found when the node starts: it refuses to start, naming the pack file, rather
/// than serving a history whose content it no longer has.
#[test]
fn a_removed_chunk_is_found_at_start_with_its_path() {
    let mut pair = Pair::new("replication_period = 1", false);
    std::fs::write(pair.alpha.folder.join("good.txt"), b"fine").unwrap();
    pair.alpha.start();
    wait_until("alpha to record good.txt", || pair.alpha.head_seq() >= 1);
    pair.alpha.stop();
    // Every start opens a new pack: the victim's content lands in a pack of its own.
    pair.alpha.start();
    let marker = vec![0x77u8; 3000];
    std::fs::write(pair.alpha.folder.join("victim.bin"), &marker).unwrap();
    wait_until("alpha to record victim.bin", || pair.alpha.head_seq() >= 2);
    pair.alpha.stop();
    let pack = pack_holding(&pair.alpha, &marker);
    std::fs::remove_file(&pack).unwrap();

    let output = std::process::Command::new(crate::support::standin())
        .args(["serve", "--config"])
        .arg(&pair.alpha.config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&pack.display().to_string()) && stderr.contains("missing"),
        "{stderr}"
    );
}

/// A chunk removed under a running active (its pack file deleted) is found when a
/// passive asks for it: the active refuses to serve it, naming the pack file, the
/// passive reports it and applies nothing of the batch — never a wrong file.
#[test]
fn a_removed_chunk_is_refused_at_read_and_nothing_wrong_is_applied() {
    let mut pair = Pair::new("replication_period = 1", false);
    std::fs::write(pair.alpha.folder.join("good.txt"), b"fine").unwrap();
    pair.alpha.start();
    wait_until("alpha to record good.txt", || pair.alpha.head_seq() >= 1);
    pair.alpha.stop();
    pair.alpha.start();
    let marker = vec![0x66u8; 3000];
    std::fs::write(pair.alpha.folder.join("victim.bin"), &marker).unwrap();
    wait_until("alpha to record victim.bin", || pair.alpha.head_seq() >= 2);
    let pack = pack_holding(&pair.alpha, &marker);
    std::fs::remove_file(&pack).unwrap();

    pair.beta.start();
    wait_until("beta to report the removed chunk", || {
        let output = pair.beta.cli(&["status", "--json"]);
        let text = String::from_utf8_lossy(&output.stdout);
        text.contains("the pack file is missing") && text.contains(&pack.display().to_string())
    });
    assert!(
        pair.alpha
            .log_text()
            .contains("refusing to serve corrupt data"),
        "{}",
        pair.alpha.log_text()
    );
    assert!(
        !pair.beta.folder.join("victim.bin").exists(),
        "the file whose content is gone was not applied"
    );
    assert!(
        pair.beta.head_seq() < 2,
        "nothing of the failed batch was applied"
    );
    assert!(
        pair.beta.cli(&["verify"]).status.success(),
        "beta's folder still matches its own log"
    );
}
