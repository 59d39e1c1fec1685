//! A database's content as fixed, page-aligned pieces of `PIECE_BYTES`: a page
//! changed in the `-wal` falls in exactly one piece, so a new version is built by
//! rewriting only the pieces its changed pages fall in, and its whole-content hash
//! (blake3, as `chunking` computes it for every file) is merged from the pieces'
//! chaining values (`blake3::hazmat`) rather than by hashing the whole file again.
//!
//! Each piece is stored as one chunk. A piece is a complete blake3 subtree: pieces
//! start at multiples of 64 KiB, a power of two times blake3's 1 KiB chunk, so the
//! tree over the file splits at piece boundaries (see `root`).

use blake3::hazmat::{ChainingValue, HasherExt, Mode};

use crate::chunk_store::chunking::Chunked;
use crate::chunk_store::ChunkStore;
use crate::error::Result;
use crate::hash::Hash;
use crate::log::event::ChunkRef;

/// The size of every piece but the last (which holds what is left).
pub const PIECE_BYTES: u64 = 64 * 1024;

/// One piece of a database's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    /// Its chunk (the hash of its bytes, and their count).
    pub chunk: ChunkRef,
    /// Its chaining value as the subtree at its offset in the file.
    pub cv: ChainingValue,
}

/// A database's content, piece by piece.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pieces {
    pub size: u64,
    pub pieces: Vec<Piece>,
}

impl Pieces {
    /// How many pieces a content of `size` bytes has.
    pub fn count_for(size: u64) -> usize {
        size.div_ceil(PIECE_BYTES) as usize
    }

    /// The length of piece `index` of a content of `size` bytes.
    pub fn len_of(size: u64, index: usize) -> usize {
        let start = index as u64 * PIECE_BYTES;
        size.saturating_sub(start).min(PIECE_BYTES) as usize
    }

    /// Store `bytes` as piece `index` (they start at `index * PIECE_BYTES`).
    pub fn make(store: &ChunkStore, index: usize, bytes: &[u8]) -> Result<Piece> {
        let hash = store.put(bytes)?;
        let mut hasher = blake3::Hasher::new();
        hasher.set_input_offset(index as u64 * PIECE_BYTES);
        hasher.update(bytes);
        Ok(Piece {
            chunk: ChunkRef {
                hash,
                len: bytes.len() as u32,
            },
            cv: hasher.finalize_non_root(),
        })
    }

    /// The whole content's hash, the chunks and the size, as a file's content is
    /// described everywhere else. A content of one piece hashes as that piece's chunk
    /// (the plain hash of its bytes); two or more merge their chaining values.
    pub fn chunked(&self) -> Chunked {
        let content = match self.pieces.as_slice() {
            [] => Hash::of(&[]),
            [only] => only.chunk.hash,
            pieces => Hash(*root(pieces).as_bytes()),
        };
        Chunked {
            content,
            size: self.size,
            chunks: self.pieces.iter().map(|piece| piece.chunk).collect(),
        }
    }
}

/// The root hash of two or more pieces: blake3 splits an input of `n` bytes into a
/// left subtree of the largest power of two of 1 KiB chunks below `n` and the rest;
/// with pieces of a power-of-two size that split always falls between pieces.
fn root(pieces: &[Piece]) -> blake3::Hash {
    let (left, right) = pieces.split_at(split(pieces.len()));
    blake3::hazmat::merge_subtrees_root(&subtree(left), &subtree(right), Mode::Hash)
}

fn subtree(pieces: &[Piece]) -> ChainingValue {
    if pieces.len() == 1 {
        return pieces[0].cv;
    }
    let (left, right) = pieces.split_at(split(pieces.len()));
    blake3::hazmat::merge_subtrees_non_root(&subtree(left), &subtree(right), Mode::Hash)
}

/// How many of `count` (≥ 2) pieces go to the left subtree: the largest power of two
/// below `count` (the last piece may be short, which does not move the split).
fn split(count: usize) -> usize {
    debug_assert!(count >= 2);
    1 << (usize::BITS - 1 - (count - 1).leading_zeros())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces_of(store: &ChunkStore, bytes: &[u8]) -> Pieces {
        let size = bytes.len() as u64;
        let pieces = (0..Pieces::count_for(size))
            .map(|index| {
                let start = index * PIECE_BYTES as usize;
                let end = start + Pieces::len_of(size, index);
                Pieces::make(store, index, &bytes[start..end]).unwrap()
            })
            .collect();
        Pieces { size, pieces }
    }

    #[test]
    fn the_merged_hash_is_the_hash_of_the_whole_content() {
        let dir = tempfile::tempdir().unwrap();
        let repository = crate::repository::Repository::open(dir.path()).unwrap();
        let store = repository.chunks();
        // Sizes around the splits: one piece, two, a short last piece, 2^k ± 1 pieces.
        let piece = PIECE_BYTES as usize;
        for size in [
            0,
            1_000,
            piece,
            piece + 4_096,
            2 * piece,
            3 * piece - 512,
            4 * piece,
            5 * piece + 1_024,
            8 * piece,
            9 * piece,
            17 * piece - 4_096,
        ] {
            let bytes: Vec<u8> = (0..size).map(|at| (at * 7 + at / 4_096) as u8).collect();
            let pieces = pieces_of(store, &bytes);
            let chunked = pieces.chunked();
            assert_eq!(chunked.content, Hash::of(&bytes), "size {size}");
            assert_eq!(chunked.size, size as u64);
            let total: u64 = chunked.chunks.iter().map(|c| u64::from(c.len)).sum();
            assert_eq!(total, size as u64);
        }
    }

    #[test]
    fn the_split_is_the_largest_power_of_two_below() {
        assert_eq!(split(2), 1);
        assert_eq!(split(3), 2);
        assert_eq!(split(4), 2);
        assert_eq!(split(5), 4);
        assert_eq!(split(8), 4);
        assert_eq!(split(9), 8);
    }
}
