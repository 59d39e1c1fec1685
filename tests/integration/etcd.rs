//! The etcd lease with real processes: a real `etcd` (Debian's etcd-server; `.ci/run`
//! installs it) on free loopback ports, stopped by its PID. The active is killed: the
//! passive takes the lease and promotes. etcd is stopped: the authority steps down
//! before the lease's TTL runs out. etcd comes back: exactly one authority again.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{free_port, http_get, wait_until, NodeProcess, PairSpec};

const LEASE_TTL_S: u64 = 3;

struct Etcd {
    child: Option<Child>,
    client: u16,
    peer: u16,
    data_dir: PathBuf,
    log: PathBuf,
}

impl Etcd {
    fn start(root: &Path) -> Etcd {
        let mut etcd = Etcd {
            child: None,
            client: free_port(),
            peer: free_port(),
            data_dir: root.join("etcd-data"),
            log: root.join("etcd.log"),
        };
        etcd.restart();
        etcd
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client)
    }

    /// Start (again, on the same ports and data) and wait until it is healthy.
    fn restart(&mut self) {
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new("etcd")
            .args(["--name", "standin-test"])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &self.url()])
            .args(["--advertise-client-urls", &self.url()])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("standin-test={peer}")])
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|error| {
                panic!("cannot run etcd ({error}): run .ci/run, or apt-get install etcd-server")
            });
        self.child = Some(child);
        wait_until("etcd to be healthy", || {
            http_get(self.client, "/health")
                .is_some_and(|(status, body)| status == 200 && body.contains("true"))
        });
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `wait_until`, but a timeout shows the nodes' logs.
fn wait_for(what: &str, nodes: &[&NodeProcess], mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        if started.elapsed() > Duration::from_secs(60) {
            let logs: Vec<String> = nodes
                .iter()
                .map(|node| format!("--- {}\n{}", node.name, node.log_text()))
                .collect();
            panic!("timed out waiting for {what}\n{}", logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn active(node: &NodeProcess) -> bool {
    http_get(node.http, "/active").is_some_and(|(status, _)| status == 200)
}

#[test]
fn the_etcd_lease_decides_the_authority_through_a_failover_and_an_etcd_outage() {
    let root = tempfile::tempdir().unwrap();
    let mut etcd = Etcd::start(root.path());
    let extra = format!(
        "heartbeat_interval_ms = 100\nfailover_after_ms = 1500\nreplication_period = 0\nauthority = \"etcd\"\netcd_endpoints = [\"{}\"]\netcd_lease_ttl_s = {LEASE_TTL_S}\n",
        etcd.url()
    );
    let (mut alpha, mut beta) = PairSpec::new(&extra).mutual().configure(root.path());
    alpha.start();
    beta.start();
    wait_for("alpha to take the lease", &[&alpha, &beta], || {
        active(&alpha)
    });
    assert!(!active(&beta));
    std::fs::write(alpha.folder.join("before.txt"), b"replicated").unwrap();
    wait_until("beta to replicate", || {
        beta.folder.join("before.txt").exists()
    });

    // The active dies: its lease runs out and the passive takes it.
    alpha.kill();
    wait_for(
        "beta to take the lease and promote",
        &[&alpha, &beta],
        || active(&beta),
    );
    assert!(beta.folder.join("before.txt").exists());
    let status = String::from_utf8_lossy(&beta.cli(&["status"]).stdout).into_owned();
    assert!(status.contains("etcd lease held"), "{status}");

    // The old active comes back and follows.
    alpha.start();
    wait_for("alpha to follow beta", &[&alpha, &beta], || {
        serde_json::from_slice::<serde_json::Value>(&alpha.cli(&["status", "--json"]).stdout)
            .is_ok_and(|status| status["role"] == "passive")
    });
    assert!(!active(&alpha));

    // etcd stops: the authority steps down before the TTL could run out.
    let stopped = Instant::now();
    etcd.kill();
    while active(&beta) {
        assert!(
            stopped.elapsed() < Duration::from_secs(LEASE_TTL_S),
            "beta still accepts logins {LEASE_TTL_S} s (the lease TTL) after etcd stopped"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "beta stepped down {:?} after etcd stopped",
        stopped.elapsed()
    );
    assert!(!active(&alpha), "nobody holds the lease: nobody is active");

    // etcd returns: exactly one authority again, and never two.
    etcd.restart();
    wait_for("one node to hold the lease again", &[&alpha, &beta], || {
        active(&alpha) || active(&beta)
    });
    let watching = Instant::now();
    while watching.elapsed() < Duration::from_secs(5) {
        let (a, b) = (active(&alpha), active(&beta));
        assert!(
            !(a && b && active(&alpha)),
            "two authorities after etcd returned"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        u8::from(active(&alpha)) + u8::from(active(&beta)),
        1,
        "exactly one authority"
    );
}
