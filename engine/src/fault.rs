//! Test-only fault hooks, active only with the `fault-hooks` feature (the integration
//! tests' build of `standin`): with `STANDIN_FAULT_FAIL_SYNCS=<file>` in the
//! environment, every sync standin makes (`durability::guarded`: sled's files, the
//! packs, the folder) fails with `EIO` while `<file>` exists — as a disk that loses a
//! write-back would make it fail.

use std::path::Path;

use crate::error::Result;

/// The environment variable naming the trigger file.
pub const FAIL_SYNCS: &str = "STANDIN_FAULT_FAIL_SYNCS";

/// Fails as the sync `op` of `path` would on a lost write-back, when the hook is armed
/// (see the module's doc); else does nothing.
pub(crate) fn before_sync(op: &'static str, path: &Path) -> Result<()> {
    #[cfg(feature = "fault-hooks")]
    if let Some(trigger) = std::env::var_os(FAIL_SYNCS) {
        if Path::new(&trigger).exists() {
            use crate::error::IoContext;
            return Err(std::io::Error::from_raw_os_error(libc::EIO)).at(op, path);
        }
    }
    let _ = (op, path);
    Ok(())
}
