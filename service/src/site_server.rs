//! The `Agent` and `Site` gRPC services: terminal servers' load reports, and users'
//! logins (only on the authoritative node) and application lists.

use std::sync::Arc;

use standin_proto::v1 as wire;
use standin_proto::v1::agent_server::Agent;
use standin_proto::v1::site_server::Site;
use tonic::{Request, Response, Status};

use crate::node::Node;
use crate::site::{self, Load, SiteError};

/// Upper bound on a load report's application list.
const MAX_REPORTED_APPS: usize = 1_000;
/// Upper bound on a load report's witness list (a pair, with room to spare).
const MAX_REPORTED_NODES: usize = 16;

pub struct AgentService {
    pub node: Arc<Node>,
    /// Names not in `witness_agents` already warned about (the first 64 bytes of each,
    /// at most 1,000).
    pub unknown_agents: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Configured agents already warned about for reporting too rarely.
    pub slow_agents: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Upper bound on a node or agent name in a witness report.
const MAX_WITNESS_NAME: usize = 256;

fn lock_set(
    set: &std::sync::Mutex<std::collections::HashSet<String>>,
) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
    set.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl AgentService {
    pub fn new(node: Arc<Node>) -> AgentService {
        AgentService {
            node,
            unknown_agents: Default::default(),
            slow_agents: Default::default(),
        }
    }

    /// Hand the witness part of a report to the role machine (witness mode).
    fn witness(&self, report: &wire::LoadReport, peer: Option<std::net::SocketAddr>) {
        let crate::config::AuthorityConfig::Witness { agents, window_ms } =
            &self.node.config.authority
        else {
            return;
        };
        if !agents.contains(&report.name) {
            let shown: String = report.name.chars().take(64).collect();
            let mut warned = lock_set(&self.unknown_agents);
            if warned.len() < 1_000 && warned.insert(shown.clone()) {
                tracing::warn!(agent = %shown, from = ?peer, "a report from an agent not in witness_agents: it does not count toward the quorum");
            }
            return;
        }
        if report.interval_ms > window_ms / 3
            && lock_set(&self.slow_agents).insert(report.name.clone())
        {
            tracing::warn!(agent = %report.name, interval_ms = report.interval_ms, window_ms, "the agent reports less often than a third of witness_window_ms: its vote may lapse between reports (run it with --interval-ms {})", window_ms / 3);
        }
        let highest = (!report.highest_node.is_empty())
            .then(|| (report.highest_epoch, report.highest_node.clone()));
        // The vote counts from the echoed time of this run's answer (never from a
        // previous run's clock, never from the future).
        let now_ms = standin_engine::fsutil::monotonic_ms();
        let echo = (report.echo_instance == self.node.instance && report.echo_time_ms <= now_ms)
            .then_some((report.echo_instance, report.echo_time_ms));
        self.node.feed(standin_engine::role::Input::Authority(
            standin_engine::authority::Evidence::AgentReport {
                now_ms,
                report: standin_engine::authority::WitnessReport {
                    agent: report.name.clone(),
                    reachable: report.reachable.clone(),
                    vote: report.vote.clone(),
                    echo,
                    highest,
                },
            },
        ));
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn report_load(
        &self,
        request: Request<wire::LoadReport>,
    ) -> Result<Response<wire::LoadAck>, Status> {
        let peer = request.remote_addr();
        let report = request.into_inner();
        if report.apps.len() > MAX_REPORTED_APPS {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_REPORTED_APPS} applications per report"
            )));
        }
        if report.reachable.len() > MAX_REPORTED_NODES {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_REPORTED_NODES} nodes in a report's witness"
            )));
        }
        let names = std::iter::once(&report.name)
            .chain(report.vote.iter())
            .chain(std::iter::once(&report.highest_node))
            .chain(report.reachable.iter());
        if names.into_iter().any(|name| name.len() > MAX_WITNESS_NAME) {
            return Err(Status::invalid_argument(format!(
                "names in a load report are at most {MAX_WITNESS_NAME} bytes"
            )));
        }
        self.witness(&report, peer);
        let load = Load {
            name: report.name,
            address: report.address,
            cpu_percent: report.cpu_percent.clamp(0.0, 100.0),
            memory_percent: report.memory_percent.clamp(0.0, 100.0),
            sessions: report.sessions,
            apps: report.apps,
            interval_ms: report.interval_ms.clamp(100, 3_600_000),
            reported_at_ms: standin_engine::fsutil::now_ms(),
        };
        self.node
            .load_table
            .report(load)
            .map_err(|error| Status::invalid_argument(error.to_string()))?;
        let witness_window_ms = match &self.node.config.authority {
            crate::config::AuthorityConfig::Witness { window_ms, .. } => *window_ms,
            _ => 0,
        };
        Ok(Response::new(wire::LoadAck {
            node: self.node.config.node_name.clone(),
            role: self.node.role().name().to_string(),
            epoch: self.node.epoch(),
            active: self.node.accepts_logins(),
            witness_window_ms,
            node_instance: self.node.instance,
            node_time_ms: standin_engine::fsutil::monotonic_ms(),
        }))
    }
}

pub struct SiteService {
    pub node: Arc<Node>,
}

fn site_status(error: SiteError) -> Status {
    match error {
        SiteError::WrongCredentials => Status::unauthenticated(error.to_string()),
        SiteError::NotAllowed { .. } => Status::permission_denied(error.to_string()),
        SiteError::NoSuchApp(_) => Status::not_found(error.to_string()),
        SiteError::NoTerminalServer(_) => Status::unavailable(error.to_string()),
        SiteError::BadName(_) => Status::invalid_argument(error.to_string()),
        SiteError::File { .. } => Status::internal(error.to_string()),
    }
}

#[tonic::async_trait]
impl Site for SiteService {
    async fn list_applications(
        &self,
        request: Request<wire::ListApplicationsRequest>,
    ) -> Result<Response<wire::ApplicationList>, Status> {
        let request = request.into_inner();
        let folder = self.node.config.folder.clone();
        let apps = tokio::task::spawn_blocking(move || {
            site::authenticate(&folder, &request.user, &request.password)?;
            site::applications_for(&folder, &request.user)
        })
        .await
        .map_err(|error| Status::internal(error.to_string()))?
        .map_err(site_status)?;
        let applications = apps
            .into_iter()
            .map(|(name, record)| wire::Application {
                name,
                command: record.command,
            })
            .collect();
        Ok(Response::new(wire::ApplicationList { applications }))
    }

    async fn login(
        &self,
        request: Request<wire::LoginRequest>,
    ) -> Result<Response<wire::LoginReply>, Status> {
        if !self.node.accepts_logins() {
            let active = self.node.config.peer_url.clone().unwrap_or_default();
            let mut status = Status::failed_precondition(format!(
                "{} is not the authoritative node; log in on the active: {active}",
                self.node.config.node_name
            ));
            if let Ok(value) = active.parse() {
                status.metadata_mut().insert("standin-active", value);
            }
            return Err(status);
        }
        let request = request.into_inner();
        let folder = self.node.config.folder.clone();
        let (user, password, app) = (request.user.clone(), request.password, request.app.clone());
        let command = tokio::task::spawn_blocking(move || -> Result<String, SiteError> {
            site::authenticate(&folder, &user, &password)?;
            if app.is_empty() {
                return Ok(String::new());
            }
            let apps = site::applications_for(&folder, &user)?;
            match apps.into_iter().find(|(name, _)| *name == app) {
                Some((_, record)) => Ok(record.command),
                None => {
                    if folder.join("apps").join(format!("{app}.toml")).exists() {
                        Err(SiteError::NotAllowed { user, app })
                    } else {
                        Err(SiteError::NoSuchApp(app))
                    }
                }
            }
        })
        .await
        .map_err(|error| Status::internal(error.to_string()))?
        .map_err(site_status)?;
        let server = self
            .node
            .load_table
            .choose(&request.app, standin_engine::fsutil::now_ms())
            .map_err(site_status)?;
        let session_id = site::session_id();
        tracing::info!(user = %request.user, app = %request.app, terminal_server = %server.name, "login");
        Ok(Response::new(wire::LoginReply {
            terminal_server: server.name,
            address: server.address,
            session_id,
            app: request.app,
            command,
        }))
    }
}
