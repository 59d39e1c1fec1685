//! The capture thread: takes the watcher's events in the order they arrive, keeps the
//! changed paths pending (in that order), and decides when the pending paths are
//! recorded as a group (`group`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::EventKind;

use super::barrier::Barrier;
use super::{CaptureOptions, CaptureStats, Message};
use crate::error::Result;
use crate::path::RelPath;
use crate::repository::Repository;

/// What a group reads first.
pub(super) enum Scope {
    /// The whole folder (start-up, overflow, the safety rescan).
    Full,
    /// These paths (and what is below them), in the order of their first change.
    Paths(Vec<RelPath>),
}

/// See `Loop::batch_time`. Two settle periods (40 ms by default): under a steady
/// stream of changes (100 a second) a change waits at most that long for the stream
/// to pause before it is recorded with those around it; 10 (200 ms) put the lag's p99
/// at 234 ms at 100 changes/s in the benchmark.
const COALESCE_SETTLES: u32 = 2;

/// How long capture must have recorded nothing before it saves the folder index
/// entries its groups changed (recording leaves that to an idle moment, like replay:
/// `Repository::record`).
const IDLE_INDEX_SAVE: Duration = Duration::from_secs(1);

/// A path with changes not yet recorded.
pub(super) struct Pending {
    /// Position of its first unrecorded change in the watcher's stream.
    pub(super) order: u64,
    /// When it should be recorded, if nothing else is recorded first.
    pub(super) due: Instant,
    pub(super) first_seen: Instant,
    /// Its last change was a close after writing: the file is whole, it is recorded at
    /// `due` without waiting for the folder to settle.
    pub(super) closed: bool,
}

pub(super) struct Loop {
    pub(super) root: PathBuf,
    pub(super) repository: Arc<Repository>,
    pub(super) epoch: u64,
    pub(super) options: CaptureOptions,
    pub(super) stats: Arc<CaptureStats>,
    pub(super) receiver: Receiver<Message>,
    pub(super) barrier: Barrier,
    pub(super) pending: HashMap<RelPath, Pending>,
    /// Renames reported with both names, in order, not yet recorded.
    pub(super) renames: Vec<(RelPath, RelPath)>,
    pub(super) rescan_due: Option<Instant>,
    pub(super) next_safety_rescan: Instant,
    /// When the last watch event arrived (a burst of changes is recorded together).
    last_event_at: Instant,
    /// Position of the next watch event.
    next_order: u64,
    /// A stop arrived while a group was waiting for its ordering mark.
    pub(super) stop_requested: bool,
    /// The watcher, for watches added before a new directory is read (`group`).
    pub(super) watcher: Arc<Mutex<notify::RecommendedWatcher>>,
    /// Directories created or moved in, not yet watched by capture itself.
    pub(super) new_directories: Vec<RelPath>,
    /// Directories renamed during the current group: notify may still report changes
    /// inside them under the old name, which are taken for the new one too.
    pub(super) dir_renames: Vec<(RelPath, RelPath)>,
    /// Since when groups have not settled and were held back (see `group`).
    pub(super) held_back_since: Option<Instant>,
    /// When to save the index entries recorded groups changed, if nothing else is
    /// recorded before then (`IDLE_INDEX_SAVE`).
    index_save_at: Option<Instant>,
}

impl Loop {
    #[allow(clippy::too_many_arguments)] // one of each part a capture is made of
    pub(super) fn new(
        root: PathBuf,
        repository: Arc<Repository>,
        epoch: u64,
        options: CaptureOptions,
        stats: Arc<CaptureStats>,
        receiver: Receiver<Message>,
        barrier: Barrier,
        watcher: Arc<Mutex<notify::RecommendedWatcher>>,
    ) -> Loop {
        Loop {
            root,
            repository,
            epoch,
            next_safety_rescan: crate::clock::instant()
                + Duration::from_millis(options.rescan_interval_ms),
            options,
            stats,
            receiver,
            barrier,
            pending: HashMap::new(),
            renames: Vec::new(),
            rescan_due: None,
            last_event_at: crate::clock::instant(),
            next_order: 0,
            stop_requested: false,
            watcher,
            new_directories: Vec::new(),
            dir_renames: Vec::new(),
            held_back_since: None,
            index_save_at: None,
        }
    }

    /// The start-up reconcile: the whole folder, as the first group.
    pub(super) fn reconcile_at_start(&mut self) -> Result<()> {
        let recorded = self.record_group(Scope::Full)?;
        if recorded > 0 {
            // Saved now, before capture watches for changes: otherwise the whole
            // folder's entries waited for the next change, whose group paid for
            // saving them (254 ms for 20,000 files). Not when capture goes idle: a
            // second later, that save fell inside a new passive's initial sync and
            // took the active's anonymous memory from 73-77 to 91-93 MB (peak RSS
            // 107 MB in release; tests/login_flood). Done here, it ends while a
            // passive is still starting.
            match self.repository.save_index_if_dirty() {
                Ok(paths) => {
                    tracing::debug!(paths, "saved the folder index after the start-up reconcile")
                }
                Err(error) => {
                    tracing::warn!(%error, "could not save the folder index; the log has every change")
                }
            }
            tracing::info!(
                events = recorded,
                "recorded the changes made while capture was not running"
            );
        }
        Ok(())
    }

    pub(super) fn run(&mut self) {
        loop {
            if self.stats.fatal().is_some() {
                // Nothing more is recorded: not even a final capture.
                return;
            }
            if self.stop_requested {
                self.final_capture();
                return;
            }
            let now = crate::clock::instant();
            let mut wake = self.next_safety_rescan;
            if let Some(due) = self.rescan_due {
                wake = wake.min(due);
            }
            if let Some(due) = self.index_save_at {
                wake = wake.min(due);
            }
            if let Some(ready) = self.ready_at() {
                wake = wake.min(ready);
            }
            match self
                .receiver
                .recv_timeout(wake.saturating_duration_since(now))
            {
                Ok(Message::Stop) | Err(RecvTimeoutError::Disconnected) => {
                    self.final_capture();
                    return;
                }
                Ok(Message::Watch(event)) => {
                    self.note(event);
                    // Group commit: every event already queued joins this group, so
                    // under a stream of changes a group takes all that arrived while
                    // the previous one was recorded.
                    self.note_queued();
                    // Directories created meanwhile are watched now, before a group's
                    // cut: a round that has to watch one first must be more careful
                    // (`group`). What changed in one before its watch sent no event,
                    // and what it followed may have sent one still on its way: the
                    // events up to a mark made after the watch are taken first, so the
                    // cut comes after all of them.
                    if self.watch_new_directories() > 0 {
                        let _ = self.await_mark(None);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            self.flush(false);
            self.save_index_when_idle();
        }
    }

    /// Save the index entries recorded groups changed, once capture has recorded
    /// nothing for `IDLE_INDEX_SAVE` and has nothing pending (or it is stopping). A
    /// failure is only logged: the log holds every change, and the next open brings
    /// the saved index forward.
    fn save_index_when_idle(&mut self) {
        let Some(due) = self.index_save_at else {
            return;
        };
        if !self.stop_requested && (crate::clock::instant() < due || !self.pending.is_empty()) {
            return;
        }
        self.index_save_at = None;
        match self.repository.save_index_if_dirty() {
            Ok(0) => {}
            Ok(paths) => tracing::debug!(paths, "saved the folder index while idle"),
            Err(error) => {
                tracing::warn!(%error, "could not save the folder index; the log has every change")
            }
        }
    }

    /// The final capture: a full reconcile, not only the paths pending here — a change
    /// whose watch event is still on its way must not be left out (a switchover hands
    /// over exactly what was recorded).
    fn final_capture(&mut self) {
        // Set first: a group that does not settle is then recorded, not held back.
        self.stop_requested = true;
        self.rescan_due = Some(crate::clock::instant());
        self.flush(true);
        self.save_index_when_idle();
    }

    /// When the next group is due: the earliest pending path's `due` if its file was
    /// closed after writing, else its `batch_time`.
    fn ready_at(&self) -> Option<Instant> {
        self.pending
            .values()
            .map(|pending| {
                if pending.closed {
                    pending.due
                } else {
                    self.batch_time(pending.due)
                }
            })
            .min()
    }

    /// Take the watch events already queued, without waiting.
    fn note_queued(&mut self) {
        loop {
            match self.receiver.try_recv() {
                Ok(Message::Watch(event)) => {
                    self.note(event);
                }
                Ok(Message::Stop) => {
                    self.stop_requested = true;
                    return;
                }
                Err(_) => return,
            }
        }
    }

    /// When paths due at `due` are recorded: once the folder has been still for
    /// `settle_ms` (so a burst of changes becomes one group, one durability point),
    /// but never more than `COALESCE_SETTLES` settle periods after `due` (so a file
    /// written without pause elsewhere cannot hold every other change back).
    fn batch_time(&self, due: Instant) -> Instant {
        let settle = Duration::from_millis(self.options.settle_ms);
        let burst_over = self.last_event_at + settle;
        due.max(burst_over).min(due + settle * COALESCE_SETTLES)
    }

    /// Take one watch event: the folder paths it changed are pending (and returned).
    pub(super) fn note(&mut self, event: notify::Result<notify::Event>) -> Vec<RelPath> {
        let now = crate::clock::instant();
        let settle = now + Duration::from_millis(self.options.settle_ms);
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                tracing::warn!(%error, "file watcher error; rescanning the folder");
                self.rescan_due = Some(settle);
                return Vec::new();
            }
        };
        if event.need_rescan() {
            tracing::warn!("file watcher queue overflowed; rescanning the folder");
            self.rescan_due = Some(settle);
            return Vec::new();
        }
        if self.barrier.concerns(&event) {
            return Vec::new();
        }
        let quiet = match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => false,
            EventKind::Access(_) => return Vec::new(),
            EventKind::Create(CreateKind::File)
            | EventKind::Modify(ModifyKind::Data(_))
            | EventKind::Modify(ModifyKind::Any) => true,
            _ => false,
        };
        // Reads (capture's own among them) are not changes: they do not extend a burst.
        self.last_event_at = now;
        if let EventKind::Modify(ModifyKind::Name(RenameMode::Both)) = event.kind {
            if let [from, to] = event.paths.as_slice() {
                if let (Some(from), Some(to)) = (
                    RelPath::from_fs(&self.root, from),
                    RelPath::from_fs(&self.root, to),
                ) {
                    if std::fs::symlink_metadata(to.under(&self.root))
                        .is_ok_and(|metadata| metadata.is_dir())
                    {
                        self.new_directories.push(to.clone());
                        self.dir_renames.push((from.clone(), to.clone()));
                    }
                    self.renames.push((from, to));
                }
            }
        }
        let created_directory = matches!(event.kind, EventKind::Create(CreateKind::Folder))
            || matches!(
                event.kind,
                EventKind::Modify(ModifyKind::Name(RenameMode::To))
                    | EventKind::Create(CreateKind::Any)
            );
        let mut touched = Vec::new();
        let mut changed = Vec::new();
        for path in &event.paths {
            if path == &self.root {
                self.rescan_due = Some(settle);
                continue;
            }
            let Some(relative) = RelPath::from_fs(&self.root, path) else {
                continue;
            };
            if relative.is_temporary() {
                continue;
            }
            if created_directory {
                self.new_directories.push(relative.clone());
            }
            // A write to a `-wal` or `-journal` is a change of its database. Only a
            // write: SQLite opens the `-wal` for writing in every connection, read-only
            // ones too (standin's own), so its close alone says nothing.
            if let Some(base) = crate::folder::read::sqlite::written_with(&relative) {
                if !matches!(
                    event.kind,
                    EventKind::Access(_) | EventKind::Modify(ModifyKind::Metadata(_))
                ) {
                    changed.push(base);
                }
            }
            // Reported under a directory's old name: it is under the new one now.
            for (from, to) in &self.dir_renames {
                if relative.is_within(from) && relative != *from {
                    changed.push(relative.rebase(from, to));
                }
            }
            changed.push(relative);
        }
        // A file closed after writing is whole: recorded at once (no settle wait), with
        // whatever else is pending then.
        let closed = matches!(
            event.kind,
            EventKind::Access(AccessKind::Close(AccessMode::Write))
        );
        for relative in changed {
            let due = if quiet {
                now + Duration::from_millis(self.options.quiet_ms)
            } else if closed {
                now
            } else {
                settle
            };
            let max_delay = Duration::from_millis(self.options.max_delay_ms);
            let order = self.next_order;
            self.next_order += 1;
            self.pending
                .entry(relative.clone())
                .and_modify(|pending| {
                    pending.due = due.min(pending.first_seen + max_delay);
                    pending.closed = closed;
                })
                .or_insert(Pending {
                    order,
                    due: due.min(now + max_delay),
                    first_seen: now,
                    closed,
                });
            touched.push(relative);
        }
        touched
    }

    /// Record a group if one is due (`everything`: whatever is pending, now).
    fn flush(&mut self, everything: bool) {
        let now = crate::clock::instant();
        let scope = if self.rescan_due.is_some_and(|due| due <= now || everything)
            || now >= self.next_safety_rescan
        {
            self.rescan_due = None;
            self.pending.clear();
            self.renames.clear();
            self.next_safety_rescan = now + Duration::from_millis(self.options.rescan_interval_ms);
            self.stats.rescans.fetch_add(1, Ordering::Relaxed);
            Scope::Full
        } else {
            let Some(ready) = self.ready_at() else {
                return;
            };
            if !everything && ready > now {
                return;
            }
            // Every pending path, in the order of its first change: a path still being
            // written is read now rather than left behind a later change.
            let mut ready: Vec<(RelPath, Pending)> = self.pending.drain().collect();
            ready.sort_by_key(|(_, pending)| pending.order);
            Scope::Paths(ready.into_iter().map(|(path, _)| path).collect())
        };
        match self.record_group(scope) {
            Ok(count) => {
                if count > 0 {
                    self.index_save_at = Some(now + IDLE_INDEX_SAVE);
                }
                self.stats
                    .events_recorded
                    .fetch_add(count as u64, Ordering::Relaxed);
            }
            Err(error) if error.is_durability_lost() => {
                // Retrying would prove nothing (`Error::is_durability_lost`): capture
                // stops, and the node with it; the restart checks the log and reconciles.
                let reason = format!(
                    "a write could not be made durable ({error}): what it held may be lost; capture stopped — restart the node (it checks its log when it opens)"
                );
                tracing::error!("{reason}");
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                *self
                    .stats
                    .last_error
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(reason.clone());
                *self
                    .stats
                    .fatal
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(reason);
            }
            Err(error) => {
                tracing::error!(%error, "capture failed; rescanning the folder shortly");
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                *self
                    .stats
                    .last_error
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(error.to_string());
                self.rescan_due = Some(now + Duration::from_millis(self.options.quiet_ms.max(100)));
            }
        }
    }

    /// Put `paths` back in the pending set, due in `after` (files to read again).
    pub(super) fn retry_later(&mut self, paths: &[RelPath], after: Duration) {
        let now = crate::clock::instant();
        for path in paths {
            let order = self.next_order;
            self.next_order += 1;
            self.pending
                .entry(path.clone())
                .and_modify(|pending| pending.due = pending.due.min(now + after))
                .or_insert(Pending {
                    order,
                    due: now + after,
                    first_seen: now,
                    closed: false,
                });
        }
    }
}
