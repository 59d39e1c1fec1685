//! The benchmarks of one part of `all` alone — `lag`, `small` / `large`, `rewrite`,
//! `incremental` — for working on one figure without a full run; and `edits`, which
//! `all` does not run.

use std::time::Duration;

use crate::measure::{median, sync_all, warm};
use crate::report::{IncrementalRow, Report};
use crate::{corpus, lag, measure, pair, work_dir, Options, Outcome};

/// `lag`: only the lag section of `all` (10, 100 and 1,000 changes/s, standin beside
/// lsyncd; 20 s each, 3 s with `--quick`), printed and written to `lag.md` / `lag.json`
/// (`lag-quick`) — for working on the lag without a full run.
pub(crate) fn lag_only(options: &Options) -> Outcome<()> {
    let standin = pair::standin_binary(options.standin.as_deref())?;
    let lsyncd = lag::lsyncd_binary()?;
    let work = work_dir(options)?;
    let seconds = if options.quick { 3.0 } else { 20.0 };
    let name = if options.quick { "lag-quick" } else { "lag" };
    let mut report = Report::new(name, work.path(), 1);
    let lags = lag::lag_rates(&standin, &lsyncd, work.path(), &options.rates, seconds)?;
    report.add_lag(&lags);
    // Measured after the lag rows: a probe that fails must not cost them.
    match disk_sync_note(work.path()) {
        Ok(note) => report.notes.push(note),
        Err(error) => eprintln!("the disk's fsync latency could not be measured: {error}"),
    }
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
/// fsync'd write rate, `small` with the floor: the files alone written as the passive
/// writes them, `floor.rs`); prints each run and the medians — for working on one sync
/// without a full run. Big files are reclaimed after each run.
pub(crate) fn initial_only(options: &Options, kind: &str) -> Outcome<()> {
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
    let (mut rsync_times, mut standin_times, mut caught_up_times, mut disk_rates) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut floor_times = Vec::new();
    // The passive's write threads: one per core, at most four (replay::write).
    let write_threads = std::thread::available_parallelism()
        .map(|count| count.get())
        .unwrap_or(1)
        .min(4);
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
        let mut order = if kind == "small" {
            vec!["rsync", "standin", "floor"]
        } else {
            vec!["rsync", "standin"]
        };
        let turns = order.len();
        order.rotate_left(run % turns);
        for tool in order {
            warm(&corpus)?;
            if tool == "floor" {
                let target = work.as_path().join(format!("floor-{run}"));
                let time = crate::floor::files_floor(&corpus, &target, write_threads)?;
                println!(
                    "run {run} floor   {:.3} s {} (the files alone: written unnamed, linked, owner/mode/times set, {write_threads} threads, syncfs)",
                    time.as_secs_f64(),
                    rate(time)
                );
                floor_times.push(time);
            } else if tool == "rsync" {
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
                    "run {run} standin {:.3} s {} (verify passed; caught up + sync {:.3} s; active {:.2} CPU s, peak RSS {:.0} MB serving; passive {:.2} CPU s, {:.0} MB; passive data_dir {:.1} MB = {:.1}% of the folder)",
                    times.verified.as_secs_f64(),
                    rate(times.verified),
                    times.caught_up.as_secs_f64(),
                    times.active.cpu_s,
                    times.active.rss_mb,
                    times.passive.cpu_s,
                    times.passive.rss_mb,
                    times.passive_data_bytes as f64 / 1e6,
                    100.0 * times.passive_data_bytes as f64 / bytes as f64
                );
                standin_times.push(times.verified);
                caught_up_times.push(times.caught_up);
                measure::reclaim_space(&work.as_path().join(format!("pair-{run}-corpus-{kind}")))?;
            }
        }
    }
    let (rsync_time, standin_time) = (median(rsync_times), median(standin_times));
    let caught_up_time = median(caught_up_times);
    let mut summary = format!(
        "median: rsync {}; standin caught up + sync {}: {:.2}x rsync; verify passed {}: {:.2}x rsync",
        rate(rsync_time),
        rate(caught_up_time),
        rsync_time.as_secs_f64() / caught_up_time.as_secs_f64(),
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
    if !floor_times.is_empty() {
        let floor_time = median(floor_times);
        summary += &format!(
            "; floor (the files alone) {}: rsync took {:.2}x the floor, standin caught up + sync {:.2}x; 1.5x rsync would be {:.2}x the floor",
            rate(floor_time),
            rsync_time.as_secs_f64() / floor_time.as_secs_f64(),
            caught_up_time.as_secs_f64() / floor_time.as_secs_f64(),
            rsync_time.as_secs_f64() / 1.5 / floor_time.as_secs_f64()
        );
    }
    println!("{summary}");
    Ok(())
}

/// `rewrite`: the small-files incremental round of `all` alone — 200 of 20,000 files
/// rewritten (`--quick`: 20 of 2,000), each run on a fresh pair, time from the last
/// change written until the passive applied them beside the rsync daemon's update.
pub(crate) fn rewrite_only(options: &Options) -> Outcome<()> {
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
    print_converged("", standin_times, rsync_times);
    Ok(())
}

/// The `quantile` of sorted `times`, in ms.
fn quantile_ms(times: &[Duration], quantile: f64) -> f64 {
    let at = ((times.len() as f64 * quantile) as usize).min(times.len().saturating_sub(1));
    times.get(at).map_or(0.0, |time| time.as_secs_f64() * 1e3)
}

/// The medians of a series of rounds timed until converged, standin beside rsync.
fn print_converged(label: &str, standin_times: Vec<Duration>, rsync_times: Vec<Duration>) {
    let (standin_time, rsync_time) = (median(standin_times), median(rsync_times));
    println!(
        "median{label}: standin {:.3} s, rsync {:.3} s: standin converged {:.2}x sooner",
        standin_time.as_secs_f64(),
        rsync_time.as_secs_f64(),
        rsync_time.as_secs_f64() / standin_time.as_secs_f64()
    );
}

/// `edits`: many large files kept by reference on the passive, 4 KiB rewritten in the
/// middle of a tenth of them (default 400 × 4 MiB; `--quick`: 100; `--files N --mib
/// S`), with `patch_in_place` off and on, each run on fresh pairs beside the rsync
/// daemon's update: what sorting out an edited file's references costs once the
/// passive holds many; then the lag of small changes beside them (`pair/edits.rs`).
pub(crate) fn edits_only(options: &Options) -> Outcome<()> {
    let standin = pair::standin_binary(options.standin.as_deref())?;
    let rsync = pair::rsync_binary()?;
    let guard = work_dir(options)?;
    let files = options
        .files
        .unwrap_or(if options.quick { 100 } else { 400 });
    let shape = (files, options.mib.unwrap_or(4) << 20, (files / 10).max(1));
    for patch_in_place in [false, true] {
        let (mut standin_times, mut rsync_times) = (Vec::new(), Vec::new());
        for run in 0..options.runs {
            let work = guard.path().join(format!("run-{run}-{patch_in_place}"));
            std::fs::create_dir_all(&work)?;
            let round = pair::large_edits(&standin, &rsync, &work, shape, patch_in_place)?;
            println!(
                "run {run}, patch_in_place = {patch_in_place}: {} of {} files of {} MiB edited, then: standin {:.3} s ({} bytes), rsync {:.3} s ({} bytes), floor {:.3} s (the new versions written whole)",
                round.edited,
                round.files,
                round.size >> 20,
                round.standin.as_secs_f64(),
                round.standin_wire_bytes,
                round.rsync.as_secs_f64(),
                round.rsync_wire_bytes,
                round.floor.as_secs_f64()
            );
            println!(
                "  then {} small changes one at a time beside them, each until the replica had it: median {:.1} ms, p99 {:.1} ms",
                round.lag.len(),
                quantile_ms(&round.lag, 0.5),
                quantile_ms(&round.lag, 0.99)
            );
            standin_times.push(round.standin);
            rsync_times.push(round.rsync);
            // The next run's files are new ones: no delete-then-create in a timed region.
        }
        print_converged(
            &format!(", patch_in_place = {patch_in_place}"),
            standin_times,
            rsync_times,
        );
    }
    Ok(())
}

/// `standin-bench incremental`: the pair benchmark's incremental case alone (1% of
/// 20,000 small files rewritten, 1 MiB appended to one 128 MiB file, 4 KiB changed in
/// another), `--runs` times on fresh pairs, with `patch_in_place` off and on: for
/// profiling it without the initial syncs (STANDIN_BENCH_LOG=standin_engine=debug
/// and STANDIN_BENCH_KEEP=1 leave the nodes' logs, showing where the time goes).
pub(crate) fn incremental_only(options: &Options) -> Outcome<()> {
    let standin = pair::standin_binary(options.standin.as_deref())?;
    let rsync = pair::rsync_binary()?;
    let guard = work_dir(options)?;
    let (files, size) = if options.quick {
        (2_000, 16 << 20)
    } else {
        (20_000, 128 << 20)
    };
    let small = guard.path().join("corpus-small");
    let large = guard.path().join("corpus-large");
    corpus::small_files(&small, files, 100, 4096)?;
    corpus::large_files(&large, 2, size)?;
    sync_all();
    let (mut standin_times, mut rsync_times) = ([Vec::new(), Vec::new()], Vec::new());
    let (mut standin_bytes, mut rsync_bytes) = ([Vec::new(), Vec::new()], Vec::new());
    let mut floor_times = Vec::new();
    for run in 0..options.runs {
        let work = guard.path().join(format!("run-{run}"));
        std::fs::create_dir_all(&work)?;
        // Both ways in turn (which goes first alternates between runs).
        let ways = if run % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for patch_in_place in ways {
            let round = pair::incremental(&standin, &rsync, &work, &small, &large, patch_in_place)?;
            println!(
                "run {run}, patch_in_place = {patch_in_place}: changes written in {:.3} s, then: standin {:.3} s ({} bytes), rsync {:.3} s ({} bytes), floor {:.3} s",
                round.writing.as_secs_f64(),
                round.standin.as_secs_f64(),
                round.standin_wire_bytes,
                round.rsync.as_secs_f64(),
                round.rsync_wire_bytes,
                round.floor.as_secs_f64()
            );
            floor_times.push(round.floor);
            standin_times[usize::from(patch_in_place)].push(round.standin);
            standin_bytes[usize::from(patch_in_place)].push(round.standin_wire_bytes);
            rsync_times.push(round.rsync);
            rsync_bytes.push(round.rsync_wire_bytes);
        }
    }
    let rsync_time = median(rsync_times);
    let floor_time = median(floor_times);
    let name = if options.quick {
        "incremental-run-quick"
    } else {
        "incremental-run"
    };
    let mut report = Report::new(name, guard.path(), options.runs);
    let case = format!(
        "{files} small files: 1% rewritten; 1 MiB appended to one {} MiB file, 4 KiB changed in another",
        size >> 20
    );
    report.incremental.push(IncrementalRow {
        case: case.clone(),
        tool: "rsync -a --stats (daemon: rescan + transfer) + sync, both rounds".to_string(),
        seconds: rsync_time.as_secs_f64(),
        wire_bytes: median(rsync_bytes),
    });
    report.incremental.push(IncrementalRow {
        case: case.clone(),
        tool: format!(
            "floor: the changed files' new versions written whole (unnamed, linked, {} threads, syncfs), both rounds; rsync took {:.2}x it",
            std::thread::available_parallelism().map_or(1, usize::from),
            rsync_time.as_secs_f64() / floor_time.as_secs_f64()
        ),
        seconds: floor_time.as_secs_f64(),
        wire_bytes: 0,
    });
    for ((patch_in_place, times), bytes) in [false, true]
        .into_iter()
        .zip(standin_times)
        .zip(standin_bytes)
    {
        let standin_time = median(times);
        let ratio = rsync_time.as_secs_f64() / standin_time.as_secs_f64();
        println!(
            "median, patch_in_place = {patch_in_place}: standin {:.3} s, rsync {:.3} s (both rounds): standin converged {ratio:.2}x sooner; floor {:.3} s: standin took {:.2}x the floor, rsync {:.2}x",
            standin_time.as_secs_f64(),
            rsync_time.as_secs_f64(),
            floor_time.as_secs_f64(),
            standin_time.as_secs_f64() / floor_time.as_secs_f64(),
            rsync_time.as_secs_f64() / floor_time.as_secs_f64(),
        );
        report.incremental.push(IncrementalRow {
            case: case.clone(),
            tool: format!(
                "standin, patch_in_place = {patch_in_place} (replica holds every change): {ratio:.2}x rsync"
            ),
            seconds: standin_time.as_secs_f64(),
            wire_bytes: median(bytes),
        });
    }
    report.notes.push(
        "both clocks start once the changes are written; standin's stops when the replica holds every changed byte and the passive's head is the active's; rsync's after its rescan, transfer and sync; medians over the runs (rsync's over both rounds of each run)".to_string(),
    );
    let saved = report.save(options.out.as_deref())?;
    println!("written to {}", saved.display());
    Ok(())
}

/// The disk's fsync latency in the same run, for the lag rows (measured after them).
pub(crate) fn disk_sync_note(dir: &std::path::Path) -> Outcome<String> {
    let latencies = crate::measure::disk_sync_latencies(dir, 200, 100)?;
    Ok(format!(
        "disk: 4 KiB written + fdatasync, 200 at 100/s after the lag rows: {}; standin's active makes each change durable before it sends it (lsyncd syncs nothing), so its tail follows this one",
        crate::measure::latency_summary(&latencies)
    ))
}
