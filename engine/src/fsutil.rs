//! Small file-system helpers: directory fsync, `syncfs`, temporary names, clock.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, IoContext, Result};

/// fsync a directory, making the names in it durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|file| file.sync_all())
        .at("fsync", dir)
}

/// Flush every dirty page of the file system that holds `path` (Linux `syncfs`).
/// One call makes a whole batch of small files durable: cheaper than an fsync each.
pub fn syncfs(path: &Path) -> Result<()> {
    let file = File::open(path).at("open", path)?;
    // SAFETY: `file` is an open descriptor for the duration of the call.
    let status = unsafe { libc::syncfs(file.as_raw_fd()) };
    if status != 0 {
        return Err(Error::Io {
            op: "syncfs",
            path: path.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// How much of a large file is written before its write-back is started.
pub const WRITEBACK_STEP_BYTES: u64 = 8 << 20;

/// Ask the kernel to start writing back a range of `file` without waiting for it
/// (Linux `sync_file_range(SYNC_FILE_RANGE_WRITE)`), as PostgreSQL does with
/// `backend_flush_after`. Durability still comes from a later fsync or syncfs; this
/// only lets the disk work while the CPU goes on. Failure is harmless and ignored.
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    // SAFETY: `file` is an open descriptor; the call only schedules I/O.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as i64,
            len as i64,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh temporary file name (starting with `path::TEMP_PREFIX`), unique in this
/// process and across processes.
pub fn temp_name() -> Vec<u8> {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let count = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let pid = PID.get_or_init(std::process::id);
    format!(".standin-tmp-{pid}-{count}").into_bytes()
}

/// Milliseconds since the Unix epoch.
/// Milliseconds on a monotonic clock (since the first call in this process). The role
/// machine and the authority measure every duration on it: a wall clock stepped
/// backwards (NTP) must not make an old vote or lease look fresh.
pub fn monotonic_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

/// A file's modification time in nanoseconds since the Unix epoch.
pub fn mtime_ns(metadata: &std::fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    metadata
        .mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(metadata.mtime_nsec())
}

/// A `SystemTime` from nanoseconds since the Unix epoch.
pub fn system_time(mtime_ns: i64) -> std::time::SystemTime {
    let epoch = std::time::UNIX_EPOCH;
    if mtime_ns >= 0 {
        epoch + std::time::Duration::from_nanos(mtime_ns as u64)
    } else {
        epoch - std::time::Duration::from_nanos(mtime_ns.unsigned_abs())
    }
}
