//! The incremental rounds: a synced pair and an rsync target, then a set of changes —
//! the time until the passive applied them beside rsync's update, with the bytes each
//! moved — and the takeover after the active is SIGKILLed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use standin_harness::NodeProcess;

use super::nodes::{metric, pair_specs, resources, wait_head, LIMIT};
use super::rsync::RsyncDaemon;
use crate::Outcome;

/// What the incremental, takeover and resources phase measured.
pub struct Incremental {
    /// From the last change written to the passive having applied them all (rsync's
    /// clock, too, starts once the changes are made).
    pub standin: Duration,
    /// How long writing the changes took (before `standin`'s clock starts).
    pub writing: Duration,
    pub standin_wire_bytes: u64,
    pub rsync: Duration,
    pub rsync_wire_bytes: u64,
    /// The changed files' new versions written whole, measured after both
    /// (`floor::versions_floor`).
    pub floor: Duration,
    pub takeover: Duration,
    pub failover_after_ms: u64,
    pub resources: Vec<(String, f64, f64)>,
}

/// Copy `small` and the first two files of `large` into a fresh folder, sync it to a
/// passive and to an rsync target, then change it — 1% of the small files rewritten,
/// 1 MiB appended to one large file, 4 KiB changed in the middle of the other — and
/// time how long each takes to have it all, with the bytes each sent. Then SIGKILL the
/// active and time the passive's takeover. `patch_in_place`: the nodes' key of that
/// name (the passive patches the large files where they are).
pub fn incremental(
    binary: &Path,
    rsync: &Path,
    work: &Path,
    small: &Path,
    large: &Path,
    patch_in_place: bool,
) -> Outcome<Incremental> {
    let root = work.join(incremental_dir(patch_in_place));
    let folder = root.join("folder");
    std::fs::create_dir_all(&folder)?;
    crate::measure::time_command(
        "cp",
        &[
            "-a",
            &small.to_string_lossy(),
            &folder.join("small").to_string_lossy(),
        ],
    )?;
    std::fs::create_dir(folder.join("large"))?;
    for name in ["large0.bin", "large1.bin"] {
        std::fs::copy(large.join(name), folder.join("large").join(name))?;
    }
    let failover_after_ms = 2_000;
    let timing = format!(
        "heartbeat_interval_ms = 200\nfailover_after_ms = {failover_after_ms}\npatch_in_place = {patch_in_place}\n"
    );
    let small_files = std::fs::read_dir(folder.join("small"))?.count() as u64;
    let Synced {
        mut alpha,
        beta,
        daemon,
        rsync_target,
    } = synced(binary, rsync, &root, &folder, &timing, small_files + 1)?;
    // Both start from a clean, warm cache: without this the setup's writes (the
    // folder's copy, the passive's and rsync's initial copies) were still being written
    // back, and the first durability point after the changes waited for them (a
    // single-event group took 350 ms to record).
    crate::measure::sync_all();
    crate::measure::warm(&folder)?;

    // The changes.
    let bytes_before = metric(&beta, "standin_bytes_replicated_total");
    let started = Instant::now();
    let mut generator = crate::corpus::Bytes::new(77);
    let mut content = vec![0u8; 4096];
    let mut small_paths: Vec<PathBuf> = Vec::new();
    for dir in std::fs::read_dir(folder.join("small"))? {
        for file in std::fs::read_dir(dir?.path())? {
            small_paths.push(file?.path());
        }
    }
    small_paths.sort();
    let mut expected = Vec::new();
    let mut changed = Vec::new();
    for path in small_paths.iter().step_by(100) {
        generator.fill(&mut content);
        std::fs::write(path, &content)?;
        expected.push(Expect::at(&folder, path, 0, &content));
        changed.push(path.clone());
    }
    let mut appended = std::fs::OpenOptions::new()
        .append(true)
        .open(folder.join("large/large0.bin"))?;
    let mut mebibyte = vec![0u8; 1 << 20];
    generator.fill(&mut mebibyte);
    appended.write_all(&mebibyte)?;
    let appended_at = appended.metadata()?.len() - mebibyte.len() as u64;
    drop(appended);
    let large0 = folder.join("large/large0.bin");
    expected.push(Expect::at(&folder, &large0, appended_at, &mebibyte));
    {
        use std::io::{Seek, SeekFrom};
        let mut middle = std::fs::OpenOptions::new()
            .write(true)
            .open(folder.join("large/large1.bin"))?;
        let length = middle.metadata()?.len();
        middle.seek(SeekFrom::Start(length / 2))?;
        generator.fill(&mut content);
        middle.write_all(&content)?;
        let large1 = folder.join("large/large1.bin");
        expected.push(Expect::at(&folder, &large1, length / 2, &content));
    }
    let writing = started.elapsed();
    let (standin, standin_wire_bytes) = applied(
        &alpha,
        &beta,
        &root.join("replica"),
        &expected,
        bytes_before,
    )?;

    let (rsync_time, rsync_wire_bytes) = daemon.update(rsync, &rsync_target)?;
    changed.extend([large0, folder.join("large/large1.bin")]);
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let floor = crate::floor::versions_floor(&changed, &root.join("floor-versions"), threads)?;

    let resources = vec![
        (
            "standin active".to_string(),
            resources(&alpha).0,
            resources(&alpha).1,
        ),
        (
            "standin passive".to_string(),
            resources(&beta).0,
            resources(&beta).1,
        ),
    ];
    alpha.kill();
    let killed = Instant::now();
    while !beta.is_active() {
        if killed.elapsed() > LIMIT {
            return Err("the passive did not take over".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let takeover = killed.elapsed();
    Ok(Incremental {
        standin,
        writing,
        standin_wire_bytes,
        rsync: rsync_time,
        rsync_wire_bytes,
        floor,
        takeover,
        failover_after_ms,
        resources,
    })
}

/// The work dir of an `incremental` round (under `work`).
pub fn incremental_dir(patch_in_place: bool) -> &'static str {
    if patch_in_place {
        "incremental-patch"
    } else {
        "incremental"
    }
}

/// What one small-file incremental round measured.
pub struct SmallIncremental {
    pub files: usize,
    pub changed: usize,
    /// From the last change written to the passive having applied them all.
    pub standin: Duration,
    /// How long writing the changes took (before `standin`'s clock starts).
    pub writing: Duration,
    pub standin_wire_bytes: u64,
    pub rsync: Duration,
    pub rsync_wire_bytes: u64,
}

/// A folder of `files` 4 KiB files (200 per directory), synced to a passive and to an
/// rsync target; then `changed` of them rewritten: the time until the passive applied
/// them (standin: the active already knows what changed) beside an rsync run (which
/// must rescan the whole folder to find them), with the bytes each moved.
pub fn small_incremental(
    binary: &Path,
    rsync: &Path,
    work: &Path,
    files: usize,
    changed: usize,
) -> Outcome<SmallIncremental> {
    let root = work.join(format!("small-incremental-{files}"));
    let folder = root.join("folder");
    let dirs = files.div_ceil(200).max(1);
    crate::corpus::small_files(&folder, files, dirs, 4096)?;
    crate::measure::sync_all();
    let entries = (files + dirs) as u64;
    let Synced {
        alpha,
        beta,
        daemon,
        rsync_target,
    } = synced(binary, rsync, &root, &folder, "", entries)?;
    crate::measure::warm(&folder)?;

    let bytes_before = metric(&beta, "standin_bytes_replicated_total");
    let step = (files / changed.max(1)).max(1);
    let mut generator = crate::corpus::Bytes::new(78);
    let mut content = vec![0u8; 4096];
    let started = Instant::now();
    let mut rewritten = 0u64;
    let mut expected = Vec::new();
    for index in (0..files).step_by(step).take(changed) {
        generator.fill(&mut content);
        let path = folder.join(format!("dir{:03}/file{index:05}.dat", index % dirs));
        std::fs::write(&path, &content)?;
        rewritten += 1;
        expected.push(Expect::at(&folder, &path, 0, &content));
    }
    let writing = started.elapsed();
    let (standin, standin_wire_bytes) = applied(
        &alpha,
        &beta,
        &root.join("replica"),
        &expected,
        bytes_before,
    )?;
    let (rsync_time, rsync_wire_bytes) = daemon.update(rsync, &rsync_target)?;
    Ok(SmallIncremental {
        files,
        changed: rewritten as usize,
        standin,
        writing,
        standin_wire_bytes,
        rsync: rsync_time,
        rsync_wire_bytes,
    })
}

/// Bytes the replica must hold at an offset of a file once a change is applied.
pub(super) struct Expect {
    /// The file, relative to the folder (and so to the replica).
    relative: PathBuf,
    offset: u64,
    bytes: Vec<u8>,
}

impl Expect {
    pub(super) fn at(folder: &Path, path: &Path, offset: u64, bytes: &[u8]) -> Expect {
        Expect {
            relative: path.strip_prefix(folder).unwrap_or(path).to_path_buf(),
            offset,
            bytes: bytes.to_vec(),
        }
    }

    fn held_in(&self, replica: &Path) -> bool {
        use std::os::unix::fs::FileExt;
        let Ok(file) = std::fs::File::open(replica.join(&self.relative)) else {
            return false;
        };
        let mut found = vec![0u8; self.bytes.len()];
        file.read_exact_at(&mut found, self.offset).is_ok() && found == self.bytes
    }
}

/// From now until the replica holds every change in `expected` and the passive's
/// head is the active's (the batch that wrote them is applied, durable and
/// appended): the time, and the bytes the passive received since `bytes_before`.
/// (Counting events instead would stop early: a group's marker and the directories'
/// new times are events too.)
pub(super) fn applied(
    alpha: &NodeProcess,
    beta: &NodeProcess,
    replica: &Path,
    expected: &[Expect],
    bytes_before: u64,
) -> Outcome<(Duration, u64)> {
    let written = Instant::now();
    let mut held = 0;
    loop {
        while held < expected.len() && expected[held].held_in(replica) {
            held += 1;
        }
        if held == expected.len() && beta.head_seq() >= alpha.head_seq() {
            break;
        }
        if written.elapsed() > LIMIT {
            return Err(format!(
                "timed out waiting for the replica to hold the changes ({held} of {} held)",
                expected.len()
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let elapsed = written.elapsed();
    let bytes = metric(beta, "standin_bytes_replicated_total").saturating_sub(bytes_before);
    Ok((elapsed, bytes))
}

/// A pair on `folder` and an rsync copy of it, both in step before the changes.
pub(super) struct Synced {
    pub alpha: NodeProcess,
    pub beta: NodeProcess,
    pub daemon: RsyncDaemon,
    pub rsync_target: PathBuf,
}

/// Start the active on `folder` until it recorded `entries` events, then a passive
/// until it caught up; copy the folder with rsync too, then let both settle 2 s.
pub(super) fn synced(
    binary: &Path,
    rsync: &Path,
    root: &Path,
    folder: &Path,
    extra: &str,
    entries: u64,
) -> Outcome<Synced> {
    let replica = root.join("replica");
    let (alpha, beta) = pair_specs(binary, folder, &replica, extra);
    let alpha = alpha.try_start(root)?;
    wait_head(&alpha, "the active to record the folder", |head| {
        head >= entries
    })?;
    std::fs::create_dir(&replica)?;
    let beta = beta.try_start(root)?;
    let target = alpha.head_seq();
    wait_head(&beta, "the passive to catch up", |head| head >= target)?;
    let daemon = RsyncDaemon::start(rsync, root, folder)?;
    let rsync_target = root.join("rsync-target");
    daemon.copy(rsync, &rsync_target)?;
    std::thread::sleep(Duration::from_secs(2));
    Ok(Synced {
        alpha,
        beta,
        daemon,
        rsync_target,
    })
}
