//! The node's lifecycle: when any task of `standin serve` ends (a server, the
//! coordinator, compaction, the watch on capture), the node ends — logins and capture
//! first — and exits non-zero naming the task, so its peer's takeover never makes two
//! actives. The tasks are made to fail by the test-only fault hooks (`fault-hooks`,
//! `STANDIN_FAULT_END_TASK`, SIGUSR1).

use std::time::{Duration, Instant};

use crate::support::{http_get, tree, wait_until, NodeProcess, PairSpec};

/// The paths in `node`'s log (its index at the head), read from its data_dir once the
/// process has exited.
fn recorded_paths(node: &NodeProcess) -> Vec<String> {
    let repository = standin_engine::Repository::open(&node.data_dir).unwrap();
    repository
        .snapshot()
        .1
        .into_iter()
        .map(|(path, _, _)| path.to_string())
        .collect()
}

/// Make `node`'s task `task` panic (its fault hook is armed by the environment).
fn end_task(node: &NodeProcess) {
    node.signal(libc::SIGUSR1);
}

/// `node` exits on its own, non-zero, saying which task ended; then answers nothing,
/// and a file written into its folder afterwards is not recorded.
fn assert_ended_naming(node: &mut NodeProcess, task: &str, signalled: Instant) {
    let status = node
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("{} still runs after its task {task} ended", node.name));
    eprintln!(
        "{task}: the node had exited {:.2} s after the fault, with {status}",
        signalled.elapsed().as_secs_f64()
    );
    assert!(!status.success(), "{task}: exit status {status}");
    let log = node.log_text();
    let message = format!("the node's task `{task}` panicked: fault hook: SIGUSR1");
    assert!(log.contains(&message), "{task}: {message:?} not in:\n{log}");
    assert!(
        log.contains("the node stopped (logins and capture first)"),
        "{task}: the exit message is missing:\n{log}"
    );
    assert!(http_get(node.http, "/active").is_none());
    std::fs::write(
        node.folder.join("after.txt"),
        b"written once the node ended",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let paths = recorded_paths(node);
    assert!(paths.contains(&"before.txt".to_string()), "{paths:?}");
    assert!(!paths.contains(&"after.txt".to_string()), "{paths:?}");
}

/// alpha's gRPC server dies. With `mutual` heartbeats alpha names beta as its peer too
/// (as deployed; before the fix beta kept hearing alpha and never took over, while
/// nothing replicated); without, only beta heartbeats (before the fix: two actives).
fn grpc_server_dies(mutual: bool) {
    let root = tempfile::tempdir().unwrap();
    let timing = "heartbeat_interval_ms = 100\nfailover_after_ms = 1500\nreplication_period = 0\n";
    let spec = PairSpec::new(timing);
    let spec = if mutual { spec.mutual() } else { spec };
    let (mut alpha, mut beta) = spec.configure(root.path());
    alpha
        .env
        .push(("STANDIN_FAULT_END_TASK".into(), "grpc-server".into()));
    alpha.start();
    beta.start();
    wait_until("alpha to be active", || alpha.is_active());
    std::fs::write(alpha.folder.join("before.txt"), b"written on alpha").unwrap();
    wait_until("beta to follow", || {
        let head = alpha.head_seq();
        head > 0 && head == beta.head_seq() && tree(&alpha.folder) == tree(&beta.folder)
    });

    // Beta stops hearing alpha and takes over: at no moment may both accept logins.
    end_task(&alpha);
    let signalled = Instant::now();
    let mut alpha_stopped = None;
    wait_until("beta to take over", || {
        let beta_active = beta.is_active();
        let alpha_active = alpha.is_active();
        if !alpha_active {
            alpha_stopped.get_or_insert(signalled.elapsed());
        }
        assert!(
            !(beta_active && alpha_active),
            "two actives {:.2} s after alpha's gRPC server ended",
            signalled.elapsed().as_secs_f64()
        );
        beta_active
    });
    eprintln!(
        "mutual heartbeats {mutual}: alpha stopped answering /active 200 {:.2} s and beta took over {:.2} s after alpha's gRPC server ended",
        alpha_stopped.unwrap_or_default().as_secs_f64(),
        signalled.elapsed().as_secs_f64()
    );
    assert_ended_naming(&mut alpha, "grpc-server", signalled);
    assert_eq!(
        std::fs::read(beta.folder.join("before.txt")).unwrap(),
        b"written on alpha"
    );
    assert!(!beta.folder.join("after.txt").exists());
}

#[test]
fn an_active_that_loses_its_grpc_server_ends_before_its_peer_takes_over() {
    grpc_server_dies(false);
}

#[test]
fn an_active_that_loses_its_grpc_server_ends_and_its_peer_takes_over() {
    grpc_server_dies(true);
}

#[test]
fn any_task_that_ends_ends_the_node() {
    for task in ["http-server", "coordinator", "compaction", "capture-watch"] {
        let root = tempfile::tempdir().unwrap();
        let mut alpha = NodeProcess::configure(
            root.path(),
            "alpha",
            "active",
            None,
            "heartbeat_interval_ms = 100\n",
        );
        alpha
            .env
            .push(("STANDIN_FAULT_END_TASK".into(), task.into()));
        alpha.start();
        wait_until("alpha to be active", || alpha.is_active());
        let head = alpha.head_seq();
        std::fs::write(alpha.folder.join("before.txt"), b"recorded").unwrap();
        wait_until("before.txt to be recorded", || alpha.head_seq() > head);
        end_task(&alpha);
        let signalled = Instant::now();
        assert_ended_naming(&mut alpha, task, signalled);
    }
}

/// A write that cannot be made durable — sled's fdatasync failing with EIO (the fault
/// hook `STANDIN_FAULT_FAIL_SYNCS`, armed while its trigger file exists) — stops the
/// node, active or passive: retrying would prove nothing (Linux reports a lost
/// write-back once). It exits non-zero saying what failed and to restart; restarted on
/// a disk that syncs again, it checks its log and goes on, nothing it had recorded lost.
#[test]
fn a_write_that_cannot_be_made_durable_stops_the_node() {
    let root = tempfile::tempdir().unwrap();
    let trigger = root.path().join("fail-syncs");
    let armed = || std::fs::write(&trigger, b"").unwrap();
    let disarmed = || std::fs::remove_file(&trigger).unwrap();
    let hook = (
        standin_engine::fault::FAIL_SYNCS.to_string(),
        trigger.display().to_string(),
    );

    // The active: its record of a change cannot be made durable.
    let mut alpha = NodeProcess::configure(
        &root.path().join("alone"),
        "alpha",
        "active",
        None,
        "heartbeat_interval_ms = 100\n",
    );
    alpha.env.push(hook.clone());
    alpha.start();
    wait_until("alpha to be active", || alpha.is_active());
    let head = alpha.head_seq();
    std::fs::write(alpha.folder.join("before.txt"), b"recorded").unwrap();
    wait_until("before.txt to be recorded", || alpha.head_seq() > head);
    armed();
    std::fs::write(alpha.folder.join("during.txt"), b"not durable").unwrap();
    assert_stopped_for_durability(&mut alpha);
    disarmed();
    alpha.start();
    wait_until("alpha to be active again", || alpha.is_active());
    let verify = alpha.cli(&["verify"]);
    assert!(
        verify.status.success(),
        "alpha after its restart: {verify:?}"
    );
    // Its stop records what is pending (a full reconcile) before it exits.
    assert!(alpha.stop(), "alpha stops cleanly:\n{}", alpha.log_text());
    let paths = recorded_paths(&alpha);
    for name in ["before.txt", "during.txt"] {
        assert!(paths.contains(&name.to_string()), "{name}: {paths:?}");
    }

    // The passive: its journal (or log) cannot be made durable while it applies.
    let (mut alpha, mut beta) = PairSpec::new(
        "heartbeat_interval_ms = 100\nreplication_period = 0\nfailover_after_ms = 600000\n",
    )
    .beta(|spec| spec.env(&hook.0, &hook.1))
    .configure(&root.path().join("pair"));
    alpha.start();
    beta.start();
    std::fs::write(alpha.folder.join("first.txt"), b"replicated").unwrap();
    wait_until("beta to follow", || crate::support::in_sync(&alpha, &beta));
    armed();
    std::fs::write(alpha.folder.join("second.txt"), b"applied, not durable").unwrap();
    assert_stopped_for_durability(&mut beta);
    assert!(alpha.is_active(), "the active goes on");
    disarmed();
    beta.start();
    wait_until("beta to follow again", || {
        crate::support::in_sync(&alpha, &beta)
    });
    for node in [&alpha, &beta] {
        let verify = node.cli(&["verify"]);
        assert!(verify.status.success(), "{}: {verify:?}", node.name);
    }
}

/// `node` exits on its own, non-zero, its log saying that a write could not be made
/// durable (a sync failed with EIO) and to restart it.
fn assert_stopped_for_durability(node: &mut NodeProcess) {
    let status = node.wait_exit(Duration::from_secs(20)).unwrap_or_else(|| {
        panic!(
            "{} still runs after a sync failed:\n{}",
            node.name,
            node.log_text()
        )
    });
    assert!(!status.success(), "{}: exit status {status}", node.name);
    let log = node.log_text();
    for said in [
        "a write could not be made durable (",
        "Input/output error",
        "restart the node",
        "the node stopped (logins and capture first)",
    ] {
        assert!(log.contains(said), "{}: {said:?} not in:\n{log}", node.name);
    }
}
