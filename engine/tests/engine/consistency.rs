//! Invariant 10 with the watcher running: every recorded version of a file is one it
//! really had, and the log keeps the order in which changes completed — a new object
//! before the ref naming it, a temp file before its rename — at every group boundary
//! (where a passive may promote). Writers run in threads beside a live capture; no
//! test asserts a duration.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use standin_engine::{Capture, CaptureOptions, Change, Entry, Event, FolderIndex, Hash};

use crate::support::Node;

const BLOCK: usize = 4096;

/// A file rewritten in place, whole, by one `pwrite` per pass (each pass stamps its
/// number in every block), 50 ms apart: every recorded version holds one pass only.
#[test]
fn a_file_rewritten_in_place_is_recorded_as_whole_passes_only() {
    let node = Node::new();
    let size: usize = 16 << 20;
    let path = node.folder.join("table.dat");
    std::fs::write(&path, vec![0u8; size]).unwrap();
    let capture = node.watch();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let started = Instant::now();
    let mut pass: u32 = 0;
    while started.elapsed() < Duration::from_secs(4) {
        pass += 1;
        let mut buffer = vec![0u8; size];
        for block in buffer.chunks_mut(BLOCK) {
            for word in block.chunks_mut(4) {
                word.copy_from_slice(&pass.to_le_bytes());
            }
        }
        file.write_all_at(&buffer, 0).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(file);
    node.settle();
    let stats = capture.stats();
    eprintln!(
        "groups {}, unstable reads {}, unordered groups {}",
        stats.groups.load(std::sync::atomic::Ordering::Relaxed),
        stats
            .unstable_reads
            .load(std::sync::atomic::Ordering::Relaxed),
        stats
            .unordered_groups
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    capture.stop();
    let mut passes_seen = std::collections::BTreeSet::new();
    for (number, version) in node.versions_of("table.dat").iter().enumerate() {
        assert_eq!(version.len(), size);
        let stamps: std::collections::BTreeSet<u32> = version
            .chunks(BLOCK)
            .map(|block| u32::from_le_bytes(block[..4].try_into().unwrap()))
            .collect();
        assert_eq!(
            stamps.len(),
            1,
            "version {number} of the file mixes passes {stamps:?}: a state it never had"
        );
        passes_seen.extend(stamps);
    }
    assert!(
        passes_seen.len() >= 3,
        "only passes {passes_seen:?} of {pass} were recorded"
    );
    node.assert_verified();
}

/// A file appended to once a millisecond, never closed: each recorded version is a
/// prefix of what was written, and versions are recorded while it is still written
/// (the staleness bound), not only once it goes quiet.
#[test]
fn an_appended_file_is_recorded_as_prefixes_while_it_grows() {
    let node = Node::new();
    let options = CaptureOptions {
        max_delay_ms: 300,
        ..CaptureOptions::default()
    };
    let capture = Capture::start(&node.folder, node.repository.clone(), 1, options).unwrap();
    let mut written = Vec::new();
    {
        use std::io::Write;
        let mut file = std::fs::File::create(node.folder.join("app.log")).unwrap();
        let started = Instant::now();
        let mut line = 0u64;
        while started.elapsed() < Duration::from_secs(3) {
            let text = format!("line {line} of the application's log\n");
            file.write_all(text.as_bytes()).unwrap();
            written.extend_from_slice(text.as_bytes());
            line += 1;
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    node.settle();
    capture.stop();
    let versions = node.versions_of("app.log");
    for (number, version) in versions.iter().enumerate() {
        assert!(
            written.starts_with(version),
            "version {number} ({} bytes) is not a prefix of what was written",
            version.len()
        );
    }
    assert_eq!(versions.last().unwrap(), &written, "the final version");
    // 3 s of writing with a 300 ms bound: a bound that were not kept would leave one
    // version (at the close). Loose on purpose: no timing is asserted.
    assert!(
        versions.len() >= 3,
        "{} versions recorded while the file grew for 3 s",
        versions.len()
    );
    node.assert_verified();
}

/// The folder state at each group boundary of the log: path -> content hash (files)
/// or `None` (directories, links).
pub(crate) fn states_at_boundaries(events: &[Event]) -> Vec<BTreeMap<String, Option<Hash>>> {
    let mut index = FolderIndex::default();
    let mut states = Vec::new();
    let mut group_left = 0u64;
    for event in events {
        if let Change::Group { events } = event.body.change {
            group_left = u64::from(events);
            continue;
        }
        index.apply(&event.body.change).unwrap();
        if group_left > 0 {
            group_left -= 1;
            if group_left > 0 {
                continue;
            }
        }
        states.push(
            index
                .iter()
                .map(|(path, entry)| {
                    let content = match entry {
                        Entry::File { content, .. } => Some(*content),
                        _ => None,
                    };
                    (path.to_string(), content)
                })
                .collect(),
        );
    }
    states
}

/// `echo o > t; ln t object; rm t; echo r > ref.lock; mv ref.lock ref`: the log
/// holds `object` before `ref`, whatever the debounce timers would say.
#[test]
fn an_object_is_recorded_before_the_ref_that_names_it() {
    let node = Node::new();
    let capture = node.watch();
    let folder = node.folder.clone();
    for round in 0..20 {
        let temp = folder.join(format!("t{round}"));
        std::fs::write(&temp, format!("object {round}")).unwrap();
        std::fs::hard_link(&temp, folder.join(format!("object{round}"))).unwrap();
        std::fs::remove_file(&temp).unwrap();
        let lock = folder.join(format!("ref{round}.lock"));
        std::fs::write(&lock, format!("points at object{round}")).unwrap();
        std::fs::rename(&lock, folder.join(format!("ref{round}"))).unwrap();
        if round % 5 == 0 {
            std::thread::sleep(Duration::from_millis(30));
        }
    }
    node.settle();
    capture.stop();
    let events = node.all_events();
    // Where `name` first appears: written under it, or (a `ref.lock` capture recorded
    // as soon as it was closed) renamed to it.
    let first_put = |name: &str| {
        events
            .iter()
            .position(|event| match &event.body.change {
                Change::File { path, .. } => path.to_string() == name,
                Change::Rename { to, .. } => to.to_string() == name,
                _ => false,
            })
            .unwrap_or_else(|| panic!("{name} was never recorded"))
    };
    for round in 0..20 {
        let object = first_put(&format!("object{round}"));
        let reference = first_put(&format!("ref{round}"));
        assert!(
            object <= reference,
            "ref{round} (event {reference}) was recorded before object{round} (event {object})"
        );
    }
    // And at every group boundary, every ref's object is there.
    for state in states_at_boundaries(&events) {
        for round in 0..20 {
            if state.contains_key(&format!("ref{round}")) {
                assert!(
                    state.contains_key(&format!("object{round}")),
                    "a boundary holds ref{round} without object{round}"
                );
            }
        }
    }
    node.assert_verified();
}

/// A passive that received only part of a group (the active died mid-pull) is put
/// back to where the group began before it promotes: the events go to quarantine and
/// the folder is the state before the group, a state the active's folder really had.
#[test]
fn a_promotion_drops_an_incomplete_trailing_group() {
    use crate::support::{replicate, ship_chunks, snapshot};
    let active = Node::new();
    std::fs::write(active.folder.join("first"), b"one").unwrap();
    active.capture();
    let passive = Node::new();
    replicate(&active, &passive, 100);
    let before_group = snapshot(&passive.folder);
    assert_eq!(passive.repository.incomplete_group_start().unwrap(), None);

    std::fs::write(active.folder.join("object"), b"blob").unwrap();
    std::fs::write(active.folder.join("ref"), b"points at object").unwrap();
    std::fs::write(active.folder.join("third"), b"3").unwrap();
    let group = active.capture();
    assert!(matches!(group[0].body.change, Change::Group { events: 3 }));
    // The passive gets the marker and one change of the group's three.
    let part = &group[..2];
    ship_chunks(&active.repository, &passive.repository, part);
    standin_engine::replay::apply_batch(&passive.folder, &passive.repository, part).unwrap();
    let start = passive.repository.incomplete_group_start().unwrap();
    assert_eq!(start, Some(group[0].seq()));

    let quarantined =
        standin_engine::log::quarantine::quarantine_after(&passive.repository, start.unwrap() - 1)
            .unwrap()
            .unwrap();
    standin_engine::log::quarantine::rewind_folder(&passive.folder, &passive.repository).unwrap();
    assert_eq!(quarantined.manifest.events.len(), 2);
    assert_eq!(snapshot(&passive.folder), before_group);
    assert_eq!(passive.repository.incomplete_group_start().unwrap(), None);
    passive.assert_verified();

    // With the whole group, nothing is dropped.
    replicate(&active, &passive, 2);
    assert_eq!(passive.repository.incomplete_group_start().unwrap(), None);
    assert_eq!(snapshot(&passive.folder), snapshot(&active.folder));
}

/// Objects written into directories created a moment before (as git writes
/// `objects/xx/…`): the watcher's own watch on a new directory comes late, so capture
/// watches it itself before reading it. At every group boundary, a ref's object is
/// there.
#[test]
fn an_object_in_a_new_directory_is_recorded_before_its_ref() {
    let node = Node::new();
    std::fs::create_dir(node.folder.join("objects")).unwrap();
    let capture = node.watch();
    let folder = node.folder.clone();
    for round in 0..30 {
        let dir = folder.join(format!("objects/{round:02x}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("object"), format!("object {round}")).unwrap();
        let lock = folder.join("ref.lock");
        std::fs::write(&lock, format!("{round:02x}")).unwrap();
        std::fs::rename(&lock, folder.join("ref")).unwrap();
        if round % 3 == 0 {
            std::thread::sleep(Duration::from_millis(25));
        }
    }
    node.settle();
    capture.stop();
    let events = node.all_events();
    let mut refs_seen = 0;
    let mut index = FolderIndex::default();
    let mut group_left = 0u64;
    for event in &events {
        if let Change::Group { events } = event.body.change {
            group_left = u64::from(events);
            continue;
        }
        index.apply(&event.body.change).unwrap();
        group_left = group_left.saturating_sub(1);
        if group_left > 0 {
            continue;
        }
        let Some(Entry::File { content, .. }) = index.get(&"ref".parse_path()) else {
            continue;
        };
        // Which object the ref names: find the round whose content hashes the same.
        let round = (0..30)
            .find(|round| {
                Hash(*blake3::hash(format!("{round:02x}").as_bytes()).as_bytes()) == *content
            })
            .expect("the ref holds a name written to it");
        let object = format!("objects/{round:02x}/object").parse_path();
        assert!(
            matches!(index.get(&object), Some(Entry::File { .. })),
            "a group boundary holds the ref to {round:02x} without its object"
        );
        refs_seen += 1;
    }
    assert!(refs_seen > 0);
    node.assert_verified();
}

/// A writer that creates a directory and a file in it every 2 ms for 3 s (tar, a
/// build, git unpacking objects): every round of capture watches new directories, and
/// a round that watched one settles only if nothing outside what it read changed
/// before the watch. Every file is recorded and the folder verifies; the groups held
/// back (read again after their last round) are printed, not asserted — they depend
/// on the machine's load. Measured here: the first form of the rule (settle only if
/// nothing at all changed during the round) held back 5 of 160 groups alone and 5 of
/// 26-78 with three such tests at once; with the mark after the watch, 0 of 376-405
/// and 5 of 26-78; with directories also watched as soon as capture hears of them
/// (before a group's cut), 0 of 267 and 0, 0, 2 of 70-115.
#[test]
fn a_stream_of_new_directories_is_recorded_whole() {
    let node = Node::new();
    std::fs::create_dir(node.folder.join("tree")).unwrap();
    let capture = node.watch();
    let started = Instant::now();
    let mut count = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let dir = node.folder.join(format!("tree/d{count}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("f"), format!("file {count}")).unwrap();
        count += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
    node.settle();
    let stats = capture.stats();
    let load =
        |counter: &std::sync::atomic::AtomicU64| counter.load(std::sync::atomic::Ordering::Relaxed);
    let (groups, held_back, unordered) = (
        load(&stats.groups),
        load(&stats.held_back_groups),
        load(&stats.unordered_groups),
    );
    eprintln!("{count} directories: {groups} groups, {held_back} held back, {unordered} unordered");
    capture.stop();

    let last = states_at_boundaries(&node.all_events()).pop().unwrap();
    for index in 0..count {
        assert!(
            last.contains_key(&format!("tree/d{index}/f")),
            "tree/d{index}/f was not recorded"
        );
    }
    node.assert_verified();
}

trait ParsePath {
    fn parse_path(&self) -> standin_engine::RelPath;
}

impl ParsePath for str {
    fn parse_path(&self) -> standin_engine::RelPath {
        standin_engine::RelPath::new(self).unwrap()
    }
}
