//! Faults with real processes (the quick form of the fault suite): a cut link that
//! heals, and a passive SIGKILLed again and again while it streams. After every fault
//! heals the passive converges and both folders verify.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::support::{pseudo_random, tree, wait_until, NodeProcess, Pair};

/// A TCP proxy of the test's own between the passive and the active, that can cut
/// the link (closing every connection and refusing new ones) and heal it.
pub(crate) struct Proxy {
    pub(crate) port: u16,
    cut: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    pub(crate) fn start(target_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let connections: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let (accept_cut, accept_connections) = (cut.clone(), connections.clone());
        std::thread::spawn(move || {
            for incoming in listener.incoming() {
                let Ok(client) = incoming else { continue };
                if accept_cut.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let mut registry = accept_connections.lock().unwrap();
                registry.push(client.try_clone().unwrap());
                registry.push(server.try_clone().unwrap());
                drop(registry);
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let mut buffer = [0u8; 64 * 1024];
                        loop {
                            match from.read(&mut buffer) {
                                Ok(0) | Err(_) => break,
                                Ok(read) => {
                                    if to.write_all(&buffer[..read]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Proxy {
            port,
            cut,
            connections,
        }
    }

    pub(crate) fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for connection in self.connections.lock().unwrap().drain(..) {
            let _ = connection.shutdown(Shutdown::Both);
        }
    }

    pub(crate) fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

fn in_sync(a: &NodeProcess, b: &NodeProcess) -> bool {
    let head = a.head_seq();
    head > 0 && head == b.head_seq() && tree(&a.folder) == tree(&b.folder)
}

#[test]
fn a_cut_link_that_heals_loses_nothing() {
    let root = tempfile::tempdir().unwrap();
    let mut alpha = NodeProcess::configure(root.path(), "alpha", "active", None, "");
    alpha.start();
    let proxy = Proxy::start(alpha.grpc);
    // The passive reaches the active only through the proxy; no failover during the
    // test (this is about replication surviving the cut, not about promotion).
    let mut beta = NodeProcess::configure(
        root.path(),
        "beta",
        "passive",
        Some(proxy.port),
        "replication_period = 0\nfailover_after_ms = 600000\n",
    );
    beta.start();
    std::fs::write(alpha.folder.join("before.txt"), b"before the cut").unwrap();
    wait_until("beta to follow", || in_sync(&alpha, &beta));

    for round in 0..3 {
        proxy.cut();
        for index in 0..20 {
            std::fs::write(
                alpha.folder.join(format!("cut{round}-{index}.bin")),
                pseudo_random(10_000 + index * 997, round as u64 * 100 + index as u64),
            )
            .unwrap();
        }
        wait_until("alpha to record the writes made during the cut", || {
            // `before.txt`, then 20 files per round.
            alpha.head_seq() > 20 * (round + 1) as u64
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(beta.head_seq() < alpha.head_seq(), "the cut held");
        proxy.heal();
        wait_until("beta to converge after the link heals", || {
            in_sync(&alpha, &beta)
        });
    }
    for node in [&alpha, &beta] {
        assert!(
            node.cli(&["verify"]).status.success(),
            "{} verifies",
            node.name
        );
    }
    assert!(
        beta.metric("standin_pull_errors_total").unwrap_or(0.0) >= 1.0,
        "the cuts were seen as pull errors"
    );
}

#[test]
fn a_passive_killed_again_and_again_while_streaming_converges() {
    let mut pair = Pair::new("replication_period = 0\nfailover_after_ms = 600000", true);
    let mut seed: u64 = 0x5eed_f00d;
    let mut written = 0u64;
    for _kill in 0..12 {
        for _ in 0..10 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let size = 1_000 + (seed >> 40) as usize % 300_000;
            std::fs::write(
                pair.alpha.folder.join(format!("f{}", written % 37)),
                pseudo_random(size, seed),
            )
            .unwrap();
            written += 1;
        }
        std::thread::sleep(std::time::Duration::from_millis((seed >> 50) % 200));
        pair.beta.kill();
        pair.beta.start();
    }
    pair.wait_in_sync();
    pair.assert_verified();
}

/// The active SIGKILLed at random points while a writer runs: on every restart its log
/// opens (no gap, no broken link: the engine checks both), start-up reconcile records
/// what the kill interrupted, and at the end the passive agrees and every write in the
/// writer's ledger is on both nodes with its last content.
#[test]
fn an_active_killed_while_written_to_loses_no_write() {
    let mut pair = Pair::new("replication_period = 0\nfailover_after_ms = 600000", true);
    let mut ledger: std::collections::BTreeMap<String, Vec<u8>> = std::collections::BTreeMap::new();
    let mut seed: u64 = 0xdead_beef;
    for _kill in 0..6 {
        for _ in 0..25 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let name = format!("w{}", (seed >> 33) % 40);
            let content = pseudo_random(100 + (seed >> 45) as usize % 50_000, seed);
            let path = pair.alpha.folder.join(&name);
            // The writer's own durability: written and fsync'd before it counts.
            let mut file = std::fs::File::create(&path).unwrap();
            file.write_all(&content).unwrap();
            file.sync_all().unwrap();
            ledger.insert(name, content);
            std::thread::sleep(std::time::Duration::from_millis((seed >> 55) % 15));
        }
        pair.alpha.kill();
        pair.alpha.start();
    }
    pair.wait_in_sync();
    pair.assert_verified();
    for (name, content) in &ledger {
        for node in [&pair.alpha, &pair.beta] {
            assert_eq!(
                std::fs::read(node.folder.join(name)).ok().as_ref(),
                Some(content),
                "{name} on {}",
                node.name
            );
        }
    }
    // The whole log reads back with every link checked.
    let output = pair
        .beta
        .cli(&["log", "--after", "0", "--limit", "4096", "--json"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
