//! The edge between wire types (`standin_proto::v1`) and engine types. Nothing past
//! this module sees a protobuf type; nothing received is trusted before it passes here.

use standin_engine::{Event, Hash, Head};
use standin_proto::v1 as wire;

/// A received value that cannot be an engine value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("{field}: expected a 32-byte hash, got {len} bytes")]
    BadHash { field: &'static str, len: usize },
    #[error("event: {0}")]
    BadEvent(String),
    #[error("{0} is missing")]
    Missing(&'static str),
}

pub fn hash_from_wire(field: &'static str, bytes: &[u8]) -> Result<Hash, WireError> {
    Hash::from_slice(bytes).ok_or(WireError::BadHash {
        field,
        len: bytes.len(),
    })
}

pub fn head_to_wire(head: &Head) -> wire::Head {
    wire::Head {
        seq: head.seq,
        hash: head.hash.0.to_vec(),
        epoch: head.epoch,
        digest: head.digest.0.to_vec(),
        recorded_at_ms: head.recorded_at_ms,
    }
}

pub fn head_from_wire(head: Option<&wire::Head>) -> Result<Head, WireError> {
    let head = head.ok_or(WireError::Missing("head"))?;
    if head.seq == 0 && head.hash.is_empty() {
        return Ok(Head::EMPTY);
    }
    Ok(Head {
        seq: head.seq,
        hash: hash_from_wire("head.hash", &head.hash)?,
        epoch: head.epoch,
        digest: hash_from_wire("head.digest", &head.digest)?,
        recorded_at_ms: head.recorded_at_ms,
    })
}

pub fn event_to_wire(event: &Event) -> wire::Event {
    wire::Event {
        prev: event.prev.0.to_vec(),
        hash: event.hash.0.to_vec(),
        body: event.body.canonical_bytes(),
    }
}

/// Decode and check one received event: its hash must be what its prev and body give,
/// and its paths must be safe (checked by the engine's decoder).
pub fn event_from_wire(event: &wire::Event) -> Result<Event, WireError> {
    let prev = hash_from_wire("event.prev", &event.prev)?;
    let hash = hash_from_wire("event.hash", &event.hash)?;
    Event::from_parts(prev, &event.body, hash)
        .map_err(|error| WireError::BadEvent(error.to_string()))
}

/// A node's drill answer for the wire (`Cluster.Drill`).
pub fn drill_to_wire(answer: &crate::coordinator::drill::DrillAnswer) -> wire::DrillReport {
    use crate::config::preflight::Level;
    wire::DrillReport {
        node: answer.node.clone(),
        role: answer.role.clone(),
        head_seq: answer.head_seq,
        checks: answer
            .checks
            .iter()
            .map(|check| wire::DrillCheck {
                level: match check.level {
                    Level::Ok => wire::CheckLevel::CheckOk,
                    Level::Warn => wire::CheckLevel::CheckWarn,
                    Level::Fail => wire::CheckLevel::CheckFail,
                } as i32,
                key: check.key.clone(),
                message: check.message.clone(),
            })
            .collect(),
        failover_min_ms: answer.estimate.min_ms,
        failover_max_ms: answer.estimate.max_ms,
        failover_timing: answer.estimate.explanation.clone(),
        events_beyond_peer: answer.beyond_peer.map(|(events, _)| events),
        seconds_beyond_peer: answer.beyond_peer.map(|(_, seconds)| seconds),
    }
}

/// A drill answer as received (`standin drill`); a check of an unknown level counts
/// as a failure.
pub fn drill_from_wire(report: &wire::DrillReport) -> crate::coordinator::drill::DrillAnswer {
    use crate::config::preflight::Level;
    crate::coordinator::drill::DrillAnswer {
        node: report.node.clone(),
        role: report.role.clone(),
        head_seq: report.head_seq,
        checks: report
            .checks
            .iter()
            .map(|check| crate::coordinator::drill::Check {
                level: match wire::CheckLevel::try_from(check.level) {
                    Ok(wire::CheckLevel::CheckOk) => Level::Ok,
                    Ok(wire::CheckLevel::CheckWarn) => Level::Warn,
                    _ => Level::Fail,
                },
                key: check.key.clone(),
                message: check.message.clone(),
            })
            .collect(),
        estimate: crate::coordinator::drill::FailoverEstimate {
            min_ms: report.failover_min_ms,
            max_ms: report.failover_max_ms,
            explanation: report.failover_timing.clone(),
        },
        beyond_peer: report
            .events_beyond_peer
            .map(|events| (events, report.seconds_beyond_peer.unwrap_or(0.0))),
    }
}

/// The last failover's report for the wire (heartbeats, status).
pub fn failover_to_wire(
    report: &crate::coordinator::failover_report::FailoverReport,
) -> wire::FailoverReport {
    wire::FailoverReport {
        epoch: report.epoch,
        promoted_node: report.promoted_node.clone(),
        promoted_at_ms: report.promoted_at_ms,
        promoted_head_seq: report.promoted_head_seq,
        old_active: report.old_active.clone(),
        old_active_head_seq: report.old_active_head_seq,
        old_active_heard_at_ms: report.old_active_heard_at_ms,
        kept: report.kept.as_ref().map(|kept| wire::FailoverKept {
            node: kept.node.clone(),
            at_ms: kept.at_ms,
            events: kept.events,
            paths: kept.paths.clone(),
            more_paths: kept.more_paths,
            dirs: kept.dirs.clone(),
            common_seq: kept.common_seq,
        }),
        acknowledged_at_ms: report.acknowledged_at_ms,
        ack_covers_kept: report.ack_covers_kept,
    }
}

/// A failover report as received. It is only ever shown, never acted on; its lists
/// are cut to their bounds so a peer cannot make it grow.
pub fn failover_from_wire(
    report: &wire::FailoverReport,
) -> crate::coordinator::failover_report::FailoverReport {
    use crate::coordinator::failover_report::{FailoverReport, Kept, MAX_PATHS};
    FailoverReport {
        epoch: report.epoch,
        promoted_node: report.promoted_node.clone(),
        promoted_at_ms: report.promoted_at_ms,
        promoted_head_seq: report.promoted_head_seq,
        old_active: report.old_active.clone(),
        old_active_head_seq: report.old_active_head_seq,
        old_active_heard_at_ms: report.old_active_heard_at_ms,
        kept: report.kept.as_ref().map(|kept| Kept {
            node: kept.node.clone(),
            at_ms: kept.at_ms,
            events: kept.events,
            paths: kept.paths.iter().take(MAX_PATHS).cloned().collect(),
            more_paths: kept
                .more_paths
                .saturating_add(kept.paths.len().saturating_sub(MAX_PATHS) as u64),
            dirs: kept.dirs.iter().take(MAX_PATHS).cloned().collect(),
            common_seq: kept.common_seq,
        }),
        acknowledged_at_ms: report.acknowledged_at_ms,
        ack_covers_kept: report.ack_covers_kept,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Arbitrary bytes from the wire never panic the conversion.
        #[test]
        fn arbitrary_wire_events_are_refused_or_accepted_without_panic(
            prev in prop::collection::vec(any::<u8>(), 0..40),
            hash in prop::collection::vec(any::<u8>(), 0..40),
            body in prop::collection::vec(any::<u8>(), 0..300),
        ) {
            let _ = event_from_wire(&wire::Event { prev, hash, body });
        }
    }

    /// Run every conversion the passive applies to a received message.
    fn convert_pull(response: &wire::PullResponse) {
        match &response.kind {
            Some(wire::pull_response::Kind::Batch(batch)) => {
                let _ = head_from_wire(batch.head.as_ref());
                for event in &batch.events {
                    if let Ok(event) = event_from_wire(event) {
                        // Accepted: it hashes to what it says, and re-encodes the same.
                        assert_eq!(event_to_wire(&event).hash, event.hash.0.to_vec());
                    }
                }
            }
            Some(wire::pull_response::Kind::Divergence(divergence)) => {
                let _ = head_from_wire(divergence.head.as_ref());
            }
            Some(wire::pull_response::Kind::Compacted(compacted)) => {
                let _ = head_from_wire(compacted.base.as_ref());
            }
            None => {}
        }
    }

    fn convert_snapshot(part: &wire::SnapshotPart) {
        match &part.kind {
            Some(wire::snapshot_part::Kind::Head(head)) => {
                let _ = head_from_wire(Some(head));
            }
            Some(wire::snapshot_part::Kind::Entries(batch)) => {
                for entry in &batch.entries {
                    let _ = standin_engine::folder::index::decode_entry(&entry.path, &entry.entry);
                }
            }
            None => {}
        }
    }

    /// A sound batch of two events, encoded as the active sends it.
    fn sound_batch() -> Vec<u8> {
        use prost::Message;
        let first = Event::seal(
            Hash::ZERO,
            standin_engine::EventBody {
                seq: 1,
                epoch: 1,
                recorded_at_ms: 5,
                change: standin_engine::Change::Mkdir {
                    path: standin_engine::RelPath::new("d").unwrap(),
                    mode: 0o755,
                },
                digest: Hash::of(b"digest"),
            },
        );
        let second = Event::seal(
            first.hash,
            standin_engine::EventBody {
                seq: 2,
                epoch: 1,
                recorded_at_ms: 6,
                change: standin_engine::Change::Remove {
                    path: standin_engine::RelPath::new("d/x").unwrap(),
                },
                digest: Hash::of(b"digest 2"),
            },
        );
        wire::PullResponse {
            kind: Some(wire::pull_response::Kind::Batch(wire::EventBatch {
                events: vec![event_to_wire(&first), event_to_wire(&second)],
                chunks: Vec::new(),
                head: Some(head_to_wire(&Head {
                    seq: 2,
                    hash: second.hash,
                    epoch: 1,
                    digest: Hash::of(b"digest 2"),
                    recorded_at_ms: 6,
                })),
            })),
        }
        .encode_to_vec()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

        /// Arbitrary bytes off the wire, decoded as each message the passive receives
        /// and converted as it converts them: refused or accepted, never a panic.
        #[test]
        fn arbitrary_protobuf_bytes_convert_or_fail_cleanly(
            bytes in prop::collection::vec(any::<u8>(), 0..600),
        ) {
            use prost::Message;
            if let Ok(response) = wire::PullResponse::decode(bytes.as_slice()) {
                convert_pull(&response);
            }
            if let Ok(part) = wire::SnapshotPart::decode(bytes.as_slice()) {
                convert_snapshot(&part);
            }
            if let Ok(batch) = wire::ChunkBatch::decode(bytes.as_slice()) {
                for chunk in &batch.chunks {
                    let _ = hash_from_wire("chunk.hash", &chunk.hash);
                }
            }
            if let Ok(request) = wire::FetchChunksRequest::decode(bytes.as_slice()) {
                for hash in &request.hashes {
                    let _ = hash_from_wire("hashes", hash);
                }
            }
            if let Ok(request) = wire::PullRequest::decode(bytes.as_slice()) {
                let _ = hash_from_wire("after_hash", &request.after_hash);
            }
        }

        /// A sound batch with bytes flipped (so the decoder gets past the framing and
        /// into events and heads): refused or accepted, never a panic; an accepted
        /// event always hashes to what it says.
        #[test]
        fn flipped_bytes_of_a_sound_batch_convert_or_fail_cleanly(
            flips in prop::collection::vec((any::<usize>(), 1u8..=255), 1..4),
        ) {
            use prost::Message;
            let mut bytes = sound_batch();
            for (at, mask) in flips {
                let at = at % bytes.len();
                bytes[at] ^= mask;
            }
            if let Ok(response) = wire::PullResponse::decode(bytes.as_slice()) {
                convert_pull(&response);
            }
        }

        /// A head is accepted exactly when it is the empty head or both its hashes are
        /// 32 bytes.
        #[test]
        fn heads_are_accepted_only_with_sound_hashes(
            seq in any::<u64>(),
            epoch in any::<u64>(),
            hash in prop::collection::vec(any::<u8>(), 0..40),
            digest in prop::collection::vec(any::<u8>(), 0..40),
        ) {
            let head = wire::Head { seq, hash: hash.clone(), epoch, digest: digest.clone(), recorded_at_ms: 1 };
            let sound = (seq == 0 && hash.is_empty()) || (hash.len() == 32 && digest.len() == 32);
            prop_assert_eq!(head_from_wire(Some(&head)).is_ok(), sound);
        }
    }

    #[test]
    fn the_sound_batch_converts() {
        use prost::Message;
        let response = wire::PullResponse::decode(sound_batch().as_slice()).unwrap();
        let Some(wire::pull_response::Kind::Batch(batch)) = response.kind else {
            panic!("a batch")
        };
        assert_eq!(head_from_wire(batch.head.as_ref()).unwrap().seq, 2);
        assert!(batch
            .events
            .iter()
            .all(|event| event_from_wire(event).is_ok()));
    }

    #[test]
    fn a_round_trip_keeps_the_event() {
        let body = standin_engine::EventBody {
            seq: 1,
            epoch: 1,
            recorded_at_ms: 5,
            change: standin_engine::Change::Remove {
                path: standin_engine::RelPath::new("x").unwrap(),
            },
            digest: Hash::ZERO,
        };
        let event = Event::seal(Hash::ZERO, body);
        assert_eq!(event_from_wire(&event_to_wire(&event)).unwrap(), event);
        let mut tampered = event_to_wire(&event);
        tampered.hash[0] ^= 1;
        assert!(matches!(
            event_from_wire(&tampered),
            Err(WireError::BadEvent(_))
        ));
        assert_eq!(
            event_from_wire(&wire::Event {
                prev: vec![1],
                ..event_to_wire(&event)
            }),
            Err(WireError::BadHash {
                field: "event.prev",
                len: 1
            })
        );
    }
}
