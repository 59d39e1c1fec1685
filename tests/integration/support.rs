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
    /// Extra environment for the process.
    pub env: Vec<(String, String)>,
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
            env: Vec::new(),
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
            .envs(self.env.iter().map(|(key, value)| (key, value)))
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
            // Up once its HTTP server answers (`/healthz` says 503 until it has a role).
            if http_get(http, "/healthz").is_some() {
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

    /// The running process's id (the login_flood target reads its /proc).
    #[allow(dead_code)]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: no clean shutdown.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Wait up to `limit` for the process to exit on its own: its status (None when it
    /// still runs, or was never started).
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
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

/// The random source of a fault test: seeded from `STANDIN_FAULT_SEED` (or the clock),
/// printed at the start so that a failing run can be replayed with the same schedule
/// (the schedule of faults and writes; thread interleavings are the machine's).
pub struct FaultRng {
    state: u64,
}

impl FaultRng {
    /// The seed for `test`, printed (the harness shows it when the test fails).
    pub fn for_test(test: &str) -> FaultRng {
        let seed = match std::env::var("STANDIN_FAULT_SEED") {
            Ok(text) => text
                .trim()
                .parse::<u64>()
                .or_else(|_| u64::from_str_radix(text.trim().trim_start_matches("0x"), 16))
                .unwrap_or_else(|_| panic!("STANDIN_FAULT_SEED={text:?} is not a number")),
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|elapsed| elapsed.as_nanos() as u64)
                .unwrap_or(1),
        };
        eprintln!("{test}: STANDIN_FAULT_SEED={seed} (replay with this seed)");
        FaultRng::new(seed)
    }

    pub fn new(seed: u64) -> FaultRng {
        FaultRng { state: seed }
    }

    /// splitmix64.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }

    /// Uniform in `low..high` (`low` when the range is empty).
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        if high <= low {
            return low;
        }
        low + self.next_u64() % (high - low)
    }

    pub fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(self.range(low, high))
    }

    /// A generator of its own for another thread, derived from this one.
    pub fn fork(&mut self) -> FaultRng {
        FaultRng::new(self.next_u64())
    }
}

/// How many times a fault test repeats its fault: `STANDIN_FAULT_RUNS`, else `default`
/// (small for the quick form in `cargo test`, large for the `--ignored` soak form).
pub fn fault_runs(default: usize) -> usize {
    match std::env::var("STANDIN_FAULT_RUNS") {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("STANDIN_FAULT_RUNS={text:?} is not a number")),
        Err(_) => default,
    }
}

/// Poll `condition` until it holds or `deadline` passes; whether it held.
pub fn poll_for(deadline: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    loop {
        if condition() {
            return true;
        }
        if started.elapsed() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Poll until `condition` holds; panics with `what` after `limit`.
pub fn wait_within(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    if !poll_for(limit, &mut condition) {
        panic!("timed out after {} s waiting for {what}", limit.as_secs());
    }
}

/// Each name's last content, as a writer left it.
pub type Ledger = std::collections::BTreeMap<String, Vec<u8>>;

/// A writer on a node's folder, in a thread of its own, keeping a ledger of every
/// change it made: each name's last content (written and fsync'd before it counts).
pub struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<(Ledger, u64)>>,
}

impl Writer {
    /// Write files named `{prefix}{0..names}` with seeded sizes up to `max_size` bytes,
    /// pausing `pause_ms` (a range) between writes.
    pub fn start(
        folder: PathBuf,
        prefix: &str,
        names: u64,
        max_size: u64,
        pause_ms: (u64, u64),
        mut rng: FaultRng,
    ) -> Writer {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let prefix = prefix.to_string();
        let thread = std::thread::spawn(move || {
            let mut ledger = std::collections::BTreeMap::new();
            let mut writes = 0u64;
            while !stopping.load(std::sync::atomic::Ordering::SeqCst) {
                let name = format!("{prefix}{}", rng.range(0, names));
                let content = pseudo_random(rng.range(1, max_size) as usize, rng.next_u64());
                let mut file = std::fs::File::create(folder.join(&name)).unwrap();
                file.write_all(&content).unwrap();
                file.sync_all().unwrap();
                ledger.insert(name, content);
                writes += 1;
                std::thread::sleep(rng.millis(pause_ms.0, pause_ms.1));
            }
            (ledger, writes)
        });
        Writer {
            stop,
            thread: Some(thread),
        }
    }

    /// Stop writing: the ledger (each name's last content) and the number of writes.
    pub fn finish(mut self) -> (Ledger, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread
            .take()
            .map(|thread| thread.join().unwrap())
            .unwrap_or_default()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Every ledger entry is in `folder` with its last content; the names that are not.
pub fn ledger_missing(
    folder: &Path,
    ledger: &std::collections::BTreeMap<String, Vec<u8>>,
) -> Vec<String> {
    ledger
        .iter()
        .filter(|(name, content)| {
            std::fs::read(folder.join(name.as_str())).ok().as_ref() != Some(*content)
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// A node's whole log, read back with `standin log --json` (every link checked by the
/// reader): seq -> hash.
pub fn log_hashes(node: &NodeProcess) -> std::collections::BTreeMap<u64, String> {
    let mut hashes = std::collections::BTreeMap::new();
    loop {
        let after = hashes.keys().next_back().copied().unwrap_or(0);
        let output = node.cli(&[
            "log",
            "--after",
            &after.to_string(),
            "--limit",
            "4096",
            "--json",
        ]);
        assert!(
            output.status.success(),
            "log of {}: {}",
            node.name,
            String::from_utf8_lossy(&output.stderr)
        );
        let before = hashes.len();
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let event: serde_json::Value = serde_json::from_str(line).unwrap();
            hashes.insert(
                event["seq"].as_u64().unwrap(),
                event["hash"].as_str().unwrap().to_string(),
            );
        }
        if hashes.len() == before {
            return hashes;
        }
    }
}

/// The node's head as its status reports it: (seq, hash).
pub fn status_head(node: &NodeProcess) -> Option<(u64, String)> {
    let output = node.cli(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    Some((
        status["head_seq"].as_u64()?,
        status["head_hash"].as_str()?.to_string(),
    ))
}

/// Whether a quarantine of `node` holds `name` with `content`: as a recorded `Put`
/// (`files/<seq>/<name>`) or as an unrecorded change (`files/<name>`).
pub fn in_quarantine(node: &NodeProcess, name: &str, content: &[u8]) -> bool {
    let holds = |path: PathBuf| std::fs::read(path).is_ok_and(|kept| kept == content);
    let Ok(dirs) = std::fs::read_dir(node.data_dir.join("quarantine")) else {
        return false;
    };
    dirs.flatten().any(|dir| {
        let files = dir.path().join("files");
        holds(files.join(name))
            || std::fs::read_dir(&files)
                .map(|seqs| seqs.flatten().any(|seq| holds(seq.path().join(name))))
                .unwrap_or(false)
    })
}
