//! The operator's view (issue 20, first slice): commands that say no (exit 3 with the
//! node's reason, nothing changed), a switchover refused before anything stops when
//! the passive is down (logins never interrupted), `/healthz`, `/passive`, `/metrics`
//! in the Prometheus text format (checked by `promtool` when it is installed), and
//! the wording of messages that used to mislead.

use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::support::{http_get, in_sync, standin, wait_until, NodeProcess, PairSpec};

/// A pair that heartbeats each other every 100 ms and fails over after 1.5 s.
fn pair(root: &std::path::Path) -> (NodeProcess, NodeProcess) {
    let timing = "heartbeat_interval_ms = 100\nfailover_after_ms = 1500\nreplication_period = 0\n";
    PairSpec::new(timing).mutual().configure(root)
}

fn status(node: &NodeProcess, path: &str) -> u16 {
    http_get(node.http, path).map_or(0, |(status, _)| status)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn status_json(node: &NodeProcess) -> serde_json::Value {
    serde_json::from_slice(&node.cli(&["status", "--json"]).stdout).unwrap()
}

/// GET with an `Accept` header: (status, content type, body).
fn get_accepting(port: u16, path: &str, accept: &str) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_string)
        })
        .unwrap_or_default();
    (code, content_type, body.to_string())
}

/// `promtool check metrics` on a node's `/metrics` (None when promtool is absent).
fn promtool(node: &NodeProcess) -> Option<Output> {
    use std::io::Write;
    let (_, _, body) = get_accepting(node.http, "/metrics", "text/plain; version=0.0.4");
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(body.as_bytes()).ok()?;
    child.wait_with_output().ok()
}

#[test]
fn refused_commands_exit_3_with_the_reason_and_http_says_what_each_node_does() {
    let root = tempfile::tempdir().unwrap();
    let (mut alpha, mut beta) = pair(root.path());
    alpha.start();
    beta.start();
    std::fs::write(alpha.folder.join("x"), b"x").unwrap();
    wait_until("beta to follow", || in_sync(&alpha, &beta));

    // Each refusal: exit 3, the reason on stderr, nothing changed.
    for (node, args, reason) in [
        (&beta, ["promote"], "the active (alpha) answers"),
        (&alpha, ["promote"], "already the active"),
        (
            &beta,
            ["switchover"],
            "a switchover starts on the active; this node is passive",
        ),
    ] {
        let output = node.cli(&args);
        let text = stderr(&output);
        assert_eq!(
            output.status.code(),
            Some(3),
            "{args:?} on {}: {text}",
            node.name
        );
        assert!(text.contains(reason), "{args:?} on {}: {text}", node.name);
    }
    assert_eq!(status(&alpha, "/active"), 200);
    assert_eq!(status(&beta, "/active"), 503);

    // Each node does its job; only beta is a caught-up passive.
    wait_until("/healthz 200 on both", || {
        status(&alpha, "/healthz") == 200 && status(&beta, "/healthz") == 200
    });
    let (_, body) = http_get(alpha.http, "/healthz").unwrap();
    assert!(body.contains("active, capture running"), "{body}");
    let (_, body) = http_get(beta.http, "/healthz").unwrap();
    assert!(body.contains("passive, pull running"), "{body}");
    wait_until("/passive 200 on beta", || status(&beta, "/passive") == 200);
    assert_eq!(status(&alpha, "/passive"), 503);

    // /metrics: the Prometheus text format unless OpenMetrics is asked for.
    for node in [&alpha, &beta] {
        let (code, content_type, body) = get_accepting(node.http, "/metrics", "*/*");
        assert_eq!(code, 200);
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        assert!(!body.contains("# EOF"), "{body}");
        assert!(
            body.contains("# HELP standin_events_served_total "),
            "{body}"
        );
        let (_, content_type, body) = get_accepting(
            node.http,
            "/metrics",
            "application/openmetrics-text; version=1.0.0",
        );
        assert!(
            content_type.starts_with("application/openmetrics-text"),
            "{content_type}"
        );
        assert!(body.ends_with("# EOF\n"), "{body}");
        match promtool(node) {
            Some(output) => assert!(
                output.status.success(),
                "promtool check metrics on {}: {}{}",
                node.name,
                String::from_utf8_lossy(&output.stdout),
                stderr(&output)
            ),
            None => eprintln!("promtool is not installed: `promtool check metrics` skipped"),
        }
    }

    // The active takes over's wording: no stale error, the epoch it records in.
    alpha.kill();
    wait_until("beta's /passive to say no once alpha is gone", || {
        status(&beta, "/passive") == 503
    });
    wait_until("beta to take over", || status(&beta, "/active") == 200);
    let json = status_json(&beta);
    assert_eq!(json["role"], "active", "{json}");
    assert_eq!(json["epoch"], 2, "{json}");
    assert_eq!(json["last_error"], "", "cleared on promotion: {json}");
    assert_eq!(beta.metric("standin_epoch"), Some(2.0));
}

#[test]
fn a_switchover_with_the_passive_down_is_refused_and_logins_never_stop() {
    let root = tempfile::tempdir().unwrap();
    let (mut alpha, mut beta) = pair(root.path());
    alpha.start();
    beta.start();
    std::fs::write(alpha.folder.join("x"), b"x").unwrap();
    wait_until("beta to follow", || in_sync(&alpha, &beta));
    beta.kill();

    // Sample alpha's /active all through the refused switchover.
    let sampling = Arc::new(AtomicBool::new(true));
    let http = alpha.http;
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            while sampling.load(Ordering::SeqCst) {
                samples.push(http_get(http, "/active").map_or(0, |(status, _)| status));
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            samples
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(100));
    let output = alpha.cli(&["switchover"]);
    // A little after it too: nothing stopped late.
    std::thread::sleep(std::time::Duration::from_millis(500));
    sampling.store(false, Ordering::SeqCst);
    let samples = sampler.join().unwrap();

    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(3), "{text}");
    assert!(
        text.contains("the passive cannot be reached") && text.contains("nothing was stopped"),
        "{text}"
    );
    assert!(samples.len() > 10, "{samples:?}");
    assert!(
        samples.iter().all(|status| *status == 200),
        "logins stayed open: {samples:?}"
    );
    // Still recording.
    let before = alpha.head_seq();
    std::fs::write(alpha.folder.join("after"), b"after").unwrap();
    wait_until("alpha to record after the refusal", || {
        alpha.head_seq() > before
    });
}

/// A TCP listener that accepts and never answers: a peer that hangs.
fn silent_peer() -> (std::net::TcpListener, u16) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

#[test]
fn messages_say_what_is_wrong() {
    let root = tempfile::tempdir().unwrap();
    let (_peer, peer_port) = silent_peer();
    // A heartbeat that hangs for 2 × 3 s keeps the node starting a while.
    let mut alpha = NodeProcess::configure(
        root.path(),
        "alpha",
        "active",
        Some(peer_port),
        "heartbeat_interval_ms = 3000\nfailover_after_ms = 9000\n",
    );
    alpha.start();
    // /healthz says 503 while it asks its peer, then 200 once capture runs.
    let (code, body) = http_get(alpha.http, "/healthz").unwrap();
    if code == 503 {
        assert!(body.contains("starting"), "{body}");
    }
    wait_until("alpha to be active", || status(&alpha, "/healthz") == 200);

    // A new active shows the epoch it records in.
    std::fs::write(alpha.folder.join("x"), b"x").unwrap();
    wait_until("alpha to record", || alpha.head_seq() > 0);
    assert_eq!(status_json(&alpha)["epoch"], 1);

    // --url at the HTTP port names the mistake.
    let url = format!("http://127.0.0.1:{}", alpha.http);
    let output = std::process::Command::new(standin())
        .args(["status", "--url", &url, "--secret-file"])
        .arg(root.path().join("pair.secret"))
        .output()
        .unwrap();
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("{url} answers HTTP but not gRPC"))
            && text.contains("HTTP port (http_listen)"),
        "{text}"
    );

    // A second node on the same data_dir stops at once, naming the first, without
    // taking its ports.
    let second = root.path().join("second.toml");
    let (grpc, http) = (crate::support::free_port(), crate::support::free_port());
    let config = std::fs::read_to_string(&alpha.config)
        .unwrap()
        .replace(&format!(":{}\"", alpha.grpc), &format!(":{grpc}\""))
        .replace(&format!(":{}\"", alpha.http), &format!(":{http}\""));
    std::fs::write(&second, config).unwrap();
    let mut child = std::process::Command::new(standin())
        .args(["serve", "--config"])
        .arg(&second)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut answered = false;
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        answered |= http_get(http, "/healthz").is_some();
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let mut text = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut text).unwrap();
    assert!(!exit.success());
    assert!(!answered, "the second node never served");
    assert!(
        text.contains("is in use by another standin serve (pid ")
            && text.contains(&alpha.data_dir.display().to_string()),
        "{text}"
    );
    assert_eq!(status(&alpha, "/active"), 200, "the first node carries on");
}
