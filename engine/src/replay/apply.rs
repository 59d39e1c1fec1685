//! One apply: the batches of a `Feed`, each checked (step 1), journaled (step 2),
//! written and committed in parts (steps 3 and 4, `commit`), then what the apply
//! finishes once all of them are in the log (old versions removed, directory times,
//! inodes kept by reference settled, the index saved, the journal cleared).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use super::byref;
use super::commit::{wait_for, write_and_commit, InFlight, Plan, Target};
use super::feed::Feed;
use super::write::{set_directory_times, Displaced, Finishing};
use super::{directory_times, patch, recover, ReplayOptions, StepTimings};
use crate::error::{Error, Result};
use crate::folder::index::{Entry, FolderIndex};
use crate::log::event::{chain_hash, Change, Event};
use crate::log::Head;
use crate::path::RelPath;
use crate::repository::Repository;

/// Apply the batches `feed` brings (each following the one before, the first the
/// repository's head) to the replica `root`, as one apply: see the module's doc and
/// `feed`. Returns the head after the last one. On an error, the batches (and parts)
/// already committed stay applied, the rest of the folder is put back to the log
/// head, and the feed takes no more.
pub fn apply_fed(
    root: &Path,
    repository: &Repository,
    feed: &Feed,
    options: &ReplayOptions,
) -> Result<Head> {
    struct CloseOnExit<'a>(&'a Feed);
    impl Drop for CloseOnExit<'_> {
        fn drop(&mut self) {
            self.0.close();
        }
    }
    let _close = CloseOnExit(feed);
    recover(root, repository)?;
    let Some(first) = feed.queued().filter(|events| !events.is_empty()) else {
        return Ok(repository.head());
    };
    let started = crate::clock::instant();
    let mut index = repository.lock_index();
    let head = repository.head();
    let mut tip = (head.seq, head.hash, head.epoch);
    let mut timings = StepTimings::default();
    let displaced = Displaced::default();
    let mut guarded = Vec::new();
    // What the end needs of the batches taken (their events themselves go once
    // committed): how many, the last seq, and their renames with their seqs.
    let (mut batches, mut taken, mut last) = (0usize, 0usize, head.seq);
    let mut renames: Vec<(u64, (RelPath, RelPath))> = Vec::new();
    // The directories the batches wrote into: their times are set again at the end.
    let mut directories: BTreeSet<RelPath> = BTreeSet::new();
    let mut journaled = false;
    let mut by_reference = false;
    let target = Target {
        root,
        repository,
        feed,
    };
    let written = std::thread::scope(|scope| -> Result<()> {
        let mut committing: InFlight<'_> = None;
        let mut next = Some(first);
        let outcome = (|| -> Result<()> {
            while let Some(events) = next.take() {
                let events: Arc<[Event]> = events.into();
                let checking = crate::clock::instant();
                check(repository, &mut index, &mut tip, &events)?;
                timings.check += checking.elapsed();
                let journaling = crate::clock::instant();
                let touched: Vec<RelPath> = events
                    .iter()
                    .flat_map(|event| event.body.change.paths().into_iter().cloned())
                    .collect();
                super::journal_batch(repository, batches, &touched)?;
                journaled = true;
                timings.journal += journaling.elapsed();
                let finishing = {
                    let changes: Vec<&Change> =
                        events.iter().map(|event| &event.body.change).collect();
                    let link_groups = crate::folder::links::groups_touched(&index, &changes);
                    let linked: Vec<&RelPath> = link_groups.iter().flatten().collect();
                    Finishing {
                        dir_times: directory_times(&index, &events, &linked),
                        link_groups,
                    }
                };
                // Counted before the writes: a part of this batch may commit and a later
                // one fail, and the directories the committed part wrote into are set
                // again at the end like the rest.
                directories.extend(finishing.dir_times.iter().map(|(dir, _)| dir.clone()));
                let patchable = patch::patchable(repository, &events, &finishing.link_groups);
                let plan = Plan {
                    part_events: options.commit_part_events.max(1),
                    displaced: &displaced,
                    finishing: &finishing,
                    patchable: &patchable,
                };
                write_and_commit(
                    scope,
                    &mut committing,
                    target,
                    &events,
                    &plan,
                    &mut guarded,
                    &mut timings,
                )?;
                batches += 1;
                taken += events.len();
                last = events.last().map_or(last, |event| event.seq());
                renames.extend(
                    events
                        .iter()
                        .filter_map(|event| Some((event.seq(), byref::rename(event)?))),
                );
                // Large files, and inodes kept by reference that a batch displaced or
                // patched, end the apply: their references settle at its end, and a
                // later batch must not find them half settled (a patch over chunks
                // whose move to a new version is still deferred, a home recorded
                // after a rename of this apply).
                by_reference |= !guarded.is_empty()
                    || !patchable.is_empty()
                    || events.iter().any(|event| {
                        event.body.change.content_size() >= crate::chunk_store::BY_REF_MIN_BYTES
                    });
                next = if by_reference
                    || taken >= options.apply_events
                    || started.elapsed() >= options.take_batches_for
                {
                    feed.close();
                    None
                } else {
                    feed.next()
                };
            }
            Ok(())
        })();
        // The last commit (or the one in flight when something failed) ends first.
        let committed = wait_for(&mut committing, &mut timings);
        outcome.and(committed)
    });
    feed.close();
    // The old versions of replaced files go once the batches are in the log (or
    // failed); removing them moved their directories' times, which are set again.
    let all_removed = displaced.remove_all();
    if written.is_ok() {
        set_times_again(root, &index, &directories);
    }
    if let Err(error) = written {
        if !journaled {
            // The first batch's check failed: nothing was touched. Still under the
            // lock: nobody may see the index ahead of the log.
            repository.reload_index_locked(&mut index)?;
            return Err(error);
        }
        repository.chunks().forget_uncommitted();
        repository.reload_index_locked(&mut index)?;
        drop(index);
        if let Err(recovery) = recover(root, repository) {
            tracing::error!(%recovery, "could not put the replica back after a failed batch; will retry");
        }
        // The batches in the log wrote into these directories too, and the removals
        // and the recovery moved their times: set as of the log's head.
        set_times_again(root, &repository.lock_index(), &directories);
        // The renames of the batches in the log were applied.
        let head = repository.head().seq;
        let renames: Vec<_> = renames
            .into_iter()
            .filter(|(seq, _)| *seq <= head)
            .map(|(_, rename)| rename)
            .collect();
        if let Err(settling) = byref::settle(root, repository, guarded, &renames) {
            tracing::warn!(%settling, "could not settle the files kept by reference after a failed batch");
        }
        return Err(error);
    }
    // The inodes the batches moved or replaced: home again, kept, or copied out.
    let renames: Vec<_> = renames.into_iter().map(|(_, rename)| rename).collect();
    if let Err(error) = byref::settle(root, repository, guarded, &renames) {
        tracing::warn!(%error, "could not settle the files kept by reference; the next garbage collection will");
    }
    let committed_at = started.elapsed();
    repository.save_index_when_due(&mut index, last, taken)?;
    let index_saved_at = started.elapsed();
    drop(index);
    // Not flushed: it becomes durable with the next flush (the next batch's journal or
    // append). A crash before that leaves the journal of batches that completed, and
    // `recover` then finds every path it names already as the index says (they are in
    // the log): redundant checks, the same end state. An old version that could not
    // be removed keeps the journal, so that the next `recover` removes it.
    if all_removed {
        super::clear_journal(repository, batches)?;
    }
    tracing::debug!(
        events = taken,
        batches,
        check_ms = timings.check.as_secs_f64() * 1e3,
        journal_ms = timings.journal.as_secs_f64() * 1e3,
        write_ms = timings.write.as_secs_f64() * 1e3,
        syncfs_ms = timings.syncfs.as_secs_f64() * 1e3,
        append_ms = timings.append.as_secs_f64() * 1e3,
        waited_for_commit_ms = timings.waited.as_secs_f64() * 1e3,
        index_ms = (index_saved_at - committed_at).as_secs_f64() * 1e3,
        total_ms = started.elapsed().as_secs_f64() * 1e3,
        "batch applied"
    );
    Ok(repository.head())
}

/// Set the recorded times of `directories` as `index` has them: each batch's own
/// list was made from the index after that batch, and a later batch may have replaced
/// or moved what it names (a directory replaced by a file or a symlink).
fn set_times_again(root: &Path, index: &FolderIndex, directories: &BTreeSet<RelPath>) {
    let times: Vec<(RelPath, i64)> = directories
        .iter()
        .filter(|dir| matches!(index.get(dir), Some(Entry::Dir { .. })))
        .filter_map(|dir| Some((dir.clone(), index.meta(dir)?.mtime_ns)))
        .collect();
    if let Err(error) = set_directory_times(root, &times) {
        tracing::warn!(%error, "could not set a directory's recorded time again");
    }
}

/// Step 1 for one batch: every event continues the chain from `tip` and hashes to its
/// recorded hash; every change fits `index` (applied to it); after each change the
/// index's digest equals the event's; every chunk named is in the chunk store.
/// Nothing on disk is touched. On an error `index` is ahead of the log: the caller
/// reloads it.
fn check(
    repository: &Repository,
    index: &mut FolderIndex,
    tip: &mut (u64, crate::hash::Hash, u64),
    events: &[Event],
) -> Result<()> {
    for event in events {
        let recomputed = chain_hash(&event.prev, &event.body.canonical_bytes());
        if recomputed != event.hash {
            return Err(Error::BrokenChain {
                seq: event.seq(),
                reason: format!(
                    "recorded hash {} but prev and body hash to {recomputed}",
                    event.hash
                ),
            });
        }
        event.check_follows(tip.0, &tip.1)?;
        if event.epoch() < tip.2 {
            return Err(Error::BrokenChain {
                seq: event.seq(),
                reason: format!(
                    "epoch {} is below the previous event's epoch {}",
                    event.epoch(),
                    tip.2
                ),
            });
        }
        *tip = (event.seq(), event.hash, event.epoch());
        let change = &event.body.change;
        index.apply(change).map_err(|misfit| Error::Apply {
            seq: event.seq(),
            path: misfit.path.to_string(),
            reason: misfit.reason,
        })?;
        if index.digest() != event.body.digest {
            return Err(Error::DigestMismatch {
                seq: event.seq(),
                path: change.describe_path(),
                expected: event.body.digest,
                actual: index.digest(),
            });
        }
        if let Some(chunks) = change.chunks() {
            if let Some(missing) = repository
                .chunks()
                .missing(chunks.iter().map(|chunk| chunk.hash))?
                .first()
            {
                return Err(Error::ChunkMissing { hash: *missing });
            }
        }
    }
    Ok(())
}
