//! What a test compares folders by, and the bytes it writes into them.

use std::collections::BTreeMap;
use std::path::Path;

/// Every file and directory under `root`: path -> content hash (None for directories).
pub fn tree(root: &Path) -> BTreeMap<String, Option<String>> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for item in std::fs::read_dir(&dir).unwrap() {
            let path = item.unwrap().path();
            let relative = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if path.is_dir() {
                dirs.push(path);
                out.insert(relative, None);
            } else {
                out.insert(
                    relative,
                    std::fs::read(&path)
                        .ok()
                        .map(|bytes| standin_engine::Hash::of(&bytes).to_hex()),
                );
            }
        }
    }
    out
}

/// Bytes that do not compress or deduplicate, the same for the same seed.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}
