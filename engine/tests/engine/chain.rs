//! Tampering with a stored event — its body, its prev or its hash — is found when the
//! event is read, and `events_after` refuses a caller whose history diverged.

use standin_engine::{Error, Hash};

use crate::support::Node;

fn node_with_events() -> Node {
    let node = Node::new();
    for index in 0..5 {
        std::fs::write(
            node.folder.join(format!("f{index}")),
            format!("content {index}"),
        )
        .unwrap();
    }
    // Five files, one group: a `Group` event and five `Put`s.
    assert_eq!(node.capture().len(), 6);
    node
}

#[test]
fn a_changed_body_is_detected_on_read() {
    let node = node_with_events();
    let log = node.repository.log();
    log.tamper_raw(3, |value| {
        let last = value.len() - 40;
        value[last] ^= 1;
    })
    .unwrap();
    let error = log.events_after(0, &Hash::ZERO, 10).unwrap_err();
    assert!(
        matches!(error, Error::BrokenChain { seq: 3, .. }),
        "{error}"
    );
    assert!(log.get(3).is_err());
    assert!(log.check_chain().is_err());
    assert!(log.get(2).is_ok());
}

#[test]
fn a_changed_prev_is_detected_on_read() {
    let node = node_with_events();
    let log = node.repository.log();
    log.tamper_raw(4, |value| value[0] ^= 0xff).unwrap();
    let error = log.get(4).unwrap_err();
    assert!(
        matches!(error, Error::BrokenChain { seq: 4, .. }),
        "{error}"
    );
}

#[test]
fn a_consistently_rewritten_event_breaks_the_link_to_its_successor() {
    let node = node_with_events();
    let log = node.repository.log();
    // Replace event 3's prev and recompute its hash so it is self-consistent: the
    // link from event 2 (and to event 4) no longer holds.
    log.tamper_raw(3, |value| {
        value[0] ^= 0xff;
        let prev = Hash::from_slice(&value[..32]).unwrap();
        let hash = standin_engine::log::event::chain_hash(&prev, &value[64..]);
        value[32..64].copy_from_slice(&hash.0);
    })
    .unwrap();
    assert!(log.get(3).is_ok(), "the event alone is self-consistent");
    let error = log.events_after(0, &Hash::ZERO, 10).unwrap_err();
    assert!(
        matches!(error, Error::BrokenChain { seq: 3, .. }),
        "{error}"
    );
}

#[test]
fn events_after_reports_divergence_and_unknown_seqs() {
    let node = node_with_events();
    let log = node.repository.log();
    let head = log.head();
    let error = log.events_after(2, &Hash([7; 32]), 10).unwrap_err();
    assert!(matches!(error, Error::Divergence { seq: 2, .. }), "{error}");
    let error = log.events_after(head.seq + 1, &Hash::ZERO, 10).unwrap_err();
    assert!(matches!(error, Error::BeyondHead { .. }), "{error}");
    let second = log.get(2).unwrap().unwrap();
    let after = log.events_after(2, &second.hash, 2).unwrap();
    assert_eq!(
        after.iter().map(|event| event.seq()).collect::<Vec<_>>(),
        vec![3, 4]
    );
    assert!(log
        .events_after(head.seq, &head.hash, 10)
        .unwrap()
        .is_empty());
}

#[test]
fn append_refuses_a_gap_or_a_wrong_prev() {
    let source = node_with_events();
    let replica = Node::new();
    let events = source
        .repository
        .log()
        .events_after(0, &Hash::ZERO, 10)
        .unwrap();
    let error = replica.repository.log().append(&events[1..2]).unwrap_err();
    assert!(
        matches!(error, Error::BrokenChain { seq: 2, .. }),
        "{error}"
    );
    assert_eq!(replica.repository.head().seq, 0);
}
