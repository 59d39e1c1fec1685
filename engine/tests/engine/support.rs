//! Helpers shared by the engine tests: a node (folder + repository), replication
//! between two nodes in-process, and a tree comparison.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use standin_engine::folder::scan::reconcile;
use standin_engine::folder::verify::verify_folder;
use standin_engine::log::event::EventBody;
use standin_engine::replay::apply_batch;
use standin_engine::{Change, Event, FolderIndex, Hash, Repository};

/// A folder and its data directory, in one temp dir.
pub struct Node {
    pub _temp: tempfile::TempDir,
    pub folder: PathBuf,
    pub data_dir: PathBuf,
    pub repository: Arc<Repository>,
}

impl Node {
    pub fn new() -> Node {
        Node::new_in(&std::env::temp_dir())
    }

    /// A node whose folder and data directory are under `base` (one file system).
    pub fn new_in(base: &Path) -> Node {
        let temp = tempfile::tempdir_in(base).expect("temp dir");
        let folder = temp.path().join("folder");
        let data_dir = temp.path().join("data");
        std::fs::create_dir(&folder).unwrap();
        let repository = Arc::new(Repository::open(&data_dir).unwrap());
        Node {
            _temp: temp,
            folder,
            data_dir,
            repository,
        }
    }

    /// Record every difference between the folder and the index (epoch 1).
    pub fn capture(&self) -> Vec<Event> {
        reconcile(&self.folder, &self.repository, 1).unwrap()
    }

    /// Close and reopen the repository (as after a restart).
    pub fn reopen(self) -> Node {
        let Node {
            _temp,
            folder,
            data_dir,
            repository,
        } = self;
        drop(repository);
        let repository =
            Arc::new(Repository::open(&data_dir).unwrap_or_else(|error| panic!("reopen: {error}")));
        Node {
            _temp,
            folder,
            data_dir,
            repository,
        }
    }

    /// Start capture of the folder with the default timings (epoch 1).
    pub fn watch(&self) -> standin_engine::Capture {
        standin_engine::Capture::start(
            &self.folder,
            self.repository.clone(),
            1,
            standin_engine::CaptureOptions::default(),
        )
        .unwrap()
    }

    /// Every event of the log, oldest first.
    pub fn all_events(&self) -> Vec<Event> {
        self.repository
            .log()
            .events_after(0, &Hash::ZERO, usize::MAX)
            .unwrap()
    }

    /// Wait until capture has recorded everything written so far: the log has stopped
    /// growing for a while (panics after 30 s).
    pub fn settle(&self) {
        let mut last = self.repository.head().seq;
        let mut still_for = 0;
        assert!(wait_for(Duration::from_secs(30), || {
            let now = self.repository.head().seq;
            if now == last {
                still_for += 1;
            } else {
                still_for = 0;
                last = now;
            }
            still_for >= 40
        }));
    }

    /// The content of every `Put` of `path` in the log, in order.
    pub fn versions_of(&self, path: &str) -> Vec<Vec<u8>> {
        self.all_events()
            .into_iter()
            .filter_map(|event| match event.body.change {
                Change::Put {
                    path: put, chunks, ..
                }
                | Change::File {
                    path: put, chunks, ..
                } if put.to_string() == path => {
                    let mut content = Vec::new();
                    for chunk in chunks {
                        content.extend(self.repository.chunks().get(&chunk.hash).unwrap());
                    }
                    Some(content)
                }
                _ => None,
            })
            .collect()
    }

    pub fn assert_verified(&self) {
        let report = verify_folder(&self.folder, &self.repository).unwrap();
        assert!(
            report.matches(),
            "verify failed: {:?}",
            report.first_difference
        );
    }
}

/// The record `events` hold for the one file they write is exactly a fresh chunking
/// of `data` (what a large file read against its last version must give).
pub fn assert_recorded_as_fresh(node: &Node, events: &[Event], data: &[u8], path: &Path) {
    let fresh =
        standin_engine::chunk_store::chunking::store_content(data, node.repository.chunks(), path)
            .unwrap();
    let recorded = events
        .iter()
        .find_map(|event| match &event.body.change {
            standin_engine::Change::File {
                content, chunks, ..
            } => Some((*content, chunks.clone())),
            _ => None,
        })
        .expect("the file's new version is recorded");
    assert_eq!(recorded, (fresh.content, fresh.chunks));
}

/// Copy the chunks `events` need from `from` to `to`, as a passive's fetch would
/// (each chunk verified on receipt).
pub fn ship_chunks(from: &Repository, to: &Repository, events: &[Event]) {
    for event in events {
        if let Some(chunks) = event.body.change.chunks() {
            for hash in to
                .chunks()
                .missing(chunks.iter().map(|chunk| chunk.hash))
                .unwrap()
            {
                to.chunks()
                    .put_verified(hash, &from.chunks().get(&hash).unwrap())
                    .unwrap();
            }
        }
    }
}

/// Up to `batch` events `active` has after `passive`'s head (what a pull would bring).
pub fn events_to_pull(active: &Node, passive: &Node, batch: usize) -> Vec<Event> {
    let head = passive.repository.head();
    active
        .repository
        .log()
        .events_after(head.seq, &head.hash, batch)
        .unwrap()
}

/// Pull everything `active` has after `passive`'s head and apply it, in batches.
pub fn replicate(active: &Node, passive: &Node, batch: usize) {
    replicate_with(active, passive, batch, false)
}

/// `replicate`; with `stage`, as a by-reference passive does it: stage the batch's
/// large files before its chunks are shipped.
pub fn replicate_with(active: &Node, passive: &Node, batch: usize, stage: bool) {
    loop {
        let events = events_to_pull(active, passive, batch);
        if events.is_empty() {
            return;
        }
        if stage {
            passive
                .repository
                .chunks()
                .stage(&passive.folder, &events)
                .unwrap();
        }
        ship_chunks(&active.repository, &passive.repository, &events);
        apply_batch(&passive.folder, &passive.repository, &events)
            .unwrap_or_else(|error| panic!("apply: {error}"));
    }
}

/// What a tree holds: path -> (kind, mode, bytes or link target).
pub fn snapshot(root: &Path) -> BTreeMap<String, (char, u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for item in std::fs::read_dir(&dir).unwrap() {
            let item = item.unwrap();
            let path = item.path();
            let relative = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let metadata = std::fs::symlink_metadata(&path).unwrap();
            let mode = metadata.permissions().mode() & 0o7777;
            if metadata.file_type().is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                out.insert(
                    relative,
                    ('l', 0, target.to_string_lossy().as_bytes().to_vec()),
                );
            } else if metadata.is_dir() {
                out.insert(relative, ('d', mode, Vec::new()));
                dirs.push(path);
            } else {
                out.insert(relative, ('f', mode, std::fs::read(&path).unwrap()));
                let _ = metadata.mtime();
            }
        }
    }
    out
}

/// Seal changes into a chain as a (possibly hostile) active would, computing honest
/// digests with a scratch index unless told otherwise.
pub struct FakeActive {
    pub index: FolderIndex,
    pub seq: u64,
    pub hash: Hash,
}

impl FakeActive {
    pub fn following(repository: &Repository) -> FakeActive {
        let head = repository.head();
        let index = repository.lock_index().clone();
        FakeActive {
            index,
            seq: head.seq,
            hash: head.hash,
        }
    }

    /// Seal `change`; the digest is the scratch index's after applying it (or, if the
    /// change does not fit, the current one).
    pub fn seal(&mut self, change: Change) -> Event {
        let _ = self.index.apply(&change);
        let body = EventBody {
            seq: self.seq + 1,
            epoch: 1,
            recorded_at_ms: 0,
            change,
            digest: self.index.digest(),
        };
        let event = Event::seal(self.hash, body);
        self.seq = event.seq();
        self.hash = event.hash;
        event
    }
}

/// Poll `condition` until it holds or `limit` passes.
pub fn wait_for(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    condition()
}

/// Each event as "kind path" (e.g. "rename a -> b"), for asserting what was recorded.
pub fn kinds(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|event| {
            format!(
                "{} {}",
                event.body.change.kind(),
                event.body.change.describe_path()
            )
        })
        .collect()
}
