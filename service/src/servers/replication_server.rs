//! The `Replication` service: serving the log (`Pull`) and the content (`FetchChunks`).
//!
//! Bounds: a `Pull` batch holds at most `MAX_BATCH_EVENTS` events and, unless one event
//! alone is larger, at most `MAX_BATCH_BYTES` of event bytes; a `FetchChunks` call asks
//! for at most `MAX_FETCH_HASHES` chunks and each chunk is one message (≤ 256 KiB).
//! Streams are sent through a channel of `STREAM_DEPTH` messages, so a slow reader
//! holds at most that many in memory. A `Pull` that asks for `inline_content` gets the
//! content of the small chunks its events name inside the batches (each chunk of at
//! most `INLINE_CHUNK_MAX`, at most `INLINE_BYTES_MAX` per read of the log): a small
//! change then reaches the passive in one message, with no `FetchChunks` round trip.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use standin_engine::{Error as EngineError, Hash};
use standin_proto::v1 as wire;
use standin_proto::v1::replication_server::Replication;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::node::Node;
use crate::wire::convert::{event_to_wire, hash_from_wire, head_to_wire};

pub const MAX_BATCH_EVENTS: u32 = 4096;
pub const DEFAULT_BATCH_EVENTS: u32 = 1024;
pub const MAX_BATCH_BYTES: usize = 2 << 20;
pub const MAX_FETCH_HASHES: usize = 1024;
const STREAM_DEPTH: usize = 4;
/// Chunks up to this size may travel inside a `Pull` batch.
pub const INLINE_CHUNK_MAX: u32 = 64 << 10;
/// At most this many bytes of content inline per read of the log (≤ 1,024 events).
pub const INLINE_BYTES_MAX: usize = 1 << 20;
/// A `FetchChunks` message is sent once it holds this many bytes of chunks (so at
/// most this plus one chunk, ≤ 256 KiB).
const FETCH_MESSAGE_BYTES: usize = 1 << 20;
/// A following `Pull` stream sends an empty batch (with the head) at least this often,
/// so the passive knows the stream is alive and how far behind it is.
const FOLLOW_KEEPALIVE: Duration = Duration::from_secs(2);

pub struct ReplicationService {
    pub node: Arc<Node>,
}

/// The `Replication` service as tonic serves it (`serve.rs` adds it to the server).
pub type Grpc = standin_proto::v1::replication_server::ReplicationServer<ReplicationService>;

/// The `Replication` service of `node`.
pub fn grpc(node: Arc<Node>) -> Grpc {
    Grpc::new(ReplicationService { node })
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl ReplicationService {
    /// A fenced node serves nothing but status until an operator acts.
    fn refuse_if_fenced(&self) -> Result<(), Status> {
        match self.node.role() {
            standin_engine::role::Role::Fenced { reason } => Err(Status::failed_precondition(
                format!("{} is fenced: {reason}", self.node.config.node_name),
            )),
            _ => Ok(()),
        }
    }
}

/// Map an engine failure on the serving side to a gRPC status.
pub fn engine_status(error: &EngineError) -> Status {
    match error {
        EngineError::ChunkMismatch { .. }
        | EngineError::BrokenChain { .. }
        | EngineError::Corrupt { .. } => {
            tracing::error!(%error, "refusing to serve corrupt data");
            Status::data_loss(error.to_string())
        }
        EngineError::ChunkMissing { .. } => Status::not_found(error.to_string()),
        _ => Status::internal(error.to_string()),
    }
}

#[tonic::async_trait]
impl Replication for ReplicationService {
    type PullStream = BoxStream<wire::PullResponse>;
    type FetchChunksStream = BoxStream<wire::ChunkBatch>;
    type SnapshotStream = BoxStream<wire::SnapshotPart>;

    async fn snapshot(
        &self,
        _request: Request<wire::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.refuse_if_fenced()?;
        let node = self.node.clone();
        let (head, entries) = tokio::task::spawn_blocking(move || node.repository.snapshot())
            .await
            .map_err(|error| Status::internal(error.to_string()))?;
        tracing::info!(
            seq = head.seq,
            entries = entries.len(),
            "serving a snapshot"
        );
        let (sender, receiver) = mpsc::channel(STREAM_DEPTH);
        tokio::spawn(async move {
            let first = wire::SnapshotPart {
                kind: Some(wire::snapshot_part::Kind::Head(head_to_wire(&head))),
            };
            if sender.send(Ok(first)).await.is_err() {
                return;
            }
            let mut batch = Vec::new();
            let mut batch_bytes = 0;
            for (path, entry, meta) in entries {
                let entry = standin_engine::folder::index::encode_entry(&entry, meta.as_ref());
                batch_bytes += entry.len() + path.as_bytes().len();
                batch.push(wire::SnapshotEntry {
                    path: path.as_bytes().to_vec(),
                    entry,
                });
                if batch_bytes >= MAX_BATCH_BYTES {
                    let part = wire::SnapshotPart {
                        kind: Some(wire::snapshot_part::Kind::Entries(wire::SnapshotEntries {
                            entries: std::mem::take(&mut batch),
                        })),
                    };
                    batch_bytes = 0;
                    if sender.send(Ok(part)).await.is_err() {
                        return;
                    }
                }
            }
            if !batch.is_empty() {
                let part = wire::SnapshotPart {
                    kind: Some(wire::snapshot_part::Kind::Entries(wire::SnapshotEntries {
                        entries: batch,
                    })),
                };
                let _ = sender.send(Ok(part)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn pull(
        &self,
        request: Request<wire::PullRequest>,
    ) -> Result<Response<Self::PullStream>, Status> {
        self.refuse_if_fenced()?;
        let request = request.into_inner();
        // An empty hash means "no check" (for `standin log`); a passive always sends one.
        let check_hash = !request.after_hash.is_empty();
        let after_hash = if check_hash {
            hash_from_wire("after_hash", &request.after_hash)
                .map_err(|error| Status::invalid_argument(error.to_string()))?
        } else {
            Hash::ZERO
        };
        let max_events = match request.max_events {
            0 => DEFAULT_BATCH_EVENTS,
            wanted => wanted.min(MAX_BATCH_EVENTS),
        } as usize;
        let (sender, receiver) = mpsc::channel(STREAM_DEPTH);
        let node = self.node.clone();
        tokio::spawn(serve_pull(
            node,
            PullFrom {
                seq: request.after_seq,
                hash: after_hash,
                check_hash,
            },
            PullOptions {
                max_events,
                follow: request.follow,
                inline: request.inline_content,
            },
            sender,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn fetch_chunks(
        &self,
        request: Request<wire::FetchChunksRequest>,
    ) -> Result<Response<Self::FetchChunksStream>, Status> {
        self.refuse_if_fenced()?;
        let hashes = request.into_inner().hashes;
        if hashes.len() > MAX_FETCH_HASHES {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_FETCH_HASHES} chunks per call, asked for {}",
                hashes.len()
            )));
        }
        let hashes: Vec<Hash> = hashes
            .iter()
            .map(|bytes| hash_from_wire("hashes", bytes))
            .collect::<Result<_, _>>()
            .map_err(|error| Status::invalid_argument(error.to_string()))?;
        let (sender, receiver) = mpsc::channel(STREAM_DEPTH);
        let node = self.node.clone();
        // One blocking reader per call: chunks are read and verified in order and
        // handed to the stream in batches of about FETCH_MESSAGE_BYTES; it holds at
        // most STREAM_DEPTH batches.
        tokio::task::spawn_blocking(move || {
            let mut batch = wire::ChunkBatch::default();
            let mut batch_bytes = 0usize;
            for hash in hashes {
                match node.repository.chunks().get(&hash) {
                    Ok(data) => {
                        node.metrics.chunk_bytes_served.inc_by(data.len() as u64);
                        batch_bytes += data.len();
                        batch.chunks.push(wire::Chunk {
                            hash: hash.0.to_vec(),
                            data: data.into(),
                        });
                    }
                    Err(error) => {
                        // What was read before the error still goes out first.
                        if !batch.chunks.is_empty() {
                            let _ = sender.blocking_send(Ok(std::mem::take(&mut batch)));
                        }
                        let _ = sender.blocking_send(Err(engine_status(&error)));
                        return;
                    }
                }
                if batch_bytes >= FETCH_MESSAGE_BYTES {
                    batch_bytes = 0;
                    if sender
                        .blocking_send(Ok(std::mem::take(&mut batch)))
                        .is_err()
                    {
                        return;
                    }
                }
            }
            if !batch.chunks.is_empty() {
                let _ = sender.blocking_send(Ok(batch));
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

/// Where a `Pull` starts.
struct PullFrom {
    seq: u64,
    hash: Hash,
    /// An empty hash in the request: `standin log`, no check.
    check_hash: bool,
}

/// How a `Pull` is served.
struct PullOptions {
    max_events: usize,
    follow: bool,
    /// Small chunks inside the batches.
    inline: bool,
}

/// The content of the small chunks `events` name, for each event those first named
/// by it (at most `INLINE_BYTES_MAX` in all). A chunk that cannot be read is left out:
/// the passive fetches it, and hears the error from `FetchChunks`.
fn inline_chunks(node: &Node, events: &[standin_engine::Event]) -> Vec<Vec<wire::Chunk>> {
    let mut seen = std::collections::HashSet::new();
    let mut bytes = 0usize;
    events
        .iter()
        .map(|event| {
            let mut out = Vec::new();
            for chunk in event.body.change.chunks().unwrap_or(&[]) {
                if chunk.len > INLINE_CHUNK_MAX
                    || bytes + chunk.len as usize > INLINE_BYTES_MAX
                    || !seen.insert(chunk.hash)
                {
                    continue;
                }
                if let Ok(data) = node.repository.chunks().get(&chunk.hash) {
                    bytes += data.len();
                    node.metrics.chunk_bytes_served.inc_by(data.len() as u64);
                    out.push(wire::Chunk {
                        hash: chunk.hash.0.to_vec(),
                        data: data.into(),
                    });
                }
            }
            out
        })
        .collect()
}

async fn serve_pull(
    node: Arc<Node>,
    from: PullFrom,
    options: PullOptions,
    sender: mpsc::Sender<Result<wire::PullResponse, Status>>,
) {
    let PullFrom {
        mut seq,
        mut hash,
        mut check_hash,
    } = from;
    let PullOptions {
        max_events,
        follow,
        inline,
    } = options;
    let mut head_changes = node.head_watch.subscribe();
    loop {
        let reader = node.clone();
        let (from_seq, from_hash, check) = (seq, hash, check_hash);
        let read = tokio::task::spawn_blocking(move || {
            let log = reader.repository.log();
            let events = if check {
                log.events_after(from_seq, &from_hash, max_events)
            } else {
                // `standin log`: start anywhere, no hash to check.
                let start_hash = log.hash_at(from_seq)?.unwrap_or_default();
                log.events_after(from_seq, &start_hash, max_events)
            }?;
            let chunks = if inline {
                inline_chunks(&reader, &events)
            } else {
                Vec::new()
            };
            Ok((events, chunks))
        })
        .await;
        let (events, mut inline_content) = match read {
            Ok(Ok(read)) => read,
            Ok(Err(EngineError::Divergence { seq, ours, theirs })) => {
                let head = node.repository.head();
                let divergence = wire::Divergence {
                    seq,
                    ours: ours.0.to_vec(),
                    theirs: theirs.0.to_vec(),
                    head: Some(head_to_wire(&head)),
                };
                let _ = sender
                    .send(Ok(wire::PullResponse {
                        kind: Some(wire::pull_response::Kind::Divergence(divergence)),
                    }))
                    .await;
                return;
            }
            Ok(Err(EngineError::Compacted { .. })) => {
                let compacted = wire::Compacted {
                    base: Some(head_to_wire(&node.repository.log().base())),
                    head: Some(head_to_wire(&node.repository.head())),
                };
                let _ = sender
                    .send(Ok(wire::PullResponse {
                        kind: Some(wire::pull_response::Kind::Compacted(compacted)),
                    }))
                    .await;
                return;
            }
            Ok(Err(EngineError::BeyondHead { seq, .. })) => {
                let head = node.repository.head();
                let divergence = wire::Divergence {
                    seq,
                    ours: Vec::new(),
                    theirs: hash.0.to_vec(),
                    head: Some(head_to_wire(&head)),
                };
                let _ = sender
                    .send(Ok(wire::PullResponse {
                        kind: Some(wire::pull_response::Kind::Divergence(divergence)),
                    }))
                    .await;
                return;
            }
            Ok(Err(error)) => {
                let _ = sender.send(Err(engine_status(&error))).await;
                return;
            }
            Err(error) => {
                let _ = sender
                    .send(Err(Status::internal(format!("log reader: {error}"))))
                    .await;
                return;
            }
        };
        check_hash = true;
        let head = node.repository.head();
        if let Some(last) = events.last() {
            seq = last.seq();
            hash = last.hash;
        }
        let caught_up = events.is_empty();
        // Split into messages of at most MAX_BATCH_BYTES (one event may exceed it alone),
        // each event's inline chunks in the message that carries it.
        let mut batch = Vec::new();
        let mut chunks = Vec::new();
        let mut batch_bytes = 0;
        for (index, event) in events.iter().enumerate() {
            let encoded = event_to_wire(event);
            let with = inline_content
                .get_mut(index)
                .map(std::mem::take)
                .unwrap_or_default();
            let size = encoded.body.len()
                + 64
                + with
                    .iter()
                    .map(|chunk: &wire::Chunk| chunk.data.len() + 40)
                    .sum::<usize>();
            if !batch.is_empty() && batch_bytes + size > MAX_BATCH_BYTES {
                let sent = send_batch(
                    &node,
                    &sender,
                    std::mem::take(&mut batch),
                    std::mem::take(&mut chunks),
                    &head,
                )
                .await;
                if !sent {
                    return;
                }
                batch_bytes = 0;
            }
            batch_bytes += size;
            batch.push(encoded);
            chunks.extend(with);
        }
        if !batch.is_empty() && !send_batch(&node, &sender, batch, chunks, &head).await {
            return;
        }
        if !caught_up {
            continue;
        }
        if !follow {
            // Tell the caller where the head is, and end the stream.
            let _ = send_batch(&node, &sender, Vec::new(), Vec::new(), &head).await;
            return;
        }
        // Caught up and following: wait for a new head (or send a keep-alive).
        match tokio::time::timeout(FOLLOW_KEEPALIVE, head_changes.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                let head = node.repository.head();
                if !send_batch(&node, &sender, Vec::new(), Vec::new(), &head).await {
                    return;
                }
            }
        }
        if sender.is_closed() {
            return;
        }
    }
}

async fn send_batch(
    node: &Node,
    sender: &mpsc::Sender<Result<wire::PullResponse, Status>>,
    events: Vec<wire::Event>,
    chunks: Vec<wire::Chunk>,
    head: &standin_engine::Head,
) -> bool {
    node.metrics.events_served.inc_by(events.len() as u64);
    let batch = wire::EventBatch {
        events,
        head: Some(head_to_wire(head)),
        chunks,
    };
    sender
        .send(Ok(wire::PullResponse {
            kind: Some(wire::pull_response::Kind::Batch(batch)),
        }))
        .await
        .is_ok()
}
