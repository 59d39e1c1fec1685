//! Steps 3 and 4 of `apply_batch`, a part at a time: write a part's files (after
//! guarding the referenced inodes it may displace), then make the part durable while
//! the next one is written.

use std::path::Path;

use super::byref;
use super::durable;
use super::write::{apply_changes, Displaced, Finishing};
use super::StepTimings;
use crate::error::Result;
use crate::log::event::Event;
use crate::repository::Repository;

/// Steps 3 and 4 for checked and journaled `events`: write a part's files, then make
/// that part durable (`durable::make_durable`, the chunk store synced, the part appended to the log)
/// on another thread while the next part's files are written. Parts are committed in
/// order, each only after its own files are on disk, so the log never gets ahead of
/// the folder; the journal (all of the batch's paths) stays until the end, so a crash
/// or an error anywhere leaves `recover` to put every path back to the log head.
#[allow(clippy::too_many_arguments)] // the batch, its plan and its outputs: a struct for one call site adds nothing
pub(super) fn write_and_commit_in_parts(
    root: &Path,
    repository: &Repository,
    events: &[Event],
    part_events: usize,
    timings: &mut StepTimings,
    displaced: &Displaced,
    finishing: &Finishing,
    guarded: &mut Vec<byref::Guarded>,
    patchable: &std::collections::HashSet<u64>,
) -> Result<()> {
    let relinks = !finishing.link_groups.is_empty();
    let commit = |part: &[Event]| -> Result<(std::time::Duration, std::time::Duration)> {
        let started = crate::clock::instant();
        durable::make_durable(root, part, relinks)?;
        let synced = started.elapsed();
        repository.chunks().sync()?;
        // The files this part installed are on disk: their references may be.
        if let Some(last) = part.last() {
            repository.chunks().commit_refs(last.seq())?;
        }
        repository.log().append(part)?;
        Ok((synced, started.elapsed() - synced))
    };
    let parts = events.len().div_ceil(part_events).max(1);
    let part_len = events.len().div_ceil(parts).max(1);
    std::thread::scope(|scope| {
        let mut committing: Option<std::thread::ScopedJoinHandle<'_, _>> = None;
        let wait_for = |committing: &mut Option<std::thread::ScopedJoinHandle<'_, _>>,
                        timings: &mut StepTimings|
         -> Result<()> {
            if let Some(handle) = committing.take() {
                let waited = crate::clock::instant();
                let joined: Result<(std::time::Duration, std::time::Duration)> = match handle.join()
                {
                    Ok(result) => result,
                    Err(panic) => std::panic::resume_unwind(panic),
                };
                timings.waited += waited.elapsed();
                let (synced, appended) = joined?;
                timings.syncfs += synced;
                timings.append += appended;
            }
            Ok(())
        };
        let mut parts = events.chunks(part_len).peekable();
        while let Some(part) = parts.next() {
            let writing = crate::clock::instant();
            guarded.extend(byref::guard(
                root,
                repository,
                part,
                &finishing.link_groups,
            )?);
            let written = apply_changes(root, repository, part, displaced, finishing, patchable)
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
            let previous = wait_for(&mut committing, timings);
            written?;
            previous?;
            // Nothing of a later part is being written now: what this part names that
            // only a later staged file holds goes into the packs before it commits.
            repository.chunks().secure_named_by(part)?;
            if parts.peek().is_some() {
                committing = Some(scope.spawn(move || commit(part)));
            } else {
                let (synced, appended) = commit(part)?;
                timings.syncfs += synced;
                timings.append += appended;
            }
        }
        wait_for(&mut committing, timings)
    })
}
