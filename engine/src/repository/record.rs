//! The active's write path, `Repository::record`: changes sealed into events as one
//! group, and where a log that ends inside a group began it.

use crate::error::{Error, Result};
use crate::fsutil::now_ms;
use crate::log::event::{Change, Event, EventBody};

use super::Repository;

impl Repository {
    /// Record `changes` as new events of `epoch` (the active's write path), as one
    /// group: when there are several, a `Group` event naming how many follow comes
    /// first, so a passive never promotes in the middle of them (invariant 10). The
    /// content of every `Put` must already be in the chunk store. Changes that do not
    /// fit the index stop the batch: the ones before are recorded (as a group of their
    /// own), and the error names the first misfit. Returns the events recorded, the
    /// `Group` event among them.
    pub fn record(&self, epoch: u64, changes: Vec<Change>) -> Result<Vec<Event>> {
        let mut index = self.lock_index();
        self.chunks.sync()?;
        let head = self.log.head();
        if epoch < head.epoch {
            return Err(Error::BrokenChain {
                seq: head.seq + 1,
                reason: format!(
                    "cannot record in epoch {epoch}: the log is at epoch {}",
                    head.epoch
                ),
            });
        }
        let digest_before = index.digest();
        let grouped = changes.len() > 1;
        let first_seq = head.seq + 1 + u64::from(grouped);
        // Each body with its canonical bytes, encoded once (size check, hash, log).
        let mut sealed: Vec<(EventBody, Vec<u8>)> = Vec::with_capacity(changes.len());
        let mut misfit = None;
        let mut undo_last = false;
        let recorded_at_ms = now_ms();
        for change in changes {
            let seq = first_seq + sealed.len() as u64;
            if let Err(error) = index.apply(&change) {
                misfit = Some(Error::Apply {
                    seq,
                    path: error.path.to_string(),
                    reason: error.reason,
                });
                break;
            }
            let body = EventBody {
                seq,
                epoch,
                recorded_at_ms,
                change,
                digest: index.digest(),
            };
            let canonical = body.canonical_bytes();
            let encoded_bytes = canonical.len();
            if encoded_bytes > crate::log::event::MAX_EVENT_BYTES {
                // Undo this change in the index; the ones before are recorded below.
                misfit = Some(Error::Apply {
                    seq,
                    path: body.change.describe_path(),
                    reason: format!(
                        "the event would be {encoded_bytes} bytes, more than the {} an event may have",
                        crate::log::event::MAX_EVENT_BYTES
                    ),
                });
                undo_last = true;
                break;
            }
            sealed.push((body, canonical));
        }
        if undo_last {
            // The index took a change that will not be recorded: rebuild it from the
            // saved index and the log, then apply the recorded prefix again.
            self.reload_index_locked(&mut index)?;
            for (body, _) in &sealed {
                let _ = index.apply(&body.change);
            }
        }
        // The group marker counts what is actually recorded (a misfit cuts it short).
        let mut bodies = Vec::with_capacity(sealed.len() + 1);
        if sealed.len() > 1 {
            let body = EventBody {
                seq: head.seq + 1,
                epoch,
                recorded_at_ms,
                change: Change::Group {
                    events: u32::try_from(sealed.len()).unwrap_or(u32::MAX),
                },
                digest: digest_before,
            };
            let canonical = body.canonical_bytes();
            bodies.push((body, canonical));
        }
        bodies.extend(sealed);
        let mut events = Vec::with_capacity(bodies.len());
        let mut encoded = Vec::with_capacity(bodies.len());
        let mut tip = (head.seq, head.hash);
        for (mut body, mut canonical) in bodies {
            if body.seq != tip.0 + 1 {
                // A lone change after a misfit has no group marker before it.
                body.seq = tip.0 + 1;
                canonical = body.canonical_bytes();
            }
            let hash = crate::log::event::chain_hash(&tip.1, &canonical);
            let event = Event {
                prev: tip.1,
                body,
                hash,
            };
            tip = (event.seq(), event.hash);
            events.push(event);
            encoded.push(canonical);
        }
        if !events.is_empty() {
            if let Err(error) = self.log.append_encoded(&events, &encoded) {
                drop(index);
                self.reload_index()?;
                return Err(error);
            }
            // The log holds the group; the index entries are saved when enough have
            // changed or enough time has passed, and otherwise by capture once it is
            // idle (`save_index_if_dirty`), as replay does: a save per group cost an
            // eighth of a small-file capture's instructions.
            self.save_index_when_due(&mut index, tip.0, events.len())?;
        }
        match misfit {
            Some(error) => Err(error),
            None => Ok(events),
        }
    }

    /// Where the log's last group begins, when the log ends before that group does
    /// (a passive that pulled part of the active's last capture): the seq of its
    /// `Group` event. `None` when the log ends at a group boundary.
    pub fn incomplete_group_start(&self) -> Result<Option<u64>> {
        Ok(self.log.open_group()?.map(|(start, _)| start))
    }
}
