//! How the log's records sit in sled: consecutive events of one append stored
//! together, a *run* per sled value, under the big-endian seq of the run's first event.
//!
//! sled 0.34 copies a tree node for every insert (`parts.rs`), which made one insert
//! per event most of what an append cost: 20,000 events took 150–260 ms of CPU as
//! single inserts and 20–40 ms in runs of 64, with less memory held (a throwaway
//! program, both ways; benches/results/log-runs.md). A run holds at most
//! `RUN_EVENTS` records and, unless one record alone is larger, `RUN_BYTES`; its value
//! is, per record, `u32le length ‖ record` (the record as `codec` encodes it). Runs
//! never span two appends, so removing the runs after a seq that ended an append
//! (`parts::undo_interrupted`) removes whole appends. `truncate_after` and compaction
//! cut at any seq: a truncation rewrites the run it cuts; compaction leaves the run it
//! cuts whole, and the log refuses to read at or before its base.
//!
//! Logs written one record per value (the tree `events`, before runs) are rewritten
//! into runs when opened (`migrate`, under a mark in `log_base`); a data_dir whose
//! events are in both layouts with no rewrite under way is refused (`single_layout`).

use crate::error::{Error, Result};

use super::codec::key;

/// Records per run at most.
pub(super) const RUN_EVENTS: usize = 64;
/// Bytes of records per run at most, unless one record alone is larger.
pub(super) const RUN_BYTES: usize = 64 << 10;
/// The tree of runs.
pub(super) const TREE: &str = "event_runs";
/// The tree of one record per value that runs replaced.
const SINGLE_TREE: &str = "events";
/// In `log_base` while a log of that layout is being rewritten into runs.
const MIGRATING_KEY: &[u8] = b"migrating_to_runs";
/// Runs removed per sled batch when all go.
const REMOVALS_PER_BATCH: usize = 256;

/// The tree of a log stored one record per value, when it holds events (to be
/// rewritten into runs). Refused when runs hold events too and no rewrite was under
/// way: an older binary wrote to this data_dir after the rewrite, and which of the two
/// is the log cannot be told.
pub(super) fn single_layout(db: &sled::Db, log_base: &sled::Tree) -> Result<Option<sled::Tree>> {
    if !db
        .tree_names()
        .iter()
        .any(|name| name.as_ref() == SINGLE_TREE.as_bytes())
    {
        return Ok(None);
    }
    let single = db.open_tree(SINGLE_TREE)?;
    if single.is_empty() {
        return Ok(None);
    }
    if !db.open_tree(TREE)?.is_empty() && !log_base.contains_key(MIGRATING_KEY)? {
        return Err(broken(
            0,
            "the log is stored in both layouts (one event per value, and in runs): an \
             older standin wrote to this data_dir after a newer one had rewritten its log; \
             restore data_dir from a copy, or move it away and start with an empty one to \
             copy the peer",
        ));
    }
    Ok(Some(single))
}

/// The runs tree.
#[derive(Clone)]
pub(super) struct Runs {
    tree: sled::Tree,
}

fn broken(seq: u64, reason: impl Into<String>) -> Error {
    Error::BrokenChain {
        seq,
        reason: reason.into(),
    }
}

fn seq_of_key(stored_key: &[u8]) -> Result<u64> {
    stored_key
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| broken(0, "malformed key in the log's runs"))
}

/// The records of the run stored under `first`, in order.
fn records(first: u64, value: &[u8]) -> Result<Vec<&[u8]>> {
    let mut out = Vec::new();
    let mut rest = value;
    while !rest.is_empty() {
        let seq = first + out.len() as u64;
        let Some((length, tail)) = rest.split_first_chunk::<4>() else {
            return Err(broken(seq, "a run of the log ends inside a length"));
        };
        let length = u32::from_le_bytes(*length) as usize;
        if tail.len() < length {
            return Err(broken(
                seq,
                format!(
                    "a run of the log says {length} bytes, {} are left",
                    tail.len()
                ),
            ));
        }
        out.push(&tail[..length]);
        rest = &tail[length..];
    }
    Ok(out)
}

/// Append one record to a run's value.
fn push_record(value: &mut Vec<u8>, record: &[u8]) {
    value.extend_from_slice(&(record.len() as u32).to_le_bytes());
    value.extend_from_slice(record);
}

fn encode_run<'a>(records: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut value = Vec::new();
    for record in records {
        push_record(&mut value, record);
    }
    value
}

/// `records` (seq, record), consecutive, packed into runs: (key, value) for sled.
pub(super) fn pack(records: impl IntoIterator<Item = (u64, Vec<u8>)>) -> Vec<([u8; 8], Vec<u8>)> {
    let mut runs = Vec::new();
    let mut first = None;
    let mut count = 0;
    let mut value = Vec::new();
    for (seq, record) in records {
        let full = count == RUN_EVENTS || (count > 0 && value.len() + 4 + record.len() > RUN_BYTES);
        if full {
            if let Some(start) = first.take() {
                runs.push((key(start), std::mem::take(&mut value)));
            }
            count = 0;
        }
        first.get_or_insert(seq);
        push_record(&mut value, &record);
        count += 1;
    }
    if let Some(start) = first {
        runs.push((key(start), value));
    }
    runs
}

impl Runs {
    /// The runs tree of `db`, with a log stored one record per value rewritten into it
    /// first (`log_base` holds the mark of a rewrite under way).
    pub fn open(
        db: &sled::Db,
        sync: &crate::sled_sync::SledSync,
        log_base: &sled::Tree,
    ) -> Result<Runs> {
        let tree = db.open_tree(TREE)?;
        let runs = Runs { tree };
        runs.migrate(db, sync, log_base)?;
        Ok(runs)
    }

    pub fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    /// Rewrite a log stored one record per value (`events`) into runs: the runs
    /// written and flushed, then the old tree dropped. A crash before the drop leaves
    /// the old tree whole, and the next open starts the rewrite again from nothing.
    fn migrate(
        &self,
        db: &sled::Db,
        sync: &crate::sled_sync::SledSync,
        log_base: &sled::Tree,
    ) -> Result<()> {
        let names = db.tree_names();
        if !names
            .iter()
            .any(|name| name.as_ref() == SINGLE_TREE.as_bytes())
        {
            // A stop between dropping the old tree and removing the mark: the rewrite
            // is done, and the mark must not excuse an older binary's tree later.
            if log_base.remove(MIGRATING_KEY)?.is_some() {
                db.flush()?;
                sync.sync()?;
            }
            return Ok(());
        }
        let single = db.open_tree(SINGLE_TREE)?;
        if !single.is_empty() {
            // (An interrupted append of the old layout is undone by the caller first,
            // and `single_layout` refused runs beside it that no rewrite left.)
            log_base.insert(MIGRATING_KEY, &[])?;
            db.flush()?;
            sync.sync()?;
            self.remove_all()?;
            let mut moved = 0u64;
            let mut pending: Vec<(u64, Vec<u8>)> = Vec::new();
            let mut expected = None;
            for item in single.iter() {
                let (stored_key, value) = item?;
                let seq = seq_of_key(&stored_key)?;
                if expected.is_some_and(|next| next != seq) {
                    // A gap: runs hold consecutive events only.
                    self.write_runs(std::mem::take(&mut pending))?;
                }
                expected = Some(seq + 1);
                pending.push((seq, value.to_vec()));
                moved += 1;
                if pending.len() >= RUN_EVENTS * 64 {
                    self.write_runs(std::mem::take(&mut pending))?;
                }
            }
            self.write_runs(pending)?;
            db.flush()?;
            sync.sync()?;
            tracing::info!(events = moved, "rewrote the log into runs of events");
        }
        db.drop_tree(SINGLE_TREE)?;
        log_base.remove(MIGRATING_KEY)?;
        db.flush()?;
        sync.sync()
    }

    fn write_runs(&self, records: Vec<(u64, Vec<u8>)>) -> Result<()> {
        let mut batch = sled::Batch::default();
        for (run_key, value) in pack(records) {
            batch.insert(&run_key, value);
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    /// The run holding `seq`, if one starts at or before it: its first seq and value.
    fn run_at(&self, seq: u64) -> Result<Option<(u64, sled::IVec)>> {
        match self.tree.range(..=key(seq)).next_back() {
            None => Ok(None),
            Some(item) => {
                let (stored_key, value) = item?;
                Ok(Some((seq_of_key(&stored_key)?, value)))
            }
        }
    }

    /// The record of `seq`, if stored.
    pub fn record(&self, seq: u64) -> Result<Option<Vec<u8>>> {
        let Some((first, value)) = self.run_at(seq)? else {
            return Ok(None);
        };
        Ok(records(first, &value)?
            .get((seq - first) as usize)
            .map(|record| record.to_vec()))
    }

    /// The records from `from` on, in order, as far as `to` (inclusive) or a gap.
    pub fn records_from(&self, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        let mut next = from;
        while next <= to {
            let Some((first, value)) = self.run_at(next)? else {
                break;
            };
            let run = records(first, &value)?;
            let Some(within) = run.get((next - first) as usize..) else {
                break;
            };
            if within.is_empty() {
                break;
            }
            for record in within {
                if next > to {
                    break;
                }
                out.push((next, record.to_vec()));
                next += 1;
            }
        }
        Ok(out)
    }

    /// The last record stored, with its seq.
    pub fn last(&self) -> Result<Option<(u64, Vec<u8>)>> {
        let Some(item) = self.tree.last()? else {
            return Ok(None);
        };
        let (stored_key, value) = item;
        let first = seq_of_key(&stored_key)?;
        let run = records(first, &value)?;
        Ok(run
            .last()
            .map(|record| (first + run.len() as u64 - 1, record.to_vec())))
    }

    /// Into `batch`: remove every record after `seq` (the run holding `seq` rewritten
    /// without them). The records removed, in order.
    pub fn remove_after(&self, seq: u64, batch: &mut sled::Batch) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut removed = Vec::new();
        if let Some((first, value)) = self.run_at(seq)? {
            let run = records(first, &value)?;
            let keep = ((seq - first + 1) as usize).min(run.len());
            if keep < run.len() {
                for (at, record) in run.iter().enumerate().skip(keep) {
                    removed.push((first + at as u64, record.to_vec()));
                }
                batch.insert(&key(first), encode_run(run[..keep].iter().copied()));
            }
        }
        for item in self.tree.range(key(seq.saturating_add(1))..) {
            let (stored_key, value) = item?;
            let first = seq_of_key(&stored_key)?;
            if first <= seq {
                continue;
            }
            for (at, record) in records(first, &value)?.into_iter().enumerate() {
                removed.push((first + at as u64, record.to_vec()));
            }
            batch.remove(stored_key);
        }
        Ok(removed)
    }

    /// Remove every run whose records all are at or before `seq` (a run holding `seq`
    /// and later records stays whole).
    pub fn remove_through(&self, seq: u64) -> Result<()> {
        let mut batch = sled::Batch::default();
        for item in self.tree.range(..=key(seq)) {
            let (stored_key, value) = item?;
            let first = seq_of_key(&stored_key)?;
            let count = records(first, &value)?.len() as u64;
            if first + count.saturating_sub(1) <= seq {
                batch.remove(stored_key);
            }
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    /// The key of every run.
    pub fn keys(&self) -> Result<Vec<sled::IVec>> {
        let mut keys = Vec::new();
        for item in self.tree.iter().keys() {
            keys.push(item?);
        }
        Ok(keys)
    }

    /// Remove every run, in bounded sled batches (not flushed).
    pub fn remove_all(&self) -> Result<()> {
        for keys in self.keys()?.chunks(REMOVALS_PER_BATCH) {
            let mut batch = sled::Batch::default();
            for run in keys {
                batch.remove(run.clone());
            }
            self.tree.apply_batch(batch)?;
        }
        Ok(())
    }

    /// Change the stored record of `seq` in place (tests of tampering).
    pub fn tamper(&self, seq: u64, edit: impl FnOnce(&mut Vec<u8>)) -> Result<()> {
        let Some((first, value)) = self.run_at(seq)? else {
            return Ok(());
        };
        let mut run: Vec<Vec<u8>> = records(first, &value)?
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect();
        if let Some(record) = run.get_mut((seq - first) as usize) {
            edit(record);
        }
        self.tree
            .insert(key(first), encode_run(run.iter().map(Vec::as_slice)))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{pack, records, RUN_BYTES, RUN_EVENTS};

    #[test]
    fn records_are_packed_in_runs_bounded_by_count_and_bytes() {
        let small: Vec<(u64, Vec<u8>)> = (1..=150).map(|seq| (seq, vec![seq as u8; 100])).collect();
        let runs = pack(small);
        assert_eq!(runs.len(), 3);
        assert_eq!(runs[1].0, (1 + RUN_EVENTS as u64).to_be_bytes());
        let back = records(1 + RUN_EVENTS as u64, &runs[1].1).unwrap();
        assert_eq!(back.len(), RUN_EVENTS);
        assert_eq!(back[0], vec![(1 + RUN_EVENTS) as u8; 100].as_slice());

        // A record larger than a run's bytes is a run of its own.
        let large = vec![
            (10, vec![1u8; 10]),
            (11, vec![2u8; RUN_BYTES + 1]),
            (12, vec![3u8; 10]),
        ];
        let runs = pack(large);
        let firsts: Vec<[u8; 8]> = runs.iter().map(|(run_key, _)| *run_key).collect();
        assert_eq!(
            firsts,
            vec![
                10u64.to_be_bytes(),
                11u64.to_be_bytes(),
                12u64.to_be_bytes()
            ]
        );
    }

    #[test]
    fn a_run_cut_short_is_refused_with_the_seq_of_the_record() {
        let runs = pack((5..=7).map(|seq| (seq, vec![0u8; 20])));
        let mut value = runs[0].1.clone();
        value.truncate(value.len() - 3);
        let error = records(5, &value).unwrap_err().to_string();
        assert!(error.contains("7"), "{error}");
    }
}
