//! A bad config is refused at start with the key and the reason, exit status 2 —
//! by `serve` and by `check-config` alike (one table of cases for both: they run the
//! same checks), and `check-config` passes a good one.

use std::process::Command;

use crate::support::standin;

/// `standin serve --config FILE` with `config` (ROOT replaced by a temp dir holding a
/// folder and secret files): the exit code and stderr.
fn serve_with(config: &str) -> (i32, String) {
    let (code, _, stderr) = standin_with(&["serve", "--config"], config);
    (code, stderr)
}

/// `standin ARGS FILE` with `config` written to FILE: exit code, stdout, stderr.
fn standin_with(args: &[&str], config: &str) -> (i32, String, String) {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("folder")).unwrap();
    let secret = root.path().join("pair.secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
    let agent_secret = root.path().join("agent.secret");
    std::fs::write(&agent_secret, "fedcba9876543210fedcba9876543210\n").unwrap();
    let readable = root.path().join("readable.secret");
    std::fs::write(&readable, "00112233445566778899aabbccddeeff\n").unwrap();
    let weak = root.path().join("weak.secret");
    std::fs::write(&weak, "aaaaaaaaaaaaaaaa\n").unwrap();
    let script = root.path().join("hook.sh");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    for file in [&secret, &agent_secret, &weak] {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    std::fs::set_permissions(&readable, std::fs::Permissions::from_mode(0o644)).unwrap();
    let text = config.replace("ROOT", &root.path().display().to_string());
    let path = root.path().join("standin.toml");
    std::fs::write(&path, text).unwrap();
    let output = Command::new(standin())
        .args(args)
        .arg(&path)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

const GOOD: &str = r#"
node_name = "alpha"
folder = "ROOT/folder"
data_dir = "ROOT/data"
listen = "127.0.0.1:0"
role = "active"
secret_file = "ROOT/pair.secret"
"#;

#[test]
fn check_config_passes_a_good_config() {
    let good = format!("{GOOD}\non_promote = \"ROOT/hook.sh --promoted\"\non_demote = \"logger -t standin demoted\"\nagent_secret_file = \"ROOT/agent.secret\"\n");
    let (code, stdout, stderr) = standin_with(&["check-config"], &good);
    assert_eq!(code, 0, "{stdout}{stderr}");
    for key in [
        "config",
        "secret_file",
        "agent_secret_file",
        "listen",
        "folder",
        "data_dir",
        "on_promote",
        "on_demote",
    ] {
        assert!(
            stdout
                .lines()
                .any(|line| line.starts_with(&format!("ok    {key}: "))),
            "an ok line for {key}: {stdout}"
        );
    }
    assert!(
        stdout.contains("data_dir: ") && stdout.contains("is missing; serve will create it"),
        "{stdout}"
    );
    assert!(stdout.ends_with("serve would start\n"), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
}

#[test]
fn check_config_creates_nothing() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("folder")).unwrap();
    let secret = root.path().join("pair.secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let path = root.path().join("standin.toml");
    std::fs::write(
        &path,
        GOOD.replace("ROOT", &root.path().display().to_string()),
    )
    .unwrap();
    let output = Command::new(standin())
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(
        !root.path().join("data").exists(),
        "data_dir is not created"
    );
}

#[test]
fn each_bad_config_names_its_key_and_exits_2() {
    let cases: Vec<(String, &str, &str)> = vec![
        (
            format!("{GOOD}\nreplicaton_period = 5\n"),
            "replicaton_period",
            "unknown field",
        ),
        (
            GOOD.replace("ROOT/folder", "ROOT/missing"),
            "folder",
            "No such file",
        ),
        (
            GOOD.replace("ROOT/data", "ROOT/pair.secret/data"),
            "data_dir",
            "cannot create",
        ),
        (
            format!("{GOOD}\nreplication_period = -1\n"),
            "replication_period",
            "≥ 0",
        ),
        (
            format!("{GOOD}\nlogin_workers = 0\n"),
            "login_workers",
            "between 1 and 256",
        ),
        (
            format!("{GOOD}\nlogin_backoff_ms = 5000\nlogin_backoff_max_ms = 1000\n"),
            "login_backoff_max_ms",
            "between 5000 and",
        ),
        (
            format!("{GOOD}\npeer_url = \"beta:7600\"\n"),
            "peer_url",
            "http://",
        ),
        (
            GOOD.replace("ROOT/data", "ROOT/folder/data"),
            "data_dir",
            "inside folder",
        ),
        (
            GOOD.replace("role = \"active\"", "role = \"passive\""),
            "peer_url",
            "needs the active",
        ),
        (
            GOOD.replace("127.0.0.1:0", "nowhere"),
            "listen",
            "host:port",
        ),
        (
            GOOD.replace("ROOT/pair.secret", "ROOT/no.secret"),
            "secret_file",
            "No such file",
        ),
        (
            format!("{GOOD}\nhttp_listen = \"127.0.0.1:7681\"\n")
                .replace("127.0.0.1:0", "127.0.0.1:7681"),
            "http_listen",
            "its own port",
        ),
        (
            format!("{GOOD}\nreplication_period = 1e20\n"),
            "replication_period",
            "at most a day",
        ),
        (
            format!("{GOOD}\nagent_secret_file = \"ROOT/pair.secret\"\n"),
            "agent_secret_file",
            "is the pair's secret",
        ),
        (
            GOOD.replace("ROOT/pair.secret", "ROOT/readable.secret"),
            "secret_file",
            "has mode 644",
        ),
        (
            GOOD.replace("ROOT/pair.secret", "ROOT/weak.secret"),
            "secret_file",
            "too easy to guess",
        ),
        (
            format!("{GOOD}\npeer_url = \"https://127.0.0.1:7999\"\n"),
            "peer_url",
            "no TLS settings",
        ),
        (
            format!("{GOOD}\nauthority = \"witness\"\nagent_secret_file = \"ROOT/agent.secret\"\n"),
            "witness_agents",
            "no agents it cannot tell a dead peer from a cut link",
        ),
        (
            format!("{GOOD}\nauthority = \"witness\"\nwitness_agents = [\"ts1\"]\n"),
            "agent_secret_file",
            "witness mode needs agent_keys_dir (per-agent keys) or agent_secret_file",
        ),
        (
            format!("{GOOD}\nauthority = \"witness\"\nagent_secret_file = \"ROOT/agent.secret\"\nwitness_agents = [\"ts 1\"]\n"),
            "witness_agents",
            "ts 1",
        ),
        (
            format!("{GOOD}\nauthority = \"witness\"\nagent_secret_file = \"ROOT/agent.secret\"\nwitness_agents = [\"ts1\", \"ts1\"]\n"),
            "witness_agents",
            "distinct",
        ),
        (
            format!("{GOOD}\nwitness_agents = [\"ts1\"]\n"),
            "authority",
            "authority is \"peer\"",
        ),
        (
            format!("{GOOD}\nauthority = \"etcd\"\n"),
            "etcd_endpoints",
            "needs at least one endpoint",
        ),
        (
            format!("{GOOD}\nauthority = \"etcd\"\netcd_endpoints = [\"http://127.0.0.1:2379\"]\netcd_lease_ttl_s = 1\n"),
            "etcd_lease_ttl_s",
            "between 2 and 3600",
        ),
        (
            format!("{GOOD}\nauthority = \"quorum\"\n"),
            "authority",
            "is not one of",
        ),
        (
            format!("{GOOD}\nrescan_interval_s = 0\n"),
            "rescan_interval_s",
            "between 1",
        ),
        (
            format!("{GOOD}\non_promote = \"ROOT/missing-hook.sh --now\"\n"),
            "on_promote",
            "no such file",
        ),
        (
            format!("{GOOD}\non_demote = \"ROOT/pair.secret\"\n"),
            "on_demote",
            "not executable",
        ),
        (
            format!("{GOOD}\non_demote = \"no-such-program-for-standin x\"\n"),
            "on_demote",
            "not found in PATH",
        ),
        (
            format!("{GOOD}\ntls_cert_file = \"ROOT/agent.secret\"\ntls_key_file = \"ROOT/agent.secret\"\n"),
            "tls_cert_file",
            "no PEM certificate",
        ),
        (
            format!("{GOOD}\ntls_cert_file = \"ROOT/none.pem\"\ntls_key_file = \"ROOT/agent.secret\"\n"),
            "tls_cert_file",
            "No such file",
        ),
        (
            format!("{GOOD}\nlog_filter = \"info,standin=loud\"\n"),
            "log_filter",
            "not a valid log filter",
        ),
    ];
    for (config, key, reason) in cases {
        let (code, stderr) = serve_with(&config);
        assert_eq!(
            code, 2,
            "config with bad {key} must exit 2; stderr: {stderr}"
        );
        assert!(stderr.contains(key), "the message names {key}: {stderr}");
        assert!(
            stderr.contains(reason),
            "the message says why ({reason}): {stderr}"
        );
        // check-config says the same, without starting anything: a FAIL line naming
        // the key, and exit 2.
        let (code, stdout, stderr) = standin_with(&["check-config"], &config);
        assert_eq!(
            code, 2,
            "check-config of a config with bad {key} must exit 2: {stdout}{stderr}"
        );
        let line = stdout
            .lines()
            .find(|line| line.starts_with("FAIL"))
            .unwrap_or_else(|| panic!("a FAIL line for {key}: {stdout}"));
        assert!(
            line.starts_with(&format!("FAIL  {key}: ")) || line.contains(&format!("`{key}`")),
            "the FAIL line names {key}: {stdout}"
        );
        assert!(
            line.contains(reason),
            "the FAIL line says why ({reason}): {stdout}"
        );
        assert!(stderr.contains(key), "stderr names {key}: {stderr}");
    }
}

#[test]
fn folder_inside_data_dir_is_refused() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("data/folder")).unwrap();
    std::fs::write(
        root.path().join("pair.secret"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    let path = root.path().join("standin.toml");
    std::fs::write(
        &path,
        GOOD.replace("ROOT/folder", "ROOT/data/folder")
            .replace("ROOT", &root.path().display().to_string()),
    )
    .unwrap();
    let output = Command::new(standin())
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("key `folder`") && stderr.contains("inside data_dir"),
        "{stderr}"
    );
}
