//! Capture: watch the server folder and record its changes (the active's side).
//!
//! `Capture::start` sets up a recursive watch (notify/inotify) first and then
//! reconciles the whole folder against the index, so nothing changed during start-up
//! is missed. Watch events are debounced per path:
//!
//! - a file closed after writing, a created directory, a removal, a rename or a
//!   permission change is recorded once the path has been still for `settle_ms`;
//! - a file being written (data modified, not yet closed) waits until it has been
//!   quiet for `quiet_ms`, so a file written in many small writes is recorded once;
//! - a path that never goes quiet is recorded anyway after `max_delay_ms`.
//!
//! A watcher error or queue overflow triggers a full rescan, and a full rescan runs
//! every `rescan_interval_ms` as a safety net. Renames that the watcher reports with
//! both names are recorded as `Rename` (so a moved directory ships no content); any
//! other difference is found by comparing the disk with the index (`scan`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher};

use crate::error::{Error, Result};
use crate::event::Change;
use crate::path::RelPath;
use crate::repository::Repository;
use crate::scan::{cover, diff_scope, reconcile, stat_disk, DiskEntry};

/// See `Loop::batch_time`. Two settle periods (40 ms by default): under a steady
/// stream of changes (100 a second) a change waits at most that long for the stream
/// to pause before it is recorded with those around it; 10 (200 ms) put the lag's p99
/// at 234 ms at 100 changes/s in the benchmark.
const COALESCE_SETTLES: u32 = 2;

/// Timings of capture. The defaults suit a server folder of records and documents.
#[derive(Clone, Debug)]
pub struct CaptureOptions {
    pub settle_ms: u64,
    pub quiet_ms: u64,
    pub max_delay_ms: u64,
    pub rescan_interval_ms: u64,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            settle_ms: 20,
            quiet_ms: 500,
            max_delay_ms: 5_000,
            rescan_interval_ms: 600_000,
        }
    }
}

/// What capture has done so far, for status pages and tests.
#[derive(Debug, Default)]
pub struct CaptureStats {
    pub events_recorded: AtomicU64,
    pub rescans: AtomicU64,
    pub errors: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

enum Message {
    Watch(notify::Result<notify::Event>),
    Stop,
}

/// A running capture; stops when dropped.
pub struct Capture {
    sender: Sender<Message>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<CaptureStats>,
    _watcher: notify::RecommendedWatcher,
}

struct Pending {
    due: Instant,
    first_seen: Instant,
}

struct Loop {
    root: PathBuf,
    repository: Arc<Repository>,
    epoch: u64,
    options: CaptureOptions,
    stats: Arc<CaptureStats>,
    pending: HashMap<RelPath, Pending>,
    renames: Vec<(RelPath, RelPath)>,
    rescan_due: Option<Instant>,
    next_safety_rescan: Instant,
    /// When the last watch event arrived (a burst of changes is recorded together).
    last_event_at: Instant,
}

impl Capture {
    /// Watch `root`, reconcile it, and record every change in `epoch` until stopped.
    /// Returns once the start-up reconcile is recorded.
    pub fn start(
        root: &Path,
        repository: Arc<Repository>,
        epoch: u64,
        options: CaptureOptions,
    ) -> Result<Capture> {
        let root = root.canonicalize().map_err(|source| Error::Io {
            op: "resolve",
            path: root.to_path_buf(),
            source,
        })?;
        let (sender, receiver) = channel();
        let watch_sender = sender.clone();
        let mut watcher = notify::recommended_watcher(move |event| {
            let _ = watch_sender.send(Message::Watch(event));
        })
        .map_err(|error| Error::Watch {
            path: root.clone(),
            reason: error.to_string(),
        })?;
        watcher
            .watch(&root, RecursiveMode::Recursive)
            .map_err(|error| Error::Watch {
                path: root.clone(),
                reason: error.to_string(),
            })?;
        let stats = Arc::new(CaptureStats::default());
        let recorded = reconcile(&root, &repository, epoch)?;
        stats
            .events_recorded
            .fetch_add(recorded.len() as u64, Ordering::Relaxed);
        if !recorded.is_empty() {
            tracing::info!(
                events = recorded.len(),
                "recorded the changes made while capture was not running"
            );
        }
        let mut state = Loop {
            root,
            repository,
            epoch,
            next_safety_rescan: Instant::now() + Duration::from_millis(options.rescan_interval_ms),
            options,
            stats: stats.clone(),
            pending: HashMap::new(),
            renames: Vec::new(),
            rescan_due: None,
            last_event_at: Instant::now(),
        };
        let thread = std::thread::Builder::new()
            .name("standin-capture".to_string())
            .spawn(move || state.run(receiver))
            .map_err(|source| Error::Io {
                op: "spawn capture thread",
                path: PathBuf::new(),
                source,
            })?;
        Ok(Capture {
            sender,
            thread: Some(thread),
            stats,
            _watcher: watcher,
        })
    }

    pub fn stats(&self) -> &CaptureStats {
        &self.stats
    }

    /// Stop watching and wait for the capture thread (which records what is pending).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.sender.send(Message::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Loop {
    fn run(&mut self, receiver: Receiver<Message>) {
        loop {
            let now = Instant::now();
            let mut wake = self.next_safety_rescan;
            if let Some(due) = self.rescan_due {
                wake = wake.min(due);
            }
            if let Some(due) = self.pending.values().map(|pending| pending.due).min() {
                wake = wake.min(self.batch_time(due));
            }
            match receiver.recv_timeout(wake.saturating_duration_since(now)) {
                Ok(Message::Stop) | Err(RecvTimeoutError::Disconnected) => {
                    // The final capture: a full reconcile, not only the paths pending
                    // here — a change whose watch event is still on its way must not
                    // be left out (a switchover hands over exactly what was recorded).
                    self.rescan_due = Some(now);
                    self.flush(true);
                    return;
                }
                Ok(Message::Watch(event)) => self.note(event),
                Err(RecvTimeoutError::Timeout) => {}
            }
            self.flush(false);
        }
    }

    /// When paths due at `due` are recorded: once the folder has been still for
    /// `settle_ms` (so a burst of changes becomes one batch, one durability point),
    /// but never more than `COALESCE_SETTLES` settle periods after `due` (so a file
    /// written without pause elsewhere cannot hold every other change back).
    fn batch_time(&self, due: Instant) -> Instant {
        let settle = Duration::from_millis(self.options.settle_ms);
        let burst_over = self.last_event_at + settle;
        due.max(burst_over).min(due + settle * COALESCE_SETTLES)
    }

    fn note(&mut self, event: notify::Result<notify::Event>) {
        let now = Instant::now();
        let settle = now + Duration::from_millis(self.options.settle_ms);
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                tracing::warn!(%error, "file watcher error; rescanning the folder");
                self.rescan_due = Some(settle);
                return;
            }
        };
        if event.need_rescan() {
            tracing::warn!("file watcher queue overflowed; rescanning the folder");
            self.rescan_due = Some(settle);
            return;
        }
        let quiet = match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => false,
            EventKind::Access(_) => return,
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
                    self.renames.push((from, to));
                }
            }
        }
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
            let due = if quiet {
                now + Duration::from_millis(self.options.quiet_ms)
            } else {
                settle
            };
            let max_due = now + Duration::from_millis(self.options.max_delay_ms);
            self.pending
                .entry(relative)
                .and_modify(|pending| {
                    pending.due = due
                        .min(pending.first_seen + Duration::from_millis(self.options.max_delay_ms))
                })
                .or_insert(Pending {
                    due: due.min(max_due),
                    first_seen: now,
                });
        }
    }

    fn flush(&mut self, everything: bool) {
        let now = Instant::now();
        let result = if self.rescan_due.is_some_and(|due| due <= now || everything)
            || now >= self.next_safety_rescan
        {
            self.rescan_due = None;
            self.pending.clear();
            self.renames.clear();
            self.next_safety_rescan = now + Duration::from_millis(self.options.rescan_interval_ms);
            self.stats.rescans.fetch_add(1, Ordering::Relaxed);
            reconcile(&self.root, &self.repository, self.epoch).map(|events| events.len())
        } else {
            let earliest = self.pending.values().map(|pending| pending.due).min();
            if !everything && earliest.is_none_or(|due| self.batch_time(due) > now) {
                return;
            }
            let ready: Vec<RelPath> = self
                .pending
                .iter()
                .filter(|(_, pending)| everything || pending.due <= now)
                .map(|(path, _)| path.clone())
                .collect();
            if ready.is_empty() {
                return;
            }
            for path in &ready {
                self.pending.remove(path);
            }
            self.record(ready)
        };
        match result {
            Ok(count) => {
                self.stats
                    .events_recorded
                    .fetch_add(count as u64, Ordering::Relaxed);
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

    /// Record the renames seen and the differences under the ready paths.
    fn record(&mut self, ready: Vec<RelPath>) -> Result<usize> {
        let _guard = self.repository.content_guard();
        let mut count = 0;
        let started = Instant::now();
        let hints: Vec<(RelPath, RelPath)> = self.renames.drain(..).collect();
        let renames: Vec<Change> = if hints.is_empty() {
            Vec::new()
        } else {
            // Each rename is tried on a copy of the index first, in order.
            let mut simulated = self.repository.lock_index().clone();
            let mut out = Vec::new();
            for (position, (from, to)) in hints.iter().enumerate() {
                // Later renames may have moved this one's names again (a file renamed,
                // then its directory): look for each name where it is now.
                let now_at = |path: &RelPath| {
                    hints[position + 1..].iter().fold(
                        path.clone(),
                        |path, (later_from, later_to)| {
                            if path.is_within(later_from) {
                                path.rebase(later_from, later_to)
                            } else {
                                path
                            }
                        },
                    )
                };
                let Some(entry) = simulated.get(from) else {
                    continue;
                };
                let moved_kind_matches = match stat_disk(&now_at(to).under(&self.root)) {
                    Ok(Some(DiskEntry::Dir { .. })) => entry.is_dir(),
                    Ok(Some(DiskEntry::File { .. })) => {
                        matches!(entry, crate::index::Entry::File { .. })
                    }
                    Ok(Some(DiskEntry::Symlink { .. })) => {
                        matches!(entry, crate::index::Entry::Symlink { .. })
                    }
                    _ => false,
                };
                let source_gone = matches!(stat_disk(&now_at(from).under(&self.root)), Ok(None));
                let change = Change::Rename {
                    from: from.clone(),
                    to: to.clone(),
                };
                if moved_kind_matches && source_gone && simulated.apply(&change).is_ok() {
                    out.push(change);
                }
            }
            out
        };
        if !renames.is_empty() {
            count += self.repository.record(self.epoch, renames)?.len();
        }
        let scopes = cover(&self.repository.lock_index(), Some(&self.root), ready);
        let changes = diff_scopes(&self.root, &self.repository, &scopes)?;
        let diffed_at = started.elapsed();
        if !changes.is_empty() {
            count += self.repository.record(self.epoch, changes)?.len();
        }
        tracing::debug!(
            paths = scopes.len(),
            events = count,
            diff_ms = diffed_at.as_secs_f64() * 1e3,
            total_ms = started.elapsed().as_secs_f64() * 1e3,
            "changes recorded"
        );
        Ok(count)
    }
}

/// Scopes handed to one thread by `diff_scopes`, at least.
const SCOPES_PER_THREAD: usize = 16;

/// `diff_scope` of each of `scopes` (disjoint, from `cover`), their changes in scope
/// order. Many scopes (a burst of changes all over the folder) are diffed on up to 4
/// threads: each one stats, reads and hashes its own files.
fn diff_scopes(root: &Path, repository: &Repository, scopes: &[RelPath]) -> Result<Vec<Change>> {
    let threads = std::thread::available_parallelism()
        .map(|count| count.get())
        .unwrap_or(1)
        .clamp(1, 4)
        .min(scopes.len().div_ceil(SCOPES_PER_THREAD).max(1));
    let diff = |scopes: &[RelPath]| -> Result<Vec<Change>> {
        let mut changes = Vec::new();
        for scope in scopes {
            changes.extend(diff_scope(root, repository, Some(scope))?);
        }
        Ok(changes)
    };
    if threads <= 1 {
        return diff(scopes);
    }
    let per_thread = scopes.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = scopes
            .chunks(per_thread)
            .map(|part| scope.spawn(move || diff(part)))
            .collect();
        let mut changes = Vec::new();
        for worker in workers {
            match worker.join() {
                Ok(part) => changes.extend(part?),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        Ok(changes)
    })
}
