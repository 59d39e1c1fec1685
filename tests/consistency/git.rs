//! git under SIGKILL of the active: a commit loop (a few files a commit, `git gc` every
//! 15 commits, `git repack -ad` now and then) in the active's folder; the active is
//! killed at a seeded random moment once the repository is in its log; the promoted
//! copy must pass `git fsck --full`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::common::{heavy, soak_runs, wait_for_put_in_log, FailoverPair};
use crate::support::{pseudo_random, FaultRng};

/// `git` with no user or system configuration, automatic gc and maintenance off.
fn git(home: &Path, args: &[&str]) -> Output {
    Command::new("git")
        .args([
            "-c",
            "gc.auto=0",
            "-c",
            "maintenance.auto=false",
            "-c",
            "user.name=standin",
            "-c",
            "user.email=dev@standin",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CEILING_DIRECTORIES", home)
        .output()
        .expect("git runs")
}

fn git_ok(home: &Path, args: &[&str]) -> Result<(), String> {
    let output = git(home, args);
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "git {}: {}: {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// The commit loop, in a thread of its own; stopped (and joined) on `finish` or drop.
struct CommitLoop {
    stop: Arc<AtomicBool>,
    commits: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl CommitLoop {
    fn start(home: PathBuf, repo: PathBuf, mut rng: FaultRng) -> CommitLoop {
        let repo_arg = repo.display().to_string();
        git_ok(&home, &["init", "-q", "-b", "main", &repo_arg]).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let commits = Arc::new(AtomicU64::new(0));
        let (stopping, counting) = (stop.clone(), commits.clone());
        let thread = std::thread::spawn(move || {
            let mut commit = 0u64;
            while !stopping.load(Ordering::SeqCst) {
                commit += 1;
                for _ in 0..rng.range(2, 5) {
                    let name = repo.join(format!("src/f{:02}.dat", rng.range(0, 40)));
                    std::fs::create_dir_all(name.parent().unwrap()).unwrap();
                    let len = rng.range(100, 20_000) as usize;
                    std::fs::write(&name, pseudo_random(len, rng.next_u64())).unwrap();
                }
                git_ok(&home, &["-C", &repo_arg, "add", "-A"])?;
                git_ok(
                    &home,
                    &[
                        "-C",
                        &repo_arg,
                        "commit",
                        "-q",
                        "-m",
                        &format!("commit {commit}"),
                    ],
                )?;
                counting.store(commit, Ordering::SeqCst);
                if commit.is_multiple_of(15) {
                    git_ok(&home, &["-C", &repo_arg, "gc", "-q"])?;
                } else if rng.range(0, 25) == 0 {
                    git_ok(&home, &["-C", &repo_arg, "repack", "-ad", "-q"])?;
                }
            }
            Ok(())
        });
        CommitLoop {
            stop,
            commits,
            thread: Some(thread),
        }
    }

    fn commits(&self) -> u64 {
        self.commits.load(Ordering::SeqCst)
    }

    /// Stop after the command under way; the number of commits made.
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            if let Err(error) = thread.join().unwrap() {
                panic!("the commit loop failed on the active's folder: {error}");
            }
        }
        self.commits()
    }
}

impl Drop for CommitLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `runs` kills, alternating replication_period 0 and 1; panics naming every promoted
/// copy that `git fsck --full` refused.
fn commit_loop_under_sigkill(
    test: &str,
    base: Option<&Path>,
    runs: usize,
    kill_after_ms: (u64, u64),
) {
    let _heavy = heavy();
    let mut rng = FaultRng::for_test(test);
    let mut failures = Vec::new();
    for run in 0..runs {
        let period = (run % 2) as u32;
        let mut pair = FailoverPair::start_on(base, period);
        let home = pair.root().to_path_buf();
        let writer = CommitLoop::start(home.clone(), pair.alpha.folder.join("repo"), rng.fork());
        let is_ref =
            |path: &str| path == "repo/.git/refs/heads/main" || path == "repo/.git/packed-refs";
        wait_for_put_in_log(&pair.alpha, "the repository's ref in alpha's log", is_ref);
        // And replicated: a kill before the passive has any of the repository tests
        // nothing (its folder would rightly be empty).
        wait_for_put_in_log(&pair.beta, "the repository's ref in beta's log", is_ref);
        let delay = rng.millis(kill_after_ms.0, kill_after_ms.1);
        std::thread::sleep(delay);
        let committed = writer.commits();
        let killed = Instant::now();
        pair.kill_active_and_wait_for_promotion();
        let promoted_after = killed.elapsed();
        let made = writer.finish();

        let git_dir = pair.beta.folder.join("repo/.git");
        let git_dir_arg = format!("--git-dir={}", git_dir.display());
        let fsck = git(&home, &[&git_dir_arg, "fsck", "--full"]);
        let count = git(&home, &[&git_dir_arg, "rev-list", "--count", "HEAD"]);
        let promoted_commits = String::from_utf8_lossy(&count.stdout).trim().to_string();
        eprintln!(
            "{test} run {run}: replication_period {period}, killed {} ms after the ref was logged, {committed} commits made by then ({made} in all); beta promoted {:.1} s after the kill; promoted copy has {} commits; git fsck --full: {}",
            delay.as_millis(),
            promoted_after.as_secs_f64(),
            if promoted_commits.is_empty() { "none readable" } else { &promoted_commits },
            fsck.status
        );
        if !fsck.status.success() {
            // fsck names broken objects on stdout and errors on stderr; dangling
            // objects are no fault.
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&fsck.stderr),
                String::from_utf8_lossy(&fsck.stdout)
            );
            let first: Vec<&str> = text
                .lines()
                .filter(|line| !line.starts_with("dangling "))
                .take(12)
                .collect();
            failures.push(format!(
                "run {run} (replication_period {period}, killed {} ms after the ref was logged): git fsck --full on the promoted copy exited {}:\n    {}",
                delay.as_millis(),
                fsck.status,
                first.join("\n    ")
            ));
        }
        drop(pair);
    }
    assert!(
        failures.is_empty(),
        "{} of {runs} promoted repositories are corrupt:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn a_promoted_git_repository_passes_fsck() {
    commit_loop_under_sigkill(
        "a_promoted_git_repository_passes_fsck",
        None,
        2,
        (300, 4_000),
    );
}

#[test]
#[ignore = "soak: STANDIN_SOAK_RUNS kills (default 6)"]
fn a_promoted_git_repository_passes_fsck_soak() {
    commit_loop_under_sigkill(
        "a_promoted_git_repository_passes_fsck_soak",
        None,
        soak_runs(6),
        (200, 8_000),
    );
}

/// The same on a loop-mounted XFS image with reflink (as root; skipped elsewhere):
/// the active reads packs from clones, the passive keeps them by reference.
#[test]
fn a_promoted_git_repository_on_xfs_passes_fsck() {
    let test = "a_promoted_git_repository_on_xfs_passes_fsck";
    let Some(xfs) = crate::xfs::xfs_of_or_skip(test, 1 << 30) else {
        return;
    };
    commit_loop_under_sigkill(test, Some(&xfs.mount), 2, (1_000, 5_000));
}
