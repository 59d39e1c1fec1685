//! Deterministic corpora: the same bytes on every run and every machine.

use std::io::Write;
use std::path::Path;

/// A fast deterministic byte generator (xorshift64*), so a 1 GiB corpus is written at
/// disk speed and its content does not compress or deduplicate.
pub struct Bytes(u64);

impl Bytes {
    pub fn new(seed: u64) -> Bytes {
        Bytes(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1)
    }

    pub fn fill(&mut self, buffer: &mut [u8]) {
        for block in buffer.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let value = self.0.wrapping_mul(0x2545F4914F6CDD1D).to_le_bytes();
            block.copy_from_slice(&value[..block.len()]);
        }
    }
}

/// `files` files of `size` bytes spread over `dirs` directories.
pub fn small_files(root: &Path, files: usize, dirs: usize, size: usize) -> std::io::Result<()> {
    let mut bytes = Bytes::new(1);
    let mut buffer = vec![0u8; size];
    for dir in 0..dirs {
        std::fs::create_dir_all(root.join(format!("dir{dir:03}")))?;
    }
    for index in 0..files {
        bytes.fill(&mut buffer);
        std::fs::write(
            root.join(format!("dir{:03}/file{index:05}.dat", index % dirs)),
            &buffer,
        )?;
    }
    Ok(())
}

/// `files` files of `size` bytes each, written in 1 MiB blocks.
pub fn large_files(root: &Path, files: usize, size: usize) -> std::io::Result<()> {
    std::fs::create_dir_all(root)?;
    let mut buffer = vec![0u8; 1 << 20];
    for index in 0..files {
        let mut bytes = Bytes::new(100 + index as u64);
        let mut file = std::fs::File::create(root.join(format!("large{index}.bin")))?;
        let mut left = size;
        while left > 0 {
            let take = left.min(buffer.len());
            bytes.fill(&mut buffer[..take]);
            file.write_all(&buffer[..take])?;
            left -= take;
        }
    }
    Ok(())
}
