//! Roles and failover with real processes: the passive takes over when the active
//! dies, the old active rejoins (quarantining what never replicated) and follows, and
//! a switchover hands authority over without losing anything.

use std::time::Instant;

use crate::support::{in_sync, wait_until, NodeProcess, PairSpec};

/// A pair that heartbeats each other every 100 ms and fails over after 1.5 s.
fn failover_pair(root: &std::path::Path) -> (NodeProcess, NodeProcess) {
    let hooks = root.join("hooks.log");
    let timing = format!(
        "heartbeat_interval_ms = 100\nfailover_after_ms = 1500\nreplication_period = 0\non_promote = \"env | grep ^STANDIN_ | sort | tr '\\\\n' ' ' >> {0}; echo >> {0}\"\non_demote = \"env | grep ^STANDIN_ | sort | tr '\\\\n' ' ' >> {0}; echo >> {0}\"\n",
        hooks.display()
    );
    // alpha heartbeats beta too (its own peer_url).
    PairSpec::new(&timing).mutual().configure(root)
}

#[test]
fn the_passive_takes_over_and_the_old_active_rejoins_and_follows() {
    let root = tempfile::tempdir().unwrap();
    let (mut alpha, mut beta) = failover_pair(root.path());
    alpha.start();
    beta.start();
    wait_until("alpha to be active", || alpha.is_active());
    std::fs::write(alpha.folder.join("before.txt"), b"written on alpha").unwrap();
    wait_until("beta to follow", || in_sync(&alpha, &beta));
    assert!(!beta.is_active(), "only one node accepts logins");

    alpha.kill();
    let killed = Instant::now();
    wait_until("beta to take over", || beta.is_active());
    eprintln!(
        "beta took over {:.2} s after alpha was killed",
        killed.elapsed().as_secs_f64()
    );
    let hooks = std::fs::read_to_string(root.path().join("hooks.log")).unwrap_or_default();
    wait_until("the on_promote hook", || {
        std::fs::read_to_string(root.path().join("hooks.log"))
            .is_ok_and(|text| text.contains("STANDIN_NODE=beta"))
    });
    let hooks = if hooks.is_empty() {
        std::fs::read_to_string(root.path().join("hooks.log")).unwrap()
    } else {
        hooks
    };
    assert!(
        hooks.contains("STANDIN_EPOCH=2") && hooks.contains("STANDIN_OLD_ACTIVE=alpha"),
        "{hooks}"
    );

    std::fs::write(
        beta.folder.join("after.txt"),
        b"written on beta, the new active",
    )
    .unwrap();
    wait_until("beta to record it", || beta.head_seq() >= 3);

    alpha.start();
    wait_until("alpha to rejoin and follow beta", || in_sync(&beta, &alpha));
    assert!(alpha.folder.join("after.txt").exists());
    assert!(!alpha.is_active(), "the old active does not accept logins");
    assert!(beta.is_active());
    let status: serde_json::Value =
        serde_json::from_slice(&alpha.cli(&["status", "--json"]).stdout).unwrap();
    assert_eq!(status["role"], "passive", "{status}");
    assert_eq!(status["epoch"], 2, "{status}");
    assert_eq!(
        status["quarantined_events"], 0,
        "nothing was lost, so nothing to keep aside"
    );
    for node in [&alpha, &beta] {
        assert!(node.cli(&["verify"]).status.success());
    }
}

#[test]
fn a_change_that_never_replicated_goes_to_quarantine_on_rejoin() {
    let root = tempfile::tempdir().unwrap();
    let (mut alpha, mut beta) = failover_pair(root.path());
    alpha.start();
    beta.start();
    std::fs::write(alpha.folder.join("shared.txt"), b"both have this").unwrap();
    wait_until("beta to follow", || in_sync(&alpha, &beta));

    // beta goes away; alpha records a change nobody else ever sees; alpha dies.
    beta.kill();
    // The head before the write: capture may record it before the next line runs.
    let before = alpha.head_seq();
    std::fs::write(alpha.folder.join("late.txt"), b"only alpha ever had this").unwrap();
    wait_until("alpha to record the late change", || {
        alpha.head_seq() > before
    });
    alpha.kill();

    // beta comes back alone, waits failover_after_ms, and takes over.
    beta.start();
    wait_until("beta to take over", || beta.is_active());
    std::fs::write(beta.folder.join("new.txt"), b"after the takeover").unwrap();
    wait_until("beta to record", || {
        beta.folder.join("new.txt").exists() && beta.head_seq() >= 3
    });

    alpha.start();
    wait_until("alpha to rejoin and follow beta", || in_sync(&beta, &alpha));
    assert!(
        !alpha.folder.join("late.txt").exists(),
        "alpha's folder follows the authority"
    );
    let status: serde_json::Value =
        serde_json::from_slice(&alpha.cli(&["status", "--json"]).stdout).unwrap();
    assert_eq!(status["quarantined_events"], 1, "{status}");
    let quarantine = std::fs::read_dir(alpha.data_dir.join("quarantine"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let manifest = std::fs::read_to_string(quarantine.join("manifest.json")).unwrap();
    assert!(manifest.contains("late.txt"), "{manifest}");
    // `quarantine list` says when, in UTC (not milliseconds since 1970).
    let list = alpha.cli(&["quarantine", "list"]);
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.contains("1 events after common seq") && list.ends_with(" UTC\n"),
        "{list}"
    );
    let kept = std::fs::read_dir(quarantine.join("files"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("late.txt");
    assert_eq!(
        std::fs::read(kept).unwrap(),
        b"only alpha ever had this",
        "nothing lost"
    );
    // The rewind is said as what it is, not as an interrupted batch.
    let log = alpha.log_text();
    assert!(!log.contains("an interrupted batch"), "{log}");
    assert!(log.contains("putting the paths it touched back to the recorded state"));
}

#[test]
fn a_switchover_hands_over_without_losing_anything() {
    let root = tempfile::tempdir().unwrap();
    let (mut alpha, mut beta) = failover_pair(root.path());
    alpha.start();
    beta.start();
    std::fs::write(alpha.folder.join("one.txt"), b"1").unwrap();
    wait_until("beta to follow", || in_sync(&alpha, &beta));
    // A change right before the switchover must reach beta too.
    std::fs::write(alpha.folder.join("last-minute.txt"), b"just before").unwrap();
    let output = alpha.cli(&["switchover"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    wait_until("beta to be active", || beta.is_active());
    wait_until("alpha to follow beta", || {
        in_sync(&beta, &alpha) && !alpha.is_active()
    });
    assert!(beta.folder.join("last-minute.txt").exists());
    let status: serde_json::Value =
        serde_json::from_slice(&alpha.cli(&["status", "--json"]).stdout).unwrap();
    assert_eq!(
        status["quarantined_events"], 0,
        "a switchover loses nothing: {status}"
    );
    // The new authority records, the old one follows.
    std::fs::write(beta.folder.join("after.txt"), b"on beta").unwrap();
    wait_until("alpha to get beta's change", || {
        alpha.folder.join("after.txt").exists()
    });
}

#[test]
fn promote_without_force_is_refused_while_the_active_answers() {
    let root = tempfile::tempdir().unwrap();
    let (mut alpha, mut beta) = failover_pair(root.path());
    alpha.start();
    beta.start();
    std::fs::write(alpha.folder.join("x"), b"x").unwrap();
    wait_until("beta to follow", || in_sync(&alpha, &beta));
    let output = beta.cli(&["promote"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "refused: {stderr}");
    assert!(stderr.contains("use `standin switchover`"), "{stderr}");
    assert!(
        !beta.is_active(),
        "the active answers: no promotion without --force"
    );
}

#[test]
fn with_auto_failback_the_preferred_node_takes_over_again_once_caught_up() {
    let root = tempfile::tempdir().unwrap();
    let (mut alpha, mut beta) = failover_pair(root.path());
    let mut text = std::fs::read_to_string(&alpha.config).unwrap();
    text.push_str("preferred = true\nauto_failback = true\n");
    std::fs::write(&alpha.config, text).unwrap();
    alpha.start();
    beta.start();
    std::fs::write(alpha.folder.join("first.txt"), b"1").unwrap();
    wait_until("beta to follow", || in_sync(&alpha, &beta));
    alpha.kill();
    wait_until("beta to take over", || beta.is_active());
    std::fs::write(beta.folder.join("while-alpha-was-down.txt"), b"2").unwrap();
    wait_until("beta to record", || beta.head_seq() >= 3);
    alpha.start();
    wait_until("alpha, the preferred node, to take over again", || {
        alpha.is_active() && !beta.is_active()
    });
    wait_until("beta to follow alpha", || in_sync(&alpha, &beta));
    assert!(
        alpha.folder.join("while-alpha-was-down.txt").exists(),
        "nothing lost on the way back"
    );
    // beta, stepping down, ran on_demote.
    wait_until("the on_demote hook on beta", || {
        std::fs::read_to_string(root.path().join("hooks.log")).is_ok_and(|text| {
            text.lines().any(|line| {
                line.contains("STANDIN_EVENT=demote") && line.contains("STANDIN_NODE=beta")
            })
        })
    });
    let status: serde_json::Value =
        serde_json::from_slice(&alpha.cli(&["status", "--json"]).stdout).unwrap();
    assert_eq!(status["epoch"], 3, "{status}");
    let status: serde_json::Value =
        serde_json::from_slice(&beta.cli(&["status", "--json"]).stdout).unwrap();
    assert_eq!(status["quarantined_events"], 0, "{status}");
}

/// The seed's case, with SIGSTOP: the passive is frozen while the active records a
/// change, the active dies, the passive resumes and takes over; the old active
/// rejoins with that change in its quarantine, and `quarantine restore` brings it back
/// as a new change on the authority.
#[test]
fn a_quarantined_change_can_be_restored_on_the_authority() {
    let root = tempfile::tempdir().unwrap();
    let (mut alpha, mut beta) = failover_pair(root.path());
    alpha.start();
    beta.start();
    std::fs::write(alpha.folder.join("base.txt"), b"base").unwrap();
    wait_until("beta to follow", || in_sync(&alpha, &beta));
    beta.signal(libc::SIGSTOP);
    // The head before the write: capture may record it before the next line runs.
    let before = alpha.head_seq();
    std::fs::write(
        alpha.folder.join("report.txt"),
        b"written while the passive was frozen",
    )
    .unwrap();
    wait_until("alpha to record it", || alpha.head_seq() > before);
    alpha.kill();
    beta.signal(libc::SIGCONT);
    wait_until("beta to take over", || beta.is_active());
    alpha.start();
    wait_until("alpha to rejoin", || {
        in_sync(&beta, &alpha) && !alpha.is_active()
    });
    assert!(!alpha.folder.join("report.txt").exists());

    let output = alpha.cli(&["quarantine", "list"]);
    let listing = String::from_utf8_lossy(&output.stdout).into_owned();
    let id = listing.split_whitespace().next().unwrap().to_string();
    assert!(listing.contains("1 events"), "{listing}");
    let output = alpha.cli(&["quarantine", "show", &id]);
    let shown = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(shown.contains("report.txt"), "{shown}");
    let seq = shown
        .lines()
        .find(|line| line.contains("report.txt"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let output = alpha.cli(&["quarantine", "restore", &id, &seq]);
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    wait_until("the restored file on both nodes", || {
        std::fs::read(beta.folder.join("report.txt"))
            .is_ok_and(|bytes| bytes == b"written while the passive was frozen")
            && alpha.folder.join("report.txt").exists()
    });
}

/// A switchover while a writer keeps changing the folder loses none of the writes.
#[test]
fn a_switchover_under_a_stream_of_writes_loses_nothing() {
    let root = tempfile::tempdir().unwrap();
    let (mut alpha, mut beta) = failover_pair(root.path());
    alpha.start();
    beta.start();
    std::fs::write(alpha.folder.join("start"), b"0").unwrap();
    wait_until("beta to follow", || in_sync(&alpha, &beta));
    // Writes go to whichever node is authoritative at the moment of the write.
    let mut written = Vec::new();
    let mut switchover = None;
    for index in 0..60 {
        let target = if alpha.is_active() {
            &alpha
        } else if beta.is_active() {
            &beta
        } else {
            continue;
        };
        let name = format!("w{index:03}");
        std::fs::write(target.folder.join(&name), format!("write {index}")).unwrap();
        written.push(name);
        if index == 20 {
            // `switchover` returns once the hand-over is done: the writes go on beside it.
            let config = alpha.config.clone();
            switchover = Some(std::thread::spawn(move || {
                std::process::Command::new(crate::support::standin())
                    .args(["switchover", "--config"])
                    .arg(config)
                    .output()
                    .unwrap()
            }));
        }
        std::thread::sleep(std::time::Duration::from_millis(30));
    }
    let output = switchover.expect("a switchover").join().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    wait_until("beta to be the authority", || {
        beta.is_active() && !alpha.is_active()
    });
    wait_until("both to agree", || in_sync(&beta, &alpha));
    // Every write is on the new authority — or, if it raced the hand-over (written to
    // alpha after its final capture), kept in alpha's quarantine: never lost.
    let quarantine = alpha.data_dir.join("quarantine");
    let in_quarantine = |name: &str| {
        std::fs::read_dir(&quarantine)
            .map(|dirs| {
                dirs.flatten()
                    .any(|dir| dir.path().join("files").join(name).exists())
            })
            .unwrap_or(false)
    };
    let mut kept_aside = 0;
    for name in &written {
        if !beta.folder.join(name).exists() {
            assert!(
                in_quarantine(name),
                "{name} lost: neither on beta nor in alpha's quarantine"
            );
            kept_aside += 1;
        }
    }
    eprintln!(
        "{} writes, {kept_aside} kept aside in the old active's quarantine",
        written.len()
    );
}
