//! SIGHUP on `serve`: read the config file again, run the preflight checks on it, and
//! apply what can change under a running node without risk — the hooks (`on_promote`,
//! `on_demote`: read when a hook runs) and `log_filter`. Every other changed key, and
//! a secret file whose content changed, is named in the log as needing a restart;
//! the node runs on with the value it started with. A config that does not load or
//! fails a check is not used at all (logged, the node runs on). A SIGHUP never ends
//! the node.
//!
//! Not reloaded, on purpose: the secrets and TLS files (the gRPC server and its
//! interceptors hold them; swapping them under open streams and a peer that still
//! uses the old ones is a restart's job), addresses, paths, the role and authority
//! keys (the role machine and the data_dir are built from them) and the login gate's
//! sizes.

use std::path::PathBuf;

use crate::config::preflight::Mode;
use crate::config::Config;
use crate::node::{Hooks, Node};

/// What a reload did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Keys whose new value is in use now.
    pub applied: Vec<&'static str>,
    /// Keys that changed but take effect only after a restart.
    pub restart: Vec<&'static str>,
}

/// The config `serve` runs with, and where it came from.
pub struct Reloader {
    path: PathBuf,
    /// The values in use (the reloadable keys as last applied).
    running: Config,
    secret: String,
    agent_secret: Option<String>,
}

impl Reloader {
    pub fn new(
        path: PathBuf,
        running: Config,
        secret: String,
        agent_secret: Option<String>,
    ) -> Reloader {
        Reloader {
            path,
            running,
            secret,
            agent_secret,
        }
    }

    /// Load and check the file again and apply what can be (blocking: file reads).
    pub fn reload(&mut self, node: &Node) -> Result<Outcome, String> {
        let new = Config::load(&self.path).map_err(|error| error.to_string())?;
        let checked = crate::config::preflight::run(&new, Mode::Check);
        for warning in checked.warnings() {
            tracing::warn!(key = warning.key, "{}", warning.message);
        }
        if let Some(failure) = checked.failure() {
            return Err(format!(
                "config {}: key `{}`: {}",
                self.path.display(),
                failure.key,
                failure.message
            ));
        }
        let mut changed = changed_keys(&self.running, &new);
        if checked.secret.as_deref() != Some(self.secret.as_str()) {
            changed.push("secret_file (its content)");
        }
        if self.agent_secret.is_some()
            && new.agent_secret_file.is_some()
            && checked.agent_secret != self.agent_secret
        {
            changed.push("agent_secret_file (its content)");
        }
        let mut outcome = Outcome::default();
        for key in changed {
            match key {
                "on_promote" | "on_demote" => outcome.applied.push(key),
                "log_filter" => {
                    crate::logging::set_filter(new.log_filter.as_deref())
                        .map_err(|reason| format!("log_filter: {reason}"))?;
                    self.running.log_filter = new.log_filter.clone();
                    outcome.applied.push(key);
                }
                _ => outcome.restart.push(key),
            }
        }
        if outcome.applied.iter().any(|key| key.starts_with("on_")) {
            node.set_hooks(Hooks {
                on_promote: new.on_promote.clone(),
                on_demote: new.on_demote.clone(),
            });
            self.running.on_promote = new.on_promote;
            self.running.on_demote = new.on_demote;
        }
        Ok(outcome)
    }
}

/// Reload on every SIGHUP until `stop`, logging what happened. Never ends the node.
pub async fn on_hangup(
    mut reloader: Reloader,
    mut hangups: tokio::signal::unix::Signal,
    node: std::sync::Arc<Node>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    loop {
        let received = tokio::select! {
            received = hangups.recv() => received,
            _ = stop.wait_for(|stopped| *stopped) => return Ok(()),
        };
        if received.is_none() {
            // No more signals can arrive: wait for the end like the other tasks.
            let _ = stop.wait_for(|stopped| *stopped).await;
            return Ok(());
        }
        let path = reloader.path.display().to_string();
        tracing::info!(config = %path, "SIGHUP: reloading the config");
        let node = node.clone();
        let (back, result) = tokio::task::spawn_blocking(move || {
            let result = reloader.reload(&node);
            (reloader, result)
        })
        .await?;
        reloader = back;
        match result {
            Err(reason) => tracing::error!(
                "SIGHUP: the config was not reloaded: {reason}; the node runs on with the config it had"
            ),
            Ok(outcome) if outcome.applied.is_empty() && outcome.restart.is_empty() => {
                tracing::info!(config = %path, "config reloaded: nothing changed");
            }
            Ok(outcome) => {
                tracing::info!(config = %path, applied = ?outcome.applied, "config reloaded");
                if !outcome.restart.is_empty() {
                    tracing::warn!(
                        keys = ?outcome.restart,
                        "config reloaded, but these changed keys need a restart to take effect (systemctl restart standin); the node runs on with their old values"
                    );
                }
            }
        }
    }
}

/// The config keys whose values differ between `old` and `new` (a key family, such
/// as `login_*`, where the config holds them together). Every field is named here:
/// a new one does not compile until it is.
fn changed_keys(old: &Config, new: &Config) -> Vec<&'static str> {
    let Config {
        node_name,
        folder,
        data_dir,
        listen,
        http_listen,
        role,
        preferred,
        peer_url,
        replication_period_s,
        heartbeat_interval_ms,
        failover_after_ms,
        // Derived from the timing keys compared here (and the authority's).
        timing: _,
        auto_failback,
        secret_file,
        agent_secret_file,
        agent_keys,
        allow_readable_secret_files,
        tls,
        on_promote,
        on_demote,
        rescan_interval_s,
        max_capture_delay_ms,
        numeric_ids,
        strip_setuid,
        patch_in_place,
        log_retention_events,
        compaction_interval_s,
        authority,
        login,
        log_filter,
    } = old;
    let fields: Vec<(&'static str, String, String)> = vec![
        (
            "node_name",
            format!("{node_name:?}"),
            format!("{:?}", new.node_name),
        ),
        ("folder", format!("{folder:?}"), format!("{:?}", new.folder)),
        (
            "data_dir",
            format!("{data_dir:?}"),
            format!("{:?}", new.data_dir),
        ),
        ("listen", format!("{listen:?}"), format!("{:?}", new.listen)),
        (
            "http_listen",
            format!("{http_listen:?}"),
            format!("{:?}", new.http_listen),
        ),
        ("role", format!("{role:?}"), format!("{:?}", new.role)),
        (
            "preferred",
            format!("{preferred:?}"),
            format!("{:?}", new.preferred),
        ),
        (
            "peer_url",
            format!("{peer_url:?}"),
            format!("{:?}", new.peer_url),
        ),
        (
            "replication_period",
            format!("{replication_period_s:?}"),
            format!("{:?}", new.replication_period_s),
        ),
        (
            "heartbeat_interval_ms",
            format!("{heartbeat_interval_ms:?}"),
            format!("{:?}", new.heartbeat_interval_ms),
        ),
        (
            "failover_after_ms",
            format!("{failover_after_ms:?}"),
            format!("{:?}", new.failover_after_ms),
        ),
        (
            "auto_failback",
            format!("{auto_failback:?}"),
            format!("{:?}", new.auto_failback),
        ),
        (
            "secret_file",
            format!("{secret_file:?}"),
            format!("{:?}", new.secret_file),
        ),
        (
            "agent_secret_file",
            format!("{agent_secret_file:?}"),
            format!("{:?}", new.agent_secret_file),
        ),
        (
            // Each key's fingerprint, never the key.
            "agent_keys_dir",
            format!("{agent_keys:?}"),
            format!("{:?}", new.agent_keys),
        ),
        (
            "allow_readable_secret_files",
            format!("{allow_readable_secret_files:?}"),
            format!("{:?}", new.allow_readable_secret_files),
        ),
        ("tls_*", format!("{tls:?}"), format!("{:?}", new.tls)),
        (
            "on_promote",
            format!("{on_promote:?}"),
            format!("{:?}", new.on_promote),
        ),
        (
            "on_demote",
            format!("{on_demote:?}"),
            format!("{:?}", new.on_demote),
        ),
        (
            "rescan_interval_s",
            format!("{rescan_interval_s:?}"),
            format!("{:?}", new.rescan_interval_s),
        ),
        (
            "max_capture_delay_ms",
            format!("{max_capture_delay_ms:?}"),
            format!("{:?}", new.max_capture_delay_ms),
        ),
        (
            "numeric_ids",
            format!("{numeric_ids:?}"),
            format!("{:?}", new.numeric_ids),
        ),
        (
            "strip_setuid",
            format!("{strip_setuid:?}"),
            format!("{:?}", new.strip_setuid),
        ),
        (
            "patch_in_place",
            format!("{patch_in_place:?}"),
            format!("{:?}", new.patch_in_place),
        ),
        (
            "log_retention_events",
            format!("{log_retention_events:?}"),
            format!("{:?}", new.log_retention_events),
        ),
        (
            "compaction_interval_s",
            format!("{compaction_interval_s:?}"),
            format!("{:?}", new.compaction_interval_s),
        ),
        (
            "authority",
            format!("{authority:?}"),
            format!("{:?}", new.authority),
        ),
        ("login_*", format!("{login:?}"), format!("{:?}", new.login)),
        (
            "log_filter",
            format!("{log_filter:?}"),
            format!("{:?}", new.log_filter),
        ),
    ];
    fields
        .into_iter()
        .filter(|(_, old, new)| old != new)
        .map(|(key, _, _)| key)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> (tempfile::TempDir, Config) {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("folder")).unwrap();
        let text = format!(
            "node_name = \"alpha\"\nfolder = \"folder\"\ndata_dir = \"data\"\nlisten = \"127.0.0.1:7600\"\nrole = \"active\"\nsecret_file = \"pair.secret\"\n{extra}"
        );
        let config = Config::parse(&text, &root.path().join("standin.toml")).unwrap();
        (root, config)
    }

    #[test]
    fn changed_keys_are_named() {
        let (_a, old) = config("on_promote = \"/bin/true\"\n");
        let (_b, same) = config("on_promote = \"/bin/true\"\n");
        // Different temp dirs: the paths differ, nothing else.
        assert_eq!(
            changed_keys(&old, &same),
            vec!["folder", "data_dir", "secret_file"]
        );
        let mut new = old.clone();
        new.on_promote = None;
        new.listen = "127.0.0.1:7601".parse().unwrap();
        new.log_filter = Some("debug".to_string());
        assert_eq!(
            changed_keys(&old, &new),
            vec!["listen", "on_promote", "log_filter"]
        );
    }
}
