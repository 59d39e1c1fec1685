//! The `Cluster` service: heartbeats, status and verification of a node.

use std::sync::Arc;

use standin_proto::v1 as wire;
use standin_proto::v1::cluster_server::Cluster;
use tonic::{Request, Response, Status};

use crate::node::{Node, NodeStatus};
use crate::wire::convert::{head_from_wire, head_to_wire};
use standin_engine::role::switchover::{TakeOverRequest, TakeOverState};
use standin_engine::role::{Input, PeerView};

pub struct ClusterService {
    pub node: Arc<Node>,
}

/// The `Cluster` service as tonic serves it (`serve.rs` adds it to the server).
pub type Grpc = standin_proto::v1::cluster_server::ClusterServer<ClusterService>;

/// The `Cluster` service of `node`; `RestoreFile` carries a whole file, so requests
/// may be as large as events.
pub fn grpc(node: Arc<Node>) -> Grpc {
    Grpc::new(ClusterService { node })
        .max_decoding_message_size(crate::wire::client::MAX_MESSAGE_BYTES)
}

fn terminal_server_to_wire(server: &crate::node::TerminalServerStatus) -> wire::TerminalServer {
    wire::TerminalServer {
        name: server.name.clone(),
        address: server.address.clone(),
        cpu_percent: server.cpu_percent,
        memory_percent: server.memory_percent,
        sessions: server.sessions,
        age_seconds: server.age_seconds,
        down: server.down,
    }
}

fn terminal_server_from_wire(server: &wire::TerminalServer) -> crate::node::TerminalServerStatus {
    crate::node::TerminalServerStatus {
        name: server.name.clone(),
        address: server.address.clone(),
        cpu_percent: server.cpu_percent,
        memory_percent: server.memory_percent,
        sessions: server.sessions,
        age_seconds: server.age_seconds,
        down: server.down,
    }
}

/// `replication_period` for the wire: (whole seconds rounded up, for older clients —
/// a period under a second must not read as 0, "follow" —, milliseconds).
fn period_to_wire(seconds: f64) -> (u64, u64) {
    (seconds.ceil() as u64, (seconds * 1000.0).round() as u64)
}

/// `replication_period` in seconds: from the milliseconds, or from the whole seconds
/// an older node sends alone.
fn period_from_wire(status: &wire::StatusResponse) -> f64 {
    match status.replication_period_ms {
        Some(ms) => ms as f64 / 1000.0,
        None => status.replication_period_s as f64,
    }
}

pub fn status_to_wire(status: &NodeStatus, node: &Node) -> wire::StatusResponse {
    let head = node.repository.head();
    wire::StatusResponse {
        node: status.node.clone(),
        role: status.role.clone(),
        epoch: status.epoch,
        head: Some(head_to_wire(&head)),
        peer_url: status.peer_url.clone(),
        peer_head: node.peer_head_shown().map(|peer| head_to_wire(&peer)),
        lag_events: status.lag_events,
        lag_seconds: status.lag_seconds,
        chunk_count: status.chunk_count,
        chunk_bytes: status.chunk_bytes,
        by_reference_chunks: status.by_reference_chunks,
        by_reference_bytes: status.by_reference_bytes,
        lost_by_reference_chunks: status.lost_by_reference_chunks,
        lost_by_reference_bytes: status.lost_by_reference_bytes,
        cloned_bytes: status.cloned_bytes,
        content_mode: status.content_mode.clone(),
        events_replicated: status.events_replicated,
        bytes_replicated: status.bytes_replicated,
        quarantined_events: status.quarantined_events,
        last_error: status.last_error.clone(),
        replication_period_s: period_to_wire(status.replication_period_s).0,
        replication_period_ms: Some(period_to_wire(status.replication_period_s).1),
        folder: status.folder.clone(),
        terminal_servers: status
            .terminal_servers
            .iter()
            .map(terminal_server_to_wire)
            .collect(),
        authority: status.authority.clone(),
        authority_summary: status.authority_summary.clone(),
        unstable_files: status.unstable_files.clone(),
        skipped_paths: status.skipped_paths.clone(),
        peer_node: status.peer_node.clone(),
        peer_role: status.peer_role.clone(),
        peer_state: status.peer_state.clone(),
        peer_last_contact_ms: status
            .peer_last_contact_seconds
            .map(|seconds| (seconds * 1000.0).round() as u64),
        peer_lag_events: status.peer_lag_events,
        peer_lag_seconds: status.peer_lag_seconds,
        version: status.version.clone(),
        build: status.build.clone(),
        last_failover: status
            .last_failover
            .as_ref()
            .map(|shown| crate::wire::convert::failover_to_wire(&shown.report)),
    }
}

/// The status a client received, in the form the CLI prints.
pub fn status_from_wire(status: &wire::StatusResponse) -> NodeStatus {
    let head = status.head.clone().unwrap_or_default();
    let hex = |bytes: &[u8]| {
        bytes
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect::<String>()
    };
    NodeStatus {
        node: status.node.clone(),
        role: status.role.clone(),
        epoch: status.epoch,
        head_seq: head.seq,
        head_hash: hex(&head.hash),
        head_digest: hex(&head.digest),
        peer_url: status.peer_url.clone(),
        peer_head_seq: status.peer_head.as_ref().map(|peer| peer.seq),
        lag_events: status.lag_events,
        lag_seconds: status.lag_seconds,
        chunk_count: status.chunk_count,
        chunk_bytes: status.chunk_bytes,
        by_reference_chunks: status.by_reference_chunks,
        by_reference_bytes: status.by_reference_bytes,
        lost_by_reference_chunks: status.lost_by_reference_chunks,
        lost_by_reference_bytes: status.lost_by_reference_bytes,
        cloned_bytes: status.cloned_bytes,
        content_mode: status.content_mode.clone(),
        events_replicated: status.events_replicated,
        bytes_replicated: status.bytes_replicated,
        quarantined_events: status.quarantined_events,
        last_error: status.last_error.clone(),
        replication_period_s: period_from_wire(status),
        folder: status.folder.clone(),
        terminal_servers: status
            .terminal_servers
            .iter()
            .map(terminal_server_from_wire)
            .collect(),
        authority: status.authority.clone(),
        authority_summary: status.authority_summary.clone(),
        unstable_files: status.unstable_files.clone(),
        skipped_paths: status.skipped_paths.clone(),
        peer_node: status.peer_node.clone(),
        peer_role: status.peer_role.clone(),
        peer_state: status.peer_state.clone(),
        peer_last_contact_seconds: status.peer_last_contact_ms.map(|ms| ms as f64 / 1000.0),
        peer_lag_events: status.peer_lag_events,
        peer_lag_seconds: status.peer_lag_seconds,
        version: status.version.clone(),
        build: status.build.clone(),
        last_failover: status.last_failover.as_ref().map(|report| {
            crate::node::status::LastFailover::of(crate::wire::convert::failover_from_wire(report))
        }),
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn heartbeat(
        &self,
        request: Request<wire::HeartbeatRequest>,
    ) -> Result<Response<wire::HeartbeatResponse>, Status> {
        let request = request.into_inner();
        if request.node == self.node.config.node_name {
            // Two nodes with one name would both count the same votes and leases.
            let message = format!(
                "the peer calls itself {:?}, this node's own name: give each node its own node_name",
                request.node
            );
            tracing::error!("{message}");
            self.node.set_error(Some(message.clone()));
            return Err(Status::failed_precondition(message));
        }
        self.node.voters_announced(&request.voter_set);
        if let Some(report) = &request.failover {
            self.node
                .failover
                .merge(&crate::wire::convert::failover_from_wire(report));
        }
        if let Ok(head) = head_from_wire(request.head.as_ref()) {
            tracing::trace!(peer = %request.node, seq = head.seq, "heartbeat");
            if let Some(link) = self.node.peer() {
                link.seen(crate::peer::PeerSelf {
                    node: request.node.clone(),
                    role: request.role.clone(),
                    head,
                });
            }
            self.node.feed(Input::PeerSeen {
                now_ms: standin_engine::fsutil::monotonic_ms(),
                peer: PeerView {
                    node: request.node.clone(),
                    epoch: head.epoch,
                    active: request.role == "active",
                    handing_over: request.role == "handing-over",
                    head_seq: head.seq,
                },
            });
        }
        Ok(Response::new(wire::HeartbeatResponse {
            node: self.node.config.node_name.clone(),
            head: Some(head_to_wire(&self.node.repository.head())),
            role: self.node.role().name().to_string(),
            voter_set: self.node.voter_sets.own(),
            failover: self
                .node
                .failover
                .current()
                .as_ref()
                .map(crate::wire::convert::failover_to_wire),
        }))
    }

    async fn status(
        &self,
        _request: Request<wire::StatusRequest>,
    ) -> Result<Response<wire::StatusResponse>, Status> {
        let node = self.node.clone();
        let status = tokio::task::spawn_blocking(move || {
            let status = node.status();
            status_to_wire(&status, &node)
        })
        .await
        .map_err(|error| Status::internal(error.to_string()))?;
        Ok(Response::new(status))
    }

    async fn verify(
        &self,
        _request: Request<wire::VerifyRequest>,
    ) -> Result<Response<wire::VerifyResponse>, Status> {
        let node = self.node.clone();
        let report = tokio::task::spawn_blocking(move || {
            // The active's databases are live: recorded through SQLite, not as bytes.
            if node.role() == standin_engine::role::Role::Active {
                standin_engine::folder::verify::verify_live_folder(
                    &node.config.folder,
                    &node.repository,
                )
            } else {
                standin_engine::folder::verify::verify_folder(&node.config.folder, &node.repository)
            }
        })
        .await
        .map_err(|error| Status::internal(error.to_string()))?
        .map_err(|error| Status::internal(format!("verify: {error}")))?;
        let difference = report.first_difference.clone().unwrap_or_default();
        Ok(Response::new(wire::VerifyResponse {
            matches: report.matches(),
            head: Some(head_to_wire(&report.head)),
            disk_digest: report.disk_digest.0.to_vec(),
            entries_checked: report.entries_checked,
            first_difference_path: difference.path,
            expected: difference.expected,
            found: difference.found,
        }))
    }

    async fn promote(
        &self,
        request: Request<wire::PromoteRequest>,
    ) -> Result<Response<wire::RoleReply>, Status> {
        let force = request.into_inner().force;
        let message = crate::coordinator::operator::promote(&self.node, force).await?;
        Ok(Response::new(self.reply(&message).await))
    }

    async fn switchover(
        &self,
        _request: Request<wire::SwitchoverRequest>,
    ) -> Result<Response<wire::RoleReply>, Status> {
        let message = crate::coordinator::operator::switchover(&self.node).await?;
        Ok(Response::new(self.reply(&message).await))
    }

    async fn restore_file(
        &self,
        request: Request<wire::RestoreFileRequest>,
    ) -> Result<Response<wire::RoleReply>, Status> {
        if !self.node.accepts_logins() {
            return Err(Status::failed_precondition(format!(
                "{} is not the authoritative node; restore on the active ({})",
                self.node.config.node_name,
                self.node.config.peer_url.as_deref().unwrap_or("its peer")
            )));
        }
        let message = ClusterService {
            node: self.node.clone(),
        }
        .restore_file(request.into_inner())?;
        Ok(Response::new(wire::RoleReply {
            role: self.node.role().name().to_string(),
            message,
        }))
    }

    async fn drill(
        &self,
        request: Request<wire::DrillRequest>,
    ) -> Result<Response<wire::DrillReport>, Status> {
        let answer = self.node.drill(request.into_inner().peer_head_seq).await;
        Ok(Response::new(crate::wire::convert::drill_to_wire(&answer)))
    }

    async fn acknowledge_failover(
        &self,
        request: Request<wire::AcknowledgeFailoverRequest>,
    ) -> Result<Response<wire::RoleReply>, Status> {
        let epoch = request.into_inner().epoch;
        let report = self
            .node
            .failover
            .acknowledge(epoch, standin_engine::fsutil::now_ms())
            .map_err(Status::failed_precondition)?;
        tracing::info!(
            epoch = report.epoch,
            "the last failover's report was acknowledged"
        );
        Ok(Response::new(wire::RoleReply {
            role: self.node.role().name().to_string(),
            message: format!("acknowledged the failover of epoch {}", report.epoch),
        }))
    }

    async fn take_over(
        &self,
        request: Request<wire::TakeOverRequest>,
    ) -> Result<Response<wire::TakeOverReply>, Status> {
        let request = request.into_inner();
        tracing::debug!(from = %request.from_node, head_seq = request.head_seq, "asked to take over");
        let request = TakeOverRequest {
            from: request.from_node,
            epoch: request.epoch,
            head_seq: request.head_seq,
            id: request.switchover_id,
        };
        self.node.feed(Input::TakeOverRequested(request.clone()));
        // The machine answers in its own task; a request not seen yet is pending, and
        // the old active asks again on its next tick.
        let reply = self.reply("asked to take over").await;
        let state = match self.node.take_over_state(&request) {
            TakeOverState::Pending => wire::TakeOverState::TakeOverPending,
            TakeOverState::Done => wire::TakeOverState::TakeOverDone,
            TakeOverState::Aborted => wire::TakeOverState::TakeOverAborted,
        };
        Ok(Response::new(wire::TakeOverReply {
            role: reply.role,
            message: reply.message,
            state: state as i32,
        }))
    }
}

impl ClusterService {
    /// Write `request`'s file into the folder, atomically (temporary name, rename).
    fn restore_file(&self, request: wire::RestoreFileRequest) -> Result<String, Status> {
        let path = standin_engine::RelPath::new(request.path.as_bytes().to_vec())
            .map_err(|error| Status::invalid_argument(error.to_string()))?;
        let folder = &self.node.config.folder;
        let target = path.under(folder);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|error| Status::internal(format!("{}: {error}", parent.display())))?;
            let resolved = parent
                .canonicalize()
                .map_err(|error| Status::internal(format!("{}: {error}", parent.display())))?;
            if !resolved.starts_with(folder) {
                return Err(Status::invalid_argument(format!(
                    "{path} would leave the folder (through a symlink)"
                )));
            }
        }
        if std::fs::symlink_metadata(&target).is_ok() && !request.overwrite {
            return Err(Status::already_exists(format!(
                "{path} exists on {}; use --overwrite",
                self.node.config.node_name
            )));
        }
        let temporary = target.with_file_name(format!(".standin-restore-{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(&temporary, &request.content)?;
            std::fs::set_permissions(
                &temporary,
                std::fs::Permissions::from_mode(request.mode & 0o1777),
            )?;
            std::fs::rename(&temporary, &target)
        };
        write().map_err(|error| {
            let _ = std::fs::remove_file(&temporary);
            Status::internal(format!("{}: {error}", target.display()))
        })?;
        tracing::warn!(%path, bytes = request.content.len(), "restored a file at the operator's request");
        Ok(format!(
            "restored {path} ({} bytes) on {}",
            request.content.len(),
            self.node.config.node_name
        ))
    }

    /// The role a moment after a request (the machine runs in its own task).
    async fn reply(&self, message: &str) -> wire::RoleReply {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        wire::RoleReply {
            role: self.node.role().name().to_string(),
            message: message.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(seconds: f64) -> (wire::StatusResponse, f64) {
        let (whole, ms) = period_to_wire(seconds);
        let sent = wire::StatusResponse {
            replication_period_s: whole,
            replication_period_ms: Some(ms),
            ..Default::default()
        };
        let read = period_from_wire(&sent);
        (sent, read)
    }

    #[test]
    fn a_sub_second_period_is_reported_as_it_is() {
        let (sent, read) = round_trip(0.5);
        assert_eq!(read, 0.5);
        assert_eq!(sent.replication_period_ms, Some(500));
        // An older client reads whole seconds: never 0 ("follow") for a period.
        assert_eq!(sent.replication_period_s, 1);
        assert_eq!(round_trip(0.0).1, 0.0);
        assert_eq!(round_trip(0.0).0.replication_period_s, 0);
        assert_eq!(round_trip(2.0).1, 2.0);
        assert_eq!(round_trip(2.0).0.replication_period_s, 2);
        assert_eq!(round_trip(1.25).1, 1.25);
    }

    #[test]
    fn an_older_node_without_milliseconds_is_read_in_seconds() {
        let older = wire::StatusResponse {
            replication_period_s: 3,
            ..Default::default()
        };
        assert_eq!(period_from_wire(&older), 3.0);
    }
}
