//! `RsyncDaemon`: the rsync daemon on 127.0.0.1 a pair is measured beside, and the
//! copies and updates made from it, timed with the receiver's resources.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::nodes::{wait_usage, Usage};
use crate::Outcome;

/// An rsync daemon serving `corpus` as module `corpus`; killed when dropped.
pub struct RsyncDaemon {
    pub port: u16,
    child: Option<Child>,
}

impl RsyncDaemon {
    pub fn start(rsync: &Path, work: &Path, corpus: &Path) -> Outcome<RsyncDaemon> {
        let port = standin_harness::free_port();
        let config = work.join(format!("rsyncd-{port}.conf"));
        std::fs::write(
            &config,
            format!("use chroot = no\nuid = root\ngid = root\n[corpus]\n  path = {}\n  read only = yes\n", corpus.display()),
        )?;
        let child = Command::new(rsync)
            .args([
                "--daemon",
                "--no-detach",
                &format!("--port={port}"),
                "--address=127.0.0.1",
            ])
            .arg(format!("--config={}", config.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if started.elapsed() > Duration::from_secs(10) {
                return Err("the rsync daemon did not start".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(RsyncDaemon {
            port,
            child: Some(child),
        })
    }

    /// `rsync -a` the module into a fresh `target`, then `sync`; with the client's
    /// (the receiver's) peak RSS and CPU time.
    pub fn copy_measured(&self, rsync: &Path, target: &Path) -> Outcome<(Duration, Usage)> {
        let started = Instant::now();
        let child = Command::new(rsync)
            .arg("-a")
            .arg(format!("rsync://127.0.0.1:{}/corpus/", self.port))
            .arg(target)
            .spawn()?;
        let (success, usage) = wait_usage(child.id())?;
        if !success {
            return Err("rsync failed".into());
        }
        crate::measure::sync_all();
        Ok((started.elapsed(), usage))
    }

    /// `rsync -a --stats` into an existing `target` (a rescan, then the differences),
    /// then `sync`: the time and the bytes the receiver got.
    pub fn update(&self, rsync: &Path, target: &Path) -> Outcome<(Duration, u64)> {
        let started = Instant::now();
        let output = Command::new(rsync)
            .args(["-a", "--stats"])
            .arg(format!("rsync://127.0.0.1:{}/corpus/", self.port))
            .arg(target)
            .output()?;
        if !output.status.success() {
            return Err(format!("rsync failed: {}", output.status).into());
        }
        crate::measure::sync_all();
        let elapsed = started.elapsed();
        let stats = String::from_utf8_lossy(&output.stdout);
        let bytes = stats
            .lines()
            .find(|line| line.starts_with("Total bytes received:"))
            .and_then(|line| line.split(':').nth(1))
            .map(|value| value.trim().replace(',', ""))
            .and_then(|value| value.parse().ok())
            .unwrap_or(0);
        Ok((elapsed, bytes))
    }

    /// Stop the daemon; the peak RSS and total CPU time of the daemon and the senders
    /// it forked (one per connection).
    pub fn finish(mut self) -> Outcome<Usage> {
        // Let the daemon reap its last sender, so that its usage is counted.
        std::thread::sleep(Duration::from_millis(300));
        let mut child = self.child.take().ok_or("the daemon was already stopped")?;
        child.kill()?;
        Ok(wait_usage(child.id())?.1)
    }

    /// `rsync -a` the module into a fresh `target`, then `sync`.
    pub fn copy(&self, rsync: &Path, target: &Path) -> Outcome<Duration> {
        let started = Instant::now();
        let status = Command::new(rsync)
            .arg("-a")
            .arg(format!("rsync://127.0.0.1:{}/corpus/", self.port))
            .arg(target)
            .status()?;
        if !status.success() {
            return Err(format!("rsync failed: {status}").into());
        }
        crate::measure::sync_all();
        Ok(started.elapsed())
    }
}

impl Drop for RsyncDaemon {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
