//! Replication over loopback with two real `standin serve` processes, beside an rsync
//! daemon on 127.0.0.1 measured in the same run.
//!
//! - initial sync: an active holding the corpus (already recorded, not timed) and an
//!   empty passive; timed from the passive's start until its head equals the active's
//!   (every batch applied and made durable), and separately until `standin verify`
//!   passes on it. rsync: `rsync -a rsync://127.0.0.1:PORT/corpus/ DIR` then `sync`.
//! - lag: with `replication_period = 0`, a 4 KiB file written on the active, timed until
//!   the passive has it, many times; median, p99 and max (under a steady writer, beside
//!   lsyncd: `lag.rs`).
//!
//! Files: `nodes.rs` (the nodes, on the shared harness `standin-harness`, and what is
//! read of them), `programs.rs` (the binaries), `rsync.rs` (the rsync daemon),
//! `incremental.rs` (changes after the initial sync, and the takeover), `edits.rs`
//! (many large files kept by reference, a few edited).

mod edits;
mod incremental;
mod nodes;
mod programs;
mod rsync;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use standin_harness::NodeProcess;

pub use edits::large_edits;
pub use incremental::{incremental, incremental_dir, small_incremental};
pub use nodes::Usage;
pub use programs::{find_or_install, rsync_binary, standin_binary};
pub use rsync::RsyncDaemon;

use crate::Outcome;
use nodes::{allocated_bytes, pair_specs, reset_peak, resources, verify, wait_head};

/// Times of one standin initial sync, and what both nodes used during it.
pub struct SyncTimes {
    pub caught_up: Duration,
    pub verified: Duration,
    /// The active while it served the sync: peak RSS since the sync began, CPU seconds.
    pub active: Usage,
    /// The passive from its start to `verify` passing.
    pub passive: Usage,
    /// CPU seconds per second of the active, idle, while its peer was not running.
    pub lone_active_cpu_per_s: f64,
    /// Bytes the passive's data_dir takes on disk once it has verified (allocated
    /// blocks), beside the corpus's bytes: what keeping content costs it.
    pub passive_data_bytes: u64,
}

/// Start an active on `corpus` (waiting until it recorded `entries` events), then time
/// an empty passive's catch-up.
pub fn standin_initial_sync(
    binary: &Path,
    work: &Path,
    corpus: &Path,
    entries: u64,
    run: usize,
) -> Outcome<SyncTimes> {
    let root = work.join(format!(
        "pair-{run}-{}",
        corpus
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or("corpus")
    ));
    std::fs::create_dir_all(&root)?;
    let replica = root.join("replica");
    let (alpha, beta) = pair_specs(binary, corpus, &replica, "");
    let alpha = alpha.try_start(&root)?;
    wait_head(&alpha, "the active to record the corpus", |head| {
        head >= entries
    })?;
    std::fs::create_dir(&replica)?;
    crate::measure::sync_all();
    crate::measure::warm(corpus)?;
    let target = alpha.head_seq();
    // The active alone, idle, its peer not yet started: what it burns while it waits.
    let lone_before = resources(&alpha).1;
    std::thread::sleep(Duration::from_secs(1));
    let lone_active_cpu_per_s = resources(&alpha).1 - lone_before;
    reset_peak(&alpha);
    let active_cpu_before = resources(&alpha).1;
    let started = Instant::now();
    let beta = beta.try_start(&root)?;
    wait_head(&beta, "the passive to catch up", |head| head >= target)?;
    // As rsync's figure: the copy, then `sync` (the passive made each batch durable
    // before its head moved, so this finds little left to write).
    crate::measure::sync_all();
    let caught_up = started.elapsed();
    verify(&beta)?;
    let verified = started.elapsed();
    let passive_data_bytes = allocated_bytes(&beta.data_dir);
    let (active_rss, active_cpu) = resources(&alpha);
    let (passive_rss, passive_cpu) = resources(&beta);
    Ok(SyncTimes {
        passive_data_bytes,
        caught_up,
        verified,
        active: Usage {
            rss_mb: active_rss,
            cpu_s: active_cpu - active_cpu_before,
        },
        passive: Usage {
            rss_mb: passive_rss,
            cpu_s: passive_cpu,
        },
        lone_active_cpu_per_s,
    })
}

/// A pair for the lag measurements: the passive streams (`replication_period = 0`),
/// each names the other as its peer, as deployed.
pub struct StreamingPair {
    pub alpha: NodeProcess,
    pub beta: NodeProcess,
    pub active_folder: PathBuf,
    pub passive_folder: PathBuf,
}

impl StreamingPair {
    pub fn start(binary: &Path, root: &Path) -> Outcome<StreamingPair> {
        let (active_folder, passive_folder) = (root.join("active"), root.join("passive"));
        std::fs::create_dir_all(&active_folder)?;
        std::fs::create_dir_all(&passive_folder)?;
        let (alpha, beta) = pair_specs(binary, &active_folder, &passive_folder, "");
        let alpha = alpha.try_start(root)?;
        let beta = beta.try_start(root)?;
        Ok(StreamingPair {
            alpha,
            beta,
            active_folder,
            passive_folder,
        })
    }
}

/// Lag with `replication_period = 0`: `changes` writes of a 4 KiB file on the active,
/// each timed until the passive has its content. Returns the sorted latencies.
pub fn lag(binary: &Path, work: &Path, changes: usize) -> Outcome<Vec<Duration>> {
    let StreamingPair {
        alpha,
        beta: _beta,
        active_folder,
        passive_folder,
    } = StreamingPair::start(binary, &work.join("lag"))?;
    let latencies = lag_between(&active_folder, &passive_folder, changes)?;
    drop(alpha);
    Ok(latencies)
}

/// `changes` writes of a 4 KiB file in `active_folder`, one at a time 50 ms apart,
/// each timed until `passive_folder` holds its content. Returns the sorted latencies.
pub fn lag_between(
    active_folder: &Path,
    passive_folder: &Path,
    changes: usize,
) -> Outcome<Vec<Duration>> {
    let mut bytes = crate::corpus::Bytes::new(9);
    let mut content = vec![0u8; 4096];
    let mut latencies = Vec::with_capacity(changes);
    for change in 0..changes {
        bytes.fill(&mut content);
        let name = format!("record{}.dat", change % 20);
        let started = Instant::now();
        std::fs::write(active_folder.join(&name), &content)?;
        let replica = passive_folder.join(&name);
        loop {
            if std::fs::read(&replica).is_ok_and(|got| got == content) {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                return Err(format!("change {change} never reached the passive").into());
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        latencies.push(started.elapsed());
        // Let the active settle so every change is timed alone.
        std::thread::sleep(Duration::from_millis(50));
    }
    latencies.sort();
    Ok(latencies)
}
