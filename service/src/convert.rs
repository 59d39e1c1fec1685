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
