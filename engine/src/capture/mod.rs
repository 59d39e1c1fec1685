//! Capture: watch the server folder and record its changes (the active's side),
//! so that every recorded version really existed, in the order it happened
//! (invariant 10).
//!
//! - [`debounce`]: the watcher thread — which paths changed, in the order inotify
//!   reported them, and when to record them;
//! - [`group`]: recording one *group* — every pending path, read as of one point in
//!   the watcher's stream (an ordering mark confirms it), written to the log as one
//!   `Group`;
//! - [`barrier`]: the ordering mark itself;
//! - [`watches`]: watching a tree around directories that cannot be watched.
//!
//! `Capture::start` sets up a recursive watch (notify/inotify) first and then
//! reconciles the whole folder against the index as the first group, so nothing
//! changed during start-up is missed. Timing, per path:
//!
//! - a file closed after writing makes the pending paths due at once: it is whole, and
//!   waiting for the folder to settle only adds lag. Events queued meanwhile join the
//!   group (group commit: under a stream of changes, each group takes what arrived
//!   while the previous one was recorded, so there is at most one durability point per
//!   record's time);
//! - a created directory, a removal, a rename or a permission change makes the pending
//!   paths due once the folder has been still for `settle_ms` (a `rm -r` or a burst of
//!   renames becomes one group);
//! - a file being written (data modified, not yet closed) alone waits until it has been
//!   quiet for `quiet_ms`, and at most `max_delay_ms` (the staleness bound, config
//!   `max_capture_delay_ms`) — but whenever any group is recorded, every pending path
//!   is read with it, so a file still being written never holds a later change back
//!   and is never left behind one.
//!
//! A watcher error or queue overflow triggers a full rescan (one group), and a full
//! rescan runs every `rescan_interval_ms` as a safety net. Renames that the watcher
//! reports with both names are recorded as `Rename` (so a moved directory ships no
//! content); any other difference is found by comparing the disk with the index
//! (`scan`), each file read stably (`scan::capture_file`).

mod barrier;
mod debounce;
mod group;
mod watches;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use notify::{RecursiveMode, Watcher};

use crate::error::{Error, Result};
use crate::repository::Repository;

use self::barrier::Barrier;
use self::debounce::Loop;

/// Timings of capture. The defaults suit a server folder of records and documents.
#[derive(Clone, Debug)]
pub struct CaptureOptions {
    pub settle_ms: u64,
    pub quiet_ms: u64,
    /// The longest a changed file waits to be recorded (as a version it really had),
    /// however busy it stays.
    pub max_delay_ms: u64,
    pub rescan_interval_ms: u64,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            settle_ms: 20,
            quiet_ms: 500,
            max_delay_ms: 1_000,
            rescan_interval_ms: 600_000,
        }
    }
}

/// What capture has done so far, for status pages, metrics and tests.
#[derive(Debug, Default)]
pub struct CaptureStats {
    pub events_recorded: AtomicU64,
    pub rescans: AtomicU64,
    pub errors: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// Groups recorded (each one capture of the pending paths, or a rescan).
    pub groups: AtomicU64,
    /// Reads of a file that was written during every try (each one retried later).
    pub unstable_reads: AtomicU64,
    /// Files whose last read was unstable: path → when that first happened (ms since
    /// the Unix epoch). A file leaves the list once it is read stably or is gone.
    pub unstable: Mutex<BTreeMap<String, u64>>,
    /// Groups recorded although files in them kept changing while they were read
    /// (see `group`): each file is a version it really had, their order across files
    /// is not guaranteed.
    pub unordered_groups: AtomicU64,
    /// Groups that ran their last round without settling and were held back (read
    /// again from the start after a pause) — a sign of writers that never pause.
    pub held_back_groups: AtomicU64,
    /// Why capture stopped for good: a write could not be made durable
    /// (`Error::is_durability_lost`). The node must be restarted.
    pub fatal: Mutex<Option<String>>,
}

impl CaptureStats {
    /// Why capture stopped for good, if it did (`fatal`).
    pub fn fatal(&self) -> Option<String> {
        self.fatal
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The files capture could not read stably at their last try, oldest first.
    pub fn unstable_paths(&self) -> Vec<(String, u64)> {
        let mut paths: Vec<(String, u64)> = self
            .unstable
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .map(|(path, since)| (path.clone(), *since))
            .collect();
        paths.sort_by_key(|(_, since)| *since);
        paths
    }
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
    _watcher: Arc<Mutex<notify::RecommendedWatcher>>,
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
        Capture::start_with_stats(root, repository, epoch, options, Arc::default())
    }

    /// `start`, counting into `stats` (a node keeps one across captures, so its
    /// counters only grow).
    pub fn start_with_stats(
        root: &Path,
        repository: Arc<Repository>,
        epoch: u64,
        options: CaptureOptions,
        stats: Arc<CaptureStats>,
    ) -> Result<Capture> {
        let root = root.canonicalize().map_err(|source| Error::Io {
            op: "resolve",
            path: root.to_path_buf(),
            source,
        })?;
        let barrier = Barrier::create(repository.data_dir())?;
        let (sender, receiver) = channel();
        let watch_sender = sender.clone();
        let mut watcher = notify::recommended_watcher(move |event| {
            let _ = watch_sender.send(Message::Watch(event));
        })
        .map_err(|error| Error::Watch {
            path: root.clone(),
            reason: error.to_string(),
        })?;
        // One watcher, one inotify queue: the folder's events and the ordering mark's
        // arrive in the order they happened.
        // A directory that cannot be watched is named and left to the rescans: it
        // never stops capture of the rest (`watches`).
        watches::watch_tree(&mut watcher, &root).map_err(|error| Error::Watch {
            path: root.clone(),
            reason: error.to_string(),
        })?;
        let mark_dir = barrier.dir().to_path_buf();
        watcher
            .watch(&mark_dir, RecursiveMode::NonRecursive)
            .map_err(|error| Error::Watch {
                path: mark_dir.clone(),
                reason: error.to_string(),
            })?;
        let watcher = Arc::new(Mutex::new(watcher));
        let mut state = Loop::new(
            root,
            repository,
            epoch,
            options,
            stats.clone(),
            receiver,
            barrier,
            watcher.clone(),
        );
        state.reconcile_at_start()?;
        let thread = std::thread::Builder::new()
            .name("standin-capture".to_string())
            .spawn(move || state.run())
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

    /// Whether the capture thread still runs (false once it has ended, by a panic:
    /// it returns on its own only when stopped).
    pub fn is_running(&self) -> bool {
        self.thread
            .as_ref()
            .is_some_and(|thread| !thread.is_finished())
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
