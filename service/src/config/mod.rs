//! The TOML config and its checks (this file, `raw`, `authority`, `values`), and the
//! `preflight` of what it names.
//!
//! The node's configuration file (TOML): parsing, defaults and validation.
//!
//! Every key of `../shared/DESIGN.md` "Interfaces" is accepted; an unknown key, a
//! missing folder, a negative period, an unparsable `peer_url`, or a folder inside
//! `data_dir` (or the reverse) is refused with the key and the reason; `standin serve`
//! then exits with status 2. Reading a config changes nothing on disk: what the
//! named files must be (secrets, TLS files, data_dir, hooks) is checked by
//! `preflight`, which `serve` and `check-config` both run.
//!
//! Files: `mod.rs` (`Config`, the checked form, and `Config::check`), `raw.rs` (the
//! keys as written), `authority.rs` (`AuthorityConfig` and the authority's keys),
//! `values.rs` (URLs, paths not yet created).

pub mod authority;
pub mod preflight;
mod raw;
mod values;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use standin_engine::role::timing::Timing;

pub use authority::{AuthorityConfig, DEFAULT_ETCD_KEY, DEFAULT_ETCD_LEASE_TTL_S};
pub use values::check_url;

use authority::parse_authority;
use raw::RawConfig;
use values::canonical_or_planned;

/// The role a node starts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InitialRole {
    Active,
    Passive,
}

/// A checked configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub node_name: String,
    /// The server folder, canonical.
    pub folder: PathBuf,
    /// Canonical, created if missing.
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub http_listen: Option<SocketAddr>,
    pub role: InitialRole,
    pub preferred: bool,
    pub peer_url: Option<String>,
    /// Seconds between pulls; 0 means continuous streaming.
    pub replication_period_s: f64,
    pub heartbeat_interval_ms: u64,
    pub failover_after_ms: u64,
    /// Every duration derived from the ones above and the authority's, checked
    /// (`standin_engine::role::timing`).
    pub timing: Timing,
    pub auto_failback: bool,
    pub secret_file: PathBuf,
    pub agent_secret_file: Option<PathBuf>,
    /// Per-agent keys (`agent_keys_dir`), read and checked; `None` or empty: agents
    /// use the shared `agent_secret_file`.
    pub agent_keys: Option<crate::site::agent_keys::AgentKeys>,
    /// Accept secret files others can read (with a warning).
    pub allow_readable_secret_files: bool,
    pub tls: Option<TlsFiles>,
    pub on_promote: Option<String>,
    pub on_demote: Option<String>,
    pub rescan_interval_s: u64,
    /// The longest a changed file waits to be recorded, however busy it stays.
    pub max_capture_delay_ms: u64,
    /// Apply owners and ACL qualifiers by their numeric ids, not by name.
    pub numeric_ids: bool,
    /// Leave setuid and setgid off files this node writes (warned once per path).
    pub strip_setuid: bool,
    /// On a passive, patch a large file kept by reference where it is when its new
    /// version keeps most of it (a reader may see it half patched: `rsync --inplace`).
    pub patch_in_place: bool,
    /// Events kept in the log; older ones are compacted away (a passive further
    /// behind starts again from a snapshot).
    pub log_retention_events: u64,
    pub compaction_interval_s: u64,
    /// Who decides authority besides the pair itself.
    pub authority: AuthorityConfig,
    /// The password checks' pool, queue and throttle (`login_*` keys).
    pub login: crate::site::login_gate::LoginSettings,
    /// The log filter (`STANDIN_LOG` syntax), replacing `STANDIN_LOG` once `serve` has
    /// read the config; reloaded on SIGHUP.
    pub log_filter: Option<String>,
}

/// Certificate, key and (for checking the peer) the CA that signed the peer's certificate.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: Option<PathBuf>,
}

/// A configuration problem: which key, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("config {path}: {reason}")]
    Syntax { path: PathBuf, reason: String },
    #[error("config {path}: key `{key}`: {reason}")]
    Key {
        path: PathBuf,
        key: &'static str,
        reason: String,
    },
}

pub const DEFAULT_REPLICATION_PERIOD_S: f64 = 5.0;
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 500;
pub const DEFAULT_FAILOVER_AFTER_MS: u64 = 5_000;
pub const DEFAULT_RESCAN_INTERVAL_S: u64 = 600;
pub const DEFAULT_MAX_CAPTURE_DELAY_MS: u64 = 1_000;
pub const DEFAULT_LOG_RETENTION_EVENTS: u64 = 1_000_000;
pub const DEFAULT_COMPACTION_INTERVAL_S: u64 = 300;

impl Config {
    /// Read and check the file at `path` (nothing is created or written, so an
    /// operator or a monitoring user without write access can run it).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            reason: error.to_string(),
        })?;
        Config::parse(&text, path)
    }

    /// Read the file for a client command (`status`, `verify`, ...): `load`.
    pub fn load_for_client(path: &Path) -> Result<Config, ConfigError> {
        Config::load(path)
    }

    /// Check `text` (relative paths are taken relative to the config file's
    /// directory).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Config::check(text, path)
    }

    fn check(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|error| ConfigError::Syntax {
            path: path.to_path_buf(),
            reason: error.to_string().trim().to_string(),
        })?;
        // A config named without a directory (`standin.toml`) is in the current one.
        let base = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let key = |key: &'static str, reason: String| ConfigError::Key {
            path: path.to_path_buf(),
            key,
            reason,
        };
        let resolve = |file: &Path| {
            if file.is_absolute() {
                file.to_path_buf()
            } else {
                base.join(file)
            }
        };

        if raw.node_name.trim().is_empty() {
            return Err(key("node_name", "must not be empty".to_string()));
        }
        let folder = resolve(&raw.folder);
        let folder = match std::fs::metadata(&folder) {
            Ok(metadata) if metadata.is_dir() => folder
                .canonicalize()
                .map_err(|error| key("folder", format!("{}: {error}", folder.display())))?,
            Ok(_) => {
                return Err(key(
                    "folder",
                    format!("{} is not a directory", folder.display()),
                ))
            }
            Err(error) => return Err(key("folder", format!("{}: {error}", folder.display()))),
        };
        // Canonical even before serve creates it (its nearest existing ancestor's
        // real path), so the checks below see through symbolic links.
        let data_dir = canonical_or_planned(&resolve(&raw.data_dir));
        if folder.starts_with(&data_dir) {
            return Err(key(
                "folder",
                format!(
                    "{} is inside data_dir {}",
                    folder.display(),
                    data_dir.display()
                ),
            ));
        }
        if data_dir.starts_with(&folder) {
            return Err(key(
                "data_dir",
                format!(
                    "{} is inside folder {}",
                    data_dir.display(),
                    folder.display()
                ),
            ));
        }
        let listen: SocketAddr = raw.listen.parse().map_err(|error| {
            key(
                "listen",
                format!("{:?} is not host:port ({error})", raw.listen),
            )
        })?;
        let http_listen = match &raw.http_listen {
            None => None,
            Some(text) => Some(text.parse::<SocketAddr>().map_err(|error| {
                key(
                    "http_listen",
                    format!("{text:?} is not host:port ({error})"),
                )
            })?),
        };
        if http_listen == Some(listen) {
            return Err(key(
                "http_listen",
                format!("{listen} is also `listen`; give HTTP its own port"),
            ));
        }
        if let Some(url) = &raw.peer_url {
            check_url(url).map_err(|reason| key("peer_url", reason))?;
            if url.starts_with("https://") && raw.tls_ca_file.is_none() {
                return Err(key(
                    "peer_url",
                    format!("{url} is https but this node has no TLS settings to check the peer's certificate with: set tls_cert_file, tls_key_file and tls_ca_file (`standin tls init`), or use http://"),
                ));
            }
        }
        if raw.role == InitialRole::Passive && raw.peer_url.is_none() {
            return Err(key(
                "peer_url",
                "a passive node needs the active's address".to_string(),
            ));
        }
        let replication_period_s = raw
            .replication_period
            .unwrap_or(DEFAULT_REPLICATION_PERIOD_S);
        if !replication_period_s.is_finite() || !(0.0..=86_400.0).contains(&replication_period_s) {
            return Err(key(
                "replication_period",
                format!(
                    "{replication_period_s} is not a number of seconds ≥ 0 (and at most a day)"
                ),
            ));
        }
        let heartbeat_interval_ms = raw
            .heartbeat_interval_ms
            .unwrap_or(DEFAULT_HEARTBEAT_INTERVAL_MS);
        let failover_after_ms = raw.failover_after_ms.unwrap_or(DEFAULT_FAILOVER_AFTER_MS);
        let pair_timing = Timing::new(heartbeat_interval_ms, failover_after_ms)
            .map_err(|error| key(error.key, error.reason))?;
        let secret_file = resolve(&raw.secret_file);
        let agent_secret_file = raw.agent_secret_file.as_deref().map(resolve);
        let agent_keys = match &raw.agent_keys_dir {
            None => None,
            Some(dir) => Some(
                crate::site::agent_keys::AgentKeys::load(
                    &resolve(dir),
                    raw.allow_readable_secret_files.unwrap_or(false),
                )
                .map_err(|reason| key("agent_keys_dir", reason))?,
            ),
        };
        let tls = match (&raw.tls_cert_file, &raw.tls_key_file) {
            (None, None) => {
                if raw.tls_ca_file.is_some() {
                    return Err(key(
                        "tls_ca_file",
                        "needs tls_cert_file and tls_key_file".to_string(),
                    ));
                }
                None
            }
            (Some(_), None) => {
                return Err(key(
                    "tls_key_file",
                    "tls_cert_file is set but tls_key_file is not".to_string(),
                ))
            }
            (None, Some(_)) => {
                return Err(key(
                    "tls_cert_file",
                    "tls_key_file is set but tls_cert_file is not".to_string(),
                ))
            }
            (Some(cert), Some(private_key)) => {
                let files = TlsFiles {
                    cert: resolve(cert),
                    key: resolve(private_key),
                    ca: raw.tls_ca_file.as_deref().map(resolve),
                };
                Some(files)
            }
        };
        let rescan_interval_s = raw.rescan_interval_s.unwrap_or(DEFAULT_RESCAN_INTERVAL_S);
        if !(1..=7 * 86_400).contains(&rescan_interval_s) {
            return Err(key(
                "rescan_interval_s",
                format!("{rescan_interval_s} must be between 1 and 604800 seconds"),
            ));
        }
        let max_capture_delay_ms = raw
            .max_capture_delay_ms
            .unwrap_or(DEFAULT_MAX_CAPTURE_DELAY_MS);
        if !(10..=600_000).contains(&max_capture_delay_ms) {
            return Err(key(
                "max_capture_delay_ms",
                format!("{max_capture_delay_ms} must be between 10 and 600000 milliseconds"),
            ));
        }
        let log_retention_events = raw
            .log_retention_events
            .unwrap_or(DEFAULT_LOG_RETENTION_EVENTS);
        if log_retention_events == 0 {
            return Err(key(
                "log_retention_events",
                "must be at least 1".to_string(),
            ));
        }
        let compaction_interval_s = raw
            .compaction_interval_s
            .unwrap_or(DEFAULT_COMPACTION_INTERVAL_S);
        if compaction_interval_s == 0 {
            return Err(key(
                "compaction_interval_s",
                "must be at least 1".to_string(),
            ));
        }
        if let Some(filter) = &raw.log_filter {
            crate::logging::check_filter(filter).map_err(|reason| key("log_filter", reason))?;
        }
        let (authority, timing) = parse_authority(
            &raw,
            pair_timing,
            agent_secret_file.is_some(),
            agent_keys.as_ref(),
        )
        .map_err(|(name, reason)| key(name, reason))?;
        let login = crate::site::login_gate::LoginSettings::from_keys(
            &crate::site::login_gate::LoginKeys {
                workers: raw.login_workers,
                queue: raw.login_queue,
                free_failures: raw.login_free_failures,
                address_free_failures: raw.login_address_free_failures,
                backoff_ms: raw.login_backoff_ms,
                backoff_max_ms: raw.login_backoff_max_ms,
                user_delay_max_ms: raw.login_user_delay_max_ms,
            },
        )
        .map_err(|(name, reason)| key(name, reason))?;
        Ok(Config {
            node_name: raw.node_name,
            folder,
            data_dir,
            listen,
            http_listen,
            role: raw.role,
            preferred: raw.preferred,
            peer_url: raw.peer_url,
            replication_period_s,
            heartbeat_interval_ms,
            failover_after_ms,
            timing,
            auto_failback: raw.auto_failback,
            secret_file,
            agent_secret_file,
            agent_keys,
            allow_readable_secret_files: raw.allow_readable_secret_files.unwrap_or(false),
            tls,
            on_promote: raw.on_promote,
            on_demote: raw.on_demote,
            rescan_interval_s,
            max_capture_delay_ms,
            numeric_ids: raw.numeric_ids.unwrap_or(false),
            strip_setuid: raw.strip_setuid.unwrap_or(false),
            patch_in_place: raw.patch_in_place.unwrap_or(false),
            log_retention_events,
            compaction_interval_s,
            authority,
            login,
            log_filter: raw.log_filter,
        })
    }

    /// The address a local client (the CLI) uses to reach this node's gRPC port.
    pub fn local_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let host = if self.listen.ip().is_unspecified() {
            if self.listen.is_ipv6() {
                "[::1]".to_string()
            } else {
                "127.0.0.1".to_string()
            }
        } else if self.listen.is_ipv6() {
            format!("[{}]", self.listen.ip())
        } else {
            self.listen.ip().to_string()
        };
        format!("{scheme}://{host}:{}", self.listen.port())
    }
}
