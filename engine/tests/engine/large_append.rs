//! A large append is written to sled in parts (to bound sled's memory) and is still
//! all-or-nothing: what a crash in the middle of it leaves is removed at open, the
//! log's last group is the one before it, and the next append goes on from there.

use standin_engine::path::RelPath;
use standin_engine::Change;

use crate::support::{FakeActive, Node};

fn mkdir(name: String) -> Change {
    Change::Mkdir {
        path: RelPath::new(name).unwrap(),
        mode: 0o755,
    }
}

#[test]
fn an_append_cut_short_after_some_parts_is_gone_at_open() {
    let node = Node::new();
    for index in 0..3 {
        std::fs::write(node.folder.join(format!("f{index}")), "x").unwrap();
    }
    node.capture();
    let before = node.repository.head();
    assert!(before.seq > 1);

    // One group of 700 directories: three parts of sled batches at most 256 each.
    let count = 700;
    let mut fake = FakeActive::following(&node.repository);
    let mut batch = vec![fake.seal(Change::Group { events: count })];
    batch.extend((0..count).map(|index| fake.seal(mkdir(format!("d{index}")))));
    node.repository.log().append_interrupted(&batch, 2).unwrap();
    assert_eq!(
        node.repository.head(),
        before,
        "the head moved before the flush"
    );

    let node = node.reopen();
    let log = node.repository.log();
    assert_eq!(node.repository.head(), before);
    assert_eq!(log.check_chain().unwrap(), before.seq);
    assert!(log.get(before.seq + 1).unwrap().is_none());
    assert_eq!(node.repository.incomplete_group_start().unwrap(), None);

    // A lone event after it: the removed group is not taken for the log's last one.
    let mut fake = FakeActive::following(&node.repository);
    let lone = fake.seal(mkdir("lone".to_string()));
    log.append(&[lone]).unwrap();
    assert_eq!(node.repository.incomplete_group_start().unwrap(), None);

    // The whole append, uncut, lands and survives a reopen.
    let mut batch = vec![fake.seal(Change::Group { events: count })];
    batch.extend((0..count).map(|index| fake.seal(mkdir(format!("d{index}")))));
    let last = batch.last().unwrap().seq();
    log.append(&batch).unwrap();
    let node = node.reopen();
    assert_eq!(node.repository.head().seq, last);
    assert_eq!(node.repository.log().check_chain().unwrap(), last);
    assert_eq!(node.repository.incomplete_group_start().unwrap(), None);
}

#[test]
fn an_append_cut_short_before_its_first_part_leaves_the_log_as_it_was() {
    let node = Node::new();
    std::fs::write(node.folder.join("f"), "x").unwrap();
    node.capture();
    let before = node.repository.head();
    let mut fake = FakeActive::following(&node.repository);
    let batch: Vec<_> = (0..300)
        .map(|index| fake.seal(mkdir(format!("d{index}"))))
        .collect();
    node.repository.log().append_interrupted(&batch, 0).unwrap();
    let node = node.reopen();
    assert_eq!(node.repository.head(), before);
    assert_eq!(node.repository.log().check_chain().unwrap(), before.seq);
}
