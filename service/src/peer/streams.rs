//! The link's streams: the log (`pull`), content (`fetch_chunks`) and a snapshot,
//! each message converted to engine types (and checked) as it arrives.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use prost::bytes::Bytes;
use standin_engine::folder::index::Entry;
use standin_engine::folder::meta::Meta;
use standin_engine::{Event, Hash, Head, RelPath};
use standin_proto::v1 as wire;
use tokio_stream::{Stream, StreamExt};

use super::calls::within;
use super::{Connection, PeerError, PeerLink};
use crate::wire::convert::{event_from_wire, hash_from_wire, head_from_wire};

/// One message of a `Pull` stream.
#[derive(Clone, Debug, PartialEq)]
pub enum PullMessage {
    /// Events after the asked-for head (possibly none: a keep-alive), and the peer's
    /// head when it sent them. Every event is checked as `convert` checks it.
    /// `chunks`: content the peer sent inline (not yet verified against its hash, nor
    /// checked to be named by `events`: the receiver does both).
    Batch {
        head: Head,
        events: Vec<Event>,
        chunks: Vec<(Hash, Bytes)>,
    },
    /// Our history is not the peer's: at `seq` it holds `theirs`, we `ours` (raw
    /// hashes; `ours` is empty when the peer has no event there).
    Divergence {
        seq: u64,
        ours: Vec<u8>,
        theirs: Vec<u8>,
        peer_head_seq: u64,
    },
    /// Our head is older than the peer's log base: start again from a snapshot.
    Compacted { base_seq: u64 },
}

/// One message of a `Snapshot` stream.
#[derive(Clone, Debug)]
pub enum SnapshotPart {
    Head(Head),
    Entries(Vec<(RelPath, Entry, Option<Meta>)>),
}

type Inner<T> = Pin<Box<dyn Stream<Item = Result<T, PeerError>> + Send>>;

/// A stream from the peer, in engine types. A failure to reach the peer, or a
/// silence past the caller's bound, drops the connection it came on.
pub struct PeerStream<T> {
    inner: Inner<T>,
    connection: Arc<Connection>,
    generation: u64,
}

impl<T> PeerStream<T> {
    /// The next message, `None` at the stream's end. Cancel-safe: a message is never
    /// lost to a timeout around this call.
    pub async fn next(&mut self) -> Option<Result<T, PeerError>> {
        let next = self.inner.next().await;
        if let Some(Err(error)) = &next {
            if error.is_unreachable() {
                self.connection.failed(self.generation);
            }
        }
        next
    }

    /// The next message, or `Unreachable` after `silence` without one.
    pub async fn next_within(&mut self, silence: Duration) -> Result<Option<T>, PeerError> {
        match tokio::time::timeout(silence, self.next()).await {
            Ok(next) => next.transpose(),
            Err(_) => {
                // A stream this silent may be on a connection that a partition left
                // stuck: the next call makes a new one.
                self.connection.failed(self.generation);
                Err(PeerError::TimedOut(format!(
                    "no message from the peer for {} s",
                    silence.as_secs()
                )))
            }
        }
    }
}

fn bad(error: impl std::fmt::Display) -> PeerError {
    PeerError::BadAnswer(error.to_string())
}

fn pull_message(message: wire::PullResponse) -> Result<PullMessage, PeerError> {
    match message.kind {
        Some(wire::pull_response::Kind::Batch(batch)) => Ok(PullMessage::Batch {
            head: head_from_wire(batch.head.as_ref()).map_err(bad)?,
            events: batch
                .events
                .iter()
                .map(event_from_wire)
                .collect::<Result<_, _>>()
                .map_err(bad)?,
            chunks: chunks(wire::ChunkBatch {
                chunks: batch.chunks,
            })?,
        }),
        Some(wire::pull_response::Kind::Divergence(divergence)) => Ok(PullMessage::Divergence {
            seq: divergence.seq,
            ours: divergence.ours,
            theirs: divergence.theirs,
            peer_head_seq: head_from_wire(divergence.head.as_ref())
                .map(|head| head.seq)
                .unwrap_or(0),
        }),
        Some(wire::pull_response::Kind::Compacted(compacted)) => Ok(PullMessage::Compacted {
            base_seq: head_from_wire(compacted.base.as_ref())
                .map(|head| head.seq)
                .unwrap_or(0),
        }),
        None => Err(bad("an empty message")),
    }
}

fn chunks(batch: wire::ChunkBatch) -> Result<Vec<(Hash, Bytes)>, PeerError> {
    batch
        .chunks
        .into_iter()
        .map(|chunk| {
            Ok((
                hash_from_wire("chunk.hash", &chunk.hash).map_err(bad)?,
                chunk.data,
            ))
        })
        .collect()
}

fn snapshot_part(part: wire::SnapshotPart) -> Result<SnapshotPart, PeerError> {
    match part.kind {
        Some(wire::snapshot_part::Kind::Head(head)) => Ok(SnapshotPart::Head(
            head_from_wire(Some(&head)).map_err(bad)?,
        )),
        Some(wire::snapshot_part::Kind::Entries(batch)) => batch
            .entries
            .iter()
            .map(|entry| {
                standin_engine::folder::index::decode_entry(&entry.path, &entry.entry)
                    .map_err(|error| bad(format!("snapshot: {error}")))
            })
            .collect::<Result<_, _>>()
            .map(SnapshotPart::Entries),
        None => Err(bad("snapshot: an empty message")),
    }
}

impl PeerLink {
    /// Open a stream on the bulk connection within `limit`; its messages converted.
    async fn open<W, T>(
        &self,
        limit: Duration,
        call: impl std::future::Future<
            Output = Result<tonic::Response<tonic::Streaming<W>>, tonic::Status>,
        >,
        generation: u64,
        convert: fn(W) -> Result<T, PeerError>,
    ) -> Result<PeerStream<T>, PeerError>
    where
        W: Send + 'static,
        T: Send + 'static,
    {
        let streaming = within(&self.bulk, generation, limit, async {
            call.await
                .map(tonic::Response::into_inner)
                .map_err(PeerError::from_status)
        })
        .await?;
        let inner = streaming.map(move |message| match message {
            Ok(message) => convert(message),
            Err(status) => Err(PeerError::from_status(status)),
        });
        Ok(PeerStream {
            inner: Box::pin(inner),
            connection: self.bulk.clone(),
            generation,
        })
    }

    /// The peer's events after `after` (batches of at most `max_events`); with
    /// `follow`, a stream that stays open and carries new events as they come. Small
    /// chunks come inline (`PullMessage::Batch::chunks`) from a peer that can.
    pub async fn pull(
        &self,
        after: &Head,
        max_events: u32,
        follow: bool,
    ) -> Result<PeerStream<PullMessage>, PeerError> {
        let request = wire::PullRequest {
            after_seq: after.seq,
            after_hash: after.hash.0.to_vec(),
            max_events,
            follow,
            inline_content: true,
        };
        let (generation, mut client) = self.replication();
        self.open(
            self.timing.open,
            client.pull(request),
            generation,
            pull_message,
        )
        .await
    }

    /// The chunks `hashes` names, as the peer sends them (verified by the caller).
    pub async fn fetch_chunks(
        &self,
        hashes: &[Hash],
    ) -> Result<PeerStream<Vec<(Hash, Bytes)>>, PeerError> {
        let request = wire::FetchChunksRequest {
            hashes: hashes.iter().map(|hash| hash.0.to_vec()).collect(),
        };
        let (generation, mut client) = self.replication();
        self.open(
            self.timing.open,
            client.fetch_chunks(request),
            generation,
            chunks,
        )
        .await
    }

    /// The peer's snapshot: its head first, then its index's entries.
    pub async fn snapshot(&self) -> Result<PeerStream<SnapshotPart>, PeerError> {
        let (generation, mut client) = self.replication();
        self.open(
            self.timing.open_snapshot,
            client.snapshot(wire::SnapshotRequest {}),
            generation,
            snapshot_part,
        )
        .await
    }
}
