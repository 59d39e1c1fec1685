//! Prometheus metrics of a node (`/metrics`): encoded as OpenMetrics, and rewritten
//! into the Prometheus text format 0.0.4 for every scraper that does not ask for
//! OpenMetrics (`promtool check metrics` reads that format).
//!
//! Counters are kept here; gauges (head, lag, chunk store size) are set from the
//! node's state just before each scrape.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// This program's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Its build: the git commit it was built from, or what the package build named
/// (`build.rs`).
pub const BUILD: &str = env!("STANDIN_BUILD");

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadLabel {
    pub read: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabel {
    pub version: String,
    pub build: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabel {
    pub role: String,
}

pub struct Metrics {
    registry: Registry,
    pub head_seq: Gauge,
    pub applied_seq: Gauge,
    pub log_base_seq: Gauge,
    pub epoch: Gauge,
    pub lag_events: Gauge,
    pub lag_seconds: Gauge<f64, AtomicU64>,
    pub chunk_store_bytes: Gauge,
    pub chunk_store_chunks: Gauge,
    /// Chunks (and bytes) kept by reference in the folder's files, and chunks lost
    /// before an active copied them into its chunk store.
    pub chunks_by_reference: Gauge,
    pub bytes_by_reference: Gauge,
    pub chunks_lost_by_reference: Gauge,
    pub quarantined_events: Gauge,
    /// The last failover's report while unacknowledged: its epoch, and the events the
    /// old active kept in quarantine (0: none shown, or nothing kept).
    pub last_failover_epoch: Gauge,
    pub last_failover_kept_events: Gauge,
    pub role: Family<RoleLabel, Gauge>,
    pub peer_up: Gauge,
    pub peer_state: Family<StateLabel, Gauge>,
    pub peer_last_contact_seconds: Gauge<f64, AtomicU64>,
    pub peer_lag_events: Gauge,
    pub peer_lag_seconds: Gauge<f64, AtomicU64>,
    pub events_replicated: Counter,
    pub bytes_replicated: Counter,
    pub chunk_bytes_served: Counter,
    pub events_served: Counter,
    pub pull_errors: Family<KindLabel, Counter>,
    pub capture_groups: Counter,
    pub capture_unstable_reads: Counter,
    pub capture_unordered_groups: Counter,
    pub capture_held_back_groups: Counter,
    pub capture_unstable_files: Gauge,
    pub capture_sqlite_lock_seconds_max: Gauge<f64, AtomicU64>,
    pub capture_clones: Counter,
    pub replay_cloned_bytes: Counter,
    pub capture_sqlite_reads: Family<ReadLabel, Counter>,
    pub skipped_paths: Gauge,
    pub meta_unapplied: Counter,
    pub logins: Counter,
    pub login_failures: Family<ReasonLabel, Counter>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("standin");
        let metrics = Metrics {
            head_seq: Gauge::default(),
            applied_seq: Gauge::default(),
            log_base_seq: Gauge::default(),
            epoch: Gauge::default(),
            lag_events: Gauge::default(),
            lag_seconds: Gauge::default(),
            chunk_store_bytes: Gauge::default(),
            chunk_store_chunks: Gauge::default(),
            chunks_by_reference: Gauge::default(),
            bytes_by_reference: Gauge::default(),
            chunks_lost_by_reference: Gauge::default(),
            quarantined_events: Gauge::default(),
            last_failover_epoch: Gauge::default(),
            last_failover_kept_events: Gauge::default(),
            role: Family::default(),
            peer_up: Gauge::default(),
            peer_state: Family::default(),
            peer_last_contact_seconds: Gauge::default(),
            peer_lag_events: Gauge::default(),
            peer_lag_seconds: Gauge::default(),
            events_replicated: Counter::default(),
            bytes_replicated: Counter::default(),
            chunk_bytes_served: Counter::default(),
            events_served: Counter::default(),
            pull_errors: Family::default(),
            capture_groups: Counter::default(),
            capture_unstable_reads: Counter::default(),
            capture_unordered_groups: Counter::default(),
            capture_held_back_groups: Counter::default(),
            capture_unstable_files: Gauge::default(),
            capture_sqlite_lock_seconds_max: Gauge::default(),
            capture_clones: Counter::default(),
            replay_cloned_bytes: Counter::default(),
            capture_sqlite_reads: Family::default(),
            skipped_paths: Gauge::default(),
            meta_unapplied: Counter::default(),
            logins: Counter::default(),
            login_failures: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "head_seq",
            "Seq of the last event in this node's log",
            metrics.head_seq.clone(),
        );
        registry.register(
            "applied_seq",
            "Seq of the last event applied to this node's folder",
            metrics.applied_seq.clone(),
        );
        registry.register(
            "log_base_seq",
            "Last event compacted out of the log (0: none)",
            metrics.log_base_seq.clone(),
        );
        registry.register(
            "epoch",
            "Epoch of this node's log head",
            metrics.epoch.clone(),
        );
        registry.register(
            "lag_events",
            "Events the peer has that this node has not applied",
            metrics.lag_events.clone(),
        );
        registry.register(
            "lag_seconds",
            "Seconds since this node learned it was behind the peer (0 when caught up)",
            metrics.lag_seconds.clone(),
        );
        registry.register(
            "chunk_store_bytes",
            "Bytes of content in the chunk store",
            metrics.chunk_store_bytes.clone(),
        );
        registry.register(
            "chunk_store_chunks",
            "Chunks in the chunk store",
            metrics.chunk_store_chunks.clone(),
        );
        registry.register(
            "chunks_by_reference",
            "Chunks kept by reference in the folder's files rather than in the chunk store (on an active: not yet copied in since its promotion)",
            metrics.chunks_by_reference.clone(),
        );
        registry.register(
            "bytes_by_reference",
            "Bytes of the chunks kept by reference in the folder's files",
            metrics.bytes_by_reference.clone(),
        );
        registry.register(
            "chunks_lost_by_reference",
            "Chunks lost before they were copied into the chunk store (their file was rewritten first; listed in data_dir/chunks/lost-by-reference)",
            metrics.chunks_lost_by_reference.clone(),
        );
        registry.register(
            "quarantined_events",
            "Events kept in data_dir/quarantine",
            metrics.quarantined_events.clone(),
        );
        registry.register(
            "last_failover_epoch",
            "Epoch of the last failover while its report is unacknowledged (standin failover-ack), else 0",
            metrics.last_failover_epoch.clone(),
        );
        registry.register(
            "last_failover_kept_events",
            "Events the old active kept in quarantine at the last, unacknowledged failover",
            metrics.last_failover_kept_events.clone(),
        );
        registry.register(
            "role",
            "1 for the node's current role",
            metrics.role.clone(),
        );
        let build_info = Family::<BuildLabel, Gauge>::default();
        build_info
            .get_or_create(&BuildLabel {
                version: VERSION.to_string(),
                build: BUILD.to_string(),
            })
            .set(1);
        registry.register(
            "build_info",
            "1, labelled with this node's version and build (git commit)",
            build_info,
        );
        registry.register(
            "peer_up",
            "1 while the peer answers this node's heartbeats (0: unreachable, down or not yet asked)",
            metrics.peer_up.clone(),
        );
        registry.register(
            "peer_state",
            "1 for the peer's state as this node sees it (up; unreachable from the first failed heartbeat; down after failover_after_ms of silence; unknown before any heartbeat)",
            metrics.peer_state.clone(),
        );
        registry.register(
            "peer_last_contact_seconds",
            "Seconds since the peer was last heard from (since this node started, if never)",
            metrics.peer_last_contact_seconds.clone(),
        );
        registry.register(
            "peer_lag_events",
            "On the authority: events its peer has not applied yet (0 elsewhere)",
            metrics.peer_lag_events.clone(),
        );
        registry.register(
            "peer_lag_seconds",
            "On the authority: age in seconds of the oldest event its peer has not applied (0 elsewhere, or when caught up)",
            metrics.peer_lag_seconds.clone(),
        );
        registry.register(
            "events_replicated",
            "Events pulled and applied",
            metrics.events_replicated.clone(),
        );
        registry.register(
            "bytes_replicated",
            "Chunk bytes fetched from the peer",
            metrics.bytes_replicated.clone(),
        );
        registry.register(
            "chunk_bytes_served",
            "Chunk bytes served to the peer",
            metrics.chunk_bytes_served.clone(),
        );
        registry.register(
            "events_served",
            "Events served to the peer",
            metrics.events_served.clone(),
        );
        registry.register(
            "pull_errors",
            "Failed pulls, by kind",
            metrics.pull_errors.clone(),
        );
        registry.register(
            "capture_groups",
            "Groups of changes capture recorded (each a state the folder really had)",
            metrics.capture_groups.clone(),
        );
        registry.register(
            "capture_unstable_reads",
            "Reads of a file that was written during every try (read again later)",
            metrics.capture_unstable_reads.clone(),
        );
        registry.register(
            "capture_unordered_groups",
            "Groups recorded while several of their files kept changing (order across files not confirmed)",
            metrics.capture_unordered_groups.clone(),
        );
        registry.register(
            "capture_held_back_groups",
            "Groups that did not settle in their last round and were read again after a pause",
            metrics.capture_held_back_groups.clone(),
        );
        registry.register(
            "capture_unstable_files",
            "Files whose last read was unstable (their last recorded version stands)",
            metrics.capture_unstable_files.clone(),
        );
        registry.register(
            "capture_sqlite_lock_seconds_max",
            "Longest a SQLite database copy held its read transaction (a committing writer in rollback mode waits that long)",
            metrics.capture_sqlite_lock_seconds_max.clone(),
        );
        registry.register(
            "capture_clones",
            "Files capture read from a reflink clone (FICLONE) rather than in place",
            metrics.capture_clones.clone(),
        );
        registry.register(
            "replay_cloned_bytes",
            "Bytes of large files' new versions the passive took from a reflink clone of the version they replace rather than wrote",
            metrics.replay_cloned_bytes.clone(),
        );
        registry.register(
            "capture_sqlite_reads",
            "Versions of WAL-mode SQLite databases captured, by what was read: whole (the database file and its whole log: at start, or when the log no longer holds the frames since the last version), frames (only those committed since), across_restart (the rest of the last log, then the new one)",
            metrics.capture_sqlite_reads.clone(),
        );
        registry.register(
            "skipped_paths",
            "Paths of the folder that are not replicated (special files, paths too long, directories that cannot be listed or watched; named in status)",
            metrics.skipped_paths.clone(),
        );
        registry.register(
            "meta_unapplied",
            "Owner or extended-attribute changes this node could not apply (it does not run as root)",
            metrics.meta_unapplied.clone(),
        );
        registry.register(
            "logins",
            "Password checks passed (Login, ListApplications)",
            metrics.logins.clone(),
        );
        registry.register(
            "login_failures",
            "Login and ListApplications attempts refused, by reason (credentials: wrong user or password; throttled: backing off after failures; busy: hashing pool and queue full; unavailable: a problem in the node's log)",
            metrics.login_failures.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    pub fn pull_error(&self, kind: &str) {
        self.pull_errors
            .get_or_create(&KindLabel {
                kind: kind.to_string(),
            })
            .inc();
    }

    pub fn login_failure(&self, reason: &str) {
        self.login_failures
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Whether an `Accept` header prefers OpenMetrics to the Prometheus text format (by
/// q-value; a tie goes to OpenMetrics, which Prometheus itself asks for first).
pub fn wants_openmetrics(accept: &str) -> bool {
    let mut openmetrics = 0.0f32;
    let mut text = 0.0f32;
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let quality = parts
            .filter_map(|parameter| parameter.strip_prefix("q="))
            .find_map(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "application/openmetrics-text" => openmetrics = openmetrics.max(quality),
            "text/plain" | "text/*" | "*/*" => text = text.max(quality),
            _ => {}
        }
    }
    openmetrics > 0.0 && openmetrics >= text
}

/// OpenMetrics text as the Prometheus text format 0.0.4: a counter's family is named
/// with its `_total` sample's name (so its HELP and TYPE describe that sample), `# UNIT`
/// and `# EOF` are dropped, and OpenMetrics-only types become `untyped`.
pub fn openmetrics_to_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let comment = ["# HELP ", "# TYPE "]
            .into_iter()
            .find(|prefix| line.starts_with(prefix));
        match comment {
            Some(prefix) => {
                let rest = &line[prefix.len()..];
                let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
                let name = if counters.contains(name) {
                    format!("{name}_total")
                } else {
                    name.to_string()
                };
                let text = match (prefix, text) {
                    ("# TYPE ", "counter" | "gauge" | "histogram" | "summary") => text,
                    ("# TYPE ", _) => "untyped",
                    _ => text,
                };
                out.push_str(&format!("{prefix}{name} {text}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prometheus_text_format_names_counters_by_their_samples() {
        let metrics = Metrics::new();
        metrics.events_replicated.inc();
        metrics.pull_error("unreachable");
        let openmetrics = metrics.encode();
        assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
        let text = openmetrics_to_text(&openmetrics);
        assert!(!text.contains("# EOF"), "{text}");
        for family in [
            "standin_events_replicated_total",
            "standin_pull_errors_total",
        ] {
            assert!(text.contains(&format!("# HELP {family} ")), "{text}");
            assert!(
                text.contains(&format!("# TYPE {family} counter\n")),
                "{text}"
            );
        }
        assert!(text.contains("standin_pull_errors_total{kind=\"unreachable\"} 1\n"));
        assert!(text.contains("# TYPE standin_head_seq gauge\n"), "{text}");
        // Every family has its help text.
        let helps = text
            .lines()
            .filter(|line| line.starts_with("# HELP "))
            .count();
        let types = text
            .lines()
            .filter(|line| line.starts_with("# TYPE "))
            .count();
        assert_eq!(helps, types, "{text}");
    }

    #[test]
    fn openmetrics_only_when_asked_for() {
        assert!(!wants_openmetrics(""));
        assert!(!wants_openmetrics("*/*"));
        assert!(!wants_openmetrics("text/plain; version=0.0.4"));
        assert!(wants_openmetrics(
            "application/openmetrics-text; version=1.0.0"
        ));
        // What Prometheus sends.
        assert!(wants_openmetrics("application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"));
        assert!(!wants_openmetrics(
            "text/plain;version=0.0.4;q=0.9,application/openmetrics-text;q=0.5"
        ));
        assert!(!wants_openmetrics("application/openmetrics-text;q=0"));
    }
}
