//! What the tests add to the shared process harness (`standin-harness`, also used by
//! the benchmarks: `NodeSpec`, `NodeProcess`, `PairSpec`, `Pair`, waits, HTTP): the
//! binary cargo built for this test target, seeded faults, a ledgered writer, and
//! reading a node's log, status and quarantine through the CLI.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

#[allow(unused_imports)]
pub use standin_harness::{
    free_port, http_get, in_sync, poll_for, pseudo_random, tree, wait_until, wait_within,
    NodeProcess, NodeSpec, Pair, PairSpec, LIMIT,
};

pub fn standin() -> &'static str {
    env!("CARGO_BIN_EXE_standin")
}

/// A second secret under `root` (`agent.secret`) for the agents, made with
/// `standin init-secret`.
#[allow(dead_code)]
pub fn agent_secret(root: &Path) -> PathBuf {
    let path = root.join("agent.secret");
    assert!(Command::new(standin())
        .arg("init-secret")
        .arg(&path)
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success());
    path
}

/// The node's `status --json` (null when it does not answer).
#[allow(dead_code)]
pub fn status_json(node: &NodeProcess) -> serde_json::Value {
    serde_json::from_slice(&node.cli(&["status", "--json"]).stdout).unwrap_or_default()
}

/// One sample of which node answers `/active` 200 — alpha, then beta, then alpha
/// again — panicking when both do at once (`since`: when the watch began, for the
/// message): (alpha before, beta, alpha after).
#[allow(dead_code)]
pub fn sample_authority(
    alpha: &NodeProcess,
    beta: &NodeProcess,
    since: std::time::Instant,
) -> (bool, bool, bool) {
    let (a1, b, a2) = (alpha.is_active(), beta.is_active(), alpha.is_active());
    assert!(
        !(a1 && b && a2),
        "two nodes answer /active 200 at once after {:?}",
        since.elapsed()
    );
    (a1, b, a2)
}

/// The random source of a fault test: seeded from `STANDIN_FAULT_SEED` (or the clock),
/// printed at the start so that a failing run can be replayed with the same schedule
/// (the schedule of faults and writes; thread interleavings are the machine's).
pub struct FaultRng {
    state: u64,
}

impl FaultRng {
    /// The seed for `test`, printed (the harness shows it when the test fails).
    pub fn for_test(test: &str) -> FaultRng {
        let seed = match std::env::var("STANDIN_FAULT_SEED") {
            Ok(text) => text
                .trim()
                .parse::<u64>()
                .or_else(|_| u64::from_str_radix(text.trim().trim_start_matches("0x"), 16))
                .unwrap_or_else(|_| panic!("STANDIN_FAULT_SEED={text:?} is not a number")),
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|elapsed| elapsed.as_nanos() as u64)
                .unwrap_or(1),
        };
        eprintln!("{test}: STANDIN_FAULT_SEED={seed} (replay with this seed)");
        FaultRng::new(seed)
    }

    pub fn new(seed: u64) -> FaultRng {
        FaultRng { state: seed }
    }

    /// splitmix64.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }

    /// Uniform in `low..high` (`low` when the range is empty).
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        if high <= low {
            return low;
        }
        low + self.next_u64() % (high - low)
    }

    pub fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(self.range(low, high))
    }

    /// A generator of its own for another thread, derived from this one.
    pub fn fork(&mut self) -> FaultRng {
        FaultRng::new(self.next_u64())
    }
}

/// How many times a fault test repeats its fault: `STANDIN_FAULT_RUNS`, else `default`
/// (small for the quick form in `cargo test`, large for the `--ignored` soak form).
pub fn fault_runs(default: usize) -> usize {
    match std::env::var("STANDIN_FAULT_RUNS") {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("STANDIN_FAULT_RUNS={text:?} is not a number")),
        Err(_) => default,
    }
}

/// Each name's last content, as a writer left it.
pub type Ledger = std::collections::BTreeMap<String, Vec<u8>>;

/// A writer on a node's folder, in a thread of its own, keeping a ledger of every
/// change it made: each name's last content (written and fsync'd before it counts).
pub struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<(Ledger, u64)>>,
}

impl Writer {
    /// Write files named `{prefix}{0..names}` with seeded sizes up to `max_size` bytes,
    /// pausing `pause_ms` (a range) between writes.
    pub fn start(
        folder: PathBuf,
        prefix: &str,
        names: u64,
        max_size: u64,
        pause_ms: (u64, u64),
        mut rng: FaultRng,
    ) -> Writer {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let prefix = prefix.to_string();
        let thread = std::thread::spawn(move || {
            let mut ledger = std::collections::BTreeMap::new();
            let mut writes = 0u64;
            while !stopping.load(std::sync::atomic::Ordering::SeqCst) {
                let name = format!("{prefix}{}", rng.range(0, names));
                let content = pseudo_random(rng.range(1, max_size) as usize, rng.next_u64());
                let mut file = std::fs::File::create(folder.join(&name)).unwrap();
                file.write_all(&content).unwrap();
                file.sync_all().unwrap();
                ledger.insert(name, content);
                writes += 1;
                std::thread::sleep(rng.millis(pause_ms.0, pause_ms.1));
            }
            (ledger, writes)
        });
        Writer {
            stop,
            thread: Some(thread),
        }
    }

    /// Stop writing: the ledger (each name's last content) and the number of writes.
    pub fn finish(mut self) -> (Ledger, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread
            .take()
            .map(|thread| thread.join().unwrap())
            .unwrap_or_default()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Every ledger entry is in `folder` with its last content; the names that are not.
pub fn ledger_missing(
    folder: &Path,
    ledger: &std::collections::BTreeMap<String, Vec<u8>>,
) -> Vec<String> {
    ledger
        .iter()
        .filter(|(name, content)| {
            std::fs::read(folder.join(name.as_str())).ok().as_ref() != Some(*content)
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// A node's whole log, read back with `standin log --json` (every link checked by the
/// reader): seq -> hash.
pub fn log_hashes(node: &NodeProcess) -> std::collections::BTreeMap<u64, String> {
    let mut hashes = std::collections::BTreeMap::new();
    loop {
        let after = hashes.keys().next_back().copied().unwrap_or(0);
        let output = node.cli(&[
            "log",
            "--after",
            &after.to_string(),
            "--limit",
            "4096",
            "--json",
        ]);
        assert!(
            output.status.success(),
            "log of {}: {}",
            node.name,
            String::from_utf8_lossy(&output.stderr)
        );
        let before = hashes.len();
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let event: serde_json::Value = serde_json::from_str(line).unwrap();
            hashes.insert(
                event["seq"].as_u64().unwrap(),
                event["hash"].as_str().unwrap().to_string(),
            );
        }
        if hashes.len() == before {
            return hashes;
        }
    }
}

/// The node's head as its status reports it: (seq, hash).
pub fn status_head(node: &NodeProcess) -> Option<(u64, String)> {
    let output = node.cli(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    Some((
        status["head_seq"].as_u64()?,
        status["head_hash"].as_str()?.to_string(),
    ))
}

/// Whether a quarantine of `node` holds `name` with `content`: as a recorded `Put`
/// (`files/<seq>/<name>`) or as an unrecorded change (`files/<name>`).
pub fn in_quarantine(node: &NodeProcess, name: &str, content: &[u8]) -> bool {
    let holds = |path: PathBuf| std::fs::read(path).is_ok_and(|kept| kept == content);
    let Ok(dirs) = std::fs::read_dir(node.data_dir.join("quarantine")) else {
        return false;
    };
    dirs.flatten().any(|dir| {
        let files = dir.path().join("files");
        holds(files.join(name))
            || std::fs::read_dir(&files)
                .map(|seqs| seqs.flatten().any(|seq| holds(seq.path().join(name))))
                .unwrap_or(false)
    })
}
