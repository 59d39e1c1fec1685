//! The ordering mark: a file capture creates in `data_dir/capture/`, watched by the
//! same inotify instance as the folder. inotify queues one instance's events in the order
//! they happened, so once the mark's event has arrived, every change of the folder
//! made before it was created has arrived too. A group uses it to learn which paths
//! changed while it was reading (see `group`).

use std::path::{Path, PathBuf};

use notify::event::CreateKind;
use notify::EventKind;

use crate::error::{IoContext, Result};

pub(super) struct Barrier {
    dir: PathBuf,
    /// The number of the last mark made.
    last: u64,
}

impl Barrier {
    /// Create `data_dir/capture/` and clear marks an earlier run left there.
    pub(super) fn create(data_dir: &Path) -> Result<Barrier> {
        let dir = data_dir.join("capture");
        std::fs::create_dir_all(&dir).at("create", &dir)?;
        let dir = dir.canonicalize().at("resolve", &dir)?;
        for item in std::fs::read_dir(&dir).at("list", &dir)?.flatten() {
            if item.file_name().to_string_lossy().starts_with("mark-") {
                let _ = std::fs::remove_file(item.path());
            }
        }
        Ok(Barrier { dir, last: 0 })
    }

    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    fn mark_path(&self, number: u64) -> PathBuf {
        self.dir.join(format!("mark-{number}"))
    }

    /// Make a new mark: a file with a name never used before (so a mark that arrives
    /// late is never taken for a later one, and the kernel never merges two), then
    /// remove the one before. Returns its number.
    pub(super) fn touch(&mut self) -> std::io::Result<u64> {
        let number = self.last + 1;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(self.mark_path(number))?;
        self.last = number;
        let _ = std::fs::remove_file(self.mark_path(number - 1));
        Ok(number)
    }

    /// Whether `event` concerns the marks at all (any such event is not the folder's).
    pub(super) fn concerns(&self, event: &notify::Event) -> bool {
        event.paths.iter().any(|path| path.starts_with(&self.dir))
    }

    /// Whether `event` is the creation of mark `number`.
    pub(super) fn is_mark(&self, event: &notify::Event, number: u64) -> bool {
        matches!(
            event.kind,
            EventKind::Create(CreateKind::File | CreateKind::Any)
        ) && event
            .paths
            .iter()
            .any(|path| *path == self.mark_path(number))
    }
}
