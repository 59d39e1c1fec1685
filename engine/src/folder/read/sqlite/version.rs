//! The last version capture built of a WAL-mode database (`Known`: the log's
//! generation, the position after its last commit frame, the content as pieces), and
//! how committed pages are laid over those pieces — shared by the reads from the log
//! (`frames`) and the whole read (`whole`).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;

use super::pieces::{Pieces, PIECE_BYTES};
use super::wal::{Header, Position};
use crate::chunk_store::ChunkStore;
use crate::error::Result;

/// The last version built of one database.
#[derive(Clone)]
pub(super) struct Known {
    pub(super) identity: (u64, u64),
    pub(super) header: Header,
    pub(super) at: Position,
    pub(super) pieces: Pieces,
}

pub(super) fn identity(metadata: &std::fs::Metadata) -> (u64, u64) {
    (metadata.dev(), metadata.ino())
}

/// The pages (1-based numbers, at most `db_pages`) of `pages` by the piece they fall in.
pub(super) fn pages_by_piece(
    pages: &BTreeMap<u32, Vec<u8>>,
    db_pages: u32,
    page_size: u64,
) -> BTreeMap<usize, BTreeSet<u32>> {
    let mut by_piece: BTreeMap<usize, BTreeSet<u32>> = BTreeMap::new();
    for &page in pages.keys().filter(|&&page| page <= db_pages) {
        let piece = (u64::from(page - 1) * page_size / PIECE_BYTES) as usize;
        by_piece.entry(piece).or_default().insert(page);
    }
    by_piece
}

/// Piece `index` stored: its `bytes` with `numbers` from `pages` laid over them.
pub(super) fn piece_with(
    store: &ChunkStore,
    index: usize,
    bytes: &mut [u8],
    numbers: Option<&BTreeSet<u32>>,
    pages: &BTreeMap<u32, Vec<u8>>,
    page_size: u64,
) -> Result<super::pieces::Piece> {
    overlay(bytes, index, numbers, pages, page_size);
    Pieces::make(store, index, bytes)
}

/// Lay `numbers` (pages of piece `index`) from `pages` over that piece's `bytes`.
fn overlay(
    bytes: &mut [u8],
    index: usize,
    numbers: Option<&BTreeSet<u32>>,
    pages: &BTreeMap<u32, Vec<u8>>,
    page_size: u64,
) {
    let start = index as u64 * PIECE_BYTES;
    for page in numbers.into_iter().flatten() {
        let Some(data) = pages.get(page) else {
            continue;
        };
        let at = (u64::from(page - 1) * page_size - start) as usize;
        let end = (at + data.len()).min(bytes.len());
        if at < end {
            bytes[at..end].copy_from_slice(&data[..end - at]);
        }
    }
}
