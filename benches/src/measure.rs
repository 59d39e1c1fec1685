//! Timing helpers: run a peer command, warm the page cache, measure the disk.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Read every file under `root` so that a timed run starts from a warm cache (the
/// machine evicts data idle for about a minute).
pub fn warm(root: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    let mut buffer = vec![0u8; 1 << 20];
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for item in std::fs::read_dir(&dir)? {
            let item = item?;
            let kind = item.file_type()?;
            if kind.is_dir() {
                dirs.push(item.path());
            } else if kind.is_file() {
                let mut file = std::fs::File::open(item.path())?;
                loop {
                    let read = file.read(&mut buffer)?;
                    if read == 0 {
                        break;
                    }
                    total += read as u64;
                }
            }
        }
    }
    Ok(total)
}

/// `sync(1)`: flush every file system.
pub fn sync_all() {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc_sync() };
}

extern "C" {
    #[link_name = "sync"]
    fn libc_sync();
}

/// Time a shell-free command; fails if it exits non-zero.
pub fn time_command(program: &str, args: &[&str]) -> std::io::Result<Duration> {
    let started = Instant::now();
    let status = Command::new(program).args(args).status()?;
    if !status.success() {
        return Err(std::io::Error::other(format!(
            "{program} {args:?} failed: {status}"
        )));
    }
    Ok(started.elapsed())
}

/// The disk's own sequential write rate with a final fsync, in bytes per second:
/// `bytes` written in 1 MiB blocks to a fresh file under `dir`.
pub fn disk_write_rate(dir: &Path, bytes: usize) -> std::io::Result<f64> {
    let path = dir.join(format!("disk-probe-{}", std::process::id()));
    let mut buffer = vec![0u8; 1 << 20];
    crate::corpus::Bytes::new(7).fill(&mut buffer);
    let started = Instant::now();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    let mut left = bytes;
    while left > 0 {
        let take = left.min(buffer.len());
        file.write_all(&buffer[..take])?;
        left -= take;
    }
    file.sync_all()?;
    let elapsed = started.elapsed();
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(bytes as f64 / elapsed.as_secs_f64())
}

/// The disk's fsync latency as a steady writer meets it: `count` writes of 4 KiB to
/// one fresh file under `dir`, each followed by `fdatasync`, `rate` a second. Sorted.
/// The lag figures stand on it: standin's active makes each change durable before it
/// sends it (lsyncd syncs nothing).
pub fn disk_sync_latencies(dir: &Path, count: usize, rate: u32) -> std::io::Result<Vec<Duration>> {
    use std::os::unix::fs::FileExt;
    let path = dir.join(format!("fsync-probe-{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    let mut buffer = vec![0u8; 4096];
    let mut latencies = Vec::with_capacity(count);
    let start = Instant::now();
    for index in 0..count {
        let due = start + Duration::from_secs_f64(index as f64 / rate.max(1) as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        crate::corpus::Bytes::new(index as u64).fill(&mut buffer);
        let began = Instant::now();
        file.write_all_at(&buffer, (index % 64) as u64 * 4096)?;
        file.sync_data()?;
        latencies.push(began.elapsed());
    }
    drop(file);
    std::fs::remove_file(&path)?;
    latencies.sort();
    Ok(latencies)
}

/// The latency at `quantile` of sorted `latencies` (0.5 the median, 1.0 the largest),
/// in ms; 0 when there are none.
pub fn quantile_ms(latencies: &[Duration], quantile: f64) -> f64 {
    let index =
        ((latencies.len() as f64 * quantile) as usize).min(latencies.len().saturating_sub(1));
    latencies
        .get(index)
        .map(|latency| latency.as_secs_f64() * 1e3)
        .unwrap_or(0.0)
}

/// `latencies` (sorted) as "median …, p99 …, max … ms".
pub fn latency_summary(latencies: &[Duration]) -> String {
    format!(
        "median {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        quantile_ms(latencies, 0.5),
        quantile_ms(latencies, 0.99),
        quantile_ms(latencies, 1.0)
    )
}

/// The median of some durations.
pub fn median<T: Ord + Copy>(mut values: Vec<T>) -> T {
    values.sort();
    values[values.len() / 2]
}

/// Give back the space of a finished run without freeing its inodes: every regular
/// file over 1 MiB under `root` is truncated to nothing. Unlinking would free the
/// inodes too, and ext4 here creates files 5-20× slower for minutes after many were
/// deleted (shared/BENCHMARKING.md); the small files stay until the run's end.
pub fn reclaim_space(root: &Path) -> std::io::Result<u64> {
    let mut freed = 0;
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let listing = match std::fs::read_dir(&dir) {
            Ok(listing) => listing,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error),
        };
        for item in listing {
            let item = item?;
            let kind = item.file_type()?;
            if kind.is_dir() {
                dirs.push(item.path());
            } else if kind.is_file() {
                let size = item.metadata()?.len();
                if size > 1 << 20 {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(item.path())?
                        .set_len(0)?;
                    freed += size;
                }
            }
        }
    }
    Ok(freed)
}

#[cfg(test)]
mod tests {
    use super::{latency_summary, quantile_ms};
    use std::time::Duration;

    #[test]
    fn quantiles_index_sorted_latencies() {
        let latencies: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile_ms(&latencies, 0.5), 51.0);
        assert_eq!(quantile_ms(&latencies, 0.99), 100.0);
        assert_eq!(quantile_ms(&latencies, 1.0), 100.0);
        assert_eq!(quantile_ms(&[], 0.5), 0.0);
        assert_eq!(
            latency_summary(&latencies[..10]),
            "median 6.00 ms, p99 10.00 ms, max 10.00 ms"
        );
    }
}
