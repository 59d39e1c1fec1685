//! The benchmarks' nodes, on the shared process harness (`standin-harness`): their
//! specs (quiet logs, a long start bound, ports retried when taken), the pair's specs
//! naming each other, and what a benchmark reads of a running node — its head, `verify`,
//! peak memory and CPU time from /proc, a data_dir's size on disk.

use std::path::Path;
use std::time::{Duration, Instant};

use standin_harness::{free_port, NodeProcess, NodeSpec};

use crate::Outcome;

/// How long a benchmark waits for a node (a large corpus takes a while).
pub const LIMIT: Duration = Duration::from_secs(600);

/// A node of a benchmark run from `binary`: `STANDIN_BENCH_LOG` as its log level
/// (`warn` unless set, e.g. `info` for step timings), started again when a port
/// chosen free was taken before it bound it.
pub fn bench_node(binary: &Path, name: &str, role: &str) -> NodeSpec {
    NodeSpec::new(name, role)
        .binary(binary)
        .log_level(&std::env::var("STANDIN_BENCH_LOG").unwrap_or_else(|_| "warn".to_string()))
        .start_limit(LIMIT)
        .retry_taken_ports(49)
}

/// An active `alpha` on `active_folder` and a streaming passive `beta`
/// (`replication_period = 0`) on `passive_folder`, each naming the other as its peer
/// (as deployed), on ports chosen now so that either can start first.
pub fn pair_specs(
    binary: &Path,
    active_folder: &Path,
    passive_folder: &Path,
    extra: &str,
) -> (NodeSpec, NodeSpec) {
    let alpha_ports = (free_port(), free_port());
    let beta_ports = (free_port(), free_port());
    let alpha = bench_node(binary, "alpha", "active")
        .folder(active_folder)
        .ports(alpha_ports)
        .peer(beta_ports.0)
        .period(1.0)
        .extra(extra);
    let beta = bench_node(binary, "beta", "passive")
        .folder(passive_folder)
        .ports(beta_ports)
        .peer(alpha_ports.0)
        .period(0.0)
        .extra(extra);
    (alpha, beta)
}

/// A counter or gauge from `/metrics` (0 when absent).
pub fn metric(node: &NodeProcess, name: &str) -> u64 {
    node.metric(name).unwrap_or(0.0) as u64
}

/// Wait until `done(head)` holds for the node's head, read from the mark the node
/// writes beside its log after each durable append (`data_dir/log-head`, "SEQ HASH"):
/// a probe that costs the node nothing. Scraping `/metrics` every few milliseconds
/// instead took CPU from the node being timed, on a machine it keeps busy. A node
/// without the mark yet (still opening) is asked over `/metrics`.
pub fn wait_head(node: &NodeProcess, what: &str, mut done: impl FnMut(u64) -> bool) -> Outcome<()> {
    let started = Instant::now();
    let mark = node.data_dir.join("log-head");
    loop {
        let head = match head_from_mark(&mark) {
            Some(head) => head,
            None if !mark.exists() => node.head_seq(),
            // Caught while the node rewrote it: read it again next time.
            None => 0,
        };
        if done(head) {
            return Ok(());
        }
        if started.elapsed() > LIMIT {
            return Err(format!("timed out waiting for {what}").into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The seq in a head mark, or None when the file is missing or was read half
/// written (the seq counts only when the space after it was written too).
fn head_from_mark(mark: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(mark).ok()?;
    let (seq, _hash) = text.split_once(' ')?;
    seq.parse().ok()
}

/// `standin verify` on the node.
pub fn verify(node: &NodeProcess) -> Outcome<()> {
    let output = node.cli(&["verify"]);
    if !output.status.success() {
        return Err(format!("verify failed: {}", String::from_utf8_lossy(&output.stdout)).into());
    }
    Ok(())
}

/// Forget the node's peak resident memory so far (`VmHWM`), so that `resources`
/// reports the peak of what follows. Best effort (Linux >= 4.0).
pub fn reset_peak(node: &NodeProcess) {
    if let Some(pid) = node.pid() {
        let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
    }
}

/// The node's peak resident memory (MB) and CPU seconds so far, from /proc.
pub fn resources(node: &NodeProcess) -> (f64, f64) {
    let Some(pid) = node.pid() else {
        return (0.0, 0.0);
    };
    let rss_kb = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("VmHWM:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|value| value.parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of /proc/PID/stat, in clock ticks (100/s).
    let cpu_ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|text| {
            // After the ")" that ends the name, field 3 (the state) comes first.
            let after_name = text.rsplit_once(')')?.1.to_string();
            let fields: Vec<&str> = after_name.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    (rss_kb / 1024.0, cpu_ticks as f64 / 100.0)
}

/// Bytes allocated to the files under `dir` (blocks, so sparse files count as such).
pub fn allocated_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(listing) = std::fs::read_dir(&dir) else {
            continue;
        };
        for item in listing.flatten() {
            let Ok(metadata) = item.metadata() else {
                continue;
            };
            if metadata.is_dir() {
                dirs.push(item.path());
            } else {
                total += metadata.blocks() * 512;
            }
        }
    }
    total
}

/// Peak resident memory and CPU time.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub rss_mb: f64,
    pub cpu_s: f64,
}

/// Wait for `pid` (a child of ours) to end; its peak RSS and CPU time, including those
/// of the descendants it waited for. `Err` when it exits with a failure.
pub fn wait_usage(pid: u32) -> Outcome<(bool, Usage)> {
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own child, not yet waited for; both pointers are valid.
    let waited = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
    if waited < 0 {
        return Err(format!("wait4({pid}): {}", std::io::Error::last_os_error()).into());
    }
    let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
    let success = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    Ok((
        success,
        Usage {
            rss_mb: usage.ru_maxrss as f64 / 1024.0,
            cpu_s: seconds(usage.ru_utime) + seconds(usage.ru_stime),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::head_from_mark;

    #[test]
    fn a_head_mark_counts_only_when_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mark = dir.path().join("log-head");
        assert_eq!(head_from_mark(&mark), None, "no mark yet");
        std::fs::write(&mark, "2010").unwrap();
        assert_eq!(head_from_mark(&mark), None, "the seq cut short");
        std::fs::write(&mark, "").unwrap();
        assert_eq!(head_from_mark(&mark), None, "emptied to be rewritten");
        std::fs::write(&mark, "20101 d20a6c4c\n").unwrap();
        assert_eq!(head_from_mark(&mark), Some(20101));
    }
}
