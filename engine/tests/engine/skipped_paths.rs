//! Paths that cannot be replicated (invariant 11): a path the kernel's path calls
//! cannot take, a special file or an unreadable directory is named once (`skipped`,
//! shown by `status`) and skipped, while everything else replicates — capture never
//! stops over one path.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::{replicate, snapshot, wait_for, Node};

/// Make directories of 250-byte names below `root` until the path is over `bytes`
/// long, relative to directory descriptors (a path call would refuse the last ones);
/// put a file in the deepest. Returns the deep directory's full path.
fn make_deep_tree(root: &Path, bytes: usize) -> PathBuf {
    let name = "d".repeat(250);
    let c_name = CString::new(name.clone()).unwrap();
    let open = |path: &CString, at: i32| {
        // SAFETY: a NUL-terminated path and a descriptor that is open (or AT_FDCWD).
        let fd = unsafe { libc::openat(at, path.as_ptr(), libc::O_DIRECTORY | libc::O_RDONLY) };
        assert!(fd >= 0, "openat: {}", std::io::Error::last_os_error());
        // SAFETY: a fresh descriptor owned by nobody else.
        unsafe { OwnedFd::from_raw_fd(fd) }
    };
    let mut dir = open(
        &CString::new(root.as_os_str().as_bytes()).unwrap(),
        libc::AT_FDCWD,
    );
    let mut full = root.to_path_buf();
    while full.as_os_str().len() <= bytes {
        // SAFETY: as above.
        let made = unsafe { libc::mkdirat(dir.as_raw_fd(), c_name.as_ptr(), 0o755) };
        assert_eq!(made, 0, "mkdirat: {}", std::io::Error::last_os_error());
        dir = open(&c_name, dir.as_raw_fd());
        full.push(&name);
    }
    let file = CString::new("deep.txt").unwrap();
    // SAFETY: as above.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            file.as_ptr(),
            libc::O_CREAT | libc::O_WRONLY,
            0o644,
        )
    };
    assert!(
        fd >= 0,
        "openat deep.txt: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a fresh descriptor.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    full
}

/// A 4,200-byte path in the folder: capture starts, every other file (before and
/// after the start) replicates, and the over-long path is named in the skipped list.
#[test]
fn a_path_too_long_for_the_kernel_is_named_and_the_rest_replicates() {
    let active = Node::new();
    let root = active.folder.canonicalize().unwrap();
    std::fs::write(root.join("before.txt"), b"before").unwrap();
    let deep = make_deep_tree(&root, 4_200);
    let capture = active.watch();
    std::fs::write(root.join("after.txt"), b"after").unwrap();
    assert!(
        wait_for(Duration::from_secs(20), || active
            .versions_of("after.txt")
            .last()
            .is_some_and(|content| content == b"after")),
        "a file written after start was not recorded"
    );
    capture.stop();
    assert_eq!(active.versions_of("before.txt"), vec![b"before".to_vec()]);
    let skipped = standin_engine::folder::skipped::under(&root);
    assert!(
        skipped
            .iter()
            .any(|(path, _)| deep.starts_with(root.join(path)) && path.len() >= 3_800),
        "the over-long path is not named: {skipped:?}"
    );
    let passive = Node::new();
    replicate(&active, &passive, 100);
    let copied = snapshot(&passive.folder);
    assert_eq!(
        copied.get("before.txt").map(|entry| entry.2.as_slice()),
        Some(&b"before"[..])
    );
    assert_eq!(
        copied.get("after.txt").map(|entry| entry.2.as_slice()),
        Some(&b"after"[..])
    );
    passive.assert_verified();
}

/// A FIFO is named once in the skipped list (not warned on every scan) and never
/// stops a scan; removed, it leaves the list.
#[test]
fn a_special_file_is_named_once_and_leaves_the_list_when_removed() {
    let node = Node::new();
    let root = node.folder.canonicalize().unwrap();
    let fifo = root.join("queue.fifo");
    let c_fifo = CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_fifo.as_ptr(), 0o644) }, 0);
    std::fs::write(root.join("plain.txt"), b"x").unwrap();
    standin_engine::folder::scan::reconcile(&root, &node.repository, 1).unwrap();
    standin_engine::folder::scan::reconcile(&root, &node.repository, 1).unwrap();
    let named = standin_engine::folder::skipped::under(&root);
    assert_eq!(named.len(), 1, "{named:?}");
    assert_eq!(named[0].0, "queue.fifo");
    assert_eq!(node.versions_of("plain.txt"), vec![b"x".to_vec()]);
    std::fs::remove_file(&fifo).unwrap();
    standin_engine::folder::scan::reconcile(&root, &node.repository, 1).unwrap();
    assert!(standin_engine::folder::skipped::under(&root).is_empty());
}
