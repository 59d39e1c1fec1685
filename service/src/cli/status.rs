//! `standin status`: both nodes of the pair side by side — the node asked (its config's
//! `listen`, or `--url`) and its peer (a second `--url`, the config's `peer_url`, or
//! the peer the node names) — as a table or JSON. Both are asked at once, each within
//! `ASK_LIMIT`; a node that does not answer is shown as unreachable, with why, and no
//! figures. Exit 1 when the node asked does not answer (its peer's column is still
//! printed); a peer that does not answer is part of the answer, not a failure.

use std::time::Duration;

use standin_proto::v1 as wire;

use super::{resolve, Failure, Resolved, Target};
use crate::node::NodeStatus;
use crate::servers::cluster_server::status_from_wire;

/// How long each node has to answer.
const ASK_LIMIT: Duration = Duration::from_secs(5);

/// One node's answer to `status`, or why there was none.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Answer {
    pub url: String,
    #[serde(flatten)]
    pub status: Option<NodeStatus>,
    /// Why the node did not answer (absent when it did).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreachable: Option<String>,
}

/// `status --json`: the node asked (its fields at the top, as before) and its peer.
#[derive(serde::Serialize)]
struct PairAnswer<'a> {
    #[serde(flatten)]
    node: &'a Answer,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer: Option<&'a Answer>,
}

async fn ask(url: String, secret: String, channel: tonic::transport::Channel) -> Answer {
    let answered = tokio::time::timeout(ASK_LIMIT, fetch(&url, &secret, channel)).await;
    let (status, unreachable) = match answered {
        Ok(Ok(status)) => (Some(status), None),
        Ok(Err(failure)) => (None, Some(failure.message)),
        Err(_) => (
            None,
            Some(format!("{url}: no answer within {} s", ASK_LIMIT.as_secs())),
        ),
    };
    Answer {
        url,
        status,
        unreachable,
    }
}

/// Ask the node of `target` and its peer (`peer_url`, else the config's, else the one the
/// node names), print both; fail when the node asked does not answer.
pub async fn run(target: &Target, peer_url: Option<&str>, json: bool) -> Result<u8, Failure> {
    let resolved = resolve(target)?;
    let (node, peer) = ask_pair(&resolved, peer_url).await?;
    if json {
        let pair = PairAnswer {
            node: &node,
            peer: peer.as_ref(),
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&pair)
                .map_err(|error| Failure::failed(error.to_string()))?
        );
    } else {
        let columns: Vec<Answer> = std::iter::once(node.clone()).chain(peer).collect();
        print!("{}", render_answers(&columns));
    }
    match node.unreachable {
        None => Ok(0),
        Some(why) => Err(Failure::failed(why)),
    }
}

/// The peer's address: `peer_url` if given, else the config's.
pub fn configured_peer(
    resolved: &Resolved,
    peer_url: Option<&str>,
) -> Result<Option<String>, Failure> {
    if let Some(url) = peer_url {
        crate::config::check_url(url).map_err(Failure::usage)?;
    }
    Ok(peer_url.map(str::to_string).or_else(|| {
        resolved
            .config
            .as_ref()
            .and_then(|config| config.peer_url.clone())
    }))
}

/// Ask the node `resolved` names and its peer (`peer_url`, else the config's, else the
/// one the node names) for their status, both at once when the peer is known. `None`
/// for the peer when there is none to ask.
pub async fn ask_pair(
    resolved: &Resolved,
    peer_url: Option<&str>,
) -> Result<(Answer, Option<Answer>), Failure> {
    let tls = resolved
        .config
        .as_ref()
        .and_then(|config| config.tls.as_ref());
    let configured_peer = configured_peer(resolved, peer_url)?;
    let node_ask = ask(
        resolved.url.clone(),
        resolved.secret.clone(),
        resolved.channel()?,
    );
    Ok(match &configured_peer {
        Some(url) => {
            let channel = crate::wire::client::channel(url, tls).map_err(Failure::usage)?;
            let (node, peer) =
                tokio::join!(node_ask, ask(url.clone(), resolved.secret.clone(), channel));
            (node, Some(peer))
        }
        None => {
            // The peer the node names, asked once it has answered.
            let node = node_ask.await;
            let named = node
                .status
                .as_ref()
                .map(|status| status.peer_url.clone())
                .filter(|url| !url.is_empty());
            let peer = match named {
                Some(url) => {
                    let channel =
                        crate::wire::client::channel(&url, tls).map_err(Failure::usage)?;
                    Some(ask(url, resolved.secret.clone(), channel).await)
                }
                None => None,
            };
            (node, peer)
        }
    })
}

/// Ask a node for its status.
pub async fn fetch(
    url: &str,
    secret: &str,
    channel: tonic::transport::Channel,
) -> Result<NodeStatus, Failure> {
    let mut client = crate::wire::client::cluster(channel, secret).map_err(Failure::usage)?;
    let response = client
        .status(wire::StatusRequest {})
        .await
        .map_err(|status| super::rpc_failure(url, &status))?;
    Ok(status_from_wire(response.get_ref()))
}

fn short(hash: &str) -> String {
    hash.chars().take(12).collect()
}

/// The peer as this node sees it: its state, who it is, when it was last heard from.
fn peer_state(status: &NodeStatus) -> String {
    if status.peer_state.is_empty() {
        return "-".to_string();
    }
    let mut text = status.peer_state.clone();
    if !status.peer_node.is_empty() {
        text.push_str(&format!(" ({}, {})", status.peer_node, status.peer_role));
    }
    match status.peer_last_contact_seconds {
        Some(seconds) => text.push_str(&format!(", last contact {seconds:.1} s ago")),
        None => text.push_str(", never heard from"),
    }
    text
}

/// How one row of the table is filled from a node's status.
type Cell = Box<dyn Fn(&NodeStatus) -> String>;

/// One column per node, one row per field.
pub fn render_table(statuses: &[NodeStatus]) -> String {
    let answers: Vec<Answer> = statuses
        .iter()
        .map(|status| Answer {
            url: String::new(),
            status: Some(status.clone()),
            unreachable: None,
        })
        .collect();
    render_answers(&answers)
}

/// A node that did not answer: its address and why in the `node` and `role` rows,
/// nothing else (no stale figures).
fn unreachable_cell(label: &str, answer: &Answer) -> String {
    match label {
        "node" => answer.url.clone(),
        "role" => format!(
            "UNREACHABLE: {}",
            answer.unreachable.as_deref().unwrap_or("no answer")
        ),
        _ => "-".to_string(),
    }
}

/// One column per node (answered or not), one row per field.
pub fn render_answers(answers: &[Answer]) -> String {
    let rows: Vec<(&str, Cell)> = vec![
        ("node", Box::new(|status| status.node.clone())),
        ("role", Box::new(|status| status.role.clone())),
        ("epoch", Box::new(|status| status.epoch.to_string())),
        (
            "head",
            Box::new(|status| format!("{} ({})", status.head_seq, short(&status.head_hash))),
        ),
        ("digest", Box::new(|status| short(&status.head_digest))),
        (
            "version",
            Box::new(|status| {
                if status.version.is_empty() {
                    "-".to_string()
                } else {
                    format!("{} (build {})", status.version, status.build)
                }
            }),
        ),
        (
            "peer",
            Box::new(|status| {
                if status.peer_url.is_empty() {
                    "-".to_string()
                } else {
                    status.peer_url.clone()
                }
            }),
        ),
        ("peer state", Box::new(peer_state)),
        (
            "peer head",
            Box::new(|status| {
                status
                    .peer_head_seq
                    .map(|seq| seq.to_string())
                    .unwrap_or_else(|| "-".to_string())
            }),
        ),
        (
            "lag",
            Box::new(
                |status| match (status.peer_lag_events, status.peer_lag_seconds) {
                    // The authority: how far its passive is behind it.
                    (Some(events), Some(seconds)) => {
                        format!("peer {events} events, {seconds:.1} s behind")
                    }
                    _ => format!("{} events, {:.1} s", status.lag_events, status.lag_seconds),
                },
            ),
        ),
        (
            "replicated",
            Box::new(|status| {
                format!(
                    "{} events, {} bytes",
                    status.events_replicated, status.bytes_replicated
                )
            }),
        ),
        (
            "chunk store",
            Box::new(|status| {
                format!(
                    "{} chunks, {} bytes",
                    status.chunk_count, status.chunk_bytes
                )
            }),
        ),
        (
            "content",
            Box::new(|status| {
                if status.content_mode.is_empty() {
                    "-".to_string()
                } else {
                    status.content_mode.clone()
                }
            }),
        ),
        (
            "by reference",
            Box::new(|status| {
                let mut shown = if status.by_reference_chunks == 0 {
                    "-".to_string()
                } else if status.role == "active" {
                    format!(
                        "{} chunks, {} bytes (copying into the chunk store)",
                        status.by_reference_chunks, status.by_reference_bytes
                    )
                } else {
                    format!(
                        "{} chunks, {} bytes in the folder's files",
                        status.by_reference_chunks, status.by_reference_bytes
                    )
                };
                if status.cloned_bytes > 0 {
                    shown.push_str(&format!(
                        "; {} bytes of new versions taken from clones (reflink), not written",
                        status.cloned_bytes
                    ));
                }
                if status.lost_by_reference_chunks > 0 {
                    shown.push_str(&format!(
                        "; LOST {} chunks, {} bytes (see data_dir/chunks/lost-by-reference)",
                        status.lost_by_reference_chunks, status.lost_by_reference_bytes
                    ));
                }
                shown
            }),
        ),
        (
            "quarantined",
            Box::new(|status| status.quarantined_events.to_string()),
        ),
        (
            "unstable files",
            Box::new(|status| {
                if status.unstable_files.is_empty() {
                    "-".to_string()
                } else {
                    format!(
                        "{} (written during every read; last recorded version kept)",
                        status.unstable_files.join(", ")
                    )
                }
            }),
        ),
        (
            "not replicated",
            Box::new(|status| {
                if status.skipped_paths.is_empty() {
                    "-".to_string()
                } else {
                    status.skipped_paths.join("; ")
                }
            }),
        ),
        (
            "period",
            Box::new(|status| format!("{} s", status.replication_period_s)),
        ),
        (
            "authority",
            Box::new(|status| {
                if status.authority.is_empty() {
                    "-".to_string()
                } else {
                    status.authority_summary.clone()
                }
            }),
        ),
        (
            "terminal servers",
            Box::new(|status| {
                if status.terminal_servers.is_empty() {
                    return "-".to_string();
                }
                status
                    .terminal_servers
                    .iter()
                    .map(|server| {
                        if server.down {
                            format!(
                                "{} DOWN ({}, last report {:.0} s ago)",
                                server.name, server.address, server.age_seconds
                            )
                        } else {
                            format!(
                                "{} ({}) cpu {:.0}% mem {:.0}% {} sessions ({:.1} s ago)",
                                server.name,
                                server.address,
                                server.cpu_percent,
                                server.memory_percent,
                                server.sessions,
                                server.age_seconds
                            )
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            }),
        ),
        (
            "last failover",
            Box::new(|status| {
                status
                    .last_failover
                    .as_ref()
                    .map(|shown| format!("{} — standin failover-ack once read", shown.summary))
                    .unwrap_or_else(|| "-".to_string())
            }),
        ),
        (
            "last error",
            Box::new(|status| {
                if status.last_error.is_empty() {
                    "-".to_string()
                } else {
                    status.last_error.clone()
                }
            }),
        ),
    ];
    let label_width = rows.iter().map(|(label, _)| label.len()).max().unwrap_or(0);
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|(label, cell)| {
            answers
                .iter()
                .map(|answer| match &answer.status {
                    Some(status) => cell(status),
                    None => unreachable_cell(label, answer),
                })
                .collect()
        })
        .collect();
    let widths: Vec<usize> = (0..answers.len())
        .map(|column| {
            cells
                .iter()
                .map(|row| row[column].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for ((label, _), row) in rows.iter().zip(&cells) {
        out.push_str(&format!("{label:<label_width$}"));
        for (cell, width) in row.iter().zip(&widths) {
            out.push_str(&format!("  {cell:<width$}"));
        }
        let trimmed = out.trim_end_matches(' ').len();
        out.truncate(trimmed);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The "content" row shows the node's words for how it keeps content, and a dash
    /// for a node too old to say.
    #[test]
    fn the_content_row_says_how_the_node_keeps_content() {
        let node = |content_mode: &str| Answer {
            url: "http://127.0.0.1:1".to_string(),
            status: Some(NodeStatus {
                role: "passive".to_string(),
                content_mode: content_mode.to_string(),
                ..NodeStatus::default()
            }),
            unreachable: None,
        };
        let row = |text: String| {
            text.lines()
                .find(|line| line.starts_with("content"))
                .map(str::to_string)
                .unwrap_or_default()
        };
        let shown = row(render_answers(&[node(
            "by reference in the folder's files",
        )]));
        assert!(
            shown.ends_with("by reference in the folder's files"),
            "{shown}"
        );
        let shown = row(render_answers(&[node("")]));
        assert!(shown.ends_with('-'), "{shown}");
    }

    /// A passive that took content from clones says so in its "by reference" row; one
    /// that did not says nothing of clones.
    #[test]
    fn the_by_reference_row_names_bytes_taken_from_clones() {
        let passive = |cloned_bytes| Answer {
            url: "http://127.0.0.1:1".to_string(),
            status: Some(NodeStatus {
                role: "passive".to_string(),
                by_reference_chunks: 3,
                by_reference_bytes: 3 << 20,
                cloned_bytes,
                ..NodeStatus::default()
            }),
            unreachable: None,
        };
        let row = |text: String| {
            text.lines()
                .find(|line| line.starts_with("by reference"))
                .map(str::to_string)
                .unwrap_or_default()
        };
        let shown = row(render_answers(&[passive(15 << 20)]));
        assert!(
            shown.contains("15728640 bytes of new versions taken from clones"),
            "{shown}"
        );
        let shown = row(render_answers(&[passive(0)]));
        assert!(
            shown.contains("in the folder's files") && !shown.contains("clones"),
            "{shown}"
        );
    }
}
