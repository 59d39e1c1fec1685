//! Prometheus metrics of a node (`/metrics`, OpenMetrics text).
//!
//! Counters are kept here; gauges (head, lag, chunk store size) are set from the
//! node's state just before each scrape.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
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
    pub quarantined_events: Gauge,
    pub role: Family<RoleLabel, Gauge>,
    pub events_replicated: Counter,
    pub bytes_replicated: Counter,
    pub chunk_bytes_served: Counter,
    pub events_served: Counter,
    pub pull_errors: Family<KindLabel, Counter>,
    pub capture_groups: Counter,
    pub capture_unstable_reads: Counter,
    pub capture_unordered_groups: Counter,
    pub capture_unstable_files: Gauge,
    pub capture_sqlite_lock_seconds_max: Gauge<f64, AtomicU64>,
    pub capture_clones: Counter,
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
            quarantined_events: Gauge::default(),
            role: Family::default(),
            events_replicated: Counter::default(),
            bytes_replicated: Counter::default(),
            chunk_bytes_served: Counter::default(),
            events_served: Counter::default(),
            pull_errors: Family::default(),
            capture_groups: Counter::default(),
            capture_unstable_reads: Counter::default(),
            capture_unordered_groups: Counter::default(),
            capture_unstable_files: Gauge::default(),
            capture_sqlite_lock_seconds_max: Gauge::default(),
            capture_clones: Counter::default(),
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
            "quarantined_events",
            "Events kept in data_dir/quarantine",
            metrics.quarantined_events.clone(),
        );
        registry.register(
            "role",
            "1 for the node's current role",
            metrics.role.clone(),
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

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
