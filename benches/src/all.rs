//! `all`: every benchmark of the pair in one run, each figure beside its peers measured
//! in the same run — an rsync daemon on loopback, `cp -a` (+ `sync`) and the disk's own
//! fsync'd write rate — written to `benches/results/all.md` and `all.json`.
//!
//! 1. Initial sync (empty passive → caught up, and → `standin verify` passing) of the
//!    small, large and mixed (Pareto sizes) corpora, beside rsync and `cp -a`, with
//!    the peak RSS and CPU time of both standin nodes and of rsync's two sides.
//! 2. Incremental: 1% of the small files rewritten, 1 MiB appended to one large file,
//!    4 KiB changed in the middle of another; then a small-files-only round on folders
//!    of growing size (200,000 files in the full run) with the same number of files
//!    rewritten: standin's time stays flat, rsync's grows with the rescan.
//! 3. Takeover after SIGKILL of the active.
//! 4. Lag with `replication_period = 0` at 10, 100 and 1,000 changes/s, beside lsyncd
//!    (`lag.rs`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::measure::{disk_write_rate, median, reclaim_space, sync_all, time_command, warm};
use crate::pair::{self, Usage};
use crate::report::{IncrementalRow, Report, ResourceRow, Row};
use crate::{work_dir, Options, Outcome};

/// How big each part is: the full run, `--quick`, or `--smoke` (CI: seconds, no timing
/// asserted).
struct Sizes {
    name: &'static str,
    small_files: usize,
    small_dirs: usize,
    large_files: usize,
    large_size: usize,
    mixed_files: usize,
    mixed_max: usize,
    lag_seconds: f64,
    /// Folder sizes of the small-files-only incremental round.
    scaling: Vec<usize>,
    scaling_changed: usize,
}

impl Sizes {
    fn of(options: &Options) -> Sizes {
        if options.smoke {
            Sizes {
                name: "all-smoke",
                small_files: 200,
                small_dirs: 10,
                large_files: 2,
                large_size: 4 << 20,
                mixed_files: 30,
                mixed_max: 1 << 20,
                lag_seconds: 0.5,
                scaling: vec![400],
                scaling_changed: 4,
            }
        } else if options.quick {
            Sizes {
                name: "all-quick",
                small_files: 2_000,
                small_dirs: 100,
                large_files: 2,
                large_size: 64 << 20,
                mixed_files: 300,
                mixed_max: 16 << 20,
                lag_seconds: 3.0,
                scaling: vec![2_000, 20_000],
                scaling_changed: 20,
            }
        } else {
            Sizes {
                name: "all",
                small_files: 20_000,
                small_dirs: 100,
                large_files: 8,
                large_size: 128 << 20,
                mixed_files: 2_000,
                mixed_max: 64 << 20,
                lag_seconds: 20.0,
                scaling: vec![20_000, 200_000],
                scaling_changed: 200,
            }
        }
    }
}

struct Corpus {
    name: &'static str,
    root: PathBuf,
    files: usize,
    bytes: u64,
}

impl Corpus {
    fn case(&self) -> String {
        format!(
            "{} ({} files, {:.0} MB)",
            self.name,
            self.files,
            self.bytes as f64 / 1e6
        )
    }
}

fn corpora(work: &Path, sizes: &Sizes) -> Outcome<Vec<Corpus>> {
    eprintln!("generating corpora under {} ...", work.display());
    let small = Corpus {
        name: "small",
        root: work.join("corpus-small"),
        files: sizes.small_files,
        bytes: sizes.small_files as u64 * 4096,
    };
    crate::corpus::small_files(&small.root, small.files, sizes.small_dirs, 4096)?;
    let large = Corpus {
        name: "large",
        root: work.join("corpus-large"),
        files: sizes.large_files,
        bytes: (sizes.large_files * sizes.large_size) as u64,
    };
    crate::corpus::large_files(&large.root, large.files, sizes.large_size)?;
    let mixed_root = work.join("corpus-mixed");
    let mixed_bytes =
        crate::corpus::mixed_files(&mixed_root, sizes.mixed_files, 20, sizes.mixed_max, 2026)?;
    let mixed = Corpus {
        name: "mixed",
        root: mixed_root,
        files: sizes.mixed_files,
        bytes: mixed_bytes,
    };
    sync_all();
    Ok(vec![small, large, mixed])
}

/// The last component of a corpus directory (as `pair::standin_initial_sync` names
/// its work directory).
fn corpus_dir_name(root: &Path) -> &str {
    root.file_name()
        .and_then(|name| name.to_str())
        .unwrap_or("corpus")
}

fn rate_row(corpus: &Corpus, tool: &str, time: Duration) -> Row {
    let seconds = time.as_secs_f64();
    Row {
        case: corpus.case(),
        tool: tool.to_string(),
        seconds,
        files_per_second: corpus.files as f64 / seconds,
        megabytes_per_second: corpus.bytes as f64 / 1e6 / seconds,
        ratios: Vec::new(),
    }
}

/// The median of each field over runs (peak RSS: the largest).
fn typical(usages: &[Usage]) -> Usage {
    let mut cpu: Vec<f64> = usages.iter().map(|usage| usage.cpu_s).collect();
    cpu.sort_by(f64::total_cmp);
    Usage {
        rss_mb: usages.iter().map(|usage| usage.rss_mb).fold(0.0, f64::max),
        cpu_s: cpu.get(cpu.len() / 2).copied().unwrap_or(0.0),
    }
}

pub fn all(options: &Options) -> Outcome<()> {
    let sizes = Sizes::of(options);
    let standin = pair::standin_binary(options.standin.as_deref())?;
    let rsync = pair::rsync_binary()?;
    let base = work_dir(options)?;
    let work = base.path();
    let corpora = corpora(work, &sizes)?;
    let runs = options.runs;
    let mut report = Report::new(sizes.name, work, runs);

    // The disk's own rate: one fresh file per run, written in 1 MiB blocks, fsync'd.
    let probe_bytes = ((sizes.large_files * sizes.large_size) as u64).min(1 << 30) as usize;
    let mut disk_rates = Vec::new();
    for _ in 0..runs {
        disk_rates.push(disk_write_rate(work, probe_bytes)?);
    }
    disk_rates.sort_by(f64::total_cmp);
    let disk_rate = disk_rates[disk_rates.len() / 2];
    report.rows.push(Row {
        case: format!("disk ({:.0} MB, one file)", probe_bytes as f64 / 1e6),
        tool: "sequential write + fsync".to_string(),
        seconds: probe_bytes as f64 / disk_rate,
        files_per_second: 0.0,
        megabytes_per_second: disk_rate / 1e6,
        ratios: Vec::new(),
    });

    let mut lone_active = Vec::new();
    for corpus in &corpora {
        let entries = crate::corpus::count_entries(&corpus.root)?;
        let daemon = pair::RsyncDaemon::start(&rsync, work, &corpus.root)?;
        let (mut rsync_times, mut cp_times, mut caught_up, mut verified) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut receivers, mut actives, mut passives) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..runs {
            // Rotate the order so that no tool always runs first on a quiet machine.
            let mut order = ["rsync", "cp", "standin"];
            order.rotate_left(run % 3);
            for tool in order {
                warm(&corpus.root)?;
                match tool {
                    "rsync" => {
                        let target = work.join(format!("rsync-{}-{run}", corpus.name));
                        let (time, usage) = daemon.copy_measured(&rsync, &target)?;
                        rsync_times.push(time);
                        receivers.push(usage);
                    }
                    "cp" => {
                        let target = work.join(format!("cp-{}-{run}", corpus.name));
                        let started = std::time::Instant::now();
                        time_command(
                            "cp",
                            &[
                                "-a",
                                &corpus.root.to_string_lossy(),
                                &target.to_string_lossy(),
                            ],
                        )?;
                        sync_all();
                        cp_times.push(started.elapsed());
                    }
                    _ => {
                        let times =
                            pair::standin_initial_sync(&standin, work, &corpus.root, entries, run)?;
                        caught_up.push(times.caught_up);
                        verified.push(times.verified);
                        actives.push(times.active);
                        passives.push(times.passive);
                        lone_active.push(times.lone_active_cpu_per_s);
                    }
                }
                // Give the space back now (untimed), keeping the inodes: a full run
                // would otherwise hold some 30 GB until its end.
                let output = match tool {
                    "rsync" => format!("rsync-{}-{run}", corpus.name),
                    "cp" => format!("cp-{}-{run}", corpus.name),
                    _ => format!("pair-{run}-{}", corpus_dir_name(&corpus.root)),
                };
                reclaim_space(&work.join(output))?;
                eprintln!("  {} run {run}: {tool} done", corpus.name);
            }
        }
        let sender = daemon.finish()?;
        let rsync_row = rate_row(
            corpus,
            "rsync -a (daemon, loopback) + sync",
            median(rsync_times),
        );
        let cp_row = rate_row(corpus, "cp -a + sync", median(cp_times));
        let disk_ratio = |row: &Row| {
            (
                "disk".to_string(),
                row.megabytes_per_second * 1e6 / disk_rate,
            )
        };
        let mut rows = vec![rsync_row.clone(), cp_row.clone()];
        for (tool, times) in [
            ("standin initial sync (caught up + sync)", caught_up),
            ("standin initial sync (verify passed)", verified),
        ] {
            let mut row = rate_row(corpus, tool, median(times));
            row.ratios = vec![
                ("rsync".to_string(), rsync_row.seconds / row.seconds),
                ("cp -a".to_string(), cp_row.seconds / row.seconds),
                disk_ratio(&row),
            ];
            rows.push(row);
        }
        for row in rows.iter_mut().take(2) {
            row.ratios = vec![disk_ratio(row)];
        }
        report.rows.extend(rows);
        let receiver = typical(&receivers);
        for (process, usage) in [
            ("standin active (serving the sync)", typical(&actives)),
            ("standin passive", typical(&passives)),
            (
                "rsync sender (daemon + its forks, per run)",
                Usage {
                    rss_mb: sender.rss_mb,
                    cpu_s: sender.cpu_s / runs as f64,
                },
            ),
            ("rsync receiver (client + its forks)", receiver),
        ] {
            report.resources.push(ResourceRow {
                case: format!("initial sync, {}", corpus.case()),
                process: process.to_string(),
                peak_rss_mb: usage.rss_mb,
                cpu_seconds: usage.cpu_s,
            });
        }
    }

    lone_active.sort_by(f64::total_cmp);
    report.notes.push(format!(
        "an idle active whose peer is not running uses {:.2} CPU s per second (median over the initial syncs, measured for 1 s before the passive starts); the pairs here name each other as peers, as deployed, so this does not weigh on the timed figures",
        lone_active.get(lone_active.len() / 2).copied().unwrap_or(0.0)
    ));
    let mut failures: Vec<String> = Vec::new();
    eprintln!("measuring the incremental case and the takeover ...");
    let small = &corpora[0];
    let large = &corpora[1];
    let incremental = pair::incremental(&standin, &rsync, work, &small.root, &large.root, false)?;
    reclaim_space(&work.join(pair::incremental_dir(false)))?;
    let patching = pair::incremental(&standin, &rsync, work, &small.root, &large.root, true)?;
    reclaim_space(&work.join(pair::incremental_dir(true)))?;
    let case = format!(
        "{} small files: 1% rewritten; 1 MiB appended to one {} MiB file, 4 KiB changed in another",
        small.files,
        sizes.large_size >> 20
    );
    report.notes.push(format!(
        "{case}: writing the changes took {:.3} s",
        incremental.writing.as_secs_f64()
    ));
    report.incremental.push(IncrementalRow {
        case: case.clone(),
        tool: "standin (last change written to applied)".to_string(),
        seconds: incremental.standin.as_secs_f64(),
        wire_bytes: incremental.standin_wire_bytes,
    });
    report.incremental.push(IncrementalRow {
        case: case.clone(),
        tool: "standin, patch_in_place = true (a round of its own)".to_string(),
        seconds: patching.standin.as_secs_f64(),
        wire_bytes: patching.standin_wire_bytes,
    });
    report.incremental.push(IncrementalRow {
        case: case.clone(),
        tool: "rsync, in the patch_in_place round".to_string(),
        seconds: patching.rsync.as_secs_f64(),
        wire_bytes: patching.rsync_wire_bytes,
    });
    report.incremental.push(IncrementalRow {
        case,
        tool: "rsync -a --stats (daemon: rescan + transfer) + sync".to_string(),
        seconds: incremental.rsync.as_secs_f64(),
        wire_bytes: incremental.rsync_wire_bytes,
    });
    report.notes.push(format!(
        "takeover: {:.2} s from SIGKILL of the active to /active 200 on the passive (heartbeat_interval_ms = 200, failover_after_ms = {})",
        incremental.takeover.as_secs_f64(),
        incremental.failover_after_ms
    ));
    for &files in &sizes.scaling {
        eprintln!("measuring the small-files incremental round on {files} files ...");
        let round =
            match pair::small_incremental(&standin, &rsync, work, files, sizes.scaling_changed) {
                Ok(round) => round,
                // A long run keeps what it measured; the failure is in the report (and
                // fails the run at the end).
                Err(error) => {
                    eprintln!("the small-files round on {files} files failed: {error}");
                    failures.push(format!("small-files round on {files} files: {error}"));
                    continue;
                }
            };
        reclaim_space(&work.join(format!("small-incremental-{files}")))?;
        let case = format!("{} small files, {} rewritten", round.files, round.changed);
        report.notes.push(format!(
            "{case}: writing the changes took {:.3} s",
            round.writing.as_secs_f64()
        ));
        report.incremental.push(IncrementalRow {
            case: case.clone(),
            tool: "standin (last change written to applied)".to_string(),
            seconds: round.standin.as_secs_f64(),
            wire_bytes: round.standin_wire_bytes,
        });
        report.incremental.push(IncrementalRow {
            case,
            tool: "rsync -a --stats (daemon: rescan + transfer) + sync".to_string(),
            seconds: round.rsync.as_secs_f64(),
            wire_bytes: round.rsync_wire_bytes,
        });
    }

    let rates = [10, 100, 1_000];
    eprintln!(
        "measuring lag at {rates:?} changes/s, {} s each, standin and lsyncd ...",
        sizes.lag_seconds
    );
    let lags = crate::lag::lsyncd_binary()
        .and_then(|lsyncd| {
            crate::lag::lag_rates(&standin, &lsyncd, work, &rates, sizes.lag_seconds)
        })
        .unwrap_or_else(|error| {
            eprintln!("the lag measurement failed: {error}");
            failures.push(format!("lag: {error}"));
            Vec::new()
        });
    report.add_lag(&lags);
    if !lags.is_empty() {
        match crate::single::disk_sync_note(work) {
            Ok(note) => report.notes.push(note),
            Err(error) => eprintln!("the disk's fsync latency could not be measured: {error}"),
        }
    }
    report.notes.push(
        "initial sync: from starting an empty passive (the active has recorded the corpus) to its head equal to the active's, then `sync`, and to `standin verify` passing; rsync and cp -a end with `sync`".to_string(),
    );
    report.notes.push(
        "incremental: both clocks start once the changes are written on the active: standin's runs to the passive's head equal to the active's (capture's debounce included), rsync's over its rescan and transfer; writing the changes themselves took the time noted per case".to_string(),
    );
    report.notes.push(
        "lag: 4 KiB files created at a steady rate, standin with `replication_period = 0` (the passive follows the log), lsyncd 2 (`default.rsync`, `delay = 0`, a local target) with the same writer, one after the other; latency from the start of each write until the replica holds the same bytes; ratio: lsyncd's figure over standin's".to_string(),
    );
    for failure in &failures {
        report.notes.push(format!("FAILED: {failure}"));
    }
    let saved = report.save(options.out.as_deref())?;
    println!("{}", report.markdown());
    println!("written to {}", saved.display());
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("{} part(s) failed: {}", failures.len(), failures.join("; ")).into())
    }
}
