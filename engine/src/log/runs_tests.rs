//! The log in runs against what it replaced: a log stored one event per value opens
//! as runs with every event, truncation and compaction cut runs anywhere, and an
//! interrupted append of either layout is undone.

use super::codec::{encode_value, key};
use super::runs::{RUN_EVENTS, TREE};
use super::EventLog;
use crate::hash::Hash;
use crate::log::event::{Change, Event, EventBody};
use crate::path::RelPath;

fn chain(after: (u64, Hash), count: u64) -> Vec<Event> {
    let (mut seq, mut prev) = after;
    (0..count)
        .map(|_| {
            seq += 1;
            let event = Event::seal(
                prev,
                EventBody {
                    seq,
                    epoch: 1,
                    recorded_at_ms: 1_700_000_000_000 + seq,
                    change: Change::Mkdir {
                        path: RelPath::new(format!("d{seq}")).unwrap(),
                        mode: 0o755,
                    },
                    digest: Hash([seq as u8; 32]),
                },
            );
            prev = event.hash;
            event
        })
        .collect()
}

fn open(dir: &std::path::Path) -> (sled::Db, EventLog) {
    let db = crate::repository::open::open_sled(&dir.join("db")).unwrap();
    let sync = crate::sled_sync::SledSync::open(&dir.join("db")).unwrap();
    let log = EventLog::open(&db, sync).unwrap();
    (db, log)
}

/// Write `events` the way the log stored them before runs: one value per event in
/// the tree `events`.
fn write_single(db: &sled::Db, events: &[Event]) {
    let single = db.open_tree("events").unwrap();
    for event in events {
        let canonical = event.body.canonical_bytes();
        single
            .insert(key(event.seq()), encode_value(event, &canonical))
            .unwrap();
    }
    db.flush().unwrap();
}

#[test]
fn a_log_of_one_event_per_value_opens_as_runs_with_every_event() {
    let dir = tempfile::tempdir().unwrap();
    let events = chain((0, Hash::ZERO), 3 * RUN_EVENTS as u64 + 5);
    {
        let db = crate::repository::open::open_sled(&dir.path().join("db")).unwrap();
        write_single(&db, &events);
    }
    let (db, log) = open(dir.path());
    let last = events.last().unwrap();
    assert_eq!(log.head().seq, last.seq());
    assert_eq!(log.head().hash, last.hash);
    assert_eq!(log.check_chain().unwrap(), last.seq());
    assert_eq!(log.get(77).unwrap().unwrap(), events[76]);
    assert!(
        !db.tree_names()
            .iter()
            .any(|name| name.as_ref() == b"events"),
        "the old tree is dropped"
    );
    assert_eq!(db.open_tree(TREE).unwrap().len(), 4, "four runs");
    // It goes on from there.
    let more = chain((last.seq(), last.hash), 10);
    log.append(&more).unwrap();
    drop(log);
    drop(db);
    let (_db, log) = open(dir.path());
    assert_eq!(log.check_chain().unwrap(), more.last().unwrap().seq());
}

#[test]
fn truncation_and_compaction_cut_runs_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let (db, log) = open(dir.path());
    let events = chain((0, Hash::ZERO), 2 * RUN_EVENTS as u64);
    log.append(&events).unwrap();
    // Inside the second run: its tail goes, and is handed back in order.
    let removed = log.truncate_after(100).unwrap();
    assert_eq!(removed, events[100..].to_vec());
    assert_eq!(log.head().seq, 100);
    assert!(log.get(101).unwrap().is_none());
    // Inside the first run: the run stays whole on disk, unreadable before the base.
    assert_eq!(log.compact_through(30).unwrap(), 30);
    assert!(log.get(30).unwrap().is_none());
    assert_eq!(log.get(31).unwrap().unwrap(), events[30]);
    assert_eq!(log.compact_through(70).unwrap(), 40);
    assert_eq!(
        db.open_tree(TREE).unwrap().len(),
        1,
        "the first run went once none of its events was retained"
    );
    assert_eq!(log.check_chain().unwrap(), 100);
    let events_after = log.events_after(70, &events[69].hash, 1000).unwrap();
    assert_eq!(events_after, events[70..100].to_vec());
    // Truncated back to the base, inside a run compaction left whole.
    log.truncate_after(70).unwrap();
    drop(log);
    drop(db);
    let (_db, log) = open(dir.path());
    assert_eq!(log.head().seq, 70);
    assert_eq!(log.head(), log.base());
    let more = chain((70, events[69].hash), 3);
    log.append(&more).unwrap();
    assert_eq!(log.check_chain().unwrap(), 73);
}

#[test]
fn an_interrupted_append_of_the_old_layout_is_undone_before_the_rewrite() {
    let dir = tempfile::tempdir().unwrap();
    let events = chain((0, Hash::ZERO), 20);
    {
        let db = crate::repository::open::open_sled(&dir.path().join("db")).unwrap();
        write_single(&db, &events);
        // As an append cut short after event 12 left it: the mark says 12.
        db.open_tree("log_base")
            .unwrap()
            .insert(super::parts::APPENDING_KEY, &12u64.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let (_db, log) = open(dir.path());
    assert_eq!(log.head().seq, 12);
    assert_eq!(log.check_chain().unwrap(), 12);
}
