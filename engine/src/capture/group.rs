//! Recording one group: the pending paths read as of one point of the watcher's
//! stream, written to the log by one `Repository::record` (a `Group`).
//!
//! Reading takes time, and the folder goes on changing meanwhile. A group is a state
//! the folder really had when every file it read was unchanged from the moment the
//! pending set was taken (the *cut*) until it was read. So after reading, capture
//! touches the ordering mark (`barrier`) and takes every event up to it: the paths
//! changed while it read. If none of them lies in what was read (its scopes, and the
//! other names of the hard-linked files in them, read wherever they are), the group is
//! that state. Otherwise the changed paths are read again in a further *round*, which
//! moves the cut to the first mark; the rounds end when a round's reads were not
//! disturbed (or only one file changed, and only by its own writes: a stable read of
//! one file is one instant of it). So a new object is recorded at or before the ref
//! that names it, a temp file before its rename, whatever the debounce timers say.
//! A directory created or moved in is watched as soon as capture hears of it between
//! groups, else when the next round starts: a round that had to watch one settles only
//! if nothing outside what it read changed before the watch (what changed in the
//! directory before then sent no event; a mark made after the watch tells them apart).
//!
//! After `MAX_ROUNDS` the group is recorded anyway (each file still a version it
//! really had, their order across files not guaranteed) and counted in
//! `unordered_groups`: that takes several files rewritten in place without pause.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use super::debounce::{Loop, Scope};
use super::Message;
use crate::error::{Error, Result};
use crate::folder::index::{Entry, FolderIndex};
use crate::folder::scan::{cover, diff_scope, stat_disk, Diff, DiskEntry};
use crate::log::event::Change;
use crate::path::RelPath;
use crate::repository::Repository;

/// Rounds of reading before a group is recorded without its order confirmed.
const MAX_ROUNDS: u32 = 16;

/// How long a group that does not settle is held back (read again from the start
/// after a pause) before it is recorded unconfirmed: a multi-file writer that never
/// pauses (a commit loop) must not stop capture for good.
const HOLD_BACK_LIMIT: Duration = Duration::from_secs(10);

/// How long a group waits for its ordering mark before it records what it read
/// (unconfirmed): a watcher that stopped delivering events cannot stop capture.
const BARRIER_TIMEOUT: Duration = Duration::from_secs(2);

/// How soon a file that could not be read stably is tried again.
const UNSTABLE_RETRY: Duration = Duration::from_millis(100);

/// What the ordering mark brought.
pub(super) struct Marked {
    /// Folder paths changed since the group's previous mark (or its start).
    touched: Vec<RelPath>,
    /// Those of `touched` that changed before the round's new directories were watched
    /// (all of them when that mark did not arrive; none when there was none).
    before_watch: Vec<RelPath>,
    /// The mark arrived (otherwise `touched` may be incomplete).
    arrived: bool,
}

impl Loop {
    /// Record one group starting from `scope`; returns the events recorded.
    pub(super) fn record_group(&mut self, scope: Scope) -> Result<usize> {
        let repository = self.repository.clone();
        let _guard = repository.content_guard();
        let started = crate::clock::instant();
        // The index as this group leaves it so far: copied only when a rename or a
        // second round needs it.
        let mut working: Option<FolderIndex> = None;
        let mut changes: Vec<Change> = Vec::new();
        let mut unstable: BTreeSet<RelPath> = BTreeSet::new();
        let mut read_stably: HashSet<RelPath> = HashSet::new();
        let full = matches!(scope, Scope::Full);
        let mut all_paths: Vec<RelPath> = match &scope {
            Scope::Full => Vec::new(),
            Scope::Paths(paths) => paths.clone(),
        };
        let mut round_scope = scope;
        let mut rounds = 0;
        let ordered;
        let mut read_everything = false;
        let (mut read_time, mut mark_time) = (Duration::ZERO, Duration::ZERO);
        loop {
            rounds += 1;
            let reading = crate::clock::instant();
            // Directories created or moved in: watched before they are read (notify
            // adds its own watch only later), so nothing written into them goes unseen.
            // A mark made once they are watched: what changed before it, outside what
            // the round reads, may be half of a change in them that sent no event.
            let watch_mark = if self.watch_new_directories() > 0 {
                match self.barrier.touch() {
                    Ok(number) => Some(number),
                    // Then everything touched counts as before the watch.
                    Err(_) => Some(0),
                }
            } else {
                None
            };
            let hints: Vec<(RelPath, RelPath)> = self.renames.drain(..).collect();
            if !hints.is_empty() {
                let index = working.get_or_insert_with(|| repository.lock_index().clone());
                changes.extend(rename_changes(&self.root, index, &hints));
            }
            let scopes: Vec<Option<RelPath>> = match &round_scope {
                Scope::Full => vec![None],
                Scope::Paths(paths) => {
                    let covered = match &working {
                        Some(index) => ordered_cover(index, &self.root, paths),
                        None => ordered_cover(&repository.lock_index(), &self.root, paths),
                    };
                    covered.into_iter().map(Some).collect()
                }
            };
            let diff = diff_scopes(&self.root, &repository, working.as_ref(), &scopes)?;
            // What this round read: its scopes, and the other names of the hard-linked
            // files in them (read too, wherever they are).
            let read = ReadSet::new(&scopes, &diff.read_outside);
            let within_read = |path: &RelPath| read.overlaps(path);
            unstable.retain(|path| !within_read(path));
            unstable.extend(diff.unstable.iter().cloned());
            if let Scope::Full = &round_scope {
                read_everything = true;
            }
            if let Scope::Paths(paths) = &round_scope {
                read_stably.extend(
                    paths
                        .iter()
                        .filter(|path| !diff.unstable.contains(path))
                        .cloned(),
                );
            }
            read_time += reading.elapsed();
            let marking = crate::clock::instant();
            let marked = self.await_mark(watch_mark);
            mark_time += marking.elapsed();
            let mut touched: Vec<RelPath> = Vec::new();
            for path in marked.touched {
                // A database's companion stands for the database (noted with it): one
                // file changed by its own writes, not two. A plain file that only has
                // such a name (`notes-wal`) is a file like any other.
                if let Some(base) = crate::folder::read::sqlite::companion_base(&path) {
                    if crate::folder::read::sqlite::is_database(&self.root, &base.under(&self.root))
                    {
                        continue;
                    }
                }
                if !touched.contains(&path) {
                    touched.push(path);
                }
            }
            let disturbed: Vec<&RelPath> =
                touched.iter().filter(|path| within_read(path)).collect();
            // One file changed by its own writes alone: its stable read is one instant
            // of it, and nothing else moved. Only a file of one name that this round
            // read as (or below) a scope: a name read as another link of a file may
            // have been renamed away or over, a directory moved, and a file of several
            // names was read once per name — none of which is one instant.
            let only_itself = touched.len() == 1
                && disturbed.len() == 1
                && ReadSet::new(&scopes, &[]).covers(&touched[0])
                && std::fs::symlink_metadata(touched[0].under(&self.root)).is_ok_and(|metadata| {
                    use std::os::unix::fs::MetadataExt;
                    metadata.is_file() && metadata.nlink() == 1
                });
            // A directory created or moved in since the cut was watched only at this
            // round's start: what changed in it before (a file renamed into it from a
            // path this round did not read) sent no event, and its read holds that
            // change. A change elsewhere, outside the read, before the watch may be its
            // other half (the rename's source): read it again, in a round whose cut
            // comes after the watch. (Changes after the watch send events as usual.)
            let unseen = marked.before_watch.iter().any(|path| !within_read(path));
            let settled = marked.arrived && (disturbed.is_empty() || only_itself) && !unseen;
            if !settled && self.rescan_due.is_some() {
                // The watcher lost events (an overflow): what was read is no confirmed
                // state. Record nothing; the full rescan that follows covers it.
                tracing::info!(
                    rounds,
                    "capture's group could not be confirmed; rescanning the folder instead"
                );
                self.dir_renames.clear();
                return Ok(0);
            }
            if !settled && marked.arrived && rounds >= MAX_ROUNDS {
                let since = *self
                    .held_back_since
                    .get_or_insert_with(crate::clock::instant);
                // Not when stopping: the final capture (a switchover hands over what
                // was recorded) records what it read, unconfirmed if need be.
                if since.elapsed() < HOLD_BACK_LIMIT && !self.stop_requested {
                    // Not a confirmed state: record nothing yet, read it all again after
                    // a pause (the chunks stored meanwhile are collected as garbage).
                    all_paths.extend(touched);
                    self.stats.held_back_groups.fetch_add(1, Ordering::Relaxed);
                    let pause = Duration::from_millis(self.options.settle_ms.max(10));
                    if full {
                        self.rescan_due = Some(crate::clock::instant() + pause);
                    } else {
                        self.retry_later(&all_paths, pause);
                    }
                    self.dir_renames.clear();
                    tracing::debug!(
                        rounds,
                        "a group did not settle; reading it again after a pause"
                    );
                    return Ok(0);
                }
            }
            if settled || rounds >= MAX_ROUNDS || !marked.arrived {
                // A file that could not be read stably stays at an older version while
                // the others move on: their order is not confirmed either.
                ordered = settled && unstable.is_empty();
                changes.extend(diff.changes);
                break;
            }
            // Read what changed meanwhile again, against the index as this group
            // leaves it; the cut moves to this round's mark.
            let index = working.get_or_insert_with(|| repository.lock_index().clone());
            for change in &diff.changes {
                index.apply(change).map_err(|misfit| Error::Apply {
                    seq: repository.head().seq + 1,
                    path: misfit.path.to_string(),
                    reason: format!("capture round {rounds}: {}", misfit.reason),
                })?;
            }
            changes.extend(diff.changes);
            for path in &touched {
                self.pending.remove(path);
            }
            all_paths.extend(touched.iter().cloned());
            round_scope = Scope::Paths(touched);
        }
        let recording = crate::clock::instant();
        let count = if changes.is_empty() {
            0
        } else {
            repository.record(self.epoch, changes)?.len()
        };
        let record_time = recording.elapsed();
        self.held_back_since = None;
        self.stats.groups.fetch_add(1, Ordering::Relaxed);
        if !ordered {
            self.stats.unordered_groups.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                rounds,
                unstable = unstable.len(),
                "recorded a group whose files kept changing while they were read: each file is a version it had, their order is not confirmed"
            );
        }
        self.note_unstable(&unstable, &read_stably, read_everything);
        self.dir_renames.clear();
        tracing::debug!(
            rounds,
            events = count,
            read_ms = read_time.as_secs_f64() * 1e3,
            mark_ms = mark_time.as_secs_f64() * 1e3,
            record_ms = record_time.as_secs_f64() * 1e3,
            total_ms = started.elapsed().as_secs_f64() * 1e3,
            "group recorded"
        );
        Ok(count)
    }

    /// Touch the ordering mark and take the watcher's events until it arrives;
    /// `watch_mark`: the mark made once the round's new directories were watched (0:
    /// none could be made).
    pub(super) fn await_mark(&mut self, watch_mark: Option<u64>) -> Marked {
        let mut touched = Vec::new();
        // How many of `touched` came before `watch_mark`, once it has arrived.
        let mut before_watch: Option<usize> = match watch_mark {
            None => Some(0),
            Some(_) => None,
        };
        let number = match self.barrier.touch() {
            Ok(number) => number,
            Err(error) => {
                tracing::warn!(%error, dir = %self.barrier.dir().display(), "cannot make capture's ordering mark; the order of this group is not confirmed");
                return Marked {
                    touched,
                    before_watch: Vec::new(),
                    arrived: false,
                };
            }
        };
        let deadline = crate::clock::instant() + BARRIER_TIMEOUT;
        loop {
            match self
                .receiver
                .recv_timeout(deadline.saturating_duration_since(crate::clock::instant()))
            {
                Ok(Message::Watch(Ok(event))) if self.barrier.is_mark(&event, number) => {
                    let early = before_watch.unwrap_or(touched.len());
                    return Marked {
                        before_watch: touched[..early].to_vec(),
                        touched,
                        arrived: true,
                    };
                }
                Ok(Message::Watch(Ok(event)))
                    if watch_mark.is_some_and(|mark| self.barrier.is_mark(&event, mark)) =>
                {
                    before_watch = Some(touched.len());
                }
                Ok(Message::Watch(event)) => touched.extend(self.note(event)),
                Ok(Message::Stop) => self.stop_requested = true,
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    tracing::warn!(
                        "the file watcher did not deliver capture's ordering mark in time; the order of this group is not confirmed"
                    );
                    return Marked {
                        before_watch: touched.clone(),
                        touched,
                        arrived: false,
                    };
                }
            }
        }
    }

    /// Add a watch for each directory created or moved in since the last round (the
    /// call returns once the watch is in place); returns how many directories it
    /// watched.
    pub(super) fn watch_new_directories(&mut self) -> usize {
        let mut watched = 0;
        for path in std::mem::take(&mut self.new_directories) {
            let full = path.under(&self.root);
            if !std::fs::symlink_metadata(&full).is_ok_and(|metadata| metadata.is_dir()) {
                continue;
            }
            watched += 1;
            let mut watcher = self
                .watcher
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match super::watches::watch_tree(&mut *watcher, &full) {
                Ok(_) => {}
                Err(error) => {
                    crate::folder::skipped::note(
                        &full,
                        &format!("cannot be watched ({error}); changes there are found by the periodic rescan"),
                    );
                }
            }
        }
        watched
    }

    /// Keep the unstable files' list, and read them again soon.
    fn note_unstable(
        &mut self,
        unstable: &BTreeSet<RelPath>,
        read_stably: &HashSet<RelPath>,
        read_everything: bool,
    ) {
        {
            let mut listed = self
                .stats
                .unstable
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if read_everything {
                listed.retain(|path, _| unstable.iter().any(|still| still.to_string() == *path));
            }
            for path in read_stably {
                listed.remove(&path.to_string());
            }
            for path in unstable {
                self.stats.unstable_reads.fetch_add(1, Ordering::Relaxed);
                listed
                    .entry(path.to_string())
                    .or_insert_with(crate::fsutil::now_ms);
                tracing::warn!(%path, "the file was written during every read; it will be read again");
            }
        }
        let paths: Vec<RelPath> = unstable.iter().cloned().collect();
        self.retry_later(&paths, UNSTABLE_RETRY);
    }
}

/// The paths one round read, to tell in time proportional to a path's depth (not to
/// the number of paths read: a burst of thousands) whether a changed path overlaps
/// them — is one of them, below one, or above one.
struct ReadSet {
    everything: bool,
    paths: HashSet<RelPath>,
    /// Every ancestor of a path read.
    above: HashSet<RelPath>,
}

impl ReadSet {
    fn new(scopes: &[Option<RelPath>], outside: &[RelPath]) -> ReadSet {
        let everything = scopes.iter().any(Option::is_none);
        let paths: HashSet<RelPath> = scopes.iter().flatten().chain(outside).cloned().collect();
        let above = paths.iter().flat_map(RelPath::ancestors).collect();
        ReadSet {
            everything,
            paths,
            above,
        }
    }

    /// `path` is one of the paths read or below one.
    fn covers(&self, path: &RelPath) -> bool {
        self.everything
            || self.paths.contains(path)
            || path
                .ancestors()
                .iter()
                .any(|ancestor| self.paths.contains(ancestor))
    }

    fn overlaps(&self, path: &RelPath) -> bool {
        self.covers(path) || self.above.contains(path)
    }
}

/// The renames reported with both names, tried in order on `index` (each one applied
/// to it when it fits what is on disk now).
fn rename_changes(
    root: &Path,
    index: &mut FolderIndex,
    hints: &[(RelPath, RelPath)],
) -> Vec<Change> {
    let mut out = Vec::new();
    for (position, (from, to)) in hints.iter().enumerate() {
        // Later renames may have moved this one's names again (a file renamed, then
        // its directory): look for each name where it is now.
        let now_at = |path: &RelPath| {
            hints[position + 1..]
                .iter()
                .fold(path.clone(), |path, (later_from, later_to)| {
                    if path.is_within(later_from) {
                        path.rebase(later_from, later_to)
                    } else {
                        path
                    }
                })
        };
        let Some(entry) = index.get(from) else {
            continue;
        };
        let moved_kind_matches = match stat_disk(&now_at(to).under(root)) {
            Ok(Some(DiskEntry::Dir { .. })) => entry.is_dir(),
            Ok(Some(DiskEntry::File { .. })) => matches!(entry, Entry::File { .. }),
            Ok(Some(DiskEntry::Symlink { .. })) => matches!(entry, Entry::Symlink { .. }),
            _ => false,
        };
        let source_gone = matches!(stat_disk(&now_at(from).under(root)), Ok(None));
        let change = Change::Rename {
            from: from.clone(),
            to: to.clone(),
        };
        if moved_kind_matches && source_gone && index.apply(&change).is_ok() {
            out.push(change);
        }
    }
    out
}

/// `cover` of `paths` (in the order of their first change), the scopes in the order
/// of the first change within each.
fn ordered_cover(index: &FolderIndex, root: &Path, paths: &[RelPath]) -> Vec<RelPath> {
    let mut scopes = cover(index, Some(root), paths.iter().cloned());
    let lookup: HashSet<&RelPath> = scopes.iter().collect();
    let mut first: HashMap<RelPath, usize> = HashMap::new();
    for (position, path) in paths.iter().enumerate() {
        let scope = std::iter::once(path.clone())
            .chain(path.ancestors())
            .find(|candidate| lookup.contains(candidate));
        if let Some(scope) = scope {
            first.entry(scope).or_insert(position);
        }
    }
    scopes.sort_by_key(|scope| first.get(scope).copied().unwrap_or(usize::MAX));
    scopes
}

/// `diff_scope` of each of `scopes` (disjoint) against `base` (the repository's
/// index when `None`), their changes in scope order. Several scopes (a burst of changes
/// all over the folder) are diffed on up to 4 threads: each one stats, reads and
/// hashes its own files.
fn diff_scopes(
    root: &Path,
    repository: &Repository,
    base: Option<&FolderIndex>,
    scopes: &[Option<RelPath>],
) -> Result<Diff> {
    let mut diff = diff_scopes_apart(root, repository, base, scopes)?;
    // The directories holding what changed have new times.
    let parents = crate::folder::scan::parent_times(root, repository, base, scopes, &diff.changes);
    diff.changes.extend(parents);
    // A directory moved between two scopes (out of one, into a new directory of
    // another) is one rename.
    diff.changes = match base {
        Some(index) => crate::folder::moves::fold_moves(diff.changes, index),
        None => crate::folder::moves::fold_moves(diff.changes, &repository.lock_index()),
    };
    Ok(diff)
}

/// `diff_scopes` before moves are folded. Several scopes are diffed on up to 4
/// threads, each taking the next scope not yet taken — so two large files changed
/// together are read at once, wherever they sit in the list — and the changes come
/// out in scope order.
fn diff_scopes_apart(
    root: &Path,
    repository: &Repository,
    base: Option<&FolderIndex>,
    scopes: &[Option<RelPath>],
) -> Result<Diff> {
    let threads = std::thread::available_parallelism()
        .map(|count| count.get())
        .unwrap_or(1)
        .clamp(1, 4)
        .min(scopes.len());
    let one = |scope: &Option<RelPath>| diff_scope(root, repository, base, scope.as_ref());
    if threads <= 1 {
        let mut out = Diff::default();
        for scope in scopes {
            let part = one(scope)?;
            out.changes.extend(part.changes);
            out.unstable.extend(part.unstable);
            out.read_outside.extend(part.read_outside);
        }
        return Ok(out);
    }
    let mut parts: Vec<(usize, Result<Diff>)> = {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let take = || {
            let mut done = Vec::new();
            loop {
                let at = next.fetch_add(1, Ordering::Relaxed);
                let Some(scope) = scopes.get(at) else {
                    return done;
                };
                let part = one(scope);
                let failed = part.is_err();
                done.push((at, part));
                if failed {
                    // The others finish the scopes they hold; none is taken after.
                    next.store(scopes.len(), Ordering::Relaxed);
                    return done;
                }
            }
        };
        std::thread::scope(|scope| {
            let workers: Vec<_> = (1..threads).map(|_| scope.spawn(take)).collect();
            let mut parts = take();
            for worker in workers {
                match worker.join() {
                    Ok(done) => parts.extend(done),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            parts
        })
    };
    parts.sort_by_key(|(at, _)| *at);
    let mut out = Diff::default();
    for (_, part) in parts {
        let part = part?;
        out.changes.extend(part.changes);
        out.unstable.extend(part.unstable);
        out.read_outside.extend(part.read_outside);
    }
    Ok(out)
}
