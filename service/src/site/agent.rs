//! `standin agent`: a terminal server's load reporter. It samples the machine's real
//! load (CPU from /proc/stat, memory from /proc/meminfo, a session count from a
//! configurable command) and reports it to every node of the `;`-separated dispatch
//! list, each on its own schedule. A node that is down just misses reports: nothing
//! is queued, the next report is fresh.
//!
//! Each report also carries the agent's witness (`authority = "witness"`): how long
//! since it last reached each other node, whether it told another node the recipient
//! was lost, and the highest authority it has seen — kept by the engine's pure
//! `AgentWitness`, shared by the per-node reporters. With its own key (`--key-file`)
//! it signs every report (`report_auth::sign`), echoing each answer of a node once.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use standin_engine::role::authority::{AgentWitness, NodeAnswer};

use standin_proto::v1 as wire;
use standin_proto::v1::agent_client::AgentClient;

/// What the agent reports, besides its sampled load.
#[derive(Clone, Debug)]
pub struct AgentSettings {
    pub name: String,
    pub address: String,
    pub urls: Vec<String>,
    pub credential: Credential,
    pub interval: Duration,
    pub apps: Vec<String>,
    pub sessions_command: Option<String>,
}

/// How the agent proves who it is.
#[derive(Clone)]
pub enum Credential {
    /// Its own key (`--key-file`): every report is signed (`report_auth::sign`).
    Key(crate::site::agent_keys::AgentKey),
    /// The agents' shared secret (`--secret-file`), as a bearer token: only for nodes
    /// without per-agent keys.
    Shared(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Key(key) => write!(formatter, "Key({key:?})"),
            Credential::Shared(_) => formatter.write_str("Shared(..)"),
        }
    }
}

/// Send one report; the node's answer.
async fn send(
    url: &str,
    credential: &Credential,
    report: wire::LoadReport,
) -> Result<wire::LoadAck, tonic::Status> {
    let channel = crate::wire::client::channel(url, None).map_err(tonic::Status::unavailable)?;
    let answer = match credential {
        Credential::Key(key) => {
            AgentClient::new(channel)
                .report_load(crate::site::report_auth::sign(&report, key))
                .await
        }
        Credential::Shared(secret) => {
            let auth =
                crate::wire::auth::AddSecret::new(secret).map_err(tonic::Status::unavailable)?;
            AgentClient::with_interceptor(channel, auth)
                .report_load(report)
                .await
        }
    };
    answer.map(tonic::Response::into_inner)
}

/// CPU time counters from /proc/stat: (busy, total).
fn cpu_counters() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|value| value.parse().ok())
        .collect();
    if values.len() < 4 {
        return None;
    }
    let total: u64 = values.iter().sum();
    let idle = values[3] + values.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

fn memory_percent() -> f64 {
    let Ok(text) = std::fs::read_to_string("/proc/meminfo") else {
        return 0.0;
    };
    let field = |name: &str| {
        text.lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|value| value.parse::<f64>().ok())
    };
    match (field("MemTotal:"), field("MemAvailable:")) {
        (Some(total), Some(available)) if total > 0.0 => (1.0 - available / total) * 100.0,
        _ => 0.0,
    }
}

async fn sessions(command: &Option<String>) -> u32 {
    let Some(command) = command else { return 0 };
    let output = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(command)
            .output(),
    )
    .await;
    match output {
        Ok(Ok(output)) if output.status.success() => String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .unwrap_or(0),
        _ => {
            tracing::warn!(%command, "the sessions command failed; reporting 0 sessions");
            0
        }
    }
}

/// The witness shared by the reporters, on the agent's own monotonic clock.
#[derive(Clone)]
struct SharedWitness {
    started: Instant,
    witness: Arc<Mutex<AgentWitness>>,
}

impl SharedWitness {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn with<T>(&self, f: impl FnOnce(&mut AgentWitness) -> T) -> T {
        let mut witness = self
            .witness
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut witness)
    }
}

/// Report to one node forever.
async fn report_to(settings: AgentSettings, url: String, witness: SharedWitness) {
    let mut previous = cpu_counters();
    let mut was_up = true;
    let signed = matches!(settings.credential, Credential::Key(_));
    // Signed reports: the node's answer last echoed. An answer is echoed once (the
    // node counts it once): without a newer one, the agent greets the node instead.
    let mut echoed: Option<(u64, u64)> = None;
    let mut ticker = tokio::time::interval(settings.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let now = cpu_counters();
        let cpu_percent = match (previous, now) {
            (Some((busy_before, total_before)), Some((busy, total))) if total > total_before => {
                (busy - busy_before) as f64 / (total - total_before) as f64 * 100.0
            }
            _ => 0.0,
        };
        previous = now;
        let memory_percent = memory_percent();
        let sessions = sessions(&settings.sessions_command).await;
        // A signed report the node did not count (a greeting, or one echoing an
        // answer it no longer takes) is followed at once by one that echoes its
        // fresh answer: at most three sends a tick.
        for _attempt in 0..3 {
            // The vote is decided just before the report leaves.
            let sent_ms = witness.now_ms();
            let seen = witness.with(|w| w.report_for(&settings.name, &url, sent_ms));
            let (highest_epoch, highest_node) = seen.highest.clone().unwrap_or_default();
            let mut echo = seen.echo.unwrap_or_default();
            if signed {
                if seen.echo.is_none() || seen.echo == echoed {
                    echo = (0, 0);
                } else {
                    echoed = seen.echo;
                }
            }
            let greeting = signed && echo.0 == 0;
            let report = wire::LoadReport {
                reachable: seen.reachable,
                vote: seen.vote,
                highest_epoch,
                highest_node,
                echo_instance: echo.0,
                echo_time_ms: echo.1,
                name: settings.name.clone(),
                address: settings.address.clone(),
                cpu_percent,
                memory_percent,
                sessions,
                apps: settings.apps.clone(),
                interval_ms: settings.interval.as_millis() as u64,
                ..Default::default()
            };
            // A late report's vote does not count (it counts from the echoed answer),
            // but an answer that comes back late is of no use either: give up after W/2.
            let mut limit = settings.interval.max(Duration::from_secs(1));
            let window_ms = witness.with(|w| w.window_ms());
            if window_ms > 0 {
                limit = limit.min(Duration::from_millis(window_ms / 2));
            }
            match tokio::time::timeout(limit, send(&url, &settings.credential, report)).await {
                Ok(Ok(ack)) => {
                    // Counted from when the answer came back, after the node counted the
                    // report: the time since is never overstated (the witness relies on it).
                    let answered_ms = witness.now_ms();
                    let counted = ack.counted;
                    let answer = NodeAnswer {
                        suspended: ack.role == "suspended",
                        eligible: matches!(ack.role.as_str(), "active" | "suspended" | "passive"),
                        node: ack.node,
                        epoch: ack.epoch,
                        active: ack.active,
                        window_ms: ack.witness_window_ms,
                        instance: ack.node_instance,
                        time_ms: ack.node_time_ms,
                    };
                    witness.with(|w| w.answered(answered_ms, &url, &answer));
                    if !was_up {
                        tracing::info!(%url, "reporting again");
                    }
                    was_up = true;
                    if greeting && !counted {
                        continue;
                    }
                }
                Ok(Err(status))
                    if signed && !greeting && status.code() == tonic::Code::FailedPrecondition =>
                {
                    // The node restarted, or the answer echoed is too old: greet it.
                    tracing::info!(%url, reason = status.message(), "the node did not count a report; greeting it again");
                    continue;
                }
                Ok(Err(status)) => {
                    if was_up {
                        let error = format!("{:?}: {}", status.code(), status.message());
                        tracing::warn!(%url, %error, "report failed; carrying on with the other nodes");
                    }
                    was_up = false;
                }
                Err(_) => {
                    if was_up {
                        tracing::warn!(%url, "report timed out; carrying on with the other nodes");
                    }
                    was_up = false;
                }
            }
            break;
        }
    }
}

/// Report to every node until `shutdown`.
pub async fn run(settings: AgentSettings, shutdown: impl std::future::Future<Output = ()>) {
    let mut tasks = tokio::task::JoinSet::new();
    let witness = SharedWitness {
        started: Instant::now(),
        witness: Arc::new(Mutex::new(AgentWitness::new(0, &settings.urls))),
    };
    for url in settings.urls.clone() {
        tasks.spawn(report_to(settings.clone(), url, witness.clone()));
    }
    tracing::info!(name = %settings.name, nodes = settings.urls.len(), "agent reporting");
    shutdown.await;
    tasks.abort_all();
}
