//! Small file-system helpers: directory fsync, `syncfs`, temporary names, clock.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, IoContext, Result};

/// fsync a directory, making the names in it durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    let file = File::open(dir).at("open", dir)?;
    crate::durability::guarded("fsync", dir, || file.sync_all())
}

/// `fdatasync` of `file` (at `path`), through the fail-stop latch (`durability`).
pub fn sync_data(file: &File, path: &Path) -> Result<()> {
    crate::durability::guarded("fdatasync", path, || file.sync_data())
}

/// `fsync` of `file` (at `path`), through the fail-stop latch (`durability`).
pub fn sync_all(file: &File, path: &Path) -> Result<()> {
    crate::durability::guarded("fsync", path, || file.sync_all())
}

/// Flush every dirty page of the file system that holds `path` (Linux `syncfs`).
/// One call makes a whole batch of small files durable: cheaper than an fsync each.
pub fn syncfs(path: &Path) -> Result<()> {
    let file = File::open(path).at("open", path)?;
    crate::durability::guarded("syncfs", path, || {
        // SAFETY: `file` is an open descriptor for the duration of the call.
        let status = unsafe { libc::syncfs(file.as_raw_fd()) };
        if status != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    })
}

/// How much of a large file is written before its write-back is started.
pub const WRITEBACK_STEP_BYTES: u64 = 8 << 20;

/// Ask the kernel to start writing back a range of `file` without waiting for it
/// (Linux `sync_file_range(SYNC_FILE_RANGE_WRITE)`), as PostgreSQL does with
/// `backend_flush_after`. Durability still comes from a later fsync or syncfs; this
/// only lets the disk work while the CPU goes on. Failure is harmless and ignored.
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    // SAFETY: `file` is an open descriptor; the call only schedules I/O.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as i64,
            len as i64,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh temporary file name (`path::TEMP_PREFIX`, the node's token), unique in
/// this process and across processes.
pub fn temp_name() -> Vec<u8> {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let count = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let pid = PID.get_or_init(std::process::id);
    let mut name = crate::path::TEMP_PREFIX.to_vec();
    name.extend(crate::path::temp_token());
    name.extend(format!("-{pid}-{count}").into_bytes());
    name
}

/// The clock's two readings, where the service has always found them (they live in
/// `clock`, the engine's one reader of the time).
pub use crate::clock::{monotonic_ms, now_ms};

/// A file's modification time in nanoseconds since the Unix epoch.
pub fn mtime_ns(metadata: &std::fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    metadata
        .mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(metadata.mtime_nsec())
}

/// A `SystemTime` from nanoseconds since the Unix epoch.
pub fn system_time(mtime_ns: i64) -> std::time::SystemTime {
    let epoch = std::time::UNIX_EPOCH;
    if mtime_ns >= 0 {
        epoch + std::time::Duration::from_nanos(mtime_ns as u64)
    } else {
        epoch - std::time::Duration::from_nanos(mtime_ns.unsigned_abs())
    }
}

/// Put the file at `temporary` in place of `destination`, as `rename` does; but when a
/// regular file is already there, exchange the two instead (Linux
/// `renameat2(RENAME_EXCHANGE)`, atomic like a rename) and return true: the old file
/// is then at `temporary`, for the caller to remove once that no longer delays
/// anything. Renaming over a file frees its inode and blocks inside the rename (and
/// ext4 starts the new file's write-back there too): about 130 µs a file on this
/// project's test machine, against 10 µs for the exchange. A new file costs one call
/// (`RENAME_NOREPLACE`); where the file system cannot do either, a plain rename is done.
pub fn replace_file(temporary: &Path, destination: &Path) -> Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let failed = |source: std::io::Error| Error::Io {
        op: "rename into place",
        path: destination.to_path_buf(),
        source,
    };
    // Not supported here (or not across these names): a plain rename will do.
    let unsupported = |error: &std::io::Error| {
        matches!(
            error.raw_os_error(),
            Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP | libc::EXDEV)
        )
    };
    let is_file = |path: &Path| {
        std::fs::symlink_metadata(path)
            .map(|metadata| metadata.file_type().is_file())
            .unwrap_or(false)
    };
    if let (Ok(from), Ok(to)) = (
        std::ffi::CString::new(temporary.as_os_str().as_bytes()),
        std::ffi::CString::new(destination.as_os_str().as_bytes()),
    ) {
        match rename_with(&from, &to, libc::RENAME_NOREPLACE) {
            Ok(()) => return Ok(false),
            Err(error) if error.raw_os_error() == Some(libc::EEXIST) || unsupported(&error) => {}
            Err(error) => return Err(failed(error)),
        }
        if is_file(destination) {
            match rename_with(&from, &to, libc::RENAME_EXCHANGE) {
                // Something else put there since the check (a directory, say) goes
                // back: a rename would have failed on it, and so does this.
                Ok(()) if !is_file(temporary) => {
                    let _ = rename_with(&from, &to, libc::RENAME_EXCHANGE);
                    return Err(failed(std::io::Error::other(
                        "something other than a file is there",
                    )));
                }
                Ok(()) => return Ok(true),
                // Gone meanwhile, or not supported: rename.
                Err(error) if error.raw_os_error() == Some(libc::ENOENT) || unsupported(&error) => {
                }
                Err(error) => return Err(failed(error)),
            }
        }
    }
    std::fs::rename(temporary, destination).map_err(failed)?;
    Ok(false)
}

/// `O_TMPFILE` was refused by the folder's file system once: not asked again.
static NO_UNNAMED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// An unnamed regular file (Linux `O_TMPFILE`) on the file system of `directory`, to
/// be given its name by `link_unnamed` once complete; `None` where that cannot be done
/// (no `O_TMPFILE` there, or no `/proc/self/fd` to link it through), and the caller
/// writes a temporary name instead. Nothing of it is left on disk if it is never linked
/// (or, without a journal, only until the next fsck after a crash). It is created with
/// `mode`'s permission bits (never setuid, setgid or sticky) and always the owner's
/// read and write, less the umask, so that the recorded mode is mostly there already
/// while the owner may still set `user.*` attributes on it without root (the kernel
/// checks those against the mode); no one can open it by name before it is linked.
pub fn create_unnamed(directory: &Path, mode: u32) -> std::io::Result<Option<File>> {
    use std::os::unix::fs::OpenOptionsExt;
    static PROC_FD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if NO_UNNAMED.load(Ordering::Relaxed)
        || !*PROC_FD.get_or_init(|| Path::new("/proc/self/fd").is_dir())
    {
        return Ok(None);
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode((mode & 0o777) | 0o600)
        .open(directory)
    {
        Ok(file) => Ok(Some(file)),
        // Not supported by this kernel or file system.
        Err(error)
            if matches!(
                error.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL | libc::ENOSYS)
            ) =>
        {
            NO_UNNAMED.store(true, Ordering::Relaxed);
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

/// `linkat(fd, "", AT_EMPTY_PATH)` was refused here (it needs `CAP_DAC_READ_SEARCH`):
/// unnamed files are linked through `/proc/self/fd` from then on.
static NO_EMPTY_PATH_LINK: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Give the unnamed `file` (from `create_unnamed`) the name `destination`: atomic,
/// and refused with `EEXIST` when anything is there (never replaced, never followed).
/// Linked by its descriptor where the process may (`AT_EMPTY_PATH`: no walk of
/// `/proc`), else through `/proc/self/fd`.
pub fn link_unnamed(file: &File, destination: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let invalid = || std::io::Error::from(std::io::ErrorKind::InvalidInput);
    let target =
        std::ffi::CString::new(destination.as_os_str().as_bytes()).map_err(|_| invalid())?;
    let status = |status: libc::c_int| {
        if status == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    let by_descriptor = !NO_EMPTY_PATH_LINK.load(Ordering::Relaxed);
    if by_descriptor {
        // SAFETY: an empty and a NUL-terminated path that live through the call;
        // `file` stays open.
        let linked = status(unsafe {
            libc::linkat(
                file.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_FDCWD,
                target.as_ptr(),
                libc::AT_EMPTY_PATH,
            )
        });
        match linked {
            // Without the capability the kernel answers ENOENT (as it would for a
            // missing directory): the other way tells which.
            Err(error) if matches!(error.raw_os_error(), Some(libc::ENOENT | libc::EPERM)) => {}
            other => return other,
        }
    }
    let source = std::ffi::CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|_| invalid())?;
    // SAFETY: two NUL-terminated paths that live through the call; `file` stays open.
    let linked = status(unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            source.as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    });
    if by_descriptor && linked.is_ok() {
        NO_EMPTY_PATH_LINK.store(true, Ordering::Relaxed);
    }
    linked
}

/// `openat2` is missing here (a kernel before 5.6) or refused (a seccomp filter):
/// `open_beneath` opens by the whole path from then on.
static NO_OPENAT2: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Open `relative` (a path inside `root`, without a leading `/`) with `flags`, following
/// no symlink anywhere on the way and never leaving `root` (`openat2` with
/// `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`): a directory of the folder swapped for a
/// symlink between a scan and this open cannot make the node read a file outside the
/// folder. A symlink on the path answers `ELOOP` (as `O_NOFOLLOW` does for the last
/// name), a way out of `root` `EXDEV`. Where the kernel has no `openat2`, the whole
/// path is opened with `O_NOFOLLOW` (which guards the last name only).
pub fn open_beneath(root: &Path, relative: &[u8], flags: libc::c_int) -> std::io::Result<File> {
    open_beneath_with(root, relative, flags, &NO_OPENAT2, openat2_beneath)
}

/// `open_beneath` with the `openat2` call and the memory of its absence given: the
/// fallback's path is tested on kernels that have `openat2`.
fn open_beneath_with(
    root: &Path,
    relative: &[u8],
    flags: libc::c_int,
    no_openat2: &std::sync::atomic::AtomicBool,
    openat2: impl Fn(&File, &std::ffi::CStr, libc::c_int) -> std::io::Result<File>,
) -> std::io::Result<File> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::OpenOptionsExt;
    let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let beneath = !no_openat2.load(Ordering::Relaxed);
    if beneath {
        let name = std::ffi::CString::new(relative)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(root)?;
        match openat2(&dir, &name, flags) {
            Ok(file) => return Ok(file),
            Err(error) if matches!(error.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => {}
            Err(error) => return Err(error),
        }
    }
    let full = root.join(std::ffi::OsStr::from_bytes(relative));
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(full);
    if beneath && opened.is_ok() {
        // The plain open did what `openat2` refused: it is not there (or filtered).
        no_openat2.store(true, Ordering::Relaxed);
    }
    opened
}

/// `openat2(dir, name, flags)` resolving beneath `dir` through no symlink.
fn openat2_beneath(dir: &File, name: &std::ffi::CStr, flags: libc::c_int) -> std::io::Result<File> {
    use std::os::fd::FromRawFd;
    // SAFETY: an all-zero `open_how` is its documented empty value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: a directory descriptor, a NUL-terminated path and an `open_how` of the
    // size passed, all alive through the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            name.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just returned, owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd as libc::c_int) })
}

/// `renameat2(a, b, flags)`: `RENAME_NOREPLACE` (fails with EEXIST if `b` exists) or
/// `RENAME_EXCHANGE` (swaps the two atomically).
fn rename_with(a: &std::ffi::CStr, b: &std::ffi::CStr, flags: libc::c_uint) -> std::io::Result<()> {
    // SAFETY: both are NUL-terminated paths that live through the call.
    let status = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    if status == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_beneath_follows_no_symlink_on_the_way_and_stays_in_its_root() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("f"), b"outside").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("d")).unwrap();
        std::fs::write(root.path().join("d/f"), b"inside").unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("link")).unwrap();
        std::os::unix::fs::symlink("d/f", root.path().join("last")).unwrap();
        let open = |relative: &[u8]| open_beneath(root.path(), relative, libc::O_RDONLY);
        let mut inside = String::new();
        std::io::Read::read_to_string(&mut open(b"d/f").unwrap(), &mut inside).unwrap();
        assert_eq!(inside, "inside");
        // A symlink in the middle of the path (O_NOFOLLOW alone would follow it) and as
        // the last name: refused, never read.
        for relative in [&b"link/f"[..], b"last"] {
            let error = open(relative).expect_err("opened through a symlink");
            assert_eq!(error.raw_os_error(), Some(libc::ELOOP), "{error}");
        }
        let error = open(b"d/../../x").expect_err("opened outside the root");
        assert!(
            matches!(error.raw_os_error(), Some(libc::EXDEV | libc::ENOENT)),
            "{error}"
        );
        assert_eq!(
            open(b"gone").unwrap_err().kind(),
            std::io::ErrorKind::NotFound
        );
    }

    #[test]
    fn without_openat2_the_whole_path_is_opened_refusing_a_symlink_as_last_name() {
        use std::sync::atomic::{AtomicBool, AtomicUsize};
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("d")).unwrap();
        std::fs::write(root.path().join("d/f"), b"inside").unwrap();
        std::os::unix::fs::symlink("d/f", root.path().join("last")).unwrap();
        for refusal in [libc::ENOSYS, libc::EPERM] {
            let (remembered, calls) = (AtomicBool::new(false), AtomicUsize::new(0));
            let open = |relative: &[u8]| {
                open_beneath_with(
                    root.path(),
                    relative,
                    libc::O_RDONLY,
                    &remembered,
                    |_, _, _| {
                        calls.fetch_add(1, Ordering::Relaxed);
                        Err(std::io::Error::from_raw_os_error(refusal))
                    },
                )
            };
            // Refused and nothing there: the fallback's answer, not remembered.
            assert_eq!(
                open(b"gone").unwrap_err().kind(),
                std::io::ErrorKind::NotFound
            );
            assert!(!remembered.load(Ordering::Relaxed));
            let mut inside = String::new();
            std::io::Read::read_to_string(&mut open(b"d/f").unwrap(), &mut inside).unwrap();
            assert_eq!(inside, "inside");
            assert!(remembered.load(Ordering::Relaxed), "errno {refusal}");
            assert_eq!(calls.load(Ordering::Relaxed), 2);
            let error = open(b"last").expect_err("opened through a symlink");
            assert_eq!(error.raw_os_error(), Some(libc::ELOOP), "{error}");
            assert_eq!(calls.load(Ordering::Relaxed), 2, "openat2 asked again");
        }
        // Any other refusal of openat2 is the answer: no second open by the path.
        let remembered = AtomicBool::new(false);
        let error = open_beneath_with(
            root.path(),
            b"d/f",
            libc::O_RDONLY,
            &remembered,
            |_, _, _| Err(std::io::Error::from_raw_os_error(libc::EXDEV)),
        )
        .unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::EXDEV));
        assert!(!remembered.load(Ordering::Relaxed));
    }

    #[test]
    fn a_file_replaced_is_exchanged_and_kept_at_the_temporary_name() {
        let dir = tempfile::tempdir().unwrap();
        let (temporary, destination) = (dir.path().join("tmp"), dir.path().join("file"));
        std::fs::write(&destination, b"old").unwrap();
        std::fs::write(&temporary, b"new").unwrap();
        assert!(replace_file(&temporary, &destination).unwrap());
        assert_eq!(std::fs::read(&destination).unwrap(), b"new");
        assert_eq!(std::fs::read(&temporary).unwrap(), b"old");

        // Nothing there: a plain rename, nothing kept.
        let other = dir.path().join("other");
        std::fs::write(&temporary, b"newer").unwrap();
        std::fs::remove_file(&destination).unwrap();
        assert!(!replace_file(&temporary, &other).unwrap());
        assert_eq!(std::fs::read(&other).unwrap(), b"newer");
        assert!(!temporary.exists());
    }

    #[test]
    fn a_directory_in_the_way_is_neither_exchanged_nor_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let (temporary, destination) = (dir.path().join("tmp"), dir.path().join("dir"));
        std::fs::create_dir(&destination).unwrap();
        std::fs::write(destination.join("inside"), b"kept").unwrap();
        std::fs::write(&temporary, b"new").unwrap();
        let error = replace_file(&temporary, &destination).unwrap_err();
        assert!(error.to_string().contains("dir"), "{error}");
        assert_eq!(std::fs::read(destination.join("inside")).unwrap(), b"kept");
        assert_eq!(std::fs::read(&temporary).unwrap(), b"new");
    }

    #[test]
    fn an_unnamed_file_appears_whole_at_a_new_name_and_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let Some(mut file) = create_unnamed(dir.path(), 0o600).unwrap() else {
            eprintln!("no O_TMPFILE here: nothing to check");
            return;
        };
        std::io::Write::write_all(&mut file, b"content").unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "unnamed until linked"
        );
        let destination = dir.path().join("file");
        link_unnamed(&file, &destination).unwrap();
        assert_eq!(std::fs::read(&destination).unwrap(), b"content");
        let other = dir.path().join("other");
        std::fs::write(&other, b"old").unwrap();
        let refused = link_unnamed(&file, &other).unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(libc::EEXIST));
        assert_eq!(std::fs::read(&other).unwrap(), b"old");
    }
}
