//! The command line against a running pair: status, verify, log, init-secret, demo.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use crate::support::{standin, Pair};

#[test]
fn status_verify_and_log_against_a_running_pair() {
    let pair = Pair::new("replication_period = 0", true);
    for index in 0..30 {
        std::fs::write(
            pair.alpha.folder.join(format!("record{index:02}.toml")),
            format!("n = {index}\n"),
        )
        .unwrap();
    }
    pair.wait_in_sync();

    // status: a table for people, JSON for scripts.
    let output = pair.beta.cli(&["status"]);
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{table}");
    for field in ["role", "passive", "epoch", "head", "peer", "lag"] {
        assert!(table.contains(field), "{field} missing from:\n{table}");
    }
    assert!(
        table.contains("UNSAFE on a cut link"),
        "peer-only mode says it is unsafe on a cut link:\n{table}"
    );
    let output = pair.beta.cli(&["status", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["role"], "passive");
    assert_eq!(json["head_seq"].as_u64(), Some(pair.alpha.head_seq()));
    assert_eq!(json["lag_events"].as_u64(), Some(0));
    // A client command creates and writes nothing (a monitoring user may run it).
    let never = pair.root.path().join("never-created");
    let copy = pair.root.path().join("client.toml");
    let text = std::fs::read_to_string(&pair.beta.config).unwrap().replace(
        &pair.beta.data_dir.display().to_string(),
        &never.display().to_string(),
    );
    std::fs::write(&copy, text).unwrap();
    let output = Command::new(standin())
        .args(["status", "--config"])
        .arg(&copy)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!never.exists(), "status must not create data_dir");

    // verify: 0 when the folder matches; 1 naming the first differing path when not.
    assert!(pair.beta.cli(&["verify"]).status.success());
    std::fs::write(pair.beta.folder.join("record07.toml"), "tampered\n").unwrap();
    let output = pair.beta.cli(&["verify"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("record07.toml"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );

    // log: a page at a time, with the command for the next page.
    let output = pair.alpha.cli(&["log", "--limit", "10"]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    // Ten events: the files, each capture's group marked by a `Group` event (how many
    // groups the 30 writes make depends on how capture's timing meets the writer's).
    assert_eq!(
        text.lines()
            .filter(|line| line.contains(" file ") || line.contains(" group "))
            .count(),
        10,
        "{text}"
    );
    assert!(text.lines().any(|line| line.contains(" group ")), "{text}");
    assert!(text.contains("standin log --after 10"), "{text}");
    let output = pair.alpha.cli(&["log", "--after", "25", "--json"]);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(
        lines.first().and_then(|event| event["seq"].as_u64()),
        Some(26)
    );
    assert_eq!(lines.len() as u64, pair.alpha.head_seq() - 25);

    // A reader that goes away (`standin log | head`) ends the command quietly: no
    // panic on the closed pipe.
    let mut child = Command::new(standin())
        .args(["log", "--limit", "1000", "--config"])
        .arg(&pair.alpha.config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(output.status.code(), Some(0), "{stderr}");
}

#[test]
fn status_shows_a_sub_second_period_as_it_is() {
    // Whole seconds on the wire read 0.5 as 0, which means "follow" (continuous).
    let pair = Pair::new("replication_period = 0.5", true);
    let output = pair.beta.cli(&["status", "--json"]);
    assert!(output.status.success());
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["replication_period_s"].as_f64(), Some(0.5));
    let output = pair.beta.cli(&["status"]);
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{table}");
    let period = table
        .lines()
        .find(|line| line.trim_start().starts_with("period"))
        .unwrap_or_else(|| panic!("no period line in:\n{table}"));
    // beta's column first (the node asked), then its peer's.
    assert!(
        period["period".len()..].trim_start().starts_with("0.5 s "),
        "{period}"
    );
}

#[test]
fn init_secret_writes_a_private_file_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pair.secret");
    assert!(Command::new(standin())
        .arg("init-secret")
        .arg(&path)
        .status()
        .unwrap()
        .success());
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let output = Command::new(standin())
        .arg("init-secret")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--force"));
}

#[test]
fn the_demo_replicates_a_change_fails_over_fails_back_and_cleans_up() {
    let output = Command::new(standin()).arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("beta has apps/notepad.toml"), "{stdout}");
    assert!(stdout.contains("verify beta: ok"), "{stdout}");
    assert!(stdout.contains("beta took over"), "{stdout}");
    assert!(stdout.contains("took over again"), "{stdout}");
    assert!(stdout.contains("GET /active on alpha: 200"), "{stdout}");
    let dir = stdout
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("standin demo in "))
        .unwrap();
    assert!(
        !std::path::Path::new(dir).exists(),
        "the demo directory is removed"
    );
}
