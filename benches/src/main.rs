//! standin's benchmarks. Every figure is reported beside a peer measured in the same
//! run on the same machine (`cp -a`, the disk's own fsync'd write rate), because this
//! machine's absolute figures drift from hour to hour.
//!
//! ```text
//! cargo run --release -p standin-bench -- all    [--quick] [--runs N] [--dir DIR]
//! cargo run --release -p standin-bench -- engine [--quick] [--runs N] [--dir DIR]
//! cargo run --release -p standin-bench -- pair   [--quick] [--runs N] [--dir DIR]
//! cargo run --release -p standin-bench -- small  [--quick] [--runs N] [--dir DIR]
//! cargo run --release -p standin-bench -- large  [--quick] [--runs N] [--dir DIR]
//! cargo run --release -p standin-bench -- rewrite [--quick] [--runs N] [--dir DIR]
//! ```
//!
//! Common options: `--out DIR` (results elsewhere than `benches/results/`), `--standin
//! PATH` (use this `standin` binary instead of building the release one), `--smoke`
//! (`all` on tiny corpora: shows the harness works, in CI; its figures mean nothing).
//!
//! `all`: everything below the pair can measure, in one run (see `all.rs`), written
//! to `benches/results/all.md` and `all.json`.
//!
//! `pair`: initial sync over loopback between two real `standin serve` processes
//! (from an empty passive to caught up, and to `standin verify` passing) beside an
//! rsync daemon on 127.0.0.1 (installed with apt-get when missing), for the same two
//! corpora; and the change-to-applied lag of a 4 KiB file with `replication_period = 0`.
//!
//! `engine`: capture (scan, chunk, hash, store, log) and replay (apply verified events
//! into an empty folder, one durability point per batch) of 20,000 × 4 KiB files in 100
//! directories and of 8 × 128 MiB files, beside `cp -a` (with one final `sync`) and
//! the disk's fsync'd write rate. `--quick`: 2,000 small files and 2 × 64 MiB.
//! Every timed run writes into fresh space (never delete-then-create in a timed
//! region: see shared/BENCHMARKING.md); everything is removed at the end.

mod all;
mod corpus;
mod lag;
mod measure;
mod pair;
mod report;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use standin_engine::replay::apply_batch;
use standin_engine::scan::reconcile;
use standin_engine::verify::verify_folder;
use standin_engine::{Event, Repository};

use measure::{median, sync_all, time_command, warm};
use report::{Report, Row};

pub(crate) struct Options {
    quick: bool,
    /// A tiny run that only shows the harness works (the CI smoke test).
    smoke: bool,
    runs: usize,
    dir: Option<PathBuf>,
    /// Where the results go (default `benches/results/`).
    out: Option<PathBuf>,
    /// A `standin` binary to use instead of building the release one.
    standin: Option<PathBuf>,
}

fn parse(args: &[String]) -> Result<(String, Options), String> {
    let mut options = Options {
        quick: false,
        smoke: false,
        runs: 3,
        dir: None,
        out: None,
        standin: None,
    };
    let mut command = None;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--smoke" => options.smoke = true,
            "--out" => {
                options.out = Some(PathBuf::from(iter.next().ok_or("--out needs a directory")?))
            }
            "--standin" => {
                options.standin = Some(PathBuf::from(iter.next().ok_or("--standin needs a path")?))
            }
            "--runs" => {
                options.runs = iter
                    .next()
                    .and_then(|value| value.parse().ok())
                    .filter(|runs| *runs > 0)
                    .ok_or("--runs needs a positive number")?
            }
            "--dir" => {
                options.dir = Some(PathBuf::from(iter.next().ok_or("--dir needs a directory")?))
            }
            other if command.is_none() && !other.starts_with('-') => {
                command = Some(other.to_string())
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok((command.unwrap_or_else(|| "engine".to_string()), options))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match parse(&args) {
        Ok((command, options)) if command == "engine" => engine(&options),
        Ok((command, options)) if command == "pair" => pair_benchmark(&options),
        Ok((command, options)) if command == "all" => all::all(&options),
        Ok((command, options)) if command == "lag" => lag_only(&options),
        Ok((command, options)) if command == "small" || command == "large" => {
            initial_only(&options, &command)
        }
        Ok((command, options)) if command == "rewrite" => rewrite_only(&options),
        Ok((command, _)) => Err(format!(
            "unknown benchmark {command:?}; try `all`, `engine`, `pair`, `lag`, `small`, `large` or `rewrite`"
        )
        .into()),
        Err(message) => Err(message.into()),
    };
    if let Err(error) = result {
        eprintln!("error: {error}");
        std::process::exit(2);
    }
}

pub(crate) type Outcome<T> = Result<T, Box<dyn std::error::Error>>;

/// `lag`: only the lag section of `all` (10, 100 and 1,000 changes/s, standin beside
/// lsyncd; 20 s each, 3 s with `--quick`), printed and written to `lag.md` / `lag.json`
/// (`lag-quick`) — for working on the lag without a full run.
fn lag_only(options: &Options) -> Outcome<()> {
    let standin = pair::standin_binary(options.standin.as_deref())?;
    let lsyncd = lag::lsyncd_binary()?;
    let work = work_dir(options)?;
    let seconds = if options.quick { 3.0 } else { 20.0 };
    let name = if options.quick { "lag-quick" } else { "lag" };
    let mut report = Report::new(name, work.path(), 1);
    let lags = lag::lag_rates(&standin, &lsyncd, work.path(), &[10, 100, 1_000], seconds)?;
    report.add_lag(&lags);
    for (what, program) in [("standin", &standin), ("lsyncd", &lsyncd)] {
        let version = std::process::Command::new(program)
            .arg("--version")
            .output()
            .map(|output| {
                String::from_utf8_lossy(&output.stdout)
                    .trim()
                    .replace('\n', " ")
            })
            .unwrap_or_default();
        report
            .notes
            .push(format!("{what}: {} ({version})", program.display()));
    }
    report.notes.push(
        "lag: 4 KiB files created at a steady rate for the time given, standin (`replication_period = 0`) and lsyncd (`default.rsync`, `delay = 0`, a local target) one after the other at each rate, same writer, same probe: from the start of each write until the replica holds the same bytes; ratio: lsyncd's figure over standin's".to_string(),
    );
    let saved = report.save(options.out.as_deref())?;
    println!("{}", report.markdown());
    println!("written to {}", saved.display());
    Ok(())
}

/// `small` / `large`: only that initial sync of `all` (20,000 × 4 KiB files in 100
/// directories, or 8 × 128 MiB; 2,000 files or 2 × 64 MiB with `--quick`), standin
/// alternated with an rsync daemon, `--runs` times each (`large` also with the disk's
/// fsync'd write rate); prints each run and the medians — for working on one sync
/// without a full run. Big files are reclaimed after each run.
fn initial_only(options: &Options, kind: &str) -> Outcome<()> {
    let standin = pair::standin_binary(options.standin.as_deref())?;
    let rsync = pair::rsync_binary()?;
    // Deleting 20,000 files makes the next run's file creation several times slower
    // (ext4 skips recently freed inodes): STANDIN_BENCH_KEEP=1 leaves the work dir in
    // place, to be removed once a series of runs is over.
    let guard = work_dir(options)?;
    let work = guard.path().to_path_buf();
    let corpus = work.as_path().join(format!("corpus-{kind}"));
    let (files, bytes) = if kind == "small" {
        let files = if options.quick { 2_000 } else { 20_000 };
        corpus::small_files(&corpus, files, 100, 4096)?;
        (files, files as u64 * 4096)
    } else {
        let (files, size) = if options.quick {
            (2, 64 << 20)
        } else {
            (8, 128 << 20)
        };
        corpus::large_files(&corpus, files, size)?;
        (files, (files * size) as u64)
    };
    sync_all();
    let entries = corpus::count_entries(&corpus)?;
    let daemon = pair::RsyncDaemon::start(&rsync, work.as_path(), &corpus)?;
    let (mut rsync_times, mut standin_times, mut disk_rates) = (Vec::new(), Vec::new(), Vec::new());
    let rate = |time: Duration| {
        format!(
            "{:.0} files/s, {:.0} MB/s",
            files as f64 / time.as_secs_f64(),
            bytes as f64 / 1e6 / time.as_secs_f64()
        )
    };
    for run in 0..options.runs {
        if kind == "large" {
            let disk = measure::disk_write_rate(work.as_path(), bytes as usize)?;
            println!("run {run} disk    {:.0} MB/s", disk / 1e6);
            disk_rates.push(Duration::from_secs_f64(bytes as f64 / disk));
        }
        let mut order = ["rsync", "standin"];
        order.rotate_left(run % 2);
        for tool in order {
            warm(&corpus)?;
            if tool == "rsync" {
                let target = work.as_path().join(format!("rsync-{run}"));
                let (time, _) = daemon.copy_measured(&rsync, &target)?;
                println!(
                    "run {run} rsync   {:.3} s {}",
                    time.as_secs_f64(),
                    rate(time)
                );
                rsync_times.push(time);
                measure::reclaim_space(&target)?;
            } else {
                let times =
                    pair::standin_initial_sync(&standin, work.as_path(), &corpus, entries, run)?;
                println!(
                    "run {run} standin {:.3} s {} (caught up {:.3} s; active {:.2} CPU s, passive {:.2} CPU s, {:.0} MB; passive data_dir {:.1} MB = {:.1}% of the folder)",
                    times.verified.as_secs_f64(),
                    rate(times.verified),
                    times.caught_up.as_secs_f64(),
                    times.active.cpu_s,
                    times.passive.cpu_s,
                    times.passive.rss_mb,
                    times.passive_data_bytes as f64 / 1e6,
                    100.0 * times.passive_data_bytes as f64 / bytes as f64
                );
                standin_times.push(times.verified);
                measure::reclaim_space(&work.as_path().join(format!("pair-{run}-corpus-{kind}")))?;
            }
        }
    }
    let (rsync_time, standin_time) = (median(rsync_times), median(standin_times));
    let mut summary = format!(
        "median: rsync {}, standin {} (verify passed): {:.2}x rsync",
        rate(rsync_time),
        rate(standin_time),
        rsync_time.as_secs_f64() / standin_time.as_secs_f64()
    );
    if !disk_rates.is_empty() {
        let disk_time = median(disk_rates);
        summary += &format!(
            ", {:.2}x disk ({:.0} MB/s)",
            disk_time.as_secs_f64() / standin_time.as_secs_f64(),
            bytes as f64 / 1e6 / disk_time.as_secs_f64()
        );
    }
    println!("{summary}");
    Ok(())
}

/// `rewrite`: the small-files incremental round of `all` alone — 200 of 20,000 files
/// rewritten (`--quick`: 20 of 2,000), each run on a fresh pair, time from the last
/// change written until the passive applied them beside the rsync daemon's update.
fn rewrite_only(options: &Options) -> Outcome<()> {
    let standin = pair::standin_binary(options.standin.as_deref())?;
    let rsync = pair::rsync_binary()?;
    let guard = work_dir(options)?;
    let (files, changed) = if options.quick {
        (2_000, 20)
    } else {
        (20_000, 200)
    };
    let (mut standin_times, mut rsync_times) = (Vec::new(), Vec::new());
    for run in 0..options.runs {
        let work = guard.path().join(format!("run-{run}"));
        std::fs::create_dir_all(&work)?;
        let round = pair::small_incremental(&standin, &rsync, &work, files, changed)?;
        println!(
            "run {run} {changed} of {files} rewritten in {:.3} s, then: standin {:.3} s ({} bytes), rsync {:.3} s ({} bytes)",
            round.writing.as_secs_f64(),
            round.standin.as_secs_f64(),
            round.standin_wire_bytes,
            round.rsync.as_secs_f64(),
            round.rsync_wire_bytes
        );
        standin_times.push(round.standin);
        rsync_times.push(round.rsync);
    }
    let (standin_time, rsync_time) = (median(standin_times), median(rsync_times));
    println!(
        "median: standin {:.3} s, rsync {:.3} s: standin converged {:.2}x sooner",
        standin_time.as_secs_f64(),
        rsync_time.as_secs_f64(),
        rsync_time.as_secs_f64() / standin_time.as_secs_f64()
    );
    Ok(())
}

/// A temp dir for a run (under `--dir` when given), removed at the end — unless
/// STANDIN_BENCH_KEEP is set (to read the nodes' logs afterwards).
pub(crate) fn work_dir(options: &Options) -> Outcome<tempfile::TempDir> {
    let mut work = match &options.dir {
        Some(dir) => tempfile::tempdir_in(dir)?,
        None => tempfile::tempdir()?,
    };
    if std::env::var_os("STANDIN_BENCH_KEEP").is_some() {
        eprintln!("keeping {}", work.path().display());
        work.disable_cleanup(true);
    }
    Ok(work)
}

/// The small-file and large-file corpora (smaller with `--quick`), written and synced.
fn make_corpora(work: &Path, quick: bool) -> Outcome<(Corpus, Corpus)> {
    let (small_count, large_count, large_size) = if quick {
        (2_000, 2, 64 << 20)
    } else {
        (20_000, 8, 128 << 20)
    };
    eprintln!("generating corpora under {} ...", work.display());
    let small = Corpus {
        name: "small",
        root: work.join("corpus-small"),
        files: small_count,
        bytes: small_count as u64 * 4096,
    };
    corpus::small_files(&small.root, small_count, 100, 4096)?;
    let large = Corpus {
        name: "large",
        root: work.join("corpus-large"),
        files: large_count,
        bytes: (large_count * large_size) as u64,
    };
    corpus::large_files(&large.root, large_count, large_size)?;
    sync_all();
    Ok((small, large))
}

struct Corpus {
    name: &'static str,
    root: PathBuf,
    files: usize,
    bytes: u64,
}

fn engine(options: &Options) -> Outcome<()> {
    let base = work_dir(options)?;
    let work = base.path();
    let (small, large) = make_corpora(work, options.quick)?;

    let mut report = Report::new(
        if options.quick {
            "engine-quick"
        } else {
            "engine"
        },
        work,
        options.runs,
    );
    for corpus in [&small, &large] {
        let mut copy_times = Vec::new();
        let mut capture_times = Vec::new();
        let mut replay_times = Vec::new();
        for run in 0..options.runs {
            // Alternate the tools' order so neither always runs on a warmer machine.
            let order: [&str; 2] = if run % 2 == 0 {
                ["cp", "standin"]
            } else {
                ["standin", "cp"]
            };
            for tool in order {
                warm(&corpus.root)?;
                if tool == "cp" {
                    let target = work.join(format!("cp-{}-{run}", corpus.name));
                    let started = Instant::now();
                    time_command(
                        "cp",
                        &[
                            "-a",
                            &corpus.root.to_string_lossy(),
                            &target.to_string_lossy(),
                        ],
                    )?;
                    sync_all();
                    copy_times.push(started.elapsed());
                } else {
                    let (capture, replay) = capture_and_replay(work, corpus, run)?;
                    capture_times.push(capture);
                    replay_times.push(replay);
                }
                eprintln!("  {} run {run}: {tool} done", corpus.name);
            }
        }
        let peer = median(copy_times);
        push(&mut report, corpus, "cp -a + sync", peer, None);
        push(
            &mut report,
            corpus,
            "standin capture",
            median(capture_times),
            Some(("cp -a + sync", peer)),
        );
        push(
            &mut report,
            corpus,
            "standin replay",
            median(replay_times),
            Some(("cp -a + sync", peer)),
        );
    }
    let disk_rate = measure::disk_write_rate(work, large.bytes.min(1 << 30) as usize)?;
    report.rows.push(Row {
        case: "disk".to_string(),
        tool: "sequential write + fsync".to_string(),
        seconds: large.bytes as f64 / disk_rate,
        files_per_second: 0.0,
        megabytes_per_second: disk_rate / 1e6,
        ratios: Vec::new(),
    });
    for row in report
        .rows
        .iter_mut()
        .filter(|row| row.case == "large" && row.tool.starts_with("standin"))
    {
        row.ratios.push((
            "disk".to_string(),
            row.megabytes_per_second * 1e6 / disk_rate,
        ));
    }
    let saved = report.save(options.out.as_deref())?;
    println!("{}", report.markdown());
    println!("written to {}", saved.display());
    Ok(())
}

fn push(
    report: &mut Report,
    corpus: &Corpus,
    tool: &str,
    time: Duration,
    peer: Option<(&str, Duration)>,
) {
    let seconds = time.as_secs_f64();
    report.rows.push(Row {
        case: format!(
            "{} ({} files, {:.0} MB)",
            corpus.name,
            corpus.files,
            corpus.bytes as f64 / 1e6
        ),
        tool: tool.to_string(),
        seconds,
        files_per_second: corpus.files as f64 / seconds,
        megabytes_per_second: corpus.bytes as f64 / 1e6 / seconds,
        // Same work, so the rate ratio is the inverse time ratio.
        ratios: peer
            .map(|(name, peer)| (name.to_string(), peer.as_secs_f64() / seconds))
            .into_iter()
            .collect(),
    });
}

/// Capture `corpus` into a fresh repository (timed), ship the chunks to a second
/// repository (not timed: that is the network's part), then replay every event into a
/// fresh folder (timed) and verify it.
fn capture_and_replay(work: &Path, corpus: &Corpus, run: usize) -> Outcome<(Duration, Duration)> {
    let active = Repository::open(&work.join(format!("active-{}-{run}", corpus.name)))?;
    let started = Instant::now();
    let events = reconcile(&corpus.root, &active, 1)?;
    let capture = started.elapsed();

    let passive = Repository::open(&work.join(format!("passive-{}-{run}", corpus.name)))?;
    ship(&active, &passive, &events)?;
    let replica = work.join(format!("replica-{}-{run}", corpus.name));
    std::fs::create_dir(&replica)?;
    let started = Instant::now();
    for batch in events.chunks(4096) {
        apply_batch(&replica, &passive, batch)?;
    }
    let replay = started.elapsed();
    let report = verify_folder(&replica, &passive)?;
    if !report.matches() {
        return Err(format!("replica does not verify: {:?}", report.first_difference).into());
    }
    Ok((capture, replay))
}

fn ship(from: &Repository, to: &Repository, events: &[Event]) -> Outcome<()> {
    for event in events {
        if let Some(chunks) = event.body.change.chunks() {
            for hash in to.chunks().missing(chunks.iter().map(|chunk| chunk.hash))? {
                to.chunks().put_verified(hash, &from.chunks().get(&hash)?)?;
            }
        }
    }
    to.chunks().sync()?;
    Ok(())
}

fn pair_benchmark(options: &Options) -> Outcome<()> {
    let standin = pair::standin_binary(options.standin.as_deref())?;
    let rsync = pair::rsync_binary()?;
    let base = work_dir(options)?;
    let work = base.path();
    let (small, large) = make_corpora(work, options.quick)?;
    let (small_count, large_count) = (small.files, large.files);
    // Events the active records for each corpus: a directory or file each.
    let entries = |corpus: &Corpus| {
        if corpus.name == "small" {
            small_count as u64 + 100
        } else {
            large_count as u64
        }
    };

    let mut report = Report::new(
        if options.quick { "pair-quick" } else { "pair" },
        work,
        options.runs,
    );
    for corpus in [&small, &large] {
        let daemon = pair::RsyncDaemon::start(&rsync, work, &corpus.root)?;
        let (mut rsync_times, mut caught_up, mut verified) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..options.runs {
            let order: [&str; 2] = if run % 2 == 0 {
                ["rsync", "standin"]
            } else {
                ["standin", "rsync"]
            };
            for tool in order {
                warm(&corpus.root)?;
                if tool == "rsync" {
                    let target = work.join(format!("rsync-{}-{run}", corpus.name));
                    rsync_times.push(daemon.copy(&rsync, &target)?);
                } else {
                    let times = pair::standin_initial_sync(
                        &standin,
                        work,
                        &corpus.root,
                        entries(corpus),
                        run,
                    )?;
                    caught_up.push(times.caught_up);
                    verified.push(times.verified);
                }
                eprintln!("  {} run {run}: {tool} done", corpus.name);
            }
        }
        let peer = median(rsync_times);
        push(
            &mut report,
            corpus,
            "rsync -a (daemon, loopback) + sync",
            peer,
            None,
        );
        push(
            &mut report,
            corpus,
            "standin initial sync (caught up)",
            median(caught_up),
            Some(("rsync", peer)),
        );
        push(
            &mut report,
            corpus,
            "standin initial sync (verify passed)",
            median(verified),
            Some(("rsync", peer)),
        );
    }
    eprintln!("measuring the incremental case and the takeover ...");
    let incremental = pair::incremental(&standin, &rsync, work, &small.root, &large.root)?;
    report.rows.push(Row {
        case: "incremental (1% of small rewritten, 1 MiB appended, 4 KiB changed)".to_string(),
        tool: "rsync -a (daemon) --stats + sync".to_string(),
        seconds: incremental.rsync.as_secs_f64(),
        files_per_second: 0.0,
        megabytes_per_second: incremental.rsync_wire_bytes as f64
            / 1e6
            / incremental.rsync.as_secs_f64(),
        ratios: Vec::new(),
    });
    report.rows.push(Row {
        case: "incremental (1% of small rewritten, 1 MiB appended, 4 KiB changed)".to_string(),
        tool: "standin (last change written to applied)".to_string(),
        seconds: incremental.standin.as_secs_f64(),
        files_per_second: 0.0,
        megabytes_per_second: incremental.standin_wire_bytes as f64
            / 1e6
            / incremental.standin.as_secs_f64(),
        ratios: vec![(
            "rsync".to_string(),
            incremental.rsync.as_secs_f64() / incremental.standin.as_secs_f64(),
        )],
    });
    report.notes.push(format!(
        "incremental bytes over the wire: standin {} (chunk bytes fetched), rsync {} (total bytes received)",
        incremental.standin_wire_bytes, incremental.rsync_wire_bytes
    ));
    report.notes.push(format!(
        "takeover: {:.2} s from SIGKILL of the active to /active 200 on the passive (failover_after_ms = {})",
        incremental.takeover.as_secs_f64(),
        incremental.failover_after_ms
    ));
    for (who, rss_mb, cpu_s) in &incremental.resources {
        report.notes.push(format!(
            "{who}: peak RSS {rss_mb:.0} MB, {cpu_s:.1} CPU s (from its start, through the initial sync and the incremental case)"
        ));
    }
    let changes = if options.quick { 40 } else { 200 };
    eprintln!("measuring lag over {changes} changes ...");
    let latencies = pair::lag(&standin, work, changes)?;
    for (label, at) in [
        ("median", latencies.len() / 2),
        ("p99", (latencies.len() * 99) / 100),
        ("max", latencies.len() - 1),
    ] {
        let seconds = latencies[at.min(latencies.len() - 1)].as_secs_f64();
        report.rows.push(Row {
            case: format!("lag, 4 KiB change, period 0 ({changes} changes)"),
            tool: format!("standin {label}"),
            seconds,
            files_per_second: 1.0 / seconds,
            megabytes_per_second: 4096.0 / 1e6 / seconds,
            ratios: Vec::new(),
        });
    }
    let saved = report.save(options.out.as_deref())?;
    println!("{}", report.markdown());
    println!("written to {}", saved.display());
    Ok(())
}
