//! The `Agent` and `Site` gRPC services: terminal servers' load reports (checked by
//! `load_table::check_report` before they count, as load or as a witness vote; with
//! per-agent keys, first by `report_auth`: signed by the agent named, fresh), and
//! users' logins (only on the authoritative node) and application lists, both
//! through the node's `LoginGate`. Site requests' text is checked here: UTF-8 and
//! bounded, else INVALID_ARGUMENT naming the field, never echoing its value.

use std::sync::Arc;

use standin_proto::v1 as wire;
use standin_proto::v1::agent_server::Agent;
use standin_proto::v1::site_server::Site;
use tonic::{Request, Response, Status};

use crate::node::Node;
use crate::site;
use crate::site::load_table::{check_report, Load, ReportError, MAX_REPORTED_APPS};
use crate::site::login_gate::{LoginGate, MAX_PASSWORD_BYTES};

/// A load report (or a site request) is at most this large; tonic refuses a larger
/// one before it is decoded.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// User and application names are at most this long (`site::check_name`).
const MAX_NAME_BYTES: usize = 64;
/// Upper bound on a load report's witness list (a pair, with room to spare).
const MAX_REPORTED_NODES: usize = 16;

/// The `Agent` service as tonic serves it (`serve.rs` adds it to the server).
pub type AgentGrpc = standin_proto::v1::agent_server::AgentServer<AgentService>;

/// The `Agent` service of `node` (reports checked with `keys` when set).
pub fn agent_grpc(node: Arc<Node>, keys: Option<crate::site::agent_keys::AgentKeys>) -> AgentGrpc {
    AgentGrpc::new(AgentService::new(node, keys)).max_decoding_message_size(MAX_REQUEST_BYTES)
}

/// The `Site` service of `node`.
pub fn site_grpc(node: Arc<Node>) -> standin_proto::v1::site_server::SiteServer<SiteService> {
    standin_proto::v1::site_server::SiteServer::new(SiteService::new(node))
        .max_decoding_message_size(MAX_REQUEST_BYTES)
}

pub struct AgentService {
    pub node: Arc<Node>,
    /// Names not in `witness_agents` already warned about (the first 64 bytes of each,
    /// at most 1,000).
    pub unknown_agents: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Configured agents already warned about for reporting too rarely.
    pub slow_agents: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Per-agent keys (`agent_keys_dir`): only signed, fresh reports count. `None`:
    /// the shared agent secret, checked by the service's interceptor.
    auth: Option<crate::site::report_auth::ReportAuth>,
}

/// Upper bound on a node or agent name in a witness report.
const MAX_WITNESS_NAME: usize = 256;

fn lock_set(
    set: &std::sync::Mutex<std::collections::HashSet<String>>,
) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
    set.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl AgentService {
    /// With `keys`, reports must be signed by their agent's key (see `report_auth`).
    pub fn new(node: Arc<Node>, keys: Option<crate::site::agent_keys::AgentKeys>) -> AgentService {
        let auth = keys.map(|keys| crate::site::report_auth::ReportAuth::new(keys, node.instance));
        AgentService {
            node,
            unknown_agents: Default::default(),
            slow_agents: Default::default(),
            auth,
        }
    }

    /// The answer to a report: this node's state, this run and its clock to echo.
    fn ack(&self, counted: bool) -> wire::LoadAck {
        let witness_window_ms = match &self.node.config.authority {
            crate::config::AuthorityConfig::Witness { window_ms, .. } => *window_ms,
            _ => 0,
        };
        wire::LoadAck {
            node: self.node.config.node_name.clone(),
            role: self.node.role().name().to_string(),
            epoch: self.node.epoch(),
            active: self.node.accepts_logins(),
            witness_window_ms,
            node_instance: self.node.instance,
            node_time_ms: standin_engine::fsutil::monotonic_ms(),
            counted,
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
            standin_engine::role::authority::Evidence::AgentReport {
                now_ms,
                report: standin_engine::role::authority::WitnessReport {
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
        let mut report = request.into_inner();
        if let Some(auth) = &self.auth {
            let now_ms = standin_engine::fsutil::monotonic_ms();
            match auth.check(&report, now_ms, peer)? {
                crate::site::report_auth::Checked::Counted(inner) => report = *inner,
                crate::site::report_auth::Checked::Greeting(_) => {
                    return Ok(Response::new(self.ack(false)))
                }
            }
        }
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
        let load = Load {
            name: report.name.clone(),
            address: report.address.clone(),
            cpu_percent: report.cpu_percent,
            memory_percent: report.memory_percent,
            sessions: report.sessions,
            apps: report.apps.clone(),
            interval_ms: report.interval_ms,
            reported_at_ms: standin_engine::fsutil::now_ms(),
        };
        // A report that lies about its values counts for nothing, not even a vote.
        check_report(&load).map_err(|error| Status::invalid_argument(error.to_string()))?;
        self.witness(&report, peer);
        self.node
            .load_table
            .report(load)
            .map_err(|error| match error {
                ReportError::TableFull => Status::resource_exhausted(error.to_string()),
                _ => Status::invalid_argument(error.to_string()),
            })?;
        Ok(Response::new(self.ack(true)))
    }
}

pub struct SiteService {
    pub node: Arc<Node>,
    gate: LoginGate,
}

impl SiteService {
    pub fn new(node: Arc<Node>) -> SiteService {
        let gate = LoginGate::new(node.config.folder.clone(), node.config.login);
        SiteService { node, gate }
    }

    /// A text field: UTF-8 and at most `max` bytes (the value is never echoed).
    fn text(&self, field: &str, bytes: Vec<u8>, max: usize) -> Result<String, Status> {
        let problem = if bytes.len() > max {
            format!("{field}: longer than {max} bytes")
        } else {
            match String::from_utf8(bytes) {
                Ok(text) => return Ok(text),
                Err(_) => format!("{field}: not UTF-8"),
            }
        };
        self.node.metrics.login_failure("invalid_argument");
        Err(Status::invalid_argument(problem))
    }
}

#[tonic::async_trait]
impl Site for SiteService {
    async fn list_applications(
        &self,
        request: Request<wire::ListApplicationsRequest>,
    ) -> Result<Response<wire::ApplicationList>, Status> {
        let from = request.remote_addr().map(|address| address.ip());
        let request = request.into_inner();
        let user = self.text("user", request.user, MAX_NAME_BYTES)?;
        let password = self.text("password", request.password, MAX_PASSWORD_BYTES)?;
        let apps = self
            .gate
            .check(&self.node.metrics, from, user, password, |folder, user| {
                site::applications_for(folder, user)
            })
            .await?;
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
        let from = request.remote_addr().map(|address| address.ip());
        let request = request.into_inner();
        let user = self.text("user", request.user, MAX_NAME_BYTES)?;
        let password = self.text("password", request.password, MAX_PASSWORD_BYTES)?;
        let app = self.text("app", request.app, MAX_NAME_BYTES)?;
        let wanted = app.clone();
        let command = self
            .gate
            .check(
                &self.node.metrics,
                from,
                user.clone(),
                password,
                move |folder, user| site::app_command(folder, user, &wanted),
            )
            .await?;
        let server = self
            .node
            .load_table
            .choose(&app, standin_engine::fsutil::now_ms())
            .map_err(|error| Status::unavailable(error.to_string()))?;
        let session_id = site::session_id();
        tracing::info!(%user, %app, terminal_server = %server.name, "login");
        Ok(Response::new(wire::LoginReply {
            terminal_server: server.name,
            address: server.address,
            session_id,
            app,
            command,
        }))
    }
}
