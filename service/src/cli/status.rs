//! `standin status`: a node's role, epoch, head, peer and lag, as a table or JSON.

use standin_proto::v1 as wire;

use super::{resolve, Failure, Target};
use crate::cluster_server::status_from_wire;
use crate::node::NodeStatus;

pub async fn run(target: &Target, json: bool) -> Result<u8, Failure> {
    let resolved = resolve(target)?;
    let status = fetch(&resolved.url, &resolved.secret, resolved.channel()?).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status)
                .map_err(|error| Failure::failed(error.to_string()))?
        );
    } else {
        print!("{}", render_table(&[status]));
    }
    Ok(0)
}

/// Ask a node for its status.
pub async fn fetch(
    url: &str,
    secret: &str,
    channel: tonic::transport::Channel,
) -> Result<NodeStatus, Failure> {
    let mut client = crate::client::cluster(channel, secret).map_err(Failure::usage)?;
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
        .map(|(_, cell)| statuses.iter().map(cell).collect())
        .collect();
    let widths: Vec<usize> = (0..statuses.len())
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
