//! Directory times at the end of one apply fed several batches: set as the folder
//! stands after the last batch in the log (not batch by batch), never on what replaced
//! a directory, never through a symlink, and also when a later batch failed.

use std::os::unix::fs::MetadataExt;

use standin_engine::replay::{apply_fed, Feed, ReplayOptions};

use crate::support::{ship_chunks, Node};

fn mtime_ns(path: &std::path::Path) -> i64 {
    let meta = std::fs::symlink_metadata(path).unwrap();
    meta.mtime() * 1_000_000_000 + meta.mtime_nsec()
}

fn set_mtime(path: &std::path::Path, secs: i64) {
    let file = std::fs::File::open(path).unwrap();
    file.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64))
        .unwrap();
}

/// One apply of what `feed` brings to `node`'s folder.
fn apply(
    node: &Node,
    feed: &Feed,
    options: &ReplayOptions,
) -> standin_engine::Result<standin_engine::Head> {
    apply_fed(&node.folder, &node.repository, feed, options)
}

/// A replica that holds every chunk `source` logged (shipped and synced), and those
/// events.
fn replica_with_chunks_of(source: &Node) -> (Node, Vec<standin_engine::Event>) {
    let events = source.all_events();
    let replica = Node::new();
    ship_chunks(&source.repository, &replica.repository, &events);
    replica.repository.chunks().sync().unwrap();
    (replica, events)
}

/// A directory outside any folder with a `sub` of a known time, for a symlink in the
/// replica to point at.
struct Outside {
    dir: tempfile::TempDir,
    before: i64,
}

impl Outside {
    fn new() -> Outside {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        set_mtime(&dir.path().join("sub"), 1_200_000_000);
        let before = mtime_ns(&dir.path().join("sub"));
        Outside { dir, before }
    }

    fn assert_untouched(&self) {
        assert_eq!(
            mtime_ns(&self.dir.path().join("sub")),
            self.before,
            "a directory outside the folder was touched through the replica's symlink"
        );
    }
}

/// Batch 0 writes into directory `d`; batch 1 replaces `d` by a file. The apply's
/// end sets batch 0's directory times: `d`'s old time lands on the new file.
#[test]
fn a_directory_time_of_an_earlier_batch_is_not_set_on_what_replaced_it() {
    let source = Node::new();
    let dir = source.folder.join("d");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("f"), b"inside").unwrap();
    set_mtime(&dir, 1_000_000_000);
    let first = source.capture();
    assert!(!first.is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::write(&dir, b"now a file").unwrap();
    set_mtime(&dir, 1_500_000_000);
    let second = source.capture();
    assert!(!second.is_empty());
    let (replica, events) = replica_with_chunks_of(&source);

    // One by one: the file keeps its recorded time.
    let one_by_one = Node::new();
    ship_chunks(&source.repository, &one_by_one.repository, &events);
    for batch in [first.clone(), second.clone()] {
        apply(&one_by_one, &Feed::only(batch), &ReplayOptions::default()).unwrap();
    }
    assert_eq!(
        mtime_ns(&one_by_one.folder.join("d")),
        mtime_ns(&source.folder.join("d")),
        "applied one by one"
    );

    // Fed to one apply.
    let feed = Feed::preloaded(vec![first, second]);
    apply(&replica, &feed, &ReplayOptions::default()).unwrap();
    assert!(feed.take_back().is_empty(), "one apply took both");
    assert_eq!(replica.repository.head(), source.repository.head());
    replica.assert_verified();
    assert_eq!(
        mtime_ns(&replica.folder.join("d")),
        mtime_ns(&source.folder.join("d")),
        "the file d has the recorded time, not the old directory's"
    );
}

/// Batch 0 writes into `d/sub`; batch 1 replaces `d` by a symlink to a directory
/// outside the folder that has a `sub`. The apply's end sets batch 0's time of
/// `d/sub` through the symlink: outside the folder.
#[test]
fn a_directory_time_of_an_earlier_batch_is_not_set_through_a_later_symlink() {
    let outside = Outside::new();

    let source = Node::new();
    let dir = source.folder.join("d");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/f"), b"inside").unwrap();
    set_mtime(&dir.join("sub"), 1_000_000_000);
    let first = source.capture();
    std::fs::remove_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(outside.dir.path(), &dir).unwrap();
    let second = source.capture();
    assert!(!second.is_empty());
    let (replica, _) = replica_with_chunks_of(&source);
    let feed = Feed::preloaded(vec![first, second]);
    apply(&replica, &feed, &ReplayOptions::default()).unwrap();
    assert!(feed.take_back().is_empty(), "one apply took both");
    assert_eq!(replica.repository.head(), source.repository.head());
    outside.assert_untouched();
}

/// Batch 0 replaces `d/f` (its old version is removed at the apply's end, which moves
/// `d`'s time); batch 1 fails its check. Batch 0 is in the log, but its directory
/// times are never set again: `d` keeps the time of the removal.
#[test]
fn a_later_batch_failing_leaves_the_earlier_batches_directory_times_set() {
    let source = Node::new();
    let dir = source.folder.join("d");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("f"), b"first version").unwrap();
    set_mtime(&dir, 1_000_000_000);
    let setup = source.capture();
    std::fs::write(dir.join("f"), b"second version, longer").unwrap();
    set_mtime(&dir, 1_000_000_000);
    let first = source.capture();
    assert!(!first.is_empty());
    std::fs::write(source.folder.join("g"), b"another").unwrap();
    std::fs::write(source.folder.join("h"), b"and another").unwrap();
    let mut second = source.capture();
    assert!(second.len() >= 2, "{}", second.len());
    second.remove(0); // the chain breaks: refused by the check
    let (replica, events) = replica_with_chunks_of(&source);
    let setup_copy = setup.clone();
    apply(&replica, &Feed::only(setup), &ReplayOptions::default()).unwrap();
    let last_good = first.last().unwrap().seq();
    // Control: the same first batch applied alone sets d's time.
    let control = Node::new();
    ship_chunks(&source.repository, &control.repository, &events);
    for batch in [setup_copy.clone(), first.clone()] {
        apply(&control, &Feed::only(batch), &ReplayOptions::default()).unwrap();
    }
    assert_eq!(
        mtime_ns(&control.folder.join("d")),
        1_000_000_000 * 1_000_000_000,
        "control"
    );
    let feed = Feed::preloaded(vec![first, second]);
    apply(&replica, &feed, &ReplayOptions::default()).expect_err("the second batch is refused");
    assert_eq!(
        replica.repository.head().seq,
        last_good,
        "the first batch is in the log"
    );
    replica.assert_verified();
    assert_eq!(
        mtime_ns(&replica.folder.join("d")),
        1_000_000_000 * 1_000_000_000,
        "d has its recorded time"
    );
}

/// Within one batch written in parts: `x` is moved away and a symlink to a directory
/// outside the folder (with a `sub`) takes its name; a later part makes `x/sub` a
/// directory again. The batch's directory list is made for its end, so an earlier
/// part's finish found the symlink at `x` and set `x/sub`'s time through it.
#[test]
fn a_part_never_sets_a_directory_time_through_a_symlink_a_later_part_replaces() {
    let outside = Outside::new();

    let source = Node::new();
    let x = source.folder.join("x");
    std::fs::create_dir_all(x.join("sub")).unwrap();
    std::fs::write(x.join("sub/f"), b"inside").unwrap();
    let setup = source.capture();
    std::fs::rename(&x, source.folder.join("y")).unwrap();
    std::os::unix::fs::symlink(outside.dir.path(), &x).unwrap();
    let mut batch = source.capture();
    std::fs::remove_file(&x).unwrap();
    std::fs::create_dir_all(x.join("sub")).unwrap();
    set_mtime(&x.join("sub"), 1_000_000_000);
    batch.extend(source.capture());
    let (replica, _) = replica_with_chunks_of(&source);
    apply(&replica, &Feed::only(setup), &ReplayOptions::default()).unwrap();
    let in_parts = ReplayOptions {
        commit_part_events: 1,
        ..ReplayOptions::default()
    };
    apply(&replica, &Feed::only(batch), &in_parts).unwrap();
    assert_eq!(replica.repository.head(), source.repository.head());
    replica.assert_verified();
    outside.assert_untouched();
    assert_eq!(
        mtime_ns(&replica.folder.join("x/sub")),
        mtime_ns(&source.folder.join("x/sub")),
        "x/sub has its recorded time"
    );
}

/// One batch in parts: part 1 replaces `d/f` (its old version is removed at the
/// apply's end, which moves `d`'s time); a later part fails while writing (a directory
/// in the way of `e/x` on the replica). Part 1 is in the log; `d`'s time must be set
/// again on the error path (only whole batches' directories were).
#[test]
fn a_batch_failing_after_a_committed_part_leaves_that_parts_directory_times_set() {
    let source = Node::new();
    let d = source.folder.join("d");
    let e = source.folder.join("e");
    std::fs::create_dir(&d).unwrap();
    std::fs::create_dir(&e).unwrap();
    std::fs::write(d.join("f"), b"first version").unwrap();
    std::fs::write(e.join("keep"), b"keep").unwrap();
    set_mtime(&d, 1_000_000_000);
    set_mtime(&e, 1_100_000_000);
    let setup = source.capture();
    std::fs::write(d.join("f"), b"second version, longer").unwrap();
    set_mtime(&d, 1_000_000_000);
    std::fs::write(e.join("x"), b"new").unwrap();
    set_mtime(&e, 1_100_000_000);
    let batch = source.capture();
    let (replica, _) = replica_with_chunks_of(&source);
    apply(&replica, &Feed::only(setup), &ReplayOptions::default()).unwrap();
    std::fs::create_dir_all(replica.folder.join("e/x/junk")).unwrap();
    let in_parts = ReplayOptions {
        commit_part_events: 1,
        ..ReplayOptions::default()
    };
    let first_seq = batch.first().unwrap().seq();
    apply(&replica, &Feed::only(batch.clone()), &in_parts).expect_err("e/x cannot be written");
    let head = replica.repository.head().seq;
    assert!(head >= first_seq, "part 1 (d/f) is in the log: head {head}");
    assert!(!replica.folder.join("e/x").exists(), "recovered");
    // The passive retries the rest of the batch, which succeeds.
    let rest: Vec<_> = batch
        .into_iter()
        .filter(|event| event.seq() > head)
        .collect();
    apply(&replica, &Feed::only(rest), &ReplayOptions::default()).unwrap();
    assert_eq!(replica.repository.head(), source.repository.head());
    replica.assert_verified();
    assert_eq!(
        mtime_ns(&replica.folder.join("d")),
        1_000_000_000 * 1_000_000_000,
        "d has its recorded time after the retry (failed at head {head})"
    );
}
