//! One apply fed several batches (`replay::Feed`): the next batch is checked and
//! written while the previous one's last part is committed. The end state is what
//! applying them one by one gives; a batch that fails leaves the ones before it
//! applied and the folder as the log says.

use standin_engine::replay::{apply_fed, Feed, ReplayOptions};
use standin_engine::Event;

use crate::crash::has_temporary_files;
use crate::support::{ship_chunks, snapshot, Node};

/// A source with a varied history (files large and small, a rename of a directory,
/// removals and rewrites) and a replica holding every chunk it names.
fn source_and_replica() -> (Node, Node, Vec<Event>) {
    let source = Node::new();
    for round in 0..4u32 {
        let dir = source.folder.join(format!("dir{round}"));
        std::fs::create_dir_all(&dir).unwrap();
        for index in 0..30u32 {
            let size = if index % 11 == 0 {
                200_000
            } else {
                1_000 + index as usize * 37
            };
            let bytes: Vec<u8> = (0..size)
                .map(|at| ((at as u32 + index + round) % 251) as u8)
                .collect();
            std::fs::write(dir.join(format!("file{index}")), bytes).unwrap();
        }
        source.capture();
        std::fs::rename(&dir, source.folder.join(format!("moved{round}"))).unwrap();
        std::fs::remove_file(source.folder.join(format!("moved{round}/file3"))).unwrap();
        std::fs::write(
            source.folder.join(format!("moved{round}/file4")),
            b"rewritten",
        )
        .unwrap();
        source.capture();
    }
    let events = source.all_events();
    let replica = Node::new();
    ship_chunks(&source.repository, &replica.repository, &events);
    replica.repository.chunks().sync().unwrap();
    (source, replica, events)
}

fn batches(events: &[Event], size: usize) -> Vec<Vec<Event>> {
    events.chunks(size).map(|batch| batch.to_vec()).collect()
}

#[test]
fn one_apply_takes_every_batch_fed_to_it() {
    let (source, replica, events) = source_and_replica();
    let options = ReplayOptions {
        commit_part_events: 5,
        // No time bound: on a loaded machine (CI) the apply's 2 s ended it before the
        // batches this test counts on were taken.
        take_batches_for: std::time::Duration::from_secs(3600),
        ..ReplayOptions::default()
    };
    let fed = batches(&events, 23);
    assert!(fed.len() > 3, "several batches: {}", fed.len());
    let feed = Feed::preloaded(fed);
    let head = apply_fed(&replica.folder, &replica.repository, &feed, &options).unwrap();
    assert_eq!(head, source.repository.head(), "one apply took them all");
    assert!(!feed.is_open(), "an ended apply takes no more");
    assert!(feed.offer(Vec::new()).is_err());
    assert!(feed.take_back().is_empty());
    assert!(!has_temporary_files(&replica.folder));
    assert_eq!(snapshot(&replica.folder), snapshot(&source.folder));
    replica.assert_verified();
    // Nothing is left to recover: the journal of every batch was cleared.
    let replica = replica.reopen();
    standin_engine::replay::recover(&replica.folder, &replica.repository).unwrap();
    assert_eq!(snapshot(&replica.folder), snapshot(&source.folder));
}

#[test]
fn batches_offered_while_an_apply_runs_end_where_applying_them_one_by_one_does() {
    let (source, replica, events) = source_and_replica();
    let options = ReplayOptions {
        commit_part_events: 4,
        ..ReplayOptions::default()
    };
    let mut applies = 0;
    loop {
        let head = replica.repository.head().seq as usize;
        if head >= events.len() {
            break;
        }
        let mut rest = batches(&events[head..], 17).into_iter();
        let feed = Feed::new(rest.next().unwrap());
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for batch in rest {
                    if feed.offer(batch).is_err() {
                        break;
                    }
                }
            });
            apply_fed(&replica.folder, &replica.repository, &feed, &options).unwrap();
        });
        applies += 1;
    }
    eprintln!("{} events in {applies} applies", events.len());
    assert_eq!(replica.repository.head(), source.repository.head());
    assert!(!has_temporary_files(&replica.folder));
    assert_eq!(snapshot(&replica.folder), snapshot(&source.folder));
    replica.assert_verified();
}

#[test]
fn a_later_batch_that_fails_leaves_the_earlier_ones_applied() {
    let (source, replica, events) = source_and_replica();
    let options = ReplayOptions {
        commit_part_events: 5,
        // No time bound: on a loaded machine (CI) the apply's 2 s ended it before the
        // batches this test counts on were taken.
        take_batches_for: std::time::Duration::from_secs(3600),
        ..ReplayOptions::default()
    };
    let mut fed = batches(&events, 30);
    // The third batch skips an event: its chain breaks (found by the check, after the
    // first two batches were written and while the second is being committed).
    fed[2].remove(3);
    let good_through = fed[0].len() + fed[1].len();
    let feed = Feed::preloaded(fed);
    let error = apply_fed(&replica.folder, &replica.repository, &feed, &options)
        .expect_err("a broken chain is refused");
    assert!(error.to_string().contains("seq"), "{error}");
    assert_eq!(replica.repository.head().seq as usize, good_through);
    assert!(!feed.is_open());
    assert!(!has_temporary_files(&replica.folder));
    // The folder is exactly what the log says (the third batch's first events, though
    // checked, were never written).
    replica.assert_verified();
    // The rest applies on top.
    let head = replica.repository.head().seq as usize;
    let feed = Feed::only(events[head..].to_vec());
    apply_fed(&replica.folder, &replica.repository, &feed, &options).unwrap();
    assert_eq!(snapshot(&replica.folder), snapshot(&source.folder));
    replica.assert_verified();
}
