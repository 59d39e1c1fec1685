//! The named-loss report of the last failover: when a passive promotes itself (not a
//! planned switchover), it records what it knew of the old active — its head and when
//! it last heard from it — and its own head; when the old active rejoins, it records
//! what it kept in quarantine (events, the paths they touched, the directories). Each
//! node keeps the report in `data_dir/last-failover.json`, sends it in every
//! heartbeat (both ways) and merges the peer's into its own (`merge`), so both nodes
//! end with the whole story. `status` shows it (`summary`) until an operator
//! acknowledges it (`standin failover-ack`); the acknowledgement travels the same way.
//! An acknowledgement given before the quarantine part was known does not cover it:
//! the report shows again once it arrives.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// The file in data_dir.
const FILE: &str = "last-failover.json";
/// Paths listed at most (the rest are counted).
pub const MAX_PATHS: usize = 20;

/// What the old active kept in quarantine at its rejoin.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    pub node: String,
    /// When (ms since 1970, the old active's clock).
    pub at_ms: u64,
    /// Events (and unrecorded files) kept in quarantine.
    pub events: u64,
    /// The paths they touched, at most `MAX_PATHS`; `more_paths` counts the rest.
    pub paths: Vec<String>,
    pub more_paths: u64,
    /// The quarantine directories (`quarantine show DIR`).
    pub dirs: Vec<String>,
    /// The last event the old active shared with the new one.
    pub common_seq: u64,
}

/// The last failover as this node knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverReport {
    /// The epoch the promoted node took.
    pub epoch: u64,
    /// The promoted node and when it promoted (ms since 1970; 0: not known here yet).
    pub promoted_node: String,
    pub promoted_at_ms: u64,
    /// Its head when it promoted: it kept everything up to there.
    pub promoted_head_seq: u64,
    /// The old active, its head as the promoted node last knew it, and when it last
    /// heard from it (ms since 1970).
    pub old_active: String,
    pub old_active_head_seq: Option<u64>,
    pub old_active_heard_at_ms: Option<u64>,
    /// Filled when the old active has rejoined.
    pub kept: Option<Kept>,
    /// When an operator acknowledged it, and whether that covered `kept`.
    pub acknowledged_at_ms: Option<u64>,
    pub ack_covers_kept: bool,
}

impl FailoverReport {
    /// The promotion side is known here.
    pub fn knows_promotion(&self) -> bool {
        self.promoted_at_ms > 0
    }

    /// Acknowledged, and the acknowledgement covers everything known.
    pub fn is_acknowledged(&self) -> bool {
        self.acknowledged_at_ms.is_some() && (self.kept.is_none() || self.ack_covers_kept)
    }

    /// Something to tell an operator: a failover, or events kept aside (a rejoin
    /// after a planned switchover that kept nothing is no news).
    pub fn is_news(&self) -> bool {
        self.knows_promotion() || self.kept.as_ref().is_some_and(|kept| kept.events > 0)
    }

    /// Shown by `status` and `/metrics`.
    pub fn is_shown(&self) -> bool {
        self.is_news() && !self.is_acknowledged()
    }

    /// One line for `status`: "time, epoch N: beta took over from alpha (…); M events
    /// kept in quarantine on alpha: paths…".
    pub fn summary(&self) -> String {
        let mut text = if self.knows_promotion() {
            let old = if self.old_active.is_empty() {
                "the old active".to_string()
            } else {
                self.old_active.clone()
            };
            let mut text = format!(
                "{}, epoch {}: {} took over from {old} at its head {}",
                standin_engine::clock::utc(self.promoted_at_ms),
                self.epoch,
                self.promoted_node,
                self.promoted_head_seq
            );
            match (self.old_active_head_seq, self.old_active_heard_at_ms) {
                (Some(seq), Some(at_ms)) => text.push_str(&format!(
                    " ({old}'s head was {seq} when last heard from, {:.1} s before)",
                    self.promoted_at_ms.saturating_sub(at_ms) as f64 / 1000.0
                )),
                (Some(seq), None) => text.push_str(&format!(" ({old}'s head was {seq})")),
                _ => text.push_str(&format!(" ({old} never heard from)")),
            }
            text
        } else {
            format!("epoch {}", self.epoch)
        };
        match &self.kept {
            None => text.push_str(&format!(
                "; {} has not rejoined yet: what it kept is not known",
                if self.old_active.is_empty() {
                    "the old active"
                } else {
                    &self.old_active
                }
            )),
            Some(kept) if kept.events == 0 => text.push_str(&format!(
                "; nothing kept in quarantine on {}: no event lost",
                kept.node
            )),
            Some(kept) => {
                text.push_str(&format!(
                    "; {} event{} kept in quarantine on {}: {}",
                    kept.events,
                    if kept.events == 1 { "" } else { "s" },
                    kept.node,
                    kept.paths.join(", ")
                ));
                if kept.more_paths > 0 {
                    text.push_str(&format!(" and {} more", kept.more_paths));
                }
                text.push_str(" (standin quarantine list)");
            }
        }
        text
    }
}

/// `theirs` merged into `own`: the later epoch wins; within one epoch the promotion
/// side comes from whoever knows it, the quarantine side from whoever knows it (the
/// later if both), and an acknowledgement stands only if it covers what is known.
pub fn merge(own: Option<&FailoverReport>, theirs: &FailoverReport) -> FailoverReport {
    let Some(own) = own else {
        return theirs.clone();
    };
    if theirs.epoch != own.epoch {
        return if theirs.epoch > own.epoch {
            theirs.clone()
        } else {
            own.clone()
        };
    }
    let mut merged = if own.knows_promotion() || !theirs.knows_promotion() {
        own.clone()
    } else {
        theirs.clone()
    };
    merged.kept = match (&own.kept, &theirs.kept) {
        (Some(mine), Some(other)) if other.at_ms > mine.at_ms => Some(other.clone()),
        (Some(mine), _) => Some(mine.clone()),
        (None, other) => other.clone(),
    };
    let covering = |report: &FailoverReport| {
        report
            .acknowledged_at_ms
            .filter(|_| merged.kept.is_none() || (report.ack_covers_kept && report.kept.is_some()))
    };
    merged.acknowledged_at_ms = covering(own).max(covering(theirs));
    merged.ack_covers_kept = merged.acknowledged_at_ms.is_some() && merged.kept.is_some();
    merged
}

/// A node's report, kept in memory and in data_dir.
pub struct FailoverLog {
    file: PathBuf,
    report: Mutex<Option<FailoverReport>>,
}

impl FailoverLog {
    /// The report kept in `data_dir` (none when the file is missing; one that cannot
    /// be read is logged and ignored: it is a report, not state the node needs).
    pub fn open(data_dir: &Path) -> FailoverLog {
        let file = data_dir.join(FILE);
        let report = match std::fs::read_to_string(&file) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|error| {
                    tracing::warn!(file = %file.display(), %error, "the last failover's report cannot be read; ignored")
                })
                .ok(),
            Err(_) => None,
        };
        FailoverLog {
            file,
            report: Mutex::new(report),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<FailoverReport>> {
        self.report
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The report as this node knows it.
    pub fn current(&self) -> Option<FailoverReport> {
        self.lock().clone()
    }

    /// The report while `status` shows it.
    pub fn shown(&self) -> Option<FailoverReport> {
        self.current().filter(FailoverReport::is_shown)
    }

    /// Merge `theirs` (the peer's, or this node's own news) in, and keep the result.
    pub fn merge(&self, theirs: &FailoverReport) {
        let mut report = self.lock();
        let merged = merge(report.as_ref(), theirs);
        if report.as_ref() == Some(&merged) {
            return;
        }
        if let Err(error) = write(&self.file, &merged) {
            tracing::warn!(file = %self.file.display(), %error, "cannot keep the last failover's report");
        }
        if merged.is_shown() && report.as_ref().is_none_or(|old| !old.is_shown()) {
            tracing::warn!(report = %merged.summary(), "last failover (standin failover-ack once read)");
        }
        *report = Some(merged);
    }

    /// An operator read the report: acknowledge it (the one of `epoch`, or whichever
    /// is the last with 0). Refused when there is nothing to acknowledge.
    pub fn acknowledge(&self, epoch: u64, now_ms: u64) -> Result<FailoverReport, String> {
        let current = self.current();
        let Some(mut report) = current.filter(FailoverReport::is_news) else {
            return Err("there is no failover to acknowledge".to_string());
        };
        if epoch != 0 && epoch != report.epoch {
            return Err(format!(
                "the last failover is that of epoch {}, not {epoch}",
                report.epoch
            ));
        }
        if report.is_acknowledged() {
            return Err(format!(
                "there is no failover to acknowledge: that of epoch {} already is",
                report.epoch
            ));
        }
        report.acknowledged_at_ms = Some(now_ms);
        report.ack_covers_kept = report.kept.is_some();
        self.merge(&report);
        Ok(report)
    }
}

/// Written whole, synced, renamed into place.
fn write(file: &Path, report: &FailoverReport) -> std::io::Result<()> {
    use std::io::Write;
    let text = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
    let temporary = file.with_extension("writing");
    let mut out = std::fs::File::create(&temporary)?;
    out.write_all(text.as_bytes())?;
    out.sync_all()?;
    std::fs::rename(&temporary, file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn promoted(epoch: u64) -> FailoverReport {
        FailoverReport {
            epoch,
            promoted_node: "beta".to_string(),
            promoted_at_ms: 1_700_000_000_000,
            promoted_head_seq: 40,
            old_active: "alpha".to_string(),
            old_active_head_seq: Some(42),
            old_active_heard_at_ms: Some(1_699_999_998_500),
            ..FailoverReport::default()
        }
    }

    fn kept(epoch: u64, events: u64, at_ms: u64) -> FailoverReport {
        FailoverReport {
            epoch,
            kept: Some(Kept {
                node: "alpha".to_string(),
                at_ms,
                events,
                paths: vec!["a.txt".to_string(), "b.txt".to_string()],
                more_paths: 0,
                dirs: vec!["/var/lib/standin/quarantine/1-1".to_string()],
                common_seq: 40,
            }),
            ..FailoverReport::default()
        }
    }

    #[test]
    fn both_halves_meet_whichever_side_learns_first() {
        let one = merge(Some(&promoted(2)), &kept(2, 3, 5));
        let other = merge(Some(&kept(2, 3, 5)), &promoted(2));
        assert_eq!(one, other);
        assert!(one.is_shown());
        let summary = one.summary();
        assert!(
            summary.starts_with("2023-11-14 22:13:20 UTC, epoch 2: beta took over from alpha at its head 40 (alpha's head was 42 when last heard from, 1.5 s before)"),
            "{summary}"
        );
        assert!(
            summary.ends_with(
                "3 events kept in quarantine on alpha: a.txt, b.txt (standin quarantine list)"
            ),
            "{summary}"
        );
    }

    #[test]
    fn a_later_epoch_replaces_an_earlier_one() {
        let merged = merge(
            Some(&merge(Some(&promoted(2)), &kept(2, 3, 5))),
            &promoted(4),
        );
        assert_eq!(merged, promoted(4));
        assert_eq!(merge(Some(&promoted(4)), &kept(2, 1, 9)), promoted(4));
    }

    #[test]
    fn an_acknowledgement_holds_only_for_what_it_saw() {
        let dir = tempfile::tempdir().unwrap();
        let log = FailoverLog::open(dir.path());
        assert!(log.acknowledge(0, 1).is_err(), "nothing to acknowledge");
        log.merge(&promoted(2));
        assert!(log.shown().is_some());
        assert!(log
            .acknowledge(3, 1)
            .unwrap_err()
            .contains("epoch 2, not 3"));
        log.acknowledge(2, 10).unwrap();
        assert!(log.shown().is_none());
        // The quarantine part arrives afterwards: shown again.
        log.merge(&kept(2, 3, 5));
        assert!(log.shown().is_some());
        let acknowledged = log.acknowledge(0, 20).unwrap();
        assert!(log.shown().is_none());
        assert!(log.acknowledge(0, 30).unwrap_err().contains("already"));
        // The peer's older, unacknowledged copy does not undo it; and it is kept.
        log.merge(&merge(Some(&promoted(2)), &kept(2, 3, 5)));
        assert!(log.shown().is_none());
        assert_eq!(
            FailoverLog::open(dir.path()).current(),
            Some(acknowledged.clone())
        );
        // Its acknowledgement reaches a peer that did not have it.
        let peer = merge(
            Some(&merge(Some(&promoted(2)), &kept(2, 3, 5))),
            &acknowledged,
        );
        assert!(!peer.is_shown());
    }

    #[test]
    fn a_rejoin_that_kept_nothing_after_a_switchover_is_no_news() {
        assert!(!kept(2, 0, 5).is_shown());
        assert!(kept(2, 1, 5).is_shown());
        let summary = merge(Some(&promoted(2)), &kept(2, 0, 5)).summary();
        assert!(
            summary.ends_with("nothing kept in quarantine on alpha: no event lost"),
            "{summary}"
        );
    }
}
