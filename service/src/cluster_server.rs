//! The `Cluster` service: heartbeats, status and verification of a node.

use std::sync::Arc;

use standin_proto::v1 as wire;
use standin_proto::v1::cluster_server::Cluster;
use tonic::{Request, Response, Status};

use crate::convert::{head_from_wire, head_to_wire};
use crate::node::{Node, NodeStatus};

pub struct ClusterService {
    pub node: Arc<Node>,
}

pub fn status_to_wire(status: &NodeStatus, node: &Node) -> wire::StatusResponse {
    let head = node.repository.head();
    wire::StatusResponse {
        node: status.node.clone(),
        role: status.role.clone(),
        epoch: status.epoch,
        head: Some(head_to_wire(&head)),
        peer_url: status.peer_url.clone(),
        peer_head: node.peer_head().map(|peer| head_to_wire(&peer)),
        lag_events: status.lag_events,
        lag_seconds: status.lag_seconds,
        chunk_count: status.chunk_count,
        chunk_bytes: status.chunk_bytes,
        events_replicated: status.events_replicated,
        bytes_replicated: status.bytes_replicated,
        quarantined_events: status.quarantined_events,
        last_error: status.last_error.clone(),
        replication_period_s: status.replication_period_s as u64,
        folder: status.folder.clone(),
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
        events_replicated: status.events_replicated,
        bytes_replicated: status.bytes_replicated,
        quarantined_events: status.quarantined_events,
        last_error: status.last_error.clone(),
        replication_period_s: status.replication_period_s as f64,
        folder: status.folder.clone(),
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn heartbeat(
        &self,
        request: Request<wire::HeartbeatRequest>,
    ) -> Result<Response<wire::HeartbeatResponse>, Status> {
        let request = request.into_inner();
        if let Ok(head) = head_from_wire(request.head.as_ref()) {
            tracing::trace!(peer = %request.node, seq = head.seq, "heartbeat");
        }
        Ok(Response::new(wire::HeartbeatResponse {
            node: self.node.config.node_name.clone(),
            head: Some(head_to_wire(&self.node.repository.head())),
            role: self.node.role().as_str().to_string(),
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
            standin_engine::verify::verify_folder(&node.config.folder, &node.repository)
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
}
