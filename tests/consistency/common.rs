//! What the consistency tests share: one heavy test at a time, a pair that fails over,
//! the log as `standin log --json` shows it, and the number of runs.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use crate::support::{wait_within, NodeProcess, PairSpec, LIMIT};

static HEAVY: Mutex<()> = Mutex::new(());

/// Held for the whole of a test: the tests of this target run one at a time (a test
/// that failed poisons nothing for the next).
pub fn heavy() -> MutexGuard<'static, ()> {
    HEAVY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The passive promotes itself after this long without an answer from the active (the
/// value the reports were made with).
pub const FAILOVER_AFTER_MS: u64 = 2000;

/// How many runs a soak form makes: `STANDIN_SOAK_RUNS`, else `default`.
pub fn soak_runs(default: usize) -> usize {
    match std::env::var("STANDIN_SOAK_RUNS") {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("STANDIN_SOAK_RUNS={text:?} is not a number")),
        Err(_) => default,
    }
}

/// An active (`alpha`) and a passive (`beta`) that heartbeat each other every 100 ms;
/// the passive takes over after `FAILOVER_AFTER_MS`. The nodes are killed before the
/// temp dir is removed (fields drop in order).
pub struct FailoverPair {
    pub alpha: NodeProcess,
    pub beta: NodeProcess,
    pub root: tempfile::TempDir,
}

impl FailoverPair {
    /// Start both with `replication_period = period` (0: continuous) and wait until
    /// alpha is active.
    pub fn start(period: u32) -> FailoverPair {
        FailoverPair::start_in(tempfile::tempdir().unwrap(), period, &[])
    }

    /// `start` with the pair's files under `base` when given (a loop-mounted XFS
    /// image, say).
    pub fn start_on(base: Option<&Path>, period: u32) -> FailoverPair {
        match base {
            Some(base) => FailoverPair::start_in(tempfile::tempdir_in(base).unwrap(), period, &[]),
            None => FailoverPair::start(period),
        }
    }

    /// `start` with the pair's files in `root` (another file system, say) and extra
    /// environment for alpha (`STANDIN_LOG`, say).
    pub fn start_in(
        mut root: tempfile::TempDir,
        period: u32,
        alpha_env: &[(&str, &str)],
    ) -> FailoverPair {
        if std::env::var_os("STANDIN_KEEP").is_some() {
            // Kept for a look after a failure: the path is printed.
            root.disable_cleanup(true);
            eprintln!(
                "STANDIN_KEEP: the pair's files stay in {}",
                root.path().display()
            );
        }
        let timing = format!(
            "heartbeat_interval_ms = 100\nfailover_after_ms = {FAILOVER_AFTER_MS}\nreplication_period = {period}\n"
        );
        // alpha heartbeats beta too, as deployed.
        let (mut alpha, mut beta) = PairSpec::new(&timing).mutual().configure(root.path());
        alpha.env.extend(
            alpha_env
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string())),
        );
        alpha.start();
        beta.start();
        wait_within("alpha to be active", LIMIT, || alpha.is_active());
        FailoverPair { alpha, beta, root }
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// SIGKILL the active and wait until the passive has promoted itself.
    pub fn kill_active_and_wait_for_promotion(&mut self) {
        self.alpha.kill();
        wait_within(
            "beta to promote itself after alpha was killed",
            LIMIT,
            || self.beta.is_active(),
        );
    }
}

/// One event as `standin log --json` prints it.
#[derive(Clone, Debug)]
pub struct LogEvent {
    pub seq: u64,
    /// When the active recorded it (its clock, ms since the epoch).
    pub recorded_at_ms: u64,
    pub kind: String,
    /// The path, or `from -> to` for a rename.
    pub path: String,
    pub detail: String,
}

impl LogEvent {
    /// Whether this event puts something at `path` (a put, a rename onto it, a mkdir or
    /// a symlink).
    pub fn creates(&self, path: &str) -> bool {
        match self.kind.as_str() {
            "rename" => self
                .path
                .split_once(" -> ")
                .is_some_and(|(_, to)| to == path),
            "put" | "file" | "mkdir" | "dir" | "symlink" | "link" => self.path == path,
            _ => false,
        }
    }

    /// Whether this event puts a file's content (`put`, or `file` with its metadata).
    pub fn puts(&self) -> bool {
        self.kind == "put" || self.kind == "file"
    }

    /// The content hash prefix (12 hex digits) of a put.
    pub fn content_prefix(&self) -> Option<&str> {
        self.detail.rsplit_once("content ").map(|(_, hex)| hex)
    }

    /// The size of a put.
    pub fn size(&self) -> Option<u64> {
        self.detail
            .split_once(" bytes")
            .and_then(|(n, _)| n.parse().ok())
    }
}

impl std::fmt::Display for LogEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "#{} {} {} {}",
            self.seq, self.kind, self.path, self.detail
        )
    }
}

/// A node's log read with `standin log --json`, incrementally.
#[derive(Default)]
pub struct LogReader {
    pub events: Vec<LogEvent>,
}

impl LogReader {
    /// Read the events after the last one read; false when the node did not answer.
    pub fn refresh(&mut self, node: &NodeProcess) -> bool {
        loop {
            let after = self.events.last().map(|event| event.seq).unwrap_or(0);
            let output = node.cli(&[
                "log",
                "--after",
                &after.to_string(),
                "--limit",
                "4096",
                "--json",
            ]);
            if !output.status.success() {
                return false;
            }
            let before = self.events.len();
            for line in String::from_utf8_lossy(&output.stdout).lines() {
                let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                let text = |key: &str| value[key].as_str().unwrap_or_default().to_string();
                self.events.push(LogEvent {
                    seq: value["seq"].as_u64().unwrap_or_default(),
                    recorded_at_ms: value["recorded_at_ms"].as_u64().unwrap_or_default(),
                    kind: text("kind"),
                    path: text("path"),
                    detail: text("detail"),
                });
            }
            if self.events.len() == before {
                return true;
            }
        }
    }

    /// The first event that creates `path`.
    pub fn first_creating(&self, path: &str) -> Option<&LogEvent> {
        self.events.iter().find(|event| event.creates(path))
    }

    /// Whether some put names a path `matches` accepts.
    pub fn has_put(&self, matches: impl Fn(&str) -> bool) -> bool {
        self.events
            .iter()
            .any(|event| event.puts() && matches(&event.path))
    }

    /// Every put of `path`.
    pub fn puts_of<'a>(&'a self, path: &'a str) -> impl Iterator<Item = &'a LogEvent> + 'a {
        self.events
            .iter()
            .filter(move |event| event.puts() && event.path == path)
    }
}

/// Wait until `node`'s log holds a put of a path `matches` accepts.
pub fn wait_for_put_in_log(node: &NodeProcess, what: &str, matches: impl Fn(&str) -> bool) {
    let mut log = LogReader::default();
    wait_within(what, LIMIT, || {
        log.refresh(node);
        log.has_put(&matches)
    });
}
