//! A full disk on the passive: it stops applying, says why (no space, with the path) in
//! `standin status` and in `/metrics`, loses nothing, and resumes by itself once space
//! returns. The passive's folder and data_dir live on a small tmpfs of the test's own
//! (the test needs root to mount it; without, it says so and passes as skipped). One
//! test meets the passive's reserve check (content, and events alone); the other turns
//! the check off (a test seam) so that the chunk store's and the folder's writes meet
//! the full disk themselves.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::{
    ledger_missing, pseudo_random, tree, wait_until, wait_within, Ledger, NodeProcess,
};

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root".to_string());
        }
        std::fs::create_dir_all(dir).map_err(|error| error.to_string())?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|error| format!("mount: {error}"))?;
        if !output.status.success() {
            return Err(format!(
                "mount: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

/// Fill `disk` with a file until about `leave` bytes are free; the file.
fn fill_leaving(disk: &Path, leave: u64) -> PathBuf {
    use std::io::Write;
    let filler = disk.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let block = vec![0xa5u8; 256 << 10];
    let path = std::ffi::CString::new(disk.as_os_str().as_encoded_bytes()).unwrap();
    loop {
        // SAFETY: a zeroed plain struct, filled by statvfs from a valid C string.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut stat) }, 0);
        let free = stat.f_bavail * stat.f_frsize;
        if free <= leave || file.write_all(&block).is_err() {
            break;
        }
    }
    let _ = file.sync_all();
    filler
}

fn status(node: &NodeProcess) -> serde_json::Value {
    serde_json::from_slice(&node.cli(&["status", "--json"]).stdout).unwrap_or_default()
}

/// One phase: what fills up, the bytes left free, then big files (700 KiB), small
/// files and directories written on the active.
type Phase = (&'static str, u64, usize, usize, usize);

/// The passive's disk fills up in each phase, then space returns.
fn full_disk(test: &str, phases: &[Phase], space_check: bool) {
    let root = tempfile::tempdir().unwrap();
    let disk = root.path().join("beta-disk");
    let _tmpfs = match Tmpfs::mount(&disk, "96m") {
        Ok(tmpfs) => tmpfs,
        Err(reason) => {
            eprintln!("{test} SKIPPED: a full disk needs a tmpfs of the test's own ({reason})");
            return;
        }
    };
    let mut alpha = NodeProcess::configure(root.path(), "alpha", "active", None, "");
    let mut beta = NodeProcess::configure(
        root.path(),
        "beta",
        "passive",
        Some(alpha.grpc),
        "replication_period = 0\nfailover_after_ms = 600000\n",
    );
    if !space_check {
        beta.env
            .push(("STANDIN_TEST_NO_SPACE_CHECK".to_string(), "1".to_string()));
    }
    // beta's folder and data_dir on the small disk.
    beta.folder = disk.join("folder");
    beta.data_dir = disk.join("data");
    std::fs::create_dir_all(&beta.folder).unwrap();
    let text = std::fs::read_to_string(&beta.config).unwrap();
    let text = text
        .lines()
        .map(|line| {
            if line.starts_with("folder =") {
                format!("folder = \"{}\"", beta.folder.display())
            } else if line.starts_with("data_dir =") {
                format!("data_dir = \"{}\"", beta.data_dir.display())
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&beta.config, text).unwrap();

    let mut ledger = Ledger::new();
    let source = alpha.folder.clone();
    let write = |ledger: &mut Ledger, name: String, content: Vec<u8>| {
        std::fs::write(source.join(&name), &content).unwrap();
        ledger.insert(name, content);
    };
    write(
        &mut ledger,
        "before.txt".to_string(),
        b"before the disk fills".to_vec(),
    );
    alpha.start();
    beta.start();
    wait_until("beta to follow", || {
        beta.head_seq() >= 1 && beta.head_seq() == alpha.head_seq()
    });

    // Twice: first the chunk store runs out of space (2 MiB left), then the folder
    // (the new content's chunks fit, its files do not).
    for (phase, &(what, leave, big, small, dirs)) in phases.iter().enumerate() {
        let before = alpha.head_seq();
        let filler = fill_leaving(&disk, leave);
        // More than fits: the passive runs out of space part-way.
        for index in 0..big {
            write(
                &mut ledger,
                format!("big{phase}-{index}.bin"),
                pseudo_random(700 << 10, (phase * 100 + index) as u64),
            );
        }
        for index in 0..small {
            write(
                &mut ledger,
                format!("small{phase}-{index}.txt"),
                format!("small {index}").into_bytes(),
            );
        }
        for index in 0..dirs {
            std::fs::create_dir(alpha.folder.join(format!("dir{phase}-{index}"))).unwrap();
        }
        let events = (big + small + dirs) as u64;
        wait_until("alpha to record everything", || {
            alpha.head_seq() >= before + events
        });
        let target = alpha.head_seq();

        wait_within(
            "beta to report the full disk",
            Duration::from_secs(120),
            || {
                status(&beta)["last_error"]
                    .as_str()
                    .is_some_and(|error| error.contains("no space left on this node's disk"))
            },
        );
        let error = status(&beta)["last_error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        eprintln!("{test}: {what} full: beta reports: {error}");
        assert!(
            error.contains(&disk.display().to_string()),
            "the error names the path: {error}"
        );
        let metrics = crate::support::http_get(beta.http, "/metrics").unwrap().1;
        assert!(
            metrics.contains("standin_pull_errors_total{kind=\"no_space\"}"),
            "{metrics}"
        );
        assert!(beta.head_seq() < target, "beta stopped applying");
        // Stopped between batches: what beta applied is consistent with its log.
        let verify = beta.cli(&["verify"]);
        assert!(
            verify.status.success(),
            "{}",
            String::from_utf8_lossy(&verify.stdout)
        );

        // Space returns: beta resumes by itself.
        std::fs::remove_file(&filler).unwrap();
        wait_within(
            "beta to resume and converge",
            Duration::from_secs(120),
            || beta.head_seq() == alpha.head_seq() && tree(&alpha.folder) == tree(&beta.folder),
        );
        wait_until("beta's error to clear", || {
            status(&beta)["last_error"].as_str() == Some("")
        });
        for node in [&alpha, &beta] {
            assert!(
                node.cli(&["verify"]).status.success(),
                "{} verifies",
                node.name
            );
        }
        let missing = ledger_missing(&beta.folder, &ledger);
        assert!(missing.is_empty(), "lost on beta: {missing:?}");
    }
    beta.kill();
}

/// The passive keeps a reserve of free space: it stops applying before a batch would
/// eat into it, whether the batch carries content (the chunk store and the folder would
/// fill up) or only events (the log would), and resumes once space returns.
#[test]
fn a_full_disk_on_the_passive_stops_it_says_why_and_it_resumes_when_space_returns() {
    full_disk(
        "a_full_disk_on_the_passive_stops_it_says_why_and_it_resumes_when_space_returns",
        &[("content", 2 << 20, 12, 50, 0), ("log", 0, 0, 0, 3000)],
        true,
    );
}

/// Without the reserve check (a test seam), the writes themselves meet the full disk:
/// the chunk store's, then the folder's. Each is reported as `no_space` with its path,
/// nothing is lost, and pulling resumes once space returns.
#[test]
fn writes_that_meet_a_full_disk_are_reported_and_resume_when_space_returns() {
    full_disk(
        "writes_that_meet_a_full_disk_are_reported_and_resume_when_space_returns",
        &[
            ("chunk store", 2 << 20, 12, 50, 0),
            ("folder", 16 << 20, 12, 50, 0),
        ],
        false,
    );
}
