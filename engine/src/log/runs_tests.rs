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

/// The open refuses the log as stored in both layouts.
fn assert_refused_as_both_layouts(dir: &std::path::Path) {
    let db = crate::repository::open::open_sled(&dir.join("db")).unwrap();
    let sync = crate::sled_sync::SledSync::open(&dir.join("db")).unwrap();
    let error = EventLog::open(&db, sync).err().expect("refused");
    assert!(error.to_string().contains("both layouts"), "{error}");
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

/// An append of the old layout cut short after it wrote its `Group` event: undone
/// before the rewrite, and the group it named is not taken for the log's last one.
#[test]
fn an_old_layout_undo_forgets_the_group_it_removed() {
    let dir = tempfile::tempdir().unwrap();
    let events = chain((0, Hash::ZERO), 20);
    {
        let db = crate::repository::open::open_sled(&dir.path().join("db")).unwrap();
        write_single(&db, &events);
        let log_base = db.open_tree("log_base").unwrap();
        // The mark says 12; the last group (13, 20) was in the part that went.
        log_base
            .insert(super::parts::APPENDING_KEY, &12u64.to_be_bytes())
            .unwrap();
        log_base
            .insert(super::LAST_GROUP_KEY, &super::codec::encode_group((13, 20)))
            .unwrap();
        db.flush().unwrap();
    }
    let (_db, log) = open(dir.path());
    assert_eq!(log.head().seq, 12);
    log.append(&events[12..15]).unwrap();
    assert_eq!(log.open_group().unwrap(), None);
}

/// An older binary that wrote its own events after the rewrite: which is the log
/// cannot be told, and the open says so instead of picking one.
#[test]
fn a_log_in_both_layouts_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let events = chain((0, Hash::ZERO), 10);
    {
        let (db, log) = open(dir.path());
        log.append(&events).unwrap();
        write_single(&db, &chain((0, Hash::ZERO), 3));
    }
    assert_refused_as_both_layouts(dir.path());
}

/// A rewrite stopped half way (its mark still in `log_base`) starts again from
/// nothing at the next open.
#[test]
fn a_rewrite_stopped_half_way_starts_again() {
    let dir = tempfile::tempdir().unwrap();
    let events = chain((0, Hash::ZERO), 100);
    {
        let db = crate::repository::open::open_sled(&dir.path().join("db")).unwrap();
        write_single(&db, &events);
        // What the stop left: the mark, and the first runs.
        db.open_tree("log_base")
            .unwrap()
            .insert(b"migrating_to_runs", &[])
            .unwrap();
        let runs = db.open_tree(TREE).unwrap();
        for (run_key, value) in super::runs::pack(events[..40].iter().map(|event| {
            (
                event.seq(),
                encode_value(event, &event.body.canonical_bytes()),
            )
        })) {
            runs.insert(run_key, value).unwrap();
        }
        db.flush().unwrap();
    }
    let (_db, log) = open(dir.path());
    assert_eq!(log.check_chain().unwrap(), 100);
}

/// Readers racing compaction get events, `None` or `Compacted`: never a broken chain
/// for an event compacted away while they looked.
#[test]
fn reads_racing_compaction_are_never_a_broken_chain() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let (_db, log) = open(dir.path());
    let events = chain((0, Hash::ZERO), 1500);
    log.append(&events).unwrap();
    let log = Arc::new(log);
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (log, done) = (log.clone(), done.clone());
        std::thread::spawn(move || {
            let mut errors: Vec<String> = Vec::new();
            while !done.load(Ordering::Relaxed) {
                let base = log.base();
                match log.events_after(base.seq, &base.hash, 300) {
                    Ok(_) | Err(crate::error::Error::Compacted { .. }) => {}
                    Err(error) => errors.push(error.to_string()),
                }
                for ahead in [0u64, 1, 2, 63, 64, 65] {
                    match log.hash_at(base.seq + ahead) {
                        Ok(_) | Err(crate::error::Error::Compacted { .. }) => {}
                        Err(error) => errors.push(error.to_string()),
                    }
                    if let Err(error) = log.get(base.seq + ahead) {
                        errors.push(error.to_string());
                    }
                }
            }
            errors
        })
    };
    for seq in 1..1490 {
        log.compact_through(seq).unwrap();
    }
    done.store(true, Ordering::Relaxed);
    let errors = reader.join().unwrap();
    assert!(
        errors.is_empty(),
        "{} errors, first {:?}",
        errors.len(),
        errors.first()
    );
}

/// A reset to a snapshot's head drops every run with the base moved, at once.
#[test]
fn a_reset_drops_every_run_and_goes_on_from_the_new_base() {
    let dir = tempfile::tempdir().unwrap();
    let (db, log) = open(dir.path());
    log.append(&chain((0, Hash::ZERO), 200)).unwrap();
    let later = chain((0, Hash::ZERO), 500);
    let base = super::Head::of(&later[499]);
    log.reset_to(base).unwrap();
    assert_eq!(db.open_tree(TREE).unwrap().len(), 0);
    drop(log);
    drop(db);
    let (_db, log) = open(dir.path());
    assert_eq!(log.head(), base);
    assert_eq!(log.base(), base);
    log.append(&chain((500, later[499].hash), 5)).unwrap();
    assert_eq!(log.check_chain().unwrap(), 505);
}

/// A reset stopped after its new base (and mark) were durable but before every old
/// run was gone: the next open removes the rest before it reads the head.
#[test]
fn a_reset_stopped_half_way_is_finished_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let later = chain((0, Hash::ZERO), 500);
    let base = super::Head::of(&later[499]);
    {
        let (db, log) = open(dir.path());
        log.append(&chain((0, Hash::ZERO), 200)).unwrap();
        // What the reset's first step leaves: the base and the mark, the runs still there.
        let log_base = db.open_tree("log_base").unwrap();
        log_base
            .insert(super::BASE_KEY, super::codec::encode_head(&base))
            .unwrap();
        log_base.insert(super::RESETTING_KEY, &[]).unwrap();
        db.flush().unwrap();
    }
    let (db, log) = open(dir.path());
    assert_eq!(log.head(), base);
    assert_eq!(db.open_tree(TREE).unwrap().len(), 0);
    log.append(&chain((500, later[499].hash), 3)).unwrap();
    assert_eq!(log.check_chain().unwrap(), 503);
}

/// A stop after the old tree was dropped but before the rewrite's mark was removed:
/// the next open removes the mark, so it cannot excuse an older binary's tree later.
#[test]
fn a_rewrite_mark_left_behind_is_removed_and_excuses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (db, log) = open(dir.path());
        log.append(&chain((0, Hash::ZERO), 10)).unwrap();
        db.open_tree("log_base")
            .unwrap()
            .insert(b"migrating_to_runs", &[])
            .unwrap();
        db.flush().unwrap();
    }
    {
        let (db, _log) = open(dir.path());
        assert!(!db
            .open_tree("log_base")
            .unwrap()
            .contains_key(b"migrating_to_runs")
            .unwrap());
        // Then an older binary writes its own events.
        write_single(&db, &chain((0, Hash::ZERO), 3));
    }
    assert_refused_as_both_layouts(dir.path());
}

/// An append cut short before its first part (its last group recorded, no event of
/// it written): the group is forgotten at open, though nothing was undone.
#[test]
fn a_last_group_past_the_head_is_forgotten_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let events = chain((0, Hash::ZERO), 20);
    {
        let (db, log) = open(dir.path());
        log.append(&events[..12]).unwrap();
        db.open_tree("log_base")
            .unwrap()
            .insert(super::LAST_GROUP_KEY, &super::codec::encode_group((13, 20)))
            .unwrap();
        db.flush().unwrap();
    }
    let (_db, log) = open(dir.path());
    log.append(&events[12..15]).unwrap();
    assert_eq!(log.open_group().unwrap(), None);
}
