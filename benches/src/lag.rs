//! Lag under a steady writer: standin (`replication_period = 0`, the passive follows
//! the active's log) beside lsyncd (Debian's `lsyncd`, `default.rsync` with
//! `delay = 0`, a local target) measured in the same run, with the same writer and the
//! same probe.
//!
//! For each rate, a writer creates 4 KiB files (new content each) in a fresh
//! directory of the source at that many per second; an observer reads the replica and
//! takes the moment a file holds exactly the bytes written. A file's latency runs from
//! the start of its write to that moment. The observer looks for the files in write
//! order (both tools deliver them in that order: standin in log order, rsync in name
//! order), so a file that arrives before its predecessor is counted when the
//! predecessor has arrived.
//!
//! The two tools run one after the other at each rate (standin first at even rates'
//! positions, lsyncd first at odd ones), each idle while the other is measured.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::pair::StreamingPair;
use crate::Outcome;

/// How long a tool may take to deliver one file before the run is called failed.
const STALL: Duration = Duration::from_secs(30);

/// Latencies of a steady writer, one tool, one rate.
pub struct RateLag {
    pub tool: &'static str,
    pub rate: u32,
    pub achieved: f64,
    /// Sorted write-to-replica latencies.
    pub latencies: Vec<Duration>,
}

impl RateLag {
    /// The latency at `quantile` (0.5 the median, 1.0 the largest), in ms.
    pub fn at_ms(&self, quantile: f64) -> f64 {
        crate::measure::quantile_ms(&self.latencies, quantile)
    }
}

/// lsyncd on the PATH, installed with apt-get when missing.
pub fn lsyncd_binary() -> Outcome<PathBuf> {
    crate::pair::find_or_install("lsyncd", "lsyncd")
}

/// An `lsyncd -nodaemon` process keeping `target` a copy of `source` (`default.rsync`,
/// `delay = 0`); killed when dropped.
pub struct Lsyncd {
    child: Child,
    log: PathBuf,
}

impl Lsyncd {
    /// Start lsyncd on `source` → `target` (both created here) and wait until its
    /// start-up copy is done.
    pub fn start(binary: &Path, root: &Path, source: &Path, target: &Path) -> Outcome<Lsyncd> {
        std::fs::create_dir_all(source)?;
        std::fs::create_dir_all(target)?;
        let config = root.join("lsyncd.lua");
        let log = root.join("lsyncd.log");
        std::fs::write(
            &config,
            format!(
                "settings {{\n  logfile = {:?},\n  statusFile = {:?},\n  nodaemon = true,\n}}\nsync {{\n  default.rsync,\n  source = {:?},\n  target = {:?},\n  delay = 0,\n}}\n",
                log.display().to_string(),
                root.join("lsyncd.status").display().to_string(),
                format!("{}/", source.display()),
                format!("{}/", target.display()),
            ),
        )?;
        let child = Command::new(binary)
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(
                root.join("lsyncd.stderr"),
            )?))
            .spawn()?;
        let mut lsyncd = Lsyncd { child, log };
        // Its start-up rsync done and the watches set: a directory created now appears.
        let probe = "lsyncd-started";
        std::fs::create_dir(source.join(probe))?;
        let started = Instant::now();
        while !target.join(probe).is_dir() {
            if let Some(status) = lsyncd.child.try_wait()? {
                return Err(format!(
                    "lsyncd exited at start ({status}): {}",
                    std::fs::read_to_string(&lsyncd.log).unwrap_or_default()
                )
                .into());
            }
            if started.elapsed() > STALL {
                return Err("lsyncd did not start copying".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(lsyncd)
    }
}

impl Drop for Lsyncd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The content of file `index` of the run with `seed`: 4 KiB, the same for the writer
/// and the observer.
fn content(seed: u64, index: usize, buffer: &mut [u8]) {
    crate::corpus::Bytes::new(seed.wrapping_mul(1_000_003).wrapping_add(index as u64)).fill(buffer);
}

fn file_name(index: usize) -> String {
    format!("change{index:07}.dat")
}

/// One steady writer into `source/dir`, observed in `replica/dir`: `rate` files a
/// second for `seconds`.
fn steady_writer(
    tool: &'static str,
    source: &Path,
    replica: &Path,
    dir: &str,
    rate: u32,
    seconds: f64,
    seed: u64,
) -> Outcome<RateLag> {
    let (source, replica) = (source.join(dir), replica.join(dir));
    std::fs::create_dir(&source)?;
    let started = Instant::now();
    while !replica.is_dir() {
        if started.elapsed() > STALL {
            return Err(format!("{tool}: {dir} never reached the replica").into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let total = ((rate as f64 * seconds).round() as usize).max(1);
    let mut written = Vec::with_capacity(total);
    let (seen, achieved) = std::thread::scope(|scope| -> Outcome<(Vec<Instant>, f64)> {
        let observer = scope.spawn(|| {
            let mut seen = Vec::with_capacity(total);
            let mut expected = vec![0u8; 4096];
            content(seed, 0, &mut expected);
            let mut progress = Instant::now();
            while seen.len() < total {
                let path = replica.join(file_name(seen.len()));
                if std::fs::read(&path).is_ok_and(|got| got == expected) {
                    let now = Instant::now();
                    seen.push(now);
                    progress = now;
                    content(seed, seen.len(), &mut expected);
                } else if progress.elapsed() > STALL {
                    break;
                } else {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            seen
        });
        let mut buffer = vec![0u8; 4096];
        let start = Instant::now();
        for index in 0..total {
            let due = start + Duration::from_secs_f64(index as f64 / rate as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            content(seed, index, &mut buffer);
            written.push(Instant::now());
            std::fs::write(source.join(file_name(index)), &buffer)?;
        }
        let achieved = total as f64 / start.elapsed().as_secs_f64().max(1e-9);
        let seen = observer.join().map_err(|_| "the lag observer panicked")?;
        Ok((seen, achieved))
    })?;
    if seen.len() < total {
        return Err(format!(
            "{tool} at {rate} changes/s: change {} never reached the replica",
            seen.len()
        )
        .into());
    }
    let mut latencies: Vec<Duration> = seen
        .iter()
        .zip(&written)
        .map(|(seen, written)| seen.saturating_duration_since(*written))
        .collect();
    latencies.sort();
    Ok(RateLag {
        tool,
        rate,
        achieved,
        latencies,
    })
}

/// Lag of standin and of lsyncd at each of `rates`, `seconds` each; per rate, the
/// standin result first.
pub fn lag_rates(
    standin: &Path,
    lsyncd: &Path,
    work: &Path,
    rates: &[u32],
    seconds: f64,
) -> Outcome<Vec<RateLag>> {
    let pair = StreamingPair::start(standin, &work.join("lag-standin"))?;
    let lsyncd_root = work.join("lag-lsyncd");
    std::fs::create_dir_all(&lsyncd_root)?;
    let (lsyncd_source, lsyncd_target) = (lsyncd_root.join("source"), lsyncd_root.join("target"));
    let _lsyncd = Lsyncd::start(lsyncd, &lsyncd_root, &lsyncd_source, &lsyncd_target)?;
    let mut results = Vec::new();
    for (position, &rate) in rates.iter().enumerate() {
        let dir = format!("rate{rate}");
        let seed = 11 + position as u64;
        let run_standin = || {
            steady_writer(
                "standin",
                &pair.active_folder,
                &pair.passive_folder,
                &dir,
                rate,
                seconds,
                seed,
            )
        };
        let run_lsyncd = || {
            steady_writer(
                "lsyncd",
                &lsyncd_source,
                &lsyncd_target,
                &dir,
                rate,
                seconds,
                seed,
            )
        };
        let (standin_lag, lsyncd_lag) = if position % 2 == 0 {
            let first = run_standin()?;
            std::thread::sleep(Duration::from_millis(500));
            (first, run_lsyncd()?)
        } else {
            let first = run_lsyncd()?;
            std::thread::sleep(Duration::from_millis(500));
            (run_standin()?, first)
        };
        results.push(standin_lag);
        results.push(lsyncd_lag);
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(results)
}
