//! Starting real nodes for tests, and talking to them.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const LIMIT: Duration = Duration::from_secs(60);

pub fn standin() -> &'static str {
    env!("CARGO_BIN_EXE_standin")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Poll until `condition` holds; panics with `what` after `LIMIT`.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while started.elapsed() < LIMIT {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("timed out waiting for {what}");
}

/// GET on 127.0.0.1:`port`: (status code, body); None when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// One `standin serve` process and its files.
pub struct NodeProcess {
    pub name: String,
    pub folder: PathBuf,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    pub grpc: u16,
    pub http: u16,
    pub log: PathBuf,
    child: Option<Child>,
}

impl NodeProcess {
    /// Write a config; `extra` is appended to it (TOML lines).
    pub fn configure(
        root: &Path,
        name: &str,
        role: &str,
        peer_grpc: Option<u16>,
        extra: &str,
    ) -> NodeProcess {
        let folder = root.join(format!("{name}-folder"));
        let data_dir = root.join(format!("{name}-data"));
        std::fs::create_dir_all(&folder).unwrap();
        let secret = root.join("pair.secret");
        if !secret.exists() {
            let status = Command::new(standin())
                .arg("init-secret")
                .arg(&secret)
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success());
        }
        let (grpc, http) = (free_port(), free_port());
        let scheme = if extra.contains("tls_cert_file") {
            "https"
        } else {
            "http"
        };
        let peer = peer_grpc
            .map(|port| format!("peer_url = \"{scheme}://127.0.0.1:{port}\"\n"))
            .unwrap_or_default();
        let config = root.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "node_name = \"{name}\"\nfolder = \"{}\"\ndata_dir = \"{}\"\nlisten = \"127.0.0.1:{grpc}\"\nhttp_listen = \"127.0.0.1:{http}\"\nrole = \"{role}\"\n{peer}secret_file = \"{}\"\n{extra}\n",
                folder.display(),
                data_dir.display(),
                secret.display()
            ),
        )
        .unwrap();
        NodeProcess {
            name: name.to_string(),
            folder,
            data_dir,
            config,
            grpc,
            http,
            log: root.join(format!("{name}.log")),
            child: None,
        }
    }

    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(standin())
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("STANDIN_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
        let http = self.http;
        let name = self.name.clone();
        let log = self.log.clone();
        let started = Instant::now();
        while started.elapsed() < LIMIT {
            if http_get(http, "/healthz").is_some_and(|(status, _)| status == 200) {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "{name} exited with {status}:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!(
            "{name} did not start:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// SIGKILL: no clean shutdown.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Send a signal (SIGSTOP, SIGCONT) to the running process.
    pub fn signal(&self, signal: i32) {
        if let Some(child) = self.child.as_ref() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, signal) };
        }
    }

    /// SIGTERM and wait.
    /// SIGTERM and wait; true when the node exited cleanly on its own (false when it
    /// had to be killed after 20 s, or failed).
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// The value of a metric (first sample whose line starts with `name`).
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = http_get(self.http, "/metrics")?;
        body.lines()
            .find(|line| line.starts_with(name) && line[name.len()..].starts_with([' ', '{']))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
    }

    pub fn head_seq(&self) -> u64 {
        self.metric("standin_head_seq").unwrap_or(-1.0) as u64
    }

    /// Run a `standin` subcommand against this node.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(standin())
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .unwrap()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An active (`alpha`) and a passive (`beta`) in one temp dir.
pub struct Pair {
    pub root: tempfile::TempDir,
    pub alpha: NodeProcess,
    pub beta: NodeProcess,
}

impl Pair {
    /// Configure both; start them when `start`.
    pub fn new(passive_extra: &str, start: bool) -> Pair {
        Pair::with_extra("", passive_extra, start)
    }

    /// Configure both with extra config lines for each.
    pub fn with_extra(active_extra: &str, passive_extra: &str, start: bool) -> Pair {
        let root = tempfile::tempdir().unwrap();
        let mut alpha = NodeProcess::configure(root.path(), "alpha", "active", None, active_extra);
        let mut beta = NodeProcess::configure(
            root.path(),
            "beta",
            "passive",
            Some(alpha.grpc),
            passive_extra,
        );
        if start {
            alpha.start();
            beta.start();
        }
        Pair { root, alpha, beta }
    }

    /// Wait until beta's folder and head are alpha's (alpha having recorded its folder).
    pub fn wait_in_sync(&self) {
        wait_until("beta to match alpha", || {
            let alpha = self.alpha.head_seq();
            alpha > 0
                && alpha == self.beta.head_seq()
                && tree(&self.alpha.folder) == tree(&self.beta.folder)
                && alpha == self.alpha.head_seq()
        });
    }

    /// `standin verify` passes on both nodes.
    pub fn assert_verified(&self) {
        for node in [&self.alpha, &self.beta] {
            let output = node.cli(&["verify"]);
            assert!(
                output.status.success(),
                "verify on {}: {}{}",
                node.name,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

/// Bytes that do not compress or deduplicate, the same for the same seed.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// Every file and directory under `root`: path -> content hash (None for directories).
pub fn tree(root: &Path) -> std::collections::BTreeMap<String, Option<String>> {
    let mut out = std::collections::BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for item in std::fs::read_dir(&dir).unwrap() {
            let path = item.unwrap().path();
            let relative = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if path.is_dir() {
                dirs.push(path);
                out.insert(relative, None);
            } else {
                out.insert(
                    relative,
                    std::fs::read(&path)
                        .ok()
                        .map(|bytes| standin_engine::Hash::of(&bytes).to_hex()),
                );
            }
        }
    }
    out
}
