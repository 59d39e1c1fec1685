//! Fail-stop on a lost write. Every sync standin relies on goes through `fsutil`'s
//! `sync_data`, `sync_all`, `fsync_dir` and `syncfs` (sled's files through
//! `sled_sync`). The first that fails latches for the whole process: every later sync
//! fails too, naming the first. Linux reports a lost write-back once — a later sync of
//! the same file (or a `syncfs` through a new descriptor) can return 0 with the data
//! gone — so nothing may be called durable after a failure, and the node must stop and
//! be restarted (`lost`, which the service watches), as PostgreSQL does since its
//! "fsyncgate" (`data_sync_retry = off`).

use std::path::Path;
use std::sync::Mutex;

use crate::error::{Error, Result};

/// The first sync that failed, as its error's text.
static LOST: Mutex<Option<String>> = Mutex::new(None);

/// Why this process can no longer make writes durable, if it cannot: the first sync
/// that failed. The node must be restarted.
pub fn lost() -> Option<String> {
    LOST.lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
}

/// Run the sync `call` (`op` of `path`) unless an earlier one failed; latch its
/// failure when it is one (`Error::is_durability_lost`).
pub(crate) fn guarded(
    op: &'static str,
    path: &Path,
    call: impl FnOnce() -> std::io::Result<()>,
) -> Result<()> {
    if let Some(first) = lost() {
        return Err(Error::Io {
            op,
            path: path.to_path_buf(),
            source: std::io::Error::other(format!(
                "not attempted: an earlier sync failed ({first}); what it was to make durable may be lost — restart the node"
            )),
        });
    }
    let result = crate::fault::before_sync(op, path).and_then(|()| {
        call().map_err(|source| Error::Io {
            op,
            path: path.to_path_buf(),
            source,
        })
    });
    if let Err(error) = &result {
        if error.is_durability_lost() {
            LOST.lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .get_or_insert_with(|| error.to_string());
        }
    }
    result
}
