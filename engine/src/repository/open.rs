//! Opening a data_dir's stores: sled under its lock (and past the half-written
//! snapshot a crash can leave), and the node's temporary-name token.

use std::path::Path;

use crate::error::{Error, Result};

/// This data_dir's temporary-name token (`path::TEMP_PREFIX`): 16 hex digits in
/// `data_dir/temp-token`, made (from the clock, the process and the path) the first
/// time.
pub(super) fn temp_token(data_dir: &Path) -> Result<Vec<u8>> {
    let file = data_dir.join("temp-token");
    match std::fs::read(&file) {
        Ok(bytes) => {
            let token = bytes.trim_ascii().to_vec();
            if token.len() == 16 && token.iter().all(u8::is_ascii_hexdigit) {
                return Ok(token);
            }
            Err(Error::Corrupt {
                path: file,
                reason: "not 16 hex digits (remove it: a new one is made)".to_string(),
            })
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let mut hasher = blake3::Hasher::new();
            hasher.update(&crate::fsutil::now_ms().to_le_bytes());
            hasher.update(&std::process::id().to_le_bytes());
            hasher.update(data_dir.as_os_str().as_encoded_bytes());
            hasher.update(&format!("{:?}", crate::clock::instant()).into_bytes());
            let token = hasher.finalize().to_hex()[..16].as_bytes().to_vec();
            let temporary = data_dir.join("temp-token.new");
            std::fs::write(&temporary, &token).map_err(|source| Error::Io {
                op: "write",
                path: temporary.clone(),
                source,
            })?;
            std::fs::rename(&temporary, &file).map_err(|source| Error::Io {
                op: "rename",
                path: file.clone(),
                source,
            })?;
            Ok(token)
        }
        Err(source) => Err(Error::Io {
            op: "read",
            path: file,
            source,
        }),
    }
}

/// Open sled at `path`, first removing snapshot files that a killed process left
/// half-written.
///
/// sled 0.34.7 writes a snapshot to `snap.<lsn>.generating`, fsyncs it and renames it
/// to `snap.<lsn>`; but on open it considers every `snap.*` file and takes the
/// greatest name, which is the `.generating` one when a process was killed before the
/// rename. It then reports the half-written file as corruption and refuses to open.
/// (It also reuses such a file without truncating it.) A `.generating` file is never a
/// complete snapshot — the previous `snap.<lsn>` stays until the rename — so removing
/// it is safe. Found by `engine/tests/engine/crash.rs`; see spacejam/sled#1533.
pub(crate) fn open_sled(path: &Path) -> Result<sled::Db> {
    if let Ok(listing) = std::fs::read_dir(path) {
        for item in listing.flatten() {
            let name = item.file_name().to_string_lossy().into_owned();
            if name.starts_with("snap.") && name.ends_with(".generating") {
                tracing::warn!(file = %item.path().display(), "removing a half-written sled snapshot left by a crash");
                std::fs::remove_file(item.path()).map_err(|source| Error::Io {
                    op: "remove",
                    path: item.path(),
                    source,
                })?;
            }
        }
    }
    // sled releases its file lock from a background thread after the last handle is
    // dropped, so a quick reopen (a restart in the same process, or a new process
    // while the old one exits) may find it still held: wait a bounded time for it.
    let deadline = crate::clock::instant() + SLED_LOCK_WAIT;
    loop {
        match sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            // sled caches up to 1 GiB by default; the log and index are read mostly
            // near their heads, so a smaller cache keeps a node's memory modest.
            .cache_capacity(SLED_CACHE_BYTES)
            .open()
        {
            Err(sled::Error::Io(error))
                if is_lock_busy(&error) && crate::clock::instant() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(sled::Error::Io(error)) if is_lock_busy(&error) => {
                return Err(Error::Io {
                    op: "lock (is another standin using this data_dir?)",
                    path: path.to_path_buf(),
                    source: error,
                })
            }
            other => return Ok(other?),
        }
    }
}

/// sled reports a held lock as an `Other` error whose text names the lock (and the
/// `WouldBlock` it got from the OS).
fn is_lock_busy(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::WouldBlock
        || error.to_string().contains("could not acquire lock")
}

/// sled's page cache per node.
const SLED_CACHE_BYTES: u64 = 128 << 20;

/// How long `open_sled` waits for another holder of the database lock to let go.
const SLED_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
