//! The status page (`/`) in a real browser: a pair in witness mode with two agents
//! reporting to both nodes, the page loaded by headless Chromium (Debian's
//! `chromium`), whose DOM must show both nodes and both agents; `curl` (no `Accept`)
//! still gets the text table. Skipped, saying so, where Chromium is not installed.
//!
//! `STANDIN_PAGE_SCREENSHOT=FILE` keeps the screenshot the test takes (1280×900) in
//! FILE: that is how `docs/status-page.png` is made.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::site::agent;
use crate::support::{
    agent_secret, http_get, status_json, tree, wait_until, NodeProcess, PairSpec, LIMIT,
};

fn chromium() -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("chromium"))
        .find(|candidate| candidate.is_file())
}

/// A browser process group, killed whole when dropped (Chromium starts helpers).
struct Browser(Child);

impl Drop for Browser {
    fn drop(&mut self) {
        // SAFETY: signalling the process group of our own child (its id: process_group(0)).
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// Headless Chromium on `url` with `args`: its standard output. Panics, with the tail
/// of its log, when it fails or takes longer than `LIMIT`.
fn run_chromium(chromium: &Path, work: &Path, args: &[&str], url: &str) -> String {
    let log = work.join("chromium.log");
    let mut child = Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu"])
        .arg(format!(
            "--user-data-dir={}",
            work.join("profile").display()
        ))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .process_group(0)
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut browser = Browser(child);
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = browser.0.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > LIMIT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(browser); // its helpers too, so that its standard output closes
    let output = reader.join().unwrap();
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    let tail: String = log_text
        .lines()
        .rev()
        .take(20)
        .collect::<Vec<_>>()
        .join("\n");
    match status {
        Some(status) if status.success() => output,
        Some(status) => {
            panic!("chromium {args:?} failed ({status}); its log, last lines first:\n{tail}")
        }
        None => panic!("chromium {args:?} took longer than {LIMIT:?}; its log:\n{tail}"),
    }
}

/// GET with an `Accept` header: (status line and headers, body).
fn get_accepting(port: u16, accept: &str) -> (String, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or_default();
    (head.to_ascii_lowercase(), body.to_string())
}

/// A pair in witness mode; ts1 and ts2 are its voters.
fn witness_pair(root: &Path) -> (NodeProcess, NodeProcess, PathBuf) {
    let agent_secret = agent_secret(root);
    let extra = format!(
        "heartbeat_interval_ms = 100\nfailover_after_ms = 3000\nreplication_period = 0\n\
         agent_secret_file = \"{}\"\nauthority = \"witness\"\n\
         witness_agents = [\"ts1\", \"ts2\"]\nwitness_window_ms = 1500\n",
        agent_secret.display()
    );
    let (alpha, beta) = PairSpec::new(&extra).mutual().configure(root);
    (alpha, beta, agent_secret)
}

fn lists_both_agents(status: &serde_json::Value) -> bool {
    ["ts1", "ts2"].iter().all(|name| {
        status["terminal_servers"]
            .as_array()
            .is_some_and(|servers| {
                servers
                    .iter()
                    .any(|server| server["name"] == *name && server["down"] == false)
            })
    })
}

/// The opening tag of the element carrying `attribute` in `dom`.
fn tag_with<'a>(dom: &'a str, attribute: &str) -> &'a str {
    let at = dom
        .find(attribute)
        .unwrap_or_else(|| panic!("no {attribute} in the DOM:\n{dom}"));
    let start = dom[..at].rfind('<').unwrap();
    let end = dom[at..].find('>').unwrap() + at;
    &dom[start..=end]
}

#[test]
fn a_browser_shows_both_nodes_and_both_agents() {
    let Some(chromium) = chromium() else {
        eprintln!(
            "skipped: no `chromium` on PATH (Debian's `chromium` package; .ci/run installs it)"
        );
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let (mut alpha, mut beta, agent_secret) = witness_pair(root.path());
    alpha.start();
    beta.start();
    let urls = format!(
        "http://127.0.0.1:{};http://127.0.0.1:{}",
        alpha.grpc, beta.grpc
    );
    let _ts1 = agent(root.path(), "ts1", 3, &urls, &agent_secret);
    let _ts2 = agent(root.path(), "ts2", 1, &urls, &agent_secret);
    std::fs::write(alpha.folder.join("hello.txt"), b"hello\n").unwrap();
    wait_until(
        "both agents on both nodes, beta caught up, both votes for alpha",
        || {
            let (on_alpha, on_beta) = (status_json(&alpha), status_json(&beta));
            lists_both_agents(&on_alpha)
                && lists_both_agents(&on_beta)
                && on_alpha["peer_state"] == "up"
                && on_alpha["peer_lag_events"] == 0
                && on_alpha["head_seq"].as_u64() > Some(0)
                && on_alpha["authority_summary"]
                    .as_str()
                    .is_some_and(|summary| summary.contains("2 of 2 votes"))
                && tree(&alpha.folder) == tree(&beta.folder)
        },
    );

    let url = format!("http://127.0.0.1:{}/", alpha.http);
    let dom = run_chromium(&chromium, root.path(), &["--dump-dom"], &url);
    // The HTML page (not the text table the browser would wrap in a <pre>).
    assert!(dom.contains("<meta http-equiv=\"refresh\""), "{dom}");
    assert!(!dom.contains("<pre"), "{dom}");
    assert!(!dom.contains("<script"), "{dom}");
    // Both nodes, each with its role; both agents, each with its address.
    assert!(
        tag_with(&dom, "data-node=\"alpha\"").contains("role-active"),
        "{dom}"
    );
    assert!(
        tag_with(&dom, "data-node=\"beta\"").contains("role-passive"),
        "{dom}"
    );
    for name in ["ts1", "ts2"] {
        assert!(
            tag_with(&dom, &format!("data-agent=\"{name}\"")).starts_with("<tr"),
            "{dom}"
        );
        assert!(dom.contains(&format!("{name}.example:3389")), "{dom}");
    }
    // Each agent reports to both nodes; the witness can decide; alpha sees beta up.
    assert!(!dom.contains("does not report to"), "{dom}");
    assert!(
        dom.contains("<span class=\"badge can-decide\">can decide</span>"),
        "{dom}"
    );
    assert!(dom.contains("2 of 2 agents vote for alpha"), "{dom}");
    assert!(dom.contains("<span class=\"badge up\">up</span>"), "{dom}");
    // How each keeps content, in words.
    assert!(
        dom.contains("<dt>Content</dt><dd>chunk store; busy files read"),
        "{dom}"
    );
    assert!(dom.contains("<dt>Content</dt><dd>by reference;"), "{dom}");
    assert!(
        dom.contains(&format!("standin {}", env!("CARGO_PKG_VERSION"))),
        "{dom}"
    );

    let screenshot = std::env::var_os("STANDIN_PAGE_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.path().join("status-page.png"));
    let _ = std::fs::remove_file(&screenshot);
    run_chromium(
        &chromium,
        root.path(),
        &[
            &format!("--screenshot={}", screenshot.display()),
            "--window-size=1280,900",
            "--hide-scrollbars",
        ],
        &url,
    );
    let png = std::fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");

    // curl (no Accept, or */*) still gets the text table; a browser's Accept gets HTML.
    let (_, text) = http_get(alpha.http, "/").unwrap();
    assert!(text.starts_with("node "), "{text}");
    let (head, text) = get_accepting(alpha.http, "*/*");
    assert!(head.contains("content-type: text/plain"), "{head}");
    assert!(text.starts_with("node "), "{text}");
    let (head, html) = get_accepting(alpha.http, "text/html,*/*;q=0.8");
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(head.contains("vary: accept"), "{head}");
    assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
}
