//! Replication over loopback with two real `standin serve` processes, beside an rsync
//! daemon on 127.0.0.1 measured in the same run.
//!
//! - initial sync: an active holding the corpus (already recorded, not timed) and an
//!   empty passive; timed from the passive's start until its head equals the active's
//!   (every batch applied and made durable), and separately until `standin verify`
//!   passes on it. rsync: `rsync -a rsync://127.0.0.1:PORT/corpus/ DIR` then `sync`.
//! - lag: with `replication_period = 0`, a 4 KiB file written on the active, timed until
//!   the passive has it, many times; median, p99 and max (under a steady writer, beside
//!   lsyncd: `lag.rs`).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

type Outcome<T> = Result<T, Box<dyn std::error::Error>>;

const LIMIT: Duration = Duration::from_secs(600);

/// The `standin` binary: `given`, or the one next to this binary, built first (release)
/// when missing or stale.
pub fn standin_binary(given: Option<&Path>) -> Outcome<PathBuf> {
    if let Some(given) = given {
        if !given.exists() {
            return Err(format!("{} not found", given.display()).into());
        }
        return Ok(given.to_path_buf());
    }
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
    find_or_install("rsync", "rsync")
}

/// `program` on the PATH, installed with apt-get (Debian package `package`) when
/// missing.
pub fn find_or_install(program: &str, package: &str) -> Outcome<PathBuf> {
    let find = || {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(program))
                .find(|candidate| candidate.exists())
        })
    };
    if let Some(found) = find() {
        return Ok(found);
    }
    eprintln!("{program} is missing; installing {package} with apt-get ...");
    let _ = Command::new("apt-get").args(["update", "-qq"]).status();
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq", package])
        .status()?;
    if !status.success() {
        return Err(format!("apt-get install {package} failed; install it and run again").into());
    }
    find().ok_or_else(|| format!("{program} still not found after installing {package}").into())
}

/// A (gRPC, HTTP) pair of free ports for a node started later.
pub fn ports() -> Outcome<(u16, u16)> {
    Ok((free_port()?, free_port()?))
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
    // Every argument is a distinct part of a node's config; a struct would only
    // rename them.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        binary: &Path,
        root: &Path,
        name: &str,
        folder: &Path,
        role: &str,
        peer: Option<u16>,
        period: f64,
        extra: &str,
    ) -> Outcome<(Node, u16)> {
        Node::start_with(
            binary,
            root,
            name,
            folder,
            role,
            peer,
            period,
            extra,
            (free_port()?, free_port()?),
        )
    }

    /// `start` on given (gRPC, HTTP) ports, so that a pair can name each other as
    /// peers before either runs (as deployed: each node's `peer_url` is the other).
    #[allow(clippy::too_many_arguments)]
    pub fn start_with(
        binary: &Path,
        root: &Path,
        name: &str,
        folder: &Path,
        role: &str,
        peer: Option<u16>,
        period: f64,
        extra: &str,
        (grpc, http): (u16, u16),
    ) -> Outcome<(Node, u16)> {
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
                "node_name = \"{name}\"\nfolder = \"{}\"\ndata_dir = \"{}\"\nlisten = \"127.0.0.1:{grpc}\"\nhttp_listen = \"127.0.0.1:{http}\"\nrole = \"{role}\"\n{peer}replication_period = {period}\nsecret_file = \"{}\"\n{extra}\n",
                folder.display(),
                root.join(format!("{name}-data")).display(),
                secret.display()
            ),
        )?;
        let log_path = root.join(format!("{name}.log"));
        // A port chosen free can be taken before the node binds it (by some other
        // process's connection): the node then exits at once, and is started again on
        // the same ports (its peer already names them) after a pause.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let log = std::fs::File::create(&log_path)?;
            let child = Command::new(binary)
                .args(["serve", "--config"])
                .arg(&config)
                // STANDIN_BENCH_LOG: the nodes' log level (e.g. for step timings).
                .env(
                    "STANDIN_LOG",
                    std::env::var("STANDIN_BENCH_LOG").unwrap_or_else(|_| "warn".to_string()),
                )
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .spawn()?;
            let mut node = Node {
                config: config.clone(),
                http,
                child,
            };
            let started = Instant::now();
            loop {
                if http_get(http, "/healthz").is_some() {
                    return Ok((node, grpc));
                }
                if let Some(status) = node.child.try_wait()? {
                    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    if log.contains("Address already in use") && attempts < 50 {
                        std::thread::sleep(Duration::from_millis(200));
                        break;
                    }
                    return Err(format!("{name} exited at start ({status}): {log}").into());
                }
                if started.elapsed() > LIMIT {
                    return Err(format!("{name} did not start").into());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// A counter or gauge from `/metrics`.
    pub fn metric(&self, name: &str) -> u64 {
        metric(self.http, name).unwrap_or(0)
    }

    /// Forget the peak resident memory so far (`VmHWM`), so that `resources` reports
    /// the peak of what follows. Best effort (Linux >= 4.0).
    pub fn reset_peak(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5");
    }

    /// Peak resident memory (MB) and CPU seconds so far, from /proc.
    pub fn resources(&self) -> (f64, f64) {
        let pid = self.child.id();
        let rss_kb = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|line| line.starts_with("VmHWM:"))
                    .and_then(|line| line.split_whitespace().nth(1))
                    .and_then(|value| value.parse::<f64>().ok())
            })
            .unwrap_or(0.0);
        // utime and stime are fields 14 and 15 of /proc/PID/stat, in clock ticks (100/s).
        let cpu_ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|text| {
                // After the ")" that ends the name, field 3 (the state) comes first.
                let after_name = text.rsplit_once(')')?.1.to_string();
                let fields: Vec<&str> = after_name.split_whitespace().collect();
                Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
            })
            .unwrap_or(0);
        (rss_kb / 1024.0, cpu_ticks as f64 / 100.0)
    }

    pub fn is_active(&self) -> bool {
        let Some(stream) = std::net::TcpStream::connect(("127.0.0.1", self.http)).ok() else {
            return false;
        };
        let mut stream = stream;
        if write!(
            stream,
            "GET /active HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .is_err()
        {
            return false;
        }
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response.starts_with("HTTP/1.1 200")
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

/// Times of one standin initial sync, and what both nodes used during it.
pub struct SyncTimes {
    pub caught_up: Duration,
    pub verified: Duration,
    /// The active while it served the sync: peak RSS since the sync began, CPU seconds.
    pub active: Usage,
    /// The passive from its start to `verify` passing.
    pub passive: Usage,
    /// CPU seconds per second of the active, idle, while its peer was not running.
    pub lone_active_cpu_per_s: f64,
    /// Bytes the passive's data_dir takes on disk once it has verified (allocated
    /// blocks), beside the corpus's bytes: what keeping content costs it.
    pub passive_data_bytes: u64,
}

/// Bytes allocated to the files under `dir` (blocks, so sparse files count as such).
fn allocated_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(listing) = std::fs::read_dir(&dir) else {
            continue;
        };
        for item in listing.flatten() {
            let Ok(metadata) = item.metadata() else {
                continue;
            };
            if metadata.is_dir() {
                dirs.push(item.path());
            } else {
                total += metadata.blocks() * 512;
            }
        }
    }
    total
}

/// Peak resident memory and CPU time.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub rss_mb: f64,
    pub cpu_s: f64,
}

/// Wait for `pid` (a child of ours) to end; its peak RSS and CPU time, including those
/// of the descendants it waited for. `Err` when it exits with a failure.
fn wait_usage(pid: u32) -> Outcome<(bool, Usage)> {
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own child, not yet waited for; both pointers are valid.
    let waited = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
    if waited < 0 {
        return Err(format!("wait4({pid}): {}", std::io::Error::last_os_error()).into());
    }
    let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
    let success = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    Ok((
        success,
        Usage {
            rss_mb: usage.ru_maxrss as f64 / 1024.0,
            cpu_s: seconds(usage.ru_utime) + seconds(usage.ru_stime),
        },
    ))
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
    let beta_ports = ports()?;
    let (alpha, alpha_grpc) = Node::start(
        binary,
        &root,
        "alpha",
        corpus,
        "active",
        Some(beta_ports.0),
        1.0,
        "",
    )?;
    alpha.wait_head("the active to record the corpus", |head| head >= entries)?;
    let replica = root.join("replica");
    std::fs::create_dir(&replica)?;
    crate::measure::sync_all();
    crate::measure::warm(corpus)?;
    let target = alpha.head();
    // The active alone, idle, its peer not yet started: what it burns while it waits.
    let lone_before = alpha.resources().1;
    std::thread::sleep(Duration::from_secs(1));
    let lone_active_cpu_per_s = alpha.resources().1 - lone_before;
    alpha.reset_peak();
    let active_cpu_before = alpha.resources().1;
    let started = Instant::now();
    let (beta, _) = Node::start_with(
        binary,
        &root,
        "beta",
        &replica,
        "passive",
        Some(alpha_grpc),
        0.0,
        "",
        beta_ports,
    )?;
    beta.wait_head("the passive to catch up", |head| head >= target)?;
    let caught_up = started.elapsed();
    beta.verify(binary)?;
    let verified = started.elapsed();
    let passive_data_bytes = allocated_bytes(&root.join("beta-data"));
    let (active_rss, active_cpu) = alpha.resources();
    let (passive_rss, passive_cpu) = beta.resources();
    Ok(SyncTimes {
        passive_data_bytes,
        caught_up,
        verified,
        active: Usage {
            rss_mb: active_rss,
            cpu_s: active_cpu - active_cpu_before,
        },
        passive: Usage {
            rss_mb: passive_rss,
            cpu_s: passive_cpu,
        },
        lone_active_cpu_per_s,
    })
}

/// An rsync daemon serving `corpus` as module `corpus`; killed when dropped.
pub struct RsyncDaemon {
    pub port: u16,
    child: Option<Child>,
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
        Ok(RsyncDaemon {
            port,
            child: Some(child),
        })
    }

    /// `rsync -a` the module into a fresh `target`, then `sync`; with the client's
    /// (the receiver's) peak RSS and CPU time.
    pub fn copy_measured(&self, rsync: &Path, target: &Path) -> Outcome<(Duration, Usage)> {
        let started = Instant::now();
        let child = Command::new(rsync)
            .arg("-a")
            .arg(format!("rsync://127.0.0.1:{}/corpus/", self.port))
            .arg(target)
            .spawn()?;
        let (success, usage) = wait_usage(child.id())?;
        if !success {
            return Err("rsync failed".into());
        }
        crate::measure::sync_all();
        Ok((started.elapsed(), usage))
    }

    /// `rsync -a --stats` into an existing `target` (a rescan, then the differences),
    /// then `sync`: the time and the bytes the receiver got.
    pub fn update(&self, rsync: &Path, target: &Path) -> Outcome<(Duration, u64)> {
        let started = Instant::now();
        let output = Command::new(rsync)
            .args(["-a", "--stats"])
            .arg(format!("rsync://127.0.0.1:{}/corpus/", self.port))
            .arg(target)
            .output()?;
        if !output.status.success() {
            return Err(format!("rsync failed: {}", output.status).into());
        }
        crate::measure::sync_all();
        let elapsed = started.elapsed();
        let stats = String::from_utf8_lossy(&output.stdout);
        let bytes = stats
            .lines()
            .find(|line| line.starts_with("Total bytes received:"))
            .and_then(|line| line.split(':').nth(1))
            .map(|value| value.trim().replace(',', ""))
            .and_then(|value| value.parse().ok())
            .unwrap_or(0);
        Ok((elapsed, bytes))
    }

    /// Stop the daemon; the peak RSS and total CPU time of the daemon and the senders
    /// it forked (one per connection).
    pub fn finish(mut self) -> Outcome<Usage> {
        // Let the daemon reap its last sender, so that its usage is counted.
        std::thread::sleep(Duration::from_millis(300));
        let mut child = self.child.take().ok_or("the daemon was already stopped")?;
        child.kill()?;
        Ok(wait_usage(child.id())?.1)
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
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A pair for the lag measurements: the passive streams (`replication_period = 0`),
/// each names the other as its peer, as deployed.
pub struct StreamingPair {
    pub alpha: Node,
    pub beta: Node,
    pub active_folder: PathBuf,
    pub passive_folder: PathBuf,
}

impl StreamingPair {
    pub fn start(binary: &Path, root: &Path) -> Outcome<StreamingPair> {
        let (active_folder, passive_folder) = (root.join("active"), root.join("passive"));
        std::fs::create_dir_all(&active_folder)?;
        std::fs::create_dir_all(&passive_folder)?;
        let beta_ports = ports()?;
        let (alpha, alpha_grpc) = Node::start(
            binary,
            root,
            "alpha",
            &active_folder,
            "active",
            Some(beta_ports.0),
            1.0,
            "",
        )?;
        let (beta, _) = Node::start_with(
            binary,
            root,
            "beta",
            &passive_folder,
            "passive",
            Some(alpha_grpc),
            0.0,
            "",
            beta_ports,
        )?;
        Ok(StreamingPair {
            alpha,
            beta,
            active_folder,
            passive_folder,
        })
    }
}

/// Lag with `replication_period = 0`: `changes` writes of a 4 KiB file on the active,
/// each timed until the passive has its content. Returns the sorted latencies.
pub fn lag(binary: &Path, work: &Path, changes: usize) -> Outcome<Vec<Duration>> {
    let StreamingPair {
        alpha,
        beta: _beta,
        active_folder,
        passive_folder,
    } = StreamingPair::start(binary, &work.join("lag"))?;
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

/// What the incremental, takeover and resources phase measured.
pub struct Incremental {
    /// From the last change written to the passive having applied them all (rsync's
    /// clock, too, starts once the changes are made).
    pub standin: Duration,
    /// How long writing the changes took (before `standin`'s clock starts).
    pub writing: Duration,
    pub standin_wire_bytes: u64,
    pub rsync: Duration,
    pub rsync_wire_bytes: u64,
    pub takeover: Duration,
    pub failover_after_ms: u64,
    pub resources: Vec<(String, f64, f64)>,
}

/// Copy `small` and the first two files of `large` into a fresh folder, sync it to a
/// passive and to an rsync target, then change it — 1% of the small files rewritten,
/// 1 MiB appended to one large file, 4 KiB changed in the middle of the other — and
/// time how long each takes to have it all, with the bytes each sent. Then SIGKILL the
/// active and time the passive's takeover.
pub fn incremental(
    binary: &Path,
    rsync: &Path,
    work: &Path,
    small: &Path,
    large: &Path,
) -> Outcome<Incremental> {
    let root = work.join("incremental");
    let folder = root.join("folder");
    std::fs::create_dir_all(&folder)?;
    crate::measure::time_command(
        "cp",
        &[
            "-a",
            &small.to_string_lossy(),
            &folder.join("small").to_string_lossy(),
        ],
    )?;
    std::fs::create_dir(folder.join("large"))?;
    for name in ["large0.bin", "large1.bin"] {
        std::fs::copy(large.join(name), folder.join("large").join(name))?;
    }
    let failover_after_ms = 2_000;
    let timing = format!("heartbeat_interval_ms = 200\nfailover_after_ms = {failover_after_ms}\n");
    let beta_ports = ports()?;
    let (mut alpha, alpha_grpc) = Node::start(
        binary,
        &root,
        "alpha",
        &folder,
        "active",
        Some(beta_ports.0),
        1.0,
        &timing,
    )?;
    let replica = root.join("replica");
    std::fs::create_dir(&replica)?;
    let (beta, _) = Node::start_with(
        binary,
        &root,
        "beta",
        &replica,
        "passive",
        Some(alpha_grpc),
        0.0,
        &timing,
        beta_ports,
    )?;
    let small_files = std::fs::read_dir(folder.join("small"))?.count();
    alpha.wait_head("the active to record the folder", |head| {
        head > small_files as u64
    })?;
    let target = alpha.head();
    beta.wait_head("the passive to catch up", |head| head >= target)?;
    let daemon = RsyncDaemon::start(rsync, &root, &folder)?;
    let rsync_target = root.join("rsync-target");
    daemon.copy(rsync, &rsync_target)?;
    std::thread::sleep(Duration::from_secs(2));

    // The changes.
    let bytes_before = beta.metric("standin_bytes_replicated_total");
    let head_before = alpha.head();
    let started = Instant::now();
    let mut generator = crate::corpus::Bytes::new(77);
    let mut content = vec![0u8; 4096];
    let mut rewritten = 0u64;
    let mut small_paths: Vec<PathBuf> = Vec::new();
    for dir in std::fs::read_dir(folder.join("small"))? {
        for file in std::fs::read_dir(dir?.path())? {
            small_paths.push(file?.path());
        }
    }
    small_paths.sort();
    for path in small_paths.iter().step_by(100) {
        generator.fill(&mut content);
        std::fs::write(path, &content)?;
        rewritten += 1;
    }
    let mut appended = std::fs::OpenOptions::new()
        .append(true)
        .open(folder.join("large/large0.bin"))?;
    let mut mebibyte = vec![0u8; 1 << 20];
    generator.fill(&mut mebibyte);
    appended.write_all(&mebibyte)?;
    drop(appended);
    {
        use std::io::{Seek, SeekFrom};
        let mut middle = std::fs::OpenOptions::new()
            .write(true)
            .open(folder.join("large/large1.bin"))?;
        let length = middle.metadata()?.len();
        middle.seek(SeekFrom::Start(length / 2))?;
        generator.fill(&mut content);
        middle.write_all(&content)?;
    }
    let writing = started.elapsed();
    let written = Instant::now();
    let expected = head_before + rewritten + 2;
    alpha.wait_head("the active to record the changes", |head| head >= expected)?;
    let final_head = alpha.head();
    beta.wait_head("the passive to apply them", |head| head >= final_head)?;
    let standin = written.elapsed();
    let standin_wire_bytes = beta
        .metric("standin_bytes_replicated_total")
        .saturating_sub(bytes_before);

    let (rsync_time, rsync_wire_bytes) = daemon.update(rsync, &rsync_target)?;

    let resources = vec![
        (
            "standin active".to_string(),
            alpha.resources().0,
            alpha.resources().1,
        ),
        (
            "standin passive".to_string(),
            beta.resources().0,
            beta.resources().1,
        ),
    ];
    alpha.kill();
    let killed = Instant::now();
    while !beta.is_active() {
        if killed.elapsed() > LIMIT {
            return Err("the passive did not take over".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let takeover = killed.elapsed();
    Ok(Incremental {
        standin,
        writing,
        standin_wire_bytes,
        rsync: rsync_time,
        rsync_wire_bytes,
        takeover,
        failover_after_ms,
        resources,
    })
}

/// What one small-file incremental round measured.
pub struct SmallIncremental {
    pub files: usize,
    pub changed: usize,
    /// From the last change written to the passive having applied them all.
    pub standin: Duration,
    /// How long writing the changes took (before `standin`'s clock starts).
    pub writing: Duration,
    pub standin_wire_bytes: u64,
    pub rsync: Duration,
    pub rsync_wire_bytes: u64,
}

/// A folder of `files` 4 KiB files (200 per directory), synced to a passive and to an
/// rsync target; then `changed` of them rewritten: the time until the passive applied
/// them (standin: the active already knows what changed) beside an rsync run (which
/// must rescan the whole folder to find them), with the bytes each moved.
pub fn small_incremental(
    binary: &Path,
    rsync: &Path,
    work: &Path,
    files: usize,
    changed: usize,
) -> Outcome<SmallIncremental> {
    let root = work.join(format!("small-incremental-{files}"));
    let folder = root.join("folder");
    let dirs = files.div_ceil(200).max(1);
    crate::corpus::small_files(&folder, files, dirs, 4096)?;
    crate::measure::sync_all();
    let entries = (files + dirs) as u64;
    let beta_ports = ports()?;
    let (alpha, alpha_grpc) = Node::start(
        binary,
        &root,
        "alpha",
        &folder,
        "active",
        Some(beta_ports.0),
        1.0,
        "",
    )?;
    alpha.wait_head("the active to record the folder", |head| head >= entries)?;
    let replica = root.join("replica");
    std::fs::create_dir(&replica)?;
    let (beta, _) = Node::start_with(
        binary,
        &root,
        "beta",
        &replica,
        "passive",
        Some(alpha_grpc),
        0.0,
        "",
        beta_ports,
    )?;
    let target = alpha.head();
    beta.wait_head("the passive to catch up", |head| head >= target)?;
    let daemon = RsyncDaemon::start(rsync, &root, &folder)?;
    let rsync_target = root.join("rsync-target");
    daemon.copy(rsync, &rsync_target)?;
    std::thread::sleep(Duration::from_secs(2));
    crate::measure::warm(&folder)?;

    let bytes_before = beta.metric("standin_bytes_replicated_total");
    let head_before = alpha.head();
    let step = (files / changed.max(1)).max(1);
    let mut generator = crate::corpus::Bytes::new(78);
    let mut content = vec![0u8; 4096];
    let started = Instant::now();
    let mut rewritten = 0u64;
    for index in (0..files).step_by(step).take(changed) {
        generator.fill(&mut content);
        std::fs::write(
            folder.join(format!("dir{:03}/file{index:05}.dat", index % dirs)),
            &content,
        )?;
        rewritten += 1;
    }
    let writing = started.elapsed();
    let written = Instant::now();
    let expected = head_before + rewritten;
    alpha.wait_head("the active to record the changes", |head| head >= expected)?;
    let final_head = alpha.head();
    beta.wait_head("the passive to apply them", |head| head >= final_head)?;
    let standin = written.elapsed();
    let standin_wire_bytes = beta
        .metric("standin_bytes_replicated_total")
        .saturating_sub(bytes_before);
    let (rsync_time, rsync_wire_bytes) = daemon.update(rsync, &rsync_target)?;
    Ok(SmallIncremental {
        files,
        changed: rewritten as usize,
        standin,
        writing,
        standin_wire_bytes,
        rsync: rsync_time,
        rsync_wire_bytes,
    })
}
