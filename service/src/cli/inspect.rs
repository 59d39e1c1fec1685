//! `standin verify` and `standin log`: looking into a node's folder and log.
//!
//! Both ask the running node. `verify` falls back to opening the data directory
//! itself when the node is not running (and its config is at hand).

use standin_proto::v1 as wire;
use tokio_stream::StreamExt;

use super::{resolve, Failure, Target};
use crate::wire::convert::event_from_wire;

pub async fn verify(target: &Target, json: bool) -> Result<u8, Failure> {
    let resolved = resolve(target)?;
    let mut client = crate::wire::client::cluster(resolved.channel()?, &resolved.secret)
        .map_err(Failure::usage)?;
    let report = match client.verify(wire::VerifyRequest {}).await {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == tonic::Code::Unavailable && resolved.config.is_some() => {
            let config = resolved
                .config
                .clone()
                .ok_or_else(|| Failure::failed("no config"))?;
            eprintln!(
                "{} does not answer; verifying {} directly",
                resolved.url,
                config.data_dir.display()
            );
            tokio::task::spawn_blocking(move || local_verify(&config))
                .await
                .map_err(|error| Failure::failed(error.to_string()))??
        }
        Err(status) => return Err(super::rpc_failure(&resolved.url, &status)),
    };
    let head = report.head.clone().unwrap_or_default();
    if json {
        let value = serde_json::json!({
            "matches": report.matches,
            "head_seq": head.seq,
            "entries_checked": report.entries_checked,
            "first_difference": if report.matches { None } else { Some(serde_json::json!({
                "path": report.first_difference_path, "expected": report.expected, "found": report.found,
            })) },
        });
        println!("{value:#}");
    } else if report.matches {
        println!(
            "ok: the folder matches the log head (seq {}, {} entries checked)",
            head.seq, report.entries_checked
        );
    } else {
        println!(
            "MISMATCH at {}: the log (seq {}) says {}, the folder has {}",
            report.first_difference_path, head.seq, report.expected, report.found
        );
    }
    Ok(if report.matches { 0 } else { 1 })
}

fn local_verify(config: &crate::config::Config) -> Result<wire::VerifyResponse, Failure> {
    let repository = standin_engine::Repository::open(&config.data_dir)
        .map_err(|error| Failure::failed(format!("open {}: {error}", config.data_dir.display())))?;
    let report = standin_engine::folder::verify::verify_folder(&config.folder, &repository)
        .map_err(|error| Failure::failed(format!("verify: {error}")))?;
    let difference = report.first_difference.clone().unwrap_or_default();
    Ok(wire::VerifyResponse {
        matches: report.matches(),
        head: Some(crate::wire::convert::head_to_wire(&report.head)),
        disk_digest: report.disk_digest.0.to_vec(),
        entries_checked: report.entries_checked,
        first_difference_path: difference.path,
        expected: difference.expected,
        found: difference.found,
    })
}

pub async fn log(target: &Target, after: u64, limit: u32, json: bool) -> Result<u8, Failure> {
    let resolved = resolve(target)?;
    let mut client = crate::wire::client::replication(resolved.channel()?, &resolved.secret)
        .map_err(Failure::usage)?;
    let limit = limit.clamp(1, crate::servers::replication_server::MAX_BATCH_EVENTS);
    let request = wire::PullRequest {
        after_seq: after,
        after_hash: Vec::new(),
        max_events: limit,
        follow: false,
        inline_content: false,
    };
    let mut stream = client
        .pull(request)
        .await
        .map_err(|status| super::rpc_failure(&resolved.url, &status))?
        .into_inner();
    let mut printed = 0u32;
    let mut last = after;
    let mut head_seq = 0;
    while let Some(message) = stream.next().await {
        let message = message.map_err(|status| {
            Failure::failed(format!("{:?}: {}", status.code(), status.message()))
        })?;
        match message.kind {
            Some(wire::pull_response::Kind::Batch(batch)) => {
                head_seq = batch.head.as_ref().map(|head| head.seq).unwrap_or(head_seq);
                for event in &batch.events {
                    if printed >= limit {
                        break;
                    }
                    let event = event_from_wire(event)
                        .map_err(|error| Failure::failed(error.to_string()))?;
                    print_event(&event, json);
                    printed += 1;
                    last = event.seq();
                }
                if printed >= limit {
                    break;
                }
            }
            Some(wire::pull_response::Kind::Divergence(divergence)) => {
                return Err(Failure::usage(format!(
                    "seq {} is beyond the log's head ({})",
                    divergence.seq,
                    divergence.head.map(|head| head.seq).unwrap_or(0)
                )))
            }
            Some(wire::pull_response::Kind::Compacted(compacted)) => {
                let base = compacted.base.map(|head| head.seq).unwrap_or(0);
                return Err(Failure::usage(format!(
                    "events up to seq {base} were compacted away; start with --after {base}"
                )));
            }
            None => break,
        }
    }
    if !json && last < head_seq {
        println!("-- more: standin log --after {last} --limit {limit}");
    }
    Ok(0)
}

fn print_event(event: &standin_engine::Event, json: bool) {
    let change = &event.body.change;
    let detail = match change {
        standin_engine::Change::Put {
            size,
            content,
            chunks,
            ..
        } => {
            format!(
                "{size} bytes, {} chunks, content {}",
                chunks.len(),
                &content.to_hex()[..12]
            )
        }
        standin_engine::Change::Mkdir { mode, .. }
        | standin_engine::Change::SetMode { mode, .. } => format!("mode {mode:o}"),
        standin_engine::Change::Symlink { target, .. } => {
            format!("-> {}", String::from_utf8_lossy(target))
        }
        standin_engine::Change::File {
            size,
            content,
            chunks,
            meta,
            ..
        } => {
            format!(
                "{}, {size} bytes, {} chunks, content {}",
                meta.describe(),
                chunks.len(),
                &content.to_hex()[..12]
            )
        }
        standin_engine::Change::Dir { meta, .. } | standin_engine::Change::SetMeta { meta, .. } => {
            meta.describe()
        }
        standin_engine::Change::Link { target, meta, .. } => {
            format!(
                "-> {}, {}",
                String::from_utf8_lossy(target),
                meta.describe()
            )
        }
        standin_engine::Change::Promote { node } => format!("node {node}"),
        standin_engine::Change::Group { events } => format!("the next {events} events"),
        _ => String::new(),
    };
    if json {
        let value = serde_json::json!({
            "seq": event.seq(), "epoch": event.epoch(), "hash": event.hash.to_hex(),
            "recorded_at_ms": event.body.recorded_at_ms, "kind": change.kind(),
            "path": change.describe_path(), "detail": detail,
        });
        println!("{value}");
    } else {
        println!(
            "{:>8}  e{}  {}  {:<8} {}  {}",
            event.seq(),
            event.epoch(),
            &event.hash.to_hex()[..12],
            change.kind(),
            change.describe_path(),
            detail
        );
    }
}
