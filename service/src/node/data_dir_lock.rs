//! One `standin serve` per data_dir: an exclusive `flock` on `data_dir/serve.lock`,
//! taken before any port is bound, so a second node on the same data_dir stops at once
//! naming the holder instead of holding its ports while it waits for the log's lock.
//! The kernel drops the lock when the process ends, however it ends. `holder` asks,
//! without writing anything, whether a node holds it now (`check-config`).

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

/// Held while the node runs.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Take the lock, or say who holds it.
    pub fn take(data_dir: &Path) -> anyhow::Result<DataDirLock> {
        std::fs::create_dir_all(data_dir)
            .map_err(|error| anyhow::anyhow!("data_dir {}: {error}", data_dir.display()))?;
        let path = data_dir.join("serve.lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))?;
        // SAFETY: flock on a descriptor this function owns; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::WouldBlock {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                anyhow::bail!(
                    "data_dir {} is in use by another standin serve{}: one node per data_dir",
                    data_dir.display(),
                    if holder.is_empty() {
                        String::new()
                    } else {
                        format!(" (pid {holder})")
                    }
                );
            }
            anyhow::bail!("lock {}: {error}", path.display());
        }
        // Who holds it, for the next one to say; failing to write it is harmless.
        let _ = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()));
        Ok(DataDirLock { _file: file })
    }

    /// Whether a running `serve` holds the lock of `data_dir` now: `Some` with what it
    /// wrote of itself (its pid, or nothing). Writes nothing; a missing data_dir or
    /// lock file is not held.
    pub fn holder(data_dir: &Path) -> anyhow::Result<Option<String>> {
        let path = data_dir.join("serve.lock");
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => anyhow::bail!("{}: {error}", path.display()),
        };
        // SAFETY: flock on a descriptor this function owns; no memory is involved. A
        // shared lock is refused while a node holds its exclusive one, and released
        // when the file is closed at the end of this function.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
            return Ok(None);
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::WouldBlock {
            anyhow::bail!("lock {}: {error}", path.display());
        }
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        Ok(Some(holder.trim().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::DataDirLock;

    #[test]
    fn a_second_holder_is_refused_at_once_naming_the_first() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = DataDirLock::take(dir.path()).expect("first lock");
        let error = DataDirLock::take(dir.path()).expect_err("second lock");
        let message = error.to_string();
        assert!(
            message.contains("is in use by another standin serve")
                && message.contains(&format!("(pid {})", std::process::id())),
            "{message}"
        );
        assert_eq!(
            DataDirLock::holder(dir.path()).expect("holder"),
            Some(std::process::id().to_string())
        );
        drop(first);
        assert_eq!(DataDirLock::holder(dir.path()).expect("holder"), None);
        DataDirLock::take(dir.path()).expect("the lock is free again");
    }
}
