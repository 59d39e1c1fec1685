//! The bytes the log stores: an event record (`prev ‖ hash ‖ canonical body` under its
//! big-endian seq), the base head and the last group in `log_base`.

use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::log::event::Event;

use super::Head;

pub(super) fn decode_group(bytes: &[u8]) -> Option<(u64, u64)> {
    let start = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
    let end = u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?);
    Some((start, end))
}

pub(super) fn encode_group((start, end): (u64, u64)) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&start.to_be_bytes());
    out[8..].copy_from_slice(&end.to_be_bytes());
    out
}

/// `seq ‖ hash ‖ epoch ‖ digest ‖ recorded_at_ms`, 88 bytes.
pub(super) fn encode_head(head: &Head) -> Vec<u8> {
    let mut out = Vec::with_capacity(88);
    out.extend_from_slice(&head.seq.to_le_bytes());
    out.extend_from_slice(&head.hash.0);
    out.extend_from_slice(&head.epoch.to_le_bytes());
    out.extend_from_slice(&head.digest.0);
    out.extend_from_slice(&head.recorded_at_ms.to_le_bytes());
    out
}

pub(super) fn decode_head(bytes: &[u8]) -> Option<Head> {
    if bytes.len() != 88 {
        return None;
    }
    let number =
        |range: std::ops::Range<usize>| bytes[range].try_into().ok().map(u64::from_le_bytes);
    Some(Head {
        seq: number(0..8)?,
        hash: Hash::from_slice(&bytes[8..40])?,
        epoch: number(40..48)?,
        digest: Hash::from_slice(&bytes[48..80])?,
        recorded_at_ms: number(80..88)?,
    })
}

pub(super) fn key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

pub(super) fn encode_value(event: &Event, canonical: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(64 + canonical.len());
    value.extend_from_slice(&event.prev.0);
    value.extend_from_slice(&event.hash.0);
    value.extend_from_slice(canonical);
    value
}

pub(super) fn decode_value(seq: u64, value: &[u8]) -> Result<Event> {
    if value.len() < 65 {
        return Err(Error::BrokenChain {
            seq,
            reason: format!("stored record is {} bytes long", value.len()),
        });
    }
    let prev = Hash::from_slice(&value[..32]).unwrap_or_default();
    let hash = Hash::from_slice(&value[32..64]).unwrap_or_default();
    let event = Event::from_parts(prev, &value[64..], hash).map_err(|error| match error {
        Error::BrokenChain { reason, .. } => Error::BrokenChain { seq, reason },
        Error::Decode { reason, .. } => Error::BrokenChain {
            seq,
            reason: format!("undecodable body: {reason}"),
        },
        other => other,
    })?;
    if event.seq() != seq {
        return Err(Error::BrokenChain {
            seq,
            reason: format!("stored under seq {seq} but says seq {}", event.seq()),
        });
    }
    Ok(event)
}
