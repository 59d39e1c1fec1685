//! How the passive cuts work into bounded pieces: a pulled batch into parts by the
//! content they name or still lack (`APPLY_CONTENT_BYTES`), the chunks to fetch into
//! `FetchChunks` calls (`FETCH_GROUP_BYTES`), the chunks a batch names or lacks, and
//! which part stores each chunk that came inline.

use standin_engine::{Event, Hash};

use super::{PullError, FETCH_GROUP_BYTES};
use crate::node::Node;

/// A batch whose chunks to fetch add up to more than this is fetched and applied in
/// parts (each at least one event), so the apply of one part overlaps the fetch of the
/// next.
pub const APPLY_CONTENT_BYTES: u64 = 64 << 20;

/// The bytes of content `event` names.
pub(super) fn content_bytes(event: &Event) -> u64 {
    event
        .body
        .change
        .chunks()
        .map(|chunks| chunks.iter().map(|chunk| chunk.len as u64).sum())
        .unwrap_or(0)
}

/// Split `events` into runs of consecutive events whose `Put` content adds up to at
/// most `limit` bytes (an event larger than `limit` is a run of its own).
pub fn split_by_content(events: Vec<Event>, limit: u64) -> Vec<Vec<Event>> {
    split_by(events, limit, content_bytes)
}

/// Split `events` into runs of consecutive events whose chunks still to fetch (those
/// in `missing`, each counted once) add up to at most `limit` bytes: a large file of
/// which a few chunks changed is not a part of its own.
pub fn split_by_missing(
    events: Vec<Event>,
    limit: u64,
    missing: &std::collections::HashSet<Hash>,
) -> Vec<Vec<Event>> {
    let mut counted = std::collections::HashSet::new();
    split_by(events, limit, |event| match event.body.change.chunks() {
        Some(chunks) => chunks
            .iter()
            .filter(|chunk| missing.contains(&chunk.hash) && counted.insert(chunk.hash))
            .map(|chunk| chunk.len as u64)
            .sum(),
        None => 0,
    })
}

fn split_by(
    events: Vec<Event>,
    limit: u64,
    mut size_of: impl FnMut(&Event) -> u64,
) -> Vec<Vec<Event>> {
    let mut parts: Vec<Vec<Event>> = Vec::new();
    let mut bytes = 0u64;
    for event in events {
        let size = size_of(&event);
        match parts.last_mut() {
            Some(part) if bytes + size <= limit => part.push(event),
            _ => {
                parts.push(vec![event]);
                bytes = 0;
            }
        }
        bytes += size;
    }
    parts
}

/// Split the chunks to fetch into calls of at most `FETCH_GROUP_BYTES` and
/// `MAX_FETCH_HASHES` chunks.
pub fn fetch_groups(chunks: &[(Hash, u32)]) -> Vec<Vec<Hash>> {
    let mut groups: Vec<Vec<Hash>> = Vec::new();
    let mut bytes = 0u64;
    for (hash, len) in chunks {
        let full = groups.last().is_none_or(|group| {
            group.len() >= crate::servers::replication_server::MAX_FETCH_HASHES
                || bytes + *len as u64 > FETCH_GROUP_BYTES
        });
        if full {
            groups.push(Vec::new());
            bytes = 0;
        }
        bytes += *len as u64;
        if let Some(group) = groups.last_mut() {
            group.push(*hash);
        }
    }
    groups
}

/// Every chunk the puts of `events` name, with its length, in order.
pub(super) fn chunks_named(events: &[Event]) -> Vec<(Hash, u32)> {
    events
        .iter()
        .filter_map(|event| {
            event
                .body
                .change
                .chunks()
                .map(|chunks| chunks.iter().map(|chunk| (chunk.hash, chunk.len)))
        })
        .flatten()
        .collect()
}

/// The chunks of `refs` the store lacks, with their lengths, without duplicates.
pub(super) fn missing_with_lengths(
    node: &Node,
    refs: Vec<(Hash, u32)>,
) -> Result<Vec<(Hash, u32)>, PullError> {
    let lengths: std::collections::HashMap<Hash, u32> = refs.iter().copied().collect();
    let missing = node
        .repository
        .chunks()
        .missing(refs.into_iter().map(|(hash, _)| hash))
        .map_err(|error| PullError::local(error, &node.config.data_dir))?;
    Ok(missing
        .into_iter()
        .map(|hash| (hash, lengths.get(&hash).copied().unwrap_or(0)))
        .collect())
}

/// The inline chunks each of `parts` stores (one list per part, in order): each chunk
/// with the first part that names it — a part refuses a chunk none of its events
/// names, and a later part fetches any that garbage collection took meanwhile — and
/// the last part what is left, so a chunk no event names is still refused there.
pub(super) fn share_inline<T>(parts: &[Vec<Event>], inline: Vec<(Hash, T)>) -> Vec<Vec<(Hash, T)>> {
    let mut left = inline;
    let last = parts.len().saturating_sub(1);
    let mut shares = Vec::with_capacity(parts.len());
    for (index, part) in parts.iter().enumerate() {
        if index == last {
            shares.push(std::mem::take(&mut left));
            continue;
        }
        let named: std::collections::HashSet<Hash> = chunks_named(part)
            .into_iter()
            .map(|(hash, _)| hash)
            .collect();
        let (mine, rest) = std::mem::take(&mut left)
            .into_iter()
            .partition(|(hash, _)| named.contains(hash));
        left = rest;
        shares.push(mine);
    }
    shares
}
