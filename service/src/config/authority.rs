//! The authority keys: `authority = "peer" | "witness" | "etcd"`, each mode's own keys
//! (another mode's keys refused), and the pair's timing completed by the authority's
//! durations.

use standin_engine::role::timing::{AuthorityTiming, Timing};

use super::raw::RawConfig;
use super::values::check_url;

/// Where the authority key lives and how long its lease lasts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdSettings {
    pub endpoints: Vec<String>,
    pub key: String,
    pub lease_ttl_s: u64,
}

/// `authority = "peer" | "witness" | "etcd"` and its keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthorityConfig {
    /// The pair alone (unsafe on a cut link).
    Peer,
    /// The terminal-server agents' quorum.
    Witness { agents: Vec<String>, window_ms: u64 },
    /// A key under an etcd lease.
    Etcd(EtcdSettings),
}

pub const DEFAULT_ETCD_KEY: &str = "/standin/authority";
pub const DEFAULT_ETCD_LEASE_TTL_S: u64 = 10;

impl AuthorityConfig {
    pub fn mode(&self) -> &'static str {
        match self {
            AuthorityConfig::Peer => "peer",
            AuthorityConfig::Witness { .. } => "witness",
            AuthorityConfig::Etcd(_) => "etcd",
        }
    }
}

/// The authority keys: the mode and, for it, its own keys (keys of another mode are
/// refused, so a typo does not silently leave a pair unprotected); with the pair's
/// timing completed by the authority's durations.
pub(super) fn parse_authority(
    raw: &RawConfig,
    timing: Timing,
    has_agent_secret: bool,
    agent_keys: Option<&crate::site::agent_keys::AgentKeys>,
) -> Result<(AuthorityConfig, Timing), (&'static str, String)> {
    let with = |authority: AuthorityTiming| {
        timing
            .with_authority(authority)
            .map_err(|error| (error.key, error.reason))
    };
    let mode = raw.authority.as_deref().unwrap_or("peer");
    let witness_keys = raw.witness_agents.is_some() || raw.witness_window_ms.is_some();
    let etcd_keys =
        raw.etcd_endpoints.is_some() || raw.etcd_key.is_some() || raw.etcd_lease_ttl_s.is_some();
    match mode {
        "peer" => {
            if witness_keys {
                return Err(("authority", "witness_* keys are set but authority is \"peer\" (set authority = \"witness\")".to_string()));
            }
            if etcd_keys {
                return Err((
                    "authority",
                    "etcd_* keys are set but authority is \"peer\" (set authority = \"etcd\")"
                        .to_string(),
                ));
            }
            Ok((AuthorityConfig::Peer, timing))
        }
        "witness" => {
            if etcd_keys {
                return Err((
                    "authority",
                    "etcd_* keys are set but authority is \"witness\"".to_string(),
                ));
            }
            let agents = raw.witness_agents.clone().unwrap_or_default();
            if agents.is_empty() {
                return Err(("witness_agents", "witness mode needs the names of the terminal-server agents that vote (witness_agents = [\"ts1\", \"ts2\", \"ts3\"]); with no agents it cannot tell a dead peer from a cut link".to_string()));
            }
            // The names `standin agent --name` accepts: any other could never vote.
            for agent in &agents {
                crate::site::check_name(agent)
                    .map_err(|error| ("witness_agents", error.to_string()))?;
            }
            let mut unique = agents.clone();
            unique.sort();
            unique.dedup();
            if unique.len() != agents.len() {
                return Err(("witness_agents", "agent names must be distinct".to_string()));
            }
            match agent_keys.filter(|keys| !keys.is_empty()) {
                // Every voter needs its own key: one without would never count.
                Some(keys) => {
                    if let Some(missing) = agents.iter().find(|agent| keys.get(agent).is_none()) {
                        return Err(("witness_agents", format!("{missing} has no key in agent_keys_dir {} (`standin agent-key add {missing}`, on both nodes)", keys.dir.display())));
                    }
                }
                None if !has_agent_secret => {
                    return Err((
                        "agent_secret_file",
                        "witness mode needs agent_keys_dir (per-agent keys) or agent_secret_file: agents' reports are its votes"
                            .to_string(),
                    ));
                }
                None => {}
            }
            let window_ms = raw
                .witness_window_ms
                .unwrap_or(timing.default_witness_window_ms());
            let timing = with(AuthorityTiming::Witness { window_ms })?;
            Ok((AuthorityConfig::Witness { agents, window_ms }, timing))
        }
        "etcd" => {
            if witness_keys {
                return Err((
                    "authority",
                    "witness_* keys are set but authority is \"etcd\"".to_string(),
                ));
            }
            let endpoints = raw.etcd_endpoints.clone().unwrap_or_default();
            if endpoints.is_empty() {
                return Err(("etcd_endpoints", "etcd mode needs at least one endpoint (etcd_endpoints = [\"http://10.0.0.5:2379\"])".to_string()));
            }
            for endpoint in &endpoints {
                check_url(endpoint).map_err(|reason| ("etcd_endpoints", reason))?;
            }
            let key = raw
                .etcd_key
                .clone()
                .unwrap_or_else(|| DEFAULT_ETCD_KEY.to_string());
            if key.is_empty() {
                return Err(("etcd_key", "must not be empty".to_string()));
            }
            let lease_ttl_s = raw.etcd_lease_ttl_s.unwrap_or(DEFAULT_ETCD_LEASE_TTL_S);
            if !(2..=3600).contains(&lease_ttl_s) {
                return Err((
                    "etcd_lease_ttl_s",
                    format!("{lease_ttl_s} must be between 2 and 3600 seconds"),
                ));
            }
            let timing = with(AuthorityTiming::Etcd {
                lease_ttl_ms: lease_ttl_s * 1000,
            })?;
            Ok((
                AuthorityConfig::Etcd(EtcdSettings {
                    endpoints,
                    key,
                    lease_ttl_s,
                }),
                timing,
            ))
        }
        other => Err((
            "authority",
            format!("{other:?} is not one of \"peer\", \"witness\", \"etcd\""),
        )),
    }
}
