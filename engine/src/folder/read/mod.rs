//! Reading one file of the folder as a version it really had (invariant 10): a
//! *stable* read (its times and size unchanged across the read, else redone from a
//! quick copy), or, for a SQLite database, a copy taken through SQLite itself at a
//! transaction boundary (`sqlite`).

pub mod reflink;
pub mod sparse;
pub mod sqlite;

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::chunk_store::chunking::store_content;
use crate::error::{Error, IoContext, Result};
use crate::log::event::Change;
use crate::path::RelPath;
use crate::repository::Repository;

/// What reading one file gave.
#[derive(Debug)]
pub enum Captured {
    /// The file as it was at one instant, as a `File` (or, from the diff, a `SetMeta`).
    Put(Box<Change>),
    /// What the index already holds (set by the diff, never by `capture_file`).
    Same,
    /// Nothing to record: the file vanished, turned into something else, or cannot be
    /// read (its last recorded version is kept).
    Gone,
    /// Written during every try: no version could be read whole.
    Unstable,
}

/// How many times `capture_file` reads a file that changes while it is read.
pub const STABLE_READ_TRIES: u32 = 4;

/// Read one file (never through a symlink) into the chunk store and describe it as a
/// `Put`: a version the file really had at one instant (invariant 10).
///
/// A read is *stable* when the file's size, mtime and ctime are the same before and
/// after it and the read found exactly `size` bytes. Any `write(2)` moves mtime and
/// ctime, and Linux (6.13 and later, multigrain timestamps) gives a file whose times
/// were just queried a fresh fine-grained time on its next change, so a write that
/// began during the read cannot hide in the same clock tick. But a write already under
/// way when the first stat was taken moved the times before it: its copying can
/// overlap the read with the stats unchanged (seen under load: 3,072 blocks of one
/// pass and 1,024 of the next). So a file changed so recently that a write of it
/// may still be copying (100 ms plus 16 ns a byte) is copied twice, quickly, and
/// taken only when both copies hold the same bytes with the stats unchanged — a write
/// in progress moves on between the copies. Where the file system lets a reader wait
/// for a write under way (ext4, tmpfs), such a file is instead read in place once
/// that wait, made after the first stat, has returned: the write that set the times
/// it holds is then done (`writers_waited`). A write(2) stalled through both copies, or
/// longer than that window, is waited out where the file system lets a reader wait
/// for one (`wait_for_writers`: ext4, tmpfs): before the first stat and between the
/// two copies. Elsewhere that stall is what remains; a clone, below, has none. A read that overlapped a
/// write is redone, a few times with a growing pause, copying the file first (into
/// memory, or a temporary file in `data_dir` when large) so that only the copy, not
/// the hashing, must fit between two writes; then `Unstable`. Where the file system
/// clones files (XFS, btrfs), the clone is the stable source instead (`reflink`).
///
/// A file that starts with SQLite's header is copied through SQLite instead
/// (`sqlite::snapshot`: a committed state), unless SQLite refuses it.
///
/// `known`: the file's metadata as the scan that chose it just read it; its extended
/// attributes are taken from there rather than read again (owner, mode and mtime come
/// from the read's own stat). `previous`: what the index holds for the path; a large
/// file's last chunks there are compared rather than cut again where they still hold
/// (`rechunk`).
pub fn capture_file(
    root: &Path,
    repository: &Repository,
    path: &RelPath,
    known: Option<&crate::folder::meta::Meta>,
    previous: Option<&crate::folder::index::Entry>,
) -> Result<Captured> {
    let full = path.under(root);
    let mut as_database = true;
    for attempt in 0..STABLE_READ_TRIES {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(2 << attempt));
        }
        // No SQLite connection of this process is open while this descriptor is.
        let plain = crate::folder::read::sqlite::plain_descriptor_guard();
        // Beneath the root only, through no symlink: a directory swapped for one since
        // the scan (ELOOP) makes the path gone, never a read outside the folder.
        let file: File = match crate::fsutil::open_beneath(
            root,
            path.as_bytes(),
            libc::O_RDONLY | libc::O_NONBLOCK,
        ) {
            Ok(file) => file,
            Err(error)
                if error.kind() == std::io::ErrorKind::NotFound
                    || error.kind() == std::io::ErrorKind::NotADirectory
                    || matches!(error.raw_os_error(), Some(libc::ELOOP | libc::EXDEV)) =>
            {
                return Ok(Captured::Gone)
            }
            Err(error) if crate::folder::skipped::path_problem(&error).is_some() => {
                // One unreadable file must not stop the capture of every other one: keep
                // its last recorded state and say so (once; `status` lists it).
                crate::folder::skipped::note(
                    &full,
                    crate::folder::skipped::path_problem(&error).unwrap_or_default(),
                );
                return Ok(Captured::Gone);
            }
            Err(error) => {
                return Err(Error::Io {
                    op: "open",
                    path: full,
                    source: error,
                })
            }
        };
        // Wait out a write(2) already under way (see `wait_for_writers`): one that
        // begins after this is recent at `before`, so the file is copied twice —
        // unless the file system lets this wait, again after `before`, for a write that
        // set the times `before` holds: then one still copying is done before the read
        // begins, and one begun after `before` moves the times (`writers_waited`).
        wait_for_writers(&file);
        let before = file.metadata().at("stat", &full)?;
        if !before.is_file() {
            return Ok(Captured::Gone);
        }
        let recent = recently_modified(&before);
        let waited = recent && writers_waited(&file, &before);
        if waited {
            wait_for_writers(&file);
        }
        // The file's first bytes, read once: SQLite's header is looked for in them,
        // and a plain read of a file left alone goes on from there.
        let head = read_head(&file, before.len()).at("read", &full)?;
        if as_database
            && before.len() >= crate::folder::read::sqlite::MIN_DATABASE_BYTES
            && crate::folder::read::sqlite::is_header(&head)
        {
            drop(file);
            drop(plain);
            match capture_database(repository, root, path, &full, &before, &head, known)? {
                Some(captured) => return Ok(captured),
                None => {
                    // Refused by SQLite: read as any other file.
                    as_database = false;
                    continue;
                }
            }
        }
        // Where the file system clones (reflink), a clone is a version the file had at
        // one instant, however busy it is: the stable source for a large file, or for
        // any file once a plain read has overlapped a write.
        if attempt > 0 || before.len() >= CLONE_FIRST_BYTES {
            match crate::folder::read::reflink::clone_file(
                &file,
                &repository.data_dir().join("capture"),
            ) {
                Ok(Some(clone)) => {
                    // A clone shares the file's extents: its holes are holes.
                    let stored = crate::folder::read::sparse::store_file(
                        &clone,
                        repository.chunks(),
                        &full,
                        previous_chunks(previous),
                    )?;
                    // A write between `before` and the clone leaves an older mtime in
                    // the record than on disk: the rescan then records the file again.
                    return Ok(Captured::Put(Box::new(file_change(
                        path, &full, &before, stored, known,
                    ))));
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(path = %full.display(), %error, "cannot clone the file; reading it instead");
                }
            }
        }
        // A write(2) already under way when `before` was taken moved the times before
        // it, not after: its copying can overlap a read with the stats unchanged. So a
        // recently changed file is copied twice, quickly: the same bytes twice, with the
        // stats unchanged, is a version it had (a write in progress would have moved on
        // between the two copies).
        let stored = if attempt == 0 && (!recent || waited) {
            // Chunk and hash as it is read: the cheap way, for a file left alone. A
            // file with holes is read only where it has data (`sparse`): its holes
            // become zero-chunk references, never read. Either way the stats are
            // compared after the read, so a hole filled or punched meanwhile (both
            // move mtime and ctime) makes the read redone.
            let layout = if crate::folder::read::sparse::may_have_holes(&before) {
                crate::folder::read::sparse::layout(&file, before.len()).at("seek", &full)?
            } else {
                None
            };
            let stored = match layout {
                Some(layout) => crate::folder::read::sparse::store_sparse(
                    &file,
                    &layout,
                    repository.chunks(),
                    &full,
                )?,
                None => store_against(
                    std::io::Read::chain(head.as_slice(), &file),
                    repository.chunks(),
                    &full,
                    previous_chunks(previous),
                )?,
            };
            let after = file.metadata().at("stat", &full)?;
            if !same_version(&before, &after) || stored.size != after.len() {
                tracing::debug!(path = %full.display(), "the file changed while it was read; copying it first");
                continue;
            }
            stored
        } else {
            // Written while it was read: copy it first (as fast as the kernel can),
            // so the window a write must miss is the copy's, not the hashing's.
            // Between the copies, wait out a write under way during the first (it
            // ends before the second begins, so the two differ); a write begun after
            // `before` moves the times.
            let copies = copy_quickly(&file, repository.data_dir(), &full).and_then(|first| {
                Ok(match first {
                    Some(first) => {
                        wait_for_writers(&file);
                        copy_quickly(&file, repository.data_dir(), &full)?
                            .map(|second| (first, second))
                    }
                    None => None,
                })
            });
            let (copy, again) = match copies {
                Ok(Some(copies)) => copies,
                Ok(None) => continue,
                Err(error) => {
                    // This file stays unread this time (a full data_dir, say); capture
                    // goes on with the others.
                    tracing::warn!(%error, "cannot copy a file that changes while it is read");
                    continue;
                }
            };
            let after = file.metadata().at("stat", &full)?;
            if !same_version(&before, &after) || !same_bytes(&copy, &again, &full)? {
                tracing::debug!(path = %full.display(), attempt, "the file changed while it was copied; copying it again");
                continue;
            }
            drop(again);
            let stored = match copy {
                QuickCopy::Memory(bytes) => {
                    store_content(bytes.as_slice(), repository.chunks(), &full)?
                }
                QuickCopy::File(temp) => crate::folder::read::sparse::store_file(
                    &temp,
                    repository.chunks(),
                    &full,
                    previous_chunks(previous),
                )?,
            };
            if stored.size != before.len() {
                continue;
            }
            stored
        };
        return Ok(Captured::Put(Box::new(file_change(
            path, &full, &before, stored, known,
        ))));
    }
    Ok(Captured::Unstable)
}

/// Store the content `reader` gives: compared with `previous` (a large file's last
/// version's chunks) where given, so that only what changed is cut and hashed again
/// (`rechunk`); else cut afresh.
pub(crate) fn store_against(
    reader: impl std::io::Read,
    store: &crate::chunk_store::ChunkStore,
    full: &Path,
    previous: Option<&[crate::log::event::ChunkRef]>,
) -> Result<crate::chunk_store::chunking::Chunked> {
    let Some(previous) = previous else {
        return store_content(reader, store, full);
    };
    let started = crate::clock::instant();
    let rechunked =
        crate::chunk_store::rechunk::store_content_since(reader, store, full, previous)?;
    tracing::debug!(
        path = %full.display(),
        size = rechunked.chunked.size,
        reused = rechunked.reused_bytes,
        ms = started.elapsed().as_secs_f64() * 1e3,
        "read against its last version"
    );
    Ok(rechunked.chunked)
}

/// A recorded file of more than `REUSE_AFTER_CHUNKS` chunks: its last version's
/// chunks, for `rechunk::store_content_since`.
fn previous_chunks(
    previous: Option<&crate::folder::index::Entry>,
) -> Option<&[crate::log::event::ChunkRef]> {
    match previous {
        Some(crate::folder::index::Entry::File { chunks, .. })
            if chunks.len() > REUSE_AFTER_CHUNKS =>
        {
            Some(chunks)
        }
        _ => None,
    }
}

/// Below this many chunks (1 MiB on average) a file is cut afresh: comparing would
/// save little.
const REUSE_AFTER_CHUNKS: usize = 16;

/// The `File` change for the content `stored` of the file at `full` (`path`), whose
/// stat before the read was `before`: its metadata read now, its mtime from `before`.
fn file_change(
    path: &RelPath,
    full: &Path,
    before: &std::fs::Metadata,
    stored: crate::chunk_store::chunking::Chunked,
    known: Option<&crate::folder::meta::Meta>,
) -> Change {
    let (xattrs, names) = match known {
        Some(known) => (known.xattrs.clone(), known.names.clone()),
        None => crate::folder::meta::read_xattrs(full),
    };
    let meta = crate::folder::meta::Meta::from_stat(before, xattrs, names);
    Change::File {
        path: path.clone(),
        meta,
        size: stored.size,
        content: stored.content,
        chunks: stored.chunks,
    }
}

/// Whether `wait_for_writers` waits for a `write(2)` on `file`'s file system (ext4,
/// tmpfs; remembered per device). Called after `before` was taken, it then makes a
/// plain read stable with nothing copied: a write that set the times in `before` has
/// finished when the wait returns, and one that begins after `before` moves the times
/// (multigrain timestamps), so the stats after the read differ.
fn writers_waited(file: &File, before: &std::fs::Metadata) -> bool {
    use std::os::fd::AsRawFd;
    static KNOWN: std::sync::Mutex<Vec<(u64, bool)>> = std::sync::Mutex::new(Vec::new());
    let device = before.dev();
    let mut known = KNOWN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, waits)) = known.iter().find(|(known, _)| *known == device) {
        return *waits;
    }
    // SAFETY: fstatfs fills the zeroed struct this function owns, for a descriptor it
    // borrows.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    let waits = unsafe { libc::fstatfs(file.as_raw_fd(), &mut stat) } == 0
        && [EXT4_SUPER_MAGIC, TMPFS_MAGIC].contains(&(stat.f_type as i64));
    known.push((device, waits));
    waits
}

/// `statfs` types of file systems whose buffered writes hold the inode's lock
/// exclusively for the whole `write(2)` while `lseek(SEEK_DATA)` takes it shared.
const EXT4_SUPER_MAGIC: i64 = 0xEF53;
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Return once no `write(2)` of `file` is under way, where the file system lets a
/// reader wait for one: ext4 and tmpfs hold the inode's lock exclusively for the
/// whole of a buffered write, and `lseek(SEEK_DATA)` takes it shared. (XFS and btrfs
/// do not — there the clone is the stable source.) The offset is put back to the
/// start. Measured need: under load, a 16 MiB `pwrite` stalled through both quick
/// copies, and a version of two passes was recorded.
fn wait_for_writers(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: lseek on a descriptor this function borrows; no memory is passed.
    unsafe {
        libc::lseek(file.as_raw_fd(), 0, libc::SEEK_DATA);
        libc::lseek(file.as_raw_fd(), 0, libc::SEEK_SET);
    }
}

/// How much of a file `read_head` reads: all of a small file, in one call.
const HEAD_BYTES: u64 = 64 << 10;

/// The first `HEAD_BYTES` (or `size`, when smaller) bytes of `file`, read from its
/// start, leaving its offset after them; fewer if it ends sooner.
fn read_head(file: &File, size: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut head = Vec::with_capacity(size.min(HEAD_BYTES) as usize);
    let reader = file;
    reader.take(size.min(HEAD_BYTES)).read_to_end(&mut head)?;
    Ok(head)
}

/// Files from this size on are cloned before they are read where the file system can
/// (`reflink`); smaller ones are read in place first (cheaper than a clone's flush).
const CLONE_FIRST_BYTES: u64 = 1 << 20;

/// Files up to this size are copied into memory when they must be read quickly;
/// larger ones into a temporary file in `data_dir`.
const QUICK_COPY_MEMORY_BYTES: u64 = 64 << 20;

/// A file's bytes copied aside.
enum QuickCopy {
    Memory(Vec<u8>),
    File(File),
}

/// Copy `file` from its start, in memory or (large) into `data_dir/capture/` with
/// the kernel's copy (`copy_file_range`). `None` if the copy was not the whole file.
fn copy_quickly(file: &File, data_dir: &Path, what: &Path) -> Result<Option<QuickCopy>> {
    use std::io::{Read, Seek};
    let mut reader = file;
    reader.rewind().at("seek", what)?;
    let size = file.metadata().at("stat", what)?.len();
    if size <= QUICK_COPY_MEMORY_BYTES {
        let mut bytes = Vec::with_capacity(size as usize);
        reader.read_to_end(&mut bytes).at("read", what)?;
        return Ok(Some(QuickCopy::Memory(bytes)));
    }
    let dir = data_dir.join("capture");
    std::fs::create_dir_all(&dir).at("create", &dir)?;
    // Unnamed (O_TMPFILE): gone with its descriptor, whatever happens.
    let mut temp = tempfile::tempfile_in(&dir).at("create", &dir)?;
    // A file with holes: only its data is copied, its holes stay holes.
    let metadata = file.metadata().at("stat", what)?;
    let layout = if crate::folder::read::sparse::may_have_holes(&metadata) {
        crate::folder::read::sparse::layout(file, size).at("seek", what)?
    } else {
        None
    };
    let copied = match layout {
        Some(layout) => crate::folder::read::sparse::copy_data(file, &layout, &temp, what)?,
        None => std::io::copy(&mut reader, &mut temp).at("copy", what)?,
    };
    temp.rewind().at("seek", &dir)?;
    Ok((copied == size).then_some(QuickCopy::File(temp)))
}

/// A write(2) of the whole file started at its ctime is taken to be done after this
/// long, plus `CONFIRM_NS_PER_BYTE` for each byte (64 MB/s, far below what a write
/// into the page cache takes): a file changed more recently is copied twice.
const CONFIRM_WINDOW_NS: i128 = 100_000_000;
const CONFIRM_NS_PER_BYTE: i128 = 16;

/// Whether a write(2) may still be copying into the file (see `capture_file`).
fn recently_modified(metadata: &std::fs::Metadata) -> bool {
    let now = crate::clock::since_unix_epoch()
        .map(|since| since.as_nanos() as i128)
        .unwrap_or(i128::MAX);
    let changed = metadata.ctime() as i128 * 1_000_000_000 + metadata.ctime_nsec() as i128;
    now - changed < CONFIRM_WINDOW_NS + metadata.len() as i128 * CONFIRM_NS_PER_BYTE
}

/// Whether two quick copies hold the same bytes (large ones compared by hash, after
/// both were taken).
fn same_bytes(first: &QuickCopy, second: &QuickCopy, what: &Path) -> Result<bool> {
    use std::io::Seek;
    let hash = |copy: &QuickCopy| -> Result<blake3::Hash> {
        match copy {
            QuickCopy::Memory(bytes) => Ok(blake3::hash(bytes)),
            QuickCopy::File(file) => {
                // Positional reads, holes not read (`sparse`).
                let hash = crate::folder::read::sparse::hash_file(file, what)?;
                let mut reader = file;
                reader.rewind().at("seek", what)?;
                Ok(blake3::Hash::from_bytes(hash.0))
            }
        }
    };
    Ok(match (first, second) {
        (QuickCopy::Memory(left), QuickCopy::Memory(right)) => left == right,
        _ => hash(first)? == hash(second)?,
    })
}

/// Whether two stats of one open file show the same version of it.
fn same_version(before: &std::fs::Metadata, after: &std::fs::Metadata) -> bool {
    before.len() == after.len()
        && before.mtime() == after.mtime()
        && before.mtime_nsec() == after.mtime_nsec()
        && before.ctime() == after.ctime()
        && before.ctime_nsec() == after.ctime_nsec()
}

/// Capture the database at `full` through SQLite (`before` is its stat, for mode and
/// mtime; `head` its first bytes). `None` when SQLite refuses it (read it as a plain
/// file then); `Unstable` when a writer kept it locked or changed it during a copy
/// that could not be held under one lock.
fn capture_database(
    repository: &Repository,
    root: &Path,
    path: &RelPath,
    full: &Path,
    before: &std::fs::Metadata,
    head: &[u8],
    known: Option<&crate::folder::meta::Meta>,
) -> Result<Option<Captured>> {
    if let Some(page_size) = crate::folder::read::sqlite::wal_page_size(head) {
        match crate::folder::read::sqlite::frames::capture(
            root,
            full,
            repository.data_dir(),
            repository.chunks(),
            page_size,
        )? {
            crate::folder::read::sqlite::frames::Outcome::Version { chunked, .. } => {
                return Ok(Some(Captured::Put(Box::new(file_change(
                    path, full, before, chunked, known,
                )))));
            }
            crate::folder::read::sqlite::frames::Outcome::Busy => {
                return Ok(Some(Captured::Unstable))
            }
            crate::folder::read::sqlite::frames::Outcome::Refused(reason) => {
                tracing::warn!(path = %full.display(), %reason, "SQLite cannot open this file although it starts like a database; reading it as a plain file");
                return Ok(None);
            }
            // SQLite's backup, below.
            crate::folder::read::sqlite::frames::Outcome::Fallback => {}
        }
    }
    match crate::folder::read::sqlite::snapshot(
        root,
        full,
        repository.data_dir(),
        head,
        before.len(),
    )? {
        crate::folder::read::sqlite::Taken::Copy(snapshot) => {
            tracing::debug!(
                path = %full.display(),
                lock_ms = snapshot.lock_held.as_secs_f64() * 1e3,
                cloned = snapshot.cloned,
                "copied a SQLite database at a transaction boundary"
            );
            let stored = store_content(&snapshot.file, repository.chunks(), full)?;
            Ok(Some(Captured::Put(Box::new(file_change(
                path, full, before, stored, known,
            )))))
        }
        crate::folder::read::sqlite::Taken::Busy => Ok(Some(Captured::Unstable)),
        crate::folder::read::sqlite::Taken::Refused(reason) => {
            tracing::warn!(path = %full.display(), %reason, "SQLite cannot copy this file although it starts like a database; reading it as a plain file");
            Ok(None)
        }
    }
}
