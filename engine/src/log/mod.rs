//! The history: every change of the folder as an event (`event`: `Change`, `Event`, the
//! canonical encoding, the hash chain), the append-only `EventLog` that keeps them
//! (this file), and `quarantine`, where events after a common point go instead of
//! being dropped.
//!
//! The event log: append-only, gap-free, hash-chained, durable before visible.
//!
//! Each event is stored as the record `prev (32) ‖ hash (32) ‖ canonical body`, and
//! consecutive records of one append are kept together in runs of up to 64 (`runs.rs`:
//! the sled tree `event_runs`, keyed by the big-endian seq of a run's first event, so
//! key order is seq order). Every read re-hashes the body onto its `prev` and, when
//! reading several, checks each `prev` against the hash before it, so a changed body,
//! prev or hash on disk is found when it is read.
//!
//! `append` inserts a batch, flushes sled to disk, and only then moves the in-memory
//! head that readers stop at: an event is durable before any reader can see it
//! (invariant 2). The only removal is `truncate_after`, used to quarantine the events
//! a superseded node recorded after the last common one. A large append is written in
//! bounded parts and made atomic again by a mark (`parts`), which bounds sled's memory.

pub mod event;
pub mod quarantine;

use std::sync::RwLock;

mod codec;
mod parts;
mod read;
mod runs;
#[cfg(test)]
mod runs_tests;

use codec::{decode_group, decode_head, decode_value, encode_group, encode_head, encode_value};

use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::log::event::Event;

/// The last event of a log: what two nodes compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Head {
    pub seq: u64,
    pub hash: Hash,
    pub epoch: u64,
    /// The folder digest after the head event.
    pub digest: Hash,
    /// When the head event was recorded (ms since the Unix epoch; 0 for an empty log).
    pub recorded_at_ms: u64,
}

impl Head {
    /// The head of an empty log.
    pub const EMPTY: Head = Head {
        seq: 0,
        hash: Hash::ZERO,
        epoch: 0,
        digest: Hash::ZERO,
        recorded_at_ms: 0,
    };

    pub fn of(event: &Event) -> Head {
        Head {
            seq: event.seq(),
            hash: event.hash,
            epoch: event.epoch(),
            digest: event.body.digest,
            recorded_at_ms: event.body.recorded_at_ms,
        }
    }
}

/// Called with the new head after every append (and truncation) that moved it.
pub type HeadListener = Box<dyn Fn(Head) + Send + Sync>;

/// The hash-chained event log in a sled tree.
pub struct EventLog {
    db: sled::Db,
    /// Makes `db`'s flushes durable (`crate::sled_sync`).
    sync: crate::sled_sync::SledSync,
    /// The events' records, in runs (`runs.rs`).
    events: runs::Runs,
    /// Holds `base`: the last event compacted away (or a snapshot's head).
    log_base: sled::Tree,
    base: RwLock<Head>,
    head: RwLock<Head>,
    listener: RwLock<Option<HeadListener>>,
    head_mark: RwLock<Option<std::path::PathBuf>>,
}

const BASE_KEY: &[u8] = b"base";

/// In `log_base` while `reset_to` removes the old runs: an open finishes the removal.
const RESETTING_KEY: &[u8] = b"resetting";

/// In the `log_base` tree: the last `Group` event appended, as its seq and the seq its
/// group ends at (16 bytes, big-endian), so that a passive about to promote knows at
/// once whether its log ends inside a group.
const LAST_GROUP_KEY: &[u8] = b"last_group";

impl EventLog {
    /// Open the log in `db`, reading its head (and verifying the head event).
    pub fn open(db: &sled::Db, sync: crate::sled_sync::SledSync) -> Result<EventLog> {
        let log_base = db.open_tree("log_base")?;
        // A log of the layout before runs: its interrupted append undone, then it is
        // rewritten into runs.
        let mut undone = 0;
        if let Some(single) = runs::single_layout(db, &log_base)? {
            undone += parts::undo_interrupted(db, &sync, &single, &log_base)?;
        }
        let events = runs::Runs::open(db, &sync, &log_base)?;
        if log_base.contains_key(RESETTING_KEY)? {
            // A reset to a snapshot's base stopped before its old runs were gone.
            events.remove_all()?;
            log_base.remove(RESETTING_KEY)?;
            db.flush()?;
            sync.sync()?;
            tracing::info!("finished dropping the events a reset to a snapshot replaced");
        }
        undone += parts::undo_interrupted(db, &sync, events.tree(), &log_base)?;
        if undone > 0 {
            tracing::warn!(
                stored_values = undone,
                "removed the events of an append a crash cut short (never visible)"
            );
        }
        let base = match log_base.get(BASE_KEY)? {
            None => Head::EMPTY,
            Some(bytes) => decode_head(&bytes).ok_or_else(|| Error::BrokenChain {
                seq: 0,
                reason: format!("the stored log base is {} bytes, expected 88", bytes.len()),
            })?,
        };
        let head = match events.last()? {
            None => base,
            // A run compaction left whole may end at the base (truncated to it).
            Some((seq, _)) if seq <= base.seq => base,
            Some((seq, record)) => Head::of(&decode_value(seq, &record)?),
        };
        let log = EventLog {
            db: db.clone(),
            sync,
            events,
            log_base,
            base: RwLock::new(base),
            head: RwLock::new(head),
            listener: RwLock::new(None),
            head_mark: RwLock::new(None),
        };
        // A last group that starts past the head (an append a crash cut short, however
        // it was cut) is forgotten: one read when there is nothing to do.
        if log.forget_groups_after(head.seq)? || undone > 0 {
            log.flush_durably()?;
        }
        Ok(log)
    }

    /// sled's flush, made durable (`crate::sled_sync`).
    fn flush_durably(&self) -> Result<()> {
        self.db.flush()?;
        self.sync.sync()
    }

    /// When the stored last group starts after `seq` (its events were removed, or
    /// never written), store the last group at or before `seq` instead.
    /// Whether it changed anything.
    fn forget_groups_after(&self, seq: u64) -> Result<bool> {
        let stored = self
            .log_base
            .get(LAST_GROUP_KEY)?
            .and_then(|bytes| decode_group(&bytes));
        if stored.is_some_and(|(start, _)| start > seq) {
            match self.last_group_upto(seq)? {
                Some(group) => self.log_base.insert(LAST_GROUP_KEY, &encode_group(group))?,
                None => self.log_base.remove(LAST_GROUP_KEY)?,
            };
            return Ok(true);
        }
        Ok(false)
    }

    /// Have `listener` told of every new head (the service wakes its `Pull` streams
    /// with it). Replaces any previous listener.
    pub fn set_listener(&self, listener: HeadListener) {
        *self
            .listener
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(listener);
    }

    /// Remember where the log is in a small file beside the store (written after the
    /// store is durable, never fsync'd: after a crash it may lag, never lead). At open,
    /// a log that ends before the remembered seq was damaged: sled can come back empty
    /// or short from a damaged file without an error.
    pub fn set_head_mark(&self, path: std::path::PathBuf) {
        *self
            .head_mark
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(path);
    }

    fn notify(&self, head: Head) {
        if let Some(path) = self
            .head_mark
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
        {
            let _ = std::fs::write(path, format!("{} {}\n", head.seq, head.hash));
        }
        if let Some(listener) = self
            .listener
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
        {
            listener(head);
        }
    }

    /// The group the log ends inside, if it does: (seq of its `Group` event, seq the
    /// group ends at), with the head before that end.
    pub fn open_group(&self) -> Result<Option<(u64, u64)>> {
        let head = self.head().seq;
        Ok(self
            .log_base
            .get(LAST_GROUP_KEY)?
            .and_then(|bytes| decode_group(&bytes))
            .filter(|(start, end)| *start <= head && head < *end))
    }

    /// Walk back from `seq` to the last `Group` event at or before it (or the base).
    fn last_group_upto(&self, seq: u64) -> Result<Option<(u64, u64)>> {
        let base = self.base().seq;
        let mut at = seq;
        while at > base {
            let Some(value) = self.events.record(at)? else {
                break;
            };
            if let crate::log::event::Change::Group { events } =
                decode_value(at, &value)?.body.change
            {
                return Ok(Some((at, at + u64::from(events))));
            }
            at -= 1;
        }
        Ok(None)
    }

    /// The last durable event.
    pub fn head(&self) -> Head {
        *self
            .head
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Append `batch`, which must continue the chain from the head; durable on return.
    pub fn append(&self, batch: &[Event]) -> Result<Head> {
        let canonical: Vec<Vec<u8>> = batch
            .iter()
            .map(|event| event.body.canonical_bytes())
            .collect();
        self.append_encoded(batch, &canonical)
    }

    /// `append`, with each event's canonical bytes already encoded (`canonical[i]` is
    /// `batch[i].body.canonical_bytes()`: the caller hashed them).
    pub fn append_encoded(&self, batch: &[Event], canonical: &[Vec<u8>]) -> Result<Head> {
        self.append_parts(batch, canonical, usize::MAX)
    }

    /// `append_encoded` cut short after `parts` of its sled batches (`parts`), flushed,
    /// with the head left where it was: what a crash in the middle of a large append
    /// leaves on disk. For the tests of that recovery.
    #[doc(hidden)]
    pub fn append_interrupted(&self, batch: &[Event], parts: usize) -> Result<()> {
        let canonical: Vec<Vec<u8>> = batch
            .iter()
            .map(|event| event.body.canonical_bytes())
            .collect();
        self.append_parts(batch, &canonical, parts).map(|_| ())
    }

    fn append_parts(&self, batch: &[Event], canonical: &[Vec<u8>], parts: usize) -> Result<Head> {
        if batch.len() != canonical.len() {
            return Err(Error::BrokenChain {
                seq: batch.first().map_or(0, Event::seq),
                reason: format!("{} events but {} encodings", batch.len(), canonical.len()),
            });
        }
        let mut head = self
            .head
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let before = *head;
        let mut tip = before;
        for event in batch {
            event.check_follows(tip.seq, &tip.hash)?;
            if event.epoch() < tip.epoch {
                return Err(Error::BrokenChain {
                    seq: event.seq(),
                    reason: format!(
                        "epoch {} is below the previous event's epoch {}",
                        event.epoch(),
                        tip.epoch
                    ),
                });
            }
            tip = Head::of(event);
        }
        let last_group = batch
            .iter()
            .rev()
            .find_map(|event| match event.body.change {
                crate::log::event::Change::Group { events } => {
                    Some((event.seq(), event.seq() + u64::from(events)))
                }
                _ => None,
            });
        if let Some(group) = last_group {
            // Written before the events: a crash between the two leaves a group whose
            // start is past the head, which `open_group` ignores.
            self.log_base.insert(LAST_GROUP_KEY, &encode_group(group))?;
        }
        let records = runs::pack(
            batch
                .iter()
                .zip(canonical)
                .map(|(event, canonical)| (event.seq(), encode_value(event, canonical))),
        );
        if parts == usize::MAX {
            parts::write(
                self.events.tree(),
                &self.log_base,
                before.seq,
                records.into_iter(),
            )?;
        } else {
            parts::write_parts(
                self.events.tree(),
                &self.log_base,
                before.seq,
                records.into_iter(),
                parts,
            )?;
            self.flush_durably()?;
            return Ok(before);
        }
        self.flush_durably()?;
        *head = tip;
        drop(head);
        self.notify(tip);
        Ok(tip)
    }

    /// The last event compacted away: events up to it are no longer in the log
    /// (`Head::EMPTY` when nothing was).
    pub fn base(&self) -> Head {
        *self
            .base
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Remove every event after `seq` and return them (oldest first). Durable on return.
    pub fn truncate_after(&self, seq: u64) -> Result<Vec<Event>> {
        let mut head = self
            .head
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if seq >= head.seq {
            return Ok(Vec::new());
        }
        let base = self.base();
        if seq < base.seq {
            return Err(Error::Compacted {
                seq,
                base: base.seq,
            });
        }
        let mut sled_batch = sled::Batch::default();
        let mut removed = Vec::with_capacity((head.seq - seq) as usize);
        for (at, record) in self.events.remove_after(seq, &mut sled_batch)? {
            removed.push(decode_value(at, &record)?);
        }
        if removed.len() as u64 != head.seq - seq {
            return Err(Error::BrokenChain {
                seq: seq + removed.len() as u64 + 1,
                reason: "missing from the log".to_string(),
            });
        }
        let new_head = if seq == base.seq {
            base
        } else {
            let value = self.stored(seq)?;
            Head::of(&decode_value(seq, &value)?)
        };
        self.events.tree().apply_batch(sled_batch)?;
        // The last group may be gone with them: find the one before (a rejoin, rare).
        self.forget_groups_after(seq)?;
        self.flush_durably()?;
        *head = new_head;
        drop(head);
        self.notify(new_head);
        Ok(removed)
    }

    /// Remove the events up to and including `seq` (which must be retained), making
    /// event `seq` the base. Durable on return. Returns how many events it compacted
    /// away (the runs they were stored in go once none of their events is retained).
    pub fn compact_through(&self, seq: u64) -> Result<u64> {
        let head = self
            .head
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let base = self.base();
        if seq <= base.seq {
            return Ok(0);
        }
        if seq > head.seq {
            return Err(Error::BeyondHead {
                seq,
                head: head.seq,
            });
        }
        let value = self.stored(seq)?;
        let new_base = Head::of(&decode_value(seq, &value)?);
        // The base moves first: a crash after it leaves only unreachable old events,
        // which the next compaction removes.
        self.log_base.insert(BASE_KEY, encode_head(&new_base))?;
        self.flush_durably()?;
        *self
            .base
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = new_base;
        // A run holding `seq` and later events stays whole: reads stop at the base.
        self.events.remove_through(seq)?;
        self.flush_durably()?;
        drop(head);
        Ok(seq - base.seq)
    }

    /// Drop every event and start over from `base` (a snapshot's head): the passive's
    /// bootstrap when its own head was compacted away on the active. Durable on return.
    pub fn reset_to(&self, base: Head) -> Result<()> {
        let mut head = self
            .head
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // The new base with a mark that the old runs are to go, in one batch (flushed):
        // from then on an open removes whatever runs a crash left before it reads the
        // head, so the base is never read beside a part of the old events. The runs
        // then go in bounded batches (not one transaction holding them all), and the
        // mark last.
        let mut reset = sled::Batch::default();
        reset.insert(BASE_KEY, encode_head(&base));
        // A snapshot is taken at the active's head, which is always a group's end.
        reset.remove(LAST_GROUP_KEY);
        reset.insert(RESETTING_KEY, &[]);
        self.log_base.apply_batch(reset)?;
        self.flush_durably()?;
        self.events.remove_all()?;
        self.log_base.remove(RESETTING_KEY)?;
        self.flush_durably()?;
        *self
            .base
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = base;
        *head = base;
        drop(head);
        self.notify(base);
        Ok(())
    }

    /// Overwrite the stored bytes of one event. For tests that prove tampering is found.
    #[doc(hidden)]
    pub fn tamper_raw(&self, seq: u64, edit: impl FnOnce(&mut Vec<u8>)) -> Result<()> {
        self.events.tamper(seq, edit)
    }
}
