//! Many large files, each edited a little, on a pair whose passive keeps them by
//! reference: the time until the passive holds every edit beside rsync's update.
//!
//! A database's pages rewritten, a log's tail appended to: each edited file becomes a
//! new version on the passive, and the old one's references are sorted out file by
//! file (copied out, kept, or moved to the new version). What that costs must follow
//! the edited files, not every file the passive keeps by reference: this case holds
//! many references (`files` × `size`, a reference per 64 KiB on average) and edits a
//! few of the files.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use super::incremental::{applied, synced, Expect, Synced};
use super::nodes::metric;
use crate::Outcome;

/// What one round measured.
pub struct Edits {
    pub files: usize,
    pub size: usize,
    pub edited: usize,
    /// Until the passive held every edit and its head was the active's.
    pub standin: Duration,
    pub standin_wire_bytes: u64,
    pub rsync: Duration,
    pub rsync_wire_bytes: u64,
    /// The edited files' new versions written whole and synced (`floor::versions_floor`).
    pub floor: Duration,
    /// Then small changes, one at a time, each until the replica had it (sorted).
    pub lag: Vec<Duration>,
}

/// A folder of `files` files of `size` bytes synced to a passive and to an rsync
/// target; then 4 KiB rewritten in the middle of `edited` of them.
pub fn large_edits(
    binary: &Path,
    rsync: &Path,
    work: &Path,
    (files, size, edited): (usize, usize, usize),
    patch_in_place: bool,
) -> Outcome<Edits> {
    let root = work.join(format!("large-edits-{patch_in_place}"));
    let folder = root.join("folder");
    crate::corpus::large_files(&folder, files, size)?;
    crate::measure::sync_all();
    let Synced {
        alpha,
        beta,
        daemon,
        rsync_target,
    } = synced(
        binary,
        rsync,
        &root,
        &folder,
        &format!("patch_in_place = {patch_in_place}\n"),
        files as u64,
    )?;
    crate::measure::sync_all();
    crate::measure::warm(&folder)?;

    let bytes_before = metric(&beta, "standin_bytes_replicated_total");
    let mut generator = crate::corpus::Bytes::new(91);
    let mut content = vec![0u8; 4096];
    let mut expected = Vec::new();
    let mut changed = Vec::new();
    let offset = (size / 2) as u64;
    for index in (0..files)
        .step_by((files / edited.max(1)).max(1))
        .take(edited)
    {
        generator.fill(&mut content);
        let path = folder.join(format!("large{index}.bin"));
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)?
            .write_all_at(&content, offset)?;
        expected.push(Expect::at(&folder, &path, offset, &content));
        changed.push(path);
    }
    let (standin, standin_wire_bytes) = applied(
        &alpha,
        &beta,
        &root.join("replica"),
        &expected,
        bytes_before,
    )?;
    let (rsync_time, rsync_wire_bytes) = daemon.update(rsync, &rsync_target)?;
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let floor = crate::floor::versions_floor(&changed, &root.join("floor-versions"), threads)?;
    // Each change of the passive's folder is guarded against displacing the files it
    // keeps by reference: its cost must not grow with them.
    let lag = super::lag_between(&folder, &root.join("replica"), 100)?;
    Ok(Edits {
        files,
        size,
        edited: expected.len(),
        standin,
        standin_wire_bytes,
        rsync: rsync_time,
        rsync_wire_bytes,
        floor,
        lag,
    })
}
