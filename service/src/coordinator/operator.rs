//! The operator's role commands over gRPC (`Promote`, `Switchover`): what the node
//! answers. The role machine decides (`RoleMachine::operate`, and for a switchover
//! `switchover_readiness` on a call to the peer made first); a refusal comes back as
//! `FAILED_PRECONDITION` with the reason, before anything changed. An accepted command
//! is followed until it is done (or not): the reply says the outcome, so a command
//! that did not do what was asked fails.

use std::sync::Arc;
use std::time::Duration;

use standin_engine::role::switchover::PeerProbe;
use standin_engine::role::{Refusal, Role};
use tokio::sync::oneshot;
use tonic::Status;

use crate::node::Node;
pub use crate::node::{OperatorCommand, OperatorRequest, SWITCHOVER_MAX_LAG_EVENTS};

/// Hand `command` to the role machine and wait for its answer.
async fn ask_machine(node: &Node, command: OperatorCommand) -> Result<(), Status> {
    let (answer, answered) = oneshot::channel();
    node.operate(OperatorRequest { command, answer })
        .map_err(|message| Status::unavailable(message.to_string()))?;
    match answered.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(Refusal(reason))) => Err(Status::failed_precondition(reason)),
        Err(_) => Err(Status::unavailable("the node is stopping")),
    }
}

/// Wait until `done` holds for the role, polling, for at most `limit`.
async fn wait_for_role(node: &Node, limit: Duration, done: impl Fn(&Role) -> bool) -> Role {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let role = node.role();
        if done(&role) || tokio::time::Instant::now() >= deadline {
            return role;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn last_error(node: &Node) -> String {
    node.last_error()
        .map(|error| format!(" (last error: {error})"))
        .unwrap_or_default()
}

/// `standin promote [--force]`: refused, or followed until this node is active.
pub async fn promote(node: &Arc<Node>, force: bool) -> Result<String, Status> {
    ask_machine(node, OperatorCommand::Promote { force }).await?;
    // The final pull is bounded by max(failover_after_ms, 1 s); an etcd lease may take
    // up to its TTL to become free.
    let limit = node.config.timing.promote_wait_ms();
    let role = wait_for_role(node, Duration::from_millis(limit), |role| {
        *role == Role::Active
    })
    .await;
    if role == Role::Active {
        Ok(format!(
            "promoted: {} is the active in epoch {}",
            node.config.node_name,
            node.status_epoch()
        ))
    } else {
        Err(Status::aborted(format!(
            "not promoted within {} s: {} is {}{}; see its log",
            limit / 1000,
            node.config.node_name,
            role.name(),
            last_error(node)
        )))
    }
}

/// `standin switchover`: the peer asked first; refused before anything stops unless
/// it is a passive close enough behind; else followed until the hand-over is done.
pub async fn switchover(node: &Arc<Node>) -> Result<String, Status> {
    let probe = match crate::coordinator::ask_peer(node).await {
        Ok((view, role)) => PeerProbe::Answered {
            node: view.node,
            role,
            epoch: view.epoch,
            head_seq: view.head_seq,
        },
        Err(reason) => PeerProbe::Unreachable { reason },
    };
    ask_machine(node, OperatorCommand::Switchover { probe }).await?;
    let config = &node.config;
    let limit = config.timing.switchover_wait_ms();
    let role = wait_for_role(node, Duration::from_millis(limit), |role| {
        *role != Role::HandingOver
    })
    .await;
    match role {
        Role::Passive | Role::Rejoining => Ok(format!(
            "switched over: the peer took over; {} follows it",
            config.node_name
        )),
        Role::Active => Err(Status::aborted(format!(
            "switchover abandoned: {} stays the active{}",
            config.node_name,
            last_error(node)
        ))),
        Role::HandingOver => Err(Status::deadline_exceeded(format!(
            "still handing over after {} s; see `standin status` on both nodes",
            limit / 1000
        ))),
        other => Err(Status::aborted(format!(
            "switchover did not complete: {} is {}{}",
            config.node_name,
            other.name(),
            last_error(node)
        ))),
    }
}
