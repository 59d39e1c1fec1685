//! Per-agent keys with real processes (issue 19 item 2): the `agent-key` commands;
//! the forged-votes attack as it was done — a client holding one agent's key reports
//! for ts1, ts2 and ts3, voting alpha to alpha and beta to beta, echoing each node's
//! instance and time — against a witness pair with its link cut (never two nodes
//! answering `/active` 200); replayed reports (to the other node, or later) and a
//! report signed with one agent's key naming another are refused; two nodes with
//! different voter sets refuse witness authority; bad keys stop `serve` (exit 2,
//! naming the key); the shared agent secret is warned about, and unused once keys
//! exist.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use standin::site::agent_keys::AgentKey;
use standin::site::report_auth::sign;
use standin_proto::v1 as wire;
use standin_proto::v1::agent_client::AgentClient;

use crate::proxy::{proxied_pair, Proxy};
use crate::support::{sample_authority, standin, wait_until, NodeProcess, PairSpec};

fn run(args: &[&str]) -> Output {
    Command::new(standin()).args(args).output().unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// `standin agent-key add NAME --dir DIR`, which must succeed.
fn add_key(dir: &Path, name: &str) -> PathBuf {
    let output = run(&["agent-key", "add", name, "--dir", &dir.to_string_lossy()]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    dir.join(format!("{name}.key"))
}

struct KeyedAgent(Child);

impl Drop for KeyedAgent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `standin agent` with its own key, reporting straight to `urls`.
fn keyed_agent(root: &Path, name: &str, urls: &str, key: &Path) -> KeyedAgent {
    let child = Command::new(standin())
        .args(["agent", "--name", name, "--dispatch-url", urls])
        .args(["--interval-ms", "200", "--sessions-command", "echo 0"])
        .args(["--address", &format!("{name}.example:3389")])
        .arg("--key-file")
        .arg(key)
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(root.join(format!("{name}.log"))).unwrap(),
        ))
        .spawn()
        .unwrap();
    KeyedAgent(child)
}

/// A witness pair whose nodes know the agents by their keys, the pair link through
/// two proxies (alpha → beta, beta → alpha) that can be cut.
struct KeyedPair {
    root: tempfile::TempDir,
    alpha: NodeProcess,
    beta: NodeProcess,
    keys: PathBuf,
    to_beta: Proxy,
    to_alpha: Proxy,
}

fn witness_config(keys: &Path, agents: &str, window_ms: u64) -> String {
    format!(
        "heartbeat_interval_ms = 100\nfailover_after_ms = 3000\nreplication_period = 0\nagent_keys_dir = \"{}\"\nauthority = \"witness\"\nwitness_agents = [{agents}]\nwitness_window_ms = {window_ms}\n",
        keys.display()
    )
}

impl KeyedPair {
    /// Keys ts1, ts2, ts3 in one directory both nodes read (as if copied); beta's
    /// witness window is `beta_window_ms` (alpha's 1500).
    fn new(beta_window_ms: u64) -> KeyedPair {
        let root = tempfile::tempdir().unwrap();
        let keys = root.path().join("agent-keys");
        for name in ["ts1", "ts2", "ts3"] {
            add_key(&keys, name);
        }
        let agents = "\"ts1\", \"ts2\", \"ts3\"";
        let spec = PairSpec::with_extra(
            &witness_config(&keys, agents, 1500),
            &witness_config(&keys, agents, beta_window_ms),
        );
        let (mut alpha, beta, [to_alpha, to_beta]) = proxied_pair(root.path(), spec);
        alpha.start();
        KeyedPair {
            root,
            alpha,
            beta,
            keys,
            to_beta,
            to_alpha,
        }
    }

    fn urls(&self) -> String {
        format!(
            "http://127.0.0.1:{};http://127.0.0.1:{}",
            self.alpha.grpc, self.beta.grpc
        )
    }

    fn agent(&self, name: &str) -> KeyedAgent {
        let key = self.keys.join(format!("{name}.key"));
        keyed_agent(self.root.path(), name, &self.urls(), &key)
    }

    fn key(&self, name: &str) -> AgentKey {
        AgentKey::read(&self.keys.join(format!("{name}.key")), false).unwrap()
    }

    /// `standin status` on `node`: its table, and what it said on stderr when it failed.
    fn status(&self, node: &NodeProcess) -> String {
        let output = node.cli(&["status"]);
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            text.push_str(&format!(
                "\n(status exited {:?}: {})",
                output.status.code(),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        text
    }
}

fn client(port: u16) -> AgentClient<tonic::transport::Channel> {
    AgentClient::new(
        standin::wire::client::channel(&format!("http://127.0.0.1:{port}"), None).unwrap(),
    )
}

/// A report `name` sends with its witness vote for `vote`, echoing `echo`.
fn report(name: &str, vote: &str, echo: (u64, u64)) -> wire::LoadReport {
    wire::LoadReport {
        name: name.to_string(),
        address: format!("{name}.example:3389"),
        cpu_percent: 1.0,
        memory_percent: 1.0,
        interval_ms: 200,
        reachable: vec!["alpha".to_string(), "beta".to_string()],
        vote: Some(vote.to_string()),
        echo_instance: echo.0,
        echo_time_ms: echo.1,
        ..Default::default()
    }
}

/// Greet a node as `name` (signed with `key`): its instance and time to echo.
async fn greet(
    client: &mut AgentClient<tonic::transport::Channel>,
    name: &str,
    key: &AgentKey,
) -> (u64, u64) {
    let ack = client
        .report_load(sign(&report(name, "alpha", (0, 0)), key))
        .await
        .unwrap()
        .into_inner();
    assert!(!ack.counted, "a greeting never counts");
    (ack.node_instance, ack.node_time_ms)
}

#[test]
fn agent_key_commands_write_private_keys_and_exit_as_documented() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("etc").join("agent-keys");
    let dir_text = dir.to_string_lossy().into_owned();
    let output = run(&["agent-key", "add", "ts1", "--dir", &dir_text]);
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let file = dir.join("ts1.key");
    assert!(
        stdout.contains(&format!("wrote {}", file.display())),
        "{stdout}"
    );
    assert!(stdout.contains("the other node"), "{stdout}");
    assert!(stdout.contains("--key-file"), "{stdout}");
    assert!(stdout.contains("agent_keys_dir"), "{stdout}");
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(&dir), 0o700);
    let key = std::fs::read_to_string(&file).unwrap();
    assert_eq!(key.trim().len(), 64);
    assert!(AgentKey::parse(&key).is_ok());

    // Not replaced without --force (exit 2, the key unchanged); with it, a new key.
    let output = run(&["agent-key", "add", "ts1", "--dir", &dir_text]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--force"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), key);
    let output = run(&["agent-key", "add", "ts1", "--dir", &dir_text, "--force"]);
    assert_eq!(output.status.code(), Some(0));
    assert_ne!(std::fs::read_to_string(&file).unwrap(), key);
    assert_eq!(mode(&file), 0o600);
    // A name that is not a name: exit 2, nothing written.
    for bad in ["../ts1", "ts 1", ".hidden"] {
        let output = run(&["agent-key", "add", bad, "--dir", &dir_text]);
        assert_eq!(output.status.code(), Some(2), "{bad}");
    }
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);

    // list: names and fingerprints (never the key), exit 0; a file a node would
    // refuse makes it exit 1.
    add_key(&dir, "ts2");
    let output = run(&["agent-key", "list", "--dir", &dir_text]);
    assert_eq!(output.status.code(), Some(0));
    let listed = String::from_utf8_lossy(&output.stdout).into_owned();
    let ts1 = AgentKey::read(&file, false).unwrap();
    assert!(
        listed.contains(&format!("ts1  {}  600", ts1.short_fingerprint())),
        "{listed}"
    );
    assert!(listed.contains("ts2"), "{listed}");
    assert!(!listed.contains(&ts1.to_hex()), "{listed}");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = run(&["agent-key", "list", "--dir", &dir_text]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stdout).contains("mode 644"));

    // remove: exit 0, then 1 (nothing to remove); a missing directory: exit 1.
    let output = run(&["agent-key", "remove", "ts1", "--dir", &dir_text]);
    assert_eq!(output.status.code(), Some(0));
    assert!(!file.exists());
    let output = run(&["agent-key", "remove", "ts1", "--dir", &dir_text]);
    assert_eq!(output.status.code(), Some(1));
    let missing = root.path().join("nowhere").to_string_lossy().into_owned();
    assert_eq!(
        run(&["agent-key", "list", "--dir", &missing]).status.code(),
        Some(1)
    );
}

#[test]
fn one_agents_key_cannot_forge_the_others_votes_with_the_pair_link_cut() {
    let mut pair = KeyedPair::new(1500);
    // The honest agents ts2 and ts3 (ts1's key is the attacker's).
    let _honest: Vec<KeyedAgent> = ["ts2", "ts3"].iter().map(|name| pair.agent(name)).collect();
    pair.beta.start();
    wait_until("alpha to be the authority", || pair.alpha.is_active());
    pair.to_alpha.cut();
    pair.to_beta.cut();

    // The attack as it was done: for each node, reports for ts1, ts2 and ts3 voting
    // for that node, echoing its instance and time; all signed with ts1's key.
    let stop = Arc::new(AtomicBool::new(false));
    let attacker = {
        let stop = stop.clone();
        let key = pair.key("ts1");
        let nodes = [("alpha", pair.alpha.grpc), ("beta", pair.beta.grpc)];
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let mut codes = std::collections::BTreeMap::<String, Vec<tonic::Code>>::new();
                while !stop.load(Ordering::Relaxed) {
                    for (node, port) in nodes {
                        let mut client = client(port);
                        let echo = greet(&mut client, "ts1", &key).await;
                        for name in ["ts1", "ts2", "ts3"] {
                            let code = match client
                                .report_load(sign(&report(name, node, echo), &key))
                                .await
                            {
                                Ok(ack) => {
                                    assert!(ack.into_inner().counted);
                                    tonic::Code::Ok
                                }
                                Err(status) => status.code(),
                            };
                            codes
                                .entry(format!("{name} to {node}"))
                                .or_default()
                                .push(code);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                codes
            })
        })
    };

    let started = Instant::now();
    let (mut samples, mut alpha_samples) = (0, 0);
    while started.elapsed() < Duration::from_secs(10) {
        let (a1, b, a2) = sample_authority(&pair.alpha, &pair.beta, started);
        assert!(!b, "beta took authority on forged votes");
        samples += 1;
        alpha_samples += u32::from(a1 && a2);
        std::thread::sleep(Duration::from_millis(20));
    }
    // While the attack goes on: beta counts ts1's vote, and no other.
    let status = pair.status(&pair.beta);
    assert!(status.contains("1 of 3 votes"), "{status}");
    stop.store(true, Ordering::Relaxed);
    let codes = attacker.join().unwrap();
    assert_eq!(
        alpha_samples, samples,
        "the honest majority keeps alpha the authority"
    );
    // ts1's own reports counted; those naming ts2 and ts3 were refused at both nodes.
    for node in ["alpha", "beta"] {
        assert!(codes[&format!("ts1 to {node}")]
            .iter()
            .all(|code| *code == tonic::Code::Ok));
        for name in ["ts2", "ts3"] {
            let seen = &codes[&format!("{name} to {node}")];
            assert!(!seen.is_empty());
            assert!(
                seen.iter()
                    .all(|code| *code == tonic::Code::Unauthenticated),
                "{name} to {node}: {seen:?}"
            );
        }
    }
    assert!(pair.beta.log_text().contains("a load report refused"));
}

#[test]
fn replayed_and_misnamed_reports_are_refused() {
    let mut pair = KeyedPair::new(1500);
    pair.beta.start();
    let ts1 = pair.key("ts1");
    let secret = pair.root.path().join("agent.secret");
    assert!(run(&["init-secret", &secret.to_string_lossy()])
        .status
        .success());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut alpha = client(pair.alpha.grpc);
        let mut beta = client(pair.beta.grpc);
        let echo = greet(&mut alpha, "ts1", &ts1).await;
        let counted = sign(&report("ts1", "alpha", echo), &ts1);
        let ack = alpha
            .report_load(counted.clone())
            .await
            .unwrap()
            .into_inner();
        assert!(ack.counted);

        // The same report again, to the same node or to the other: refused.
        for (target, client) in [("alpha", &mut alpha), ("beta", &mut beta)] {
            let status = client.report_load(counted.clone()).await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{target}");
        }
        // A report echoing an answer older than the bound (three intervals of 200
        // ms, at least 2 s): refused.
        let old = greet(&mut alpha, "ts1", &ts1).await;
        tokio::time::sleep(Duration::from_millis(2_300)).await;
        let status = alpha
            .report_load(sign(&report("ts1", "alpha", old), &ts1))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(
            status.message().contains("older than"),
            "{}",
            status.message()
        );

        // Signed with ts1's key but naming ts2: refused, even echoing correctly.
        let echo = greet(&mut alpha, "ts1", &ts1).await;
        let status = alpha
            .report_load(sign(&report("ts2", "alpha", echo), &ts1))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        // Unsigned, with or without a bearer secret (the shared secret of old): refused.
        let mut unsigned = report("ts3", "alpha", echo);
        let status = alpha.report_load(unsigned.clone()).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        let text = std::fs::read_to_string(&secret).unwrap();
        let mut with_secret = AgentClient::with_interceptor(
            standin::wire::client::channel(&format!("http://127.0.0.1:{}", pair.alpha.grpc), None)
                .unwrap(),
            standin::wire::auth::AddSecret::new(text.trim()).unwrap(),
        );
        unsigned.name = "ts2".to_string();
        let status = with_secret.report_load(unsigned).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
    });
    // Only ts1 is listed, once.
    let output = pair.alpha.cli(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let names: Vec<&str> = status["terminal_servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|server| server["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ts1"]);
    let beta_status = pair.beta.cli(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&beta_status.stdout).unwrap();
    assert!(status["terminal_servers"].as_array().unwrap().is_empty());
}

#[test]
fn agents_with_their_own_keys_back_the_active() {
    let mut pair = KeyedPair::new(1500);
    let _agents: Vec<KeyedAgent> = ["ts1", "ts2", "ts3"]
        .iter()
        .map(|name| pair.agent(name))
        .collect();
    pair.beta.start();
    wait_until("alpha to be the authority", || pair.alpha.is_active());
    wait_until("both nodes to count three votes", || {
        pair.status(&pair.alpha).contains("3 of 3 votes")
            && pair.status(&pair.beta).contains("0 of 3 votes")
    });
    assert!(!pair.beta.is_active());
    // A node restarted: the agents greet its new run and count again.
    pair.beta.kill();
    pair.beta.start();
    wait_until("beta to list the three agents again", || {
        let output = pair.beta.cli(&["status", "--json"]);
        serde_json::from_slice::<serde_json::Value>(&output.stdout)
            .ok()
            .and_then(|status| status["terminal_servers"].as_array().map(Vec::len))
            == Some(3)
    });
}

#[test]
fn nodes_with_different_voter_sets_refuse_witness_authority() {
    // beta's witness window differs from alpha's: their voter sets differ.
    let mut pair = KeyedPair::new(1600);
    let _agents: Vec<KeyedAgent> = ["ts1", "ts2", "ts3"]
        .iter()
        .map(|name| pair.agent(name))
        .collect();
    pair.beta.start();
    wait_until("both nodes to show the refusal", || {
        pair.status(&pair.alpha).contains("REFUSED") && pair.status(&pair.beta).contains("REFUSED")
    });
    let status = pair.status(&pair.alpha);
    assert!(status.contains("voter set"), "{status}");
    assert!(pair.alpha.log_text().contains("differs from this node's"));
    // The link cut: no vote counts, so neither node may be the authority.
    pair.to_alpha.cut();
    pair.to_beta.cut();
    wait_until("alpha to stop accepting logins", || !pair.alpha.is_active());
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        assert!(
            !pair.alpha.is_active() && !pair.beta.is_active(),
            "a node took witness authority with differing voter sets"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    // The same set on both (beta fixed and restarted), the link healed: alpha again.
    pair.beta.kill();
    let text = std::fs::read_to_string(&pair.beta.config)
        .unwrap()
        .replace("witness_window_ms = 1600", "witness_window_ms = 1500");
    std::fs::write(&pair.beta.config, text).unwrap();
    pair.to_alpha.heal();
    pair.to_beta.heal();
    pair.beta.start();
    wait_until("alpha to be the authority again", || pair.alpha.is_active());
    wait_until("the refusal to be lifted on both", || {
        !pair.status(&pair.alpha).contains("REFUSED")
            && !pair.status(&pair.beta).contains("REFUSED")
    });
    assert!(!pair.beta.is_active());
}

#[test]
fn bad_agent_keys_are_refused_at_start_naming_the_key() {
    let root = tempfile::tempdir().unwrap();
    let keys = root.path().join("agent-keys");
    let ts1 = add_key(&keys, "ts1");
    let serve = |extra: &str| {
        let node = NodeProcess::configure(root.path(), "alpha", "active", None, extra);
        let output = Command::new(standin())
            .args(["serve", "--config"])
            .arg(&node.config)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    // A voter without a key.
    let (code, stderr) = serve(&witness_config(&keys, "\"ts1\", \"ts2\"", 1500));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("witness_agents") && stderr.contains("ts2 has no key"),
        "{stderr}"
    );
    // A key others can read; a directory that is not there.
    std::fs::set_permissions(&ts1, std::fs::Permissions::from_mode(0o640)).unwrap();
    let (code, stderr) = serve(&format!("agent_keys_dir = \"{}\"\n", keys.display()));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("agent_keys_dir") && stderr.contains("mode 640"),
        "{stderr}"
    );
    let missing = root.path().join("nowhere");
    let (code, stderr) = serve(&format!("agent_keys_dir = \"{}\"\n", missing.display()));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("agent_keys_dir"), "{stderr}");
}

#[test]
fn the_shared_agent_secret_is_warned_about_and_unused_once_keys_exist() {
    let root = tempfile::tempdir().unwrap();
    let secret = root.path().join("agent.secret");
    assert!(run(&["init-secret", &secret.to_string_lossy()])
        .status
        .success());
    let shared = format!("agent_secret_file = \"{}\"\n", secret.display());
    let mut node = NodeProcess::configure(root.path(), "alpha", "active", None, &shared);
    node.start();
    wait_until("the warning about the shared secret", || {
        node.log_text().contains("agents share one secret")
    });
    node.kill();
    let keys = root.path().join("agent-keys");
    add_key(&keys, "ts1");
    let both = format!("{shared}agent_keys_dir = \"{}\"\n", keys.display());
    let mut node = NodeProcess::configure(root.path(), "beta", "active", None, &both);
    node.start();
    wait_until("the shared secret to be named unused", || {
        node.log_text().contains("agent_secret_file is not used")
    });
    assert!(!node.log_text().contains("agents share one secret"));
}
