//! Quick checks of the CLI the install walk-through relies on: `init-secret` makes a
//! missing directory (private), `--log-format json` / `STANDIN_LOG_FORMAT` write one
//! JSON object per line, `STANDIN_LOG` filters and a bad filter is named (seen on
//! `standin agent`, which logs without a node to talk to).

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{run_ok, standin};

#[test]
fn init_secret_creates_a_missing_directory_private() {
    let root = tempfile::tempdir().unwrap();
    let secret = root.path().join("etc/standin/pair.secret");
    run_ok(Command::new(standin()).arg("init-secret").arg(&secret));
    for dir in [root.path().join("etc/standin"), root.path().join("etc")] {
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o700, 0o700, "{}: {mode:o}", dir.display());
        assert_eq!(
            mode & 0o027,
            0,
            "{}: {mode:o} (0750 at most)",
            dir.display()
        );
    }
    let mode = std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // A second run refuses (exit 2) and leaves the secret alone.
    let before = std::fs::read(&secret).unwrap();
    let again = Command::new(standin())
        .arg("init-secret")
        .arg(&secret)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2), "{again:?}");
    assert_eq!(std::fs::read(&secret).unwrap(), before);
    // A parent that cannot be made is a failure (exit 1), not a silent success.
    let blocked = root.path().join("file");
    std::fs::write(&blocked, b"not a directory").unwrap();
    let failed = Command::new(standin())
        .arg("init-secret")
        .arg(blocked.join("sub/pair.secret"))
        .output()
        .unwrap();
    assert_eq!(failed.status.code(), Some(1), "{failed:?}");
}

/// `standin agent` reporting to a closed port for a second, as configured: what it
/// logged on stderr.
fn agent_log(configure: impl FnOnce(&mut Command)) -> String {
    let root = tempfile::tempdir().unwrap();
    let secret = root.path().join("agent.secret");
    run_ok(Command::new(standin()).arg("init-secret").arg(&secret));
    let mut command = Command::new(standin());
    command
        .env_remove("STANDIN_LOG")
        .env_remove("STANDIN_LOG_FORMAT")
        .args([
            "agent",
            "--name",
            "ts1",
            "--dispatch-url",
            "http://127.0.0.1:1",
        ])
        .arg("--secret-file")
        .arg(&secret)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    configure(&mut command);
    let mut child = command.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json_start(stderr: &str) -> Option<serde_json::Value> {
    stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| line["message"] == "agent reporting")
}

#[test]
fn json_logs_by_flag_or_environment() {
    let stderr = agent_log(|command| {
        command.args(["--log-format", "json"]);
    });
    let line = json_start(&stderr).unwrap_or_else(|| panic!("no JSON line in {stderr}"));
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["name"], "ts1");
    assert!(
        line["timestamp"].is_string() && line["target"].is_string(),
        "{line}"
    );
    assert!(
        stderr.lines().all(|line| line.starts_with('{')),
        "every line JSON: {stderr}"
    );

    let stderr = agent_log(|command| {
        command.env("STANDIN_LOG_FORMAT", "json");
    });
    assert!(json_start(&stderr).is_some(), "{stderr}");

    let stderr = agent_log(|_| {});
    assert!(
        json_start(&stderr).is_none(),
        "text is the default: {stderr}"
    );
    assert!(stderr.contains("agent reporting"), "{stderr}");

    let bad = Command::new(standin())
        .args(["--log-format", "xml", "status"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
}

#[test]
fn standin_log_filters_and_names_a_bad_filter() {
    let stderr = agent_log(|command| {
        command.env("STANDIN_LOG", "error");
    });
    assert!(!stderr.contains("agent reporting"), "{stderr}");

    let stderr = agent_log(|command| {
        command.env("STANDIN_LOG", "info,standin=nonsense");
    });
    assert!(stderr.contains("STANDIN_LOG"), "{stderr}");
    assert!(
        stderr.contains("agent reporting"),
        "the default applies: {stderr}"
    );
}
