//! A fake active speaking standin.v1 that lies (wrong chunk, broken chain, gap, out of
//! order, a `..` path, forged and escaping snapshots, endless empty batches, a chunk not
//! asked for, an oversized message): the passive's `pull_once` refuses each
//! lie with its own error and leaves its folder and log unchanged.

use std::pin::Pin;
use std::sync::Arc;

use standin::config::Config;
use standin::node::Node;
use standin::passive::{PullError, Puller};
use standin_engine::{Change, ChunkRef, Event, EventBody, FolderIndex, Hash, RelPath};
use standin_proto::v1 as wire;
use standin_proto::v1::replication_server::{Replication, ReplicationServer};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

#[derive(Clone, Copy)]
enum Lie {
    /// Chunk bytes that do not hash to the chunk's name.
    WrongChunk,
    /// An event whose hash does not cover its body.
    BrokenChain,
    /// An event that skips a seq.
    Gap,
    /// "Compacted", then a snapshot whose entries do not add up to its head's digest.
    ForgedSnapshot,
    /// "Compacted", then a snapshot that adds up but puts a file under a symlink that
    /// points out of the folder.
    EscapingSnapshot,
    /// The events in the wrong order (seq 2, then seq 1).
    OutOfOrder,
    /// An event, correctly hashed, whose path is `..`.
    DotDotPath,
    /// A stream of empty batches that never ends.
    EndlessEmpty,
    /// A chunk nobody asked for, before the real one.
    UnaskedChunk,
    /// One message larger than any the passive accepts (an event body of 66 MiB).
    Oversized,
    /// Inline content (`EventBatch.chunks`) that does not hash to the chunk's name.
    WrongInlineChunk,
    /// Inline content that no event of the batch names.
    UnnamedInlineChunk,
}

/// The outside directory the escaping snapshot's symlink points to.
fn outside_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("standin-escape-{}", std::process::id()))
}

fn escaping_entries() -> Vec<(RelPath, standin_engine::Entry)> {
    let (_, content) = events();
    vec![
        (
            RelPath::new("a").unwrap(),
            standin_engine::Entry::Symlink {
                target: outside_dir().to_string_lossy().as_bytes().to_vec(),
            },
        ),
        (
            RelPath::new("a/x").unwrap(),
            standin_engine::Entry::File {
                mode: 0o644,
                mtime_ns: 0,
                size: content.len() as u64,
                content: Hash::of(&content),
                chunks: vec![ChunkRef {
                    hash: Hash::of(&content),
                    len: content.len() as u32,
                }],
            },
        ),
    ]
}

struct FakeActive {
    lie: Lie,
}

fn events() -> (Vec<Event>, Vec<u8>) {
    let content = b"the real content".to_vec();
    let mut index = FolderIndex::default();
    let changes = vec![
        Change::Mkdir {
            path: RelPath::new("d").unwrap(),
            mode: 0o755,
        },
        Change::Put {
            path: RelPath::new("d/file").unwrap(),
            mode: 0o644,
            mtime_ns: 0,
            size: content.len() as u64,
            content: Hash::of(&content),
            chunks: vec![ChunkRef {
                hash: Hash::of(&content),
                len: content.len() as u32,
            }],
        },
    ];
    let mut prev = Hash::ZERO;
    let mut out = Vec::new();
    for (position, change) in changes.into_iter().enumerate() {
        index.apply(&change).unwrap();
        let event = Event::seal(
            prev,
            EventBody {
                seq: position as u64 + 1,
                epoch: 1,
                recorded_at_ms: 0,
                change,
                digest: index.digest(),
            },
        );
        prev = event.hash;
        out.push(event);
    }
    (out, content)
}

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Replication for FakeActive {
    type PullStream = Boxed<wire::PullResponse>;
    type FetchChunksStream = Boxed<wire::ChunkBatch>;
    type SnapshotStream = Boxed<wire::SnapshotPart>;

    async fn snapshot(
        &self,
        _request: Request<wire::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let (events, _) = events();
        if matches!(self.lie, Lie::EscapingSnapshot) {
            let entries = escaping_entries();
            let digest = FolderIndex::from_entries(
                entries
                    .iter()
                    .map(|(path, entry)| (path.clone(), entry.clone(), None)),
            )
            .digest();
            let head = standin_engine::Head {
                digest,
                ..standin_engine::Head::of(&events[1])
            };
            let wired = entries
                .iter()
                .map(|(path, entry)| wire::SnapshotEntry {
                    path: path.as_bytes().to_vec(),
                    entry: standin_engine::folder::index::encode_entry(entry, None),
                })
                .collect();
            let parts = vec![
                Ok(wire::SnapshotPart {
                    kind: Some(wire::snapshot_part::Kind::Head(
                        standin::wire::convert::head_to_wire(&head),
                    )),
                }),
                Ok(wire::SnapshotPart {
                    kind: Some(wire::snapshot_part::Kind::Entries(wire::SnapshotEntries {
                        entries: wired,
                    })),
                }),
            ];
            return Ok(Response::new(Box::pin(tokio_stream::iter(parts))));
        }
        let head = standin::wire::convert::head_to_wire(&standin_engine::Head::of(&events[1]));
        // Only the directory: the file the head's digest counts is missing.
        let entry = standin_engine::folder::index::encode_entry(
            &standin_engine::Entry::Dir { mode: 0o755 },
            None,
        );
        let parts = vec![
            Ok(wire::SnapshotPart {
                kind: Some(wire::snapshot_part::Kind::Head(head)),
            }),
            Ok(wire::SnapshotPart {
                kind: Some(wire::snapshot_part::Kind::Entries(wire::SnapshotEntries {
                    entries: vec![wire::SnapshotEntry {
                        path: b"d".to_vec(),
                        entry,
                    }],
                })),
            }),
        ];
        Ok(Response::new(Box::pin(tokio_stream::iter(parts))))
    }

    async fn pull(
        &self,
        _request: Request<wire::PullRequest>,
    ) -> Result<Response<Self::PullStream>, Status> {
        let (events, content) = events();
        let mut wired: Vec<wire::Event> = events
            .iter()
            .map(standin::wire::convert::event_to_wire)
            .collect();
        let head = standin::wire::convert::head_to_wire(&standin_engine::Head::of(&events[1]));
        let inline = match self.lie {
            Lie::WrongInlineChunk => vec![wire::Chunk {
                hash: Hash::of(&content).0.to_vec(),
                data: b"forged".to_vec().into(),
            }],
            Lie::UnnamedInlineChunk => vec![wire::Chunk {
                hash: Hash::of(b"unnamed").0.to_vec(),
                data: b"unnamed".to_vec().into(),
            }],
            _ => Vec::new(),
        };
        let batch_of = |events: Vec<wire::Event>| wire::PullResponse {
            kind: Some(wire::pull_response::Kind::Batch(wire::EventBatch {
                events,
                head: Some(head.clone()),
                chunks: inline.clone(),
            })),
        };
        match self.lie {
            Lie::BrokenChain => wired[1].body[10] ^= 1,
            Lie::Gap => {
                wired.remove(0);
            }
            Lie::OutOfOrder => wired.swap(0, 1),
            Lie::DotDotPath => {
                // Seal a `Mkdir xy`, then make its path `..` and hash it again, so
                // that only the path is wrong.
                let sealed = Event::seal(
                    Hash::ZERO,
                    EventBody {
                        seq: 1,
                        epoch: 1,
                        recorded_at_ms: 0,
                        change: Change::Mkdir {
                            path: RelPath::new("xy").unwrap(),
                            mode: 0o755,
                        },
                        digest: Hash::ZERO,
                    },
                );
                let mut body = sealed.body.canonical_bytes();
                let needle = [2, 0, 0, 0, 0, 0, 0, 0, b'x', b'y'];
                let at = body
                    .windows(needle.len())
                    .position(|window| window == needle)
                    .expect("the path in the canonical bytes");
                body[at + 8..at + 10].copy_from_slice(b"..");
                let hash = standin_engine::log::event::chain_hash(&Hash::ZERO, &body);
                wired = vec![wire::Event {
                    prev: Hash::ZERO.0.to_vec(),
                    hash: hash.0.to_vec(),
                    body,
                }];
            }
            Lie::EndlessEmpty => {
                let empty = batch_of(Vec::new());
                return Ok(Response::new(Box::pin(tokio_stream::iter(
                    std::iter::repeat_with(move || Ok(empty.clone())),
                ))));
            }
            Lie::Oversized => {
                wired[0].body = vec![0u8; 66 << 20];
            }
            Lie::WrongChunk
            | Lie::UnaskedChunk
            | Lie::WrongInlineChunk
            | Lie::UnnamedInlineChunk => {}
            Lie::ForgedSnapshot | Lie::EscapingSnapshot => {
                let base =
                    standin::wire::convert::head_to_wire(&standin_engine::Head::of(&events[1]));
                let compacted = wire::PullResponse {
                    kind: Some(wire::pull_response::Kind::Compacted(wire::Compacted {
                        base: Some(base.clone()),
                        head: Some(base),
                    })),
                };
                return Ok(Response::new(Box::pin(tokio_stream::iter(vec![Ok(
                    compacted,
                )]))));
            }
        }
        let batch = batch_of(wired);
        Ok(Response::new(Box::pin(tokio_stream::iter(vec![Ok(batch)]))))
    }

    async fn fetch_chunks(
        &self,
        request: Request<wire::FetchChunksRequest>,
    ) -> Result<Response<Self::FetchChunksStream>, Status> {
        let (_, content) = events();
        let unasked = matches!(self.lie, Lie::UnaskedChunk).then(|| {
            Ok(wire::Chunk {
                hash: Hash::of(b"unasked").0.to_vec(),
                data: b"unasked".to_vec().into(),
            })
        });
        let chunks: Vec<Result<wire::ChunkBatch, Status>> = unasked
            .into_iter()
            .chain(request.into_inner().hashes.into_iter().map(|hash| {
                Ok(wire::Chunk {
                    hash,
                    data: if matches!(self.lie, Lie::WrongChunk) {
                        b"forged".to_vec().into()
                    } else {
                        content.clone().into()
                    },
                })
            }))
            .map(|chunk| {
                chunk.map(|chunk| wire::ChunkBatch {
                    chunks: vec![chunk],
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }
}

async fn pull_from_liar(lie: Lie) -> (PullError, tempfile::TempDir, Arc<Node>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ReplicationServer::new(FakeActive { lie }))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("folder")).unwrap();
    std::fs::write(
        root.path().join("pair.secret"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    std::fs::set_permissions(
        root.path().join("pair.secret"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let text = format!(
        "node_name = \"beta\"\nfolder = \"folder\"\ndata_dir = \"data\"\nlisten = \"127.0.0.1:0\"\nrole = \"passive\"\npeer_url = \"http://127.0.0.1:{port}\"\nsecret_file = \"pair.secret\"\n"
    );
    let config = Config::parse(&text, &root.path().join("standin.toml")).unwrap();
    let node = tokio::task::spawn_blocking(move || {
        Node::open(config, "0123456789abcdef0123456789abcdef".to_string())
    })
    .await
    .unwrap()
    .unwrap();
    let mut puller = Puller::new(node.clone(), node.peer().unwrap());
    let error = puller.pull_once().await.unwrap_err();
    (error, root, node)
}

#[tokio::test]
async fn a_liar_is_refused_with_its_own_error_and_nothing_applied() {
    for (lie, expected) in [
        (Lie::WrongChunk, "does not match"),
        (Lie::BrokenChain, "hash"),
        (Lie::Gap, "expected seq 1"),
        (Lie::ForgedSnapshot, "digest mismatch"),
        (Lie::EscapingSnapshot, "parent a is a symlink"),
        (Lie::OutOfOrder, "expected seq 1"),
        (Lie::DotDotPath, "`..` component"),
        (Lie::EndlessEmpty, "empty batches"),
        (Lie::UnaskedChunk, "was not asked for"),
        (Lie::Oversized, "too large"),
        (Lie::WrongInlineChunk, "does not match"),
        (Lie::UnnamedInlineChunk, "no event of the batch names it"),
    ] {
        let (error, root, node) = pull_from_liar(lie).await;
        assert!(
            matches!(error, PullError::BadData(_) | PullError::Apply(_)),
            "{error}"
        );
        assert!(
            error.to_string().contains(expected),
            "expected {expected:?} in: {error}"
        );
        assert_eq!(
            node.repository.head().seq,
            0,
            "nothing was applied: {error}"
        );
        assert!(
            std::fs::read_dir(root.path().join("folder"))
                .unwrap()
                .next()
                .is_none(),
            "the folder is unchanged: {error}"
        );
    }
}
