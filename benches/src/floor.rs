//! The floor of a small-files copy on this machine: what writing a folder's files costs
//! the kernel with nothing else to do — no network, no log, no chunk store, no check —
//! measured in the same run as standin and rsync, so a ratio against rsync can be read
//! against what any replica writing the same files must spend.
//!
//! Each file is written as standin's passive writes a new file (an unnamed file,
//! `O_TMPFILE`, created with its permission bits, linked at its path; owner and mode
//! set on the descriptor where they differ, times set), on
//! as many threads as the passive uses, a directory to a thread; then one `syncfs`.
//! The files' bytes are read into memory first and are not counted.
//!
//! `versions_floor` is the same for an update: the changed files' new versions, each
//! written whole (what a replica that never shows a half-written file must write where
//! the file system cannot clone).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One file of the source folder, held in memory.
struct Source {
    name: CString,
    bytes: Vec<u8>,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: libc::timespec,
}

/// One directory of the source folder and its files (the folders benchmarked are
/// one level deep: the small corpus's 100 directories).
struct Directory {
    relative: PathBuf,
    files: Vec<Source>,
}

/// Copy the files under `source` (one level of directories, and files at the top) to
/// `target` (which must not exist) the cheapest way a replica can, on `threads`
/// threads; the time from the first file created to `syncfs` returning.
pub fn files_floor(source: &Path, target: &Path, threads: usize) -> std::io::Result<Duration> {
    let directories = read_source(source)?;
    write_directories(&directories, target, threads)
}

/// The floor of an update that never shows a half-written file where the file system
/// cannot clone: each of `changed` (files of the source folder, after their changes)
/// written whole as a new file under `target` (which must not exist; one directory
/// each, so equal names never meet), on `threads` threads, then `syncfs`. Whatever a
/// replica does to find what changed, it must at least write this.
pub fn versions_floor(
    changed: &[PathBuf],
    target: &Path,
    threads: usize,
) -> std::io::Result<Duration> {
    let directories = changed
        .iter()
        .enumerate()
        .map(|(index, path)| {
            Ok(Directory {
                relative: PathBuf::from(format!("v{index}")),
                files: vec![read_file(path)?],
            })
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    write_directories(&directories, target, threads)
}

/// Write `directories` under `target` (created here, with their directories, before
/// the clock starts), a directory to a thread in turn; the time from the first file
/// created to `syncfs` returning.
fn write_directories(
    directories: &[Directory],
    target: &Path,
    threads: usize,
) -> std::io::Result<Duration> {
    std::fs::create_dir(target)?;
    for directory in directories {
        if !directory.relative.as_os_str().is_empty() {
            std::fs::create_dir(target.join(&directory.relative))?;
        }
    }
    let threads = threads.max(1);
    let started = Instant::now();
    let failures: Vec<std::io::Error> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|lane| {
                scope.spawn(move || -> std::io::Result<()> {
                    for directory in directories.iter().skip(lane).step_by(threads) {
                        let path = target.join(&directory.relative);
                        for file in &directory.files {
                            write_unnamed(&path, file)?;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|handle| match handle.join() {
                Ok(Ok(())) => None,
                Ok(Err(error)) => Some(error),
                Err(_) => Some(std::io::Error::other("a floor writer thread panicked")),
            })
            .collect()
    });
    if let Some(error) = failures.into_iter().next() {
        return Err(error);
    }
    let root = std::fs::File::open(target)?;
    // SAFETY: syncfs on a descriptor this function owns.
    if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&root)) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(started.elapsed())
}

/// The top directory's files and each subdirectory's, read whole.
fn read_source(source: &Path) -> std::io::Result<Vec<Directory>> {
    let mut directories = vec![Directory {
        relative: PathBuf::new(),
        files: Vec::new(),
    }];
    for item in std::fs::read_dir(source)? {
        let item = item?;
        if item.file_type()?.is_dir() {
            let mut files = Vec::new();
            for inner in std::fs::read_dir(item.path())? {
                let inner = inner?;
                if inner.file_type()?.is_dir() {
                    return Err(std::io::Error::other(format!(
                        "{}: the floor copies one level of directories only",
                        inner.path().display()
                    )));
                }
                files.push(read_file(&inner.path())?);
            }
            directories.push(Directory {
                relative: PathBuf::from(item.file_name()),
                files,
            });
        } else {
            let file = read_file(&item.path())?;
            directories[0].files.push(file);
        }
    }
    Ok(directories)
}

fn read_file(path: &Path) -> std::io::Result<Source> {
    let metadata = std::fs::symlink_metadata(path)?;
    if !metadata.is_file() {
        return Err(std::io::Error::other(format!(
            "{}: the floor copies regular files only",
            path.display()
        )));
    }
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{}: no file name", path.display())))?;
    Ok(Source {
        name: CString::new(name.as_bytes()).map_err(std::io::Error::other)?,
        bytes: std::fs::read(path)?,
        mode: metadata.mode() & 0o7777,
        uid: metadata.uid(),
        gid: metadata.gid(),
        mtime: libc::timespec {
            tv_sec: metadata.mtime(),
            tv_nsec: metadata.mtime_nsec(),
        },
    })
}

/// Write one file unnamed in `directory`, set its metadata, link it by name.
fn write_unnamed(directory: &Path, file: &Source) -> std::io::Result<()> {
    let last = std::io::Error::last_os_error;
    let directory_c =
        CString::new(directory.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: plain system calls on a descriptor opened and closed here, with
    // NUL-terminated paths and buffers that outlive each call.
    unsafe {
        let descriptor = libc::open(
            directory_c.as_ptr(),
            libc::O_TMPFILE | libc::O_WRONLY | libc::O_CLOEXEC,
            (file.mode & 0o777) | 0o600,
        );
        if descriptor < 0 {
            return Err(last());
        }
        let result = (|| {
            let mut written = 0;
            while written < file.bytes.len() {
                let wrote = libc::write(
                    descriptor,
                    file.bytes[written..].as_ptr().cast(),
                    file.bytes.len() - written,
                );
                if wrote < 0 {
                    let error = last();
                    if error.kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(error);
                }
                written += wrote as usize;
            }
            // As the passive: a chown or chmod that would change nothing is not made.
            let mut now: libc::stat = std::mem::zeroed();
            if libc::fstat(descriptor, &mut now) != 0 {
                return Err(last());
            }
            let chown = (now.st_uid, now.st_gid) != (file.uid, file.gid);
            if chown && libc::fchown(descriptor, file.uid, file.gid) != 0 {
                return Err(last());
            }
            if (chown || now.st_mode & 0o7777 != file.mode)
                && libc::fchmod(descriptor, file.mode) != 0
            {
                return Err(last());
            }
            let times = [file.mtime, file.mtime];
            if libc::futimens(descriptor, times.as_ptr()) != 0 {
                return Err(last());
            }
            let destination = directory.join(std::ffi::OsStr::from_bytes(file.name.as_bytes()));
            let destination =
                CString::new(destination.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
            if libc::linkat(
                descriptor,
                c"".as_ptr(),
                libc::AT_FDCWD,
                destination.as_ptr(),
                libc::AT_EMPTY_PATH,
            ) == 0
            {
                return Ok(());
            }
            // Without CAP_DAC_READ_SEARCH: through /proc, as the passive does then.
            let error = last();
            if error.raw_os_error() != Some(libc::ENOENT) {
                return Err(error);
            }
            let proc = CString::new(format!("/proc/self/fd/{descriptor}"))
                .map_err(std::io::Error::other)?;
            if libc::linkat(
                libc::AT_FDCWD,
                proc.as_ptr(),
                libc::AT_FDCWD,
                destination.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            ) != 0
            {
                return Err(last());
            }
            Ok(())
        })();
        libc::close(descriptor);
        result
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn the_floor_copies_every_file_with_its_bytes_mode_and_time() {
        let work = tempfile::tempdir().unwrap();
        let source = work.path().join("source");
        crate::corpus::small_files(&source, 30, 3, 4096).unwrap();
        std::fs::write(source.join("top.txt"), b"at the top").unwrap();
        let odd = source.join("dir001/file00001.dat");
        std::fs::set_permissions(&odd, std::os::unix::fs::PermissionsExt::from_mode(0o640))
            .unwrap();
        let target = work.path().join("target");
        super::files_floor(&source, &target, 2).unwrap();
        let mut copied = 0;
        for dir in ["", "dir000", "dir001", "dir002"] {
            for item in std::fs::read_dir(source.join(dir)).unwrap() {
                let item = item.unwrap();
                if item.file_type().unwrap().is_dir() {
                    continue;
                }
                let there = target.join(dir).join(item.file_name());
                let (a, b) = (item.metadata().unwrap(), std::fs::metadata(&there).unwrap());
                assert_eq!(
                    std::fs::read(item.path()).unwrap(),
                    std::fs::read(&there).unwrap()
                );
                assert_eq!(
                    (a.mode(), a.mtime(), a.mtime_nsec()),
                    (b.mode(), b.mtime(), b.mtime_nsec()),
                    "{}",
                    there.display()
                );
                copied += 1;
            }
        }
        assert_eq!(copied, 31);
    }

    #[test]
    fn the_versions_floor_writes_each_changed_file_whole_even_under_one_name() {
        let work = tempfile::tempdir().unwrap();
        let (a, b) = (
            work.path().join("a/same.bin"),
            work.path().join("b/same.bin"),
        );
        for (path, fill) in [(&a, 1u8), (&b, 2u8)] {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, vec![fill; 100_000]).unwrap();
        }
        let target = work.path().join("floor");
        super::versions_floor(&[a.clone(), b.clone()], &target, 2).unwrap();
        assert_eq!(
            std::fs::read(target.join("v0/same.bin")).unwrap(),
            std::fs::read(&a).unwrap()
        );
        assert_eq!(
            std::fs::read(target.join("v1/same.bin")).unwrap(),
            std::fs::read(&b).unwrap()
        );
    }
}
