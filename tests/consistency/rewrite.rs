//! A file rewritten in place: 16 MiB, each pass one `pwrite` of the whole file that
//! stamps the pass number in every 4 KiB block, 50 ms between passes. Every version the
//! passive holds must be one pass (never blocks of two), and at least 3 distinct passes
//! must reach it. Two oracles: the passive's copy read over and over while the passes
//! run, and the content hash of every version of the file in both nodes' logs
//! (`standin log`), compared with the hash of each pass's content.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{heavy, soak_runs, FailoverPair, LogReader};
use crate::support::{wait_within, LIMIT};

const NAME: &str = "rewritten.bin";
const SIZE: usize = 16 << 20;
const BLOCK: usize = 4096;

/// The whole file as pass `pass` leaves it: every block repeats (pass, block number).
fn fill(buffer: &mut [u8], pass: u64) {
    for (index, block) in buffer.chunks_mut(BLOCK).enumerate() {
        fill_block(block, pass, index as u64);
    }
}

/// The pass of each block, or a description of a version that is not one pass.
fn passes_of(bytes: &[u8]) -> Result<u64, String> {
    if bytes.len() != SIZE {
        return Err(format!("{} bytes, not {SIZE}", bytes.len()));
    }
    let mut blocks: BTreeMap<Option<u64>, usize> = BTreeMap::new();
    for (index, block) in bytes.chunks(BLOCK).enumerate() {
        let pass = u64::from_le_bytes(block[..8].try_into().unwrap());
        let mut expected = vec![0u8; BLOCK];
        fill_block(&mut expected, pass, index as u64);
        let stamp = (block == expected.as_slice()).then_some(pass);
        *blocks.entry(stamp).or_default() += 1;
    }
    match blocks.keys().collect::<Vec<_>>().as_slice() {
        [Some(pass)] => Ok(*pass),
        _ => Err(blocks
            .iter()
            .map(|(pass, count)| match pass {
                Some(pass) => format!("{count} blocks of pass {pass}"),
                None => format!("{count} blocks of no pass"),
            })
            .collect::<Vec<_>>()
            .join(" and ")),
    }
}

fn fill_block(block: &mut [u8], pass: u64, index: u64) {
    let mut stamp = [0u8; 16];
    stamp[..8].copy_from_slice(&pass.to_le_bytes());
    stamp[8..].copy_from_slice(&index.to_le_bytes());
    for piece in block.chunks_mut(16) {
        piece.copy_from_slice(&stamp[..piece.len()]);
    }
}

/// What the poller saw: the passes of the copies read, the copies that were not one
/// pass, and how many reads it made.
type Polled = (BTreeSet<u64>, Vec<String>, u64);

/// Reads `path` over and over until stopped.
struct Poller {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Polled>>,
}

impl Poller {
    fn start(path: PathBuf) -> Poller {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut seen, mut torn, mut reads) = (BTreeSet::new(), Vec::new(), 0u64);
            while !stopping.load(Ordering::SeqCst) {
                // The passive replaces the file by a rename: one read of one open file
                // sees one version.
                if let Ok(bytes) = std::fs::read(&path) {
                    reads += 1;
                    match passes_of(&bytes) {
                        Ok(pass) => {
                            seen.insert(pass);
                        }
                        // The same torn copy read again is one version.
                        Err(description) if torn.last() != Some(&description) => {
                            torn.push(description)
                        }
                        Err(_) => {}
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (seen, torn, reads)
        });
        Poller {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Polled {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Write pass 0 under a temporary name and rename it into place, so that no other
/// version of the name ever exists before the passes.
fn create_pass_zero(path: &Path, buffer: &mut [u8]) {
    let temporary = path.with_extension("tmp");
    fill(buffer, 0);
    std::fs::write(&temporary, &*buffer).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

/// Each version of `NAME` in a log that is not the content of one pass (by its content
/// hash); the passes found.
fn versions_in_log(
    log: &LogReader,
    hashes: &BTreeMap<String, u64>,
) -> (BTreeSet<u64>, Vec<String>) {
    let (mut passes, mut strangers) = (BTreeSet::new(), Vec::new());
    for event in log.puts_of(NAME) {
        match event.content_prefix().and_then(|prefix| hashes.get(prefix)) {
            Some(pass) => {
                passes.insert(*pass);
            }
            None => strangers.push(format!(
                "{event} (size {:?}): no pass has this content",
                event.size()
            )),
        }
    }
    (passes, strangers)
}

fn rewrites_reach_the_passive_whole(runs: usize, duration: Duration) {
    let _heavy = heavy();
    let mut failures = Vec::new();
    let mut buffer = vec![0u8; SIZE];
    for run in 0..runs {
        let pair = FailoverPair::start(0);
        let path = pair.alpha.folder.join(NAME);
        create_pass_zero(&path, &mut buffer);
        wait_within("pass 0 to reach beta", LIMIT, || {
            std::fs::read(pair.beta.folder.join(NAME)).is_ok_and(|bytes| passes_of(&bytes) == Ok(0))
        });
        let poller = Poller::start(pair.beta.folder.join(NAME));

        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let started = Instant::now();
        let mut pass = 0u64;
        while started.elapsed() < duration {
            pass += 1;
            fill(&mut buffer, pass);
            // One pwrite(2) of the whole file.
            // SAFETY: the buffer is SIZE bytes, alive for the call.
            let written = unsafe {
                libc::pwrite(
                    std::os::fd::AsRawFd::as_raw_fd(&file),
                    buffer.as_ptr().cast(),
                    buffer.len(),
                    0,
                )
            };
            assert_eq!(written, SIZE as isize, "one pwrite of the whole file");
            std::thread::sleep(Duration::from_millis(50));
        }
        let last = pass;
        drop(file);
        wait_within("beta to hold the last pass", LIMIT, || {
            std::fs::read(pair.beta.folder.join(NAME))
                .is_ok_and(|bytes| passes_of(&bytes) == Ok(last))
        });
        let (polled, torn_copies, reads) = poller.finish();

        // The content hash of every pass, as `standin log` shows it (12 hex digits).
        let hashes: BTreeMap<String, u64> = (0..=last)
            .map(|pass| {
                fill(&mut buffer, pass);
                (
                    standin_engine::Hash::of(&buffer).to_hex()[..12].to_string(),
                    pass,
                )
            })
            .collect();
        let mut alpha_log = LogReader::default();
        let mut beta_log = LogReader::default();
        assert!(alpha_log.refresh(&pair.alpha), "alpha's log reads");
        assert!(beta_log.refresh(&pair.beta), "beta's log reads");
        let (alpha_passes, alpha_strangers) = versions_in_log(&alpha_log, &hashes);
        let (beta_passes, beta_strangers) = versions_in_log(&beta_log, &hashes);
        let reached: BTreeSet<u64> = beta_passes.union(&polled).copied().collect();
        eprintln!(
            "rewrite run {run}: {last} passes written in {:.1} s; alpha's log holds {} versions ({} of one pass: {alpha_passes:?}); beta's log holds {} versions ({} of one pass); beta's copy read {reads} times: passes {polled:?}, {} torn reads",
            duration.as_secs_f64(),
            alpha_log.puts_of(NAME).count(),
            alpha_log.puts_of(NAME).count() - alpha_strangers.len(),
            beta_log.puts_of(NAME).count(),
            beta_log.puts_of(NAME).count() - beta_strangers.len(),
            torn_copies.len(),
        );
        let mut problems = Vec::new();
        for torn in torn_copies.iter().take(5) {
            problems.push(format!("beta's copy read as {torn}"));
        }
        for stranger in alpha_strangers.iter().take(5) {
            problems.push(format!("alpha's log: {stranger}"));
        }
        for stranger in beta_strangers.iter().take(5) {
            problems.push(format!("beta's log: {stranger}"));
        }
        if reached.len() < 3 {
            problems.push(format!(
                "only {} distinct passes of {} reached beta: {reached:?}",
                reached.len(),
                last + 1
            ));
        }
        if !problems.is_empty() {
            failures.push(format!("run {run}:\n    {}", problems.join("\n    ")));
        }
        drop(pair);
    }
    assert!(
        failures.is_empty(),
        "a file rewritten in place reached the passive as a state it never had, or too rarely:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_version_of_a_file_rewritten_in_place_is_one_pass() {
    rewrites_reach_the_passive_whole(1, Duration::from_secs(6));
}

#[test]
#[ignore = "soak: STANDIN_SOAK_RUNS runs (default 10) of 15 s"]
fn every_version_of_a_file_rewritten_in_place_is_one_pass_soak() {
    rewrites_reach_the_passive_whole(soak_runs(10), Duration::from_secs(15));
}
