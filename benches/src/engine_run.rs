//! `engine`: the engine alone, in process — capture and replay of the small-file and
//! large-file corpora beside `cp -a` and the disk's write rate — and the corpora and
//! report rows the `pair` benchmark shares with it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use standin_engine::folder::scan::reconcile;
use standin_engine::folder::verify::verify_folder;
use standin_engine::replay::apply_batch;
use standin_engine::{Event, Repository};

use crate::measure::{median, sync_all, time_command, warm};
use crate::report::{Report, Row};
use crate::{corpus, measure};
use crate::{work_dir, Options, Outcome};

/// The small-file and large-file corpora (smaller with `--quick`), written and synced.
pub(crate) fn make_corpora(work: &Path, quick: bool) -> Outcome<(Corpus, Corpus)> {
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

pub(crate) struct Corpus {
    pub(crate) name: &'static str,
    pub(crate) root: PathBuf,
    pub(crate) files: usize,
    pub(crate) bytes: u64,
}

pub(crate) fn engine(options: &Options) -> Outcome<()> {
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

pub(crate) fn push(
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
