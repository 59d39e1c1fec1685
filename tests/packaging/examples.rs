//! The example configs and units as shipped (`service/packaging/`; the `deb` test
//! checks the package holds these very files): each example loads with the node's
//! own config loader and passes the checks `serve` makes at start (the preflight)
//! once its paths are moved into a temp dir, the two nodes name
//! each other, every commented-out key is a real key, the units may write where the
//! examples keep their files, and the agent starts with the example environment
//! exactly as its unit starts it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use standin::config::{Config, ConfigError, InitialRole};

use crate::{run_ok, standin, workspace};

fn packaging(path: &str) -> String {
    let path = workspace().join("service/packaging").join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// A machine in a temp dir: the example's absolute paths moved under `root`, the
/// folder made, the secrets made by `standin init-secret` (which creates
/// `etc/standin`), the config written as `etc/standin/standin.toml`.
fn install(example: &str, root: &Path) -> PathBuf {
    let moved = |path: &str| format!("{}{path}", root.display());
    let text = example
        .replace("/srv/standin", &moved("/srv/standin"))
        .replace("/var/lib/standin", &moved("/var/lib/standin"))
        .replace("/etc/standin/", &moved("/etc/standin/"));
    std::fs::create_dir_all(root.join("srv/standin")).unwrap();
    for secret in ["pair.secret", "agent.secret"] {
        let path = root.join("etc/standin").join(secret);
        if !path.exists() {
            run_ok(Command::new(standin()).arg("init-secret").arg(path));
        }
    }
    let config = root.join("etc/standin/standin.toml");
    std::fs::write(&config, text).unwrap();
    config
}

fn port(url: &str) -> u16 {
    url.rsplit_once(':')
        .unwrap()
        .1
        .trim_end_matches('/')
        .parse()
        .unwrap()
}

fn host(url: &str) -> &str {
    url.split("://").nth(1).unwrap().split(':').next().unwrap()
}

#[test]
fn the_example_configs_load_and_name_each_other() {
    let alpha_root = tempfile::tempdir().unwrap();
    let beta_root = tempfile::tempdir().unwrap();
    let alpha = Config::load(&install(
        &packaging("examples/active.toml.example"),
        alpha_root.path(),
    ))
    .unwrap_or_else(|error| panic!("active.toml.example: {error}"));
    let beta = Config::load(&install(
        &packaging("examples/passive.toml.example"),
        beta_root.path(),
    ))
    .unwrap_or_else(|error| panic!("passive.toml.example: {error}"));
    assert_eq!(
        (alpha.node_name.as_str(), alpha.role),
        ("alpha", InitialRole::Active)
    );
    assert_eq!(
        (beta.node_name.as_str(), beta.role),
        ("beta", InitialRole::Passive)
    );
    for (node, other) in [(&alpha, &beta), (&beta, &alpha)] {
        let peer = node.peer_url.as_deref().expect("each node names the other");
        assert_eq!(host(peer), other.node_name, "{}'s peer_url", node.node_name);
        assert_eq!(
            port(peer),
            other.listen.port(),
            "{}'s peer_url",
            node.node_name
        );
        assert!(node.agent_secret_file.is_some());
        let checked =
            standin::config::preflight::run(node, standin::config::preflight::Mode::Serve);
        assert_eq!(
            checked.failure(),
            None,
            "{}: {:?}",
            node.node_name,
            checked.findings
        );
        assert!(node.data_dir.ends_with("var/lib/standin") && node.data_dir.is_dir());
        assert!(node.folder.ends_with("srv/standin"));
    }
    assert!(alpha.preferred && !beta.preferred);
    assert_eq!(alpha.authority, beta.authority);
    assert_eq!(alpha.listen, beta.listen, "the same ports on both machines");
    assert_eq!(alpha.http_listen, beta.http_listen);
}

#[test]
fn every_commented_out_key_is_a_real_key() {
    for name in [
        "examples/active.toml.example",
        "examples/passive.toml.example",
    ] {
        let example = packaging(name);
        let lines: Vec<&str> = example.lines().collect();
        let mut keys = 0;
        for (index, line) in lines.iter().enumerate() {
            let Some(rest) = line.strip_prefix("# ") else {
                continue;
            };
            let Some((key, _)) = rest.split_once(" = ") else {
                continue;
            };
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                continue;
            }
            keys += 1;
            let mut edited = lines.clone();
            edited[index] = rest;
            let root = tempfile::tempdir().unwrap();
            let config = install(&edited.join("\n"), root.path());
            match Config::load(&config) {
                // Accepted, or refused for its value alone (e.g. a TLS file that does
                // not exist here, witness mode without its agents).
                Ok(_) | Err(ConfigError::Key { .. }) => {}
                Err(error) => panic!("{name}: uncommenting `{rest}`: {error}"),
            }
        }
        assert!(keys >= 10, "{name}: only {keys} commented-out keys found");
    }
}

#[test]
fn the_units_write_where_the_examples_keep_their_files() {
    let unit = packaging("systemd/standin.service");
    let lines: Vec<&str> = unit.lines().collect();
    let has = |line: &str| lines.contains(&line);
    assert!(has(
        "ExecStart=/usr/bin/standin serve --config /etc/standin/standin.toml"
    ));
    assert!(has("ProtectSystem=strict"));
    assert!(has("StateDirectory=standin"), "data_dir /var/lib/standin");
    for name in [
        "examples/active.toml.example",
        "examples/passive.toml.example",
    ] {
        let example: toml::Table = toml::from_str(&packaging(name)).unwrap();
        assert_eq!(example["data_dir"].as_str(), Some("/var/lib/standin"));
        let folder = example["folder"].as_str().unwrap();
        assert!(
            has(&format!("ReadWritePaths=-{folder}")),
            "{name}: {folder}"
        );
        let agent_secret = example["agent_secret_file"].as_str().unwrap();
        let agent_unit = packaging("systemd/standin-agent.service");
        assert!(agent_unit.contains(&format!("LoadCredential=agent.secret:{agent_secret}\n")));
    }
    // `systemctl reload` sends SIGHUP, which the node takes as "read the config again".
    assert!(has("ExecReload=/bin/kill -HUP $MAINPID"));
    assert!(
        has("RestartPreventExitStatus=2"),
        "a bad config is not retried"
    );
}

/// `VAR=value` lines of an environment file (quotes removed); with `all`, the
/// commented-out `#STANDIN_...` lines too.
fn environment(text: &str, all: bool) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| match line.strip_prefix('#') {
            Some(rest) if all && rest.starts_with("STANDIN_") => Some(rest),
            Some(_) => None,
            None => Some(line),
        })
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.to_string(), value.trim_matches('"').to_string()))
        .collect()
}

#[test]
fn the_agent_starts_with_the_example_environment() {
    let unit = packaging("systemd/standin-agent.service");
    let exec = unit
        .lines()
        .find_map(|line| line.strip_prefix("ExecStart=/usr/bin/standin "))
        .expect("the agent unit runs /usr/bin/standin");
    assert!(unit.contains("EnvironmentFile=/etc/standin/agent.env\n"));
    let credentials = tempfile::tempdir().unwrap();
    run_ok(
        Command::new(standin())
            .arg("init-secret")
            .arg(credentials.path().join("agent.secret")),
    );
    let args: Vec<String> = exec
        .split_whitespace()
        .map(|arg| arg.replace("%d", &credentials.path().to_string_lossy()))
        .collect();
    let example = packaging("examples/agent.env.example");
    for all in [false, true] {
        let variables = environment(&example, all);
        assert!(variables.iter().any(|(key, _)| key == "STANDIN_AGENT_NAME"));
        let mut command = Command::new(standin());
        for (key, _) in std::env::vars() {
            if key.starts_with("STANDIN_") {
                command.env_remove(key);
            }
        }
        let mut child = command
            .args(&args)
            .envs(variables.iter().map(|(key, value)| (key, value)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(1500) {
            if let Some(status) = child.try_wait().unwrap() {
                let output = child.wait_with_output().unwrap();
                panic!(
                    "the agent (all = {all}) exited {status}: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.kill().unwrap();
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("agent reporting"), "{stderr}");
        if all {
            assert!(
                stderr
                    .lines()
                    .next()
                    .is_some_and(|line| line.starts_with('{')),
                "json: {stderr}"
            );
        }
    }
}
