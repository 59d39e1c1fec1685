//! The ordering mark: a file in `data_dir` that capture touches, watched by the same
//! inotify instance as the folder. inotify queues one instance's events in the order
//! they happened, so once the mark's event has arrived, every change of the folder
//! made before the touch has arrived too. A group uses it to learn which paths
//! changed while it was reading (see `group`).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use notify::event::{MetadataKind, ModifyKind};
use notify::EventKind;

use crate::error::{Error, IoContext, Result};

pub(super) struct Barrier {
    dir: PathBuf,
    file: PathBuf,
    c_file: CString,
}

impl Barrier {
    /// Create `data_dir/capture/ordering-mark` (kept between runs).
    pub(super) fn create(data_dir: &Path) -> Result<Barrier> {
        let dir = data_dir.join("capture");
        std::fs::create_dir_all(&dir).at("create", &dir)?;
        let dir = dir.canonicalize().at("resolve", &dir)?;
        let file = dir.join("ordering-mark");
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&file)
            .at("create", &file)?;
        let c_file = CString::new(file.as_os_str().as_bytes()).map_err(|_| Error::Io {
            op: "resolve",
            path: file.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in the path"),
        })?;
        Ok(Barrier { dir, file, c_file })
    }

    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Touch the mark: its times set to now, which inotify reports as one attribute
    /// change (`IN_ATTRIB`) and nothing else.
    pub(super) fn touch(&self) -> std::io::Result<()> {
        // SAFETY: `c_file` is a valid NUL-terminated path; a null `times` means "now".
        let status =
            unsafe { libc::utimensat(libc::AT_FDCWD, self.c_file.as_ptr(), std::ptr::null(), 0) };
        if status == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// Whether `event` concerns the mark at all (any such event is not the folder's).
    pub(super) fn concerns(&self, event: &notify::Event) -> bool {
        event.paths.iter().any(|path| path.starts_with(&self.dir))
    }

    /// Whether `event` is the mark's touch.
    pub(super) fn is_touch(&self, event: &notify::Event) -> bool {
        matches!(
            event.kind,
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any))
                | EventKind::Modify(ModifyKind::Metadata(_))
                | EventKind::Modify(ModifyKind::Any)
        ) && event.paths.iter().any(|path| path == &self.file)
    }
}
