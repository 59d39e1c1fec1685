//! The passive's fetch and apply of one batch: stage large files, store the chunks
//! that came inline, fetch (verified, in bounded calls) the ones still missing while
//! the previous batch is applied, then hand this batch to that apply (taken while it
//! commits: `replay::Feed`) or start a new one.

use std::time::{Duration, Instant};

use standin_engine::{Event, Hash};

use super::parts::{chunks_named, fetch_groups, missing_with_lengths, split_by_missing};
use super::{
    peer_error, InFlight, PullError, PullReport, Puller, Storing, APPLY_CONTENT_BYTES,
    STORE_BATCH_BYTES,
};
use crate::peer::PeerStream;

/// A chunk that does not match its hash is the active's fault; anything else (a full
/// disk, an I/O error) is ours, and must not be reported as bad data from the active.
pub(super) fn store_error(error: standin_engine::Error, data_dir: &std::path::Path) -> PullError {
    match error {
        standin_engine::Error::ChunkMismatch { .. } => PullError::BadData(error.to_string()),
        other => PullError::local(other, data_dir),
    }
}

impl Puller {
    /// `split_by_missing` with the chunks the store lacks now (looked up while garbage
    /// collection waits, as it does until the parts are applied).
    pub(super) async fn split_by_missing(
        &self,
        events: Vec<Event>,
    ) -> Result<Vec<Vec<Event>>, PullError> {
        let node = self.node.clone();
        let _applying = self.node.apply_lock.clone().read_owned().await;
        tokio::task::spawn_blocking(move || {
            let wanted = chunks_named(&events);
            let missing: std::collections::HashSet<Hash> = missing_with_lengths(&node, wanted)?
                .into_iter()
                .map(|(hash, _)| hash)
                .collect();
            Ok(split_by_missing(events, APPLY_CONTENT_BYTES, &missing))
        })
        .await
        .map_err(|error| PullError::Apply(error.to_string()))?
    }

    /// Fetch (verified, in bounded calls) the chunks of `wanted` the store lacks.
    pub(super) async fn fetch_missing(
        &mut self,
        wanted: Vec<(Hash, u32)>,
        report: &mut PullReport,
    ) -> Result<(), PullError> {
        let node = self.node.clone();
        let started = Instant::now();
        let missing = tokio::task::spawn_blocking(move || missing_with_lengths(&node, wanted))
            .await
            .map_err(|error| PullError::Apply(error.to_string()))??;
        let looked_up = started.elapsed();
        // The last group's store (and sync) runs while the next group is asked for.
        let mut storing: Storing = None;
        let mut fetched = Ok(());
        for group in fetch_groups(&missing) {
            fetched = self.fetch(&group, report, &mut storing).await;
            if fetched.is_err() {
                break;
            }
        }
        // Never leave a store running behind us, even on an error; the fetch's error
        // (if any) is the one reported.
        let stored = match storing.take() {
            Some(task) => task
                .await
                .map_err(|error| PullError::Apply(error.to_string()))
                .and_then(|stored| stored),
            None => Ok(()),
        };
        fetched?;
        stored?;
        tracing::debug!(
            chunks = missing.len(),
            lookup_ms = looked_up.as_secs_f64() * 1e3,
            total_ms = started.elapsed().as_secs_f64() * 1e3,
            "chunks fetched"
        );
        Ok(())
    }

    /// Wait for the batch being applied, if any, and count it.
    pub(super) async fn finish_apply(
        &mut self,
        in_flight: &mut InFlight,
        report: &mut PullReport,
    ) -> Result<(), PullError> {
        if let Some(apply) = in_flight.take() {
            let count = apply
                .task
                .await
                .map_err(|error| PullError::Apply(error.to_string()))??;
            report.events_applied += count;
            self.node.metrics.events_replicated.inc_by(count);
            if count > 0 {
                self.working_again();
            }
        }
        Ok(())
    }

    /// A batch was applied: the last pull error no longer holds. (A following stream
    /// with a period of 0 does not end, so this cannot wait for the round's end.)
    pub(super) fn working_again(&self) {
        if self.node.last_error().is_some() {
            tracing::info!("replication is working again");
            self.node.set_error(None);
            self.node.set_pull_error(None);
        }
    }

    /// Fetch the chunks `events` need that we lack; then hand them to the apply in
    /// flight (which takes them while it commits its last part: `replay::Feed`), or,
    /// once that has ended, start a new apply. So the network and the disk overlap —
    /// batch N+1 is fetched while batch N is applied — and batch N+1 is written while
    /// batch N's durability point runs.
    pub(super) async fn fetch_and_start_apply(
        &mut self,
        events: Vec<Event>,
        inline: Vec<(Hash, prost::bytes::Bytes)>,
        report: &mut PullReport,
        in_flight: &mut InFlight,
    ) -> Result<(), PullError> {
        crate::passive::space::check(
            &self.node.config.folder,
            &self.node.config.data_dir,
            &events,
        )
        .map_err(PullError::NoSpace)?;
        // Garbage collection waits while chunks are fetched but not yet named by the log.
        let applying = self.node.apply_lock.clone().read_owned().await;
        let wanted = chunks_named(&events);
        self.stage(&events).await?;
        if !inline.is_empty() {
            self.store_inline(&wanted, inline, report).await?;
        }
        self.fetch_missing(wanted, report).await?;
        let waited = Instant::now();
        let events = match in_flight.as_ref() {
            Some(apply) => {
                let feed = apply.feed.clone();
                let offered = tokio::task::spawn_blocking(move || feed.offer(events))
                    .await
                    .map_err(|error| PullError::Apply(error.to_string()))?;
                match offered {
                    // Taken: the running apply holds its own guard until it has ended,
                    // past this batch's commit.
                    Ok(()) => {
                        tracing::debug!(
                            wait_ms = waited.elapsed().as_secs_f64() * 1e3,
                            "handed to the apply in flight"
                        );
                        return Ok(());
                    }
                    Err(events) => events,
                }
            }
            None => events,
        };
        self.finish_apply(in_flight, report).await?;
        tracing::debug!(
            wait_ms = waited.elapsed().as_secs_f64() * 1e3,
            "waited for the previous apply"
        );
        let node = self.node.clone();
        let feed = std::sync::Arc::new(standin_engine::replay::Feed::new(events));
        let fed = feed.clone();
        let task = tokio::task::spawn_blocking(move || {
            let _applying = applying;
            let before = node.repository.head().seq;
            let applied = standin_engine::replay::apply_fed(
                &node.config.folder,
                &node.repository,
                &fed,
                &standin_engine::replay::ReplayOptions::default(),
            );
            let count = node.repository.head().seq.saturating_sub(before);
            applied.map(|_| count).map_err(|error| {
                // The batches committed before the failure count all the same.
                node.metrics.events_replicated.inc_by(count);
                PullError::local(error, &node.config.data_dir)
            })
        });
        *in_flight = Some(super::Applying { feed, task });
        Ok(())
    }

    /// Store the chunks that came inline with a batch, each verified against its hash
    /// and named by the batch (`wanted`); durable with the batch's commit, which syncs
    /// the chunk store before the events are appended.
    pub(super) async fn store_inline(
        &self,
        wanted: &[(Hash, u32)],
        inline: Vec<(Hash, prost::bytes::Bytes)>,
        report: &mut PullReport,
    ) -> Result<(), PullError> {
        let named: std::collections::HashSet<Hash> = wanted.iter().map(|(hash, _)| *hash).collect();
        for (hash, data) in &inline {
            if !named.contains(hash) {
                return Err(PullError::BadData(format!(
                    "chunk {hash} came inline but no event of the batch names it"
                )));
            }
            report.chunks_fetched += 1;
            report.bytes_fetched += data.len() as u64;
            self.node.metrics.bytes_replicated.inc_by(data.len() as u64);
        }
        self.spawn_store(inline, false, false)
            .await
            .map_err(|error| PullError::Apply(error.to_string()))?
    }

    /// Stage the large files `events` write, so that their fetched chunks are written
    /// once, straight into the files replay renames into place (the engine's
    /// `ChunkStore::stage`; ARCHITECTURE.md, "The passive keeps content by reference").
    pub(super) async fn stage(&self, events: &[Event]) -> Result<(), PullError> {
        if !events.iter().any(|event| {
            event.body.change.content_size() >= standin_engine::chunk_store::BY_REF_MIN_BYTES
        }) {
            return Ok(());
        }
        let node = self.node.clone();
        let events = events.to_vec();
        tokio::task::spawn_blocking(move || {
            node.repository
                .chunks()
                .stage(&node.config.folder, &events)
                .map_err(|error| PullError::local(error, &node.config.data_dir))
        })
        .await
        .map_err(|error| PullError::Apply(error.to_string()))?
        .map(|_| ())
    }

    /// Fetch one group of chunks, verified; the store of its last part (with a sync,
    /// so that a restart does not fetch the group again) is left in `storing`.
    pub(super) async fn fetch(
        &mut self,
        group: &[Hash],
        report: &mut PullReport,
        storing: &mut Storing,
    ) -> Result<(), PullError> {
        let mut stream = self.link.fetch_chunks(group).await.map_err(peer_error)?;
        let mut expected: std::collections::HashSet<Hash> = group.iter().copied().collect();
        // Received chunks are verified and stored a few MiB at a time, in one blocking
        // task each, rather than one task per chunk; the next few MiB are received
        // while the previous ones are stored (one store at a time, in order).
        let mut pending: Vec<(Hash, prost::bytes::Bytes)> = Vec::new();
        let mut pending_bytes = 0usize;
        self.receive_group(
            &mut stream,
            &mut expected,
            &mut pending,
            &mut pending_bytes,
            storing,
            report,
        )
        .await?;
        if let Some(hash) = expected.iter().next() {
            return Err(PullError::BadData(format!(
                "the active did not send chunk {hash} ({} missing)",
                expected.len()
            )));
        }
        if let Some(task) = storing.take() {
            task.await
                .map_err(|error| PullError::Apply(error.to_string()))??;
        }
        *storing = Some(self.spawn_store(pending, true, true));
        Ok(())
    }

    /// Receive one `FetchChunks` stream, handing every `STORE_BATCH_BYTES` received to
    /// a store task (after the previous one has finished).
    pub(super) async fn receive_group(
        &self,
        stream: &mut PeerStream<Vec<(Hash, prost::bytes::Bytes)>>,
        expected: &mut std::collections::HashSet<Hash>,
        pending: &mut Vec<(Hash, prost::bytes::Bytes)>,
        pending_bytes: &mut usize,
        storing: &mut Storing,
        report: &mut PullReport,
    ) -> Result<(), PullError> {
        while let Some(batch) = stream
            .next_within(Duration::from_secs(60))
            .await
            .map_err(peer_error)?
        {
            for (hash, data) in batch {
                if !expected.remove(&hash) {
                    return Err(PullError::BadData(format!(
                        "chunk {hash} was not asked for"
                    )));
                }
                let len = data.len() as u64;
                report.chunks_fetched += 1;
                report.bytes_fetched += len;
                self.node.metrics.bytes_replicated.inc_by(len);
                *pending_bytes += data.len();
                pending.push((hash, data));
            }
            if *pending_bytes >= STORE_BATCH_BYTES {
                if let Some(task) = storing.take() {
                    task.await
                        .map_err(|error| PullError::Apply(error.to_string()))??;
                }
                *storing = Some(self.spawn_store(std::mem::take(pending), false, true));
                *pending_bytes = 0;
            }
        }
        Ok(())
    }

    /// Verify and store received chunks (and sync the store when `sync`), in a
    /// blocking task of its own. `fetched`: chunks asked for because the store lacked
    /// them (`ChunkStore::put_fetched`: the store's tree is not searched again), not
    /// chunks that came inline.
    pub(super) fn spawn_store(
        &self,
        chunks: Vec<(Hash, prost::bytes::Bytes)>,
        sync: bool,
        fetched: bool,
    ) -> tokio::task::JoinHandle<Result<(), PullError>> {
        let node = self.node.clone();
        tokio::task::spawn_blocking(move || -> Result<(), PullError> {
            let store = node.repository.chunks();
            for (hash, data) in chunks {
                let stored = if fetched {
                    store.put_fetched(hash, &data)
                } else {
                    store.put_verified(hash, &data)
                };
                stored.map_err(|error| store_error(error, &node.config.data_dir))?;
            }
            if sync {
                store
                    .sync()
                    .map_err(|error| PullError::local(error, &node.config.data_dir))?;
            }
            Ok(())
        })
    }
}
