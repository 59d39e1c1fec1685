//! `standin agent`: a terminal server's load reporter. It samples the machine's real
//! load (CPU from /proc/stat, memory from /proc/meminfo, a session count from a
//! configurable command) and reports it to every node of the `;`-separated dispatch
//! list, each on its own schedule. A node that is down just misses reports: nothing
//! is queued, the next report is fresh.

use std::time::Duration;

use standin_proto::v1 as wire;
use standin_proto::v1::agent_client::AgentClient;

/// What the agent reports, besides its sampled load.
#[derive(Clone, Debug)]
pub struct AgentSettings {
    pub name: String,
    pub address: String,
    pub urls: Vec<String>,
    pub secret: String,
    pub interval: Duration,
    pub apps: Vec<String>,
    pub sessions_command: Option<String>,
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

/// Report to one node forever.
async fn report_to(settings: AgentSettings, url: String) {
    let mut previous = cpu_counters();
    let mut was_up = true;
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
        let report = wire::LoadReport {
            name: settings.name.clone(),
            address: settings.address.clone(),
            cpu_percent,
            memory_percent: memory_percent(),
            sessions: sessions(&settings.sessions_command).await,
            apps: settings.apps.clone(),
            interval_ms: settings.interval.as_millis() as u64,
        };
        let sent = async {
            let channel = crate::client::channel(&url, None).map_err(|error| error.to_string())?;
            let auth = crate::auth::AddSecret::new(&settings.secret)?;
            let mut client = AgentClient::with_interceptor(channel, auth);
            client
                .report_load(report)
                .await
                .map_err(|status| format!("{:?}: {}", status.code(), status.message()))
        };
        match tokio::time::timeout(settings.interval.max(Duration::from_secs(1)), sent).await {
            Ok(Ok(_)) => {
                if !was_up {
                    tracing::info!(%url, "reporting again");
                }
                was_up = true;
            }
            Ok(Err(error)) => {
                if was_up {
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
    }
}

/// Report to every node until `shutdown`.
pub async fn run(settings: AgentSettings, shutdown: impl std::future::Future<Output = ()>) {
    let mut tasks = tokio::task::JoinSet::new();
    for url in settings.urls.clone() {
        tasks.spawn(report_to(settings.clone(), url));
    }
    tracing::info!(name = %settings.name, nodes = settings.urls.len(), "agent reporting");
    shutdown.await;
    tasks.abort_all();
}
