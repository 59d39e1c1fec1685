//! The passive's pull loop (this file), one batch's fetch (`fetch`, `parts`), what a
//! pull can fail with (`error`) and the free `space` it keeps.
//!
//! The passive's side of replication: pull events, fetch the chunks they need, apply.
//!
//! `Puller::pull_once` is one synchronous round — pull everything after our head,
//! fetch and verify the missing chunks, apply each batch with the engine's replay —
//! that tests call directly. `run` only schedules it: every `replication_period`
//! seconds, or, with a period of 0, as one long `Pull(follow)` stream. While the
//! active cannot be reached it backs off (doubling up to `MAX_BACKOFF`). A divergence
//! stops pulling and is reported: the node's history and the active's split.
//!
//! Memory: the events of a few batches of up to `COALESCE_EVENTS` each (a few server
//! batches of ≤ 2 MiB of event bytes each: the one being fetched, one handed to the
//! apply in flight, the one it writes and the one it commits) and a few MiB of received chunks at a time (`FetchChunks`
//! messages of about 1 MiB, stored every `STORE_BATCH_BYTES`); fetched chunks go
//! straight to the chunk store, which is synced after every `FetchChunks` call
//! (≤ 32 MiB, while the next call is made) so that a restart does not fetch them again.

mod error;
mod fetch;
mod parts;
pub mod space;
#[cfg(test)]
mod tests;

pub use error::PullError;
use parts::content_bytes;
pub use parts::{fetch_groups, split_by_content, split_by_missing, APPLY_CONTENT_BYTES};

use std::sync::Arc;
use std::time::{Duration, Instant};

use standin_engine::Hash;

use crate::node::Node;
use crate::peer::{PeerError, PeerLink, PeerStream, PullMessage, SnapshotPart};

/// Batches already received are merged into one apply of at most this many events
/// (one durability point). 4,096 rather than 1,024: ~6% faster on 20,000 small files,
/// for ~45 MB more peak RSS on this machine.
const COALESCE_EVENTS: usize = 4096;

/// A pull that is not following may see this many empty batches at most.
const MAX_EMPTY_BATCHES: u32 = 16;

/// The apply of the previous batches, while the next one is fetched.
type InFlight = Option<Applying>;

/// An apply running: the feed that hands it further batches, and its task (the
/// number of events it applied).
struct Applying {
    feed: Arc<standin_engine::replay::Feed>,
    task: tokio::task::JoinHandle<Result<u64, PullError>>,
}
/// A store of received chunks running in the background, if any.
type Storing = Option<tokio::task::JoinHandle<Result<(), PullError>>>;

/// One `FetchChunks` call asks for at most this many bytes of chunks (and at most the
/// server's `MAX_FETCH_HASHES` chunks); the store is synced after each call.
pub const FETCH_GROUP_BYTES: u64 = 32 << 20;
/// A snapshot with more entries than this is refused (memory bound on the passive).
pub const MAX_SNAPSHOT_ENTRIES: usize = 20_000_000;
/// Received chunks are verified and stored in batches of about this size.
const STORE_BATCH_BYTES: usize = 4 << 20;
/// A following stream silent this long means nothing to apply for now: time to save
/// the folder index.
const IDLE_AFTER: Duration = Duration::from_millis(200);

pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Behind by more than this, a catch-up shows its progress.
const PROGRESS_AFTER_EVENTS: u64 = 2_000;

/// What one round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PullReport {
    pub events_applied: u64,
    pub chunks_fetched: u64,
    pub bytes_fetched: u64,
    pub active_head: u64,
}

pub struct Puller {
    node: Arc<Node>,
    link: Arc<PeerLink>,
}

/// What a failed call to the active means for the pull.
fn peer_error(error: PeerError) -> PullError {
    match error {
        PeerError::Unreachable(message) | PeerError::TimedOut(message) => {
            PullError::Unreachable(message)
        }
        PeerError::Refused(message) => PullError::Refused(message),
        PeerError::Answered { code, message } => PullError::BadData(format!("{code:?}: {message}")),
        PeerError::BadAnswer(message) => PullError::BadData(message),
    }
}

/// Shows catch-up progress: a bar on a terminal, a log line every few seconds otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    start_seq: u64,
    last_line: Instant,
}

impl Progress {
    fn new(own: u64, target: u64) -> Option<Progress> {
        if target.saturating_sub(own) < PROGRESS_AFTER_EVENTS {
            return None;
        }
        let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            let bar = indicatif::ProgressBar::new(target - own);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "catching up {bar:40} {pos}/{len} events {per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            Some(bar)
        } else {
            None
        };
        tracing::info!(from = own, to = target, "catching up with the active");
        Some(Progress {
            bar,
            start_seq: own,
            last_line: Instant::now(),
        })
    }

    fn update(&mut self, own: u64, target: u64) {
        match &self.bar {
            Some(bar) => {
                bar.set_length(target.saturating_sub(self.start_seq));
                bar.set_position(own.saturating_sub(self.start_seq));
            }
            None if self.last_line.elapsed() >= Duration::from_secs(2) => {
                self.last_line = Instant::now();
                tracing::info!(
                    applied = own,
                    target,
                    remaining = target.saturating_sub(own),
                    "catching up"
                );
            }
            None => {}
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Puller {
    /// A puller from the active at the other end of `link`.
    pub fn new(node: Arc<Node>, link: Arc<PeerLink>) -> Puller {
        Puller { node, link }
    }

    /// Pull and apply everything after our head, up to the active's head now.
    pub async fn pull_once(&mut self) -> Result<PullReport, PullError> {
        self.pull(false).await
    }

    /// Pull with `follow`: apply batches as they come until the stream ends or fails.
    async fn pull(&mut self, follow: bool) -> Result<PullReport, PullError> {
        let result = self.pull_and_apply(follow).await;
        if let Err(PullError::DurabilityLost(reason)) = &result {
            // Whoever pulled (the loop, a final pull, a switchover's catch-up): the
            // node stops (`serve`'s watch task); retrying would prove nothing.
            self.node.fail(reason.clone());
        }
        result
    }

    async fn pull_and_apply(&mut self, follow: bool) -> Result<PullReport, PullError> {
        let head = self.node.repository.head();
        let mut stream = self
            .link
            .pull(
                &head,
                crate::servers::replication_server::DEFAULT_BATCH_EVENTS,
                follow,
            )
            .await
            .map_err(peer_error)?;
        let mut report = PullReport::default();
        let mut progress: Option<Progress> = None;
        let mut in_flight: InFlight = None;
        let mut empty_batches = 0u32;
        // A following stream carries a keep-alive at least every 2 s; a silent peer is
        // treated as unreachable rather than waited for forever.
        let silence = if follow {
            Duration::from_secs(10)
        } else {
            Duration::from_secs(60)
        };
        // A message read ahead while coalescing batches, handled next.
        let mut lookahead: Option<PullMessage> = None;
        let mut ended = false;
        loop {
            let message = match lookahead.take() {
                Some(message) => message,
                None if ended => break,
                None => match self
                    .next_message(&mut stream, silence, &mut in_flight, &mut report)
                    .await?
                {
                    Some(message) => message,
                    None => break,
                },
            };
            match message {
                PullMessage::Divergence {
                    seq,
                    ours,
                    theirs,
                    peer_head_seq: active_head,
                } => {
                    self.finish_apply(&mut in_flight, &mut report).await?;
                    let hex = |bytes: &[u8]| {
                        bytes
                            .iter()
                            .map(|byte| format!("{byte:02x}"))
                            .collect::<String>()
                    };
                    return Err(PullError::Divergence {
                        seq,
                        ours: if ours.is_empty() {
                            "missing".to_string()
                        } else {
                            hex(&ours)
                        },
                        theirs: hex(&theirs),
                        active_head,
                    });
                }
                PullMessage::Batch {
                    head: mut active_head,
                    mut events,
                    mut chunks,
                } => {
                    // Batches that have already arrived are applied together: one
                    // durability point for many small batches.
                    while !events.is_empty() && events.len() < COALESCE_EVENTS {
                        match ready_now(stream.next()).await {
                            Some(Some(Ok(PullMessage::Batch {
                                head,
                                events: more,
                                chunks: more_chunks,
                            }))) if !more.is_empty() => {
                                active_head = head;
                                events.extend(more);
                                chunks.extend(more_chunks);
                            }
                            Some(Some(Ok(other))) => {
                                lookahead = Some(other);
                                break;
                            }
                            Some(Some(Err(error))) => return Err(peer_error(error)),
                            Some(None) => {
                                ended = true;
                                break;
                            }
                            None => break,
                        }
                    }
                    self.node.set_peer_head(active_head);
                    report.active_head = active_head.seq;
                    if events.is_empty() {
                        empty_batches += 1;
                        // A non-following stream ends after one empty batch; a peer that
                        // keeps sending them is stuck or hostile.
                        if !follow && empty_batches > MAX_EMPTY_BATCHES {
                            return Err(PullError::BadData(format!(
                                "more than {MAX_EMPTY_BATCHES} empty batches in one pull"
                            )));
                        }
                        self.finish_apply(&mut in_flight, &mut report).await?;
                        self.report_position(&active_head);
                        continue;
                    }
                    let own = self.node.repository.head().seq;
                    if progress.is_none() {
                        progress = Progress::new(own, active_head.seq);
                    }
                    // Much content to fetch is fetched and applied in parts, so that the
                    // apply of one part overlaps the fetch of the next.
                    let parts =
                        if events.iter().map(content_bytes).sum::<u64>() <= APPLY_CONTENT_BYTES {
                            vec![events]
                        } else {
                            self.split_by_missing(events).await?
                        };
                    let shares = parts::share_inline(&parts, chunks);
                    for (part, mine) in parts.into_iter().zip(shares) {
                        self.fetch_and_start_apply(part, mine, &mut report, &mut in_flight)
                            .await?;
                    }
                    if let Some(progress) = progress.as_mut() {
                        progress.update(self.node.repository.head().seq, active_head.seq);
                    }
                }
                PullMessage::Compacted { base_seq: base } => {
                    // Only an active whose base is past our head may say so.
                    if base <= self.node.repository.head().seq {
                        return Err(PullError::BadData(format!(
                            "the active says our head was compacted away, but its base {base} is not past our head {}",
                            self.node.repository.head().seq
                        )));
                    }
                    tracing::warn!(
                        own_head = self.node.repository.head().seq,
                        active_base = base,
                        "our head was compacted away on the active; starting again from a snapshot"
                    );
                    drop(stream);
                    self.finish_apply(&mut in_flight, &mut report).await?;
                    self.bootstrap(&mut report).await?;
                    return Ok(report);
                }
            }
        }
        self.finish_apply(&mut in_flight, &mut report).await?;
        if let Some(head) = self.node.peer_head() {
            self.report_position(&head);
        }
        if report.events_applied > 0 {
            self.save_index_while_idle().await;
        }
        Ok(report)
    }

    /// The stream's next message. If none comes for `IDLE_AFTER`, the passive has
    /// nothing to do for a moment: it finishes the apply in flight and saves the
    /// folder index meanwhile (replay leaves that to now, so that it is not paid by
    /// the next change).
    async fn next_message<T>(
        &mut self,
        stream: &mut PeerStream<T>,
        silence: Duration,
        in_flight: &mut InFlight,
        report: &mut PullReport,
    ) -> Result<Option<T>, PullError> {
        if let Ok(next) = tokio::time::timeout(IDLE_AFTER, stream.next()).await {
            return next.transpose().map_err(peer_error);
        }
        self.finish_apply(in_flight, report).await?;
        self.save_index_while_idle().await;
        stream.next_within(silence).await.map_err(peer_error)
    }

    /// Save the index entries replay has not saved yet, if that leaves the disk's
    /// reserve free (sled cannot carry on after meeting a full disk). A failure is only
    /// logged: the log holds every change, and the next open brings the saved index
    /// forward.
    async fn save_index_while_idle(&self) {
        let node = self.node.clone();
        let started = Instant::now();
        let saved = tokio::task::spawn_blocking(move || {
            let paths = node.repository.unsaved_index_paths();
            if paths == 0 {
                return Ok(0);
            }
            if let Err(reason) =
                crate::passive::space::check_index_save(&node.config.data_dir, paths)
            {
                tracing::debug!(%reason, "not saving the folder index while the disk is this full");
                return Ok(0);
            }
            node.repository.save_index_if_dirty()
        })
        .await;
        match saved {
            Ok(Ok(0)) => {}
            Ok(Ok(paths)) => tracing::debug!(
                paths,
                ms = started.elapsed().as_secs_f64() * 1e3,
                "saved the folder index while idle"
            ),
            Ok(Err(error)) => {
                tracing::warn!(%error, "could not save the folder index; the log holds every change")
            }
            Err(error) => tracing::warn!(%error, "the folder index save did not finish"),
        }
    }

    /// Tell the role state machine where our log is, and whether we caught up.
    fn report_position(&self, active_head: &standin_engine::Head) {
        self.node.set_peer_head(*active_head);
        let own = self.node.repository.head();
        self.node.feed(standin_engine::role::Input::Applied {
            epoch: own.epoch,
            head_seq: own.seq,
        });
        if own.seq >= active_head.seq {
            self.node
                .feed(standin_engine::role::Input::CaughtUp { head_seq: own.seq });
        }
    }

    /// Replace our state with the active's snapshot: its head and index, every chunk
    /// the index names (fetched and verified), installed by the engine (which checks
    /// the entries add up to the head's digest).
    async fn bootstrap(&mut self, report: &mut PullReport) -> Result<(), PullError> {
        let holder = self.node.clone();
        let _applying = holder.apply_lock.clone().read_owned().await;
        let mut stream = self.link.snapshot().await.map_err(peer_error)?;
        let mut head = None;
        let mut entries = Vec::new();
        while let Some(part) = stream
            .next_within(Duration::from_secs(60))
            .await
            .map_err(peer_error)?
        {
            match part {
                SnapshotPart::Head(received) => head = Some(received),
                SnapshotPart::Entries(batch) => {
                    if head.is_none() {
                        return Err(PullError::BadData(
                            "snapshot: entries before the head".to_string(),
                        ));
                    }
                    if entries.len() + batch.len() > MAX_SNAPSHOT_ENTRIES {
                        return Err(PullError::BadData(format!(
                            "snapshot: more than {MAX_SNAPSHOT_ENTRIES} entries"
                        )));
                    }
                    entries.extend(batch);
                }
            }
        }
        let head = head.ok_or_else(|| PullError::BadData("snapshot: no head".to_string()))?;
        let own = self.node.repository.head();
        if head.seq < own.seq || head.epoch < own.epoch {
            return Err(PullError::BadData(format!(
                "snapshot at seq {} epoch {} is behind our head (seq {} epoch {})",
                head.seq, head.epoch, own.seq, own.epoch
            )));
        }
        let wanted: Vec<(Hash, u32)> = entries
            .iter()
            .filter_map(|(_, entry, _)| match entry {
                standin_engine::Entry::File { chunks, .. } => {
                    Some(chunks.iter().map(|chunk| (chunk.hash, chunk.len)))
                }
                _ => None,
            })
            .flatten()
            .collect();
        self.fetch_missing(wanted, report).await?;
        let node = self.node.clone();
        tokio::task::spawn_blocking(move || {
            standin_engine::replay::install_snapshot(
                &node.repository,
                &node.config.folder,
                head,
                entries,
            )
        })
        .await
        .map_err(|error| PullError::Apply(error.to_string()))?
        .map_err(|error| PullError::local(error, &self.node.config.data_dir))?;
        tracing::info!(seq = head.seq, "started again from the active's snapshot");
        Ok(())
    }

    /// Pull forever: every period, or continuously with a period of 0. Returns only on
    /// a fatal error (a divergence) or when `stop` fires.
    pub async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>) -> Option<PullError> {
        let period = Duration::from_secs_f64(self.node.config.replication_period_s);
        let mut backoff = FIRST_BACKOFF;
        loop {
            if *stop.borrow() {
                return None;
            }
            let started = Instant::now();
            let result = tokio::select! {
                result = self.pull(period.is_zero()) => result,
                _ = stop.changed() => return None,
            };
            let wait = match result {
                Ok(report) => {
                    self.working_again();
                    backoff = FIRST_BACKOFF;
                    if report.events_applied > 0 {
                        tracing::debug!(
                            events = report.events_applied,
                            bytes = report.bytes_fetched,
                            "pulled"
                        );
                    }
                    period.saturating_sub(started.elapsed())
                }
                Err(error) => {
                    self.node.metrics.pull_error(error.kind());
                    self.node.set_pull_error(Some(error.to_string()));
                    if error.is_fatal() {
                        tracing::error!(%error, "replication stopped");
                        return Some(error);
                    }
                    tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "pull failed");
                    let wait = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    wait
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return None,
            }
        }
    }
}

/// `future`'s output if it is ready now, without waiting. (A zero `timeout` waits for
/// the timer's next tick — up to 1 ms, which was a third of a small change's lag.)
async fn ready_now<F: std::future::Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match future.as_mut().poll(cx) {
            std::task::Poll::Ready(output) => Some(output),
            std::task::Poll::Pending => None,
        })
    })
    .await
}
