//! Staged files: the passive writes a large file's fetched chunks straight into the
//! file replay will rename into place, so each byte is written once.
//!
//! `ChunkStore::stage` creates, before a batch's chunks are fetched, a sparse file of
//! the right size in `chunks/staging/` (on the folder's file system) for each large
//! file the batch writes last. A received chunk a staged file names is written at its
//! offsets (whole zero blocks left as holes) instead of into a pack, and becomes a
//! pending reference to that file. Each staged file hashes its content in file order
//! as the chunks arrive (chunks the store already had are copied in at their turn),
//! so replay checks the content hash without reading the file again
//! (`finish_staged`). A staged file replay does not take is `discard`ed: its chunks
//! are copied into the packs first.
//!
//! Where the file system clones, a staged file starts as a clone of the version it
//! replaces (`clone`), and only the chunks not in place there are written.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::refs::{key_of, HomeState, InodeKey, RefLoc};
use super::{lock, ChunkStore, Dedup};
use crate::error::{Error, IoContext, Result};
use crate::hash::Hash;
use crate::log::event::{Change, ChunkRef, Event};

/// Files at least this large are kept by reference on the passive.
pub const BY_REF_MIN_BYTES: u64 = 1 << 20;

/// A staged file being filled.
pub struct Staged {
    pub seq: u64,
    pub content: Hash,
    pub path: PathBuf,
    pub key: InodeKey,
    pub size: u64,
    pub file: File,
    /// (hash, length, offset), in file order.
    chunks: Vec<(Hash, u32, u64)>,
    filled: Vec<bool>,
    /// Chunks in place in the clone the file started from (`clone::clone_current`):
    /// the reference of the version it replaces, which holds the same bytes there.
    in_place: Vec<Option<RefLoc>>,
    /// The file started as a clone: ranges not in place hold old bytes until written.
    cloned: bool,
    hasher: blake3::Hasher,
    /// Leading chunks hashed so far.
    hashed: usize,
    /// The first bytes start an SQLite database.
    pub database: bool,
    kicked: u64,
}

impl Staged {
    /// Where chunk `index` of the file is, as a reference.
    fn place(&self, index: usize) -> RefLoc {
        let (_, len, offset) = self.chunks[index];
        RefLoc {
            key: self.key,
            offset,
            len,
        }
    }
}

/// The staged files of one store and the chunks they wait for.
#[derive(Default)]
pub(crate) struct Staging {
    files: Mutex<HashMap<u64, Arc<Mutex<Staged>>>>,
    /// Hash → the (seq, chunk index) places waiting for it.
    wanted: Mutex<HashMap<Hash, Vec<(u64, usize)>>>,
}

/// How a passive keeps large files' content (`ChunkStore::content_mode`; `status`
/// says it in words).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentMode {
    /// Folder and data_dir are on different file systems: content is copied into the
    /// chunk store and written to the folder (each byte written twice).
    Copied,
    /// In the folder's files: staged files renamed into place, replaced inodes moved
    /// into data_dir. `clones`: a large file's new version is begun as a clone of the
    /// old one (reflink). `patch_in_place`: the operator chose to patch large files in
    /// place (invariant 5 relaxed for them).
    ByReference { clones: bool, patch_in_place: bool },
}

impl ChunkStore {
    /// How this store keeps `folder`'s large files' content on a passive: found from
    /// the file systems (and, once, by a probe clone in the staging directory).
    pub fn content_mode(&self, folder: &Path) -> Result<ContentMode> {
        let staging_dir = &self.refs.staging_dir;
        let same_fs = match (std::fs::metadata(folder), std::fs::metadata(staging_dir)) {
            (Ok(folder), Ok(staging)) => folder.dev() == staging.dev(),
            _ => false,
        };
        if !same_fs {
            return Ok(ContentMode::Copied);
        }
        let clones = crate::folder::read::reflink::clones_into(folder, staging_dir)
            .at("clone a probe file in", staging_dir)?;
        Ok(ContentMode::ByReference {
            clones,
            patch_in_place: self.patches_in_place(),
        })
    }
}

/// The Put/File events of `events` a passive may stage: large, the last change of
/// the batch to their path (no later event names it, and none removes, replaces or
/// moves a parent of it — a parent's metadata may change), with
/// no hard-link companion in the batch.
fn stageable(events: &[Event]) -> Vec<&Event> {
    // Paths a later event of the batch changes; and those it may remove, replace or
    // move (with everything below them).
    let mut later: std::collections::HashSet<&[u8]> = std::collections::HashSet::new();
    let mut moved_later: std::collections::HashSet<&[u8]> = std::collections::HashSet::new();
    // The paths of each link group (inode on the active) the batch writes: two are
    // hard links of one file; one path written twice is two versions of one file.
    let mut links: HashMap<u64, std::collections::HashSet<&[u8]>> = HashMap::new();
    for event in events {
        if let Change::File { meta, path, .. } = &event.body.change {
            links.entry(meta.link).or_default().insert(path.as_bytes());
        }
    }
    let mut out = Vec::new();
    for event in events.iter().rev() {
        let change = &event.body.change;
        if let Change::Put { path, size, .. } | Change::File { path, size, .. } = change {
            let linked = matches!(change, Change::File { meta, .. } if meta.link != 0 && links.get(&meta.link).is_some_and(|paths| paths.len() > 1));
            let touched_later = later.contains(path.as_bytes())
                || path
                    .ancestors()
                    .iter()
                    .any(|ancestor| moved_later.contains(ancestor.as_bytes()));
            if *size >= BY_REF_MIN_BYTES && !linked && !touched_later {
                out.push(event);
            }
        }
        for path in change.paths() {
            later.insert(path.as_bytes());
            // A directory's metadata changed (its mtime moved as files were made in
            // it, a chmod) leaves the files below it where they are.
            if !matches!(
                change,
                Change::SetMeta { .. }
                    | Change::SetMode { .. }
                    | Change::Dir { .. }
                    | Change::Mkdir { .. }
            ) {
                moved_later.insert(path.as_bytes());
            }
        }
    }
    out.reverse();
    out
}

/// Write a chunk's `bytes` at `offset` of a staged file. A file sized sparse reads as
/// zeros wherever nothing was written, so whole zero blocks are left as holes; in a
/// clone the range holds the old version's bytes, so it is emptied first (a hole
/// punched; zeros written where the file system cannot punch).
fn write_chunk(file: &File, bytes: &[u8], offset: u64, cloned: bool) -> std::io::Result<()> {
    if cloned {
        // SAFETY: the descriptor is open; fallocate only changes the file's blocks.
        let punched = unsafe {
            libc::fallocate(
                std::os::fd::AsRawFd::as_raw_fd(file),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                bytes.len() as libc::off_t,
            )
        };
        if punched != 0 {
            return file.write_all_at(bytes, offset);
        }
    }
    write_at_leaving_holes(file, bytes, offset)
}

/// Write `bytes` at `offset`, leaving whole zero blocks (the file was sized first,
/// so they read as zeros) as holes.
fn write_at_leaving_holes(file: &File, bytes: &[u8], offset: u64) -> std::io::Result<()> {
    const BLOCK: usize = 4096;
    let mut at = 0usize;
    let mut run = 0usize;
    while at < bytes.len() {
        let position = offset + at as u64;
        let block_end = ((position / BLOCK as u64 + 1) * BLOCK as u64 - position) as usize;
        let end = bytes.len().min(at + block_end);
        let piece = &bytes[at..end];
        if piece.len() == BLOCK
            && position.is_multiple_of(BLOCK as u64)
            && piece.iter().all(|b| *b == 0)
        {
            file.write_all_at(&bytes[run..at], offset + run as u64)?;
            run = end;
        }
        at = end;
    }
    file.write_all_at(&bytes[run..], offset + run as u64)
}

impl ChunkStore {
    /// Stage the large files `events` write (see the module doc), in `folder`'s
    /// passive: only when the staging directory is on the folder's file system.
    /// Returns how many files are staged for these events. Already staged files of
    /// these events are kept (a pull that failed half way goes on where it was).
    pub fn stage(&self, folder: &Path, events: &[Event]) -> Result<usize> {
        let staging_dir = &self.refs.staging_dir;
        let same_fs = match (std::fs::metadata(folder), std::fs::metadata(staging_dir)) {
            (Ok(folder), Ok(staging)) => folder.dev() == staging.dev(),
            _ => false,
        };
        if !same_fs {
            return Ok(0);
        }
        let mut count = 0;
        // The first event of the batch to name each chunk.
        let mut first_named: HashMap<Hash, u64> = HashMap::new();
        for event in events {
            for chunk in event.body.change.chunks().unwrap_or(&[]) {
                first_named.entry(chunk.hash).or_insert(event.seq());
            }
        }
        let candidates = if self.patches_in_place() {
            super::patch_candidates(events)
        } else {
            Default::default()
        };
        for event in stageable(events) {
            let (path, content, size, chunks) = match &event.body.change {
                Change::Put {
                    path,
                    content,
                    size,
                    chunks,
                    ..
                }
                | Change::File {
                    path,
                    content,
                    size,
                    chunks,
                    ..
                } => (path, *content, *size, chunks),
                _ => continue,
            };
            // A file replay will patch in place: its fetched chunks go to the packs
            // (replay copies them into the file: `replay::patch`).
            if candidates.contains(&event.seq())
                && self
                    .plan_patch(&path.under(folder), chunks, size)?
                    .is_some()
            {
                continue;
            }
            if let Some(existing) = lock(&self.staging.files).get(&event.seq()) {
                if lock(existing).content == content {
                    count += 1;
                    continue;
                }
            }
            if chunks.iter().map(|chunk| chunk.len as u64).sum::<u64>() != size {
                continue;
            }
            // Staged even when nothing is missing: its chunks may be referenced in the
            // file it replaces, and are then referenced in the new one instead.
            let missing = self.missing(chunks.iter().map(|chunk| chunk.hash))?;
            // A chunk the store lacks would be fetched into this file alone; an earlier
            // event of the batch naming it may be committed in an earlier part, before
            // this file is installed, and a failure or restart in between would leave
            // the log naming a chunk in no pack and no committed reference. Such a file
            // (a second version of a busy database, a copy) goes through the packs.
            if missing.iter().any(|hash| {
                first_named
                    .get(hash)
                    .is_some_and(|first| *first < event.seq())
            }) {
                continue;
            }
            self.stage_one(
                event.seq(),
                content,
                size,
                chunks,
                &missing,
                &path.under(folder),
            )?;
            count += 1;
        }
        Ok(count)
    }

    /// Stage one file: a new file in `staging/` (a clone of the version now at
    /// `current`, where that pays), sized, waiting for the chunks it lacks.
    fn stage_one(
        &self,
        seq: u64,
        content: Hash,
        size: u64,
        chunks: &[ChunkRef],
        missing: &[Hash],
        current: &Path,
    ) -> Result<()> {
        let name = format!(
            "{seq}-{}",
            String::from_utf8_lossy(&crate::fsutil::temp_name())
        );
        let path = self.refs.staging_dir.join(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .at("create", &path)?;
        let key = key_of(&file, &path)?;
        let mut offset = 0u64;
        let placed: Vec<(Hash, u32, u64)> = chunks
            .iter()
            .map(|chunk| {
                let at = offset;
                offset += chunk.len as u64;
                (chunk.hash, chunk.len, at)
            })
            .collect();
        let in_place = self.clone_current(&file, &path, current, &placed)?;
        let cloned = in_place.iter().any(Option::is_some);
        file.set_len(size).at("truncate", &path)?;
        let missing: std::collections::HashSet<&Hash> = missing.iter().collect();
        {
            let mut wanted = lock(&self.staging.wanted);
            for (index, (hash, _, _)) in placed.iter().enumerate() {
                if missing.contains(hash) && in_place[index].is_none() {
                    wanted.entry(*hash).or_default().push((seq, index));
                }
            }
        }
        self.refs
            .register(key, path.clone(), size, HomeState::Staged);
        let staged = Staged {
            seq,
            content,
            path,
            key,
            size,
            file,
            filled: in_place.iter().map(Option::is_some).collect(),
            in_place,
            cloned,
            chunks: placed,
            hasher: blake3::Hasher::new(),
            hashed: 0,
            database: false,
            kicked: 0,
        };
        let previous = lock(&self.staging.files).insert(seq, Arc::new(Mutex::new(staged)));
        if let Some(previous) = previous {
            self.discard_one(&previous)?;
        }
        Ok(())
    }

    /// A received, verified chunk: written into the staged files waiting for it.
    /// Whether any was (else it goes to a pack).
    pub(super) fn put_staged(&self, hash: Hash, bytes: &[u8]) -> Result<bool> {
        let Some(places) = lock(&self.staging.wanted).remove(&hash) else {
            return Ok(false);
        };
        let mut referenced = false;
        for (seq, index) in places {
            let Some(staged) = lock(&self.staging.files).get(&seq).cloned() else {
                continue;
            };
            let mut staged = lock(&staged);
            let (_, _, offset) = staged.chunks[index];
            write_chunk(&staged.file, bytes, offset, staged.cloned).at("write", &staged.path)?;
            staged.filled[index] = true;
            if !referenced {
                self.refs.add_pending(hash, staged.place(index));
                referenced = true;
            }
            self.advance(&mut staged, Some((&hash, bytes)))?;
        }
        Ok(referenced)
    }

    /// Hash the staged file's chunks in order as far as they are there, copying in
    /// those the store already had.
    fn advance(&self, staged: &mut Staged, current: Option<(&Hash, &[u8])>) -> Result<()> {
        while staged.hashed < staged.chunks.len() {
            let index = staged.hashed;
            let (hash, len, offset) = staged.chunks[index];
            let mut copied = false;
            let bytes = if staged.filled[index] {
                match current {
                    Some((current, bytes)) if *current == hash => bytes.to_vec(),
                    _ => {
                        let mut bytes = vec![0u8; len as usize];
                        staged
                            .file
                            .read_exact_at(&mut bytes, offset)
                            .at("read", &staged.path)?;
                        bytes
                    }
                }
            } else if lock(&self.staging.wanted).contains_key(&hash) {
                break;
            } else {
                let bytes = match self.get(&hash) {
                    Ok(bytes) => bytes,
                    Err(Error::ChunkMissing { .. }) => break,
                    Err(error) => return Err(error),
                };
                write_chunk(&staged.file, &bytes, offset, staged.cloned)
                    .at("write", &staged.path)?;
                staged.filled[index] = true;
                copied = true;
                bytes
            };
            // Copied in, or in place in the clone: perhaps referenced in a file this
            // one replaces; from now on here, so that the old version need not keep it.
            if (copied || staged.in_place[index].is_some()) && !self.in_pack(&hash)? {
                self.refs.add_pending(hash, staged.place(index));
            }
            if index == 0 {
                staged.database = crate::folder::read::sqlite::is_header(&bytes);
            }
            staged.hasher.update(&bytes);
            staged.hashed += 1;
            let end = offset + len as u64;
            if end - staged.kicked >= crate::fsutil::WRITEBACK_STEP_BYTES {
                crate::fsutil::start_writeback(&staged.file, staged.kicked, end - staged.kicked);
                staged.kicked = end;
            }
        }
        Ok(())
    }

    /// The staged file of event `seq`, if it is one of `content`: taken out of the
    /// staging (the caller installs it, or `discard_staged`s it).
    pub fn take_staged(&self, seq: u64, content: Hash) -> Option<Arc<Mutex<Staged>>> {
        let mut files = lock(&self.staging.files);
        let staged = files.get(&seq)?.clone();
        if lock(&staged).content != content {
            return None;
        }
        files.remove(&seq);
        Some(staged)
    }

    /// Complete a taken staged file: every chunk in it, its content hash checked.
    pub fn finish_staged(&self, staged: &mut Staged) -> Result<()> {
        self.advance(staged, None)?;
        if staged.hashed < staged.chunks.len() {
            let (hash, _, _) = staged.chunks[staged.hashed];
            return Err(Error::ChunkMissing { hash });
        }
        let actual: Hash = staged.hasher.finalize().into();
        if actual != staged.content {
            return Err(Error::ChunkMismatch {
                expected: staged.content,
                actual,
                location: format!(
                    " (the chunks staged at {} do not add up to its content hash)",
                    staged.path.display()
                ),
            });
        }
        Ok(())
    }

    /// A staged file was renamed into place at `path` by event `seq`: its references
    /// are committed with that event's part (`commit_refs`).
    pub fn installed(&self, staged: &Staged, path: PathBuf, seq: u64) {
        self.refs
            .register(staged.key, path, staged.size, HomeState::Installed(seq));
    }

    /// Give up the staged files of events up to `seq` (taken or not) that were not
    /// installed: their chunks go into the packs first, so none that the store once
    /// had goes missing.
    pub fn discard_staged_through(&self, seq: u64) -> Result<()> {
        let doomed: Vec<Arc<Mutex<Staged>>> = {
            let mut files = lock(&self.staging.files);
            let seqs: Vec<u64> = files.keys().copied().filter(|at| *at <= seq).collect();
            seqs.iter().filter_map(|at| files.remove(at)).collect()
        };
        for staged in doomed {
            self.discard_one(&staged)?;
        }
        Ok(())
    }

    /// Give up one staged file that was taken but is not installed.
    pub fn discard_staged(&self, staged: &Arc<Mutex<Staged>>) -> Result<()> {
        self.discard_one(staged)
    }

    fn discard_one(&self, staged: &Arc<Mutex<Staged>>) -> Result<()> {
        let staged = lock(staged);
        lock(&self.staging.wanted).retain(|_, places| {
            places.retain(|(seq, _)| *seq != staged.seq);
            !places.is_empty()
        });
        self.copy_out(staged.key)?;
        match std::fs::remove_file(&staged.path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(error).at("remove", &staged.path),
        }
    }

    /// Copy every chunk referenced in inode `key` into the packs (verified; one that
    /// no longer matches is reported missing and skipped) and forget the inode.
    /// Durable with the next `sync` and flush.
    pub(crate) fn copy_out(&self, key: InodeKey) -> Result<u64> {
        Ok(self.copy_out_all(&[key])?.first().copied().unwrap_or(0))
    }

    /// `copy_out` for each of `keys`, with one sync of the packs for them all (not
    /// one device flush per file); the bytes copied from each, in order.
    pub(crate) fn copy_out_all(&self, keys: &[InodeKey]) -> Result<Vec<u64>> {
        let mut copied = Vec::with_capacity(keys.len());
        for key in keys {
            let mut bytes_copied = 0u64;
            for (hash, location) in self.refs.refs_of(*key)? {
                match self.refs.read(&hash, location) {
                    Ok(bytes) => {
                        self.insert(hash, &bytes, Dedup::All)?;
                        bytes_copied += bytes.len() as u64;
                    }
                    Err(Error::ChunkMissing { .. }) => {}
                    Err(error) => return Err(error),
                }
            }
            copied.push(bytes_copied);
        }
        // In the packs before any reference to them goes.
        self.sync()?;
        for key in keys {
            self.refs.remove_inode(*key)?;
        }
        Ok(copied)
    }

    /// Commit the references of the files installed by events up to `seq` (call at
    /// the durability point, after the `syncfs` that made them durable and before the
    /// log append that flushes them).
    pub fn commit_refs(&self, seq: u64) -> Result<()> {
        self.refs.commit(seq)
    }

    /// A failed batch: forget the references it installed but did not commit.
    pub fn forget_uncommitted(&self) {
        self.refs.forget_uncommitted()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_blocks_become_holes_and_read_back_as_zeros() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("f");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("create");
        file.set_len(5 * 4096 + 10).expect("size");
        let mut bytes = vec![7u8; 5 * 4096 + 10];
        bytes[4096..3 * 4096].fill(0);
        write_at_leaving_holes(&file, &bytes[..], 0).expect("write");
        assert_eq!(std::fs::read(&path).expect("read"), bytes);
        let allocated = std::fs::metadata(&path).expect("stat").blocks() * 512;
        assert!(
            allocated < bytes.len() as u64,
            "{allocated} bytes allocated"
        );
    }
}
