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

impl Bytes {
    /// The next value of the generator.
    pub fn next_u64(&mut self) -> u64 {
        let mut value = [0u8; 8];
        self.fill(&mut value);
        u64::from_le_bytes(value)
    }

    /// A uniform value in (0, 1].
    pub fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }
}

/// Pareto(x_min = 4 KiB, alpha = 0.7) file sizes capped at `max_size`: many small
/// files, a few very large ones (2,000 files up to 64 MiB come to about 0.5 GB).
pub fn pareto_sizes(files: usize, max_size: usize, seed: u64) -> Vec<usize> {
    const MIN_SIZE: f64 = 4096.0;
    const ALPHA: f64 = 0.7;
    let mut bytes = Bytes::new(seed);
    (0..files)
        .map(|_| {
            let size = MIN_SIZE / bytes.unit().powf(1.0 / ALPHA);
            (size.min(max_size as f64)) as usize
        })
        .collect()
}

/// The mixed corpus: `files` files with `pareto_sizes` over `dirs` directories.
/// Returns the total bytes.
pub fn mixed_files(
    root: &Path,
    files: usize,
    dirs: usize,
    max_size: usize,
    seed: u64,
) -> std::io::Result<u64> {
    let mut bytes = Bytes::new(seed ^ 0x5eed);
    let mut buffer = vec![0u8; 1 << 20];
    for dir in 0..dirs {
        std::fs::create_dir_all(root.join(format!("dir{dir:02}")))?;
    }
    let mut total = 0u64;
    for (index, size) in pareto_sizes(files, max_size, seed).into_iter().enumerate() {
        let path = root.join(format!("dir{:02}/mixed{index:05}.bin", index % dirs));
        let mut file = std::fs::File::create(path)?;
        let mut left = size;
        while left > 0 {
            let take = left.min(buffer.len());
            bytes.fill(&mut buffer[..take]);
            file.write_all(&buffer[..take])?;
            left -= take;
        }
        total += size as u64;
    }
    Ok(total)
}

/// Files and directories under `root` (not counting `root`): the events an active
/// records for it.
pub fn count_entries(root: &Path) -> std::io::Result<u64> {
    let mut count = 0;
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for item in std::fs::read_dir(&dir)? {
            let item = item?;
            count += 1;
            if item.file_type()?.is_dir() {
                dirs.push(item.path());
            }
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pareto_sizes_are_deterministic_and_bounded() {
        let sizes = pareto_sizes(2_000, 64 << 20, 3);
        assert_eq!(sizes, pareto_sizes(2_000, 64 << 20, 3));
        assert!(sizes.iter().all(|size| (4096..=64 << 20).contains(size)));
        let total: usize = sizes.iter().sum();
        // Heavy-tailed: the largest tenth of the files hold most of the bytes.
        let mut sorted = sizes.clone();
        sorted.sort_unstable();
        let top: usize = sorted[1_800..].iter().sum();
        assert!(top * 2 > total, "top {top} of {total}");
    }
}
