//! Reading the log: one event (`get`, `hash_at`), a verified run of them after a
//! point (`events_after`, what `Pull` serves), the whole retained chain
//! (`check_chain`). Every event read is re-hashed onto its `prev`, and each is checked
//! to link to the one before it.

use super::codec::decode_value;
use super::EventLog;
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::log::event::Event;

impl EventLog {
    /// The event at `seq`, verified against its own hash (`None` past the head or at
    /// or before the base).
    pub fn get(&self, seq: u64) -> Result<Option<Event>> {
        if seq <= self.base().seq || seq > self.head().seq {
            return Ok(None);
        }
        match self.events.record(seq)? {
            // Compacted away while we looked: not a gap.
            None if seq <= self.base().seq => Ok(None),
            None => Err(Error::BrokenChain {
                seq,
                reason: "missing from the log (a gap)".to_string(),
            }),
            Some(value) => decode_value(seq, &value).map(Some),
        }
    }

    /// The hash of the event at `seq` (`Hash::ZERO` for seq 0); `Compacted` for a seq
    /// before the base.
    pub fn hash_at(&self, seq: u64) -> Result<Option<Hash>> {
        let base = self.base();
        if seq == base.seq {
            return Ok(Some(base.hash));
        }
        if seq < base.seq {
            return Err(Error::Compacted {
                seq,
                base: base.seq,
            });
        }
        match self.get(seq)? {
            Some(event) => Ok(Some(event.hash)),
            None => {
                // Compacted away while we looked: say so, as above.
                let base = self.base();
                if seq == base.seq {
                    Ok(Some(base.hash))
                } else if seq < base.seq {
                    Err(Error::Compacted {
                        seq,
                        base: base.seq,
                    })
                } else {
                    Ok(None)
                }
            }
        }
    }

    /// Up to `max` events after (`seq`, `hash`), each checked to link to the one before.
    /// `Divergence` when our event at `seq` has another hash; `BeyondHead` when we have
    /// no event `seq`.
    pub fn events_after(&self, seq: u64, hash: &Hash, max: usize) -> Result<Vec<Event>> {
        let head = self.head();
        if seq > head.seq {
            return Err(Error::BeyondHead {
                seq,
                head: head.seq,
            });
        }
        let ours = self.hash_at(seq)?.unwrap_or_default();
        if ours != *hash {
            return Err(Error::Divergence {
                seq,
                ours,
                theirs: *hash,
            });
        }
        let last = head.seq.min(seq.saturating_add(max as u64));
        let mut out = Vec::with_capacity((last - seq) as usize);
        let mut tip = (seq, ours);
        // The runs holding them, each read once.
        let mut records = self.events.records_from(seq + 1, last)?.into_iter();
        for next in seq + 1..=last {
            let event = match records.next() {
                Some((at, record)) if at == next => decode_value(next, &record)?,
                // Compacted away while we read: not corruption.
                _ if next <= self.base().seq => {
                    return Err(Error::Compacted {
                        seq,
                        base: self.base().seq,
                    })
                }
                _ => {
                    return Err(Error::BrokenChain {
                        seq: next,
                        reason: "missing from the log".to_string(),
                    })
                }
            };
            event.check_follows(tip.0, &tip.1)?;
            tip = (next, event.hash);
            out.push(event);
        }
        Ok(out)
    }

    /// Read and check the whole retained chain, returning the head seq.
    pub fn check_chain(&self) -> Result<u64> {
        let head = self.head();
        let base = self.base();
        let mut tip = (base.seq, base.hash);
        while tip.0 < head.seq {
            let batch = self.events_after(tip.0, &tip.1, 4096)?;
            let Some(last) = batch.last() else { break };
            tip = (last.seq(), last.hash);
        }
        if tip.0 != head.seq || tip.1 != head.hash {
            return Err(Error::BrokenChain {
                seq: tip.0,
                reason: "chain does not reach the head".to_string(),
            });
        }
        Ok(tip.0)
    }

    /// The stored bytes of event `seq`, which must be in the log.
    pub(super) fn stored(&self, seq: u64) -> Result<Vec<u8>> {
        self.events.record(seq)?.ok_or_else(|| Error::BrokenChain {
            seq,
            reason: "missing from the log".to_string(),
        })
    }
}
