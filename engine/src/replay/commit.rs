//! Steps 3 and 4 of an apply, a part at a time: write a part's files (after guarding
//! the referenced inodes it may displace), then make the part durable on another
//! thread while the next part — of this batch or of the next one the feed brings —
//! is written.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::thread::{Scope, ScopedJoinHandle};
use std::time::Duration;

use super::byref;
use super::durable;
use super::feed::{Committing, Feed};
use super::write::{apply_changes, Displaced, Finishing};
use super::StepTimings;
use crate::error::Result;
use crate::log::event::Event;
use crate::repository::Repository;

/// A part's commit running on its own thread: (the folder's durability point, the
/// store's sync and the log append) when it ends.
pub(super) type InFlight<'scope> = Option<ScopedJoinHandle<'scope, Result<(Duration, Duration)>>>;

/// Where the apply writes and commits: the folder, its repository, the feed to tell
/// when a commit runs.
#[derive(Clone, Copy)]
pub(super) struct Target<'env> {
    pub root: &'env Path,
    pub repository: &'env Repository,
    pub feed: &'env Feed,
}

/// How a batch is written (computed when it was checked): in parts of `part_events`.
pub(super) struct Plan<'a> {
    pub part_events: usize,
    pub displaced: &'a Displaced,
    pub finishing: &'a Finishing,
    pub patchable: &'a std::collections::HashSet<u64>,
}

/// Steps 3 and 4 for checked and journaled `events`: write a part's files, then make
/// that part durable (`durable::make_durable`, the chunk store synced, the part
/// appended to the log) on another thread while the next part's files are written.
/// Parts are committed in order, each only after its own files are on disk and the
/// previous part's commit (`committing`, perhaps the previous batch's last part)
/// ended, so the log never gets ahead of the folder; the last part's commit is left
/// running in `committing`. The journal (all of the apply's paths) stays until the
/// apply ends, so a crash or an error anywhere leaves `recover` to put every path back
/// to the log head.
pub(super) fn write_and_commit<'scope, 'env>(
    scope: &'scope Scope<'scope, 'env>,
    committing: &mut InFlight<'scope>,
    target: Target<'env>,
    events: &Arc<[Event]>,
    plan: &Plan<'_>,
    guarded: &mut Vec<byref::Guarded>,
    timings: &mut StepTimings,
) -> Result<()> {
    let Target {
        root, repository, ..
    } = target;
    let relinks = !plan.finishing.link_groups.is_empty();
    let parts = events.len().div_ceil(plan.part_events.max(1)).max(1);
    let part_len = events.len().div_ceil(parts).max(1);
    let mut start = 0;
    while start < events.len() {
        let range = start..(start + part_len).min(events.len());
        start = range.end;
        let part = &events[range.clone()];
        let writing = crate::clock::instant();
        guarded.extend(byref::guard(
            root,
            repository,
            part,
            &plan.finishing.link_groups,
        )?);
        let written = apply_changes(
            root,
            repository,
            part,
            plan.displaced,
            plan.finishing,
            plan.patchable,
        )
        .and_then(|()| {
            // Staged files the part did not install: their chunks into the packs
            // (synced by the commit).
            match part.last() {
                Some(last) => repository.chunks().discard_staged_through(last.seq()),
                None => Ok(()),
            }
        });
        timings.write += writing.elapsed();
        // The previous part is committed (or failed) before this one may be.
        let previous = wait_for(committing, timings);
        written?;
        previous?;
        // Nothing of a later part is being written now: what this part names that
        // only a later staged file holds goes into the packs before it commits.
        repository.chunks().secure_named_by(part)?;
        *committing = Some(spawn_commit(scope, target, events.clone(), range, relinks));
    }
    Ok(())
}

/// Commit `events[range]` on a thread of `scope`.
fn spawn_commit<'scope, 'env>(
    scope: &'scope Scope<'scope, 'env>,
    target: Target<'env>,
    events: Arc<[Event]>,
    range: Range<usize>,
    relinks: bool,
) -> ScopedJoinHandle<'scope, Result<(Duration, Duration)>> {
    let Target {
        root,
        repository,
        feed,
    } = target;
    feed.set_committing(true);
    scope.spawn(move || {
        let _committing = Committing(feed);
        let part = &events[range];
        let started = crate::clock::instant();
        make_durable_with_store(root, repository, part, relinks)?;
        let synced = started.elapsed();
        // The files this part installed are on disk: their references may be.
        if let Some(last) = part.last() {
            repository.chunks().commit_refs(last.seq())?;
        }
        repository.log().append(part)?;
        Ok((synced, started.elapsed() - synced))
    })
}

/// The part's files made durable (`durable::make_durable`) and the chunk store synced
/// (its pack's `fdatasync`, then the locations), at once when the store has chunks to
/// sync: the two device flushes overlap instead of following each other, one flush
/// less before the part counts as replicated (the passive's head moves on, and a
/// failover keeps it; the files were visible before). Neither needs the other first:
/// what orders them is the log append after both, which alone makes the part (and the
/// chunks it names) count as replicated. A crash in between leaves files `recover`
/// puts back and chunks no committed event names.
fn make_durable_with_store(
    root: &Path,
    repository: &Repository,
    part: &[Event],
    relinks: bool,
) -> Result<()> {
    let chunks = repository.chunks();
    let in_order = || {
        durable::make_durable(root, part, relinks)?;
        // Chunks stored since the look (the fetch of a later batch) are synced too.
        chunks.sync()
    };
    if !chunks.has_unsynced() {
        return in_order();
    }
    std::thread::scope(|scope| {
        let Ok(store) = std::thread::Builder::new()
            .name("standin-pack-sync".to_string())
            .spawn_scoped(scope, || chunks.sync())
        else {
            // No thread to be had: one after the other, as before.
            return in_order();
        };
        let folder = durable::make_durable(root, part, relinks);
        let store = match store.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        match (folder, store) {
            (Ok(()), store) => store,
            // Both failed: the one that lost durability is what stops the node.
            (Err(folder), Err(store))
                if store.is_durability_lost() && !folder.is_durability_lost() =>
            {
                Err(store)
            }
            (Err(folder), _) => Err(folder),
        }
    })
}

/// Wait for the commit in flight, if any, and count its time.
pub(super) fn wait_for(committing: &mut InFlight<'_>, timings: &mut StepTimings) -> Result<()> {
    if let Some(handle) = committing.take() {
        let waited = crate::clock::instant();
        let joined = match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        timings.waited += waited.elapsed();
        let (synced, appended) = joined?;
        timings.syncfs += synced;
        timings.append += appended;
    }
    Ok(())
}
