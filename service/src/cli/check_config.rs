//! `standin check-config [FILE]`: every check `serve` makes at start, without
//! starting anything — the config parsed, then `preflight` (secrets, TLS files,
//! folder, data_dir, hooks, the TLS warning), whether a node holds the data_dir's
//! lock now, whether the ports can be bound; with `--peer`, whether the peer answers
//! (a `Status` call with the pair secret) within a deadline. One line per check: ok,
//! warn or FAIL, the key, what was found. Exit 0 when serve would start, 2 when it
//! would not, 1 when it would but `--peer` found no answer.

use std::path::Path;
use std::time::Duration;

use standin_proto::v1 as wire;

use super::Failure;
use crate::config::preflight::{Finding, Level, Mode};
use crate::config::{Config, ConfigError};

/// What `check-config` was asked.
#[derive(Debug, Clone)]
pub struct Options {
    /// Ask the peer too.
    pub peer: bool,
    pub peer_deadline: Duration,
    /// A node running on the data_dir is a failure.
    pub require_stopped: bool,
}

pub async fn run(file: &Path, options: &Options) -> Result<u8, Failure> {
    let config = match Config::load(file) {
        Ok(config) => config,
        Err(error) => {
            let (key, message) = match &error {
                ConfigError::Key { key, .. } => (*key, error.to_string()),
                ConfigError::Read { .. } => ("config", error.to_string()),
                ConfigError::Syntax { path, reason } => (
                    "config",
                    format!("{}: {}", path.display(), one_line(reason)),
                ),
            };
            print(&Finding {
                level: Level::Fail,
                key,
                message,
            });
            return Err(Failure::usage(format!("serve would not start: {error}")));
        }
    };
    print(&Finding {
        level: Level::Ok,
        key: "config",
        message: format!(
            "{} parses (node {}, role {}, authority {})",
            file.display(),
            config.node_name,
            match config.role {
                crate::config::InitialRole::Active => "active",
                crate::config::InitialRole::Passive => "passive",
            },
            config.authority.mode()
        ),
    });
    let checked = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || crate::config::preflight::run(&config, Mode::Check))
            .await
            .map_err(|error| Failure::failed(error.to_string()))?
    };
    let mut findings = checked.findings.clone();
    let (lock, running) =
        crate::config::preflight::lock_finding(&config.data_dir, options.require_stopped);
    findings.push(lock);
    findings.extend(crate::config::preflight::port_findings(&config, running));
    for finding in &findings {
        print(finding);
    }
    let failure = findings
        .iter()
        .find(|finding| finding.level == Level::Fail)
        .cloned();
    let peer_failure = if !options.peer {
        None
    } else if let Some(secret) = &checked.secret {
        let finding = ask_peer(&config, secret, options.peer_deadline).await;
        print(&finding);
        (finding.level == Level::Fail).then_some(finding)
    } else {
        let finding = Finding {
            level: Level::Fail,
            key: "peer_url",
            message: "not asked: the pair secret did not pass its check".to_string(),
        };
        print(&finding);
        Some(finding)
    };
    if let Some(failure) = failure {
        return Err(Failure::usage(format!(
            "serve would not start: key `{}`: {}",
            failure.key, failure.message
        )));
    }
    if let Some(failure) = peer_failure {
        return Err(Failure::failed(format!(
            "serve would start, but key `{}`: {}",
            failure.key, failure.message
        )));
    }
    println!("serve would start");
    Ok(0)
}

/// A TOML error on one line: where, then what (its snippet of the file left out).
fn one_line(reason: &str) -> String {
    let lines: Vec<&str> = reason.lines().map(str::trim).collect();
    match (lines.first(), lines.last()) {
        (Some(first), Some(last)) if lines.len() > 1 => {
            format!(
                "{}: {last}",
                first.trim_start_matches("TOML parse error at ")
            )
        }
        _ => reason.to_string(),
    }
}

fn print(finding: &Finding) {
    println!(
        "{:<4}  {}: {}",
        finding.level.label(),
        finding.key,
        finding.message
    );
}

/// One `Status` call to `peer_url` with the pair secret, within `deadline`.
async fn ask_peer(config: &Config, secret: &str, deadline: Duration) -> Finding {
    let fail = |message: String| Finding {
        level: Level::Fail,
        key: "peer_url",
        message,
    };
    let Some(url) = &config.peer_url else {
        return fail("not set: --peer has no peer to ask".to_string());
    };
    let channel = match crate::wire::client::channel(url, config.tls.as_ref()) {
        Ok(channel) => channel,
        Err(reason) => return fail(reason),
    };
    let mut client = match crate::wire::client::cluster(channel, secret) {
        Ok(client) => client,
        Err(reason) => return fail(reason),
    };
    let answer = tokio::time::timeout(deadline, client.status(wire::StatusRequest {})).await;
    let reply = match answer {
        Err(_) => {
            return fail(format!(
                "{url} did not answer within {} ms",
                deadline.as_millis()
            ))
        }
        Ok(Err(status)) => return fail(super::rpc_failure(url, &status).message),
        Ok(Ok(reply)) => reply.into_inner(),
    };
    if reply.node == config.node_name {
        return fail(format!(
            "{url} answers as {:?}, this node's own name: give each node its own node_name (or peer_url points at this node)",
            reply.node
        ));
    }
    Finding {
        level: Level::Ok,
        key: "peer_url",
        message: format!(
            "{url} answers with the pair secret: {} is {} (epoch {}, head {})",
            reply.node,
            reply.role,
            reply.epoch,
            reply.head.map(|head| head.seq).unwrap_or(0)
        ),
    }
}
