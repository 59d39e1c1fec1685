//! `standin drill` against a real pair: green (exit 0) when healthy, and red (exit 1,
//! the failing check named with why) with a hook missing, an agent reporting to one
//! node only, the passive behind, and the passive killed. Nothing it does changes the
//! pair: the roles and heads are the same after every drill.

use std::os::unix::fs::PermissionsExt;
use std::process::Output;

use crate::support::{agent_secret, wait_until, NodeProcess, PairSpec};

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The drill's line for `key` (`ok  key: message`), if any.
fn line<'a>(output: &'a str, key: &str) -> Option<&'a str> {
    output.lines().find(|line| {
        line.split_once("  ")
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(&format!("{key}:")))
    })
}

fn drill(node: &NodeProcess) -> (Option<i32>, String) {
    let output = node.cli(&["drill"]);
    (output.status.code(), text(&output))
}

#[test]
fn the_drill_is_green_on_a_healthy_pair_and_names_what_would_go_wrong() {
    let root = tempfile::tempdir().unwrap();
    let agent_secret = agent_secret(root.path());
    let hook = root.path().join("point-dns-here");
    std::fs::write(&hook, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The passive pulls at its start, then once an hour: a change made on the active
    // afterwards stays behind for the whole test.
    let extra = format!(
        "heartbeat_interval_ms = 100\nfailover_after_ms = 1500\nreplication_period = 3600\nagent_secret_file = \"{}\"\n",
        agent_secret.display(),
    );
    // The passive's on_promote is what a failover runs.
    let (mut alpha, mut beta) = PairSpec::new(&extra)
        .beta(|beta| beta.extra(&format!("on_promote = \"{} --now\"\n", hook.display())))
        .mutual()
        .configure(root.path());
    std::fs::write(alpha.folder.join("a.txt"), b"before the drill").unwrap();
    alpha.start();
    wait_until("alpha to record its folder", || alpha.head_seq() > 0);
    beta.start();
    wait_until("beta to catch up and both to see each other", || {
        alpha.head_seq() == beta.head_seq()
            && [&alpha, &beta].iter().all(|node| {
                serde_json::from_slice::<serde_json::Value>(&node.cli(&["status", "--json"]).stdout)
                    .is_ok_and(|status| status["peer_state"] == "up")
            })
    });
    let head = alpha.head_seq();

    // Healthy: exit 0, from either node.
    for node in [&alpha, &beta] {
        let (code, output) = drill(node);
        assert_eq!(code, Some(0), "drill on {}:\n{output}", node.name);
        eprintln!("drill on {}, a healthy pair:\n{output}", node.name);
        assert!(
            output.contains("a failover to beta now would succeed without loss"),
            "{output}"
        );
        let loss = line(&output, "loss").unwrap_or_else(|| panic!("a loss line:\n{output}"));
        assert!(loss.starts_with("ok") && loss.contains("none"), "{output}");
        let hook_line = line(&output, "beta on_promote").unwrap_or_else(|| panic!("{output}"));
        assert!(
            hook_line.starts_with("ok") && hook_line.contains("executable"),
            "{output}"
        );
        let timing = line(&output, "failover time").unwrap_or_else(|| panic!("{output}"));
        assert!(timing.contains("failover_after_ms"), "{output}");
        // Peer-only mode: said, not a failure.
        assert!(
            line(&output, "beta authority").is_some_and(|line| line.starts_with("warn")),
            "{output}"
        );
    }

    // A hook missing: red, naming it.
    std::fs::remove_file(&hook).unwrap();
    let (code, output) = drill(&alpha);
    assert_eq!(code, Some(1), "{output}");
    let hook_line = line(&output, "beta on_promote").unwrap_or_else(|| panic!("{output}"));
    assert!(
        hook_line.starts_with("FAIL") && hook_line.contains("no such file"),
        "{output}"
    );
    assert!(
        output.contains("error: a failover now would not succeed without loss: beta on_promote"),
        "{output}"
    );
    std::fs::write(&hook, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(drill(&alpha).0, Some(0));

    // An agent reporting to the active only: red, naming it.
    let agent = crate::site::agent(
        root.path(),
        "ts1",
        0,
        &format!("http://127.0.0.1:{}", alpha.grpc),
        &agent_secret,
    );
    wait_until("alpha to hear from ts1", || {
        line(&drill(&alpha).1, "agents").is_some_and(|line| line.contains("ts1"))
    });
    let (code, output) = drill(&beta);
    assert_eq!(code, Some(1), "{output}");
    let agents = line(&output, "agents").unwrap();
    assert!(
        agents.starts_with("FAIL")
            && agents.contains("ts1 reports to alpha only (beta: never heard from)"),
        "{output}"
    );
    drop(agent);
    wait_until("ts1 to count as down", || drill(&alpha).0 == Some(0));

    // The passive behind: red, with what a failover now would lose.
    std::fs::write(alpha.folder.join("b.txt"), b"after the last pull").unwrap();
    wait_until("alpha to record the change", || alpha.head_seq() > head);
    let behind = alpha.head_seq() - beta.head_seq();
    let (code, output) = drill(&alpha);
    eprintln!("drill on alpha, beta behind:\n{output}");
    assert_eq!(code, Some(1), "{output}");
    let loss = line(&output, "loss").unwrap();
    assert!(
        loss.starts_with("FAIL")
            && loss.contains(&format!(
                "would lose {behind} event{}, the last ",
                if behind == 1 { "" } else { "s" }
            )),
        "{output}"
    );
    assert_eq!(beta.head_seq(), head, "the drill changed nothing");
    assert!(
        serde_json::from_slice::<serde_json::Value>(&alpha.cli(&["status", "--json"]).stdout)
            .is_ok_and(|status| status["role"] == "active" && status["peer"]["role"] == "passive")
    );

    // The passive killed: red, naming it.
    beta.kill();
    let (code, output) = drill(&alpha);
    assert_eq!(code, Some(1), "{output}");
    let reachable = line(&output, "reachable").unwrap_or_else(|| panic!("{output}"));
    assert!(
        reachable.starts_with("FAIL")
            && reachable.contains(&format!("http://127.0.0.1:{} does not answer", beta.grpc)),
        "{output}"
    );
}
