//! Copying the chunks kept by reference into the chunk store once this node is the
//! active (the engine's `chunk_store/absorb.rs`): a passive keeps its large files'
//! chunks in the folder's files, which the applications may rewrite in place from
//! the moment it is promoted. While capture runs and references are left, this task
//! copies them in, one bounded step at a time, each step followed by a pause as long
//! as the step took (capture and the applications keep at least half of the disk).
//! Promotion never waits for it; after a restart the references still there are
//! found and the copy goes on. A chunk whose file changed first is recorded lost
//! (engine) and logged here with its file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::node::Node;

/// Bytes of referenced chunks copied in one step.
const STEP_BYTES: u64 = 8 << 20;
/// How often an idle task looks again (promotion, a restart's references).
const IDLE_CHECK: Duration = Duration::from_millis(500);
/// The pause after a failed step.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// Run until `stop`.
pub async fn run(node: Arc<Node>, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let mut copying = false;
    let mut pause = IDLE_CHECK;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.wait_for(|stopped| *stopped) => return Ok(()),
        }
        pause = IDLE_CHECK;
        let (chunks, bytes) = node.repository.chunks().referenced_usage();
        if !node.capture_running() || chunks == 0 {
            if copying && chunks == 0 {
                tracing::info!("every chunk kept by reference is now in the chunk store");
            }
            copying = false;
            continue;
        }
        if !copying {
            tracing::info!(
                chunks,
                bytes,
                "this node is active: copying the chunks kept by reference in the folder's files into the chunk store"
            );
            copying = true;
        }
        let repository = node.repository.clone();
        let started = Instant::now();
        let step = tokio::task::spawn_blocking(move || {
            // Garbage collection waits for a step; a step for it.
            let _guard = repository.content_guard();
            repository.chunks().absorb_references(STEP_BYTES)
        })
        .await?;
        match step {
            Ok(step) => {
                report_lost(&step.lost);
                pause = started.elapsed();
            }
            Err(error) => {
                if node.fail_if_durability_lost("copying chunks kept by reference", &error) {
                    return Ok(());
                }
                tracing::error!(%error, "copying chunks kept by reference into the chunk store failed; trying again");
                pause = RETRY_AFTER;
            }
        }
    }
}

/// One warning per file whose chunks were lost.
fn report_lost(lost: &[standin_engine::chunk_store::LostChunk]) {
    let mut by_file: BTreeMap<&PathBuf, (u64, u64)> = BTreeMap::new();
    for chunk in lost {
        let (chunks, bytes) = by_file.entry(&chunk.path).or_default();
        *chunks += 1;
        *bytes += chunk.len as u64;
    }
    for (path, (chunks, bytes)) in by_file {
        tracing::warn!(
            path = %path.display(),
            chunks,
            bytes,
            "content kept by reference changed before it was copied into the chunk store: these chunks of an earlier version are lost on this node (listed in data_dir/chunks/lost-by-reference); a passive that needs them cannot get them from here"
        );
    }
}
