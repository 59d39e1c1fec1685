//! `RawConfig`: the file's keys as written (serde, unknown keys refused); `Config`
//! (in `mod.rs`) is the checked form.

use std::path::PathBuf;

use serde::Deserialize;

use super::InitialRole;

/// The file as written; see `Config` for the checked form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) node_name: String,
    pub(super) folder: PathBuf,
    pub(super) data_dir: PathBuf,
    pub(super) listen: String,
    pub(super) http_listen: Option<String>,
    pub(super) role: InitialRole,
    #[serde(default)]
    pub(super) preferred: bool,
    pub(super) peer_url: Option<String>,
    pub(super) replication_period: Option<f64>,
    pub(super) heartbeat_interval_ms: Option<u64>,
    pub(super) failover_after_ms: Option<u64>,
    #[serde(default)]
    pub(super) auto_failback: bool,
    pub(super) secret_file: PathBuf,
    pub(super) agent_secret_file: Option<PathBuf>,
    pub(super) agent_keys_dir: Option<PathBuf>,
    pub(super) allow_readable_secret_files: Option<bool>,
    pub(super) tls_cert_file: Option<PathBuf>,
    pub(super) tls_key_file: Option<PathBuf>,
    pub(super) tls_ca_file: Option<PathBuf>,
    pub(super) on_promote: Option<String>,
    pub(super) on_demote: Option<String>,
    pub(super) rescan_interval_s: Option<u64>,
    pub(super) max_capture_delay_ms: Option<u64>,
    pub(super) numeric_ids: Option<bool>,
    pub(super) strip_setuid: Option<bool>,
    pub(super) patch_in_place: Option<bool>,
    pub(super) log_retention_events: Option<u64>,
    pub(super) compaction_interval_s: Option<u64>,
    pub(super) authority: Option<String>,
    pub(super) witness_agents: Option<Vec<String>>,
    pub(super) witness_window_ms: Option<u64>,
    pub(super) etcd_endpoints: Option<Vec<String>>,
    pub(super) etcd_key: Option<String>,
    pub(super) etcd_lease_ttl_s: Option<u64>,
    pub(super) login_workers: Option<u64>,
    pub(super) login_queue: Option<u64>,
    pub(super) login_free_failures: Option<u64>,
    pub(super) login_address_free_failures: Option<u64>,
    pub(super) login_backoff_ms: Option<u64>,
    pub(super) login_backoff_max_ms: Option<u64>,
    pub(super) login_user_delay_max_ms: Option<u64>,
    pub(super) log_filter: Option<String>,
}
