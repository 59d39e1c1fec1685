//! The link's single-answer calls: heartbeat, take-over, failback switchover, and the
//! rejoin's probe ("do you have my event `seq` with this hash?").

use std::future::Future;
use std::time::Duration;

use standin_engine::role::switchover::{TakeOverRequest, TakeOverState};
use standin_engine::{Hash, Head};
use standin_proto::v1 as wire;
use standin_proto::v1::cluster_client::ClusterClient;
use standin_proto::v1::replication_client::ReplicationClient;
use tokio_stream::StreamExt;

use super::{Connection, PeerError, PeerLink, PeerSelf};
use crate::wire::client::{Authed, MAX_MESSAGE_BYTES};
use crate::wire::convert::{head_from_wire, head_to_wire};

/// What the peer answered a heartbeat: its name, its role's name and its log head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAnswer {
    pub node: String,
    pub role: String,
    pub head: Head,
    /// The hash of the peer's witness voter set (`voter_set`).
    pub voter_set: Vec<u8>,
    /// The last failover as the peer knows it (`failover_report`).
    pub failover: Option<crate::coordinator::failover_report::FailoverReport>,
}

/// What the peer's log says of one of our events (a rejoin's probe).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKnown {
    /// It has our event (same hash).
    Has,
    /// It has another event there, or none.
    Lacks,
    /// It compacted that part of its log away: it cannot tell.
    Compacted,
}

/// `call` within `limit`, its failure noted on `connection`.
pub(super) async fn within<T>(
    connection: &Connection,
    generation: u64,
    limit: Duration,
    call: impl Future<Output = Result<T, PeerError>>,
) -> Result<T, PeerError> {
    let result = match tokio::time::timeout(limit, call).await {
        Ok(result) => result,
        Err(_) => Err(PeerError::TimedOut(format!(
            "no answer within {} ms",
            limit.as_millis()
        ))),
    };
    connection.note(generation, &result);
    result
}

impl PeerLink {
    pub(super) fn cluster(&self) -> (u64, ClusterClient<Authed>) {
        let (generation, channel) = self.control.channel();
        let client = ClusterClient::with_interceptor(channel, self.secret.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        (generation, client)
    }

    pub(super) fn replication(&self) -> (u64, ReplicationClient<Authed>) {
        let (generation, channel) = self.bulk.channel();
        let client = ReplicationClient::with_interceptor(channel, self.secret.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        (generation, client)
    }

    /// One heartbeat: this node's name, head, role, voter-set hash and last failover
    /// report; the peer's in return.
    pub async fn heartbeat(
        &self,
        node: &str,
        head: &Head,
        role: &str,
        voter_set: Vec<u8>,
        failover: Option<&crate::coordinator::failover_report::FailoverReport>,
    ) -> Result<PeerAnswer, PeerError> {
        let request = wire::HeartbeatRequest {
            node: node.to_string(),
            head: Some(head_to_wire(head)),
            role: role.to_string(),
            voter_set,
            failover: failover.map(crate::wire::convert::failover_to_wire),
        };
        let (generation, mut client) = self.cluster();
        let answer = within(&self.control, generation, self.timing.call, async {
            let response = client
                .heartbeat(request)
                .await
                .map_err(PeerError::from_status)?
                .into_inner();
            let head = head_from_wire(response.head.as_ref()).map_err(|error| {
                PeerError::BadAnswer(format!("the peer sent a bad head: {error}"))
            })?;
            Ok(PeerAnswer {
                node: response.node,
                role: response.role,
                head,
                voter_set: response.voter_set,
                failover: response
                    .failover
                    .as_ref()
                    .map(crate::wire::convert::failover_from_wire),
            })
        })
        .await;
        // A peer answering with this node's own name is a second self, not the peer.
        self.heartbeat_outcome(match &answer {
            Ok(answer) if answer.node == node => Err(format!(
                "the peer answers as {node:?}, this node's own name"
            )),
            Ok(answer) => Ok(PeerSelf {
                node: answer.node.clone(),
                role: answer.role.clone(),
                head: answer.head,
            }),
            Err(error) => Err(error.to_string()),
        });
        answer
    }

    /// Ask the peer to take over (a switchover); its state for this request.
    pub async fn take_over(&self, request: &TakeOverRequest) -> Result<TakeOverState, PeerError> {
        let request = wire::TakeOverRequest {
            head_seq: request.head_seq,
            from_node: request.from.clone(),
            epoch: request.epoch,
            switchover_id: request.id,
        };
        let (generation, mut client) = self.cluster();
        let reply = within(&self.control, generation, self.timing.call, async {
            client
                .take_over(request)
                .await
                .map(tonic::Response::into_inner)
                .map_err(PeerError::from_status)
        })
        .await?;
        Ok(match reply.state() {
            wire::TakeOverState::TakeOverPending => TakeOverState::Pending,
            wire::TakeOverState::TakeOverDone => TakeOverState::Done,
            wire::TakeOverState::TakeOverAborted => TakeOverState::Aborted,
        })
    }

    /// Ask the peer (the active) for a switchover to this node; answered once it is
    /// done or refused.
    pub async fn request_switchover(&self) -> Result<String, PeerError> {
        let (generation, mut client) = self.cluster();
        let reply = within(&self.control, generation, self.timing.switchover, async {
            client
                .switchover(wire::SwitchoverRequest {})
                .await
                .map(tonic::Response::into_inner)
                .map_err(PeerError::from_status)
        })
        .await?;
        Ok(reply.message)
    }

    /// The peer's status, as `standin status` shows it.
    pub async fn status(&self) -> Result<crate::node::NodeStatus, PeerError> {
        let (generation, mut client) = self.cluster();
        within(&self.control, generation, self.timing.status, async {
            client
                .status(wire::StatusRequest {})
                .await
                .map(|response| {
                    crate::servers::cluster_server::status_from_wire(response.get_ref())
                })
                .map_err(PeerError::from_status)
        })
        .await
    }

    /// Whether the peer's log holds our event `seq` with `hash`: a one-event pull
    /// after it, answered by a batch (it does), a divergence (it does not) or a
    /// compaction notice (it cannot tell).
    pub async fn knows_event(&self, seq: u64, hash: Hash) -> Result<EventKnown, PeerError> {
        let request = wire::PullRequest {
            after_seq: seq,
            after_hash: hash.0.to_vec(),
            max_events: 1,
            follow: false,
            inline_content: false,
        };
        let (generation, mut client) = self.replication();
        within(&self.bulk, generation, self.timing.open, async {
            let mut stream = client
                .pull(request)
                .await
                .map_err(PeerError::from_status)?
                .into_inner();
            match stream.next().await {
                Some(Ok(wire::PullResponse {
                    kind: Some(wire::pull_response::Kind::Batch(_)),
                })) => Ok(EventKnown::Has),
                Some(Ok(wire::PullResponse {
                    kind: Some(wire::pull_response::Kind::Divergence(_)),
                })) => Ok(EventKnown::Lacks),
                Some(Ok(wire::PullResponse {
                    kind: Some(wire::pull_response::Kind::Compacted(_)),
                })) => Ok(EventKnown::Compacted),
                Some(Ok(_)) | None => Err(PeerError::BadAnswer(
                    "the peer answered a probe with nothing".to_string(),
                )),
                Some(Err(status)) => Err(PeerError::from_status(status)),
            }
        })
        .await
    }
}
