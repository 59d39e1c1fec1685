//! Capture with the watcher running: debouncing, renames, removed trees, and changes
//! made while capture was stopped. Waits poll the log with a generous limit; no test
//! asserts a duration.

use std::io::Write;
use std::time::Duration;

use standin_engine::{Capture, CaptureOptions, Change};

use crate::byref::noise;
use crate::support::{wait_for, Node};

const LIMIT: Duration = Duration::from_secs(20);

fn options() -> CaptureOptions {
    CaptureOptions {
        settle_ms: 20,
        quiet_ms: 300,
        max_delay_ms: 10_000,
        rescan_interval_ms: 3_600_000,
    }
}

fn puts_of(node: &Node, path: &str) -> usize {
    node.all_events()
        .iter()
        .filter(|event| matches!(&event.body.change, Change::File { path: put, .. } if put.to_string() == path))
        .count()
}

#[test]
fn a_file_written_in_many_small_writes_is_recorded_once() {
    let node = Node::new();
    let capture = Capture::start(&node.folder, node.repository.clone(), 1, options()).unwrap();
    let mut file = std::fs::File::create(node.folder.join("growing.log")).unwrap();
    for line in 0..200 {
        writeln!(file, "line {line} of a file written a little at a time").unwrap();
        file.flush().unwrap();
        if line % 20 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    drop(file);
    assert!(wait_for(LIMIT, || puts_of(&node, "growing.log") >= 1));
    node.settle();
    assert_eq!(
        puts_of(&node, "growing.log"),
        1,
        "events: {:?}",
        node.all_events()
    );
    node.assert_verified();
    capture.stop();
}

#[test]
fn a_rename_is_recorded_as_a_rename() {
    let node = Node::new();
    std::fs::create_dir(node.folder.join("dir")).unwrap();
    std::fs::write(node.folder.join("dir/a.txt"), vec![7u8; 100_000]).unwrap();
    let capture = Capture::start(&node.folder, node.repository.clone(), 1, options()).unwrap();
    let before = node.repository.head().seq;
    assert!(before >= 2, "start-up reconcile records the existing tree");
    std::fs::rename(node.folder.join("dir/a.txt"), node.folder.join("dir/b.txt")).unwrap();
    std::fs::rename(node.folder.join("dir"), node.folder.join("moved")).unwrap();
    assert!(wait_for(LIMIT, || node.repository.head().seq >= before + 2));
    node.settle();
    let renames: Vec<_> = node
        .all_events()
        .into_iter()
        .filter(|event| matches!(event.body.change, Change::Rename { .. }))
        .collect();
    assert_eq!(renames.len(), 2, "{renames:?}");
    assert_eq!(
        puts_of(&node, "moved/b.txt"),
        0,
        "a rename ships no content"
    );
    node.assert_verified();
    capture.stop();
}

#[test]
fn a_removed_directory_tree_is_one_removal() {
    // The settle window must cover the whole `remove_dir_all`; a busy test machine
    // can stretch it, so this test gives it more room than the default.
    let options = CaptureOptions {
        settle_ms: 300,
        ..options()
    };
    let node = Node::new();
    for dir in ["tree", "tree/a", "tree/a/b"] {
        std::fs::create_dir(node.folder.join(dir)).unwrap();
        for index in 0..5 {
            std::fs::write(node.folder.join(dir).join(format!("f{index}")), b"x").unwrap();
        }
    }
    let capture = Capture::start(&node.folder, node.repository.clone(), 1, options).unwrap();
    let before = node.repository.head().seq;
    std::fs::remove_dir_all(node.folder.join("tree")).unwrap();
    assert!(wait_for(LIMIT, || node.repository.head().seq > before));
    node.settle();
    let after: Vec<_> = node
        .repository
        .log()
        .events_after(
            before,
            &node.repository.log().hash_at(before).unwrap().unwrap(),
            100,
        )
        .unwrap();
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(matches!(&after[0].body.change, Change::Remove { path } if path.to_string() == "tree"));
    node.assert_verified();
    capture.stop();
}

#[test]
fn changes_made_while_capture_was_stopped_are_recorded_at_start() {
    let node = Node::new();
    std::fs::create_dir(node.folder.join("keep")).unwrap();
    std::fs::write(node.folder.join("keep/old"), b"one").unwrap();
    std::fs::write(node.folder.join("gone"), b"two").unwrap();
    let capture = Capture::start(&node.folder, node.repository.clone(), 1, options()).unwrap();
    node.settle();
    capture.stop();
    let stopped_at = node.repository.head().seq;

    std::fs::write(node.folder.join("keep/old"), b"changed while down").unwrap();
    std::fs::remove_file(node.folder.join("gone")).unwrap();
    std::fs::create_dir(node.folder.join("empty")).unwrap();
    std::fs::write(node.folder.join("keep/new"), b"new").unwrap();
    assert_eq!(node.repository.head().seq, stopped_at);

    let capture = Capture::start(&node.folder, node.repository.clone(), 1, options()).unwrap();
    let kinds = crate::support::kinds(
        &node
            .repository
            .log()
            .events_after(
                stopped_at,
                &node.repository.log().hash_at(stopped_at).unwrap().unwrap(),
                100,
            )
            .unwrap(),
    );
    for expected in ["remove gone", "dir empty", "file keep/new", "file keep/old"] {
        assert!(
            kinds.contains(&expected.to_string()),
            "{expected} missing from {kinds:?}"
        );
    }
    node.assert_verified();
    capture.stop();
}

#[test]
fn special_files_are_skipped_and_symlinks_recorded_as_links() {
    let node = Node::new();
    std::os::unix::fs::symlink("/etc/hostname", node.folder.join("link")).unwrap();
    let fifo = node.folder.join("pipe");
    let path = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o644) }, 0);
    let events = node.capture();
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(
        matches!(&events[0].body.change, Change::Link { target, .. } if target == b"/etc/hostname")
    );
}

#[test]
fn the_start_up_reconcile_saves_the_index() {
    // The files already in the folder are recorded by the start-up reconcile; their
    // index entries must be saved with it, not left for the first change to pay for
    // (the whole folder's entries, 254 ms for 20,000 files).
    let node = Node::new();
    for name in ["a.txt", "b.txt", "c.txt"] {
        std::fs::write(node.folder.join(name), name).unwrap();
    }
    let capture = Capture::start(&node.folder, node.repository.clone(), 1, options()).unwrap();
    assert!(wait_for(LIMIT, || puts_of(&node, "c.txt") >= 1));
    assert!(
        wait_for(LIMIT, || node.repository.unsaved_index_paths() == 0),
        "{} index entries of the start-up reconcile still unsaved",
        node.repository.unsaved_index_paths()
    );
    capture.stop();
    node.assert_verified();
}

#[test]
fn an_idle_capture_saves_the_index_its_groups_changed() {
    // Recording leaves the index save to an idle moment (or a due time under constant
    // load); once capture has had nothing to record for a while, the saved index must
    // be at the log head — a crash then costs no replay of the log at open.
    let node = Node::new();
    let capture = Capture::start(&node.folder, node.repository.clone(), 1, options()).unwrap();
    for name in ["a.txt", "b.txt", "c.txt"] {
        std::fs::write(node.folder.join(name), name).unwrap();
    }
    assert!(wait_for(LIMIT, || puts_of(&node, "c.txt") >= 1));
    assert!(
        wait_for(LIMIT, || node.repository.unsaved_index_paths() == 0),
        "{} index entries still unsaved after capture went idle",
        node.repository.unsaved_index_paths()
    );
    capture.stop();
    node.assert_verified();
}

#[test]
fn a_large_file_changed_in_place_is_recorded_as_a_fresh_read_would_record_it() {
    // The second capture compares the file with its recorded chunks (`rechunk`) and
    // cuts only what changed: its record must be exactly a fresh chunking's, and the
    // node must verify against the disk.
    let node = Node::new();
    let path = node.folder.join("big.bin");
    let mut data = noise(24 << 20, 1);
    std::fs::write(&path, &data).unwrap();
    node.capture();
    data[12 << 20..(12 << 20) + 4096].copy_from_slice(&noise(4096, 2));
    data.extend_from_slice(&noise(1 << 20, 3));
    std::fs::write(&path, &data).unwrap();
    let events = node.capture();
    crate::support::assert_recorded_as_fresh(&node, &events, &data, &path);
    node.assert_verified();
}

/// While capture was stopped, a directory was moved away and something else took its
/// name (`mv data data.old; ln -s elsewhere data`, a file, a new directory). The scan
/// folds the move into one `Rename` and records the new entry at the old name after it
/// (before: the symlink first, refused with "a directory is in the way"; with a file,
/// reading the moved file's old name failed with "Not a directory").
#[test]
fn a_directory_moved_away_while_stopped_and_replaced_is_recorded_in_order() {
    for replacement in ["symlink", "file", "directory"] {
        let node = Node::new();
        let data = node.folder.join("data");
        std::fs::create_dir_all(data.join("sub")).unwrap();
        std::fs::write(data.join("sub/f"), b"records").unwrap();
        node.capture();
        std::fs::rename(&data, node.folder.join("data.old")).unwrap();
        match replacement {
            "symlink" => std::os::unix::fs::symlink("/elsewhere", &data).unwrap(),
            "file" => std::fs::write(&data, b"a file now").unwrap(),
            _ => std::fs::create_dir_all(data.join("sub")).unwrap(),
        }
        let kinds = crate::support::kinds(&node.capture());
        // A new directory at the old name keeps it a directory: no removal for the move
        // to be recognized by, so the files are recorded again under data.old (correct,
        // not folded).
        if replacement != "directory" {
            assert!(
                kinds.iter().any(|kind| kind == "rename data -> data.old"),
                "{replacement}: {kinds:?}"
            );
        }
        assert_replicates_verified(&node, replacement);
    }
}

/// As above with hard links inside the moved directory and a symlink at its old name:
/// the diff reads the other names of a changed file's link group, and the index's old
/// names (`data/sub/f`, `data/sub/g`) lie under the removed `data` — read through the
/// symlink they were a file outside the folder, recorded, and refused ("parent
/// data/sub does not exist"), stopping the reconcile. Pointing outside, and pointing
/// back at the moved directory (`ln -s data.old data`).
#[test]
fn hard_links_in_a_directory_moved_away_are_not_read_through_its_replacement() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(outside.path().join("sub")).unwrap();
    std::fs::write(outside.path().join("sub/f"), b"OUTSIDE THE FOLDER").unwrap();
    std::fs::write(outside.path().join("sub/g"), b"OUTSIDE THE FOLDER too").unwrap();
    for target in [outside.path().to_path_buf(), "data.old".into()] {
        let node = Node::new();
        let data = node.folder.join("data");
        std::fs::create_dir_all(data.join("sub")).unwrap();
        std::fs::write(data.join("sub/f"), b"records").unwrap();
        std::fs::hard_link(data.join("sub/f"), data.join("sub/g")).unwrap();
        node.capture();
        std::fs::rename(&data, node.folder.join("data.old")).unwrap();
        std::os::unix::fs::symlink(&target, &data).unwrap();
        std::fs::write(node.folder.join("data.old/sub/f"), b"records, changed").unwrap();
        let events = node.capture();
        let kinds = crate::support::kinds(&events);
        assert!(
            !kinds.iter().any(|kind| kind.starts_with("file data/")),
            "{target:?}: a file read through the symlink was recorded: {kinds:?}"
        );
        assert_replicates_verified(&node, &format!("{target:?}"));
    }
}

/// A scope's diff reads the other names of a hard-linked file it reads, wherever they
/// are, and says so (`read_outside`): capture counts a change there while it read as a
/// disturbance of the group. Before, it did not: `b/y` (linked with `a/x`) was read,
/// `a/x` read with it just after `a/y` was renamed onto it, and the group ended with
/// the moved content at `a/x` and `a/y` still there — a state the folder never had
/// (consistency::a_rename_onto_a_freed_link_name_is_one_step).
#[test]
fn a_diff_names_the_other_link_names_it_read_outside_its_scope() {
    let node = Node::new();
    for dir in ["a", "b"] {
        std::fs::create_dir(node.folder.join(dir)).unwrap();
    }
    std::fs::write(node.folder.join("a/x"), b"one file").unwrap();
    std::fs::hard_link(node.folder.join("a/x"), node.folder.join("b/y")).unwrap();
    std::fs::write(node.folder.join("a/z"), b"alone").unwrap();
    node.capture();
    std::fs::write(node.folder.join("b/y"), b"one file, changed through b/y").unwrap();
    let diff = diff_of(&node, "b/y");
    let read_outside: Vec<String> = diff
        .read_outside
        .iter()
        .map(|path| path.to_string())
        .collect();
    assert_eq!(read_outside, ["a/x"]);
    let changed: Vec<String> = diff
        .changes
        .iter()
        .filter_map(|change| match change {
            Change::File { path, .. } => Some(path.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(changed, ["b/y", "a/x"]);
    // a/x, still a link of the file read through b/y, takes what that read gave.
    let contents: Vec<standin_engine::Hash> = diff
        .changes
        .iter()
        .filter_map(|change| match change {
            Change::File { content, .. } => Some(*content),
            _ => None,
        })
        .collect();
    assert_eq!(contents[0], contents[1]);
    // Another file put at a/x since the index was written is read as itself.
    node.capture();
    std::fs::remove_file(node.folder.join("a/x")).unwrap();
    std::fs::write(node.folder.join("a/x"), b"another file now").unwrap();
    std::fs::write(node.folder.join("b/y"), b"changed through b/y again").unwrap();
    let diff = diff_of(&node, "b/y");
    let at_a_x = diff.changes.iter().find_map(|change| match change {
        Change::File { path, content, .. } if path.to_string() == "a/x" => Some(*content),
        _ => None,
    });
    assert_eq!(
        at_a_x,
        Some(standin_engine::Hash(
            *blake3::hash(b"another file now").as_bytes()
        ))
    );
    assert_eq!(diff.read_outside.len(), 1);
    // A scope without links reads nothing outside it.
    std::fs::write(node.folder.join("a/z"), b"alone, changed").unwrap();
    let diff = diff_of(&node, "a/z");
    assert!(diff.read_outside.is_empty(), "{:?}", diff.read_outside);
}

/// The names of one file recorded under another inode number than the disk's (after
/// a failover the index holds the other node's numbers): a write through one name is
/// recorded at every name. Before, only the group of the new number was looked up, and
/// the other names stayed stale until a rescan.
#[test]
fn a_write_through_one_name_reaches_names_recorded_under_another_number() {
    let node = Node::new();
    for dir in ["a", "b"] {
        std::fs::create_dir(node.folder.join(dir)).unwrap();
    }
    std::fs::write(node.folder.join("a/x"), b"one file").unwrap();
    std::fs::hard_link(node.folder.join("a/x"), node.folder.join("b/y")).unwrap();
    node.capture();
    // The same two names, now of another inode (as on the node that took over).
    std::fs::write(node.folder.join("a/x.new"), b"one file").unwrap();
    std::fs::rename(node.folder.join("a/x.new"), node.folder.join("a/x")).unwrap();
    std::fs::remove_file(node.folder.join("b/y")).unwrap();
    std::fs::hard_link(node.folder.join("a/x"), node.folder.join("b/y")).unwrap();
    std::fs::write(node.folder.join("b/y"), b"changed through b/y").unwrap();
    let diff = diff_of(&node, "b/y");
    let written = standin_engine::Hash(*blake3::hash(b"changed through b/y").as_bytes());
    let recorded: Vec<String> = diff
        .changes
        .iter()
        .filter_map(|change| match change {
            Change::File { path, content, .. } if *content == written => Some(path.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(recorded, ["b/y", "a/x"]);
}

/// What comparing `scope` of `node`'s folder with its index finds.
fn diff_of(node: &Node, scope: &str) -> standin_engine::folder::scan::Diff {
    let scope = standin_engine::RelPath::new(scope).unwrap();
    standin_engine::folder::scan::diff_scope(&node.folder, &node.repository, None, Some(&scope))
        .unwrap()
}

/// `node`'s folder verifies against its log, and a replica of that log ends up with the
/// same tree.
fn assert_replicates_verified(node: &Node, case: &str) {
    node.assert_verified();
    let replica = Node::new();
    crate::support::replicate(node, &replica, 1000);
    replica.assert_verified();
    assert_eq!(
        crate::support::snapshot(&node.folder),
        crate::support::snapshot(&replica.folder),
        "{case}"
    );
}

/// A directory the index holds, swapped for a symlink to a directory outside the folder
/// before a file below it is read (as between a scan and its read): the file reads as
/// gone. Opened by its whole path with `O_NOFOLLOW`, the read went through the symlink
/// and recorded the outside file's bytes as the folder's.
#[test]
fn a_file_is_never_read_through_a_directory_swapped_for_a_symlink() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("f"), b"OUTSIDE THE FOLDER").unwrap();
    let node = Node::new();
    let dir = node.folder.join("d");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("f"), b"inside").unwrap();
    node.capture();
    std::fs::remove_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(outside.path(), &dir).unwrap();
    let path = standin_engine::RelPath::new("d/f").unwrap();
    let previous = node.repository.lock_index().get(&path).cloned();
    let captured = standin_engine::folder::read::capture_file(
        &node.folder,
        &node.repository,
        &path,
        None,
        previous.as_ref(),
    )
    .unwrap();
    assert!(
        matches!(captured, standin_engine::folder::read::Captured::Gone),
        "read through the symlink: {captured:?}"
    );
}
