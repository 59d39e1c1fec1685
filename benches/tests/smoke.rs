//! The benchmark harness works: `standin-bench all --smoke` runs every part (initial
//! sync of the three corpora beside rsync, cp -a and the disk, incremental rounds,
//! takeover, lag at three rates beside lsyncd, resources) on tiny corpora and writes its report.
//! No timing is asserted: this machine's figures mean nothing at this size.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// The `standin` binary cargo built beside this package's binary (`cargo test
/// --workspace` builds it for the service's integration tests).
fn standin_binary() -> PathBuf {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_standin-bench"));
    let standin = bench.with_file_name("standin");
    assert!(
        standin.exists(),
        "{} is missing: run `cargo build -p standin` first (cargo test --workspace builds it)",
        standin.display()
    );
    standin
}

#[test]
fn all_smoke_runs_every_part_and_writes_the_report() {
    let standin = standin_binary();
    let work = tempfile::tempdir().expect("a temp dir");
    let out = work.path().join("results");
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_standin-bench"))
        .args(["all", "--smoke", "--runs", "1", "--dir"])
        .arg(work.path())
        .arg("--out")
        .arg(&out)
        .arg("--standin")
        .arg(&standin)
        .output()
        .expect("standin-bench runs");
    assert!(
        output.status.success(),
        "standin-bench all --smoke failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "the smoke run should take seconds, took {:?}",
        started.elapsed()
    );
    let markdown = std::fs::read_to_string(out.join("all-smoke.md")).expect("all-smoke.md");
    for part in [
        "small (200 files",
        "large (2 files",
        "mixed (30 files",
        "rsync -a (daemon, loopback) + sync",
        "cp -a + sync",
        "sequential write + fsync",
        "standin initial sync (verify passed)",
        "incremental case",
        "400 small files",
        "| 1000 (",
        "lsyncd",
        "rsync sender",
        "standin passive",
        "takeover:",
    ] {
        assert!(
            markdown.contains(part),
            "{part:?} missing from:\n{markdown}"
        );
    }
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("all-smoke.json")).expect("all-smoke.json"),
    )
    .expect("valid JSON");
    // standin and lsyncd at each of three rates.
    let lag = json["lag"].as_array().expect("lag rows");
    assert_eq!(lag.len(), 6, "{lag:?}");
    for tool in ["standin", "lsyncd"] {
        assert_eq!(
            lag.iter().filter(|row| row["tool"] == tool).count(),
            3,
            "{tool} at three rates: {lag:?}"
        );
    }
    assert!(json["cores"].as_u64().is_some_and(|cores| cores >= 1));
}
