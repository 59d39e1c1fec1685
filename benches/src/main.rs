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
//! cargo run --release -p standin-bench -- incremental [--quick] [--runs N] [--dir DIR]
//! cargo run --release -p standin-bench -- edits [--quick] [--runs N] [--files N --mib S] [--dir DIR]
//! cargo run --release -p standin-bench -- lag [--quick] [--rates 10,100,1000] [--dir DIR]
//! ```
//!
//! Common options: `--out DIR` (results elsewhere than `benches/results/`), `--standin
//! PATH` (use this `standin` binary instead of building the release one), `--smoke`
//! (`all` on tiny corpora: shows the harness works, in CI; its figures mean nothing).
//!
//! `incremental`: the pair's incremental case alone (large files changed in place),
//! patch_in_place off and on, beside rsync; written to `incremental-run.md` and
//! `.json` (`benches/results/incremental.md` is the analysis that led to its figures).
//!
//! `edits`: many large files kept by reference on the passive, a few edited a little
//! (`pair/edits.rs`), patch_in_place off and on, beside rsync; printed.
//!
//! `all`: everything below the pair can measure, in one run (see `all.rs`), written
//! to `benches/results/all.md` and `all.json`.
//!
//! `pair`: initial sync over loopback between two real `standin serve` processes
//! (from an empty passive to caught up, then `sync`, as rsync's copy is counted; and
//! to `standin verify` passing) beside an rsync daemon on 127.0.0.1 (installed with
//! apt-get when missing), for the same two corpora; and the change-to-applied lag of
//! a 4 KiB file with `replication_period = 0`.
//!
//! `engine`: capture (scan, chunk, hash, store, log) and replay (apply verified events
//! into an empty folder, one durability point per batch) of 20,000 × 4 KiB files in 100
//! directories and of 8 × 128 MiB files, beside `cp -a` (with one final `sync`) and
//! the disk's fsync'd write rate. `--quick`: 2,000 small files and 2 × 64 MiB.
//! Every timed run writes into fresh space (never delete-then-create in a timed
//! region: see shared/BENCHMARKING.md); everything is removed at the end.

mod all;
mod corpus;
mod engine_run;
mod floor;
mod lag;
mod measure;
mod pair;
mod report;
mod single;

use std::path::PathBuf;

use engine_run::{engine, make_corpora, push, Corpus};
use measure::{median, warm};
use report::{Report, Row};
use single::{edits_only, incremental_only, initial_only, lag_only, rewrite_only};

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
    /// `lag`: the change rates measured (default 10, 100 and 1,000 a second).
    rates: Vec<u32>,
    /// `edits`: how many large files, and their size in MiB (default 400 × 4).
    files: Option<usize>,
    mib: Option<usize>,
}

fn parse(args: &[String]) -> Result<(String, Options), String> {
    let mut options = Options {
        quick: false,
        smoke: false,
        runs: 3,
        dir: None,
        out: None,
        standin: None,
        rates: vec![10, 100, 1_000],
        files: None,
        mib: None,
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
            "--rates" => {
                options.rates = iter
                    .next()
                    .and_then(|value| {
                        value
                            .split(',')
                            .map(|rate| rate.trim().parse::<u32>().ok().filter(|rate| *rate > 0))
                            .collect::<Option<Vec<u32>>>()
                    })
                    .filter(|rates| !rates.is_empty())
                    .ok_or("--rates needs changes per second, comma-separated (10,100)")?
            }
            "--files" | "--mib" => {
                let value = iter
                    .next()
                    .and_then(|value| value.parse::<usize>().ok())
                    .filter(|value| *value > 0)
                    .ok_or(format!("{arg} needs a number above 0"))?;
                if arg == "--files" {
                    options.files = Some(value);
                } else {
                    options.mib = Some(value);
                }
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
        Ok((command, options)) if command == "incremental" => incremental_only(&options),
        Ok((command, options)) if command == "edits" => edits_only(&options),
        Ok((command, _)) => Err(format!(
            "unknown benchmark {command:?}; try `all`, `engine`, `pair`, `lag`, `small`, `large`, `rewrite`, `incremental` or `edits`"
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
            "standin initial sync (caught up + sync)",
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
    let incremental = pair::incremental(&standin, &rsync, work, &small.root, &large.root, false)?;
    let patching = pair::incremental(&standin, &rsync, work, &small.root, &large.root, true)?;
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
    report.rows.push(Row {
        case: "incremental (1% of small rewritten, 1 MiB appended, 4 KiB changed)".to_string(),
        tool: "standin, patch_in_place = true (last change written to applied)".to_string(),
        seconds: patching.standin.as_secs_f64(),
        files_per_second: 0.0,
        megabytes_per_second: patching.standin_wire_bytes as f64
            / 1e6
            / patching.standin.as_secs_f64(),
        ratios: vec![(
            "rsync".to_string(),
            patching.rsync.as_secs_f64() / patching.standin.as_secs_f64(),
        )],
    });
    report.notes.push(format!(
        "incremental with patch_in_place = true: a round of its own (fresh pair and rsync target); its rsync took {:.3} s, the ratio is against that",
        patching.rsync.as_secs_f64()
    ));
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

#[cfg(test)]
mod tests {
    use super::parse;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn lag_rates_are_parsed_and_bad_ones_refused() {
        let (command, options) = parse(&args("lag")).expect("defaults");
        assert_eq!(command, "lag");
        assert_eq!(options.rates, vec![10, 100, 1_000]);
        let (_, options) = parse(&args("lag --rates 10,250")).expect("two rates");
        assert_eq!(options.rates, vec![10, 250]);
        for bad in [
            "lag --rates",
            "lag --rates 0",
            "lag --rates 10,x",
            "lag --rates ,",
        ] {
            let error = parse(&args(bad))
                .err()
                .unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(error.contains("--rates"), "{bad}: {error}");
        }
    }
}
