//! Writing one file of a batch (step 3 of `apply_batch`): from its verified chunks,
//! hashed again, zero blocks left as holes, metadata applied, then put in place —
//! a new path by linking an unnamed file (`O_TMPFILE`) there, one directory entry
//! and no rename; a path that exists by a temporary name renamed or exchanged into
//! place — or a staged large file installed.

use std::fs::{File, OpenOptions};
use std::io::{Seek, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::chunk_store::Staged;
use crate::error::{Error, IoContext, Result};
use crate::fsutil::{system_time, temp_name};
use crate::hash::Hash;
use crate::log::event::ChunkRef;
use crate::path::RelPath;
use crate::repository::Repository;

/// Write a file from its chunks, check its content hash, set its metadata and put it
/// in place. Where the file system allows, the file is written unnamed
/// (`fsutil::create_unnamed`) and linked at its path when none is there: it appears
/// whole or not at all, as after a rename, for one directory entry instead of a
/// temporary one renamed. Otherwise (a file already there, or no `O_TMPFILE`) it goes
/// to a temporary name beside it and `fsutil::replace_file` puts it in place. Returns
/// where the file it replaced now is, if it was kept for the caller to remove.
pub(super) fn write_file(
    root: &Path,
    repository: &Repository,
    path: &RelPath,
    attributes: Attributes<'_>,
    content: Hash,
    chunks: &[ChunkRef],
) -> Result<Option<PathBuf>> {
    let destination = path.under(root);
    let temporary = match path.parent() {
        Some(parent) => parent.join(&temp_name())?.under(root),
        None => RelPath::top(&temp_name())?.under(root),
    };
    let directory = match path.parent() {
        Some(parent) => parent.under(root),
        None => root.to_path_buf(),
    };
    let mode = match attributes {
        Attributes::Legacy(mode, _) => mode,
        Attributes::Meta(meta) => meta.mode,
    };
    let unnamed = crate::fsutil::create_unnamed(&directory, mode).at("create", &temporary)?;
    let named = unnamed.is_none();
    let opened = match unnamed {
        Some(file) => Ok(file),
        None => OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&temporary)
            .at("create", &temporary),
    };
    let mut file = opened?;
    let written = (|| -> Result<bool> {
        let mut hasher = blake3::Hasher::new();
        let mut written = 0u64;
        let mut kicked = 0u64;
        let mut database = false;
        let mut holes = false;
        for chunk in chunks {
            // Not hashed chunk by chunk: the whole file is hashed below, and a file
            // that does not add up is never renamed into place.
            let bytes = repository.chunks().get_unverified(&chunk.hash)?;
            if written == 0 {
                database = crate::folder::read::sqlite::is_header(&bytes);
            }
            hasher.update(&bytes);
            holes |= write_leaving_holes(&mut file, &bytes, written).at("write", &temporary)?;
            written += bytes.len() as u64;
            // Large files: start write-back as we go, so the batch's syncfs is short.
            if written - kicked >= crate::fsutil::WRITEBACK_STEP_BYTES {
                crate::fsutil::start_writeback(&file, kicked, written - kicked);
                kicked = written;
            }
        }
        if holes {
            file.set_len(written).at("truncate", &temporary)?;
        }
        let actual: Hash = hasher.finalize().into();
        if actual != content {
            // Name the damaged chunk, if one is.
            for chunk in chunks {
                repository.chunks().get(&chunk.hash)?;
            }
            return Err(Error::ChunkMismatch {
                expected: content,
                actual,
                location: format!(" (the chunks of {path} do not add up to its content hash)"),
            });
        }
        let mtime_ns = match attributes {
            Attributes::Legacy(mode, mtime_ns) => {
                file.set_permissions(std::fs::Permissions::from_mode(mode))
                    .at("chmod", &temporary)?;
                mtime_ns
            }
            Attributes::Meta(meta) if named => {
                crate::folder::meta::apply_meta(
                    &temporary,
                    meta,
                    false,
                    repository.meta_options(),
                )?;
                meta.mtime_ns
            }
            Attributes::Meta(meta) => {
                crate::folder::meta::apply_meta_to_file(
                    &file,
                    &temporary,
                    meta,
                    repository.meta_options(),
                )?;
                meta.mtime_ns
            }
        };
        file.set_modified(system_time(mtime_ns))
            .at("set mtime", &temporary)?;
        Ok(database)
    })();
    let database = match written {
        Ok(database) => database,
        Err(error) => {
            if named {
                let _ = std::fs::remove_file(&temporary);
            }
            return Err(error);
        }
    };
    if database {
        remove_companions(&destination)?;
    }
    if !named {
        // A new path takes the file as it is; one that exists (or appeared) is
        // replaced through a temporary name, as a named file would have been.
        match crate::fsutil::link_unnamed(&file, &destination) {
            Ok(()) => return Ok(None),
            Err(error) if error.raw_os_error() == Some(libc::EEXIST) => {
                crate::fsutil::link_unnamed(&file, &temporary).at("link", &temporary)?
            }
            Err(error) => return Err(error).at("link", &destination),
        }
    }
    drop(file);
    Ok(crate::fsutil::replace_file(&temporary, &destination)?.then_some(temporary))
}

/// Put a staged file in place at `path` for event `seq`. Returns where the file it
/// replaced now is, if it was kept for the caller to remove.
pub(super) fn install(
    root: &Path,
    repository: &Repository,
    path: &RelPath,
    attributes: Attributes<'_>,
    staged: &Arc<Mutex<Staged>>,
    seq: u64,
) -> Result<Option<PathBuf>> {
    let chunks = repository.chunks();
    let mut staged = staged
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    chunks.finish_staged(&mut staged)?;
    let mtime_ns = match attributes {
        Attributes::Legacy(mode, mtime_ns) => {
            staged
                .file
                .set_permissions(std::fs::Permissions::from_mode(mode))
                .at("chmod", &staged.path)?;
            mtime_ns
        }
        Attributes::Meta(meta) => {
            crate::folder::meta::apply_meta(&staged.path, meta, false, repository.meta_options())?;
            meta.mtime_ns
        }
    };
    staged
        .file
        .set_modified(system_time(mtime_ns))
        .at("set mtime", &staged.path)?;
    let destination = path.under(root);
    if staged.database {
        remove_companions(&destination)?;
    }
    let exchanged = crate::fsutil::replace_file(&staged.path, &destination)?;
    chunks.installed(&staged, destination, seq);
    Ok(exchanged.then(|| staged.path.clone()))
}

/// Before a database is put at `destination`: a `-wal` or `-journal` left beside it
/// belongs to another instant, and SQLite would apply it to this database. (Never
/// recorded: see `sqlite`.)
pub(super) fn remove_companions(destination: &Path) -> Result<()> {
    for companion in crate::folder::read::sqlite::companions(destination) {
        match std::fs::symlink_metadata(&companion) {
            Ok(metadata) if !metadata.is_dir() => {
                std::fs::remove_file(&companion).at("remove", &companion)?
            }
            _ => {}
        }
    }
    Ok(())
}

/// The unit in which zeros are left as holes: a file-system block.
const SPARSE_BLOCK: u64 = 4096;

/// Write `bytes` at the file's position (`offset`), leaving every whole block of
/// zeros (aligned in the file) as a hole: a sparse file stays sparse, as `rsync -S`
/// keeps it. The caller sizes the file at the end. Whether a hole was left.
fn write_leaving_holes(file: &mut File, bytes: &[u8], offset: u64) -> std::io::Result<bool> {
    let mut holes = false;
    // Bytes from `run` to `at` are still to write, in one call.
    let mut run = 0usize;
    let mut at = 0usize;
    while at < bytes.len() {
        let position = offset + at as u64;
        let block_end = (position / SPARSE_BLOCK + 1) * SPARSE_BLOCK;
        let end = bytes.len().min(at + (block_end - position) as usize);
        let piece = &bytes[at..end];
        let whole_block =
            position.is_multiple_of(SPARSE_BLOCK) && piece.len() as u64 == SPARSE_BLOCK;
        if whole_block && piece.iter().all(|byte| *byte == 0) {
            file.write_all(&bytes[run..at])?;
            file.seek(std::io::SeekFrom::Current(piece.len() as i64))?;
            holes = true;
            run = end;
        }
        at = end;
    }
    file.write_all(&bytes[run..])?;
    Ok(holes)
}

/// The metadata a written file gets: a format-1 `Put`'s mode and mtime, or all of it.
#[derive(Clone, Copy)]
pub(super) enum Attributes<'a> {
    Legacy(u32, i64),
    Meta(&'a crate::folder::meta::Meta),
}
