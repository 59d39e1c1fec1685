//! `standin drill`: a failover rehearsal that changes nothing. It asks both nodes for
//! their status and for their part of a drill (`Cluster.Drill`: hooks, authority,
//! failover time with their config, what the active's log holds beyond the
//! passive's head), then judges the pair: one line per check (ok, warn or FAIL, what
//! and why). Exit 0 only when a failover now would succeed without loss; 1 otherwise
//! (a node that does not answer, a passive behind or not following, a hook missing,
//! an agent reporting to one node only, an authority that could not decide).

use std::collections::BTreeSet;

use standin_proto::v1 as wire;

use super::status::{ask_pair, Answer};
use super::{resolve, Failure, Target};
use crate::config::preflight::Level;
use crate::coordinator::drill::{Check, DrillAnswer};
use crate::node::NodeStatus;

/// One node as the drill saw it: its status (or why none) and its drill answer (or
/// why none).
#[derive(Clone, Debug)]
pub struct Side {
    pub answer: Answer,
    pub drill: Option<Result<DrillAnswer, String>>,
}

pub async fn run(target: &Target, peer_url: Option<&str>) -> Result<u8, Failure> {
    let resolved = resolve(target)?;
    let (node, peer) = ask_pair(&resolved, peer_url).await?;
    let tls = resolved
        .config
        .as_ref()
        .and_then(|config| config.tls.as_ref());
    // The active is asked what its log holds beyond the passive's head.
    let passive_head = [Some(&node), peer.as_ref()]
        .into_iter()
        .flatten()
        .filter_map(|answer| answer.status.as_ref())
        .find(|status| status.role == "passive")
        .map(|status| status.head_seq);
    let ask_drill = |answer: &Answer| {
        let status = answer.status.clone();
        let url = answer.url.clone();
        let secret = resolved.secret.clone();
        let channel = crate::wire::client::channel(&url, tls);
        async move {
            let status = status?;
            let peer_head = (status.role != "passive").then_some(passive_head).flatten();
            Some(match channel {
                Ok(channel) => drill(&url, &secret, channel, peer_head).await,
                Err(why) => Err(why),
            })
        }
    };
    let (node_drill, peer_drill) = tokio::join!(ask_drill(&node), async {
        match &peer {
            Some(peer) => ask_drill(peer).await,
            None => None,
        }
    });
    let node_side = Side {
        answer: node,
        drill: node_drill,
    };
    let peer_side = peer.map(|answer| Side {
        answer,
        drill: peer_drill,
    });
    let (checks, verdict) = judge(&node_side, peer_side.as_ref());
    for check in &checks {
        println!(
            "{:<4}  {}: {}",
            check.level.label(),
            check.key,
            check.message
        );
    }
    match checks.iter().find(|check| check.level == Level::Fail) {
        None => {
            println!("{verdict}");
            Ok(0)
        }
        Some(failed) => Err(Failure::failed(format!(
            "a failover now would not succeed without loss: {}: {}",
            failed.key, failed.message
        ))),
    }
}

/// One `Drill` call.
async fn drill(
    url: &str,
    secret: &str,
    channel: tonic::transport::Channel,
    peer_head_seq: Option<u64>,
) -> Result<DrillAnswer, String> {
    let mut client = crate::wire::client::cluster(channel, secret)?;
    let call = client.drill(wire::DrillRequest { peer_head_seq });
    match tokio::time::timeout(std::time::Duration::from_secs(10), call).await {
        Err(_) => Err(format!("{url}: no drill answer within 10 s")),
        Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => Err(format!(
            "{url} does not know the drill (an older standin): upgrade it"
        )),
        Ok(Err(status)) => Err(super::rpc_failure(url, &status).message),
        Ok(Ok(reply)) => Ok(crate::wire::convert::drill_from_wire(reply.get_ref())),
    }
}

fn seconds(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

/// Every check of the pair, and the verdict line when none fails. Pure: what the two
/// nodes answered in, the judgement out.
pub fn judge(node: &Side, peer: Option<&Side>) -> (Vec<Check>, String) {
    let mut checks = Vec::new();
    let fail = |key: &str, message: String| Check::new(Level::Fail, key, message);
    let sides: Vec<&Side> = std::iter::once(node).chain(peer).collect();
    for side in &sides {
        if let Some(why) = &side.answer.unreachable {
            checks.push(fail(
                "reachable",
                format!("{} does not answer: {why}", side.answer.url),
            ));
        }
    }
    if peer.is_none() {
        checks.push(fail(
            "peer_url",
            "no peer configured or named by the node: there is no node to fail over to".to_string(),
        ));
        return (checks, String::new());
    }
    let answered: Vec<(&Side, &NodeStatus)> = sides
        .iter()
        .filter_map(|side| side.answer.status.as_ref().map(|status| (*side, status)))
        .collect();
    let active = answered.iter().find(|(_, status)| status.role == "active");
    let passive = answered.iter().find(|(_, status)| status.role == "passive");
    let roles = answered
        .iter()
        .map(|(_, status)| format!("{} is {}", status.node, status.role))
        .collect::<Vec<_>>()
        .join(", ");
    let (Some((active_side, active)), Some((passive_side, passive)), 2) =
        (active, passive, answered.len())
    else {
        checks.push(fail(
            "roles",
            format!(
                "{}: a failover needs one active node and one passive node following it",
                if roles.is_empty() {
                    "no node answered".to_string()
                } else {
                    roles
                }
            ),
        ));
        return (checks, String::new());
    };
    checks.push(Check::new(
        Level::Ok,
        "roles",
        format!(
            "{} is active (epoch {}, head {}), {} passive (head {})",
            active.node, active.epoch, active.head_seq, passive.node, passive.head_seq
        ),
    ));
    checks.push(link_check(active, passive));
    checks.push(if passive.last_error.is_empty() {
        Check::new(
            Level::Ok,
            "replication",
            format!(
                "{} follows {} (replication_period {} s)",
                passive.node, active.node, passive.replication_period_s
            ),
        )
    } else {
        fail(
            "replication",
            format!("{}: {}", passive.node, passive.last_error),
        )
    });
    checks.push(loss_check(active_side, active, passive));
    if let Some(Ok(drill)) = &passive_side.drill {
        checks.push(Check::new(
            Level::Ok,
            "failover time",
            format!(
                "{}–{} with {}'s config: {}",
                seconds(drill.estimate.min_ms),
                seconds(drill.estimate.max_ms),
                passive.node,
                drill.estimate.explanation
            ),
        ));
    }
    checks.push(agents_check(active, passive));
    for (side, status) in [(*active_side, active), (*passive_side, passive)] {
        match &side.drill {
            Some(Ok(drill)) => checks.extend(drill.checks.iter().map(|check| {
                Check::new(
                    check.level,
                    format!("{} {}", status.node, check.key),
                    check.message.clone(),
                )
            })),
            Some(Err(why)) => checks.push(fail(&format!("{} drill", status.node), why.clone())),
            None => {}
        }
    }
    let verdict = match &passive_side.drill {
        Some(Ok(drill)) => format!(
            "a failover to {} now would succeed without loss, in about {}–{}",
            passive.node,
            seconds(drill.estimate.min_ms),
            seconds(drill.estimate.max_ms)
        ),
        _ => format!(
            "a failover to {} now would succeed without loss",
            passive.node
        ),
    };
    (checks, verdict)
}

/// Both nodes hear each other: the active sees its passive `up`, and the passive its
/// active (a passive that does not is about to fail over already).
fn link_check(active: &NodeStatus, passive: &NodeStatus) -> Check {
    let view = |from: &NodeStatus, of: &NodeStatus| {
        let contact = from
            .peer_last_contact_seconds
            .map(|seconds| format!("last contact {seconds:.1} s ago"))
            .unwrap_or_else(|| "never heard from".to_string());
        (
            from.peer_state == "up",
            format!(
                "{} sees {} {} ({contact})",
                from.node,
                of.node,
                if from.peer_state.is_empty() {
                    "unknown"
                } else {
                    &from.peer_state
                }
            ),
        )
    };
    let (active_ok, active_view) = view(active, passive);
    let (passive_ok, passive_view) = view(passive, active);
    let level = if active_ok && passive_ok {
        Level::Ok
    } else {
        Level::Fail
    };
    Check::new(level, "link", format!("{active_view}; {passive_view}"))
}

/// What a failover now would lose: the events the active holds beyond the passive's
/// head (the active's drill answer; the two heads when it gave none).
fn loss_check(active_side: &Side, active: &NodeStatus, passive: &NodeStatus) -> Check {
    let (events, age) = match &active_side.drill {
        Some(Ok(DrillAnswer {
            beyond_peer: Some((events, seconds)),
            ..
        })) => (*events, Some(*seconds)),
        _ => (active.head_seq.saturating_sub(passive.head_seq), None),
    };
    if events == 0 {
        return Check::new(
            Level::Ok,
            "loss",
            format!(
                "none: {} has every event {} recorded (head {})",
                passive.node, active.node, passive.head_seq
            ),
        );
    }
    let age = age
        .map(|seconds| format!(", the last {seconds:.1} s of changes"))
        .unwrap_or_default();
    Check::new(
        Level::Fail,
        "loss",
        format!(
            "a failover now would lose {events} event{}{age}: {} is at {}, {} at {} (not caught up)",
            if events == 1 { "" } else { "s" },
            passive.node, passive.head_seq, active.node, active.head_seq
        ),
    )
}

/// The terminal servers a node hears from now (reports not older than three of their
/// intervals).
fn reporting(status: &NodeStatus) -> BTreeSet<&str> {
    status
        .terminal_servers
        .iter()
        .filter(|server| !server.down)
        .map(|server| server.name.as_str())
        .collect()
}

/// Every agent reports to both nodes, so the new active has the load table (and, in
/// witness mode, the votes) at once.
fn agents_check(active: &NodeStatus, passive: &NodeStatus) -> Check {
    let (to_active, to_passive) = (reporting(active), reporting(passive));
    let all: BTreeSet<&str> = to_active.union(&to_passive).copied().collect();
    if all.is_empty() {
        return Check::new(
            Level::Ok,
            "agents",
            "no terminal server reports to either node",
        );
    }
    let one_sided: Vec<String> = all
        .iter()
        .filter(|name| !(to_active.contains(*name) && to_passive.contains(*name)))
        .map(|name| {
            let (hears, misses) = if to_active.contains(name) {
                (active, passive)
            } else {
                (passive, active)
            };
            let last = misses
                .terminal_servers
                .iter()
                .find(|server| server.name == *name)
                .map(|server| format!("last report {:.0} s ago", server.age_seconds))
                .unwrap_or_else(|| "never heard from".to_string());
            format!(
                "{name} reports to {} only ({}: {last})",
                hears.node, misses.node
            )
        })
        .collect();
    if one_sided.is_empty() {
        Check::new(
            Level::Ok,
            "agents",
            format!(
                "{} report to both nodes",
                all.iter().copied().collect::<Vec<_>>().join(", ")
            ),
        )
    } else {
        Check::new(Level::Fail, "agents", one_sided.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::TerminalServerStatus;

    fn status(node: &str, role: &str, head_seq: u64) -> NodeStatus {
        NodeStatus {
            node: node.to_string(),
            role: role.to_string(),
            epoch: 1,
            head_seq,
            peer_state: "up".to_string(),
            peer_last_contact_seconds: Some(0.1),
            ..NodeStatus::default()
        }
    }

    fn drill(node: &str, beyond: Option<(u64, f64)>) -> DrillAnswer {
        DrillAnswer {
            node: node.to_string(),
            role: String::new(),
            head_seq: 0,
            checks: vec![Check::new(Level::Ok, "on_promote", "not set")],
            estimate: crate::coordinator::drill::FailoverEstimate {
                min_ms: 5000,
                max_ms: 11_000,
                explanation: "because".to_string(),
            },
            beyond_peer: beyond,
        }
    }

    fn side(status: NodeStatus, drill: DrillAnswer) -> Side {
        Side {
            answer: Answer {
                url: format!("http://{}", status.node),
                status: Some(status),
                unreachable: None,
            },
            drill: Some(Ok(drill)),
        }
    }

    fn failures(checks: &[Check]) -> Vec<String> {
        checks
            .iter()
            .filter(|check| check.level == Level::Fail)
            .map(|check| format!("{}: {}", check.key, check.message))
            .collect()
    }

    #[test]
    fn a_healthy_pair_passes() {
        let alpha = side(
            status("alpha", "active", 42),
            drill("alpha", Some((0, 0.0))),
        );
        let beta = side(status("beta", "passive", 42), drill("beta", None));
        let (checks, verdict) = judge(&alpha, Some(&beta));
        assert!(failures(&checks).is_empty(), "{checks:?}");
        assert!(verdict.contains("to beta now would succeed"), "{verdict}");
        assert!(checks.iter().any(|check| check.key == "beta on_promote"));
    }

    #[test]
    fn a_passive_behind_names_the_loss() {
        let alpha = side(
            status("alpha", "active", 45),
            drill("alpha", Some((3, 2.5))),
        );
        let beta = side(status("beta", "passive", 42), drill("beta", None));
        let failed = failures(&judge(&beta, Some(&alpha)).0);
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert!(
            failed[0].contains("lose 3 events, the last 2.5 s"),
            "{failed:?}"
        );
    }

    #[test]
    fn a_silent_passive_and_a_one_sided_agent_fail() {
        let mut alpha_status = status("alpha", "active", 42);
        alpha_status.terminal_servers = vec![TerminalServerStatus {
            name: "ts1".to_string(),
            ..TerminalServerStatus::default()
        }];
        let alpha = side(alpha_status.clone(), drill("alpha", None));
        let gone = Side {
            answer: Answer {
                url: "http://beta".to_string(),
                status: None,
                unreachable: Some("connection refused".to_string()),
            },
            drill: None,
        };
        let failed = failures(&judge(&alpha, Some(&gone)).0);
        assert!(
            failed[0].contains("http://beta does not answer"),
            "{failed:?}"
        );
        let beta = side(status("beta", "passive", 42), drill("beta", None));
        let failed = failures(&judge(&alpha, Some(&beta)).0);
        assert_eq!(
            failed,
            vec!["agents: ts1 reports to alpha only (beta: never heard from)"]
        );
    }
}
