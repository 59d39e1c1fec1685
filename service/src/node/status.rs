//! A node's status and metrics: what `standin status`, the status page (`/`) and
//! `/metrics` show, computed from the node's state when asked — its log, its role,
//! what it knows of its peer (the peer link's report; on the authority, how far its
//! passive is behind), capture and the terminal servers.

use crate::node::metrics::RoleLabel;
use crate::node::{Node, Role};
use standin_engine::Head;

pub use crate::node::metrics::{BUILD, VERSION};

/// A node's status, as `standin status`, `/` and the `Status` call show it.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NodeStatus {
    pub node: String,
    pub role: String,
    pub epoch: u64,
    pub head_seq: u64,
    pub head_hash: String,
    pub head_digest: String,
    pub peer_url: String,
    pub peer_head_seq: Option<u64>,
    pub lag_events: u64,
    pub lag_seconds: f64,
    pub chunk_count: u64,
    pub chunk_bytes: u64,
    pub events_replicated: u64,
    pub bytes_replicated: u64,
    pub quarantined_events: u64,
    pub last_error: String,
    pub replication_period_s: f64,
    pub folder: String,
    #[serde(default)]
    pub terminal_servers: Vec<TerminalServerStatus>,
    /// `peer`, `witness` or `etcd`.
    #[serde(default)]
    pub authority: String,
    /// What the authority protects against right now (peer mode: unsafe on a cut link).
    #[serde(default)]
    pub authority_summary: String,
    /// Files capture could not read stably at their last try.
    #[serde(default)]
    pub unstable_files: Vec<String>,
    /// Paths that are not replicated, each as `path: reason`.
    #[serde(default)]
    pub skipped_paths: Vec<String>,
    /// The peer's name and role as it last said them (empty: never heard from).
    #[serde(default)]
    pub peer_node: String,
    #[serde(default)]
    pub peer_role: String,
    /// `up`, `unreachable`, `down` or `unknown` (empty without a peer).
    #[serde(default)]
    pub peer_state: String,
    /// Seconds since the peer was last heard from (none: never).
    #[serde(default)]
    pub peer_last_contact_seconds: Option<f64>,
    /// On the authority: how far the peer (its passive) is behind it.
    #[serde(default)]
    pub peer_lag_events: Option<u64>,
    #[serde(default)]
    pub peer_lag_seconds: Option<f64>,
    /// The node's version and build.
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub build: String,
    /// The last failover's named-loss report, until acknowledged.
    #[serde(default)]
    pub last_failover: Option<LastFailover>,
    /// Chunks kept by reference in the folder's files, not in the chunk store (a
    /// passive's large files; on an active, those not yet copied in), and their bytes.
    #[serde(default)]
    pub by_reference_chunks: u64,
    #[serde(default)]
    pub by_reference_bytes: u64,
    /// Chunks lost before they were copied in (their file was rewritten first).
    #[serde(default)]
    pub lost_by_reference_chunks: u64,
    #[serde(default)]
    pub lost_by_reference_bytes: u64,
    /// Bytes of large files' new versions this passive took from clones of their
    /// old versions rather than wrote (where the file system clones).
    #[serde(default)]
    pub cloned_bytes: u64,
    /// How the node keeps content, in words (`Node::content_mode`).
    #[serde(default)]
    pub content_mode: String,
}

/// The last failover as `status` shows it: one line, and the report it says.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LastFailover {
    pub summary: String,
    #[serde(flatten)]
    pub report: crate::coordinator::failover_report::FailoverReport,
}

impl LastFailover {
    pub fn of(report: crate::coordinator::failover_report::FailoverReport) -> LastFailover {
        LastFailover {
            summary: report.summary(),
            report,
        }
    }
}

/// A terminal server as `status` lists it.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TerminalServerStatus {
    pub name: String,
    pub address: String,
    pub cpu_percent: f64,
    pub memory_percent: f64,
    pub sessions: u32,
    pub age_seconds: f64,
    pub down: bool,
}

impl Node {
    /// How this node keeps content, in words (DESIGN: "say which in `status`"): an
    /// active keeps it in its chunk store and reads busy files from clones where the
    /// file system clones; any other role keeps large files by reference where it can.
    pub fn content_mode(&self) -> String {
        use standin_engine::chunk_store::ContentMode;
        let folder = &self.config.folder;
        if matches!(self.role(), Role::Active) {
            let capture = self.config.data_dir.join("capture");
            return match standin_engine::folder::read::reflink::clones_into(folder, &capture) {
                Ok(true) => "chunk store; busy files read from clones (reflink)".into(),
                Ok(false) => "chunk store; busy files read until stable (no reflink)".into(),
                Err(error) => format!(
                    "chunk store; could not tell whether {} clones: {error}",
                    capture.display()
                ),
            };
        }
        match self.repository.chunks().content_mode(folder) {
            Ok(ContentMode::Copied) => {
                "copied into the chunk store (folder and data_dir on different file systems)".into()
            }
            Ok(ContentMode::ByReference {
                clones,
                patch_in_place,
            }) => {
                let mut shown = String::from("by reference; large files' new versions ");
                shown.push_str(if clones {
                    "begun as clones (reflink)"
                } else {
                    "written whole (no reflink)"
                });
                if patch_in_place {
                    shown.push_str("; patch_in_place: changed in place");
                }
                shown
            }
            Err(error) => format!("could not tell: {error}"),
        }
    }

    /// Whether this node is (or is about to stay) the one that records: its peer
    /// follows it.
    fn is_authority(&self) -> bool {
        matches!(
            self.role(),
            Role::Active | Role::HandingOver | Role::Suspended { .. }
        )
    }

    /// The peer's head as `status` shows it: the passive's applied head on the
    /// authority (from the heartbeats), the active's head as last pulled elsewhere.
    pub fn peer_head_shown(&self) -> Option<Head> {
        if self.is_authority() {
            self.peer()?.report().peer.map(|peer| peer.head)
        } else {
            self.peer_head()
        }
    }

    /// On the authority: how far the peer is behind it, in events and in seconds —
    /// the age of the oldest event it has not applied, on this node's clock (which
    /// recorded it). None elsewhere, or before the peer said where it is.
    fn peer_lag(&self, report: &crate::peer::PeerReport) -> Option<(u64, f64)> {
        if !self.is_authority() {
            return None;
        }
        let peer = report.peer.as_ref()?;
        Some(self.events_after(peer.head.seq))
    }

    fn quarantined_events(&self) -> u64 {
        standin_engine::log::quarantine::list_quarantines(&self.config.data_dir)
            .map(|list| {
                list.iter()
                    .map(|(_, manifest)| manifest.events.len() as u64)
                    .sum()
            })
            .unwrap_or(0)
    }

    pub fn status(&self) -> NodeStatus {
        let head = self.repository.head();
        let (lag_events, lag_seconds) = self.lag();
        let peer = self.peer().map(|link| link.report());
        let peer_lag = peer.as_ref().and_then(|report| self.peer_lag(report));
        let peer_said = peer.as_ref().and_then(|report| report.peer.clone());
        let (chunk_count, chunk_bytes) = self.repository.chunks().usage();
        let (by_reference_chunks, by_reference_bytes) = self.repository.chunks().referenced_usage();
        let (lost_by_reference_chunks, lost_by_reference_bytes) =
            self.repository.chunks().lost_by_reference();
        NodeStatus {
            node: self.config.node_name.clone(),
            role: self.role().name().to_string(),
            epoch: self.status_epoch(),
            head_seq: head.seq,
            head_hash: head.hash.to_hex(),
            head_digest: head.digest.to_hex(),
            peer_url: self.config.peer_url.clone().unwrap_or_default(),
            peer_head_seq: self.peer_head_shown().map(|peer| peer.seq),
            peer_node: peer_said
                .as_ref()
                .map(|peer| peer.node.clone())
                .unwrap_or_default(),
            peer_role: peer_said.map(|peer| peer.role).unwrap_or_default(),
            peer_state: peer
                .as_ref()
                .map(|report| report.state.name().to_string())
                .unwrap_or_default(),
            peer_last_contact_seconds: peer
                .as_ref()
                .and_then(|report| report.last_contact_ago_ms)
                .map(|ms| ms as f64 / 1000.0),
            peer_lag_events: peer_lag.map(|(events, _)| events),
            peer_lag_seconds: peer_lag.map(|(_, seconds)| seconds),
            version: VERSION.to_string(),
            build: BUILD.to_string(),
            last_failover: self.failover.shown().map(LastFailover::of),
            lag_events,
            lag_seconds,
            chunk_count,
            chunk_bytes,
            by_reference_chunks,
            by_reference_bytes,
            lost_by_reference_chunks,
            lost_by_reference_bytes,
            cloned_bytes: self.repository.chunks().cloned_bytes(),
            content_mode: self.content_mode(),
            events_replicated: self.metrics.events_replicated.get(),
            bytes_replicated: self.metrics.bytes_replicated.get(),
            quarantined_events: self.quarantined_events(),
            authority: self.authority_status().mode.to_string(),
            authority_summary: self.authority_status().summary,
            unstable_files: self
                .capture_stats
                .unstable_paths()
                .into_iter()
                .map(|(path, _)| path)
                .collect(),
            skipped_paths: standin_engine::folder::skipped::under(
                &self
                    .config
                    .folder
                    .canonicalize()
                    .unwrap_or_else(|_| self.config.folder.clone()),
            )
            .into_iter()
            .map(|(path, reason)| format!("{path}: {reason}"))
            .collect(),
            last_error: match self.role() {
                // A fenced or suspended node says why, first.
                Role::Fenced { reason } => format!("fenced: {reason}"),
                Role::Suspended { reason } => format!("suspended: {reason}"),
                _ => self.last_error().unwrap_or_default(),
            },
            replication_period_s: self.config.replication_period_s,
            folder: self.config.folder.display().to_string(),
            terminal_servers: {
                let now_ms = standin_engine::fsutil::now_ms();
                self.load_table
                    .snapshot()
                    .into_iter()
                    .map(|load| TerminalServerStatus {
                        age_seconds: now_ms.saturating_sub(load.reported_at_ms) as f64 / 1000.0,
                        down: load.is_down(now_ms),
                        name: load.name,
                        address: load.address,
                        cpu_percent: load.cpu_percent,
                        memory_percent: load.memory_percent,
                        sessions: load.sessions,
                    })
                    .collect()
            },
        }
    }

    /// Set the gauges from the current state and encode every metric.
    pub fn render_metrics(&self) -> String {
        let status = self.status();
        let metrics = &self.metrics;
        metrics.head_seq.set(status.head_seq as i64);
        metrics
            .log_base_seq
            .set(self.repository.log().base().seq as i64);
        metrics.applied_seq.set(status.head_seq as i64);
        metrics.epoch.set(status.epoch as i64);
        metrics.lag_events.set(status.lag_events as i64);
        metrics.lag_seconds.set(status.lag_seconds);
        let peer = self.peer().map(|link| link.report());
        let state = peer
            .as_ref()
            .map_or(crate::peer::PeerState::Unknown, |report| report.state);
        metrics
            .peer_up
            .set(i64::from(state == crate::peer::PeerState::Up));
        for each in crate::peer::PeerState::ALL {
            metrics
                .peer_state
                .get_or_create(&crate::node::metrics::StateLabel {
                    state: each.name().to_string(),
                })
                .set(i64::from(each == state));
        }
        metrics
            .peer_last_contact_seconds
            .set(peer.map_or(0.0, |report| report.silent_ms as f64 / 1000.0));
        metrics
            .peer_lag_events
            .set(status.peer_lag_events.unwrap_or(0) as i64);
        metrics
            .peer_lag_seconds
            .set(status.peer_lag_seconds.unwrap_or(0.0));
        metrics.chunk_store_bytes.set(status.chunk_bytes as i64);
        metrics.chunk_store_chunks.set(status.chunk_count as i64);
        metrics
            .chunks_by_reference
            .set(status.by_reference_chunks as i64);
        metrics
            .bytes_by_reference
            .set(status.by_reference_bytes as i64);
        metrics
            .chunks_lost_by_reference
            .set(status.lost_by_reference_chunks as i64);
        metrics
            .quarantined_events
            .set(status.quarantined_events as i64);
        let last_failover = status.last_failover.as_ref().map(|shown| &shown.report);
        metrics
            .last_failover_epoch
            .set(last_failover.map_or(0, |report| report.epoch as i64));
        metrics.last_failover_kept_events.set(
            last_failover
                .and_then(|report| report.kept.as_ref())
                .map_or(0, |kept| kept.events as i64),
        );
        metrics
            .capture_unstable_files
            .set(status.unstable_files.len() as i64);
        metrics.skipped_paths.set(status.skipped_paths.len() as i64);
        metrics
            .capture_sqlite_lock_seconds_max
            .set(standin_engine::folder::read::sqlite::longest_lock().as_secs_f64());
        metrics.meta_unapplied.inner().store(
            standin_engine::folder::meta::unapplied(),
            std::sync::atomic::Ordering::Relaxed,
        );
        metrics.capture_clones.inner().store(
            standin_engine::folder::read::reflink::clones(),
            std::sync::atomic::Ordering::Relaxed,
        );
        metrics.replay_cloned_bytes.inner().store(
            self.repository.chunks().cloned_bytes(),
            std::sync::atomic::Ordering::Relaxed,
        );
        let reads = standin_engine::folder::read::sqlite::frames::reads();
        for (read, count) in standin_engine::folder::read::sqlite::frames::Read::ALL
            .iter()
            .zip(reads)
        {
            metrics
                .capture_sqlite_reads
                .get_or_create(&crate::node::metrics::ReadLabel {
                    read: read.name().to_string(),
                })
                .inner()
                .store(count, std::sync::atomic::Ordering::Relaxed);
        }
        let capture = &self.capture_stats;
        for (counter, value) in [
            (&metrics.capture_groups, &capture.groups),
            (&metrics.capture_unstable_reads, &capture.unstable_reads),
            (&metrics.capture_unordered_groups, &capture.unordered_groups),
            (&metrics.capture_held_back_groups, &capture.held_back_groups),
        ] {
            counter.inner().store(
                value.load(std::sync::atomic::Ordering::Relaxed),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        let current = self.role().name();
        for role in [
            "starting",
            "active",
            "passive",
            "rejoining",
            "suspended",
            "fenced",
        ] {
            metrics
                .role
                .get_or_create(&RoleLabel {
                    role: role.to_string(),
                })
                .set(i64::from(current == role));
        }
        metrics.encode()
    }
}
