//! The user site with real processes: agents report to both nodes, logins go to the
//! authoritative node and pick the least-loaded terminal server, and after a failover
//! new logins go to the new authority, which already has the load table.

use std::process::{Child, Command, Stdio};

use standin_proto::v1 as wire;

use crate::support::{agent_secret, http_get, standin, wait_until, NodeProcess, PairSpec};

pub(crate) struct AgentProcess(Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn agent(
    root: &std::path::Path,
    name: &str,
    sessions: u32,
    urls: &str,
    secret: &std::path::Path,
) -> AgentProcess {
    let child = Command::new(standin())
        .args([
            "agent",
            "--name",
            name,
            "--dispatch-url",
            urls,
            "--interval-ms",
            "200",
        ])
        .arg("--secret-file")
        .arg(secret)
        .args([
            "--sessions-command",
            &format!("echo {sessions}"),
            "--address",
            &format!("{name}.example:3389"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(root.join(format!("{name}.log"))).unwrap(),
        ))
        .spawn()
        .unwrap();
    AgentProcess(child)
}

/// A pair with agent secrets, heartbeating each other, replication period 1 s.
fn site_pair(root: &std::path::Path) -> (NodeProcess, NodeProcess, std::path::PathBuf) {
    let agent_secret = agent_secret(root);
    let extra = format!(
        "heartbeat_interval_ms = 100\nfailover_after_ms = 1500\nreplication_period = 1\nagent_secret_file = \"{}\"\n",
        agent_secret.display()
    );
    let (alpha, beta) = PairSpec::new(&extra).mutual().configure(root);
    (alpha, beta, agent_secret)
}

fn lists_agents(node: &NodeProcess, names: &[&str]) -> bool {
    let output = node.cli(&["status", "--json"]);
    let Ok(status) = serde_json::from_slice::<serde_json::Value>(&output.stdout) else {
        return false;
    };
    let servers = status["terminal_servers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    names.iter().all(|name| {
        servers
            .iter()
            .any(|server| server["name"] == *name && server["down"] == false)
    })
}

fn login(
    servers: &str,
    user: &str,
    app: &str,
    password_file: &std::path::Path,
) -> std::process::Output {
    Command::new(standin())
        .args(["login", "--servers", servers, "--user", user, "--app", app])
        .arg("--password-file")
        .arg(password_file)
        .output()
        .unwrap()
}

#[test]
fn agents_report_to_both_and_logins_go_to_the_least_loaded_on_the_authority() {
    let root = tempfile::tempdir().unwrap();
    let (mut alpha, mut beta, agent_secret) = site_pair(root.path());
    alpha.start();
    beta.start();
    let urls = format!(
        "http://127.0.0.1:{};http://127.0.0.1:{}",
        alpha.grpc, beta.grpc
    );
    let _busy = agent(root.path(), "ts1", 5, &urls, &agent_secret);
    let idle = agent(root.path(), "ts2", 0, &urls, &agent_secret);
    // The seed's final check: every terminal server reports to both servers.
    wait_until("both nodes to list both agents", || {
        lists_agents(&alpha, &["ts1", "ts2"]) && lists_agents(&beta, &["ts1", "ts2"])
    });

    let password = root.path().join("alice.password");
    std::fs::write(&password, "correct horse\n").unwrap();
    let output = alpha.cli(&[
        "user",
        "add",
        "alice",
        "--password-file",
        &password.to_string_lossy(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = alpha.cli(&[
        "app",
        "publish",
        "word",
        "--command",
        "winword.exe",
        "--users",
        "alice",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Publishing on the passive is refused, naming the active.
    let output = beta.cli(&["app", "publish", "calc", "--command", "calc.exe"]);
    assert!(
        !output.status.success()
            && String::from_utf8_lossy(&output.stderr).contains("run this on the active")
    );

    // The seed's other check: publish, wait one replication period, see it on the passive.
    let beta_url = format!("http://127.0.0.1:{}", beta.grpc);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    wait_until("the passive to list the new application", || {
        runtime.block_on(async {
            let Ok(mut client) = wire::site_client::SiteClient::connect(beta_url.clone()).await
            else {
                return false;
            };
            let request = wire::ListApplicationsRequest {
                user: b"alice".to_vec(),
                password: b"correct horse".to_vec(),
            };
            client.list_applications(request).await.is_ok_and(|reply| {
                reply
                    .get_ref()
                    .applications
                    .iter()
                    .any(|app| app.name == "word")
            })
        })
    });

    // A login on the passive is refused with the active's address...
    runtime.block_on(async {
        let mut client = wire::site_client::SiteClient::connect(beta_url.clone())
            .await
            .unwrap();
        let request = wire::LoginRequest {
            user: b"alice".to_vec(),
            password: b"correct horse".to_vec(),
            app: b"word".to_vec(),
        };
        let status = client.login(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(
            status
                .message()
                .contains(&format!("127.0.0.1:{}", alpha.grpc)),
            "{}",
            status.message()
        );
    });
    // ...and the client with a server list follows it to the least-loaded server.
    let servers = format!(
        "http://127.0.0.1:{};http://127.0.0.1:{}",
        beta.grpc, alpha.grpc
    );
    let output = login(&servers, "alice", "word", &password);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("connect to ts2 (ts2.example:3389)"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("logged in on http://127.0.0.1:{}", alpha.grpc)),
        "{stdout}"
    );

    // A wrong password is refused.
    let wrong = root.path().join("wrong.password");
    std::fs::write(&wrong, "battery staple\n").unwrap();
    let output = login(&servers, "alice", "word", &wrong);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("invalid user or password"));

    // A stale agent is skipped: ts2 stops reporting, ts1 gets the next login.
    drop(idle);
    wait_until("ts2 to count as down", || !lists_agents(&alpha, &["ts2"]));
    let output = login(&servers, "alice", "word", &password);
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("connect to ts1"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let table = String::from_utf8_lossy(&alpha.cli(&["status"]).stdout).into_owned();
    assert!(table.contains("ts2 DOWN"), "{table}");

    // After the active dies, new logins go to beta, which already has the load table.
    alpha.kill();
    wait_until("beta to take over", || {
        http_get(beta.http, "/active").is_some_and(|(status, _)| status == 200)
    });
    let servers = format!(
        "http://127.0.0.1:{};http://127.0.0.1:{}",
        alpha.grpc, beta.grpc
    );
    let output = login(&servers, "alice", "word", &password);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(&format!("logged in on http://127.0.0.1:{}", beta.grpc)),
        "{stdout}"
    );
    assert!(stdout.contains("connect to ts1"), "{stdout}");
}

#[test]
fn a_report_with_a_wrong_agent_secret_does_not_count() {
    let root = tempfile::tempdir().unwrap();
    let (mut alpha, _beta, agent_secret) = site_pair(root.path());
    alpha.start();
    let wrong = root.path().join("wrong.secret");
    std::fs::write(&wrong, "0123456789abcdef0123456789abcdef\n").unwrap();
    let url = format!("http://127.0.0.1:{}", alpha.grpc);
    let _intruder = agent(root.path(), "intruder", 0, &url, &wrong);
    let _honest = agent(root.path(), "honest", 0, &url, &agent_secret);
    wait_until("the honest agent to be listed", || {
        lists_agents(&alpha, &["honest"])
    });
    wait_until("the refusal in the log", || {
        alpha
            .log_text()
            .contains("refused a call with a wrong secret")
    });
    assert!(
        !lists_agents(&alpha, &["intruder"]),
        "a report with a wrong secret must not count"
    );
}
