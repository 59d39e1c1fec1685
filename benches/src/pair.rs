//! Replication over loopback with two real `standin serve` processes, beside an rsync
//! daemon on 127.0.0.1 measured in the same run.
//!
//! - initial sync: an active holding the corpus (already recorded, not timed) and an
//!   empty passive; timed from the passive's start until its head equals the active's
//!   (every batch applied and made durable), and separately until `standin verify`
//!   passes on it. rsync: `rsync -a rsync://127.0.0.1:PORT/corpus/ DIR` then `sync`.
//! - lag: with `replication_period = 0`, a 4 KiB file written on the active, timed until
//!   the passive has it, many times; median, p99 and max.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

type Outcome<T> = Result<T, Box<dyn std::error::Error>>;

const LIMIT: Duration = Duration::from_secs(600);

/// The `standin` binary next to this one, built first when missing or stale.
pub fn standin_binary() -> Outcome<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let status = Command::new(cargo)
        .args(["build", "--release", "--quiet", "-p", "standin"])
        .status()?;
    if !status.success() {
        return Err("cargo build --release -p standin failed".into());
    }
    let exe = std::env::current_exe()?;
    let binary = exe
        .parent()
        .ok_or("no directory for the bench binary")?
        .join("standin");
    if !binary.exists() {
        return Err(format!("{} not found", binary.display()).into());
    }
    Ok(binary)
}

/// rsync on the PATH, installed with apt-get when missing.
pub fn rsync_binary() -> Outcome<PathBuf> {
    let find = || {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("rsync"))
                .find(|candidate| candidate.exists())
        })
    };
    if let Some(found) = find() {
        return Ok(found);
    }
    eprintln!("rsync is missing; installing it with apt-get ...");
    let _ = Command::new("apt-get").args(["update", "-qq"]).status();
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq", "rsync"])
        .status()?;
    if !status.success() {
        return Err("apt-get install rsync failed; install rsync and run again".into());
    }
    find().ok_or_else(|| "rsync still not found after installing it".into())
}

fn free_port() -> Outcome<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A GET on 127.0.0.1:`port`, returning the body.
fn http_get(port: u16, path: &str) -> Option<String> {
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
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
}

fn metric(port: u16, name: &str) -> Option<u64> {
    let body = http_get(port, "/metrics")?;
    body.lines()
        .find(|line| line.starts_with(name) && line[name.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse::<f64>().ok())
        .map(|value| value as u64)
}

/// A `standin serve` process, killed when dropped.
pub struct Node {
    pub config: PathBuf,
    pub http: u16,
    child: Child,
}

impl Node {
    pub fn start(
        binary: &Path,
        root: &Path,
        name: &str,
        folder: &Path,
        role: &str,
        peer: Option<u16>,
        period: f64,
    ) -> Outcome<(Node, u16)> {
        let (grpc, http) = (free_port()?, free_port()?);
        let secret = root.join("pair.secret");
        if !secret.exists() {
            Command::new(binary)
                .arg("init-secret")
                .arg(&secret)
                .stdout(Stdio::null())
                .status()?;
        }
        let peer = peer
            .map(|port| format!("peer_url = \"http://127.0.0.1:{port}\"\n"))
            .unwrap_or_default();
        let config = root.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "node_name = \"{name}\"\nfolder = \"{}\"\ndata_dir = \"{}\"\nlisten = \"127.0.0.1:{grpc}\"\nhttp_listen = \"127.0.0.1:{http}\"\nrole = \"{role}\"\n{peer}replication_period = {period}\nsecret_file = \"{}\"\n",
                folder.display(),
                root.join(format!("{name}-data")).display(),
                secret.display()
            ),
        )?;
        let log = std::fs::File::create(root.join(format!("{name}.log")))?;
        let child = Command::new(binary)
            .args(["serve", "--config"])
            .arg(&config)
            .env("STANDIN_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()?;
        let node = Node {
            config,
            http,
            child,
        };
        let started = Instant::now();
        while http_get(http, "/healthz").is_none() {
            if started.elapsed() > LIMIT {
                return Err(format!("{name} did not start").into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok((node, grpc))
    }

    pub fn head(&self) -> u64 {
        metric(self.http, "standin_head_seq").unwrap_or(0)
    }

    pub fn wait_head(&self, what: &str, mut done: impl FnMut(u64) -> bool) -> Outcome<()> {
        let started = Instant::now();
        loop {
            if done(self.head()) {
                return Ok(());
            }
            if started.elapsed() > LIMIT {
                return Err(format!("timed out waiting for {what}").into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn verify(&self, binary: &Path) -> Outcome<()> {
        let output = Command::new(binary)
            .args(["verify", "--config"])
            .arg(&self.config)
            .output()?;
        if !output.status.success() {
            return Err(
                format!("verify failed: {}", String::from_utf8_lossy(&output.stdout)).into(),
            );
        }
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Times of one standin initial sync.
pub struct SyncTimes {
    pub caught_up: Duration,
    pub verified: Duration,
}

/// Start an active on `corpus` (waiting until it recorded `entries` events), then time
/// an empty passive's catch-up.
pub fn standin_initial_sync(
    binary: &Path,
    work: &Path,
    corpus: &Path,
    entries: u64,
    run: usize,
) -> Outcome<SyncTimes> {
    let root = work.join(format!(
        "pair-{run}-{}",
        corpus
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or("corpus")
    ));
    std::fs::create_dir_all(&root)?;
    let (alpha, alpha_grpc) = Node::start(binary, &root, "alpha", corpus, "active", None, 1.0)?;
    alpha.wait_head("the active to record the corpus", |head| head >= entries)?;
    let replica = root.join("replica");
    std::fs::create_dir(&replica)?;
    crate::measure::sync_all();
    crate::measure::warm(corpus)?;
    let target = alpha.head();
    let started = Instant::now();
    let (beta, _) = Node::start(
        binary,
        &root,
        "beta",
        &replica,
        "passive",
        Some(alpha_grpc),
        0.0,
    )?;
    beta.wait_head("the passive to catch up", |head| head >= target)?;
    let caught_up = started.elapsed();
    beta.verify(binary)?;
    let verified = started.elapsed();
    Ok(SyncTimes {
        caught_up,
        verified,
    })
}

/// An rsync daemon serving `corpus` as module `corpus`; killed when dropped.
pub struct RsyncDaemon {
    pub port: u16,
    child: Child,
}

impl RsyncDaemon {
    pub fn start(rsync: &Path, work: &Path, corpus: &Path) -> Outcome<RsyncDaemon> {
        let port = free_port()?;
        let config = work.join(format!("rsyncd-{port}.conf"));
        std::fs::write(
            &config,
            format!("use chroot = no\nuid = root\ngid = root\n[corpus]\n  path = {}\n  read only = yes\n", corpus.display()),
        )?;
        let child = Command::new(rsync)
            .args([
                "--daemon",
                "--no-detach",
                &format!("--port={port}"),
                "--address=127.0.0.1",
            ])
            .arg(format!("--config={}", config.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if started.elapsed() > Duration::from_secs(10) {
                return Err("the rsync daemon did not start".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(RsyncDaemon { port, child })
    }

    /// `rsync -a` the module into a fresh `target`, then `sync`.
    pub fn copy(&self, rsync: &Path, target: &Path) -> Outcome<Duration> {
        let started = Instant::now();
        let status = Command::new(rsync)
            .arg("-a")
            .arg(format!("rsync://127.0.0.1:{}/corpus/", self.port))
            .arg(target)
            .status()?;
        if !status.success() {
            return Err(format!("rsync failed: {status}").into());
        }
        crate::measure::sync_all();
        Ok(started.elapsed())
    }
}

impl Drop for RsyncDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lag with `replication_period = 0`: `changes` writes of a 4 KiB file on the active,
/// each timed until the passive has its content. Returns the sorted latencies.
pub fn lag(binary: &Path, work: &Path, changes: usize) -> Outcome<Vec<Duration>> {
    let root = work.join("lag");
    let (active_folder, passive_folder) = (root.join("active"), root.join("passive"));
    std::fs::create_dir_all(&active_folder)?;
    std::fs::create_dir_all(&passive_folder)?;
    let (alpha, alpha_grpc) =
        Node::start(binary, &root, "alpha", &active_folder, "active", None, 1.0)?;
    let (_beta, _) = Node::start(
        binary,
        &root,
        "beta",
        &passive_folder,
        "passive",
        Some(alpha_grpc),
        0.0,
    )?;
    let mut bytes = crate::corpus::Bytes::new(9);
    let mut content = vec![0u8; 4096];
    let mut latencies = Vec::with_capacity(changes);
    for change in 0..changes {
        bytes.fill(&mut content);
        let name = format!("record{}.dat", change % 20);
        let started = Instant::now();
        std::fs::write(active_folder.join(&name), &content)?;
        let replica = passive_folder.join(&name);
        loop {
            if std::fs::read(&replica).is_ok_and(|got| got == content) {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                return Err(format!("change {change} never reached the passive").into());
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        latencies.push(started.elapsed());
        // Let the active settle so every change is timed alone.
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(alpha);
    latencies.sort();
    Ok(latencies)
}
