//! `NodeProcess`: one configured `standin serve` — started, watched until it answers,
//! stopped or killed (always killed when dropped), and asked through HTTP and the CLI.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{http_get, metric_in, Error, NodeSpec};

/// How a node's process is started (from its `NodeSpec`).
#[derive(Clone, Debug)]
pub(crate) struct Launch {
    pub(crate) log_level: String,
    pub(crate) start_limit: Duration,
    pub(crate) taken_port_retries: u32,
    pub(crate) env: Vec<(String, String)>,
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
    /// Extra environment for the process (besides the spec's).
    pub env: Vec<(String, String)>,
    binary: PathBuf,
    launch: Launch,
    child: Option<Child>,
}

impl NodeProcess {
    // The parts of a configured node, each its own: only `NodeSpec` calls this.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        binary: PathBuf,
        name: String,
        folder: PathBuf,
        data_dir: PathBuf,
        config: PathBuf,
        (grpc, http): (u16, u16),
        log: PathBuf,
        launch: Launch,
    ) -> NodeProcess {
        NodeProcess {
            name,
            folder,
            data_dir,
            config,
            grpc,
            http,
            log,
            env: Vec::new(),
            binary,
            launch,
            child: None,
        }
    }

    /// The form the tests used before `NodeSpec`: `NodeSpec::new(name, role)
    /// .peer_opt(peer_grpc).extra(extra).configure(root)`.
    pub fn configure(
        root: &Path,
        name: &str,
        role: &str,
        peer_grpc: Option<u16>,
        extra: &str,
    ) -> NodeProcess {
        NodeSpec::new(name, role)
            .peer_opt(peer_grpc)
            .extra(extra)
            .configure(root)
    }

    /// Start and wait until its HTTP server answers; panics with the node's log when
    /// it exits or does not answer (tests).
    pub fn start(&mut self) {
        if let Err(error) = self.try_start() {
            panic!("{error}");
        }
    }

    /// Start and wait until its HTTP server answers (`/healthz` says 503 until it has
    /// a role, but it answers); the error carries the node's log.
    pub fn try_start(&mut self) -> Result<(), Error> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let retrying = self.launch.taken_port_retries > 0;
            let mut log = std::fs::OpenOptions::new();
            if retrying {
                log.create(true).write(true).truncate(true);
            } else {
                log.create(true).append(true);
            }
            let log = log.open(&self.log)?;
            let child = Command::new(&self.binary)
                .args(["serve", "--config"])
                .arg(&self.config)
                .env("STANDIN_LOG", &self.launch.log_level)
                .envs(self.launch.env.iter().map(|(key, value)| (key, value)))
                .envs(self.env.iter().map(|(key, value)| (key, value)))
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .spawn()?;
            self.child = Some(child);
            let started = Instant::now();
            loop {
                if http_get(self.http, "/healthz").is_some() {
                    return Ok(());
                }
                if let Some(child) = self.child.as_mut() {
                    if let Some(status) = child.try_wait()? {
                        self.child = None;
                        let log = self.log_text();
                        if log.contains("Address already in use")
                            && attempts <= self.launch.taken_port_retries
                        {
                            std::thread::sleep(Duration::from_millis(200));
                            break;
                        }
                        return Err(format!("{} exited with {status}:\n{log}", self.name).into());
                    }
                }
                if started.elapsed() > self.launch.start_limit {
                    return Err(format!("{} did not start:\n{}", self.name, self.log_text()).into());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Append `peer_url` naming `grpc` on 127.0.0.1 to the config (a node configured
    /// before its peer had ports).
    pub fn set_peer(&self, grpc: u16) {
        let mut text = std::fs::read_to_string(&self.config).expect("the node's config");
        let scheme = if text.contains("tls_cert_file") {
            "https"
        } else {
            "http"
        };
        text.push_str(&format!("peer_url = \"{scheme}://127.0.0.1:{grpc}\"\n"));
        std::fs::write(&self.config, text).expect("the node's config written");
    }

    /// The running process's id.
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
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
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
        metric_in(&body, name)
    }

    /// The head of its log (0 when it does not answer).
    pub fn head_seq(&self) -> u64 {
        self.metric("standin_head_seq").unwrap_or(-1.0) as u64
    }

    /// Whether `/active` answers 200 (the node takes logins).
    pub fn is_active(&self) -> bool {
        http_get(self.http, "/active").is_some_and(|(status, _)| status == 200)
    }

    /// Run a `standin` subcommand against this node.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(&self.binary)
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .expect("the standin binary runs")
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
