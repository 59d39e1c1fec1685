//! The user site against hostile input over the wire (issue 19): non-UTF-8 and
//! oversized fields, an application named by a path, a malformed user record, and
//! agent reports that lie (NaN loads, billions of sessions, megabyte addresses). Each
//! was an attack that worked; each is answered now without echoing, leaking or
//! believing it.

use standin_proto::v1 as wire;
use standin_proto::v1::agent_client::AgentClient;
use standin_proto::v1::site_client::SiteClient;

use crate::support::{agent_secret, NodeSpec};

fn login(user: &[u8], password: &[u8], app: &[u8]) -> wire::LoginRequest {
    wire::LoginRequest {
        user: user.to_vec(),
        password: password.to_vec(),
        app: app.to_vec(),
    }
}

fn report(name: &str, address: &str, cpu: f64, sessions: u32) -> wire::LoadReport {
    wire::LoadReport {
        name: name.to_string(),
        address: address.to_string(),
        cpu_percent: cpu,
        memory_percent: 10.0,
        sessions,
        interval_ms: 60_000,
        ..Default::default()
    }
}

#[test]
fn hostile_logins_and_reports_are_refused_without_echo_leak_or_belief() {
    let root = tempfile::tempdir().unwrap();
    let agent_secret = agent_secret(root.path());
    let mut node = NodeSpec::new("alpha", "active")
        .extra(&format!(
            "agent_secret_file = \"{}\"\n",
            agent_secret.display()
        ))
        .configure(root.path());
    node.start();
    let password = root.path().join("alice.password");
    std::fs::write(&password, "correct horse battery\n").unwrap();
    let add = |password_file: &std::path::Path| {
        node.cli(&[
            "user",
            "add",
            "alice",
            "--password-file",
            &password_file.to_string_lossy(),
        ])
    };
    // `user add` refuses a short password (exit 2, a usage error).
    let short = root.path().join("short.password");
    std::fs::write(&short, "1234567\n").unwrap();
    let output = add(&short);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("at least 8 characters"));
    assert!(add(&password).status.success());
    let output = node.cli(&[
        "app",
        "publish",
        "word",
        "--command",
        "winword.exe",
        "--users",
        "alice",
    ]);
    assert!(output.status.success());
    std::fs::write(node.folder.join("users/mallory.toml"), "name = [broken").unwrap();

    let url = format!("http://127.0.0.1:{}", node.grpc);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut site = SiteClient::connect(url.clone()).await.unwrap();
        let right = b"correct horse battery".as_slice();
        // Non-UTF-8 and oversized fields: INVALID_ARGUMENT, naming the field only.
        let long_password = vec![b'A'; 4_096];
        let long_user = vec![b'u'; 65];
        for (request, field) in [
            (login(&[0xff, 0xfe, b'x'], right, b""), "user"),
            (login(b"alice", &[0xc3, 0x28], b""), "password"),
            (login(b"alice", right, &[0x80]), "app"),
            (login(b"alice", &long_password, b""), "password"),
            (login(&long_user, right, b""), "user"),
        ] {
            let status = site.login(request).await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
            assert!(status.message().starts_with(field), "{}", status.message());
            assert!(!status.message().contains("AAAA") && !status.message().contains("uuuu"));
        }
        let status = site
            .list_applications(wire::ListApplicationsRequest {
                user: vec![0xff],
                password: right.to_vec(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);

        // An application named by a path answers exactly as one that does not exist
        // (no file-existence oracle), whatever file the path reaches.
        let missing = site
            .login(login(b"alice", right, b"no-such-app"))
            .await
            .unwrap_err();
        assert_eq!(missing.code(), tonic::Code::NotFound);
        for app in [
            "../users/alice",
            "../../../../etc/passwd",
            "../apps/word",
            "/etc/hostname",
        ] {
            let status = site
                .login(login(b"alice", right, app.as_bytes()))
                .await
                .unwrap_err();
            assert_eq!(
                (status.code(), status.message()),
                (missing.code(), missing.message()),
                "{app}"
            );
        }

        // A malformed user record: "service unavailable", the details in the log only.
        let status = site
            .login(login(b"mallory", b"whatever", b""))
            .await
            .unwrap_err();
        assert_eq!(status.message(), "service unavailable");
        // Wrong password, unknown user: one answer, no path.
        for user in [b"alice".as_slice(), b"nobody"] {
            let status = site.login(login(user, b"wrong", b"")).await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
            assert_eq!(status.message(), "invalid user or password");
        }

        // Reports that lie are refused and never listed.
        let secret = std::fs::read_to_string(&agent_secret).unwrap();
        let channel = standin::wire::client::channel(&url, None).unwrap();
        let mut agent = AgentClient::with_interceptor(
            channel,
            standin::wire::auth::AddSecret::new(secret.trim()).unwrap(),
        );
        agent
            .report_load(report("honest", "ts1.example:3389", 20.0, 3))
            .await
            .unwrap();
        let huge = "x".repeat(3 << 20);
        for (liar, address, cpu, sessions) in [
            ("nan", "nan.example:3389", f64::NAN, 0),
            ("negative", "negative.example:3389", -f64::NAN, 0),
            ("busy", "busy.example:3389", 1.0, 4_000_000_000),
            ("noport", "noport.example", 1.0, 0),
            ("huge", huge.as_str(), 1.0, 0),
            ("../x", "x.example:3389", 1.0, 0),
        ] {
            let status = agent
                .report_load(report(liar, address, cpu, sessions))
                .await
                .unwrap_err();
            assert!(
                matches!(
                    status.code(),
                    tonic::Code::InvalidArgument | tonic::Code::OutOfRange
                ),
                "{liar}: {status:?}"
            );
            assert!(
                status.message().len() < 200,
                "{liar}: the reply echoes the report"
            );
        }
    });
    let output = node.cli(&["status", "--json"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let servers = status["terminal_servers"].as_array().unwrap();
    assert_eq!(servers.len(), 1, "{servers:?}");
    assert_eq!(servers[0]["address"], "ts1.example:3389");
    let table = String::from_utf8_lossy(&node.cli(&["status"]).stdout).into_owned();
    assert!(table.contains("honest (ts1.example:3389)"), "{table}");
    // The details of the malformed record are in the node's log.
    let log = node.log_text();
    assert!(log.contains("users/mallory.toml"), "{log}");
}
