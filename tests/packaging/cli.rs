//! Quick checks of the CLI the install walk-through relies on: `init-secret` makes a
//! missing directory (private), `--log-format json` / `STANDIN_LOG_FORMAT` write one
//! JSON object per line, `STANDIN_LOG` filters and a bad filter is named.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

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

/// `standin status` against nothing, with a secret others can read: the warning about
/// the secret is logged, then the call fails.
fn status_with_open_secret(configure: impl FnOnce(&mut Command)) -> (bool, String) {
    let root = tempfile::tempdir().unwrap();
    let secret = root.path().join("pair.secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut command = Command::new(standin());
    command
        .env_remove("STANDIN_LOG")
        .env_remove("STANDIN_LOG_FORMAT")
        .args(["status", "--url", "http://127.0.0.1:1", "--secret-file"])
        .arg(&secret);
    configure(&mut command);
    let output = command.output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn json_warning(stderr: &str) -> Option<serde_json::Value> {
    stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| {
            line["message"]
                .as_str()
                .is_some_and(|message| message.contains("readable by other users"))
        })
}

#[test]
fn json_logs_by_flag_or_environment() {
    let (ok, stderr) = status_with_open_secret(|command| {
        command.args(["--log-format", "json"]);
    });
    assert!(!ok, "status against a closed port must fail");
    let line = json_warning(&stderr).unwrap_or_else(|| panic!("no JSON warning in {stderr}"));
    assert_eq!(line["level"], "WARN");
    assert!(
        line["file"].as_str().unwrap().ends_with("pair.secret"),
        "{line}"
    );
    assert!(
        line["timestamp"].is_string() && line["target"].is_string(),
        "{line}"
    );

    let (_, stderr) = status_with_open_secret(|command| {
        command.env("STANDIN_LOG_FORMAT", "json");
    });
    assert!(json_warning(&stderr).is_some(), "{stderr}");

    let (_, stderr) = status_with_open_secret(|_| {});
    assert!(
        json_warning(&stderr).is_none(),
        "text is the default: {stderr}"
    );
    assert!(stderr.contains("readable by other users"), "{stderr}");

    let bad = Command::new(standin())
        .args(["--log-format", "xml", "status"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
}

#[test]
fn standin_log_filters_and_names_a_bad_filter() {
    let (_, stderr) = status_with_open_secret(|command| {
        command.env("STANDIN_LOG", "error");
    });
    assert!(!stderr.contains("readable by other users"), "{stderr}");

    let (_, stderr) = status_with_open_secret(|command| {
        command.env("STANDIN_LOG", "info,standin=nonsense");
    });
    assert!(stderr.contains("STANDIN_LOG"), "{stderr}");
    assert!(
        stderr.contains("readable by other users"),
        "the default applies: {stderr}"
    );
}
